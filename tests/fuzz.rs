//! Property-based fuzzing of every reader of outside input: the setup-expression parser, adapter /
//! fusion / head folders (config and weights), the safetensors and PyTorch `.bin` readers, the
//! checkpoint reader, the token cache and the CSV/TSV/JSONL table reader. Each gets
//! `SINEW_FUZZ_CASES` generated cases (default 10,000): valid inputs with random mutations and
//! inputs built from scratch. None may panic; every error is one line naming the file.
//!
//! `tools/fuzz.sh` runs a longer campaign (more cases, a fresh seed each time).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::Autodiff;
use burn::optim::AdamWConfig;
use common::{fixture_path, model_dir};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::tensors::TensorFile;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::{BertConfig, TextTokenizer};
use sinew::backend::NdArrayBackend;
use sinew::data::table::{load, Columns};
use sinew::data::tasks::Example;
use sinew::fusion::{AdapterModel, Setup};
use sinew::trainer::batching::{tokenize, tokenize_cached};
use sinew::trainer::checkpoint::{Checkpoint, Progress};

type B = NdArrayBackend;
type A = Autodiff<NdArrayBackend>;

/// Cases per reader: `SINEW_FUZZ_CASES`, default 10,000.
fn cases() -> u32 {
    std::env::var("SINEW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A runner with a fixed seed (`SINEW_FUZZ_SEED`, default 0): a failure reproduces, and the
/// campaign script varies it. No regression files are written into the repository.
fn runner() -> TestRunner {
    let seed: u64 = std::env::var("SINEW_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config {
            cases: cases(),
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

/// Runs `check` on every generated value; a panic inside fails the property with its message.
fn fuzz<S: Strategy>(strategy: S, check: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let check = std::panic::AssertUnwindSafe(check);
    runner()
        .run(&strategy, |value| {
            let shown = format!("{value:.200?}");
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(value))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(TestCaseError::fail(format!("{message} for {shown}"))),
                Err(_) => Err(TestCaseError::fail(format!("panicked for {shown}"))),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// An error must be one line naming `file`.
fn names(error: &str, file: &Path) -> Result<(), String> {
    let name = file.file_name().unwrap().to_string_lossy();
    if error.contains('\n') {
        return Err(format!("error of more than one line: {error}"));
    }
    if !error.contains(name.as_ref()) {
        return Err(format!("error does not name {name}: {error}"));
    }
    Ok(())
}

/// Byte-level mutations of a valid input: flips, insertions, deletions, a truncation.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Flip(i, x) => {
                if !bytes.is_empty() {
                    bytes[i % len] ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Edit::Truncate(i) => bytes.truncate(i % len),
        }
    }
    bytes
}

/// JSON values that break configs: wrong types, negatives, huge and fractional numbers.
fn odd_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1.0), Just(0.0), Just(0.5), Just(1e30), Just(-1e-9)]
            .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        proptest::collection::vec(any::<i32>(), 0..4).prop_map(Value::from),
        Just(json!({"x": 1})),
    ]
}

/// A structural edit of a JSON object: a key (by index, nested one level into `config`) set to an
/// odd value, removed, or an unknown key added.
#[derive(Debug, Clone)]
enum JsonEdit {
    Set(usize, bool, Value),
    Remove(usize, bool),
    Add(String, Value),
}

fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<bool>(), odd_json()).prop_map(|(i, n, v)| JsonEdit::Set(i, n, v)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, n)| JsonEdit::Remove(i, n)),
        ("[a-z_]{1,10}", odd_json()).prop_map(|(k, v)| JsonEdit::Add(k, v)),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply_json(mut value: Value, edits: &[JsonEdit]) -> Vec<u8> {
    for edit in edits {
        let Value::Object(top) = &mut value else {
            break;
        };
        let (i, nested) = match edit {
            JsonEdit::Add(key, v) => {
                top.insert(key.clone(), v.clone());
                continue;
            }
            JsonEdit::Set(i, nested, _) | JsonEdit::Remove(i, nested) => (*i, *nested),
        };
        let inner = nested && matches!(top.get("config"), Some(Value::Object(_)));
        let map = if inner {
            top.get_mut("config")
                .and_then(Value::as_object_mut)
                .unwrap()
        } else {
            top
        };
        if map.is_empty() {
            continue;
        }
        let key = map.keys().nth(i % map.len()).unwrap().clone();
        match edit {
            JsonEdit::Set(_, _, v) => {
                map.insert(key, v.clone());
            }
            _ => {
                map.remove(&key);
            }
        }
    }
    serde_json::to_vec_pretty(&value).unwrap()
}

