//! LoRA and IA3 — AdapterHub's `architecture: "lora"`, with `composition_mode` `add` (LoRA:
//! y = W·x + scaling·(x·Aᵀ·Bᵀ)) or `scale` (IA3: y = (W·x) ⊙ (alpha·b)).
//!
//! Both act through [`sinew_backbone::Hooks::project`] on the activation path: the full ΔW is
//! never built in the forward pass. [`Method::merge_into`] folds ΔW into the frozen weights
//! for serving; [`restore_projections`](crate::method::restore_projections) puts the saved
//! originals back bit for bit.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_backbone::FusedOps;
use sinew_backbone::{kernels, Bert, BertConfig, Hooks, Projection};

use crate::bottleneck::model_prefix;
use crate::error::{AdapterError, ConfigError, Result};
use crate::method::{projection_mut, Composes, Method, MethodSpec, SavedProjection};
use crate::tensors::{TensorFile, TensorSink};

/// How the low-rank update is composed with the frozen projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositionMode {
    /// LoRA: add `scaling · x·Aᵀ·Bᵀ`.
    Add,
    /// IA3: multiply the output by `alpha · b`.
    Scale,
}

/// Weight initialisation of a new LoRA/IA3 adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// Kaiming-uniform A, zero B: the adapter starts as identity.
    Lora,
    /// N(0, 0.02) for A and B.
    Bert,
    /// Ones (IA3 starts as identity).
    Ia3,
}

fn one() -> f64 {
    1.0
}
fn eight() -> usize {
    8
}
fn qv() -> Vec<String> {
    vec!["q".into(), "v".into()]
}
fn yes() -> bool {
    true
}
fn add() -> CompositionMode {
    CompositionMode::Add
}
fn lora_init() -> LoraInit {
    LoraInit::Lora
}

/// AdapterHub's `LoRAConfig` (and `IA3Config`), field for field; DoRA and VeRA are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update (1 for IA3).
    #[serde(default = "eight")]
    pub r: usize,
    /// LoRA: the update is scaled by `alpha / r`; IA3: by `alpha`.
    #[serde(default = "one")]
    pub alpha: f64,
    /// Dropout on the LoRA input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Which of `q`, `k`, `v` get an update (with `selfattn_lora`).
    #[serde(default = "qv")]
    pub attn_matrices: Vec<String>,
    /// `add` (LoRA) or `scale` (IA3).
    #[serde(default = "add")]
    pub composition_mode: CompositionMode,
    /// How a new adapter is initialised.
    #[serde(default = "lora_init")]
    pub init_weights: LoraInit,
    /// A learned sigmoid gate replaces the fixed scaling.
    #[serde(default)]
    pub use_gating: bool,
    /// Updates on the attention's Q/K/V projections.
    #[serde(default = "yes")]
    pub selfattn_lora: bool,
    /// An update on the FFN's first projection (`intermediate.dense`).
    #[serde(default)]
    pub intermediate_lora: bool,
    /// An update on the FFN's second projection (`output.dense`).
    #[serde(default)]
    pub output_lora: bool,
    /// Layers without updates.
    #[serde(default)]
    pub leave_out: Vec<usize>,
    /// A PEFT folder's placement. Where the switches above cannot express it (per-module rank
    /// and alpha, rsLoRA, the attention output, per-layer module sets), sinew writes it into
    /// AdapterHub-layout configs as `peft_sites` (a sinew extension) and reads it back.
    #[serde(
        rename = "peft_sites",
        default,
        skip_serializing_if = "PeftPlacement::switches_suffice",
        serialize_with = "write_peft_sites",
        deserialize_with = "read_peft_sites"
    )]
    pub peft: Option<PeftPlacement>,
}

/// Where a PEFT folder's LoRA acts, and the folder's `adapter_config.json` (written back as it was).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeftPlacement {
    /// Every adapted projection, when [`LoraConfig`]'s switches cannot express them; empty when
    /// they can.
    pub sites: Vec<PeftSite>,
    /// PEFT's `adapter_config.json`.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl PeftPlacement {
    fn switches_suffice(this: &Option<Self>) -> bool {
        this.as_ref().is_none_or(|p| p.sites.is_empty())
    }
}

