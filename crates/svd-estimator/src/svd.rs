//! Truncated SVD by randomized subspace iteration (Halko, Martinsson & Tropp 2011) with Chebyshev
//! acceleration (Zhou & Saad 2007), run until the rank-r reconstruction is within a tolerance of
//! the exact truncation. Built from burn matmuls so it runs where the weights are (GPU for an 8B
//! model), with only `l x l` matrices (`l` = rank + oversampling) decomposed on the host.
//!
//! SparseLoRA's estimator (SPEC section 4) needs the top-r factors of each frozen `W^T`:
//! `w1 = U_r diag(sqrt S_r)` (`in x r`) and `w2 = diag(sqrt S_r) Vh_r` (`r x out`), so that
//! `x w1 w2 ~ x W^T`, the same factors as the reference's exact `torch.linalg.svd` (product within
//! 1e-3). Trained weights have flat spectra at the cut (sigma_8 / sigma_9 is 1.0008-1.05 on
//! SmolLM2), where a fixed couple of power iterations returns another subspace and so other
//! channels; the iteration therefore runs until an a-posteriori bound on the reconstruction error
//! ([`TruncatedSvd::error_bound`]) is below [`SvdOptions::tol`].

use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};

use crate::jacobi::symmetric_eigen;

/// Products with `A A^T` between two convergence checks: the degree of each Chebyshev filter.
/// Higher degrees filter more per check but overshoot the tolerance by more products.
const FILTER_DEGREE: usize = 4;

/// SPEC 4's bound on the distance of the factors' product from the exact truncation: factors
/// whose error bound exceeds it are counted by [`crate::SvdCache::build`] for its caller to report.
pub const FACTOR_TOLERANCE: f64 = 1e-3;

/// Shift of the Cholesky factorisation that orthonormalises a block between filter steps,
/// relative to the block's largest squared column norm: above the f32 rounding of its Gram matrix
/// (about `eps sqrt(m)`), so the directions of a near-singular block come out as short columns
/// instead of making the factorisation blow up. The basis need not be exactly orthonormal there.
const BLOCK_SHIFT: f64 = 1e-4;

/// Directions of `q^T q` below this, relative to the largest, are dropped in the Rayleigh-Ritz
/// step: the rounding noise of a rank-deficient block (relative energy about `eps^2 = 1e-14`,
/// squared length `eps^2 / BLOCK_SHIFT` after the block's Cholesky-QR), far below any direction
/// the iteration keeps.
const RITZ_FLOOR: f64 = 1e-6;

/// How [`truncated_svd`] iterates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SvdOptions {
    /// Stop once [`TruncatedSvd::error_bound`], the bound on the relative Frobenius distance of
    /// the rank-r reconstruction from the exact rank-r truncation, is at most this. The
    /// iteration also stops when the bound, already within SPEC 4's 1e-3, no longer halves
    /// between two checks: it then measures the f32 rounding of the residuals (which dominates
    /// when `sigma_r / sigma_(r+1)` is within a few 0.1% of 1), not the iteration.
    pub tol: f64,
    /// Most products with `A A^T` (two matmuls with `A` each), converged or not; at least one
    /// is always made.
    pub max_iters: usize,
    /// Columns of the iterated block beyond the rank. The top-r subspace converges at a rate set
    /// by `sigma_r / sigma_(l+1)`, so a wider block pays for its cost with fewer iterations on
    /// flat spectra; the block's smallest Ritz value also bounds the spectrum the filter damps.
    pub oversample: usize,
}

impl Default for SvdOptions {
    /// A tolerance ten times below SPEC 4's 1e-3 and a cap of 64 products. On SmolLM2-135M's
    /// 150 estimated projections: 9-64 products (median 17, mean 19), errors against the exact
    /// truncation of 6e-5 or less; one (layer 0's up_proj, sigma_8 / sigma_9 = 1.0008) reaches
    /// the cap with a bound of 1.3e-3 and an error of 5e-5.
    fn default() -> Self {
        Self {
            tol: 1e-4,
            max_iters: 64,
            oversample: 24,
        }
    }
}

