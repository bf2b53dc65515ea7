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

impl MethodConfig {
    /// AdapterHub's preset names, as `sinew train --adapter` and run files take them.
    pub const PRESETS: &'static [&'static str] = &[
        "seq_bn",
        "double_seq_bn",
        "par_bn",
        "scaled_par_bn",
        "lora",
        "ia3",
        "prefix_tuning",
        "prompt_tuning",
    ];

    /// A preset by AdapterHub's name (`seq_bn`, `lora`, …), or a JSON file at `spec` holding an
    /// AdapterHub config object (or an `adapter_config.json` with one under `config`); its
    /// `architecture` names the method, bottleneck when absent.
    pub fn from_name_or_file(spec: &str, model: &sinew_backbone::BertConfig) -> Result<Self> {
        Ok(match spec {
            "seq_bn" => Self::Bottleneck(bottleneck::BnConfig::seq_bn()),
            "double_seq_bn" => Self::Bottleneck(bottleneck::BnConfig::double_seq_bn()),
            "par_bn" => Self::Bottleneck(bottleneck::BnConfig::par_bn()),
            "scaled_par_bn" => Self::Bottleneck(bottleneck::BnConfig::scaled_par_bn()),
            "lora" => Self::Lora(lora::LoraConfig::lora()),
            "ia3" => Self::Lora(lora::LoraConfig::ia3()),
            "prefix_tuning" => Self::Prefix(prefix::PrefixTuningConfig::default()),
            "prompt_tuning" => Self::Prompt(prompt::PromptTuningConfig::default()),
            path => {
                let path = std::path::Path::new(path);
                if !path.is_file() {
                    return Err(AdapterError::Input(format!(
                        "adapter `{spec}` is neither a preset ({}) nor a JSON config file",
                        Self::PRESETS.join(", ")
                    )));
                }
                let mut raw = folder::read_json(path)?;
                if let Some(serde_json::Value::Object(inner)) = raw.remove("config") {
                    raw = inner;
                }
                let architecture = raw
                    .get("architecture")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("bottleneck");
                Self::parse(path, architecture, &raw, Some(model))
                    .unwrap_or_else(|| {
                        Err(format!(
                            "`architecture` = \"{architecture}\" is not supported (sinew reads: {})",
                            Self::ARCHITECTURES.join(", ")
                        ))
                    })
                    .map_err(|m| AdapterError::file(path, m))?
            }
        })
    }
}