/// One adapted projection of a PEFT placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeftSite {
    /// Layer index.
    pub layer: usize,
    /// Which projection.
    pub site: Projection,
    /// Rank (`rank_pattern` or `r`).
    pub r: usize,
    /// Factor on the update: `alpha / r`, or `alpha / √r` with `use_rslora`.
    pub scaling: f64,
}

/// Module paths inside a layer, as in the checkpoint.
pub(crate) fn site_path(site: Projection) -> &'static str {
    match site {
        Projection::Query => "attention.self.query",
        Projection::Key => "attention.self.key",
        Projection::Value => "attention.self.value",
        Projection::AttentionOutput => "attention.output.dense",
        Projection::Intermediate => "intermediate.dense",
        Projection::Output => "output.dense",
    }
}

#[derive(Serialize, Deserialize)]
struct SiteJson {
    layer: usize,
    module: String,
    r: usize,
    scaling: f64,
}

fn write_peft_sites<S: serde::Serializer>(
    placement: &Option<PeftPlacement>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    let sites: Vec<SiteJson> = placement
        .iter()
        .flat_map(|p| &p.sites)
        .map(|s| SiteJson {
            layer: s.layer,
            module: site_path(s.site).into(),
            r: s.r,
            scaling: s.scaling,
        })
        .collect();
    sites.serialize(serializer)
}

fn read_peft_sites<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<PeftPlacement>, D::Error> {
    let sites = Option::<Vec<SiteJson>>::deserialize(deserializer)?.unwrap_or_default();
    let sites = sites
        .into_iter()
        .map(|s| {
            SITES
                .into_iter()
                .find(|&p| site_path(p) == s.module)
                .map(|site| PeftSite {
                    layer: s.layer,
                    site,
                    r: s.r,
                    scaling: s.scaling,
                })
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "`peft_sites`: unknown module \"{}\"",
                        s.module
                    ))
                })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((!sites.is_empty()).then(|| PeftPlacement {
        sites,
        raw: serde_json::Map::new(),
    }))
}

impl LoraConfig {
    /// AdapterHub's `lora` preset: r 8, alpha 8, on Q and V.
    pub fn lora() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            attn_matrices: qv(),
            composition_mode: CompositionMode::Add,
            init_weights: LoraInit::Lora,
            use_gating: false,
            selfattn_lora: true,
            intermediate_lora: false,
            output_lora: false,
            leave_out: vec![],
            peft: None,
        }
    }

    /// AdapterHub's `ia3` preset: scaling vectors on K, V and the FFN's first projection.
    pub fn ia3() -> Self {
        Self {
            r: 1,
            alpha: 1.0,
            attn_matrices: vec!["k".into(), "v".into()],
            composition_mode: CompositionMode::Scale,
            init_weights: LoraInit::Ia3,
            intermediate_lora: true,
            ..Self::lora()
        }
    }

    /// Whether projection `site` of `layer` gets an update.
    pub fn placed_at(&self, layer: usize, site: Projection) -> bool {
        if let Some(sites) = self.peft_sites() {
            return self.peft_site(layer, site, sites).is_some();
        }
        if self.leave_out.contains(&layer) {
            return false;
        }
        let attn = |m: &str| self.selfattn_lora && self.attn_matrices.iter().any(|x| x == m);
        match site {
            Projection::Query => attn("q"),
            Projection::Key => attn("k"),
            Projection::Value => attn("v"),
            Projection::Intermediate => self.intermediate_lora,
            Projection::Output => self.output_lora,
            Projection::AttentionOutput => false,
        }
    }

    /// The per-site placement, when the switches do not suffice.
    pub fn peft_sites(&self) -> Option<&[PeftSite]> {
        self.peft
            .as_ref()
            .map(|p| p.sites.as_slice())
            .filter(|s| !s.is_empty())
    }

    fn peft_site<'a>(
        &self,
        layer: usize,
        site: Projection,
        sites: &'a [PeftSite],
    ) -> Option<&'a PeftSite> {
        sites.iter().find(|s| s.layer == layer && s.site == site)
    }

    /// Rank and fixed factor of the update at `site` of `layer`.
    pub(crate) fn rank_and_scaling(&self, layer: usize, site: Projection) -> (usize, f64) {
        match self
            .peft_sites()
            .and_then(|sites| self.peft_site(layer, site, sites))
        {
            Some(s) => (s.r, s.scaling),
            None => (self.r, self.scaling()),
        }
    }

    /// The fixed factor on the update (replaced by the gate with `use_gating`).
    fn scaling(&self) -> f64 {
        match self.composition_mode {
            CompositionMode::Add => self.alpha / self.r as f64,
            CompositionMode::Scale => self.alpha,
        }
    }
}

