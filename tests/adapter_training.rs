//! Training adapters on the real MiniLM: gradients equal AdapterHub's (cross-entropy on fixed
//! labels, fixtures from tools/reference/make_adapter_fixtures.py), frozen parameters get no
//! gradient, and their bytes do not change under AdamW steps.

mod common;

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::{ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use common::{fixture_path, max_abs_diff, model_without_dropout};
use serde::Deserialize;
use sinew::adapter::prefix::PrefixSource;
use sinew::adapter::Adapter;
use sinew::backbone::{FusedAutodiff, Pretrained};
use sinew::backend::NdArrayBackend;
use sinew::fusion::AdapterModel;

type A = Autodiff<NdArrayBackend>;

#[derive(Deserialize)]
struct Grad {
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(default)]
    loss: Option<f32>,
    #[serde(default)]
    grads: BTreeMap<String, Grad>,
}

#[derive(Deserialize)]
struct Outputs {
    texts: Vec<String>,
    labels: Vec<i64>,
    cases: BTreeMap<String, Case>,
}

fn outputs() -> Outputs {
    let path = fixture_path("adapters").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A model with every fixture adapter of `names` loaded, training `train`, and its batch.
fn setup<Ab: FusedAutodiff>(
    names: &[&str],
    train: &str,
) -> (
    AdapterModel<Ab>,
    sinew::backbone::EncoderInput<Ab>,
    Tensor<Ab, 1, Int>,
) {
    let device = Default::default();
    let out = outputs();
    let dir = model_without_dropout();
    let pretrained = Pretrained::<Ab>::load(dir.path(), None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&out.texts)
        .unwrap()
        .to_input::<Ab>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for name in names {
        model
            .load_adapter(&fixture_path("adapters").join(name), &device)
            .unwrap();
    }
    model.train_adapter(train).unwrap();
    let labels = Tensor::<Ab, 1, Int>::from_data(TensorData::new(out.labels, [4]), &device);
    (model, input, labels)
}

fn loss<Ab: FusedAutodiff>(
    model: &AdapterModel<Ab>,
    input: &sinew::backbone::EncoderInput<Ab>,
    labels: &Tensor<Ab, 1, Int>,
) -> Tensor<Ab, 1> {
    let logits = model.forward(input).unwrap().logits.expect("head");
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, labels.clone())
}

/// The gradient of one parameter in PyTorch's layout (Linear weights transposed back).
fn grad_of<Ab: FusedAutodiff, const D: usize>(
    param: &Param<Tensor<Ab, D>>,
    grads: &<Ab as burn::tensor::backend::AutodiffBackend>::Gradients,
    transpose: bool,
) -> Vec<f32> {
    let g = param.grad(grads).expect("trained parameter has a gradient");
    let g = if transpose { g.swap_dims(0, 1) } else { g };
    g.into_data().to_vec::<f32>().unwrap()
}

fn gradients_match<Ab: FusedAutodiff>() {
    let out = outputs();
    for name in ["seq_bn", "lora", "ia3", "prefix", "prompt"] {
        let case = &out.cases[name];
        let (model, input, labels) = setup::<Ab>(&[name], name);
        let loss = loss(&model, &input, &labels);
        let value = loss.clone().into_data().to_vec::<f32>().unwrap()[0];
        assert!(
            (value - case.loss.unwrap()).abs() < 1e-4,
            "{name}: loss {value} vs {:?}",
            case.loss
        );
        let grads = loss.backward();
        for (key, want) in &case.grads {
            let got: Vec<f32> = match (model.adapter(name).unwrap(), key.as_str()) {
                (Adapter::Bottleneck(a), k) if k.contains("layer.0.output") => grad_of(
                    &a.output[0].as_ref().unwrap().adapter_down.weight,
                    &grads,
                    true,
                ),
                (Adapter::Bottleneck(a), k) if k.contains("layer.5.output") => {
                    let bias = a.output[5]
                        .as_ref()
                        .unwrap()
                        .adapter_up
                        .bias
                        .as_ref()
                        .unwrap();
                    grad_of(bias, &grads, false)
                }
                (Adapter::Bottleneck(_), k) if k.starts_with("heads.") => {
                    grad_of(&model.head(name).unwrap().layers[1].weight, &grads, true)
                }
                (Adapter::Lora(a), k) if k.contains("query") => grad_of(
                    a.query[0].as_ref().unwrap().lora_a.as_ref().unwrap(),
                    &grads,
                    true,
                ),
                (Adapter::Lora(a), k) if k.contains("value") => {
                    grad_of(&a.value[5].as_ref().unwrap().lora_b, &grads, true)
                }
                (Adapter::Lora(a), k) if k.contains("intermediate") => {
                    grad_of(&a.intermediate[0].as_ref().unwrap().lora_b, &grads, true)
                }
                (Adapter::Prefix(a), k) => match (&a.source, k) {
                    (PrefixSource::Mlp(mlp), k) if k.ends_with("wte.weight") => {
                        grad_of(&mlp.wte, &grads, false)
                    }
                    (PrefixSource::Mlp(mlp), k) if k.ends_with("control_trans.2.bias") => {
                        grad_of(mlp.up.bias.as_ref().unwrap(), &grads, false)
                    }
                    _ => panic!("{name}: no mapping for {key}"),
                },
                (Adapter::Prompt(a), _) => grad_of(&a.prompt_embedding, &grads, false),
                _ => panic!("{name}: no mapping for {key}"),
            };
            assert_eq!(
                got.len(),
                want.shape.iter().product::<usize>(),
                "{name}: {key}"
            );
            let scale = want.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(&got, &want.values);
            eprintln!("{name}: {key} grad max |diff| {diff:.2e} (max |grad| {scale:.2e})");
            assert!(
                scale > 0.0,
                "{name}: {key}: a gradient that is zero tests nothing"
            );
            assert!(
                diff <= 1e-3 * scale + 1e-6,
                "{name}: gradient of {key} differs by {diff} (max |grad| {scale})"
            );
        }
    }
}

