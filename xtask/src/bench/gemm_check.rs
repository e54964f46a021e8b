//! `cargo xtask bench gemm --check`: the cuBLASLt path on the GPU against an f32 CPU reference
//! computed from the very same input values, on the shapes and layouts that can go wrong: `k` not
//! a multiple of 8, one-row slices, 143 of 14336 rows (a zero-copy row block and a gather),
//! transposed, column-sliced and broadcast inputs, f32/f16, and the `linear` seam under
//! `Autodiff` (forward and input gradient through cuBLASLt; a trainable weight falls back).
//!
//! The error measure is `|ours - ref| / |ref|` over the whole output (Frobenius norms).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use sparse_ops::cublaslt::{self, CudaBackend, GemmError};

type Gpu = CudaBackend;
type Cpu = Flex;

/// Output rounding dominates: bf16 keeps 8 significant bits, f16 11, f32 (no TF32) 24.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
        _ => 1e-5,
    }
}

struct Checker {
    device: burn::backend::cuda::CudaDevice,
    failures: Vec<String>,
    total: usize,
}

impl Checker {
    fn report(&mut self, name: &str, ok: bool, detail: String) {
        self.total += 1;
        println!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            self.failures.push(name.to_owned());
        }
    }

    fn random(&self, dims: [usize; 2], dtype: DType) -> Tensor<Gpu, 2> {
        Tensor::<Gpu, 2>::random(dims, Distribution::Normal(0.0, 1.0), &self.device).cast(dtype)
    }

    /// Compares `ours` with `reference` at `dtype`'s tolerance.
    fn compare<const D: usize>(
        &mut self,
        name: &str,
        ours: Result<Tensor<Gpu, D>, GemmError>,
        reference: Tensor<Cpu, D>,
        dtype: DType,
    ) {
        let ours = match ours {
            Ok(ours) => ours,
            Err(e) => return self.report(name, false, format!("cuBLASLt error: {e}")),
        };
        if ours.dims() != reference.dims() {
            let detail = format!("shape {:?}, expected {:?}", ours.dims(), reference.dims());
            return self.report(name, false, detail);
        }
        let err = relative_error(cpu(ours), reference);
        let tol = tolerance(dtype);
        self.report(
            name,
            err <= tol,
            format!("rel. err {err:.2e} (tol {tol:.0e})"),
        );
    }

    /// `A B` through cuBLASLt against the CPU product.
    fn gemm(&mut self, name: &str, a: Tensor<Gpu, 2>, b: Tensor<Gpu, 2>) {
        let dtype = a.dtype();
        let reference = cpu(a.clone()).matmul(cpu(b.clone()));
        self.compare(name, cublaslt::matmul(a, b), reference, dtype);
    }

    fn in_place(&mut self, name: &str, t: &Tensor<Gpu, 2>, expected: bool) {
        let got = cublaslt::reads_in_place(t);
        let what = |b: bool| if b { "read in place" } else { "copied first" };
        let detail = format!("{} (expected {})", what(got), what(expected));
        self.report(name, got == expected, detail);
    }

    /// `f` must have run exactly `expected` cuBLASLt GEMMs.
    fn calls<T>(&mut self, name: &str, expected: u64, f: impl FnOnce() -> T) -> T {
        let before = cublaslt::calls();
        let value = f();
        let got = cublaslt::calls() - before;
        self.report(
            name,
            got == expected,
            format!("{got} cuBLASLt GEMMs (expected {expected})"),
        );
        value
    }
}

fn cpu<const D: usize>(t: Tensor<Gpu, D>) -> Tensor<Cpu, D> {
    Tensor::from_data(t.into_data().convert::<f32>(), &Default::default())
}

fn relative_error<const D: usize>(ours: Tensor<Cpu, D>, reference: Tensor<Cpu, D>) -> f64 {
    let norm = |t: Tensor<Cpu, D>| f64::from(t.square().sum().sqrt().into_scalar());
    norm(ours - reference.clone()) / norm(reference).max(f64::MIN_POSITIVE)
}

