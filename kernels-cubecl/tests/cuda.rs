//! The fused kernels on burn-cuda in f32, f16 and bf16 (feature `cuda`, on a machine with an NVIDIA
//! GPU): forward and gradients against the f32 reference on Flex, and against the reference run on
//! burn-cuda in the same dtype (which rounds after every op). Top-k must give exactly the
//! reference's indices, in f32 and bf16; the padded gathers exactly the reference's values.
//!
//! The feature is on in every workspace build that includes `xtask` (its default `cuda` feature
//! unifies), so the tests are `#[ignore]`d: CI machines have no GPU. On the GPU machine:
//! `cargo test -p kernels-cubecl --features cuda -- --ignored`.
#![cfg(feature = "cuda")]

mod common;

use burn::backend::{Autodiff, Cuda, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend, BackendTypes};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use common::{data, random, serial};
use kernels_cubecl::top_k::{top_k_with, Method};
use kernels_cubecl::{fused_available, fused_launches, reference};

type AC = Autodiff<Cuda>;
type AF = Autodiff<Flex>;

fn load<B: AutodiffBackend, const D: usize>(
    data: &TensorData,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(data.clone().convert_dtype(dtype), (device, dtype))
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// `||a - e|| / ||e||`.
fn rel_l2(a: &[f32], e: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(e) {
        assert!(x.is_finite(), "non-finite output {x}");
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Output and input gradients of one kernel (`fused` or its reference) on backend `B`.
type Run<B> = fn(bool, DType, &<B as BackendTypes>::Device) -> Vec<Vec<f32>>;

fn rms_norm_run<B: AutodiffBackend>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let shape = [4, 3, 4096];
    let x = load::<B, 3>(&data(shape, 1, 1.5, 0.3), dtype, device).require_grad();
    let w = load::<B, 1>(&data([4096], 2, 0.2, 1.0), dtype, device);
    let r = load::<B, 3>(&data(shape, 3, 1.0, 0.0), dtype, device);
    let out = if fused {
        kernels_cubecl::rms_norm(x.clone(), w, 1e-5)
    } else {
        reference::rms_norm(x.clone(), w, 1e-5)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(x.grad(&grads).unwrap())]
}

fn swiglu_run<B: AutodiffBackend>(fused: bool, dtype: DType, device: &B::Device) -> Vec<Vec<f32>> {
    let shape = [4, 7, 1000];
    let g = load::<B, 3>(&data(shape, 4, 3.0, -0.5), dtype, device).require_grad();
    let u = load::<B, 3>(&data(shape, 5, 1.0, 0.1), dtype, device).require_grad();
    let r = load::<B, 3>(&data(shape, 6, 1.0, 0.0), dtype, device);
    let out = if fused {
        kernels_cubecl::swiglu(g.clone(), u.clone())
    } else {
        reference::swiglu(g.clone(), u.clone())
    };
    let grads = (out.clone() * r).sum().backward();
    vec![
        values(out),
        values(g.grad(&grads).unwrap()),
        values(u.grad(&grads).unwrap()),
    ]
}

fn rope_run<B: AutodiffBackend>(fused: bool, dtype: DType, device: &B::Device) -> Vec<Vec<f32>> {
    let (b, h, s, hd) = (2, 4, 33, 128);
    let x0 = load::<B, 4>(&data([b, s, h, hd], 7, 1.0, 0.0), dtype, device).require_grad();
    let cos = load::<B, 4>(&data([b, 1, s, hd], 8, 1.0, 0.0), dtype, device);
    let sin = load::<B, 4>(&data([b, 1, s, hd], 9, 1.0, 0.0), dtype, device);
    let r = load::<B, 4>(&data([b, h, s, hd], 10, 1.0, 0.0), dtype, device);
    let x = x0.clone().swap_dims(1, 2);
    let out = if fused {
        kernels_cubecl::rope(x, cos, sin)
    } else {
        reference::rope(x, cos, sin)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(x0.grad(&grads).unwrap())]
}

/// `rope_grouped` with LLaMA3's grouping (4 query heads per KV head) and head width, `x` the
/// model's heads view.
fn rope_grouped_run<B: AutodiffBackend>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let (b, h, s, hd, groups) = (2, 8, 33, 128, 4);
    let x0 = load::<B, 4>(&data([b, s, h, hd], 13, 1.0, 0.0), dtype, device).require_grad();
    let cos = load::<B, 4>(&data([b, 1, s, hd], 14, 1.0, 0.0), dtype, device);
    let sin = load::<B, 4>(&data([b, 1, s, hd], 15, 1.0, 0.0), dtype, device);
    let shape = [b, h / groups, s, groups * hd];
    let r = load::<B, 4>(&data(shape, 16, 1.0, 0.0), dtype, device);
    let x = x0.clone().swap_dims(1, 2);
    let out = if fused {
        kernels_cubecl::rope_grouped(x, cos, sin, groups)
    } else {
        reference::rope_grouped(x, cos, sin, groups)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(x0.grad(&grads).unwrap())]
}

/// The softmax over `S` keys: 515 (vectors of 1, rows streamed through a loop), 512 (vectors of
/// 8, rows held in registers, two vectors a unit).
fn softmax_run<B: AutodiffBackend, const S: usize>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let (b, h, s) = (2, 3, S);
    let scores = load::<B, 4>(&data([b, h, s, s], 11, 8.0, 0.0), dtype, device).require_grad();
    let r = load::<B, 4>(&data([b, h, s, s], 12, 1.0, 0.0), dtype, device);
    let mut valid = vec![true; b * s];
    valid[s..s + 4].iter_mut().for_each(|v| *v = false); // batch 1 left-padded by 4
    valid[100] = false;
    let valid = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [b, s]), device);
    let scale = 1.0 / (128f64).sqrt();
    let out = if fused {
        kernels_cubecl::causal_softmax(scores.clone(), valid, scale)
    } else {
        reference::causal_softmax(scores.clone(), valid, scale)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(scores.grad(&grads).unwrap())]
}

