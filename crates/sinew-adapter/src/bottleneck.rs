//! Bottleneck adapters: `seq_bn` (Pfeiffer), `double_seq_bn` (Houlsby), `par_bn`, `scaled_par_bn`.
//!
//! One [`Bottleneck`] sits at the end of a sub-layer (attention: `mh_adapter`, FFN:
//! `output_adapter`) and acts through [`sinew_backbone::Hooks::sublayer_end`], reproducing
//! AdapterHub's `Adapter`/`ParallelAdapter` `pre_forward` → `forward` → `post_forward`:
//! z = scaling · up(act(down(x))), with the residual and the pretrained LayerNorm placed as the
//! config's `original_ln_before`, `residual_before_ln`, `ln_before/after` and `original_ln_after` say.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;
use sinew_backbone::{kernels, BertConfig, Hooks, SubLayer};
use sinew_backbone::{LayerNorm, LayerNormConfig};

use crate::activation::Activation;
use crate::error::ConfigError;
use crate::method::{Composes, Method, MethodSpec};
use crate::tensors::{TensorFile, TensorSink};

/// `reduction_factor`: one number, or a map from layer index (and `"default"`) to a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReductionFactor {
    /// The same factor at every layer.
    Uniform(f64),
    /// Per layer, e.g. `{"0": 8, "default": 16}`.
    PerLayer(BTreeMap<String, f64>),
}

impl ReductionFactor {
    /// The factor at `layer`.
    pub fn at(&self, layer: usize) -> Result<f64, ConfigError> {
        match self {
            Self::Uniform(f) => Ok(*f),
            Self::PerLayer(map) => map
                .get(&layer.to_string())
                .or_else(|| map.get("default"))
                .copied()
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "reduction_factor",
                        format!("has no entry for layer {layer} and no \"default\""),
                    )
                }),
        }
    }
}

/// The learned kinds of `scaling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnedScaling {
    /// One learned scalar, initialised to 1.
    Learned,
    /// One learned value per channel, initialised to 1.
    Channel,
}

/// `scaling`: a fixed number, `"learned"` or `"channel"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scaling {
    /// A fixed factor.
    Fixed(f64),
    /// A learned factor.
    Learned(LearnedScaling),
}

/// The `"post_add"` value of `residual_before_ln`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostAdd {
    /// The residual is taken after adding the sub-layer input, before the LayerNorm.
    PostAdd,
}

/// `residual_before_ln`: `true`, `false` or `"post_add"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResidualBeforeLn {
    /// `true`: the adapter's residual is the sub-layer output; `false`: the normalised sum.
    Flag(bool),
    /// `"post_add"`.
    PostAdd(PostAdd),
}

/// Weight initialisation of a new adapter (`init_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnInit {
    /// N(0, 0.02) weights, zero biases.
    Bert,
    /// Kaiming-uniform down projection, zero up projection (the adapter starts as identity).
    MamAdapter,
    /// Truncated N(0, 0.01) in ±0.02 for both projections, zero biases.
    Houlsby,
}

fn yes() -> bool {
    true
}
fn default_residual() -> ResidualBeforeLn {
    ResidualBeforeLn::Flag(true)
}
fn default_scaling() -> Scaling {
    Scaling::Fixed(1.0)
}
fn default_init() -> BnInit {
    BnInit::Bert
}

/// AdapterHub's `BnConfig`, field for field (phm/Compacter and invertible adapters are not
/// supported and rejected when switched on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BnConfig {
    /// An adapter after the attention sub-layer.
    pub mh_adapter: bool,
    /// An adapter after the feed-forward sub-layer.
    pub output_adapter: bool,
    /// hidden / bottleneck width.
    pub reduction_factor: ReductionFactor,
    /// Non-linearity between the projections.
    pub non_linearity: Activation,
    /// Add the sub-layer input and apply the pretrained LayerNorm before the adapter.
    #[serde(default)]
    pub original_ln_before: bool,
    /// Add the sub-layer input and apply the pretrained LayerNorm after the adapter.
    #[serde(default = "yes")]
    pub original_ln_after: bool,
    /// A new LayerNorm on the adapter's input.
    #[serde(default)]
    pub ln_before: bool,
    /// A new LayerNorm on the adapter's output.
    #[serde(default)]
    pub ln_after: bool,
    /// How a new adapter is initialised.
    #[serde(default = "default_init")]
    pub init_weights: BnInit,
    /// Parallel adapter (`par_bn`): reads the sub-layer input, its output is added.
    #[serde(default)]
    pub is_parallel: bool,
    /// Factor on the up projection.
    #[serde(default = "default_scaling")]
    pub scaling: Scaling,
    /// A learned sigmoid gate on the adapter output.
    #[serde(default)]
    pub use_gating: bool,
    /// Where the adapter's residual is taken.
    #[serde(default = "default_residual")]
    pub residual_before_ln: ResidualBeforeLn,
    /// Add the residual before `ln_after` rather than after it.
    #[serde(default)]
    pub adapter_residual_before_ln: bool,
    /// Layers without an adapter.
    #[serde(default)]
    pub leave_out: Vec<usize>,
    /// Dropout on the adapter output while training.
    #[serde(default)]
    pub dropout: f64,
}

