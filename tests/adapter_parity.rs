//! Adapter folders (bottleneck, LoRA, IA3, prefix and prompt tuning; every head type) saved by the real AdapterHub library (random non-zero weights; written by
//! tools/reference/make_adapter_fixtures.py) give AdapterHub's hidden states and logits.

mod common;

use std::collections::BTreeMap;

use common::{fixture_path, flat3, max_abs_diff, model_dir, same_json};
use serde::Deserialize;
use sinew::adapter::tensors::TensorFile;
use sinew::backbone::Pretrained;
use sinew::fusion::AdapterModel;
use sinew_backbone::FusedOps;

#[derive(Deserialize)]
struct Case {
    last_hidden_state: Vec<Vec<Vec<f32>>>,
    /// `[batch][labels]`, or `[batch][seq][labels]` for a tagging head.
    logits: serde_json::Value,
}

/// The numbers of a nested JSON array, in order.
fn flatten_json(value: &serde_json::Value) -> Vec<f32> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten_json).collect(),
        v => vec![v.as_f64().expect("a number") as f32],
    }
}

#[derive(Deserialize)]
struct Outputs {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    cases: BTreeMap<String, Case>,
}

fn parity<B: FusedOps>() {
    let device = B::Device::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let tokens = pretrained.tokenizer.encode(&outputs.texts).unwrap();
    assert_eq!(tokens.input_ids, outputs.input_ids);
    let input = tokens.to_input::<B>(&device);
    let plain = pretrained.model.forward(&input).last_hidden_state;
    let plain = plain.into_data().to_vec::<f32>().unwrap();

    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    assert!(
        outputs.cases.len() >= 16,
        "bottleneck (one from .bin), LoRA, IA3, prefix, prompt and head cases"
    );
    for (name, case) in &outputs.cases {
        assert_eq!(&model.load_adapter(&dir.join(name), &device).unwrap(), name);
        model.set_active(Some(name)).unwrap();

        let out = model.forward(&input).unwrap();
        let hidden = out
            .encoded
            .last_hidden_state
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want = flat3(&case.last_hidden_state);
        // A prompt lengthens the sequence, which is a change in itself.
        assert!(
            plain.len() != want.len() || max_abs_diff(&plain, &want) > 1e-2,
            "{name}: the adapter must change the hidden states for this test to mean anything"
        );
        let diff = max_abs_diff(&hidden, &want);
        eprintln!("{name}: last_hidden_state max |diff| {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: last_hidden_state differs by {diff}");
        let text_logits = out.logits.clone();
        let logits = match (out.logits, out.token_logits) {
            (Some(l), None) => l.into_data(),
            (None, Some(l)) => l.into_data(),
            _ => panic!("{name}: one head"),
        };
        let logits = logits.to_vec::<f32>().unwrap();
        let diff = max_abs_diff(&logits, &flatten_json(&case.logits));
        eprintln!("{name}: logits max |diff| {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");

        // Asking for the logits only: with a text-level head (and no gate averaging over
        // positions) the last layer runs for the first position alone; the logits are the full
        // pass's either way.
        let fast = model.logits(&input).unwrap();
        let positions = fast.encoded.last_hidden_state.dims()[1];
        let gated = model.adapter(name).unwrap().mixes_positions();
        match text_logits {
            Some(full) => {
                assert_eq!(
                    positions == 1,
                    !gated,
                    "{name}: the first-position path is taken"
                );
                let full = full.into_data().to_vec::<f32>().unwrap();
                let got = fast.logits.unwrap().into_data().to_vec::<f32>().unwrap();
                let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = max_abs_diff(&got, &full);
                assert!(
                    diff <= 1e-5 * scale,
                    "{name}: first-position logits differ by {diff}"
                );
            }
            None => assert!(positions > 1, "{name}: a tagging head reads every position"),
        }
    }
}

