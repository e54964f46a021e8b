//! The sparse forward of SparseLoRA against the masked-dense formulation (SPEC 5).
//!
//! Output slicing `(x W^T) * m` equals `x (W * m_rows)^T` and input slicing `(x * m) W^T` equals
//! `x (W * m_cols)^T`, so the reference is the dense model with the dropped rows/columns of its
//! frozen weights zeroed, adapters untouched. Forward outputs and every LoRA gradient must agree.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData, Tolerance};
use llama_burn::{
    AttentionProjections, AttnChannels, ChannelSelector, LlamaConfig, LlamaForCausalLM,
    LlamaProjection, MlpProjections, SparseForward, TokenSplit,
};
use lora::{LoraAdapter, LoraConfig, LoraLinear};

type B = Autodiff<Flex>;

/// Channels fixed in advance, per layer.
#[derive(Clone)]
struct FixedChannels {
    attn: Vec<Option<[Vec<i64>; 4]>>,
    mlp: Vec<Option<Vec<i64>>>,
}

fn ints(v: &[i64]) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

impl ChannelSelector<B> for FixedChannels {
    fn attention(
        &self,
        layer: usize,
        _attn: AttentionProjections<'_, B>,
        _x: Tensor<B, 3>,
        _tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        self.attn[layer].as_ref().map(|[q, k, v, o]| AttnChannels {
            q: ints(q),
            k: ints(k),
            v: ints(v),
            o: ints(o),
        })
    }

    fn mlp(
        &self,
        layer: usize,
        _mlp: MlpProjections<'_, B>,
        _x: Tensor<B, 3>,
        _tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        self.mlp[layer].as_ref().map(|idx| ints(idx))
    }
}

/// A deterministic pseudo-random subset of `0..width` of size `k`, in scrambled order.
fn subset(width: usize, k: usize, seed: u64) -> Vec<i64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut all: Vec<i64> = (0..width as i64).collect();
    for i in (1..width).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        all.swap(i, (state >> 33) as usize % (i + 1));
    }
    all.truncate(k);
    all
}

/// The tiny model with adapters on `targets`, both A and B random (a fresh B is zero, which
/// would hide every A gradient).
fn model(targets: &[LlamaProjection]) -> LlamaForCausalLM<B> {
    let device = Default::default();
    let config = LlamaConfig::preset("tiny").unwrap();
    let lora = LoraConfig::new()
        .with_r(4)
        .with_alpha(8.0)
        .with_targets(LlamaProjection::target_modules(targets));
    let mut model = config.init_random::<B>(&device).with_lora(&lora, &device);
    for layer in &mut model.model.layers {
        for &target in targets {
            let proj = layer.projection_mut(target);
            let (out, d_in) = proj.dims();
            let random = |shape: [usize; 2]| {
                Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 0.3), &device)
                    .into_data()
            };
            proj.lora = Some(LoraAdapter::from_weights(
                &lora,
                random([4, d_in]),
                random([out, 4]),
                &device,
            ));
        }
    }
    model
}

fn channel_mask(width: usize, kept: &[i64]) -> Tensor<B, 1> {
    let mut m = vec![0f32; width];
    for &i in kept {
        m[i as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(m, [width]), &Default::default())
}

fn mask_rows(proj: &mut LoraLinear<B>, kept: &[i64]) {
    let (out, d_in) = proj.dims();
    let m = channel_mask(out, kept)
        .reshape([out, 1])
        .expand([out, d_in]);
    proj.weight = proj.weight.clone().map(|w| w * m);
}

fn mask_cols(proj: &mut LoraLinear<B>, kept: &[i64]) {
    let (out, d_in) = proj.dims();
    let m = channel_mask(d_in, kept)
        .reshape([1, d_in])
        .expand([out, d_in]);
    proj.weight = proj.weight.clone().map(|w| w * m);
}

/// The dense model with the dropped channels of its frozen weights zeroed.
fn masked_reference(model: &LlamaForCausalLM<B>, channels: &FixedChannels) -> LlamaForCausalLM<B> {
    let mut reference = model.clone();
    for (i, layer) in reference.model.layers.iter_mut().enumerate() {
        if let Some([q, k, v, o]) = &channels.attn[i] {
            mask_rows(&mut layer.self_attn.q_proj, q);
            mask_rows(&mut layer.self_attn.k_proj, k);
            mask_rows(&mut layer.self_attn.v_proj, v);
            mask_cols(&mut layer.self_attn.o_proj, o);
        }
        if let Some(idx) = &channels.mlp[i] {
            mask_rows(&mut layer.mlp.gate_proj, idx);
            mask_rows(&mut layer.mlp.up_proj, idx);
            mask_cols(&mut layer.mlp.down_proj, idx);
        }
    }
    reference
}

fn batch() -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
    let device = Default::default();
    let ids = Tensor::from_data(
        TensorData::new(
            (0..14).map(|i| (i * 37 % 500) as i64).collect::<Vec<_>>(),
            [2, 7],
        ),
        &device,
    );
    // Row 1 is left-padded by two positions.
    let mask = Tensor::from_data(
        TensorData::new(
            vec![
                true, true, true, true, true, true, true, false, false, true, true, true, true,
                true,
            ],
            [2, 7],
        ),
        &device,
    );
    (ids, mask)
}