pub fn run() -> anyhow::Result<()> {
    let mut c = Checker {
        device: Default::default(),
        failures: Vec::new(),
        total: 0,
    };
    let (gpu, version) = cublaslt::device_info(&c.device)?;
    println!("cuBLASLt GEMM check on {gpu} (cuBLASLt {version})");
    let bf16 = DType::BF16;

    // Dense products, both layouts of the weight.
    let (x, w) = (c.random([257, 4096], bf16), c.random([1024, 4096], bf16));
    c.gemm("x W^T 257x4096 . [1024,4096]^T", x, w.clone().transpose());
    let dy = c.random([257, 1024], bf16);
    c.gemm("dY W 257x1024 . [1024,4096]", dy, w);

    // k = 143: rows of 286 bytes, no 16-byte alignment anywhere.
    let (x, w) = (c.random([64, 143], bf16), c.random([96, 143], bf16));
    c.gemm("x W^T k=143", x, w.clone().transpose());
    c.gemm("dY W n=143", c.random([64, 96], bf16), w);
    c.gemm(
        "dY W k=143",
        c.random([64, 143], bf16),
        c.random([143, 200], bf16),
    );

    // 143 of 14336 rows of a gate/up weight: a row block (a view) and a gather (a copy).
    let big = c.random([14336, 4096], bf16);
    let block = big.clone().slice([7000..7143, 0..4096]);
    c.in_place("row block W[7000..7143] is a view", &block, true);
    c.in_place("its transpose is a view", &block.clone().transpose(), true);
    let x = c.random([128, 4096], bf16);
    c.gemm(
        "x W[block]^T (143 of 14336)",
        x.clone(),
        block.clone().transpose(),
    );
    c.gemm(
        "dY W[block] (143 of 14336)",
        c.random([128, 143], bf16),
        block,
    );
    let idx: Vec<i64> = (0..143).map(|i| (i * 9973 + 17) % 14336).collect();
    let idx = Tensor::<Gpu, 1, Int>::from_data(TensorData::new(idx, [143]), &c.device);
    let gathered = big.clone().select(0, idx);
    c.gemm(
        "x W[idx]^T (143 gathered rows)",
        x.clone(),
        gathered.clone().transpose(),
    );
    c.gemm(
        "dY W[idx] (143 gathered rows)",
        c.random([128, 143], bf16),
        gathered,
    );

    // One-row slices and a one-row input.
    let row = big.slice([5..6, 0..4096]);
    c.gemm("x W[5..6]^T (n=1)", x.clone(), row.clone().transpose());
    c.gemm("dY W[5..6] (k=1)", c.random([128, 1], bf16), row);
    let w = c.random([1024, 4096], bf16);
    c.gemm(
        "x W^T, one row of x",
        c.random([1, 4096], bf16),
        w.clone().transpose(),
    );

    // Non-contiguous inputs.
    let wide = c.random([128, 8192], bf16);
    let cols = wide.clone().slice([0..128, 256..4352]);
    c.in_place("column block x[:, 256..4352] is a view", &cols, true);
    c.gemm(
        "x[:, 256..4352] W^T (leading dim 8192)",
        cols,
        w.clone().transpose(),
    );
    let odd_cols = wide.slice([0..128, 3..4099]); // misaligned offset: burn copies
    c.gemm("x[:, 3..4099] W^T", odd_cols, w.clone().transpose());
    let xt = c.random([4096, 128], bf16).transpose();
    c.in_place("transposed x is a view", &xt, true);
    c.gemm("x^T-stored W^T (column-major x)", xt, w.clone().transpose());
    let broadcast = c.random([1, 4096], bf16).expand([64, 4096]);
    c.in_place("broadcast x is copied", &broadcast, false);
    c.gemm("broadcast x W^T", broadcast, w.clone().transpose());

    // LoRA's rank-32 products over 4096 tokens: few output tiles over a long reduction, where
    // the plan also times split-K configurations (and usually keeps one).
    let (x, a) = (c.random([4096, 4096], bf16), c.random([32, 4096], bf16));
    c.gemm(
        "x A^T 4096x4096 . [32,4096]^T (split-K)",
        x.clone(),
        a.transpose(),
    );
    let dh = c.random([4096, 32], bf16);
    c.gemm(
        "dA = dh^T x 32x4096 . 4096x4096 (split-K)",
        dh.transpose(),
        x,
    );
    let (x, a) = (
        c.random([1024, 2048], DType::F32),
        c.random([32, 2048], DType::F32),
    );
    c.gemm(
        "x A^T f32 1024x2048 . [32,2048]^T (split-K)",
        x,
        a.transpose(),
    );

    // Other dtypes.
    for dtype in [DType::F32, DType::F16] {
        let (x, w) = (c.random([100, 300], dtype), c.random([77, 300], dtype));
        c.gemm(&format!("x W^T {dtype:?} k=300"), x, w.transpose());
    }

    check_linear_seam(&mut c, &w);
    check_matmul_blocks(&mut c);

    println!(
        "{} of {} checks passed",
        c.total - c.failures.len(),
        c.total
    );
    if c.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("failed: {}", c.failures.join("; "))
    }
}