impl MethodSpec for LoraConfig {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("lora", Self::lora()), ("ia3", Self::ia3())]
    }

    const ARCHITECTURE: &'static str = "lora";

    fn summary(&self) -> String {
        format!(
            "{} (r {}, {}, attention {:?}{}{})",
            if self.composition_mode == CompositionMode::Scale {
                "ia3"
            } else {
                "lora"
            },
            self.r,
            // A gate replaces the fixed alpha / r.
            if self.use_gating {
                "gated".to_string()
            } else {
                format!("alpha {}", self.alpha)
            },
            if self.selfattn_lora {
                self.attn_matrices.clone()
            } else {
                vec![]
            },
            if self.intermediate_lora {
                ", FFN in"
            } else {
                ""
            },
            if self.output_lora { ", FFN out" } else { "" },
        )
    }
    /// DoRA and VeRA switches: accepted when off.
    const WRITTEN_DEFAULTS: &'static [(&'static str, &'static str)] = &[
        ("dtype", "null"),
        ("use_dora", "false"),
        ("vera_b", "null"),
        ("vera_d", "null"),
    ];

    /// Rejects settings sinew does not implement, naming the key.
    fn check_supported(
        raw: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<(), ConfigError> {
        if raw.get("use_dora").and_then(serde_json::Value::as_bool) == Some(true) {
            return Err(ConfigError::unsupported("use_dora", true));
        }
        for key in ["vera_d", "vera_b"] {
            if raw.get(key).is_some_and(|v| !v.is_null()) {
                return Err(ConfigError::invalid(key, "(VeRA) is not supported"));
            }
        }
        if raw.get("init_weights").and_then(serde_json::Value::as_str) == Some("vera") {
            return Err(ConfigError::unsupported("init_weights", "\"vera\""));
        }
        Ok(())
    }

    /// Checks the combination of settings.
    fn validate(&self, _model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        crate::method::probability("dropout", self.dropout)?;
        if self.r == 0 {
            return Err(ConfigError::invalid("r", "must be at least 1"));
        }
        if let Some(model) = _model {
            let widest = model.hidden_size.max(model.intermediate_size);
            if self.r > widest {
                return Err(ConfigError::invalid(
                    "r",
                    format!(
                        "= {} is larger than the model's widest projection ({widest})",
                        self.r
                    ),
                ));
            }
        }
        if self
            .peft_sites()
            .is_some_and(|s| s.iter().any(|s| s.r == 0))
        {
            return Err(ConfigError::invalid(
                "peft_sites",
                "ranks must be at least 1",
            ));
        }
        if self.composition_mode == CompositionMode::Scale && self.r != 1 {
            return Err(ConfigError::invalid(
                "composition_mode",
                "= \"scale\" needs `r` = 1",
            ));
        }
        if let Some(m) = self
            .attn_matrices
            .iter()
            .find(|m| !["q", "k", "v"].contains(&m.as_str()))
        {
            return Err(ConfigError::invalid(
                "attn_matrices",
                format!("entry \"{m}\" is not one of q, k, v"),
            ));
        }
        Ok(())
    }
}

/// The update of one projection. Field names follow AdapterHub's keys.
#[derive(Module, Debug)]
pub struct LoraSite<B: Backend> {
    /// `lora_A`, stored transposed `[in, r]` so that the update is `x·a·b` (LoRA only).
    pub lora_a: Option<Param<Tensor<B, 2>>>,
    /// `lora_B`, transposed: `[r, out]` for LoRA, `[1, out]` for IA3.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `gate` (`use_gating`): in → 1.
    pub gate: Option<Linear<B>>,
    /// The projection's own bias `[out]`, used instead of the backbone's: PEFT's
    /// `bias: "lora_only"` trains the biases of the projections it adapts (`base_layer.bias`).
    pub bias: Option<Param<Tensor<B, 1>>>,
    dropout: Dropout,
    #[module(skip)]
    mode: CompositionMode,
    #[module(skip)]
    scaling: f64,
}

