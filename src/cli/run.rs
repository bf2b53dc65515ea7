//! `sinew train`, `sinew fuse`, `sinew eval` and `sinew predict`: a run described by a
//! [`RunSpec`] (from flags or a TOML/JSON run file) trains on the chosen backend and writes its
//! folder — the trained adapters/fusion in AdapterHub's layout, `parts.bin` (the trained weights,
//! what `eval`/`predict` reload), `run.json`, `metrics.jsonl`, `results.json`, the checkpoint and
//! the pictures.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sinew_backbone::{FusedAutodiff, FusedOps};

use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::files::{sha256_file, write_atomic};
use sinew::backbone::{ModelFiles, Pretrained, TextTokenizer};
use sinew::backend::BackendJob;
use sinew::data::assets;
use sinew::data::splits::{prepare, read_split, stratified_split, subsample, task_dir};
use sinew::data::table::{load, Columns};
use sinew::data::tasks::{task, Example};
use sinew::fusion::{AdapterModel, FusionConfig, FusionId};
use sinew::trainer::batching::{tokenize_cached, Tokens};
use sinew::trainer::checkpoint::{parts_to_stable_bytes, restore_from_bytes, Checkpoint};
use sinew::trainer::metrics::Scores;
use sinew::trainer::monitor::Monitor;
use sinew::trainer::train::{activate, evaluate, set_regime, train, Regime, TaskData, TrainConfig};
use sinew::trainer::train::{EpochLog, Outcome};

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// An adapter and head per task (ST-A; MT-A with several tasks).
    Adapter,
    /// AdapterFusion over trained adapters (stage two), with a new head.
    Fusion,
    /// A head on the frozen backbone (baseline).
    Head,
    /// The backbone and a head (full fine-tuning baseline).
    Full,
}

/// Where a task's examples come from: a task of the suite, or the user's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// A suite task (`sinew fetch --task`), or the name given to the user's data.
    pub task: String,
    /// The suite's training split: `train`, `train_100` or `train_500`.
    pub split: String,
    /// Keep at most this many training examples (stratified, seeded).
    pub max_train: Option<usize>,
    /// Keep at most this many dev (and test) examples.
    pub max_eval: Option<usize>,
    /// The user's training file (CSV/TSV/JSONL) instead of a suite task.
    pub train_file: Option<PathBuf>,
    /// The user's dev file (default: 10% of the training file, stratified).
    pub dev_file: Option<PathBuf>,
    /// The user's test file.
    pub test_file: Option<PathBuf>,
    /// Column (or JSONL key) of the text.
    pub text_col: String,
    /// Column of a pair's second text.
    pub pair_col: Option<String>,
    /// Column of the label.
    pub label_col: String,
    /// Skip (and count) malformed rows instead of stopping at the first.
    pub skip_bad: bool,
    /// Seed of the suite's splits and of subsampling.
    pub split_seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            task: String::new(),
            split: "train".into(),
            max_train: None,
            max_eval: None,
            train_file: None,
            dev_file: None,
            test_file: None,
            text_col: "text".into(),
            pair_col: None,
            label_col: "label".into(),
            skip_bad: false,
            split_seed: 13,
        }
    }
}

/// A training run (the run file's keys; `[train]` holds the hyperparameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// What trains.
    pub method: Method,
    /// The tasks (several with `adapter`: joint multi-task training).
    pub tasks: Vec<DataSpec>,
    /// Adapter method: an AdapterHub preset name (`seq_bn`, `par_bn`, `lora`, `ia3`,
    /// `prefix_tuning`, …) or a JSON config file.
    pub adapter: String,
    /// Adapter folders to fuse (`fusion`).
    pub fuse: Vec<PathBuf>,
    /// `dynamic` or `static` (AdapterHub's fusion presets).
    pub fusion: String,
    /// Train the fused adapters too.
    pub unfreeze_adapters: bool,
    /// Truncate texts at this many tokens.
    pub max_len: usize,
    /// HF model folder (default: all-MiniLM-L6-v2, fetched if missing).
    pub model: Option<PathBuf>,
    /// Hyperparameters.
    pub train: TrainConfig,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            method: Method::Adapter,
            tasks: Vec::new(),
            adapter: "seq_bn".into(),
            fuse: Vec::new(),
            fusion: "dynamic".into(),
            unfreeze_adapters: false,
            max_len: 128,
            model: None,
            train: TrainConfig::default(),
        }
    }
}

