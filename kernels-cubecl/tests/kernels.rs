//! The fused kernels against their burn-tensor references, forward and gradients, on random
//! inputs: the kernels run on burn-wgpu (lavapipe on a CPU-only machine), the references on Flex.
//!
//! No test is skipped for want of a device: without a Vulkan driver creating the wgpu device
//! panics, and every test here fails.

mod common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{data, random, serial};

use kernels_cubecl::top_k::{top_k_with, Method};
use kernels_cubecl::{
    causal_softmax, channel_mask, channel_scatter, cross_entropy, fused_available, fused_launches,
    gather_padded, gram_norms, kv_channels, mlp_scores, reference, rms_norm, rope, rope_grouped,
    row_merge, sequence_mean, swiglu, top_k,
};

type W = Wgpu;
type AW = Autodiff<Wgpu>;
type AF = Autodiff<Flex>;

/// Relative tolerance of f32 comparisons.
const RTOL: f32 = 1e-4;

/// Runs `f`, checking that it launched exactly `n` fused kernels (so a silent fallback to the
/// reference fails the test).
fn launches<T>(n: u64, what: &str, f: impl FnOnce() -> T) -> T {
    let before = fused_launches();
    let out = f();
    assert_eq!(
        fused_launches() - before,
        n,
        "{what}: fused kernel launches"
    );
    out
}

fn wgpu() -> WgpuDevice {
    let device = WgpuDevice::default();
    // Fails here, loudly, when no adapter (no Vulkan driver) is found.
    let probe = Tensor::<W, 1>::from_floats([1.0, 2.0], &device);
    assert_eq!(probe.sum().into_scalar(), 3.0);
    device
}

fn flex() -> burn::backend::flex::FlexDevice {
    Default::default()
}

fn tensor<B: Backend, const D: usize>(data: &TensorData, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(data.clone(), device)
}

/// `|a - e| <= RTOL (|e| + max|e| / 10)` everywhere (relative, with a floor at a tenth of the
/// largest value so that entries near zero are compared at the tensor's scale).
fn assert_close<B1: Backend, B2: Backend, const D: usize>(
    actual: Tensor<B1, D>,
    expected: Tensor<B2, D>,
    what: &str,
) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes");
    let a = actual.into_data().to_vec::<f32>().unwrap();
    let e = expected.into_data().to_vec::<f32>().unwrap();
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = (0usize, 0f32);
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!(x.is_finite(), "{what}: non-finite {x} at {i}");
        let err = (x - y).abs() / (y.abs() + scale / 10.0).max(f32::MIN_POSITIVE);
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let (i, err) = worst;
    assert!(
        err <= RTOL,
        "{what}: relative error {err:e} at {i}: {} vs {}",
        a[i],
        e[i]
    );
}

#[test]
fn fused_path_on_wgpu_reference_elsewhere() {
    let _serial = serial();
    assert!(fused_available::<W>());
    assert!(fused_available::<AW>());
    assert!(!fused_available::<Flex>());
    assert!(!fused_available::<AF>());
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

const EPS: f64 = 1e-5;

fn rms_norm_case<const D: usize>(shape: [usize; D], seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let width = shape[D - 1];
    let x = data(shape, seed, 1.5, 0.3);
    let w = data([width], seed + 1, 0.2, 1.0);
    let r = data(shape, seed + 2, 1.0, 0.0);

    // Forward, plain backend.
    let what = format!("rms_norm {shape:?}");
    let fused = launches(1, &what, || {
        rms_norm(tensor::<W, D>(&x, &dw), tensor(&w, &dw), EPS)
    });
    let expected = reference::rms_norm(tensor::<Flex, D>(&x, &df), tensor(&w, &df), EPS);
    assert_close(fused, expected, &what);

    // Forward and dx under autodiff.
    let xw = tensor::<AW, D>(&x, &dw).require_grad();
    let out = launches(1, &what, || rms_norm(xw.clone(), tensor(&w, &dw), EPS));
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let xf = tensor::<AF, D>(&x, &df).require_grad();
    let out_ref = reference::rms_norm(xf.clone(), tensor(&w, &df), EPS);
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("rms_norm autodiff {shape:?}"));
    assert_close(
        xw.grad(&grads).unwrap(),
        xf.grad(&grads_ref).unwrap(),
        &format!("rms_norm dx {shape:?}"),
    );
}

#[test]
fn rms_norm_matches_reference() {
    let _serial = serial();
    rms_norm_case([2, 3, 64], 1);
    rms_norm_case([5, 1000], 2);
    rms_norm_case([3, 1001], 3); // odd width: scalar loads
    rms_norm_case([2, 2, 4096], 4);
    rms_norm_case([7, 96], 5); // fewer vectors than a plane
}

/// A residual stream: `x` feeds the norm and, deeper, the residual add, whose share of `dx`
/// burn registers first; the norm's backward kernel adds it in (`gradient_sum`) instead of burn.
#[test]
fn rms_norm_sums_the_residual_gradient() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let shape = [3, 5, 256];
    let x = data(shape, 31, 1.5, 0.3);
    let w = data([256], 32, 0.2, 1.0);
    let r = data(shape, 33, 1.0, 0.0);
    let r2 = data(shape, 34, 1.0, 0.0);
    let block = |n: Tensor<AW, 3>| (n * tensor::<AW, 3>(&r, &dw)).tanh();
    let xw = tensor::<AW, 3>(&x, &dw).require_grad();
    let h = xw.clone()
        + block(launches(1, "rms_norm", || {
            rms_norm(xw.clone(), tensor(&w, &dw), EPS)
        }));
    let grads = launches(1, "rms_norm summed backward", || {
        (h * tensor(&r2, &dw)).sum().backward()
    });

    let xf = tensor::<AF, 3>(&x, &df).require_grad();
    let n = reference::rms_norm(xf.clone(), tensor(&w, &df), EPS);
    let h = xf.clone() + (n * tensor::<AF, 3>(&r, &df)).tanh();
    let grads_ref = (h * tensor(&r2, &df)).sum().backward();
    assert_close(
        xw.grad(&grads).unwrap(),
        xf.grad(&grads_ref).unwrap(),
        "dx of x + f(rms_norm(x))",
    );
}

#[test]
fn rms_norm_strided_input() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let x = data([64, 6], 11, 1.0, 0.0);
    let w = data([64], 12, 0.2, 1.0);
    let fused = launches(1, "rms_norm", || {
        rms_norm(tensor::<W, 2>(&x, &dw).transpose(), tensor(&w, &dw), EPS)
    });
    let expected =
        reference::rms_norm(tensor::<Flex, 2>(&x, &df).transpose(), tensor(&w, &df), EPS);
    assert_close(fused, expected, "rms_norm of a transposed view");
}

#[test]
fn rms_norm_trainable_weight_takes_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let shape = [4, 48];
    let x = data(shape, 21, 1.0, 0.0);
    let w = data([48], 22, 0.2, 1.0);
    let r = data(shape, 23, 1.0, 0.0);
    let (xw, ww) = (
        tensor::<AW, 2>(&x, &dw).require_grad(),
        tensor::<AW, 1>(&w, &dw).require_grad(),
    );
    let grads = launches(0, "rms_norm with a trainable weight", || {
        (rms_norm(xw.clone(), ww.clone(), EPS) * tensor(&r, &dw))
            .sum()
            .backward()
    });
    let (xf, wf) = (
        tensor::<AF, 2>(&x, &df).require_grad(),
        tensor::<AF, 1>(&w, &df).require_grad(),
    );
    let grads_ref = (reference::rms_norm(xf.clone(), wf.clone(), EPS) * tensor(&r, &df))
        .sum()
        .backward();
    assert_close(xw.grad(&grads).unwrap(), xf.grad(&grads_ref).unwrap(), "dx");
    assert_close(
        ww.grad(&grads).unwrap(),
        wf.grad(&grads_ref).unwrap(),
        "dweight",
    );
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

fn swiglu_case<const D: usize>(shape: [usize; D], seed: u64, need_up_grad: bool) {
    let (dw, df) = (wgpu(), flex());
    let gate = data(shape, seed, 3.0, -0.5);
    let up = data(shape, seed + 1, 1.0, 0.1);
    let r = data(shape, seed + 2, 1.0, 0.0);

    let what = format!("swiglu {shape:?}");
    let fused = launches(1, &what, || {
        swiglu(tensor::<W, D>(&gate, &dw), tensor(&up, &dw))
    });
    let expected = reference::swiglu(tensor::<Flex, D>(&gate, &df), tensor(&up, &df));
    assert_close(fused, expected, &what);

    let (gw, mut uw) = (tensor::<AW, D>(&gate, &dw).require_grad(), tensor(&up, &dw));
    let (gf, mut uf) = (tensor::<AF, D>(&gate, &df).require_grad(), tensor(&up, &df));
    if need_up_grad {
        uw = uw.require_grad();
        uf = uf.require_grad();
    }
    let out = launches(1, &what, || swiglu(gw.clone(), uw.clone()));
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let out_ref = reference::swiglu(gf.clone(), uf.clone());
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("swiglu autodiff {shape:?}"));
    assert_close(
        gw.grad(&grads).unwrap(),
        gf.grad(&grads_ref).unwrap(),
        &format!("swiglu d_gate {shape:?}"),
    );
    if need_up_grad {
        assert_close(
            uw.grad(&grads).unwrap(),
            uf.grad(&grads_ref).unwrap(),
            &format!("swiglu d_up {shape:?}"),
        );
    } else {
        assert!(uw.grad(&grads).is_none());
    }
}

#[test]
fn swiglu_matches_reference() {
    let _serial = serial();
    swiglu_case([3, 37, 129], 31, true); // odd: scalar loads
    swiglu_case([2, 8, 256], 32, true);
    swiglu_case([1, 1000], 33, false); // only the gate needs a gradient
    swiglu_case([5], 34, true);
}