/// A copy of fixture folder `from` in a scratch folder, with one file replaced.
fn folder_with(scratch: &Path, from: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let dir = scratch.join(from.file_name().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.join(file), bytes).unwrap();
    dir
}

/// MiniLM's shape with random (lazy, never materialised) weights: loading adapters needs only
/// the config.
fn empty_model() -> AdapterModel<B> {
    static CONFIG: OnceLock<BertConfig> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| BertConfig::from_file(&model_dir().join("config.json")).unwrap())
        .clone();
    let device = Default::default();
    AdapterModel::new(config.init::<B>(true, &device), config)
}

#[test]
fn setup_expressions() {
    let valid = [
        "a",
        "Stack(a, b)",
        "Fuse(a, b, c)",
        "Parallel(a, Stack(b, c))",
        "BatchSplit(a, b, batch_sizes=[1, 3])",
        "Split(a, b, splits=[4, 4])",
        "Average(a, b, weights=[0.25, 0.75])",
        "Stack(a, Fuse(b, c))",
    ];
    let mutated = (0..valid.len(), edits()).prop_map(move |(i, e)| {
        String::from_utf8_lossy(&apply(valid[i].as_bytes().to_vec(), &e)).into_owned()
    });
    let grammar = "[A-Za-z(),=\\[\\]0-9. _-]{0,48}";
    fuzz(
        prop_oneof![mutated, grammar.prop_map(String::from)],
        |text| {
            match Setup::parse(&text) {
                Ok(setup) => {
                    // What parses prints back to an expression that parses to the same setup.
                    let again = Setup::parse(&setup.to_string())
                        .map_err(|e| format!("`{setup}` does not parse back: {e}"))?;
                    (again == setup)
                        .then_some(())
                        .ok_or(format!("`{text}` → `{setup}` → `{again}`"))
                }
                Err(e) if e.to_string().is_empty() || e.to_string().contains('\n') => {
                    Err(format!("bad error `{e}`"))
                }
                Err(_) => Ok(()),
            }
        },
    );
}

/// Adapter folders (bottleneck in safetensors, LoRA, prefix tuning in PyTorch's `.bin`, prompt
/// tuning) with their config or weights mutated.
#[test]
fn adapter_folders() {
    let scratch = tempfile::tempdir().unwrap();
    let base = empty_model();
    let folders = ["seq_bn", "lora", "prefix", "prompt"].map(|n| fixture_path("adapters").join(n));
    let weights = |dir: &Path| {
        ["adapter.safetensors", "pytorch_adapter.bin"]
            .into_iter()
            .find(|f| dir.join(f).exists())
            .unwrap()
    };
    let strategy = (0..folders.len(), any::<bool>(), json_edits(), edits());
    fuzz(strategy, |(which, config, json_edit, byte_edit)| {
        let from = &folders[which];
        let (file, bytes) = if config {
            let value: Value =
                serde_json::from_slice(&std::fs::read(from.join("adapter_config.json")).unwrap())
                    .unwrap();
            ("adapter_config.json", apply_json(value, &json_edit))
        } else {
            let file = weights(from);
            (
                file,
                apply(std::fs::read(from.join(file)).unwrap(), &byte_edit),
            )
        };
        let dir = folder_with(scratch.path(), from, file, &bytes);
        let mut model = base.clone();
        match model.load_adapter(&dir, &Default::default()) {
            Ok(_) => Ok(()),
            Err(e) => names(&e.to_string(), &dir),
        }
    });
}

