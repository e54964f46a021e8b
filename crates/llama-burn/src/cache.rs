//! Key/value cache for incremental decoding, preallocated to the longest sequence a generation
//! call can reach so each step writes in place instead of concatenating.
//!
//! Attention always reads the whole buffer (unfilled slots are later positions, which the causal
//! mask hides): every decoding step then has the same shapes, so JIT backends (CUDA, wgpu)
//! compile and autotune their kernels once instead of once per step.

use burn::tensor::{backend::Backend, Tensor};

/// The cached keys and values of one layer.
#[derive(Debug, Clone)]
pub struct LayerKvCache<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> LayerKvCache<B> {
    /// An empty cache for `[batch, n_kv_heads, capacity, head_dim]`, in the model's float dtype.
    pub fn new(shape: [usize; 4], dtype: burn::tensor::DType, device: &B::Device) -> Self {
        Self {
            keys: Tensor::zeros(shape, (device, dtype)),
            values: Tensor::zeros(shape, (device, dtype)),
            len: 0,
        }
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Positions the buffers can hold.
    pub fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Appends `[b, n_kv, t, hd]` keys/values; returns the whole buffers, `[b, n_kv, capacity, hd]`
    /// (slots past the new length hold zeros and must be masked by the caller).
    ///
    /// # Panics
    /// When the chunk does not fit: the caller sized the cache for the whole generation.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, t, d] = k.dims();
        let [_, _, capacity, _] = self.keys.dims();
        let end = self.len + t;
        assert!(end <= capacity, "KV cache overflow: {end} > {capacity}");
        let range = [0..b, 0..h, self.len..end, 0..d];
        self.keys = self.keys.clone().slice_assign(range.clone(), k);
        self.values = self.values.clone().slice_assign(range, v);
        self.len = end;
        (self.keys.clone(), self.values.clone())
    }
}

/// The key/value caches of every decoder layer, for incremental decoding
/// ([`crate::LlamaForCausalLM::new_cache`], [`crate::LlamaForCausalLM::forward_cached`]).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Caches by layer index.
    pub(crate) layers: Vec<LayerKvCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// Positions cached (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions each layer can hold.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::capacity)
    }
}
