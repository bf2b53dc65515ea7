//! Adapter work on the real all-MiniLM-L6-v2, per backend: a training step (forward, backward,
//! AdamW) of a seq_bn adapter at batch 32 × 64 and 32 × 128 tokens and of full fine-tuning;
//! inference at 64 × 128; Fuse of 2, 4 and 8 adapters (training step and inference, 32 × 64);
//! LoRA unmerged, merged, and the bare backbone (inference, 64 × 128).
//!
//! `cargo bench --bench adapters --features flex` (add `wgpu` for the GPU backend); one group
//! per kind of work, one function per backend and size, so criterion's folders
//! (`$CARGO_TARGET_DIR/criterion/<group>/<function>`) name what was measured.

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::lora::LoraConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::{assets, EncoderInput, Pretrained, TextTokenizer};
use sinew::fusion::{AdapterModel, FusionConfig};
use sinew::trainer::train::{set_regime, Regime, TaskData};

/// `batch` different texts of real prose, each at least `tokens` long (cut there).
fn texts_input<B: Backend>(
    tokenizer: &TextTokenizer,
    batch: usize,
    tokens: usize,
) -> EncoderInput<B> {
    let texts: Vec<String> = (0..batch)
        .map(|i| {
            (0..20)
                .map(|j| format!("Row {i} clause {j}: adapters keep the pretrained encoder frozen while tasks share it."))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let encoded = tokenizer.encode(&texts).unwrap();
    assert!(encoded.input_ids.iter().all(|r| r.len() == tokens));
    encoded.to_input(&B::Device::default())
}

fn two_labels() -> HeadConfig {
    HeadConfig::classification(&["a".into(), "b".into()])
}

/// The backbone with `adapters` seq_bn adapters named `a0`, `a1`, … (heads included), truncating
/// at `tokens`.
fn model<B: Backend>(adapters: usize, tokens: usize) -> (AdapterModel<B>, TextTokenizer) {
    let device = B::Device::default();
    let dir = assets::ensure_default_model().expect("fetch the model: cargo run -- fetch");
    let Pretrained {
        config,
        model,
        tokenizer,
    } = Pretrained::<B>::load(&dir, Some(tokens), &device).unwrap();
    let mut model = AdapterModel::new(model, config);
    for i in 0..adapters {
        let name = format!("a{i}");
        model
            .add_adapter(&name, MethodConfig::Bottleneck(BnConfig::seq_bn()), &device)
            .unwrap();
        model.add_head(&name, two_labels(), &device).unwrap();
    }
    (model, tokenizer)
}

fn task(name: &str) -> TaskData {
    TaskData {
        name: name.into(),
        train: Vec::new(),
        dev: Vec::new(),
        classes: 2,
    }
}

/// One optimizer step on `input` (alternating labels): forward, cross-entropy, backward, AdamW.
fn step<B: AutodiffBackend, O: Optimizer<AdapterModel<B>, B>>(
    model: AdapterModel<B>,
    optimizer: &mut O,
    input: &EncoderInput<B>,
) -> (AdapterModel<B>, B::FloatElem) {
    let device = input.input_ids.device();
    let [batch, _] = input.input_ids.dims();
    let targets = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    let logits = model.forward(input).unwrap().logits.unwrap();
    let mut loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    if let Some(reg) = model.fusion_regularization_loss() {
        loss = loss + reg;
    }
    // Reading the loss back makes lazy backends finish this step's forward; the backward and
    // the update are finished by the next step, whose forward reads the updated weights.
    let value = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(1e-4, model, grads), value)
}

/// A criterion group of `batch` elements per call: 10 samples, 1 s warm-up, 10 s measurement
/// (calls take seconds).
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    batch: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(batch as u64));
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(10));
    group
}

fn train_step<B: AutodiffBackend>(
    c: &mut Criterion,
    name: &str,
    id: BenchmarkId,
    model: AdapterModel<B>,
    input: EncoderInput<B>,
) {
    let [batch, _] = input.input_ids.dims();
    let mut optimizer = AdamWConfig::new().init::<B, AdapterModel<B>>();
    let mut model = Some(model);
    let mut group = group(c, name, batch);
    group.bench_function(id, |b| {
        b.iter(|| {
            let (next, loss) = step(model.take().unwrap(), &mut optimizer, &input);
            model = Some(next);
            loss
        })
    });
    group.finish();
}

