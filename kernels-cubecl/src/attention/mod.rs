//! Grouped-query causal attention for training that keeps no `[b, h, s, s]` tensor for the
//! backward: the probabilities are recomputed from Q and K there, as flash attention does.
//!
//! Composed of burn tensor ops, attention keeps every layer's probabilities `P` (bf16,
//! `b * n_heads * s^2` values: 128 MiB per LLaMA3-8B layer at batch 8 x 512, 4 GiB a step, 2 GiB
//! per layer at 8 x 2048) alive from the forward to the backward, for `dV = P^T dO` and the
//! softmax's gradient. Here the forward keeps only Q, K and V, which the products' backward keeps
//! anyway, and each query row's softmax max and `1 / sum` (8 bytes a row, as flash attention
//! keeps its log-sum-exp). The backward recomputes `S = Q K^T` (one more product per layer) and
//! `dP = dO V^T`; one kernel then rebuilds `P` from `S` and the row statistics, exactly as the
//! forward computed it, and gives `dS = scale * P * (dP - rowsum(dP P))` in the same pass (no
//! second softmax with its max and sum reductions); then `dV = P^T dO`, `dQ = dS K`,
//! `dK = dS^T Q`. The transient `S`, `P`, `dP`, `dS` of one layer are freed before the next
//! layer's backward starts.
//!
//! Every one of those six products is causal: half of each `s x s` square is masked to zero. The
//! query heads of a KV head come stacked position-major (`[b, nkv, s, g hd]`, as RoPE writes
//! them), so a block of positions is a block of rows, and each product runs as one GEMM per
//! block of positions that skips the masked blocks ([`BatchedMatmul::matmul_blocks`]).
//!
//! The products are the caller's ([`BatchedMatmul`]): this crate sits below the GEMM seam
//! (`sparse-ops`), which implements the trait with cuBLASLt on burn-cuda.

mod backward;
pub mod reference;

use std::ops::Range;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, BoolStore, DType, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// A batch of matrix products, `out[i] = a[i] b[i]`, on any backend: how
/// [`grouped_causal_attention`] multiplies (forward and backward).
///
/// # Shapes
/// - `a`: `[n, m, k]`, `b`: `[n, k, p]` (either may be a transposed view), output `[n, m, p]`
pub trait BatchedMatmul: Send + Sync + std::fmt::Debug + 'static {
    /// `a b`, batched over the first dimension.
    fn matmul<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3>;

    /// Only the given blocks of `a b` (see [`ProductBlock`]), in a new `[n, m, p]` tensor whose
    /// elements outside every block are unspecified: causal attention's products skip the blocks
    /// that the mask zeroes. The default multiplies each block with [`Self::matmul`] and
    /// assembles them ([`matmul_blocks_by_parts`]).
    fn matmul_blocks<B: Backend>(
        a: Tensor<B, 3>,
        b: Tensor<B, 3>,
        blocks: &[ProductBlock],
    ) -> Tensor<B, 3> {
        matmul_blocks_by_parts::<B, Self>(a, b, blocks)
    }
}

/// One block of a batched product: `out[:, rows, cols] = a[:, rows, depth] b[:, depth, cols]`,
/// the reduction over part of the inner dimension only (where the rest of it meets zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductBlock {
    /// Rows of the output and of `a`.
    pub rows: Range<usize>,
    /// Columns of the output and of `b`.
    pub cols: Range<usize>,
    /// Columns of `a` and rows of `b` summed over.
    pub depth: Range<usize>,
}

/// [`BatchedMatmul::matmul_blocks`] in burn ops: each block's product by `M::matmul` on slices
/// of `a` and `b`, written into zeros.
pub fn matmul_blocks_by_parts<B: Backend, M: BatchedMatmul + ?Sized>(
    a: Tensor<B, 3>,
    b: Tensor<B, 3>,
    blocks: &[ProductBlock],
) -> Tensor<B, 3> {
    let [n, m, _] = a.dims();
    let p = b.dims()[2];
    let mut out = Tensor::<B, 3>::zeros([n, m, p], (&a.device(), a.dtype()));
    for block in blocks {
        let ProductBlock { rows, cols, depth } = block.clone();
        let part = M::matmul(
            a.clone().slice([0..n, rows.clone(), depth.clone()]),
            b.clone().slice([0..n, depth, cols.clone()]),
        );
        out = out.slice_assign([0..n, rows, cols], part);
    }
    out
}