fn attention_run<B: AutodiffBackend, const S: usize>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    // LLaMA3's grouping (4 query heads per KV head) and head width, at a sequence of `S`: the
    // products in blocks of 128 positions (at 515 a partial last block, and the softmax's rows
    // streamed; at 512 held in registers, as in the model).
    let (b, nq, nkv, s, hd) = (2, 8, 2, S, 128);
    let g = nq / nkv;
    let q = load::<B, 4>(&data([b, nkv, s, g * hd], 21, 1.0, 0.0), dtype, device).require_grad();
    let k = load::<B, 4>(&data([b, nkv, s, hd], 22, 1.0, 0.0), dtype, device).require_grad();
    // V as the model passes it: a heads view of the projection's `[b, s, nkv, hd]` rows.
    let v = load::<B, 4>(&data([b, s, nkv, hd], 23, 1.0, 0.2), dtype, device).require_grad();
    let v_heads = v.clone().swap_dims(1, 2);
    let r = load::<B, 4>(&data([b, nkv, s, g * hd], 24, 1.0, 0.0), dtype, device);
    // Padding keys inside blocks (a left-padded row would attend uniformly to its block only).
    let mut valid = vec![true; b * s];
    valid[s + 200..s + 204].iter_mut().for_each(|v| *v = false);
    valid[100] = false;
    let valid = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [b, s]), device);
    let scale = 1.0 / (hd as f64).sqrt();
    let out =
        if fused {
            kernels_cubecl::attention::grouped_causal_attention_blocked::<
                B,
                kernels_cubecl::BurnMatmul,
            >(q.clone(), k.clone(), v_heads, valid, scale, 128)
        } else {
            reference::grouped_causal_attention::<B, kernels_cubecl::BurnMatmul>(
                q.clone(),
                k.clone(),
                v_heads,
                valid,
                scale,
            )
        };
    let grads = (out.clone() * r).sum().backward();
    vec![
        values(out),
        values(q.grad(&grads).unwrap()),
        values(k.grad(&grads).unwrap()),
        values(v.grad(&grads).unwrap()),
    ]
}

fn cross_entropy_run<B: AutodiffBackend>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    // 24 answer positions over LLaMA3's vocabulary, as in the csr workload's loss.
    let (n, vocab) = (24, 128_256);
    let logits = load::<B, 2>(&data([n, vocab], 13, 12.0, 3.0), dtype, device).require_grad();
    let targets: Vec<i64> = (0..n as i64)
        .map(|i| (i * 5_347 + 11) % vocab as i64)
        .collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), device);
    let r = Tensor::<B, 1>::from_data(data([n], 14, 1.0, 0.5), device);
    let out = if fused {
        kernels_cubecl::cross_entropy::row_nll(logits.clone(), targets)
    } else {
        reference::row_nll(logits.clone(), targets)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(logits.grad(&grads).unwrap())]
}

