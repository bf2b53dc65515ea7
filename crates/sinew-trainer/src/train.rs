//! The training loop, one for every regime: single-task adapters (ST-A), joint multi-task
//! adapters (MT-A, batches drawn per task proportionally or with a temperature), AdapterFusion's
//! stage two, and the head-only and full fine-tuning baselines. AdamW, linear warmup then linear
//! decay, gradient-norm clipping, dev metrics after every epoch, early stopping, best epoch kept,
//! checkpoints that resume to the same result. Our own loop: Burn's `Learner` would rewrite the
//! whole frozen backbone at every checkpoint.
//!
//! Everything random is a function of the seed and the position in the run — the batch order of
//! an epoch of `(seed, epoch)`, dropout of `(seed, step)` (the backend is reseeded before every
//! step) — so a checkpoint that records the step resumes exactly where the run was. Burn's
//! backend random state is global to the process: two runs training at once in one process draw
//! from it in turn and are not reproducible.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::ElementConversion;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedAutodiff;
use sinew_backbone::FusedOps;
use sinew_backbone::Start;
use sinew_fusion::{AdapterModel, FusionError, FusionId, Setup};

use crate::batching::{collate, epoch_batches, Tokens};
use crate::cache::ActivationCache;
use crate::checkpoint::{
    parts_to_bytes, restore_from_bytes, Checkpoint, CheckpointError, PartsError, Progress,
};
use crate::clip::clip_global_norm;
use crate::metrics::{scores, Scores};

/// Hyperparameters of a run (the keys of a run file's `[train]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set (at most).
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Fraction of the steps spent warming up linearly from 0.
    pub warmup: f64,
    /// Largest L2 norm of all trained parameters' gradients together: above it, every gradient
    /// is scaled down alike (PyTorch's `clip_grad_norm_`).
    pub clip_norm: f32,
    /// Epochs without a better dev macro-F1 before stopping.
    pub patience: usize,
    /// Seed of the batch order, the task sampling and dropout.
    pub seed: u64,
    /// Multi-task sampling: task `i` is drawn with probability ∝ nᵢ^(1/T) (1: proportional to
    /// its size; large: uniform over tasks).
    pub temperature: f64,
    /// Also checkpoint every this many steps (0: at the end of each epoch only).
    pub checkpoint_every: usize,
    /// Stop (with a checkpoint) after this many steps of the run, to resume later.
    pub stop_after: Option<usize>,
    /// The frozen-prefix activation cache, with this many MiB of memory (`None`: off; 0: all
    /// of it in the spill file). When the regime leaves the lowest layers as pretrained
    /// (adapters that leave them out, a head-only run), their outputs are computed once per
    /// example — without dropout — and reused every epoch; beyond the budget they go to a
    /// temporary file. See [`crate::cache`].
    pub activation_cache_mib: Option<usize>,
}

impl TrainConfig {
    /// Checks every hyperparameter's range: the first one outside it is the error.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |key, value: &dyn std::fmt::Display, expected| {
            Err(TrainError::Config {
                key,
                value: value.to_string(),
                expected,
            })
        };
        if self.epochs == 0 {
            return bad("epochs", &self.epochs, "at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", &self.batch_size, "at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate", &self.learning_rate, "a positive number");
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return bad("warmup", &self.warmup, "a fraction in [0, 1]");
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad("clip_norm", &self.clip_norm, "a positive number");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", &self.temperature, "a positive number");
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            warmup: 0.1,
            clip_norm: 1.0,
            patience: 2,
            seed: 13,
            temperature: 1.0,
            checkpoint_every: 0,
            stop_after: None,
            activation_cache_mib: None,
        }
    }
}

/// The learning rate at `step` of `total`: linear warmup, then linear decay to 0.
pub fn learning_rate(config: &TrainConfig, step: usize, total: usize) -> f64 {
    let warmup = (config.warmup * total as f64).ceil() as usize;
    let peak = config.learning_rate;
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let left = total.saturating_sub(warmup).max(1);
        peak * (total.saturating_sub(step)) as f64 / left as f64
    }
}

