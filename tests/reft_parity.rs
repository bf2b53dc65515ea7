//! ReFT folders (LoReFT with its orthogonal projection, NoReFT, DiReFT, tied units) saved by the
//! real AdapterHub library with random non-zero weights (tools/reference/make_reft_fixtures.py)
//! give AdapterHub's hidden states, logits and gradients, and sinew writes them back key for key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use common::{
    fixture_path, flat3, hidden_and_logits, max_abs_diff, model_dir, model_without_dropout,
};
use serde::Deserialize;
use sinew::adapter::reft::{ReftConfig, ReftProjection};
use sinew::adapter::tensors::TensorFile;
use sinew::adapter::{Adapter, MethodConfig};
use sinew::backbone::{FusedAutodiff, FusedOps, Pretrained};
use sinew::fusion::AdapterModel;

#[derive(Deserialize)]
struct Grad {
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Outputs {
    last_hidden_state: Vec<Vec<Vec<f32>>>,
    logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(flatten)]
    saved: Outputs,
    /// DiReFT: what AdapterHub's `load_adapter` of the folder gives (it subtracts again).
    reloaded: Option<Outputs>,
    loss: f32,
    grads: BTreeMap<String, Grad>,
}

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    labels: Vec<i64>,
    cases: BTreeMap<String, Case>,
}

