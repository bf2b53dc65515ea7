//! Adapter work on the real all-MiniLM-L6-v2, per backend: a training step (forward, backward,
//! AdamW) of a seq_bn adapter at batch 32 × 64 and 32 × 128 tokens and of full fine-tuning;
//! inference at 64 × 128; Fuse of 2, 4 and 8 adapters (training step and inference, 32 × 64);
//! LoRA unmerged, merged, and the bare backbone (inference, 64 × 128). The fast paths, each
//! against the plain path: a training step of an adapter in layers 3–5 from the tokens and from
//! the cached states entering layer 3; `Parallel` of two such adapters against one pass each;
//! one mixed batch over four adapters against a pass per adapter.
//!
//! `cargo bench --bench adapters --features flex` (add `wgpu` for the GPU backend); one group
//! per kind of work, one function per backend and size, so criterion's folders
//! (`$CARGO_TARGET_DIR/criterion/<group>/<function>`) name what was measured.

mod common;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use common::{model, model_of, step, task, texts_input, upper_half};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sinew::adapter::lora::LoraConfig;
use sinew::adapter::MethodConfig;
use sinew::backbone::{EncoderInput, Start};
use sinew::fusion::AdapterModel;
use sinew::trainer::train::{set_regime, Regime};
use sinew_backbone::FusedAutodiff;
use sinew_backbone::FusedOps;

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

fn train_step<B: FusedAutodiff>(
    c: &mut Criterion,
    name: &str,
    id: BenchmarkId,
    model: AdapterModel<B>,
    start: Start<'_, B>,
) {
    let [batch, _] = start.dims();
    let mut optimizer = AdamWConfig::new().init::<B, AdapterModel<B>>();
    let mut model = Some(model);
    let mut group = group(c, name, batch);
    group.bench_function(id, |b| {
        b.iter(|| {
            let (next, loss) = step(model.take().unwrap(), &mut optimizer, &start);
            model = Some(next);
            loss
        })
    });
    group.finish();
}

fn inference<B: FusedOps>(
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

fn bench_backend<B: FusedOps>(c: &mut Criterion, backend: &str) {
    type A<B> = Autodiff<B>;
    // Adapter training step (ST-A) at 64 and 128 tokens, and full fine-tuning at 64.
    for tokens in [64, 128] {
        let (mut model, tokenizer) = model::<A<B>>(1, tokens);
        set_regime(&mut model, &Regime::Adapters, &[task("a0")]).unwrap();
        model.set_active(Some("a0")).unwrap();
        let input = texts_input(&tokenizer, 32, tokens);
        let id = BenchmarkId::new(backend, format!("32x{tokens}"));
        train_step(c, "train_step_seq_bn", id, model, Start::Tokens(&input));
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
            Start::Tokens(&input),
        );
    }
    // Fuse of 2, 4, 8 adapters: training step (fusion and head) and inference.
    for n in [2, 4, 8] {
        let (mut model, tokenizer) = model::<A<B>>(n, 64);
        sinew::works::fuse_all(&mut model).unwrap();
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
            Start::Tokens(&input),
        );
    }
    fast_paths::<B>(c, backend);
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

/// The fast paths against the plain ones.
fn fast_paths<B: FusedOps>(c: &mut Criterion, backend: &str) {
    // An adapter in layers 3–5: a step from the tokens, and from the cached states entering
    // layer 3 (what the activation cache's epochs after the first run).
    {
        let (mut model, tokenizer) = model_of::<Autodiff<B>>(1, 128, upper_half());
        set_regime(&mut model, &Regime::Adapters, &[task("a0")]).unwrap();
        model.set_active(Some("a0")).unwrap();
        let input = texts_input::<Autodiff<B>>(&tokenizer, 32, 128);
        let id = BenchmarkId::new(backend, "32x128_from_tokens");
        train_step(
            c,
            "cached_prefix_step",
            id,
            model.clone(),
            Start::Tokens(&input),
        );
        let plain = texts_input::<B>(&tokenizer, 32, 128);
        let hidden = model.backbone().valid().hidden_before(&plain, 3);
        let start = Start::Hidden {
            layer: 3,
            hidden: Tensor::from_inner(hidden),
            keep: input.attention_mask.clone().float(),
        };
        let id = BenchmarkId::new(backend, "32x128_from_layer_3");
        train_step(c, "cached_prefix_step", id, model, start);
    }
    // Parallel of two adapters in layers 3–5 (layers 0–2 run once), against a pass per adapter.
    {
        let (mut model, tokenizer) = model_of::<B>(2, 128, upper_half());
        let input = texts_input::<B>(&tokenizer, 32, 128);
        let mut group = group(c, "parallel_2_32x128", 32);
        model.set_active(Some("Parallel(a0, a1)")).unwrap();
        group.bench_function(BenchmarkId::new(backend, "parallel"), |b| {
            b.iter(|| model.forward(&input).unwrap().logits.unwrap().into_data())
        });
        let mut each = model.clone();
        group.bench_function(BenchmarkId::new(backend, "one_pass_each"), |b| {
            b.iter(|| {
                ["a0", "a1"].map(|name| {
                    each.set_active(Some(name)).unwrap();
                    each.forward(&input).unwrap().logits.unwrap().into_data()
                })
            })
        });
        group.finish();
    }
    // Serving four adapters: one batch of 32 routed per example, against switching the active
    // adapter for four batches of 8 (the backbone is never reloaded).
    {
        let (mut model, tokenizer) = model::<B>(4, 64);
        let input = texts_input::<B>(&tokenizer, 32, 64);
        let quarters: Vec<EncoderInput<B>> = (0..4)
            .map(|_| texts_input::<B>(&tokenizer, 8, 64))
            .collect();
        let names = ["a0", "a1", "a2", "a3"];
        let tasks: Vec<&str> = (0..32).map(|i| names[i % 4]).collect();
        let mut group = group(c, "serving_4_adapters_32x64", 32);
        group.bench_function(BenchmarkId::new(backend, "mixed_batch"), |b| {
            b.iter(|| {
                model
                    .forward_routed(&input, &tasks)
                    .unwrap()
                    .logits
                    .unwrap()
                    .into_data()
            })
        });
        group.bench_function(BenchmarkId::new(backend, "switch_per_adapter"), |b| {
            b.iter(|| {
                names
                    .iter()
                    .zip(&quarters)
                    .map(|(name, part)| {
                        model.set_active(Some(name)).unwrap();
                        model.forward(part).unwrap().logits.unwrap().into_data()
                    })
                    .collect::<Vec<_>>()
            })
        });
        group.finish();
    }
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
