//! The single-task adapter loop (ST-A): only the adapter and its head train, with AdamW, linear
//! warmup then linear decay, gradient-norm clipping, evaluation on dev after every epoch, early
//! stopping, and the best epoch's weights kept. Our own loop: Burn's `Learner` would rewrite the
//! whole frozen backbone at every checkpoint.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use sinew_fusion::AdapterModel;

use crate::batching::{collate, epoch_batches, Tokens};
use crate::metrics::{scores, Scores};

/// Hyperparameters of a run.
#[derive(Debug, Clone, PartialEq)]
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
    /// Largest gradient L2 norm (clipped above).
    pub clip_norm: f32,
    /// Epochs without a better dev macro-F1 before stopping.
    pub patience: usize,
    /// Seed of the batch order.
    pub seed: u64,
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

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochLog {
    /// The epoch (from 1).
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Dev scores after the epoch.
    pub dev: Scores,
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused (unknown adapter, no head, …).
    #[error(transparent)]
    Model(#[from] sinew_adapter::AdapterError),
    /// The loss stopped being a number; the weights are the last good ones.
    #[error(
        "the loss is {value} at step {step}; training stopped (the last good weights are kept)"
    )]
    NonFinite {
        /// The step.
        step: usize,
        /// The loss.
        value: f32,
    },
}

/// Predicted classes of `tokens` (in batches of `batch_size`), with the model in eval mode.
pub fn predict<B: Backend>(
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
            .forward(&batch.to_input::<B>(device))?
            .logits
            .ok_or_else(|| {
                sinew_adapter::AdapterError::Input("the active adapter has no text head".into())
            })?;
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

/// Trains adapter `name` (and its head) of `model` on `train`, evaluating on `dev`; returns the
/// per-epoch log. `on_step(step, total, loss)` is called after every optimizer step.
pub fn train_adapter<B: AutodiffBackend>(
    model: &mut AdapterModel<B>,
    name: &str,
    train: &[Tokens],
    dev: &[Tokens],
    classes: usize,
    config: &TrainConfig,
    mut on_step: impl FnMut(usize, usize, f32),
) -> Result<Vec<EpochLog>, TrainError> {
    model.train_adapter(name)?;
    let device = model
        .backbone
        .devices()
        .into_iter()
        .next()
        .expect("a device");
    let lengths: Vec<usize> = train.iter().map(|t| t.ids.len()).collect();
    let per_epoch = train.len().div_ceil(config.batch_size.max(1));
    let total = per_epoch * config.epochs;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(config.clip_norm),
        ))
        .init::<B, AdapterModel<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut log = Vec::new();
    let mut best: Option<(f64, AdapterModel<B>)> = None;
    let mut since_best = 0;
    let mut step = 0;
    for epoch in 0..config.epochs {
        let mut losses = Vec::new();
        for indices in epoch_batches(&lengths, config.batch_size, config.seed, epoch as u64) {
            let (batch, labels) = collate(train, &indices);
            let logits = model
                .forward(&batch.to_input::<B>(&device))?
                .logits
                .ok_or_else(|| {
                    sinew_adapter::AdapterError::Input(format!("adapter `{name}` has no text head"))
                })?;
            let labels = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                    [labels.len()],
                ),
                &device,
            );
            let loss = loss_fn.forward(logits, labels);
            let value = loss.clone().into_scalar().elem::<f32>();
            if !value.is_finite() {
                if let Some((_, good)) = best.take() {
                    *model = good;
                }
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value,
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), model);
            *model = optimizer.step(learning_rate(config, step, total), model.clone(), grads);
            step += 1;
            losses.push(value as f64);
            on_step(step, total, value);
        }
        let valid = model.valid();
        let predicted = predict(&valid, dev, config.batch_size, &device)?;
        let gold: Vec<usize> = dev.iter().map(|t| t.label).collect();
        let dev_scores = scores(&gold, &predicted, classes);
        log.push(EpochLog {
            epoch: epoch + 1,
            step,
            train_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            dev: dev_scores,
        });
        if best
            .as_ref()
            .is_none_or(|(f1, _)| dev_scores.macro_f1 > *f1)
        {
            best = Some((dev_scores.macro_f1, model.clone()));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= config.patience {
                break;
            }
        }
    }
    if let Some((_, good)) = best {
        *model = good;
    }
    Ok(log)
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
}