/// `sparse_ops::linear` and the sliced ops on burn-cuda, plain and under `Autodiff`.
fn check_linear_seam(c: &mut Checker, w: &Tensor<Gpu, 2>) {
    let bf16 = DType::BF16;
    let w_cpu = cpu(w.clone());
    let x3 = Tensor::<Gpu, 3>::random([3, 37, 4096], Distribution::Normal(0.0, 1.0), &c.device)
        .cast(bf16);
    let x3_cpu = cpu(x3.clone());

    // Ordered on cubecl's stream every product takes cuBLASLt; with host waits small ones stay
    // on burn's matmul unless told otherwise.
    let ordered = cublaslt::stream_ordered(&c.device);
    c.report(
        "GEMMs ordered on cubecl's own stream (no host waits)",
        ordered,
        format!(
            "stream ordering {}",
            if ordered { "verified" } else { "unavailable" }
        ),
    );
    let (small, small_w) = (c.random([4, 64], bf16), c.random([8, 64], bf16));
    c.calls("small product routing", u64::from(ordered), || {
        sparse_ops::linear(small, small_w)
    });
    let default_min = cublaslt::min_flops();
    cublaslt::set_min_flops(0);

    let y = c.calls("linear 3-D through cuBLASLt", 1, || {
        sparse_ops::linear(x3.clone(), w.clone())
    });
    let reference = sparse_ops::linear(x3_cpu.clone(), w_cpu.clone());
    c.compare("linear [3,37,4096] . [1024,4096]^T", Ok(y), reference, bf16);
    let permuted = Tensor::<Gpu, 3>::random([37, 3, 4096], Distribution::Default, &c.device)
        .cast(bf16)
        .swap_dims(0, 1);
    let reference = sparse_ops::linear(cpu(permuted.clone()), w_cpu.clone());
    let y = sparse_ops::linear(permuted, w.clone());
    c.compare("linear of a permuted [3,37,4096]", Ok(y), reference, bf16);

    // Sliced projections through the seam.
    let x = c.random([64, 4096], bf16);
    let kept: Vec<i64> = vec![1023, 0, 512, 7, 300];
    let idx = Tensor::<Gpu, 1, Int>::from_data(TensorData::new(kept.clone(), [5]), &c.device);
    let idx_cpu = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(kept, [5]), &Default::default());
    let ours = sparse_ops::linear_out_sliced(x.clone(), w.clone(), idx.clone());
    let reference = sparse_ops::linear_out_sliced(cpu(x.clone()), w_cpu.clone(), idx_cpu.clone());
    c.compare("linear_out_sliced (5 of 1024)", Ok(ours), reference, bf16);
    let w_in = c.random([96, 1024], bf16);
    let x_in = c.random([64, 1024], bf16);
    let ours = sparse_ops::linear_in_sliced(x_in.clone(), w_in.clone(), idx.clone());
    let reference = sparse_ops::linear_in_sliced(cpu(x_in), cpu(w_in), idx_cpu);
    c.compare("linear_in_sliced (5 of 1024)", Ok(ours), reference, bf16);

    // Autodiff: forward and input gradient through cuBLASLt with a frozen weight.
    type Ad = Autodiff<Gpu>;
    let dy = Tensor::<Gpu, 3>::random([3, 37, 1024], Distribution::Normal(0.0, 1.0), &c.device)
        .cast(bf16);
    let dy_cpu = cpu(dy.clone());
    let xa = Tensor::<Ad, 3>::from_inner(x3.clone()).require_grad();
    let wa = Tensor::<Ad, 2>::from_inner(w.clone());
    let dx = c.calls("autodiff forward + input grad through cuBLASLt", 2, || {
        let y = sparse_ops::linear(xa.clone(), wa.clone());
        let grads = (y * Tensor::from_inner(dy.clone())).sum().backward();
        xa.grad(&grads)
    });
    let dx_ref = dy_cpu
        .clone()
        .reshape([111, 1024])
        .matmul(w_cpu.clone())
        .reshape([3, 37, 4096]);
    match dx {
        Some(dx) => c.compare("autodiff dX = dY W", Ok(dx), dx_ref, bf16),
        None => c.report("autodiff dX = dY W", false, "no gradient for x".into()),
    }

    // A trainable weight (LoRA's A and B): forward and dW = dY^T X through cuBLASLt when ordered
    // on cubecl's stream, else burn's matmul, which gives its gradient.
    let wt = Tensor::<Ad, 2>::from_inner(w.clone()).require_grad();
    let expected = if ordered { 2 } else { 0 };
    let dw = c.calls("trainable weight: forward and dW", expected, || {
        let y = sparse_ops::linear(Tensor::<Ad, 3>::from_inner(x3.clone()), wt.clone());
        let grads = (y * Tensor::from_inner(dy)).sum().backward();
        wt.grad(&grads)
    });
    let dw_ref = dy_cpu
        .reshape([111, 1024])
        .transpose()
        .matmul(x3_cpu.reshape([111, 4096]));
    match dw {
        Some(dw) => c.compare("dW = dY^T X", Ok(dw), dw_ref, bf16),
        None => c.report("dW = dY^T X", false, "no gradient for W".into()),
    }
    cublaslt::set_min_flops(default_min);
    if ordered {
        check_ordering(c);
        for dtype in [DType::BF16, DType::F32] {
            check_lora_linear(c, dtype, dtype, true);
            check_lora_linear(c, dtype, dtype, false);
        }
        // f32 master weights with a bf16 input: the factors' gradients come out in f32.
        check_lora_linear(c, DType::BF16, DType::F32, true);
        check_lora_linear(c, DType::BF16, DType::F32, false);
        check_summed_input_gradient(c);
        check_linear_onto(c);
    }
}

