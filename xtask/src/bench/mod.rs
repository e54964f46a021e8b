//! `cargo xtask bench`: microbenchmarks, one subcommand each. Results go to `bench/results/`.

mod gemm;
#[cfg(feature = "cuda")]
mod gemm_check;
mod host_profile;
mod shapes;
mod step;
mod step_gemms;
mod svd;

pub use gemm::{git_commit, slug, utc_timestamp};
pub(crate) use step::workload_batch;

use clap::{Args, Subcommand};

/// `--model` of the benchmarks, which draw random weights of a preset's shape.
const PRESET_HELP: &str =
    "Model preset whose shape gets random weights (`llama3-8b`, `llama2-7b`, \
                           `llama2-13b`, `smollm2-135m`, `tiny`, ...)";

/// Microbenchmarks on the GPU.
#[derive(Args, Debug)]
pub struct Bench {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// cuBLASLt (our seam) vs burn's matmul (vs torch.matmul) on LLaMA3-8B's GEMM shapes.
    Gemm(gemm::Gemm),
    /// The estimator's offline SVD on a random model of a preset's shape (e.g. LLaMA3-8B).
    Svd(svd::SvdBench),
    /// LoRA / SparseLoRA training steps on a random model of a preset's shape (the peer's
    /// workload: batch 8 x 512, 3 or 128 answer tokens).
    Step(Box<step::StepBench>),
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        match self.what {
            What::Gemm(cmd) => cmd.run(),
            What::Svd(cmd) => cmd.run(),
            What::Step(cmd) => cmd.run(),
        }
    }
}