impl<B: FusedOps> LoraSite<B> {
    fn new(
        config: &LoraConfig,
        (r, scaling): (usize, f64),
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Self {
        let normal = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 0.02), device)
        };
        let (a, b) = match config.init_weights {
            // PyTorch's kaiming_uniform(a = √5) on A [r, in]: U(±1/√in); Burn's Linear default matches.
            LoraInit::Lora => (
                LinearConfig::new(d_in, r).init::<B>(device).weight.val(),
                Tensor::zeros([r, d_out], device),
            ),
            LoraInit::Bert => (normal([d_in, r]), normal([r, d_out])),
            LoraInit::Ia3 => (
                Tensor::ones([d_in, r], device),
                Tensor::ones([r, d_out], device),
            ),
        };
        let gate = config.use_gating.then(|| {
            let mut gate = LinearConfig::new(d_in, 1).init::<B>(device);
            gate.weight = Param::from_tensor(normal([d_in, 1]));
            gate
        });
        Self {
            lora_a: (config.composition_mode == CompositionMode::Add)
                .then(|| Param::from_tensor(a)),
            lora_b: Param::from_tensor(b),
            gate,
            bias: None,
            dropout: DropoutConfig::new(config.dropout).init(),
            mode: config.composition_mode,
            scaling,
        }
    }

    fn load(
        config: &LoraConfig,
        rank: (usize, f64),
        file: &mut TensorFile,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let mut site = Self::new(config, rank, d_in, d_out, device);
        let r = rank.0;
        let matrix = |raw: crate::tensors::RawTensor, rows: usize, cols: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(raw.values, [rows, cols]), device).transpose()
        };
        if site.lora_a.is_some() {
            let a = file.take(&format!("{prefix}.lora_A"), &[r, d_in])?;
            site.lora_a = Some(Param::from_tensor(matrix(a, r, d_in)));
        }
        let b = file.take(&format!("{prefix}.lora_B"), &[d_out, r])?;
        site.lora_b = Param::from_tensor(matrix(b, d_out, r));
        if config.use_gating {
            site.gate = Some(file.take_linear(&format!("{prefix}.gate"), d_in, 1, true, device)?);
        }
        let bias = format!("{prefix}.bias");
        if file.get(&bias).is_some() {
            let values = file.take(&bias, &[d_out])?.values;
            site.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [d_out]),
                device,
            )));
        }
        Ok(site)
    }

    /// Writes `lora_A` `[r, in]`, `lora_B` `[out, r]` (and the gate and bias) under `prefix`.
    fn save(&self, sink: &mut TensorSink, prefix: &str) {
        if let Some(a) = &self.lora_a {
            sink.put(format!("{prefix}.lora_A"), a.val().transpose());
        }
        sink.put(format!("{prefix}.lora_B"), self.lora_b.val().transpose());
        if let Some(gate) = &self.gate {
            sink.put_linear(&format!("{prefix}.gate"), gate);
        }
        if let Some(bias) = &self.bias {
            sink.put(format!("{prefix}.bias"), bias.val());
        }
    }

    /// The projection's output `y = linear(x)` with the update applied; `[batch, seq, ·]`.
    pub fn apply(&self, linear: &Linear<B>, x: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = match (&self.bias, &linear.bias) {
            (Some(ours), Some(theirs)) => {
                let d_out = ours.dims()[0];
                y + (ours.val() - theirs.val()).reshape([1, 1, d_out])
            }
            (Some(ours), None) => {
                let d_out = ours.dims()[0];
                y + ours.val().reshape([1, 1, d_out])
            }
            (None, _) => y,
        };
        let factor = |t: Tensor<B, 3>| match &self.gate {
            // One gate per example: the mean over the sequence of the per-token gates.
            Some(gate) => t * sigmoid(kernels::linear(gate, x.clone())).mean_dim(1),
            None => t * self.scaling,
        };
        match &self.lora_a {
            Some(a) => {
                let [batch, seq, d_in] = x.dims();
                let flat = self.dropout.forward(x.clone()).reshape([batch * seq, d_in]);
                let delta = flat.matmul(a.val()).matmul(self.lora_b.val());
                let d_out = delta.dims()[1];
                y + factor(delta.reshape([batch, seq, d_out]))
            }
            None => {
                let d_out = self.lora_b.dims()[1];
                y * factor(self.lora_b.val().reshape([1, 1, d_out]))
            }
        }
    }

    /// Folds the update into `linear` (LoRA: W + scaling·A·B and its own bias; IA3: weight and
    /// bias scaled).
    fn merge(&self, linear: &mut Linear<B>) {
        if let Some(bias) = &self.bias {
            linear.bias = Some(Param::from_tensor(bias.val()));
        }
        match &self.lora_a {
            Some(a) => {
                let delta = a.val().matmul(self.lora_b.val()) * self.scaling;
                linear.weight = Param::from_tensor(linear.weight.val() + delta);
            }
            None => {
                let d_out = self.lora_b.dims()[1];
                let scale = self.lora_b.val().reshape([d_out]) * self.scaling;
                linear.weight =
                    Param::from_tensor(linear.weight.val() * scale.clone().unsqueeze::<2>());
                if let Some(bias) = &linear.bias {
                    linear.bias = Some(Param::from_tensor(bias.val() * scale));
                }
            }
        }
    }
}

