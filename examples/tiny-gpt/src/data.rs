//! A synthetic task a random model cannot do and LoRA learns in a few steps: after a prompt of
//! arbitrary tokens, count up by one from the prompt's last token.

use trainer::TrainExample;

/// `n` examples over a vocabulary of `vocab` tokens: a prompt of 3 to 6 tokens (no loss on it),
/// then `answer_len` answer tokens, each the previous token plus one, wrapping within
/// `1..vocab`. Token 0 never occurs: it is the pad id.
///
/// # Panics
/// If `vocab < 3`.
pub fn counting_examples(n: usize, vocab: usize, answer_len: usize) -> Vec<TrainExample> {
    assert!(
        vocab >= 3,
        "a vocabulary of {vocab} tokens leaves nothing to count"
    );
    let next = |t: u32| t % (vocab as u32 - 1) + 1;
    (0..n)
        .map(|i| {
            let prompt_len = 3 + i % 4;
            let mut ids: Vec<u32> = (0..prompt_len)
                .map(|j| 1 + ((i * 7 + j * 13 + i * j) % (vocab - 1)) as u32)
                .collect();
            for _ in 0..answer_len {
                let last = ids[ids.len() - 1];
                ids.push(next(last));
            }
            TrainExample::with_prompt_len(ids, prompt_len)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_up_and_skip_the_pad_id() {
        let examples = counting_examples(8, 5, 4);
        assert_eq!(examples.len(), 8);
        for e in &examples {
            assert!(e.input_ids.iter().all(|&t| (1..5).contains(&t)));
            let answer: Vec<u32> = e
                .input_ids
                .iter()
                .zip(&e.labels)
                .filter(|(_, &l)| l != trainer::IGNORE_INDEX)
                .map(|(&t, _)| t)
                .collect();
            assert_eq!(answer.len(), 4);
            assert!(
                answer.windows(2).all(|w| w[1] == w[0] % 4 + 1),
                "{answer:?}"
            );
        }
    }
}
