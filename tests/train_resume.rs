//! The training loop on the CPU: a run killed and resumed ends with exactly the adapter of an
//! uninterrupted run; a diverging run stops with a clear error and keeps its last good checkpoint.

use std::path::Path;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use integration_tests::scratch;
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaProjection};
use lora::LoraConfig;
use trainer::checkpoint::latest_checkpoint;
use trainer::{CollateConfig, ExampleBatches, RunOptions, TrainConfig, TrainError, TrainExample};

type B = Autodiff<burn::backend::Flex>;

/// The backend's random generator is global: tests that seed it must not interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const VOCAB: usize = 300;

/// 12 deterministic examples: a "prompt" of ignored tokens, then an "answer".
fn examples() -> Vec<TrainExample> {
    (0..12)
        .map(|i| {
            let len = 6 + i % 5;
            let input_ids: Vec<u32> = (0..len)
                .map(|t| ((i * 31 + t * 17) % VOCAB) as u32)
                .collect();
            TrainExample::with_prompt_len(input_ids, 3)
        })
        .collect()
}

fn config(max_steps: usize, lr: f64, save_every: usize) -> TrainConfig {
    let text = format!(
        "learning_rate = {lr:e}\nepochs = 3\nmax_steps = {max_steps}\nbatch_size = 4\n\
         micro_batch_size = 2\nmax_seq_len = 64\nsave_every = {save_every}\nkeep_checkpoints = 5\n"
    );
    let config: TrainConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    config
}

/// The same base model and fresh adapters every time (as a restarted process would build them).
fn model(device: &burn::backend::flex::FlexDevice) -> LlamaForCausalLM<B> {
    B::seed(device, 7);
    let config = LlamaConfig {
        vocab_size: VOCAB,
        ..LlamaConfig::preset("tiny").unwrap()
    };
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        targets: LlamaProjection::target_modules(&[
            LlamaProjection::Q,
            LlamaProjection::V,
            LlamaProjection::Down,
        ]),
        ..LoraConfig::default()
    };
    config.init_random::<B>(device).with_lora(&lora, device)
}

fn run(
    out: &Path,
    resume: bool,
    stop_after: Option<usize>,
    config: &TrainConfig,
) -> Result<(LlamaForCausalLM<B>, trainer::checkpoint::TrainState), TrainError> {
    let device = Default::default();
    let data = ExampleBatches::new(
        examples(),
        config.micro_batch(),
        config.seed,
        CollateConfig::new(0),
    );
    let options = RunOptions {
        out: out.to_owned(),
        resume,
        stop_after,
        base_model_name: "tiny".into(),
    };
    trainer::train(
        model(&device),
        &data,
        config,
        &options,
        None,
        &mut (),
        &device,
    )
}

fn adapter_values(model: &LlamaForCausalLM<B>) -> Vec<f32> {
    model
        .lora_adapters()
        .into_iter()
        .flat_map(|(_, a)| {
            let mut v: Vec<f32> = a.lora_a.val().into_data().to_vec().unwrap();
            v.extend(a.lora_b.val().into_data().to_vec::<f32>().unwrap());
            v
        })
        .collect()
}

#[test]
fn killed_and_resumed_run_ends_with_the_same_adapter() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = config(8, 5e-3, 3);
    let straight = scratch("resume-straight");
    let (uninterrupted, state) = run(&straight, false, None, &config).unwrap();
    assert_eq!(state.step, 8);

    let broken = scratch("resume-broken");
    let (_, first) = run(&broken, false, Some(5), &config).unwrap();
    assert_eq!(first.step, 5, "stopped as if killed after 5 steps");
    assert_eq!(latest_checkpoint(&broken).unwrap().unwrap().1.step, 5);
    let (resumed, second) = run(&broken, true, None, &config).unwrap();
    assert_eq!(second.step, 8);

    let (a, b) = (adapter_values(&uninterrupted), adapter_values(&resumed));
    assert_eq!(a.len(), b.len());
    let max_diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert_eq!(max_diff, 0.0, "resumed adapter differs by {max_diff}");
    // Training did something: B started at zero.
    assert!(b.iter().any(|&v| v != 0.0));

    // The loss fell.
    let metrics = trainer::metrics::MetricsLog::read(&straight.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.last().unwrap().loss < metrics[0].loss,
        "{metrics:?}"
    );
}

#[test]
fn diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("diverge");
    let err = match run(&out, false, None, &config(30, 1e38, 1)) {
        Ok(_) => panic!("a learning rate of 1e38 must overflow f32"),
        Err(e) => e,
    };
    assert!(matches!(err, TrainError::NonFiniteLoss { .. }), "{err}");
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
    let TrainError::NonFiniteLoss { step, .. } = err else {
        unreachable!()
    };
    assert!(
        step >= 1,
        "the first step (lr 0 at warm-up start) is finite"
    );
    let (dir, state) = latest_checkpoint(&out)
        .unwrap()
        .expect("a checkpoint before divergence");
    assert_eq!(
        state.step, step,
        "the newest checkpoint is the last finite step"
    );
    assert!(dir.join("adapter_model.safetensors").is_file());
    assert!(state.last_loss.is_finite());
}
