//! `cargo xtask bench gemm`: our cuBLASLt seam against burn's matmul (and, given its JSON,
//! `torch.matmul` from `scripts/bench_gemm_torch.py`) on LLaMA3-8B's GEMM shapes, bf16, one GPU.
//!
//! Each product is timed as the median over `--reps` repetitions (after warm-up) of the mean of
//! enough back-to-back calls to last `--rep-seconds`:
//! - `ours`: `sparse_ops::cublaslt::matmul` by wall clock, its per-call ordering against cubecl's
//!   stream included (what a training step pays);
//! - `ours kernel`: the same cuBLASLt GEMM launched back to back on our stream, timed by CUDA
//!   events (the kernel alone);
//! - `burn`: `Tensor::matmul` by wall clock, calls queued and one synchronisation at the end.
//!
//! `--check` instead compares the seam with a CPU reference on odd shapes (`gemm_check.rs`).

use std::path::PathBuf;

use clap::Args;

use super::shapes;

/// Time GEMMs through cuBLASLt, burn and torch; or check the cuBLASLt path (`--check`).
#[derive(Args, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Gemm {
    /// Compare the cuBLASLt path with a CPU reference (odd shapes, strided inputs, autodiff);
    /// prints PASS/FAIL and exits non-zero on a failure.
    #[arg(long)]
    check: bool,
    /// Write the shape list (JSON, for scripts/bench_gemm_torch.py) to this file and exit.
    #[arg(long)]
    list_shapes: Option<PathBuf>,
    /// Token count (rows of every product).
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// Timed repetitions per shape and method (the median is reported).
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Least duration of one repetition, in seconds.
    #[arg(long, default_value_t = 0.01)]
    rep_seconds: f64,
    /// JSON written by scripts/bench_gemm_torch.py on the same GPU: adds torch's figures and the
    /// ours/torch ratios.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    output_dir: PathBuf,
}

impl Gemm {
    pub fn run(self) -> anyhow::Result<()> {
        let shapes = shapes::llama3_8b(self.tokens);
        if let Some(path) = &self.list_shapes {
            let list: Vec<_> = shapes.iter().map(|s| s.to_json()).collect();
            let doc = serde_json::json!({ "tokens": self.tokens, "dtype": "bf16", "shapes": list });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
            println!("{} shapes -> {}", shapes.len(), path.display());
            return Ok(());
        }
        self.run_on_gpu(shapes)
    }

    #[cfg(not(feature = "cuda"))]
    fn run_on_gpu(self, _shapes: Vec<shapes::GemmShape>) -> anyhow::Result<()> {
        anyhow::bail!("this xtask was built without the `cuda` feature")
    }

    #[cfg(feature = "cuda")]
    fn run_on_gpu(self, shapes: Vec<shapes::GemmShape>) -> anyhow::Result<()> {
        if self.check {
            return super::gemm_check::run();
        }
        cuda::run(self, shapes)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::time::Instant;

    use anyhow::Context;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Distribution, Tensor};
    use serde_json::{json, Value};
    use sparse_ops::cublaslt::{self, CudaBackend};

    use super::super::shapes::GemmShape;
    use super::{git_commit, slug, Gemm};

    type Gpu = CudaBackend;

    /// The ratio ours/torch that shapes above [`TARGET_MIN_FLOPS`] must reach (issue #5).
    const TARGET_RATIO: f64 = 0.9;
    const TARGET_MIN_FLOPS: f64 = 1e9;

    /// Seconds per call, one figure per method.
    struct Timing {
        ours: f64,
        kernel: f64,
        burn: f64,
    }

