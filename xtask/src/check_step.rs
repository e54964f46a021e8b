//! `cargo xtask check-step`: one training step on a fast backend (on CUDA: bf16, cuBLASLt on
//! cubecl's stream, the fused kernels) against the reference path (burn tensor ops on the CPU, in
//! f32) on the same weights, adapters and batch: the loss and the gradient of every LoRA
//! parameter, for dense LoRA and for SparseLoRA (random channel selection with a fixed seed, so
//! both sides compute on the same channels).
//!
//! The adapters get random `A` and `B` (a fresh adapter's `B` is zero, which would leave `A`'s
//! gradient zero and untested). Errors are `|ours - ref| / |ref|` (Frobenius norms), over all
//! adapters together and for the worst single tensor.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Distribution, Tensor};
use clap::Args;
use llama_burn::{LlamaForCausalLM, LlamaProjection};
use lora::{LoraAdapter, LoraConfig};
use sparselora::FactorCache;
use trainer::step::{backward_into, micro_batch_loss};
use trainer::{SparseTraining, TrainBatch};

use crate::backend::TrainJob;
use crate::bench::workload_batch;
use crate::finetune::sparse_setup;
use crate::model_args::ModelArgs;

type Reference = Autodiff<Flex>;

/// Compares a training step on a fast backend with the CPU reference path.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("model", |a| a.help(
    "The model: `smollm2-135m` (its real weights), a checkpoint path, or with \
     `--random-weights` a preset name whose shape gets random weights"
)))]
#[command(mut_arg("backend", |a| a.default_value("cuda").help("The backend to check")))]
pub struct CheckStep {
    #[command(flatten)]
    model: ModelArgs,
    /// Draw random weights of the preset's shape instead of loading a checkpoint.
    #[arg(long)]
    random_weights: bool,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Answer (labelled) tokens at the end of each sequence.
    #[arg(long, default_value_t = 16)]
    out_len: usize,
    /// Relative error allowed on the loss and on all gradients together (per-tensor: 4x).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Fraction of attention channels the sparse step drops (0.5 and more: sliced products;
    /// kept counts that are not multiples of 8, e.g. SmolLM2 at 0.6, run at padded widths).
    #[arg(long, default_value_t = 0.5)]
    attention_sparsity: f64,
}

impl CheckStep {
    pub fn run(self) -> anyhow::Result<()> {
        self.model.clone().dispatch_autodiff(self)
    }

    /// The benchmark's batch of `--batch` x `--seq` tokens, `--out-len` of them answers.
    fn workload<B: Backend>(&self, vocab: usize, device: &B::Device) -> TrainBatch<B> {
        workload_batch::<B>(self.batch, self.seq, self.out_len, vocab, device)
    }

    /// f32 is the tight check (the fast path agreed to 3e-4 on SmolLM2's real weights). bf16
    /// keeps 8 significant bits: on SmolLM2's real weights (outlier activations in the first
    /// layers) the LoRA gradients of a bf16 step land 4e-2 (dense) to 9e-2 (sparse) from f32,
    /// whether the step runs on the fast path or on the burn-ops reference path in bf16.
    fn tolerance(&self, dtype: DType) -> f64 {
        self.tolerance.unwrap_or(match dtype {
            DType::F32 => 2e-3,
            _ => 1e-1,
        })
    }
}

