//! What a sparse forward pass needs besides the batch ([`SparseForward`]): the selector, and the
//! token rows that stay dense ([`TokenSplit`], SPEC 6), with the two helpers a block's sparse
//! forward calls: [`SparseForward::rows`] and [`SparseForward::channel_keep`].

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::selector::ChannelSelector;
use crate::channel_keep::ChannelKeep;

/// Which flattened token rows (`batch * seq`, row-major) take the dense path and which the sparse
/// one (SPEC 6: the answer tokens stay dense).
///
/// The sparse path runs on every row and the few dense rows are then recomputed densely and
/// written over it (in the paper's workloads 3 or 128 of every 512 tokens are dense). Gathering
/// the sparse rows out and scattering them back would cost two full copies of the activation per
/// block, and burn's row scatter (`select_assign`) runs one thread per column, looping over the
/// rows: 0.8 ms per call at 4096 x 4096 on an H200, 200 ms per LLaMA3-8B step (docs/perf.md).
/// The row moves ([`sparse_ops::gather_rows`], [`sparse_ops::replace_rows`]) touch only the dense
/// rows, forward and backward.
#[derive(Debug, Clone)]
pub struct TokenSplit<B: Backend> {
    /// The dense rows and an `[n, 1]` f32 column, 1 on the dense rows (made once per batch, not
    /// per block); `None` when no row is dense (no zero-size buffer is
    /// ever allocated: cubecl-cuda 0.10 cannot allocate one, and the failed allocation leaves a
    /// handle that panics its device thread at every later use).
    dense: Option<DenseRows<B>>,
    n_dense: usize,
    n_sparse: usize,
}

impl<B: Backend> TokenSplit<B> {
    /// From a row-major `[batch * seq]` mask, true where the token takes the dense path.
    pub fn from_dense_mask(dense: &[bool], device: &B::Device) -> Self {
        let rows: Vec<i64> = (0..dense.len() as i64)
            .filter(|&i| dense[i as usize])
            .collect();
        let (n_dense, n) = (rows.len(), dense.len());
        let is_dense: Vec<f32> = dense.iter().map(|&d| f32::from(u8::from(d))).collect();
        Self {
            dense: (n_dense > 0).then(|| DenseRows {
                rows: Tensor::from_data(TensorData::new(rows, [n_dense]), device),
                is_dense: Tensor::from_data(TensorData::new(is_dense, [n, 1]), device),
            }),
            n_dense,
            n_sparse: n - n_dense,
        }
    }

    /// Rows on the dense path.
    pub fn n_dense(&self) -> usize {
        self.n_dense
    }

    /// Rows on the sparse path.
    pub fn n_sparse(&self) -> usize {
        self.n_sparse
    }

    /// `sparse_fn` on the rows of the sparse path and `dense_fn` on those of the dense path of
    /// `x` (`[n, in]`), in row order (`[n, out]`). `sparse_fn` sees every row (see the type's
    /// doc); `dense_fn` only the dense ones.
    pub fn apply(
        &self,
        x: Tensor<B, 2>,
        sparse_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
        dense_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let Some(DenseRows { rows, .. }) = &self.dense else {
            return sparse_fn(x);
        };
        if self.n_sparse == 0 {
            return dense_fn(x);
        }
        let dense = dense_fn(sparse_ops::gather_rows(x.clone(), rows.clone()));
        sparse_ops::replace_rows(sparse_fn(x), rows.clone(), dense)
    }

    /// `y` (`[n, out]`, the sparse path's result on every row) with `correction_fn` of the dense
    /// rows of `x` (`[n, in]`) added to those rows: for a dense path that equals the sparse one
    /// plus a correction (an input-sliced product and the product of the channels it dropped).
    ///
    /// Adding, unlike [`Self::apply`]'s replacing, leaves the output gradient whole for `y`'s
    /// producer: replacing rows zeroes them in that gradient, a copy of it when the gradient is
    /// shared, as it is when an adapter's update was added onto the output.
    pub fn add_to_dense_rows(
        &self,
        y: Tensor<B, 2>,
        x: Tensor<B, 2>,
        correction_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let [y] = self.add_to_dense_rows_each([y], x, |x| [correction_fn(x)]);
        y
    }

    /// [`Self::add_to_dense_rows`] for `N` outputs reading one input (`ys[i]`: `[n, out_i]`):
    /// the dense rows of `x` are gathered once for all of them (attention's q, k and v).
    pub fn add_to_dense_rows_each<const N: usize>(
        &self,
        ys: [Tensor<B, 2>; N],
        x: Tensor<B, 2>,
        correction_fn: impl FnOnce(Tensor<B, 2>) -> [Tensor<B, 2>; N],
    ) -> [Tensor<B, 2>; N] {
        let Some(DenseRows { rows, .. }) = &self.dense else {
            return ys;
        };
        let corrections = correction_fn(sparse_ops::gather_rows(x, rows.clone()));
        let mut corrections = corrections.into_iter();
        ys.map(|y| {
            let correction = corrections.next().expect("as many corrections as outputs");
            sparse_ops::add_rows(y, rows.clone(), correction)
        })
    }

