//! AdapterFusion (Pfeiffer et al., EACL 2021): at every sub-layer where its adapters sit, a
//! learned attention over their outputs, equal to AdapterHub's `BertFusion`.
//!
//! With `q` the query (the last adapter's input, or the sub-layer output with
//! `query_before_ln`), `u_n` the up-projection output of adapter `n` and `r` the residual:
//! `Q = W_q·q + b_q`, `K_n = W_k·u_n + b_k`, `V_n = W_v·u_n` (no bias), `s_n = Q·K_n` — **no**
//! `1/sqrt(d)` — then dropout on the scores, `p = softmax(s / T)` over the adapters and
//! `o = Σ_n p_n·V_n + r`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_adapter::tensors::{TensorFile, TensorSink};
use sinew_backbone::FusedOps;
use sinew_backbone::{kernels, BertConfig, SubLayer};

fn yes() -> bool {
    true
}

/// AdapterHub's `AdapterFusionConfig`, field for field (defaults: the `dynamic` preset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// A learned key projection.
    #[serde(default = "yes")]
    pub key: bool,
    /// A learned query projection.
    #[serde(default = "yes")]
    pub query: bool,
    /// A learned value projection (no bias).
    #[serde(default = "yes")]
    pub value: bool,
    /// Take the query before the pretrained LayerNorm (the raw sub-layer output).
    #[serde(default)]
    pub query_before_ln: bool,
    /// Add `0.01·Σ‖I − W_v‖²` to the training loss.
    #[serde(default = "yes")]
    pub regularization: bool,
    /// Add the residual to the values before the attention instead of to its output.
    #[serde(default)]
    pub residual_before: bool,
    /// Anneal a softmax temperature from 50 down to 1.
    #[serde(default)]
    pub temperature: bool,
    /// Project the values before the weighted sum (else the sum, once): the same numbers either
    /// way (the projection has no bias), and sinew computes the cheaper one.
    #[serde(default = "yes")]
    pub value_before_softmax: bool,
    /// Start `W_v` at the identity (off-diagonal 1e-6).
    #[serde(default = "yes")]
    pub value_initialized: bool,
    /// Dropout on the attention scores (default: the model's attention dropout).
    #[serde(default)]
    pub dropout_prob: Option<f64>,
}

impl FusionConfig {
    /// AdapterHub's `dynamic` preset: query, key and an identity-initialised value, regularised.
    pub fn dynamic() -> Self {
        Self {
            key: true,
            query: true,
            value: true,
            query_before_ln: false,
            regularization: true,
            residual_before: false,
            temperature: false,
            value_before_softmax: true,
            value_initialized: true,
            dropout_prob: None,
        }
    }

    /// AdapterHub's `static` preset: query and key only.
    pub fn static_() -> Self {
        Self {
            value: false,
            regularization: false,
            value_initialized: false,
            ..Self::dynamic()
        }
    }

    /// A preset by AdapterHub's name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "dynamic" => Some(Self::dynamic()),
            "static" => Some(Self::static_()),
            _ => None,
        }
    }
}

/// Where sinew's behaviour departs from AdapterHub's (see the crate docs): `Sinew` is the
/// corrected behaviour, `AdapterHub` reproduces the library's outputs exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantics {
    /// The corrected behaviour (default).
    #[default]
    Sinew,
    /// AdapterHub's behaviour, quirks included.
    AdapterHub,
}

/// What a fusion layer returns.
#[derive(Debug, Clone)]
pub struct FusionOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub hidden: Tensor<B, 3>,
    /// Attention over the adapters, `[batch, seq, adapters]`.
    pub attention: Tensor<B, 3>,
}

/// The fusion at one sub-layer of one layer. Field names follow AdapterHub's keys.
#[derive(Module, Debug)]
pub struct FusionLayer<B: Backend> {
    /// `query` (hidden → hidden).
    pub query: Option<Linear<B>>,
    /// `key` (hidden → hidden).
    pub key: Option<Linear<B>>,
    /// `value` (hidden → hidden, no bias).
    pub value: Option<Linear<B>>,
    /// `dense` (hidden → 1): built by AdapterHub when neither query, key nor value is, never used.
    pub dense: Option<Linear<B>>,
    dropout: Dropout,
    #[module(skip)]
    config: FusionConfig,
}

