//! Prefix tuning (Li & Liang, 2021; AdapterHub's `prefix_tuning`): learned keys and values
//! prepended to each attention layer's own, through [`Hooks::attention_kv`]; the queries attend
//! to them as to always-present extra tokens.
//!
//! One module holds the prefixes of every layer, `[prefix_length, layers · 2 · hidden]` (per
//! layer: keys, then values, each split into heads as the layer's own). While training they are
//! reparameterised by a bottleneck MLP over a small embedding (`wte` → Linear → non-linearity →
//! Linear), which trains more stably; `flat` stores them directly. [`PrefixTuning::eject`]
//! replaces the MLP by the static prefixes it produces, for serving.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;
use sinew_backbone::{kernels, AttentionKv, BertConfig, Hooks};

use crate::activation::Activation;
use crate::bottleneck::model_prefix;
use crate::error::{ConfigError, Result};
use crate::method::{Method, MethodSpec};
use crate::tensors::{TensorFile, TensorSink};

fn thirty() -> usize {
    30
}
fn five_twelve() -> usize {
    512
}
fn tanh() -> Activation {
    Activation::Tanh
}
fn yes() -> bool {
    true
}

/// AdapterHub's `PrefixTuningConfig`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    /// Number of prefix positions prepended to every layer's keys and values.
    #[serde(default = "thirty")]
    pub prefix_length: usize,
    /// Width of the reparameterisation MLP (unused when `flat`).
    #[serde(default = "five_twelve")]
    pub bottleneck_size: usize,
    /// Non-linearity of the MLP.
    #[serde(default = "tanh")]
    pub non_linearity: Activation,
    /// Train the prefixes directly, without the MLP.
    #[serde(default)]
    pub flat: bool,
    /// Dropout on the prefixes while training.
    #[serde(default)]
    pub dropout: f64,
    /// Layers without a prefix.
    #[serde(default)]
    pub leave_out: Vec<usize>,
    /// A learned sigmoid gate per layer, read from the attention input, scales the prefixes.
    #[serde(default)]
    pub use_gating: bool,
    /// One gate for keys and values (else one each).
    #[serde(default = "yes")]
    pub shared_gating: bool,
    /// Encoder-decoder models: prefixes in the encoder (an encoder-only model always has them).
    #[serde(default = "yes")]
    pub encoder_prefix: bool,
    /// Encoder-decoder models: prefixes in cross-attention (no effect on an encoder).
    #[serde(default = "yes")]
    pub cross_prefix: bool,
}

impl Default for PrefixTuningConfig {
    /// AdapterHub's `prefix_tuning` preset.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

impl MethodSpec for PrefixTuningConfig {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("prefix_tuning", Self::default())]
    }

    const ARCHITECTURE: &'static str = "prefix_tuning";

    fn summary(&self) -> String {
        format!(
            "prefix tuning (length {}, {}{})",
            self.prefix_length,
            if self.flat {
                "flat".to_string()
            } else {
                format!(
                    "MLP width {} {}",
                    self.bottleneck_size,
                    String::from(self.non_linearity)
                )
            },
            if self.use_gating { ", gated" } else { "" },
        )
    }

    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        crate::method::probability("dropout", self.dropout)?;
        if self.prefix_length == 0 {
            return Err(ConfigError::invalid("prefix_length", "must be at least 1"));
        }
        if !self.flat && self.bottleneck_size == 0 {
            return Err(ConfigError::invalid(
                "bottleneck_size",
                "must be at least 1",
            ));
        }
        if let Some(model) = model {
            let limit = 64 * model.hidden_size;
            if self.prefix_length > limit || self.bottleneck_size > limit {
                let key = if self.prefix_length > limit {
                    "prefix_length"
                } else {
                    "bottleneck_size"
                };
                return Err(ConfigError::invalid(key, "is past 64 × hidden_size"));
            }
            if model.hidden_size % model.num_attention_heads != 0 {
                return Err(ConfigError::invalid(
                    "hidden_size",
                    "of the backbone is not a multiple of its num_attention_heads",
                ));
            }
        }
        Ok(())
    }
}

