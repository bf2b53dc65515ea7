//! sinew-trainer: data, training loops, metrics, checkpoints.
//!
//! - [`tasks`]: the task suite — real labelled text inside registry packages — and its parsers;
//! - [`data`]: fetching a task, seeded stratified splits, low-resource variants, the manifest;
//! - [`table`]: users' own CSV/TSV/JSONL data;
//! - [`batching`]: tokenize once (cached), length buckets, per-batch padding;
//! - [`train`]: the single-task adapter loop (AdamW, warmup/decay, clipping, early stopping);
//! - [`metrics`]: accuracy, macro-F1, MCC.
//!
//! Multi-task and fusion loops, checkpoints with resume and `sinew demo` are the next step.

pub mod batching;
pub mod data;
pub mod metrics;
pub mod table;
pub mod tasks;
pub mod train;