fn fixture() -> Fixture {
    let path = fixture_path("reft").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of fixture folder `case` with `changes` made to its config (`dropout`,
/// `subtract_projection`).
fn edited_copy(case: &str, changes: &[(&str, serde_json::Value)]) -> tempfile::TempDir {
    let from = fixture_path("reft").join(case);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join(case);
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let path = to.join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in changes {
        json["config"][key] = value.clone();
    }
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

fn check(name: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: {what}: size");
    let diff = max_abs_diff(got, want);
    eprintln!("{name}: {what} max |diff| {diff:.2e}");
    assert!(diff <= 1e-4, "{name}: {what} differs by {diff}");
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
    assert_eq!(
        fixture.cases.len(),
        4,
        "loreft, noreft, direft, loreft_tied"
    );

    let run = |model: &mut AdapterModel<B>, dir: &Path, name: &str, want: &Outputs| {
        model.load_adapter(&dir.join(name), &device).unwrap();
        model.set_active(Some(name)).unwrap();
        let (hidden, logits) = hidden_and_logits(model, &input);
        let expected = flat3(&want.last_hidden_state);
        assert!(
            max_abs_diff(&plain, &expected) > 1e-2,
            "{name}: the adapter must change the hidden states for this test to mean anything"
        );
        check(name, "last_hidden_state", &hidden, &expected);
        let expected: Vec<f32> = want.logits.concat();
        check(name, "logits", &logits, &expected);
        // The logits alone: the last layer runs for the first position only, same logits.
        let fast = model.logits(&input).unwrap();
        assert_eq!(
            fast.encoded.last_hidden_state.dims()[1],
            1,
            "{name}: fast path taken"
        );
        let fast = fast.logits.unwrap().into_data().to_vec::<f32>().unwrap();
        assert!(
            max_abs_diff(&fast, &logits) <= 1e-5,
            "{name}: first-position logits"
        );
        model.set_active(None).unwrap();
    };
    let fixtures = fixture_path("reft");
    for (name, case) in &fixture.cases {
        // A DiReFT folder says nothing of its missing subtraction: read as AdapterHub reads it.
        run(
            &mut model,
            &fixtures,
            name,
            case.reloaded.as_ref().unwrap_or(&case.saved),
        );
    }
    // With sinew's `subtract_projection: false`, the DiReFT that AdapterHub saved.
    let direft = edited_copy("direft", &[("subtract_projection", false.into())]);
    model.delete_adapter("direft").unwrap();
    model.delete_head("direft").unwrap();
    run(
        &mut model,
        direft.path(),
        "direft",
        &fixture.cases["direft"].saved,
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn reft_folders_match_adapterhub_on_ndarray() {
    parity::<sinew::backend::NdArrayBackend>();
}

#[cfg(feature = "flex")]
#[test]
fn reft_folders_match_adapterhub_on_flex() {
    parity::<sinew::backend::FlexBackend>();
}

/// The gradient of fixture key `key` of adapter `name` in PyTorch's layout.
fn grad_of<A: FusedAutodiff>(
    adapter: &Adapter<A>,
    name: &str,
    key: &str,
    grads: &<A as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f32> {
    let Adapter::Reft(reft) = adapter else {
        panic!("{name}: a ReFT adapter")
    };
    let rest = key
        .strip_prefix("bert.encoder.layer.")
        .expect("a layer key");
    let (layer, rest) = rest.split_once('.').unwrap();
    let rest = rest
        .strip_prefix(&format!("reft_layer.refts.{name}.units."))
        .unwrap();
    let (unit, param) = rest.split_once('.').unwrap();
    let unit = &reft.layers[layer.parse::<usize>().unwrap()]
        .as_ref()
        .expect("an intervened layer")
        .units[unit.parse::<usize>().unwrap()];
    let of = |p: &Param<Tensor<A, 2>>, transpose: bool| {
        let g = p.grad(grads).expect("a trained parameter has a gradient");
        let g = if transpose { g.transpose() } else { g };
        g.into_data().to_vec::<f32>().unwrap()
    };
    match (param, &unit.projection) {
        ("learned_source.weight", _) => of(&unit.learned_source.weight, true),
        ("learned_source.bias", _) => {
            let bias = unit.learned_source.bias.as_ref().unwrap();
            bias.grad(grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        }
        ("projection.weight", ReftProjection::Plain(w)) => of(w, false),
        ("projection.parametrizations.weight.original", ReftProjection::Orthogonal(o)) => {
            of(&o.original, false)
        }
        _ => panic!("{name}: no mapping for {key}"),
    }
}

/// Cross-entropy gradients after `train_adapter` equal AdapterHub's (dropout off on both sides).
#[cfg(feature = "ndarray")]
#[test]
fn reft_gradients_match_adapterhub() {
    type A = Autodiff<sinew::backend::NdArrayBackend>;
    let device = Default::default();
    let fixture = fixture();
    let backbone = model_without_dropout();
    for (name, case) in &fixture.cases {
        let pretrained = Pretrained::<A>::load(backbone.path(), None, &device).unwrap();
        let input = pretrained
            .tokenizer
            .encode(&fixture.texts)
            .unwrap()
            .to_input::<A>(&device);
        let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
        let mut changes = vec![("dropout", 0.0.into())];
        if name == "direft" {
            changes.push(("subtract_projection", false.into()));
        }
        let dir = edited_copy(name, &changes);
        model.load_adapter(&dir.path().join(name), &device).unwrap();
        model.train_adapter(name).unwrap();
        let labels =
            Tensor::<A, 1, Int>::from_data(TensorData::new(fixture.labels.clone(), [4]), &device);
        let logits = model.forward(&input).unwrap().logits.unwrap();
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels);
        let value = loss.clone().into_scalar();
        assert!(
            (value - case.loss).abs() <= 1e-4 * case.loss.abs(),
            "{name}: loss {value} against AdapterHub's {}",
            case.loss
        );
        let grads = loss.backward();
        assert!(!case.grads.is_empty(), "{name}: gradients to compare");
        for (key, want) in &case.grads {
            let got = grad_of(model.adapter(name).unwrap(), name, key, &grads);
            assert_eq!(
                got.len(),
                want.shape.iter().product::<usize>(),
                "{name}: {key}"
            );
            let scale = want.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(&got, &want.values);
            eprintln!("{name}: {key} grad max |diff| {diff:.2e} (max |grad| {scale:.2e})");
            assert!(scale > 0.0, "{name}: {key}: a zero gradient tests nothing");
            assert!(
                diff <= 1e-3 * scale + 1e-6,
                "{name}: gradient of {key} differs by {diff} (max |grad| {scale})"
            );
        }
    }
}

/// Saving a loaded ReFT folder writes AdapterHub's tensors bit for bit under AdapterHub's keys,
/// and its config; a new LoReFT saves every key AdapterHub's layout has.
#[cfg(feature = "ndarray")]
#[test]
fn reft_folders_round_trip() {
    type B = sinew::backend::NdArrayBackend;
    let device = Default::default();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let out = tempfile::tempdir().unwrap();
    for name in ["loreft", "noreft", "loreft_tied"] {
        let from = fixture_path("reft").join(name);
        model.load_adapter(&from, &device).unwrap();
        model
            .save_adapter(&out.path().join(name), name, true)
            .unwrap();
        let theirs = TensorFile::read(&from.join("adapter.safetensors")).unwrap();
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
        let config = |dir: &Path| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["config"].clone()
        };
        assert_eq!(
            config(&from),
            config(&out.path().join(name)),
            "{name}: config"
        );
    }

    // A new adapter from each preset: AdapterHub's keys and shapes, and a config that reads back.
    let fresh = [
        ("loreft", ReftConfig::loreft()),
        ("direft", ReftConfig::direft()),
    ];
    for (preset, config) in fresh {
        let name = format!("new_{preset}");
        model
            .add_adapter(&name, MethodConfig::Reft(config.clone()), &device)
            .unwrap();
        let dir = out.path().join(&name);
        model.save_adapter(&dir, &name, false).unwrap();
        let file = TensorFile::read(&dir.join("adapter.safetensors")).unwrap();
        let units = if preset == "loreft" { 4 } else { 3 };
        assert_eq!(
            file.remaining().count(),
            6 * 2 * units,
            "{name}: 6 layers × 2 units"
        );
        let json = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        assert_eq!(
            json.contains("subtract_projection"),
            preset == "direft",
            "{name}: the DiReFT switch is written when off: {json}"
        );
        model.delete_adapter(&name).unwrap();
        assert_eq!(model.load_adapter(&dir, &device).unwrap(), name);
        assert_eq!(
            model.adapter_config(&name).unwrap(),
            &MethodConfig::Reft(config)
        );
    }
}
