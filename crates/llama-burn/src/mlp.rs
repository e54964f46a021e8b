//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};
use kernels_cubecl::swiglu;
use lora::sparse::{MlpProjections, SparseForward};
use lora::LoraLinear;

use crate::config::LlamaConfig;

/// The MLP of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// `[d_ff, d_model]`
    pub gate_proj: LoraLinear<B>,
    /// `[d_ff, d_model]`
    pub up_proj: LoraLinear<B>,
    /// `[d_model, d_ff]`
    pub down_proj: LoraLinear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    /// Randomly initialised MLP of `config`'s shape.
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        Self {
            gate_proj: LoraLinear::new(d, ff, device),
            up_proj: LoraLinear::new(d, ff, device),
            down_proj: LoraLinear::new(ff, d, device),
        }
    }

    /// The projections, as a channel selector reads them.
    pub fn projections(&self) -> MlpProjections<'_, B> {
        MlpProjections {
            gate_proj: &self.gate_proj,
            up_proj: &self.up_proj,
            down_proj: &self.down_proj,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]` (already normalised), output the same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_with(x, None)
    }

    /// `residual + self.forward(x)`, the add done by down's product
    /// ([`LoraLinear::forward_onto`]).
    ///
    /// # Shapes
    /// - `x`, `residual` and output: `[..., d_model]`
    pub fn forward_onto<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.forward_with(x, Some(residual))
    }

    fn forward_with<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        // One `[rows, d]` tensor read by gate and up (one autodiff node), so that their input
        // gradients are summed inside their GEMMs: `kernels_cubecl::gradient_sum`.
        let x = sparse_ops::reshaped(x, [rows, d]);
        let hidden = swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)); // [rows, d_ff]
        match residual {
            Some(residual) => self.down_proj.forward_onto(hidden, residual),
            None => {
                dims[D - 1] = self.down_proj.dims().0;
                sparse_ops::reshaped(self.down_proj.forward(hidden), dims)
            }
        }
    }

    /// The MLP on the intermediate channels `idx` only (SPEC 5). With no adapter on any of its
    /// projections the block stays compact end to end (gate/up produce `k` channels, padded with
    /// zero channels to [`sparse_ops::padded_width`], down reads them); otherwise see
    /// [`Self::adapted_sparse`].
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `idx`: `[k]` in `0..d_ff`, output `[batch, seq, d_model]`
    pub fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        idx: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        self.forward_sparse_with(x, idx, sparse, None)
    }

    /// `residual + self.forward_sparse(x, idx, sparse)`, the add done by down's base product
    /// when the projections carry adapters.
    ///
    /// # Shapes
    /// - `x`, `residual` and output: `[batch, seq, d_model]`
    pub fn forward_sparse_onto(
        &self,
        x: Tensor<B, 3>,
        idx: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.forward_sparse_with(x, idx, sparse, Some(residual))
    }

    fn forward_sparse_with(
        &self,
        x: Tensor<B, 3>,
        idx: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
        residual: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let x = x.reshape([b * s, d]);
        let compact = [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .all(|p| p.lora.is_none());
        if !compact {
            let residual = residual.map(|r| r.reshape([b * s, d]));
            return self
                .adapted_sparse(x, idx, sparse, residual)
                .reshape([b, s, d]);
        }
        // The compact products run on the kept width rounded up to a multiple of 8 (aligned
        // GEMM layouts): the extra channels are zero in gate and up, so silu(0) * 0 = 0 in the
        // hidden state, and meet zero columns of down; the output and dX are unchanged.
        let width = sparse_ops::padded_width(idx.dims()[0]);
        let sparse_rows = |x: Tensor<B, 2>| {
            let (gate, up) = (self.gate_proj.weight.val(), self.up_proj.weight.val());
            // [n, width], zero from channel k on
            let gate = sparse_ops::linear_out_sliced_padded(x.clone(), gate, idx.clone(), width);
            let up = sparse_ops::linear_out_sliced_padded(x, up, idx.clone(), width);
            sparse_ops::linear_in_compact_padded(
                swiglu(gate, up),
                self.down_proj.weight.val(),
                idx.clone(),
            )
        };
        let y = sparse
            .rows(x, sparse_rows, |x| self.forward(x))
            .reshape([b, s, d]);
        match residual {
            Some(residual) => residual + y,
            None => y,
        }
    }

    /// The sparse MLP when its projections carry adapters, in the form of the sliced attention
    /// block ([`crate::attention`]): gate's and up's frozen bases sliced on every row, the
    /// dense rows of `sparse.split` then completed with the dropped channels' products (those
    /// rows gathered once for both), each adapter added once on every row; down's base reads
    /// only the kept channels (onto `residual` in its epilogue), the dense rows get the product
    /// of the channels it dropped added, and down's adapter reads every channel. No adapter
    /// runs twice on a dense row, and no gradient is copied to zero the dense rows.
    ///
    /// # Shapes
    /// - `x`: `[n, d_model]`, `residual` and output `[n, d_model]`
    fn adapted_sparse(
        &self,
        x: Tensor<B, 2>,
        idx: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
        residual: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 2> {
        let drop = sparse.drop_sliced_input_grad;
        let (gate_up, down) = ([&self.gate_proj, &self.up_proj], &self.down_proj);
        let bases = gate_up.map(|p| p.sliced_out_base(x.clone(), idx, drop));
        let [gate, up] = sparse.add_to_dense_rows_each(bases, x.clone(), |x| {
            gate_up.map(|p| p.dropped_out_channels_base(x.clone(), idx, drop))
        });
        let gate = self.gate_proj.add_adapter_onto(gate, x.clone());
        let up = self.up_proj.add_adapter_onto(up, x);
        let hidden = swiglu(gate, up); // [n, d_ff]
        let base = match residual {
            Some(residual) => down.sliced_in_base_onto(hidden.clone(), idx, drop, residual),
            None => down.sliced_in_base(hidden.clone(), idx, drop),
        };
        let base = sparse.add_to_dense_rows(base, hidden.clone(), |h| {
            down.dropped_in_channels_base(h, idx, drop)
        });
        down.add_adapter_onto(base, hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        add_random_adapters, assert_compat_changes_only_sparse_rows, ints, rows_1_and_4_dense,
        scrambled, TestBackend, UnusedSelector,
    };
    use burn::tensor::{Distribution, TensorData, Tolerance};

    /// The adapted sparse MLP under a token split (rows 1 and 4 dense) against the composition
    /// it replaced: every row through sliced gate/up (their adapters added) and input-sliced
    /// down, then the dense rows recomputed by the dense MLP and written over, then the residual
    /// added. Same output, same gradients of the input, the residual and every adapter, with
    /// exact and reference-compat gradients (dropped on the sparse rows only); 37 kept
    /// channels, so the slices are padded.
    #[test]
    fn adapted_sparse_mlp_matches_the_per_row_composition_under_a_token_split() {
        let device = Default::default();
        let config = LlamaConfig::preset("tiny").unwrap();
        let mut mlp = LlamaMlp::<TestBackend>::new(&config, &device);
        add_random_adapters([&mut mlp.gate_proj, &mut mlp.up_proj, &mut mlp.down_proj]);
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let idx = ints(&scrambled(ff as i64, 37, 53));
        let random =
            || Tensor::<TestBackend, 3>::random([2, 3, d], Distribution::Normal(0.0, 1.0), &device);
        let (x, residual, probe) = (random(), random(), random());
        let mut dx = Vec::new();
        for drop in [false, true] {
            let sparse = rows_1_and_4_dense(drop);
            let run = |adapted: bool| {
                let x = x.clone().require_grad();
                let residual = residual.clone().require_grad();
                let y = if adapted {
                    mlp.forward_sparse_onto(x.clone(), &idx, &sparse, residual.clone())
                } else {
                    let per_row = |x: Tensor<TestBackend, 2>| {
                        let gate = mlp.gate_proj.forward_out_sliced(x.clone(), &idx, drop);
                        let up = mlp.up_proj.forward_out_sliced(x, &idx, drop);
                        mlp.down_proj
                            .forward_in_sliced(swiglu(gate, up), &idx, drop)
                    };
                    let y = sparse.rows(x.clone().reshape([6, d]), per_row, |x| mlp.forward(x));
                    residual.clone() + y.reshape([2, 3, d])
                };
                let grads = (y.clone() * probe.clone()).sum().backward();
                let mut data = vec![
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    residual.grad(&grads).unwrap().into_data(),
                ];
                for p in [&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj] {
                    let lora = p.lora.as_ref().unwrap();
                    data.push(lora.lora_a.grad(&grads).unwrap().into_data());
                    data.push(lora.lora_b.grad(&grads).unwrap().into_data());
                }
                data
            };
            let (adapted, composed) = (run(true), run(false));
            let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
            for (got, want) in adapted.iter().zip(&composed) {
                got.assert_approx_eq::<f32>(want, tol);
            }
            dx.push(adapted[1].clone());
        }
        assert_compat_changes_only_sparse_rows(&dx[0], &dx[1]);
    }

    #[test]
    fn compact_sparse_mlp_at_padded_width_matches_unpadded_products() {
        let device = Default::default();
        let config = LlamaConfig::preset("tiny").unwrap();
        let mlp = LlamaMlp::<TestBackend>::new(&config, &device);
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        // 37 of the 176 channels, scrambled: padded to 40.
        let kept: Vec<i64> = (0..37).map(|i| (i * 53 + 11) % ff as i64).collect();
        let idx = Tensor::<TestBackend, 1, Int>::from_data(
            TensorData::new(kept.clone(), [kept.len()]),
            &device,
        );
        let x =
            Tensor::<TestBackend, 3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let dy =
            Tensor::<TestBackend, 3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let sparse = SparseForward {
            selector: &UnusedSelector,
            split: None,
            drop_sliced_input_grad: false,
        };

        let x1 = x.clone().require_grad();
        let y = mlp.forward_sparse(x1.clone(), &idx, &sparse);
        let dx = x1.grad(&(y.clone() * dy.clone()).sum().backward()).unwrap();

        let x2 = x.require_grad();
        let gate =
            sparse_ops::linear_out_sliced(x2.clone(), mlp.gate_proj.weight.val(), idx.clone());
        let up = sparse_ops::linear_out_sliced(x2.clone(), mlp.up_proj.weight.val(), idx.clone());
        let y_ref =
            sparse_ops::linear_in_compact(swiglu(gate, up), mlp.down_proj.weight.val(), idx);
        let dx_ref = x2.grad(&(y_ref.clone() * dy).sum().backward()).unwrap();

        y.into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), Tolerance::default());
        dx.into_data()
            .assert_approx_eq::<f32>(&dx_ref.into_data(), Tolerance::default());
    }
}
