//! sinew-backbone: a frozen BERT-family encoder (BERT, MiniLM, RoBERTa) with the hook points
//! that sinew's adapters attach to.
//!
//! - [`model`]: the encoder, one file, names mirroring the checkpoint keys;
//! - [`hooks`]: the extension contract — where adapters act, and the no-op default;
//! - [`load`]: HuggingFace folders (`config.json`, `model.safetensors`, `tokenizer.json`);
//! - [`tokenizer`]: tokenization with dynamic padding and sinew's truncation;
//!
//! This crate knows nothing of adapters: `sinew-adapter` and `sinew-fusion` implement [`Hooks`].

pub mod config;
pub mod error;
pub mod files;
pub mod hooks;
pub mod load;
pub mod model;
pub mod tokenizer;

pub use config::BertConfig;
pub use error::{BackboneError, ConfigError as ModelConfigError, Result};
pub use hooks::{AttentionKv, Hooks, NoHooks, Projection, SubLayer};
pub use load::{load_weights, ModelFiles, Pretrained};
pub use model::{Bert, EncoderInput, EncoderOutput, Positions, Start};
pub use sinew_kernels::{self as kernels, FusedAutodiff, FusedOps, LayerNorm, LayerNormConfig};
pub use tokenizer::{TextTokenizer, TokenBatch};
