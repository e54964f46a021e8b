//! Loading HF folders: bf16/f16/f32 and sharded checkpoints give the same model, and every kind of
//! bad checkpoint gives an error that names the problem (never a panic).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};
use half::{bf16, f16};
use integration_tests::{
    fixture, read_safetensors, scratch, write_safetensors, RawTensor, TestBackend,
};
use llama_burn::{load_hf_folder, LlamaError};
use safetensors::Dtype;

/// A copy of `tests/fixtures/tiny-llama` in a scratch folder, with its tensors passed through `edit`.
fn edited_copy(test: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> PathBuf {
    let src = fixture("tiny-llama");
    let dir = scratch(test);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut entries = read_safetensors(&src.join("model.safetensors"));
    edit(&mut entries);
    write_safetensors(&dir.join("model.safetensors"), &entries);
    dir
}

fn logits(dir: &Path) -> Vec<f32> {
    let device = Default::default();
    let model = load_hf_folder::<TestBackend>(dir, DType::F32, &device).unwrap();
    let (ids, mask) =
        llama_burn::golden::fixture_batch::<TestBackend>(&fixture("tiny-llama"), &device).unwrap();
    let out: Tensor<TestBackend, 3> = model.forward(ids, mask);
    out.into_data().convert::<f32>().into_vec().unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn to_half(entries: &mut [RawTensor], dtype: Dtype) {
    for e in entries.iter_mut() {
        let values: Vec<f32> = e
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        e.bytes = match dtype {
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        e.dtype = dtype;
    }
}

#[test]
fn bf16_and_f16_checkpoints_load_like_f32() {
    let reference = logits(&fixture("tiny-llama"));
    for (dtype, tol) in [(Dtype::BF16, 3e-2), (Dtype::F16, 3e-3)] {
        let dir = edited_copy(&format!("half-{dtype:?}"), |e| to_half(e, dtype));
        let err = max_rel_diff(&logits(&dir), &reference);
        assert!(err < tol, "{dtype:?}: rel err {err}");
        assert!(err > 0.0, "{dtype:?}: weights were not actually rounded");
    }
}

#[test]
fn sharded_checkpoint_loads_identically() {
    let src = fixture("tiny-llama");
    let dir = scratch("sharded");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let entries = read_safetensors(&src.join("model.safetensors"));
    let (first, second) = entries.split_at(entries.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(&dir.join(names[0]), first);
    write_safetensors(&dir.join(names[1]), second);
    let weight_map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|e| (e.name.clone(), names[0].into()))
        .chain(second.iter().map(|e| (e.name.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(logits(&dir), logits(&src));

    // A shard the index names but the folder lacks.
    std::fs::remove_file(dir.join(names[1])).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, LlamaError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains(names[1]), "{err}");
}

fn load_err(dir: &Path) -> LlamaError {
    match load_hf_folder::<TestBackend>(dir, DType::F32, &Default::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_files_are_named() {
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(matches!(err, LlamaError::MissingFile { .. }), "{err}");

    let dir = edited_copy("no-weights", |_| {});
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, LlamaError::MissingFile { .. })
            && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn malformed_config_is_a_parse_error() {
    let dir = edited_copy("bad-config", |_| {});
    std::fs::write(dir.join("config.json"), "{\"vocab_size\": \"many\"").unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, LlamaError::Parse { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let gone = "model.layers.1.mlp.down_proj.weight";
    let dir = edited_copy("missing-tensor", |e| e.retain(|t| t.name != gone));
    let err = load_err(&dir);
    assert!(matches!(err, LlamaError::MissingTensor { .. }), "{err}");
    assert!(err.to_string().contains(gone), "{err}");
}

#[test]
fn unexpected_tensor_is_named() {
    let extra = "model.layers.0.self_attn.q_norm.weight";
    let dir = edited_copy("unexpected-tensor", |e| {
        e.push(RawTensor {
            name: extra.into(),
            dtype: Dtype::F32,
            shape: vec![16],
            bytes: vec![0; 64],
        })
    });
    let err = load_err(&dir);
    assert!(matches!(err, LlamaError::UnexpectedTensor { .. }), "{err}");
    assert!(err.to_string().contains(extra), "{err}");
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let name = "model.layers.0.mlp.up_proj.weight";
    let dir = edited_copy("shape-mismatch", |e| {
        let t = e.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![64, 128]; // transposed: the config implies [128, 64]
    });
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains(name) && msg.contains("[64, 128]") && msg.contains("[128, 64]"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let name = "model.norm.weight";
    let dir = edited_copy("int-dtype", |e| {
        let t = e.iter_mut().find(|t| t.name == name).unwrap();
        t.dtype = Dtype::I32;
    });
    let err = load_err(&dir);
    assert!(matches!(err, LlamaError::UnsupportedDtype { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn truncated_checkpoint_is_an_error() {
    let dir = edited_copy("truncated", |_| {});
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}
