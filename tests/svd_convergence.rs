//! The estimator's truncated SVD against an exact one on SmolLM2-135M-Instruct's real weights
//! (issue #10 item 5, SPEC 4): trained weights have flat spectra at the cut (sigma_8 / sigma_9 of
//! 1.002-1.023 in layer 15), where two power iterations gave rank-8 factors 47-96% away from the
//! exact truncation. The factors must now agree with it to 1e-3 (they do to 4e-5).
//!
//! The exact truncation is computed here in f64: the Gram matrix of the weight on its smaller side
//! is reduced to tridiagonal form by Householder reflections, its top eigenvalues are found by
//! bisection on Sturm counts and their eigenvectors by inverse iteration: about a second for a
//! 576-wide Gram matrix, where the crate's cyclic Jacobi takes 17 s (`cargo test --test
//! svd_convergence -- --nocapture` prints the errors).

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use integration_tests::{smollm2_files, TestBackend};
use llama_burn::{load_gguf, LlamaProjection};
use svd_estimator::{estimator_factors, symmetric_eigen};

type B = TestBackend;

const RANK: usize = 8;
const LAYER: usize = 15;
/// SPEC 4: the product `w1 w2` within this relative Frobenius distance of the exact truncation.
const TOLERANCE: f64 = 1e-3;

fn host(t: Tensor<B, 2>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec().unwrap()
}

fn device(values: Vec<f64>, shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(values, shape),
        (&Default::default(), DType::F64),
    )
}

/// Householder reduction of the symmetric row-major `n x n` matrix `g` to tridiagonal form `T`:
/// its diagonal, its off-diagonal (`off[i]` couples `i - 1` and `i`; `off[0] = 0`) and the unit
/// reflectors `w_k` (over indices `k + 1..n`), with `g = Q T Q^T`, `Q = H_0 H_1 ... H_(n-3)`,
/// `H_k = I - 2 w_k w_k^T`.
fn tridiagonalize(mut g: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let mut diag = vec![0.0; n];
    let mut off = vec![0.0; n];
    let mut reflectors = Vec::new();
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1;
        let at = |i: usize, j: usize| (k + 1 + i) * n + k + 1 + j;
        // H maps the column below the diagonal, x, onto alpha e_1 with |alpha| = |x|.
        let mut w: Vec<f64> = (0..m).map(|i| g[(k + 1 + i) * n + k]).collect();
        let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        let alpha = if w[0] > 0.0 { -norm } else { norm };
        w[0] -= alpha;
        let w_norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        diag[k] = g[k * n + k];
        off[k + 1] = alpha;
        if w_norm > 0.0 {
            w.iter_mut().for_each(|v| *v /= w_norm);
            // H S H = S - 2 w q^T - 2 q w^T with p = S w, q = p - (w . p) w.
            let p: Vec<f64> = (0..m)
                .map(|i| (0..m).map(|j| g[at(i, j)] * w[j]).sum())
                .collect();
            let wp: f64 = w.iter().zip(&p).map(|(a, b)| a * b).sum();
            let q: Vec<f64> = p.iter().zip(&w).map(|(p, w)| p - wp * w).collect();
            for i in 0..m {
                for j in 0..m {
                    g[at(i, j)] -= 2.0 * (w[i] * q[j] + q[i] * w[j]);
                }
            }
        }
        reflectors.push(w);
    }
    if n >= 2 {
        diag[n - 2] = g[(n - 2) * n + n - 2];
        off[n - 1] = g[(n - 1) * n + n - 2];
    }
    if n >= 1 {
        diag[n - 1] = g[n * n - 1];
    }
    (diag, off, reflectors)
}

/// How many eigenvalues of the tridiagonal matrix are below `x`: the negative pivots of the
/// LDL^T factorisation of `T - x I` (Sturm sequence).
fn count_below(diag: &[f64], off: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut pivot = 1.0;
    for i in 0..diag.len() {
        pivot = diag[i] - x - if i > 0 { off[i] * off[i] / pivot } else { 0.0 };
        if pivot == 0.0 {
            pivot = -f64::MIN_POSITIVE.sqrt();
        }
        if pivot < 0.0 {
            count += 1;
        }
    }
    count
}