/// burn's own batched matmul.
#[derive(Debug, Clone, Copy, Default)]
pub struct BurnMatmul;

impl BatchedMatmul for BurnMatmul {
    fn matmul<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
        a.matmul(b)
    }
}

/// Whether `SPARSELORA_ATTENTION_RECOMPUTE=0` asked for the composed attention, which keeps the
/// probabilities for the backward (for A/B measurements of time and memory).
fn recompute_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("SPARSELORA_ATTENTION_RECOMPUTE").is_ok_and(|v| v == "0"))
}

/// Query positions per block of the causal products: [`DEFAULT_QUERY_BLOCK`], or
/// `SPARSELORA_ATTENTION_BLOCK` (`0`: no blocks, every product whole, for A/B measurements).
pub fn query_block() -> usize {
    static BLOCK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        std::env::var("SPARSELORA_ATTENTION_BLOCK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_QUERY_BLOCK)
    })
}

/// Query positions per block of the causal products by default. Of the `s x s` square the
/// blocked products compute `(c + 1) / 2c` for `c = s / block` blocks, in `c` GEMMs per product,
/// and each GEMM has a fixed cost of a few microseconds (its tiles' pipeline fill and the
/// output's tail) that the smaller blocks do not amortise. Measured on an H200 (LLaMA3-8B,
/// batch 8, dense LoRA step, docs/perf.md): at `s = 2048` blocks of 256 took the step from 1017
/// to 960 ms (128: 971), at 1024 from 456 to 445 ms (128: 452), at 512 blocks of 128 gave
/// nothing (218.7 against 217.6 ms).
pub const DEFAULT_QUERY_BLOCK: usize = 256;

/// `softmax(scale Q K^T + mask) V` for grouped-query attention, with the `g` query heads of each
/// KV head stacked **position-major**: `q[b, m, i, j * hd + d]` is query head `m g + j` at
/// position `i` (what [`crate::rope::rope_grouped`] writes). The mask is
/// [`crate::causal_softmax`]'s (causal, padding keys masked, a query with no readable key
/// attending uniformly); [`query_block`] positions per block.
///
/// Position-major rows make a block of query positions a contiguous block of rows of every
/// product, so the products skip the blocks above the diagonal that the mask zeroes
/// ([`BatchedMatmul::matmul_blocks`]): `Q K^T` and `dO V^T` compute only the keys up to the end
/// of each query block, `P V` and `dS K` sum only over those, `P^T dO` and `dS^T Q` only over the
/// queries from each key block on.
///
/// Under `Autodiff` of burn-wgpu/burn-cuda the probabilities are recomputed in the backward
/// instead of kept (see the module). The values and gradients are those of
/// [`reference::grouped_causal_attention`] up to rounding, except at a query with no readable
/// key (only padding before it: a left-padded row), which attends uniformly to the keys of its
/// block rather than to every key. Such a row is padding: no other query reads its key, and its
/// loss is masked, so no trained value depends on it.
///
/// On those backends the output is laid out `[b, s, nkv, g hd]` in memory (a view with shape
/// `[b, nkv, s, g hd]`), so that `swap_dims(1, 2)` then a reshape to `[b, s, nq hd]` (the heads
/// joined in order) copies nothing; V's gradient comes back in V's layout when V was a view of
/// `[b, s, nkv, hd]` rows.
///
/// # Shapes
/// - `q`: `[b, nkv, s, g * hd]`, `k`, `v`: `[b, nkv, s, hd]`, `key_valid`: `[b, s]`; output
///   `[b, nkv, s, g * hd]`
pub fn grouped_causal_attention<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    grouped_causal_attention_blocked::<B, M>(q, k, v, key_valid, scale, query_block())
}

