//! LoRA on [`TinyGpt`] through `lora`'s public API: adapters on the linear layers a
//! [`LoraConfig`] targets, the base frozen with [`lora::freeze_base`], PEFT adapter folders out
//! ([`lora::save_peft`]) and back in ([`lora::load_peft`]).

use std::path::Path;

use burn::tensor::backend::Backend;
use lora::{LoraAdapter, LoraConfig, LoraError, LoraLinear};

use crate::model::TinyGpt;

impl<B: Backend> TinyGpt<B> {
    /// Every linear layer LoRA may adapt, with its module path (`h.0.attn.q_proj`), block by
    /// block. The output head is not among them.
    pub fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let per_block = self.h.iter().enumerate().map(|(i, block)| {
            block
                .linears()
                .map(|(name, linear)| (format!("h.{i}.{name}"), linear))
        });
        per_block.flatten().collect()
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LoraLinear<B>)> {
        let per_block = self.h.iter_mut().enumerate().map(|(i, block)| {
            block
                .linears_mut()
                .map(|(name, linear)| (format!("h.{i}.{name}"), linear))
        });
        per_block.flatten().collect()
    }

    /// Attaches fresh adapters (B zero: the outputs do not change) to every linear layer whose
    /// path `config` targets, and freezes everything else: after this only the adapters train.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for an invalid config, [`LoraError::UnknownTarget`] for a
    /// target name that matches no layer (it would silently train nothing).
    pub fn with_lora(mut self, config: &LoraConfig, device: &B::Device) -> Result<Self, LoraError> {
        config.validate()?;
        let paths: Vec<String> = self.linears().into_iter().map(|(p, _)| p).collect();
        if let Some(name) = config
            .targets
            .unmatched(paths.iter().map(String::as_str))
            .first()
        {
            return Err(LoraError::UnknownTarget {
                name: (*name).to_owned(),
                hint: "this model has h.N.attn.{q,k,v,o}_proj and h.N.mlp.{gate,up,down}_proj"
                    .into(),
            });
        }
        for (path, linear) in self.linears_mut() {
            let (d_out, d_in) = linear.dims();
            linear.lora = config
                .targets_module(&path)
                .then(|| config.init(d_in, d_out, device));
        }
        self.lora_config = Some(config.clone());
        Ok(lora::freeze_base(self))
    }

    /// The attached adapters with their module paths.
    pub fn lora_adapters(&self) -> Vec<(String, &LoraAdapter<B>)> {
        let adapted = self.linears().into_iter();
        adapted
            .filter_map(|(path, linear)| linear.lora.as_ref().map(|a| (path, a)))
            .collect()
    }

    /// Writes the adapters as a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] without adapters; those of [`lora::save_peft`].
    pub fn save_peft_adapter(&self, dir: &Path, base_model: &str) -> Result<(), LoraError> {
        let config = self.lora_config.as_ref().ok_or_else(|| {
            LoraError::InvalidConfig("the model has no LoRA adapters to save".into())
        })?;
        lora::save_peft(dir, config, base_model, &self.lora_adapters())
    }

    /// Replaces the adapters with those of the PEFT folder `dir`, base frozen.
    ///
    /// # Errors
    /// Those of [`lora::load_peft`]; [`LoraError::MissingTensor`] when a targeted layer has no
    /// weights, [`LoraError::ShapeMismatch`] when a tensor does not fit its layer,
    /// [`LoraError::UnexpectedTensor`] when the folder adapts a layer this model lacks.
    pub fn load_peft_adapter(mut self, dir: &Path, device: &B::Device) -> Result<Self, LoraError> {
        let lora::PeftAdapter {
            config,
            mut weights,
            weights_path,
            ..
        } = lora::load_peft(dir)?;
        for (path, linear) in self.linears_mut() {
            if !config.targets_module(&path) {
                linear.lora = None;
                continue;
            }
            let (a_name, b_name) = lora::peft_tensor_names(&path);
            let w = weights
                .remove(&path)
                .ok_or_else(|| LoraError::MissingTensor {
                    path: weights_path.clone(),
                    tensor: a_name.clone(),
                })?;
            let (d_out, d_in) = linear.dims();
            for (tensor, data, expected) in [
                (a_name, &w.a, [config.r, d_in]),
                (b_name, &w.b, [d_out, config.r]),
            ] {
                if data.shape.to_vec() != expected {
                    return Err(LoraError::ShapeMismatch {
                        path: weights_path.clone(),
                        tensor,
                        expected: expected.to_vec(),
                        found: data.shape.to_vec(),
                    });
                }
            }
            linear.lora = Some(LoraAdapter::from_weights(&config, w.a, w.b, device));
        }
        if let Some(module) = weights.keys().next() {
            return Err(LoraError::UnexpectedTensor {
                path: weights_path,
                tensor: lora::peft_tensor_names(module).0,
                reason: format!("this model has no layer `{module}`"),
            });
        }
        self.lora_config = Some(config);
        Ok(lora::freeze_base(self))
    }
}
