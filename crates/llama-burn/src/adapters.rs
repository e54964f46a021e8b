//! LoRA on a [`LlamaForCausalLM`]: attaching adapters to the targeted projections of every layer
//! with the base frozen, listing them under their HF module paths, PEFT adapter folders in and
//! out, and merging them into the base weights.
//!
//! The computation is PEFT's (`peft.get_peft_model(model, LoraConfig(...))`), checked against it
//! by `tests/peft_fixture.rs` (outputs, loss and every adapter gradient).

use std::path::Path;

use burn::tensor::backend::Backend;
use lora::{LoraAdapter, LoraConfig, LoraError, LoraLinear, PeftAdapter};

use crate::model::{LlamaDecoderLayer, LlamaForCausalLM};
use crate::projection::LlamaProjection;

impl<B: Backend> LlamaDecoderLayer<B> {
    /// The projection `which` names.
    pub fn projection(&self, which: LlamaProjection) -> &LoraLinear<B> {
        match which {
            LlamaProjection::Q => &self.self_attn.q_proj,
            LlamaProjection::K => &self.self_attn.k_proj,
            LlamaProjection::V => &self.self_attn.v_proj,
            LlamaProjection::O => &self.self_attn.o_proj,
            LlamaProjection::Gate => &self.mlp.gate_proj,
            LlamaProjection::Up => &self.mlp.up_proj,
            LlamaProjection::Down => &self.mlp.down_proj,
        }
    }

    /// The projection `which` names, mutably.
    pub fn projection_mut(&mut self, which: LlamaProjection) -> &mut LoraLinear<B> {
        match which {
            LlamaProjection::Q => &mut self.self_attn.q_proj,
            LlamaProjection::K => &mut self.self_attn.k_proj,
            LlamaProjection::V => &mut self.self_attn.v_proj,
            LlamaProjection::O => &mut self.self_attn.o_proj,
            LlamaProjection::Gate => &mut self.mlp.gate_proj,
            LlamaProjection::Up => &mut self.mlp.up_proj,
            LlamaProjection::Down => &mut self.mlp.down_proj,
        }
    }
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Attaches fresh adapters (A Kaiming-uniform, B zero: the model's outputs are unchanged) to
    /// every projection whose module path `config` targets (`all-linear`: all seven of every
    /// layer; the LM head is never adapted), replacing any attached before, and freezes every
    /// other parameter ([`lora::freeze_base`]): after this only the adapters' A and B receive
    /// gradients.
    ///
    /// Build the model on an autodiff backend to train it; a model built on the inner backend
    /// keeps the same trainable/frozen split through `Module::train`.
    ///
    /// # Panics
    /// If `config` is invalid ([`LoraConfig::validate`]) or names a module this model lacks
    /// ([`Self::check_targets`]).
    pub fn with_lora(mut self, config: &LoraConfig, device: &B::Device) -> Self {
        if let Err(e) = config.validate().and_then(|()| self.check_targets(config)) {
            panic!("{e}");
        }
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for which in LlamaProjection::ALL {
                let proj = layer.projection_mut(which);
                let (d_out, d_in) = proj.dims();
                proj.lora = config
                    .targets_module(&which.path(i))
                    .then(|| config.init(d_in, d_out, device));
            }
        }
        self.lora_config = Some(config.clone());
        lora::freeze_base(self)
    }

    /// Checks that every name of `config.targets` matches some projection of this model, as PEFT
    /// does: a misspelt name would otherwise silently train nothing.
    ///
    /// # Errors
    /// [`LoraError::UnknownTarget`] naming the first name that matches nothing.
    pub fn check_targets(&self, config: &LoraConfig) -> Result<(), LoraError> {
        let paths: Vec<String> = (0..self.model.layers.len())
            .flat_map(|i| LlamaProjection::ALL.map(|which| which.path(i)))
            .collect();
        match config
            .targets
            .unmatched(paths.iter().map(String::as_str))
            .first()
        {
            None => Ok(()),
            Some(name) => Err(LoraError::UnknownTarget {
                name: (*name).to_owned(),
                hint: "this model adapts model.layers.N.self_attn.{q,k,v,o}_proj and \
                       model.layers.N.mlp.{gate,up,down}_proj"
                    .into(),
            }),
        }
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
            for which in LlamaProjection::ALL {
                if let Some(adapter) = &layer.projection(which).lora {
                    out.push((which.path(i), adapter));
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
    /// [`LoraError::UnknownTarget`] when a `target_modules` name matches no projection,
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
        self.check_targets(&config)?;
        let r = config.r;
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for which in LlamaProjection::ALL {
                let proj = layer.projection_mut(which);
                let module = which.path(i);
                if !config.targets_module(&module) {
                    proj.lora = None;
                    continue;
                }
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
        Ok(lora::freeze_base(self))
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
            for which in LlamaProjection::ALL {
                layer.projection_mut(which).merge_lora(&which.path(i))?;
            }
        }
        self.lora_config = None;
        Ok(self)
    }
}
