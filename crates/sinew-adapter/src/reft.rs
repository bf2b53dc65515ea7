//! ReFT (Wu et al., 2024; AdapterHub's `reft` architecture: LoReFT, NoReFT, DiReFT): a low-rank
//! intervention on the hidden states of chosen positions at the end of chosen layers, through
//! [`Hooks::layer_end`].
//!
//! At the output of layer `l` (after its last LayerNorm), the first `prefix_positions` and the
//! last `suffix_positions` real tokens of each example are replaced by
//! `dropout(h + Rᵀ(act(W h + b) − R h))` (DiReFT: without `− R h`). `R` is `[r, hidden]`; LoReFT
//! keeps its rows orthonormal with PyTorch's `orthogonal` parametrization, whose Householder form
//! AdapterHub saves (`original`, `[r, hidden]`, trained; `base`, `[hidden, hidden]`, fixed):
//!
//! ```text
//! X = originalᵀ; A = tril(X, −1); v_i = e_i + A[:, i]; τ_i = 2 / |v_i|²
//! Q = (I − τ_1 v_1 v_1ᵀ) ⋯ (I − τ_r v_r v_rᵀ) I[:, :r]  ·  trunc(diag X)
//! R = (base · Q)ᵀ
//! ```
//!
//! As in AdapterHub: positions count from each example's first real token, so left and right
//! padding both work; a short example's prefix runs into its padding; where prefix and suffix
//! overlap the suffix unit's result wins; with `tied_weights` one unit serves both. Where
//! AdapterHub fails (an example shorter than `suffix_positions`: an index error; a padded batch
//! shorter than `suffix_positions` with a prefix: shifted suffix rows), sinew intervenes on the
//! positions that exist. DiReFT's missing subtraction is a class attribute in AdapterHub, never
//! saved — a DiReFT folder reloads there as NoReFT; sinew writes it as `subtract_projection`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use sinew_backbone::{kernels, BertConfig, FusedOps, Hooks};

use crate::activation::Activation;
use crate::bottleneck::model_prefix;
use crate::error::{ConfigError, Result};
use crate::method::{Method, MethodSpec};
use crate::tensors::{TensorFile, TensorSink};

/// `layers`: `"all"` or a list of layer indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReftLayers {
    /// `"all"`.
    Named(String),
    /// These layers (0-based).
    List(Vec<usize>),
}

impl ReftLayers {
    /// Whether layer `layer` is intervened on.
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            Self::Named(_) => true,
            Self::List(list) => list.contains(&layer),
        }
    }
}

fn all() -> ReftLayers {
    ReftLayers::Named("all".into())
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn dropout() -> f64 {
    0.05
}
fn is_true(b: &bool) -> bool {
    *b
}

/// AdapterHub's `ReftConfig` (`LoReftConfig`, `NoReftConfig`, `DiReftConfig`), field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReftConfig {
    /// The layers intervened on, at their output.
    #[serde(default = "all")]
    pub layers: ReftLayers,
    /// How many positions from each example's first real token.
    #[serde(default = "three")]
    pub prefix_positions: usize,
    /// How many positions up to each example's last real token.
    #[serde(default)]
    pub suffix_positions: usize,
    /// The rank of the intervention.
    #[serde(default = "one")]
    pub r: usize,
    /// Orthonormal rows of the projection (LoReFT).
    #[serde(default = "yes")]
    pub orthogonality: bool,
    /// One unit for the prefix and the suffix positions (else one each).
    #[serde(default)]
    pub tied_weights: bool,
    /// Dropout on the intervened states.
    #[serde(default = "dropout")]
    pub dropout: f64,
    /// Activation of the learned source (`null`: none).
    #[serde(default)]
    pub non_linearity: Option<Activation>,
    /// `false` turns the adapter off everywhere.
    #[serde(default = "yes")]
    pub output_reft: bool,
    /// Subtracts the projection of the state (LoReFT, NoReFT; not DiReFT). A sinew extension,
    /// written only when false: AdapterHub keeps it on the config class and never saves it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub subtract_projection: bool,
}

