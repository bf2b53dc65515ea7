//! `sinew train`, `eval`, `predict` and `--resume` end to end on a user's CSV (the real SMS-spam
//! excerpt): the run folder holds what the README says, the AdapterHub folder it writes carries
//! the trained weights (`sinew encode --adapter` predicts what `predict` does), `eval` scores what
//! `predict` labels, and bad input gets one error line naming the file, key or flag.

mod common;

use common::{error_line, fixture_path, model_dir, sinew};

fn train_args<'a>(csv: &'a str, model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--train",
        csv,
        "--dev",
        csv,
        "--text-col",
        "text",
        "--label-col",
        "spam",
        "--name",
        "sms",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--max-len",
        "32",
        "--lr",
        "3e-3",
        "--backend",
        "ndarray",
        "--model",
        model,
        "--out",
        out,
    ]
}

/// The model folder, the CSV, and a scratch folder with the run's path in it.
fn setup() -> (String, String, tempfile::TempDir, std::path::PathBuf) {
    let model = model_dir().to_str().unwrap().to_string();
    let csv = fixture_path("data/sms-spam.csv")
        .to_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    (model, csv, dir, out)
}

#[test]
fn train_eval_predict_and_resume() {
    let (model, csv, dir, out) = setup();
    let (model, csv, out_s) = (model.as_str(), csv.as_str(), out.to_str().unwrap());

    // Stop after one step, then resume to the end.
    let mut args = train_args(csv, model, out_s);
    args.extend(["--stop-after", "1"]);
    let first = sinew(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.join("checkpoint.zip").is_file() && !out.join("results.json").exists());
    // Without --resume an existing checkpoint is not overwritten.
    let refused = sinew(&train_args(csv, model, out_s));
    let line = error_line(&refused);
    assert!(
        line.contains("checkpoint.zip") && line.contains("--resume"),
        "{line}"
    );
    let mut args = train_args(csv, model, out_s);
    args.push("--resume");
    let resumed = sinew(&args);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );

    // 5 examples in batches of 2: 3 steps per epoch; one JSONL line per step (the step before the
    // stop logged once, the rest after resuming) and per epoch.
    for file in [
        "run.json",
        "parts.bin",
        "results.json",
        "loss.png",
        "dev.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "\"step\"").count(),
        6,
        "{log}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "\"epoch\"").count(),
        2,
        "{log}"
    );
    assert!(out.join("sms/adapter_config.json").is_file());
    assert!(out.join("sms/head_config.json").is_file());

    // predict, from parts.bin, on the texts of the CSV.
    let texts = dir.path().join("texts.txt");
    let rows: Vec<(String, String)> = {
        let mut reader = csv::Reader::from_path(csv).unwrap();
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[2].to_string(), r[1].to_string())
            })
            .collect()
    };
    let body: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    std::fs::write(&texts, body.join("\n")).unwrap();
    let predictions = dir.path().join("p.jsonl");
    let predicted = sinew(&[
        "predict",
        "--run",
        out_s,
        "--input",
        texts.to_str().unwrap(),
        "--output",
        predictions.to_str().unwrap(),
        "--backend",
        "ndarray",
    ]);
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    let labels: Vec<(String, f64)> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let label = v["label"].as_str().unwrap().to_string();
            let p: f64 = v["probabilities"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p.as_f64().unwrap())
                .sum();
            (label, p)
        })
        .collect();
    assert_eq!(labels.len(), rows.len());
    assert!(
        labels.iter().all(|(_, p)| (p - 1.0).abs() < 1e-5),
        "probabilities sum to 1"
    );

    // eval scores exactly those predictions against the CSV's labels.
    let correct = labels
        .iter()
        .zip(&rows)
        .filter(|((p, _), (_, gold))| p == gold)
        .count();
    let evaluated = sinew(&[
        "eval",
        "--run",
        out_s,
        "--file",
        csv,
        "--backend",
        "ndarray",
    ]);
    assert!(
        evaluated.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluated.stderr)
    );
    let stdout = String::from_utf8_lossy(&evaluated.stdout);
    let want = format!("accuracy {:.4}", correct as f64 / rows.len() as f64);
    assert!(stdout.contains(&want), "{stdout} vs {want}");

    // The AdapterHub folder the run wrote gives the same labels through `sinew encode`.
    let encoded = dir.path().join("e.json");
    let enc = sinew(&[
        "encode",
        "--model",
        model,
        "--input",
        texts.to_str().unwrap(),
        "--output",
        encoded.to_str().unwrap(),
        "--adapter",
        out.join("sms").to_str().unwrap(),
        "--backend",
        "ndarray",
    ]);
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&encoded).unwrap()).unwrap();
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sms/head_config.json")).unwrap())
            .unwrap();
    let id2label = &head["config"]["label2id"];
    for (row, (label, _)) in json["logits"].as_array().unwrap().iter().zip(&labels) {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(id2label[label].as_u64(), Some(best as u64));
    }
}