/// One input read by three projections (q, k and v: a frozen `linear`, a `lora_linear`, a frozen
/// `linear`): its gradient summed by the GEMMs (`beta = 1`, `kernels_cubecl::gradient_sum`), not
/// by burn, and equal to the CPU reference.
fn check_summed_input_gradient(c: &mut Checker) {
    type Ad = Autodiff<Gpu>;
    type AdCpu = Autodiff<Cpu>;
    let bf16 = DType::BF16;
    let (n, d_in, r) = (96, 1024, 16);
    let ws = [768, 256, 256].map(|d_out| c.random([d_out, d_in], bf16));
    let (x, a, b) = (
        c.random([n, d_in], bf16),
        c.random([r, d_in], bf16),
        c.random([256, r], bf16),
    );
    let dys = [768, 256, 256].map(|d_out| c.random([n, d_out], bf16));
    let xg = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
    let accumulated = cublaslt::accumulating_calls();
    let grads = {
        let w = |i: usize| Tensor::<Ad, 2>::from_inner(ws[i].clone());
        let q = sparse_ops::linear(xg.clone(), w(0));
        let k = sparse_ops::lora_linear(
            sparse_ops::FrozenBase::Weight(w(1)),
            xg.clone(),
            Tensor::from_inner(a.clone()),
            Tensor::from_inner(b.clone()),
            2.0,
        );
        let v = sparse_ops::linear(xg.clone(), w(2));
        let dy = |i: usize| Tensor::<Ad, 2>::from_inner(dys[i].clone());
        ((q * dy(0)).sum() + (k * dy(1)).sum() + (v * dy(2)).sum()).backward()
    };
    // The LoRA update in the forward and `g A` in its backward accumulate anyway; the two sums
    // of the three shares add three more (a product accumulating into the earlier share).
    let accumulated = cublaslt::accumulating_calls() - accumulated;
    c.report(
        "three projections' dX summed by the GEMMs",
        accumulated == 4,
        format!("{accumulated} accumulating GEMMs (expected 4)"),
    );

    let device = Default::default();
    let on_cpu =
        |t: &Tensor<Gpu, 2>| Tensor::<AdCpu, 2>::from_data(cpu(t.clone()).into_data(), &device);
    let xc = on_cpu(&x).require_grad();
    let q = sparse_ops::linear(xc.clone(), on_cpu(&ws[0]));
    let k = sparse_ops::lora::reference::lora_linear(
        sparse_ops::FrozenBase::Weight(on_cpu(&ws[1])),
        xc.clone(),
        on_cpu(&a),
        on_cpu(&b),
        2.0,
    );
    let v = sparse_ops::linear(xc.clone(), on_cpu(&ws[2]));
    let grads_c =
        ((q * on_cpu(&dys[0])).sum() + (k * on_cpu(&dys[1])).sum() + (v * on_cpu(&dys[2])).sum())
            .backward();
    match (xg.grad(&grads), xc.grad(&grads_c)) {
        (Some(ours), Some(reference)) => c.compare(
            "dX summed over three projections",
            Ok(ours),
            reference,
            bf16,
        ),
        _ => c.report(
            "dX summed over three projections",
            false,
            "no gradient".into(),
        ),
    }
}

