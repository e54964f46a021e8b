//! `cargo run -p tiny-gpt-example`: fine-tunes the example's GPT-style model on the CPU with
//! LoRA, then with SparseLoRA, prints both loss curves and saves both PEFT adapters.

use anyhow::Context;
use sparselora::SparsityConfig;
use tiny_gpt_example::{FineTune, Report, TrainBackend, SPARSITY_TOML};

const STEPS: usize = 30;

fn main() -> anyhow::Result<()> {
    let device = Default::default();
    let out = std::env::temp_dir().join("tiny-gpt-example");
    let sparsity = SparsityConfig::from_toml_str(SPARSITY_TOML).context("the example's config")?;
    let runs = [
        ("LoRA", FineTune::new(STEPS, out.join("lora"))),
        (
            "SparseLoRA",
            FineTune::new(STEPS, out.join("sparselora")).with_sparsity(sparsity),
        ),
    ];
    let mut reports: Vec<Report> = Vec::new();
    for (name, run) in runs {
        let (model, report) = run
            .run::<TrainBackend>(&device)
            .with_context(|| format!("training with {name}"))?;
        let adapter = run.out.join("adapter");
        model
            .save_peft_adapter(&adapter, "tiny-gpt-example")
            .with_context(|| format!("saving the {name} adapter"))?;
        println!("{name}: adapter saved to {}", adapter.display());
        reports.push(report);
    }

    println!("\nstep   LoRA loss   SparseLoRA loss");
    let (dense, sparse) = (&reports[0], &reports[1]);
    for (i, (d, s)) in dense.losses.iter().zip(&sparse.losses).enumerate() {
        let path = if sparse.sparse[i] { "sparse" } else { "dense" };
        println!("{:>4}   {d:>9.4}   {s:>15.4}  ({path})", i + 1);
    }
    if let Some(counts) = sparse.channels {
        println!(
            "\nSparseLoRA steps computed {:.0}% of the attention channels and {:.0}% of the MLP \
             channels of a dense step (block 0 dense, block 1 sparse)",
            100.0 * counts.attention.fraction(),
            100.0 * counts.mlp.fraction()
        );
    }
    Ok(())
}