fn scatter_run<B: AutodiffBackend>(fused: bool, dtype: DType, device: &B::Device) -> Vec<Vec<f32>> {
    // 819 of LLaMA3-8B's 1024 key/value channels over 4096 tokens, added to a full-width output.
    let (rows, width) = (4096, 1024);
    let kept_cols: Vec<i64> = (0..width as i64).filter(|c| c % 5 != 2).collect();
    let k = kept_cols.len();
    let base = load::<B, 2>(&data([rows, width], 15, 1.0, 0.0), dtype, device).require_grad();
    let kept = load::<B, 2>(&data([rows, k], 16, 1.0, 0.3), dtype, device).require_grad();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(kept_cols, [k]), device);
    let r = load::<B, 2>(&data([rows, width], 17, 1.0, 0.0), dtype, device);
    let out = if fused {
        kernels_cubecl::channel_scatter::scatter_add_columns(base.clone(), kept.clone(), idx)
    } else {
        reference::scatter_add_columns(base.clone(), kept.clone(), idx)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![
        values(out),
        values(base.grad(&grads).unwrap()),
        values(kept.grad(&grads).unwrap()),
    ]
}

fn column_gather_run<B: AutodiffBackend>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    // o_proj's input in a sliced attention block: 1,020 of 4,096 channels over 4,096 tokens,
    // gathered at the padded width 1,024 and scattered back (as q/k/v's kept outputs are); `x`
    // also read by another op, whose gradient share the gather's backward adds into.
    let (rows, width, padded) = (4096, 4096, 1024);
    let kept_cols: Vec<i64> = (0..width as i64)
        .map(|c| (c * 1_657) % 4096)
        .take(1020)
        .collect();
    let k = kept_cols.len();
    let x = load::<B, 2>(&data([rows, width], 18, 1.0, 0.1), dtype, device).require_grad();
    let idx = || Tensor::<B, 1, Int>::from_data(TensorData::new(kept_cols.clone(), [k]), device);
    let r = load::<B, 2>(&data([rows, width], 19, 1.0, 0.0), dtype, device);
    let out = if fused {
        let kept = kernels_cubecl::channel_scatter::gather_columns(x.clone(), idx(), padded);
        kernels_cubecl::channel_scatter::scatter_columns(kept * 2.0, idx(), width)
    } else {
        let kept = reference::gather_columns(x.clone(), idx(), padded);
        reference::scatter_columns(kept.slice([0..rows, 0..k]) * 2.0, idx(), width)
    };
    let grads = ((out.clone() * r).sum() + (x.clone() * 0.5).sum()).backward();
    vec![values(out), values(x.grad(&grads).unwrap())]
}

fn mask_run<B: AutodiffBackend>(fused: bool, dtype: DType, device: &B::Device) -> Vec<Vec<f32>> {
    // q_proj of a csr-config block: 3276 of 4096 channels kept over 4096 tokens, the last 3
    // tokens of each 512-token sequence dense (the answer tokens).
    let (rows, width) = (4096, 4096);
    let kept_cols: Vec<i64> = (0..width as i64).filter(|c| c % 5 != 2).collect();
    let k = kept_cols.len();
    let x = load::<B, 2>(&data([rows, width], 18, 1.0, 0.1), dtype, device).require_grad();
    let r = load::<B, 2>(&data([rows, width], 19, 1.0, 0.0), dtype, device);
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(kept_cols, [k]), device);
    let dense: Vec<f32> = (0..rows)
        .map(|r| f32::from(u8::from(r % 512 >= 509)))
        .collect();
    let dense = Tensor::<B, 1>::from_data(TensorData::new(dense, [rows]), (device, DType::F32));
    let (out, dropped) = if fused {
        let keep = kernels_cubecl::channel_mask::keep_mask(idx.clone(), width, dtype);
        let dropped = kernels_cubecl::channel_mask::drop_mask(idx, width, dtype);
        let out = kernels_cubecl::channel_mask::mask_channels(x.clone(), keep, Some(dense));
        (out, dropped)
    } else {
        let keep = reference::keep_mask(idx.clone(), width, dtype);
        let dropped = reference::drop_mask(idx, width, dtype);
        (
            reference::mask_channels(x.clone(), keep, Some(dense)),
            dropped,
        )
    };
    let grads = (out.clone() * r).sum().backward();
    vec![
        values(out),
        values(x.grad(&grads).unwrap()),
        values(dropped),
    ]
}

/// Runs `cuda` (fused and reference, in each dtype) against `flex` (f32 reference); the fused
/// error must stay within `tol` of the dtype and within twice the same-dtype reference's.
fn check(name: &str, cuda: Run<AC>, flex: Run<AF>) {
    check_launches(name, cuda, flex, 2);
}