/// `sparse_ops::linear_onto` (a projection added onto a residual by the GEMM's epilogue, the
/// residual kept), plain and under `Autodiff` with a LoRA update accumulated on top, as o_proj
/// and down_proj run: the output, the residual left unchanged, and the gradients of the input
/// and the residual against the CPU.
fn check_linear_onto(c: &mut Checker) {
    type Ad = Autodiff<Gpu>;
    type AdCpu = Autodiff<Cpu>;
    let bf16 = DType::BF16;
    let (n, d_in, d_out, r) = (96, 1024, 768, 16);
    let (x, w, residual) = (
        c.random([n, d_in], bf16),
        c.random([d_out, d_in], bf16),
        c.random([n, d_out], bf16),
    );
    let (a, b, dy) = (
        c.random([r, d_in], bf16),
        c.random([d_out, r], bf16),
        c.random([n, d_out], bf16),
    );
    let device = Default::default();
    let before = cpu(residual.clone());
    let accumulated = cublaslt::accumulating_calls();
    let y = c.calls("linear_onto: one cuBLASLt GEMM", 1, || {
        sparse_ops::linear_onto(x.clone(), w.clone(), residual.clone())
    });
    let accumulated = cublaslt::accumulating_calls() - accumulated;
    c.report(
        "linear_onto: the add done by the GEMM",
        accumulated == 1,
        format!("{accumulated} accumulating GEMMs (expected 1)"),
    );
    let reference = before.clone() + cpu(x.clone()).matmul(cpu(w.clone()).transpose());
    c.compare("linear_onto: y = r + x W^T", Ok(y), reference, bf16);
    let kept = relative_error(cpu(residual.clone()), before);
    c.report(
        "linear_onto: the residual is kept",
        kept == 0.0,
        format!("rel. change {kept:.2e}"),
    );

    // Under Autodiff, as LoraLinear::forward_onto runs o_proj: token rows onto a `[b, s, out]`
    // residual (flattened inside the op), the update accumulated onto that.
    let name = |what: &str| format!("linear_onto + LoRA under Autodiff: {what}");
    let xg = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
    let rg =
        Tensor::<Ad, 3>::from_inner(residual.clone().reshape([4, n / 4, d_out])).require_grad();
    let (y, grads) = {
        let base = sparse_ops::linear_onto(xg.clone(), Tensor::from_inner(w.clone()), rg.clone());
        let base = base.reshape([n, d_out]);
        let y = sparse_ops::lora_linear(
            sparse_ops::FrozenBase::Output(base),
            xg.clone(),
            Tensor::from_inner(a.clone()),
            Tensor::from_inner(b.clone()),
            2.0,
        );
        let grads = (y.clone() * Tensor::from_inner(dy.clone()))
            .sum()
            .backward();
        (y.inner(), grads)
    };
    let on_cpu =
        |t: &Tensor<Gpu, 2>| Tensor::<AdCpu, 2>::from_data(cpu(t.clone()).into_data(), &device);
    let (xc, rc) = (on_cpu(&x).require_grad(), on_cpu(&residual).require_grad());
    let yc = sparse_ops::lora::reference::lora_linear(
        sparse_ops::FrozenBase::Weight(on_cpu(&w)),
        xc.clone(),
        on_cpu(&a),
        on_cpu(&b),
        2.0,
    ) + rc.clone();
    let grads_c = (yc.clone() * on_cpu(&dy)).sum().backward();
    c.compare(&name("y"), Ok(y), yc.inner(), bf16);
    let d_residual = rg.grad(&grads).map(|g| g.reshape([n, d_out]));
    for (what, ours, reference) in [
        ("dX", xg.grad(&grads), xc.grad(&grads_c)),
        ("d residual", d_residual, rc.grad(&grads_c)),
    ] {
        match (ours, reference) {
            (Some(ours), Some(reference)) => c.compare(&name(what), Ok(ours), reference, bf16),
            _ => c.report(&name(what), false, "no gradient".into()),
        }
    }
}

