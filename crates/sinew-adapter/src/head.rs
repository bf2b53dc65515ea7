//! Prediction heads in AdapterHub's layout: `heads.NAME.{1,4,…}` Linear layers of a Sequential
//! `[Dropout, Linear, Activation]* Dropout, Linear`, read from the first token's hidden state (or
//! the pooler output with `use_pooler`).

use std::collections::BTreeMap;

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sinew_backbone::{BertConfig, EncoderOutput};

use crate::activation::Activation;
use crate::error::{AdapterError, Result};
use crate::tensors::{TensorFile, TensorSink};

fn yes() -> bool {
    true
}
fn two() -> usize {
    2
}
fn tanh() -> Activation {
    Activation::Tanh
}

/// The `config` object of AdapterHub's `head_config.json` for a classification head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// `classification` (others come later).
    pub head_type: String,
    /// Number of classes.
    pub num_labels: usize,
    /// Linear layers in the head.
    #[serde(default = "two")]
    pub layers: usize,
    /// Activation between the layers.
    #[serde(default = "tanh")]
    pub activation_function: Activation,
    /// Label name → class index.
    #[serde(default)]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// Read the pooler output instead of the first token.
    #[serde(default)]
    pub use_pooler: bool,
    /// Bias on the last layer.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Dropout before each layer (default: the model's hidden dropout).
    #[serde(default)]
    pub dropout_prob: Option<f64>,
}

impl HeadConfig {
    /// Class names by index (`"LABEL_i"` where the config names none).
    pub fn labels(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.num_labels).map(|i| format!("LABEL_{i}")).collect();
        for (name, &id) in self.label2id.iter().flatten() {
            if id < names.len() {
                names[id] = name.clone();
            }
        }
        names
    }
}

/// A classification head.
#[derive(Module, Debug)]
pub struct ClassificationHead<B: Backend> {
    /// The Linear layers, in order (`heads.NAME.1`, `.4`, …).
    pub layers: Vec<Linear<B>>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    use_pooler: bool,
}

impl<B: Backend> ClassificationHead<B> {
    /// A new head for `model`.
    pub fn new(config: &HeadConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        Self::build(config, model, |_, d_in, d_out, bias| {
            Ok(LinearConfig::new(d_in, d_out).with_bias(bias).init(device))
        })
    }

    /// Reads the head `name` from AdapterHub's `model_head.safetensors`.
    pub fn load(
        config: &HeadConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        Self::build(config, model, |index, d_in, d_out, bias| {
            // Each hidden layer is Dropout, Linear, Activation; the last Dropout, Linear.
            let prefix = format!("heads.{name}.{}", 3 * index + 1);
            file.take_linear(&prefix, d_in, d_out, bias, device)
        })
    }

    fn build(
        config: &HeadConfig,
        model: &BertConfig,
        mut make: impl FnMut(usize, usize, usize, bool) -> Result<Linear<B>>,
    ) -> Result<Self> {
        if config.head_type != "classification" {
            return Err(AdapterError::Input(format!(
                "head_type `{}` is not supported yet (only `classification`)",
                config.head_type
            )));
        }
        if config.num_labels == 0 || config.layers == 0 {
            return Err(AdapterError::Input(
                "a head needs num_labels ≥ 1 and layers ≥ 1".into(),
            ));
        }
        let hidden = model.hidden_size;
        let layers = (0..config.layers)
            .map(|i| {
                let last = i + 1 == config.layers;
                let d_out = if last { config.num_labels } else { hidden };
                make(i, hidden, d_out, !last || config.bias)
            })
            .collect::<Result<Vec<_>>>()?;
        let dropout = config.dropout_prob.unwrap_or(model.hidden_dropout_prob);
        Ok(Self {
            layers,
            dropout: DropoutConfig::new(dropout).init(),
            activation: config.activation_function,
            use_pooler: config.use_pooler,
        })
    }

    /// Writes the layers as `heads.NAME.{1,4,…}`.
    pub fn save(&self, name: &str, sink: &mut TensorSink) {
        for (i, layer) in self.layers.iter().enumerate() {
            sink.put_linear(&format!("heads.{name}.{}", 3 * i + 1), layer);
        }
    }

    /// Logits `[batch, labels]` from the encoder output.
    pub fn forward(&self, encoded: &EncoderOutput<B>) -> Result<Tensor<B, 2>> {
        let mut x = if self.use_pooler {
            encoded.pooler_output.clone().ok_or_else(|| {
                AdapterError::Input("the head reads the pooler, but the model has none".into())
            })?
        } else {
            let [batch, _, hidden] = encoded.last_hidden_state.dims();
            encoded
                .last_hidden_state
                .clone()
                .slice([0..batch, 0..1])
                .reshape([batch, hidden])
        };
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(self.dropout.forward(x));
            if i < last {
                x = self.activation.forward(x);
            }
        }
        Ok(x)
    }
}