/// Fusion folders and heads saved alone, config or weights mutated.
#[test]
fn fusion_and_head_folders() {
    let scratch = tempfile::tempdir().unwrap();
    let fixtures = fixture_path("fusion");
    let mut base = empty_model();
    for name in ["seq_a", "seq_b"] {
        base.load_adapter(&fixtures.join("adapters").join(name), &Default::default())
            .unwrap();
    }
    let fusion = fixtures.join("fusions/fuse_dynamic");
    let head = fixtures.join("heads/seq_b");
    let strategy = (any::<bool>(), any::<bool>(), json_edits(), edits());
    fuzz(strategy, |(is_fusion, config, json_edit, byte_edit)| {
        let (from, config_file, weights) = if is_fusion {
            (
                &fusion,
                "adapter_fusion_config.json",
                "model_adapter_fusion.safetensors",
            )
        } else {
            (&head, "head_config.json", "pytorch_model_head.bin")
        };
        let (file, bytes) = if config {
            let value: Value =
                serde_json::from_slice(&std::fs::read(from.join(config_file)).unwrap()).unwrap();
            (config_file, apply_json(value, &json_edit))
        } else {
            (
                weights,
                apply(std::fs::read(from.join(weights)).unwrap(), &byte_edit),
            )
        };
        let dir = folder_with(scratch.path(), from, file, &bytes);
        let mut model = base.clone();
        let result = if is_fusion {
            model.load_fusion(&dir, &Default::default()).map(|_| ())
        } else {
            // seq_b already has its head from its folder: attach this one to a headless copy.
            let mut headless = empty_model();
            headless
                .add_adapter(
                    "seq_b",
                    MethodConfig::Bottleneck(BnConfig::seq_bn()),
                    &Default::default(),
                )
                .unwrap();
            model = headless;
            model.load_head(&dir, &Default::default()).map(|_| ())
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => names(&e.to_string(), &dir),
        }
    });
}

/// safetensors files built from scratch: any dtype name, shapes up to 2^40 elements, offsets
/// that overlap, run past the data or backwards, headers of the wrong length.
#[test]
fn safetensors_files() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("weights.safetensors");
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("F64"),
        Just("I64"),
        Just("U8"),
        Just("BOOL"),
        Just("Q4"),
    ];
    let dim = prop_oneof![0u64..8, Just(1 << 20), Just(1 << 40)];
    let tensor = (
        "[a-z.]{1,12}",
        dtype,
        proptest::collection::vec(dim, 0..4),
        (0u64..256, 0u64..256),
    );
    let strategy = (
        proptest::collection::vec(tensor, 0..4),
        0usize..300,
        prop_oneof![Just(None), any::<u64>().prop_map(Some)],
    );
    fuzz(strategy, |(tensors, data_len, header_len)| {
        let mut header = serde_json::Map::new();
        for (name, dtype, shape, (start, end)) in &tensors {
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = header_len
            .unwrap_or(header.len() as u64)
            .to_le_bytes()
            .to_vec();
        bytes.extend(&header);
        bytes.extend((0..data_len).map(|i| i as u8));
        std::fs::write(&path, &bytes).unwrap();
        match TensorFile::read(&path) {
            Ok(_) => Ok(()),
            Err(e) => names(&e.to_string(), &path),
        }
    });
}

/// PyTorch `.bin` checkpoints (a zip holding a pickle), mutated.
#[test]
fn pytorch_bin_files() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("pytorch_adapter.bin");
    let valid = std::fs::read(fixture_path("adapters/prefix/pytorch_adapter.bin")).unwrap();
    fuzz(edits(), |edit| {
        std::fs::write(&path, apply(valid.clone(), &edit)).unwrap();
        match TensorFile::read(&path) {
            Ok(_) => Ok(()),
            Err(e) => names(&e.to_string(), &path),
        }
    });
}