/// What trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// The adapter and head named like each task: ST-A for one task, MT-A for several (each
    /// example goes through its own task's adapter).
    Adapters,
    /// A fusion and its head on the one task: AdapterFusion's stage two; the fused adapters
    /// train too with `unfreeze_adapters`.
    Fusion {
        /// The fusion (written as AdapterHub names it, `a,b,c`).
        #[serde(rename = "name")]
        fusion: FusionId,
        /// Whether the fused adapters train too.
        unfreeze_adapters: bool,
    },
    /// The head named like the task on the bare backbone; with `backbone`, the backbone too
    /// (full fine-tuning).
    Head {
        /// Whether the backbone trains too.
        backbone: bool,
    },
}

/// One task's examples.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The adapter and head it trains (a fusion run trains the fusion's head instead).
    pub name: String,
    /// Training examples.
    pub train: Vec<Tokens>,
    /// Examples for the dev metric.
    pub dev: Vec<Tokens>,
    /// Number of labels.
    pub classes: usize,
}

/// What happened at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLog {
    /// Optimizer steps so far.
    pub step: usize,
    /// Steps of the whole run.
    pub total: usize,
    /// The epoch (from 1).
    pub epoch: usize,
    /// The task the batch came from.
    pub task: String,
    /// Examples in the batch.
    pub examples: usize,
    /// The batch's loss (with the fusion regularisation, if any).
    pub loss: f32,
    /// The learning rate used.
    pub learning_rate: f64,
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// The epoch (from 1).
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Dev scores after the epoch (the mean over tasks for several).
    pub dev: Scores,
    /// Dev scores per task, in the order given.
    pub dev_per_task: Vec<Scores>,
}

/// Watches a run (progress bar, logs). Both methods do nothing by default.
pub trait Observer {
    /// After every optimizer step.
    fn step(&mut self, _log: &StepLog) {}
    /// After every epoch's evaluation.
    fn epoch(&mut self, _log: &EpochLog) {}
}

impl Observer for () {}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Every epoch evaluated, this run's and (when resumed) the earlier ones.
    pub epochs: Vec<EpochLog>,
    /// Every step's loss of this process (a resumed run starts after its checkpoint).
    pub losses: Vec<f32>,
    /// Whether the run stopped at `stop_after` before its end (resume it to finish).
    pub interrupted: bool,
    /// The activation cache, when one was used.
    pub cache: Option<CacheUse>,
}

