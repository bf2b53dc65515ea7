//! The standard works — an adapter training step, inference, a fusion training step — with their
//! model and inputs: what `sinew bench` times on this machine and what `benches/adapters.rs`
//! (criterion) times, built here once for both.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;

use crate::adapter::{HeadConfig, MethodConfig};
use crate::backbone::TextTokenizer;
use crate::backbone::{EncoderInput, FusedAutodiff, FusedOps, Pretrained, Start};
use crate::fusion::{AdapterModel, FusionConfig};
use crate::trainer::train::{set_regime, Regime, TaskData};

/// `batch` different texts of prose, each at least `tokens` tokens long (cut there): the inputs
/// of every standard work.
pub fn inputs<B: Backend>(
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
    let encoded = tokenizer.encode(&texts).expect("prose tokenizes");
    assert!(
        encoded.input_ids.iter().all(|r| r.len() == tokens),
        "every text reaches {tokens} tokens"
    );
    encoded.to_input(&B::Device::default())
}

/// A two-label classification head.
pub fn two_labels() -> HeadConfig {
    HeadConfig::classification(&["a".into(), "b".into()])
}

/// The model at `dir` (truncating at `tokens`) with `adapters` adapters of `method`, named
/// `a0`, `a1`, …, each with a two-label head.
pub fn model<B: FusedOps>(
    dir: &std::path::Path,
    method: &MethodConfig,
    adapters: usize,
    tokens: usize,
) -> anyhow::Result<(AdapterModel<B>, TextTokenizer)> {
    let device = B::Device::default();
    let Pretrained {
        config,
        model,
        tokenizer,
    } = Pretrained::<B>::load(dir, Some(tokens), &device)?;
    let mut model = AdapterModel::new(model, config);
    for i in 0..adapters {
        let name = format!("a{i}");
        model.add_adapter(&name, method.clone(), &device)?;
        model.add_head(&name, two_labels(), &device)?;
    }
    Ok((model, tokenizer))
}

/// A task with no examples: what [`set_regime`] needs to know of a task (its name).
pub fn task(name: &str) -> TaskData {
    TaskData {
        name: name.into(),
        train: Vec::new(),
        dev: Vec::new(),
        classes: 2,
    }
}

/// Adds a dynamic fusion of every adapter, with a head, and makes it what trains.
pub fn fuse_all<B: FusedAutodiff>(model: &mut AdapterModel<B>) -> anyhow::Result<()> {
    let device = B::Device::default();
    let names: Vec<String> = model
        .adapter_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fusion = model.add_fusion(&names, FusionConfig::dynamic(), &device)?;
    model.add_head(&fusion.to_string(), two_labels(), &device)?;
    set_regime(
        model,
        &Regime::Fusion {
            fusion: fusion.clone(),
            unfreeze_adapters: false,
        },
        &[task(&fusion.to_string())],
    )?;
    Ok(())
}

/// One optimizer step from `start` (alternating labels) as the trainer takes it: the logits
/// only, cross-entropy (plus the fusion regularisation), backward, AdamW.
pub fn step<B: FusedAutodiff, O: Optimizer<AdapterModel<B>, B>>(
    model: AdapterModel<B>,
    optimizer: &mut O,
    start: &Start<'_, B>,
) -> (AdapterModel<B>, f32) {
    let device = model.backbone().devices()[0].clone();
    let [batch, _] = start.dims();
    let targets = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    let logits = model
        .logits_from(start.clone())
        .expect("the active setup runs")
        .logits
        .expect("a text head");
    let mut loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    if let Some(reg) = model.fusion_regularization_loss() {
        loss = loss + reg;
    }
    // Reading the loss back makes lazy backends finish this step's forward; the backward and
    // the update are finished by the next step, whose forward reads the updated weights.
    let value = loss.clone().into_scalar().elem::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(1e-4, model, grads), value)
}