/// The leading singular triplets of a matrix.
#[derive(Debug, Clone)]
pub struct TruncatedSvd<B: Backend> {
    /// Left singular vectors, `[m, r]`, f32.
    pub u: Tensor<B, 2>,
    /// Singular values, descending, `r` of them.
    pub s: Vec<f32>,
    /// Right singular vectors as rows, `[r, n]`, f32.
    pub vt: Tensor<B, 2>,
    /// Products with `A A^T` made.
    pub iterations: usize,
    /// Bound on `|u diag(s) vt - A_r|_F / |A_r|_F` for the exact rank-r truncation `A_r`, from
    /// the Ritz residuals (see `reconstruction_error_bound`): at most [`SvdOptions::tol`], or
    /// 1e-3 where it stalled on f32 rounding, unless [`SvdOptions::max_iters`] stopped the
    /// iteration first.
    pub error_bound: f64,
}

fn host_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 conversion of a float tensor")
}

fn device_f32<B: Backend>(values: Vec<f64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// The first `cols` columns of the row-major `rows x n` matrix `values`.
fn leading_columns(values: &[f64], rows: usize, n: usize, cols: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|row| values[row * n..row * n + cols].iter().copied())
        .collect()
}

/// The upper-triangular `t = L^-T` (row-major `n x n`) for the Cholesky factor `L L^T` of a
/// block's Gram matrix `gram` plus [`BLOCK_SHIFT`] times its largest diagonal entry: `block t`
/// has orthonormal columns up to the shift and the Gram matrix's rounding times its condition
/// (Cholesky-QR). A zero block gets the identity.
fn orthonormalizing_transform(gram: &[f64], n: usize) -> Vec<f64> {
    let scale = (0..n).map(|i| gram[i * n + i]).fold(0.0, f64::max);
    let mut t = vec![0.0; n * n];
    if scale <= 0.0 {
        (0..n).for_each(|i| t[i * n + i] = 1.0);
        return t;
    }
    let shift = scale * BLOCK_SHIFT;
    let mut chol = vec![0.0; n * n]; // L, row-major lower triangle
    for j in 0..n {
        let (done, rest) = chol.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        for (k, done_row) in done.chunks(n).enumerate() {
            // L[j][k] for k < j, from the rows above.
            let dot: f64 = (0..k).map(|c| row_j[c] * done_row[c]).sum();
            row_j[k] = (gram[j * n + k] - dot) / done_row[k];
        }
        let dot: f64 = row_j[..j].iter().map(|v| v * v).sum();
        row_j[j] = (gram[j * n + j] + shift - dot).max(shift).sqrt();
    }
    // Column j of L^-1 by forward substitution, stored transposed: t = (L^-1)^T.
    for j in 0..n {
        for i in j..n {
            let known: f64 = (j..i).map(|k| chol[i * n + k] * t[j * n + k]).sum();
            let unit = if i == j { 1.0 } else { 0.0 };
            t[j * n + i] = (unit - known) / chol[i * n + i];
        }
    }
    t
}

/// `V diag(1 / sqrt(lambda))` (row-major `n x n`) from the eigenpairs of a block's Gram matrix
/// `gram`: `block t` has orthonormal columns, exactly but for rounding, with the directions below
/// `floor` times the largest eigenvalue mapped to zero columns.
fn whitening(gram: &[f64], n: usize, floor: f64) -> Vec<f64> {
    let (values, mut vectors) = symmetric_eigen(gram, n);
    let floor = values.first().copied().unwrap_or(0.0).max(0.0) * floor;
    for (col, &lambda) in values.iter().enumerate() {
        let inv = if lambda > floor && lambda > 0.0 {
            1.0 / lambda.sqrt()
        } else {
            0.0
        };
        for row in 0..n {
            vectors[row * n + col] *= inv;
        }
    }
    vectors
}

/// Row-major `n x n` product `x y`.
fn host_matmul(x: &[f64], y: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let xik = x[i * n + k];
            for j in 0..n {
                out[i * n + j] += xik * y[k * n + j];
            }
        }
    }
    out
}

/// Row-major transpose of an `n x n` matrix.
fn host_transpose(x: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|i| x[(i % n) * n + i / n]).collect()
}