const SITES: [Projection; 6] = [
    Projection::Query,
    Projection::Key,
    Projection::Value,
    Projection::AttentionOutput,
    Projection::Intermediate,
    Projection::Output,
];

/// A LoRA/IA3 adapter across the whole model: per layer, one optional update per projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `…attention.self.query.loras.NAME`, per layer.
    pub query: Vec<Option<LoraSite<B>>>,
    /// `…attention.self.key.loras.NAME`, per layer.
    pub key: Vec<Option<LoraSite<B>>>,
    /// `…attention.self.value.loras.NAME`, per layer.
    pub value: Vec<Option<LoraSite<B>>>,
    /// `…attention.output.dense.loras.NAME`, per layer (PEFT folders only).
    pub attention_output: Vec<Option<LoraSite<B>>>,
    /// `…intermediate.dense.loras.NAME`, per layer.
    pub intermediate: Vec<Option<LoraSite<B>>>,
    /// `…output.dense.loras.NAME`, per layer.
    pub output: Vec<Option<LoraSite<B>>>,
}

/// Checkpoint path and (in, out) widths of a projection.
fn site_shape(model: &BertConfig, site: Projection) -> (&'static str, usize, usize) {
    let (h, i) = (model.hidden_size, model.intermediate_size);
    match site {
        Projection::Query => ("attention.self.query", h, h),
        Projection::Key => ("attention.self.key", h, h),
        Projection::Value => ("attention.self.value", h, h),
        Projection::AttentionOutput => ("attention.output.dense", h, h),
        Projection::Intermediate => ("intermediate.dense", h, i),
        Projection::Output => ("output.dense", i, h),
    }
}

impl<B: FusedOps> Method<B> for LoraAdapter<B> {
    type Config = LoraConfig;

    fn new(config: &LoraConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        config.validate(Some(model))?;
        Self::build(config, model, |site, layer, d_in, d_out| {
            let rank = config.rank_and_scaling(layer, site);
            Ok(LoraSite::new(config, rank, d_in, d_out, device))
        })
    }

    fn load(
        config: &LoraConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        let root = model_prefix(model);
        Self::build(config, model, |site, layer, d_in, d_out| {
            let (path, _, _) = site_shape(model, site);
            let prefix = format!("{root}.encoder.layer.{layer}.{path}.loras.{name}");
            let rank = config.rank_and_scaling(layer, site);
            LoraSite::load(config, rank, file, &prefix, d_in, d_out, device)
        })
    }

    fn unchanged_below(&self) -> usize {
        crate::method::first_site_layer(
            SITES
                .into_iter()
                .flat_map(|site| self.sites(site).into_iter().flatten().enumerate())
                .map(|(layer, s)| (layer, s.as_ref().map(|s| s.gate.is_some()))),
        )
    }

    /// A gate averages over the sequence.
    fn mixes_positions(&self) -> bool {
        SITES
            .into_iter()
            .flat_map(|site| self.sites(site).into_iter().flatten())
            .flatten()
            .any(|s| s.gate.is_some())
    }

