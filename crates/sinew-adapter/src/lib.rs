//! sinew-adapter: adapter methods, prediction heads and AdapterHub file I/O, acting on the frozen
//! backbone through [`sinew_backbone::Hooks`].
//!
//! - [`bottleneck`]: `seq_bn`, `double_seq_bn`, `par_bn`, `scaled_par_bn` with AdapterHub's knobs;
//! - [`lora`]: LoRA and IA3 (AdapterHub's `lora` architecture), merge and unmerge;
//! - [`head`]: classification heads in AdapterHub's layout;
//! - [`folder`]: reading and writing AdapterHub's `save_adapter` folders (and PEFT's, via [`peft`]);
//! - [`model`]: backbone + named adapters + heads, and the hooks of the active adapter.
//!
//! # Adding a method
//! Write `src/<method>.rs` with a serde config (AdapterHub field names), a Burn `Module` for its
//! weights and what it does at the hook sites, then add one variant to [`Adapter`]; the compiler
//! points at the match arms (`model.rs` hooks, `folder.rs` loading) that need a line for it.

pub mod activation;
pub mod bottleneck;
pub mod error;
pub mod folder;
pub mod head;
pub mod lora;
pub mod model;
pub mod peft;
pub mod tensors;

use burn::prelude::*;

pub use error::{AdapterError, Result};
pub use folder::{AdapterFolder, FolderFormat, MethodConfig};
pub use head::{ClassificationHead, HeadConfig, HeadKind, HeadLogits, Targets};
pub use model::{AdapterModel, AdapterOutput};

/// An adapter of any method, across the whole model.
#[derive(Module, Debug)]
pub enum Adapter<B: Backend> {
    /// A bottleneck adapter ([`bottleneck`]).
    Bottleneck(bottleneck::BottleneckAdapter<B>),
    /// A LoRA or IA3 adapter ([`lora`]).
    Lora(lora::LoraAdapter<B>),
}
