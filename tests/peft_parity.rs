//! PEFT LoRA folders (written by HuggingFace `peft`, random non-zero weights; fixtures from
//! tools/reference/make_peft_fixtures.py): loaded outputs match PEFT's, and sinew writes PEFT's layout.

mod common;

use std::path::Path;

use common::{fixture_path, flat3, max_abs_diff, model_dir};
use serde::Deserialize;
use sinew::backbone::Pretrained;
use sinew::backend::NdArrayBackend;
use sinew::fusion::AdapterModel;

type B = NdArrayBackend;

#[derive(Deserialize)]
struct Outputs {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    last_hidden_state: Vec<Vec<Vec<f32>>>,
}

/// Loads PEFT folder `adapter` into MiniLM, compares the hidden states with PEFT's (`outputs`),
/// saves it back and compares `adapter_model.safetensors` key for key, byte for byte; returns
/// both `adapter_config.json`s (PEFT's, sinew's).
fn load_run_save(adapter: &Path, outputs: &Path) -> (serde_json::Value, serde_json::Value) {
    let device = Default::default();
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(outputs).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let tokens = pretrained.tokenizer.encode(&outputs.texts).unwrap();
    assert_eq!(tokens.input_ids, outputs.input_ids);
    let input = tokens.to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let name = model.load_adapter(adapter, &device).unwrap();
    assert_eq!(
        name,
        adapter.file_name().unwrap().to_str().unwrap(),
        "a PEFT adapter is named after its folder"
    );
    model.set_active(Some(&name)).unwrap();
    let hidden = model.forward(&input).unwrap().encoded.last_hidden_state;
    let want = flat3(&outputs.last_hidden_state);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&hidden.into_data().to_vec::<f32>().unwrap(), &want);
    eprintln!("peft {name}: last_hidden_state max |diff| {diff:.2e} (scale {scale:.2e})");
    assert!(
        diff <= 5e-5 * scale + 1e-6,
        "{name}: hidden states differ by {diff}"
    );

    let out = tempfile::tempdir().unwrap();
    model.save_peft(out.path(), &name).unwrap();
    same_tensors(adapter, out.path(), &name);
    let config = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    (config(adapter), config(out.path()))
}

/// Asserts that `a/adapter_model.safetensors` and `b/…` hold the same keys with the same dtype,
/// shape and bytes.
fn same_tensors(a: &Path, b: &Path, what: &str) {
    let read = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    let (theirs, ours) = (read(a), read(b));
    let (theirs, ours) = (
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
    );
    let (mut x, mut y) = (theirs.names(), ours.names());
    x.sort();
    y.sort();
    assert_eq!(x, y, "{what}: keys");
    for key in x {
        let (t, o) = (theirs.tensor(key).unwrap(), ours.tensor(key).unwrap());
        assert_eq!(
            (t.dtype(), t.shape(), t.data()),
            (o.dtype(), o.shape(), o.data()),
            "{what}: {key}"
        );
    }
}

/// MiniLM without adapters, and `texts` as its input.
fn minilm_with(texts: &[String]) -> (AdapterModel<B>, sinew::backbone::EncoderInput<B>) {
    let device = Default::default();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(texts)
        .unwrap()
        .to_input::<B>(&device);
    (
        AdapterModel::new(pretrained.model, pretrained.config),
        input,
    )
}

/// The error of merging adapters `a` and `b` half and half in weight space.
fn merge_error(model: &mut AdapterModel<B>, a: &str, b: &str) -> String {
    let options = sinew::fusion::merge::MergeOptions {
        method: sinew::fusion::merge::MergeMethod::Linear,
        weights: vec![0.5, 0.5],
        density: 1.0,
        rank: None,
        seed: 0,
    };
    model
        .merge_loras("merged", &[a, b], &options, &Default::default())
        .unwrap_err()
        .to_string()
}

/// One form of PEFT's target rules (tests/fixtures/peft/forms/<form>/, made by PEFT): its
/// `adapter_config.json` is written back as PEFT wrote it.
fn form(form: &str) {
    let dir = fixture_path("peft").join("forms");
    let (theirs, ours) = load_run_save(&dir.join(form), &dir.join(format!("{form}.json")));
    assert_eq!(theirs, ours, "{form}: adapter_config.json");
}

/// `target_modules` ["query", "dense", "value"]: by PEFT's suffix rule "dense" is the attention
/// output, intermediate and output projections (`pooler.dense` excluded by `exclude_modules`).
#[test]
fn peft_target_list_matches_by_suffix() {
    form("suffix_list");
}

/// `target_modules` as a regex, fully matched against the module name.
#[test]
fn peft_target_regex() {
    form("regex");
}

