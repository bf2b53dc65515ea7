//! `sinew demo`, the main job: fetch the model and data, train ST-A adapters on a few suite
//! tasks (subsampled), then, on a low-resource target (100 training examples), train a head on
//! the frozen backbone, an adapter, and an AdapterFusion of all the adapters; print a table of
//! their test accuracy and write the pictures. Every run is an ordinary `sinew train`/`fuse` run
//! folder under the output, so each can be evaluated, reused or resumed on its own.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::cli::run::{DataSpec, Method, RunSpec, TaskResult, TrainJob};
use sinew::backbone::files::write_atomic;
use sinew::backend::BackendKind;
use sinew::trainer::metrics::Scores;
use sinew::trainer::train::TrainConfig;

/// What the demo trains (`sinew demo`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Demo {
    /// Where the runs, the table and the pictures go.
    #[arg(long, default_value = "sinew-demo")]
    pub out: PathBuf,
    /// Source tasks, one adapter each (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rt_polarity,tweets3,rt_subjectivity,trec"
    )]
    pub sources: Vec<String>,
    /// Training examples per source task (stratified subsample).
    #[arg(long, default_value_t = 1000)]
    pub source_examples: usize,
    /// The low-resource target task.
    #[arg(long, default_value = "vader_tweets")]
    pub target: String,
    /// The target's training split: train_100, train_500 or train.
    #[arg(long, default_value = "train_100")]
    pub target_split: String,
    /// Dev and test examples kept per task.
    #[arg(long, default_value_t = 400)]
    pub max_eval: usize,
    /// Epochs over each source task.
    #[arg(long, default_value_t = 2)]
    pub source_epochs: usize,
    /// Epochs over the target's training examples.
    #[arg(long, default_value_t = 10)]
    pub target_epochs: usize,
    /// Seed of batching, sampling and dropout.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
    /// Burn backend to run on (default: the fastest CPU backend compiled in).
    #[arg(long, default_value_t)]
    pub backend: BackendKind,
}

/// One row of the demo's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Head-only, ST-A or Fusion.
    pub method: String,
    /// Parameters trained.
    pub trained_parameters: usize,
    /// Test scores on the target.
    pub test: Scores,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
}

impl Demo {
    fn spec(&self, method: Method, data: DataSpec, epochs: usize, learning_rate: f64) -> RunSpec {
        RunSpec {
            method,
            tasks: vec![data],
            max_len: 64,
            train: TrainConfig {
                epochs,
                batch_size: 16,
                learning_rate,
                patience: epochs,
                seed: self.seed,
                ..TrainConfig::default()
            },
            ..RunSpec::default()
        }
    }

    /// Trains `spec` into `out/<dir>`, unless that folder already holds the results of this
    /// very run (then they are read back): the demo can be run again cheaply.
    fn run(&self, dir: &str, label: &str, spec: RunSpec) -> anyhow::Result<(Vec<TaskResult>, f64)> {
        let out = self.out.join(dir);
        let done = || -> Option<Vec<TaskResult>> {
            let record: crate::cli::run::RunRecord =
                serde_json::from_slice(&std::fs::read(out.join("run.json")).ok()?).ok()?;
            (record.spec == spec).then_some(())?;
            serde_json::from_slice(&std::fs::read(out.join("results.json")).ok()?).ok()
        };
        if let Some(results) = done() {
            eprintln!("{label}: already trained in {} (reused)", out.display());
            return Ok((results, 0.0));
        }
        if out.exists() {
            std::fs::remove_dir_all(&out).with_context(|| out.display().to_string())?;
        }
        let started = Instant::now();
        let backend = self.backend;
        let results = backend.run(TrainJob {
            spec,
            out,
            resume: false,
            label: label.to_string(),
        })?;
        Ok((results, started.elapsed().as_secs_f64()))
    }

    /// Runs everything; returns the table's rows.
    pub fn run_all(&self) -> anyhow::Result<Vec<Row>> {
        let started = Instant::now();
        let mut adapters = Vec::new();
        for source in &self.sources {
            let data = DataSpec {
                task: source.clone(),
                max_train: Some(self.source_examples),
                max_eval: Some(self.max_eval),
                split_seed: self.seed,
                ..DataSpec::default()
            };
            let spec = self.spec(Method::Adapter, data, self.source_epochs, 1e-3);
            let (results, _) =
                self.run(&format!("st-a/{source}"), &format!("ST-A {source}"), spec)?;
            if let Some(r) = results.first() {
                eprintln!(
                    "ST-A {source}: test accuracy {:.4}",
                    r.test.map_or(f64::NAN, |s| s.accuracy)
                );
            }
            adapters.push(self.out.join("st-a").join(source).join(source));
        }
        let target = DataSpec {
            task: self.target.clone(),
            split: self.target_split.clone(),
            max_eval: Some(self.max_eval),
            split_seed: self.seed,
            ..DataSpec::default()
        };
        let mut rows = Vec::new();
        let mut add = |method: &str, dir: &str, spec: RunSpec| -> anyhow::Result<()> {
            let (results, seconds) = self.run(dir, &format!("{method} {}", self.target), spec)?;
            let result = results.first().context("the run gave no result")?;
            rows.push(Row {
                method: method.to_string(),
                trained_parameters: result.trained_parameters,
                test: result.test.context("the target has no test split")?,
                seconds,
            });
            Ok(())
        };
        let epochs = self.target_epochs;
        add(
            "head only",
            "target/head",
            self.spec(Method::Head, target.clone(), epochs, 1e-3),
        )?;
        add(
            "ST-A",
            "target/st-a",
            self.spec(Method::Adapter, target.clone(), epochs, 1e-3),
        )?;
        adapters.push(self.out.join("target/st-a").join(&self.target));
        let mut fusion = self.spec(Method::Fusion, target, epochs, 5e-4);
        fusion.fuse = adapters;
        add("Fusion", "target/fusion", fusion)?;
        self.report(&rows, started.elapsed().as_secs_f64())?;
        Ok(rows)
    }

    /// The table (stdout and `results.md`), `results.json` and `accuracy.png`.
    fn report(&self, rows: &[Row], seconds: f64) -> anyhow::Result<()> {
        let mut table = format!(
            "Target `{}` ({} training examples), test split; sources: {} ({} examples each)\n\n\
             | method | trained parameters | test accuracy | macro-F1 | MCC | seconds |\n|---|---|---|---|---|---|\n",
            self.target,
            self.target_split.trim_start_matches("train_"),
            self.sources.join(", "),
            self.source_examples
        );
        for row in rows {
            table += &format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.0} |\n",
                row.method,
                row.trained_parameters,
                row.test.accuracy,
                row.test.macro_f1,
                row.test.mcc,
                row.seconds
            );
        }
        table += &format!("\ntotal time {:.0} s\n", seconds);
        println!("{table}");
        write_atomic(&self.out.join("results.md"), table.as_bytes())?;
        write_atomic(
            &self.out.join("results.json"),
            &serde_json::to_vec_pretty(rows)?,
        )?;
        let methods: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
        let path = self.out.join("accuracy.png");
        let drawn = crate::cli::plot::bars(
            &path,
            &format!("{}: test accuracy", self.target),
            &methods,
            &rows.iter().map(|r| r.test.accuracy).collect::<Vec<_>>(),
        );
        crate::cli::plot::best_effort(&path, drawn);
        eprintln!(
            "wrote {} (table), accuracy.png, and per run loss.png, dev.png (fusion.png for the fusion)",
            self.out.join("results.md").display()
        );
        Ok(())
    }
}