    pub(super) fn run(args: Gemm, shapes: Vec<GemmShape>) -> anyhow::Result<()> {
        let device = Default::default();
        let (gpu, lt_version) =
            cublaslt::device_info(&device).context("setting up cuBLASLt on the GPU")?;
        let torch = args.torch.as_ref().map(|p| read_torch(p)).transpose()?;
        println!("{gpu}, cuBLASLt {lt_version}, {} tokens, bf16", args.tokens);
        println!(
            "{:<24} {:>5} {:>6} {:>6} {:>8} | TFLOP/s: {:>7} {:>7} {:>7} {:>7} | {:>6}",
            "shape", "m", "n", "k", "GFLOP", "ours", "kernel", "burn", "torch", "/torch"
        );
        let mut rows = Vec::new();
        for shape in &shapes {
            let t = time_shape(shape, &args, &device)?;
            let torch_s = torch
                .as_ref()
                .and_then(|t| t.seconds.get(&shape.name).copied());
            let tf = |s: f64| shape.flops() / s / 1e12;
            println!(
                "{:<24} {:>5} {:>6} {:>6} {:>8.2} |          {:>7.1} {:>7.1} {:>7.1} {:>7} | {:>6}",
                shape.name,
                shape.m,
                shape.n,
                shape.k,
                shape.flops() / 1e9,
                tf(t.ours),
                tf(t.kernel),
                tf(t.burn),
                torch_s.map_or("-".into(), |s| format!("{:.1}", tf(s))),
                torch_s.map_or("-".into(), |s| format!("{:.2}", s / t.ours)),
            );
            rows.push(row_json(shape, &t, torch_s));
        }
        let summary = summarise(&rows);
        let date = super::utc_timestamp();
        println!("{}", serde_json::to_string_pretty(&summary)?);
        let doc = json!({
            "kind": "gemm",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": date,
            "gpu": gpu,
            "cublaslt_version": lt_version,
            "git_commit": git_commit(),
            "dtype": "bf16",
            "tokens": args.tokens,
            "reps": args.reps,
            "rep_seconds": args.rep_seconds,
            "burn_autotune": cfg!(feature = "autotune"),
            "min_flops": cublaslt::min_flops(),
            "torch": torch.as_ref().map(|t| t.meta.clone()),
            "summary": summary,
            "results": rows,
        });
        std::fs::create_dir_all(&args.output_dir)?;
        let path = args.output_dir.join(format!(
            "gemm-{}-{}.json",
            date.replace(':', ""),
            slug(&gpu)
        ));
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("-> {}", path.display());
        Ok(())
    }