/// [`check`] for a kernel that launches `launches` fused kernels per forward + backward.
fn check_launches(name: &str, cuda: Run<AC>, flex: Run<AF>, launches: u64) {
    let _serial = serial();
    assert!(fused_available::<AC>());
    let device = Default::default();
    let expected = flex(false, DType::F32, &Default::default());
    for (dtype, tol) in [
        (DType::F32, 1e-5),
        (DType::F16, 2e-3),
        (DType::BF16, 1.5e-2),
    ] {
        let before = fused_launches();
        let fused = cuda(true, dtype, &device);
        assert_eq!(
            fused_launches() - before,
            launches,
            "{name} {dtype:?}: fused launches"
        );
        let plain = cuda(false, dtype, &device);
        for (i, ((f, p), e)) in fused.iter().zip(&plain).zip(&expected).enumerate() {
            let (ef, ep) = (rel_l2(f, e), rel_l2(p, e));
            println!("{name} {dtype:?} output {i}: fused {ef:.2e}, reference in dtype {ep:.2e}");
            assert!(
                ef <= tol || ef <= 2.0 * ep,
                "{name} {dtype:?} output {i}: fused error {ef:e}, reference's {ep:e}"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn rms_norm_on_cuda() {
    check("rms_norm", rms_norm_run::<AC>, rms_norm_run::<AF>);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn swiglu_on_cuda() {
    check("swiglu", swiglu_run::<AC>, swiglu_run::<AF>);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn rope_on_cuda() {
    check("rope", rope_run::<AC>, rope_run::<AF>);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn rope_grouped_on_cuda() {
    check(
        "rope_grouped",
        rope_grouped_run::<AC>,
        rope_grouped_run::<AF>,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn causal_softmax_on_cuda() {
    check(
        "causal_softmax 515",
        softmax_run::<AC, 515>,
        softmax_run::<AF, 515>,
    );
    check(
        "causal_softmax 512",
        softmax_run::<AC, 512>,
        softmax_run::<AF, 512>,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn causal_attention_on_cuda() {
    // Forward: V's copy heads-major, the softmax (keeping its row statistics), the output's copy
    // into rows; backward: P rebuilt and dS in one kernel, dV's copy into V's row layout.
    for (name, cuda, flex) in [
        (
            "causal_attention 515",
            attention_run::<AC, 515> as Run<AC>,
            attention_run::<AF, 515> as Run<AF>,
        ),
        (
            "causal_attention 512",
            attention_run::<AC, 512>,
            attention_run::<AF, 512>,
        ),
    ] {
        check_launches(name, cuda, flex, 5);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn cross_entropy_on_cuda() {
    check(
        "cross_entropy",
        cross_entropy_run::<AC>,
        cross_entropy_run::<AF>,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn channel_scatter_on_cuda() {
    // The position map (2 launches), the pass over the output, the gather backward.
    check_launches("channel_scatter", scatter_run::<AC>, scatter_run::<AF>, 4);
}

fn row_merge_run<B: AutodiffBackend>(
    fused: bool,
    dtype: DType,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    // A csr-config token split (the last 3 tokens of each 512-token sequence dense) at
    // SmolLM2's width, whose bf16 rows cubecl pads when it allocates (row strides != width).
    let (n, d) = (4096, 576);
    let rows: Vec<i64> = (0..n as i64).filter(|r| r % 512 >= 509).collect();
    let m = rows.len();
    let x = load::<B, 2>(&data([n, d], 20, 1.0, 0.0), dtype, device).require_grad();
    let r = load::<B, 2>(&data([n, d], 21, 1.0, 0.0), dtype, device);
    let rows = || Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [m]), device);
    let out = if fused {
        let dense = kernels_cubecl::row_merge::gather_rows(x.clone(), rows()) * 2.0;
        kernels_cubecl::row_merge::replace_rows(x.clone() * 3.0, rows(), dense)
    } else {
        let dense = reference::gather_rows(x.clone(), rows()) * 2.0;
        reference::replace_rows(x.clone() * 3.0, rows(), dense)
    };
    // A residual add after the merge, as in the model: the merge's output gradient is shared
    // with the residual stream's, so the backward zeroes its rows in a copy.
    let grads = ((out.clone() + x.clone()) * r).sum().backward();
    vec![values(out), values(x.grad(&grads).unwrap())]
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn column_gather_on_cuda() {
    // Forward the gather and the scatter (its position map, 2 launches, and its pass); backward
    // the scatter's gather, then the gather's scatter (position map and pass), added into the
    // other reader's share when that was registered first.
    check_launches(
        "column_gather",
        column_gather_run::<AC>,
        column_gather_run::<AF>,
        8,
    );
}

fn row_add_run<B: AutodiffBackend>(fused: bool, dtype: DType, device: &B::Device) -> Vec<Vec<f32>> {
    // A math-config token split (the last 128 tokens of each 512-token sequence dense) at
    // LLaMA3-8B's width: the dense rows' correction added onto the sparse path's output.
    let (n, d) = (4096, 4096);
    let rows: Vec<i64> = (0..n as i64).filter(|r| r % 512 >= 384).collect();
    let m = rows.len();
    let x = load::<B, 2>(&data([n, d], 22, 1.0, 0.0), dtype, device).require_grad();
    let r = load::<B, 2>(&data([n, d], 23, 1.0, 0.0), dtype, device);
    let rows = || Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [m]), device);
    let out = if fused {
        let correction = kernels_cubecl::row_merge::gather_rows(x.clone(), rows()) * 2.0;
        kernels_cubecl::row_merge::add_rows(x.clone() * 3.0, rows(), correction)
    } else {
        let correction = reference::gather_rows(x.clone(), rows()) * 2.0;
        reference::add_rows(x.clone() * 3.0, rows(), correction)
    };
    let grads = (out.clone() * r).sum().backward();
    vec![values(out), values(x.grad(&grads).unwrap())]
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn row_add_on_cuda() {
    // Gather and add forward; the added rows' gather and the first gather's scatter (added
    // into the other share) backward.
    check_launches("row_add", row_add_run::<AC>, row_add_run::<AF>, 4);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn row_merge_on_cuda() {
    // Gather and replacement forward; gather, zeroing and scatter backward.
    check_launches("row_merge", row_merge_run::<AC>, row_merge_run::<AF>, 5);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn channel_mask_on_cuda() {
    // The keep vector and its complement (2 launches each), the masked pass forward and
    // backward.
    check_launches("channel_mask", mask_run::<AC>, mask_run::<AF>, 6);
}

/// Channel scores with ties (many more once rounded to bf16), zeros of both signs, a NaN and a
/// `-inf`, in f32.
fn channel_scores(n: usize, seed: u64) -> Vec<f32> {
    let mut s = random(n, seed, 1.0, 0.0);
    for i in (0..n).filter(|i| i % 5 == 3) {
        s[i] = s[i / 7];
    }
    if n >= 7 {
        s[1] = s[n - 1];
        s[2] = -0.0;
        s[4] = 0.0;
        s[n / 2] = f32::NAN;
        s[n / 3] = f32::NEG_INFINITY;
    }
    s
}

fn indices<B: Backend>(t: Tensor<B, 1, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec::<i64>().unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn top_k_on_cuda() {
    let _serial = serial();
    assert!(fused_available::<Cuda>());
    let device = Default::default();
    let cases = [
        (1, 1),
        (7, 7),
        (1000, 333),
        (1024, 256),
        (4096, 1229),
        (14336, 143),
        (14336, 430),
        (14336, 1434),
        (14336, 14336),
        (33, 17),
        (2049, 2049),
        (131072, 65536),
    ];
    for dtype in [DType::F32, DType::BF16] {
        for (seed, &(n, k)) in cases.iter().enumerate() {
            let what = format!("top_k {k} of {n} in {dtype:?}");
            let data = TensorData::new(channel_scores(n, 20 + seed as u64), [n]);
            let data = data.convert_dtype(dtype);
            // The reference compares in f32, where bf16 scores are exact.
            let expected = indices(reference::top_k(
                Tensor::<Flex, 1>::from_data(
                    data.clone().convert_dtype(DType::F32),
                    &Default::default(),
                ),
                k,
            ));
            // Each kernel on every case, whichever the rule would pick.
            for method in [Method::Auto, Method::Counting, Method::RadixSelect] {
                let before = fused_launches();
                let plain = top_k_with(
                    Tensor::<Cuda, 1>::from_data(data.clone(), (&device, dtype)),
                    k,
                    method,
                );
                assert_eq!(
                    fused_launches() - before,
                    1,
                    "{what} ({method:?}): launches"
                );
                assert_eq!(indices(plain), expected, "{what} ({method:?})");
            }
            let before = fused_launches();
            let tracked = Tensor::<AC, 1>::from_data(data, (&device, dtype)).require_grad();
            let tracked = kernels_cubecl::top_k(tracked, k);
            assert_eq!(fused_launches() - before, 1, "{what}: autodiff launches");
            assert_eq!(indices(tracked), expected, "{what}: autodiff");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn kv_channel_expansion_on_cuda() {
    use kernels_cubecl::kv_channels::{query_channels_of, KvGroups};
    let _serial = serial();
    // LLaMA3-8B: 819 of 1024 KV channels kept, 4 query heads per KV head of 128.
    let kv: Vec<i64> = (0..819).map(|i| (i * 7919 + 3) % 1024).collect();
    let data = TensorData::new(kv, [819]);
    let host = |t: TensorData| t.convert::<i64>().into_vec::<i64>().unwrap();
    for layout in [KvGroups::Heads { head_dim: 128 }, KvGroups::Consecutive] {
        let expected = host(
            reference::query_channels_of(
                Tensor::<AF, 1, Int>::from_data(data.clone(), &Default::default()),
                4,
                layout,
            )
            .into_data(),
        );
        let before = fused_launches();
        let fused = query_channels_of(
            Tensor::<AC, 1, Int>::from_data(data.clone(), &Default::default()),
            4,
            layout,
        );
        assert_eq!(
            fused_launches() - before,
            1,
            "query_channels_of {layout:?}: launches"
        );
        assert_eq!(
            host(fused.into_data()),
            expected,
            "query_channels_of {layout:?}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn quadratic_form_norms_on_cuda() {
    let _serial = serial();
    // LLaMA3-8B's attention estimate: rank 8 for each of q, k, v (k = 24), 6144 channels; a
    // full `w`, then the estimator's block-diagonal one (q's 4096 channels read rows 0..8, k's
    // and v's 1024 each the next 8).
    let (k, out) = (24, 6144);
    let z = data([4096, k], 41, 1.0, 0.0);
    let zf = Tensor::<AF, 2>::from_data(z.clone(), &Default::default());
    let gram = zf.clone().transpose().matmul(zf);
    for block_diagonal in [false, true] {
        let mut w = data([k, out], 42, 1.0, 0.0);
        if block_diagonal {
            let block = |c: usize| if c < 4096 { 0 } else { 1 + (c - 4096) / 1024 };
            let mut v = w.to_vec::<f32>().unwrap();
            for (i, row) in v.chunks_mut(out).enumerate() {
                for (c, x) in row.iter_mut().enumerate() {
                    if i / 8 != block(c) {
                        *x = 0.0;
                    }
                }
            }
            w = TensorData::new(v, [k, out]);
        }
        let what = format!("quadratic_form_norms (block-diagonal: {block_diagonal})");
        let expected = values(reference::quadratic_form_norms(
            gram.clone(),
            Tensor::from_data(w.clone(), &Default::default()),
        ));
        let device = Default::default();
        let gram = Tensor::<AC, 2>::from_data(gram.clone().into_data(), &device);
        let before = fused_launches();
        let fused = values(kernels_cubecl::gram_norms::quadratic_form_norms(
            gram,
            Tensor::from_data(w, &device),
        ));
        assert_eq!(fused_launches() - before, 1, "{what}: launches");
        let err = rel_l2(&fused, &expected);
        println!("{what}: rel. err {err:.2e}");
        assert!(err <= 1e-5, "{what}: rel. err {err:e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn masked_gram_on_cuda() {
    let _serial = serial();
    // LLaMA3-8B's attention estimate: z = x w1 for 8 x 512 tokens at rank 3 x 8, in bf16 as in
    // training and in f32; a few padding positions.
    let (b, s, k) = (8, 512, 24);
    let z = data([b * s, k], 43, 1.0, 0.0);
    let valid: Vec<bool> = (0..b * s).map(|i| i % s >= 5).collect();
    let tokens = TensorData::new(valid, [b, s]);
    let device = Default::default();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-5)] {
        let zc = load::<AC, 2>(&z, dtype, &device);
        // The reference on the values the kernel reads (rounded to bf16 for bf16).
        let rounded = zc.clone().cast(DType::F32).into_data();
        let expected = values(reference::masked_gram(
            Tensor::<AF, 2>::from_data(rounded, &Default::default()),
            Tensor::<AF, 2, Bool>::from_data(tokens.clone(), &Default::default()),
            true,
        ));
        let before = fused_launches();
        let fused = values(kernels_cubecl::gram_norms::masked_gram(
            zc,
            Tensor::<AC, 2, Bool>::from_data(tokens.clone(), &device),
            true,
        ));
        assert_eq!(
            fused_launches() - before,
            1,
            "masked_gram {dtype:?}: launches"
        );
        let err = rel_l2(&fused, &expected);
        println!("masked_gram {dtype:?}: rel. err {err:.2e}");
        assert!(err <= tol, "masked_gram {dtype:?}: rel. err {err:e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn mlp_channel_scores_on_cuda() {
    let _serial = serial();
    // LLaMA3-8B's MLP estimate: 8 sequence means, gate and up side by side (14336 channels each).
    let (rows, d_ff) = (8, 14336);
    let both = data([rows, 2 * d_ff], 31, 2.0, 0.0);
    let halves = |t: Tensor<AF, 2>| (t.clone().narrow(1, 0, d_ff), t.narrow(1, d_ff, d_ff));
    let (gate, up) = halves(Tensor::from_data(both.clone(), &Default::default()));
    let expected = values(reference::mlp_channel_scores(gate, up));
    let device = Default::default();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        let stacked = load::<AC, 2>(&both, dtype, &device);
        let before = fused_launches();
        let fused = values(kernels_cubecl::mlp_scores::mlp_channel_scores(
            stacked.clone().narrow(1, 0, d_ff),
            stacked.narrow(1, d_ff, d_ff),
        ));
        assert_eq!(
            fused_launches() - before,
            1,
            "mlp_channel_scores {dtype:?}: launches"
        );
        let err = rel_l2(&fused, &expected);
        println!("mlp_channel_scores {dtype:?}: rel. err {err:.2e}");
        assert!(err <= tol, "mlp_channel_scores {dtype:?}: rel. err {err:e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn mlp_channel_scores_of_factors_on_cuda() {
    let _serial = serial();
    // LLaMA3-8B's MLP estimator: 8 sequence means through rank-8 factors of gate and up (side
    // by side in one `z`), 14336 channels each.
    let (rows, r, d_ff) = (8, 8, 14336);
    let z = data([rows, 2 * r], 33, 1.0, 0.0);
    let (wg, wu) = (data([r, d_ff], 34, 0.5, 0.0), data([r, d_ff], 35, 0.5, 0.0));
    let host = |d: &TensorData| Tensor::<AF, 2>::from_data(d.clone(), &Default::default());
    let expected = values(reference::mlp_channel_scores_of_factors(
        host(&z),
        host(&wg),
        host(&wu),
    ));
    let device = Default::default();
    let before = fused_launches();
    let fused = values(kernels_cubecl::mlp_scores::mlp_channel_scores_of_factors(
        Tensor::<AC, 2>::from_data(z, &device),
        Tensor::from_data(wg, &device),
        Tensor::from_data(wu, &device),
    ));
    assert_eq!(
        fused_launches() - before,
        1,
        "mlp_channel_scores_of_factors: launches"
    );
    let err = rel_l2(&fused, &expected);
    println!("mlp_channel_scores_of_factors: rel. err {err:.2e}");
    assert!(
        err <= 1e-5,
        "mlp_channel_scores_of_factors: rel. err {err:e}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn sequence_means_on_cuda() {
    let _serial = serial();
    // LLaMA3-8B's MLP input (two kernels: chunks, then their sum), and the MLP estimator's
    // `[b, s, 2r]` product (one cube per sequence): 8 sequences of 512, the first 100 positions
    // of one padding.
    for (d, launches) in [(4096, 2), (16, 1)] {
        let (b, s) = (8, 512);
        let x = data([b, s, d], 21, 1.0, 0.3);
        let mut valid = vec![true; b * s];
        valid[s..s + 100].iter_mut().for_each(|v| *v = false);
        let tokens = TensorData::new(valid, [b, s]);
        let expected = values(reference::sequence_means(
            Tensor::<AF, 3>::from_data(x.clone(), &Default::default()),
            Tensor::<AF, 2, Bool>::from_data(tokens.clone(), &Default::default()),
            true,
        ));
        let device = Default::default();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let before = fused_launches();
            let fused = values(kernels_cubecl::sequence_mean::sequence_means(
                load::<AC, 3>(&x, dtype, &device),
                Tensor::<AC, 2, Bool>::from_data(tokens.clone(), &device),
                true,
            ));
            let what = format!("sequence_means d={d} {dtype:?}");
            assert_eq!(fused_launches() - before, launches, "{what}: launches");
            let err = rel_l2(&fused, &expected);
            println!("{what}: rel. err {err:.2e}");
            assert!(err <= tol, "{what}: rel. err {err:e}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn gather_padded_on_cuda() {
    use kernels_cubecl::gather_padded::{gather_columns_padded, gather_rows_padded};
    let _serial = serial();
    // 143 of LLaMA3-8B's 14336 MLP channels padded to 144: gate/up's rows, down's columns.
    let (ff, d, padded) = (14336, 4096, 144);
    let kept: Vec<i64> = (0..143).map(|i| (i * 9973 + 17) % ff as i64).collect();
    let device = Default::default();
    let idx = || Tensor::<AC, 1, Int>::from_data(TensorData::new(kept.clone(), [143]), &device);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let gate = load::<AC, 2>(&data([ff, d], 22, 1.0, 0.0), dtype, &device);
        let down = load::<AC, 2>(&data([d, ff], 23, 1.0, 0.0), dtype, &device);
        let before = fused_launches();
        let rows = gather_rows_padded(gate.clone(), idx(), padded);
        let cols = gather_columns_padded(down.clone(), idx(), padded);
        assert_eq!(
            fused_launches() - before,
            2,
            "gather padded {dtype:?}: launches"
        );
        assert_eq!(
            values(rows),
            values(reference::gather_rows_padded(gate, idx(), padded)),
            "gather_rows_padded {dtype:?}"
        );
        assert_eq!(
            values(cols),
            values(reference::gather_columns_padded(down, idx(), padded)),
            "gather_columns_padded {dtype:?}"
        );
    }
}

/// The optimizer's multi-tensor kernels on CUDA (f32): the global norm of 40 gradients (LoRA
/// factors of LLaMA3-8B's shapes, then small odd ones) and one AdamW batch of their parameters
/// scaled by its clip factor, 16 tensors a launch, against the references on Flex.
#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo test -p kernels-cubecl --features cuda -- --ignored` there"]
fn optimizer_batch_on_cuda() {
    use kernels_cubecl::adamw::{self, AdamWBatch, AdamWStep, GlobalNorm};
    let _serial = serial();
    let (device, flex) = (Default::default(), Default::default());
    // 30 in vectors of 4, then 10 of 85 elements (vectors of 1).
    let shapes: Vec<[usize; 2]> = (0..40)
        .map(|i| match i {
            30.. => [17, 5],
            _ => [[32, 4096], [4096, 32], [1024, 32]][i % 3],
        })
        .collect();
    let params: Vec<TensorData> = (0..40)
        .map(|i| data(shapes[i], 500 + i as u64, 1.0, 0.0))
        .collect();
    let grads: Vec<TensorData> = (0..40)
        .map(|i| data(shapes[i], 600 + i as u64, 0.5, 0.0))
        .collect();
    let (mut norm_cuda, mut norm_flex) = (GlobalNorm::<Cuda>::new(), GlobalNorm::<Flex>::new());
    for g in &grads {
        norm_cuda.push(Tensor::<Cuda, 2>::from_data(g.clone(), &device));
        norm_flex.push(Tensor::<Flex, 2>::from_data(g.clone(), &flex));
    }
    let before = adamw::fused_launches();
    let (norm, factor) = norm_cuda.clip(1.0).unwrap();
    // Sums of squares: 16 + 14 tensors, then 10; and the norm.
    assert_eq!(adamw::fused_launches() - before, 4, "global norm launches");
    let (norm_ref, factor_ref) = norm_flex.clip(1.0).unwrap();
    assert!(rel_l2(&values(norm), &values(norm_ref)) < 1e-5, "norm");
    assert!(
        rel_l2(&values(factor.clone()), &values(factor_ref.clone())) < 1e-5,
        "factor"
    );

    let hyper = AdamWStep {
        lr: 3e-3,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
        time: 1,
    };
    // The reference steps with the kernel's factor: its sum ran in another order.
    let factor_ref = Tensor::<Flex, 1>::from_floats(values(factor.clone()).as_slice(), &flex);
    let mut batch = AdamWBatch::new(factor);
    assert_eq!(batch.params_per_launch(), Some(16));
    let stepped: Vec<_> = (0..40)
        .map(|i| {
            let p = Tensor::<Cuda, 2>::from_data(params[i].clone(), &device);
            let g = Tensor::<Cuda, 2>::from_data(grads[i].clone(), &device);
            batch.push(p, g.clone(), g.zeros_like(), g.zeros_like(), hyper)
        })
        .collect();
    let before = adamw::fused_launches();
    batch.finish();
    assert_eq!(adamw::fused_launches() - before, 3, "AdamW launches");
    for (i, (p, m, v)) in stepped.into_iter().enumerate() {
        let g = Tensor::<Flex, 2>::from_data(grads[i].clone(), &flex);
        let (p_ref, m_ref, v_ref) = adamw::reference::adamw_update(
            Tensor::<Flex, 2>::from_data(params[i].clone(), &flex),
            g.clone(),
            g.zeros_like(),
            g.zeros_like(),
            factor_ref.clone(),
            hyper,
        );
        for (what, got, want) in [("param", p, p_ref), ("m", m, m_ref), ("v", v, v_ref)] {
            let err = rel_l2(&values(got), &values(want));
            assert!(err < 1e-5, "{what} of parameter {i}: rel. err {err:e}");
        }
    }
}
