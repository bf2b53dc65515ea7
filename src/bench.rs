//! `sinew bench`: the standard works — an adapter training step, inference, a fusion training
//! step — timed on this machine and backend, printed as one JSON object. The works, their model
//! and their inputs are the ones `benches/adapters.rs` (criterion) times, built here once for both.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use serde::Serialize;

use crate::adapter::{HeadConfig, MethodConfig};
use crate::backbone::TextTokenizer;
use crate::backbone::{assets, EncoderInput, FusedAutodiff, FusedOps, Pretrained, Start};
use crate::backend::BackendJob;
use crate::fusion::{AdapterModel, FusionConfig};
use crate::trainer::train::{set_regime, Regime, TaskData};

/// A work `sinew bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Work {
    /// One optimizer step of an adapter and its head (forward, cross-entropy, backward, AdamW).
    TrainStep,
    /// A forward pass through the active adapter, every position's hidden states read back.
    Inference,
    /// One optimizer step of a dynamic AdapterFusion of `--fuse` adapters and its head.
    FuseStep,
}

/// `batch` different texts of prose, each at least `tokens` tokens long (cut there): the inputs
/// of every standard work.
pub fn inputs<B: Backend>(
    tokenizer: &TextTokenizer,
    batch: usize,
    tokens: usize,
) -> EncoderInput<B> {
    let texts: Vec<String> = (0..batch)
        .map(|i| {
            (0..20)
                .map(|j| format!("Row {i} clause {j}: adapters keep the pretrained encoder frozen while tasks share it."))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let encoded = tokenizer.encode(&texts).expect("prose tokenizes");
    assert!(
        encoded.input_ids.iter().all(|r| r.len() == tokens),
        "every text reaches {tokens} tokens"
    );
    encoded.to_input(&B::Device::default())
}

/// A two-label classification head.
pub fn two_labels() -> HeadConfig {
    HeadConfig::classification(&["a".into(), "b".into()])
}

/// The model at `dir` (truncating at `tokens`) with `adapters` adapters of `method`, named
/// `a0`, `a1`, …, each with a two-label head.
pub fn model<B: FusedOps>(
    dir: &std::path::Path,
    method: &MethodConfig,
    adapters: usize,
    tokens: usize,
) -> anyhow::Result<(AdapterModel<B>, TextTokenizer)> {
    let device = B::Device::default();
    let Pretrained {
        config,
        model,
        tokenizer,
    } = Pretrained::<B>::load(dir, Some(tokens), &device)?;
    let mut model = AdapterModel::new(model, config);
    for i in 0..adapters {
        let name = format!("a{i}");
        model.add_adapter(&name, method.clone(), &device)?;
        model.add_head(&name, two_labels(), &device)?;
    }
    Ok((model, tokenizer))
}

/// A task with no examples: what [`set_regime`] needs to know of a task (its name).
pub fn task(name: &str) -> TaskData {
    TaskData {
        name: name.into(),
        train: Vec::new(),
        dev: Vec::new(),
        classes: 2,
    }
}

/// Adds a dynamic fusion of every adapter, with a head, and makes it what trains.
pub fn fuse_all<B: FusedAutodiff>(model: &mut AdapterModel<B>) -> anyhow::Result<()> {
    let device = B::Device::default();
    let names: Vec<String> = model.adapter_names().to_vec();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fusion = model.add_fusion(&names, FusionConfig::dynamic(), &device)?;
    model.add_head(&fusion, two_labels(), &device)?;
    let regime = Regime::Fusion {
        name: fusion.clone(),
        unfreeze_adapters: false,
    };
    set_regime(model, &regime, &[task(&fusion)])?;
    Ok(())
}

/// One optimizer step from `start` (alternating labels) as the trainer takes it: the logits
/// only, cross-entropy (plus the fusion regularisation), backward, AdamW.
pub fn step<B: FusedAutodiff, O: Optimizer<AdapterModel<B>, B>>(
    model: AdapterModel<B>,
    optimizer: &mut O,
    start: &Start<'_, B>,
) -> (AdapterModel<B>, f32) {
    let device = model.backbone.devices()[0].clone();
    let [batch, _] = start.dims();
    let targets = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    let logits = model
        .logits_from(start.clone())
        .expect("the active setup runs")
        .logits
        .expect("a text head");
    let mut loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    if let Some(reg) = model.fusion_regularization_loss() {
        loss = loss + reg;
    }
    // Reading the loss back makes lazy backends finish this step's forward; the backward and
    // the update are finished by the next step, whose forward reads the updated weights.
    let value = loss.clone().into_scalar().elem::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(1e-4, model, grads), value)
}

/// What `sinew bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The work timed.
    pub work: Work,
    /// The backend (`--backend`), filled in by the caller.
    pub backend: String,
    /// The adapter method.
    pub adapter: String,
    /// Adapters fused (`fuse-step`; 1 otherwise).
    pub fuse: usize,
    /// Texts per call.
    pub batch: usize,
    /// Tokens per text.
    pub seq: usize,
    /// Median seconds per call.
    pub median_s: f64,
    /// Fastest call.
    pub min_s: f64,
    /// Slowest call.
    pub max_s: f64,
    /// Calls timed (after one untimed warm-up call).
    pub reps: usize,
    /// Minor page faults per call (median; Linux), a sign of memory handed back and refetched.
    pub minor_faults: Option<u64>,
    /// Hardware threads of this machine.
    pub threads: usize,
}