/// `sparse_ops::lora_linear` (the base product and LoRA's update in one op, the adds done by the
/// GEMMs) under `Autodiff` against the reference composition on the CPU: the output and the
/// gradients of x, A and B (and of a given base output).
fn check_lora_linear(c: &mut Checker, dtype: DType, factors: DType, weight_base: bool) {
    type Ad = Autodiff<Gpu>;
    type AdCpu = Autodiff<Cpu>;
    let (n, d_in, d_out, r) = (96, 1024, 768, 16);
    let (x, w, a, b) = (
        c.random([n, d_in], dtype),
        c.random([d_out, d_in], dtype),
        c.random([r, d_in], factors),
        c.random([d_out, r], factors),
    );
    let (base_out, dy) = (c.random([n, d_out], dtype), c.random([n, d_out], dtype));
    let form = if weight_base { "weight" } else { "base output" };
    let name = |what: &str| format!("lora_linear ({form}, {dtype:?}, factors {factors:?}): {what}");
    let base_gpu = || {
        if weight_base {
            sparse_ops::FrozenBase::Weight(Tensor::<Ad, 2>::from_inner(w.clone()))
        } else {
            // The base output as a model would give it: computed, so its buffer is new.
            let base = Tensor::<Ad, 2>::from_inner(base_out.clone()).require_grad();
            sparse_ops::FrozenBase::Output(base * 1.0)
        }
    };
    let xg = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
    let (ag, bg) = (
        Tensor::<Ad, 2>::from_inner(a.clone()).require_grad(),
        Tensor::<Ad, 2>::from_inner(b.clone()).require_grad(),
    );
    // Forward: h, the base product (weight form), the accumulating product; backward: g, dB,
    // dA, dX (and dX's accumulation in the weight form).
    let calls = if weight_base { 8 } else { 6 };
    let accumulated = cublaslt::accumulating_calls();
    let (y, grads) = c.calls(&name("cuBLASLt GEMMs"), calls, || {
        let base = base_gpu();
        let y = sparse_ops::lora_linear(base, xg.clone(), ag.clone(), bg.clone(), 2.0);
        let grads = (y.clone() * Tensor::from_inner(dy.clone()))
            .sum()
            .backward();
        (y.inner(), grads)
    });
    // The update added onto y, and g A onto dY W, by the GEMMs (not a product and an add).
    let accumulated = cublaslt::accumulating_calls() - accumulated;
    let expected = if weight_base { 2 } else { 1 };
    c.report(
        &name("adds done by the GEMMs"),
        accumulated == expected,
        format!("{accumulated} accumulating GEMMs (expected {expected})"),
    );

    let device = Default::default();
    let on_cpu =
        |t: &Tensor<Gpu, 2>| Tensor::<AdCpu, 2>::from_data(cpu(t.clone()).into_data(), &device);
    let (xc, ac, bc) = (
        on_cpu(&x).require_grad(),
        on_cpu(&a).require_grad(),
        on_cpu(&b).require_grad(),
    );
    let base_c = if weight_base {
        sparse_ops::FrozenBase::Weight(on_cpu(&w))
    } else {
        sparse_ops::FrozenBase::Output(on_cpu(&base_out) * 1.0)
    };
    let yc =
        sparse_ops::lora::reference::lora_linear(base_c, xc.clone(), ac.clone(), bc.clone(), 2.0);
    let grads_c = (yc.clone() * on_cpu(&dy)).sum().backward();
    c.compare(&name("y"), Ok(y), yc.inner(), dtype);
    for (what, ours, reference, grad_dtype) in [
        ("dX", xg.grad(&grads), xc.grad(&grads_c), dtype),
        ("dA", ag.grad(&grads), ac.grad(&grads_c), factors),
        ("dB", bg.grad(&grads), bc.grad(&grads_c), factors),
    ] {
        match (ours, reference) {
            (Some(ours), _) if ours.dtype() != grad_dtype => {
                let detail = format!("gradient in {:?}, expected {grad_dtype:?}", ours.dtype());
                c.report(&name(what), false, detail);
            }
            // The products ran in `dtype`: its tolerance, whatever the gradient's dtype.
            (Some(ours), Some(reference)) => c.compare(&name(what), Ok(ours), reference, dtype),
            _ => c.report(&name(what), false, "no gradient".into()),
        }
    }
}

