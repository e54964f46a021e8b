//! Left-padded training batches, as LLM-Adapters builds them (`tokenizer.padding_side = "left"`,
//! `DataCollatorForSeq2Seq(pad_to_multiple_of=8)`): every row is padded on the left to the
//! longest example of the batch, rounded up to a multiple of `pad_to_multiple_of` if set, with
//! the pad id, attention mask `false` and label [`IGNORE_INDEX`].
//!
//! Padding is built on the host ([`pad_left`], testable without a device) and moved to the device
//! once ([`PaddedBatch::to_tensors`]).

use std::borrow::Borrow;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::{DataError, Result};
use crate::tokenize::{TrainExample, IGNORE_INDEX};

/// How examples are padded into a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollateConfig {
    /// The id written into padded positions (masked out, so its value only has to be in the
    /// vocabulary; LLM-Adapters uses 0 for LLaMA).
    pub pad_id: u32,
    /// Round the padded length up to a multiple of this; `None`, `Some(0)` and `Some(1)` do not
    /// round.
    pub pad_to_multiple_of: Option<usize>,
}

impl CollateConfig {
    /// Padding with `pad_id` to the longest example, not rounded.
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            pad_to_multiple_of: None,
        }
    }

    /// The same, rounding the length up to a multiple of `multiple`.
    pub fn with_pad_to_multiple_of(mut self, multiple: usize) -> Self {
        self.pad_to_multiple_of = Some(multiple);
        self
    }
}

/// A padded batch on the host, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Rows.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// Token ids, the pad id on the left of shorter rows.
    pub input_ids: Vec<i64>,
    /// `true` on real tokens, `false` on padding.
    pub attention_mask: Vec<bool>,
    /// Labels, [`IGNORE_INDEX`] on padding and prompt.
    pub labels: Vec<i64>,
}

/// A padded batch on a device.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, true for real tokens.
    pub attention_mask: Tensor<B, 2, Bool>,
    /// `[batch, seq]` labels ([`IGNORE_INDEX`] where the loss ignores a position). Not shifted:
    /// position `t`'s logits predict `labels[t + 1]`, as in HF causal LMs.
    pub labels: Tensor<B, 2, Int>,
    /// The same labels as the positions that predict a target, so the loss computes logits only
    /// there (see [`llama_burn::loss::causal_lm_loss_at_targets`]).
    pub loss_targets: llama_burn::loss::LossTargets<B>,
    /// Row-major `[batch * seq]`, true for answer tokens (label not ignored): the tokens
    /// SparseLoRA keeps on the dense path (SPEC 6).
    pub answer_tokens: Vec<bool>,
}

/// Pads `examples` on the left (see the module documentation).
///
/// # Errors
/// [`DataError::EmptyBatch`] if `examples` is empty or holds no token at all.
pub fn pad_left<E: Borrow<TrainExample>>(
    examples: &[E],
    config: &CollateConfig,
) -> Result<PaddedBatch> {
    if examples.is_empty() {
        return Err(DataError::EmptyBatch("no examples"));
    }
    let longest = examples.iter().map(|e| e.borrow().len()).max().unwrap_or(0);
    if longest == 0 {
        return Err(DataError::EmptyBatch("examples without tokens"));
    }
    let seq = match config.pad_to_multiple_of {
        Some(m) if m > 1 => longest.div_ceil(m) * m,
        _ => longest,
    };
    let batch = examples.len();
    let mut input_ids = Vec::with_capacity(batch * seq);
    let mut attention_mask = Vec::with_capacity(batch * seq);
    let mut labels = Vec::with_capacity(batch * seq);
    for example in examples {
        let example = example.borrow();
        let pad = seq - example.len();
        input_ids.extend(std::iter::repeat_n(i64::from(config.pad_id), pad));
        input_ids.extend(example.input_ids.iter().map(|&id| i64::from(id)));
        attention_mask.extend(std::iter::repeat_n(false, pad));
        attention_mask.extend(std::iter::repeat_n(true, example.len()));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        // A label list of another length (hand-built examples) is cut or filled with IGNORE_INDEX.
        labels.extend(
            (0..example.len()).map(|i| example.labels.get(i).copied().unwrap_or(IGNORE_INDEX)),
        );
    }
    Ok(PaddedBatch {
        batch,
        seq,
        input_ids,
        attention_mask,
        labels,
    })
}

