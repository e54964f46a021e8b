//! A [`ChannelSelector`] for unit tests of blocks' sparse forwards, which are handed their
//! channels: it is never asked.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use lora::sparse::{AttentionProjections, AttnChannels, ChannelSelector, MlpProjections};

/// The selector of a sparse forward whose channels are given; asking it is a bug.
pub(crate) struct UnusedSelector;

impl<B: Backend> ChannelSelector<B> for UnusedSelector {
    fn attention(
        &self,
        _: usize,
        _: AttentionProjections<'_, B>,
        _: Tensor<B, 3>,
        _: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        unreachable!("the block's channels are given")
    }

    fn mlp(
        &self,
        _: usize,
        _: MlpProjections<'_, B>,
        _: Tensor<B, 3>,
        _: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        unreachable!("the block's channels are given")
    }
}