/// An f32 matrix as a part that TF32 represents exactly (bf16-rounded, or the whole matrix when
/// it came from bf16/f16 values) and the f32 remainder, `x = hi + lo`.
#[derive(Clone)]
struct Split<B: Backend> {
    hi: Tensor<B, 2>,
    lo: Option<Tensor<B, 2>>,
}

impl<B: Backend> Split<B> {
    fn transpose(self) -> Self {
        Self {
            hi: self.hi.transpose(),
            lo: self.lo.map(Tensor::transpose),
        }
    }
}

/// Matrix products accurate to f32 rounding on every backend. burn-cuda runs f32 matmuls on TF32
/// tensor cores, which round their inputs to 11 significant bits (5e-4): coarser than the 0.2%
/// gaps between singular values at the cut that the iteration resolves. (f64 would avoid it,
/// but cubecl-cuda 0.10 leaves f64 out of its supported types.) So each operand is split into a
/// bf16 part, exact in TF32, and an f32 remainder below 2^-8 of it, and
/// `x y = x_hi y_hi + x_hi y_lo + x_lo y_hi`: the products of the high parts are exact in the f32
/// accumulator, the remainders lose 2^-11 of themselves, the omitted `x_lo y_lo` is 2^-16 of the
/// whole. Backends without bf16 take plain products (none of them rounds f32 matmuls to TF32).
struct Products<B: Backend> {
    /// The backend's f32 matmul; the tests put a TF32-rounding one here.
    matmul: fn(Tensor<B, 2>, Tensor<B, 2>) -> Tensor<B, 2>,
    split: bool,
}

impl<B: Backend> Products<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            matmul: Tensor::matmul,
            split: B::supports_dtype(device, DType::BF16),
        }
    }

    fn split(&self, x: Tensor<B, 2>) -> Split<B> {
        if matches!(x.dtype(), DType::BF16 | DType::F16) || !self.split {
            return Split {
                hi: x.cast(DType::F32),
                lo: None,
            };
        }
        let x = x.cast(DType::F32);
        let hi = x.clone().cast(DType::BF16).cast(DType::F32);
        Split {
            lo: Some(x - hi.clone()),
            hi,
        }
    }

    /// `x y` of split operands; `x_hi` multiplies `[y_hi | y_lo]` in one matmul, which reads a
    /// large `x` (the weight) once.
    fn product(&self, x: &Split<B>, y: &Split<B>) -> Tensor<B, 2> {
        let matmul = self.matmul;
        let mut out = match &y.lo {
            Some(y_lo) => {
                let cols = y.hi.dims()[1];
                let both = matmul(
                    x.hi.clone(),
                    Tensor::cat(vec![y.hi.clone(), y_lo.clone()], 1),
                );
                both.clone().narrow(1, 0, cols) + both.narrow(1, cols, cols)
            }
            None => matmul(x.hi.clone(), y.hi.clone()),
        };
        if let Some(x_lo) = &x.lo {
            out = out + matmul(x_lo.clone(), y.hi.clone());
        }
        out
    }

    fn matmul(&self, x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
        self.product(&self.split(x), &self.split(y))
    }

    /// `x^T y` read back to the host (a small Gram matrix).
    fn gram(&self, x: Tensor<B, 2>, y: Tensor<B, 2>) -> Vec<f64> {
        host_f64(self.matmul(x.transpose(), y))
    }

    /// A basis of the columns of `y` (`[m, l]`), orthonormal up to [`BLOCK_SHIFT`] and
    /// `eps cond(y)^2`, and the transform `t` with `basis = y t` (see
    /// [`orthonormalizing_transform`]). That is enough between filter steps, where only the
    /// span and its numerical rank count; the Rayleigh-Ritz step orthonormalises exactly.
    fn orthonormalize(&self, y: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [_, l] = y.dims();
        let t = device_f32::<B>(
            orthonormalizing_transform(&self.gram(y.clone(), y.clone()), l),
            [l, l],
            &y.device(),
        );
        (self.matmul(y, t.clone()), t)
    }
}

