//! sinew-trainer: data, training loops, metrics, checkpoints.
//!
//! - [`tasks`]: the task suite — real labelled text inside registry packages — and its parsers;
//! - [`data`]: fetching a task, seeded stratified splits, low-resource variants, the manifest;
//! - [`table`]: users' own CSV/TSV/JSONL data;
//! - [`metrics`]: accuracy, macro-F1, MCC.
//!
//! The training loops, checkpoints and `sinew demo` are the next step (see the note).

pub mod data;
pub mod metrics;
pub mod table;
pub mod tasks;