impl RunSpec {
    /// Reads a `.toml` or `.json` run file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let spec: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " "))
            })?,
            Some("json") => {
                serde_json::from_str(&text).with_context(|| path.display().to_string())?
            }
            _ => bail!("{}: a run file is .toml or .json", path.display()),
        };
        Ok(spec)
    }

    /// The model folder (the default one is fetched when missing).
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(dir) => Ok(dir.clone()),
            None => assets::ensure_default_model().context("fetching the default model"),
        }
    }
}

/// A task's examples, split.
#[derive(Debug, Clone)]
pub struct Examples {
    /// Labels, sorted (index = class).
    pub labels: Vec<String>,
    /// Training examples.
    pub train: Vec<Example>,
    /// Dev examples.
    pub dev: Vec<Example>,
    /// Test examples (may be empty for user data).
    pub test: Vec<Example>,
}

/// Reads a task's splits (fetching a suite task when missing), capped as the spec says.
pub fn load_examples(spec: &DataSpec) -> anyhow::Result<Examples> {
    let (labels, train, dev, test) = if let Some(file) = &spec.train_file {
        let columns = Columns {
            text: spec.text_col.clone(),
            pair: spec.pair_col.clone(),
            label: spec.label_col.clone(),
        };
        let read = |path: &Path| -> anyhow::Result<Vec<Example>> {
            let loaded = load(path, &columns, spec.skip_bad)?;
            if loaded.skipped > 0 {
                tracing::warn!(
                    "{}: skipped {} malformed rows",
                    path.display(),
                    loaded.skipped
                );
            }
            if loaded.examples.is_empty() {
                bail!("{}: no examples", path.display());
            }
            Ok(loaded.examples)
        };
        let all = read(file)?;
        let (train, dev) = match &spec.dev_file {
            Some(dev) => (all, read(dev)?),
            None => {
                let mut parts = stratified_split(&all, &[0.9, 0.1], spec.split_seed).into_iter();
                (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                )
            }
        };
        if dev.is_empty() {
            bail!(
                "{}: too few examples to hold 10% out for dev; give a dev file (--dev)",
                file.display()
            );
        }
        let test = spec
            .test_file
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or_default();
        let mut labels: Vec<String> = train.iter().map(|e| e.label.clone()).collect();
        labels.sort();
        labels.dedup();
        for (part, name) in [(&dev, "dev"), (&test, "test")] {
            if let Some(e) = part.iter().find(|e| !labels.contains(&e.label)) {
                bail!(
                    "{name} label `{}` does not occur in the training file {}",
                    e.label,
                    file.display()
                );
            }
        }
        (labels, train, dev, test)
    } else {
        let manifest = prepare(task(&spec.task)?, spec.split_seed)?;
        let dir = task_dir(&spec.task);
        if !manifest.splits.contains_key(&spec.split) {
            bail!(
                "task {} has no split `{}` (it has {})",
                spec.task,
                spec.split,
                manifest
                    .splits
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        (
            manifest.labels,
            read_split(&dir, &spec.split)?,
            read_split(&dir, "dev")?,
            read_split(&dir, "test")?,
        )
    };
    let cap = |examples: Vec<Example>, n: Option<usize>| match n {
        Some(n) => subsample(&examples, n, spec.split_seed),
        None => examples,
    };
    Ok(Examples {
        labels,
        train: cap(train, spec.max_train),
        dev: cap(dev, spec.max_eval),
        test: cap(test, spec.max_eval),
    })
}

/// Tokenizes examples once: cached in `$SINEW_HOME/cache/tokens` under a key of the texts'
/// checksum, the tokenizer file's checksum and the truncation length.
pub struct TokenCache {
    tokenizer: TextTokenizer,
    tokenizer_sha256: String,
}

impl TokenCache {
    /// The model folder's tokenizer, truncating at `max_len`.
    pub fn new(model: &Path, max_len: usize) -> anyhow::Result<Self> {
        let path = ModelFiles::in_dir(model)?.tokenizer;
        Ok(Self {
            tokenizer: TextTokenizer::from_file(&path, max_len)?,
            tokenizer_sha256: sha256_file(&path)?,
        })
    }

    /// The tokens of `examples`, labels as indices into `labels`.
    pub fn tokens(&self, examples: &[Example], labels: &[String]) -> anyhow::Result<Vec<Tokens>> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for e in examples {
            serde_json::to_writer(&mut hash, e).expect("serialisable");
        }
        hash.update(labels.join("\u{1}"));
        let texts = format!("{:x}", hash.finalize());
        let key = format!(
            "examples {texts} tokenizer {} max_len {}",
            self.tokenizer_sha256,
            self.tokenizer.max_len()
        );
        let name = format!("{:x}.json", Sha256::digest(key.as_bytes()));
        let dir = assets::sinew_home().join("cache").join("tokens");
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        Ok(tokenize_cached(
            &self.tokenizer,
            examples,
            labels,
            &dir.join(name),
            &key,
        )?)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
}

/// What `run.json` records: the spec and what `eval`/`predict` need to rebuild the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub spec: RunSpec,
    /// Per task: its name and labels.
    pub tasks: Vec<(String, Vec<String>)>,
    /// The fusion, for fusion runs (written as AdapterHub names it, `a,b,c`).
    pub fusion: Option<FusionId>,
}

/// The model a run trains, before training: the backbone with the run's adapters, fusion and
/// heads (freshly initialised where new); the regime and the fusion.
fn build_model<B: FusedOps>(
    record: &RunRecord,
    pretrained: Pretrained<B>,
    device: &B::Device,
) -> anyhow::Result<(AdapterModel<B>, Regime, Option<FusionId>)> {
    let spec = &record.spec;
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let regime = match spec.method {
        Method::Adapter => {
            let config = MethodConfig::from_name_or_file(&spec.adapter, &pretrained.config)?;
            for (name, labels) in &record.tasks {
                model.add_adapter(name, config.clone(), device)?;
                model.add_head(name, HeadConfig::classification(labels), device)?;
            }
            Regime::Adapters
        }
        Method::Fusion => {
            if spec.fuse.len() < 2 {
                bail!(
                    "a fusion needs at least two adapter folders (--adapter), got {}",
                    spec.fuse.len()
                );
            }
            let mut names = Vec::new();
            for dir in &spec.fuse {
                names.push(model.load_adapter(dir, device)?);
            }
            let config = match spec.fusion.as_str() {
                "dynamic" => FusionConfig::dynamic(),
                "static" => FusionConfig::static_(),
                other => bail!("fusion `{other}`: expected dynamic or static"),
            };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let fusion = model.add_fusion(&names, config, device)?;
            let (_, labels) = &record.tasks[0];
            model.add_head(
                &fusion.to_string(),
                HeadConfig::classification(labels),
                device,
            )?;
            Regime::Fusion {
                fusion,
                unfreeze_adapters: spec.unfreeze_adapters,
            }
        }
        Method::Head | Method::Full => {
            let (name, labels) = &record.tasks[0];
            model.add_head(name, HeadConfig::classification(labels), device)?;
            Regime::Head {
                backbone: spec.method == Method::Full,
            }
        }
    };
    let fusion = match &regime {
        Regime::Fusion { fusion, .. } => Some(fusion.clone()),
        _ => None,
    };
    Ok((model, regime, fusion))
}

/// `results.json`: per task, the best epoch's dev scores and the test scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub task: String,
    /// Dev scores of the kept weights.
    pub dev: Scores,
    /// Test scores (when the task has a test split).
    pub test: Option<Scores>,
    /// Parameters the run trained (all tasks together).
    pub trained_parameters: usize,
}

