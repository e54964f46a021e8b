//! The attention under `Autodiff`: the forward on the inner backend, recording
//! [`AttentionBackward`], whose state is Q, K, V and the key mask (no probabilities).

use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, Tensor, TensorPrimitive};

use super::{blocked, scores, BatchedMatmul, Blocks};
use crate::causal_softmax;
use crate::dispatch::Cube;
use crate::head_layout;
use crate::rope::kernel::is_sequence_major;

/// Backward of [`super::grouped_causal_attention`] with respect to Q, K and V, recomputing the
/// probabilities from Q and K.
#[derive(Debug)]
struct AttentionBackward<M> {
    scale: f64,
    blocks: Blocks,
    matmul: PhantomData<M>,
}

/// What the backward reads, on the inner backend.
#[derive(Debug, Clone)]
struct State<C: Cube> {
    /// `[b, nkv, s, g hd]`, the query heads of a KV head position-major.
    q: FloatTensor<C>,
    /// `[b, nkv, s, hd]`.
    k: FloatTensor<C>,
    /// `[b, nkv, s, hd]`, contiguous.
    v: FloatTensor<C>,
    /// `[b, s]`.
    key_valid: BoolTensor<C>,
    /// The softmax's max and `1 / sum` per row, `[b * nq * s * 2]` f32: `P` is rebuilt from them.
    stats: FloatTensor<C>,
    /// Whether the forward's V was laid out `[b, s, nkv, hd]` (its gradient is given back so).
    v_sequence_major: bool,
}

fn float<C: Cube, const D: usize>(t: FloatTensor<C>) -> Tensor<C, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn primitive<C: Cube, const D: usize>(t: Tensor<C, D>) -> FloatTensor<C> {
    t.into_primitive().tensor()
}

impl<C: Cube, M: BatchedMatmul> Backward<C, 3> for AttentionBackward<M> {
    type State = State<C>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        // The output was handed out laid out [b, s, nkv, g hd]; so comes its gradient, usually.
        let dout: Tensor<C, 4> = float(head_layout::contiguous_primitive::<C>(
            grads.consume::<C>(&ops.node),
        ));
        let State {
            q,
            k,
            v,
            key_valid,
            stats,
            v_sequence_major,
        } = ops.state;
        let (q, k, v): (Tensor<C, 4>, Tensor<C, 4>, Tensor<C, 4>) = (float(q), float(k), float(v));
        let [b, nkv, s, width] = q.dims();
        let hd = k.dims()[3];
        let blocks = self.blocks;
        let (n, rows) = (b * nkv, s * (width / hd));

        // The forward's scores again (the same GEMMs on the same inputs: the same values), from
        // which one kernel rebuilds P with the forward's row statistics and computes dS.
        let scores = scores::<C, M>(q.clone(), k.clone(), blocks);
        let dout = dout.reshape([n, rows, hd]);
        let (qg, kg, vg) = (
            q.reshape([n, rows, hd]),
            k.reshape([n, s, hd]),
            v.reshape([n, s, hd]),
        );
        let dprobs = blocked::<C, M>(dout.clone(), vg.swap_dims(1, 2), &blocks.query_by_key(hd));
        let (probs, dscores) = causal_softmax::recompute_backward::<C::Runtime>(
            C::float_into(primitive(scores)),
            C::bool_into(key_valid),
            C::float_into(stats),
            // In the scores' `[b, nkv g, s, s]`, which the kernel reads the row layout from.
            C::float_into(primitive(dprobs.reshape([b, nkv * (width / hd), s, s]))),
            self.scale,
            blocks.row_layout(),
        );
        let grouped = |t| float::<C, 4>(C::float_from(t)).reshape([n, rows, s]);
        let (probs, dscores) = (grouped(probs), grouped(dscores));
        // dV sums over the query heads of each group, inside the product; it is given back in
        // the forward's V layout (rows when V was a view of them).
        let dv = node_v.as_ref().map(|_| {
            let dv = blocked::<C, M>(probs.swap_dims(1, 2), dout, &blocks.key_over_queries(hd))
                .reshape([b, nkv, s, hd]);
            if v_sequence_major {
                float(head_layout::sequence_major::<C>(primitive(dv)))
            } else {
                dv
            }
        });
        let dq = node_q.as_ref().map(|_| {
            blocked::<C, M>(dscores.clone(), kg, &blocks.query_over_keys(hd))
                .reshape([b, nkv, s, width])
        });
        let dk = node_k.as_ref().map(|_| {
            blocked::<C, M>(dscores.swap_dims(1, 2), qg, &blocks.key_over_queries(hd))
                .reshape([b, nkv, s, hd])
        });

        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<C>(node.id, primitive(grad));
            }
        }
    }
}

/// The attention of tracked (or untracked) Q, K, V, recording the backward when any needs a
/// gradient.
pub(super) fn forward<C: Cube, M: BatchedMatmul>(
    q: FloatTensor<Autodiff<C>>,
    k: FloatTensor<Autodiff<C>>,
    v: FloatTensor<Autodiff<C>>,
    key_valid: BoolTensor<C>,
    scale: f64,
    blocks: Blocks,
) -> FloatTensor<Autodiff<C>> {
    // V heads-major once, for the forward's product and the backward's two (the view of the
    // projection's rows it usually is would be copied by each).
    let v_sequence_major = is_sequence_major(&C::float_into(v.primitive.clone()));
    let v_heads = head_layout::contiguous_primitive::<C>(v.primitive.clone());
    let (out, stats) = super::composed_rows::<C, M>(
        float(q.primitive.clone()),
        float(k.primitive.clone()),
        float(v_heads.clone()),
        Tensor::<C, 2, Bool>::from_primitive(key_valid.clone()),
        scale,
        blocks,
        true,
    );
    let stats = stats.expect("composed_rows keeps the statistics asked for");
    let backward = AttentionBackward::<M> {
        scale,
        blocks,
        matmul: PhantomData,
    };
    match backward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                q: q.primitive,
                k: k.primitive,
                v: v_heads,
                key_valid,
                stats,
                v_sequence_major,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