/// Collects which parameters got a gradient.
#[test]
fn gradients_match_adapterhub_on_ndarray() {
    gradients_match::<A>();
}

#[cfg(feature = "flex")]
#[test]
fn gradients_match_adapterhub_on_flex() {
    gradients_match::<Autodiff<sinew::backend::FlexBackend>>();
}

#[cfg(feature = "wgpu")]
#[test]
fn gradients_match_adapterhub_on_wgpu() {
    gradients_match::<Autodiff<sinew::backend::WgpuBackend>>();
}

struct GradPresence<'a> {
    grads: &'a <A as burn::tensor::backend::AutodiffBackend>::Gradients,
    with: usize,
    without: usize,
}

impl ModuleVisitor<A> for GradPresence<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if param.grad(self.grads).is_some() {
            self.with += 1;
        } else {
            self.without += 1;
        }
    }
}

fn presence<M: Module<A>>(
    module: &M,
    grads: &<A as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> (usize, usize) {
    let mut v = GradPresence {
        grads,
        with: 0,
        without: 0,
    };
    module.visit(&mut v);
    (v.with, v.without)
}

#[test]
fn frozen_parameters_get_no_gradient_and_keep_their_bytes() {
    let (mut model, input, labels) = setup::<A>(&["seq_bn", "lora"], "seq_bn");
    let (trainable, total) = model.param_counts();
    let seq_params = model.adapter_params("seq_bn").unwrap();
    let head_params = model.head("seq_bn").unwrap().num_params();
    assert_eq!(
        trainable,
        seq_params + head_params,
        "only seq_bn and its head train"
    );
    assert!(total > 22_000_000, "{total}");

    let grads = loss(&model, &input, &labels).backward();
    let (with, without) = presence(model.backbone(), &grads);
    assert_eq!((with, without > 0), (0, true), "backbone: no gradients");
    let (with, _) = presence(model.adapter("lora").unwrap(), &grads);
    assert_eq!(with, 0, "the other adapter: no gradients");
    let (_, without) = presence(model.adapter("seq_bn").unwrap(), &grads);
    assert_eq!(without, 0, "every seq_bn parameter has a gradient");
    let (_, without) = presence(model.head("seq_bn").unwrap(), &grads);
    assert_eq!(without, 0, "every head parameter has a gradient");

    let bytes = |m: &AdapterModel<A>| {
        let layer = &m.backbone().encoder.layer[3];
        let Some(Adapter::Lora(lora)) = m.adapter("lora") else {
            unreachable!()
        };
        [
            layer
                .intermediate
                .dense
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            m.backbone()
                .embeddings
                .word_embeddings
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            lora.query[0]
                .as_ref()
                .unwrap()
                .lora_b
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ]
    };
    let trained = |m: &AdapterModel<A>| {
        let Some(Adapter::Bottleneck(a)) = m.adapter("seq_bn") else {
            unreachable!()
        };
        a.output[0]
            .as_ref()
            .unwrap()
            .adapter_up
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let (frozen_before, trained_before) = (bytes(&model), trained(&model));
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    for _ in 0..3 {
        let grads = loss(&model, &input, &labels).backward();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-3, model, grads);
    }
    assert_eq!(bytes(&model), frozen_before, "frozen parameters changed");
    assert_ne!(
        trained(&model),
        trained_before,
        "the trained adapter did not change"
    );
}
