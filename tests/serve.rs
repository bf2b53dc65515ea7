//! `sinew serve` through a real HTTP client on loopback (and its page in a real headless
//! Chromium): answers against AdapterHub's golden outputs and the CLI, batching across 64
//! clients and 8 adapters, every error path, the key, adapter loading with LRU unloading, and
//! a graceful shutdown that loses nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{fixture_path, model_dir, sinew};
use serde::Deserialize;
use serde_json::{json, Value};

/// A `sinew serve` child on a free port, killed when dropped.
struct Server {
    child: Child,
    base: String,
    /// Whatever the server printed on stdout after its first line.
    rest: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let model = model_dir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(["serve", "--port", "0", "--model"])
            .arg(&model)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sinew serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let rest = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().map(|l| l.unwrap_or_default());
            let _ = tx.send(first);
            lines.map_while(Result::ok).collect()
        });
        let line = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("sinew serve did not say where it listens within 300 s")
            .expect("sinew serve exited before listening");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Self {
            child,
            base,
            rest: Some(rest),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `(status, JSON body, Retry-After)`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut request = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(300));
        if let Some(key) = key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let retry = response.header("Retry-After").map(str::to_string);
        let text = response.into_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, retry)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call("POST", path, Some(body), None);
        (s, v)
    }

    fn ok(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.post(path, body.clone());
        assert_eq!(status, 200, "{path} {body}: {value}");
        value
    }

    fn metrics(&self) -> String {
        ureq::get(&self.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything more on stdout breaks the one-line promise (logs go to stderr).
        let rest = self
            .rest
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !std::thread::panicking() {
            assert!(
                rest.is_empty(),
                "sinew serve printed more on stdout: {rest:?}"
            );
        }
    }
}

/// The sum of a metric's samples whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Deserialize)]
struct AdapterCase {
    logits: Value,
}

#[derive(Deserialize)]
struct AdapterOutputs {
    texts: Vec<String>,
    cases: BTreeMap<String, AdapterCase>,
}

fn adapter_outputs() -> AdapterOutputs {
    let path = fixture_path("adapters").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn adapter(name: &str) -> String {
    fixture_path("adapters").join(name).display().to_string()
}

/// `sinew serve`'s options for AdapterHub's fusion `Fuse(seq_a, seq_b)` and its adapters.
fn fusion_args() -> Vec<String> {
    let dir = fixture_path("fusion");
    let path = |p: PathBuf| p.display().to_string();
    vec![
        "--adapter".into(),
        path(dir.join("adapters").join("seq_a")),
        "--adapter".into(),
        path(dir.join("adapters").join("seq_b")),
        "--fusion".into(),
        path(dir.join("fusions").join("fuse_dynamic")),
    ]
}

fn rows(value: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(value.clone()).unwrap()
}

/// A `/predict` answer for several texts as logits (or scores) in label order
/// `negative, neutral, positive`.
fn by_label(answer: &Value) -> Vec<Vec<f32>> {
    by_labels(answer, &["negative", "neutral", "positive"])
}

/// A `/predict` answer for several texts as scores in the label order `order`.
fn by_labels(answer: &Value, order: &[&str]) -> Vec<Vec<f32>> {
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|text| {
            let scores = text.as_array().unwrap();
            // Highest first.
            let s: Vec<f32> = scores
                .iter()
                .map(|s| s["score"].as_f64().unwrap() as f32)
                .collect();
            assert!(s.windows(2).all(|w| w[0] >= w[1]), "not sorted: {text}");
            order
                .iter()
                .map(|l| {
                    let hit = scores.iter().find(|s| s["label"] == *l).unwrap();
                    hit["score"].as_f64().unwrap() as f32
                })
                .collect()
        })
        .collect()
}

/// max |a − b| ≤ tol · max(1, max |b|), over the whole of both.
fn assert_close(what: &str, a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    let scale = b.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}: columns");
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max |diff| {worst:e} over {tol:e} × {scale}"
    );
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = row.iter().map(|x| (x - max).exp()).sum();
    row.iter().map(|x| (x - max).exp() / z).collect()
}

