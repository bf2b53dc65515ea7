//! AdapterFusion's stage two with the library API: load trained adapters (from
//! `examples/train_adapter.rs` or `sinew train`), learn a fusion over them with a new head on a
//! low-resource target task, score it on the test split, and save it in AdapterHub's layout.
//!
//! `cargo run --release --example fuse_adapters --features wgpu -- --adapter adapters/trec
//! --adapter adapters/rt_polarity --target vader_tweets` (wgpu by default; add `flex` to the
//! features and `--backend flex` for the CPU).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Parser;
use sinew::adapter::HeadConfig;
use sinew::backbone::Pretrained;
use sinew::backend::{BackendJob, BackendKind};
use sinew::data::assets;
use sinew::data::splits::{prepare, read_split, task_dir};
use sinew::data::tasks::task;
use sinew::fusion::{AdapterModel, FusionConfig};
use sinew::trainer::batching::tokenize;
use sinew::trainer::monitor::Monitor;
use sinew::trainer::train::{evaluate, train, Regime, TaskData, TrainConfig};
use sinew_backbone::FusedOps;

#[derive(Parser, Clone)]
struct Args {
    /// Backend to run on.
    #[arg(long, default_value_t = BackendKind::Wgpu)]
    backend: BackendKind,
    /// Trained adapter folders to fuse (two or more).
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// The target task.
    #[arg(long, default_value = "vader_tweets")]
    target: String,
    /// The target's training split (`train_100`: 100 examples).
    #[arg(long, default_value = "train_100")]
    split: String,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Where the fusion folder goes.
    #[arg(long, default_value = "fusions")]
    out: PathBuf,
}

impl BackendJob for Args {
    type Output = ();

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<()> {
        let manifest = prepare(task(&self.target)?, 13)?;
        let dir = task_dir(&self.target);
        let pretrained =
            Pretrained::<Autodiff<B>>::load(&assets::ensure_default_model()?, Some(64), device)?;
        let tokens = |split| -> anyhow::Result<_> {
            Ok(tokenize(
                &pretrained.tokenizer,
                &read_split(&dir, split)?,
                &manifest.labels,
            )?)
        };
        let data = TaskData {
            name: self.target.clone(),
            train: tokens(&self.split)?,
            dev: tokens("dev")?,
            classes: manifest.labels.len(),
        };
        let test = tokens("test")?;

        // The frozen adapters, a fusion over them (named `a,b,…` as AdapterHub names it) and a
        // head for the target.
        let mut model = AdapterModel::new(pretrained.model, pretrained.config);
        let mut names = Vec::new();
        for folder in &self.adapters {
            names.push(model.load_adapter(folder, device)?);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let fusion = model.add_fusion(&names, FusionConfig::dynamic(), device)?;
        model.add_head(
            &fusion.to_string(),
            HeadConfig::classification(&manifest.labels),
            device,
        )?;

        // Stage two: only the fusion layers and the head train.
        let config = TrainConfig {
            epochs: self.epochs,
            batch_size: 16,
            learning_rate: 5e-4,
            patience: self.epochs,
            ..TrainConfig::default()
        };
        let regime = Regime::Fusion {
            fusion: fusion.clone(),
            unfreeze_adapters: false,
        };
        let mut monitor = Monitor::new("fusion", None)?;
        train(&mut model, &regime, &[data], &config, None, &mut monitor)?;
        monitor.finish();

        let scores = evaluate(&model.valid(), &test, manifest.labels.len(), 64, device)?;
        println!(
            "Fuse({fusion}) on {}: test accuracy {:.4}, macro-F1 {:.4}",
            self.target, scores.accuracy, scores.macro_f1
        );
        let folder = self.out.join(fusion.to_string());
        model.save_fusion(&folder, &fusion, true)?;
        println!("saved {}", folder.display());
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.backend.run(args.clone())
}
