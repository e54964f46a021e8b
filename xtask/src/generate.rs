//! `cargo xtask generate`: greedy continuation of prompts.

use burn::tensor::{backend::Backend, DType};
use clap::Args;
use llama_burn::generate::{generate_greedy, GenerationConfig};

use crate::backend::BackendJob;
use crate::model_args::{ModelArgs, CHECKPOINT_HELP};
use crate::model_source::ModelSource;

/// Greedy generation from one or more prompts (batched, left-padded).
#[derive(Args, Debug)]
#[command(mut_arg("model", |a| a.help(CHECKPOINT_HELP)))]
pub struct Generate {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; repeat for a batch.
    #[arg(long, default_value = "The capital of France is")]
    prompt: Vec<String>,
    /// Wrap each prompt in the model's chat template (ChatML for SmolLM2).
    #[arg(long)]
    chat: bool,
    /// Maximum new tokens per prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
}

impl Generate {
    pub fn run(self) -> anyhow::Result<()> {
        let source = self.model.checkpoint()?;
        self.model
            .clone()
            .dispatch(GenerateJob { args: self, source })
    }
}

struct GenerateJob {
    args: Generate,
    source: ModelSource,
}

impl BackendJob for GenerateJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let tokenizer = self.source.tokenizer()?;
        let model = self.source.load::<B>(dtype, &device)?;
        let texts: Vec<String> = self
            .args
            .prompt
            .iter()
            .map(|p| {
                if self.args.chat {
                    format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n")
                } else {
                    p.clone()
                }
            })
            .collect();
        let prompts = texts
            .iter()
            .map(|t| tokenizer.encode(t, false))
            .collect::<Result<Vec<_>, _>>()?;
        let eos = model.config.eos_ids();
        let pad = model.config.pad_id();
        let start = std::time::Instant::now();
        let outputs = generate_greedy(
            &model,
            &prompts,
            &GenerationConfig::new(self.args.max_new_tokens, eos, pad),
        )?;
        let elapsed = start.elapsed().as_secs_f64();
        let total: usize = outputs.iter().map(Vec::len).sum();
        for (prompt, ids) in self.args.prompt.iter().zip(&outputs) {
            let text = tokenizer.decode(ids, true)?;
            if self.args.chat {
                println!("> {prompt}\n{text}\n");
            } else {
                println!("{prompt}{text}");
            }
        }
        eprintln!(
            "{total} tokens in {elapsed:.2} s ({:.1} tokens/s)",
            total as f64 / elapsed.max(1e-9)
        );
        Ok(())
    }
}
