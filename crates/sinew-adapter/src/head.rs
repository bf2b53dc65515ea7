//! Prediction heads in AdapterHub's layout: `heads.NAME.{1,4,…}` Linear layers of a Sequential
//! `[Dropout, Linear, Activation]* Dropout, Linear`.
//!
//! | `head_type` | reads | loss |
//! |---|---|---|
//! | `classification` | first token (or pooler) | cross-entropy; MSE regression when `num_labels` = 1 |
//! | `multilabel_classification` | first token (or pooler) | binary cross-entropy on logits |
//! | `tagging` | every token | cross-entropy over real tokens (label < 0 is ignored) |

use std::collections::BTreeMap;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;
use sinew_backbone::{BertConfig, EncoderOutput};

use crate::activation::Activation;
use crate::error::{AdapterError, ConfigError, Result};
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
    /// `classification`, `multilabel_classification` or `tagging`.
    pub head_type: String,
    /// Number of classes.
    pub num_labels: usize,
    /// Linear layers in the head (AdapterHub: 2, or 1 for tagging).
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
    /// AdapterHub's default classification head (`add_classification_head`: two layers, tanh,
    /// first token) over `labels`, in index order.
    pub fn classification(labels: &[String]) -> Self {
        Self {
            head_type: "classification".into(),
            num_labels: labels.len(),
            layers: 2,
            activation_function: Activation::Tanh,
            label2id: Some(labels.iter().cloned().zip(0..).collect()),
            use_pooler: false,
            bias: true,
            dropout_prob: None,
        }
    }

    /// `BertForSequenceClassification`'s classifier as a head: one layer on the pooler output
    /// (what a PEFT folder's `modules_to_save: ["classifier"]` holds).
    pub(crate) fn peft_classifier(num_labels: usize) -> Self {
        Self {
            head_type: "classification".into(),
            num_labels,
            layers: 1,
            activation_function: Activation::Tanh,
            label2id: None,
            use_pooler: true,
            bias: true,
            dropout_prob: None,
        }
    }

    /// The `config` object of `head_config.json`, as AdapterHub writes it (a tagging head has
    /// no `bias` or `use_pooler`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("configs serialise");
        if self.head_type == "tagging" {
            if let Some(map) = json.as_object_mut() {
                map.remove("bias");
                map.remove("use_pooler");
            }
        }
        json
    }

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

/// What a head predicts, by `head_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// One class per text (`classification`, `num_labels` > 1).
    Classification,
    /// One value per text (`classification` with `num_labels` = 1).
    Regression,
    /// Any number of classes per text (`multilabel_classification`).
    MultiLabel,
    /// One class per token (`tagging`).
    Tagging,
}

impl HeadKind {
    fn of(config: &HeadConfig) -> Result<Self> {
        Ok(match config.head_type.as_str() {
            "classification" if config.num_labels == 1 => Self::Regression,
            "classification" => Self::Classification,
            "multilabel_classification" => Self::MultiLabel,
            "tagging" => Self::Tagging,
            other => {
                return Err(ConfigError::invalid(
                    "head_type",
                    format!("= \"{other}\" is not supported (classification, multilabel_classification, tagging)"),
                )
                .into())
            }
        })
    }
}

/// A head's output.
#[derive(Debug, Clone)]
pub enum HeadLogits<B: Backend> {
    /// `[batch, labels]` for text-level heads.
    Text(Tensor<B, 2>),
    /// `[batch, seq, labels]` for tagging.
    Tokens(Tensor<B, 3>),
}

/// Gold answers for a head's loss.
#[derive(Debug, Clone)]
pub enum Targets<B: Backend> {
    /// Class index per text, `[batch]`.
    Classes(Tensor<B, 1, Int>),
    /// Value per text, `[batch]` (regression).
    Values(Tensor<B, 1>),
    /// 0/1 per text and label, `[batch, labels]` (multi-label).
    MultiHot(Tensor<B, 2>),
    /// Class index per token, `[batch, seq]`; negative for tokens to ignore (padding).
    Tags(Tensor<B, 2, Int>),
}