/// A run to train on the chosen backend.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The run.
    pub spec: RunSpec,
    /// Its folder.
    pub out: PathBuf,
    /// Continue from the folder's checkpoint (else an existing one is an error).
    pub resume: bool,
    /// A label for the progress bar.
    pub label: String,
}

impl BackendJob for TrainJob {
    type Output = Vec<TaskResult>;

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<Vec<TaskResult>> {
        self.check()?;
        let checkpoint = self.prepare_out()?;
        let model_dir = self.spec.model_dir()?;
        let cache = TokenCache::new(&model_dir, self.spec.max_len)?;
        let data = self.load_tasks(&cache)?;
        let tasks: Vec<TaskData> = data.iter().map(|(t, _)| t.clone()).collect();
        let (mut model, regime, record) = self.build::<B>(&model_dir, &data, device)?;
        self.announce(&mut model, &regime, &tasks)?;
        let mut monitor = Monitor::new(&self.label, Some(&self.out.join("metrics.jsonl")))?;
        let outcome = train(
            &mut model,
            &regime,
            &tasks,
            &self.spec.train,
            Some(&checkpoint),
            &mut monitor,
        );
        monitor.finish();
        let outcome = outcome?;
        if outcome.interrupted {
            eprintln!(
                "{}: stopped at step {} (checkpoint {}); run again with --resume to finish",
                self.label,
                self.spec.train.stop_after.unwrap_or_default(),
                checkpoint.path().display()
            );
            return Ok(Vec::new());
        }
        self.write_outputs(&model, &record, &regime, &outcome)?;
        let results = self.results(&model, &record, &regime, &data, &outcome, &cache, device)?;
        write_atomic(
            &self.out.join("results.json"),
            &serde_json::to_vec_pretty(&results)?,
        )?;
        Ok(results)
    }
}

