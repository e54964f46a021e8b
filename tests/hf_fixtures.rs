//! Our forward, layer inputs and greedy generation against `transformers` on the committed
//! fixtures (scripts/make_tiny_llama_fixture.py): f32 to 1e-4 relative.

use burn::tensor::DType;
use integration_tests::{fixture, TestBackend};
use llama_burn::golden::compare_hf_fixture;
use llama_burn::load_hf_folder;

fn check(name: &str) {
    let dir = fixture(name);
    let model = load_hf_folder::<TestBackend>(&dir, DType::F32, &Default::default()).unwrap();
    let report = compare_hf_fixture(&model, &dir).unwrap();
    println!("{name}: {report:?}");
    assert!(
        report.logits_rel_err < 1e-4,
        "logits rel err {}",
        report.logits_rel_err
    );
    assert!(
        report.layer_input_rel_err < 1e-4,
        "layer input rel err {}",
        report.layer_input_rel_err
    );
    assert!(
        (report.nll.0 - report.nll.1).abs() < 1e-4,
        "nll {:?}",
        report.nll
    );
    assert_eq!(report.generated.0, report.generated.1, "greedy generation");
}

#[test]
fn tiny_llama_gqa_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn tiny_llama31_rope_scaling_and_tied_head_match_transformers() {
    check("tiny-llama31");
}