/// Bound on the relative Frobenius distance between the rank-r reconstruction from Ritz pairs
/// of `A A^T` and the exact rank-r truncation, given the Ritz values `theta` (descending, the
/// whole block) and the residual norms `|A A^T u_i - theta_i u_i|` of the top `rank` pairs.
///
/// Ritz vector `u_i` leans into the eigenspace below `lambda_(r+1)` by an angle of at most
/// `|res_i| / (theta_i - lambda_(r+1))` (expand `u_i` in eigenvectors), with `lambda_(r+1)`
/// taken as the Ritz value `theta_(r+1)`; a lean `phi` between directions of energies `theta_i`
/// and `theta_(r+1)` moves the reconstruction by about `phi sqrt(theta_i + theta_(r+1))`, against
/// the truncation's norm `sqrt(sum theta_i)`. The residuals are orthogonal to the block, so they
/// measure what the block still lacks; on SmolLM2 the bound is 1-20 times the true error.
fn reconstruction_error_bound(theta: &[f64], residuals: &[f64], rank: usize) -> f64 {
    let next = theta.get(rank).copied().unwrap_or(0.0);
    let energy: f64 = theta[..rank].iter().sum();
    if energy <= 0.0 {
        return 0.0;
    }
    let moved: f64 = theta[..rank]
        .iter()
        .zip(residuals)
        .map(|(&t, &res)| {
            let gap = t - next;
            let angle = if gap > 0.0 { (res / gap).min(1.0) } else { 1.0 };
            angle * angle * (t + next)
        })
        .sum();
    (moved / energy).sqrt()
}

/// The Rayleigh-Ritz pairs of `A A^T` on the span of a block `q`: Ritz values (descending) and
/// the coefficients `w` (`[l, l]`, row-major) of the Ritz vectors `q w`, from `s = q^T q` and
/// `h = q^T A A^T q`. Whitening by `s` first makes the Ritz vectors orthonormal although `q` is
/// not quite (see [`Products::orthonormalize`]).
fn rayleigh_ritz(s: &[f64], h: &[f64], l: usize) -> (Vec<f64>, Vec<f64>) {
    let t = whitening(s, l, RITZ_FLOOR);
    let reduced = host_matmul(&host_matmul(&host_transpose(&t, l), h, l), &t, l);
    let (theta, vectors) = symmetric_eigen(&reduced, l);
    (
        theta.into_iter().map(|v| v.max(0.0)).collect(),
        host_matmul(&t, &vectors, l),
    )
}

/// `p(A A^T) q` for the Chebyshev polynomial `p` of degree `degree` on `[0, bound]`, given
/// `gq = A A^T q`: `|p| <= 1` on the interval and grows fast above it, so with `bound` at the
/// block's smallest Ritz value the eigenvalues that the block should not hold are damped against
/// those it should, far more per product than `A A^T` alone (by `acosh(2 lambda / bound - 1)`
/// rather than `ln(lambda / bound)` per product, e.g. 0.6 against 0.08 at a 4% gap). The
/// three-term recurrence is re-orthonormalised every step: the same transform applied to both of
/// its terms commutes with the polynomial, so the recurrence holds while the block keeps full
/// numerical rank.
fn chebyshev_filter<B: Backend>(
    products: &Products<B>,
    a: &Split<B>,
    at: &Split<B>,
    q: Tensor<B, 2>,
    gq: Tensor<B, 2>,
    bound: f64,
    degree: usize,
) -> Tensor<B, 2> {
    // Centre and half-width of [0, bound]: T_1(x) = x with x = (lambda - half) / half.
    let half = bound / 2.0;
    let (mut current, transform) = products.orthonormalize((gq - q.clone() * half) / half);
    let mut previous = products.matmul(q, transform);
    for _ in 1..degree {
        let z = products.product(at, &products.split(current.clone()));
        let gq = products.product(a, &products.split(z));
        // T_(k+1)(x) = 2 x T_k(x) - T_(k-1)(x).
        let next = (gq - current.clone() * half) * (2.0 / half) - previous;
        let (next, transform) = products.orthonormalize(next);
        previous = products.matmul(current, transform);
        current = next;
    }
    current
}