/// A chain of dependent GEMMs and burn kernels queued with no synchronisation,
/// `y <- (y W^T) / 16 + x`, in f32 against the CPU: any GEMM that ran before its input was written, or whose output
/// buffer was reused too early, changes the result. The same chain with the GEMMs on a stream of
/// ours without ordering must come out wrong, or the check could not detect misordering.
fn check_ordering(c: &mut Checker) {
    let steps = 64;
    let (x, w) = (
        c.random([512, 512], DType::F32),
        c.random([512, 512], DType::F32),
    );
    let (x_cpu, w_cpu) = (cpu(x.clone()), cpu(w.clone()));
    let mut expected = x_cpu.clone();
    for _ in 0..steps {
        expected = expected.matmul(w_cpu.clone().transpose()) / 16.0 + x_cpu.clone();
    }
    type Gemm<'a> = &'a dyn Fn(Tensor<Gpu, 2>, Tensor<Gpu, 2>) -> Result<Tensor<Gpu, 2>, GemmError>;
    let chain = |gemm: Gemm<'_>| -> Result<Tensor<Gpu, 2>, GemmError> {
        let mut y = x.clone();
        for _ in 0..steps {
            y = gemm(y, w.clone().transpose())? / 16.0 + x.clone();
        }
        Ok(y)
    };
    let ordered = chain(&|a, b| cublaslt::matmul(a, b));
    c.compare(
        &format!("{steps} dependent GEMMs + kernels, no sync (ordered)"),
        ordered,
        expected.clone(),
        DType::F32,
    );
    let unordered = chain(&|a, b| cublaslt::matmul_unordered(a, b));
    let unordered = unordered.map(|y| {
        let y = cpu(y);
        // Let the unordered GEMMs finish before anything reuses their buffers.
        let _ = cublaslt::wait_own_stream(&c.device);
        y
    });
    match unordered {
        Ok(unordered) => {
            let err = relative_error(unordered, expected);
            c.report(
                "the same chain unordered is detected as wrong",
                err.is_nan() || err > tolerance(DType::F32) * 100.0,
                format!("rel. err {err:.2e} without ordering"),
            );
        }
        Err(e) => c.report("unordered chain", false, format!("cuBLASLt error: {e}")),
    }
}