impl<B: FusedOps> FusionLayer<B> {
    /// A new layer, initialised as AdapterHub does (normal(0, 0.02) weights, zero biases; an
    /// identity value with `value_initialized`).
    pub fn new(config: &FusionConfig, model: &BertConfig, device: &B::Device) -> Self {
        let h = model.hidden_size;
        let linear = |d_out: usize, bias: bool| {
            let mut l = LinearConfig::new(h, d_out)
                .with_bias(bias)
                .init::<B>(device);
            l.weight = Param::from_tensor(Tensor::random(
                [h, d_out],
                Distribution::Normal(0.0, 0.02),
                device,
            ));
            l.bias = bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device)));
            l
        };
        let mut value = config.value.then(|| linear(h, false));
        if let (Some(v), true) = (&mut value, config.value_initialized) {
            let identity = Tensor::<B, 2>::eye(h, device);
            let off = (identity.clone().neg() + 1.0) * 1e-6;
            v.weight = Param::from_tensor(identity + off);
        }
        let none = !config.query && !config.key && !config.value;
        Self {
            query: config.query.then(|| linear(h, true)),
            key: config.key.then(|| linear(h, true)),
            value,
            dense: none.then(|| linear(1, true)),
            dropout: Self::dropout(config, model),
            config: config.clone(),
        }
    }

    fn dropout(config: &FusionConfig, model: &BertConfig) -> Dropout {
        let p = config
            .dropout_prob
            .filter(|&p| p > 0.0)
            .unwrap_or(model.attention_probs_dropout_prob);
        DropoutConfig::new(p).init()
    }

    /// Reads the layer under `prefix` (`…adapter_fusion_layer.NAME`).
    pub fn load(
        config: &FusionConfig,
        model: &BertConfig,
        file: &mut TensorFile,
        prefix: &str,
        device: &B::Device,
    ) -> sinew_adapter::Result<Self> {
        let h = model.hidden_size;
        let mut take = |name: &str, on: bool, d_out: usize, bias: bool| {
            on.then(|| file.take_linear(&format!("{prefix}.{name}"), h, d_out, bias, device))
                .transpose()
        };
        let none = !config.query && !config.key && !config.value;
        Ok(Self {
            query: take("query", config.query, h, true)?,
            key: take("key", config.key, h, true)?,
            value: take("value", config.value, h, false)?,
            dense: take("dense", none, 1, true)?,
            dropout: Self::dropout(config, model),
            config: config.clone(),
        })
    }

    /// Writes the layer under `prefix`.
    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        for (name, linear) in [
            ("query", &self.query),
            ("key", &self.key),
            ("value", &self.value),
            ("dense", &self.dense),
        ] {
            if let Some(linear) = linear {
                sink.put_linear(&format!("{prefix}.{name}"), linear);
            }
        }
    }

    /// `query`, `residual` `[batch, seq, hidden]`, `ups` `[batch, seq, adapters, hidden]`.
    ///
    /// `BertFusion`'s products, reordered: with `K_n = u_n·W_k + b_k`,
    /// `Q·K_n = u_n·(Q·W_kᵀ) + Q·b_k`, and `Σ_n p_n·(V_n·W_v) = (Σ_n p_n·V_n)·W_v` — one
    /// hidden × hidden product per token for the keys and one for the values instead of one per
    /// adapter each (`value_before_softmax` is the same number either way).
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        ups: Tensor<B, 4>,
        residual: Tensor<B, 3>,
        temperature: f64,
        semantics: Semantics,
    ) -> FusionOutput<B> {
        let n = ups.dims()[2];
        let c = &self.config;
        let mut keys = ups.clone();
        let mut values = ups;
        if c.residual_before {
            let r = residual.clone().unsqueeze_dim::<4>(2).repeat_dim(2, n);
            values = values + r;
            // AdapterHub adds the residual in place to the one tensor it passes as keys and values.
            if semantics == Semantics::AdapterHub {
                keys = values.clone();
            }
        }
        let q = match &self.query {
            Some(l) => kernels::linear(l, query),
            None => query,
        };
        let (probe, offset) = match &self.key {
            Some(l) => {
                let probe = kernels::project(q.clone(), l.weight.val().transpose(), None);
                let offset = l
                    .bias
                    .as_ref()
                    .map(|b| (q * b.val().unsqueeze::<3>()).sum_dim(2));
                (probe, offset)
            }
            None => (q, None),
        };
        // [b, s, n, h] · [b, s, h] → [b, s, n]
        let mut scores = kernels::dots(keys, probe);
        if let Some(offset) = offset {
            scores = scores + offset;
        }
        let scores = self.dropout.forward(scores);
        let probs = softmax(scores / temperature, 2);
        // [b, s, n] · [b, s, n, h] → [b, s, h]
        let mixed = kernels::mix(probs.clone(), values);
        let mut context = match &self.value {
            Some(l) => kernels::linear(l, mixed),
            None => mixed,
        };
        if !c.residual_before {
            context = context + residual;
        }
        FusionOutput {
            hidden: context,
            attention: probs,
        }
    }
}