/// [`grouped_causal_attention`] with `block` query positions per block (0: no blocks).
///
/// # Shapes
/// - as [`grouped_causal_attention`]
// Without a cubecl backend feature the kernel route is compiled out and only the reference runs.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub fn grouped_causal_attention_blocked<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
    block: usize,
) -> Tensor<B, 4> {
    let [b, nkv, s, width] = q.dims();
    let hd = k.dims()[3];
    assert!(
        hd > 0 && width % hd == 0 && k.dims() == [b, nkv, s, hd] && v.dims() == [b, nkv, s, hd],
        "grouped_causal_attention: q {:?}, k {:?}, v {:?} are not a grouped-query layout",
        q.dims(),
        k.dims(),
        v.dims()
    );
    let blocks = Blocks::new(s, width / hd, block);
    let route = route::<B>().filter(|_| !recompute_disabled());
    let fits = float_dtype(q.dtype())
        && q.dtype() == k.dtype()
        && q.dtype() == v.dtype()
        && matches!(
            key_valid.dtype(),
            DType::Bool(BoolStore::U8 | BoolStore::U32)
        )
        && key_valid.dims() == [b, s]
        && q.shape().num_elements() > 0;
    match route {
        Some(route) if fits => on_route!(route, C =>
            plain: cast(plain::<C, M>(cast(q), cast(k), cast(v), cast(key_valid), scale, blocks)),
            autodiff: cast(tracked::<C, M>(cast(q), cast(k), cast(v), cast(key_valid), scale, blocks)),
        ),
        _ => composed::<B, M>(q, k, v, key_valid, scale),
    }
}

/// The grouped products around [`crate::causal_softmax`] (fused where the backend allows; under
/// `Autodiff` it keeps the probabilities for the backward), on the query heads taken out of their
/// grouped layout and put back.
fn composed<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let [_, nkv, _, hd] = k.dims();
    let scores = reference::grouped_scores::<B, M>(reference::heads_from_grouped(q, hd), k);
    let probs = crate::causal_softmax(scores, key_valid, scale);
    reference::grouped_from_heads(reference::grouped_mix::<B, M>(probs, v), nkv)
}

/// The block structure of one attention's products: `s` positions, `groups` query rows a
/// position, `block` positions a block (`s` when not blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocks {
    seq: usize,
    groups: usize,
    block: usize,
}

impl Blocks {
    fn new(seq: usize, groups: usize, block: usize) -> Blocks {
        let block = if block == 0 || block >= seq {
            seq.max(1)
        } else {
            block
        };
        Blocks { seq, groups, block }
    }

    /// The end of each block of positions.
    fn ends(self) -> impl Iterator<Item = (usize, usize)> {
        (0..self.seq.div_ceil(self.block))
            .map(move |c| (c * self.block, ((c + 1) * self.block).min(self.seq)))
    }

    /// How the softmax reads the scores these products make.
    fn row_layout(self) -> crate::causal_softmax::RowLayout {
        crate::causal_softmax::RowLayout {
            groups: self.groups,
            key_block: self.block,
        }
    }

    /// One block per block of positions, `block(start, end)` each.
    fn each(self, block: impl Fn(usize, usize) -> ProductBlock) -> Vec<ProductBlock> {
        self.ends().map(|(start, end)| block(start, end)).collect()
    }

    /// `out[rows, keys]` with query rows of `a` and key columns of `b` (`Q K^T`, `dO V^T`): each
    /// block of query rows against the keys up to its end.
    fn query_by_key(self, depth: usize) -> Vec<ProductBlock> {
        let g = self.groups;
        self.each(|start, end| ProductBlock {
            rows: start * g..end * g,
            cols: 0..end,
            depth: 0..depth,
        })
    }

    /// `out[rows, cols]` with query rows, summed over keys (`P V`, `dS K`): each block of query
    /// rows over the keys up to its end.
    fn query_over_keys(self, cols: usize) -> Vec<ProductBlock> {
        let g = self.groups;
        self.each(|start, end| ProductBlock {
            rows: start * g..end * g,
            cols: 0..cols,
            depth: 0..end,
        })
    }

    /// `out[keys, cols]` summed over query rows (`P^T dO`, `dS^T Q`): each block of keys over
    /// the query rows from its start on.
    fn key_over_queries(self, cols: usize) -> Vec<ProductBlock> {
        let (g, s) = (self.groups, self.seq);
        self.each(|start, end| ProductBlock {
            rows: start..end,
            cols: 0..cols,
            depth: start * g..s * g,
        })
    }
}