/// One routed batch over ten adapters of three methods (bottlenecks with different pre- and
/// post-processing, LoRA, IA3), each text through each: every row has AdapterHub's hidden
/// states and logits for its own adapter, with the full pass and the logits-only one; an
/// adapter that changes what other rows see (a prefix) is refused in a mix.
fn routed_mix<B: FusedOps>() {
    let device = B::Device::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let names = [
        "seq_bn",
        "double_seq_bn",
        "par_bn",
        "scaled_par_bn",
        "seq_knobs",
        "seq_knobs_b",
        "seq_ln_before_bin",
        "lora",
        "lora_all",
        "ia3",
    ];
    // Text-major, so each adapter's rows are scattered over the batch.
    let rows: Vec<(usize, &str)> = (0..outputs.texts.len())
        .flat_map(|t| names.iter().map(move |n| (t, *n)))
        .collect();
    let texts: Vec<&str> = rows
        .iter()
        .map(|(t, _)| outputs.texts[*t].as_str())
        .collect();
    let tasks: Vec<&str> = rows.iter().map(|(_, n)| *n).collect();
    let tokenizer = pretrained.tokenizer.clone();
    let input = tokenizer.encode(&texts).unwrap().to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for name in names.iter().chain(&["prefix"]) {
        model.load_adapter(&dir.join(name), &device).unwrap();
    }
    let out = model.forward_routed(&input, &tasks).unwrap();
    let [batch, seq, hidden] = out.encoded.last_hidden_state.dims();
    assert_eq!(batch, rows.len());
    let states = out
        .encoded
        .last_hidden_state
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let logits = out.logits.expect("3 labels each").into_data();
    let logits = logits.to_vec::<f32>().unwrap();
    // Gated adapters (seq_knobs, lora_all) average over positions: every position runs.
    let fast = model.logits_routed(&input, &tasks).unwrap();
    assert_eq!(
        fast.encoded.last_hidden_state.dims()[1],
        seq,
        "gated: all positions"
    );
    let fast = fast.logits.unwrap().into_data().to_vec::<f32>().unwrap();
    // Without them, the last layer runs for the first position alone, with the same logits.
    let ungated: Vec<usize> = (0..rows.len())
        .filter(|&r| !model.adapter(tasks[r]).unwrap().mixes_positions())
        .collect();
    let some: Vec<&str> = ungated.iter().map(|&r| texts[r]).collect();
    let some_tasks: Vec<&str> = ungated.iter().map(|&r| tasks[r]).collect();
    let some_input = tokenizer.encode(&some).unwrap().to_input::<B>(&device);
    let first = model.logits_routed(&some_input, &some_tasks).unwrap();
    assert_eq!(
        first.encoded.last_hidden_state.dims()[1],
        1,
        "first position only"
    );
    let first = first.logits.unwrap().into_data().to_vec::<f32>().unwrap();
    for (k, &row) in ungated.iter().enumerate() {
        let diff = max_abs_diff(&first[k * 3..k * 3 + 3], &fast[row * 3..row * 3 + 3]);
        assert!(
            diff <= 1e-5,
            "{}: first-position logits differ by {diff}",
            tasks[row]
        );
    }
    for (row, (t, name)) in rows.iter().enumerate() {
        let case = &outputs.cases[*name];
        let want = &case.last_hidden_state[*t];
        assert_eq!(want.len(), seq, "{name}: the same padding");
        let got = &states[row * seq * hidden..(row + 1) * seq * hidden];
        let scale = want.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(got, &common::flat2(want));
        assert!(
            diff <= 1e-4 * scale,
            "{name}, text {t}: routed hidden states differ from AdapterHub's by {diff}"
        );
        let want = flatten_json(&case.logits[*t]);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (what, got) in [("full", &logits), ("logits-only", &fast)] {
            let diff = max_abs_diff(&got[row * 3..row * 3 + 3], &want);
            assert!(
                diff <= 1e-4 * scale,
                "{name}, text {t}: {what} routed logits differ from AdapterHub's by {diff}"
            );
        }
    }
    let err = model
        .forward_routed(&input, &[&["prefix"], &tasks[1..]].concat())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, sinew::fusion::FusionError::NotRoutable { ref name, .. } if name == "prefix"),
        "{err}"
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn one_routed_batch_mixes_methods_on_ndarray() {
    routed_mix::<sinew::backend::NdArrayBackend>();
}

#[cfg(feature = "flex")]
#[test]
fn one_routed_batch_mixes_methods_on_flex() {
    routed_mix::<sinew::backend::FlexBackend>();
}

/// An ejected prefix (static prefixes instead of the MLP) still gives AdapterHub's outputs, and
/// is saved and read back as a `flat` prefix.
#[cfg(feature = "ndarray")]
#[test]
fn ejected_prefix_matches_adapterhub() {
    type B = sinew::backend::NdArrayBackend;
    let device = Default::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&outputs.texts)
        .unwrap()
        .to_input::<B>(&device);
    let want = flat3(&outputs.cases["prefix"].last_hidden_state);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    model.load_adapter(&dir.join("prefix"), &device).unwrap();
    model.eject_prefix("prefix").unwrap();
    let saved = tempfile::tempdir().unwrap();
    model.save_adapter(saved.path(), "prefix", true).unwrap();
    let mut reloaded = AdapterModel::new(model.backbone().clone(), pretrained.config.clone());
    reloaded.load_adapter(saved.path(), &device).unwrap();
    for (what, m) in [("ejected", &mut model), ("reloaded", &mut reloaded)] {
        m.set_active(Some("prefix")).unwrap();
        let hidden = m.forward(&input).unwrap().encoded.last_hidden_state;
        let diff = max_abs_diff(&hidden.into_data().to_vec::<f32>().unwrap(), &want);
        assert!(diff <= 1e-4, "{what} prefix differs by {diff}");
    }
    assert!(model.eject_prefix("missing").is_err());
}

