//! AdapterHub `ConfigUnion` folders (MAM: prefix tuning + a parallel bottleneck; UniPELT: gated
//! prefix tuning + gated bottleneck + gated LoRA), saved by the real library with random non-zero
//! weights (tools/reference/make_union_fixtures.py), give AdapterHub's hidden states, logits and
//! gradients; sinew writes them back key for key, and its `mam`/`unipelt` presets are AdapterHub's
//! `MAMConfig()`/`UniPELTConfig()` as it saves them.

mod common;

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use common::{
    fixture_path, flat3, hidden_and_logits, max_abs_diff, model_dir, model_without_dropout,
    same_json,
};
use serde::Deserialize;
use sinew::adapter::tensors::{TensorFile, TensorSink};
use sinew::adapter::union::UnionConfig;
use sinew::adapter::MethodConfig;
use sinew::backbone::{FusedOps, Pretrained};
use sinew::fusion::AdapterModel;

#[derive(Deserialize)]
struct Grad {
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    last_hidden_state: Vec<Vec<Vec<f32>>>,
    logits: Vec<Vec<f32>>,
    loss: f32,
    grads: BTreeMap<String, Grad>,
}

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    labels: Vec<i64>,
    presets: BTreeMap<String, serde_json::Value>,
    cases: BTreeMap<String, Case>,
}

fn fixture() -> Fixture {
    let path = fixture_path("union").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const CASES: [&str; 2] = ["mam", "unipelt"];

fn check(name: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: {what}: size");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(got, want);
    eprintln!("{name}: {what} max |diff| {diff:.2e} (max |value| {scale:.2e})");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{name}: {what} differs by {diff}"
    );
}

fn parity<B: FusedOps>() {
    let device = B::Device::default();
    let fixture = fixture();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let tokens = pretrained.tokenizer.encode(&fixture.texts).unwrap();
    assert_eq!(tokens.input_ids, fixture.input_ids);
    let input = tokens.to_input::<B>(&device);
    let plain = pretrained.model.forward(&input).last_hidden_state;
    let plain = plain.into_data().to_vec::<f32>().unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for name in CASES {
        let want = &fixture.cases[name];
        let loaded = model
            .load_adapter(&fixture_path("union").join(name), &device)
            .unwrap();
        assert_eq!(loaded, name);
        assert!(
            matches!(model.adapter_config(name).unwrap(), MethodConfig::Union(u) if u.configs.len() == if name == "mam" { 2 } else { 3 }),
            "{name}: read as a union of its parts"
        );
        model.set_active(Some(name)).unwrap();
        let (hidden, logits) = hidden_and_logits(&model, &input);
        let expected = flat3(&want.last_hidden_state);
        assert!(
            max_abs_diff(&plain, &expected) > 1e-2,
            "{name}: the union must change the hidden states for this test to mean anything"
        );
        check(name, "last_hidden_state", &hidden, &expected);
        check(name, "logits", &logits, &want.logits.concat());
        // The logits alone: the last layer runs for the first position only unless a part's
        // gate averages over the sequence (UniPELT's); the logits are the same either way.
        let fast = model.logits(&input).unwrap();
        let gated = name == "unipelt";
        assert_eq!(
            fast.encoded.last_hidden_state.dims()[1] == 1,
            !gated,
            "{name}: the first-position path is taken exactly when no part mixes positions"
        );
        let fast = fast.logits.unwrap().into_data().to_vec::<f32>().unwrap();
        assert!(
            max_abs_diff(&fast, &logits) <= 1e-5,
            "{name}: first-position logits"
        );
        model.set_active(None).unwrap();
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn union_folders_match_adapterhub_on_ndarray() {
    parity::<sinew::backend::NdArrayBackend>();
}

#[cfg(feature = "flex")]
#[test]
fn union_folders_match_adapterhub_on_flex() {
    parity::<sinew::backend::FlexBackend>();
}

/// Replaces every parameter by its gradient (zeros where it has none), so that the module's own
/// `save` writes the gradients under AdapterHub's keys, in PyTorch's layout.
struct ToGradients<'a>(&'a GradientsParams);

impl<B: Backend> ModuleMapper<B> for ToGradients<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let id = param.id;
        let value = param.val();
        let grad = self.0.get::<B, D>(id).unwrap_or_else(|| value.zeros_like());
        Param::initialized(id, grad)
    }
}