/// The top-`rank` singular triplets of `a` (`[m, n]`, any float dtype), iterated in f32 with
/// TF32-proof products until [`TruncatedSvd::error_bound`] is below `options.tol` (or stalls
/// within 1e-3, see [`SvdOptions::tol`]) or `options.max_iters` products with `A A^T` were made. Each round applies a Chebyshev filter
/// of degree 4 (`FILTER_DEGREE`) to an orthonormal block of `rank + oversample` columns, then
/// checks the Rayleigh-Ritz pairs of the block. Deterministic for a seeded backend.
pub fn truncated_svd<B: Backend>(
    a: Tensor<B, 2>,
    rank: usize,
    options: SvdOptions,
) -> TruncatedSvd<B> {
    let products = Products::new(&a.device());
    iterate(&products, a, rank, options)
}

fn iterate<B: Backend>(
    products: &Products<B>,
    a: Tensor<B, 2>,
    rank: usize,
    options: SvdOptions,
) -> TruncatedSvd<B> {
    let [m, n] = a.dims();
    if m > n {
        // Iterate on the smaller side: A^T = V S U^T.
        let svd = iterate(products, a.transpose(), rank, options);
        return TruncatedSvd {
            u: svd.vt.transpose(),
            vt: svd.u.transpose(),
            ..svd
        };
    }
    let device = a.device();
    let rank = rank.min(m);
    let l = (rank + options.oversample.max(1)).min(m);
    let a = products.split(a);
    let at = a.clone().transpose();
    let mut q = if l == m {
        // The block is the whole space: the identity spans it exactly, where A Omega would
        // be as ill-conditioned as A.
        Tensor::eye(m, &device)
    } else {
        let omega = Tensor::<B, 2>::random(
            [n, l],
            Distribution::Normal(0.0, 1.0),
            (&device, DType::F32),
        );
        products
            .orthonormalize(products.product(&a, &products.split(omega)))
            .0
    };
    let mut iterations = 0;
    let mut previous_bound = f64::INFINITY;
    loop {
        let z = products.product(&at, &products.split(q.clone())); // [n, l] = A^T q
        let gq = products.product(&a, &products.split(z.clone())); // [m, l] = A A^T q
        iterations += 1;
        // q^T q and z^T z = q^T A A^T q, read back together.
        let s = products.matmul(q.clone().transpose(), q.clone());
        let h = products.matmul(z.clone().transpose(), z.clone());
        let grams = host_f64(Tensor::cat(vec![s, h], 0));
        let (theta, w) = rayleigh_ritz(&grams[..l * l], &grams[l * l..], l);
        let w_top = device_f32::<B>(leading_columns(&w, l, l, rank), [l, rank], &device);
        let u = products.matmul(q.clone(), w_top.clone()); // [m, rank]
        let top = device_f32::<B>(theta[..rank].to_vec(), [1, rank], &device);
        let residual = products.matmul(gq.clone(), w_top.clone()) - u.clone() * top;
        let residuals: Vec<f64> = host_f64(residual.square().sum_dim(0))
            .into_iter()
            .map(f64::sqrt)
            .collect();
        let error_bound = reconstruction_error_bound(&theta, &residuals, rank);
        // Within SPEC 4's tolerance, a bound that no longer halves per round measures the f32
        // rounding of the residuals, not the iteration: more rounds would not lower it.
        let stalled = error_bound <= FACTOR_TOLERANCE && error_bound > previous_bound / 2.0;
        if error_bound <= options.tol || stalled || iterations >= options.max_iters {
            let sigma: Vec<f64> = theta[..rank].iter().map(|t| t.sqrt()).collect();
            let inv_sigma: Vec<f64> = sigma
                .iter()
                .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
                .collect();
            let inv_sigma = device_f32::<B>(inv_sigma, [rank, 1], &device);
            // A^T u_i = z w_i, so v_i^T = (z w_i)^T / sigma_i.
            let vt = products.matmul(w_top.transpose(), z.transpose()) * inv_sigma; // [rank, n]
            return TruncatedSvd {
                u,
                s: sigma.iter().map(|&s| s as f32).collect(),
                vt,
                iterations,
                error_bound,
            };
        }
        previous_bound = error_bound;
        // The block's smallest Ritz value bounds what it should not hold; kept off zero (a
        // rank-deficient matrix) where the filter would divide by it.
        let bound = theta[l - 1].max(theta[0] * 1e-12);
        let degree = FILTER_DEGREE.min(options.max_iters - iterations);
        q = chebyshev_filter(products, &a, &at, q, gq, bound, degree);
        iterations += degree - 1;
    }
}