impl BnConfig {
    /// `seq_bn` (Pfeiffer): one adapter after the FFN, ReLU, reduction 16.
    pub fn seq_bn() -> Self {
        Self {
            mh_adapter: false,
            output_adapter: true,
            reduction_factor: ReductionFactor::Uniform(16.0),
            non_linearity: Activation::Relu,
            original_ln_before: true,
            original_ln_after: true,
            ln_before: false,
            ln_after: false,
            init_weights: BnInit::Bert,
            is_parallel: false,
            scaling: Scaling::Fixed(1.0),
            use_gating: false,
            residual_before_ln: ResidualBeforeLn::Flag(true),
            adapter_residual_before_ln: false,
            leave_out: vec![],
            dropout: 0.0,
        }
    }

    /// `double_seq_bn` (Houlsby): adapters after attention and FFN, swish.
    pub fn double_seq_bn() -> Self {
        Self {
            mh_adapter: true,
            original_ln_before: false,
            non_linearity: Activation::Silu,
            ..Self::seq_bn()
        }
    }

    /// `par_bn`: a parallel adapter after the FFN, scaling 4, reduction 2.
    pub fn par_bn() -> Self {
        Self {
            original_ln_before: false,
            reduction_factor: ReductionFactor::Uniform(2.0),
            init_weights: BnInit::MamAdapter,
            is_parallel: true,
            scaling: Scaling::Fixed(4.0),
            ..Self::seq_bn()
        }
    }

    /// `scaled_par_bn`: `par_bn` with a learned scaling.
    pub fn scaled_par_bn() -> Self {
        Self {
            scaling: Scaling::Learned(LearnedScaling::Learned),
            ..Self::par_bn()
        }
    }

    /// Whether a new bottleneck goes at `site` of `layer`.
    pub fn placed_at(&self, layer: usize, site: SubLayer) -> bool {
        !self.leave_out.contains(&layer)
            && match site {
                SubLayer::Attention => self.mh_adapter,
                SubLayer::FeedForward => self.output_adapter,
            }
    }

    /// Bottleneck width at `layer` (AdapterHub: `int(hidden // factor)`, at least 1).
    pub fn width(&self, hidden: usize, layer: usize) -> Result<usize, ConfigError> {
        let factor = self.reduction_factor.at(layer)?;
        if factor <= 0.0 {
            return Err(ConfigError::invalid(
                "reduction_factor",
                format!("= {factor} must be positive"),
            ));
        }
        // AdapterHub allows factors below 1 (a wider bottleneck); past 64× the hidden size it is
        // a broken config, not an adapter (and would overflow the weights' shapes).
        if factor < 1.0 / 64.0 {
            return Err(ConfigError::invalid(
                "reduction_factor",
                format!("= {factor} is below 1/64"),
            ));
        }
        Ok(((hidden as f64 / factor).floor() as usize).max(1))
    }
}