impl ReftConfig {
    /// AdapterHub's `loreft` preset.
    pub fn loreft() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }

    /// AdapterHub's `noreft` preset.
    pub fn noreft() -> Self {
        Self {
            orthogonality: false,
            ..Self::loreft()
        }
    }

    /// AdapterHub's `direft` preset.
    pub fn direft() -> Self {
        Self {
            subtract_projection: false,
            ..Self::noreft()
        }
    }

    /// Whether layer `layer` has a module.
    fn at(&self, layer: usize) -> bool {
        self.output_reft && self.layers.contains(layer)
    }

    fn units(&self) -> usize {
        if self.tied_weights {
            1
        } else {
            2
        }
    }
}

impl MethodSpec for ReftConfig {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![
            ("loreft", Self::loreft()),
            ("noreft", Self::noreft()),
            ("direft", Self::direft()),
        ]
    }

    const ARCHITECTURE: &'static str = "reft";
    const WRITTEN_DEFAULTS: &'static [(&'static str, &'static str)] = &[("dtype", "null")];

    fn summary(&self) -> String {
        let kind = match (self.orthogonality, self.subtract_projection) {
            (true, _) => "loreft",
            (false, true) => "noreft",
            (false, false) => "direft",
        };
        format!(
            "{kind} (r {}, prefix {}, suffix {}, layers {}{})",
            self.r,
            self.prefix_positions,
            self.suffix_positions,
            serde_json::to_string(&self.layers).expect("layers serialise"),
            if self.tied_weights { ", tied" } else { "" },
        )
    }

    fn check_supported(
        raw: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<(), ConfigError> {
        match raw.get("dtype") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(v) if v == "float32" => Ok(()),
            Some(v) => Err(ConfigError::unsupported("dtype", v)),
        }
    }

    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        crate::method::probability("dropout", self.dropout)?;
        if self.r == 0 {
            return Err(ConfigError::invalid("r", "must be at least 1"));
        }
        if let ReftLayers::Named(name) = &self.layers {
            if name != "all" {
                return Err(ConfigError::invalid(
                    "layers",
                    format!("= \"{name}\" is neither \"all\" nor a list of layers"),
                ));
            }
        }
        if let Some(model) = model {
            if self.r > model.hidden_size {
                return Err(ConfigError::invalid(
                    "r",
                    format!(
                        "= {} is larger than hidden_size {}",
                        self.r, model.hidden_size
                    ),
                ));
            }
            if let ReftLayers::List(list) = &self.layers {
                if let Some(l) = list.iter().find(|&&l| l >= model.num_hidden_layers) {
                    return Err(ConfigError::invalid(
                        "layers",
                        format!("has layer {l}; the model has {}", model.num_hidden_layers),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The projection `R`, `[r, hidden]`.
#[derive(Module, Debug)]
pub enum ReftProjection<B: Backend> {
    /// `projection.weight`, as PyTorch stores it.
    Plain(Param<Tensor<B, 2>>),
    /// PyTorch's orthogonal parametrization (Householder map with trivialization).
    Orthogonal(Orthogonal<B>),
}

/// `projection.parametrizations.weight`: the trained `original` and the fixed `base`.
#[derive(Module, Debug)]
pub struct Orthogonal<B: Backend> {
    /// `original`, `[r, hidden]`: below-diagonal entries (of its transpose) are the reflectors.
    pub original: Param<Tensor<B, 2>>,
    /// `0.base`, `[hidden, hidden]`, orthogonal; never trained.
    pub base: Tensor<B, 2>,
}

impl<B: Backend> Orthogonal<B> {
    /// `R = (base · Q)ᵀ`, `[r, hidden]` (see the module docs).
    fn weight(&self) -> Tensor<B, 2> {
        let original = self.original.val();
        let [r, hidden] = original.dims();
        let device = original.device();
        let x = original.transpose(); // [hidden, r]
        let eye = Tensor::<B, 2>::eye(hidden, &device).slice([0..hidden, 0..r]);
        let v = x.clone().tril(-1) + eye.clone(); // v_i = e_i + A[:, i]
        let tau = v.clone().powi_scalar(2).sum_dim(0).recip().mul_scalar(2.0); // [1, r]
        let mut q = eye.clone();
        for i in (0..r).rev() {
            let vi = v.clone().slice([0..hidden, i..i + 1]); // [hidden, 1]
            let ti = tau.clone().slice([0..1, i..i + 1]); // [1, 1]
            let projected = vi.clone().transpose().matmul(q.clone()); // [1, r]
            q = q - vi.matmul(projected) * ti;
        }
        // `.int()` of the diagonal: truncated toward zero, no gradient.
        let diagonal = (x.detach() * eye).sum_dim(0); // [1, r]
        let truncated = diagonal.clone().abs().floor() * diagonal.sign();
        (self.base.clone().matmul(q * truncated)).transpose()
    }
}

impl<B: Backend> ReftProjection<B> {
    fn weight(&self) -> Tensor<B, 2> {
        match self {
            Self::Plain(w) => w.val(),
            Self::Orthogonal(o) => o.weight(),
        }
    }
}

/// One intervention (`units.{u}`).
#[derive(Module, Debug)]
pub struct ReftUnit<B: Backend> {
    /// `learned_source`: hidden → r, with bias.
    pub learned_source: Linear<B>,
    /// `projection`: `R`.
    pub projection: ReftProjection<B>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    subtract: bool,
}

impl<B: FusedOps> ReftUnit<B> {
    /// `dropout(x + Rᵀ(act(W x + b) − R x))` for every row of `x`, `[batch, seq, hidden]`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let rows = x.clone().reshape([batch * seq, hidden]);
        let weight = self.projection.weight(); // [r, hidden]
        let mut source = self
            .activation
            .forward(kernels::linear(&self.learned_source, rows.clone()));
        if self.subtract {
            source = source - rows.matmul(weight.clone().transpose());
        }
        let delta = source.matmul(weight).reshape([batch, seq, hidden]);
        self.dropout.forward(x + delta)
    }
}

/// The units of one layer: `[prefix, suffix]`, or one shared.
#[derive(Module, Debug)]
pub struct ReftLayer<B: Backend> {
    /// `units`.
    pub units: Vec<ReftUnit<B>>,
}

/// A ReFT adapter across the model.
#[derive(Module, Debug)]
pub struct Reft<B: Backend> {
    /// Per layer, `None` where it does not act.
    pub layers: Vec<Option<ReftLayer<B>>>,
    #[module(skip)]
    prefix: usize,
    #[module(skip)]
    suffix: usize,
}

fn unit_key(model: &BertConfig, name: &str, layer: usize, unit: usize) -> String {
    format!(
        "{}.encoder.layer.{layer}.reft_layer.refts.{name}.units.{unit}",
        model_prefix(model)
    )
}

const ORIGINAL: &str = "projection.parametrizations.weight.original";
const BASE: &str = "projection.parametrizations.weight.0.base";

/// A seeded orthogonal `[n, n]` matrix whose first columns span the rows of `first` (`[r, n]`):
/// Gram–Schmidt (twice, for f32 round-off) over `first`'s rows, then random columns — what
/// PyTorch's `orthogonal` builds its `base` from.
fn orthogonal_base<B: Backend>(first: Tensor<B, 2>, device: &B::Device) -> Tensor<B, 2> {
    let [r, n] = first.dims();
    let random = Tensor::<B, 2>::random([n - r, n], Distribution::Normal(0.0, 1.0), device);
    let rows = Tensor::cat(vec![first, random], 0)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 values");
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(n);
    for row in rows.chunks(n) {
        let mut v = row.to_vec();
        for _ in 0..2 {
            for b in &basis {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        basis.push(v.iter().map(|x| x / norm).collect());
    }
    // The basis vectors are the columns of `base`.
    let values: Vec<f32> = basis.concat().into_iter().map(|x| x as f32).collect();
    Tensor::<B, 2>::from_data(TensorData::new(values, [n, n]), device).transpose()
}

impl<B: FusedOps> Reft<B> {
    fn build(
        config: &ReftConfig,
        model: &BertConfig,
        mut make: impl FnMut(usize, usize) -> Result<(Linear<B>, ReftProjection<B>)>,
    ) -> Result<Self> {
        let activation = config.non_linearity.unwrap_or(Activation::Identity);
        let layers = (0..model.num_hidden_layers)
            .map(|layer| {
                config
                    .at(layer)
                    .then(|| {
                        let units = (0..config.units())
                            .map(|u| {
                                let (learned_source, projection) = make(layer, u)?;
                                Ok(ReftUnit {
                                    learned_source,
                                    projection,
                                    dropout: DropoutConfig::new(config.dropout).init(),
                                    activation,
                                    subtract: config.subtract_projection,
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(ReftLayer { units })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            prefix: config.prefix_positions,
            suffix: config.suffix_positions,
        })
    }

    /// `[batch, seq]` masks (1.0 inside) of the prefix and suffix positions, from the keep-mask.
    fn positions(&self, keep: &Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [batch, seq] = keep.dims();
        let device = keep.device();
        let index = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .float()
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let real = keep.clone().greater_elem(0.5).float();
        let length = real.clone().sum_dim(1); // [batch, 1]
                                              // The first real position (0 for a row without one, as `argmax` gives).
        let first = (index.clone() + (real.neg() + 1.0) * seq as f64)
            .min_dim(1)
            .clamp_max(seq as f64);
        let first = first.clone().mask_fill(first.equal_elem(seq as f64), 0.0);
        let end = first.clone() + length;
        let within = |from: Tensor<B, 2>, to: Tensor<B, 2>| {
            index
                .clone()
                .greater_equal(from)
                .float()
                .mul(index.clone().lower(to).float())
        };
        let prefix = self.prefix.min(seq) as f64;
        let suffix = self.suffix.min(seq) as f64;
        (
            within(first.clone(), first + prefix),
            within(end.clone().sub_scalar(suffix), end),
        )
    }
}

impl<B: FusedOps> Method<B> for Reft<B> {
    type Config = ReftConfig;

    fn new(config: &ReftConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        config.validate(Some(model))?;
        let hidden = model.hidden_size;
        Self::build(config, model, |_, _| {
            let learned_source = LinearConfig::new(hidden, config.r).init(device);
            let fresh = LinearConfig::new(hidden, config.r)
                .with_bias(false)
                .init::<B>(device)
                .weight
                .val()
                .transpose(); // [r, hidden]
            let projection = if config.orthogonality {
                // PyTorch's `right_inverse`: `original` = −I, `base` spans the fresh weight's
                // rows first; then R starts as that span's first r directions.
                let r = config.r;
                let eye = Tensor::<B, 2>::eye(hidden, device).slice([0..r, 0..hidden]);
                ReftProjection::Orthogonal(Orthogonal {
                    original: Param::from_tensor(eye.neg()),
                    base: orthogonal_base(fresh, device),
                })
            } else {
                ReftProjection::Plain(Param::from_tensor(fresh))
            };
            Ok((learned_source, projection))
        })
    }

    fn load(
        config: &ReftConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate(Some(model))?;
        let (hidden, r) = (model.hidden_size, config.r);
        Self::build(config, model, |layer, unit| {
            let prefix = unit_key(model, name, layer, unit);
            let learned_source =
                file.take_linear(&format!("{prefix}.learned_source"), hidden, r, true, device)?;
            let projection = if config.orthogonality {
                ReftProjection::Orthogonal(Orthogonal {
                    original: Param::from_tensor(file.take_tensor(
                        &format!("{prefix}.{ORIGINAL}"),
                        [r, hidden],
                        device,
                    )?),
                    base: file.take_tensor(
                        &format!("{prefix}.{BASE}"),
                        [hidden, hidden],
                        device,
                    )?,
                })
            } else {
                ReftProjection::Plain(Param::from_tensor(file.take_tensor(
                    &format!("{prefix}.projection.weight"),
                    [r, hidden],
                    device,
                )?))
            };
            Ok((learned_source, projection))
        })
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        for (l, layer) in self.layers.iter().enumerate() {
            for (u, unit) in layer.iter().flat_map(|l| l.units.iter().enumerate()) {
                let prefix = unit_key(model, name, l, u);
                sink.put_linear(&format!("{prefix}.learned_source"), &unit.learned_source);
                match &unit.projection {
                    ReftProjection::Plain(w) => {
                        sink.put(format!("{prefix}.projection.weight"), w.val())
                    }
                    ReftProjection::Orthogonal(o) => {
                        sink.put(format!("{prefix}.{ORIGINAL}"), o.original.val());
                        sink.put(format!("{prefix}.{BASE}"), o.base.clone());
                    }
                }
            }
        }
    }

    /// The states entering its first layer are the pretrained ones (it acts at layer ends).
    fn unchanged_below(&self) -> usize {
        if self.prefix + self.suffix == 0 {
            return usize::MAX;
        }
        self.layers
            .iter()
            .position(Option::is_some)
            .unwrap_or(usize::MAX)
    }

    /// Each position's result depends on its own state and the keep-mask only.
    fn mixes_positions(&self) -> bool {
        false
    }
}

impl<B: FusedOps> Hooks<B> for &Reft<B> {
    fn layer_end(
        &mut self,
        layer: usize,
        hidden: Tensor<B, 3>,
        keep: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let Some(Some(units)) = self.layers.get(layer) else {
            return hidden;
        };
        let [batch, seq, _] = hidden.dims();
        let (prefix, suffix) = self.positions(keep);
        // The caller may read only the first position(s).
        let select = |m: Tensor<B, 2>| m.narrow(1, 0, seq).reshape([batch, seq, 1]);
        let (prefix, suffix) = (select(prefix), select(suffix));
        let first = &units.units[0];
        let last = units.units.last().expect("one unit at least");
        let mut out = hidden.clone();
        if self.prefix > 0 {
            let changed = first.forward(hidden.clone()) - hidden.clone();
            out = out + changed * prefix * (suffix.clone().neg() + 1.0);
        }
        if self.suffix > 0 {
            out = out + (last.forward(hidden.clone()) - hidden) * suffix;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    /// The Householder form gives orthonormal rows where the diagonal truncates to ±1, a zero row
    /// where it truncates to 0, and reduces to the first rows of `base`ᵀ at PyTorch's initial −I.
    #[test]
    fn orthogonal_weight_closed_forms() {
        let device = Default::default();
        let (r, n) = (3, 7);
        let base = orthogonal_base::<B>(
            Tensor::random([r, n], Distribution::Normal(0.0, 1.0), &device),
            &device,
        );
        let gram = base.clone().transpose().matmul(base.clone());
        let eye = Tensor::<B, 2>::eye(n, &device);
        assert!((gram - eye.clone()).abs().max().into_scalar() < 1e-5);

        let start = Orthogonal {
            original: Param::from_tensor(eye.clone().slice([0..r, 0..n]).neg()),
            base: base.clone(),
        };
        let expected = base.clone().transpose().slice([0..r, 0..n]);
        assert!((start.weight() - expected).abs().max().into_scalar() < 1e-6);

        let mut original = Tensor::<B, 2>::random([r, n], Distribution::Normal(0.0, 1.0), &device);
        let diagonal = Tensor::<B, 2>::from_floats(
            [[1.2, 0.0, 0.0], [0.0, -1.7, 0.0], [0.0, 0.0, 0.4]],
            &device,
        );
        let mask = Tensor::<B, 2>::eye(n, &device).slice([0..r, 0..r]);
        let square = original.clone().slice([0..r, 0..r]) * (mask.clone().neg() + 1.0) + diagonal;
        original = original.slice_assign([0..r, 0..r], square);
        let w = Orthogonal {
            original: Param::from_tensor(original),
            base,
        }
        .weight();
        let gram = w.clone().matmul(w.transpose());
        let expected = Tensor::<B, 2>::from_floats(
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
            &device,
        );
        assert!((gram - expected).abs().max().into_scalar() < 1e-5);
    }

    /// Prefix and suffix positions from the first real token, for right and left padding.
    #[test]
    fn positions_follow_the_real_tokens() {
        let device = Default::default();
        let reft = Reft::<B> {
            layers: vec![],
            prefix: 2,
            suffix: 2,
        };
        let keep = Tensor::<B, 2>::from_floats(
            [
                [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            ],
            &device,
        );
        let (prefix, suffix) = reft.positions(&keep);
        let as_vec = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(
            as_vec(prefix),
            [1., 1., 0., 0., 0., 0., 0., 0., 1., 1., 0., 0.]
        );
        assert_eq!(
            as_vec(suffix),
            [0., 1., 1., 0., 0., 0., 0., 0., 0., 0., 1., 1.]
        );
    }
}
