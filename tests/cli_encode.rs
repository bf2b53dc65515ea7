//! `sinew encode` end to end, and its one-line errors for bad input.

mod common;

use std::path::Path;

use common::{backbone_cases, error_line, flat2, flat3, max_abs_diff, model_dir, sinew};
use sinew::encode::Encoded;

fn write_lines(dir: &Path, name: &str, texts: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, texts.join("\n") + "\n").unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn encode_matches_transformers_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir();
    for case in backbone_cases() {
        let input = write_lines(dir.path(), "in.txt", &case.texts);
        let output = dir.path().join("out.json");
        let max_len = case.max_len.to_string();
        let out = sinew(&[
            "encode",
            "--model",
            model.to_str().unwrap(),
            "--input",
            &input,
            "--output",
            output.to_str().unwrap(),
            "--max-len",
            &max_len,
            "--batch-size",
            "4",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("truncated"),
            case.name == "truncated_at_16",
            "{}: truncation warning: {stderr}",
            case.name
        );
        let got: Encoded = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
        assert_eq!(got.input_ids, case.input_ids, "{}", case.name);
        assert_eq!(got.attention_mask, case.attention_mask, "{}", case.name);
        let diff = max_abs_diff(
            &flat3(&got.last_hidden_state),
            &flat3(&case.last_hidden_state),
        );
        assert!(
            diff <= 1e-4,
            "{}: last_hidden_state differs by {diff}",
            case.name
        );
        let diff = max_abs_diff(&flat2(&got.mean_pooled), &flat2(&case.mean_pooled));
        assert!(diff <= 1e-4, "{}: mean_pooled differs by {diff}", case.name);
    }
}

#[test]
fn empty_input_file_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.txt");
    std::fs::write(&input, "\n  \n").unwrap();
    let model = model_dir();
    let out = sinew(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.path().join("o.json").to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(line.contains("empty.txt: no text"), "{line}");
}

/// A model folder with the real files linked in, and one file replaced or removed.
fn broken_model(dir: &Path, replace: &str, contents: Option<Vec<u8>>) -> String {
    let real = model_dir();
    let broken = dir.join("model");
    std::fs::create_dir_all(&broken).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        if name != replace {
            std::os::unix::fs::symlink(real.join(name), broken.join(name)).unwrap();
        }
    }
    if let Some(bytes) = contents {
        std::fs::write(broken.join(replace), bytes).unwrap();
    }
    broken.to_string_lossy().into_owned()
}

fn encode_error(model: &str, dir: &Path) -> String {
    let input = write_lines(dir, "in.txt", &["hello world".to_string()]);
    let out = sinew(&[
        "encode",
        "--model",
        model,
        "--input",
        &input,
        "--output",
        dir.join("o.json").to_str().unwrap(),
    ]);
    error_line(&out)
}

#[test]
fn missing_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = broken_model(dir.path(), "model.safetensors", None);
    let line = encode_error(&model, dir.path());
    assert!(line.contains("model.safetensors: not found"), "{line}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let model = broken_model(
        dir.path(),
        "model.safetensors",
        Some(real[..real.len() / 2].to_vec()),
    );
    let line = encode_error(&model, dir.path());
    assert!(
        line.contains("model.safetensors: not a readable safetensors file"),
        "{line}"
    );
}

#[test]
fn checkpoint_wider_than_config_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // The real 384-wide checkpoint under a config that says 768 wide.
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    let config = config.replace("\"hidden_size\": 384", "\"hidden_size\": 768");
    assert!(config.contains("768"));
    let model = broken_model(dir.path(), "config.json", Some(config.into_bytes()));
    let line = encode_error(&model, dir.path());
    assert!(
        line.contains("model.safetensors: tensor `")
            && line.contains("has shape [")
            && line.contains("384")
            && line.contains("768"),
        "{line}"
    );
}

#[test]
fn config_missing_a_required_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    let config = config.replace("\"num_hidden_layers\": 6,", "");
    let model = broken_model(dir.path(), "config.json", Some(config.into_bytes()));
    let line = encode_error(&model, dir.path());
    assert!(
        line.contains("config.json: missing field `num_hidden_layers`"),
        "{line}"
    );
}

#[test]
fn missing_tokenizer_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = broken_model(dir.path(), "tokenizer.json", None);
    let line = encode_error(&model, dir.path());
    assert!(line.contains("tokenizer.json: not found"), "{line}");
}

/// A `model.safetensors` stored in f16 or bf16 loads (cast to f32) on every CPU backend and gives
/// transformers' hidden states for the same rounded weights (tests/fixtures/half.json, written
/// by tools/reference/make_half_fixtures.py). Before, ndarray panicked and the process died with
/// SIGSEGV.
#[test]
fn half_precision_checkpoints_load_as_f32() {
    #[derive(serde::Deserialize)]
    struct Fixture {
        texts: Vec<String>,
        input_ids: Vec<Vec<u32>>,
        cases: std::collections::BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    }
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(common::fixture_path("half.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write_lines(dir.path(), "in.txt", &fixture.texts);
    let output = dir.path().join("out.json");
    for (name, dtype) in [
        ("f16", safetensors::Dtype::F16),
        ("bf16", safetensors::Dtype::BF16),
    ] {
        let model = common::half_precision_model(dtype);
        let want = flat3(&fixture.cases[name]);
        for backend in ["ndarray", "flex"] {
            let out = sinew(&[
                "encode",
                "--model",
                model.path().to_str().unwrap(),
                "--input",
                &input,
                "--output",
                output.to_str().unwrap(),
                "--backend",
                backend,
            ]);
            assert!(
                out.status.success(),
                "{name} on {backend}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Encoded = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
            assert_eq!(got.input_ids, fixture.input_ids);
            let diff = max_abs_diff(&flat3(&got.last_hidden_state), &want);
            assert!(
                diff <= 1e-4,
                "{name} on {backend}: last_hidden_state differs from transformers by {diff}"
            );
        }
    }
}