/// A fusion across the whole model: one optional [`FusionLayer`] per layer and sub-layer.
#[derive(Module, Debug)]
pub struct AdapterFusion<B: Backend> {
    /// `…layer.N.attention.output.adapter_fusion_layer.NAME`, per layer.
    pub attention: Vec<Option<FusionLayer<B>>>,
    /// `…layer.N.output.adapter_fusion_layer.NAME`, per layer.
    pub output: Vec<Option<FusionLayer<B>>>,
    /// Softmax temperature: 50 annealed to 1 with `temperature`, else 1.
    #[module(skip)]
    temperature: f64,
    /// Read from a folder AdapterHub saved: its outputs must be AdapterHub's, quirks included.
    #[module(skip)]
    pub from_adapterhub: bool,
}

/// Key location of a sub-layer in AdapterHub files.
pub fn location(site: SubLayer) -> &'static str {
    match site {
        SubLayer::Attention => "attention.output",
        SubLayer::FeedForward => "output",
    }
}

impl<B: FusedOps> AdapterFusion<B> {
    /// Builds a layer at each `(layer, site)` for which `placed` says the fused adapters sit there.
    pub fn build(
        config: &FusionConfig,
        model: &BertConfig,
        placed: impl Fn(usize, SubLayer) -> bool,
        mut make: impl FnMut(usize, SubLayer) -> sinew_adapter::Result<FusionLayer<B>>,
    ) -> sinew_adapter::Result<Self> {
        let mut per_site = |site: SubLayer| {
            (0..model.num_hidden_layers)
                .map(|l| placed(l, site).then(|| make(l, site)).transpose())
                .collect::<sinew_adapter::Result<Vec<_>>>()
        };
        Ok(Self {
            attention: per_site(SubLayer::Attention)?,
            output: per_site(SubLayer::FeedForward)?,
            temperature: if config.temperature { 50.0 } else { 1.0 },
            from_adapterhub: false,
        })
    }

    /// The fusion layer at `site` of `layer`, if any.
    pub fn at(&self, layer: usize, site: SubLayer) -> Option<&FusionLayer<B>> {
        let sites = match site {
            SubLayer::Attention => &self.attention,
            SubLayer::FeedForward => &self.output,
        };
        sites.get(layer).and_then(Option::as_ref)
    }

    /// The behaviour to run with: AdapterHub's for a fusion AdapterHub saved, else `chosen`.
    pub fn semantics(&self, chosen: Semantics) -> Semantics {
        if self.from_adapterhub {
            Semantics::AdapterHub
        } else {
            chosen
        }
    }

    /// The current softmax temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// One annealing step (AdapterHub: T ← max(T − T₀/1000, 1) with T₀ = 50). sinew calls it once
    /// per optimizer step; AdapterHub does on every forward call, in eval too.
    pub(crate) fn anneal(&mut self, config: &FusionConfig) {
        if config.temperature {
            self.temperature = (self.temperature - 0.05).max(1.0);
        }
    }

