//! sinew-adapter: adapter methods, prediction heads and AdapterHub file I/O, acting on the frozen
//! backbone through [`sinew_backbone::Hooks`].
//!
//! - [`bottleneck`]: `seq_bn`, `double_seq_bn`, `par_bn`, `scaled_par_bn` with AdapterHub's knobs;
//! - [`lora`]: LoRA and IA3 (AdapterHub's `lora` architecture), merge and unmerge;
//! - [`prefix`], [`prompt`]: prefix tuning (prepended keys/values) and prompt tuning;
//! - [`head`]: classification, multi-label, regression and tagging heads in AdapterHub's layout;
//! - [`folder`]: reading and writing AdapterHub's `save_adapter` folders (and PEFT's, via [`peft`]);
//!
//! The assembled model (backbone + named adapters, fusions and heads) is `sinew_fusion::AdapterModel`.
//!
//! # Adding a method
//! Write `src/<method>.rs` with a serde config implementing [`method::MethodSpec`] (AdapterHub's
//! field names and `architecture` value), a Burn module implementing [`method::Method`] (new,
//! load and save with AdapterHub's keys), and `impl Hooks<B> for &YourModule` overriding the
//! hook sites it acts at. Then add its `pub mod` and one line to the `register_methods!` list
//! below: [`Adapter`], [`MethodConfig`], folder loading, saving and the forward pass pick it up.

// `Adapter` (and the record Burn derives for it) holds a handful of adapters per model: variant
// sizes do not matter, boxing would only add indirection.
#![allow(clippy::large_enum_variant)]

pub mod activation;
pub mod bottleneck;
pub mod error;
pub mod folder;
pub mod head;
pub mod lora;
pub mod method;
pub mod peft;
pub mod prefix;
pub mod prompt;
pub mod tensors;

pub use error::{AdapterError, Result};
pub use folder::{AdapterFolder, FolderFormat};
pub use head::{ClassificationHead, HeadConfig, HeadKind, HeadLogits, Targets};
pub use method::{Method, MethodSpec};

method::register_methods! {
    /// Bottleneck adapters: `seq_bn`, `double_seq_bn`, `par_bn`, … ([`bottleneck`]).
    Bottleneck(bottleneck::BottleneckAdapter, bottleneck::BnConfig),
    /// LoRA and IA3 ([`lora`]).
    Lora(lora::LoraAdapter, lora::LoraConfig),
    /// Prefix tuning ([`prefix`]).
    Prefix(prefix::PrefixTuning, prefix::PrefixTuningConfig),
    /// Prompt tuning ([`prompt`]).
    Prompt(prompt::PromptTuning, prompt::PromptTuningConfig),
}
