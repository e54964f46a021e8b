//! Why a cuBLASLt GEMM did not run. `linear` answers every one of these by falling back to burn's
//! matmul; the fallible entry points return them.

use burn::tensor::DType;

/// A cuBLASLt GEMM that could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GemmError {
    /// `SPARSELORA_CUBLASLT=0` is set.
    #[error("the cuBLASLt path is disabled (SPARSELORA_CUBLASLT=0)")]
    Disabled,
    /// `libcublasLt` is not on the library path, or lacks a function we call.
    #[error("libcublasLt could not be loaded: {0} (add its directory to LD_LIBRARY_PATH)")]
    Library(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver: {call} failed: {message}")]
    Driver {
        /// The call.
        call: &'static str,
        /// The driver's error.
        message: String,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt: {call} failed with {status}")]
    Cublas {
        /// The call.
        call: &'static str,
        /// The status it returned.
        status: String,
    },
    /// cubecl could not hand over a buffer or synchronise its stream.
    #[error("cubecl runtime: {0}")]
    Runtime(String),
    /// Only f32, f16 and bf16 have a cuBLASLt path.
    #[error("no cuBLASLt path for {0:?} tensors (f32, f16 and bf16 have one)")]
    Dtype(DType),
    /// The two operands differ in dtype.
    #[error("operands differ in dtype: {lhs:?} @ {rhs:?}")]
    DtypeMismatch {
        /// The left operand's dtype.
        lhs: DType,
        /// The right operand's dtype.
        rhs: DType,
    },
    /// The shapes do not chain (`[m, k] @ [k, n]`), or one of them is empty.
    #[error("cannot multiply [{m}, {k}] by [{k2}, {n}]")]
    Shape {
        /// Rows of the left operand.
        m: usize,
        /// Columns of the left operand.
        k: usize,
        /// Rows of the right operand.
        k2: usize,
        /// Columns of the right operand.
        n: usize,
    },
    /// An accumulating GEMM could not write into the given output: not a contiguous, unshared
    /// tensor of the product's shape and dtype, or GEMMs not ordered on cubecl's stream.
    #[error("cannot accumulate into the given output (shared, strided, or not stream-ordered)")]
    NotWritable,
    /// The operands live on different devices.
    #[error("operands on different devices: {0} and {1}")]
    Device(String, String),
}