impl MethodSpec for BnConfig {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![
            ("seq_bn", Self::seq_bn()),
            ("double_seq_bn", Self::double_seq_bn()),
            ("par_bn", Self::par_bn()),
            ("scaled_par_bn", Self::scaled_par_bn()),
        ]
    }

    const ARCHITECTURE: &'static str = "bottleneck";

    fn summary(&self) -> String {
        format!(
            "bottleneck ({}, {}, reduction {}, {}{})",
            if self.is_parallel {
                "parallel"
            } else {
                "sequential"
            },
            match (self.mh_adapter, self.output_adapter) {
                (true, true) => "after attention and FFN",
                (true, false) => "after attention",
                _ => "after FFN",
            },
            serde_json::to_string(&self.reduction_factor).expect("numbers serialise"),
            String::from(self.non_linearity),
            if self.use_gating { ", gated" } else { "" },
        )
    }
    /// Compacter (phm), invertible and cross adapters: accepted at their defaults only.
    const WRITTEN_DEFAULTS: &'static [(&'static str, &'static str)] = &[
        ("phm_layer", "false"),
        ("phm_dim", "4"),
        ("factorized_phm_W", "true"),
        ("shared_W_phm", "false"),
        ("shared_phm_rule", "true"),
        ("factorized_phm_rule", "false"),
        ("phm_c_init", "\"normal\""),
        ("phm_init_range", "0.0001"),
        ("learn_phm", "true"),
        ("hypercomplex_nonlinearity", "\"glorot-uniform\""),
        ("phm_rank", "1"),
        ("phm_bias", "true"),
        ("inv_adapter", "null"),
        ("inv_adapter_reduction_factor", "null"),
        ("cross_adapter", "false"),
        ("stochastic_depth", "0.0"),
    ];

    /// Rejects the AdapterHub options sinew does not implement, naming the key.
    fn check_supported(
        raw: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ConfigError> {
        let off = |key: &str, default: serde_json::Value| {
            raw.get(key).is_some_and(|v| !v.is_null() && *v != default)
        };
        for (key, default) in [
            ("phm_layer", serde_json::Value::Bool(false)),
            ("cross_adapter", serde_json::Value::Bool(false)),
            ("inv_adapter", serde_json::Value::Null),
            ("stochastic_depth", serde_json::json!(0.0)),
        ] {
            if off(key, default) {
                return Err(ConfigError::unsupported(key, &raw[key]));
            }
        }
        Ok(())
    }

    fn validate(&self, model: Option<&BertConfig>) -> Result<(), ConfigError> {
        crate::method::probability("dropout", self.dropout)?;
        if let Some(model) = model {
            for layer in (0..model.num_hidden_layers).filter(|l| !self.leave_out.contains(l)) {
                self.width(model.hidden_size, layer)?;
            }
        }
        Ok(())
    }

    /// AdapterHub marks bottleneck configs by the absence of `architecture`.
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("configs serialise")
    }
}

/// Epsilon of the adapter's own LayerNorms: AdapterHub builds them with PyTorch's default.
const ADAPTER_LN_EPS: f64 = 1e-5;

/// What a bottleneck does besides its weights; copied into every site.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Behaviour {
    activation: Activation,
    fixed_scaling: f64,
    original_ln_before: bool,
    original_ln_after: bool,
    is_parallel: bool,
    residual_before_ln: ResidualBeforeLn,
    adapter_residual_before_ln: bool,
}

/// One bottleneck adapter at one sub-layer of one layer. Field names follow AdapterHub's keys.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// `adapter_norm_before` (`ln_before`).
    pub adapter_norm_before: Option<LayerNorm<B>>,
    /// `adapter_down.0` (`adapter_down.1` after `ln_before`): hidden → width.
    pub adapter_down: Linear<B>,
    /// `adapter_up`: width → hidden.
    pub adapter_up: Linear<B>,
    /// `adapter_norm_after` (`ln_after`).
    pub adapter_norm_after: Option<LayerNorm<B>>,
    /// `gate` (`use_gating`): hidden → 1.
    pub gate: Option<Linear<B>>,
    /// `scaling` when learned: `[1]` or `[hidden]`.
    pub scaling: Option<Param<Tensor<B, 1>>>,
    dropout: Dropout,
    #[module(skip)]
    behaviour: Behaviour,
}