    fn composes(&self) -> Composes {
        Composes::Projections
    }

    fn update_projection(
        &self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.update(layer, site, linear, x, y)
    }

    fn updates(&self, layer: usize, site: Projection) -> bool {
        self.at(layer, site).is_some()
    }

    /// Folds every update into `backbone`'s weights; refused (the backbone untouched) with a gate.
    fn merge_into(&self, backbone: &mut Bert<B>) -> Option<Result<Vec<SavedProjection>>> {
        // Check every site first, so a refused merge leaves the backbone untouched.
        let gated = (0..backbone.num_layers()).any(|l| {
            SITES
                .iter()
                .any(|&s| self.at(l, s).is_some_and(|u| u.gate.is_some()))
        });
        if gated {
            return Some(Err(AdapterError::Unmergeable {
                reason: "an adapter with a gate cannot be merged",
            }));
        }
        let mut saved = Vec::new();
        for (layer, block) in backbone.encoder.layer.iter_mut().enumerate() {
            for site in SITES {
                if let Some(update) = self.at(layer, site) {
                    let linear = projection_mut(block, site);
                    saved.push(SavedProjection {
                        layer,
                        site,
                        weight: linear.weight.val().into_data(),
                        bias: linear.bias.as_ref().map(|b| b.val().into_data()),
                    });
                    update.merge(linear);
                }
            }
        }
        Some(Ok(saved))
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        let root = model_prefix(model);
        for site in SITES {
            let (path, _, _) = site_shape(model, site);
            for (layer, update) in self.sites(site).into_iter().flatten().enumerate() {
                if let Some(update) = update {
                    update.save(
                        sink,
                        &format!("{root}.encoder.layer.{layer}.{path}.loras.{name}"),
                    );
                }
            }
        }
    }
}

impl<B: FusedOps> LoraAdapter<B> {
    fn build(
        config: &LoraConfig,
        model: &BertConfig,
        mut make: impl FnMut(Projection, usize, usize, usize) -> Result<LoraSite<B>>,
    ) -> Result<Self> {
        let mut per_site = |site: Projection| -> Result<Vec<Option<LoraSite<B>>>> {
            let (_, d_in, d_out) = site_shape(model, site);
            (0..model.num_hidden_layers)
                .map(|layer| {
                    config
                        .placed_at(layer, site)
                        .then(|| make(site, layer, d_in, d_out))
                        .transpose()
                })
                .collect()
        };
        Ok(Self {
            query: per_site(Projection::Query)?,
            key: per_site(Projection::Key)?,
            value: per_site(Projection::Value)?,
            attention_output: per_site(Projection::AttentionOutput)?,
            intermediate: per_site(Projection::Intermediate)?,
            output: per_site(Projection::Output)?,
        })
    }

    fn sites(&self, site: Projection) -> Option<&Vec<Option<LoraSite<B>>>> {
        Some(match site {
            Projection::Query => &self.query,
            Projection::Key => &self.key,
            Projection::Value => &self.value,
            Projection::Intermediate => &self.intermediate,
            Projection::Output => &self.output,
            Projection::AttentionOutput => &self.attention_output,
        })
    }

    /// `y = linear(x)`, the frozen projection at `site` of `layer`, with this adapter's update
    /// there (if it has one).
    pub fn update(
        &self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match self.at(layer, site) {
            Some(update) => update.apply(linear, x, y),
            None => y,
        }
    }

    /// Whether any adapted projection uses its own bias (PEFT's `bias: "lora_only"`).
    pub fn has_own_biases(&self) -> bool {
        SITES
            .into_iter()
            .flat_map(|site| self.sites(site).into_iter().flatten().flatten())
            .any(|s| s.bias.is_some())
    }

    /// The update at projection `site` of `layer`, if any.
    pub fn at(&self, layer: usize, site: Projection) -> Option<&LoraSite<B>> {
        self.sites(site)?.get(layer).and_then(Option::as_ref)
    }
}

/// LoRA and IA3 act on the projections where they have an update.
impl<B: FusedOps> Hooks<B> for &LoraAdapter<B> {
    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let y = kernels::linear(linear, x.clone());
        self.update(layer, site, linear, x, y)
    }
}
