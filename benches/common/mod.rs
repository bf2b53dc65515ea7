//! Setup shared by the adapter benches: the real model with seq_bn adapters, batches of real
//! prose, one training step.

#![allow(dead_code)]

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::{assets, EncoderInput, Pretrained, Start, TextTokenizer};
use sinew::fusion::AdapterModel;
use sinew::trainer::train::TaskData;
use sinew_backbone::FusedAutodiff;
use sinew_backbone::FusedOps;

/// `batch` different texts of real prose, each at least `tokens` long (cut there).
pub fn texts_input<B: FusedOps>(
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

pub fn two_labels() -> HeadConfig {
    HeadConfig::classification(&["a".into(), "b".into()])
}

/// The backbone with `adapters` seq_bn adapters named `a0`, `a1`, … (heads included), truncating
/// at `tokens`.
pub fn model<B: FusedOps>(adapters: usize, tokens: usize) -> (AdapterModel<B>, TextTokenizer) {
    model_of(adapters, tokens, BnConfig::seq_bn())
}

/// A seq_bn adapter in layers 3–5 only (layers 0–2 left out, as AdapterDrop does).
pub fn upper_half() -> BnConfig {
    BnConfig {
        leave_out: vec![0, 1, 2],
        ..BnConfig::seq_bn()
    }
}

/// [`model`] with adapters of `config`.
pub fn model_of<B: FusedOps>(
    adapters: usize,
    tokens: usize,
    method: BnConfig,
) -> (AdapterModel<B>, TextTokenizer) {
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
            .add_adapter(&name, MethodConfig::Bottleneck(method.clone()), &device)
            .unwrap();
        model.add_head(&name, two_labels(), &device).unwrap();
    }
    (model, tokenizer)
}

pub fn task(name: &str) -> TaskData {
    TaskData {
        name: name.into(),
        train: Vec::new(),
        dev: Vec::new(),
        classes: 2,
    }
}

/// One optimizer step from `start` (alternating labels): forward, cross-entropy, backward, AdamW.
pub fn step<B: FusedAutodiff, O: Optimizer<AdapterModel<B>, B>>(
    model: AdapterModel<B>,
    optimizer: &mut O,
    start: &Start<'_, B>,
) -> (AdapterModel<B>, B::FloatElem) {
    let device = model.backbone.devices()[0].clone();
    let [batch, _] = start.dims();
    let targets = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    // As the trainer runs it: only the logits are read.
    let logits = model.logits_from(start.clone()).unwrap().logits.unwrap();
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