    /// What zeroes the channels outside `kept` on the sparse rows of an `[n, width]` activation
    /// in `dtype` (the dense rows keep every channel).
    pub fn channel_keep(
        &self,
        kept: &Tensor<B, 1, Int>,
        width: usize,
        dtype: burn::tensor::DType,
    ) -> ChannelKeep<B> {
        let keep = || sparse_ops::keep_mask(kept.clone(), width, dtype);
        match &self.dense {
            None => ChannelKeep::new(keep(), None),
            Some(_) if self.n_sparse == 0 => ChannelKeep::all(),
            Some(DenseRows { is_dense, .. }) => {
                let n = self.n_dense + self.n_sparse;
                ChannelKeep::new(keep(), Some(is_dense.clone().reshape([n])))
            }
        }
    }
}

/// The dense rows of a [`TokenSplit`].
#[derive(Debug, Clone)]
struct DenseRows<B: Backend> {
    /// Their indices, `[n_dense]`.
    rows: Tensor<B, 1, Int>,
    /// `[n, 1]` f32, 1 on the dense rows.
    is_dense: Tensor<B, 2>,
}

/// What a sparse forward pass needs besides the batch.
pub struct SparseForward<'a, B: Backend> {
    /// Chooses the channels of each layer.
    pub selector: &'a dyn ChannelSelector<B>,
    /// Tokens on the dense path (the answer tokens); `None` sends every token through the sparse
    /// path (as the GLUE configuration does).
    pub split: Option<TokenSplit<B>>,
    /// Reference-compat: no input gradient through the frozen base of a sliced projection that
    /// carries an adapter (the official code's behaviour; only the adapter's input gradient flows).
    pub drop_sliced_input_grad: bool,
}

impl<B: Backend> SparseForward<'_, B> {
    /// Runs `sparse_fn` / `dense_fn` on the token rows of each path (all rows sparse without a
    /// split); see [`TokenSplit::apply`]. A block's sparse forward computes its sliced
    /// projections inside `sparse_fn` and its dense ones inside `dense_fn`.
    ///
    /// # Shapes
    /// - `x`: `[n, in]` (`n = batch * seq`, row-major), output `[n, out]`
    pub fn rows(
        &self,
        x: Tensor<B, 2>,
        sparse_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
        dense_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match &self.split {
            Some(split) => split.apply(x, sparse_fn, dense_fn),
            None => sparse_fn(x),
        }
    }

    /// [`TokenSplit::add_to_dense_rows_each`] (`ys` themselves without a split).
    pub fn add_to_dense_rows_each<const N: usize>(
        &self,
        ys: [Tensor<B, 2>; N],
        x: Tensor<B, 2>,
        correction_fn: impl FnOnce(Tensor<B, 2>) -> [Tensor<B, 2>; N],
    ) -> [Tensor<B, 2>; N] {
        match &self.split {
            Some(split) => split.add_to_dense_rows_each(ys, x, correction_fn),
            None => ys,
        }
    }

    /// [`TokenSplit::add_to_dense_rows`] (`y` itself without a split).
    pub fn add_to_dense_rows(
        &self,
        y: Tensor<B, 2>,
        x: Tensor<B, 2>,
        correction_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match &self.split {
            Some(split) => split.add_to_dense_rows(y, x, correction_fn),
            None => y,
        }
    }

    /// What zeroes the channels outside `kept` on the sparse token rows, for the masked-dense
    /// forwards (`LoraLinear::forward_out_masked`, `forward_in_masked`); see
    /// [`TokenSplit::channel_keep`]. Every row sparse without a split.
    pub fn channel_keep(
        &self,
        kept: &Tensor<B, 1, Int>,
        width: usize,
        dtype: burn::tensor::DType,
    ) -> ChannelKeep<B> {
        match &self.split {
            Some(split) => split.channel_keep(kept, width, dtype),
            None => ChannelKeep::new(sparse_ops::keep_mask(kept.clone(), width, dtype), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestBackend = burn::backend::Flex;

    #[test]
    fn split_puts_dense_rows_back_in_row_order() {
        let device = Default::default();
        let split =
            TokenSplit::<TestBackend>::from_dense_mask(&[false, true, false, true], &device);
        assert_eq!((split.n_dense(), split.n_sparse()), (2, 2));
        let x = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [4, 1]),
            &device,
        );
        // Sparse rows negated, dense rows doubled.
        let y = split.apply(x, |x| -x, |x| x * 2.0);
        let values: Vec<f32> = y.into_data().convert::<f32>().into_vec().unwrap();
        assert_eq!(values, [-1.0, 4.0, -3.0, 8.0]);

        // Dense rows keep every channel; sparse rows only the kept ones.
        let kept =
            Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![2i64], [1]), &device);
        let keep = split.channel_keep(&kept, 3, burn::tensor::DType::F32);
        let ones = Tensor::<TestBackend, 2>::ones([4, 3], &device);
        let values: Vec<f32> = keep
            .apply(ones)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        let sparse_row = [0.0, 0.0, 1.0];
        let dense_row = [1.0, 1.0, 1.0];
        assert_eq!(
            values,
            [sparse_row, dense_row, sparse_row, dense_row].concat()
        );
    }
}
