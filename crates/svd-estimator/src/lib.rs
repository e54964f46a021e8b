//! SparseLoRA's training-free sparsity estimator: offline truncated SVD of the frozen weights and
//! online per-batch channel selection (paper section 3, SPEC.md section 4).
//!
//! Not implemented yet: this crate is filled by the SparseLoRA issue (#4). It exports nothing so
//! that nothing can be mistaken for a working estimator.
#![warn(missing_docs)]