/// `a b` on the blocks `blocks` (the whole product when there is one block covering it).
fn blocked<C: Backend, M: BatchedMatmul>(
    a: Tensor<C, 3>,
    b: Tensor<C, 3>,
    blocks: &[ProductBlock],
) -> Tensor<C, 3> {
    let [_, m, k] = a.dims();
    let p = b.dims()[2];
    let whole = ProductBlock {
        rows: 0..m,
        cols: 0..p,
        depth: 0..k,
    };
    if blocks.len() == 1 && blocks[0] == whole {
        M::matmul(a, b)
    } else {
        M::matmul_blocks(a, b, blocks)
    }
}

/// [`grouped_causal_attention`] on a cubecl backend without `Autodiff`: V made heads-major by
/// [`crate::head_layout`]'s copy, the output laid out as rows ([`composed_rows`]), as under
/// `Autodiff`.
fn plain<C: Cube, M: BatchedMatmul>(
    q: Tensor<C, 4>,
    k: Tensor<C, 4>,
    v: Tensor<C, 4>,
    key_valid: Tensor<C, 2, Bool>,
    scale: f64,
    blocks: Blocks,
) -> Tensor<C, 4> {
    let v_heads = crate::head_layout::contiguous_primitive::<C>(v.into_primitive().tensor());
    let v_heads = Tensor::from_primitive(TensorPrimitive::Float(v_heads));
    let (out, _) = composed_rows::<C, M>(q, k, v_heads, key_valid, scale, blocks, false);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The blocked products around the fused softmax, the output laid out `[b, s, nkv, g hd]`
/// (shape `[b, nkv, s, g hd]`): the layout contract of [`grouped_causal_attention`] on the
/// cubecl backends, plain or under `Autodiff`. With `keep_stats`, also the softmax's max and
/// `1 / sum` per query row, from which the backward rebuilds the probabilities.
fn composed_rows<C: Cube, M: BatchedMatmul>(
    q: Tensor<C, 4>,
    k: Tensor<C, 4>,
    v_heads: Tensor<C, 4>,
    key_valid: Tensor<C, 2, Bool>,
    scale: f64,
    blocks: Blocks,
    keep_stats: bool,
) -> (FloatTensor<C>, Option<FloatTensor<C>>) {
    let [b, nkv, s, width] = q.dims();
    let hd = k.dims()[3];
    let (n, rows) = (b * nkv, s * blocks.groups);
    let scores = scores::<C, M>(q, k, blocks);
    // `grouped_causal_attention` checked what the softmax kernel needs before running it.
    let (probs, stats) = crate::causal_softmax::forward_keeping_stats::<C::Runtime>(
        C::float_into(scores.into_primitive().tensor()),
        C::bool_into(key_valid.into_primitive()),
        scale,
        keep_stats,
        blocks.row_layout(),
    );
    let probs: Tensor<C, 3> = Tensor::from_primitive(TensorPrimitive::Float(C::float_from(probs)));
    let out = blocked::<C, M>(
        probs.reshape([n, rows, s]),
        v_heads.reshape([n, s, hd]),
        &blocks.query_over_keys(hd),
    )
    .reshape([b, nkv, s, width]);
    let out = crate::head_layout::sequence_major::<C>(out.into_primitive().tensor());
    (out, stats.map(C::float_from))
}

/// `Q K^T` on the blocks the causal mask leaves, `[b, nkv * g, s, s]` (the query rows of each
/// `(b, kv)` position-major), as the softmax kernel reads it.
fn scores<C: Backend, M: BatchedMatmul>(
    q: Tensor<C, 4>,
    k: Tensor<C, 4>,
    blocks: Blocks,
) -> Tensor<C, 4> {
    let [b, nkv, s, _] = q.dims();
    let hd = k.dims()[3];
    let (n, g) = (b * nkv, blocks.groups);
    blocked::<C, M>(
        q.reshape([n, s * g, hd]),
        k.reshape([n, s, hd]).swap_dims(1, 2),
        &blocks.query_by_key(hd),
    )
    .reshape([b, nkv * g, s, s])
}

fn tracked<C: Cube, M: BatchedMatmul>(
    q: Tensor<Autodiff<C>, 4>,
    k: Tensor<Autodiff<C>, 4>,
    v: Tensor<Autodiff<C>, 4>,
    key_valid: Tensor<Autodiff<C>, 2, Bool>,
    scale: f64,
    blocks: Blocks,
) -> Tensor<Autodiff<C>, 4> {
    let out = backward::forward::<C, M>(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        key_valid.into_primitive(),
        scale,
        blocks,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
