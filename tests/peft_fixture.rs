//! Our LoRA against HF `peft` on the committed fixture (scripts/make_peft_fixture.py): a rank-8
//! adapter on every projection of tests/fixtures/tiny-llama, saved by `peft`, must reproduce
//! peft's logits, loss and every lora_A / lora_B gradient to 1e-4 (normwise relative), merge
//! without changing the outputs, and leave the base weights without gradients.
//!
//! The reverse direction (peft loading an adapter we saved) uses
//! tests/fixtures/peft-tiny/ours/, see `ours_saved_adapter_fixture_is_current`.

mod peft_support;

use burn::backend::Autodiff;
use burn::module::{ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};
use integration_tests::{fixture, scratch, TestBackend};
use llama_burn::golden::relative_error;
use llama_burn::{causal_lm_loss, load_hf_folder, LlamaForCausalLM, LlamaProjection};
use lora::{LoraAdapter, LoraConfig};
use peft_support::{batch, expected, floats, values};
use serde_json::{json, Value};

type Ad = Autodiff<TestBackend>;

const TOL: f64 = 1e-4;

fn base<B: burn::tensor::backend::Backend>() -> LlamaForCausalLM<B> {
    load_hf_folder::<B>(&fixture("tiny-llama"), DType::F32, &Default::default()).unwrap()
}

fn with_peft_adapter<B: burn::tensor::backend::Backend>() -> LlamaForCausalLM<B> {
    base::<B>()
        .load_peft_adapter(&fixture("peft-tiny/adapter"), &Default::default())
        .unwrap()
}

fn logits_of<B: burn::tensor::backend::Backend>(
    model: &LlamaForCausalLM<B>,
    json: &Value,
) -> Tensor<B, 3> {
    let (ids, mask, _) = batch::<B>(json, &Default::default());
    model.forward(ids, mask)
}

/// Records, by module path, which float parameters received a gradient.
struct GradsPresent<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    with_grad: Vec<String>,
    without_grad: Vec<String>,
}

impl<'a, B: AutodiffBackend> GradsPresent<'a, B> {
    /// Visits `model` and sorts its float parameters by whether `grads` holds a gradient for them.
    fn of<M: burn::module::Module<B>>(model: &M, grads: &'a B::Gradients) -> Self {
        let mut visitor = Self {
            grads,
            path: Vec::new(),
            with_grad: Vec::new(),
            without_grad: Vec::new(),
        };
        model.visit(&mut visitor);
        visitor
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradsPresent<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        match param.grad(self.grads) {
            Some(_) => self.with_grad.push(name),
            None => self.without_grad.push(name),
        }
    }
}

#[test]
fn peft_logits_loss_and_adapter_gradients_match() {
    let json = expected();
    let model = with_peft_adapter::<Ad>();
    assert_eq!(model.lora_adapters().len(), 2 * 7);
    let (ids, mask, labels) = batch::<Ad>(&json, &Default::default());
    let logits = model.forward(ids, mask);

    let logits_err = relative_error(&values(logits.clone()), &floats(&json["logits"]));
    let loss = causal_lm_loss(logits, labels);
    let ours_loss = values(loss.clone())[0] as f64;
    let peft_loss = json["loss"].as_f64().unwrap();
    println!("logits rel err {logits_err:.2e}; loss ours {ours_loss} peft {peft_loss}");
    assert!(logits_err < TOL, "logits rel err {logits_err}");
    assert!(
        ((ours_loss - peft_loss) / peft_loss).abs() < TOL,
        "loss {ours_loss} vs {peft_loss}"
    );

    let grads = loss.backward();
    let peft_grads = json["grads"].as_object().unwrap();
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (module, adapter) in model.lora_adapters() {
        let (a_name, b_name) = lora::peft_tensor_names(&module);
        for (name, param) in [(a_name, &adapter.lora_a), (b_name, &adapter.lora_b)] {
            let grad = param
                .grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(grad.dims().to_vec(), param.dims().to_vec());
            let err = relative_error(&values(grad), &floats(&peft_grads[&name]));
            assert!(err < TOL, "{name}: gradient rel err {err}");
            worst = worst.max(err);
            checked += 1;
        }
    }
    assert_eq!(checked, peft_grads.len(), "every peft gradient is compared");
    println!("{checked} adapter gradients, worst rel err {worst:.2e}");

    // Only A and B get gradients: every base parameter is frozen.
    let layer0 = &model.model.layers[0];
    assert!(layer0.self_attn.q_proj.weight.grad(&grads).is_none());
    assert!(layer0.mlp.down_proj.weight.grad(&grads).is_none());
    assert!(model.model.embed_tokens.weight.grad(&grads).is_none());
    let visitor = GradsPresent::<Ad>::of(&model, &grads);
    assert_eq!(visitor.with_grad.len(), 2 * 14, "{:?}", visitor.with_grad);
    assert!(
        visitor.with_grad.iter().all(|p| p.contains(".lora.lora_")),
        "{:?}",
        visitor.with_grad
    );
    assert!(visitor.without_grad.iter().all(|p| !p.contains(".lora.")));
    assert!(!visitor.without_grad.is_empty());
}

