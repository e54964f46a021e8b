//! The pure tensor arithmetic of SparseLoRA's channel selection (SPEC 4): token masking, sequence
//! means, per-channel L2 norms, the MLP and Q/K scores, top-k, and the two GQA index mappings
//! (HF-correct and the reference code's). Everything here is burn ops on the caller's device; the
//! selector ([`crate::SvdChannelSelector`]) only decides which projections feed them.
//!
//! Channel numbering follows the projections' output axes: query channel `h * head_dim + d` is
//! dimension `d` of query head `h`, KV channel `m * head_dim + d` dimension `d` of KV head `m`. HF's
//! `repeat_kv` makes query head `h` read KV head `h / groups` (`groups = n_heads / n_kv_heads`), so
//! the query heads of KV head `m` are `m * groups .. (m + 1) * groups`.

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor};
use kernels_cubecl::kv_channels::KvGroups;

/// The head layout of one attention block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttnShape {
    /// Query heads per KV head.
    pub fn groups(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Output width of k_proj and v_proj: `n_kv_heads * head_dim`.
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Output width of q_proj (and input width of o_proj): `n_heads * head_dim`.
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// How query channels relate to KV channels under GQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GqaMapping {
    /// HF `repeat_kv`: KV channel `(m, d)` pairs with query channels `(h, d)`, `h` in group `m`.
    #[default]
    Hf,
    /// The reference code (z-lab/sparselora `QKVOFusedGQAPredictor`): query channel `c` is
    /// averaged into KV channel `c mod kv_width`, KV channel `c` expands to query channels
    /// `c * groups + 0..groups`, and V indices are used as o_proj indices unchanged. Wrong under
    /// GQA; identical to [`GqaMapping::Hf`] when `n_heads == n_kv_heads`.
    ReferenceCompat,
}

/// `x` flattened to token rows `[batch * seq, d]` in f32, padding rows zeroed when
/// `mask_padding` (a zero row projects to zero, so it adds nothing to a channel norm).
///
/// # Shapes
/// - `x`: `[batch, seq, d]`, `tokens`: `[batch, seq]` true for real tokens
pub fn token_rows<B: Backend>(
    x: Tensor<B, 3>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    let [b, s, d] = x.dims();
    let x = x.cast(DType::F32);
    let x = if mask_padding {
        x * tokens.float().cast(DType::F32).unsqueeze_dim::<3>(2)
    } else {
        x
    };
    x.reshape([b * s, d])
}

/// The mean of each sequence, `[batch, d]` in f32: over its real tokens when `mask_padding`
/// (a sequence without any is all zeros), over every position otherwise (the reference code).
///
/// On burn's cubecl backends two kernels that read `x` once in its dtype
/// ([`kernels_cubecl::sequence_mean`]); elsewhere burn ops.
///
/// # Shapes
/// - `x`: `[batch, seq, d]`, `tokens`: `[batch, seq]` true for real tokens
pub fn sequence_means<B: Backend>(
    x: Tensor<B, 3>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    kernels_cubecl::sequence_mean::sequence_means(x, tokens, mask_padding)
}

/// The L2 norm of each column of `y` (`[rows, channels]`) over its rows: `[channels]`, f32.
pub fn channel_norms<B: Backend>(y: Tensor<B, 2>) -> Tensor<B, 1> {
    let [_, c] = y.dims();
    let y = y.cast(DType::F32);
    (y.clone() * y).sum_dim(0).sqrt().reshape([c])
}

/// The MLP score of each intermediate channel: the L2 norm over sequences of `silu(g) * u`, in
/// f32.
///
/// On burn's cubecl backends one kernel ([`kernels_cubecl::mlp_scores`]); elsewhere burn ops.
///
/// # Shapes
/// - `gate`, `up`: `[batch, d_ff]` (estimated or true projections of the sequence means)
/// - output: `[d_ff]`
pub fn mlp_scores<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 1> {
    kernels_cubecl::mlp_scores::mlp_channel_scores(gate, up)
}

/// [`mlp_scores`] of the estimates `z[:, ..r] w2_gate` and `z[:, r..] w2_up` without forming
/// them (one kernel on burn's cubecl backends, [`kernels_cubecl::mlp_scores`]).
///
/// # Shapes
/// - `z`: `[batch, 2r]` (the sequence means through gate's and up's `w1` side by side),
///   `w2_gate`, `w2_up`: `[r, d_ff]`; output `[d_ff]`
pub fn mlp_scores_of_factors<B: Backend>(
    z: Tensor<B, 2>,
    w2_gate: Tensor<B, 2>,
    w2_up: Tensor<B, 2>,
) -> Tensor<B, 1> {
    kernels_cubecl::mlp_scores::mlp_channel_scores_of_factors(z, w2_gate, w2_up)
}

