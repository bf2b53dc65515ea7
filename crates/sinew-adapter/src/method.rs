//! What every adapter method provides, and the one list that registers them.
//!
//! A method is a serde config ([`MethodSpec`]: AdapterHub's field names, its `architecture`
//! string) and a Burn module ([`Method`]: built fresh or from a file, written back with
//! AdapterHub's keys). What it does to the backbone is an implementation of
//! [`Hooks`] for a shared reference to the module: it overrides the sites it acts at, and every
//! other site keeps the plain transformer. [`register_methods!`] turns the list in `lib.rs` into
//! the [`crate::Adapter`] and [`crate::MethodConfig`] enums and their dispatch.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use sinew_backbone::{Bert, BertConfig, FusedOps, Hooks, Projection, SubLayer};

use crate::bottleneck::Bottleneck;

use crate::error::{ConfigError, Result};
use crate::tensors::{TensorFile, TensorSink};

/// The config of a method, as it appears under `config` in AdapterHub's `adapter_config.json`.
pub trait MethodSpec:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// AdapterHub's `architecture` value.
    const ARCHITECTURE: &'static str;
    /// AdapterHub keys read besides the config's own fields and [`WRITTEN_DEFAULTS`]'s: ignored
    /// without a warning.
    ///
    /// [`WRITTEN_DEFAULTS`]: Self::WRITTEN_DEFAULTS
    const ACCEPTED: &'static [&'static str] = &[];
    /// AdapterHub keys sinew does not model, with the value AdapterHub writes (JSON): accepted
    /// at their defaults when read (see [`check_supported`](Self::check_supported)), written so
    /// that a saved config holds every key AdapterHub's does.
    const WRITTEN_DEFAULTS: &'static [(&'static str, &'static str)] = &[];

    /// AdapterHub's named presets of this method (`seq_bn`, `lora`, …), as `sinew train
    /// --adapter` and run files take them.
    fn presets() -> Vec<(&'static str, Self)> {
        Vec::new()
    }

    /// One line on what the adapter is, for people (`sinew inspect`).
    fn summary(&self) -> String {
        Self::ARCHITECTURE.to_string()
    }

    /// Rejects AdapterHub settings sinew does not implement, naming the key.
    fn check_supported(raw: &Map<String, Value>) -> std::result::Result<(), ConfigError> {
        let _ = raw;
        Ok(())
    }

    /// Checks the settings, against the backbone when one is given.
    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        let _ = model;
        Ok(())
    }

    /// The `config` object as AdapterHub writes it.
    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).expect("configs serialise");
        json["architecture"] = Self::ARCHITECTURE.into();
        json
    }

    /// The `config` object of `adapter_config.json` with every key AdapterHub writes: the
    /// method's own fields, its [`WRITTEN_DEFAULTS`](Self::WRITTEN_DEFAULTS) and
    /// `init_weights_seed` (sinew's initialisation is a function of the training seed, so it
    /// writes AdapterHub's "none").
    fn saved(&self) -> Value {
        let mut json = self.to_json();
        if let Value::Object(map) = &mut json {
            for (key, value) in Self::WRITTEN_DEFAULTS {
                map.entry(*key)
                    .or_insert_with(|| serde_json::from_str(value).expect("a JSON default"));
            }
            map.entry("init_weights_seed").or_insert(Value::Null);
        }
        json
    }
}