impl PaddedBatch {
    /// The number of positions that count in the loss.
    pub fn num_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Moves the batch to `device`.
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> TrainBatch<B> {
        let shape = [self.batch, self.seq];
        TrainBatch {
            input_ids: Tensor::from_data(TensorData::new(self.input_ids.clone(), shape), device),
            attention_mask: Tensor::from_data(
                TensorData::new(self.attention_mask.clone(), shape),
                device,
            ),
            labels: Tensor::from_data(TensorData::new(self.labels.clone(), shape), device),
            loss_targets: llama_burn::loss::LossTargets::from_labels(
                &self.labels,
                self.batch,
                self.seq,
                device,
            ),
            answer_tokens: self.labels.iter().map(|&l| l != IGNORE_INDEX).collect(),
        }
    }
}

/// [`pad_left`], then [`PaddedBatch::to_tensors`].
///
/// # Errors
/// [`DataError::EmptyBatch`] if `examples` is empty or holds no token at all.
pub fn collate<B: Backend, E: Borrow<TrainExample>>(
    examples: &[E],
    config: &CollateConfig,
    device: &B::Device,
) -> Result<TrainBatch<B>> {
    Ok(pad_left(examples, config)?.to_tensors(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestBackend = burn::backend::Flex;

    fn example(ids: &[u32], prompt_len: usize) -> TrainExample {
        TrainExample::with_prompt_len(ids.to_vec(), prompt_len)
    }

    #[test]
    fn pads_on_the_left_to_the_longest() {
        let examples = [example(&[5, 6, 7], 1), example(&[8], 0)];
        let b = pad_left(&examples, &CollateConfig::new(0)).unwrap();
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.input_ids, vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(b.attention_mask, vec![true, true, true, false, false, true]);
        assert_eq!(b.labels, vec![-100, 6, 7, -100, -100, 8]);
        assert_eq!(b.num_targets(), 3);
    }

    #[test]
    fn rounds_up_to_a_multiple() {
        let examples = [example(&[1, 2, 3, 4, 5], 2), example(&[9, 9], 0)];
        let refs: Vec<&TrainExample> = examples.iter().collect();
        let b = pad_left(&refs, &CollateConfig::new(7).with_pad_to_multiple_of(8)).unwrap();
        assert_eq!(b.seq, 8);
        assert_eq!(&b.input_ids[..8], &[7, 7, 7, 1, 2, 3, 4, 5]);
        assert_eq!(&b.labels[8..], &[-100, -100, -100, -100, -100, -100, 9, 9]);
        assert_eq!(b.attention_mask.iter().filter(|&&m| m).count(), 7);
        // Already a multiple, and the no-op multiples.
        let b = pad_left(&refs, &CollateConfig::new(0).with_pad_to_multiple_of(5)).unwrap();
        assert_eq!(b.seq, 5);
        for m in [0, 1] {
            let b = pad_left(&refs, &CollateConfig::new(0).with_pad_to_multiple_of(m)).unwrap();
            assert_eq!(b.seq, 5);
        }
    }

    #[test]
    fn empty_input_is_an_error_not_a_panic() {
        let none: [TrainExample; 0] = [];
        assert!(matches!(
            pad_left(&none, &CollateConfig::new(0)),
            Err(DataError::EmptyBatch(_))
        ));
        let empty = [TrainExample::default(), TrainExample::default()];
        assert!(matches!(
            pad_left(&empty, &CollateConfig::new(0).with_pad_to_multiple_of(8)),
            Err(DataError::EmptyBatch(_))
        ));
        let device = Default::default();
        assert!(collate::<TestBackend, _>(&none, &CollateConfig::new(0), &device).is_err());
        // An empty example among others is a fully padded row.
        let b = pad_left(
            &[example(&[3], 0), TrainExample::default()],
            &CollateConfig::new(0),
        )
        .unwrap();
        assert_eq!(b.attention_mask, vec![true, false]);
        assert_eq!(b.labels, vec![3, -100]);
    }

    #[test]
    fn tensors_have_the_batch_shape_and_values() {
        let device = Default::default();
        let examples = [example(&[5, 6, 7], 2), example(&[8, 9], 1)];
        let t = collate::<TestBackend, _>(&examples, &CollateConfig::new(0), &device).unwrap();
        assert_eq!(t.input_ids.dims(), [2, 3]);
        assert_eq!(t.attention_mask.dims(), [2, 3]);
        assert_eq!(t.labels.dims(), [2, 3]);
        let ids: Vec<i64> = t.input_ids.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![5, 6, 7, 0, 8, 9]);
        let mask: Vec<bool> = t.attention_mask.into_data().to_vec().unwrap();
        assert_eq!(mask, vec![true, true, true, false, true, true]);
        let labels: Vec<i64> = t.labels.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(labels, vec![-100, -100, 7, -100, -100, 9]);
    }
}