impl<B: FusedOps> Bottleneck<B> {
    /// A newly initialised bottleneck of `width` for a `hidden`-wide model.
    pub fn new(config: &BnConfig, hidden: usize, width: usize, device: &B::Device) -> Self {
        let mut down = LinearConfig::new(hidden, width).init::<B>(device);
        let mut up = LinearConfig::new(width, hidden).init::<B>(device);
        let normal = |shape: [usize; 2], std: f64| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device)
        };
        match config.init_weights {
            BnInit::Bert => {
                down.weight = Param::from_tensor(normal([hidden, width], 0.02));
                up.weight = Param::from_tensor(normal([width, hidden], 0.02));
            }
            // Burn's default Linear init is PyTorch's kaiming-uniform (a = √5).
            BnInit::MamAdapter => {
                up.weight = Param::from_tensor(Tensor::zeros([width, hidden], device))
            }
            BnInit::Houlsby => {
                down.weight = Param::from_tensor(truncated_normal([hidden, width], 0.01, device));
                up.weight = Param::from_tensor(truncated_normal([width, hidden], 0.01, device));
            }
        }
        for linear in [&mut down, &mut up] {
            let out = linear.weight.dims()[1];
            linear.bias = Some(Param::from_tensor(Tensor::zeros([out], device)));
        }
        let norm = || {
            LayerNormConfig::new(hidden)
                .with_epsilon(ADAPTER_LN_EPS)
                .init(device)
        };
        let gate = config.use_gating.then(|| {
            let mut gate = LinearConfig::new(hidden, 1).init::<B>(device);
            gate.weight = Param::from_tensor(normal([hidden, 1], 0.02));
            gate.bias = Some(Param::from_tensor(Tensor::zeros([1], device)));
            gate
        });
        let scaling = match config.scaling {
            Scaling::Fixed(_) => None,
            Scaling::Learned(LearnedScaling::Learned) => {
                Some(Param::from_tensor(Tensor::ones([1], device)))
            }
            Scaling::Learned(LearnedScaling::Channel) => {
                Some(Param::from_tensor(Tensor::ones([hidden], device)))
            }
        };
        Self {
            adapter_norm_before: config.ln_before.then(norm),
            adapter_down: down,
            adapter_up: up,
            adapter_norm_after: config.ln_after.then(norm),
            gate,
            scaling,
            dropout: DropoutConfig::new(config.dropout).init(),
            behaviour: behaviour(config),
        }
    }

    /// Reads the bottleneck under `prefix` (e.g. `bert.encoder.layer.0.output.adapters.a`).
    pub fn load(
        config: &BnConfig,
        file: &mut TensorFile,
        prefix: &str,
        hidden: usize,
        width: usize,
        device: &B::Device,
    ) -> crate::Result<Self> {
        let mut site = Self::new(config, hidden, width, device);
        let eps = ADAPTER_LN_EPS;
        let down_index = if config.ln_before {
            site.adapter_norm_before = Some(file.take_layer_norm(
                &format!("{prefix}.adapter_down.0"),
                hidden,
                eps,
                device,
            )?);
            // The same LayerNorm is also registered under its attribute name.
            for p in ["weight", "bias"] {
                let _ = file.take(&format!("{prefix}.adapter_norm_before.{p}"), &[hidden]);
            }
            1
        } else {
            0
        };
        site.adapter_down = file.take_linear(
            &format!("{prefix}.adapter_down.{down_index}"),
            hidden,
            width,
            true,
            device,
        )?;
        site.adapter_up =
            file.take_linear(&format!("{prefix}.adapter_up"), width, hidden, true, device)?;
        if config.ln_after {
            site.adapter_norm_after = Some(file.take_layer_norm(
                &format!("{prefix}.adapter_norm_after"),
                hidden,
                eps,
                device,
            )?);
        }
        if config.use_gating {
            site.gate =
                Some(file.take_linear(&format!("{prefix}.gate"), hidden, 1, true, device)?);
        }
        if let Scaling::Learned(kind) = config.scaling {
            let n = if kind == LearnedScaling::Channel {
                hidden
            } else {
                1
            };
            let raw = file.take(&format!("{prefix}.scaling"), &[n])?;
            site.scaling = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(raw.values, [n]),
                device,
            )));
        }
        Ok(site)
    }

    /// Writes the weights under `prefix` with AdapterHub's names.
    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        let down = match &self.adapter_norm_before {
            Some(norm) => {
                // AdapterHub registers this LayerNorm twice: in the Sequential and by name.
                sink.put_layer_norm(&format!("{prefix}.adapter_down.0"), norm);
                sink.put_layer_norm(&format!("{prefix}.adapter_norm_before"), norm);
                1
            }
            None => 0,
        };
        sink.put_linear(&format!("{prefix}.adapter_down.{down}"), &self.adapter_down);
        sink.put_linear(&format!("{prefix}.adapter_up"), &self.adapter_up);
        if let Some(norm) = &self.adapter_norm_after {
            sink.put_layer_norm(&format!("{prefix}.adapter_norm_after"), norm);
        }
        if let Some(gate) = &self.gate {
            sink.put_linear(&format!("{prefix}.gate"), gate);
        }
        if let Some(scaling) = &self.scaling {
            sink.put(format!("{prefix}.scaling"), scaling.val());
        }
    }

    /// The adapter at a sub-layer end: `output` is the sub-layer's (dense + dropout), `residual`
    /// its input; all `[batch, seq, hidden]`.
    pub fn sublayer_end(
        &self,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        let (x, adapter_residual) = self.pre_forward(output.clone(), residual.clone(), layer_norm);
        let z = self.forward(x, adapter_residual);
        self.post_forward(z, output, residual, layer_norm)
    }

    /// AdapterHub's `pre_forward`: the adapter input and its residual.
    pub fn pre_forward(
        &self,
        hidden: Tensor<B, 3>,
        input: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let b = &self.behaviour;
        if b.is_parallel {
            return (input.clone(), input);
        }
        let mut residual = hidden.clone();
        let mut hidden = hidden;
        if b.original_ln_before {
            if b.residual_before_ln == ResidualBeforeLn::PostAdd(PostAdd::PostAdd) {
                hidden = hidden + input;
                residual = hidden.clone();
                hidden = layer_norm.forward(hidden);
            } else {
                hidden = layer_norm.forward_add(hidden, input);
            }
        }
        if b.residual_before_ln == ResidualBeforeLn::Flag(false) {
            residual = hidden.clone();
        }
        (hidden, residual)
    }

    /// AdapterHub's `forward`: scaling · up(act(down(x))), gated, with the adapter residual.
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with_up(x, residual).0
    }

    /// AdapterFusion's query at this adapter: the sub-layer input for a parallel adapter, else
    /// the raw sub-layer `output` with `query_before_ln`, or the adapter's input `x`.
    pub fn fusion_query(
        &self,
        output: Tensor<B, 3>,
        x: Tensor<B, 3>,
        input: Tensor<B, 3>,
        query_before_ln: bool,
    ) -> Tensor<B, 3> {
        match (self.behaviour.is_parallel, query_before_ln) {
            (true, _) => input,
            (false, true) => output,
            (false, false) => x,
        }
    }

    /// [`forward`](Self::forward), and the scaled up-projection (before dropout, gate and
    /// residual) that AdapterFusion attends over.
    pub fn forward_with_up(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let b = &self.behaviour;
        let inner = match &self.adapter_norm_before {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        let down = b
            .activation
            .forward(kernels::linear(&self.adapter_down, inner));
        let up = kernels::linear(&self.adapter_up, down);
        let up = match &self.scaling {
            Some(s) => up * s.val().unsqueeze::<3>(),
            None => up * b.fixed_scaling,
        };
        let mut out = kernels::dropout(up.clone(), self.dropout.prob);
        if let Some(gate) = &self.gate {
            // Mean of the per-token gates over the sequence: one gate per example.
            let g = sigmoid(kernels::linear(gate, x)).mean_dim(1);
            out = out * g;
        }
        if b.is_parallel {
            let out = match &self.adapter_norm_after {
                Some(norm) => norm.forward(out),
                None => out,
            };
            return (out, up);
        }
        if b.adapter_residual_before_ln {
            out = out + residual.clone();
        }
        if let Some(norm) = &self.adapter_norm_after {
            out = norm.forward(out);
        }
        if !b.adapter_residual_before_ln {
            out = out + residual;
        }
        (out, up)
    }

    /// AdapterHub's `post_forward`: the pretrained residual + LayerNorm, if configured.
    pub fn post_forward(
        &self,
        hidden: Tensor<B, 3>,
        sublayer_output: Tensor<B, 3>,
        input: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        let b = &self.behaviour;
        let hidden = if b.is_parallel {
            hidden + sublayer_output
        } else {
            hidden
        };
        if b.original_ln_after {
            layer_norm.forward_add(hidden, input)
        } else {
            hidden
        }
    }
}