impl TrainJob {
    /// The run's tasks and method agree.
    fn check(&self) -> anyhow::Result<()> {
        let spec = &self.spec;
        if spec.tasks.is_empty() {
            bail!("no task: give --task or --train (or [[tasks]] in the run file)");
        }
        if spec.method != Method::Adapter && spec.tasks.len() > 1 {
            bail!("only `adapter` runs train several tasks at once");
        }
        Ok(spec.train.validate()?)
    }

    /// The output folder and its checkpoint: an existing one is continued only with `resume`.
    fn prepare_out(&self) -> anyhow::Result<Checkpoint> {
        std::fs::create_dir_all(&self.out).with_context(|| self.out.display().to_string())?;
        let checkpoint = Checkpoint::new(&self.out);
        if checkpoint.path().exists() && !self.resume {
            bail!(
                "{} exists: pass --resume to continue that run, or choose another --out",
                checkpoint.path().display()
            );
        }
        if self.resume {
            // A run killed mid-write (SIGKILL) leaves its temporary file; the rename never
            // happened, so the previous checkpoint is whole and the leftover is garbage.
            let stale = sinew::backbone::files::remove_stale_temporaries(&self.out);
            if stale > 0 {
                tracing::info!("removed {stale} temporary files of an interrupted run");
            }
        }
        Ok(checkpoint)
    }

    /// Every task's examples, and their tokens for training and dev.
    fn load_tasks(&self, cache: &TokenCache) -> anyhow::Result<Vec<(TaskData, Examples)>> {
        let mut data = Vec::new();
        for d in &self.spec.tasks {
            let examples = load_examples(d)?;
            let task = TaskData {
                name: d.task.clone(),
                train: cache.tokens(&examples.train, &examples.labels)?,
                dev: cache.tokens(&examples.dev, &examples.labels)?,
                classes: examples.labels.len(),
            };
            data.push((task, examples));
        }
        Ok(data)
    }

    /// The model to train, its regime, and what `run.json` records.
    fn build<B: FusedOps>(
        &self,
        model_dir: &Path,
        data: &[(TaskData, Examples)],
        device: &B::Device,
    ) -> anyhow::Result<(AdapterModel<Autodiff<B>>, Regime, RunRecord)> {
        let spec = &self.spec;
        // Everything random is a function of the seed: the new adapters', fusion's and heads'
        // initial weights too (the loop reseeds before every step).
        <Autodiff<B> as Backend>::seed(device, spec.train.seed);
        let pretrained = Pretrained::<Autodiff<B>>::load(model_dir, Some(spec.max_len), device)?;
        let mut record = RunRecord {
            spec: spec.clone(),
            tasks: data
                .iter()
                .map(|(t, e)| (t.name.clone(), e.labels.clone()))
                .collect(),
            fusion: None,
        };
        let (model, regime, fusion) = build_model(&record, pretrained, device)?;
        record.fusion = fusion;
        Ok((model, regime, record))
    }

