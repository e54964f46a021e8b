//! SparseLoRA's training-free sparsity estimator: offline truncated SVD of the frozen weights and
//! (to come, issue #4) online per-batch channel selection (paper section 3, SPEC.md section 4).
//!
//! Done so far: [`truncated_svd`] (randomized subspace iteration on any burn backend),
//! [`estimator_factors`], which turns a frozen `[out, in]` weight into the `w1`/`w2` factors the
//! estimator multiplies by, and [`SvdCache`], their safetensors cache with model-identity and rank
//! checks. Channel selection and model integration are not written yet.
#![warn(missing_docs)]

mod cache;
mod jacobi;
mod svd;

pub use cache::{SvdCache, SvdCacheError, ESTIMATED};
pub use jacobi::symmetric_eigen;
pub use svd::{estimator_factors, truncated_svd, TruncatedSvd};