/// The reparameterisation MLP: `control_trans(wte)`.
#[derive(Module, Debug)]
pub struct PrefixMlp<B: Backend> {
    /// `wte.weight`: one embedding per prefix position, `[prefix_length, hidden]`.
    pub wte: Param<Tensor<B, 2>>,
    /// `control_trans.0`: hidden → bottleneck.
    pub down: Linear<B>,
    /// `control_trans.2`: bottleneck → layers · 2 · hidden.
    pub up: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

/// Where the prefixes come from.
#[derive(Module, Debug)]
pub enum PrefixSource<B: Backend> {
    /// Computed by the MLP (`flat: false`).
    Mlp(PrefixMlp<B>),
    /// Stored, `[prefix_length, layers · 2 · hidden]` (`flat: true`, or ejected).
    Flat(Param<Tensor<B, 2>>),
}

/// A prefix-tuning adapter across the whole model.
#[derive(Module, Debug)]
pub struct PrefixTuning<B: Backend> {
    /// The prefixes of every layer.
    pub source: PrefixSource<B>,
    /// `prefix_gates.NAME` per layer (`use_gating`): hidden → 1 (shared) or 2 (keys, values).
    pub gates: Vec<Option<Linear<B>>>,
    dropout: Dropout,
    /// Per layer, the index of its prefixes among the layers that have one.
    #[module(skip)]
    chunks: Vec<Option<usize>>,
    #[module(skip)]
    heads: usize,
}

/// AdapterHub's key of the prefix module shared by all layers of an encoder (`self_prefix`).
fn pool_key(model: &BertConfig, name: &str) -> String {
    format!(
        "{}.prefix_tuning.prefix_tunings.{name}.self_prefix",
        model_prefix(model)
    )
}

/// AdapterHub saves the shared module again under every layer; the copies are identical.
fn layer_copy_key(model: &BertConfig, layer: usize, name: &str) -> String {
    format!(
        "{}.encoder.layer.{layer}.attention.self.prefix_tuning.pool.prefix_tunings.{name}.self_prefix",
        model_prefix(model)
    )
}

fn gate_key(model: &BertConfig, layer: usize, name: &str) -> String {
    format!(
        "{}.encoder.layer.{layer}.attention.self.prefix_tuning.prefix_gates.{name}",
        model_prefix(model)
    )
}

impl<B: FusedOps> PrefixTuning<B> {
    fn with_parts(
        config: &PrefixTuningConfig,
        model: &BertConfig,
        source: PrefixSource<B>,
        gates: Vec<Option<Linear<B>>>,
    ) -> Self {
        let mut rank = 0..;
        let chunks = (0..model.num_hidden_layers)
            .map(|l| (!config.leave_out.contains(&l)).then(|| rank.next().expect("unbounded")))
            .collect();
        Self {
            source,
            gates,
            dropout: DropoutConfig::new(config.dropout).init(),
            chunks,
            heads: model.num_attention_heads,
        }
    }

    fn layers_with_prefix(config: &PrefixTuningConfig, model: &BertConfig) -> usize {
        (0..model.num_hidden_layers)
            .filter(|l| !config.leave_out.contains(l))
            .count()
    }

    /// The prefixes of every layer, `[prefix_length, layers · 2 · hidden]`.
    pub fn prefixes(&self) -> Tensor<B, 2> {
        match &self.source {
            PrefixSource::Mlp(mlp) => mlp
                .up
                .forward(mlp.activation.forward(mlp.down.forward(mlp.wte.val()))),
            PrefixSource::Flat(prefixes) => prefixes.val(),
        }
    }

    /// Replaces the MLP by the prefixes it produces now: the same outputs, no MLP per forward
    /// pass, and AdapterHub's `eject_prefix`.
    pub fn eject(self) -> Self {
        let prefixes = self.prefixes().detach();
        Self {
            source: PrefixSource::Flat(Param::from_tensor(prefixes)),
            ..self
        }
    }

    /// Keys and values of chunk `chunk`, each `[heads, prefix_length, head_dim]`.
    fn layer_prefixes(&self, chunk: usize, hidden: usize) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let columns = chunk * 2 * hidden..(chunk + 1) * 2 * hidden;
        // Only this layer's columns of the MLP's last projection are computed.
        let kv = match &self.source {
            PrefixSource::Mlp(mlp) => {
                let inner = mlp.activation.forward(mlp.down.forward(mlp.wte.val()));
                let [_, width] = inner.dims();
                let weight = mlp.up.weight.val().slice([0..width, columns.clone()]);
                let out = inner.matmul(weight);
                match &mlp.up.bias {
                    Some(bias) => out + bias.val().slice([columns]).unsqueeze(),
                    None => out,
                }
            }
            PrefixSource::Flat(prefixes) => {
                let [length, _] = prefixes.dims();
                prefixes.val().slice([0..length, columns])
            }
        };
        let [length, _] = kv.dims();
        let heads = |x: Tensor<B, 2>| {
            x.reshape([length, self.heads, hidden / self.heads])
                .swap_dims(0, 1)
        };
        (
            heads(kv.clone().slice([0..length, 0..hidden])),
            heads(kv.slice([0..length, hidden..2 * hidden])),
        )
    }
}

impl<B: FusedOps> Method<B> for PrefixTuning<B> {
    type Config = PrefixTuningConfig;

