//! A seeded shuffling sampler over a data set's indices, resumable from a checkpoint.
//!
//! Each epoch visits every index once, in a permutation that depends only on `(seed, epoch)`
//! (a Fisher-Yates shuffle driven by `rand_xoshiro`'s SplitMix64; not torch's `RandomSampler` order, which depends
//! on torch's generator). Batches never straddle two epochs: the last batch of an epoch may be
//! short, as with a `DataLoader` without `drop_last`. The whole state is four integers
//! ([`SamplerState`]), so a checkpoint stores it and [`Sampler::resume`] continues with exactly the
//! batches an uninterrupted run would have drawn.

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Where a [`Sampler`] stands: plain numbers, for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SamplerState {
    /// The shuffling seed.
    pub seed: u64,
    /// The current epoch, from 0.
    pub epoch: u64,
    /// How many indices of the current epoch have been drawn (up to `len`).
    pub position: u64,
    /// The data set size the state belongs to.
    pub len: u64,
}

/// Draws batches of indices into a data set of `len` examples.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    epoch: u64,
    position: usize,
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler at the start of epoch 0.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            seed,
            epoch: 0,
            position: 0,
            order: permutation(len, seed, 0),
        }
    }

    /// A sampler where `state` left off, over a data set of `len` examples.
    ///
    /// # Errors
    /// [`DataError::BadSamplerState`] if the state was taken over a data set of another size or
    /// points past the end of its epoch.
    pub fn resume(state: SamplerState, len: usize) -> Result<Self> {
        let bad = |problem| DataError::BadSamplerState {
            state: format!(
                "seed {} epoch {} position {} len {}",
                state.seed, state.epoch, state.position, state.len
            ),
            len,
            problem,
        };
        if state.len != len as u64 {
            return Err(bad("it was taken over a data set of another size"));
        }
        if state.position > state.len {
            return Err(bad("its position is past the end of the epoch"));
        }
        Ok(Self {
            seed: state.seed,
            epoch: state.epoch,
            position: state.position as usize,
            order: permutation(len, state.seed, state.epoch),
        })
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            epoch: self.epoch,
            position: self.position as u64,
            len: self.order.len() as u64,
        }
    }

    /// The data set size.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the data set is empty (every batch is then empty).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The epoch of the batch last drawn (0 before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The order of the current epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The next batch: up to `batch_size` indices, fewer at the end of an epoch. When the current
    /// epoch is used up, the next one starts first. Empty when the data set or `batch_size` is
    /// zero (the state then does not change).
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        if self.order.is_empty() || batch_size == 0 {
            return Vec::new();
        }
        if self.position >= self.order.len() {
            self.epoch += 1;
            self.position = 0;
            self.order = permutation(self.order.len(), self.seed, self.epoch);
        }
        let end = (self.position + batch_size).min(self.order.len());
        let batch = self.order[self.position..end].to_vec();
        self.position = end;
        batch
    }
}

/// The number of batches in one epoch of `len` examples (the last may be short); 0 if
/// `batch_size` is 0.
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    if batch_size == 0 {
        0
    } else {
        len.div_ceil(batch_size)
    }
}

/// The permutation of `0..len` for `(seed, epoch)`.
pub fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng =
        SplitMix64::seed_from_u64(splitmix(seed) ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// SplitMix64's state increment (Steele, Lea and Flood, 2014): the state before draw `i` of a
/// generator seeded with `s` is `s + i * GOLDEN_GAMMA`.
pub(crate) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step from state `x`: the first draw of the generator seeded with `x`.
pub(crate) fn splitmix(x: u64) -> u64 {
    SplitMix64::seed_from_u64(x).next_u64()
}

/// Uniform in `0..n` (`n > 0`), by rejection, without modulo bias.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Sampler, batch: usize, steps: usize) -> Vec<Vec<usize>> {
        (0..steps).map(|_| s.next_batch(batch)).collect()
    }

    #[test]
    fn every_epoch_is_a_permutation_that_depends_on_seed_and_epoch() {
        let p0 = permutation(100, 42, 0);
        let mut sorted = p0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p0, permutation(100, 42, 0));
        assert_ne!(p0, permutation(100, 42, 1));
        assert_ne!(p0, permutation(100, 43, 0));
        assert_ne!(p0, (0..100).collect::<Vec<_>>());
        // Pinned, so a change of generator cannot pass unnoticed (it would change runs' data order).
        assert_eq!(permutation(8, 42, 0), vec![3, 6, 0, 7, 1, 2, 5, 4]);
    }

    #[test]
    fn batches_cover_each_epoch_once_and_never_straddle_epochs() {
        let mut s = Sampler::new(10, 7);
        assert_eq!(batches_per_epoch(10, 4), 3);
        let epoch0 = drain(&mut s, 4, 3);
        assert_eq!(
            epoch0.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(epoch0.concat(), permutation(10, 7, 0));
        assert_eq!(s.epoch(), 0);
        let epoch1 = drain(&mut s, 4, 3);
        assert_eq!(s.epoch(), 1);
        assert_eq!(epoch1.concat(), permutation(10, 7, 1));
    }

    #[test]
    fn resuming_from_a_state_continues_the_same_sequence() {
        let mut straight = Sampler::new(13, 42);
        let expected = drain(&mut straight, 3, 12);
        for cut in [0, 1, 4, 5, 9, 11] {
            let mut first = Sampler::new(13, 42);
            let mut got = drain(&mut first, 3, cut);
            let state = first.state();
            let mut resumed = Sampler::resume(state, 13).unwrap();
            assert_eq!(resumed.state(), state);
            got.extend(drain(&mut resumed, 3, 12 - cut));
            assert_eq!(got, expected, "resumed after {cut} batches");
        }
    }

    #[test]
    fn bad_states_are_refused() {
        let state = SamplerState {
            seed: 1,
            epoch: 0,
            position: 3,
            len: 10,
        };
        assert!(Sampler::resume(state, 10).is_ok());
        let err = Sampler::resume(state, 11).unwrap_err().to_string();
        assert!(err.contains("another size"), "{err}");
        let past = SamplerState {
            position: 11,
            ..state
        };
        assert!(Sampler::resume(past, 10).is_err());
    }

    #[test]
    fn empty_data_and_zero_batches_do_not_panic() {
        let mut s = Sampler::new(0, 42);
        assert!(s.is_empty());
        assert!(s.next_batch(8).is_empty());
        assert_eq!(s.state().epoch, 0);
        let mut s = Sampler::new(5, 42);
        assert!(s.next_batch(0).is_empty());
        assert_eq!(s.state().position, 0);
        assert_eq!(batches_per_epoch(5, 0), 0);
        assert!(Sampler::resume(Sampler::new(0, 3).state(), 0).is_ok());
        assert_eq!(Sampler::new(1, 9).next_batch(4), vec![0]);
    }

    #[test]
    fn generator_outputs_are_pinned() {
        // Values of the generator as first written: a change of generator would change every
        // run's data order.
        assert_eq!(
            permutation(24, 1234, 5),
            [
                0, 22, 17, 20, 12, 13, 3, 11, 21, 10, 1, 8, 18, 6, 14, 19, 9, 16, 4, 5, 2, 7, 15,
                23
            ]
        );
        assert_eq!(
            [splitmix(0), splitmix(42), splitmix(u64::MAX)],
            [
                16294208416658607535,
                13679457532755275413,
                16490336266968443936
            ]
        );
    }
}
