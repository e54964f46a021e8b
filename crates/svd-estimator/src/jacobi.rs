//! Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations, in f64 on the host.
//! Used on the `l x l` Gram matrices of the randomized SVD (`l` = rank + oversampling, ~16), where
//! its simplicity and accuracy beat calling out to a linear-algebra library.

/// Eigenvalues (descending) and the matching eigenvectors as columns of a row-major `n x n`
/// matrix, of the symmetric row-major `n x n` matrix `a`.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(
        a.len(),
        n * n,
        "symmetric_eigen: {} values for n = {n}",
        a.len()
    );
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        let scale: f64 = (0..n)
            .map(|i| m[i * n + i] * m[i * n + i])
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                // The smaller root of t^2 + 2 theta t - 1 = 0 (signum(0.0) is 1: t = 1 then).
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // m <- J^T m J, v <- v J, with J the rotation in the (p, q) plane: rows and
                // columns p, q outside the 2x2 block in one pass (m stays symmetric), the block
                // in closed form (the rotation zeroes m[p][q]).
                for k in (0..n).filter(|&k| k != p && k != q) {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    let (new_p, new_q) = (c * mkp - s * mkq, s * mkp + c * mkq);
                    m[k * n + p] = new_p;
                    m[p * n + k] = new_p;
                    m[k * n + q] = new_q;
                    m[q * n + k] = new_q;
                }
                m[p * n + p] -= t * apq;
                m[q * n + q] += t * apq;
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (col, &src) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + col] = v[row * n + src];
        }
    }
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_a_symmetric_matrix() {
        // Check A v = lambda v for every pair, the ordering, and the trace.
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, -0.5];
        let (values, vectors) = symmetric_eigen(&a, 3);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for (k, &lambda) in values.iter().enumerate() {
            for row in 0..3 {
                let av: f64 = (0..3).map(|j| a[row * 3 + j] * vectors[j * 3 + k]).sum();
                assert!((av - lambda * vectors[row * 3 + k]).abs() < 1e-10);
            }
        }
        let trace: f64 = values.iter().sum();
        assert!((trace - 6.5).abs() < 1e-10);
    }
}