/// `target_modules` "all-linear" (resolved by PEFT to every linear of the encoder, with the
/// pooler taken out by a regex `exclude_modules`).
#[test]
fn peft_all_linear_with_exclude_regex() {
    form("all_linear");
}

/// `layers_to_transform` [1, 4] with `layers_pattern` "layer" (and "output.dense", which also
/// names the attention output).
#[test]
fn peft_layers_to_transform() {
    form("layers");
}

/// Per-module rank and alpha from `rank_pattern` / `alpha_pattern`.
#[test]
fn peft_rank_and_alpha_patterns() {
    form("patterns");
}

/// rsLoRA: the update is scaled by alpha/√r.
#[test]
fn peft_rslora() {
    form("rslora");
}

/// `bias: "lora_only"`: each adapted projection uses its own (trained) bias, saved as
/// `…base_layer.bias`; sinew runs it (the biases are random, so ignoring them fails) and writes it
/// back as PEFT did.
#[test]
fn peft_bias_lora_only() {
    form("bias_lora_only");

    // Merged into the backbone, the biases go with the update: still PEFT's outputs. A
    // weight-space merge of several adapters has no place for them and refuses.
    let dir = fixture_path("peft").join("forms");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bias_lora_only.json")).unwrap())
            .unwrap();
    let device = Default::default();
    let (mut model, input) = minilm_with(&outputs.texts);
    let name = model
        .load_adapter(&dir.join("bias_lora_only"), &device)
        .unwrap();
    model.merge_adapter(&name).unwrap();
    model.set_active(Some(&name)).unwrap();
    let hidden = model.forward(&input).unwrap().encoded.last_hidden_state;
    let diff = max_abs_diff(
        &hidden.into_data().to_vec::<f32>().unwrap(),
        &flat3(&outputs.last_hidden_state),
    );
    assert!(diff <= 1e-4, "merged: hidden states differ by {diff}");
    model.unmerge_adapter();
    let other = model
        .load_adapter(&fixture_path("peft").join("lora"), &device)
        .unwrap();
    let err = merge_error(&mut model, &name, &other);
    assert!(err.contains("own biases") && !err.contains('\n'), "{err}");
}

/// A PEFT folder for sequence classification (task_type SEQ_CLS): the LoRA's keys carry `bert.`,
/// the classifier is a module to save. sinew loads the classifier as the adapter's head (one layer
/// on the pooler), gives PEFT's logits, and writes the folder back as PEFT did.
#[test]
fn peft_sequence_classifier_becomes_the_head() {
    #[derive(Deserialize)]
    struct Logits {
        logits: Vec<Vec<f32>>,
    }
    let dir = fixture_path("peft").join("forms");
    let (theirs, ours) = load_run_save(&dir.join("seq_cls"), &dir.join("seq_cls.json"));
    assert_eq!(theirs, ours, "seq_cls: adapter_config.json");

    let device = Default::default();
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seq_cls.json")).unwrap()).unwrap();
    let want: Logits =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seq_cls.json")).unwrap()).unwrap();
    let (mut model, input) = minilm_with(&outputs.texts);
    let name = model.load_adapter(&dir.join("seq_cls"), &device).unwrap();
    model.set_active(Some(&name)).unwrap();
    let out = model.forward(&input).unwrap();
    assert_eq!(out.heads.len(), 1, "the classifier is the adapter's head");
    let logits = match &out.heads[0].logits {
        sinew::adapter::HeadLogits::Text(l) => l.clone().into_data().to_vec::<f32>().unwrap(),
        sinew::adapter::HeadLogits::Tokens(_) => panic!("a classifier gives one row per text"),
    };
    let want: Vec<f32> = want.logits.concat();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&logits, &want);
    eprintln!("peft seq_cls: logits max |diff| {diff:.2e} (scale {scale:.2e})");
    assert!(diff <= 1e-4 * scale.max(1.0), "logits differ by {diff}");
}

/// A placement AdapterHub's switches cannot express (per-module rank and alpha, the attention
/// output, rsLoRA) survives sinew's AdapterHub layout (as `peft_sites`) and comes back as a PEFT
/// folder that names each module, with the same tensors and outputs.
#[test]
fn peft_placement_round_trips_through_adapterhub_layout() {
    let dir = fixture_path("peft").join("forms");
    let device = Default::default();
    let hub = tempfile::tempdir().unwrap();
    let peft = tempfile::tempdir().unwrap();
    for form in ["patterns", "suffix_list", "rslora"] {
        let fresh = || {
            let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
            AdapterModel::new(pretrained.model, pretrained.config)
        };
        let mut model = fresh();
        let name = model.load_adapter(&dir.join(form), &device).unwrap();
        let hub_dir = hub.path().join(form);
        model.save_adapter(&hub_dir, &name, false).unwrap();
        let config = std::fs::read_to_string(hub_dir.join("adapter_config.json")).unwrap();
        assert!(config.contains("peft_sites"), "{form}: {config}");
        let mut again = fresh();
        let name = again.load_adapter(&hub_dir, &device).unwrap();
        let peft_dir = peft.path().join(form);
        again.save_peft(&peft_dir, &name).unwrap();
        // The generated config names every module: read back, it gives PEFT's outputs, and
        // saved again, PEFT's tensors.
        let (_, ours) = load_run_save(&peft_dir, &dir.join(format!("{form}.json")));
        assert!(ours["target_modules"].is_array(), "{form}");
        same_tensors(&dir.join(form), &peft_dir, form);
    }
}

