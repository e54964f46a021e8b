//! LoRA on a [`LlamaForCausalLM`]: attaching adapters to the targeted projections of every layer
//! with the base frozen, listing them under their HF module paths, PEFT adapter folders in and
//! out, and merging them into the base weights.
//!
//! The computation is PEFT's (`peft.get_peft_model(model, LoraConfig(...))`), checked against it
//! by `tests/peft_fixture.rs` (outputs, loss and every adapter gradient).

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, Tensor};
use lora::{LoraAdapter, LoraConfig, LoraError, LoraTarget, PeftAdapter};

use crate::model::{LlamaDecoderLayer, LlamaForCausalLM};
use crate::projection::Projection;

/// The HF module path of a layer's projection: `model.layers.{layer}.self_attn.q_proj`.
pub fn module_path(layer: usize, target: LoraTarget) -> String {
    let block = if target.is_attention() {
        "self_attn"
    } else {
        "mlp"
    };
    format!("model.layers.{layer}.{block}.{}", target.module_name())
}

impl<B: Backend> LlamaDecoderLayer<B> {
    /// The projection `target` names.
    pub fn projection(&self, target: LoraTarget) -> &Projection<B> {
        match target {
            LoraTarget::Q => &self.self_attn.q_proj,
            LoraTarget::K => &self.self_attn.k_proj,
            LoraTarget::V => &self.self_attn.v_proj,
            LoraTarget::O => &self.self_attn.o_proj,
            LoraTarget::Gate => &self.mlp.gate_proj,
            LoraTarget::Up => &self.mlp.up_proj,
            LoraTarget::Down => &self.mlp.down_proj,
        }
    }

    /// The projection `target` names, mutably.
    pub fn projection_mut(&mut self, target: LoraTarget) -> &mut Projection<B> {
        match target {
            LoraTarget::Q => &mut self.self_attn.q_proj,
            LoraTarget::K => &mut self.self_attn.k_proj,
            LoraTarget::V => &mut self.self_attn.v_proj,
            LoraTarget::O => &mut self.self_attn.o_proj,
            LoraTarget::Gate => &mut self.mlp.gate_proj,
            LoraTarget::Up => &mut self.mlp.up_proj,
            LoraTarget::Down => &mut self.mlp.down_proj,
        }
    }
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Attaches fresh adapters (A Kaiming-uniform, B zero: the model's outputs are unchanged) to
    /// `config.targets` of every layer, replacing any attached before, and freezes every other
    /// parameter: after this only the adapters' A and B receive gradients.
    ///
    /// Build the model on an autodiff backend to train it; a model built on the inner backend
    /// keeps the same trainable/frozen split through `Module::train`.
    ///
    /// # Panics
    /// If `config` is invalid ([`LoraConfig::validate`]).
    pub fn with_lora(mut self, config: &LoraConfig, device: &B::Device) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        for layer in &mut self.model.layers {
            for target in LoraTarget::ALL {
                let proj = layer.projection_mut(target);
                let (d_out, d_in) = proj.dims();
                proj.lora = config
                    .targets(target)
                    .then(|| config.init(d_in, d_out, device));
            }
        }
        self.lora_config = Some(config.clone());
        self.freeze_base()
    }