/// What the activation cache held at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUse {
    /// The layer its states enter (the layers below ran once per example).
    pub layer: usize,
    /// Examples held in memory.
    pub in_memory: usize,
    /// Examples in the spill file.
    pub on_disk: usize,
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused (unknown adapter, no head, …).
    #[error(transparent)]
    Model(#[from] FusionError),
    /// Trained parts could not be kept or put back.
    #[error(transparent)]
    Parts(#[from] PartsError),
    /// A regime that trains on one task, given several.
    #[error("{regime} trains on one task, {given} were given")]
    OneTask {
        /// The regime.
        regime: String,
        /// Tasks given.
        given: usize,
    },
    /// A task (or the active setup) whose head does not predict one label per text.
    #[error("{0} has no text head")]
    NoTextHead(String),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The activation cache's spill file could not be written or read.
    #[error("activation cache spill file: {0}")]
    Cache(#[from] std::io::Error),
    /// A hyperparameter outside its range (`[train]` key, value, what it must be).
    #[error("train.{key} = {value}: {expected}")]
    Config {
        /// The key in a run file's `[train]` table.
        key: &'static str,
        /// The value given.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },
    /// The loss stopped being a number; the weights are the last good ones.
    #[error("the loss is {value} at step {step}; training stopped (the last good weights and checkpoint are kept)")]
    NonFinite {
        /// The step.
        step: usize,
        /// The loss.
        value: f32,
    },
}

/// Predicted classes of `tokens` (in batches of `batch_size`) from the model's active setup (or
/// bare head), in eval mode.
pub fn predict<B: FusedOps>(
    model: &AdapterModel<B>,
    tokens: &[Tokens],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<usize>, TrainError> {
    let mut out = Vec::with_capacity(tokens.len());
    let indices: Vec<usize> = (0..tokens.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (batch, _) = collate(tokens, chunk);
        let logits = model
            .logits(&batch.to_input::<B>(device))?
            .logits
            .ok_or_else(|| TrainError::NoTextHead("the active setup".into()))?;
        let best = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("ints");
        out.extend(best.into_iter().map(|c| c as usize));
    }
    Ok(out)
}

/// Scores of the model's predictions on `tokens` against their labels.
pub fn evaluate<B: FusedOps>(
    model: &AdapterModel<B>,
    tokens: &[Tokens],
    classes: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Scores, TrainError> {
    let predicted = predict(model, tokens, batch_size, device)?;
    let gold: Vec<usize> = tokens.iter().map(|t| t.label).collect();
    Ok(scores(&gold, &predicted, classes))
}

/// Makes `regime` the model's training state for `tasks`: what trains requires gradients,
/// everything else is frozen.
pub fn set_regime<B: FusedAutodiff>(
    model: &mut AdapterModel<B>,
    regime: &Regime,
    tasks: &[TaskData],
) -> Result<(), TrainError> {
    let one = || match tasks {
        [task] => Ok(task.name.as_str()),
        _ => Err(TrainError::OneTask {
            regime: format!("{regime:?}"),
            given: tasks.len(),
        }),
    };
    match regime {
        Regime::Adapters => {
            let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            model.train_adapters(&names)?;
        }
        Regime::Fusion {
            fusion,
            unfreeze_adapters,
        } => {
            one()?;
            model.train_fusion(fusion, *unfreeze_adapters)?;
        }
        Regime::Head { backbone } => model.train_head(one()?, *backbone)?,
    }
    Ok(())
}

/// Makes the model predict for `task` under `regime` (the adapter, the fusion or the bare head).
pub fn activate<B: FusedOps>(
    model: &mut AdapterModel<B>,
    regime: &Regime,
    task: &str,
) -> Result<(), FusionError> {
    match regime {
        Regime::Adapters => model.activate(Some(Setup::adapter(task))),
        Regime::Fusion { fusion, .. } => model.activate(Some(fusion.setup())),
        Regime::Head { .. } => model.use_bare_head(Some(task)),
    }
}

/// The activation cache of a run, when `config` asks for one and the regime leaves layers as
/// pretrained for every task.
fn activation_cache<B: FusedAutodiff>(
    model: &mut AdapterModel<B>,
    regime: &Regime,
    tasks: &[TaskData],
    config: &TrainConfig,
) -> Result<Option<ActivationCache>, FusionError> {
    let Some(mib) = config.activation_cache_mib else {
        return Ok(None);
    };
    let mut layer = model.backbone().num_layers();
    for task in tasks {
        activate(model, regime, &task.name)?;
        layer = layer.min(model.frozen_prefix());
    }
    if layer == 0 {
        tracing::info!("activation cache: not used, the regime changes layer 0");
        return Ok(None);
    }
    tracing::info!("activation cache: layers below {layer} run once per example");
    Ok(Some(ActivationCache::new(layer, mib << 20)))
}

/// The batches of one epoch as `(task, example indices)`: each task's own seeded length-bucketed
/// batches, interleaved by drawing a task with probability ∝ nᵢ^(1/T) among those with batches
/// left (a task that runs out is no longer drawn), all of it a function of `(seed, epoch)`.
pub(crate) fn epoch_plan(
    tasks: &[TaskData],
    config: &TrainConfig,
    epoch: u64,
) -> Vec<(usize, Vec<usize>)> {
    let mut queues: Vec<std::vec::IntoIter<Vec<usize>>> = tasks
        .iter()
        .map(|t| {
            let lengths: Vec<usize> = t.train.iter().map(|x| x.ids.len()).collect();
            epoch_batches(&lengths, config.batch_size, config.seed, epoch).into_iter()
        })
        .collect();
    let weights: Vec<f64> = tasks
        .iter()
        .map(|t| (t.train.len() as f64).powf(1.0 / config.temperature.max(1e-6)))
        .collect();
    let mut left: Vec<usize> = queues.iter().map(|q| q.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ epoch.wrapping_mul(0x9e37_79b9));
    let mut plan = Vec::with_capacity(left.iter().sum());
    while left.iter().any(|&n| n > 0) {
        let total: f64 = (0..tasks.len())
            .filter(|&i| left[i] > 0)
            .map(|i| weights[i])
            .sum();
        let mut pick = rng.random::<f64>() * total;
        let mut task = (0..tasks.len()).rev().find(|&i| left[i] > 0).expect("some");
        for i in (0..tasks.len()).filter(|&i| left[i] > 0) {
            if pick < weights[i] {
                task = i;
                break;
            }
            pick -= weights[i];
        }
        left[task] -= 1;
        plan.push((task, queues[task].next().expect("counted")));
    }
    plan
}

/// What a checkpoint must agree with to resume: the regime, the tasks and their sizes, and the
/// hyperparameters that shape the run.
fn run_description(regime: &Regime, tasks: &[TaskData], config: &TrainConfig) -> String {
    let sizes: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}:{}/{}", t.name, t.train.len(), t.dev.len()))
        .collect();
    let config = TrainConfig {
        checkpoint_every: 0,
        stop_after: None,
        ..config.clone()
    };
    format!(
        "{} on {} with {}",
        serde_json::to_string(regime).expect("serialisable"),
        sizes.join(","),
        serde_json::to_string(&config).expect("serialisable")
    )
}

fn new_optimizer<B: FusedAutodiff>(config: &TrainConfig) -> impl Optimizer<AdapterModel<B>, B> {
    AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .init::<B, AdapterModel<B>>()
}

/// Trains `model` under `regime` on `tasks`. With `checkpoint`, continues from it when it
/// exists (written by the same run), and writes it at the end of each epoch, every
/// `checkpoint_every` steps and at `stop_after`. On return the model holds the best epoch's
/// weights, with its first task active.
pub fn train<B: FusedAutodiff>(
    model: &mut AdapterModel<B>,
    regime: &Regime,
    tasks: &[TaskData],
    config: &TrainConfig,
    checkpoint: Option<&Checkpoint>,
    observer: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    config.validate()?;
    set_regime(model, regime, tasks)?;
    let mut run = Run::start(model, regime, tasks, config, checkpoint)?;
    let interrupted = run.epochs(model, observer)?;
    run.finish(model, interrupted)
}

/// A run in progress: its place in the schedule, its optimizer and the best weights so far.
struct Run<'a, B: FusedAutodiff, O> {
    regime: &'a Regime,
    tasks: &'a [TaskData],
    config: &'a TrainConfig,
    checkpoint: Option<&'a Checkpoint>,
    /// What a checkpoint must agree with ([`run_description`]).
    description: String,
    device: B::Device,
    /// Steps of the whole run.
    total: usize,
    optimizer: O,
    progress: Progress,
    /// The trained parts of the best epoch so far.
    best: Option<Vec<u8>>,
    cache: Option<ActivationCache>,
    /// Every step's loss of this process.
    losses: Vec<f32>,
}

impl<'a, B: FusedAutodiff> Run<'a, B, ()> {
    /// A fresh run, or the one `checkpoint` holds when it exists.
    fn start(
        model: &mut AdapterModel<B>,
        regime: &'a Regime,
        tasks: &'a [TaskData],
        config: &'a TrainConfig,
        checkpoint: Option<&'a Checkpoint>,
    ) -> Result<Run<'a, B, impl Optimizer<AdapterModel<B>, B>>, TrainError> {
        let device = model
            .backbone()
            .devices()
            .into_iter()
            .next()
            .expect("a device");
        let per_epoch: usize = tasks
            .iter()
            .map(|t| t.train.len().div_ceil(config.batch_size.max(1)))
            .sum();
        let description = run_description(regime, tasks, config);
        let mut optimizer = new_optimizer::<B>(config);
        let mut progress = Progress::default();
        let mut best = None;
        if let Some(saved) = checkpoint
            .map(|c| c.load(&description, model, new_optimizer::<B>(config)))
            .transpose()?
            .flatten()
        {
            (progress, optimizer, best) = saved;
            // The fusion temperature is a function of the step.
            for _ in 0..progress.step {
                model.anneal_fusion_temperatures();
            }
        }
        let cache = activation_cache(model, regime, tasks, config)?;
        Ok(Run {
            regime,
            tasks,
            config,
            checkpoint,
            description,
            device,
            total: per_epoch * config.epochs,
            optimizer,
            progress,
            best,
            cache,
            losses: Vec::new(),
        })
    }
}

impl<B: FusedAutodiff, O: Optimizer<AdapterModel<B>, B>> Run<'_, B, O> {
    /// Runs the epochs left; `true` when it stopped at `stop_after` before the end.
    fn epochs(
        &mut self,
        model: &mut AdapterModel<B>,
        observer: &mut dyn Observer,
    ) -> Result<bool, TrainError> {
        while self.progress.epoch < self.config.epochs && !self.progress.stopped_early {
            let plan = epoch_plan(self.tasks, self.config, self.progress.epoch as u64);
            for (task, indices) in plan.iter().skip(self.progress.step_in_epoch) {
                self.step(model, *task, indices, observer)?;
                if self.stop_within_epoch(model, plan.len())? {
                    return Ok(true);
                }
            }
            self.end_epoch(model, plan.len(), observer)?;
            let stop = self
                .config
                .stop_after
                .is_some_and(|s| self.progress.step >= s);
            if stop && self.progress.epoch < self.config.epochs {
                return Ok(!self.progress.stopped_early);
            }
        }
        Ok(false)
    }

    /// One optimizer step on the batch `indices` of task `task`.
    fn step(
        &mut self,
        model: &mut AdapterModel<B>,
        task: usize,
        indices: &[usize],
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let data = &self.tasks[task];
        B::seed(
            &self.device,
            self.config
                .seed
                .wrapping_mul(31)
                .wrapping_add(self.progress.step as u64),
        );
        let loss = self.batch_loss(model, task, indices)?;
        let value = loss.clone().into_scalar().elem::<f32>();
        if !value.is_finite() {
            if let Some(good) = self.best.take() {
                restore_from_bytes(model, good)?;
            }
            return Err(TrainError::NonFinite {
                step: self.progress.step + 1,
                value,
            });
        }
        let lr = learning_rate(self.config, self.progress.step, self.total);
        let mut grads = GradientsParams::from_grads(loss.backward(), model);
        clip_global_norm(model, &mut grads, self.config.clip_norm);
        *model = self.optimizer.step(lr, model.clone(), grads);
        model.anneal_fusion_temperatures();
        self.progress.step += 1;
        self.progress.step_in_epoch += 1;
        self.progress.epoch_loss_sum += value as f64;
        self.losses.push(value);
        observer.step(&StepLog {
            step: self.progress.step,
            total: self.total,
            epoch: self.progress.epoch + 1,
            task: data.name.clone(),
            examples: indices.len(),
            loss: value,
            learning_rate: lr,
        });
        Ok(())
    }

    /// The loss of one batch of task `task`: from the activation cache when there is one, routed
    /// to each task's adapter under MT-A; with the fusion regularisation.
    fn batch_loss(
        &mut self,
        model: &mut AdapterModel<B>,
        task: usize,
        indices: &[usize],
    ) -> Result<Tensor<B, 1>, TrainError> {
        let data = &self.tasks[task];
        let device = &self.device;
        let (batch, labels) = collate(&data.train, indices);
        let out = match (&mut self.cache, self.regime) {
            (Some(cache), _) => {
                let (hidden, keep) = cache.start(model, task, indices, &batch, device)?;
                activate(model, self.regime, &data.name)?;
                model.logits_from(Start::Hidden {
                    layer: cache.layer(),
                    hidden,
                    keep,
                })?
            }
            (None, Regime::Adapters) => model.logits_routed(
                &batch.to_input::<B>(device),
                &vec![data.name.as_str(); indices.len()],
            )?,
            (None, _) => model.logits(&batch.to_input::<B>(device))?,
        };
        let logits = out
            .logits
            .ok_or_else(|| TrainError::NoTextHead(format!("task `{}`", data.name)))?;
        let labels = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [labels.len()],
            ),
            device,
        );
        let mut loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, labels);
        if let Some(reg) = model.fusion_regularization_loss() {
            loss = loss + reg;
        }
        Ok(loss)
    }

    /// Checkpoints at `checkpoint_every` and `stop_after` inside an epoch of `steps` steps (the
    /// epoch's end checkpoints anyway); `true` when the run stops here.
    fn stop_within_epoch(
        &mut self,
        model: &AdapterModel<B>,
        steps: usize,
    ) -> Result<bool, TrainError> {
        let step = self.progress.step;
        let stop = self.config.stop_after == Some(step);
        let every =
            self.config.checkpoint_every > 0 && step.is_multiple_of(self.config.checkpoint_every);
        let within = self.progress.step_in_epoch < steps;
        if (stop || every) && within {
            self.save(model)?;
        }
        Ok(stop && within)
    }

    /// Evaluates every task with its own adapter/head in eval mode, keeps the best weights,
    /// decides on early stopping and checkpoints.
    fn end_epoch(
        &mut self,
        model: &AdapterModel<B>,
        steps: usize,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let mut valid = model.valid();
        let mut per_task = Vec::new();
        for data in self.tasks {
            activate(&mut valid, self.regime, &data.name)?;
            per_task.push(evaluate(
                &valid,
                &data.dev,
                data.classes,
                self.config.batch_size,
                &self.device,
            )?);
        }
        let progress = &mut self.progress;
        let epoch = EpochLog {
            epoch: progress.epoch + 1,
            step: progress.step,
            train_loss: progress.epoch_loss_sum / steps.max(1) as f64,
            dev: Scores::mean(&per_task),
            dev_per_task: per_task,
        };
        observer.epoch(&epoch);
        if progress.best_f1.is_none_or(|f1| epoch.dev.macro_f1 > f1) {
            progress.best_f1 = Some(epoch.dev.macro_f1);
            progress.since_best = 0;
            self.best = Some(parts_to_bytes(model)?);
        } else {
            progress.since_best += 1;
            progress.stopped_early = progress.since_best >= self.config.patience;
        }
        progress.epochs.push(epoch);
        progress.epoch += 1;
        progress.step_in_epoch = 0;
        progress.epoch_loss_sum = 0.0;
        self.save(model)
    }

    fn save(&self, model: &AdapterModel<B>) -> Result<(), TrainError> {
        if let Some(store) = self.checkpoint {
            store.save(
                &self.description,
                model,
                &self.optimizer,
                &self.progress,
                self.best.as_deref(),
            )?;
        }
        Ok(())
    }

    /// Puts the best epoch's weights back and activates the first task.
    fn finish(self, model: &mut AdapterModel<B>, interrupted: bool) -> Result<Outcome, TrainError> {
        if let Some(good) = self.best {
            restore_from_bytes(model, good)?;
        }
        if let Some(task) = self.tasks.first() {
            activate(model, self.regime, &task.name)?;
        }
        Ok(Outcome {
            epochs: self.progress.epochs,
            losses: self.losses,
            interrupted,
            cache: self.cache.map(|c| {
                let (in_memory, on_disk) = c.counts();
                CacheUse {
                    layer: c.layer(),
                    in_memory,
                    on_disk,
                }
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_linearly() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup: 0.2,
            ..TrainConfig::default()
        };
        let lr: Vec<f64> = (0..10).map(|s| learning_rate(&config, s, 10)).collect();
        // Two warmup steps (0.5, 1.0), then 8/8 … 1/8 of the peak.
        let want = [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (got, want) in lr.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lr:?}");
        }
    }

    fn task(name: &str, n: usize) -> TaskData {
        TaskData {
            name: name.into(),
            train: (0..n)
                .map(|i| Tokens {
                    ids: vec![1; 1 + i % 7],
                    types: vec![0; 1 + i % 7],
                    label: 0,
                })
                .collect(),
            dev: Vec::new(),
            classes: 1,
        }
    }

    /// Every batch of every task once per epoch; while both tasks have batches left the draws
    /// follow the weights: with T = 1 the task 9× larger takes ~90% of the first 16 draws, with
    /// a large T ~50% (means over 20 epochs' plans).
    #[test]
    fn the_plan_samples_tasks_by_size_and_temperature() {
        let tasks = [task("big", 900), task("small", 100)];
        let share = |temperature: f64| {
            let config = TrainConfig {
                batch_size: 10,
                temperature,
                ..TrainConfig::default()
            };
            let mut big = 0;
            for epoch in 0..20 {
                let plan = epoch_plan(&tasks, &config, epoch);
                assert_eq!(plan.len(), 100);
                let mut seen: Vec<usize> = plan
                    .iter()
                    .filter(|(t, _)| *t == 1)
                    .flat_map(|(_, b)| b.clone())
                    .collect();
                seen.sort();
                assert_eq!(seen, (0..100).collect::<Vec<_>>());
                assert_eq!(plan, epoch_plan(&tasks, &config, epoch), "seeded");
                big += plan[..16].iter().filter(|(t, _)| *t == 0).count();
            }
            big as f64 / (20.0 * 16.0)
        };
        let proportional = share(1.0);
        assert!((0.84..=0.96).contains(&proportional), "{proportional}");
        let flat = share(1e6);
        assert!((0.4..=0.6).contains(&flat), "{flat}");
    }
}
