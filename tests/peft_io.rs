//! PEFT adapter folders: save -> load is exact, and every malformed folder fails with an error
//! that names the file, tensor or option at fault.

mod peft_support;

use std::path::Path;

use burn::tensor::{DType, Distribution, Tensor};
use integration_tests::{
    fixture, read_safetensors, scratch, write_safetensors, RawTensor, TestBackend,
};
use llama_burn::{load_hf_folder, LlamaForCausalLM, LlamaProjection};
use lora::{load_peft, LoraAdapter, LoraConfig, LoraError};
use peft_support::{batch, expected, scratch_copy_of_fixture_adapter, values};
use serde_json::Value;

const Q0: &str = "base_model.model.model.layers.0.self_attn.q_proj";

fn base() -> LlamaForCausalLM<TestBackend> {
    load_hf_folder(&fixture("tiny-llama"), DType::F32, &Default::default()).unwrap()
}

/// An adapted model whose B matrices are random (non-zero), so that round trips are meaningful.
fn random_adapted(config: &LoraConfig) -> LlamaForCausalLM<TestBackend> {
    let device = Default::default();
    let mut model = base().with_lora(config, &device);
    for layer in &mut model.model.layers {
        for target in LlamaProjection::ALL {
            let proj = layer.projection_mut(target);
            let Some(adapter) = proj.lora.take() else {
                continue;
            };
            let (d_out, _) = adapter.dims();
            let b = Tensor::<TestBackend, 2>::random(
                [d_out, config.r],
                Distribution::Normal(0.0, 0.1),
                &device,
            );
            proj.lora = Some(LoraAdapter::from_weights(
                config,
                adapter.lora_a.val().into_data(),
                b.into_data(),
                &device,
            ));
        }
    }
    model
}

