//! sinew-trainer: training loops, batching, metrics, checkpoints (the data itself: `sinew-data`).
//!
//! - [`batching`]: tokenize once (cached), length buckets, per-batch padding;
//! - [`cache`]: the frozen-prefix activation cache (layers no adapter changes run once per example);
//! - [`train`]: the training loop for every regime — ST-A, MT-A, fusion, head-only, full
//!   fine-tuning (AdamW, warmup/decay, clipping, early stopping, best epoch kept);
//! - [`clip`]: gradient clipping by the global norm, as PyTorch's `clip_grad_norm_`;
//! - [`checkpoint`]: what trains plus optimizer state and progress, one atomic file, exact resume;
//! - [`monitor`]: the progress bar and the JSONL metrics log;
//! - [`metrics`]: accuracy, macro-F1, MCC.

pub mod batching;
pub mod cache;
pub mod checkpoint;
pub(crate) mod clip;
pub mod metrics;
pub mod monitor;
pub mod train;
