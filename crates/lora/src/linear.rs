//! A frozen, bias-free linear layer with the weight in PyTorch layout `[out, in]`, optionally
//! carrying a trainable LoRA adapter (PEFT's `lora.Linear` around `base_layer`), and the
//! SparseLoRA forwards that compute the frozen base on a subset of its channels.
//!
//! The `[out, in]` layout makes output-channel slicing (SparseLoRA's gate/up/q/k/v) a contiguous
//! row gather, and lets HF weights load without a transpose. Every product goes through
//! `sparse_ops`, the one seam where the fast GEMM paths plug in.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::cast::ToElement;
use burn::tensor::{backend::Backend, DType, Int, Tensor};

use crate::adapter::LoraAdapter;
use crate::channel_keep::ChannelKeep;
use crate::error::LoraError;
use sparse_ops::{FrozenBase, GroupMember};

/// `y = x W^T (+ scaling * x A^T B^T)`, `W: [out, in]`.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[out, in]`
    pub weight: Param<Tensor<B, 2>>,
    /// The LoRA adapter, when one is attached (f32 whatever the weight's dtype).
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// A layer with weights drawn like PyTorch's `nn.Linear` (uniform +-1/sqrt(in)), no
    /// adapter.
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        // Lazy: a loader that overwrites the weight never pays for the random draw.
        let weight = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([d_out, d_in], device);
        Self { weight, lora: None }
    }

    /// With an adapter, the adapter's update (computed in the input's dtype when that is bf16/f16,
    /// as PEFT under autocast) is added to the base output.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, output `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let Some(lora) = &self.lora else {
            return sparse_ops::linear(x, self.weight.val());
        };
        let weight = self.weight.val();
        if let Some((a, b)) = fused_weights(lora, &x, weight.dtype()) {
            // The base product and the update in one op (their add done by the GEMMs).
            let out = weight.dims()[0];
            return lora_linear_rows(FrozenBase::Weight(weight), x, out, (a, b), lora.scaling);
        }
        let base = sparse_ops::linear(x.clone(), weight);
        self.add_adapter(base, x)
    }

    /// [`Self::forward`] of three projections reading the same `x` (attention's q, k and v):
    /// with an adapter on each, their products with `x` are taken together
    /// ([`sparse_ops::lora_linear_group`]: one read of `x` for the three instead of three).
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, outputs `[n, out_i]`
    pub fn forward_group(projections: [&Self; 3], x: Tensor<B, 2>) -> [Tensor<B, 2>; 3] {
        match Self::group_adapters(projections, &x) {
            Some(adapters) => {
                let bases = projections.map(|p| FrozenBase::Weight(p.weight.val()));
                sparse_ops::lora_linear_group(x, group_members(bases, adapters))
            }
            None => projections.map(|p| p.forward(x.clone())),
        }
    }

    /// [`Self::forward_out_masked`] of three projections reading the same `x` (SparseLoRA's
    /// masked q, k and v), their adapters' products with `x` taken together as in
    /// [`Self::forward_group`].
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `keeps[i]` over `out_i` channels, outputs `[n, out_i]`
    pub fn forward_out_masked_group(
        projections: [&Self; 3],
        x: Tensor<B, 2>,
        keeps: [&ChannelKeep<B>; 3],
        drop_base_input_grad: bool,
    ) -> [Tensor<B, 2>; 3] {
        let bases = [0, 1, 2]
            .map(|i| projections[i].masked_out_base(x.clone(), keeps[i], drop_base_input_grad));
        Self::add_adapters_group(projections, x, bases)
    }

    /// Three projections reading the same `x` whose frozen bases' outputs were computed by the
    /// caller (`bases[i]`: `[n, out_i]`, e.g. SparseLoRA's sliced or masked forms): each
    /// adapter's update of `x` added onto its base, the three adapters' products with `x` taken
    /// together as in [`Self::forward_group`] when each projection carries one.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `bases[i]` and outputs `[n, out_i]`
    pub fn add_adapters_group(
        projections: [&Self; 3],
        x: Tensor<B, 2>,
        bases: [Tensor<B, 2>; 3],
    ) -> [Tensor<B, 2>; 3] {
        match Self::group_adapters(projections, &x) {
            Some(adapters) => {
                let members = group_members(bases.map(FrozenBase::Output), adapters);
                sparse_ops::lora_linear_group(x, members)
            }
            None => {
                let [q, k, v] = bases;
                [(0, q), (1, k), (2, v)]
                    .map(|(i, base)| projections[i].add_adapter(base, x.clone()))
            }
        }
    }

    /// Each projection's adapter weights in the dtype the fused op takes and its scaling, when
    /// every one of them carries an adapter that it can take (see [`fused_weights`]); no
    /// weight is cast unless all three carry one.
    fn group_adapters(projections: [&Self; 3], x: &Tensor<B, 2>) -> Option<[GroupAdapter<B>; 3]> {
        let [Some(q), Some(k), Some(v)] = projections.map(|p| Some((p, p.lora.as_ref()?))) else {
            return None;
        };
        let [Some(q), Some(k), Some(v)] = [q, k, v].map(|(p, lora)| {
            let (a, b) = fused_weights(lora, x, p.weight.dtype())?;
            Some((a, b, lora.scaling))
        }) else {
            return None;
        };
        Some([q, k, v])
    }

    /// The frozen base's output on the output channels `idx` only (`x W[idx, :]^T`, the kept
    /// weight rows gathered), scattered into a full-width output with zeros elsewhere: the
    /// base part of [`Self::forward_out_sliced`]. With `drop_base_input_grad` and an adapter, no
    /// gradient flows to `x` through it.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `idx`: `[k]` in `0..out`, output `[n, out]`
    pub fn sliced_out_base(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let (out, _) = self.dims();
        let base_input = self.base_input(x, drop_base_input_grad);
        // The kept rows gathered by one kernel on burn-wgpu/burn-cuda (burn's `select`
        // elsewhere), padded with zero rows to an aligned width; the scatter drops the padding.
        let width = sparse_ops::padded_width(idx.dims()[0]);
        let weight = self.weight.val();
        let kept = sparse_ops::linear_out_sliced_padded(base_input, weight, idx.clone(), width);
        sparse_ops::scatter_channels(kept, idx.clone(), out)
    }

    /// `x[:, idx] W[:, idx]^T`: the frozen base reading only its input channels `idx`; no
    /// adapter. With `drop_base_input_grad` and an adapter, no gradient flows to `x` through it.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `idx`: `[k]` in `0..in`, output `[n, out]`
    pub fn sliced_in_base(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base_input = self.base_input(x, drop_base_input_grad);
        sparse_ops::linear_in_sliced(base_input, self.weight.val(), idx.clone())
    }

    /// `addend + x[:, idx] W[:, idx]^T`: the frozen base reading only its input channels `idx`,
    /// added onto `addend` (the residual) by the product's epilogue where the seam can; no
    /// adapter. With `drop_base_input_grad` and an adapter, no gradient flows to `x` through it.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `idx`: `[k]` in `0..in`, `addend` and output `[..., out]` with `n` rows
    pub fn sliced_in_base_onto<const E: usize>(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
        addend: Tensor<B, E>,
    ) -> Tensor<B, E> {
        let base_input = self.base_input(x, drop_base_input_grad);
        sparse_ops::linear_in_sliced_onto(base_input, self.weight.val(), idx.clone(), addend)
    }

    /// The frozen base's full output `x W^T` (no adapter), with the gradient to `x` dropped as
    /// in [`Self::sliced_out_base`]: the dense token rows' part of a sliced projection.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, output `[n, out]`
    pub fn dense_base(&self, x: Tensor<B, 2>, drop_base_input_grad: bool) -> Tensor<B, 2> {
        sparse_ops::linear(self.base_input(x, drop_base_input_grad), self.weight.val())
    }

    /// The frozen base's full output with the channels `keep` drops zeroed on its sparse rows:
    /// the base part of [`Self::forward_out_masked`].
    fn masked_out_base(
        &self,
        x: Tensor<B, 2>,
        keep: &ChannelKeep<B>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base_input = self.masked_base_input(x, keep, drop_base_input_grad);
        keep.apply(sparse_ops::linear(base_input, self.weight.val()))
    }

    /// The input of a masked-dense base: with `drop_base_input_grad` and an adapter, no
    /// gradient through it on the sparse rows of `keep` ([`ChannelKeep::detach_sparse_rows`]).
    fn masked_base_input(
        &self,
        x: Tensor<B, 2>,
        keep: &ChannelKeep<B>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        if drop_base_input_grad && self.lora.is_some() {
            keep.detach_sparse_rows(x)
        } else {
            x
        }
    }

    /// What a dense token row adds to [`Self::sliced_out_base`]'s output for it to make the full
    /// base output: the product on the output channels outside `idx` (zeros on `idx`). Its
    /// gradient to `x` is the full base's, also with `drop_base_input_grad` (the reference code
    /// runs its dense rows through the dense layer), where the sliced output it completes
    /// carried none: then it is the full output minus the detached sliced one.
    ///
    /// # Shapes
    /// - `x`: `[n, in]` (dense rows only), `idx`: `[k]` in `0..out`, output `[n, out]`
    pub fn dropped_out_channels_base(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let out = self.dims().0;
        self.dropped_channels_base(
            x,
            drop_base_input_grad,
            |x| self.sliced_out_base(x, idx, true),
            |x| {
                let dropped = ChannelKeep::complement_of(idx.clone(), out, x.dtype());
                dropped.apply(self.dense_base(x, false))
            },
        )
    }

    /// What a dense token row adds to [`Self::sliced_in_base`]'s product of it to make the full
    /// base product: the product of the input channels outside `idx`. Its gradient to `x` is
    /// the full base's, also with `drop_base_input_grad` (the reference code runs its dense rows
    /// through the dense layer), where the sliced product it completes carried none: then it is
    /// the full product minus the detached sliced one.
    ///
    /// # Shapes
    /// - `x`: `[n, in]` (dense rows only), `idx`: `[k]` in `0..in`, output `[n, out]`
    pub fn dropped_in_channels_base(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        self.dropped_channels_base(
            x,
            drop_base_input_grad,
            |x| self.sliced_in_base(x, idx, true),
            |x| {
                let dropped = ChannelKeep::complement_of(idx.clone(), x.dims()[1], x.dtype());
                self.dense_base(dropped.apply(x), false)
            },
        )
    }

    /// `dropped(x)`, the dropped channels' product with its gradient; or, with
    /// `drop_base_input_grad` and an adapter, the full product minus `detached_sliced(x)` (the
    /// sliced product with no gradient): the same value, with the full base's gradient.
    fn dropped_channels_base(
        &self,
        x: Tensor<B, 2>,
        drop_base_input_grad: bool,
        detached_sliced: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
        dropped: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        if drop_base_input_grad && self.lora.is_some() {
            let kept = detached_sliced(x.clone());
            return self.dense_base(x, false) - kept;
        }
        dropped(x)
    }

    /// SparseLoRA output slicing (gate/up/q/k/v): the base output only on the channels `idx`,
    /// written into a full-width output (zeros elsewhere), plus the dense adapter output.
    ///
    /// With `drop_base_input_grad` and an adapter, no gradient flows to `x` through the frozen
    /// slice (the reference SparseLoRA code's behaviour; exact gradients otherwise).
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `idx`: `[k]` in `0..out`, output `[n, out]`
    pub fn forward_out_sliced(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base = self.sliced_out_base(x.clone(), idx, drop_base_input_grad);
        self.add_adapter(base, x)
    }

    /// SparseLoRA input slicing (o/down): the base reads only the input channels `idx`; the
    /// adapter reads all of `x`.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `idx`: `[k]` in `0..in`, output `[n, out]`
    pub fn forward_in_sliced(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base = self.sliced_in_base(x.clone(), idx, drop_base_input_grad);
        self.add_adapter(base, x)
    }

    /// SparseLoRA output slicing in masked-dense form (q/k/v): the full base product with the
    /// channels `keep` drops zeroed on its sparse rows, plus the dense adapter output. The same values and gradients as [`Self::forward_out_sliced`]; cheaper when
    /// most channels are kept, since it needs no gather of the weight and no scatter to full width.
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `keep` over `out` channels, output `[n, out]`
    pub fn forward_out_masked(
        &self,
        x: Tensor<B, 2>,
        keep: &ChannelKeep<B>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base = self.masked_out_base(x.clone(), keep, drop_base_input_grad);
        self.add_adapter(base, x)
    }

    /// SparseLoRA input slicing in masked-dense form (o): the base reads `x` with the channels
    /// `keep` drops zeroed on its sparse rows, the adapter all of `x`. The same values and gradients as
    /// [`Self::forward_in_sliced`].
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `keep` over `in` channels, output `[n, out]`
    pub fn forward_in_masked(
        &self,
        x: Tensor<B, 2>,
        keep: &ChannelKeep<B>,
        drop_base_input_grad: bool,
    ) -> Tensor<B, 2> {
        let base_input = self.masked_base_input(x.clone(), keep, drop_base_input_grad);
        let base = sparse_ops::linear(keep.apply(base_input), self.weight.val());
        self.add_adapter(base, x)
    }

    /// `residual + self.forward(x)`: a block's output added onto the residual stream, the add
    /// done by the base product's epilogue where the seam can ([`sparse_ops::linear_onto`], which
    /// also says why the residual keeps its own shape), the adapter's update then accumulated onto
    /// it as in [`Self::forward`].
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, `residual` and output `[..., out]` with as many rows as `x`
    pub fn forward_onto<const D: usize, const E: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, E>,
    ) -> Tensor<B, E> {
        let base = sparse_ops::linear_onto(x.clone(), self.weight.val(), residual);
        self.add_adapter_onto(base, x)
    }

    /// `residual + self.forward_in_masked(x, keep, drop_base_input_grad)`, the add done as in
    /// [`Self::forward_onto`].
    ///
    /// # Shapes
    /// - `x`: `[n, in]`, `keep` over `in` channels, `residual` and output `[..., out]` with `n`
    ///   rows
    pub fn forward_in_masked_onto<const E: usize>(
        &self,
        x: Tensor<B, 2>,
        keep: &ChannelKeep<B>,
        drop_base_input_grad: bool,
        residual: Tensor<B, E>,
    ) -> Tensor<B, E> {
        let base_input = self.masked_base_input(x.clone(), keep, drop_base_input_grad);
        let base = sparse_ops::linear_onto(keep.apply(base_input), self.weight.val(), residual);
        self.add_adapter_onto(base, x)
    }

    /// The adapter's update of `x` added onto `base`, a frozen base's output computed by the
    /// caller in the shape of the residual it was added onto (e.g. SparseLoRA's sliced o_proj):
    /// `base` itself without an adapter.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, `base` and output `[..., out]` with as many rows as `x`
    pub fn add_adapter_onto<const D: usize, const E: usize>(
        &self,
        base: Tensor<B, E>,
        x: Tensor<B, D>,
    ) -> Tensor<B, E> {
        if self.lora.is_none() {
            return base;
        }
        let dims = base.dims();
        let mut x_dims = x.dims();
        x_dims[D - 1] = dims[E - 1];
        let y = self.add_adapter(sparse_ops::reshaped(base, x_dims), x);
        sparse_ops::reshaped(y, dims)
    }

    fn base_input<const D: usize>(&self, x: Tensor<B, D>, drop_grad: bool) -> Tensor<B, D> {
        if drop_grad && self.lora.is_some() {
            x.detach()
        } else {
            x
        }
    }

    /// `base + adapter(x)`: one op adding the update onto `base` where the dtypes allow (see
    /// [`sparse_ops::lora_linear`]), else summed in f32 (and cast back) when their dtypes differ.
    fn add_adapter<const D: usize>(&self, base: Tensor<B, D>, x: Tensor<B, D>) -> Tensor<B, D> {
        let Some(lora) = &self.lora else {
            return base;
        };
        if let Some((a, b)) = fused_weights(lora, &x, base.dtype()) {
            let out = base.dims()[D - 1];
            let base = FrozenBase::Output(sparse_ops::reshaped(base, [rows_of(&x), out]));
            return lora_linear_rows(base, x, out, (a, b), lora.scaling);
        }
        let update = lora.forward(x);
        let dtype = base.dtype();
        if dtype == update.dtype() {
            base + update
        } else {
            (base.cast(update.dtype()) + update).cast(dtype)
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let [out, d_in] = self.weight.dims();
        (out, d_in)
    }

    /// Folds the adapter into the weight, `W += scaling * B A` computed in f32 and cast back to
    /// `W`'s dtype, and detaches it: the layer then computes what it computed with the adapter,
    /// with no LoRA branch. Returns the adapter (for [`Self::unmerge_lora`]); `None` without one.
    ///
    /// # Errors
    /// [`LoraError::NonFinite`] naming `module` when the merged weight would hold a NaN or an
    /// infinity; the layer is then left as it was, adapter included.
    pub fn merge_lora(&mut self, module: &str) -> Result<Option<LoraAdapter<B>>, LoraError> {
        let Some(lora) = &self.lora else {
            return Ok(None);
        };
        self.fold(lora.delta_weight(), module)?;
        Ok(self.lora.take())
    }

    /// Undoes [`Self::merge_lora`]: `W -= scaling * B A` (in f32, cast back) and reattaches
    /// `adapter`. Exact up to the rounding of `W`'s dtype.
    ///
    /// # Errors
    /// [`LoraError::NonFinite`] naming `module` as [`Self::merge_lora`]; the layer is then left
    /// as it was.
    pub fn unmerge_lora(&mut self, adapter: LoraAdapter<B>, module: &str) -> Result<(), LoraError> {
        self.fold(-adapter.delta_weight(), module)?;
        self.lora = Some(adapter);
        Ok(())
    }

    /// `W += delta` in f32, cast back to `W`'s dtype, keeping `W`'s `require_grad`; refuses a
    /// non-finite result. The one place merge and unmerge change the weight.
    fn fold(&mut self, delta: Tensor<B, 2>, module: &str) -> Result<(), LoraError> {
        let weight = self.weight.val();
        let dtype = weight.dtype();
        let merged = (weight.cast(DType::F32) + delta).cast(dtype).detach();
        let finite = merged.clone().is_finite().all().into_scalar().to_bool();
        if !finite {
            return Err(LoraError::NonFinite {
                module: module.to_owned(),
            });
        }
        let require_grad = self.weight.is_require_grad();
        self.weight = self
            .weight
            .clone()
            .map(|_| merged.set_require_grad(require_grad));
        Ok(())
    }
}

