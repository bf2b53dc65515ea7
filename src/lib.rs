//! sinew: train, compose and serve adapters on a frozen pretrained transformer, on Burn.
//!
//! This facade re-exports the workspace crates; the `sinew` command line is the binary's own.
//! - [`kernels`]: the fused ops of the frozen transformer (a Burn backend extension);
//! - [`backbone`]: the BERT-family encoder, HF loading, tokenizer, hook points;
//! - [`adapter`], [`fusion`], [`trainer`]: adapter methods, composition, training;
//! - [`data`]: the default model and the task suite fetched from registries, users' tables;
//! - [`backend`]: the Burn backends compiled in, and running work on the one picked;
//! - [`encode`]: texts through the active setup, into hidden states, logits and attentions;
//! - [`works`]: the standard works `sinew bench` and the criterion benches time.
//!
//! The types most programs build with are re-exported at the top: load a [`Pretrained`]
//! backbone, wrap it in an [`AdapterModel`], add or load adapters ([`MethodConfig`]) and heads
//! ([`HeadConfig`]), activate a [`Setup`], run it or [`train`](trainer::train::train) it.

pub use sinew_adapter as adapter;
pub use sinew_backbone as backbone;
pub use sinew_data as data;
pub use sinew_fusion as fusion;
pub use sinew_kernels as kernels;
pub use sinew_trainer as trainer;

pub mod backend;
pub mod encode;
pub mod works;

pub use sinew_adapter::{AdapterError, HeadConfig, MethodConfig};
pub use sinew_backbone::{BackboneError, Pretrained};
pub use sinew_fusion::{AdapterModel, FusionError, FusionId, Setup};
pub use sinew_trainer::train::{TrainConfig, TrainError};