/// A prediction head (the name follows AdapterHub's most common head).
#[derive(Module, Debug)]
pub struct ClassificationHead<B: Backend> {
    /// The Linear layers, in order (`heads.NAME.1`, `.4`, …).
    pub layers: Vec<Linear<B>>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    use_pooler: bool,
    #[module(skip)]
    kind: HeadKind,
}

impl<B: FusedOps> ClassificationHead<B> {
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
        let kind = HeadKind::of(config)?;
        if config.num_labels == 0 || config.layers == 0 {
            let key = if config.num_labels == 0 {
                "num_labels"
            } else {
                "layers"
            };
            return Err(ConfigError::invalid(key, "must be at least 1").into());
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
        crate::method::probability("dropout_prob", dropout)?;
        Ok(Self {
            layers,
            dropout: DropoutConfig::new(dropout).init(),
            activation: config.activation_function,
            use_pooler: config.use_pooler,
            kind,
        })
    }

    /// Writes the layers as `heads.NAME.{1,4,…}`.
    pub fn save(&self, name: &str, sink: &mut TensorSink) {
        for (i, layer) in self.layers.iter().enumerate() {
            sink.put_linear(&format!("heads.{name}.{}", 3 * i + 1), layer);
        }
    }

    /// What the head predicts.
    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    /// Logits from the encoder output.
    pub fn forward(&self, encoded: &EncoderOutput<B>) -> Result<HeadLogits<B>> {
        if self.kind == HeadKind::Tagging {
            return Ok(HeadLogits::Tokens(
                self.layers(encoded.last_hidden_state.clone()),
            ));
        }
        let x = if self.use_pooler {
            encoded
                .pooler_output
                .clone()
                .ok_or(AdapterError::NoPooler)?
        } else {
            let [batch, _, hidden] = encoded.last_hidden_state.dims();
            encoded
                .last_hidden_state
                .clone()
                .slice([0..batch, 0..1])
                .reshape([batch, hidden])
        };
        Ok(HeadLogits::Text(self.layers(x)))
    }