/// A checkpoint of a small model, mutated, read back into a fresh copy of that model.
#[test]
fn checkpoints() {
    let config = BertConfig::from_json(
        &json!({
            "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 32, "type_vocab_size": 2,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": 1e-12, "hidden_act": "gelu"
        })
        .to_string(),
    )
    .unwrap();
    let device = Default::default();
    let mut model = AdapterModel::<A>::new(config.init(false, &device), config);
    model
        .add_adapter("t", MethodConfig::Bottleneck(BnConfig::seq_bn()), &device)
        .unwrap();
    model
        .add_head(
            "t",
            HeadConfig::classification(&["a".into(), "b".into()]),
            &device,
        )
        .unwrap();
    model.train_adapter("t").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint::new(scratch.path());
    let optimizer = AdamWConfig::new().init::<A, AdapterModel<A>>();
    checkpoint
        .save(
            "run",
            &model,
            &optimizer,
            &Progress::default(),
            Some(b"best"),
        )
        .unwrap();
    let valid = std::fs::read(checkpoint.path()).unwrap();
    fuzz(edits(), |edit| {
        std::fs::write(checkpoint.path(), apply(valid.clone(), &edit)).unwrap();
        let mut fresh = model.clone();
        let optimizer = AdamWConfig::new().init::<A, AdapterModel<A>>();
        match checkpoint.load("run", &mut fresh, optimizer) {
            Ok(_) => Ok(()),
            Err(e) => names(&e.to_string(), checkpoint.path()),
        }
    });
}

/// The token cache, mutated: whatever it holds, the tokens given back are the tokenizer's.
#[test]
fn token_cache() {
    let tokenizer = TextTokenizer::from_file(&model_dir().join("tokenizer.json"), 32).unwrap();
    let examples: Vec<Example> = ["free prize now", "see you at noon", "call me"]
        .iter()
        .enumerate()
        .map(|(i, t)| Example {
            text: t.to_string(),
            pair: None,
            label: ["ham", "spam"][i % 2].into(),
        })
        .collect();
    let labels = vec!["ham".to_string(), "spam".to_string()];
    let want = tokenize(&tokenizer, &examples, &labels).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("train.tokens.json");
    tokenize_cached(&tokenizer, &examples, &labels, &cache, "key").unwrap();
    let valid = std::fs::read(&cache).unwrap();
    fuzz(edits(), |edit| {
        std::fs::write(&cache, apply(valid.clone(), &edit)).unwrap();
        match tokenize_cached(&tokenizer, &examples, &labels, &cache, "key") {
            Ok(tokens) if tokens == want => Ok(()),
            Ok(_) => Err("a damaged cache gave other tokens".into()),
            Err(e) => names(&e.to_string(), &cache),
        }
    });
}

/// CSV, TSV and JSONL tables: random bytes and mutated valid tables, strict and `--skip-bad`.
#[test]
fn tables() {
    let scratch = tempfile::tempdir().unwrap();
    let valid = [
        ("csv", "text,label\nhello there,ham\n\"free, prize\",spam\n"),
        ("tsv", "text\tlabel\nhello there\tham\nfree prize\tspam\n"),
        (
            "jsonl",
            "{\"text\": \"hello there\", \"label\": \"ham\"}\n{\"text\": \"free\", \"label\": \"spam\"}\n",
        ),
    ];
    let columns = Columns {
        text: "text".into(),
        pair: None,
        label: "label".into(),
    };
    let content = prop_oneof![
        (0..valid.len(), edits()).prop_map(move |(i, e)| (i, apply(valid[i].1.into(), &e))),
        (
            0..valid.len(),
            proptest::collection::vec(any::<u8>(), 0..200)
        ),
    ];
    fuzz((content, any::<bool>()), |((kind, bytes), skip_bad)| {
        let path = scratch.path().join(format!("data.{}", valid[kind].0));
        std::fs::write(&path, &bytes).unwrap();
        match load(&path, &columns, skip_bad) {
            Ok(_) => Ok(()),
            Err(e) => names(&e.to_string(), &path),
        }
    });
}