#[test]
fn bad_input_gets_one_line_naming_it() {
    let (model, csv, dir, out) = setup();
    let (model, csv, out) = (model.as_str(), csv.as_str(), out.to_str().unwrap());

    // A label column the file does not have.
    let mut args = train_args(csv, model, out);
    let at = args.iter().position(|a| *a == "spam").unwrap();
    args[at] = "category";
    let line = error_line(&sinew(&args));
    assert!(
        line.contains("sms-spam.csv") && line.contains("category"),
        "{line}"
    );

    // A run file with a key sinew does not know.
    let run_file = dir.path().join("run.toml");
    std::fs::write(&run_file, "method = \"adapter\"\nepochs = 3\n").unwrap();
    let line = error_line(&sinew(&[
        "train",
        "--config",
        run_file.to_str().unwrap(),
        "--task",
        "trec",
        "--out",
        out,
    ]));
    assert!(
        line.contains("run.toml") && line.contains("epochs"),
        "{line}"
    );

    // No epoch to run: refused before any work, naming the key.
    let mut args = train_args(csv, model, out);
    let at = args.iter().position(|a| *a == "--epochs").unwrap();
    args[at + 1] = "0";
    let line = error_line(&sinew(&args));
    assert!(
        line.contains("epochs") && line.contains("at least 1"),
        "{line}"
    );

    // An adapter config that is neither a preset nor a file.
    let mut args = train_args(csv, model, out);
    args.extend(["--adapter-config", "houlsby_typo"]);
    let line = error_line(&sinew(&args));
    assert!(
        line.contains("houlsby_typo") && line.contains("seq_bn"),
        "{line}"
    );

    // eval of a folder that is not a finished run.
    let line = error_line(&sinew(&["eval", "--run", dir.path().to_str().unwrap()]));
    assert!(line.contains("run.json"), "{line}");
}