    fn layers<const D: usize>(&self, mut x: Tensor<B, D>) -> Tensor<B, D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(self.dropout.forward(x));
            if i < last {
                x = self.activation.forward(x);
            }
        }
        x
    }

    /// The head's loss (mean over texts, or over the real tokens for tagging); the targets must be
    /// of the head's kind.
    pub fn loss(&self, logits: HeadLogits<B>, targets: Targets<B>) -> Result<Tensor<B, 1>> {
        match (self.kind, logits, targets) {
            (HeadKind::Classification, HeadLogits::Text(l), Targets::Classes(t)) => {
                Ok(CrossEntropyLossConfig::new()
                    .init(&l.device())
                    .forward(l, t))
            }
            (HeadKind::Regression, HeadLogits::Text(l), Targets::Values(t)) => {
                let [batch, _] = l.dims();
                Ok((l.reshape([batch]) - t).powi_scalar(2).mean())
            }
            (HeadKind::MultiLabel, HeadLogits::Text(l), Targets::MultiHot(t)) => {
                // log(1 + e^x) − t·x, written to stay finite for large |x|.
                let softplus = l.clone().clamp_min(0.0) + (l.clone().abs().neg().exp() + 1.0).log();
                Ok((softplus - t * l).mean())
            }
            (HeadKind::Tagging, HeadLogits::Tokens(l), Targets::Tags(t)) => {
                let [batch, seq, labels] = l.dims();
                let t = t.reshape([batch * seq]);
                let keep = t.clone().greater_equal_elem(0).float();
                let t = t.clamp_min(0);
                let log_probs = log_softmax(l.reshape([batch * seq, labels]), 1);
                let picked = log_probs
                    .gather(1, t.unsqueeze_dim(1))
                    .reshape([batch * seq]);
                Ok((picked * keep.clone()).sum().neg() / keep.sum().clamp_min(1.0))
            }
            (kind, _, _) => Err(AdapterError::Targets {
                kind: format!("{kind:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    fn head(head_type: &str, num_labels: usize) -> ClassificationHead<B> {
        let model = BertConfig::from_json(
            r#"{"vocab_size":10,"hidden_size":2,"num_hidden_layers":1,"num_attention_heads":1,
            "intermediate_size":4,"max_position_embeddings":8,"hidden_dropout_prob":0.0}"#,
        )
        .unwrap();
        let config: HeadConfig = serde_json::from_value(serde_json::json!({
            "head_type": head_type, "num_labels": num_labels, "layers": 1}))
        .unwrap();
        ClassificationHead::new(&config, &model, &Default::default()).unwrap()
    }

    fn value(t: Tensor<B, 1>) -> f64 {
        f64::from(t.into_scalar())
    }

    /// Each loss against its closed form on hand-picked logits.
    #[test]
    fn losses_match_closed_forms() {
        let d = Default::default();
        // Cross-entropy: −log softmax(l)[t], mean over texts.
        let l = Tensor::<B, 2>::from_floats([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], &d);
        let ce =
            |row: [f64; 3], t: usize| -(row[t] - row.iter().map(|v| v.exp()).sum::<f64>().ln());
        let want = (ce([1.0, 2.0, 0.5], 1) + ce([0.0, 0.0, 3.0], 0)) / 2.0;
        let t = Targets::Classes(Tensor::from_ints([1, 0], &d));
        let got = value(
            head("classification", 3)
                .loss(HeadLogits::Text(l), t)
                .unwrap(),
        );
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");

        // Regression: mean squared error.
        let l = Tensor::<B, 2>::from_floats([[1.5], [-1.0]], &d);
        let t = Targets::Values(Tensor::from_floats([1.0, 1.0], &d));
        let got = value(
            head("classification", 1)
                .loss(HeadLogits::Text(l), t)
                .unwrap(),
        );
        assert!((got - (0.25 + 4.0) / 2.0).abs() < 1e-6, "{got}");

        // Multi-label: mean of −[t·log σ(x) + (1−t)·log(1−σ(x))], with one large logit.
        let xs = [2.0f64, -1.0, 12.0, -0.5];
        let ts = [1.0f64, 0.0, 0.0, 1.0];
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want = xs
            .iter()
            .zip(ts)
            .map(|(&x, t)| -(t * sig(x).ln() + (1.0 - t) * (1.0 - sig(x)).ln()))
            .sum::<f64>()
            / 4.0;
        let l = Tensor::<B, 2>::from_floats([[2.0, -1.0], [12.0, -0.5]], &d);
        let t = Targets::MultiHot(Tensor::from_floats([[1.0, 0.0], [0.0, 1.0]], &d));
        let got = value(
            head("multilabel_classification", 2)
                .loss(HeadLogits::Text(l), t)
                .unwrap(),
        );
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");

        // Tagging: cross-entropy over the tokens whose label is not negative.
        let l = Tensor::<B, 3>::from_floats([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]], &d);
        let ce2 =
            |row: [f64; 2], t: usize| -(row[t] - row.iter().map(|v| v.exp()).sum::<f64>().ln());
        let want = (ce2([1.0, 0.0], 0) + ce2([0.0, 2.0], 0)) / 2.0;
        let t = Targets::Tags(Tensor::from_ints([[0, 0, -100]], &d));
        let got = value(head("tagging", 2).loss(HeadLogits::Tokens(l), t).unwrap());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn mismatched_targets_and_unknown_types_are_errors() {
        let d = Default::default();
        let l = Tensor::<B, 2>::from_floats([[1.0, 2.0]], &d);
        let t = Targets::Values(Tensor::from_floats([1.0], &d));
        assert!(head("classification", 2)
            .loss(HeadLogits::Text(l), t)
            .is_err());
        let model = BertConfig::from_json(
            r#"{"vocab_size":10,"hidden_size":2,"num_hidden_layers":1,"num_attention_heads":1,
            "intermediate_size":4,"max_position_embeddings":8}"#,
        )
        .unwrap();
        let config: HeadConfig =
            serde_json::from_value(serde_json::json!({"head_type": "qa", "num_labels": 2}))
                .unwrap();
        let err = ClassificationHead::<B>::new(&config, &model, &d).unwrap_err();
        assert!(
            matches!(&err, AdapterError::Settings(e) if e.key() == Some("head_type")),
            "{err}"
        );
        assert!(err.to_string().contains("\"qa\""), "{err}");
    }
}
