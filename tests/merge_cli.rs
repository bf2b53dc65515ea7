//! `sinew merge` on real LoRA folders: an AdapterHub LoRA (r 8 on Q, V) and a PEFT LoRA (r 4 on
//! Q, K, V and FFN-in, layer 2 left out). A merge that weights one input 1 and the other 0 has
//! exactly that input's update, so the merged folder must give the outputs its library recorded
//! (tests/fixtures/adapters and tests/fixtures/peft, from tools/reference/).

mod common;

use std::path::Path;

use common::{error_line, fixture_path, flat3, max_abs_diff, model_dir, sinew};
use serde_json::Value;
use sinew::encode::Encoded;

fn hidden(file: &Path, case: Option<&str>) -> (Vec<String>, Vec<f32>) {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let texts = serde_json::from_value(json["texts"].clone()).unwrap();
    let states = match case {
        Some(case) => json["cases"][case]["last_hidden_state"].clone(),
        None => json["last_hidden_state"].clone(),
    };
    let states: Vec<Vec<Vec<f32>>> = serde_json::from_value(states).unwrap();
    (texts, flat3(&states))
}

fn merge(dir: &Path, method: &str, weights: &str, extra: &[&str]) -> std::process::Output {
    let model = model_dir();
    let lora = fixture_path("adapters").join("lora");
    let peft = dir.join("peft_lora");
    if !peft.exists() {
        // PEFT folders take their adapter name from the folder.
        std::fs::create_dir(&peft).unwrap();
        for entry in std::fs::read_dir(fixture_path("peft").join("lora")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, peft.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = dir.join(format!("merged_{method}_{weights}"));
    let mut args = vec![
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        lora.to_str().unwrap(),
        "--adapter",
        peft.to_str().unwrap(),
        "--method",
        method,
        "--weights",
        weights,
        "--name",
        "merged",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sinew(&args)
}

fn encode(dir: &Path, adapter: &Path, texts: &[String]) -> Vec<f32> {
    let input = dir.join("in.txt");
    std::fs::write(&input, texts.join("\n")).unwrap();
    let output = dir.join("out.json");
    let model = model_dir();
    let run = sinew(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Encoded = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    flat3(&got.last_hidden_state)
}

#[test]
fn one_sided_merges_give_that_input() {
    let dir = tempfile::tempdir().unwrap();
    let (texts, adapterhub) = hidden(&fixture_path("adapters/outputs.json"), Some("lora"));
    let (peft_texts, peft) = hidden(&fixture_path("peft/outputs.json"), None);
    for (method, weights, extra, texts, want) in [
        ("cat", "1,0", vec![], &texts, &adapterhub),
        ("cat", "0,1", vec![], &peft_texts, &peft),
        ("svd", "1,0", vec!["--rank", "8"], &texts, &adapterhub),
        ("svd", "0,1", vec![], &peft_texts, &peft),
        ("ties", "1,0", vec!["--density", "1"], &texts, &adapterhub),
        (
            "dare_ties",
            "0,1",
            vec!["--density", "1"],
            &peft_texts,
            &peft,
        ),
        (
            "dare_linear",
            "1,0",
            vec!["--density", "1"],
            &texts,
            &adapterhub,
        ),
    ] {
        let run = merge(dir.path(), method, weights, &extra);
        assert!(
            run.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let merged = dir.path().join(format!("merged_{method}_{weights}"));
        let got = encode(dir.path(), &merged, texts);
        let diff = max_abs_diff(&got, want);
        eprintln!("{method} {weights}: max |diff| {diff:.2e}");
        assert!(
            diff <= 1e-4,
            "{method} {weights}: hidden states differ by {diff}"
        );
    }
}

#[test]
fn linear_needs_equal_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let line = error_line(&merge(dir.path(), "linear", "0.5,0.5", &[]));
    assert!(
        line.contains("linear merges need equal ranks (8 and 4)"),
        "{line}"
    );
    let line = error_line(&merge(dir.path(), "mean", "0.5,0.5", &[]));
    assert!(line.contains("unknown merge method `mean`"), "{line}");
}