/// `lora`'s weights for [`sparse_ops::lora_linear`] when it can add the update of `x` onto a
/// base in `base_dtype` (see [`LoraAdapter::compute_weights`]).
fn fused_weights<B: Backend, const D: usize>(
    lora: &LoraAdapter<B>,
    x: &Tensor<B, D>,
    base_dtype: DType,
) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
    let dtype = x.dtype();
    lora.compute_weights(dtype).filter(|_| dtype == base_dtype)
}

/// An adapter's `A` and `B` in the compute dtype, and its scaling.
type GroupAdapter<B> = (Tensor<B, 2>, Tensor<B, 2>, f64);

/// The members of a [`sparse_ops::lora_linear_group`].
fn group_members<B: Backend>(
    bases: [FrozenBase<B>; 3],
    adapters: [GroupAdapter<B>; 3],
) -> [GroupMember<B>; 3] {
    let [bq, bk, bv] = bases;
    let [aq, ak, av] = adapters;
    [(bq, aq), (bk, ak), (bv, av)].map(|(base, (lora_a, lora_b, scaling))| GroupMember {
        base,
        lora_a,
        lora_b,
        scaling,
    })
}

/// The token rows of `x` (`[..., in]`): the product of its leading dimensions.
fn rows_of<B: Backend, const D: usize>(x: &Tensor<B, D>) -> usize {
    x.dims()[..D - 1].iter().product()
}