fn behaviour(config: &BnConfig) -> Behaviour {
    Behaviour {
        activation: config.non_linearity,
        fixed_scaling: match config.scaling {
            Scaling::Fixed(s) => s,
            Scaling::Learned(_) => 1.0,
        },
        original_ln_before: config.original_ln_before,
        original_ln_after: config.original_ln_after,
        is_parallel: config.is_parallel,
        residual_before_ln: config.residual_before_ln,
        adapter_residual_before_ln: config.adapter_residual_before_ln,
    }
}

/// N(0, std) truncated to ±2·std (PyTorch's `trunc_normal_` with a = -2std, b = 2std), by redrawing.
fn truncated_normal<B: FusedOps>(shape: [usize; 2], std: f64, device: &B::Device) -> Tensor<B, 2> {
    let draw = || Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device);
    let mut x = draw();
    // Each round leaves 4.6 % of the outliers; 20 rounds leave none in practice.
    for _ in 0..20 {
        let outside = x.clone().abs().greater_elem(2.0 * std);
        x = x.mask_where(outside, draw());
    }
    x.clamp(-2.0 * std, 2.0 * std)
}

/// A bottleneck adapter across the whole model: one optional [`Bottleneck`] per layer and site.
#[derive(Module, Debug)]
pub struct BottleneckAdapter<B: Backend> {
    /// `…layer.N.attention.output.adapters.NAME`, per layer.
    pub attention: Vec<Option<Bottleneck<B>>>,
    /// `…layer.N.output.adapters.NAME`, per layer.
    pub output: Vec<Option<Bottleneck<B>>>,
}