#[test]
fn swiglu_strided_inputs() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let gate = data([40, 24], 41, 2.0, 0.0);
    let up = data([24, 40], 42, 1.0, 0.0);
    let fused = launches(1, "swiglu", || {
        swiglu(
            tensor::<W, 2>(&gate, &dw),
            tensor::<W, 2>(&up, &dw).transpose(),
        )
    });
    let expected = reference::swiglu(
        tensor::<Flex, 2>(&gate, &df),
        tensor::<Flex, 2>(&up, &df).transpose(),
    );
    assert_close(fused, expected, "swiglu of a transposed view");
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// LLaMA's angles: `cat([freqs, freqs])` of positions times inverse frequencies, `[b, 1, s, hd]`.
fn llama_angles(b: usize, s: usize, hd: usize) -> (TensorData, TensorData) {
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for bi in 0..b {
        for pos in 0..s {
            for j in 0..hd {
                let inv_freq = 500000f32.powf(-((j % half) as f32 * 2.0) / hd as f32);
                let angle = (pos + 3 * bi) as f32 * inv_freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (
        TensorData::new(cos, [b, 1, s, hd]),
        TensorData::new(sin, [b, 1, s, hd]),
    )
}

/// `x0` `[b, s, h, hd]` viewed as the model does: `[b, h, s, hd]` through `swap_dims(1, 2)`.
fn heads_view<B: Backend>(x0: Tensor<B, 4>) -> Tensor<B, 4> {
    x0.swap_dims(1, 2)
}

fn rope_case(b: usize, h: usize, s: usize, hd: usize, angles: (TensorData, TensorData), seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let (cos, sin) = angles;
    let x0 = data([b, s, h, hd], seed, 1.0, 0.0);
    let r = data([b, h, s, hd], seed + 1, 1.0, 0.0);
    let what = format!("rope b={b} h={h} s={s} hd={hd}");

    let fused = launches(1, &what, || {
        rope(
            heads_view(tensor::<W, 4>(&x0, &dw)),
            tensor(&cos, &dw),
            tensor(&sin, &dw),
        )
    });
    let expected = reference::rope(
        heads_view(tensor::<Flex, 4>(&x0, &df)),
        tensor(&cos, &df),
        tensor(&sin, &df),
    );
    assert_close(fused, expected, &what);

    let xw = tensor::<AW, 4>(&x0, &dw).require_grad();
    let out = launches(1, &what, || {
        rope(heads_view(xw.clone()), tensor(&cos, &dw), tensor(&sin, &dw))
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let xf = tensor::<AF, 4>(&x0, &df).require_grad();
    let out_ref = reference::rope(heads_view(xf.clone()), tensor(&cos, &df), tensor(&sin, &df));
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} autodiff"));
    let dx = xw.grad(&grads).unwrap();
    // dx comes back in x0's own layout, contiguous `[b, s, h, hd]`: no copy on its way back to
    // the projection that produced x0.
    let strides = dx.clone().into_primitive().tensor().meta.strides().to_vec();
    assert_eq!(strides, [s * h * hd, h * hd, hd, 1], "{what} dx layout");
    assert_close(dx, xf.grad(&grads_ref).unwrap(), &format!("{what} dx"));
}

#[test]
fn rope_matches_reference_with_llama_angles() {
    let _serial = serial();
    rope_case(2, 3, 11, 64, llama_angles(2, 11, 64), 51);
    rope_case(1, 4, 5, 128, llama_angles(1, 5, 128), 52);
}

#[test]
fn rope_matches_reference_with_arbitrary_angles() {
    let _serial = serial();
    // Halves of `cos`/`sin` that differ check that the backward is the exact transpose.
    let angles = |b, s, hd, seed| {
        (
            data([b, 1, s, hd], seed, 1.0, 0.0),
            data([b, 1, s, hd], seed + 1, 1.0, 0.0),
        )
    };
    rope_case(2, 3, 11, 64, angles(2, 11, 64, 61), 63);
    rope_case(2, 2, 7, 6, angles(2, 7, 6, 64), 66); // half of 3: scalar loads
    rope_case(3, 2, 4, 64, angles(1, 4, 64, 67), 69); // angles broadcast over the batch
}

#[test]
fn rope_contiguous_input() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let (cos, sin) = llama_angles(2, 9, 64);
    let x = data([2, 4, 9, 64], 71, 1.0, 0.0);
    let fused = launches(1, "rope", || {
        rope(
            tensor::<W, 4>(&x, &dw),
            tensor(&cos, &dw),
            tensor(&sin, &dw),
        )
    });
    let expected = reference::rope(
        tensor::<Flex, 4>(&x, &df),
        tensor(&cos, &df),
        tensor(&sin, &df),
    );
    assert_close(fused, expected, "rope of a contiguous x");
}

/// `x0` as `[b, h, s, hd]`: the model's heads view of a `[b, s, h, hd]` `x0` with `viewed`, else
/// `x0` itself.
fn heads_of<B: Backend>(x0: Tensor<B, 4>, viewed: bool) -> Tensor<B, 4> {
    if viewed {
        heads_view(x0)
    } else {
        x0
    }
}

/// The strides of `t`'s storage.
fn strides_of(t: &Tensor<W, 4>) -> Vec<usize> {
    t.clone().into_primitive().tensor().meta.strides().to_vec()
}

/// `rope_grouped` on wgpu against `reference::rope_grouped` on Flex: the forward plain and under
/// `Autodiff`, and `dx` through `(out * r).sum()`, each in one launch; `x` the heads view of a
/// `[b, s, h, hd]` tensor (`viewed`) or a contiguous `[b, h, s, hd]` one. The output comes back
/// contiguous, `dx` in `x`'s layout.
#[allow(clippy::too_many_arguments)]
fn rope_grouped_case(
    b: usize,
    h: usize,
    s: usize,
    hd: usize,
    groups: usize,
    viewed: bool,
    angles: (TensorData, TensorData),
    seed: u64,
) {
    let (dw, df) = (wgpu(), flex());
    let (cos, sin) = angles;
    let nkv = h / groups;
    let stored = if viewed { [b, s, h, hd] } else { [b, h, s, hd] };
    let x0 = data(stored, seed, 1.0, 0.0);
    let r = data([b, nkv, s, groups * hd], seed + 1, 1.0, 0.0);
    let what = format!("rope_grouped b={b} h={h} s={s} hd={hd} groups={groups} viewed={viewed}");
    let contiguous = [nkv * s * groups * hd, s * groups * hd, groups * hd, 1];

    let fused = launches(1, &what, || {
        rope_grouped(
            heads_of(tensor::<W, 4>(&x0, &dw), viewed),
            tensor(&cos, &dw),
            tensor(&sin, &dw),
            groups,
        )
    });
    assert_eq!(strides_of(&fused), contiguous, "{what}: output layout");
    if groups == 1 {
        // Exactly `rope`: the same kernel, the same layout.
        let plain = launches(1, &what, || {
            rope(
                heads_of(tensor::<W, 4>(&x0, &dw), viewed),
                tensor(&cos, &dw),
                tensor(&sin, &dw),
            )
        });
        assert_eq!(
            fused.clone().into_data().to_vec::<f32>().unwrap(),
            plain.into_data().to_vec::<f32>().unwrap(),
            "{what}: rope_grouped with one group against rope"
        );
    }
    let expected = reference::rope_grouped(
        heads_of(tensor::<Flex, 4>(&x0, &df), viewed),
        tensor(&cos, &df),
        tensor(&sin, &df),
        groups,
    );
    assert_close(fused, expected, &what);

    let xw = tensor::<AW, 4>(&x0, &dw).require_grad();
    let out = launches(1, &what, || {
        rope_grouped(
            heads_of(xw.clone(), viewed),
            tensor(&cos, &dw),
            tensor(&sin, &dw),
            groups,
        )
    });
    assert_eq!(
        strides_of(&out.clone().inner()),
        contiguous,
        "{what}: autodiff output layout"
    );
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let xf = tensor::<AF, 4>(&x0, &df).require_grad();
    let out_ref = reference::rope_grouped(
        heads_of(xf.clone(), viewed),
        tensor(&cos, &df),
        tensor(&sin, &df),
        groups,
    );
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} autodiff"));
    let dx = xw.grad(&grads).unwrap();
    // dx in x0's own layout (for the heads view, contiguous `[b, s, h, hd]`: no copy on its way
    // back to the projection that produced x0).
    let [_, d1, d2, d3] = stored;
    assert_eq!(
        strides_of(&dx),
        [d1 * d2 * d3, d2 * d3, d3, 1],
        "{what}: dx layout"
    );
    assert_close(dx, xf.grad(&grads_ref).unwrap(), &format!("{what} dx"));
}

#[test]
fn rope_grouped_matches_reference() {
    let _serial = serial();
    // Halves of `cos`/`sin` that differ check that the backward is the exact transpose.
    let angles = |b, s, hd, seed| {
        (
            data([b, 1, s, hd], seed, 1.0, 0.0),
            data([b, 1, s, hd], seed + 1, 1.0, 0.0),
        )
    };
    for groups in [1, 2, 4] {
        for viewed in [false, true] {
            let seed = 200 + 10 * groups as u64 + viewed as u64;
            rope_grouped_case(
                2,
                8,
                13,
                8,
                groups,
                viewed,
                angles(2, 13, 8, seed),
                seed + 2,
            );
            // Half of 3: scalar loads.
            rope_grouped_case(
                2,
                8,
                13,
                6,
                groups,
                viewed,
                angles(2, 13, 6, seed),
                seed + 4,
            );
        }
    }
    // LLaMA's angles and head width, broadcast over the batch.
    rope_grouped_case(3, 8, 5, 64, 4, true, llama_angles(1, 5, 64), 251);
}

/// The backward reads a `dy` that is not contiguous (here the grouped output went through a
/// transposed view before the loss) through its strides, still in one launch.
#[test]
fn rope_grouped_backward_of_a_strided_gradient() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let (b, h, s, hd, groups) = (2, 6, 7, 8, 3);
    let nkv = h / groups;
    let (cos, sin) = llama_angles(b, s, hd);
    let x0 = data([b, s, h, hd], 261, 1.0, 0.0);
    let r = data([b, s, nkv, groups * hd], 262, 1.0, 0.0);
    let what = "rope_grouped with a strided dy";

    let xw = tensor::<AW, 4>(&x0, &dw).require_grad();
    let out = launches(1, what, || {
        rope_grouped(
            heads_view(xw.clone()),
            tensor(&cos, &dw),
            tensor(&sin, &dw),
            groups,
        )
    });
    let grads = launches(1, what, || {
        (out.swap_dims(1, 2) * tensor(&r, &dw)).sum().backward()
    });
    let xf = tensor::<AF, 4>(&x0, &df).require_grad();
    let out_ref = reference::rope_grouped(
        heads_view(xf.clone()),
        tensor(&cos, &df),
        tensor(&sin, &df),
        groups,
    );
    let grads_ref = (out_ref.swap_dims(1, 2) * tensor(&r, &df)).sum().backward();
    assert_close(xw.grad(&grads).unwrap(), xf.grad(&grads_ref).unwrap(), what);
}

#[test]
#[should_panic(expected = "8 heads do not split into groups of 3")]
fn rope_grouped_of_uneven_groups_panics() {
    let dw = wgpu();
    let (cos, sin) = llama_angles(1, 4, 8);
    let x = data([1, 8, 4, 8], 271, 1.0, 0.0);
    rope_grouped(
        tensor::<W, 4>(&x, &dw),
        tensor(&cos, &dw),
        tensor(&sin, &dw),
        3,
    );
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

/// `key_valid` `[b, kv]`: every key valid except, per batch, those `invalid` lists.
fn key_valid<B: Backend>(
    b: usize,
    kv: usize,
    invalid: &[&[usize]],
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let mut valid = vec![true; b * kv];
    for (bi, keys) in invalid.iter().enumerate() {
        for &j in *keys {
            valid[bi * kv + j] = false;
        }
    }
    Tensor::from_data(TensorData::new(valid, [b, kv]), device)
}

fn softmax_case(b: usize, h: usize, s: usize, invalid: &[&[usize]], seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let scale = 0.125;
    let scores = data([b, h, s, s], seed, 8.0, 0.0);
    let r = data([b, h, s, s], seed + 1, 1.0, 0.0);
    let what = format!("causal_softmax b={b} h={h} s={s}");

    let fused = launches(1, &what, || {
        causal_softmax(
            tensor::<W, 4>(&scores, &dw),
            key_valid::<W>(b, s, invalid, &dw),
            scale,
        )
    });
    let expected = reference::causal_softmax(
        tensor::<Flex, 4>(&scores, &df),
        key_valid::<Flex>(b, s, invalid, &df),
        scale,
    );
    assert_close(fused.clone(), expected, &what);

    // Rows sum to one; masked keys get exactly zero unless the whole row is masked.
    let p = fused.into_data().to_vec::<f32>().unwrap();
    for bi in 0..b {
        for hi in 0..h {
            for qi in 0..s {
                let row = &p[((bi * h + hi) * s + qi) * s..][..s];
                let total: f32 = row.iter().sum();
                assert!((total - 1.0).abs() < 1e-4, "{what}: row sum {total}");
                let allowed =
                    |j: usize| j <= qi && !invalid.get(bi).is_some_and(|k| k.contains(&j));
                if (0..s).any(allowed) {
                    for (j, &v) in row.iter().enumerate() {
                        if !allowed(j) {
                            assert_eq!(v, 0.0, "{what}: masked key {j} of query {qi}");
                        }
                    }
                } else {
                    for &v in row {
                        assert!((v - 1.0 / s as f32).abs() < 1e-6, "{what}: uniform row {v}");
                    }
                }
            }
        }
    }

    let sw = tensor::<AW, 4>(&scores, &dw).require_grad();
    let out = launches(1, &what, || {
        causal_softmax(sw.clone(), key_valid::<AW>(b, s, invalid, &dw), scale)
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let sf = tensor::<AF, 4>(&scores, &df).require_grad();
    let out_ref = reference::causal_softmax(sf.clone(), key_valid::<AF>(b, s, invalid, &df), scale);
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} autodiff"));
    assert_close(
        sw.grad(&grads).unwrap(),
        sf.grad(&grads_ref).unwrap(),
        &format!("{what} dscores"),
    );
}

#[test]
fn causal_softmax_matches_reference() {
    let _serial = serial();
    // Batch 1 is left-padded by 3: its queries 0..3 have every key masked (uniform rows).
    softmax_case(2, 3, 37, &[&[5], &[0, 1, 2]], 81);
    softmax_case(2, 2, 64, &[&[], &[0, 1, 2, 3, 4, 40]], 82); // vector loads
    softmax_case(1, 2, 300, &[&[7, 150]], 83);
    softmax_case(1, 1, 1, &[], 84);
}

/// Rows long enough that each unit holds several vectors of them (1,100 keys: 275 vectors of 4
/// over 256 units), and rows too long to hold, streamed twice (2,049 keys: vectors of 1).
#[test]
fn causal_softmax_holds_or_streams_long_rows() {
    let _serial = serial();
    softmax_case(1, 1, 1100, &[&[3, 700]], 85);
    softmax_case(1, 1, 2049, &[&[1000]], 86);
}

// ---------------------------------------------------------------------------------------------
// Attention that recomputes its probabilities in the backward

/// `grouped_causal_attention` against its reference: `block` positions per block of the products
/// (0: none; with blocks, `invalid` must leave every query a readable key, see the function).
#[allow(clippy::too_many_arguments)]
fn attention_case(
    b: usize,
    nq: usize,
    nkv: usize,
    s: usize,
    invalid: &[&[usize]],
    block: usize,
    seed: u64,
) {
    use kernels_cubecl::attention::grouped_causal_attention_blocked as attention;
    use kernels_cubecl::BurnMatmul;
    let (dw, df) = (wgpu(), flex());
    let hd = 8;
    let g = nq / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = data([b, nkv, s, g * hd], seed, 2.0, 0.0);
    let k = data([b, nkv, s, hd], seed + 1, 2.0, 0.0);
    let v = data([b, nkv, s, hd], seed + 2, 1.0, 0.3);
    let r = data([b, nkv, s, g * hd], seed + 3, 1.0, 0.0);
    let what = format!("causal_attention b={b} nq={nq} nkv={nkv} s={s} block={block}");

    let (qw, kw, vw) = (
        tensor::<AW, 4>(&q, &dw).require_grad(),
        tensor::<AW, 4>(&k, &dw).require_grad(),
        tensor::<AW, 4>(&v, &dw).require_grad(),
    );
    // Forward: the fused softmax (keeping its row statistics) and the output's copy into
    // `[b, s, nq, hd]` rows (none with one KV head: the layouts coincide); backward: one kernel
    // rebuilding P and computing dS (V is contiguous here: no copy of it or of dV).
    let forward_launches = if nkv == 1 { 1 } else { 2 };
    let out = launches(forward_launches, &what, || {
        attention::<AW, BurnMatmul>(
            qw.clone(),
            kw.clone(),
            vw.clone(),
            key_valid::<AW>(b, s, invalid, &dw),
            scale,
            block,
        )
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let (qf, kf, vf) = (
        tensor::<AF, 4>(&q, &df).require_grad(),
        tensor::<AF, 4>(&k, &df).require_grad(),
        tensor::<AF, 4>(&v, &df).require_grad(),
    );
    let out_ref = reference::grouped_causal_attention::<AF, BurnMatmul>(
        qf.clone(),
        kf.clone(),
        vf.clone(),
        key_valid::<AF>(b, s, invalid, &df),
        scale,
    );
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &what);
    for (name, got, want) in [
        ("dq", qw.grad(&grads), qf.grad(&grads_ref)),
        ("dk", kw.grad(&grads), kf.grad(&grads_ref)),
        ("dv", vw.grad(&grads), vf.grad(&grads_ref)),
    ] {
        assert_close(got.unwrap(), want.unwrap(), &format!("{what} {name}"));
    }

    // Only some inputs tracked (frozen K, say): the others' gradients are still right.
    let qw = tensor::<AW, 4>(&q, &dw).require_grad();
    let out = attention::<AW, BurnMatmul>(
        qw.clone(),
        tensor(&k, &dw),
        tensor(&v, &dw),
        key_valid::<AW>(b, s, invalid, &dw),
        scale,
        block,
    );
    let grads = (out * tensor(&r, &dw)).sum().backward();
    assert_close(
        qw.grad(&grads).unwrap(),
        qf.grad(&grads_ref).unwrap(),
        &format!("{what} dq alone"),
    );

    // Without autodiff: the same values from the same kernels (softmax and output copy).
    let plain = launches(forward_launches, &what, || {
        attention::<W, BurnMatmul>(
            tensor(&q, &dw),
            tensor(&k, &dw),
            tensor(&v, &dw),
            key_valid::<W>(b, s, invalid, &dw),
            scale,
            block,
        )
    });
    let plain_ref = reference::grouped_causal_attention::<Flex, BurnMatmul>(
        tensor(&q, &df),
        tensor(&k, &df),
        tensor(&v, &df),
        key_valid::<Flex>(b, s, invalid, &df),
        scale,
    );
    assert_close(plain, plain_ref, &format!("{what} plain"));
}

/// Attention as the model calls it: V a heads view of `[b, s, nkv, hd]` rows. V is copied
/// heads-major once, the output and V's gradient come back laid out as rows (their
/// `swap_dims(1, 2)` contiguous), the values as the reference's.
#[test]
fn causal_attention_hands_out_row_layouts() {
    use kernels_cubecl::BurnMatmul;
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let (b, nq, nkv, s, hd) = (2, 4, 2, 21, 8);
    let g = nq / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = data([b, nkv, s, g * hd], 94, 2.0, 0.0);
    let k = data([b, nkv, s, hd], 95, 2.0, 0.0);
    let v0 = data([b, s, nkv, hd], 96, 1.0, 0.3);
    let r = data([b, nkv, s, g * hd], 97, 1.0, 0.0);
    let what = "causal_attention with V rows";
    let attention = kernels_cubecl::grouped_causal_attention::<AW, BurnMatmul>;

    let vw = tensor::<AW, 4>(&v0, &dw).require_grad();
    let out = launches(3, what, || {
        attention(
            tensor(&q, &dw),
            tensor(&k, &dw),
            heads_view(vw.clone()),
            key_valid::<AW>(b, s, &[&[], &[2]], &dw),
            scale,
        )
    });
    let joined = out.clone().swap_dims(1, 2).into_primitive().tensor();
    let strides = joined.primitive.meta.strides().to_vec();
    assert_eq!(
        strides,
        [s * nq * hd, nq * hd, g * hd, 1],
        "{what}: output rows"
    );
    let grads = launches(2, what, || (out.clone() * tensor(&r, &dw)).sum().backward());
    let dv = vw.grad(&grads).unwrap();
    let strides = dv.clone().into_primitive().tensor().meta.strides().to_vec();
    assert_eq!(strides, [s * nkv * hd, nkv * hd, hd, 1], "{what}: dV rows");

    let vf = tensor::<AF, 4>(&v0, &df).require_grad();
    let out_ref = reference::grouped_causal_attention::<AF, BurnMatmul>(
        tensor(&q, &df),
        tensor(&k, &df),
        heads_view(vf.clone()),
        key_valid::<AF>(b, s, &[&[], &[2]], &df),
        scale,
    );
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, what);
    assert_close(dv, vf.grad(&grads_ref).unwrap(), &format!("{what} dV"));

    // Without autodiff: the same layout, from the same kernels.
    let plain = launches(3, what, || {
        kernels_cubecl::grouped_causal_attention::<W, BurnMatmul>(
            tensor(&q, &dw),
            tensor(&k, &dw),
            heads_view(tensor(&v0, &dw)),
            key_valid::<W>(b, s, &[&[], &[2]], &dw),
            scale,
        )
    });
    let strides = plain
        .swap_dims(1, 2)
        .into_primitive()
        .tensor()
        .meta
        .strides()
        .to_vec();
    assert_eq!(
        strides,
        [s * nq * hd, nq * hd, g * hd, 1],
        "{what}: plain output rows"
    );
}

/// The blocked products' contract, by parts: only the blocks are computed, zeros elsewhere.
#[test]
fn matmul_blocks_by_parts_computes_the_blocks() {
    use kernels_cubecl::{attention::matmul_blocks_by_parts, BurnMatmul, ProductBlock};
    let _serial = serial();
    let df = flex();
    let a = tensor::<Flex, 3>(&data([2, 6, 5], 110, 1.0, 0.0), &df);
    let b = tensor::<Flex, 3>(&data([2, 5, 7], 111, 1.0, 0.0), &df);
    let blocks = [
        ProductBlock {
            rows: 0..2,
            cols: 0..3,
            depth: 0..5,
        },
        ProductBlock {
            rows: 2..6,
            cols: 1..7,
            depth: 2..4,
        },
    ];
    let out = matmul_blocks_by_parts::<Flex, BurnMatmul>(a.clone(), b.clone(), &blocks);
    let whole = a.clone().matmul(b.clone());
    let part = a
        .slice([0..2, 2..6, 2..4])
        .matmul(b.slice([0..2, 2..4, 1..7]));
    assert_close(
        out.clone().slice([0..2, 0..2, 0..3]),
        whole.slice([0..2, 0..2, 0..3]),
        "block 0",
    );
    assert_close(out.clone().slice([0..2, 2..6, 1..7]), part, "block 1");
    let outside = out.slice([0..2, 0..2, 3..7]).abs().max().into_scalar();
    assert_eq!(outside, 0.0, "outside every block");
}

/// `head_layout::contiguous` copies a strided view (one launch) with its values, and leaves a
/// contiguous tensor alone (none).
#[test]
fn head_layout_copies_views_contiguous() {
    let _serial = serial();
    let dw = wgpu();
    // The last view has a dimension of one beside the swapped one: already contiguous, no copy.
    for (shape, seed, copies) in [
        ([2, 5, 3, 8], 98, 1),
        ([1, 7, 2, 6], 99, 1),
        ([3, 1, 4, 4], 100, 0),
    ] {
        let x0 = data(shape, seed, 1.0, 0.0);
        let view = heads_view(tensor::<W, 4>(&x0, &dw));
        let what = format!("head_layout::contiguous {shape:?}");
        let copied = launches(copies, &what, || {
            kernels_cubecl::head_layout::contiguous(view.clone())
        });
        let [a, m, n, d] = copied.dims();
        let strides = copied
            .clone()
            .into_primitive()
            .tensor()
            .meta
            .strides()
            .to_vec();
        if copies > 0 {
            assert_eq!(strides, [m * n * d, n * d, d, 1], "{what}: layout");
        }
        assert_eq!(
            copied.clone().into_data().to_vec::<f32>().unwrap(),
            view.into_data().to_vec::<f32>().unwrap(),
            "{what}: values"
        );
        assert_eq!([a, m, n, d], [shape[0], shape[2], shape[1], shape[3]]);
        launches(0, &what, || kernels_cubecl::head_layout::contiguous(copied));
    }
}

#[test]
fn causal_attention_recomputes_probabilities_and_matches_reference() {
    let _serial = serial();
    // Grouped query heads (2 per KV head), a left-padded sequence (uniform rows), a padding key.
    attention_case(2, 4, 2, 37, &[&[5], &[0, 1, 2]], 0, 91);
    attention_case(1, 3, 3, 64, &[&[]], 0, 92); // one query head per KV head, vector loads
    attention_case(2, 4, 1, 19, &[&[], &[3]], 0, 93); // every query head on one KV head
                                                      // Rows held in several vectors a unit (1,100 keys), whole and in blocks of 256 positions,
                                                      // and rows streamed (2,049 keys), in the forward and the recomputing backward.
    attention_case(1, 1, 1, 1100, &[&[3, 700]], 0, 98);
    attention_case(1, 2, 1, 1100, &[&[]], 256, 99);
    attention_case(1, 1, 1, 2049, &[&[1000]], 0, 100);
}

/// The products in blocks of positions, skipping the masked ones: the same values.
#[test]
fn blocked_causal_attention_matches_reference() {
    let _serial = serial();
    // Blocks of 8 over 37 positions (a partial last block), padding keys inside blocks.
    attention_case(2, 4, 2, 37, &[&[5], &[9, 30]], 8, 94);
    // Vector loads (blocks of 16 over 64), one query head per KV head.
    attention_case(1, 3, 3, 64, &[&[]], 16, 95);
    // Four query heads on one KV head, blocks of one vector.
    attention_case(2, 4, 1, 40, &[&[], &[3]], 8, 96);
    // A block as long as the sequence: one block, the whole products.
    attention_case(1, 2, 1, 24, &[&[7]], 24, 97);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy at the answer positions

fn targets<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn cross_entropy_case(vocab: usize, target_values: &[i64], seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let n = target_values.len();
    // Logits of a trained head's scale (tens), so that exp overflows without the max shift.
    let logits = data([n, vocab], seed, 12.0, 3.0);
    let r = data([n], seed + 1, 1.0, 0.5);
    let what = format!("cross_entropy n={n} vocab={vocab}");

    let fused = launches(1, &what, || {
        cross_entropy::row_nll(
            tensor::<W, 2>(&logits, &dw),
            targets::<W>(target_values, &dw),
        )
    });
    let expected = reference::row_nll(
        tensor::<Flex, 2>(&logits, &df),
        targets::<Flex>(target_values, &df),
    );
    assert_close(fused, expected, &what);

    let lw = tensor::<AW, 2>(&logits, &dw).require_grad();
    let out = launches(1, &what, || {
        cross_entropy::row_nll(lw.clone(), targets::<AW>(target_values, &dw))
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let lf = tensor::<AF, 2>(&logits, &df).require_grad();
    let out_ref = reference::row_nll(lf.clone(), targets::<AF>(target_values, &df));
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} autodiff"));
    assert_close(
        lw.grad(&grads).unwrap(),
        lf.grad(&grads_ref).unwrap(),
        &format!("{what} dlogits"),
    );
}

#[test]
fn cross_entropy_matches_reference() {
    let _serial = serial();
    // Targets at the first and last entry of a row and in the middle of a vector.
    cross_entropy_case(1000, &[0, 999, 517, 3], 91); // vector loads
    cross_entropy_case(4099, &[4098, 0, 2050], 92); // odd width: scalar loads
    cross_entropy_case(49_152, &[11, 49_151], 93); // SmolLM2's vocabulary
    cross_entropy_case(7, &[6], 94); // fewer entries than units
}

// ---------------------------------------------------------------------------------------------
// Column scatter (a channel slice's output back to full width)

fn scatter_case(rows: usize, width: usize, kept_cols: &[i64], seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let k = kept_cols.len();
    let kept = data([rows, k], seed, 1.0, 0.2);
    let base = data([rows, width], seed + 1, 1.0, -0.1);
    let r = data([rows, width], seed + 2, 1.0, 0.0);
    let what = format!("scatter rows={rows} width={width} k={k}");

    // Forward, plain backend: the position map (2 launches) and the pass over the output.
    let fused = launches(3, &what, || {
        channel_scatter::scatter_columns(
            tensor::<W, 2>(&kept, &dw),
            targets::<W>(kept_cols, &dw),
            width,
        )
    });
    let expected = reference::scatter_columns(
        tensor::<Flex, 2>(&kept, &df),
        targets::<Flex>(kept_cols, &df),
        width,
    );
    assert_close(fused, expected, &what);
    let fused = launches(3, &what, || {
        channel_scatter::scatter_add_columns(
            tensor::<W, 2>(&base, &dw),
            tensor::<W, 2>(&kept, &dw),
            targets::<W>(kept_cols, &dw),
        )
    });
    let expected = reference::scatter_add_columns(
        tensor::<Flex, 2>(&base, &df),
        tensor::<Flex, 2>(&kept, &df),
        targets::<Flex>(kept_cols, &df),
    );
    assert_close(fused, expected, &format!("{what} add"));

    // Gradients of both inputs under autodiff (the backward is one gather launch).
    let (bw, kw) = (
        tensor::<AW, 2>(&base, &dw).require_grad(),
        tensor::<AW, 2>(&kept, &dw).require_grad(),
    );
    let out = launches(3, &what, || {
        channel_scatter::scatter_add_columns(bw.clone(), kw.clone(), targets::<AW>(kept_cols, &dw))
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let (bf, kf) = (
        tensor::<AF, 2>(&base, &df).require_grad(),
        tensor::<AF, 2>(&kept, &df).require_grad(),
    );
    let out_ref =
        reference::scatter_add_columns(bf.clone(), kf.clone(), targets::<AF>(kept_cols, &df));
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} add autodiff"));
    assert_close(
        bw.grad(&grads).unwrap(),
        bf.grad(&grads_ref).unwrap(),
        &format!("{what} dbase"),
    );
    assert_close(
        kw.grad(&grads).unwrap(),
        kf.grad(&grads_ref).unwrap(),
        &format!("{what} dkept"),
    );

    // No base: the kept values' gradient alone.
    scatter_no_base_case(rows, width, kept_cols, k, seed + 3);
}

#[test]
fn channel_scatter_matches_reference() {
    let _serial = serial();
    scatter_case(5, 16, &[3, 0, 15, 7], 101); // unsorted, both ends
    scatter_case(33, 1000, &(0..1000).step_by(7).collect::<Vec<_>>(), 102);
    scatter_case(2, 9, &[4], 103);
    scatter_case(3, 6, &[5, 4, 3, 2, 1, 0], 104); // every column
}

/// The column gather (an input-sliced product's kept input channels, padded with zero columns to
/// `cols_out`) against `select`: forward, and the gradient of `x` when the gather is its only
/// reader (the scatter into zeros) and when another reader registered its share first (the
/// scatter added into it).
fn column_gather_case(rows: usize, width: usize, kept_cols: &[i64], cols_out: usize, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let x = data([rows, width], seed, 1.0, 0.1);
    let r = data([rows, cols_out], seed + 1, 1.0, 0.0);
    let what = format!(
        "column gather rows={rows} width={width} k={} cols_out={cols_out}",
        kept_cols.len()
    );

    let fused = launches(1, &what, || {
        channel_scatter::gather_columns(
            tensor::<W, 2>(&x, &dw),
            targets::<W>(kept_cols, &dw),
            cols_out,
        )
    });
    let expected = reference::gather_columns(
        tensor::<Flex, 2>(&x, &df),
        targets::<Flex>(kept_cols, &df),
        cols_out,
    );
    assert_close(fused, expected, &what);

    for other_reader in [false, true] {
        let xw = tensor::<AW, 2>(&x, &dw).require_grad();
        let out =
            channel_scatter::gather_columns(xw.clone(), targets::<AW>(kept_cols, &dw), cols_out);
        let mut loss = (out.clone() * tensor(&r, &dw)).sum();
        if other_reader {
            loss = loss + (xw.clone() * xw.clone()).sum();
        }
        let grads = loss.backward();
        let xf = tensor::<AF, 2>(&x, &df).require_grad();
        let out_ref =
            reference::gather_columns(xf.clone(), targets::<AF>(kept_cols, &df), cols_out);
        let mut loss_ref = (out_ref.clone() * tensor(&r, &df)).sum();
        if other_reader {
            loss_ref = loss_ref + (xf.clone() * xf.clone()).sum();
        }
        let grads_ref = loss_ref.backward();
        let what = format!("{what} other reader {other_reader}");
        assert_close(out, out_ref, &format!("{what} autodiff"));
        assert_close(
            xw.grad(&grads).unwrap(),
            xf.grad(&grads_ref).unwrap(),
            &format!("{what} dx"),
        );
    }
}

#[test]
fn column_gather_matches_reference() {
    let _serial = serial();
    column_gather_case(5, 16, &[3, 0, 15, 7], 4, 111); // unsorted, both ends
    column_gather_case(5, 16, &[3, 0, 15, 7, 9], 8, 115); // padded
    column_gather_case(
        33,
        1000,
        &(0..1000).step_by(4).collect::<Vec<_>>(),
        250,
        112,
    );
    column_gather_case(
        33,
        1000,
        &(0..1000).step_by(7).collect::<Vec<_>>(),
        144,
        116,
    );
    column_gather_case(2, 9, &[4], 1, 113);
    column_gather_case(3, 6, &[5, 4, 3, 2, 1, 0], 6, 114); // every column
}

/// The column scatter with no base under autodiff, of `kept` with `k_padded >= k` columns (a
/// product run at a padded width: its padding columns are dropped forward and get a zero
/// gradient).
fn scatter_no_base_case(rows: usize, width: usize, kept_cols: &[i64], k_padded: usize, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let k = kept_cols.len();
    let kept = data([rows, k_padded], seed, 1.0, 0.2);
    let r = data([rows, width], seed + 1, 1.0, 0.0);
    let what = format!("scatter (no base) rows={rows} width={width} k={k} k_padded={k_padded}");

    let kw = tensor::<AW, 2>(&kept, &dw).require_grad();
    let out = launches(3, &what, || {
        channel_scatter::scatter_columns(kw.clone(), targets::<AW>(kept_cols, &dw), width)
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let kf = tensor::<AF, 2>(&kept, &df).require_grad();
    let out_ref = reference::scatter_columns(
        kf.clone().slice([0..rows, 0..k]),
        targets::<AF>(kept_cols, &df),
        width,
    );
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &what);
    assert_close(
        kw.grad(&grads).unwrap(),
        kf.grad(&grads_ref).unwrap(),
        &format!("{what} dkept"),
    );
}

#[test]
fn padded_channel_scatter_matches_reference() {
    let _serial = serial();
    scatter_no_base_case(5, 16, &[3, 0, 15, 7, 9], 8, 141);
    scatter_no_base_case(
        33,
        1000,
        &(0..1000).step_by(7).collect::<Vec<_>>(),
        144,
        142,
    );
}

// ---------------------------------------------------------------------------------------------
// Channel mask (masked-dense SparseLoRA projections)

fn dense_rows<B: Backend>(rows: &[bool], device: &B::Device) -> Tensor<B, 1> {
    let values: Vec<f32> = rows.iter().map(|&d| f32::from(u8::from(d))).collect();
    Tensor::from_data(TensorData::new(values, [rows.len()]), device)
}

fn mask_case(rows: usize, width: usize, kept_cols: &[i64], dense: Option<&[bool]>, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let x = data([rows, width], seed, 1.0, 0.1);
    let r = data([rows, width], seed + 1, 1.0, 0.0);
    let what = format!(
        "mask rows={rows} width={width} k={} dense={}",
        kept_cols.len(),
        dense.is_some()
    );
    let f32_ = burn::tensor::DType::F32;

    // The keep vector: two launches, exactly the reference's 0/1 values.
    let keep_w = launches(2, &what, || {
        channel_mask::keep_mask(targets::<W>(kept_cols, &dw), width, f32_)
    });
    let keep_f = reference::keep_mask(targets::<Flex>(kept_cols, &df), width, f32_);
    assert_eq!(
        keep_w.clone().into_data().to_vec::<f32>().unwrap(),
        keep_f.clone().into_data().to_vec::<f32>().unwrap(),
        "{what}: keep vector"
    );
    // Its complement, in the same two launches.
    let drop_w = launches(2, &what, || {
        channel_mask::drop_mask(targets::<W>(kept_cols, &dw), width, f32_)
    });
    let drop_f = reference::drop_mask(targets::<Flex>(kept_cols, &df), width, f32_);
    assert_eq!(
        drop_w.into_data().to_vec::<f32>().unwrap(),
        drop_f.into_data().to_vec::<f32>().unwrap(),
        "{what}: drop vector"
    );

    // Plain forward: one launch.
    let fused = launches(1, &what, || {
        channel_mask::mask_channels(
            tensor::<W, 2>(&x, &dw),
            keep_w.clone(),
            dense.map(|d| dense_rows::<W>(d, &dw)),
        )
    });
    let expected = reference::mask_channels(
        tensor::<Flex, 2>(&x, &df),
        keep_f.clone(),
        dense.map(|d| dense_rows::<Flex>(d, &df)),
    );
    assert_close(fused, expected, &what);

    // Autodiff: one launch forward, one backward, the input gradient masked the same way.
    let keep_aw = channel_mask::keep_mask(targets::<AW>(kept_cols, &dw), width, f32_);
    let xw = tensor::<AW, 2>(&x, &dw).require_grad();
    let out = launches(1, &what, || {
        channel_mask::mask_channels(
            xw.clone(),
            keep_aw.clone(),
            dense.map(|d| dense_rows::<AW>(d, &dw)),
        )
    });
    let grads = launches(1, &what, || {
        (out.clone() * tensor(&r, &dw)).sum().backward()
    });
    let keep_af = reference::keep_mask(targets::<AF>(kept_cols, &df), width, f32_);
    let xf = tensor::<AF, 2>(&x, &df).require_grad();
    let out_ref =
        reference::mask_channels(xf.clone(), keep_af, dense.map(|d| dense_rows::<AF>(d, &df)));
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, &format!("{what} autodiff"));
    assert_close(
        xw.grad(&grads).unwrap(),
        xf.grad(&grads_ref).unwrap(),
        &format!("{what} dx"),
    );
}

#[test]
fn channel_mask_matches_reference() {
    let _serial = serial();
    mask_case(5, 16, &[3, 0, 15, 7], None, 111); // unsorted, both ends, vectorised
    mask_case(
        6,
        9,
        &[4, 8],
        Some(&[false, true, false, false, true, false]),
        112,
    ); // odd width
    let every_seventh: Vec<i64> = (0..1000).step_by(7).collect();
    let dense: Vec<bool> = (0..33).map(|r| r % 11 == 10).collect();
    mask_case(33, 1000, &every_seventh, Some(&dense), 113);
    mask_case(3, 6, &[5, 4, 3, 2, 1, 0], Some(&[true, true, true]), 114); // every column, row
}

// ---------------------------------------------------------------------------------------------
// Padded gathers (a frozen weight's kept rows/columns, then zero ones)

fn values<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn gather_padded_case(rows: usize, cols: usize, kept: &[i64], len: usize, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let k = kept.len();
    let weight = data([rows, cols], seed, 1.0, 0.1);
    let what = format!("gather padded [{rows}, {cols}] k={k} to {len}");

    // Rows: the kept values copied exactly, zeros after them; one launch, plain or autodiff.
    let fused = launches(1, &what, || {
        gather_padded::gather_rows_padded(tensor::<W, 2>(&weight, &dw), targets(kept, &dw), len)
    });
    let expected =
        reference::gather_rows_padded(tensor::<Flex, 2>(&weight, &df), targets(kept, &df), len);
    assert_eq!(fused.dims(), [len, cols], "{what} rows: shape");
    let expected = values(expected);
    assert_eq!(values(fused), expected, "{what} rows");
    assert!(expected[k * cols..].iter().all(|&v| v == 0.0));
    let fused = launches(1, &what, || {
        gather_padded::gather_rows_padded(tensor::<AW, 2>(&weight, &dw), targets(kept, &dw), len)
    });
    assert!(!fused.clone().into_primitive().tensor().is_tracked());
    assert_eq!(values(fused), expected, "{what} rows autodiff");

    // Columns.
    let fused = launches(1, &what, || {
        gather_padded::gather_columns_padded(tensor::<W, 2>(&weight, &dw), targets(kept, &dw), len)
    });
    let expected =
        reference::gather_columns_padded(tensor::<Flex, 2>(&weight, &df), targets(kept, &df), len);
    assert_eq!(fused.dims(), [rows, len], "{what} columns: shape");
    let expected = values(expected);
    assert_eq!(values(fused), expected, "{what} columns");
    assert!(expected
        .chunks(len)
        .all(|row| row[k..].iter().all(|&v| v == 0.0)));
    let fused = launches(1, &what, || {
        gather_padded::gather_columns_padded(tensor::<AW, 2>(&weight, &dw), targets(kept, &dw), len)
    });
    assert!(!fused.clone().into_primitive().tensor().is_tracked());
    assert_eq!(values(fused), expected, "{what} columns autodiff");
}

#[test]
fn gather_padded_matches_reference_exactly() {
    let _serial = serial();
    gather_padded_case(40, 24, &[3, 0, 23, 7, 12], 8, 111); // unsorted, the last column
    gather_padded_case(100, 1000, &(0..100).step_by(3).collect::<Vec<_>>(), 40, 112); // vectors
    gather_padded_case(7, 9, &[6, 2, 4, 0, 1, 5, 3], 7, 113); // every index, no padding
    gather_padded_case(33, 143, &[32], 8, 114); // odd width, one index
}

#[test]
fn gather_padded_of_a_trainable_weight_takes_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let (rows, cols, kept, len) = (12, 10, [9i64, 2, 5], 8);
    let weight = data([rows, cols], 115, 1.0, 0.0);
    let r = data([len, len], 116, 1.0, 0.0);
    let ww = tensor::<AW, 2>(&weight, &dw).require_grad();
    let wf = tensor::<AF, 2>(&weight, &df).require_grad();
    // Rows and columns of one weight (`[len, cols]` x `[cols, len]`), so both gradients count.
    let (out, grads) = launches(0, "trainable weight", || {
        let out = gather_padded::gather_rows_padded(ww.clone(), targets(&kept, &dw), len).matmul(
            gather_padded::gather_columns_padded(ww.clone().transpose(), targets(&kept, &dw), len),
        );
        let grads = (out.clone() * tensor(&r, &dw)).sum().backward();
        (out, grads)
    });
    let out_ref = reference::gather_rows_padded(wf.clone(), targets(&kept, &df), len).matmul(
        reference::gather_columns_padded(wf.clone().transpose(), targets(&kept, &df), len),
    );
    let grads_ref = (out_ref.clone() * tensor(&r, &df)).sum().backward();
    assert_close(out, out_ref, "trainable weight: output");
    assert_close(
        ww.grad(&grads).unwrap(),
        wf.grad(&grads_ref).unwrap(),
        "trainable weight: gradient",
    );
}

// ---------------------------------------------------------------------------------------------
// Sequence means (the estimator's MLP input)

/// `expected_launches`: 1 for a narrow input (one cube per sequence), 2 for a wide one (chunks,
/// then their sum).
fn sequence_mean_case(
    b: usize,
    s: usize,
    d: usize,
    invalid: &[&[usize]],
    expected_launches: u64,
    seed: u64,
) {
    let (dw, df) = (wgpu(), flex());
    let x = data([b, s, d], seed, 1.0, 0.3);
    let what = format!("sequence_means b={b} s={s} d={d}");
    for mask_padding in [true, false] {
        let fused = launches(expected_launches, &what, || {
            sequence_mean::sequence_means(
                tensor::<W, 3>(&x, &dw),
                key_valid::<W>(b, s, invalid, &dw),
                mask_padding,
            )
        });
        let expected = reference::sequence_means(
            tensor::<Flex, 3>(&x, &df),
            key_valid::<Flex>(b, s, invalid, &df),
            mask_padding,
        );
        assert_close(
            fused,
            expected,
            &format!("{what} mask_padding={mask_padding}"),
        );
        // Under autodiff too (no gradient: the estimator's input).
        let fused = launches(expected_launches, &what, || {
            sequence_mean::sequence_means(
                tensor::<AW, 3>(&x, &dw).require_grad(),
                key_valid::<AW>(b, s, invalid, &dw),
                mask_padding,
            )
        });
        let expected = reference::sequence_means(
            tensor::<Flex, 3>(&x, &df),
            key_valid::<Flex>(b, s, invalid, &df),
            mask_padding,
        );
        assert_close(fused, expected, &format!("{what} autodiff"));
    }
}

#[test]
fn sequence_means_match_reference() {
    let _serial = serial();
    // Narrow (one cube per sequence): vector loads, 16 lanes of 16 vectors; an odd width (36
    // lanes, 32 of them summing) and an empty sequence; the MLP estimator's 16 channels.
    sequence_mean_case(3, 70, 64, &[&[0, 1, 2], &[69], &[]], 1, 111);
    sequence_mean_case(2, 5, 7, &[&[], &[0, 1, 2, 3, 4]], 1, 112);
    sequence_mean_case(8, 512, 16, &[&[0, 1, 2], &[], &[511]], 1, 115);
    // Wide (chunks of 32 positions, then their sum).
    sequence_mean_case(1, 512, 576, &[&(0..100).collect::<Vec<_>>()], 2, 113);
    // The model's width, a partial last chunk.
    sequence_mean_case(2, 40, 2048, &[&[3], &[]], 2, 114);
}

/// The MLP channel score on the two halves of one stacked `[rows, 2 d_ff]` product (strided
/// views, as the estimator hands them over), plain and under `Autodiff`.
fn mlp_scores_case(rows: usize, d_ff: usize, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let both = data([rows, 2 * d_ff], seed, 2.0, 0.0);
    let halves = |t: Tensor<W, 2>| (t.clone().narrow(1, 0, d_ff), t.narrow(1, d_ff, d_ff));
    let what = format!("mlp_channel_scores rows={rows} d_ff={d_ff}");
    let (gate, up) = halves(tensor::<W, 2>(&both, &dw));
    let fused = launches(1, &what, || mlp_scores::mlp_channel_scores(gate, up));
    let both_f = tensor::<Flex, 2>(&both, &df);
    let expected = reference::mlp_channel_scores(
        both_f.clone().narrow(1, 0, d_ff),
        both_f.narrow(1, d_ff, d_ff),
    );
    assert_close(fused, expected.clone(), &what);
    let both_a = tensor::<AW, 2>(&both, &dw).require_grad();
    let fused = launches(1, &what, || {
        mlp_scores::mlp_channel_scores(
            both_a.clone().narrow(1, 0, d_ff),
            both_a.narrow(1, d_ff, d_ff),
        )
    });
    assert_close(fused, expected, &format!("{what} autodiff"));
}

/// The grouped-query expansion of KV channel indices: exactly the reference's, for LLaMA3-8B's
/// layout (8 KV heads of 128, 4 query heads each) and a small odd one, both layouts, plain and
/// under `Autodiff`.
#[test]
fn kv_channel_expansion_matches_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let ints = |v: &[i64]| TensorData::new(v.to_vec(), [v.len()]);
    let host = |data: TensorData| data.convert::<i64>().into_vec::<i64>().unwrap();
    let llama: Vec<i64> = (0..819).map(|i| (i * 7919 + 3) % 1024).collect();
    for (kv, groups, head_dim) in [(llama, 4, 128), (vec![5, 0, 3], 3, 2)] {
        for layout in [
            kv_channels::KvGroups::Heads { head_dim },
            kv_channels::KvGroups::Consecutive,
        ] {
            let what = format!(
                "query_channels_of k={} groups={groups} {layout:?}",
                kv.len()
            );
            let data = ints(&kv);
            let expected = host(
                reference::query_channels_of(
                    Tensor::<Flex, 1, Int>::from_data(data.clone(), &df),
                    groups,
                    layout,
                )
                .into_data(),
            );
            let fused = launches(1, &what, || {
                kv_channels::query_channels_of(
                    Tensor::<W, 1, Int>::from_data(data.clone(), &dw),
                    groups,
                    layout,
                )
            });
            assert_eq!(host(fused.into_data()), expected, "{what}");
            let fused = launches(1, &what, || {
                kv_channels::query_channels_of(
                    Tensor::<AW, 1, Int>::from_data(data.clone(), &dw),
                    groups,
                    layout,
                )
            });
            assert_eq!(host(fused.into_data()), expected, "{what}: autodiff");
        }
    }
}

/// The column norms of `z w` from `gram = z^T z`, for a `w` read through a transposed view.
#[test]
fn quadratic_form_norms_match_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    // The last case is the estimator's block-diagonal form (three blocks of 8 rows), with a
    // zero column and zeros inside the blocks: the kernel sums over each column's nonzero rows.
    for (n, k, out, seed, blocks) in [
        (64, 24, 6144, 131, None),
        (5, 3, 7, 132, None),
        (40, 24, 300, 133, Some(3)),
    ] {
        let z = data([n, k], seed, 1.0, 0.0);
        let mut wt = data([out, k], seed + 1, 1.0, 0.0); // stored transposed
        if let Some(blocks) = blocks {
            let mut values = wt.to_vec::<f32>().unwrap();
            let (rows_per_block, cols_per_block) = (k / blocks, out / blocks);
            for (c, column) in values.chunks_mut(k).enumerate() {
                let block = c / cols_per_block;
                for (i, v) in column.iter_mut().enumerate() {
                    if i / rows_per_block != block || c == 7 || (i + c) % 5 == 0 {
                        *v = 0.0;
                    }
                }
            }
            wt = TensorData::new(values, [out, k]);
        }
        let what = format!("quadratic_form_norms k={k} out={out}");
        let gram = |z: Tensor<W, 2>| z.clone().transpose().matmul(z);
        let fused = launches(1, &what, || {
            let zw = tensor::<W, 2>(&z, &dw);
            gram_norms::quadratic_form_norms(gram(zw), tensor::<W, 2>(&wt, &dw).transpose())
        });
        let (zf, wf) = (
            tensor::<Flex, 2>(&z, &df),
            tensor::<Flex, 2>(&wt, &df).transpose(),
        );
        let expected =
            reference::quadratic_form_norms(zf.clone().transpose().matmul(zf.clone()), wf.clone());
        assert_close(fused.clone(), expected, &what);
        // They are the column norms of z w.
        let direct = zf.matmul(wf);
        let direct = (direct.clone() * direct).sum_dim(0).sqrt();
        assert_close(fused, direct, &format!("{what}: norms of z w"));
    }
}

/// The Gram matrix of the real token rows (some padding), plain and `Autodiff`, masked and not,
/// with `z` read through a transposed view.
#[test]
fn masked_gram_matches_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    for (b, s, k, seed) in [(2, 300, 24, 134), (3, 5, 3, 135)] {
        let zt = data([k, b * s], seed, 1.0, 0.0); // stored transposed
        let valid: Vec<bool> = (0..b * s).map(|i| i % s >= 3 || i % 7 == 1).collect();
        let tokens = TensorData::new(valid, [b, s]);
        for mask_padding in [true, false] {
            let what = format!("masked_gram b={b} s={s} k={k} mask_padding={mask_padding}");
            let expected = reference::masked_gram(
                tensor::<Flex, 2>(&zt, &df).transpose(),
                Tensor::<Flex, 2, Bool>::from_data(tokens.clone(), &df),
                mask_padding,
            );
            let fused = launches(1, &what, || {
                gram_norms::masked_gram(
                    tensor::<W, 2>(&zt, &dw).transpose(),
                    Tensor::<W, 2, Bool>::from_data(tokens.clone(), &dw),
                    mask_padding,
                )
            });
            assert_close(fused, expected.clone(), &what);
            let fused = launches(1, &what, || {
                gram_norms::masked_gram(
                    tensor::<AW, 2>(&zt, &dw).transpose(),
                    Tensor::<AW, 2, Bool>::from_data(tokens.clone(), &dw),
                    mask_padding,
                )
            });
            assert_close(fused, expected, &format!("{what} autodiff"));
        }
    }
}

#[test]
fn mlp_channel_scores_match_reference() {
    let _serial = serial();
    mlp_scores_case(8, 1000, 121); // the estimator's shape: a row per sequence
    mlp_scores_case(3, 7, 122); // odd width
    mlp_scores_case(33, 257, 123); // more rows than a warp
}

/// The scores of the low-rank estimates `z[:, ..r] w_gate`, `z[:, r..] w_up`, formed per
/// channel: the factors read as transposed views, plain and `Autodiff`.
#[test]
fn mlp_channel_scores_of_factors_match_reference() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    for (rows, r, d_ff, seed) in [(8, 8, 1000, 124), (3, 5, 7, 125)] {
        let z = data([rows, 2 * r], seed, 1.0, 0.0);
        let (wg, wu) = (
            data([d_ff, r], seed + 1, 0.5, 0.0),
            data([d_ff, r], seed + 2, 0.5, 0.0),
        );
        let what = format!("mlp_channel_scores_of_factors rows={rows} r={r} d_ff={d_ff}");
        let zf = tensor::<Flex, 2>(&z, &df);
        let expected = reference::mlp_channel_scores(
            zf.clone()
                .narrow(1, 0, r)
                .matmul(tensor::<Flex, 2>(&wg, &df).transpose()),
            zf.narrow(1, r, r)
                .matmul(tensor::<Flex, 2>(&wu, &df).transpose()),
        );
        let fused = launches(1, &what, || {
            mlp_scores::mlp_channel_scores_of_factors(
                tensor::<W, 2>(&z, &dw),
                tensor::<W, 2>(&wg, &dw).transpose(),
                tensor::<W, 2>(&wu, &dw).transpose(),
            )
        });
        assert_close(fused, expected.clone(), &what);
        let fused = launches(1, &what, || {
            mlp_scores::mlp_channel_scores_of_factors(
                tensor::<AW, 2>(&z, &dw),
                tensor::<AW, 2>(&wg, &dw).transpose(),
                tensor::<AW, 2>(&wu, &dw).transpose(),
            )
        });
        assert_close(fused, expected, &format!("{what} autodiff"));
    }
}

// ---------------------------------------------------------------------------------------------
// Top-k

/// Channel scores with what the ordering rule must settle: runs of equal scores (some straddling
/// the top-k boundary), `0.0` and `-0.0`, a NaN and a `-inf` (tied: NaN ranks as `-inf`), and
/// otherwise random values.
fn channel_scores(n: usize, seed: u64) -> Vec<f32> {
    let mut s = random(n, seed, 1.0, 0.0);
    for i in (0..n).filter(|i| i % 5 == 3) {
        // Every fifth score repeats an earlier one: ties everywhere in the order.
        s[i] = s[i / 7];
    }
    if n >= 7 {
        let top = s.iter().copied().fold(f32::MIN, f32::max);
        // Equal maxima at both ends, zeros of both signs, a NaN and a -inf.
        s[n - 1] = top;
        s[1] = top;
        s[2] = -0.0;
        s[4] = 0.0;
        s[n / 2] = f32::NAN;
        s[n / 3] = f32::NEG_INFINITY;
    }
    s
}

/// The rule, on the host: indices by descending score, equal scores by ascending index, NaN as
/// `-inf`.
fn top_k_on_host(scores: &[f32], k: usize) -> Vec<i64> {
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap().then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| i as i64).collect()
}