/// The query norms gathered onto KV channels, `[kv_width]`: for [`GqaMapping::Hf`] the mean of
/// `nq[(h, d)]` over the query heads `h` of KV head `m`; for the reference mapping the mean over
/// every query channel congruent to the KV channel modulo `kv_width`.
///
/// # Shapes
/// - `query_norms`: `[n_heads * head_dim]`
pub fn grouped_query_norms<B: Backend>(
    query_norms: Tensor<B, 1>,
    shape: AttnShape,
    mapping: GqaMapping,
) -> Tensor<B, 1> {
    let (groups, hd, n_kv) = (shape.groups(), shape.head_dim, shape.n_kv_heads);
    match mapping {
        // [n_kv, groups, hd]: query head m * groups + r is row r of block m.
        GqaMapping::Hf => query_norms
            .reshape([n_kv, groups, hd])
            .mean_dim(1)
            .reshape([n_kv * hd]),
        // The reference's q.view(groups, kv_width).mean(0).
        GqaMapping::ReferenceCompat => query_norms
            .reshape([groups, n_kv * hd])
            .mean_dim(0)
            .reshape([n_kv * hd]),
    }
}

/// The Q/K score of each KV channel: grouped query norm times key norm, `[kv_width]`.
///
/// # Shapes
/// - `query_norms`: `[n_heads * head_dim]`, `key_norms`: `[n_kv_heads * head_dim]`
pub fn qk_scores<B: Backend>(
    query_norms: Tensor<B, 1>,
    key_norms: Tensor<B, 1>,
    shape: AttnShape,
    mapping: GqaMapping,
) -> Tensor<B, 1> {
    grouped_query_norms(query_norms, shape, mapping) * key_norms
}

/// The indices of the `k` largest scores (`k >= 1`, clamped to the number of scores), in
/// descending score order, equal scores by ascending index, NaN below everything.
///
/// On burn's cubecl backends this is one kernel on the device ([`kernels_cubecl::top_k`]):
/// burn-cubecl 0.21 sorts on the host, which synchronised the GPU once per sparse block.
pub fn top_k<B: Backend>(scores: Tensor<B, 1>, k: usize) -> Tensor<B, 1, Int> {
    kernels_cubecl::top_k(scores, k)
}

/// The query channels that go with the kept KV channels `kv` (q_proj output rows for kept K
/// channels): [`GqaMapping::Hf`] maps KV channel `(m, d)` to `(h, d)` for every query head `h` of
/// group `m`; the reference mapping to `c * groups + 0..groups`. `[kv.len() * groups]`, grouped
/// by KV channel.
pub fn query_channels<B: Backend>(
    kv: Tensor<B, 1, Int>,
    shape: AttnShape,
    mapping: GqaMapping,
) -> Tensor<B, 1, Int> {
    let layout = match mapping {
        GqaMapping::Hf => KvGroups::Heads {
            head_dim: shape.head_dim,
        },
        GqaMapping::ReferenceCompat => KvGroups::Consecutive,
    };
    kernels_cubecl::kv_channels::query_channels_of(kv, shape.groups(), layout)
}

