//! Shared by the PEFT tests: the fixture batch of `tests/fixtures/peft-tiny/expected.json`
//! (scripts/make_peft_fixture.py), and tensor <-> vector helpers.

#![allow(dead_code)] // each test binary uses a different subset

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};
use serde_json::Value;

/// `tests/fixtures/peft-tiny/expected.json`, parsed.
pub fn expected() -> Value {
    let path = integration_tests::fixture("peft-tiny/expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn int_rows(v: &Value) -> (Vec<i64>, [usize; 2]) {
    let rows = v.as_array().unwrap();
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        .collect();
    let shape = [rows.len(), flat.len() / rows.len()];
    (flat, shape)
}

/// `(input_ids, attention_mask, labels)` of a fixture JSON (`[batch, seq]` each).
pub fn batch<B: Backend>(
    json: &Value,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>, Tensor<B, 2, Int>) {
    let (ids, shape) = int_rows(&json["input_ids"]);
    let (mask, _) = int_rows(&json["attention_mask"]);
    let ids = Tensor::from_data(TensorData::new(ids, shape), device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, shape), device).equal_elem(1);
    let labels = match json.get("labels") {
        Some(labels) => Tensor::from_data(TensorData::new(int_rows(labels).0, shape), device),
        None => Tensor::zeros(shape, device),
    };
    (ids, mask, labels)
}

/// A JSON array of numbers as f64.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A tensor's values as f32, row-major.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

/// Copies the PEFT-made fixture adapter into a fresh scratch folder and returns it.
pub fn scratch_copy_of_fixture_adapter(name: &str) -> std::path::PathBuf {
    let dir = integration_tests::scratch(name);
    let src = integration_tests::fixture("peft-tiny/adapter");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    dir
}