fn indices<B: Backend>(t: Tensor<B, 1, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec::<i64>().unwrap()
}

fn top_k_case(n: usize, k: usize, seed: u64) {
    top_k_check(channel_scores(n, seed), k, &format!("top_k {k} of {n}"));
}

/// The top-k of `scores` on burn-wgpu (plain and under autodiff) and the reference on Flex, both
/// against the rule on the host.
fn top_k_check(scores: Vec<f32>, k: usize, what: &str) {
    let (dw, df) = (wgpu(), flex());
    let n = scores.len();
    let expected = top_k_on_host(&scores, k);
    let data = TensorData::new(scores, [n]);

    let reference = reference::top_k(tensor::<Flex, 1>(&data, &df), k);
    assert_eq!(indices(reference), expected, "{what}: reference");
    // Each kernel on every case, whichever the rule would pick.
    for method in [Method::Auto, Method::Counting, Method::RadixSelect] {
        let what = format!("{what} ({method:?})");
        let fused = launches(1, &what, || {
            top_k_with(tensor::<W, 1>(&data, &dw), k, method)
        });
        assert_eq!(fused.dims(), [k.min(n)], "{what}: shape");
        assert_eq!(fused.dtype(), tensor::<W, 1>(&data, &dw).argsort(0).dtype());
        assert_eq!(indices(fused), expected, "{what}: fused");
    }

    // Under autodiff, with a tracked input: the same kernel, no gradient recorded.
    let tracked = tensor::<AW, 1>(&data, &dw).require_grad();
    let fused = launches(1, what, || top_k(tracked, k));
    assert_eq!(indices(fused), expected, "{what}: autodiff");
}

