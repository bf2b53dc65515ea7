//! `sinew encode --adapter DIR --setup NAME` on folders saved by AdapterHub, and the one-line
//! errors for adapter folders that do not fit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{error_line, fixture_path, flat2, flat3, max_abs_diff, model_dir, sinew};
use serde_json::Value;
use sinew::encode::Encoded;

fn outputs() -> Value {
    let path = fixture_path("adapters").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `encode` on the fixture texts with extra arguments.
fn encode(dir: &Path, extra: &[&str]) -> Output {
    let texts: Vec<String> = serde_json::from_value(outputs()["texts"].clone()).unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, texts.join("\n")).unwrap();
    let model = model_dir();
    let output = dir.join("out.json");
    let mut args = vec![
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sinew(&args)
}

#[test]
fn encode_with_adapterhub_folders_gives_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixture_path("adapters");
    let seq = fixtures.join("seq_bn");
    let par = fixtures.join("par_bn");
    for name in ["seq_bn", "par_bn"] {
        let out = encode(
            dir.path(),
            &[
                "--adapter",
                seq.to_str().unwrap(),
                "--adapter",
                par.to_str().unwrap(),
                "--setup",
                name,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Encoded =
            serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
        let case = &outputs()["cases"][name];
        let want: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(case["last_hidden_state"].clone()).unwrap();
        let diff = max_abs_diff(&flat3(&got.last_hidden_state), &flat3(&want));
        assert!(diff <= 1e-4, "{name}: hidden states differ by {diff}");
        let want: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let diff = max_abs_diff(&flat2(&got.logits.expect("logits")), &flat2(&want));
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
    }
}

/// Prefix tuning (from AdapterHub's .bin), prompt tuning (a longer output sequence) and a tagging
/// head (`token_logits`) through the CLI.
#[test]
fn encode_with_prefix_prompt_and_tagging_folders() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["prefix", "prompt_after_bos", "tagging_head"] {
        let folder = fixture_path("adapters").join(name);
        let out = encode(dir.path(), &["--adapter", folder.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Encoded =
            serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
        let case = &outputs()["cases"][name];
        let want: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(case["last_hidden_state"].clone()).unwrap();
        let diff = max_abs_diff(&flat3(&got.last_hidden_state), &flat3(&want));
        assert!(diff <= 1e-4, "{name}: hidden states differ by {diff}");
        let (got, want) = if name == "tagging_head" {
            let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(case["logits"].clone()).unwrap();
            (
                flat3(&got.token_logits.expect("token_logits")),
                flat3(&want),
            )
        } else {
            let want: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
            (flat2(&got.logits.expect("logits")), flat2(&want))
        };
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
    }
}

#[test]
fn several_adapters_need_a_setup_and_a_known_name() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixture_path("adapters");
    let seq = fixtures.join("seq_bn");
    let par = fixtures.join("par_bn");
    let both = [
        "--adapter",
        seq.to_str().unwrap(),
        "--adapter",
        par.to_str().unwrap(),
    ];
    let line = error_line(&encode(dir.path(), &both));
    assert!(line.contains("choose one with --setup"), "{line}");
    let mut unknown = both.to_vec();
    unknown.extend_from_slice(&["--setup", "nope"]);
    let line = error_line(&encode(dir.path(), &unknown));
    assert!(line.contains("unknown adapter `nope`"), "{line}");
}

/// A copy of a fixture folder with `edit` applied to one JSON file's `config` object.
fn edited(dir: &Path, file: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let from = fixture_path("adapters").join("seq_bn");
    let to = dir.join("seq_bn_edited");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    let path = to.join(file);
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    to
}

fn adapter_error(edit_file: &str, edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited(dir.path(), edit_file, edit);
    error_line(&encode(
        dir.path(),
        &["--adapter", folder.to_str().unwrap()],
    ))
}

#[test]
fn unknown_architecture_is_named() {
    let line = adapter_error("adapter_config.json", |j| {
        j["config"]["architecture"] = "mystery".into()
    });
    assert!(
        line.contains("adapter_config.json: `architecture` = \"mystery\""),
        "{line}"
    );
}

#[test]
fn adapter_for_a_wider_model_is_refused() {
    let line = adapter_error("adapter_config.json", |j| j["hidden_size"] = 768.into());
    assert!(
        line.contains("adapter_config.json: `hidden_size` 768 does not fit the backbone's 384"),
        "{line}"
    );
}

#[test]
fn tensor_shape_that_does_not_fit_names_file_and_key() {
    // reduction 8 instead of 16: the config now wants 48-wide bottlenecks, the file has 24.
    let line = adapter_error("adapter_config.json", |j| {
        j["config"]["reduction_factor"] = 8.into()
    });
    assert!(
        line.contains("adapter.safetensors: tensor `bert.encoder.layer.0.output.adapters.seq_bn.adapter_down.0.weight` has shape [24, 384], the backbone needs [48, 384]"),
        "{line}"
    );
}

#[test]
fn head_config_without_labels_is_named() {
    let line = adapter_error("head_config.json", |j| {
        j["config"].as_object_mut().unwrap().remove("num_labels");
    });
    assert!(
        line.contains("head_config.json: config: missing field `num_labels`"),
        "{line}"
    );
}

#[test]
fn unknown_config_field_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited(dir.path(), "adapter_config.json", |j| {
        j["config"]["sparkle"] = true.into()
    });
    let out = encode(dir.path(), &["--adapter", folder.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown config field `sparkle` ignored"),
        "{stderr}"
    );
}

#[test]
fn inspect_reports_method_and_parameter_counts() {
    let out = sinew(&[
        "inspect",
        fixture_path("adapters").join("seq_bn").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // 6 layers of down (384→24) and up (24→384) projections with biases.
    let adapter = 6 * (384 * 24 + 24 + 24 * 384 + 384);
    // Two head layers: 384→384 and 384→3.
    let head = 384 * 384 + 384 + 384 * 3 + 3;
    assert!(
        text.contains("method   bottleneck (sequential, after FFN, reduction 16.0, relu)"),
        "{text}"
    );
    assert!(text.contains(&format!("params   {adapter} ")), "{text}");
    assert!(
        text.contains(&format!("head     classification, 3 labels [\"negative\", \"neutral\", \"positive\"], 2 layers, {head} params")),
        "{text}"
    );
}