#[test]
fn peft_adapter_loads_for_inference_and_changes_the_base() {
    let json = expected();
    let adapted = logits_of(&with_peft_adapter::<TestBackend>(), &json);
    let err = relative_error(&values(adapted.clone()), &floats(&json["logits"]));
    println!("inference logits rel err {err:.2e}");
    assert!(err < TOL, "logits rel err {err}");

    let config = with_peft_adapter::<TestBackend>()
        .lora_config()
        .cloned()
        .unwrap();
    assert_eq!((config.r, config.alpha, config.dropout), (8, 16.0, 0.0));
    assert_eq!(
        config.targets,
        LlamaProjection::target_modules(&LlamaProjection::ALL)
    );

    let plain = logits_of(&base::<TestBackend>(), &json);
    let effect = relative_error(&values(plain), &floats(&json["logits"]));
    assert!(
        effect > 1e-2,
        "the adapter should change the logits ({effect})"
    );
}

#[test]
fn peft_adapter_merges_into_the_same_outputs() {
    let json = expected();
    let model = with_peft_adapter::<TestBackend>();
    let before = values(logits_of(&model, &json));
    let merged = model.merge_lora().unwrap();
    assert!(merged.lora_adapters().is_empty());
    assert!(merged.lora_config().is_none());
    let after = values(logits_of(&merged, &json));
    let before64: Vec<f64> = before.iter().map(|&v| v as f64).collect();
    let err = relative_error(&after, &before64);
    println!("merged vs adapter logits rel err {err:.2e}");
    assert!(err < 1e-5, "merged logits rel err {err}");
}

#[test]
fn peft_adapter_stays_f32_on_a_half_precision_base() {
    let json = expected();
    let model = with_peft_adapter::<TestBackend>().with_dtype(DType::F16);
    assert_eq!(
        model.model.layers[0].self_attn.q_proj.weight.val().dtype(),
        DType::F16
    );
    for (module, adapter) in model.lora_adapters() {
        assert_eq!(adapter.lora_a.val().dtype(), DType::F32, "{module}");
        assert_eq!(adapter.lora_b.val().dtype(), DType::F32, "{module}");
    }
    let logits = logits_of(&model, &json);
    assert_eq!(logits.dtype(), DType::F16);
    let err = relative_error(&values(logits), &floats(&json["logits"]));
    println!("f16 base + f32 adapter: logits rel err {err:.2e}");
    assert!(err < 1e-2, "f16 logits rel err {err}");
}

#[test]
fn fresh_lora_leaves_outputs_unchanged_and_trains_only_adapters() {
    let json = expected();
    let device = Default::default();
    let config = LoraConfig::new()
        .with_r(4)
        .with_targets(LlamaProjection::target_modules(&[
            LlamaProjection::Q,
            LlamaProjection::Up,
        ]));
    let plain = values(logits_of(&base::<Ad>(), &json));
    let model = base::<Ad>().with_lora(&config, &device);
    assert_eq!(model.lora_adapters().len(), 2 * 2);
    let (ids, mask, labels) = batch::<Ad>(&json, &device);
    let logits = model.forward(ids, mask);
    assert_eq!(
        values(logits.clone()),
        plain,
        "B = 0 must leave the logits bit-identical"
    );

    let grads = causal_lm_loss(logits, labels).backward();
    let visitor = GradsPresent::<Ad>::of(&model, &grads);
    assert_eq!(visitor.with_grad.len(), 2 * 4, "{:?}", visitor.with_grad);
    assert!(visitor.with_grad.iter().all(|p| p.contains(".lora.lora_")));
    // With B = 0 the gradient reaches B only: dL/dA = B^T (...) = 0.
    let (_, adapter) = &model.lora_adapters()[0];
    let ga = values(adapter.lora_a.grad(&grads).unwrap());
    let gb = values(adapter.lora_b.grad(&grads).unwrap());
    assert!(ga.iter().all(|&v| v == 0.0));
    assert!(gb.iter().any(|&v| v != 0.0));
}

#[test]
fn lora_built_on_the_inner_backend_keeps_its_split_through_train() {
    use burn::module::Module;
    let json = expected();
    let device = Default::default();
    let model = base::<TestBackend>().with_lora(&LoraConfig::new().with_r(2), &device);
    let model: LlamaForCausalLM<Ad> = model.train();
    let (ids, mask, labels) = batch::<Ad>(&json, &device);
    let grads = causal_lm_loss(model.forward(ids, mask), labels).backward();
    let (_, adapter) = &model.lora_adapters()[0];
    assert!(adapter.lora_b.grad(&grads).is_some());
    assert!(model.model.layers[0]
        .self_attn
        .q_proj
        .weight
        .grad(&grads)
        .is_none());
}