fn inference<B: Backend>(
    c: &mut Criterion,
    name: &str,
    id: BenchmarkId,
    model: &AdapterModel<B>,
    input: &EncoderInput<B>,
) {
    let [batch, _] = input.input_ids.dims();
    let mut group = group(c, name, batch);
    group.bench_function(id, |b| {
        b.iter(|| {
            model
                .forward(input)
                .unwrap()
                .encoded
                .last_hidden_state
                .into_data()
        })
    });
    group.finish();
}

fn bench_backend<B: Backend>(c: &mut Criterion, backend: &str) {
    type A<B> = Autodiff<B>;
    // Adapter training step (ST-A) at 64 and 128 tokens, and full fine-tuning at 64.
    for tokens in [64, 128] {
        let (mut model, tokenizer) = model::<A<B>>(1, tokens);
        set_regime(&mut model, &Regime::Adapters, &[task("a0")]).unwrap();
        model.set_active(Some("a0")).unwrap();
        let input = texts_input(&tokenizer, 32, tokens);
        let id = BenchmarkId::new(backend, format!("32x{tokens}"));
        train_step(c, "train_step_seq_bn", id, model, input);
    }
    {
        let (mut model, tokenizer) = model::<A<B>>(1, 64);
        set_regime(&mut model, &Regime::Head { backbone: true }, &[task("a0")]).unwrap();
        let input = texts_input(&tokenizer, 32, 64);
        train_step(
            c,
            "train_step_full",
            BenchmarkId::new(backend, "32x64"),
            model,
            input,
        );
    }
    // Fuse of 2, 4, 8 adapters: training step (fusion and head) and inference.
    for n in [2, 4, 8] {
        let (mut model, tokenizer) = model::<A<B>>(n, 64);
        let names: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let device = B::Device::default();
        let fusion = model
            .add_fusion(&names, FusionConfig::dynamic(), &device)
            .unwrap();
        model.add_head(&fusion, two_labels(), &device).unwrap();
        let regime = Regime::Fusion {
            name: fusion.clone(),
            unfreeze_adapters: false,
        };
        set_regime(&mut model, &regime, &[task(&fusion)]).unwrap();
        let input = texts_input(&tokenizer, 32, 64);
        inference(
            c,
            "fuse_inference",
            BenchmarkId::new(backend, n),
            &model.valid(),
            &texts_input::<B>(&tokenizer, 32, 64),
        );
        train_step(
            c,
            "fuse_train_step",
            BenchmarkId::new(backend, n),
            model,
            input,
        );
    }
    // Inference at 64 × 128: bare backbone, one seq_bn adapter, LoRA unmerged and merged.
    let (mut model, tokenizer) = model::<B>(1, 128);
    let device = B::Device::default();
    model
        .add_adapter("lora", MethodConfig::Lora(LoraConfig::lora()), &device)
        .unwrap();
    let input = texts_input(&tokenizer, 64, 128);
    model.set_active(None).unwrap();
    inference(
        c,
        "inference_64x128",
        BenchmarkId::new(backend, "bare"),
        &model,
        &input,
    );
    model.set_active(Some("a0")).unwrap();
    inference(
        c,
        "inference_64x128",
        BenchmarkId::new(backend, "seq_bn"),
        &model,
        &input,
    );
    model.set_active(Some("lora")).unwrap();
    inference(
        c,
        "inference_64x128",
        BenchmarkId::new(backend, "lora_unmerged"),
        &model,
        &input,
    );
    model.merge_adapter("lora").unwrap();
    inference(
        c,
        "inference_64x128",
        BenchmarkId::new(backend, "lora_merged"),
        &model,
        &input,
    );
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "ndarray")]
    bench_backend::<sinew::backend::NdArrayBackend>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_backend::<sinew::backend::FlexBackend>(c, "flex");
    #[cfg(feature = "wgpu")]
    bench_backend::<sinew::backend::WgpuBackend>(c, "wgpu");
}

criterion_group!(adapters, benches);
criterion_main!(adapters);