/// A DoRA folder made by PEFT is refused with one line naming the key.
#[test]
fn peft_dora_is_refused_by_name() {
    let device = Default::default();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let dir = fixture_path("peft").join("forms").join("dora");
    let err = model.load_adapter(&dir, &device).unwrap_err().to_string();
    assert!(err.contains("`use_dora`") && !err.contains('\n'), "{err}");
}

/// Unsupported keys and unadaptable modules give one line naming the key (and the module).
#[test]
fn peft_unsupported_keys_are_named() {
    let device = Default::default();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let source = fixture_path("peft").join("forms").join("suffix_list");
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(source.join("adapter_config.json")).unwrap())
            .unwrap();
    for (key, value, expect) in [
        (
            "fan_in_fan_out",
            serde_json::json!(true),
            "`fan_in_fan_out`",
        ),
        ("use_dora", serde_json::json!(true), "`use_dora`"),
        ("bias", serde_json::json!("all"), "`bias`"),
        (
            "modules_to_save",
            serde_json::json!(["classifier", "pooler"]),
            "\"pooler\"",
        ),
        ("exclude_modules", serde_json::Value::Null, "`pooler.dense`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("x");
        std::fs::create_dir(&folder).unwrap();
        std::fs::copy(
            source.join("adapter_model.safetensors"),
            folder.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut json = raw.clone();
        json.insert(key.into(), value);
        std::fs::write(
            folder.join("adapter_config.json"),
            serde_json::to_string(&json).unwrap(),
        )
        .unwrap();
        let err = model
            .load_adapter(&folder, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect) && !err.contains('\n'), "{key}: {err}");
    }
}

#[test]
fn peft_lora_folder_loads_and_saves_back() {
    let device = Default::default();
    let dir = fixture_path("peft");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let tokens = pretrained.tokenizer.encode(&outputs.texts).unwrap();
    assert_eq!(tokens.input_ids, outputs.input_ids);
    let input = tokens.to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let name = model.load_adapter(&dir.join("lora"), &device).unwrap();
    assert_eq!(name, "lora", "a PEFT adapter is named after its folder");
    model.set_active(Some(&name)).unwrap();
    let hidden = model.forward(&input).unwrap().encoded.last_hidden_state;
    let diff = max_abs_diff(
        &hidden.into_data().to_vec::<f32>().unwrap(),
        &flat3(&outputs.last_hidden_state),
    );
    eprintln!("peft lora: last_hidden_state max |diff| {diff:.2e}");
    assert!(diff <= 1e-4, "hidden states differ by {diff}");

    let out = tempfile::tempdir().unwrap();
    model.save_peft(out.path(), &name).unwrap();
    same_tensors(&dir.join("lora"), out.path(), "lora");
    let config = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (theirs, ours) = (config(&dir.join("lora")), config(out.path()));
    for key in ["peft_type", "r", "layers_to_transform", "bias"] {
        assert_eq!(theirs[key], ours[key], "adapter_config.json: {key}");
    }
    // PEFT keeps target_modules as a set: compare without order.
    let targets = |v: &serde_json::Value| {
        let mut t: Vec<String> = serde_json::from_value(v["target_modules"].clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(
        targets(&theirs),
        targets(&ours),
        "adapter_config.json: target_modules"
    );
    assert_eq!(theirs["lora_alpha"].as_f64(), ours["lora_alpha"].as_f64());
}

/// A weight-space merge has one rank and one scaling: adapters placed per module (rank_pattern,
/// rsLoRA) are refused by name rather than merged wrongly; plain PEFT LoRAs still merge.
#[test]
fn per_module_placements_are_not_merged() {
    let device = Default::default();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let forms = fixture_path("peft").join("forms");
    let patterns = model
        .load_adapter(&forms.join("patterns"), &device)
        .unwrap();
    let rslora = model.load_adapter(&forms.join("rslora"), &device).unwrap();
    let err = merge_error(&mut model, &patterns, &rslora);
    assert!(
        err.contains("placed per module") && !err.contains('\n'),
        "{err}"
    );
}
