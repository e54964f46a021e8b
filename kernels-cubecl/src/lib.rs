//! `#[cube]` kernels for SparseLoRA's sliced projections (gather/scatter fused into the GEMMs).
//!
//! Not implemented yet: kernels land with the sparse-compute and GEMM issues (#4, #5), each beside a
//! burn-tensor reference in `sparse-ops` and tested against it on lavapipe in CI.
#![warn(missing_docs)]