impl<B: FusedOps> Method<B> for BottleneckAdapter<B> {
    type Config = BnConfig;

    fn new(config: &BnConfig, model: &BertConfig, device: &B::Device) -> crate::Result<Self> {
        Self::build(config, model, |_, _, width| {
            Ok(Bottleneck::new(config, model.hidden_size, width, device))
        })
    }

    fn load(
        config: &BnConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> crate::Result<Self> {
        let root = model_prefix(model);
        Self::build(config, model, |site, layer, width| {
            let location = match site {
                SubLayer::Attention => "attention.output",
                SubLayer::FeedForward => "output",
            };
            let prefix = format!("{root}.encoder.layer.{layer}.{location}.adapters.{name}");
            Bottleneck::load(config, file, &prefix, model.hidden_size, width, device)
        })
    }

    fn unchanged_below(&self) -> usize {
        crate::method::first_site_layer(
            [&self.attention, &self.output]
                .into_iter()
                .flat_map(|sites| sites.iter().enumerate())
                .map(|(layer, b)| (layer, b.as_ref().map(|b| b.gate.is_some()))),
        )
    }

    /// A gate averages over the sequence.
    fn mixes_positions(&self) -> bool {
        [&self.attention, &self.output]
            .into_iter()
            .flatten()
            .flatten()
            .any(|b| b.gate.is_some())
    }

    fn composes(&self) -> Composes {
        Composes::Bottleneck
    }

    fn bottleneck_at(&self, layer: usize, site: SubLayer) -> Option<&Bottleneck<B>> {
        self.at(layer, site)
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        let root = model_prefix(model);
        for (location, sites) in [
            ("attention.output", &self.attention),
            ("output", &self.output),
        ] {
            for (layer, site) in sites.iter().enumerate() {
                if let Some(site) = site {
                    site.save(
                        sink,
                        &format!("{root}.encoder.layer.{layer}.{location}.adapters.{name}"),
                    );
                }
            }
        }
    }
}

impl<B: FusedOps> BottleneckAdapter<B> {
    fn build(
        config: &BnConfig,
        model: &BertConfig,
        mut make: impl FnMut(SubLayer, usize, usize) -> crate::Result<Bottleneck<B>>,
    ) -> crate::Result<Self> {
        let mut per_site = |site: SubLayer| -> crate::Result<Vec<Option<Bottleneck<B>>>> {
            (0..model.num_hidden_layers)
                .map(|layer| {
                    if !config.placed_at(layer, site) {
                        return Ok(None);
                    }
                    let width = config
                        .width(model.hidden_size, layer)
                        .map_err(crate::AdapterError::Settings)?;
                    make(site, layer, width).map(Some)
                })
                .collect()
        };
        Ok(Self {
            attention: per_site(SubLayer::Attention)?,
            output: per_site(SubLayer::FeedForward)?,
        })
    }

    /// The bottleneck at `site` of `layer`, if the adapter has one there.
    pub fn at(&self, layer: usize, site: SubLayer) -> Option<&Bottleneck<B>> {
        let sites = match site {
            SubLayer::Attention => &self.attention,
            SubLayer::FeedForward => &self.output,
        };
        sites.get(layer).and_then(Option::as_ref)
    }
}

/// A bottleneck acts at the sub-layer ends where it has one.
impl<B: FusedOps> Hooks<B> for &BottleneckAdapter<B> {
    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        match self.at(layer, site) {
            Some(bottleneck) => bottleneck.sublayer_end(output, residual, layer_norm),
            None => layer_norm.forward_add(output, residual),
        }
    }
}

/// The key prefix of the base model in AdapterHub files: `roberta` for the RoBERTa family,
/// else the model type (`bert`).
pub fn model_prefix(model: &BertConfig) -> &str {
    if model.roberta_positions() {
        "roberta"
    } else {
        &model.model_type
    }
}