#[test]
fn top_k_matches_reference() {
    let _serial = serial();
    top_k_case(1, 1, 101);
    top_k_case(7, 1, 102);
    top_k_case(7, 7, 103);
    top_k_case(7, 20, 104); // k > n: all 7
    top_k_case(1000, 1, 105);
    top_k_case(1000, 1000, 106);
    top_k_case(1000, 333, 107); // not a multiple of the tile
    top_k_case(1024, 256, 108); // attention channels
    top_k_case(4096, 1229, 109);
    top_k_case(14336, 430, 110); // LLaMA3-8B MLP channels
    top_k_case(14336, 14336, 111);
    // Around the kernel's 32 scores per cube, 256-score slices and 2048-score tiles.
    top_k_case(31, 31, 112);
    top_k_case(33, 1, 113);
    top_k_case(33, 17, 114);
    top_k_case(256, 100, 115);
    top_k_case(257, 257, 116);
    top_k_case(2048, 1024, 117);
    top_k_case(2049, 2049, 118);
    top_k_case(6145, 3000, 119);
    // LLaMA3-8B's MLP channels at 1% and 10% (the radix select's range), 25% of 4096 and 70% of
    // 14336 (counting's).
    top_k_case(14336, 143, 120);
    top_k_case(14336, 1434, 121);
    top_k_case(4096, 1024, 122);
    top_k_case(14336, 10000, 123);
}

