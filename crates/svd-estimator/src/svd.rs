//! Truncated SVD by randomized subspace iteration (Halko, Martinsson & Tropp 2011), built from
//! burn matmuls so it runs where the weights are (GPU for an 8B model), with only `l x l` Gram
//! matrices (`l` = rank + oversampling) decomposed on the host.
//!
//! SparseLoRA's estimator (SPEC section 4) needs the top-r factors of each frozen `W^T`:
//! `w1 = U_r diag(sqrt S_r)` (`in x r`) and `w2 = diag(sqrt S_r) Vh_r` (`r x out`), so that
//! `x w1 w2 ~ x W^T`.

use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};

use crate::jacobi::symmetric_eigen;

/// Extra sampled directions beyond the rank: the usual choice for randomized SVD.
const OVERSAMPLING: usize = 8;

/// The leading singular triplets of a matrix.
#[derive(Debug, Clone)]
pub struct TruncatedSvd<B: Backend> {
    /// Left singular vectors, `[m, r]`.
    pub u: Tensor<B, 2>,
    /// Singular values, descending, `r` of them.
    pub s: Vec<f32>,
    /// Right singular vectors as rows, `[r, n]`.
    pub vt: Tensor<B, 2>,
}

fn host_f64<B: Backend>(t: Tensor<B, 2>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 conversion of an f32 tensor")
}

fn device_f32<B: Backend>(values: Vec<f64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// An orthonormal basis of the columns of `y` (`[m, l]`), through the eigen-decomposition of
/// `y^T y`; directions with negligible energy become zero columns (rank-deficient inputs).
fn orthonormalize<B: Backend>(y: Tensor<B, 2>) -> Tensor<B, 2> {
    let [_, l] = y.dims();
    let device = y.device();
    let gram = host_f64(y.clone().transpose().matmul(y.clone()));
    let (values, vectors) = symmetric_eigen(&gram, l);
    let floor = values.first().copied().unwrap_or(0.0).max(0.0) * 1e-9;
    // Q = Y V diag(1 / sqrt(lambda)), column by column.
    let mut scaled = vectors;
    for (col, &lambda) in values.iter().enumerate() {
        let inv = if lambda > floor && lambda > 0.0 {
            1.0 / lambda.sqrt()
        } else {
            0.0
        };
        for row in 0..l {
            scaled[row * l + col] *= inv;
        }
    }
    y.matmul(device_f32::<B>(scaled, [l, l], &device))
}

/// The top-`rank` singular triplets of `a` (`[m, n]`, computed in f32), with `power_iters`
/// rounds of subspace iteration (2 is plenty for weight matrices). Deterministic for a seeded
/// backend.
pub fn truncated_svd<B: Backend>(
    a: Tensor<B, 2>,
    rank: usize,
    power_iters: usize,
) -> TruncatedSvd<B> {
    let [m, n] = a.dims();
    let device = a.device();
    let rank = rank.min(m).min(n);
    let l = (rank + OVERSAMPLING).min(m).min(n);
    let a = a.cast(DType::F32);
    let omega = Tensor::<B, 2>::random(
        [n, l],
        Distribution::Normal(0.0, 1.0),
        (&device, DType::F32),
    );
    // Orthonormalising twice per step keeps the basis orthonormal to f32 accuracy.
    let orth = |y: Tensor<B, 2>| orthonormalize(orthonormalize(y));
    let mut q = orth(a.clone().matmul(omega)); // [m, l]
    for _ in 0..power_iters {
        let z = orth(a.clone().transpose().matmul(q)); // [n, l]
        q = orth(a.clone().matmul(z)); // [m, l]
    }
    let b = q.clone().transpose().matmul(a); // [l, n]
    let (values, vectors) = symmetric_eigen(&host_f64(b.clone().matmul(b.clone().transpose())), l);
    let sigma: Vec<f64> = values
        .iter()
        .take(rank)
        .map(|v| v.max(0.0).sqrt())
        .collect();
    // The top `rank` eigenvectors of B B^T, as columns: [l, rank].
    let w_top: Vec<f64> = (0..l)
        .flat_map(|row| (0..rank).map(move |col| (row, col)))
        .map(|(row, col)| vectors[row * l + col])
        .collect();
    let w_top = device_f32::<B>(w_top, [l, rank], &device);
    let u = q.matmul(w_top.clone()); // [m, rank]
    let inv_sigma: Vec<f64> = sigma
        .iter()
        .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
        .collect();
    let inv_sigma = device_f32::<B>(inv_sigma, [rank, 1], &device);
    let vt = w_top.transpose().matmul(b) * inv_sigma; // [rank, n]
    TruncatedSvd {
        u,
        s: sigma.iter().map(|&s| s as f32).collect(),
        vt,
    }
}

/// SparseLoRA's estimator factors of a frozen weight `W` stored `[out, in]`: `(w1, w2)` with
/// `w1 = U diag(sqrt S)` (`[in, rank]`) and `w2 = diag(sqrt S) Vh` (`[rank, out]`) from the SVD of
/// `W^T`, so that `x w1 w2 ~ x W^T`.
pub fn estimator_factors<B: Backend>(
    weight: Tensor<B, 2>,
    rank: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let svd = truncated_svd(weight.transpose(), rank, 2);
    let device = svd.u.device();
    let r = svd.s.len();
    let root: Vec<f64> = svd.s.iter().map(|&s| (s as f64).sqrt()).collect();
    let as_row = device_f32::<B>(root.clone(), [1, r], &device);
    let as_col = device_f32::<B>(root, [r, 1], &device);
    (svd.u * as_row, svd.vt * as_col)
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
        let svd = truncated_svd(a.clone(), 8, 1);
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
        let svd = truncated_svd(a, 8, 2);
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
        let (w1, w2) = estimator_factors(w.clone(), 8);
        assert_eq!(w1.dims(), [32, 8]);
        assert_eq!(w2.dims(), [8, 40]);
        let x = random([5, 32]);
        let err = rel_err(x.clone().matmul(w1).matmul(w2), x.matmul(w.transpose()));
        assert!(err < 1e-4, "x w1 w2 vs x W^T rel err {err}");
    }
}
