//! [`crate::lora_linear_group`] on burn-cuda under `Autodiff`: the three adapters of projections
//! that read one input (q, k and v) take their products with that input together.
//!
//! Forward, `H^T = [A_q; A_k; A_v] x^T` is one GEMM (one read of `x` instead of three), and each
//! member's update reads its row block of `H^T` in place. Backward, each member's op computes
//! what is its own (`dB`, its base's gradient, `dY W` into `dX`) and hands its `g^T = s B^T dY^T`
//! to the group; the last member's backward then computes `dA = [g_q; g_k; g_v] x` and
//! `dX += [g_q | g_k | g_v] [A_q; A_k; A_v]` as one GEMM each (one read of `x`, one pass over
//! `dX`, instead of three each). burn runs the three members' backward steps before their
//! shared input's producer (they are deeper in the graph) and before the casts that produced
//! `A` (shallower), so the gradients the last member registers arrive in time.

use std::any::TypeId;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::cuda::CudaDevice;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Slice, Tensor, TensorPrimitive};

use super::dispatch::{accumulate_into, cast};
use super::lora::{accumulate, factors_fit, frozen_in, in_dtype, scaled, scaled_in, Frozen};
use super::tensor::{stream_ordered, CudaBackend, Primitive};
use crate::frozen_base::GroupMember;
use kernels_cubecl::gradient_sum::register_summed;

type AutodiffCuda = Autodiff<CudaBackend>;
type Tracked = FloatTensor<AutodiffCuda>;

/// The inputs of [`crate::lora_linear_group`], given back when the fused op does not apply.
type Inputs<B> = (Tensor<B, 2>, [GroupMember<B>; 3]);

/// [`crate::lora_linear_group`] fused on `Autodiff<Cuda>` with stream-ordered GEMMs, frozen
/// weights in the input's dtype and factors in it or all in f32 (see `lora::factors_fit`);
/// otherwise the inputs back.
pub(crate) fn lora_linear_group<B: Backend>(
    x: Tensor<B, 2>,
    members: [GroupMember<B>; 3],
) -> Result<[Tensor<B, 2>; 3], Inputs<B>> {
    let dtype = x.dtype();
    let fits = TypeId::of::<B>() == TypeId::of::<AutodiffCuda>()
        && members.iter().all(|m| {
            frozen_in(&m.base, dtype)
                && factors_fit(&m.lora_a, &m.lora_b, dtype)
                && m.lora_a.dtype() == members[0].lora_a.dtype()
        })
        && stream_ordered(&cast::<_, CudaDevice>(x.device()));
    if !fits {
        return Err((x, members));
    }
    let p = |t: Tensor<B, 2>| -> Tracked {
        cast::<_, Tensor<AutodiffCuda, 2>>(t)
            .into_primitive()
            .tensor()
    };
    let x = p(x);
    let members = members.map(|m| Member {
        base: Frozen::from_base(m.base, p),
        a: p(m.lora_a),
        b: p(m.lora_b),
        scaling: m.scaling as f32,
    });
    Ok(tracked(x, members).map(|y| {
        cast(Tensor::<AutodiffCuda, 2>::from_primitive(
            TensorPrimitive::Float(y),
        ))
    }))
}

/// One member on tracked primitives.
struct Member {
    base: Frozen<Tracked>,
    a: Tracked,
    b: Tracked,
    scaling: f32,
}

