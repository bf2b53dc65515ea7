//! Shared by the integration tests: the real model folder and the golden fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;

pub mod reference;
pub mod training;

/// The real all-MiniLM-L6-v2, fetched on first use (`.ci/run` fetches it before the tests).
/// Fetched once per test binary, so parallel tests never race on the download.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("SINEW_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => sinew::data::assets::ensure_default_model()
            .expect("the real model is needed: run `sinew fetch` (or set SINEW_MODEL_DIR)"),
    })
    .clone()
}

/// One batch written by tools/reference/make_backbone_fixtures.py.
#[derive(Debug, Deserialize)]
pub struct BackboneCase {
    pub name: String,
    pub max_len: usize,
    pub texts: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
    pub token_type_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub last_hidden_state: Vec<Vec<Vec<f32>>>,
    pub mean_pooled: Vec<Vec<f32>>,
    pub pooler_output: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
struct BackboneFixture {
    cases: Vec<BackboneCase>,
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub fn backbone_cases() -> Vec<BackboneCase> {
    let path = fixture_path("backbone_minilm.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<BackboneFixture>(&text)
        .unwrap()
        .cases
}

/// Largest absolute difference between two equally shaped flat slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "shapes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// JSON equality where numbers compare by value (AdapterHub writes `8`, sinew `8.0`).
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The active setup's last hidden states and logits for `input`, flat.
pub fn hidden_and_logits<B: sinew::backbone::FusedOps>(
    model: &sinew::fusion::AdapterModel<B>,
    input: &sinew::backbone::EncoderInput<B>,
) -> (Vec<f32>, Vec<f32>) {
    let out = model.forward(input).unwrap();
    let hidden = out.encoded.last_hidden_state.into_data().to_vec::<f32>();
    let logits = out.logits.expect("a head").into_data().to_vec::<f32>();
    (hidden.unwrap(), logits.unwrap())
}

pub fn flat2(v: &[Vec<f32>]) -> Vec<f32> {
    v.iter().flatten().copied().collect()
}

pub fn flat3(v: &[Vec<Vec<f32>>]) -> Vec<f32> {
    v.iter().flatten().flatten().copied().collect()
}

/// Runs the `sinew` binary with warnings (not info) on stderr.
pub fn sinew(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sinew")
}

/// The only `error:` line a failed run printed, checked to be a single line.
pub fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected, got: {stderr}");
    errors[0].to_string()
}

/// The real model with dropout off (AdapterHub's reference ran in eval mode; Burn's dropout is
/// active whenever autodiff is).
pub fn model_without_dropout() -> tempfile::TempDir {
    let real = model_dir();
    let dir = tempfile::tempdir().unwrap();
    for name in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(real.join(name), dir.path().join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real.join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// The real model folder with `model.safetensors` stored in half precision (`F16` or `BF16`):
/// every f32 tensor rounded to nearest even, as `torch`'s `.half()` / `.bfloat16()` do.
pub fn half_precision_model(dtype: safetensors::Dtype) -> tempfile::TempDir {
    use burn::tensor::{bf16, f16};
    let real = model_dir();
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::os::unix::fs::symlink(real.join(name), dir.path().join(name)).unwrap();
    }
    let bytes = std::fs::read(real.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        let data: Vec<u8> = if view.dtype() == safetensors::Dtype::F32 {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            match dtype {
                safetensors::Dtype::F16 => values
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => values
                    .flat_map(|v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                other => panic!("{other:?} is not a half-precision dtype"),
            }
        } else {
            view.data().to_vec()
        };
        let stored = if view.dtype() == safetensors::Dtype::F32 {
            dtype
        } else {
            view.dtype()
        };
        tensors.push((name, stored, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}