/// [`sparse_ops::lora_linear`] on `x` (`[..., in]`) flattened to its token rows, the output
/// (`[..., out]`) shaped back; `base` already in rows (`[rows, out]` or a weight).
fn lora_linear_rows<B: Backend, const D: usize>(
    base: FrozenBase<B>,
    x: Tensor<B, D>,
    out: usize,
    (lora_a, lora_b): (Tensor<B, 2>, Tensor<B, 2>),
    scaling: f64,
) -> Tensor<B, D> {
    let (mut dims, rows) = (x.dims(), rows_of(&x));
    let x = sparse_ops::reshaped(x, [rows, dims[D - 1]]);
    dims[D - 1] = out;
    sparse_ops::reshaped(
        sparse_ops::lora_linear(base, x, lora_a, lora_b, scaling),
        dims,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoraConfig;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type TestBackend = burn::backend::Flex;

    fn adapted(device: &burn::tensor::Device<TestBackend>) -> LoraLinear<TestBackend> {
        let config = LoraConfig::new().with_r(2).with_alpha(4.0);
        let mut proj = LoraLinear::<TestBackend>::new(8, 6, device);
        let a = Tensor::<TestBackend, 2>::random([2, 8], Distribution::Default, device);
        let b = Tensor::<TestBackend, 2>::random([6, 2], Distribution::Default, device);
        proj.lora = Some(LoraAdapter::from_weights(
            &config,
            a.into_data(),
            b.into_data(),
            device,
        ));
        proj
    }

    /// The grouped forwards (one op for q, k and v on CUDA) give each projection's own forward,
    /// plain and masked.
    #[test]
    fn grouped_forwards_equal_each_projections_forward() {
        let device = Default::default();
        let (q, k, v) = (adapted(&device), adapted(&device), adapted(&device));
        let x = Tensor::<TestBackend, 2>::random([5, 8], Distribution::Default, &device);
        let grouped = LoraLinear::forward_group([&q, &k, &v], x.clone());
        for (got, p) in grouped.into_iter().zip([&q, &k, &v]) {
            got.into_data()
                .assert_approx_eq::<f32>(&p.forward(x.clone()).into_data(), Tolerance::default());
        }

        let kept = Tensor::<TestBackend, 1, Int>::from_data(
            TensorData::new(vec![4i64, 1, 5], [3]),
            &device,
        );
        let keep = ChannelKeep::new(sparse_ops::keep_mask(kept, 6, DType::F32), None);
        let grouped = LoraLinear::forward_out_masked_group(
            [&q, &k, &v],
            x.clone(),
            [&keep, &keep, &keep],
            false,
        );
        for (got, p) in grouped.into_iter().zip([&q, &k, &v]) {
            let want = p.forward_out_masked(x.clone(), &keep, false);
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::default());
        }
    }

    #[test]
    fn adapter_adds_scaled_low_rank_update() {
        let device = Default::default();
        let proj = adapted(&device);
        let x = Tensor::<TestBackend, 3>::random([2, 3, 8], Distribution::Default, &device);
        let lora = proj.lora.as_ref().unwrap();
        let w = proj.weight.val() + lora.delta_weight();
        let expected = sparse_ops::linear(x.clone(), w);
        proj.forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::default());
    }

    #[test]
    fn half_precision_base_keeps_an_f32_adapter() {
        let device = Default::default();
        let mut proj = adapted(&device);
        proj.weight = proj.weight.map(|w| w.cast(DType::F16));
        let x = Tensor::<TestBackend, 2>::random([4, 8], Distribution::Default, &device);
        let y = proj.forward(x.clone().cast(DType::F16));
        assert_eq!(y.dtype(), DType::F16);
        let lora = proj.lora.as_ref().unwrap();
        assert_eq!(lora.lora_a.val().dtype(), DType::F32);
        let w = proj.weight.val().cast(DType::F32) + lora.delta_weight();
        let expected = sparse_ops::linear(x.cast(DType::F16).cast(DType::F32), w);
        y.cast(DType::F32)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(2e-2));
    }

    #[test]
    fn merge_folds_the_update_in_and_drops_the_adapter() {
        let device = Default::default();
        let mut proj = adapted(&device);
        let x = Tensor::<TestBackend, 2>::random([4, 8], Distribution::Default, &device);
        let before = proj.forward(x.clone());
        let weight = proj.weight.val();
        let adapter = proj.merge_lora("p").unwrap().unwrap();
        assert!(proj.lora.is_none());
        proj.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&before.clone().into_data(), Tolerance::default());

        proj.unmerge_lora(adapter, "p").unwrap();
        assert!(proj.lora.is_some());
        proj.weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&weight.into_data(), Tolerance::default());
        proj.forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&before.into_data(), Tolerance::default());

        let mut bad = adapted(&device);
        let config = LoraConfig::new().with_r(1);
        bad.lora = Some(LoraAdapter::from_weights(
            &config,
            TensorData::new(vec![f32::NAN; 8], [1, 8]),
            TensorData::new(vec![1.0f32; 6], [6, 1]),
            &device,
        ));
        let err = bad.merge_lora("model.layers.3.mlp.up_proj").unwrap_err();
        assert!(err.to_string().contains("model.layers.3.mlp.up_proj"));
        assert!(
            bad.lora.is_some(),
            "a refused merge leaves the adapter in place"
        );
    }
}