/// `SeamMatmul::matmul_blocks` (one cuBLASLt GEMM per block, writing its block of one output in
/// place) on causal attention's blocks: 300 positions in blocks of 128 (a partial last block),
/// 4 query rows a position, LLaMA's head width; compared with the CPU product on the blocks.
fn check_matmul_blocks(c: &mut Checker) {
    use kernels_cubecl::{BatchedMatmul, ProductBlock};
    use sparse_ops::SeamMatmul;
    let (n, s, g, hd, block): (usize, usize, usize, usize, usize) = (3, 300, 4, 128, 128);
    let bf16 = DType::BF16;
    let device = c.device.clone();
    let random = |dims: [usize; 3]| {
        Tensor::<Gpu, 3>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(bf16)
    };
    let ends: Vec<(usize, usize)> = (0..s.div_ceil(block))
        .map(|i| (i * block, ((i + 1) * block).min(s)))
        .collect();
    // Zero outside the blocks, on the CPU: what the comparison keeps of both sides.
    let on_blocks = |t: Tensor<Cpu, 3>, blocks: &[ProductBlock]| {
        let mut kept = Tensor::<Cpu, 3>::zeros(t.dims(), &Default::default());
        for b in blocks {
            let region = [0..n, b.rows.clone(), b.cols.clone()];
            kept = kept.slice_assign(region.clone(), t.clone().slice(region));
        }
        kept
    };
    // Each block's product summed over its own depth only, on the CPU, zeros elsewhere.
    let by_blocks =
        |a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>, dims: [usize; 3], blocks: &[ProductBlock]| {
            let mut out = Tensor::<Cpu, 3>::zeros(dims, &Default::default());
            for blk in blocks {
                let part = a
                    .clone()
                    .slice([0..n, blk.rows.clone(), blk.depth.clone()])
                    .matmul(b.clone().slice([0..n, blk.depth.clone(), blk.cols.clone()]));
                out = out.slice_assign([0..n, blk.rows.clone(), blk.cols.clone()], part);
            }
            out
        };
    let case = |c: &mut Checker,
                name: &str,
                a: Tensor<Gpu, 3>,
                b: Tensor<Gpu, 3>,
                blocks: Vec<ProductBlock>| {
        let dims = [n, a.dims()[1], b.dims()[2]];
        let reference = by_blocks(cpu(a.clone()), cpu(b.clone()), dims, &blocks);
        let out = c.calls(
            &format!("{name}: one GEMM per block"),
            blocks.len() as u64,
            || SeamMatmul::matmul_blocks(a, b, &blocks),
        );
        let ours = on_blocks(cpu(out), &blocks);
        let ours = Tensor::<Gpu, 3>::from_data(ours.into_data(), &device);
        c.compare(name, Ok(ours), reference, bf16);
    };

    // Q K^T: query rows against the keys up to their block's end (K read transposed in place).
    let (q, k) = (random([n, s * g, hd]), random([n, s, hd]));
    let blocks = ends
        .iter()
        .map(|&(start, end)| ProductBlock {
            rows: start * g..end * g,
            cols: 0..end,
            depth: 0..hd,
        })
        .collect();
    case(
        c,
        "blocks of Q K^T (causal, 300 positions)",
        q.clone(),
        k.clone().swap_dims(1, 2),
        blocks,
    );
    // P V: query rows summed over the keys up to their block's end.
    let (p, v) = (random([n, s * g, s]), random([n, s, hd]));
    let blocks = ends
        .iter()
        .map(|&(start, end)| ProductBlock {
            rows: start * g..end * g,
            cols: 0..hd,
            depth: 0..end,
        })
        .collect();
    case(c, "blocks of P V", p.clone(), v, blocks);
    // P^T dO: key blocks summed over the query rows from their start (P read transposed).
    let dout = random([n, s * g, hd]);
    let blocks = ends
        .iter()
        .map(|&(start, end)| ProductBlock {
            rows: start..end,
            cols: 0..hd,
            depth: start * g..s * g,
        })
        .collect();
    case(c, "blocks of P^T dO", p.swap_dims(1, 2), dout, blocks);
}
