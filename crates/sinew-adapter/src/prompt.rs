//! Prompt tuning (Lester et al., 2021; AdapterHub's `prompt_tuning`): learned embeddings
//! inserted into the sequence after the embedding layer, through [`Hooks::embedded`]. The
//! encoder's output then has `prompt_length` more positions, and — as in AdapterHub — a text head
//! reads position 0, which with `combine: "prefix"` is the first prompt position.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;
use sinew_backbone::{BertConfig, Hooks};

use crate::bottleneck::model_prefix;
use crate::error::{ConfigError, Result};
use crate::method::{Method, MethodSpec};
use crate::tensors::{TensorFile, TensorSink};

/// Where the prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Before the first token.
    Prefix,
    /// After the first token (`[CLS]`/`<s>`).
    PrefixAfterBos,
}

/// How a new prompt is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// Uniform in ±`random_uniform_scale`.
    RandomUniform,
    /// From the embeddings of a text (AdapterHub's `from_string`; sinew loads such prompts but
    /// does not create them).
    FromString,
}

fn ten() -> usize {
    10
}
fn half() -> f64 {
    0.5
}
fn random_uniform() -> PromptInit {
    PromptInit::RandomUniform
}
fn prefix() -> Combine {
    Combine::Prefix
}

/// AdapterHub's `PromptTuningConfig`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// Number of prompt positions.
    #[serde(default = "ten")]
    pub prompt_length: usize,
    /// How a new prompt is initialised.
    #[serde(default = "random_uniform")]
    pub prompt_init: PromptInit,
    /// The text of `from_string` initialisation.
    #[serde(default)]
    pub prompt_init_text: Option<String>,
    /// Bound of `random_uniform` initialisation (AdapterHub does not save it).
    #[serde(default = "half", skip_serializing)]
    pub random_uniform_scale: f64,
    /// Where the prompt goes.
    #[serde(default = "prefix")]
    pub combine: Combine,
}

impl Default for PromptTuningConfig {
    /// AdapterHub's `prompt_tuning` preset.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

impl MethodSpec for PromptTuningConfig {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("prompt_tuning", Self::default())]
    }

    const ARCHITECTURE: &'static str = "prompt_tuning";

    fn summary(&self) -> String {
        format!(
            "prompt tuning (length {}, {})",
            self.prompt_length,
            serde_json::to_string(&self.combine).expect("an enum serialises")
        )
    }
    const ACCEPTED: &'static [&'static str] = &["random_uniform_scale"];

    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        if self.prompt_length == 0 {
            return Err(ConfigError::invalid("prompt_length", "must be at least 1"));
        }
        if let Some(model) = model.filter(|m| self.prompt_length >= m.max_position_embeddings) {
            return Err(ConfigError::invalid(
                "prompt_length",
                format!(
                    "= {} leaves no position for text (the model has {})",
                    self.prompt_length, model.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }
}

/// A prompt-tuning adapter.
#[derive(Module, Debug)]
pub struct PromptTuning<B: Backend> {
    /// `prompt_embedding.weight`, `[prompt_length, hidden]`.
    pub prompt_embedding: Param<Tensor<B, 2>>,
    #[module(skip)]
    combine: Combine,
}

fn key(model: &BertConfig, name: &str) -> String {
    format!(
        "{}.prompt_tuning.prompt_tunings.{name}.prompt_embedding.weight",
        model_prefix(model)
    )
}

impl<B: FusedOps> Method<B> for PromptTuning<B> {
    type Config = PromptTuningConfig;

    fn new(config: &PromptTuningConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        config.validate(Some(model))?;
        if config.prompt_init == PromptInit::FromString {
            return Err(ConfigError::invalid(
                "prompt_init",
                "= \"from_string\" is not supported for new prompts; use \"random_uniform\"",
            )
            .into());
        }
        let scale = config.random_uniform_scale;
        let prompt = Tensor::random(
            [config.prompt_length, model.hidden_size],
            Distribution::Uniform(-scale, scale),
            device,
        );
        Ok(Self {
            prompt_embedding: Param::from_tensor(prompt),
            combine: config.combine,
        })
    }

    fn load(
        config: &PromptTuningConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        let shape = [config.prompt_length, model.hidden_size];
        Ok(Self {
            prompt_embedding: Param::from_tensor(file.take_tensor(
                &key(model, name),
                shape,
                device,
            )?),
            combine: config.combine,
        })
    }

    /// It changes the embeddings.
    fn unchanged_below(&self) -> usize {
        0
    }

    /// It acts before the first layer only.
    fn mixes_positions(&self) -> bool {
        false
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        sink.put(key(model, name), self.prompt_embedding.val());
    }
}

/// The prompt is inserted after the embedding LayerNorm; its positions are never masked.
impl<B: FusedOps> Hooks<B> for &PromptTuning<B> {
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [batch, seq, width] = hidden.dims();
        let prompt = self
            .prompt_embedding
            .val()
            .unsqueeze::<3>()
            .repeat_dim(0, batch);
        let [_, length, _] = prompt.dims();
        let hidden = match self.combine {
            Combine::Prefix => Tensor::cat(vec![prompt, hidden], 1),
            Combine::PrefixAfterBos => {
                let first = hidden.clone().slice([0..batch, 0..1, 0..width]);
                let rest = hidden.slice([0..batch, 1..seq, 0..width]);
                Tensor::cat(vec![first, prompt, rest], 1)
            }
        };
        // AdapterHub prepends ones to the mask for both placements: with `prefix_after_bos` the
        // first token and the prompt are all kept, which the shifted mask says as well.
        let present = Tensor::ones([batch, length], &keep.device());
        (hidden, Tensor::cat(vec![present, keep], 1))
    }
}
