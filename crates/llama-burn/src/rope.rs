//! Rotary position embedding in the HF rotate-half convention (`LlamaRotaryEmbedding`), with
//! LLaMA-3.1's `llama3` frequency scaling.
//!
//! HF checkpoints store q/k rows for rotate-half (the first and second half of each head pair up),
//! so weights load unpermuted and channel indices mean the same thing as in the reference code.
//! cos/sin are computed per batch from the positions, as transformers does, so long-context models
//! need no large tables.

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::config::LlamaConfig;

/// Inverse frequencies of one head (`head_dim / 2` values), after scaling.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

/// cos and sin for a batch of positions, broadcastable over heads.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    /// `[batch, 1, seq, head_dim]`
    pub cos: Tensor<B, 4>,
    /// `[batch, 1, seq, head_dim]`
    pub sin: Tensor<B, 4>,
}

impl RotaryEmbedding {
    /// The frequencies of `config` (theta, head_dim, optional llama3 scaling).
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim();
        // f32 arithmetic as in transformers, so angles agree to the last bit or two.
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        if let Some(s) = &config.rope_scaling {
            let old_ctx = s.original_max_position_embeddings as f64;
            let low_freq_wavelen = old_ctx / s.low_freq_factor;
            let high_freq_wavelen = old_ctx / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen < high_freq_wavelen {
                    freq
                } else if wavelen > low_freq_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (old_ctx / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * freq / s.factor + smooth * freq
                };
                *f = scaled as f32;
            }
        }
        Self { inv_freq }
    }

    /// cos/sin for `positions` (`[batch, seq]`), in `dtype`.
    pub fn angles<B: Backend>(&self, positions: Tensor<B, 2, Int>, dtype: DType) -> RopeAngles<B> {
        let device = positions.device();
        let [batch, seq] = positions.dims();
        let half = self.inv_freq.len();
        let inv_freq = Tensor::<B, 1>::from_data(
            TensorData::new(self.inv_freq.clone(), [half]),
            (&device, DType::F32),
        )
        .reshape([1, 1, half]);
        let pos = positions.float().cast(DType::F32).reshape([batch, seq, 1]);
        let freqs = pos * inv_freq; // [batch, seq, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).reshape([batch, 1, seq, 2 * half]);
        RopeAngles {
            cos: emb.clone().cos().cast(dtype),
            sin: emb.sin().cast(dtype),
        }
    }
}

impl<B: Backend> RopeAngles<B> {
    /// Rotates `x` (`[batch, heads, seq, head_dim]`): `x * cos + rotate_half(x) * sin`.
    ///
    /// One fused kernel (forward and backward, reading a strided `x` in place) on burn's cubecl
    /// backends; the same computation in tensor ops elsewhere.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        kernels_cubecl::rope(x, self.cos.clone(), self.sin.clone())
    }

    /// [`Self::apply`] with the output's heads stacked `groups` at a time, position-major
    /// (`[batch, heads / groups, seq, groups * head_dim]`): the query layout of
    /// [`kernels_cubecl::grouped_causal_attention`], written by the same one kernel.
    pub fn apply_grouped(&self, x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
        kernels_cubecl::rope_grouped(x, self.cos.clone(), self.sin.clone(), groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = RotaryEmbedding::new(&LlamaConfig::preset("llama3-8b").unwrap());
        let scaled = RotaryEmbedding::new(&LlamaConfig::preset("llama3.1-8b").unwrap());
        assert_eq!(plain.inv_freq.len(), 64);
        // The highest frequency (wavelength 2*pi) is untouched, the lowest is divided by 8.
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let (p, s) = (plain.inv_freq[63], scaled.inv_freq[63]);
        assert!((p / s - 8.0).abs() < 1e-4, "{p} {s}");
        // In between the ratio moves smoothly from 1 to 8.
        assert!(scaled
            .inv_freq
            .iter()
            .zip(&plain.inv_freq)
            .all(|(s, p)| p / s >= 0.999 && p / s <= 8.001));
    }
}