/// The o_proj input channels that read the kept V channels `v`: under [`GqaMapping::Hf`] the
/// query-head channels of [`query_channels`] (the attention output of head `h` is a mix of V
/// head `h / groups`); the reference code uses the V indices unchanged.
pub fn output_channels<B: Backend>(
    v: Tensor<B, 1, Int>,
    shape: AttnShape,
    mapping: GqaMapping,
) -> Tensor<B, 1, Int> {
    match mapping {
        GqaMapping::Hf => query_channels(v, shape, mapping),
        GqaMapping::ReferenceCompat => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    /// 4 query heads over 2 KV heads of width 2: query channels 0..8, KV channels 0..4.
    const GQA: AttnShape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 2,
    };
    const MHA: AttnShape = AttnShape {
        n_heads: 3,
        n_kv_heads: 3,
        head_dim: 2,
    };

    fn floats(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn ints(v: &[i64]) -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn host_f32(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    fn host_i64(t: Tensor<B, 1, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().into_vec().unwrap()
    }

    fn tokens(mask: &[bool], shape: [usize; 2]) -> Tensor<B, 2, Bool> {
        Tensor::from_data(TensorData::new(mask.to_vec(), shape), &Default::default())
    }

    #[test]
    fn query_norms_group_by_kv_head_or_by_reference_modulo() {
        let nq = floats(&[1., 2., 3., 4., 5., 6., 7., 8.]);
        // KV (0, 0) <- query heads 0, 1 dim 0: channels 0 and 2 -> (1 + 3) / 2.
        assert_eq!(
            host_f32(grouped_query_norms(nq.clone(), GQA, GqaMapping::Hf)),
            [2., 3., 6., 7.]
        );
        // Reference: channel c into c mod 4.
        assert_eq!(
            host_f32(grouped_query_norms(nq, GQA, GqaMapping::ReferenceCompat)),
            [3., 4., 5., 6.]
        );
    }

    #[test]
    fn kv_channels_expand_to_their_query_heads() {
        // KV channel 2 = (head 1, dim 0): query heads 2 and 3, dim 0 -> 4 and 6.
        // KV channel 1 = (head 0, dim 1): query heads 0 and 1, dim 1 -> 1 and 3.
        let kv = ints(&[2, 1]);
        assert_eq!(
            host_i64(query_channels(kv.clone(), GQA, GqaMapping::Hf)),
            [4, 6, 1, 3]
        );
        assert_eq!(
            host_i64(output_channels(kv.clone(), GQA, GqaMapping::Hf)),
            [4, 6, 1, 3]
        );
        // Reference: c * groups + 0..groups for q, unchanged for o.
        assert_eq!(
            host_i64(query_channels(kv.clone(), GQA, GqaMapping::ReferenceCompat)),
            [4, 5, 2, 3]
        );
        assert_eq!(
            host_i64(output_channels(kv, GQA, GqaMapping::ReferenceCompat)),
            [2, 1]
        );
    }

    #[test]
    fn without_gqa_both_mappings_coincide() {
        let nq = floats(&[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
        let kv = ints(&[5, 0, 3]);
        for mapping in [GqaMapping::Hf, GqaMapping::ReferenceCompat] {
            assert_eq!(
                host_f32(grouped_query_norms(nq.clone(), MHA, mapping)),
                [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
            );
            assert_eq!(
                host_i64(query_channels(kv.clone(), MHA, mapping)),
                [5, 0, 3]
            );
            assert_eq!(
                host_i64(output_channels(kv.clone(), MHA, mapping)),
                [5, 0, 3]
            );
        }
    }

    #[test]
    fn qk_scores_pick_the_right_kv_channels() {
        // Query norms large on head 3 (group 1) dim 1; key norms flat: Hf picks KV channel 3.
        let nq = floats(&[0., 0., 0., 0., 0., 0., 0., 10.]);
        let nk = floats(&[1., 1., 1., 1.]);
        let hf = qk_scores(nq.clone(), nk.clone(), GQA, GqaMapping::Hf);
        assert_eq!(host_i64(top_k(hf, 1)), [3]);
        // The reference folds channel 7 into 7 mod 4 = 3 as well, but channel 5 (head 2, dim 1,
        // also group 1) into 1: move the mass there to see them differ.
        let nq = floats(&[0., 0., 0., 0., 0., 10., 0., 0.]);
        let hf = qk_scores(nq.clone(), nk.clone(), GQA, GqaMapping::Hf);
        let reference = qk_scores(nq, nk, GQA, GqaMapping::ReferenceCompat);
        assert_eq!(host_i64(top_k(hf, 1)), [3]);
        assert_eq!(host_i64(top_k(reference, 1)), [1]);
    }

    #[test]
    fn top_k_orders_by_score_and_clamps() {
        let scores = floats(&[0.1, 0.9, 0.5, 0.7]);
        assert_eq!(host_i64(top_k(scores.clone(), 2)), [1, 3]);
        assert_eq!(host_i64(top_k(scores, 9)), [1, 3, 2, 0]);
    }

    #[test]
    fn sequence_means_skip_padding_unless_compat() {
        // Row 0: one pad (100) then 1, 3; row 1: all padding.
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(
                vec![100., 100., 1., 2., 3., 4., 7., 7., 7., 7., 7., 7.],
                [2, 3, 2],
            ),
            &Default::default(),
        );
        let mask = tokens(&[false, true, true, false, false, false], [2, 3]);
        let masked = sequence_means(x.clone(), mask.clone(), true);
        masked
            .into_data()
            .assert_eq(&TensorData::new(vec![2f32, 3., 0., 0.], [2, 2]), true);
        let all = sequence_means(x.clone(), mask.clone(), false);
        all.into_data().assert_eq(
            &TensorData::new(vec![104f32 / 3., 106. / 3., 7., 7.], [2, 2]),
            true,
        );

        // Token rows: padding rows zeroed, or kept in compat mode.
        let rows = token_rows(x.clone(), mask.clone(), true);
        assert_eq!(rows.dims(), [6, 2]);
        assert_eq!(
            host_f32(channel_norms(rows)),
            [(1f32 + 9.).sqrt(), (4f32 + 16.).sqrt()]
        );
        let rows = token_rows(x, mask, false);
        assert_eq!(
            host_f32(channel_norms(rows))[0],
            (10000f32 + 1. + 9. + 3. * 49.).sqrt()
        );
    }

    #[test]
    fn mlp_scores_are_norms_of_silu_gate_times_up() {
        // Channel 0: gate 0 -> silu 0, whatever up is. Channel 1: silu(1) * 1 and silu(2) * 1.
        let gate = Tensor::<B, 2>::from_data(
            TensorData::new(vec![0f32, 1., 0., 2.], [2, 2]),
            &Default::default(),
        );
        let up = Tensor::<B, 2>::from_data(
            TensorData::new(vec![5f32, 1., 5., 1.], [2, 2]),
            &Default::default(),
        );
        let silu = |v: f32| v / (1. + (-v).exp());
        let scores = host_f32(mlp_scores(gate, up));
        assert_eq!(scores[0], 0.);
        assert!((scores[1] - (silu(1.).powi(2) + silu(2.).powi(2)).sqrt()).abs() < 1e-6);
    }
}