    fn new(config: &PrefixTuningConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        config.validate(Some(model))?;
        let hidden = model.hidden_size;
        let out = Self::layers_with_prefix(config, model) * 2 * hidden;
        let normal = |shape: [usize; 2], std: f64| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, std),
                device,
            ))
        };
        let source = if config.flat {
            PrefixSource::Flat(normal([config.prefix_length, out], 1.0))
        } else {
            PrefixSource::Mlp(PrefixMlp {
                wte: normal([config.prefix_length, hidden], 1.0),
                down: LinearConfig::new(hidden, config.bottleneck_size).init(device),
                up: LinearConfig::new(config.bottleneck_size, out).init(device),
                activation: config.non_linearity,
            })
        };
        let gate_outputs = if config.shared_gating { 1 } else { 2 };
        let gates = (0..model.num_hidden_layers)
            .map(|l| {
                (config.use_gating && !config.leave_out.contains(&l)).then(|| {
                    let mut gate = LinearConfig::new(hidden, gate_outputs).init(device);
                    gate.weight = normal([hidden, gate_outputs], 0.02);
                    gate
                })
            })
            .collect();
        Ok(Self::with_parts(config, model, source, gates))
    }

    fn load(
        config: &PrefixTuningConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        let hidden = model.hidden_size;
        let length = config.prefix_length;
        let out = Self::layers_with_prefix(config, model) * 2 * hidden;
        let pool = pool_key(model, name);
        let source = if config.flat {
            let flat =
                file.take_tensor::<B, 1>(&format!("{pool}.control_trans"), [length * out], device)?;
            PrefixSource::Flat(Param::from_tensor(flat.reshape([length, out])))
        } else {
            let wte = file.take_tensor(&format!("{pool}.wte.weight"), [length, hidden], device)?;
            let bottleneck = config.bottleneck_size;
            PrefixSource::Mlp(PrefixMlp {
                wte: Param::from_tensor(wte),
                down: file.take_linear(
                    &format!("{pool}.control_trans.0"),
                    hidden,
                    bottleneck,
                    true,
                    device,
                )?,
                up: file.take_linear(
                    &format!("{pool}.control_trans.2"),
                    bottleneck,
                    out,
                    true,
                    device,
                )?,
                activation: config.non_linearity,
            })
        };
        // The per-layer copies of the shared module: consumed, not read twice.
        for layer in 0..model.num_hidden_layers {
            let copy = format!("{}.", layer_copy_key(model, layer, name));
            file.skip(|key| key.starts_with(&copy));
        }
        let gate_outputs = if config.shared_gating { 1 } else { 2 };
        let gates = (0..model.num_hidden_layers)
            .map(|l| {
                (config.use_gating && !config.leave_out.contains(&l))
                    .then(|| {
                        file.take_linear(
                            &gate_key(model, l, name),
                            hidden,
                            gate_outputs,
                            true,
                            device,
                        )
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self::with_parts(config, model, source, gates))
    }

    /// Its gates read the attention input, which keeps every position.
    fn mixes_positions(&self) -> bool {
        false
    }

    fn unchanged_below(&self) -> usize {
        crate::method::first_site_layer(
            self.chunks
                .iter()
                .zip(&self.gates)
                .enumerate()
                .map(|(layer, (chunk, gate))| (layer, chunk.map(|_| gate.is_some()))),
        )
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        let mut put_module = |prefix: &str| match &self.source {
            PrefixSource::Mlp(mlp) => {
                sink.put(format!("{prefix}.wte.weight"), mlp.wte.val());
                sink.put_linear(&format!("{prefix}.control_trans.0"), &mlp.down);
                sink.put_linear(&format!("{prefix}.control_trans.2"), &mlp.up);
            }
            PrefixSource::Flat(prefixes) => {
                let flat = prefixes.val().flatten::<1>(0, 1);
                sink.put(format!("{prefix}.control_trans"), flat);
            }
        };
        // AdapterHub's layout: the shared module under every layer, then once more at the top.
        for layer in 0..model.num_hidden_layers {
            put_module(&layer_copy_key(model, layer, name));
        }
        put_module(&pool_key(model, name));
        for (layer, gate) in self.gates.iter().enumerate() {
            if let Some(gate) = gate {
                sink.put_linear(&gate_key(model, layer, name), gate);
            }
        }
    }
}

/// Prefixes are prepended to the keys and values of every layer that has them; the mask marks
/// them as always present.
impl<B: FusedOps> Hooks<B> for &PrefixTuning<B> {
    fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
        let Some(chunk) = self.chunks.get(layer).copied().flatten() else {
            return kv;
        };
        let [batch, heads, _, head_dim] = kv.key.dims();
        let (key, value) = self.layer_prefixes(chunk, heads * head_dim);
        let [_, length, _] = key.dims();
        let per_example = |x: Tensor<B, 3>| {
            self.dropout
                .forward(x.unsqueeze::<4>().repeat_dim(0, batch))
        };
        let (mut key, mut value) = (per_example(key), per_example(value));
        if let Some(gate) = self.gates.get(layer).and_then(Option::as_ref) {
            // AdapterHub: the mean over positions (padding included) of σ(gate(input)).
            let scores = sigmoid(kernels::linear(gate, kv.input.clone())).mean_dim(1);
            let [_, _, outputs] = scores.dims();
            let factor = |i: usize| {
                scores
                    .clone()
                    .slice([0..batch, 0..1, i..i + 1])
                    .reshape([batch, 1, 1, 1])
            };
            key = key * factor(0);
            value = value * factor(outputs - 1);
        }
        let present = Tensor::ones([batch, length], &kv.keep.device());
        AttentionKv {
            key: Tensor::cat(vec![key, kv.key], 2),
            value: Tensor::cat(vec![value, kv.value], 2),
            keep: Tensor::cat(vec![present, kv.keep], 1),
            input: kv.input,
        }
    }
}
