//! `cargo xtask bench`: microbenchmarks, one subcommand each. Results go to `bench/results/`.

mod gemm;
#[cfg(feature = "cuda")]
mod gemm_check;
mod shapes;

use clap::{Args, Subcommand};

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
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        match self.what {
            What::Gemm(cmd) => cmd.run(),
        }
    }
}