    /// Puts the model in its training regime and says how much of it trains.
    fn announce<B: FusedAutodiff>(
        &self,
        model: &mut AdapterModel<B>,
        regime: &Regime,
        tasks: &[TaskData],
    ) -> anyhow::Result<()> {
        set_regime(model, regime, tasks)?;
        let (trainable, total) = model.param_counts();
        eprintln!(
            "{}: training {trainable} of {total} parameters ({:.2}%) on {} examples",
            self.label,
            100.0 * trainable as f64 / total as f64,
            tasks.iter().map(|t| t.train.len()).sum::<usize>()
        );
        Ok(())
    }

    /// `parts.bin`, `run.json`, the AdapterHub folders and the loss and dev pictures.
    fn write_outputs<B: FusedOps>(
        &self,
        model: &AdapterModel<B>,
        record: &RunRecord,
        regime: &Regime,
        outcome: &Outcome,
    ) -> anyhow::Result<()> {
        write_atomic(
            &self.out.join("parts.bin"),
            &parts_to_stable_bytes(model).map_err(anyhow::Error::msg)?,
        )?;
        write_atomic(
            &self.out.join("run.json"),
            &serde_json::to_vec_pretty(record)?,
        )?;
        save_folders(model, record, regime, &self.out)?;
        crate::cli::plot::best_effort(&self.out, plot_run(&self.out, &outcome.epochs));
        Ok(())
    }

    /// Per task: the best epoch's dev scores and the kept weights' test scores; for a fusion,
    /// `fusion.png` with its mean attention on dev.
    #[allow(clippy::too_many_arguments)]
    fn results<B: FusedAutodiff>(
        &self,
        model: &AdapterModel<B>,
        record: &RunRecord,
        regime: &Regime,
        data: &[(TaskData, Examples)],
        outcome: &Outcome,
        cache: &TokenCache,
        device: &B::Device,
    ) -> anyhow::Result<Vec<TaskResult>> {
        let spec = &self.spec;
        let (trainable, _) = model.param_counts();
        let mut valid = model.valid();
        let mut results = Vec::new();
        for (i, (task, examples)) in data.iter().enumerate() {
            activate(&mut valid, regime, &task.name)?;
            let test = if examples.test.is_empty() {
                None
            } else {
                let tokens = cache.tokens(&examples.test, &examples.labels)?;
                Some(evaluate(
                    &valid,
                    &tokens,
                    task.classes,
                    spec.train.batch_size,
                    device,
                )?)
            };
            let dev = outcome
                .epochs
                .iter()
                .map(|e| e.dev_per_task[i])
                .max_by(|a, b| a.macro_f1.total_cmp(&b.macro_f1))
                .expect("an epoch ran");
            results.push(TaskResult {
                task: task.name.clone(),
                dev,
                test,
                trained_parameters: trainable,
            });
            if let (0, Some(fusion)) = (i, record.fusion.as_ref()) {
                let texts: Vec<String> = examples
                    .dev
                    .iter()
                    .take(64)
                    .map(|e| e.text.clone())
                    .collect();
                let encoded =
                    sinew::encode::encode_texts(&valid, cache.tokenizer(), &texts, 16, device)?;
                let adapters = fusion.adapters();
                let (rows, values): (Vec<String>, Vec<Vec<f32>>) =
                    sinew::encode::mean_fusion_attentions(&encoded)
                        .into_iter()
                        .unzip();
                let path = self.out.join("fusion.png");
                let drawn = crate::cli::plot::heatmap(
                    &path,
                    &format!("{}: mean fusion attention on dev", task.name),
                    &rows,
                    adapters,
                    &values,
                );
                crate::cli::plot::best_effort(&path, drawn);
            }
        }
        Ok(results)
    }
}

