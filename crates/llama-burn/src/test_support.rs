//! What the unit tests of the blocks' sparse forwards share: a [`ChannelSelector`] that is never
//! asked (the blocks are handed their channels), a token split, channel lists, and random
//! adapters.

use burn::tensor::{backend::Backend, Bool, Distribution, Int, Tensor, TensorData, Tolerance};
use lora::sparse::{
    AttentionProjections, AttnChannels, ChannelSelector, MlpProjections, SparseForward, TokenSplit,
};
use lora::{LoraAdapter, LoraConfig, LoraLinear};

pub(crate) type TestBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// The selector of a sparse forward whose channels are given; asking it is a bug.
pub(crate) struct UnusedSelector;

impl<B: Backend> ChannelSelector<B> for UnusedSelector {
    fn attention(
        &self,
        _: usize,
        _: AttentionProjections<'_, B>,
        _: Tensor<B, 3>,
        _: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        unreachable!("the block's channels are given")
    }

    fn mlp(
        &self,
        _: usize,
        _: MlpProjections<'_, B>,
        _: Tensor<B, 3>,
        _: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        unreachable!("the block's channels are given")
    }
}

/// A sparse forward over 6 token rows, rows 1 and 4 on the dense path.
pub(crate) fn rows_1_and_4_dense(drop: bool) -> SparseForward<'static, TestBackend> {
    let dense = [false, true, false, false, true, false];
    SparseForward {
        selector: &UnusedSelector,
        split: Some(TokenSplit::from_dense_mask(&dense, &Default::default())),
        drop_sliced_input_grad: drop,
    }
}

pub(crate) fn ints(values: &[i64]) -> Tensor<TestBackend, 1, Int> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &Default::default(),
    )
}

/// Asserts what reference-compat mode changes in an input gradient (`[6, width]` data, or any
/// shape of 6 token rows): on the dense rows of [`rows_1_and_4_dense`] nothing (the reference
/// runs them through the dense layers), on the sparse rows the dropped base gradient.
pub(crate) fn assert_compat_changes_only_sparse_rows(exact: &TensorData, compat: &TensorData) {
    let rows = |data: &TensorData| {
        let values: Vec<f32> = data.to_vec().unwrap();
        let width = values.len() / 6;
        let row = |i: usize| values[i * width..(i + 1) * width].to_vec();
        let dense = [row(1), row(4)].concat();
        let sparse = [row(0), row(2), row(3), row(5)].concat();
        (TensorData::new(dense, [2, width]), sparse)
    };
    let ((exact_dense, exact_sparse), (compat_dense, compat_sparse)) = (rows(exact), rows(compat));
    let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
    compat_dense.assert_approx_eq::<f32>(&exact_dense, tol);
    let moved = exact_sparse
        .iter()
        .zip(&compat_sparse)
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(
        moved,
        "reference-compat mode left the sparse rows' gradient unchanged"
    );
}

/// `k` distinct channels of `0..width`, scrambled (`step` coprime with `width`).
pub(crate) fn scrambled(width: i64, k: i64, step: i64) -> Vec<i64> {
    (0..k).map(|i| (i * step + 3) % width).collect()
}

/// A rank-4 adapter with random A and B on each of `projections` (a fresh B is zero, which would
/// hide every A gradient).
pub(crate) fn add_random_adapters<const N: usize>(projections: [&mut LoraLinear<TestBackend>; N]) {
    let device = Default::default();
    let lora = LoraConfig::new().with_r(4).with_alpha(8.0);
    for p in projections {
        let (out, d_in) = p.dims();
        let random = |shape: [usize; 2]| {
            Tensor::<burn::backend::Flex, 2>::random(shape, Distribution::Normal(0.0, 0.3), &device)
                .into_data()
        };
        p.lora = Some(LoraAdapter::from_weights(
            &lora,
            random([4, d_in]),
            random([out, 4]),
            &device,
        ));
    }
}