/// The reference model (CPU, f32) with random adapters on every projection.
fn reference_model(
    model: &ModelArgs,
    random: bool,
) -> anyhow::Result<(LlamaForCausalLM<Reference>, LoraConfig)> {
    let device = Default::default();
    Reference::seed(&device, 7);
    let base = if random {
        model.preset()?.init_random::<Reference>(&device)
    } else {
        model.checkpoint()?.load::<Reference>(DType::F32, &device)?
    };
    let lora = LoraConfig::new()
        .with_r(8)
        .with_alpha(16.0)
        .with_targets(LlamaProjection::target_modules(&LlamaProjection::ALL));
    let mut model = base.with_lora(&lora, &device);
    for layer in model.model.layers.iter_mut() {
        for target in LlamaProjection::ALL {
            let projection = layer.projection_mut(target);
            let (out, d_in) = projection.dims();
            let draw = |shape: [usize; 2], scale: f64| {
                Tensor::<Reference, 2>::random(shape, Distribution::Normal(0.0, scale), &device)
                    .into_data()
            };
            let (a, b) = (draw([8, d_in], 0.05), draw([out, 8], 0.05));
            projection.lora = Some(LoraAdapter::from_weights(&lora, a, b, &device));
        }
    }
    Ok((model, lora))
}

/// The same module on backend `B` in `dtype` (base weights; adapters stay f32).
fn transfer<B: Backend>(
    model: &LlamaForCausalLM<Reference>,
    lora: &LoraConfig,
    dtype: DType,
    device: &B::Device,
) -> anyhow::Result<LlamaForCausalLM<B>> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(model.clone().into_record(), ())
        .map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
    let target = LlamaForCausalLM::<B>::new(&model.config, device).with_lora(lora, device);
    let record = recorder
        .load(bytes, device)
        .map_err(|e| anyhow::anyhow!("loading the model on the checked backend: {e}"))?;
    Ok(target.load_record(record).with_dtype(dtype))
}

/// Loss and the LoRA gradients (`(name, values)`, A then B of each adapter) of one step.
type StepResult = (f64, Vec<(String, Vec<f32>)>);

/// Prints how far `ours` (loss and LoRA gradients) is from `expected`; whether the loss and all
/// gradients together are within `tol`, each gradient tensor within `4 tol`, and none missing.
fn compare(mode: &str, ours: StepResult, expected: StepResult, tol: f64) -> bool {
    let ((loss, grads), (loss_ref, grads_ref)) = (ours, expected);
    let loss_err = ((loss - loss_ref) / loss_ref).abs();
    let all = |g: &[(String, Vec<f32>)]| -> Vec<f32> {
        g.iter().flat_map(|(_, v)| v.iter().copied()).collect()
    };
    let total = relative(&all(&grads), &all(&grads_ref));
    let (worst_name, worst) = grads
        .iter()
        .zip(&grads_ref)
        .map(|((name, g), (_, r))| (name.clone(), relative(g, r)))
        .fold((String::new(), 0.0f64), |acc, x| {
            if x.1 > acc.1 || x.1.is_nan() {
                x
            } else {
                acc
            }
        });
    let missing = grads.iter().filter(|(_, g)| g.is_empty()).count();
    let ok = loss_err <= tol && total <= tol && worst <= 4.0 * tol && missing == 0;
    println!(
        "{} {mode}: loss {loss:.5} vs {loss_ref:.5} (rel. err {loss_err:.2e}); LoRA \
         gradients rel. err {total:.2e} over {} tensors, worst {worst:.2e} ({worst_name}){}",
        if ok { "PASS" } else { "FAIL" },
        grads.len(),
        if missing > 0 {
            format!(", {missing} missing")
        } else {
            String::new()
        }
    );
    ok
}