    fn time_shape(
        shape: &GemmShape,
        args: &Gemm,
        device: &burn::backend::cuda::CudaDevice,
    ) -> anyhow::Result<Timing> {
        let random = |dims: [usize; 2]| {
            Tensor::<Gpu, 2>::random(dims, Distribution::Normal(0.0, 1.0), device).cast(DType::BF16)
        };
        let a = random([shape.m, shape.k]);
        let w = random(shape.weight_dims());
        let b = if shape.weight_transposed {
            w.transpose()
        } else {
            w
        };
        let ours = || -> anyhow::Result<()> {
            cublaslt::matmul(a.clone(), b.clone()).map(drop)?;
            Ok(())
        };
        let burn = || -> anyhow::Result<()> {
            drop(a.clone().matmul(b.clone()));
            Ok(())
        };
        let sync = || Gpu::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
        // Under SPARSELORA_ALLOCATION_CACHE=1 the output's size is cached from the first call, as
        // a training step's buffers are (docs/gpu.md).
        kernels_cubecl::with_allocations_cached_by_size::<Gpu, _>(device, &ours)?;
        let ours = median_seconds(ours, sync, args).with_context(|| shape.name.clone())?;
        let burn = median_seconds(burn, sync, args)?;
        // The kernel alone: event-timed, so no wall-clock loop around it.
        let one = cublaslt::kernel_seconds(a.clone(), b.clone(), 1)?;
        let iters = iterations(one, args.rep_seconds);
        let mut kernel = (0..args.reps)
            .map(|_| cublaslt::kernel_seconds(a.clone(), b.clone(), iters))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Timing {
            ours,
            kernel: median(&mut kernel),
            burn,
        })
    }

    /// Median over `reps` of the mean seconds per call of `call`, `sync` closing each timed span.
    fn median_seconds(
        mut call: impl FnMut() -> anyhow::Result<()>,
        sync: impl Fn() -> anyhow::Result<()>,
        args: &Gemm,
    ) -> anyhow::Result<f64> {
        for _ in 0..3 {
            call()?; // JIT compilation, plans, pool growth
        }
        sync()?;
        let start = Instant::now();
        call()?;
        sync()?;
        let iters = iterations(start.elapsed().as_secs_f64(), args.rep_seconds);
        let mut per_call = Vec::with_capacity(args.reps);
        for _ in 0..args.reps.max(1) {
            let start = Instant::now();
            for _ in 0..iters {
                call()?;
            }
            sync()?;
            per_call.push(start.elapsed().as_secs_f64() / iters as f64);
        }
        Ok(median(&mut per_call))
    }

    fn iterations(one_call: f64, rep_seconds: f64) -> usize {
        ((rep_seconds / one_call.max(1e-7)).ceil() as usize).clamp(1, 10_000)
    }

    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    fn row_json(shape: &GemmShape, t: &Timing, torch_s: Option<f64>) -> Value {
        let tf = |s: f64| shape.flops() / s / 1e12;
        json!({
            "name": shape.name, "group": shape.group,
            "m": shape.m, "n": shape.n, "k": shape.k,
            "b": if shape.weight_transposed { "wt" } else { "w" },
            "flops": shape.flops(),
            "ours_s": t.ours, "ours_tflops": tf(t.ours),
            "ours_kernel_s": t.kernel, "ours_kernel_tflops": tf(t.kernel),
            "ordering_overhead_s": t.ours - t.kernel,
            "burn_s": t.burn, "burn_tflops": tf(t.burn),
            "ours_vs_burn": t.burn / t.ours,
            "torch_s": torch_s, "torch_tflops": torch_s.map(tf),
            "ours_vs_torch": torch_s.map(|s| s / t.ours),
            "ours_kernel_vs_torch": torch_s.map(|s| s / t.kernel),
        })
    }

    /// The target's tally and where cuBLASLt (ordering included) starts beating burn.
    fn summarise(rows: &[Value]) -> Value {
        let num = |r: &Value, key: &str| r[key].as_f64();
        let big: Vec<&Value> = rows
            .iter()
            .filter(|r| num(r, "flops").unwrap_or(0.0) > TARGET_MIN_FLOPS)
            .collect();
        let ratios: Vec<f64> = big.iter().filter_map(|r| num(r, "ours_vs_torch")).collect();
        let missing: Vec<&str> = big
            .iter()
            .filter(|r| num(r, "ours_vs_torch").is_some_and(|x| x < TARGET_RATIO))
            .filter_map(|r| r["name"].as_str())
            .collect();
        // Smallest FLOP count above which ours beats burn on every larger shape.
        let mut by_flops: Vec<(f64, bool)> = rows
            .iter()
            .filter_map(|r| Some((num(r, "flops")?, num(r, "ours_vs_burn")? >= 1.0)))
            .collect();
        by_flops.sort_by(|a, b| a.0.total_cmp(&b.0));
        let last_loss = by_flops.iter().rposition(|&(_, wins)| !wins);
        let crossover = match last_loss {
            None => by_flops.first().map(|r| r.0),
            Some(i) => by_flops.get(i + 1).map(|r| r.0),
        };
        json!({
            "target_ratio": TARGET_RATIO,
            "target_min_flops": TARGET_MIN_FLOPS,
            "shapes_over_1_gflop": big.len(),
            "with_torch_figure": ratios.len(),
            "below_target": missing,
            "min_ours_vs_torch": ratios.iter().copied().reduce(f64::min),
            "ours_beats_burn_from_flops": crossover,
        })
    }

    /// Torch's per-call seconds by shape name, and its header fields.
    struct TorchResults {
        seconds: HashMap<String, f64>,
        meta: Value,
    }

    fn read_torch(path: &std::path::Path) -> anyhow::Result<TorchResults> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let results = doc["results"]
            .as_array()
            .with_context(|| format!("{}: no `results` array", path.display()))?;
        let seconds = results
            .iter()
            .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["median_s"].as_f64()?)))
            .collect();
        let meta = json!({
            "file": path.display().to_string(),
            "gpu": doc["gpu"], "torch": doc["torch"], "cuda": doc["cuda"], "date": doc["date"],
        });
        Ok(TorchResults { seconds, meta })
    }
}
/// `$GIT_COMMIT`, else `git rev-parse HEAD`, else null (the GPU box has no git metadata).
pub fn git_commit() -> Option<String> {
    if let Ok(commit) = std::env::var("GIT_COMMIT") {
        return Some(commit);
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `NVIDIA H200` -> `nvidia-h200`.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (eras of 400 years).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }
}