#[test]
fn peft_save_load_round_trip_is_exact() {
    let config = LoraConfig::new()
        .with_r(4)
        .with_alpha(12.0)
        .with_dropout(0.05)
        .with_targets(LlamaProjection::target_modules(&[
            LlamaProjection::K,
            LlamaProjection::O,
            LlamaProjection::Up,
        ]));
    let model = random_adapted(&config);
    let dir = scratch("peft-round-trip");
    model.save_peft_adapter(&dir, "my/base").unwrap();

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["adapter_config.json", "adapter_model.safetensors"],
        "no temp files left"
    );

    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 12);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["k_proj", "o_proj", "up_proj"])
    );
    assert_eq!(cfg["base_model_name_or_path"], "my/base");
    for (key, off) in [
        ("use_rslora", false),
        ("use_dora", false),
        ("fan_in_fan_out", false),
    ] {
        assert_eq!(cfg[key], off, "{key}");
    }
    assert_eq!(cfg["bias"], "none");

    let tensors = read_safetensors(&dir.join("adapter_model.safetensors"));
    assert_eq!(tensors.len(), 2 * 3 * 2);
    assert!(tensors.iter().all(|t| t.dtype == safetensors::Dtype::F32));

    let loaded = load_peft(&dir).unwrap();
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.base_model_name_or_path.as_deref(), Some("my/base"));
    for (module, adapter) in model.lora_adapters() {
        let w = &loaded.weights[&module];
        assert_eq!(w.a, adapter.lora_a.val().into_data(), "{module} A");
        assert_eq!(w.b, adapter.lora_b.val().into_data(), "{module} B");
    }

    let device = Default::default();
    let reloaded = base().load_peft_adapter(&dir, &device).unwrap();
    assert_eq!(reloaded.lora_config(), Some(&config));
    let json = expected();
    let (ids, mask, _) = batch::<TestBackend>(&json, &device);
    assert_eq!(
        values(model.forward(ids.clone(), mask.clone())),
        values(reloaded.forward(ids, mask)),
        "logits after a round trip"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn peft_bf16_and_f16_adapters_load_as_f32() {
    for dtype in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        let dir = scratch_copy_of_fixture_adapter(&format!("peft-{dtype:?}"));
        let path = dir.join("adapter_model.safetensors");
        let mut tensors = read_safetensors(&path);
        for t in &mut tensors {
            t.bytes = t
                .bytes
                .chunks_exact(4)
                .flat_map(|c| {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    match dtype {
                        safetensors::Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes(),
                        _ => half::f16::from_f32(v).to_le_bytes(),
                    }
                })
                .collect();
            t.dtype = dtype;
        }
        write_safetensors(&path, &tensors);
        let adapter = load_peft(&dir).unwrap();
        let w = &adapter.weights["model.layers.0.self_attn.q_proj"];
        assert_eq!(w.a.dtype, DType::F32);
        assert_eq!(w.a.shape.to_vec(), vec![8, 64]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `all-linear` targets every projection of every layer: the fixture (all seven adapted) loads
/// under it exactly as under its list of names, and saves back as `all-linear`.
#[test]
fn peft_all_linear_targets_every_projection() {
    let dir = scratch_copy_of_fixture_adapter("peft-all-linear");
    let cfg_path = dir.join("adapter_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["target_modules"] = serde_json::json!("all-linear");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let device = Default::default();
    let all_linear = base().load_peft_adapter(&dir, &device).unwrap();
    let listed = base()
        .load_peft_adapter(&fixture("peft-tiny/adapter"), &device)
        .unwrap();
    assert_eq!(
        all_linear.lora_config().unwrap().targets,
        lora::TargetModules::AllLinear
    );
    assert_eq!(
        all_linear.lora_adapters().len(),
        listed.lora_adapters().len()
    );
    let json = expected();
    let (ids, mask, _) = batch::<TestBackend>(&json, &device);
    assert_eq!(
        values(all_linear.forward(ids.clone(), mask.clone())),
        values(listed.forward(ids, mask)),
    );

    let saved = scratch("peft-all-linear-saved");
    all_linear.save_peft_adapter(&saved, "my/base").unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["target_modules"], "all-linear");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&saved);
}

/// Loads a modified copy of the fixture adapter and returns the error.
fn load_err(
    name: &str,
    edit_config: impl FnOnce(&mut Value),
    edit_tensors: impl FnOnce(&mut Vec<RawTensor>),
) -> LoraError {
    let dir = scratch_copy_of_fixture_adapter(name);
    let cfg_path = dir.join("adapter_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let st_path = dir.join("adapter_model.safetensors");
    let mut tensors = read_safetensors(&st_path);
    edit_tensors(&mut tensors);
    write_safetensors(&st_path, &tensors);
    let err = base()
        .load_peft_adapter(&dir, &Default::default())
        .err()
        .unwrap_or_else(|| panic!("{name}: loading should fail"));
    println!("{name}: {err}");
    let _ = std::fs::remove_dir_all(&dir);
    err
}

fn assert_mentions(err: &LoraError, parts: &[&str]) {
    let msg = err.to_string();
    for part in parts {
        assert!(msg.contains(part), "`{msg}` should mention `{part}`");
    }
}

#[test]
fn peft_missing_files_are_named() {
    let dir = scratch("peft-missing");
    let err = load_peft(&dir).unwrap_err();
    assert!(
        matches!(&err, LoraError::MissingFile { path, .. } if path.ends_with("adapter_config.json")),
        "{err}"
    );
    std::fs::copy(
        fixture("peft-tiny/adapter/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let err = load_peft(&dir).unwrap_err();
    assert!(
        matches!(&err, LoraError::MissingFile { path, .. } if path.ends_with("adapter_model.safetensors")),
        "{err}"
    );
    std::fs::write(dir.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    assert!(matches!(
        load_peft(&dir),
        Err(LoraError::Safetensors { .. })
    ));
    std::fs::write(dir.join("adapter_config.json"), b"{ nope").unwrap();
    assert!(matches!(load_peft(&dir), Err(LoraError::Parse { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn peft_unsupported_options_are_rejected_by_name() {
    for (option, value) in [
        ("use_rslora", serde_json::json!(true)),
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("lora_only")),
        ("rank_pattern", serde_json::json!({"q_proj": 4})),
        ("modules_to_save", serde_json::json!(["lm_head"])),
    ] {
        let err = load_err(&format!("peft-opt-{option}"), |c| c[option] = value, |_| {});
        assert!(
            matches!(&err, LoraError::Unsupported { option: o, .. } if o == option),
            "{option}: {err}"
        );
        assert_mentions(&err, &["adapter_config.json", option]);
    }
}

#[test]
fn peft_missing_unexpected_and_misshapen_tensors_are_named() {
    let q0_b = format!("{Q0}.lora_B.weight");
    let err = load_err("peft-missing-b", |_| {}, |t| t.retain(|t| t.name != q0_b));
    assert!(
        matches!(&err, LoraError::MissingTensor { tensor, .. } if *tensor == q0_b),
        "{err}"
    );
    assert_mentions(&err, &["adapter_model.safetensors", &q0_b]);

    let err = load_err(
        "peft-extra",
        |_| {},
        |t| {
            t.push(RawTensor::f32(
                "base_model.model.lm_head.weight",
                vec![1],
                &[0.0],
            ))
        },
    );
    assert!(matches!(&err, LoraError::UnexpectedTensor { .. }), "{err}");
    assert_mentions(&err, &["base_model.model.lm_head.weight"]);

    // A target_modules name that matches no projection of the model (PEFT refuses it too).
    let err = load_err(
        "peft-unknown-target",
        |c| {
            c["target_modules"] = serde_json::json!([
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "qkv_proj"
            ])
        },
        |_| {},
    );
    assert!(matches!(&err, LoraError::UnknownTarget { .. }), "{err}");
    assert_mentions(&err, &["`qkv_proj`"]);

    // A module that is not among target_modules.
    let err = load_err(
        "peft-untargeted",
        |c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]),
        |_| {},
    );
    assert!(matches!(&err, LoraError::UnexpectedTensor { .. }), "{err}");
    assert_mentions(
        &err,
        &["down_proj.lora_A.weight", "target_modules", "\"v_proj\""],
    );

    // B with rank 4 while r = 8: caught from the file alone.
    let q0_b2 = q0_b.clone();
    let err = load_err(
        "peft-rank",
        |_| {},
        move |t| {
            let b = t.iter_mut().find(|t| t.name == q0_b2).unwrap();
            *b = RawTensor::f32(&q0_b2, vec![64, 4], &[0.0; 256]);
        },
    );
    assert!(matches!(&err, LoraError::ShapeMismatch { .. }), "{err}");
    assert_mentions(&err, &[&q0_b, "[64, 4]", "[64, 8]"]);

    // A of the right rank but the wrong width: caught against the model.
    let q0_a = format!("{Q0}.lora_A.weight");
    let q0_a2 = q0_a.clone();
    let err = load_err(
        "peft-width",
        |_| {},
        move |t| {
            let a = t.iter_mut().find(|t| t.name == q0_a2).unwrap();
            *a = RawTensor::f32(&q0_a2, vec![8, 32], &[0.0; 256]);
        },
    );
    assert!(
        matches!(&err, LoraError::ShapeMismatch { expected, found, .. } if *expected == [8, 64] && *found == [8, 32]),
        "{err}"
    );
    assert_mentions(&err, &[&q0_a]);

    // A layer this 2-layer model does not have.
    let err = load_err(
        "peft-layer",
        |_| {},
        |t| {
            for name in ["lora_A", "lora_B"] {
                let shape = if name == "lora_A" {
                    vec![8, 64]
                } else {
                    vec![64, 8]
                };
                let n = format!("base_model.model.model.layers.7.self_attn.q_proj.{name}.weight");
                t.push(RawTensor::f32(&n, shape, &[0.0; 512]));
            }
        },
    );
    assert!(matches!(&err, LoraError::UnexpectedTensor { .. }), "{err}");
    assert_mentions(&err, &["layers.7", "2 layers"]);

    // A targeted module of the model with no weights at all.
    let err = load_err(
        "peft-module-missing",
        |_| {},
        |t| t.retain(|t| !t.name.contains("layers.1.mlp.down_proj")),
    );
    assert!(matches!(&err, LoraError::MissingTensor { .. }), "{err}");
    assert_mentions(&err, &["model.layers.1.mlp.down_proj.lora_A.weight"]);

    // An integer tensor.
    let q0_a3 = q0_a.clone();
    let err = load_err(
        "peft-dtype",
        |_| {},
        move |t| {
            let a = t.iter_mut().find(|t| t.name == q0_a3).unwrap();
            a.dtype = safetensors::Dtype::I32;
        },
    );
    assert!(matches!(&err, LoraError::UnsupportedDtype { .. }), "{err}");
    assert_mentions(&err, &[&q0_a, "I32"]);
}

#[test]
fn peft_saving_without_adapters_is_an_error() {
    let dir = scratch("peft-nothing");
    let err = base().save_peft_adapter(&dir, "x").unwrap_err();
    assert!(matches!(err, LoraError::InvalidConfig(_)), "{err}");
    assert!(!Path::new(&dir.join("adapter_config.json")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