/// SparseLoRA's estimator factors of a frozen weight `W` stored `[out, in]`: `(w1, w2)` with
/// `w1 = U diag(sqrt S)` (`[in, rank]`) and `w2 = diag(sqrt S) Vh` (`[rank, out]`) from the SVD of
/// `W^T` to [`SvdOptions::default`]'s tolerance, so that `x w1 w2 ~ x W^T`.
///
/// At a rank of `min(out, in)` or more the truncation is `W^T` itself: the factors are then an
/// identity and `W^T` (exact), where the SVD would resolve the smallest singular values only to
/// f32's rounding of `W W^T`.
pub fn estimator_factors<B: Backend>(weight: Tensor<B, 2>, rank: usize) -> EstimatorFactors<B> {
    let [out, d_in] = weight.dims();
    if rank >= out.min(d_in) {
        let device = weight.device();
        let wt = weight.cast(DType::F32).transpose(); // [in, out]
        let (w1, w2) = if d_in <= out {
            (Tensor::eye(d_in, &device), wt)
        } else {
            (wt, Tensor::eye(out, &device))
        };
        return EstimatorFactors {
            w1,
            w2,
            error_bound: 0.0,
        };
    }
    let options = SvdOptions::default();
    let svd = truncated_svd(weight.transpose(), rank, options);
    let device = svd.u.device();
    let r = svd.s.len();
    let root: Vec<f64> = svd.s.iter().map(|&s| (s as f64).sqrt()).collect();
    let as_row = device_f32::<B>(root.clone(), [1, r], &device);
    let as_col = device_f32::<B>(root, [r, 1], &device);
    EstimatorFactors {
        w1: svd.u * as_row,
        w2: svd.vt * as_col,
        error_bound: svd.error_bound,
    }
}