/// Solves `(T - shift I) y = b` by Gaussian elimination with partial pivoting; a zero pivot (the
/// shift is an eigenvalue to rounding) becomes a tiny one, as inverse iteration wants.
fn solve_shifted(diag: &[f64], off: &[f64], shift: f64, mut b: Vec<f64>) -> Vec<f64> {
    let n = diag.len();
    // Row i of U: u0[i] on the diagonal, u1[i] and u2[i] on the two superdiagonals.
    let mut u0: Vec<f64> = diag.iter().map(|d| d - shift).collect();
    let mut u1: Vec<f64> = (0..n)
        .map(|i| off.get(i + 1).copied().unwrap_or(0.0))
        .collect();
    let mut u2 = vec![0.0; n];
    let tiny = f64::EPSILON * diag.iter().chain(off).fold(0.0f64, |m, v| m.max(v.abs()));
    for i in 0..n.saturating_sub(1) {
        // Row i + 1 as elimination left it: the subdiagonal entry, then its columns i + 1, i + 2.
        let (mut sub, mut next0, mut next1) = (off[i + 1], u0[i + 1], u1[i + 1]);
        if sub.abs() > u0[i].abs() {
            std::mem::swap(&mut u0[i], &mut sub);
            std::mem::swap(&mut u1[i], &mut next0);
            std::mem::swap(&mut u2[i], &mut next1);
            b.swap(i, i + 1);
        }
        if u0[i] == 0.0 {
            u0[i] = tiny;
        }
        let factor = sub / u0[i];
        u0[i + 1] = next0 - factor * u1[i];
        u1[i + 1] = next1 - factor * u2[i];
        b[i + 1] -= factor * b[i];
    }
    if u0[n - 1] == 0.0 {
        u0[n - 1] = tiny;
    }
    for i in (0..n).rev() {
        let above = u1[i] * b.get(i + 1).copied().unwrap_or(0.0)
            + u2[i] * b.get(i + 2).copied().unwrap_or(0.0);
        b[i] = (b[i] - above) / u0[i];
    }
    b
}

