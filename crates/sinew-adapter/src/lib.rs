//! sinew-adapter: adapter methods, prediction heads and AdapterHub file I/O, acting on the frozen
//! backbone through [`sinew_backbone::Hooks`].
//!
//! - [`bottleneck`]: `seq_bn`, `double_seq_bn`, `par_bn`, `scaled_par_bn` with AdapterHub's knobs;
//! - [`lora`]: LoRA and IA3 (AdapterHub's `lora` architecture), merge and unmerge;
//! - [`prefix`], [`prompt`]: prefix tuning (prepended keys/values) and prompt tuning;
//! - [`reft`]: LoReFT, NoReFT and DiReFT (low-rank interventions on chosen positions);
//! - [`union`]: AdapterHub's `ConfigUnion` of other methods under one name (MAM, UniPELT);
//! - [`head`]: classification, multi-label, regression and tagging heads in AdapterHub's layout;
//! - [`folder`]: reading and writing AdapterHub's `save_adapter` folders (and PEFT's, via [`peft`]);
//!
//! The assembled model (backbone + named adapters, fusions and heads) is `sinew_fusion::AdapterModel`.
//!
//! # Adding a method
//! Write `src/<method>.rs` with a serde config implementing [`method::MethodSpec`] (AdapterHub's
//! field names and `architecture` value, its named presets), a Burn module implementing
//! [`method::Method`] (new, load and save with AdapterHub's keys; how it composes, fuses and
//! merges, where it can), and `impl Hooks<B> for &YourModule` overriding the hook sites it acts
//! at. Then add its `pub mod` and one line to the `register_methods!` list below: [`Adapter`],
//! [`MethodConfig`] and its presets, folder loading, saving, composition, fusion and the forward
//! pass pick it up.

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
pub mod reft;
pub mod tensors;
pub mod union;

pub use error::{AdapterError, ConfigError, Result};
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
    /// ReFT: LoReFT, NoReFT, DiReFT ([`reft`]).
    Reft(reft::Reft, reft::ReftConfig),
    /// Unions of the methods above: MAM, UniPELT ([`union`]).
    Union(union::UnionAdapter, union::UnionConfig),
}

impl MethodConfig {
    /// A preset by AdapterHub's name (`seq_bn`, `lora`, … see [`presets`](Self::presets)), or a
    /// JSON file at `spec` holding an AdapterHub config object (or an `adapter_config.json` with
    /// one under `config`); its `architecture` names the method, bottleneck when absent.
    pub fn from_name_or_file(spec: &str, model: &sinew_backbone::BertConfig) -> Result<Self> {
        let presets = Self::presets();
        Ok(match presets.iter().find(|(name, _)| *name == spec) {
            Some((_, preset)) => preset.clone(),
            None => {
                let path = std::path::Path::new(spec);
                if !path.is_file() {
                    let names: Vec<&str> = presets.iter().map(|(n, _)| *n).collect();
                    return Err(AdapterError::UnknownPreset {
                        spec: spec.to_string(),
                        presets: names,
                    });
                }
                let mut raw = folder::read_json(path)?;
                if let Some(serde_json::Value::Object(inner)) = raw.remove("config") {
                    raw = inner;
                }
                Self::parse(path, &raw, Some(model)).map_err(|e| AdapterError::config(path, e))?
            }
        })
    }
}
