//! `cargo xtask verify`: checks the model's numerics on a chosen backend against the recorded
//! references (HF `transformers` fixtures and the SmolLM2 float64 golden file), and directly
//! against the CPU backend. This is how a GPU build is validated (see `docs/gpu.md`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::{backend::Backend, DType};
use clap::Args;
use llama_burn::golden::{
    compare_golden_forward, compare_golden_tokenizer, compare_hf_fixture, relative_error,
    GoldenPromptReport,
};
use llama_burn::{load_hf_folder, LlamaForCausalLM, LlamaTokenizer};

use crate::backend::{BackendJob, BackendKind};
use crate::model_args::ModelArgs;

/// Compare our numerics with the references, on any backend.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("model", |a| a.help(
    "SmolLM2 checkpoint (preset name or .gguf path); `none` skips the SmolLM2 checks"
)))]
pub struct Verify {
    // The backend to check, and the SmolLM2 checkpoint of the golden checks.
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of `transformers` fixtures (made by scripts/make_tiny_llama_fixture.py).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// The SmolLM2 golden file.
    #[arg(
        long,
        default_value = "../shared/data/models/smollm2-135m-instruct-q4_1/golden_forward.json"
    )]
    golden: PathBuf,
}

/// Tolerances for one dtype.
struct Tolerance {
    logits_rel: f64,
    nll_abs: f64,
    /// Whether greedy tokens and the top-10 order must match exactly (near-ties may flip in
    /// reduced precision).
    exact: bool,
}

/// The tolerance for `dtype` on `backend`.
///
/// burn-cuda 0.21 runs f32 matmuls on tensor cores in TF32 (10-bit mantissa; cubek-matmul's
/// `adjust_dtypes`), so f32 on CUDA is held to a TF32 tolerance, between f32's and bf16's.
fn tolerance(dtype: DType, backend: BackendKind) -> Tolerance {
    let tf32 = {
        #[cfg(feature = "cuda")]
        {
            backend == BackendKind::Cuda
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = backend;
            false
        }
    };
    match dtype {
        DType::F32 if tf32 => Tolerance {
            logits_rel: 1e-2,
            nll_abs: 1e-2,
            exact: false,
        },
        DType::F32 => Tolerance {
            logits_rel: 1e-4,
            nll_abs: 1e-3,
            exact: true,
        },
        _ => Tolerance {
            logits_rel: 5e-2,
            nll_abs: 5e-2,
            exact: false,
        },
    }
}

impl Verify {
    pub fn run(self) -> anyhow::Result<()> {
        let failures = self.model.dispatch(VerifyJob(self.clone()))?;
        if failures > 0 {
            bail!("{failures} check(s) failed");
        }
        println!("verify: all checks passed");
        Ok(())
    }
}

struct VerifyJob(Verify);

/// Prints one check and counts it as failed when `ok` is false.
fn check(failures: &mut usize, ok: bool, what: String) {
    println!("[{}] {what}", if ok { " ok " } else { "FAIL" });
    if !ok {
        *failures += 1;
    }
}

impl BackendJob for VerifyJob {
    type Output = usize;

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<usize> {
        let args = self.0;
        let backend = args.model.backend;
        let tol = tolerance(dtype, backend);
        let mut failures = 0;
        println!("verify: backend {backend:?}, dtype {dtype:?}");
        for name in ["tiny-llama", "tiny-llama31"] {
            let dir = args.fixtures.join(name);
            let model = load_hf_folder::<B>(&dir, dtype, &device)?;
            check_fixture(&mut failures, name, &model, &dir, &tol)?;
        }
        if args.model.name != "none" {
            let source = args.model.checkpoint()?;
            let tokenizer = source.tokenizer()?;
            for (name, ours, expected) in compare_golden_tokenizer(&tokenizer, &args.golden)? {
                check(
                    &mut failures,
                    ours == expected,
                    format!("smollm2 tokenizer `{name}`: {} ids", ours.len()),
                );
            }
            let model = source.load::<B>(dtype, &device)?;
            for report in compare_golden_forward(&model, &args.golden)? {
                check_golden_prompt(&mut failures, &report, &tokenizer, &tol)?;
            }
        }
        Ok(failures)
    }
}

