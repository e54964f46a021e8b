//! The frozen base of any burn module: every parameter outside a [`LoraAdapter`]. Freezing it
//! (PEFT's `get_peft_model` marks only adapter weights trainable) and casting it to a compute
//! dtype are module walks that tell adapter parameters from base ones by the struct that owns
//! them, so they work on any model built from [`crate::LoraLinear`]s.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

#[cfg(doc)]
use crate::adapter::LoraAdapter;

/// Marks every parameter inside a [`LoraAdapter`] trainable and every other parameter of
/// `module` frozen: after this only the adapters' A and B receive gradients.
pub fn freeze_base<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut SetTrainable {
        inside: AdapterDepth::default(),
    })
}

/// Casts every float parameter of `module` outside a [`LoraAdapter`] to `dtype` (e.g. bf16 on a
/// GPU); adapters stay f32, the optimizer's master weights.
///
/// The cast weights go to the backend's persistent (exact-size) memory: frozen weights live as
/// long as the model, and on cubecl's default pool a 1 GiB LLaMA3-8B embedding otherwise claims
/// a 9 GiB page of the activations' pool (docs/perf.md). No-op on other backends.
pub fn cast_base<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    module.map(&mut CastBase {
        dtype,
        inside: AdapterDepth::default(),
    })
}

/// Whether a module walk is inside a [`LoraAdapter`]; fed by `ModuleMapper::enter_module` /
/// `exit_module`, whose `container_type` is the struct owning the field being entered.
#[derive(Debug, Default)]
struct AdapterDepth(usize);

impl AdapterDepth {
    const CONTAINER: &'static str = "Struct:LoraAdapter";

    fn enter(&mut self, container_type: &str) {
        self.0 += usize::from(container_type == Self::CONTAINER);
    }

    fn exit(&mut self, container_type: &str) {
        self.0 -= usize::from(container_type == Self::CONTAINER);
    }

    fn get(&self) -> bool {
        self.0 > 0
    }
}

/// Sets `require_grad` on adapter parameters and clears it everywhere else.
struct SetTrainable {
    inside: AdapterDepth,
}

impl<B: Backend> ModuleMapper<B> for SetTrainable {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.inside.enter(container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.inside.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.inside.get())
    }
}

/// Casts every float parameter outside LoRA adapters.
struct CastBase {
    dtype: DType,
    inside: AdapterDepth,
}

impl<B: Backend> ModuleMapper<B> for CastBase {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.inside.enter(container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.inside.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.inside.get() {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| {
            let device = t.device();
            B::memory_persistent_allocations(&device, t, move |t| t.cast(dtype))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoraConfig, LoraLinear};
    use burn::module::Module;

    type TestBackend = burn::backend::Flex;
    type Ad = burn::backend::Autodiff<TestBackend>;

    /// A model of the user's own: two layers, one adapted.
    #[derive(Module, Debug)]
    struct TwoLayers<B: Backend> {
        first: LoraLinear<B>,
        second: LoraLinear<B>,
    }

    #[test]
    fn only_adapters_train_after_freezing_any_module() {
        let device = Default::default();
        let mut model = TwoLayers::<Ad> {
            first: LoraLinear::new(4, 3, &device),
            second: LoraLinear::new(3, 2, &device),
        };
        model.second.lora = Some(LoraConfig::new().with_r(2).init(3, 2, &device));
        let model = freeze_base(model);
        assert!(!model.first.weight.is_require_grad());
        assert!(!model.second.weight.is_require_grad());
        let lora = model.second.lora.as_ref().unwrap();
        assert!(lora.lora_a.is_require_grad() && lora.lora_b.is_require_grad());

        let x = Tensor::<Ad, 2>::ones([5, 4], &device);
        let grads = model
            .second
            .forward(model.first.forward(x))
            .sum()
            .backward();
        assert!(model.first.weight.grad(&grads).is_none());
        assert!(lora.lora_a.grad(&grads).is_some());
    }

    #[test]
    fn cast_keeps_adapters_f32() {
        let device = Default::default();
        let mut layer = LoraLinear::<TestBackend>::new(4, 3, &device);
        layer.lora = Some(LoraConfig::new().with_r(2).init(4, 3, &device));
        let layer = cast_base(layer, DType::F16);
        assert_eq!(layer.weight.val().dtype(), DType::F16);
        assert_eq!(layer.lora.unwrap().lora_a.val().dtype(), DType::F32);
    }
}