/// `/predict` gives AdapterHub's logits (raw) and their softmax; `/embed` gives
/// sentence-transformers' mean pooling without a setup and `sinew encode`'s with one; a fusion
/// predicts AdapterHub's logits and its attention map is AdapterHub's, averaged.
#[test]
fn answers_match_adapterhub_and_the_cli() {
    let golden = adapter_outputs();
    let fusion_dir = fixture_path("fusion");
    let mut args = vec![
        "--adapter".to_string(),
        adapter("seq_bn"),
        "--adapter".into(),
        adapter("lora"),
        "--adapter".into(),
        adapter("multilabel_head"),
    ];
    args.extend(fusion_args());
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for name in ["seq_bn", "lora"] {
        let raw = server.ok(
            "/predict",
            json!({"inputs": golden.texts, "setup": name, "raw_scores": true}),
        );
        let expected = rows(&golden.cases[name].logits);
        assert_close(name, &by_label(&raw), &expected, 1e-4);
        let probabilities = server.ok("/predict", json!({"inputs": golden.texts, "setup": name}));
        let expected: Vec<Vec<f32>> = expected.iter().map(|r| softmax(r)).collect();
        assert_close(name, &by_label(&probabilities), &expected, 1e-4);
    }
    // A multi-label head scores each label with a sigmoid.
    let multi = server.ok(
        "/predict",
        json!({"inputs": golden.texts, "setup": "multilabel_head"}),
    );
    let expected: Vec<Vec<f32>> = rows(&golden.cases["multilabel_head"].logits)
        .iter()
        .map(|r| r.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect())
        .collect();
    assert_close("multilabel_head", &by_label(&multi), &expected, 1e-4);
    // One text: TEI's single list.
    let one = server.ok(
        "/predict",
        json!({"inputs": golden.texts[0], "setup": "seq_bn"}),
    );
    assert!(one.as_array().unwrap()[0]["label"].is_string(), "{one}");

    // No setup: the backbone's mean pooling, as sentence-transformers computes it.
    // (Cases whose texts all fit: the server does not cut at a case's own max_len.)
    for case in common::backbone_cases()
        .iter()
        .filter(|c| c.input_ids[0].len() < c.max_len)
    {
        let embedded = server.ok(
            "/embed",
            json!({"inputs": case.texts, "normalize": false, "truncate": true}),
        );
        assert_close(&case.name, &rows(&embedded), &case.mean_pooled, 1e-4);
    }
    // With a setup: what `sinew encode` writes for it (the same forward pass, batched alike).
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    std::fs::write(&input, golden.texts.join("\n")).unwrap();
    let output = dir.path().join("out.json");
    let out = sinew(&[
        "encode",
        "--model",
        model_dir().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--adapter",
        &adapter("seq_bn"),
        "--setup",
        "seq_bn",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encoded: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let embedded = server.ok(
        "/embed",
        json!({"inputs": golden.texts, "setup": "seq_bn", "normalize": false}),
    );
    assert_close(
        "embed seq_bn",
        &rows(&embedded),
        &rows(&encoded["mean_pooled"]),
        1e-5,
    );
    // Normalised (the default), and OpenAI's shape.
    let unit = rows(&server.ok("/embed", json!({"inputs": golden.texts, "setup": "seq_bn"})));
    let scaled: Vec<Vec<f32>> = rows(&encoded["mean_pooled"])
        .iter()
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(|x| x / n).collect()
        })
        .collect();
    assert_close("normalised", &unit, &scaled, 1e-5);
    let openai = server.ok(
        "/v1/embeddings",
        json!({"input": golden.texts, "model": "seq_bn"}),
    );
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["model"], "seq_bn");
    let data = openai["data"].as_array().unwrap();
    let vectors: Vec<Vec<f32>> = data
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    assert_close("openai", &vectors, &scaled, 1e-5);
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, d)| d["index"] == i && d["object"] == "embedding"));
    let tokens: u64 = encoded["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_array().unwrap().iter().filter(|v| **v == 1).count() as u64)
        .sum();
    assert_eq!(openai["usage"]["prompt_tokens"], tokens);

    // The fusion: AdapterHub's logits and mean attention over real tokens.
    #[derive(Deserialize)]
    struct FusionCase {
        logits: Vec<Value>,
        #[serde(default)]
        fusion_attentions: BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    }
    #[derive(Deserialize)]
    struct FusionOutputs {
        texts: Vec<String>,
        input_ids: Vec<Vec<u32>>,
        cases: BTreeMap<String, FusionCase>,
    }
    let fused: FusionOutputs =
        serde_json::from_str(&std::fs::read_to_string(fusion_dir.join("outputs.json")).unwrap())
            .unwrap();
    let case = &fused.cases["fuse_dynamic"];
    let setup = "Fuse(seq_a, seq_b)";
    let raw = server.ok(
        "/predict",
        json!({"inputs": fused.texts, "setup": setup, "raw_scores": true}),
    );
    let labels = by_labels(&raw, &["LABEL_0", "LABEL_1", "LABEL_2"]);
    assert_close("fusion", &labels, &rows(&case.logits[0]), 1e-4);
    let map = server.ok(
        "/fusion_attention",
        json!({"inputs": fused.texts, "setup": setup}),
    );
    assert_eq!(map["adapters"], json!(["seq_a", "seq_b"]));
    let mut expected_rows = Vec::new();
    let mut expected_labels = Vec::new();
    let mut keys: Vec<(usize, &String)> = case
        .fusion_attentions
        .keys()
        .map(|k| (k.split('.').next().unwrap().parse().unwrap(), k))
        .collect();
    keys.sort();
    for (layer, key) in keys {
        let mut sum = [0f32; 2];
        let mut count = 0.0;
        for (text, ids) in case.fusion_attentions[key].iter().zip(&fused.input_ids) {
            for (token, &id) in text.iter().zip(ids) {
                if id != 0 {
                    sum[0] += token[0];
                    sum[1] += token[1];
                    count += 1.0;
                }
            }
        }
        expected_rows.push(vec![sum[0] / count, sum[1] / count]);
        expected_labels.push(format!("layer {layer} FFN"));
    }
    assert_eq!(map["layers"], json!(expected_labels));
    assert_close("attention", &rows(&map["values"]), &expected_rows, 1e-4);

    let listed = server.call("GET", "/adapters", None, None).1;
    let seq_bn = listed["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "seq_bn")
        .unwrap();
    assert_eq!(seq_bn["method"], "bottleneck");
    assert_eq!(
        seq_bn["head"]["labels"],
        json!(["negative", "neutral", "positive"])
    );
    assert!(seq_bn["parameters"].as_u64().unwrap() > 0);
    assert_eq!(listed["fusions"][0]["setup"], setup);
}

/// 64 clients over 8 adapters at once (bottlenecks and LoRA routed together in one pass,
/// prefix tuning in passes of its own, a gated bottleneck in a pass per request) each get their own adapter's answer, equal to the
/// unbatched one to 1e-5 and to AdapterHub's to 1e-4; and batches of several texts did form.
#[test]
fn concurrent_clients_over_eight_adapters_get_their_own_answers() {
    let golden = adapter_outputs();
    let names = [
        "seq_bn",
        "double_seq_bn",
        "par_bn",
        "scaled_par_bn",
        "seq_knobs",
        "seq_ln_before_bin",
        "lora",
        "prefix",
    ];
    let mut args = vec!["--max-wait-ms".to_string(), "20".to_string()];
    for n in names {
        args.push("--adapter".into());
        args.push(adapter(n));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    // AdapterHub's answers for the four texts in one request (padded alike: a gate, as
    // seq_knobs has, averages over padded positions too); then, unbatched, one text at a time
    // with nothing else in flight.
    let mut alone: BTreeMap<(&str, usize), Vec<f32>> = BTreeMap::new();
    for n in names {
        let raw = server.ok(
            "/predict",
            json!({"inputs": golden.texts, "setup": n, "raw_scores": true}),
        );
        assert_close(n, &by_label(&raw), &rows(&golden.cases[n].logits), 1e-4);
        for (i, text) in golden.texts.iter().enumerate() {
            let raw = server.ok(
                "/predict",
                json!({"inputs": [text], "setup": n, "raw_scores": true}),
            );
            alone.insert((n, i), by_label(&raw).remove(0));
        }
    }
    let before = metric(&server.metrics(), "sinew_batch_texts_count");
    let base = server.base.clone();
    let threads: Vec<_> = (0..64)
        .map(|client| {
            let base = base.clone();
            let texts = golden.texts.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for round in 0..3 {
                    let name = names[(client + round) % names.len()];
                    let i = (client / 8 + round) % texts.len();
                    let response = ureq::post(&format!("{base}/predict"))
                        .timeout(Duration::from_secs(600))
                        .send_json(json!({"inputs": [texts[i]], "setup": name, "raw_scores": true}))
                        .unwrap_or_else(|e| panic!("client {client}: {e}"));
                    let value: Value = response.into_json().unwrap();
                    answers.push((name, i, by_label(&value).remove(0)));
                }
                answers
            })
        })
        .collect();
    let mut checked = 0;
    for t in threads {
        for (name, i, got) in t.join().unwrap() {
            assert_close(
                &format!("{name} text {i}"),
                &[got],
                &[alone[&(name, i)].clone()],
                1e-5,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 192);
    // Fewer batches than requests: some batches held several clients' requests.
    let batches = metric(&server.metrics(), "sinew_batch_texts_count") - before;
    assert!(
        batches < 192.0,
        "no batch held several requests ({batches} batches)"
    );
}

fn assert_error(status: u16, body: &Value, expected: u16, kind: &str, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {body}"));
    assert_eq!(object.len(), 2, "{body}");
    assert_eq!(body["error_type"], kind, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "`{message}` does not mention `{mentions}`"
    );
    assert!(!message.contains('\n'), "{message}");
}

/// Every error path answers `{"error", "error_type"}` with its status, naming what is wrong.
#[test]
fn errors_are_json_with_the_right_status() {
    let server = Server::start(&[
        "--adapter",
        &adapter("seq_bn"),
        "--adapter",
        &adapter("tagging_head"),
        "--payload-limit",
        "4000",
        "--max-batch-requests",
        "4",
        "--max-len",
        "16",
    ]);
    let send_raw = |body: &str| match ureq::post(&server.url("/predict"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json::<Value>().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let (s, b) = send_raw("{\"inputs\": [\"a\"");
    assert_error(s, &b, 422, "validation", "body");
    let (s, b) = server.post("/predict", json!({"setup": "seq_bn"}));
    assert_error(s, &b, 422, "validation", "inputs");
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": ["fine", 3], "setup": "seq_bn"}),
    );
    assert_error(s, &b, 422, "validation", "inputs[1]");
    let (s, b) = server.post("/predict", json!({"inputs": [], "setup": "seq_bn"}));
    assert_error(s, &b, 422, "validation", "inputs");
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": ["a", "  "], "setup": "seq_bn"}),
    );
    assert_error(s, &b, 422, "validation", "inputs[1]");
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": ["a", "b", "c", "d", "e"], "setup": "seq_bn"}),
    );
    assert_error(s, &b, 422, "validation", "--max-batch-requests");
    let long = "word ".repeat(40);
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": ["short", long], "setup": "seq_bn"}),
    );
    assert_error(s, &b, 422, "validation", "inputs[1]");
    let (s, _) = server.post(
        "/predict",
        json!({"inputs": ["short", long], "setup": "seq_bn", "truncate": true}),
    );
    assert_eq!(s, 200);
    let (s, b) = server.post("/predict", json!({"inputs": "a", "setup": "nope"}));
    assert_error(s, &b, 404, "not_found", "nope");
    let (s, b) = server.post("/predict", json!({"inputs": "a", "setup": "Fuse(seq_bn"}));
    assert_error(s, &b, 422, "validation", "setup");
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": "a", "setup": "Fuse(seq_bn, tagging_head)"}),
    );
    assert_error(s, &b, 404, "not_found", "seq_bn,tagging_head");
    let (s, b) = server.post("/predict", json!({"inputs": "a", "setup": "tagging_head"}));
    assert_error(s, &b, 422, "validation", "tagging");
    let (s, b) = server.post("/embed", json!({"inputs": "a", "colour": 1}));
    assert_error(s, &b, 422, "validation", "colour");
    let (s, b) = server.post(
        "/v1/embeddings",
        json!({"input": "a", "encoding_format": "base64"}),
    );
    assert_error(s, &b, 422, "validation", "encoding_format");
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": "x".repeat(5000), "setup": "seq_bn"}),
    );
    assert_error(s, &b, 413, "payload_too_large", "4000");
    let (s, b, _) = server.call("GET", "/nowhere", None, None);
    assert_error(s, &b, 404, "not_found", "route");
    let (s, b, _) = server.call("GET", "/predict", None, None);
    assert_error(s, &b, 405, "method_not_allowed", "method");
    let (s, b) = server.post("/adapters", json!({"path": "seq_bn"}));
    assert_error(s, &b, 403, "forbidden", "--adapters-dir");
    let (s, b, _) = server.call("DELETE", "/adapters/nope", None, None);
    assert_error(s, &b, 404, "not_found", "nope");
    let (s, b) = server.post("/predict", json!({"inputs": "a", "setup": "seq_bn"}));
    assert_eq!(s, 200, "{b}");
    let metrics = server.metrics();
    assert!(
        metric(
            &metrics,
            "sinew_requests_total{endpoint=\"/predict\",setup=\"seq_bn\",status=\"200\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "sinew_requests_total{endpoint=\"/predict\",setup=\"-\",status=\"422\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("sinew_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("sinew_adapters_loaded 2"), "{metrics}");
}

/// With the queue full (`--max-concurrent 1`, the one request waiting for company), another
/// request is answered 429 with Retry-After, and the waiting one still succeeds.
#[test]
fn a_full_queue_answers_429() {
    let server = Server::start(&[
        "--adapter",
        &adapter("seq_bn"),
        "--max-concurrent",
        "1",
        "--max-wait-ms",
        "3000",
    ]);
    let url = server.url("/predict");
    let first = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(json!({"inputs": "waits", "setup": "seq_bn"}))
            .map(|r| r.status())
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server.metrics(), "sinew_queue_size") < 1.0 {
        assert!(Instant::now() < deadline, "the first request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, b, retry) = server.call(
        "POST",
        "/predict",
        Some(json!({"inputs": "refused", "setup": "seq_bn"})),
        None,
    );
    assert_error(s, &b, 429, "overloaded", "--max-concurrent");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(first.join().unwrap(), 200);
}

/// Requests that arrive while the model is busy share its next pass, even past their
/// `--max-wait-ms` deadline (left in the channel, they would run one pass each and a load that
/// outpaces one pass would never batch again).
#[test]
fn requests_that_queue_while_the_model_is_busy_share_its_next_pass() {
    let server = Server::start(&[
        "--max-wait-ms",
        "0",
        "--max-batch-requests",
        "256",
        "--max-batch-tokens",
        "65536",
    ]);
    let passes = || metric(&server.metrics(), "sinew_batch_texts_count");
    let before = passes();
    // 256 texts of ~100 tokens: a pass of seconds.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(11);
    let url = server.url("/embed");
    let big = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(json!({"inputs": vec![long; 256]}))
            .map(|r| r.status())
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let small: Vec<_> = (0..16)
        .map(|i| {
            let url = server.url("/embed");
            std::thread::spawn(move || {
                ureq::post(&url)
                    .send_json(json!({"inputs": format!("text number {i}")}))
                    .map(|r| r.status())
                    .unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !big.is_finished(),
        "the long pass ended before the small requests queued: nothing to test"
    );
    assert_eq!(big.join().unwrap(), 200);
    for s in small {
        assert_eq!(s.join().unwrap(), 200);
    }
    let taken = passes() - before;
    assert!(
        taken <= 3.0,
        "16 requests queued behind one pass took {} passes of their own",
        taken - 1.0
    );
}

/// `--api-key` (or SINEW_API_KEY): the API needs `Authorization: Bearer KEY`; `/` and
/// `/health` stay open.
#[test]
fn the_api_key_guards_the_api() {
    let server = Server::start_with_env(
        &["--adapter", &adapter("seq_bn")],
        &[("SINEW_API_KEY", "s3cret")],
    );
    let body = json!({"inputs": "a", "setup": "seq_bn"});
    // (Not a trailing space: HTTP strips it from a header value.)
    for key in [
        None,
        Some("wrong"),
        Some("s3cre"),
        Some("s3crets"),
        Some("S3cret"),
    ] {
        let (s, b, _) = server.call("POST", "/predict", Some(body.clone()), key);
        assert_error(s, &b, 401, "unauthorized", "API key");
    }
    let (s, _, _) = server.call("GET", "/metrics", None, None);
    assert_eq!(s, 401);
    let (s, b, _) = server.call("POST", "/predict", Some(body), Some("s3cret"));
    assert_eq!(s, 200, "{b}");
    let (s, b, _) = server.call("GET", "/health", None, None);
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let page = ureq::get(&server.url("/")).call().unwrap();
    assert!(page
        .into_string()
        .unwrap()
        .contains("<title>sinew serve</title>"));
    let (s, info, _) = server.call("GET", "/info", None, Some("s3cret"));
    assert_eq!(s, 200);
    assert_eq!(info["auth"], true);
    assert_eq!(info["model_id"], "all-MiniLM-L6-v2");
}

/// Adapters load at run time from under `--adapters-dir` only; with `--max-adapters 2` the
/// least recently used is unloaded and reloaded on demand, answering as before.
#[test]
fn adapters_load_at_run_time_and_the_least_recently_used_unload() {
    let golden = adapter_outputs();
    let root = fixture_path("adapters");
    let server = Server::start(&[
        "--adapters-dir",
        root.to_str().unwrap(),
        "--max-adapters",
        "2",
    ]);
    let loaded = |server: &Server| -> BTreeMap<String, bool> {
        let listed = server.call("GET", "/adapters", None, None).1;
        listed["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["loaded"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let check = |server: &Server, setup: &str, like: &str| {
        let raw = server.ok(
            "/predict",
            json!({"inputs": golden.texts, "setup": setup, "raw_scores": true}),
        );
        assert_close(
            setup,
            &by_label(&raw),
            &rows(&golden.cases[like].logits),
            1e-4,
        );
    };
    for path in ["seq_bn", "par_bn"] {
        let (s, b) = server.post("/adapters", json!({"path": path}));
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["name"], path);
    }
    check(&server, "seq_bn", "seq_bn");
    let (s, b) = server.post("/adapters", json!({"path": "./lora"}));
    assert_eq!(s, 201, "{b}");
    // par_bn was used least recently.
    let state = loaded(&server);
    assert_eq!(
        state,
        BTreeMap::from([
            ("seq_bn".into(), true),
            ("par_bn".into(), false),
            ("lora".into(), true)
        ])
    );
    check(&server, "par_bn", "par_bn");
    assert!(!loaded(&server)["seq_bn"]);
    check(&server, "lora", "lora");
    check(&server, "seq_bn", "seq_bn");
    assert!(server.metrics().contains("sinew_adapters_loaded 2"));
    // Under another name.
    let (s, b) = server.post("/adapters", json!({"path": "seq_bn", "name": "copy"}));
    assert_eq!(s, 201, "{b}");
    check(&server, "copy", "seq_bn");
    // Refused: a taken name, paths outside the folder, bad names.
    let (s, b) = server.post("/adapters", json!({"path": "seq_bn"}));
    assert_error(s, &b, 409, "conflict", "seq_bn");
    let (s, b) = server.post("/adapters", json!({"path": "../fusion/adapters/seq_a"}));
    assert_error(s, &b, 403, "forbidden", "outside");
    let (s, b) = server.post("/adapters", json!({"path": "/tmp"}));
    assert_error(s, &b, 403, "forbidden", "outside");
    let (s, b) = server.post("/adapters", json!({"path": "seq_bn", "name": "a,b"}));
    assert_error(s, &b, 422, "validation", "name");
    let (s, b) = server.post("/adapters", json!({"path": "missing"}));
    assert_error(s, &b, 422, "validation", "missing");
    // Unloaded and forgotten.
    let (s, b, _) = server.call("DELETE", "/adapters/copy", None, None);
    assert_eq!((s, &b["deleted"]), (200, &json!("copy")));
    let (s, b) = server.post("/predict", json!({"inputs": "a", "setup": "copy"}));
    assert_error(s, &b, 404, "not_found", "copy");
}

/// SIGTERM with requests queued: every one is answered, then the process exits 0.
#[test]
fn sigterm_finishes_the_queued_requests_and_exits_cleanly() {
    let golden = adapter_outputs();
    let mut server = Server::start(&["--adapter", &adapter("seq_bn"), "--max-wait-ms", "1500"]);
    let base = server.base.clone();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = format!("{base}/predict");
            let text = golden.texts[i % 4].clone();
            std::thread::spawn(move || {
                let r = ureq::post(&url)
                    .timeout(Duration::from_secs(300))
                    .send_json(json!({"inputs": [text], "setup": "seq_bn", "raw_scores": true}))
                    .unwrap();
                (i % 4, r.into_json::<Value>().unwrap())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server.metrics(), "sinew_queue_size") < 8.0 {
        assert!(Instant::now() < deadline, "the requests never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let expected = rows(&golden.cases["seq_bn"].logits);
    for c in clients {
        let (i, answer) = c.join().expect("a queued request was lost");
        assert_close(
            "after SIGTERM",
            &by_label(&answer),
            &[expected[i].clone()],
            1e-4,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sinew serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// A client that hangs up while its request waits is dropped from the queue, not computed.
#[test]
fn a_client_that_hangs_up_is_dropped_from_the_queue() {
    let server = Server::start(&["--adapter", &adapter("seq_bn"), "--max-wait-ms", "2000"]);
    let gone = ureq::post(&server.url("/predict"))
        .timeout(Duration::from_millis(300))
        .send_json(json!({"inputs": "never mind", "setup": "seq_bn"}));
    assert!(
        gone.is_err(),
        "the request should have timed out on the client"
    );
    let (s, b) = server.post(
        "/predict",
        json!({"inputs": "still here", "setup": "seq_bn"}),
    );
    assert_eq!(s, 200, "{b}");
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "sinew_queue_dropped_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sinew_batch_texts_count"),
        1.0,
        "{metrics}"
    );
}

/// The page in a real headless Chromium (Debian's chromium + chromium-driver, over WebDriver):
/// pick the fusion, type texts, press Predict; the page shows the server's label scores and the
/// fusion's attention heatmap.
#[test]
fn the_page_predicts_and_draws_the_fusion_attention_in_chromium() {
    let driver_path = PathBuf::from(
        std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into()),
    );
    assert!(
        driver_path.exists(),
        "{} is missing: install Debian's chromium and chromium-driver (.ci/run does)",
        driver_path.display()
    );
    let args = fusion_args();
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let texts = ["The food was wonderful.", "Slow service, cold soup."];
    let setup = "Fuse(seq_a, seq_b)";
    let expected = server.ok("/predict", json!({"inputs": texts, "setup": setup}));
    let map = server.ok(
        "/fusion_attention",
        json!({"inputs": texts, "setup": setup}),
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shown = runtime.block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                   "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut client = None;
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let c = client.expect("chromedriver did not start");
        c.goto(&server.url("/")).await.unwrap();
        c.wait().for_element(Locator::Css("#setup[data-ready]")).await.unwrap();
        let option = c.find(Locator::Css(&format!("#setup option[value='{setup}']"))).await.unwrap();
        option.click().await.unwrap();
        let area = c.find(Locator::Id("texts")).await.unwrap();
        area.clear().await.unwrap();
        area.send_keys(&texts.join("\n")).await.unwrap();
        c.find(Locator::Id("predict")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css("#results[data-done]")).await.unwrap();
        c.wait().for_element(Locator::Css("table.heat")).await.unwrap();
        let mut labels = Vec::new();
        for row in c.find_all(Locator::Css("#results .label")).await.unwrap() {
            let name = row.find(Locator::Css(".name")).await.unwrap().text().await.unwrap();
            let score = row.find(Locator::Css(".score")).await.unwrap().text().await.unwrap();
            labels.push((name, score));
        }
        let mut cells = Vec::new();
        for cell in c.find_all(Locator::Css("table.heat td")).await.unwrap() {
            cells.push(cell.attr("data-value").await.unwrap().unwrap());
        }
        let error = c.find(Locator::Id("error")).await.unwrap().text().await.unwrap();
        if let Ok(dir) = std::env::var("SINEW_SCREENSHOT_DIR") {
            let png = c.screenshot().await.unwrap();
            std::fs::write(PathBuf::from(dir).join("serve_page.png"), png).unwrap();
        }
        c.close().await.unwrap();
        (labels, cells, error)
    });
    let _ = driver.kill();
    let _ = driver.wait();
    let (labels, cells, error) = shown;
    assert_eq!(error, "", "the page showed an error");
    let expected_labels: Vec<(String, String)> = expected
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_array().unwrap().iter())
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                format!("{:.4}", s["score"].as_f64().unwrap()),
            )
        })
        .collect();
    assert_eq!(labels, expected_labels);
    let values: Vec<f64> = cells.iter().map(|c| c.parse().unwrap()).collect();
    let expected_values: Vec<f64> = map["values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(values.len(), expected_values.len());
    assert!(values.len() >= 2);
    for (a, b) in values.iter().zip(&expected_values) {
        assert!((a - b).abs() <= 1e-6, "heatmap cell {a} vs {b}");
    }
}