/// The checks against one `transformers` fixture: logits, the first layer's input, the mean NLL,
/// greedy tokens, and the logits against the CPU's.
fn check_fixture<B: Backend>(
    failures: &mut usize,
    name: &str,
    model: &LlamaForCausalLM<B>,
    dir: &Path,
    tol: &Tolerance,
) -> anyhow::Result<()> {
    let r = compare_hf_fixture(model, dir)?;
    check(
        failures,
        r.logits_rel_err <= tol.logits_rel,
        format!("{name}: logits rel err {:.2e}", r.logits_rel_err),
    );
    check(
        failures,
        r.layer_input_rel_err <= tol.logits_rel,
        format!(
            "{name}: layer-0 input rel err {:.2e}",
            r.layer_input_rel_err
        ),
    );
    check(
        failures,
        (r.nll.0 - r.nll.1).abs() <= tol.nll_abs,
        format!("{name}: mean NLL {:.6} vs {:.6}", r.nll.0, r.nll.1),
    );
    // Greedy ties may flip in bf16; exactness is only demanded in f32.
    let same = r.generated.0 == r.generated.1;
    check(
        failures,
        same || !tol.exact,
        format!("{name}: greedy {:?} vs {:?}", r.generated.0, r.generated.1),
    );
    let cross = cross_backend_rel_err(model, dir)?;
    check(
        failures,
        cross <= tol.logits_rel,
        format!("{name}: logits vs CPU f32 rel err {cross:.2e}"),
    );
    Ok(())
}

/// The checks of one SmolLM2 golden prompt: mean NLL, last logits, top-10 and greedy tokens.
fn check_golden_prompt(
    failures: &mut usize,
    r: &GoldenPromptReport,
    tokenizer: &LlamaTokenizer,
    tol: &Tolerance,
) -> anyhow::Result<()> {
    let name = &r.name;
    check(
        failures,
        (r.nll.0 - r.nll.1).abs() <= tol.nll_abs,
        format!(
            "smollm2 `{name}`: mean NLL {:.5} vs {:.5}",
            r.nll.0, r.nll.1
        ),
    );
    check(
        failures,
        r.last_logits_rel_err <= tol.logits_rel * 10.0,
        format!(
            "smollm2 `{name}`: last logits rel err {:.2e}",
            r.last_logits_rel_err
        ),
    );
    let top_ok = if tol.exact {
        r.top10.0 == r.top10.1
    } else {
        r.top10.0[0] == r.top10.1[0]
    };
    check(
        failures,
        top_ok,
        format!(
            "smollm2 `{name}`: top-10 {:?} vs {:?}",
            r.top10.0, r.top10.1
        ),
    );
    if !r.greedy.1.is_empty() {
        let text = tokenizer.decode(&r.greedy.0, false)?;
        check(
            failures,
            r.greedy.0 == r.greedy.1 || !tol.exact,
            format!("smollm2 `{name}`: greedy {text:?}"),
        );
    }
    Ok(())
}

/// Max normwise relative difference between this backend's logits and the CPU's (f32) on the
/// fixture batch.
fn cross_backend_rel_err<B: Backend>(
    model: &LlamaForCausalLM<B>,
    dir: &Path,
) -> anyhow::Result<f64> {
    let cpu = load_hf_folder::<burn::backend::Flex>(dir, DType::F32, &Default::default())?;
    let ours = fixture_logits(model, dir)?;
    let reference: Vec<f64> = fixture_logits(&cpu, dir)?
        .into_iter()
        .map(f64::from)
        .collect();
    Ok(relative_error(&ours, &reference))
}

fn fixture_logits<B: Backend>(model: &LlamaForCausalLM<B>, dir: &Path) -> anyhow::Result<Vec<f32>> {
    let (ids, mask) =
        llama_burn::golden::fixture_batch::<B>(dir, &model.device()).context("fixture batch")?;
    model
        .forward(ids, mask)
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}
