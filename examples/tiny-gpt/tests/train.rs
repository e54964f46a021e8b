//! The example trains on the CPU, dense and sparse: the loss falls, the sparse steps computed
//! exactly the planned channels, and the saved adapter loads back into a fresh model.

use lora::sparse::kept_channels;
use sparselora::SparsityConfig;
use tiny_gpt_example::{FineTune, Report, TrainBackend, SPARSITY_TOML};
use trainer::{collate, CausalLm, CollateConfig};

const STEPS: usize = 20;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tiny-gpt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The mean of the last three losses is well below that of the first three.
fn assert_falls(name: &str, report: &Report) {
    let (first, last) = (mean(&report.losses[..3]), mean(&report.losses[STEPS - 3..]));
    assert!(
        last < 0.6 * first,
        "{name}: loss went from {first:.3} to {last:.3}: {:?}",
        report.losses
    );
}

#[test]
fn lora_and_sparselora_train_and_sparse_steps_compute_fewer_channels() {
    let device = Default::default();
    let dense_dir = scratch("lora");
    let (dense_model, dense) = FineTune::new(STEPS, &dense_dir)
        .run::<TrainBackend>(&device)
        .unwrap();
    assert_falls("LoRA", &dense);

    let sparsity = SparsityConfig::from_toml_str(SPARSITY_TOML).unwrap();
    let sparse_dir = scratch("sparselora");
    let run = FineTune::new(STEPS, &sparse_dir).with_sparsity(sparsity);
    let (_, sparse) = run.run::<TrainBackend>(&device).unwrap();
    assert_falls("SparseLoRA", &sparse);

    // start_step = 0.1: the first 2 of 20 steps are dense, and identical to LoRA's.
    assert_eq!(sparse.sparse.iter().filter(|&&s| !s).count(), 2);
    assert_eq!(sparse.losses[..2], dense.losses[..2]);
    assert_ne!(sparse.losses[2..], dense.losses[2..]);

    // Block 0 dense, block 1 at the planned sparsity: attention keeps 24 of 32 channels of each
    // projection (no grouped KV heads, so q and o as many as k and v), the MLP 32 of 64.
    let counts = sparse.channels.unwrap();
    let (d, d_ff) = (32, 64);
    assert_eq!(kept_channels(d, 0.25), 24);
    assert_eq!(counts.attention.computed * 8, counts.attention.full * 7); // (4d + 4*24) / 8d
    assert_eq!(counts.mlp.computed * 4, counts.mlp.full * 3); // (3 d_ff + 3 d_ff / 2) / 6 d_ff
    assert_eq!(kept_channels(d_ff, 0.5), 32);
    assert!(counts.mlp.full > 0 && counts.attention.full > 0);

    // The PEFT adapter the run saved loads into a fresh model and gives the same loss.
    let adapter = dense_dir.join("adapter");
    dense_model
        .save_peft_adapter(&adapter, "tiny-gpt-example")
        .unwrap();
    let fresh = FineTune::new(STEPS, &dense_dir)
        .initial_model::<TrainBackend>(&device)
        .unwrap();
    let reloaded = fresh.load_adapter(&adapter, &device).unwrap();
    let examples = tiny_gpt_example::data::counting_examples(4, 32, 6);
    let batch = || collate::<TrainBackend, _>(&examples, &CollateConfig::new(0), &device).unwrap();
    let loss = |m: &tiny_gpt_example::TinyGpt<TrainBackend>| -> Vec<f32> {
        let value = m.loss(batch(), None).into_data();
        value.convert::<f32>().into_vec().unwrap()
    };
    assert_eq!(loss(&reloaded), loss(&dense_model));

    for dir in [dense_dir, sparse_dir] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
