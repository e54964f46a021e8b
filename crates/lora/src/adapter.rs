//! One LoRA adapter: the trainable low-rank update `scaling * B A` of a frozen `[out, in]`
//! projection, as PEFT's `lora.Linear` computes it (`lora_B(lora_A(dropout(x))) * scaling`).
//!
//! Adapter weights are always f32 (the optimizer's master weights). When the base projection runs
//! in bf16/f16, the adapter's products run in that dtype on casts of the weights, as PEFT's do
//! under `torch.autocast`, and the update is added to the base output in that dtype.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{backend::Backend, DType, Distribution, Shape, Tensor, TensorData};

use crate::config::LoraConfig;

/// The adapter of one projection `W: [out, in]`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[r, in]`, f32. PEFT: `lora_A.weight`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[out, r]`, f32. PEFT: `lora_B.weight`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// Dropout on the adapter input (identity unless training on an autodiff backend).
    pub dropout: Dropout,
    /// `alpha / r`.
    pub scaling: f64,
}

/// A trainable f32 parameter created on first use: it stays marked as requiring gradients even
/// when built on a non-autodiff backend and moved to one later with `Module::train`.
fn trainable<B: Backend>(
    shape: [usize; 2],
    device: &B::Device,
    make: impl Fn(&B::Device) -> Tensor<B, 2> + Send + Sync + 'static,
) -> Param<Tensor<B, 2>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| make(device).set_require_grad(require_grad),
        device.clone(),
        true,
        Shape::new(shape),
    )
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter, initialised as PEFT's `init_lora_weights=True`: A drawn
    /// Kaiming-uniform with `a = sqrt(5)`, i.e. U(-b, b) with
    /// `b = sqrt(6 / ((1 + a^2) * in)) = 1 / sqrt(in)`; B zero, so the adapter starts as a no-op.
    ///
    /// # Panics
    /// If `config` is invalid (see [`LoraConfig::validate`]).
    pub fn new(config: &LoraConfig, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        let r = config.r;
        let bound = 1.0 / (d_in as f64).sqrt();
        let lora_a = trainable([r, d_in], device, move |device| {
            Tensor::random(
                [r, d_in],
                Distribution::Uniform(-bound, bound),
                (device, DType::F32),
            )
        });
        let lora_b = trainable([d_out, r], device, move |device| {
            Tensor::zeros([d_out, r], (device, DType::F32))
        });
        Self::assemble(config, lora_a, lora_b)
    }

    /// An adapter with given weights (e.g. read from a PEFT file), converted to f32.
    ///
    /// # Shapes
    /// - `a`: `[r, in]`, `b`: `[out, r]` with `r = config.r`
    ///
    /// # Panics
    /// If the shapes disagree with each other or with `config.r`, or `config` is invalid.
    pub fn from_weights(
        config: &LoraConfig,
        a: TensorData,
        b: TensorData,
        device: &B::Device,
    ) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        let (a_shape, b_shape) = (a.shape.clone(), b.shape.clone());
        assert!(
            a_shape.len() == 2
                && b_shape.len() == 2
                && a_shape[0] == config.r
                && b_shape[1] == config.r,
            "LoRA weights: A {a_shape:?} and B {b_shape:?} do not have rank r = {}",
            config.r
        );
        let (a, b) = (a.convert::<f32>(), b.convert::<f32>());
        let lora_a = trainable([a_shape[0], a_shape[1]], device, move |device| {
            Tensor::from_data(a.clone(), (device, DType::F32))
        });
        let lora_b = trainable([b_shape[0], b_shape[1]], device, move |device| {
            Tensor::from_data(b.clone(), (device, DType::F32))
        });
        Self::assemble(config, lora_a, lora_b)
    }

    fn assemble(
        config: &LoraConfig,
        lora_a: Param<Tensor<B, 2>>,
        lora_b: Param<Tensor<B, 2>>,
    ) -> Self {
        Self {
            lora_a,
            lora_b,
            dropout: DropoutConfig::new(config.dropout).init(),
            scaling: config.scaling(),
        }
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.lazy_shape()[0]
    }

    /// `(out, in)` of the adapted projection.
    pub fn dims(&self) -> (usize, usize) {
        (self.lora_b.lazy_shape()[0], self.lora_a.lazy_shape()[1])
    }

    /// The update `scaling * (dropout(x) A^T) B^T`.
    ///
    /// The weights stay f32 (the optimizer updates f32 master weights), but the products run in
    /// `x`'s dtype when that is bf16 or f16, with the weights cast to it, as PEFT computes under
    /// `torch.autocast`: the output is then in `x`'s dtype. An f32 `x` gives an f32 product.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, output `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (a, b) = (self.lora_a.val(), self.lora_b.val());
        let compute = x.dtype();
        if matches!(compute, DType::BF16 | DType::F16) {
            return self.forward_in(x, a.cast(compute), b.cast(compute));
        }
        let x = if compute == a.dtype() {
            x
        } else {
            x.cast(a.dtype())
        };
        self.forward_in(x, a, b)
    }

    /// `A` and `B` as [`sparse_ops::lora_linear`] takes them for an input in `dtype` (it
    /// computes the update and its add onto the base output in one op): the f32 master weights
    /// themselves for a bf16/f16 input (the op casts them and gives their gradients in f32, see
    /// [`Self::forward`]), the weights in `dtype` otherwise; `None` with dropout on (the op takes
    /// one input for both branches) or when the input would need a cast.
    pub fn compute_weights(&self, dtype: DType) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        if self.dropout.prob > 0.0 {
            return None;
        }
        let (a, b) = (self.lora_a.val(), self.lora_b.val());
        let master = a.dtype() == DType::F32 && b.dtype() == DType::F32;
        match dtype {
            DType::BF16 | DType::F16 if master => Some((a, b)),
            DType::BF16 | DType::F16 => Some((a.cast(dtype), b.cast(dtype))),
            _ if dtype == a.dtype() => Some((a, b)),
            _ => None,
        }
    }

    fn forward_in<const D: usize>(
        &self,
        x: Tensor<B, D>,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
    ) -> Tensor<B, D> {
        let h = sparse_ops::linear(self.dropout.forward(x), a); // [..., r]
        sparse_ops::linear(h, b) * self.scaling
    }

    /// `scaling * B A`, the change this adapter makes to `W` (what merging adds), in f32.
    ///
    /// # Shapes
    /// - output: `[out, in]`
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b.val().matmul(self.lora_a.val()) * self.scaling
    }
}

