//! `sinew bench`: the standard works ([`sinew::works`]) timed on this machine and backend, printed
//! as one JSON object.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::optim::AdamWConfig;
use serde::Serialize;

use sinew::adapter::MethodConfig;
use sinew::backbone::{FusedAutodiff, FusedOps, Start};
use sinew::backend::BackendJob;
use sinew::data::assets;
use sinew::fusion::AdapterModel;
use sinew::trainer::train::{set_regime, Regime};
use sinew::works::{fuse_all, inputs, model, step, task};

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
        let config = sinew::backbone::BertConfig::from_file(&dir.join("config.json"))?;
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
