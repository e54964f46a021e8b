//! Tokenised examples as the training loop's [`MicroBatches`]: shuffled per epoch with the
//! sampler's seeded permutation, cut into micro-batches, left-padded on demand.

use std::cell::RefCell;

use burn::tensor::backend::Backend;

use crate::batch::{pad_left, CollateConfig, TrainBatch};
use crate::sampler::{batches_per_epoch, permutation};
use crate::tokenize::TrainExample;
use crate::train::MicroBatches;

/// Examples served as micro-batches of `micro_batch` sequences.
#[derive(Debug)]
pub struct ExampleBatches {
    examples: Vec<TrainExample>,
    micro_batch: usize,
    seed: u64,
    collate: CollateConfig,
    /// The permutation of the epoch asked for last (an epoch is read in order).
    order: RefCell<Option<(usize, Vec<usize>)>>,
}

impl ExampleBatches {
    /// Serves `examples` in shuffled micro-batches.
    pub fn new(
        examples: Vec<TrainExample>,
        micro_batch: usize,
        seed: u64,
        collate: CollateConfig,
    ) -> Self {
        Self {
            examples,
            micro_batch,
            seed,
            collate,
            order: RefCell::new(None),
        }
    }

    /// The examples, in file order.
    pub fn examples(&self) -> &[TrainExample] {
        &self.examples
    }
}

impl<B: Backend> MicroBatches<B> for ExampleBatches {
    fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.examples.len(), self.micro_batch)
    }

    fn batch(&self, epoch: usize, index: usize, device: &B::Device) -> (TrainBatch<B>, usize) {
        let mut cached = self.order.borrow_mut();
        if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *cached = Some((
                epoch,
                permutation(self.examples.len(), self.seed, epoch as u64),
            ));
        }
        let order = &cached.as_ref().expect("just filled").1;
        let start = index * self.micro_batch;
        let picked: Vec<&TrainExample> = order[start..(start + self.micro_batch).min(order.len())]
            .iter()
            .map(|&i| &self.examples[i])
            .collect();
        let padded =
            pad_left(&picked, &self.collate).expect("batch indices come from a non-empty epoch");
        let tokens = padded.attention_mask.iter().filter(|&&m| m).count();
        (padded.to_tensors(device), tokens)
    }
}