/// `n` scores drawn from 7 values that rank as 5 (`0.0` equals `-0.0`, NaN equals `-inf`), with
/// `+inf` among them: every rank falls among thousands of equal scores.
fn few_value_scores(n: usize, seed: u64) -> Vec<f32> {
    let values = [
        f32::INFINITY,
        1.5,
        0.0,
        -0.0,
        -2.0,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    random(n, seed, 1.0, 0.0)
        .into_iter()
        .map(|r| values[((r.abs() * 1e4) as usize) % values.len()])
        .collect()
}

#[test]
fn top_k_few_distinct_scores() {
    let _serial = serial();
    for (n, seed) in [(14336, 131), (4096, 132), (2500, 133), (300, 134)] {
        let scores = few_value_scores(n, seed);
        // Past the equal scores of one value: where its last copy lands.
        let top = scores.iter().filter(|s| **s == f32::INFINITY).count();
        let second = top + scores.iter().filter(|s| **s == 1.5).count();
        for k in [
            1,
            143,
            430,
            1024,
            1434,
            top,
            top + 1,
            second,
            second - 1,
            n / 2,
            n,
            n + 7,
        ] {
            if k == 0 {
                continue;
            }
            top_k_check(
                scores.clone(),
                k,
                &format!("top_k {k} of {n} from 5 values"),
            );
        }
    }
}

#[test]
fn top_k_all_ties() {
    let _serial = serial();
    let dw = wgpu();
    // Equal scores everywhere (a NaN and a -inf among -inf's): the rank is the index.
    for (n, k, value) in [
        (1, 1, 0.5),
        (33, 33, 0.5),
        (2049, 700, 0.5),
        (2100, 2100, f32::NEG_INFINITY),
    ] {
        let mut scores = vec![value; n];
        if value == f32::NEG_INFINITY {
            scores[5] = f32::NAN;
            scores[2099] = f32::NAN;
        }
        let data = TensorData::new(scores.clone(), [n]);
        let expected: Vec<i64> = (0..k as i64).collect();
        assert_eq!(
            top_k_on_host(&scores, k),
            expected,
            "top_k {k} of {n}: host"
        );
        for method in [Method::Counting, Method::RadixSelect] {
            let what = format!("top_k {k} of {n} equal scores ({method:?})");
            let fused = launches(1, &what, || {
                top_k_with(tensor::<W, 1>(&data, &dw), k, method)
            });
            assert_eq!(indices(fused), expected, "{what}");
        }
    }
}

#[test]
fn top_k_nan_ranks_as_negative_infinity() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let data = TensorData::new(
        vec![
            1.0,
            f32::NAN,
            f32::NEG_INFINITY,
            3.0,
            f32::NAN,
            3.0,
            -0.0,
            0.0,
        ],
        [8],
    );
    let expected = [3, 5, 0, 6, 7, 1, 2, 4];
    for method in [Method::Counting, Method::RadixSelect] {
        let fused = launches(1, "top_k with NaN", || {
            top_k_with(tensor::<W, 1>(&data, &dw), 8, method)
        });
        assert_eq!(indices(fused), expected, "{method:?}");
    }
    assert_eq!(
        indices(reference::top_k(tensor::<Flex, 1>(&data, &df), 8)),
        expected
    );
}