/// An adapter method's weights across the whole model.
///
/// Its effect on the encoder is `impl Hooks<B> for &M`: a shared reference, because the same
/// adapter serves every forward pass.
pub trait Method<B: FusedOps>: Module<B> + Sized
where
    for<'a> &'a Self: Hooks<B>,
{
    /// Its settings.
    type Config: MethodSpec;

    /// A freshly initialised adapter for `model`.
    fn new(config: &Self::Config, model: &BertConfig, device: &B::Device) -> Result<Self>;

    /// Adapter `name` read from a tensor file with AdapterHub's keys; takes what it reads.
    fn load(
        config: &Self::Config,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self>;

    /// Writes every tensor with AdapterHub's keys for adapter `name`.
    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink);

    /// How many of the lowest layers this adapter leaves as pretrained, such that the states of
    /// an example's real tokens entering that layer can be computed once and reused
    /// (`usize::MAX`: it acts nowhere). 0 for gates, which average over padded positions too —
    /// and those states depend on the batch's padding.
    fn unchanged_below(&self) -> usize;

    /// Whether an output position depends on other positions at this adapter's sites (a gate
    /// averaging over the sequence): then a pass cannot compute the last layer for the first
    /// position alone (`sinew_backbone::Positions::First`).
    fn mixes_positions(&self) -> bool;

    /// How it takes part in composition blocks and AdapterFusion.
    fn composes(&self) -> Composes {
        Composes::Alone
    }

    /// Its bottleneck at sub-layer `site` of `layer`, for the composition blocks that route
    /// bottlenecks ([`Composes::Bottleneck`]).
    fn bottleneck_at(&self, layer: usize, site: SubLayer) -> Option<&Bottleneck<B>> {
        let _ = (layer, site);
        None
    }

    /// `y = linear(x)`, the frozen projection at `site` of `layer`, with this adapter's update
    /// added where it has one: how the updates of several adapters chain on one projection
    /// ([`Composes::Projections`]).
    fn update_projection(
        &self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let _ = (layer, site, linear, x);
        y
    }

    /// Whether it updates projection `site` of `layer`.
    fn updates(&self, layer: usize, site: Projection) -> bool {
        let _ = (layer, site);
        false
    }

    /// Folds the adapter into `backbone`'s weights, returning the originals it replaced
    /// ([`restore_projections`] puts them back); `None` when the method cannot merge.
    fn merge_into(&self, backbone: &mut Bert<B>) -> Option<Result<Vec<SavedProjection>>> {
        let _ = backbone;
        None
    }
}

/// How an adapter takes part in composition blocks and AdapterFusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Composes {
    /// A bottleneck at sub-layer ends: every block routes it, and a fusion attends over its
    /// outputs (AdapterHub's AdapterFusion).
    Bottleneck,
    /// Updates of the backbone's projections (LoRA, IA3): alone or in a top-level `Stack`; a
    /// fusion attends over the sub-layer deltas they cause.
    Projections,
    /// Acts elsewhere (prefixes, prompts): alone or in a top-level `Stack`, never fused.
    Alone,
}

/// A backbone projection a merge replaced, kept to restore it bit for bit.
#[derive(Debug, Clone)]
pub struct SavedProjection {
    /// Its layer.
    pub layer: usize,
    /// Which projection.
    pub site: Projection,
    /// The original weight.
    pub weight: TensorData,
    /// The original bias.
    pub bias: Option<TensorData>,
}

/// Puts back, bit for bit, the projections a [`Method::merge_into`] replaced.
pub fn restore_projections<B: FusedOps>(backbone: &mut Bert<B>, saved: Vec<SavedProjection>) {
    for original in saved {
        let linear = projection_mut(&mut backbone.encoder.layer[original.layer], original.site);
        let device = linear.weight.device();
        linear.weight = Param::from_tensor(Tensor::from_data(original.weight, &device));
        linear.bias = original
            .bias
            .map(|b| Param::from_tensor(Tensor::from_data(b, &device)));
    }
}

/// The backbone's projection `site` of `layer`, to merge into.
pub(crate) fn projection_mut<B: FusedOps>(
    layer: &mut sinew_backbone::model::Layer<B>,
    site: Projection,
) -> &mut Linear<B> {
    match site {
        Projection::Query => &mut layer.attention.self_attention.query,
        Projection::Key => &mut layer.attention.self_attention.key,
        Projection::Value => &mut layer.attention.self_attention.value,
        Projection::AttentionOutput => &mut layer.attention.output.dense,
        Projection::Intermediate => &mut layer.intermediate.dense,
        Projection::Output => &mut layer.output.dense,
    }
}

/// [`Method::unchanged_below`] from per-layer sites (`Some` where the adapter acts, `true` where
/// gated): the first layer with a site, 0 if any is gated.
pub(crate) fn first_site_layer(sites: impl IntoIterator<Item = (usize, Option<bool>)>) -> usize {
    let mut first = usize::MAX;
    for (layer, site) in sites {
        match site {
            Some(true) => return 0,
            Some(false) => first = first.min(layer),
            None => {}
        }
    }
    first
}