/// Cross-entropy gradients after `train_adapter` equal AdapterHub's, dropout off on both sides:
/// the shared prefix MLP (one module for all layers), each part's tensors, every kind of gate,
/// the head.
#[cfg(feature = "ndarray")]
#[test]
fn union_gradients_match_adapterhub() {
    type B = sinew::backend::NdArrayBackend;
    type A = Autodiff<B>;
    let device = Default::default();
    let fixture = fixture();
    let backbone = model_without_dropout();
    for name in CASES {
        let want = &fixture.cases[name];
        let pretrained = Pretrained::<A>::load(backbone.path(), None, &device).unwrap();
        let input = pretrained
            .tokenizer
            .encode(&fixture.texts)
            .unwrap()
            .to_input::<A>(&device);
        let config = pretrained.config.clone();
        let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
        model
            .load_adapter(&fixture_path("union").join(name), &device)
            .unwrap();
        model.train_adapter(name).unwrap();
        let labels =
            Tensor::<A, 1, Int>::from_data(TensorData::new(fixture.labels.clone(), [4]), &device);
        let logits = model.forward(&input).unwrap().logits.unwrap();
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels);
        let value = loss.clone().into_scalar();
        assert!(
            (value - want.loss).abs() <= 1e-4 * want.loss.abs(),
            "{name}: loss {value} against AdapterHub's {}",
            want.loss
        );
        let mut grads = loss.backward();
        let adapter = model.adapter(name).unwrap();
        let head = model.head(name).unwrap();
        let adapter_grads = GradientsParams::from_module(&mut grads, adapter);
        let head_grads = GradientsParams::from_module(&mut grads, head);
        let mut sink = TensorSink::default();
        adapter
            .valid()
            .map(&mut ToGradients(&adapter_grads))
            .save(&config, name, &mut sink);
        head.valid()
            .map(&mut ToGradients(&head_grads))
            .save(name, &mut sink);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grads.safetensors");
        sink.write(&path).unwrap();
        let ours = TensorFile::read(&path).unwrap();
        assert!(want.grads.len() >= 5, "{name}: gradients to compare");
        for (key, want) in &want.grads {
            let got = ours
                .get(key)
                .unwrap_or_else(|| panic!("{name}: no gradient under {key}"));
            assert_eq!(got.shape, want.shape, "{name}: {key}");
            let scale = want.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(&got.values, &want.values);
            eprintln!("{name}: {key} grad max |diff| {diff:.2e} (max |grad| {scale:.2e})");
            assert!(scale > 0.0, "{name}: {key}: a zero gradient tests nothing");
            assert!(
                diff <= 1e-3 * scale + 1e-6,
                "{name}: gradient of {key} differs by {diff} (max |grad| {scale})"
            );
        }
    }
}

/// Saving a loaded union writes AdapterHub's tensors bit for bit under AdapterHub's keys (the
/// prefix module under every layer too) and its config; the presets are AdapterHub's.
#[cfg(feature = "ndarray")]
#[test]
fn union_folders_round_trip_and_presets() {
    type B = sinew::backend::NdArrayBackend;
    let device = Default::default();
    let fixture = fixture();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let out = tempfile::tempdir().unwrap();
    let config = |dir: &std::path::Path| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["config"].clone()
    };
    for name in CASES {
        let from = fixture_path("union").join(name);
        model.load_adapter(&from, &device).unwrap();
        model
            .save_adapter(&out.path().join(name), name, true)
            .unwrap();
        let theirs = TensorFile::read(&from.join("pytorch_adapter.bin")).unwrap();
        let ours = TensorFile::read(&out.path().join(name).join("adapter.safetensors")).unwrap();
        let keys: Vec<&str> = theirs.remaining().collect();
        assert_eq!(keys, ours.remaining().collect::<Vec<_>>(), "{name}: keys");
        for key in keys {
            let (a, b) = (theirs.get(key).unwrap(), ours.get(key).unwrap());
            assert_eq!(
                (&a.shape, &a.values),
                (&b.shape, &b.values),
                "{name}: {key}"
            );
        }
        let (theirs, ours) = (config(&from), config(&out.path().join(name)));
        assert!(
            same_json(&theirs, &ours),
            "{name}: config\n{theirs}\n{ours}"
        );
    }
    let presets: BTreeMap<&str, MethodConfig> = MethodConfig::presets().into_iter().collect();
    for (name, want) in &fixture.presets {
        let ours = presets[name.as_str()].to_json();
        assert!(same_json(want, &ours), "{name}\n{want}\n{ours}");
    }
    assert_eq!(presets["mam"], MethodConfig::Union(UnionConfig::mam()));
    // A new union from a preset saves every part's keys and reads back as the same config.
    for preset in CASES {
        let new = format!("new_{preset}");
        model
            .add_adapter(&new, presets[preset].clone(), &device)
            .unwrap();
        let dir = out.path().join(&new);
        model.save_adapter(&dir, &new, false).unwrap();
        model.delete_adapter(&new).unwrap();
        assert_eq!(model.load_adapter(&dir, &device).unwrap(), new);
        assert_eq!(model.adapter_config(&new).unwrap(), &presets[preset]);
        let params = model.adapter(&new).unwrap().num_params();
        let parts: usize = match &presets[preset] {
            MethodConfig::Union(u) => u
                .configs
                .iter()
                .map(|c| c.init::<B>(model.config(), &device).unwrap().num_params())
                .sum(),
            other => panic!("{other:?}"),
        };
        assert_eq!(params, parts, "{new}: every part's parameters");
    }
}