#[test]
fn top_k_strided_scores() {
    let _serial = serial();
    let (dw, df) = (wgpu(), flex());
    let n = 700;
    let scores = channel_scores(2 * n, 121);
    let data = TensorData::new(scores.clone(), [n, 2]);
    // Column 1 of `[n, 2]`: stride 2, offset 1.
    let column = |t: Tensor<W, 2>| t.narrow(1, 1, 1).squeeze_dim::<1>(1);
    let picked: Vec<f32> = scores.iter().skip(1).step_by(2).copied().collect();
    let expected = top_k_on_host(&picked, 50);
    for method in [Method::Counting, Method::RadixSelect] {
        let fused = launches(1, "top_k of a strided view", || {
            top_k_with(column(tensor(&data, &dw)), 50, method)
        });
        assert_eq!(indices(fused), expected, "{method:?}");
    }
    let reference = reference::top_k(
        tensor::<Flex, 2>(&data, &df)
            .narrow(1, 1, 1)
            .squeeze_dim::<1>(1),
        50,
    );
    assert_eq!(indices(reference), expected);
}

#[test]
fn top_k_reference_is_argsort_without_ties() {
    let _serial = serial();
    let df = flex();
    // Distinct scores: the reference is the model's `argsort_descending(0).narrow(0, 0, k)`.
    let data = TensorData::new(random(3000, 131, 1.0, 0.0), [3000]);
    let argsort = tensor::<Flex, 1>(&data, &df)
        .argsort_descending(0)
        .narrow(0, 0, 300);
    assert_eq!(
        indices(reference::top_k(tensor::<Flex, 1>(&data, &df), 300)),
        indices(argsort)
    );
}

