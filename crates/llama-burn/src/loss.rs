//! The causal-LM training loss, as `transformers`' `LlamaForCausalLM(..., labels=...)` computes
//! it (`ForCausalLMLoss`): the logits at position `t` predict the label at `t + 1`, the
//! cross-entropy is taken in f32, and its mean runs over the targets that are not `-100`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, DType, Int, Tensor};

/// The label value excluded from the loss (prompt and padding positions), as in PyTorch's
/// `CrossEntropyLoss(ignore_index=-100)`.
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy over the non-ignored targets.
///
/// HF's shift: `logits[:, :-1]` are scored against `labels[:, 1:]`, so `labels` is the input ids
/// with prompt/padding positions set to [`IGNORE_INDEX`] (the label at position 0 is never
/// used). `log_softmax` runs in f32 whatever the logits' dtype. When every target is ignored the
/// loss is 0 (HF returns NaN), so a fully masked batch contributes no gradient instead of
/// poisoning the step.
///
/// Labels other than [`IGNORE_INDEX`] must lie in `0..vocab`; they are not checked on the host
/// (that would force a device sync).
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`
/// - `labels`: `[batch, seq]`
/// - output: `[1]`, f32
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [batch, seq, vocab] = logits.dims();
    assert_eq!(
        labels.dims(),
        [batch, seq],
        "causal_lm_loss: labels {:?} do not match logits [batch={batch}, seq={seq}, vocab={vocab}]",
        labels.dims()
    );
    let device = logits.device();
    if seq < 2 {
        return Tensor::zeros([1], (&device, DType::F32));
    }
    let logits = logits
        .slice([0..batch, 0..seq - 1, 0..vocab])
        .cast(DType::F32); // [b, s-1, v]
    let targets = labels.slice([0..batch, 1..seq]); // [b, s-1]
    let ignored = targets.clone().equal_elem(IGNORE_INDEX); // [b, s-1]
    let safe_targets = targets.mask_fill(ignored.clone(), 0); // [b, s-1]
    let logp = log_softmax(logits, 2)
        .gather(2, safe_targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2); // [b, s-1]
    let nll = logp.neg().mask_fill(ignored.clone(), 0.0);
    let count = ignored
        .bool_not()
        .int()
        .sum()
        .float()
        .cast(DType::F32)
        .clamp_min(1.0); // [1]
    nll.sum() / count
}

/// The positions of a batch that predict a target, gathered on the host from the labels.
#[derive(Debug, Clone)]
pub struct LossTargets<B: Backend> {
    /// `(predict_at, targets)`, `None` when there is no target (no zero-size buffer is
    /// allocated: cubecl-cuda 0.10 cannot allocate one). `predict_at` holds the flattened
    /// `row * seq + t` of every `t` whose next label is a target, `targets` the label each of
    /// those positions predicts; both `[n]`.
    pub positions: Option<(Tensor<B, 1, Int>, Tensor<B, 1, Int>)>,
    /// `n`.
    pub count: usize,
}

impl<B: Backend> LossTargets<B> {
    /// From row-major labels `[batch, seq]` with [`IGNORE_INDEX`] where no loss is taken.
    pub fn from_labels(labels: &[i64], batch: usize, seq: usize, device: &B::Device) -> Self {
        let (mut at, mut targets) = (Vec::new(), Vec::new());
        for row in 0..batch {
            for t in 0..seq.saturating_sub(1) {
                let label = labels[row * seq + t + 1];
                if label != IGNORE_INDEX {
                    at.push((row * seq + t) as i64);
                    targets.push(label);
                }
            }
        }
        let count = at.len();
        let tensor =
            |v: Vec<i64>| Tensor::from_data(burn::tensor::TensorData::new(v, [count]), device);
        Self {
            positions: (count > 0).then(|| (tensor(at), tensor(targets))),
            count,
        }
    }
}

/// [`causal_lm_loss`]'s value from final hidden states, computing logits only at the positions
/// that predict a target (for instruction tuning: the answer tokens) instead of at every position.
///
/// The per-row cross-entropy is `kernels_cubecl::cross_entropy::row_nll`: one kernel each way on
/// burn-wgpu/burn-cuda (burn's `log_softmax` there spent three row reductions of 2.5 ms each on
/// LLaMA3's 128,256-wide rows), the same burn ops as before elsewhere. Targets must lie in
/// `0..vocab` (the trainer refuses data with foreign token ids before training).
///
/// # Shapes
/// - `hidden`: `[batch, seq, d_model]` (from [`crate::LlamaForCausalLM::forward_hidden`])
/// - output: `[1]`, f32
pub fn causal_lm_loss_at_targets<B: Backend>(
    model: &crate::LlamaForCausalLM<B>,
    hidden: Tensor<B, 3>,
    targets: &LossTargets<B>,
) -> Tensor<B, 1> {
    let [b, s, d] = hidden.dims();
    let Some((predict_at, labels)) = &targets.positions else {
        // No answer token: a zero that still belongs to the graph, so backward is a no-op.
        return hidden.sum().cast(DType::F32) * 0.0;
    };
    let rows = hidden.reshape([b * s, d]).select(0, predict_at.clone()); // [n, d]
    let nll = kernels_cubecl::cross_entropy::row_nll(model.lm_head(rows), labels.clone()); // [n]
    nll.sum() / targets.count as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type TestBackend = burn::backend::Flex;

    /// Direct per-position evaluation of the same quantity.
    fn reference(logits: &[f32], labels: &[i64], b: usize, s: usize, v: usize) -> f64 {
        let (mut total, mut count) = (0.0f64, 0usize);
        for row in 0..b {
            for t in 0..s - 1 {
                let target = labels[row * s + t + 1];
                if target == IGNORE_INDEX {
                    continue;
                }
                let z = &logits[(row * s + t) * v..(row * s + t + 1) * v];
                let max = z.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
                let lse = max + z.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                total += lse - z[target as usize] as f64;
                count += 1;
            }
        }
        total / count as f64
    }

    #[test]
    fn matches_direct_evaluation_and_ignores_minus_100() {
        let device = Default::default();
        let (b, s, v) = (2, 5, 7);
        let logits =
            Tensor::<TestBackend, 3>::random([b, s, v], Distribution::Normal(0.0, 2.0), &device);
        let labels = vec![-100i64, -100, 3, 0, 6, -100, 2, -100, 5, 1];
        let loss = causal_lm_loss(
            logits.clone(),
            Tensor::from_data(TensorData::new(labels.clone(), [b, s]), &device),
        );
        let got = loss.into_scalar() as f64;
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let want = reference(&values, &labels, b, s, v);
        assert!((got - want).abs() < 1e-5 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn fully_ignored_batch_gives_zero() {
        let device = Default::default();
        let logits = Tensor::<TestBackend, 3>::random([1, 4, 5], Distribution::Default, &device);
        let labels = Tensor::<TestBackend, 2, Int>::full([1, 4], IGNORE_INDEX, &device);
        assert_eq!(causal_lm_loss(logits, labels).into_scalar(), 0.0);
    }

    #[test]
    fn loss_at_targets_equals_full_loss() {
        let device = Default::default();
        TestBackend::seed(&device, 3);
        let config = crate::LlamaConfig {
            vocab_size: 97,
            ..crate::LlamaConfig::preset("tiny").unwrap()
        };
        let model = config.init::<TestBackend>(&device);
        let (b, s) = (2, 6);
        let ids: Vec<i64> = (0..(b * s) as i64).map(|i| (i * 7) % 97).collect();
        let labels = vec![-100i64, -100, 5, 9, -100, 2, -100, -100, -100, 4, 4, 1];
        let ids = Tensor::<TestBackend, 2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let mask = Tensor::<TestBackend, 2, burn::tensor::Bool>::from_data(
            TensorData::new(vec![true; b * s], [b, s]),
            &device,
        );
        let full = causal_lm_loss(
            model.forward(ids.clone(), mask.clone()),
            Tensor::from_data(TensorData::new(labels.clone(), [b, s]), &device),
        )
        .into_scalar();
        let targets = LossTargets::from_labels(&labels, b, s, &device);
        assert_eq!(targets.count, 6);
        let sparse = causal_lm_loss_at_targets(&model, model.forward_hidden(ids, mask), &targets)
            .into_scalar();
        assert!((full - sparse).abs() < 1e-5, "{full} vs {sparse}");
    }
}