#[test]
fn merging_non_finite_weights_is_refused_by_module() {
    let device = Default::default();
    let config = LoraConfig::new()
        .with_r(1)
        .with_targets(LlamaProjection::target_modules(&[LlamaProjection::V]));
    let mut model = base::<TestBackend>().with_lora(&config, &device);
    let proj = &mut model.model.layers[1].self_attn.v_proj;
    let (d_out, d_in) = proj.dims();
    proj.lora = Some(LoraAdapter::from_weights(
        &config,
        TensorData::new(vec![1e30f32; d_in], [1, d_in]),
        TensorData::new(vec![1e30f32; d_out], [d_out, 1]),
        &device,
    ));
    let err = model.merge_lora().unwrap_err();
    assert!(
        err.to_string().contains("model.layers.1.self_attn.v_proj"),
        "{err}"
    );
}

/// The adapter our code saved into tests/fixtures/peft-tiny/ours/, which
/// `python3 scripts/make_peft_fixture.py --check-ours tests/fixtures/peft-tiny/ours` loads into
/// peft and compares with the logits recorded in ours.json.
///
/// This test checks that the committed folder is what our code writes today (byte-identical
/// files on re-saving) and that its recorded logits are ours. `SPARSELORA_WRITE_PEFT_OURS=1`
/// regenerates the folder instead (then rerun the Python check).
#[test]
fn ours_saved_adapter_fixture_is_current() {
    let dir = fixture("peft-tiny/ours");
    let json = expected();
    let device = Default::default();
    let base_name = "tests/fixtures/tiny-llama";
    if std::env::var_os("SPARSELORA_WRITE_PEFT_OURS").is_some() {
        write_ours(&dir, &json, base_name);
    }

    let ours: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ours.json")).unwrap()).unwrap();
    let model = base::<TestBackend>()
        .load_peft_adapter(&dir, &device)
        .unwrap();
    let logits = values(logits_of(&model, &ours));
    let err = relative_error(&logits, &floats(&ours["logits"]));
    assert!(err < 1e-6, "ours.json logits are stale: rel err {err}");

    let again = scratch("peft-ours-resave");
    model.save_peft_adapter(&again, base_name).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(
            std::fs::read(dir.join(file)).unwrap() == std::fs::read(again.join(file)).unwrap(),
            "{file} differs from what our code writes now"
        );
    }
    let _ = std::fs::remove_dir_all(&again);
}

/// Regenerates tests/fixtures/peft-tiny/ours/: rank 4, alpha 8, on q, v, gate, down, with A from
/// our init and B a fixed non-zero pattern, plus our logits on the fixture batch.
fn write_ours(dir: &std::path::Path, json: &Value, base_name: &str) {
    let device = Default::default();
    let config =
        LoraConfig::new()
            .with_r(4)
            .with_alpha(8.0)
            .with_targets(LlamaProjection::target_modules(&[
                LlamaProjection::Q,
                LlamaProjection::V,
                LlamaProjection::Gate,
                LlamaProjection::Down,
            ]));
    let mut model = base::<TestBackend>().with_lora(&config, &device);
    for layer in &mut model.model.layers {
        for target in LlamaProjection::ALL {
            let proj = layer.projection_mut(target);
            let Some(adapter) = proj.lora.take() else {
                continue;
            };
            let (d_out, _) = adapter.dims();
            let b: Vec<f32> = (0..d_out * config.r)
                .map(|i| 0.1 * ((i * 7 + 3) as f32).sin())
                .collect();
            proj.lora = Some(LoraAdapter::from_weights(
                &config,
                adapter.lora_a.val().into_data(),
                TensorData::new(b, [d_out, config.r]),
                &device,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    model.save_peft_adapter(dir, base_name).unwrap();
    let logits = logits_of(&model, json);
    let ours = json!({
        "input_ids": json["input_ids"],
        "attention_mask": json["attention_mask"],
        "logits_shape": logits.dims(),
        "logits": values(logits),
        "note": "logits of tests/fixtures/tiny-llama with this folder's adapter, computed by our \
                 code (llama-burn, f32, CPU); checked against peft by \
                 scripts/make_peft_fixture.py --check-ours",
    });
    let mut text = serde_json::to_string(&ours).unwrap();
    text.push('\n');
    std::fs::write(dir.join("ours.json"), text).unwrap();
    println!(
        "wrote {} ({} adapters)",
        dir.display(),
        model.lora_adapters().len()
    );
}
