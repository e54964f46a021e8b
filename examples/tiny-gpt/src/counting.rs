//! A channel selector that counts what another one chooses: how many channels the sparse forward
//! computed, against the full widths. It wraps the selector the way `trainer::TimedSelector`
//! times one, and the model never knows.

use std::cell::Cell;

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use lora::sparse::{AttentionProjections, AttnChannels, ChannelSelector, MlpProjections};

/// Channels computed and channels a dense forward would compute, summed over projections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCount {
    /// Output channels of q/k/v and input channels of o (attention), or rows of gate/up and
    /// columns of down (MLP), that the forward computed.
    pub computed: usize,
    /// The same, dense.
    pub full: usize,
}

impl ChannelCount {
    /// `computed / full` (1 before anything was counted).
    pub fn fraction(&self) -> f64 {
        if self.full == 0 {
            1.0
        } else {
            self.computed as f64 / self.full as f64
        }
    }

    fn add(&mut self, computed: usize, full: usize) {
        self.computed += computed;
        self.full += full;
    }
}

/// What a [`ChannelCounter`] saw, per block type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Attention blocks.
    pub attention: ChannelCount,
    /// MLP blocks.
    pub mlp: ChannelCount,
}

/// Counts the channels `inner` chooses (a block it keeps dense counts as full width).
pub struct ChannelCounter<'a, B: Backend> {
    inner: &'a dyn ChannelSelector<B>,
    counts: Cell<ChannelCounts>,
}

impl<'a, B: Backend> ChannelCounter<'a, B> {
    /// Counts for `inner`.
    pub fn new(inner: &'a dyn ChannelSelector<B>) -> Self {
        Self {
            inner,
            counts: Cell::new(ChannelCounts::default()),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ChannelCounts {
        self.counts.get()
    }
}

impl<B: Backend> ChannelSelector<B> for ChannelCounter<'_, B> {
    fn attention(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        let outputs = [attn.q_proj, attn.k_proj, attn.v_proj].map(|p| p.dims().0);
        let full = outputs.iter().sum::<usize>() + attn.o_proj.dims().1;
        let chosen = self.inner.attention(layer, attn, x, tokens);
        let computed = chosen.as_ref().map_or(full, |c| {
            [&c.q, &c.k, &c.v, &c.o].iter().map(|t| t.dims()[0]).sum()
        });
        let mut counts = self.counts.get();
        counts.attention.add(computed, full);
        self.counts.set(counts);
        chosen
    }

    fn mlp(
        &self,
        layer: usize,
        mlp: MlpProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        let d_ff = mlp.gate_proj.dims().0;
        let chosen = self.inner.mlp(layer, mlp, x, tokens);
        let kept = chosen.as_ref().map_or(d_ff, |c| c.dims()[0]);
        let mut counts = self.counts.get();
        counts.mlp.add(3 * kept, 3 * d_ff);
        self.counts.set(counts);
        chosen
    }
}