/// The forward, recording one [`MemberBackward`] per output, all sharing one [`Group`].
fn tracked(x: Tracked, members: [Member; 3]) -> [Tracked; 3] {
    let t = CudaBackend::float_transpose;
    let n = x.primitive.meta.shape()[0];
    let ranks = members.each_ref().map(|m| m.a.primitive.meta.shape()[0]);
    let (dtype, factor_dtype) = (x.primitive.dtype, members[0].a.primitive.dtype);
    // Stacked, then cast once when the factors are f32 master weights.
    let a_cat = CudaBackend::float_cat(members.iter().map(|m| m.a.primitive.clone()).collect(), 0);
    let a_cat = in_dtype(a_cat, dtype);
    // `[r_q + r_k + r_v, n]`: each member's `h^T` is a row block, a view.
    let h_t = scaled(a_cat.clone(), t(x.primitive.clone()), 1.0);
    let group = Arc::new(Mutex::new(Group {
        ranks,
        n,
        x: x.primitive.clone(),
        a_cat,
        factor_dtype,
        expected: 0,
        arrived: Vec::new(),
        x_key: None,
    }));
    let (mut offset, mut next) = (0, 0);
    members.map(|m| {
        let r = ranks[next];
        let rows = [Slice::from(offset..offset + r), Slice::from(0..n)];
        let index = next;
        (offset, next) = (offset + r, next + 1);
        let h = t(CudaBackend::float_slice(h_t.clone(), &rows)); // [n, r], read in place
        let (first, y, weight) = match m.base {
            Frozen::Weight(w) => {
                let y = scaled(x.primitive.clone(), t(w.primitive.clone()), 1.0);
                (w.node, y, Some(w.primitive))
            }
            Frozen::Output(y) => (y.node, y.primitive, None),
        };
        let b = in_dtype(m.b.primitive, dtype);
        let y = accumulate(h.clone(), t(b.clone()), m.scaling, y);
        let backward = MemberBackward {
            scaling: m.scaling,
            base_is_output: weight.is_none(),
            factor_dtype,
            index,
            group: group.clone(),
        };
        match backward
            .prepare::<NoCheckpointing>([first, x.node.clone(), m.a.node, m.b.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                group.lock().expect("LoRA group lock").expected += 1;
                let state = MemberState { h, b, weight };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    })
}

/// What the members share for the group's products in the backward.
struct Group {
    /// Each member's rank (its rows of the stacked `A`s).
    ranks: [usize; 3],
    /// Token rows of `x`.
    n: usize,
    x: Primitive,
    /// `[A_q; A_k; A_v]` in `x`'s dtype.
    a_cat: Primitive,
    /// The factors' own dtype, their gradients'.
    factor_dtype: DType,
    /// Members whose backward will run (those recorded as tracked).
    expected: usize,
    /// `(member, g^T, key of its A's node)` of each member whose backward ran.
    arrived: Vec<(usize, Option<Primitive>, Option<Tracked>)>,
    /// A key pointing at `x`'s node when `x` needs a gradient.
    x_key: Option<Tracked>,
}

impl Group {
    /// The group's products once every expected member has arrived: `dA` of each member's `A`
    /// (row blocks of one product) and the members' share of `dX` (one product, summed into the
    /// other consumers' share).
    fn finish(&mut self, grads: &mut Gradients) {
        let t = CudaBackend::float_transpose;
        let mut arrived = std::mem::take(&mut self.arrived);
        arrived.sort_by_key(|(index, _, _)| *index);
        // `[r_q + r_k + r_v, n]`, zero rows for a member without a `g` (one whose `A` and
        // input need no gradient).
        let blocks: Vec<Primitive> = (0..3)
            .map(|i| {
                let found = arrived.iter().find(|(index, _, _)| *index == i);
                match found.and_then(|(_, g_t, _)| g_t.clone()) {
                    Some(g_t) => g_t,
                    None => CudaBackend::float_zeros(
                        [self.ranks[i], self.n].into(),
                        &self.x.device,
                        self.x.dtype.into(),
                    ),
                }
            })
            .collect();
        let g_t = CudaBackend::float_cat(blocks, 0);
        if arrived.iter().any(|(_, _, key)| key.is_some()) {
            // [r_q + r_k + r_v, in], in the factors' dtype.
            let da = scaled_in(g_t.clone(), self.x.clone(), 1.0, self.factor_dtype);
            let d = self.x.meta.shape()[1];
            for (index, _, key) in &arrived {
                if let Some(key) = key {
                    let start: usize = self.ranks[..*index].iter().sum();
                    let rows = [
                        Slice::from(start..start + self.ranks[*index]),
                        Slice::from(0..d),
                    ];
                    let block = CudaBackend::float_slice(da.clone(), &rows);
                    grads.register::<CudaBackend>(key.node.id, block);
                }
            }
        }
        if let Some(x_key) = self.x_key.take() {
            // dX += [g_q | g_k | g_v] [A_q; A_k; A_v], into another consumer's share.
            let (g, a_cat) = (t(g_t), &self.a_cat);
            register_summed::<CudaBackend>(
                grads,
                a_cat.clone(),
                |key| key.node = x_key.node.clone(),
                |earlier| Ok(accumulate(g.clone(), a_cat.clone(), 1.0, earlier)),
                || scaled(g.clone(), a_cat.clone(), 1.0),
            );
        }
    }
}

impl Drop for Group {
    /// A backward that reached only some members leaves their adapters without their `A`
    /// gradients and `x` without their share: say so rather than train on it silently.
    fn drop(&mut self) {
        if !self.arrived.is_empty() {
            eprintln!(
                "warning: sparse-ops: lora_linear_group: the backward reached {} of {} outputs; \
                 their adapters' A gradients and input gradient were not computed (every output \
                 must reach the loss)",
                self.arrived.len(),
                self.expected
            );
        }
    }
}

/// What a member's backward reads: its `h = x A^T` (a view of the group's product, for `dB`),
/// `B` in `x`'s dtype, and the frozen weight (for `dX`) when the op computed the base product.
#[derive(Debug, Clone)]
struct MemberState {
    h: Primitive,
    b: Primitive,
    weight: Option<Primitive>,
}

/// Backward of one member with respect to its base output (when given), `x`, `A` and `B`; the
/// `A` and the adapters' share of `x`'s gradient through the group.
struct MemberBackward {
    scaling: f32,
    base_is_output: bool,
    /// The factors' own dtype, their gradients'.
    factor_dtype: DType,
    index: usize,
    group: Arc<Mutex<Group>>,
}

impl std::fmt::Debug for MemberBackward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberBackward")
            .field("scaling", &self.scaling)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A key tensor pointing at `node` (see [`register_summed`]).
fn key_of(like: &Primitive, point: impl FnOnce(&mut Tracked)) -> Tracked {
    let mut key = <AutodiffCuda as AutodiffBackend>::from_inner(like.clone());
    point(&mut key);
    key
}

impl Backward<CudaBackend, 4> for MemberBackward {
    type State = MemberState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_base, node_x, node_a, node_b] = ops.parents;
        let dy: Primitive = grads.consume::<CudaBackend>(&ops.node);
        let MemberState { h, b, weight } = ops.state;
        let s = self.scaling;
        let t = CudaBackend::float_transpose;
        // g^T = s B^T dY^T: the gradient of h, transposed, shared by dX and dA.
        let g_t = (node_x.is_some() || node_a.is_some()).then(|| scaled(t(b), t(dy.clone()), s));
        if let Some(node) = node_b {
            let db = scaled_in(t(dy.clone()), h, s, self.factor_dtype);
            grads.register::<CudaBackend>(node.id, db);
        }
        if let (Some(node), Some(w)) = (&node_x, &weight) {
            // dX = dY W, summed into another consumer's share (`kernels_cubecl::gradient_sum`).
            register_summed::<CudaBackend>(
                grads,
                dy.clone(),
                |key| key.node = node.clone(),
                |earlier| accumulate_into(dy.clone(), w.clone(), earlier),
                || scaled(dy.clone(), w.clone(), 1.0),
            );
        }
        let a_key = node_a.map(|node| key_of(&dy, |key| key.node = node));
        let x_key = node_x.map(|node| key_of(&dy, |key| key.node = node));
        if let (Some(node), true) = (node_base, self.base_is_output) {
            grads.register::<CudaBackend>(node.id, dy);
        }
        let mut group = self.group.lock().expect("LoRA group lock");
        if group.x_key.is_none() {
            group.x_key = x_key;
        }
        group.arrived.push((self.index, g_t, a_key));
        if group.arrived.len() == group.expected {
            group.finish(grads);
        }
    }
}