/// `(hidden, every adapter's (dA, dB))` of `sum(hidden * probe)`.
fn run(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 3>,
    probe: &Tensor<B, 3>,
) -> (TensorData, Vec<(TensorData, TensorData)>) {
    let grads = (hidden.clone() * probe.clone()).sum().backward();
    let lora_grads = model
        .lora_adapters()
        .into_iter()
        .map(|(name, a)| {
            let ga = a
                .lora_a
                .grad(&grads)
                .unwrap_or_else(|| panic!("no dA for {name}"));
            let gb = a
                .lora_b
                .grad(&grads)
                .unwrap_or_else(|| panic!("no dB for {name}"));
            (ga.into_data(), gb.into_data())
        })
        .collect();
    (hidden.into_data(), lora_grads)
}

fn assert_same(
    got: &(TensorData, Vec<(TensorData, TensorData)>),
    want: &(TensorData, Vec<(TensorData, TensorData)>),
) {
    assert_close_at_scale(&got.0, &want.0);
    assert_eq!(got.1.len(), want.1.len());
    for ((ga, gb), (wa, wb)) in got.1.iter().zip(&want.1) {
        assert_close_at_scale(ga, wa);
        assert_close_at_scale(gb, wb);
    }
}

/// f32 sums taken in a different order differ by a few ulps of the *largest* terms, not of each
/// result: a LoRA gradient entry is a sum over tokens whose terms reach the tensor's maximum
/// (10^2-10^3 with these random adapters) and cancel, so the absolute tolerance follows the
/// tensor's scale (measured: the sparse-vs-masked gap is the size of the gap a 1e-7 relative
/// perturbation of the frozen weights makes). A wrong channel is off by O(scale).
fn assert_close_at_scale(got: &TensorData, want: &TensorData) {
    let scale = want.iter::<f32>().fold(1.0f32, |m, v| m.max(v.abs()));
    let tol = Tolerance::<f32>::absolute(1e-4 * scale).set_relative(1e-3);
    got.assert_approx_eq::<f32>(want, tol);
}