/// `p` is a probability (burn-nn's `Dropout` panics on anything else); the error names `key`.
pub fn probability(key: &str, p: f64) -> std::result::Result<(), ConfigError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("= {p} must be a probability in [0, 1]"),
        ))
    }
}

/// Parses and checks the `config` object of a method's `adapter_config.json` (at `path`);
/// unknown fields are warned about, not fatal.
pub(crate) fn parse_config<C: MethodSpec>(
    path: &std::path::Path,
    raw: &Map<String, Value>,
    model: Option<&BertConfig>,
) -> std::result::Result<C, ConfigError> {
    C::check_supported(raw)?;
    let config: C = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| ConfigError::Json(e.to_string()))?;
    config.validate(model)?;
    if let Ok(Value::Object(known)) = serde_json::to_value(&config) {
        for key in raw.keys() {
            let ignored = ["architecture", "init_weights_seed"].contains(&key.as_str())
                || C::ACCEPTED.contains(&key.as_str())
                || C::WRITTEN_DEFAULTS.iter().any(|(k, _)| k == key);
            if !known.contains_key(key) && !ignored {
                tracing::warn!("{}: unknown config field `{key}` ignored", path.display());
            }
        }
    }
    Ok(config)
}

/// Builds [`crate::Adapter`] (one variant per method), [`crate::MethodConfig`] (one per
/// config) and the dispatch between them from one line per method:
/// `Variant(module::AdapterType, module::ConfigType)`.
macro_rules! register_methods {
    ($($(#[$doc:meta])* $variant:ident($adapter:ident :: $module:ident, $config:ident :: $spec:ident)),+ $(,)?) => {
        /// An adapter of any registered method, across the whole model.
        #[derive(burn::module::Module, Debug)]
        pub enum Adapter<B: burn::prelude::Backend> {
            $($(#[$doc])* $variant($adapter::$module<B>),)+
        }

        /// The settings of an adapter, by method.
        #[derive(Debug, Clone, PartialEq)]
        pub enum MethodConfig {
            $($(#[$doc])* $variant($config::$spec),)+
        }

        impl MethodConfig {
            /// Every registered `architecture` value.
            pub const ARCHITECTURES: &'static [&'static str] =
                &[$(<$config::$spec as $crate::method::MethodSpec>::ARCHITECTURE),+];

            /// Every method's presets, by AdapterHub's name, in registration order.
            pub fn presets() -> Vec<(&'static str, Self)> {
                let mut presets = Vec::new();
                $(presets.extend(
                    <$config::$spec as $crate::method::MethodSpec>::presets()
                        .into_iter()
                        .map(|(name, c)| (name, Self::$variant(c))),
                );)+
                presets
            }

            /// Checks the settings, against the backbone when one is given.
            pub fn validate(
                &self,
                model: Option<&sinew_backbone::BertConfig>,
            ) -> std::result::Result<(), $crate::ConfigError> {
                match self {
                    $(Self::$variant(c) => $crate::method::MethodSpec::validate(c, model),)+
                }
            }

            /// One line on what the adapter is (see [`MethodSpec::summary`](crate::method::MethodSpec::summary)).
            pub fn summary(&self) -> String {
                match self {
                    $(Self::$variant(c) => $crate::method::MethodSpec::summary(c),)+
                }
            }

            /// AdapterHub's `architecture` value.
            pub fn architecture(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config::$spec as $crate::method::MethodSpec>::ARCHITECTURE,)+
                }
            }

            /// The `config` object of `adapter_config.json`, as AdapterHub writes it.
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(Self::$variant(c) => $crate::method::MethodSpec::saved(c),)+
                }
            }

            /// Parses a `config` object (read from `path`) as the method its `architecture`
            /// names (a bottleneck when absent, as AdapterHub writes it).
            pub fn parse(
                path: &std::path::Path,
                raw: &serde_json::Map<String, serde_json::Value>,
                model: Option<&sinew_backbone::BertConfig>,
            ) -> std::result::Result<Self, $crate::ConfigError> {
                let architecture = raw
                    .get("architecture")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("bottleneck");
                $(if architecture == <$config::$spec as $crate::method::MethodSpec>::ARCHITECTURE {
                    return $crate::method::parse_config(path, raw, model).map(Self::$variant);
                })+
                Err($crate::ConfigError::Architecture {
                    architecture: architecture.to_string(),
                    known: Self::ARCHITECTURES,
                })
            }

            /// A new adapter of this method for `model`.
            pub fn init<B: sinew_backbone::FusedOps>(
                &self,
                model: &sinew_backbone::BertConfig,
                device: &B::Device,
            ) -> $crate::Result<Adapter<B>> {
                use $crate::method::Method;
                Ok(match self {
                    $(Self::$variant(c) => Adapter::$variant($adapter::$module::new(c, model, device)?),)+
                })
            }

            /// Adapter `name` of this method read from `file`.
            pub fn load<B: sinew_backbone::FusedOps>(
                &self,
                model: &sinew_backbone::BertConfig,
                name: &str,
                file: &mut $crate::tensors::TensorFile,
                device: &B::Device,
            ) -> $crate::Result<Adapter<B>> {
                use $crate::method::Method;
                Ok(match self {
                    $(Self::$variant(c) => Adapter::$variant($adapter::$module::load(c, model, name, file, device)?),)+
                })
            }
        }

        /// As AdapterHub writes the `config` object (with its `architecture`).
        impl serde::Serialize for MethodConfig {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                self.to_json().serialize(serializer)
            }
        }

        /// Any registered method's `config` object, by its `architecture` (bottleneck when
        /// absent), checked without a backbone.
        impl<'de> serde::Deserialize<'de> for MethodConfig {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let raw = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
                Self::parse(std::path::Path::new("config"), &raw, None)
                    .map_err(serde::de::Error::custom)
            }
        }

        impl<B: sinew_backbone::FusedOps> Adapter<B> {
            /// See [`Method::unchanged_below`](crate::method::Method::unchanged_below).
            pub fn unchanged_below(&self) -> usize {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.unchanged_below(),)+
                }
            }

            /// See [`Method::mixes_positions`](crate::method::Method::mixes_positions).
            pub fn mixes_positions(&self) -> bool {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.mixes_positions(),)+
                }
            }

            /// See [`Method::composes`](crate::method::Method::composes).
            pub fn composes(&self) -> $crate::method::Composes {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.composes(),)+
                }
            }

            /// See [`Method::bottleneck_at`](crate::method::Method::bottleneck_at).
            pub fn bottleneck_at(
                &self,
                layer: usize,
                site: sinew_backbone::SubLayer,
            ) -> Option<&$crate::bottleneck::Bottleneck<B>> {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.bottleneck_at(layer, site),)+
                }
            }

            /// See [`Method::update_projection`](crate::method::Method::update_projection).
            pub fn update_projection(
                &self,
                layer: usize,
                site: sinew_backbone::Projection,
                linear: &burn::nn::Linear<B>,
                x: burn::prelude::Tensor<B, 3>,
                y: burn::prelude::Tensor<B, 3>,
            ) -> burn::prelude::Tensor<B, 3> {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.update_projection(layer, site, linear, x, y),)+
                }
            }

            /// See [`Method::updates`](crate::method::Method::updates).
            pub fn updates(&self, layer: usize, site: sinew_backbone::Projection) -> bool {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.updates(layer, site),)+
                }
            }

            /// See [`Method::merge_into`](crate::method::Method::merge_into).
            pub fn merge_into(
                &self,
                backbone: &mut sinew_backbone::Bert<B>,
            ) -> Option<$crate::Result<Vec<$crate::method::SavedProjection>>> {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.merge_into(backbone),)+
                }
            }

            /// Writes every tensor with AdapterHub's keys for adapter `name`.
            pub fn save(
                &self,
                model: &sinew_backbone::BertConfig,
                name: &str,
                sink: &mut $crate::tensors::TensorSink,
            ) {
                use $crate::method::Method;
                match self {
                    $(Self::$variant(a) => a.save(model, name, sink),)+
                }
            }
        }

        impl<B: sinew_backbone::FusedOps> sinew_backbone::Hooks<B> for &Adapter<B> {
            fn embedded(
                &mut self,
                hidden: burn::prelude::Tensor<B, 3>,
                keep: burn::prelude::Tensor<B, 2>,
            ) -> (burn::prelude::Tensor<B, 3>, burn::prelude::Tensor<B, 2>) {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::embedded(&mut { a }, hidden, keep),)+
                }
            }

            fn project(
                &mut self,
                layer: usize,
                site: sinew_backbone::Projection,
                linear: &burn::nn::Linear<B>,
                x: burn::prelude::Tensor<B, 3>,
            ) -> burn::prelude::Tensor<B, 3> {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::project(&mut { a }, layer, site, linear, x),)+
                }
            }

            fn attention_kv(
                &mut self,
                layer: usize,
                kv: sinew_backbone::AttentionKv<B>,
            ) -> sinew_backbone::AttentionKv<B> {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::attention_kv(&mut { a }, layer, kv),)+
                }
            }

            fn layer_end(
                &mut self,
                layer: usize,
                hidden: burn::prelude::Tensor<B, 3>,
                keep: &burn::prelude::Tensor<B, 2>,
            ) -> burn::prelude::Tensor<B, 3> {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::layer_end(&mut { a }, layer, hidden, keep),)+
                }
            }

            fn sublayer_end(
                &mut self,
                layer: usize,
                site: sinew_backbone::SubLayer,
                output: burn::prelude::Tensor<B, 3>,
                residual: burn::prelude::Tensor<B, 3>,
                layer_norm: &sinew_backbone::LayerNorm<B>,
            ) -> burn::prelude::Tensor<B, 3> {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::sublayer_end(&mut { a }, layer, site, output, residual, layer_norm),)+
                }
            }
        }
    };
}
pub(crate) use register_methods;