/// The trained adapters (with heads) and fusion in AdapterHub's layout, one folder each.
fn save_folders<B: FusedOps>(
    model: &AdapterModel<B>,
    record: &RunRecord,
    regime: &Regime,
    out: &Path,
) -> anyhow::Result<()> {
    match regime {
        Regime::Adapters => {
            for (name, _) in &record.tasks {
                model.save_adapter(&out.join(name), name, true)?;
            }
        }
        Regime::Fusion {
            fusion,
            unfreeze_adapters,
        } => {
            model.save_fusion(&out.join(fusion.to_string()), fusion, true)?;
            if *unfreeze_adapters {
                for adapter in fusion.adapters() {
                    model.save_adapter(&out.join(adapter), adapter, false)?;
                }
            }
        }
        Regime::Head { .. } => {}
    }
    Ok(())
}

/// `loss.png` (every step's loss, read from `metrics.jsonl` so a resumed run draws all of
/// them, and its running mean) and `dev.png` (dev accuracy and macro-F1 per epoch).
fn plot_run(out: &Path, epochs: &[EpochLog]) -> anyhow::Result<()> {
    let log = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).with_context(|| log.display().to_string())?;
    // A step logged again after a resume replaces the earlier attempt's.
    let mut losses = std::collections::BTreeMap::new();
    for line in text.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", log.display()))?;
        if let (Some("step"), Some(step), Some(loss)) = (
            value["kind"].as_str(),
            value["step"].as_u64(),
            value["loss"].as_f64(),
        ) {
            losses.insert(step, loss);
        }
    }
    let steps: Vec<(f64, f64)> = losses.into_iter().map(|(s, l)| (s as f64, l)).collect();
    let window = (steps.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = steps
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let from = i.saturating_sub(window - 1);
            let part = &steps[from..=i];
            (x, part.iter().map(|p| p.1).sum::<f64>() / part.len() as f64)
        })
        .collect();
    crate::cli::plot::curves(
        &out.join("loss.png"),
        "training loss",
        "step",
        &[
            ("loss".into(), steps),
            (format!("mean of {window}"), smooth),
        ],
    )?;
    let epoch = |f: fn(&Scores) -> f64| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.epoch as f64, f(&e.dev))).collect()
    };
    crate::cli::plot::curves(
        &out.join("dev.png"),
        "dev metrics",
        "epoch",
        &[
            ("accuracy".into(), epoch(|s| s.accuracy)),
            ("macro-F1".into(), epoch(|s| s.macro_f1)),
        ],
    )
}

/// A trained run reloaded: the model in eval mode with its record.
pub struct LoadedRun<B: Backend> {
    /// The model, trained weights in.
    pub model: AdapterModel<B>,
    /// `run.json`.
    pub record: RunRecord,
    /// How it was trained.
    pub regime: Regime,
    /// The tokenizer (with its cache).
    pub cache: TokenCache,
}