fn compare(targets: &[LlamaProjection], channels: FixedChannels, masked: bool) {
    let model = model(targets);
    let (ids, mask) = batch();
    let probe = Tensor::<B, 3>::random(
        [2, 7, 64],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let sparse = SparseForward {
        selector: &channels,
        split: None,
        drop_sliced_input_grad: false,
    };
    let hidden = model.forward_hidden_sparse(ids.clone(), mask.clone(), &sparse);
    let got = run(&model, hidden, &probe);
    let reference = if masked {
        masked_reference(&model, &channels)
    } else {
        model.clone()
    };
    let hidden = reference.forward_hidden(ids, mask);
    let want = run(&reference, hidden, &probe);
    assert_same(&got, &want);
}

/// tiny: d_model 64, 4 query heads and 2 KV heads of 16, d_ff 176, 2 layers.
fn random_channels(seed: u64) -> FixedChannels {
    FixedChannels {
        attn: vec![
            Some([
                subset(64, 20, seed),
                subset(32, 11, seed + 1),
                subset(32, 9, seed + 2),
                subset(64, 30, seed + 3),
            ]),
            None,
        ],
        mlp: vec![
            Some(subset(176, 17, seed + 4)),
            Some(subset(176, 1, seed + 5)),
        ],
    }
}

#[test]
fn keeping_every_channel_equals_the_dense_model() {
    let all = |n: usize| (0..n as i64).collect::<Vec<_>>();
    let channels = || FixedChannels {
        attn: vec![Some([all(64), all(32), all(32), all(64)]); 2],
        mlp: vec![Some(all(176)); 2],
    };
    compare(
        &[
            LlamaProjection::Q,
            LlamaProjection::K,
            LlamaProjection::V,
            LlamaProjection::O,
        ],
        channels(),
        false,
    );
    compare(&LlamaProjection::ALL, channels(), false);
}

/// q keeps 20 of 64 channels (at most [`llama_burn::SLICED_MAX_KEPT`]), k 11, v 9 and o 30:
/// q/k/v/o are sliced products at widths padded to multiples of 8; the MLP compact.
#[test]
fn sparse_attention_and_compact_mlp_match_masked_dense() {
    const { assert!(20.0 <= llama_burn::SLICED_MAX_KEPT * 64.0) };
    compare(
        &[
            LlamaProjection::Q,
            LlamaProjection::K,
            LlamaProjection::V,
            LlamaProjection::O,
        ],
        random_channels(7),
        true,
    );
}

/// q keeps 16 of 64 channels (at most [`llama_burn::SLICED_MAX_KEPT`]), k and v 8 of 32, o 24 of
/// 64, all multiples of 8: q/k/v/o are sliced products with no padding.
#[test]
fn sliced_attention_matches_masked_dense() {
    const { assert!(16.0 <= llama_burn::SLICED_MAX_KEPT * 64.0) };
    let mut channels = random_channels(9);
    channels.attn[0] = Some([
        subset(64, 16, 31),
        subset(32, 8, 32),
        subset(32, 8, 33),
        subset(64, 24, 34),
    ]);
    channels.attn[1] = Some([
        subset(64, 32, 35),
        subset(32, 16, 36),
        subset(32, 8, 37),
        subset(64, 8, 38),
    ]);
    compare(&LlamaProjection::ATTENTION, channels.clone(), true);
    compare(&LlamaProjection::ALL, channels, true);
}

/// q keeps 44 of 64 channels, more than [`llama_burn::SLICED_MAX_KEPT`]: q/k/v run masked-dense.
#[test]
fn sparse_attention_keeping_most_channels_matches_masked_dense() {
    const { assert!(44.0 > llama_burn::SLICED_MAX_KEPT * 64.0) };
    let mut channels = random_channels(5);
    channels.attn[0] = Some([
        subset(64, 44, 21),
        subset(32, 22, 22),
        subset(32, 25, 23),
        subset(64, 50, 24),
    ]);
    channels.attn[1] = Some([
        subset(64, 12, 25),
        subset(32, 6, 26),
        subset(32, 7, 27),
        subset(64, 12, 28),
    ]);
    compare(&LlamaProjection::ATTENTION, channels, true);
}

#[test]
fn sparse_blocks_with_adapters_everywhere_match_masked_dense() {
    compare(&LlamaProjection::ALL, random_channels(11), true);
}

#[test]
fn token_split_routes_rows_and_their_gradients() {
    let device = Default::default();
    let x = Tensor::<B, 2>::random([6, 5], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w_sparse = Tensor::<B, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    let w_dense = Tensor::<B, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    let dense_rows = [false, true, false, false, true, true];
    let split = TokenSplit::<B>::from_dense_mask(&dense_rows, &device);
    assert_eq!((split.n_dense(), split.n_sparse()), (3, 3));
    let y = split.apply(
        x.clone(),
        |x| x.matmul(w_sparse.clone()),
        |x| x.matmul(w_dense.clone()),
    );
    let probe = Tensor::<B, 2>::random([6, 3], Distribution::Normal(0.0, 1.0), &device);
    let dx = x
        .grad(&(y.clone() * probe.clone()).sum().backward())
        .unwrap();

    let x2 = x.detach().require_grad();
    let row_mask = Tensor::<B, 1>::from_data(
        TensorData::new(dense_rows.map(|d| if d { 1f32 } else { 0.0 }).to_vec(), [6]),
        &device,
    )
    .reshape([6, 1])
    .expand([6, 3]);
    let y_ref = x2.clone().matmul(w_dense) * row_mask.clone()
        + x2.clone().matmul(w_sparse) * (row_mask.ones_like() - row_mask);
    let dx_ref = x2.grad(&(y_ref.clone() * probe).sum().backward()).unwrap();
    let tol = Tolerance::<f32>::default();
    y.into_data()
        .assert_approx_eq::<f32>(&y_ref.into_data(), tol);
    dx.into_data()
        .assert_approx_eq::<f32>(&dx_ref.into_data(), tol);
}

#[test]
fn answer_tokens_dense_everywhere_is_the_dense_model() {
    let model = model(&[LlamaProjection::Q, LlamaProjection::V]);
    let (ids, mask) = batch();
    let channels = random_channels(3);
    let sparse = SparseForward {
        selector: &channels,
        split: Some(TokenSplit::from_dense_mask(
            &[true; 14],
            &Default::default(),
        )),
        drop_sliced_input_grad: false,
    };
    let probe = Tensor::<B, 3>::random(
        [2, 7, 64],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let got = run(
        &model,
        model.forward_hidden_sparse(ids.clone(), mask.clone(), &sparse),
        &probe,
    );
    let want = run(&model, model.forward_hidden(ids, mask), &probe);
    assert_same(&got, &want);
}

#[test]
fn reference_compat_drops_the_base_input_gradient_of_sliced_adapted_projections() {
    let model = model(&[LlamaProjection::Q]);
    let proj = &model.model.layers[0].self_attn.q_proj;
    let device = Default::default();
    let x = Tensor::<B, 2>::random([3, 64], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let idx = ints(&subset(64, 10, 5));
    let probe = Tensor::<B, 2>::random([3, 64], Distribution::Normal(0.0, 1.0), &device);
    let y = proj.forward_out_sliced(x.clone(), &idx, true);
    let dx = x.grad(&(y * probe.clone()).sum().backward()).unwrap();
    // Only the adapter's input gradient remains.
    let x2 = x.detach().require_grad();
    let y_ref = proj.lora.as_ref().unwrap().forward(x2.clone());
    let dx_ref = x2.grad(&(y_ref * probe).sum().backward()).unwrap();
    dx.into_data()
        .assert_approx_eq::<f32>(&dx_ref.into_data(), Tolerance::default());
}