/// Merged LoRA gives the unmerged outputs to 1e-5 (IA3 to 5e-5: its merge rescales every weight,
/// which re-rounds each product; AdapterHub's own merge differs by 3.6e-5), and unmerging restores
/// the backbone's weights bit for bit.
fn merge_roundtrip<B: FusedOps>() {
    let device = B::Device::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&outputs.texts)
        .unwrap()
        .to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let weights = |m: &AdapterModel<B>| {
        let layer = &m.backbone().encoder.layer[0];
        [
            &layer.attention.self_attention.value,
            &layer.intermediate.dense,
        ]
        .map(|l| l.weight.val().into_data().to_vec::<f32>().unwrap())
    };
    let before = weights(&model);
    for (name, tolerance) in [("lora", 1e-5), ("ia3", 5e-5)] {
        model.load_adapter(&dir.join(name), &device).unwrap();
        model.set_active(Some(name)).unwrap();
        let unmerged = model.forward(&input).unwrap().encoded.last_hidden_state;
        model.merge_adapter(name).unwrap();
        assert_ne!(
            weights(&model),
            before,
            "{name}: merging must change the weights"
        );
        let merged = model.forward(&input).unwrap().encoded.last_hidden_state;
        let diff = max_abs_diff(
            &merged.into_data().to_vec::<f32>().unwrap(),
            &unmerged.into_data().to_vec::<f32>().unwrap(),
        );
        eprintln!("{name}: merged vs unmerged max |diff| {diff:.2e}");
        assert!(
            diff <= tolerance,
            "{name}: merged differs from unmerged by {diff}"
        );
        model.unmerge_adapter();
        assert_eq!(
            weights(&model),
            before,
            "{name}: unmerge must restore the weights exactly"
        );
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn lora_and_ia3_merge_and_unmerge_exactly() {
    merge_roundtrip::<sinew::backend::NdArrayBackend>();
}

/// A merged adapter never acts twice: activating another adapter, no adapter, or a `Stack`
/// holding the merged one unmerges it first (AdapterHub's outputs for the other adapter, the
/// backbone's own weights, the stack's unmerged outputs); running another setup while it is
/// merged is an error naming it; activating the merged adapter alone keeps it merged.
#[cfg(feature = "ndarray")]
#[test]
fn a_merged_adapter_is_unmerged_when_another_setup_runs() {
    type B = sinew::backend::NdArrayBackend;
    let device = Default::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&outputs.texts)
        .unwrap()
        .to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for name in ["lora", "ia3", "seq_bn"] {
        model.load_adapter(&dir.join(name), &device).unwrap();
    }
    let weights = |m: &AdapterModel<B>| {
        m.backbone().encoder.layer[0]
            .attention
            .self_attention
            .value
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let hidden = |m: &AdapterModel<B>| {
        m.forward(&input)
            .unwrap()
            .encoded
            .last_hidden_state
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let before = weights(&model);
    let stack = "Stack(lora, seq_bn)";
    model.set_active(Some(stack)).unwrap();
    let stacked = hidden(&model);
    let merge = |m: &mut AdapterModel<B>| {
        m.set_active(Some("lora")).unwrap();
        m.merge_adapter("lora").unwrap();
        assert_ne!(weights(m), before, "merging must change the weights");
    };

    merge(&mut model);
    model.set_active(Some("lora")).unwrap();
    assert_ne!(weights(&model), before, "lora alone stays merged");
    let err = model
        .forward_routed(&input, &vec!["ia3"; outputs.texts.len()])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`lora` is merged"), "{err}");

    model.set_active(Some("ia3")).unwrap();
    assert_eq!(weights(&model), before, "activating ia3 unmerges lora");
    let diff = max_abs_diff(
        &hidden(&model),
        &flat3(&outputs.cases["ia3"].last_hidden_state),
    );
    assert!(
        diff <= 1e-4,
        "ia3 after lora's merge differs from AdapterHub by {diff}"
    );

    merge(&mut model);
    model.set_active(None).unwrap();
    assert_eq!(weights(&model), before, "the bare backbone unmerges lora");

    merge(&mut model);
    model.set_active(Some(stack)).unwrap();
    assert_eq!(weights(&model), before, "a stack holding lora unmerges it");
    let diff = max_abs_diff(&hidden(&model), &stacked);
    assert!(
        diff <= 1e-6,
        "the stack after lora's merge differs by {diff}"
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn adapterhub_folders_match_on_ndarray() {
    parity::<sinew::backend::NdArrayBackend>();
}

#[cfg(feature = "flex")]
#[test]
fn adapterhub_folders_match_on_flex() {
    parity::<sinew::backend::FlexBackend>();
}

#[cfg(feature = "wgpu")]
#[test]
fn adapterhub_folders_match_on_wgpu() {
    parity::<sinew::backend::WgpuBackend>();
}

/// sinew writes AdapterHub's layout: the folders it saves hold the same files, keys, shapes and
/// values as the folders AdapterHub saved, and the same config fields.
#[cfg(feature = "ndarray")]
#[test]
fn saved_folders_have_adapterhubs_layout() {
    type B = sinew::backend::NdArrayBackend;
    let device = Default::default();
    let dir = fixture_path("adapters");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let out = tempfile::tempdir().unwrap();
    for name in outputs.cases.keys() {
        let original = dir.join(name);
        model.load_adapter(&original, &device).unwrap();
        let saved = out.path().join(name);
        model.save_adapter(&saved, name, true).unwrap();
        for stem in ["adapter", "model_head"] {
            // AdapterHub wrote .safetensors, or pytorch_*.bin where it cannot (ln_before).
            let theirs = [format!("{stem}.safetensors"), format!("pytorch_{stem}.bin")]
                .into_iter()
                .map(|f| original.join(f))
                .find(|p| p.exists())
                .unwrap();
            let a = TensorFile::read(&theirs).unwrap();
            let b = TensorFile::read(&saved.join(format!("{stem}.safetensors"))).unwrap();
            let keys_a: Vec<&str> = a.remaining().collect();
            let keys_b: Vec<&str> = b.remaining().collect();
            assert_eq!(keys_a, keys_b, "{name}/{stem}: keys");
            for key in keys_a {
                let (x, y) = (a.get(key).unwrap(), b.get(key).unwrap());
                assert_eq!(x.shape, y.shape, "{name}/{stem}: {key} shape");
                assert_eq!(x.values, y.values, "{name}/{stem}: {key} values");
            }
        }
        for file in ["adapter_config.json", "head_config.json"] {
            let read = |p: &std::path::Path| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(p.join(file)).unwrap()).unwrap()
            };
            let (a, b) = (read(&original), read(&saved));
            for key in ["name", "hidden_size", "model_type"] {
                assert_eq!(a[key], b[key], "{name}/{file}: {key}");
            }
            let missing: Vec<&String> = a["config"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| b["config"].get(k.as_str()).is_none())
                .collect();
            assert!(
                missing.is_empty(),
                "{name}/{file}: sinew leaves out config keys AdapterHub writes: {missing:?}"
            );
            for (key, value) in b["config"].as_object().unwrap() {
                let theirs = &a["config"][key];
                let same = same_json(theirs, value);
                assert!(
                    same,
                    "{name}/{file}: config.{key} is {value}, AdapterHub wrote {theirs}"
                );
            }
        }
    }
}

/// sinew's presets are AdapterHub's: the configs AdapterHub wrote for its presets parse to them.
#[test]
fn presets_equal_adapterhubs() {
    use sinew::adapter::bottleneck::{BnConfig, ReductionFactor};
    use sinew::adapter::lora::LoraConfig;
    use sinew::adapter::prefix::PrefixTuningConfig;
    use sinew::adapter::prompt::PromptTuningConfig;
    use sinew::adapter::{AdapterFolder, MethodConfig};
    let read = |name: &str| {
        AdapterFolder::read_unchecked(&fixture_path("adapters").join(name))
            .unwrap()
            .config
    };
    // The par_bn fixtures were saved with reduction_factor 16 instead of the preset's 2.
    let reduced = |c: BnConfig| BnConfig {
        reduction_factor: ReductionFactor::Uniform(16.0),
        ..c
    };
    assert_eq!(read("seq_bn"), MethodConfig::Bottleneck(BnConfig::seq_bn()));
    assert_eq!(
        read("double_seq_bn"),
        MethodConfig::Bottleneck(BnConfig::double_seq_bn())
    );
    assert_eq!(
        read("par_bn"),
        MethodConfig::Bottleneck(reduced(BnConfig::par_bn()))
    );
    assert_eq!(
        read("scaled_par_bn"),
        MethodConfig::Bottleneck(reduced(BnConfig::scaled_par_bn()))
    );
    assert_eq!(read("ia3"), MethodConfig::Lora(LoraConfig::ia3()));
    assert_eq!(
        read("prefix"),
        MethodConfig::Prefix(PrefixTuningConfig {
            prefix_length: 5,
            bottleneck_size: 32,
            ..Default::default()
        })
    );
    assert_eq!(
        read("prompt"),
        MethodConfig::Prompt(PromptTuningConfig {
            prompt_length: 4,
            ..Default::default()
        })
    );
    // The lora fixture used alpha 16 instead of the preset's 8.
    assert_eq!(
        read("lora"),
        MethodConfig::Lora(LoraConfig {
            alpha: 16.0,
            ..LoraConfig::lora()
        })
    );
}