impl<B: FusedOps> LoadedRun<B> {
    /// Reads a run folder written by `sinew train`/`sinew fuse`.
    pub fn read(dir: &Path, device: &B::Device) -> anyhow::Result<Self> {
        let path = dir.join("run.json");
        let record: RunRecord = serde_json::from_slice(
            &std::fs::read(&path)
                .with_context(|| format!("{} (not a finished run folder?)", path.display()))?,
        )
        .with_context(|| path.display().to_string())?;
        let model_dir = record.spec.model_dir()?;
        let pretrained = Pretrained::<B>::load(&model_dir, Some(record.spec.max_len), device)?;
        let (mut model, regime, _) = build_model(&record, pretrained, device)?;
        let parts = dir.join("parts.bin");
        let bytes = std::fs::read(&parts).with_context(|| parts.display().to_string())?;
        restore_from_bytes(&mut model, bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", parts.display()))?;
        let cache = TokenCache::new(&model_dir, record.spec.max_len)?;
        Ok(Self {
            model,
            record,
            regime,
            cache,
        })
    }

    /// The task named `task` (default: the run's first) and its labels.
    pub fn task(&self, task: Option<&str>) -> anyhow::Result<(String, Vec<String>)> {
        match task {
            None => Ok(self.record.tasks[0].clone()),
            Some(t) => self
                .record
                .tasks
                .iter()
                .find(|(n, _)| n == t)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the run has no task `{t}` (it has {})",
                        self.record
                            .tasks
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
        }
    }

    /// Activates `task`'s adapter/fusion/head.
    pub fn activate(&mut self, task: &str) -> anyhow::Result<()> {
        Ok(activate(&mut self.model, &self.regime, task)?)
    }
}

/// `sinew eval`: scores of a trained run on a task's split (or the user's file).
#[derive(Debug, Clone)]
pub struct EvalJob {
    /// The run folder.
    pub run: PathBuf,
    /// Which of the run's tasks (default: the first).
    pub task: Option<String>,
    /// `test` or `dev` (suite tasks and the run's own files).
    pub split: String,
    /// Evaluate on this file instead (columns as the run's data spec).
    pub file: Option<PathBuf>,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl BackendJob for EvalJob {
    type Output = (String, usize, Scores);

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<(String, usize, Scores)> {
        let mut run = LoadedRun::<B>::read(&self.run, device)?;
        let (name, labels) = run.task(self.task.as_deref())?;
        let spec = run
            .record
            .spec
            .tasks
            .iter()
            .find(|d| d.task == name)
            .cloned()
            .expect("recorded");
        let examples = match &self.file {
            Some(file) => {
                let columns = Columns {
                    text: spec.text_col.clone(),
                    pair: spec.pair_col.clone(),
                    label: spec.label_col.clone(),
                };
                load(file, &columns, spec.skip_bad)?.examples
            }
            None => {
                let all = load_examples(&spec)?;
                match self.split.as_str() {
                    "test" => all.test,
                    "dev" => all.dev,
                    other => bail!("--split {other}: expected test or dev"),
                }
            }
        };
        if examples.is_empty() {
            bail!("task {name} has no {} examples", self.split);
        }
        let tokens = run.cache.tokens(&examples, &labels)?;
        run.activate(&name)?;
        let scores = evaluate(&run.model, &tokens, labels.len(), self.batch_size, device)?;
        Ok((name, tokens.len(), scores))
    }
}

/// `sinew predict`: the label and class probabilities of every text of a file.
#[derive(Debug, Clone)]
pub struct PredictJob {
    /// The run folder.
    pub run: PathBuf,
    /// Which of the run's tasks (default: the first).
    pub task: Option<String>,
    /// One text per line.
    pub input: PathBuf,
    /// JSONL out: `{"text", "label", "probabilities": {label: p}}` per line.
    pub output: PathBuf,
    /// Texts per forward pass.
    pub batch_size: usize,
}

/// One line of `sinew predict`'s output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// The text.
    pub text: String,
    /// The most probable label.
    pub label: String,
    /// Each label's probability.
    pub probabilities: std::collections::BTreeMap<String, f32>,
}

impl BackendJob for PredictJob {
    type Output = usize;

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<usize> {
        let mut run = LoadedRun::<B>::read(&self.run, device)?;
        let (name, labels) = run.task(self.task.as_deref())?;
        run.activate(&name)?;
        let texts = sinew::encode::read_texts(&self.input)?;
        let mut lines = Vec::new();
        for chunk in texts.chunks(self.batch_size.max(1)) {
            let batch = run.cache.tokenizer().encode(chunk)?;
            let logits = run
                .model
                .logits(&batch.to_input::<B>(device))?
                .logits
                .context("the run's head gives no text-level logits")?;
            let probabilities = burn::tensor::activation::softmax(logits, 1);
            let [_, k] = probabilities.dims();
            let values = probabilities.into_data().to_vec::<f32>()?;
            for (text, row) in chunk.iter().zip(values.chunks(k)) {
                let best = (0..k)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .expect("labels");
                let line = Prediction {
                    text: text.clone(),
                    label: labels[best].clone(),
                    probabilities: labels.iter().cloned().zip(row.iter().copied()).collect(),
                };
                lines.push(serde_json::to_string(&line)?);
            }
        }
        let mut body = lines.join("\n");
        body.push('\n');
        write_atomic(&self.output, body.as_bytes())?;
        Ok(texts.len())
    }
}