/// The `count` largest eigenvalues of the symmetric row-major `n x n` matrix `g`, descending, and
/// their unit eigenvectors as the columns of a row-major `n x count` matrix, to f64 rounding.
fn top_eigenpairs(g: Vec<f64>, n: usize, count: usize) -> (Vec<f64>, Vec<f64>) {
    let (diag, off, reflectors) = tridiagonalize(g, n);
    let radius = |i: usize| off[i].abs() + off.get(i + 1).map_or(0.0, |v| v.abs());
    let lowest = (0..n)
        .map(|i| diag[i] - radius(i))
        .fold(f64::INFINITY, f64::min);
    let highest = (0..n)
        .map(|i| diag[i] + radius(i))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut values = Vec::with_capacity(count);
    let mut vectors = vec![0.0; n * count];
    for j in 0..count {
        // The eigenvalue at ascending position n - 1 - j: the x where the count passes it.
        let (mut lo, mut hi) = (lowest, highest);
        loop {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if count_below(&diag, &off, mid) > n - 1 - j {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let lambda = 0.5 * (lo + hi);
        let mut y = vec![1.0; n];
        for _ in 0..3 {
            y = solve_shifted(&diag, &off, lambda, y);
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            y.iter_mut().for_each(|v| *v /= norm);
        }
        // Eigenvector of g: Q y = H_0 (H_1 (... (H_(n-3) y))).
        for (k, w) in reflectors.iter().enumerate().rev() {
            let tail = &mut y[k + 1..];
            let dot: f64 = w.iter().zip(tail.iter()).map(|(a, b)| a * b).sum();
            tail.iter_mut()
                .zip(w)
                .for_each(|(t, w)| *t -= 2.0 * dot * w);
        }
        values.push(lambda);
        for (row, v) in y.into_iter().enumerate() {
            vectors[row * count + j] = v;
        }
    }
    (values, vectors)
}

/// The exact rank-`RANK` truncation of `a` (`[m, n]`, f64), from the top eigenvectors of its
/// Gram matrix on the smaller side, and `sigma_r / sigma_(r+1)`. Checks that the eigenpairs are
/// eigenpairs to rounding, so a wrong reference fails instead of passing.
fn exact_truncation(a: Tensor<B, 2>) -> (Tensor<B, 2>, f64) {
    let [m, n] = a.dims();
    let left = m <= n;
    let gram = if left {
        a.clone().matmul(a.clone().transpose())
    } else {
        a.clone().transpose().matmul(a.clone())
    };
    let side = m.min(n);
    let (values, vectors) = top_eigenpairs(host(gram.clone()), side, RANK + 1);
    let vectors = device(vectors, [side, RANK + 1]);
    let lambdas = device(values.clone(), [1, RANK + 1]);
    let residual = gram.matmul(vectors.clone()) - vectors.clone() * lambdas;
    let worst = host(residual.abs().max_dim(0))
        .into_iter()
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-10 * values[0],
        "reference eigenpairs off by {worst:e} (lambda_1 = {})",
        values[0]
    );
    let top = vectors.narrow(1, 0, RANK);
    let truncation = if left {
        top.clone().matmul(top.transpose().matmul(a))
    } else {
        a.matmul(top.clone()).matmul(top.transpose())
    };
    (truncation, (values[RANK - 1] / values[RANK]).sqrt())
}

fn rel_err(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f64 {
    let norm = |t: Tensor<B, 2>| host(t.square().sum().reshape([1, 1]))[0].sqrt();
    norm(a - b.clone()) / norm(b)
}

#[test]
fn reference_eigenpairs_match_jacobi() {
    // A Gram matrix of deterministic pseudo-random values.
    let n = 40;
    let x: Vec<f64> = (0..n * n)
        .map(|i| ((i * 7919 % 1009) as f64 / 1009.0) - 0.5)
        .collect();
    let x = device(x, [n, n]);
    let g = host(x.clone().matmul(x.transpose()));
    let (jacobi_values, jacobi_vectors) = symmetric_eigen(&g, n);
    let (values, vectors) = top_eigenpairs(g, n, RANK + 1);
    for j in 0..=RANK {
        assert!((values[j] - jacobi_values[j]).abs() < 1e-12 * jacobi_values[0]);
        // Same unit vector up to sign.
        let dot: f64 = (0..n)
            .map(|row| vectors[row * (RANK + 1) + j] * jacobi_vectors[row * n + j])
            .sum();
        assert!(
            (dot.abs() - 1.0).abs() < 1e-9,
            "eigenvector {j}: |dot| = {dot}"
        );
    }
}

#[test]
fn estimator_factors_match_the_exact_truncation_on_smollm2() {
    let Some((gguf, _)) = smollm2_files() else {
        return;
    };
    let device = Default::default();
    let model = load_gguf::<B>(&gguf, DType::F32, &device).unwrap();
    B::seed(&device, 0);
    let layer = &model.model.layers[LAYER];
    println!("layer {LAYER}, rank {RANK}: |w1 w2 - exact truncation|_F / |exact|_F");
    for target in [
        LlamaProjection::Gate,
        LlamaProjection::Up,
        LlamaProjection::Down,
        LlamaProjection::Q,
        LlamaProjection::K,
        LlamaProjection::V,
    ] {
        let weight = layer.projection(target).weight.val();
        let (exact, gap) = exact_truncation(weight.clone().transpose().cast(DType::F64));
        let start = std::time::Instant::now();
        let svd_estimator::EstimatorFactors { w1, w2, .. } =
            estimator_factors(weight.clone(), RANK);
        let seconds = start.elapsed().as_secs_f64();
        let err = rel_err(w1.matmul(w2).cast(DType::F64), exact);
        println!(
            "{target:?} {:?}: sigma_8/sigma_9 {gap:.4}, error {err:.2e} ({seconds:.2} s)",
            weight.dims()
        );
        assert!(
            err < TOLERANCE,
            "{target:?}: factors {err:.2e} from the exact rank-{RANK} truncation"
        );
    }
}