/// One training step of `model` on `batch` (SparseLoRA with `sparse`): its loss and LoRA
/// gradients.
fn step<B: AutodiffBackend>(
    model: &LlamaForCausalLM<B>,
    batch: TrainBatch<B>,
    sparse: Option<&SparseTraining<'_, B>>,
    device: &B::Device,
) -> (f64, Vec<(String, Vec<f32>)>) {
    let forward = sparse.map(|s| s.forward_for(s.selector, &batch.answer_tokens, 0, device));
    let loss = micro_batch_loss(model, batch, forward.as_ref());
    let mut accumulator = GradientsAccumulator::<LlamaForCausalLM<B>>::new();
    let loss = backward_into(model, loss, 1, &mut accumulator);
    let grads = accumulator.grads();
    let values = |t: Option<Tensor<B::InnerBackend, 2>>| -> Vec<f32> {
        t.map(|t| t.cast(DType::F32).into_data().to_vec().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (name, adapter) in model.lora_adapters() {
        out.push((
            format!("{name}.lora_A"),
            values(grads.get::<B::InnerBackend, 2>(adapter.lora_a.id)),
        ));
        out.push((
            format!("{name}.lora_B"),
            values(grads.get::<B::InnerBackend, 2>(adapter.lora_b.id)),
        ));
    }
    let loss = loss
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_default();
    (loss.first().copied().unwrap_or(f32::NAN) as f64, out)
}

fn relative(ours: &[f32], reference: &[f32]) -> f64 {
    if ours.len() != reference.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        diff += (a as f64 - b as f64).powi(2);
        norm += (b as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// A SparseLoRA config for the check: random channels (the same on both sides), a few middle
/// layers sparse, answer tokens dense.
fn sparse_config(layers: usize, attention_sparsity: f64) -> anyhow::Result<PathBuf> {
    let (first, last) = (layers / 4, (3 * layers / 4).max(layers / 4));
    let text = format!(
        "mode = \"random\"\nstart_step = 0\ndense_answer_tokens = true\n\n\
         [[mlp]]\nlayers = \"{first}-{last}\"\nsparsity = 0.9\n\n\
         [[self_attn]]\nlayers = \"{first}-{last}\"\nsparsity = {attention_sparsity}\n"
    );
    let path = std::env::temp_dir().join(format!("check-step-{}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl TrainJob for CheckStep {
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let (reference, lora) = reference_model(&self.model, self.random_weights)?;
        let fast = transfer::<B>(&reference, &lora, dtype, &device)?;
        let config = reference.config.clone();
        if self.out_len == 0 || self.out_len >= self.seq {
            bail!("--out-len must be between 1 and --seq - 1");
        }
        let cpu = Default::default();
        let batch_ref = self.workload::<Reference>(config.vocab_size, &cpu);
        let batch_fast = self.workload::<B>(config.vocab_size, &device);
        let tol = self.tolerance(dtype);
        let sparse_path = sparse_config(config.num_hidden_layers, self.attention_sparsity)?;
        let in_memory = |_| Ok(FactorCache::InMemory);
        let name = &self.model.name;
        let setup_ref = sparse_setup(&sparse_path, &reference, name, 1, in_memory)?;
        let setup_fast = sparse_setup(&sparse_path, &fast, name, 1, in_memory)?;
        let _ = std::fs::remove_file(&sparse_path);
        println!(
            "check-step: {} ({}), batch {} x {}, {} answer tokens, LoRA r8 on every projection; \
             {:?} {dtype:?} vs CPU f32 (tolerance {tol:.0e})",
            name,
            if self.random_weights {
                "random weights"
            } else {
                "checkpoint"
            },
            self.batch,
            self.seq,
            self.out_len,
            self.model.backend
        );
        let mut failures = Vec::new();
        for (mode, sparse) in [("dense", false), ("sparse", true)] {
            let train_ref = sparse.then(|| SparseTraining::from_setup(&setup_ref, &config, &lora));
            let train_fast =
                sparse.then(|| SparseTraining::from_setup(&setup_fast, &config, &lora));
            let expected = step(&reference, batch_ref.clone(), train_ref.as_ref(), &cpu);
            let ours = step(&fast, batch_fast.clone(), train_fast.as_ref(), &device);
            if !compare(mode, ours, expected, tol) {
                failures.push(mode);
            }
        }
        println!(
            "fused kernel launches: {}; cuBLASLt GEMMs: {}",
            kernels_cubecl::fused_launches(),
            crate::backend::gemm_calls()
        );
        if !failures.is_empty() {
            bail!(
                "the fast path disagrees with the reference ({})",
                failures.join(", ")
            );
        }
        Ok(())
    }
}