    /// The LoRA hyper-parameters of the attached adapters; `None` without adapters.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora_config.as_ref()
    }

    /// Every attached adapter with its HF module path (`model.layers.0.self_attn.q_proj`), in
    /// layer order then q, k, v, o, gate, up, down.
    pub fn lora_adapters(&self) -> Vec<(String, &LoraAdapter<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(adapter) = &layer.projection(target).lora {
                    out.push((module_path(i, target), adapter));
                }
            }
        }
        out
    }

    /// Loads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`, e.g.
    /// written by `PeftModel.save_pretrained`) and attaches it as [`Self::apply_peft_adapter`]
    /// does.
    ///
    /// # Errors
    /// Those of [`lora::load_peft`] and [`Self::apply_peft_adapter`].
    pub fn load_peft_adapter(self, dir: &Path, device: &B::Device) -> Result<Self, LoraError> {
        let adapter = lora::load_peft(dir)?;
        self.apply_peft_adapter(adapter, device)
    }

    /// Attaches the adapters of a PEFT folder already read into memory, replacing any attached
    /// before, and freezes the base as [`Self::with_lora`] does.
    ///
    /// # Errors
    /// [`LoraError::MissingTensor`] when a targeted projection of some layer has no weights,
    /// [`LoraError::UnexpectedTensor`] when the file adapts a module this model lacks (e.g. a
    /// layer past the last), [`LoraError::ShapeMismatch`] when A or B does not fit its projection.
    pub fn apply_peft_adapter(
        mut self,
        adapter: PeftAdapter,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        let PeftAdapter {
            config,
            mut weights,
            weights_path,
            ..
        } = adapter;
        let r = config.r;
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for target in LoraTarget::ALL {
                let proj = layer.projection_mut(target);
                if !config.targets(target) {
                    proj.lora = None;
                    continue;
                }
                let module = module_path(i, target);
                let (a_name, b_name) = lora::peft_tensor_names(&module);
                let w = weights
                    .remove(&module)
                    .ok_or_else(|| LoraError::MissingTensor {
                        path: weights_path.clone(),
                        tensor: a_name.clone(),
                    })?;
                let (d_out, d_in) = proj.dims();
                for (name, data, expected) in
                    [(a_name, &w.a, [r, d_in]), (b_name, &w.b, [d_out, r])]
                {
                    if data.shape.to_vec() != expected {
                        return Err(LoraError::ShapeMismatch {
                            path: weights_path.clone(),
                            tensor: name,
                            expected: expected.to_vec(),
                            found: data.shape.to_vec(),
                        });
                    }
                }
                proj.lora = Some(LoraAdapter::from_weights(&config, w.a, w.b, device));
            }
        }
        if let Some(module) = weights.keys().next() {
            return Err(LoraError::UnexpectedTensor {
                path: weights_path,
                tensor: lora::peft_tensor_names(module).0,
                reason: format!(
                    "this model has no module `{module}` ({} layers)",
                    self.model.layers.len()
                ),
            });
        }
        self.lora_config = Some(config);
        Ok(self.freeze_base())
    }

    /// Writes the attached adapters as a PEFT adapter folder that `PeftModel.from_pretrained`
    /// loads onto the base model `base_model_name_or_path` (recorded in `adapter_config.json`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] when no adapters are attached; those of [`lora::save_peft`].
    pub fn save_peft_adapter(
        &self,
        dir: &Path,
        base_model_name_or_path: &str,
    ) -> Result<(), LoraError> {
        let config = self.lora_config.as_ref().ok_or_else(|| {
            LoraError::InvalidConfig("the model has no LoRA adapters to save".into())
        })?;
        lora::save_peft(dir, config, base_model_name_or_path, &self.lora_adapters())
    }

    /// Folds every adapter into its base weight (`W += scaling * B A` in f32, cast back to `W`'s
    /// dtype) and removes the adapters: the result computes what the adapted model computed,
    /// with no LoRA branch.
    ///
    /// # Errors
    /// [`LoraError::NonFinite`] naming the first module whose merged weight is not finite.
    pub fn merge_lora(mut self) -> Result<Self, LoraError> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for target in LoraTarget::ALL {
                layer
                    .projection_mut(target)
                    .merge_lora(&module_path(i, target))?;
            }
        }
        self.lora_config = None;
        Ok(self)
    }

    /// Marks adapter parameters trainable and every other parameter frozen.
    fn freeze_base(self) -> Self {
        self.map(&mut SetTrainable {
            inside: AdapterDepth::default(),
        })
    }
}

/// Whether a module walk is inside a [`LoraAdapter`]; fed by `ModuleMapper::enter_module` /
/// `exit_module`, whose `container_type` is the struct owning the field being entered.
#[derive(Debug, Default)]
pub(crate) struct AdapterDepth(usize);

impl AdapterDepth {
    const CONTAINER: &'static str = "Struct:LoraAdapter";

    pub(crate) fn enter(&mut self, container_type: &str) {
        self.0 += usize::from(container_type == Self::CONTAINER);
    }

    pub(crate) fn exit(&mut self, container_type: &str) {
        self.0 -= usize::from(container_type == Self::CONTAINER);
    }

    pub(crate) fn get(&self) -> bool {
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