// Beside the adapter it builds, so that `config.rs` does not import `adapter.rs` (which imports
// the config): no import cycle inside the crate.
impl LoraConfig {
    /// A freshly initialised adapter for a `[d_out, d_in]` projection: A Kaiming-uniform as
    /// PEFT draws it, B zero. See [`LoraAdapter::new`].
    ///
    /// # Panics
    /// If the config is invalid (see [`Self::validate`]).
    pub fn init<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> LoraAdapter<B> {
        LoraAdapter::new(self, d_in, d_out, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    type TestBackend = burn::backend::Flex;

    fn values(t: Tensor<TestBackend, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn init_matches_peft_bounds() {
        let device = Default::default();
        let (d_in, d_out, r) = (256, 48, 16);
        let adapter: LoraAdapter<TestBackend> =
            LoraConfig::new().with_r(r).init(d_in, d_out, &device);
        assert_eq!(adapter.rank(), r);
        assert_eq!(adapter.dims(), (d_out, d_in));
        assert_eq!(adapter.lora_a.val().dtype(), DType::F32);
        assert_eq!(adapter.lora_a.dims(), [r, d_in]);
        assert_eq!(adapter.lora_b.dims(), [d_out, r]);

        let a = values(adapter.lora_a.val());
        let bound = 1.0 / (d_in as f32).sqrt(); // kaiming_uniform(a = sqrt 5)
        assert!(a.iter().all(|v| v.abs() <= bound), "A outside +-{bound}");
        let max = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.95 * bound, "A does not fill its range: max {max}");
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        // U(-b, b): mean 0, variance b^2 / 3 (4096 draws: a few percent of sampling error).
        assert!(mean.abs() < 0.05 * bound, "mean {mean}");
        assert!(
            (var / (bound * bound / 3.0) - 1.0).abs() < 0.1,
            "variance {var}"
        );
        assert!(
            values(adapter.lora_b.val()).iter().all(|&v| v == 0.0),
            "B not zero"
        );
    }

    #[test]
    fn zero_b_gives_zero_update() {
        let device = Default::default();
        let adapter: LoraAdapter<TestBackend> = LoraConfig::new().with_r(4).init(8, 6, &device);
        let x = Tensor::<TestBackend, 3>::random([2, 3, 8], Distribution::Default, &device);
        let y = adapter.forward(x);
        assert_eq!(y.dims(), [2, 3, 6]);
        assert!(values(y.reshape([6, 6])).iter().all(|&v| v == 0.0));
        assert!(values(adapter.delta_weight()).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn delta_weight_is_scaled_b_times_a_and_matches_forward() {
        let device = Default::default();
        let config = LoraConfig::new().with_r(2).with_alpha(6.0); // scaling 3
        let a = TensorData::new(vec![1.0f32, 2.0, 0.0, -1.0, 0.5, 1.0], [2, 3]);
        let b = TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 2.0, -1.0, 0.0, 0.5], [4, 2]);
        let adapter = LoraAdapter::<TestBackend>::from_weights(&config, a, b, &device);
        assert_eq!(adapter.dims(), (4, 3));
        let delta = adapter.delta_weight();
        // 3 * B A by hand: rows of A are [1, 2, 0] and [-1, 0.5, 1].
        let expected = TensorData::new(
            vec![
                3.0f32, 6.0, 0.0, //  B row [1, 0]
                -3.0, 1.5, 3.0, //    B row [0, 1]
                9.0, 10.5, -3.0, //   B row [2, -1]
                -1.5, 0.75, 1.5, //   B row [0, 0.5]
            ],
            [4, 3],
        );
        delta.clone().into_data().assert_eq(&expected, true);

        let x = Tensor::<TestBackend, 2>::random([5, 3], Distribution::Default, &device);
        let via_forward = adapter.forward(x.clone());
        let via_delta = x.matmul(delta.transpose());
        via_forward
            .into_data()
            .assert_approx_eq::<f32>(&via_delta.into_data(), Tolerance::default());
    }

    #[test]
    fn adapter_params_require_grad_after_train() {
        type Ad = burn::backend::Autodiff<TestBackend>;
        let device = Default::default();
        let adapter: LoraAdapter<TestBackend> = LoraConfig::new().with_r(2).init(4, 3, &device);
        let adapter = adapter.train::<Ad>();
        let x = Tensor::<Ad, 2>::random([5, 4], Distribution::Default, &device);
        let grads = adapter.forward(x).sum().backward();
        assert!(adapter.lora_a.grad(&grads).is_some());
        assert!(adapter.lora_b.grad(&grads).is_some());
    }
}