#[cfg(test)]
mod tests {
    use super::Method;
    use crate::bottleneck::{BnConfig, BottleneckAdapter};
    use crate::lora::{LoraAdapter, LoraConfig};
    use crate::prefix::{PrefixTuning, PrefixTuningConfig};
    use crate::prompt::{PromptTuning, PromptTuningConfig};
    use burn::backend::NdArray;
    use sinew_backbone::BertConfig;

    type B = NdArray;

    /// The layers each method leaves as pretrained: below its first non-left-out layer; none
    /// with a gate (gates average over padded positions) or a prompt (it changes the embeddings).
    #[test]
    fn unchanged_below_per_method() {
        let model = BertConfig::from_json(
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":4,"num_attention_heads":2,
            "intermediate_size":16,"max_position_embeddings":16}"#,
        )
        .unwrap();
        let d = Default::default();
        let bn = |c: BnConfig| BottleneckAdapter::<B>::new(&c, &model, &d).unwrap();
        let leave = vec![0, 1];
        let upper = BnConfig {
            leave_out: leave.clone(),
            ..BnConfig::seq_bn()
        };
        assert_eq!(bn(upper.clone()).unchanged_below(), 2);
        assert_eq!(bn(BnConfig::seq_bn()).unchanged_below(), 0);
        let gated = BnConfig {
            use_gating: true,
            ..upper
        };
        assert_eq!(bn(gated).unchanged_below(), 0);
        let lora = LoraConfig {
            leave_out: vec![0, 1, 2],
            ..LoraConfig::lora()
        };
        assert_eq!(
            LoraAdapter::<B>::new(&lora, &model, &d)
                .unwrap()
                .unchanged_below(),
            3
        );
        let prefix = PrefixTuningConfig {
            leave_out: leave,
            ..PrefixTuningConfig::default()
        };
        assert_eq!(
            PrefixTuning::<B>::new(&prefix, &model, &d)
                .unwrap()
                .unchanged_below(),
            2
        );
        let prompt = PromptTuning::<B>::new(&PromptTuningConfig::default(), &model, &d).unwrap();
        assert_eq!(prompt.unchanged_below(), 0);
    }
}