    /// `0.01·Σ‖I − W_v‖²` over the value projections that are trained (AdapterHub's
    /// regularisation, which its trainer adds one step late and without reading the flag).
    pub fn regularization_loss(&self) -> Option<Tensor<B, 1>> {
        self.attention
            .iter()
            .chain(&self.output)
            .flatten()
            .filter_map(|l| l.value.as_ref())
            .filter(|v| v.weight.is_require_grad())
            .map(|v| {
                let w = v.weight.val();
                let [h, _] = w.dims();
                (Tensor::<B, 2>::eye(h, &w.device()) - w)
                    .powi_scalar(2)
                    .sum()
                    .mul_scalar(0.01)
            })
            .reduce(|a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    // Autodiff: the regularisation counts only value projections that are trained.
    type B = Autodiff<NdArray>;

    fn model() -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
            "intermediate_size": 8, "vocab_size": 10, "max_position_embeddings": 8,
            "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0,
        }))
        .unwrap()
    }

    /// The dynamic layer against the formula computed by hand (no 1/sqrt(d), value without bias).
    #[test]
    fn dynamic_layer_is_the_formula() {
        let device = Default::default();
        let layer = FusionLayer::<B>::new(&FusionConfig::dynamic(), &model(), &device);
        let data = |seed: u64, shape: [usize; 4]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| (((i as u64 * 37 + seed * 11) % 17) as f32 - 8.0) / 8.0)
                .collect();
            Tensor::<B, 4>::from_data(TensorData::new(v, shape), &device)
        };
        let query = data(1, [1, 2, 1, 4]).reshape([1, 2, 4]);
        let residual = data(2, [1, 2, 1, 4]).reshape([1, 2, 4]);
        let ups = data(3, [1, 2, 3, 4]);
        let out = layer.forward(
            query.clone(),
            ups.clone(),
            residual.clone(),
            1.0,
            Semantics::Sinew,
        );

        let lin = |l: &Linear<B>, x: &[f32]| -> Vec<f32> {
            let w = l.weight.val().into_data().to_vec::<f32>().unwrap(); // [in, out]
            let b = l
                .bias
                .as_ref()
                .map(|b| b.val().into_data().to_vec::<f32>().unwrap());
            (0..4)
                .map(|o| {
                    (0..4).map(|i| x[i] * w[i * 4 + o]).sum::<f32>()
                        + b.as_ref().map_or(0.0, |b| b[o])
                })
                .collect()
        };
        let q = query.into_data().to_vec::<f32>().unwrap();
        let r = residual.into_data().to_vec::<f32>().unwrap();
        let u = ups.into_data().to_vec::<f32>().unwrap();
        let got = out.hidden.into_data().to_vec::<f32>().unwrap();
        let att = out.attention.into_data().to_vec::<f32>().unwrap();
        for t in 0..2 {
            let qt = lin(layer.query.as_ref().unwrap(), &q[t * 4..t * 4 + 4]);
            let scores: Vec<f32> = (0..3)
                .map(|n| {
                    let un = &u[(t * 3 + n) * 4..(t * 3 + n) * 4 + 4];
                    let k = lin(layer.key.as_ref().unwrap(), un);
                    qt.iter().zip(&k).map(|(a, b)| a * b).sum()
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f32 = e.iter().sum();
            for n in 0..3 {
                assert!((att[t * 3 + n] - e[n] / z).abs() < 1e-5);
            }
            for o in 0..4 {
                let mut want = r[t * 4 + o];
                for n in 0..3 {
                    let un = &u[(t * 3 + n) * 4..(t * 3 + n) * 4 + 4];
                    want += e[n] / z * lin(layer.value.as_ref().unwrap(), un)[o];
                }
                assert!((got[t * 4 + o] - want).abs() < 1e-5, "{t},{o}");
            }
        }
    }

    /// The regularisation is 0.01·‖I − W_v‖², near zero at the identity start.
    #[test]
    fn regularization_is_the_closed_form() {
        let device = Default::default();
        let config = FusionConfig::dynamic();
        let fusion = AdapterFusion::<B>::build(
            &config,
            &model(),
            |_, s| s == SubLayer::FeedForward,
            |_, _| {
                let mut l = FusionLayer::new(&config, &model(), &device);
                let v = l.value.as_mut().unwrap();
                v.weight = Param::from_tensor(Tensor::<B, 2>::eye(4, &device) * 3.0);
                Ok(l)
            },
        )
        .unwrap();
        // (3 − 1)² on 4 diagonal entries, times 0.01.
        let loss = fusion.regularization_loss().unwrap().into_scalar();
        assert!((loss - 0.16).abs() < 1e-6, "{loss}");
    }
}