/// Pictures are best-effort: a `loss.png` that cannot be written (here a folder of that name)
/// is a warning naming it, and the run still evaluates and writes `results.json`.
#[test]
fn a_picture_that_cannot_be_drawn_is_a_warning() {
    let (model, csv, _dir, out) = setup();
    std::fs::create_dir_all(out.join("loss.png")).unwrap();
    let mut args = train_args(&csv, &model, out.to_str().unwrap());
    let at = args.iter().position(|a| *a == "--epochs").unwrap();
    args[at + 1] = "1";
    let run = sinew(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(out.join("results.json").is_file(), "no results.json");
    assert!(
        stderr.contains("loss.png") || stderr.contains("picture not drawn"),
        "{stderr}"
    );
}

/// `sinew train --pair-col` tokenizes each row as a sentence pair, as HF `tokenizers` does
/// (tests/fixtures/pairs.json): the run's token cache holds `[CLS] a [SEP] b [SEP]` with segment
/// ids 0 then 1 for every row.
#[test]
fn pair_columns_train_on_sentence_pairs() {
    #[derive(serde::Deserialize)]
    struct Example {
        text: String,
        pair: Option<String>,
        label: String,
    }
    #[derive(serde::Deserialize)]
    struct Fixture {
        examples: Vec<Example>,
        input_ids: Vec<Vec<u32>>,
        token_type_ids: Vec<Vec<u32>>,
    }
    #[derive(serde::Deserialize)]
    struct Cached {
        tokens: Vec<Tokens>,
    }
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Tokens {
        ids: Vec<u32>,
        types: Vec<u32>,
    }
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(fixture_path("pairs.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut csv = csv::Writer::from_path(dir.path().join("pairs.csv")).unwrap();
    csv.write_record(["premise", "hypothesis", "label"])
        .unwrap();
    let mut want = Vec::new();
    for (i, e) in fixture.examples.iter().enumerate() {
        if let Some(pair) = &e.pair {
            csv.write_record([&e.text, pair, &e.label]).unwrap();
            want.push(Tokens {
                ids: fixture.input_ids[i].clone(),
                types: fixture.token_type_ids[i].clone(),
            });
        }
    }
    csv.flush().unwrap();
    assert!(want.len() >= 3);
    let file = dir.path().join("pairs.csv");
    let home = dir.path().join("home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["train", "--train"])
        .arg(&file)
        .arg("--dev")
        .arg(&file)
        .args(["--text-col", "premise", "--pair-col", "hypothesis"])
        .args(["--method", "head", "--epochs", "1", "--backend", "ndarray"])
        .arg("--model")
        .arg(model_dir())
        .arg("--out")
        .arg(dir.path().join("run"))
        .env("SINEW_HOME", &home)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caches: Vec<Vec<Tokens>> = std::fs::read_dir(home.join("cache/tokens"))
        .unwrap()
        .map(|f| {
            let cached: Cached =
                serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap();
            cached.tokens
        })
        .collect();
    assert!(!caches.is_empty(), "the run tokenized its data");
    for tokens in &caches {
        assert_eq!(tokens, &want, "every row tokenized as HF tokenizers' pair");
    }
}

/// The arguments of a longer run of the SMS CSV: `epochs` epochs of batches of 2, a checkpoint
/// after every step (run file `checkpoint_every = 1`), no early stopping.
fn long_run(
    dir: &std::path::Path,
    backend: &str,
    seed: &str,
    epochs: &str,
    out: &str,
) -> Vec<String> {
    let config = dir.join("run.toml");
    std::fs::write(&config, "[train]\ncheckpoint_every = 1\npatience = 1000\n").unwrap();
    let (model, csv, _, _) = setup();
    let mut args: Vec<String> = train_args(&csv, &model, out)
        .into_iter()
        .map(String::from)
        .collect();
    let at = |args: &Vec<String>, flag: &str| args.iter().position(|a| a == flag).unwrap() + 1;
    let i = at(&args, "--backend");
    args[i] = backend.into();
    let i = at(&args, "--epochs");
    args[i] = epochs.into();
    args.extend(["--seed".into(), seed.into(), "--config".into()]);
    args.push(config.to_str().unwrap().into());
    args
}

/// What a finished run must reproduce byte for byte: the scores and every saved weight.
const OUTPUTS: [&str; 4] = [
    "results.json",
    "parts.bin",
    "sms/adapter.safetensors",
    "sms/model_head.safetensors",
];

fn read(dir: &std::path::Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// Two `sinew train` runs of the same run file, data and seed write the same bytes — weights
/// (initialisation included), per-step losses, scores — on ndarray and on flex; another seed
/// gives other weights.
#[test]
fn the_same_seed_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for backend in ["ndarray", "flex"] {
        let run = |seed: &str, name: &str| {
            let out = dir.path().join(format!("{backend}-{name}"));
            let args = long_run(dir.path(), backend, seed, "2", out.to_str().unwrap());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let result = sinew(&args);
            assert!(
                result.status.success(),
                "{}",
                String::from_utf8_lossy(&result.stderr)
            );
            out
        };
        let (a, b, other) = (run("5", "a"), run("5", "b"), run("6", "other"));
        for file in OUTPUTS.iter().chain(&["metrics.jsonl"]) {
            assert!(
                read(&a, file) == read(&b, file),
                "{backend}: {file} differs between two runs"
            );
        }
        assert!(
            read(&a, "sms/adapter.safetensors") != read(&other, "sms/adapter.safetensors"),
            "{backend}: another seed must give other weights"
        );
    }
}

/// `sinew train` killed with SIGKILL at random moments (checkpoints after every step), resumed
/// each time, finishes with the uninterrupted run's scores and weights byte for byte, and leaves
/// no temporary file behind.
#[test]
fn kill_9_and_resume_gives_the_uninterrupted_run() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let args = long_run(dir.path(), "ndarray", "5", "12", whole.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = sinew(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = started.elapsed();

    let killed = dir.path().join("killed");
    let mut args = long_run(dir.path(), "ndarray", "5", "12", killed.to_str().unwrap());
    args.push("--resume".into());
    // Moments spread over the run, drawn from a fixed generator (a failure reproduces).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    for attempt in 0.. {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sinew"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if attempt < 5 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let fraction = 0.05 + 0.2 * (state % 1000) as f64 / 1000.0;
            std::thread::sleep(full.mul_f64(fraction));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        break;
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed: the run is too short for this test"
    );
    for file in OUTPUTS {
        assert!(
            read(&whole, file) == read(&killed, file),
            "{file} differs from the uninterrupted run's after {kills} kills"
        );
    }
    let mut leftovers = Vec::new();
    let mut stack = vec![killed.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().contains(".tmp-") {
                leftovers.push(e.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