#[test]
fn top_k_reference_with_64_bit_keys() {
    let _serial = serial();
    // Past 46340 scores the reference's sort keys need i64 (Flex's ints are i32).
    let n = 50_000;
    let scores = channel_scores(n, 141);
    let data = TensorData::new(scores.clone(), [n]);
    let out = reference::top_k(tensor::<Flex, 1>(&data, &flex()), 500);
    assert_eq!(indices(out), top_k_on_host(&scores, 500));
}

#[test]
#[should_panic(expected = "must be at least 1")]
fn top_k_of_zero_panics() {
    let _serial = serial();
    let scores = Tensor::<W, 1>::from_floats([1.0, 2.0], &wgpu());
    let _ = top_k(scores, 0);
}

// ---------------------------------------------------------------------------------------------
// Other backends

#[test]
fn flex_runs_the_references() {
    let _serial = serial();
    launches(0, "Flex", || {
        let df = flex();
        let x = data([3, 40], 91, 1.0, 0.0);
        let w = data([40], 92, 0.2, 1.0);
        let same =
            |a: Tensor<Flex, 2>, b: Tensor<Flex, 2>| assert_eq!(a.into_data(), b.into_data());
        same(
            rms_norm(tensor(&x, &df), tensor(&w, &df), EPS),
            reference::rms_norm(tensor(&x, &df), tensor(&w, &df), EPS),
        );
        same(
            swiglu(tensor(&x, &df), tensor(&x, &df)),
            reference::swiglu(tensor(&x, &df), tensor(&x, &df)),
        );

        let (cos, sin) = llama_angles(1, 5, 8);
        let q = data([1, 2, 5, 8], 93, 1.0, 0.0);
        assert_eq!(
            rope(
                tensor::<Flex, 4>(&q, &df),
                tensor(&cos, &df),
                tensor(&sin, &df)
            )
            .into_data(),
            reference::rope(
                tensor::<Flex, 4>(&q, &df),
                tensor(&cos, &df),
                tensor(&sin, &df)
            )
            .into_data(),
        );

        let scores = data([1, 2, 5, 5], 94, 4.0, 0.0);
        let valid = || key_valid::<Flex>(1, 5, &[&[0]], &df);
        assert_eq!(
            causal_softmax(tensor(&scores, &df), valid(), 0.5).into_data(),
            reference::causal_softmax(tensor(&scores, &df), valid(), 0.5).into_data(),
        );

        let (rows, cols) = (
            || targets::<Flex>(&[2, 0], &df),
            || targets(&[39, 0, 7], &df),
        );
        same(
            gather_padded::gather_rows_padded(tensor(&x, &df), rows(), 8),
            reference::gather_rows_padded(tensor(&x, &df), rows(), 8),
        );
        same(
            gather_padded::gather_columns_padded(tensor(&x, &df), cols(), 8),
            reference::gather_columns_padded(tensor(&x, &df), cols(), 8),
        );

        let channels = TensorData::new(channel_scores(100, 95), [100]);
        assert_eq!(
            top_k(tensor::<Flex, 1>(&channels, &df), 10).into_data(),
            reference::top_k(tensor::<Flex, 1>(&channels, &df), 10).into_data(),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Row gather and replacement (the token split's merge)

fn row_tensor<B: Backend>(rows: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(rows.to_vec(), [rows.len()]), device)
}

/// How the token split writes its dense rows' results into the sparse path's output.
#[derive(Clone, Copy, Debug)]
enum RowWrite {
    /// `replace_rows`: written over the sparse results.
    Replace,
    /// `add_rows`: added onto them (a correction).
    Add,
}

impl RowWrite {
    fn fused<B: Backend>(
        self,
        base: Tensor<B, 2>,
        rows: Tensor<B, 1, Int>,
        values: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match self {
            RowWrite::Replace => row_merge::replace_rows(base, rows, values),
            RowWrite::Add => row_merge::add_rows(base, rows, values),
        }
    }

    fn reference<B: Backend>(
        self,
        base: Tensor<B, 2>,
        rows: Tensor<B, 1, Int>,
        values: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match self {
            RowWrite::Replace => row_merge::reference::replace_rows(base, rows, values),
            RowWrite::Add => row_merge::reference::add_rows(base, rows, values),
        }
    }

    /// Kernel launches of the backward of `write(x * 3, rows, gather(x, rows) * 2)`: the
    /// written rows' gather (and, replacing, their zeroing), then the first gather's scatter.
    fn backward_launches(self) -> u64 {
        match self {
            RowWrite::Replace => 3,
            RowWrite::Add => 2,
        }
    }
}

/// As the token split uses them: the dense path on `x[rows]`, the sparse path on every row, the
/// dense results written over the sparse ones or added onto them; forward and dx against burn's
/// select/select_assign. With `residual` the write's output gradient is shared with a residual
/// stream's (as in the model), so a replacing backward zeroes its rows in a copy; without, in
/// place. Last, a base still held elsewhere is left as it was.
fn row_merge_case(write: RowWrite, n: usize, d: usize, rows: &[i64], residual: bool, seed: u64) {
    let (dw, df) = (wgpu(), flex());
    let x = data([n, d], seed, 1.0, 0.0);
    let r = data([n, d], seed + 1, 1.0, 0.0);
    let what = format!("row_merge {write:?} n={n} d={d} m={}", rows.len());

    let xw = tensor::<AW, 2>(&x, &dw).require_grad();
    let out = launches(2, &what, || {
        let dense = row_merge::gather_rows(xw.clone(), row_tensor(rows, &dw)) * 2.0;
        let sparse = xw.clone() * 3.0; // a fresh buffer: written in place
        write.fused(sparse, row_tensor(rows, &dw), dense)
    });
    let skip = if residual { 1.0 } else { 0.0 };
    let grads = launches(write.backward_launches(), &what, || {
        ((out.clone() + xw.clone() * skip) * tensor(&r, &dw))
            .sum()
            .backward()
    });
    let xf = tensor::<AF, 2>(&x, &df).require_grad();
    let dense = row_merge::reference::gather_rows(xf.clone(), row_tensor(rows, &df)) * 2.0;
    let out_ref = write.reference(xf.clone() * 3.0, row_tensor(rows, &df), dense);
    let grads_ref = ((out_ref.clone() + xf.clone() * skip) * tensor(&r, &df))
        .sum()
        .backward();
    assert_close(out, out_ref, &what);
    assert_close(
        xw.grad(&grads).unwrap(),
        xf.grad(&grads_ref).unwrap(),
        &format!("{what} dx"),
    );

    // A base that is still held elsewhere is not written: the write goes to a copy.
    let base = tensor::<W, 2>(&x, &dw);
    let values = tensor::<W, 2>(&data([rows.len(), d], seed + 2, 1.0, 0.0), &dw);
    let written = write.fused(base.clone(), row_tensor(rows, &dw), values.clone());
    let expected = write.reference(
        tensor::<Flex, 2>(&x, &df),
        row_tensor(rows, &df),
        Tensor::from_data(values.into_data(), &df),
    );
    assert_close(written, expected, &format!("{what} shared base"));
    assert_close(
        base,
        tensor::<Flex, 2>(&x, &df),
        &format!("{what} base kept"),
    );
}

#[test]
fn row_add_matches_reference() {
    let _serial = serial();
    row_merge_case(RowWrite::Add, 12, 16, &[11, 0, 5], false, 131); // unsorted, both ends
    row_merge_case(RowWrite::Add, 9, 6, &[4], false, 132); // a width of 6: narrow vectors
    let every_third = (0..64).step_by(3).collect::<Vec<_>>();
    row_merge_case(RowWrite::Add, 64, 40, &every_third, false, 133);
}

#[test]
fn row_merge_matches_reference() {
    let _serial = serial();
    let replace = RowWrite::Replace;
    row_merge_case(replace, 12, 16, &[11, 0, 5], false, 121); // unsorted, both ends, vectorised
    row_merge_case(replace, 12, 16, &[11, 0, 5], true, 121);
    row_merge_case(replace, 9, 6, &[4], true, 122); // a width of 6: narrow vectors
    let every_third = (0..64).step_by(3).collect::<Vec<_>>();
    row_merge_case(replace, 64, 40, &every_third, false, 123);
}