/// What [`estimator_factors`] returns.
#[derive(Debug, Clone)]
pub struct EstimatorFactors<B: Backend> {
    /// `U diag(sqrt S)`, `[in, rank]`.
    pub w1: Tensor<B, 2>,
    /// `diag(sqrt S) Vh`, `[rank, out]`.
    pub w2: Tensor<B, 2>,
    /// The SVD's bound on the relative distance of `w1 w2` from the exact rank-`rank`
    /// truncation (see [`TruncatedSvd::error_bound`]); above [`FACTOR_TOLERANCE`] where the
    /// spectrum is flat at the cut beyond what f32 resolves.
    pub error_bound: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn random(shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn rel_err(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
        let diff = (a - b.clone()).square().sum().into_scalar().sqrt();
        diff / b.square().sum().into_scalar().sqrt()
    }

    #[test]
    fn recovers_an_exactly_low_rank_matrix() {
        B::seed(&Default::default(), 1);
        let a = random([64, 8]).matmul(random([8, 48]));
        let svd = truncated_svd(a.clone(), 8, SvdOptions::default());
        let s = Tensor::<B, 1>::from_floats(svd.s.as_slice(), &Default::default()).reshape([1, 8]);
        let rebuilt = (svd.u.clone() * s).matmul(svd.vt.clone());
        let err = rel_err(rebuilt, a);
        assert!(err < 1e-4, "reconstruction rel err {err}");
        // U has orthonormal columns.
        let gram = svd.u.clone().transpose().matmul(svd.u);
        assert!(rel_err(gram, Tensor::eye(8, &Default::default())) < 1e-4);
    }

    #[test]
    fn leading_singular_values_match_the_exact_ones() {
        B::seed(&Default::default(), 2);
        // A matrix with a decaying spectrum, like trained weights.
        let a = random([80, 60])
            .matmul(random([60, 60]) * 0.1)
            .matmul(random([60, 60]));
        let exact_gram: Vec<f64> = host_f64(a.clone().transpose().matmul(a.clone()));
        let (eig, _) = symmetric_eigen(&exact_gram, 60);
        let svd = truncated_svd(a, 8, SvdOptions::default());
        for (k, &s) in svd.s.iter().enumerate() {
            let exact = eig[k].sqrt();
            assert!(
                ((s as f64) - exact).abs() / exact < 2e-3,
                "sigma_{k}: {s} vs {exact}"
            );
        }
    }

    #[test]
    fn estimator_factors_reproduce_a_low_rank_projection() {
        B::seed(&Default::default(), 3);
        let w = random([40, 6]).matmul(random([6, 32])); // [out = 40, in = 32], rank 6
        let EstimatorFactors { w1, w2, .. } = estimator_factors(w.clone(), 8);
        assert_eq!(w1.dims(), [32, 8]);
        assert_eq!(w2.dims(), [8, 40]);
        let x = random([5, 32]);
        let err = rel_err(x.clone().matmul(w1).matmul(w2), x.matmul(w.transpose()));
        assert!(err < 1e-4, "x w1 w2 vs x W^T rel err {err}");
    }

    /// `[rows, cols]` with orthonormal columns (f64), from a Gaussian matrix.
    fn orthonormal(rows: usize, cols: usize) -> Tensor<B, 2> {
        let device = Default::default();
        let gaussian = Tensor::<B, 2>::random(
            [rows, cols],
            Distribution::Normal(0.0, 1.0),
            (&device, DType::F64),
        );
        let gram = host_f64(gaussian.clone().transpose().matmul(gaussian.clone()));
        let t = TensorData::new(whitening(&gram, cols, 0.0), [cols, cols]);
        gaussian.matmul(Tensor::from_data(t, (&device, DType::F64)))
    }

    /// `U diag(s) V^T` for random orthonormal `U` (`[m, k]`), `V` (`[n, k]`), with the exact
    /// rank-`rank` truncation `U_r diag(s_r) V_r^T`.
    fn with_spectrum(m: usize, n: usize, s: &[f64], rank: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let k = s.len();
        let (u, v) = (orthonormal(m, k), orthonormal(n, k));
        let diag = Tensor::<B, 2>::from_data(
            TensorData::new(s.to_vec(), [1, k]),
            (&Default::default(), DType::F64),
        );
        let a = (u.clone() * diag.clone()).matmul(v.clone().transpose());
        let truncation = (u.narrow(1, 0, rank) * diag.narrow(1, 0, rank))
            .matmul(v.narrow(1, 0, rank).transpose());
        (a, truncation)
    }

    /// 96 singular values: two outliers, then a slow decay like a trained weight's, with
    /// sigma_8 / sigma_9 = 1.009 and sigma_8 / sigma_33 = 1.23.
    fn flat_spectrum() -> Vec<f64> {
        (0..96)
            .map(|i| match i {
                0 => 4.0,
                1 => 2.5,
                _ => 1.0 / (1.0 + 0.01 * i as f64),
            })
            .collect()
    }

    /// `u diag(s) vt`.
    fn rebuild(svd: &TruncatedSvd<B>) -> Tensor<B, 2> {
        let sigma = Tensor::<B, 1>::from_floats(svd.s.as_slice(), &Default::default());
        (svd.u.clone() * sigma.reshape([1, svd.s.len()])).matmul(svd.vt.clone())
    }

    fn rel_err_f64(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f64 {
        let norm = |t: Tensor<B, 2>| host_f64(t.square().sum()).first().copied().unwrap().sqrt();
        norm(a.cast(DType::F64) - b.clone()) / norm(b)
    }

    #[test]
    fn converges_on_a_flat_spectrum_at_the_cut() {
        B::seed(&Default::default(), 4);
        let (a, truncation) = with_spectrum(160, 120, &flat_spectrum(), 8);
        let options = SvdOptions::default();
        let svd = truncated_svd(a.clone(), 8, options);
        let err = rel_err_f64(rebuild(&svd), truncation.clone());
        assert!(
            svd.iterations < options.max_iters,
            "not converged: bound {:e} after {} products",
            svd.error_bound,
            svd.iterations
        );
        assert!(
            err < 1e-3,
            "rank-8 reconstruction {err:e} from the exact one"
        );
        // The bound holds (up to the factors' f32 rounding).
        assert!(
            err <= svd.error_bound + 1e-6,
            "error {err:e} above its bound {:e}",
            svd.error_bound
        );

        // Two products, what the estimator used to make, are far off, and the bound says so.
        let early = truncated_svd(
            a,
            8,
            SvdOptions {
                max_iters: 2,
                ..options
            },
        );
        let early_err = rel_err_f64(rebuild(&early), truncation);
        println!(
            "flat spectrum: {} products, error {err:.1e} (bound {:.1e}); 2 products: error {early_err:.1e} (bound {:.1e})",
            svd.iterations, svd.error_bound, early.error_bound
        );
        assert_eq!(early.iterations, 2);
        assert!(
            early_err > 1e-2,
            "two products already within {early_err:e}"
        );
        assert!(
            early.error_bound >= early_err,
            "bound {:e} below the error {early_err:e}",
            early.error_bound
        );
    }

    #[test]
    fn error_bound_weighs_each_ritz_residual_by_its_gap() {
        let theta = [9.0, 4.0, 1.0, 0.5];
        // Exact pairs: no error.
        assert_eq!(reconstruction_error_bound(&theta, &[0.0, 0.0], 2), 0.0);
        // Pair 2 leans by 0.3 / (4 - 1) = 0.1 between energies 4 and 1: sqrt(0.01 * 5 / 13).
        let bound = reconstruction_error_bound(&theta, &[0.0, 0.3], 2);
        assert!((bound - (0.05f64 / 13.0).sqrt()).abs() < 1e-12);
        // No gap at the cut: the pair may be anywhere, a whole angle.
        let tied = [9.0, 4.0, 4.0];
        let bound = reconstruction_error_bound(&tied, &[0.0, 1e-9], 2);
        assert!((bound - (8.0f64 / 13.0).sqrt()).abs() < 1e-12);
        // A zero matrix is its own truncation.
        assert_eq!(reconstruction_error_bound(&[0.0; 3], &[0.0; 2], 2), 0.0);
    }

    /// burn-cuda's f32 matmul on TF32 tensor cores, emulated: both inputs rounded to 11
    /// significant bits (to nearest), products accumulated in f32.
    fn tf32_matmul(x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
        let round = |t: Tensor<B, 2>| {
            let shape = t.dims();
            let values: Vec<f32> = t
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| f32::from_bits((v.to_bits() + 0x1000) & !0x1fff))
                .collect();
            Tensor::<B, 2>::from_data(TensorData::new(values, shape), &Default::default())
        };
        round(x).matmul(round(y))
    }

    #[test]
    fn split_products_survive_tf32_rounding() {
        B::seed(&Default::default(), 5);
        let (a, truncation) = with_spectrum(160, 120, &flat_spectrum(), 8);
        let options = SvdOptions::default();
        let run = |split| {
            let products = Products {
                matmul: tf32_matmul,
                split,
            };
            let svd = iterate(&products, a.clone(), 8, options);
            let err = rel_err_f64(rebuild(&svd), truncation.clone());
            (svd, err)
        };
        let (svd, err) = run(true);
        let (plain, plain_err) = run(false);
        println!(
            "emulated TF32: split {} products, error {err:.1e} (bound {:.1e}); plain {} products, error {plain_err:.1e} (bound {:.1e})",
            svd.iterations, svd.error_bound, plain.iterations, plain.error_bound
        );
        assert!(svd.iterations < options.max_iters && err < 1e-3);
        assert!(err <= svd.error_bound + 1e-6);
        // Plain TF32 products stall at the cap, an order of magnitude further off.
        assert_eq!(plain.iterations, options.max_iters);
        assert!(plain.error_bound > options.tol && plain_err > 10.0 * err);
    }
}