/// `sinew bench`'s settings.
#[derive(Debug, Clone)]
pub struct BenchJob {
    /// What to time.
    pub work: Work,
    /// An adapter preset (`seq_bn`, `lora`, …) or a JSON config file.
    pub adapter: String,
    /// Texts per call.
    pub batch: usize,
    /// Tokens per text.
    pub seq: usize,
    /// Adapters fused (`fuse-step`).
    pub fuse: usize,
    /// Calls timed.
    pub reps: usize,
    /// HF model folder (default: all-MiniLM-L6-v2, fetched if missing).
    pub model: Option<PathBuf>,
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(7)?.parse().ok()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

impl BenchJob {
    /// Times `call` `reps` times after one untimed call, with a progress bar on stderr.
    fn time(&self, mut call: impl FnMut()) -> BenchResult {
        call();
        let bar = indicatif::ProgressBar::new(self.reps as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} calls, {elapsed}",
            )
            .expect("a valid template"),
        );
        bar.set_message(format!("{:?}", self.work));
        let mut seconds = Vec::with_capacity(self.reps);
        let mut faults = Vec::with_capacity(self.reps);
        for _ in 0..self.reps {
            let before = minor_faults();
            let start = Instant::now();
            call();
            seconds.push(start.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (before, minor_faults()) {
                faults.push(b - a);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        seconds.sort_by(f64::total_cmp);
        faults.sort_unstable();
        BenchResult {
            work: self.work,
            backend: String::new(),
            adapter: self.adapter.clone(),
            fuse: if self.work == Work::FuseStep {
                self.fuse
            } else {
                1
            },
            batch: self.batch,
            seq: self.seq,
            median_s: median(&seconds),
            min_s: seconds[0],
            max_s: seconds[seconds.len() - 1],
            reps: self.reps,
            minor_faults: (faults.len() == self.reps).then(|| faults[faults.len() / 2]),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn train<B: FusedAutodiff>(
        &self,
        dir: &std::path::Path,
        method: &MethodConfig,
    ) -> anyhow::Result<BenchResult> {
        let fused = self.work == Work::FuseStep;
        let adapters = if fused { self.fuse } else { 1 };
        let (mut model, tokenizer) = model::<B>(dir, method, adapters, self.seq)?;
        if fused {
            fuse_all(&mut model)?;
        } else {
            set_regime(&mut model, &Regime::Adapters, &[task("a0")])?;
            model.set_active(Some("a0"))?;
        }
        let input = inputs::<B>(&tokenizer, self.batch, self.seq);
        let start = Start::Tokens(&input);
        let mut optimizer = AdamWConfig::new().init::<B, AdapterModel<B>>();
        let mut model = Some(model);
        Ok(self.time(|| {
            let (next, _) = step(model.take().expect("a model"), &mut optimizer, &start);
            model = Some(next);
        }))
    }
}

impl BackendJob for BenchJob {
    type Output = BenchResult;

    fn run<B: FusedOps>(self, _device: &B::Device) -> anyhow::Result<BenchResult> {
        anyhow::ensure!(self.reps > 0, "--reps must be at least 1");
        anyhow::ensure!(
            self.batch > 0 && self.seq > 1,
            "--batch must be at least 1 and --seq at least 2"
        );
        anyhow::ensure!(
            self.work != Work::FuseStep || self.fuse >= 2,
            "--fuse must be at least 2 for fuse-step"
        );
        let dir = match &self.model {
            Some(dir) => dir.clone(),
            None => assets::ensure_default_model().context("fetching the default model")?,
        };
        let config = crate::backbone::BertConfig::from_file(&dir.join("config.json"))?;
        let method = MethodConfig::from_name_or_file(&self.adapter, &config)?;
        match self.work {
            Work::Inference => {
                let (mut model, tokenizer) = model::<B>(&dir, &method, 1, self.seq)?;
                model.set_active(Some("a0"))?;
                let input = inputs::<B>(&tokenizer, self.batch, self.seq);
                Ok(self.time(|| {
                    let out = model.forward(&input).expect("the adapter runs");
                    out.encoded.last_hidden_state.into_data();
                }))
            }
            Work::TrainStep | Work::FuseStep => self.train::<Autodiff<B>>(&dir, &method),
        }
    }
}
