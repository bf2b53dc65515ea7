//! sinew: train, compose and serve adapters on a frozen pretrained transformer, on Burn.
//!
//! This facade re-exports the workspace crates and holds what the `sinew` binary runs:
//! - [`kernels`]: the fused ops of the frozen transformer (a Burn backend extension);
//! - [`backbone`]: the BERT-family encoder, HF loading, tokenizer, hook points;
//! - [`adapter`], [`fusion`], [`trainer`]: adapter methods, composition, training;
//! - [`backend`]: the Burn backends compiled in and how the CLI picks one;
//! - [`bench`]: `sinew bench`, the standard works timed (shared with the criterion benches);
//! - [`encode`]: the `sinew encode` job;
//! - [`inspect`]: `sinew inspect`, a summary of an adapter folder;
//! - [`merge`]: the `sinew merge` job;
//! - [`run`]: `sinew train`, `fuse`, `eval` and `predict` (run specs, run folders);
//! - [`demo`]: `sinew demo`, the main job;
//! - [`plot`]: pictures (the fusion-attention heatmap, training curves, accuracy bars).

pub use sinew_adapter as adapter;
pub use sinew_backbone as backbone;
pub use sinew_fusion as fusion;
pub use sinew_kernels as kernels;
pub use sinew_trainer as trainer;

pub mod backend;
pub mod bench;
pub mod demo;
pub mod encode;
pub mod inspect;
pub mod merge;
pub mod plot;
pub mod run;
