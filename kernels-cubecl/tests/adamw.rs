//! The fused optimizer kernels (burn-wgpu, lavapipe on a CPU-only machine) against their
//! burn-tensor references (Flex), on random tensors over several steps.

mod common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use common::serial;

use kernels_cubecl::adamw::{
    adamw_update, fused_available, fused_launches, reference, sum_of_squares, AdamWBatch,
    AdamWStep, GlobalNorm,
};

type W = Wgpu;

fn wgpu() -> WgpuDevice {
    let device = WgpuDevice::default();
    let probe = Tensor::<W, 1>::from_floats([1.0, 2.0], &device);
    assert_eq!(probe.sum().into_scalar(), 3.0);
    device
}

/// Deterministic pseudo-random values, uniform in `offset ± scale`.
fn random(len: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            offset + scale * (2.0 * u - 1.0)
        })
        .collect()
}

fn data<const D: usize>(shape: [usize; D], seed: u64, scale: f32) -> TensorData {
    TensorData::new(random(shape.iter().product(), seed, scale, 0.0), shape)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// `|a - b| <= atol + rtol |b|` elementwise.
fn assert_close(a: &[f32], b: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn hyper(time: usize, weight_decay: f32) -> AdamWStep {
    AdamWStep {
        lr: 3e-3,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay,
        time,
    }
}

/// Runs `steps` AdamW steps of `shape` on the kernel (Wgpu) and the reference (Flex) from the
/// same start, with fresh random gradients and clip factors, comparing after each step.
fn run_steps<const D: usize>(shape: [usize; D], steps: usize, weight_decay: f32, seed: u64) {
    let wd = wgpu();
    let fd = Default::default();
    let p0 = data(shape, seed, 1.0);
    let mut pw = Tensor::<W, D>::from_data(p0.clone(), &wd);
    let mut pf = Tensor::<Flex, D>::from_data(p0, &fd);
    let mut mw = Tensor::<W, D>::zeros(shape, &wd);
    let mut vw = Tensor::<W, D>::zeros(shape, &wd);
    let mut mf = Tensor::<Flex, D>::zeros(shape, &fd);
    let mut vf = Tensor::<Flex, D>::zeros(shape, &fd);
    for step in 1..=steps {
        let g = data(shape, seed * 100 + step as u64, 0.5);
        let scale = [1.0f32, 0.37, 1.0, 0.05][step % 4];
        // On odd steps the inputs are also held here, so the kernel must not write over them
        // (it writes in place only into tensors nothing else holds).
        let kept = (step % 2 == 1).then(|| {
            let kept = (pw.clone(), mw.clone(), vw.clone());
            let before = (values(pw.clone()), values(mw.clone()), values(vw.clone()));
            (kept, before)
        });
        let before = fused_launches();
        let (p, m, v) = adamw_update(
            pw,
            Tensor::from_data(g.clone(), &wd),
            mw,
            vw,
            Tensor::from_floats([scale], &wd),
            hyper(step, weight_decay),
        );
        assert_eq!(fused_launches() - before, 1, "one launch per update");
        if let Some(((p0, m0, v0), (p1, m1, v1))) = kept {
            assert_eq!(values(p0), p1, "a held param was overwritten");
            assert_eq!(values(m0), m1, "a held moment_1 was overwritten");
            assert_eq!(values(v0), v1, "a held moment_2 was overwritten");
        }
        (pw, mw, vw) = (p, m, v);
        (pf, mf, vf) = adamw_update(
            pf,
            Tensor::from_data(g, &fd),
            mf,
            vf,
            Tensor::from_floats([scale], &fd),
            hyper(step, weight_decay),
        );
        let what = format!("{shape:?} step {step}");
        assert_close(
            &values(mw.clone()),
            &values(mf.clone()),
            1e-5,
            1e-7,
            &format!("m {what}"),
        );
        assert_close(
            &values(vw.clone()),
            &values(vf.clone()),
            1e-5,
            1e-9,
            &format!("v {what}"),
        );
        assert_close(
            &values(pw.clone()),
            &values(pf.clone()),
            1e-5,
            1e-6,
            &format!("param {what}"),
        );
    }
}

#[test]
fn adamw_update_matches_the_reference_over_steps() {
    let _guard = serial();
    assert!(fused_available::<W>());
    assert!(!fused_available::<Flex>());
    // Vectorised (length a multiple of 4), odd length (scalar loads), several cubes.
    run_steps([32, 96], 5, 0.0, 1);
    run_steps([7, 13], 4, 0.01, 2);
    run_steps([3, 5, 1031], 3, 0.1, 3);
}

/// Many parameters stepped by one [`AdamWBatch`] equal each stepped alone by the reference,
/// over steps; consecutive parameters of one vector width share launches, at most 16 each; a
/// parameter whose tensors are also held elsewhere is stepped on a copy.
#[test]
fn a_batch_of_steps_matches_the_reference_per_parameter() {
    let _guard = serial();
    let wd = wgpu();
    let fd = Default::default();
    // 20 of one width (vectors of 4), then vectors of 1, of 4, of 1 again: 20 / 16 rounded up
    // and 3 launches (lavapipe binds 31 buffers, 7 parameters a launch: 3 and 3).
    let mut shapes = vec![[8usize, 64]; 18];
    shapes.extend([[32, 64], [64, 32], [17, 5], [50_000, 3], [1, 3]]);
    let start = |i: usize| data(shapes[i], 300 + i as u64, 1.0);
    let mut kernel: Vec<[Tensor<W, 2>; 3]> = (0..shapes.len())
        .map(|i| {
            let p = Tensor::from_data(start(i), &wd);
            [
                p,
                Tensor::zeros(shapes[i], &wd),
                Tensor::zeros(shapes[i], &wd),
            ]
        })
        .collect();
    let mut reference: Vec<[Tensor<Flex, 2>; 3]> = (0..shapes.len())
        .map(|i| {
            let p = Tensor::from_data(start(i), &fd);
            [
                p,
                Tensor::zeros(shapes[i], &fd),
                Tensor::zeros(shapes[i], &fd),
            ]
        })
        .collect();
    for step in 1..=3 {
        let scale = [0.37f32, 1.0, 0.05][step % 3];
        let grads: Vec<TensorData> = (0..shapes.len())
            .map(|i| data(shapes[i], 1000 * step as u64 + i as u64, 0.5))
            .collect();
        // Parameter 19 is also held here: the batch must not write over it.
        let held = kernel[19][0].clone();
        let held_values = values(held.clone());
        let before = fused_launches();
        let mut batch = AdamWBatch::new(Tensor::<W, 1>::from_floats([scale], &wd));
        kernel = kernel
            .into_iter()
            .zip(&grads)
            .map(|([p, m, v], g)| {
                let g = Tensor::from_data(g.clone(), &wd);
                let (p, m, v) = batch.push(p, g, m, v, hyper(step, 0.01));
                [p, m, v]
            })
            .collect();
        assert_eq!(
            fused_launches() - before,
            0,
            "nothing launched before finish"
        );
        let per_launch = batch.params_per_launch().unwrap() as u64;
        assert!(
            (7..=16).contains(&per_launch),
            "{per_launch} parameters a launch"
        );
        batch.finish();
        let launches = 20u64.div_ceil(per_launch) + 3;
        assert_eq!(fused_launches() - before, launches, "launches per step");
        assert_eq!(values(held), held_values, "a held param was overwritten");
        reference = reference
            .into_iter()
            .zip(&grads)
            .map(|([p, m, v], g)| {
                let g = Tensor::from_data(g.clone(), &fd);
                let scale = Tensor::from_floats([scale], &fd);
                let (p, m, v) = reference::adamw_update(p, g, m, v, scale, hyper(step, 0.01));
                [p, m, v]
            })
            .collect();
        for (i, (got, want)) in kernel.iter().zip(&reference).enumerate() {
            for (what, got, want) in [("param", 0, 0), ("m", 1, 1), ("v", 2, 2)]
                .map(|(what, a, b)| (what, &got[a], &want[b]))
            {
                assert_close(
                    &values(got.clone()),
                    &values(want.clone()),
                    1e-5,
                    1e-7,
                    &format!("{what} of parameter {i} {:?}, step {step}", shapes[i]),
                );
            }
        }
    }
}

/// A batch dropped without `finish` still runs its steps: the tensors `push` returned are never
/// left as they were before the step.
#[test]
fn a_dropped_batch_runs_its_steps() {
    let _guard = serial();
    let (wd, fd) = (wgpu(), Default::default());
    let shape = [8, 64];
    let (p0, g) = (data(shape, 70, 1.0), data(shape, 71, 0.5));
    let stepped = {
        let mut batch = AdamWBatch::new(Tensor::<W, 1>::from_floats([1.0], &wd));
        let g = Tensor::<W, 2>::from_data(g.clone(), &wd);
        let (p, _, _) = batch.push(
            Tensor::from_data(p0.clone(), &wd),
            g.clone(),
            g.zeros_like(),
            g.zeros_like(),
            hyper(1, 0.0),
        );
        p
    };
    let g = Tensor::<Flex, 2>::from_data(g, &fd);
    let (want, _, _) = reference::adamw_update(
        Tensor::from_data(p0, &fd),
        g.clone(),
        g.zeros_like(),
        g.zeros_like(),
        Tensor::from_floats([1.0], &fd),
        hyper(1, 0.0),
    );
    assert_close(&values(stepped), &values(want), 1e-5, 1e-7, "dropped batch");
}

#[test]
fn the_reference_is_burns_adamw() {
    // The reference against burn's own AdamW of a gradient scaled beforehand (as clipping does),
    // on Flex: equal bit for bit.
    use burn::backend::Autodiff;
    use burn::module::{Module, Param};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    type A = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct One<B: Backend> {
        w: Param<Tensor<B, 2>>,
    }

    let device = Default::default();
    let shape = [6, 10];
    let mut model = One::<A> {
        w: Param::from_tensor(Tensor::from_data(data(shape, 7, 1.0), &device)),
    };
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.05)
        .init::<A, One<A>>();
    let mut p = model.w.val().inner();
    let mut m = Tensor::<Flex, 2>::zeros(shape, &device);
    let mut v = Tensor::<Flex, 2>::zeros(shape, &device);
    for step in 1..=4 {
        let scale = 0.5f32;
        let target = Tensor::<A, 2>::from_data(data(shape, 70 + step as u64, 1.0), &device);
        let loss = (model.w.val() - target.clone()).square().sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad = grads.remove::<Flex, 2>(model.w.id).unwrap();
        let scaled = grad.clone() * Tensor::<Flex, 2>::from_floats([[scale]], &device);
        grads.register(model.w.id, scaled);
        model = optim.step(1e-2, model, grads);
        let hyper = AdamWStep {
            lr: 1e-2,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.05,
            time: step,
        };
        (p, m, v) =
            reference::adamw_update(p, grad, m, v, Tensor::from_floats([scale], &device), hyper);
        assert_eq!(
            values(p.clone()),
            values(model.w.val().inner()),
            "step {step}"
        );
    }
}

#[test]
fn sums_of_squares_and_the_clip_factor_match_the_reference() {
    let _guard = serial();
    let wd = wgpu();
    let fd = Default::default();
    let shapes: [[usize; 2]; 4] = [[32, 4096], [1, 3], [50_000, 3], [17, 64]];
    let mut gw = GlobalNorm::<W>::new();
    let mut gf = GlobalNorm::<Flex>::new();
    assert!(gw.is_empty());
    for (i, shape) in shapes.iter().enumerate() {
        let d = data(*shape, 40 + i as u64, 0.01);
        let exact: f64 = d
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum();
        let tw = Tensor::<W, 2>::from_data(d.clone(), &wd);
        let tf = Tensor::<Flex, 2>::from_data(d, &fd);
        let before = fused_launches();
        let sw = sum_of_squares(tw.clone());
        assert_eq!(fused_launches() - before, 1, "one launch per sum");
        // The kernel sums in a tree, burn's reduction in another order: both against f64.
        assert_close(
            &values(sw),
            &[exact as f32],
            1e-5,
            0.0,
            &format!("kernel sum of squares {shape:?}"),
        );
        assert_close(
            &values(reference::sum_of_squares(tf.clone())),
            &[exact as f32],
            1e-4,
            0.0,
            &format!("reference sum of squares {shape:?}"),
        );
        gw.push(tw);
        gf.push(tf);
    }
    let before = fused_launches();
    let (nw, fw) = gw.clip(1.0).unwrap();
    // One launch per run of tensors of one vector width (4, 1, then 4 and 4) and one more.
    assert_eq!(
        fused_launches() - before,
        3 + 1,
        "one launch per group of tensors and one more"
    );
    let (nf, ff) = gf.clip(1.0).unwrap();
    let norm = values(nf)[0];
    assert!(norm > 1.0, "{norm}: the test wants a clipping norm");
    assert_close(&values(nw), &[norm], 1e-5, 0.0, "norm");
    assert_close(&values(fw), &values(ff), 1e-5, 0.0, "factor");

    // A norm below the limit: factor 1.
    let mut g = GlobalNorm::<W>::new();
    g.push(Tensor::<W, 1>::from_floats([0.3, 0.4], &wd));
    let (n, f) = g.clip(1.0).unwrap();
    assert_close(&values(n), &[0.5], 1e-6, 0.0, "small norm");
    assert_eq!(values(f), [1.0]);

    // A non-finite norm: factor 1 (nothing is clipped), the norm reported as it is.
    for bad in [f32::INFINITY, f32::NAN] {
        let mut g = GlobalNorm::<W>::new();
        g.push(Tensor::<W, 1>::from_floats([1.0, bad], &wd));
        let (n, f) = g.clip(1.0).unwrap();
        assert!(!values(n)[0].is_finite());
        assert_eq!(values(f), [1.0], "factor for a norm of {bad}");
        let mut g = GlobalNorm::<Flex>::new();
        g.push(Tensor::<Flex, 1>::from_floats([1.0, bad], &fd));
        assert_eq!(values(g.clip(1.0).unwrap().1), [1.0]);
    }

    assert!(GlobalNorm::<W>::new().clip(1.0).is_none());
    assert!(GlobalNorm::<Flex>::new().clip(1.0).is_none());
}
