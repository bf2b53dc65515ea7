//! What every adapter method provides, and the one list that registers them.
//!
//! A method is a serde config ([`MethodSpec`]: AdapterHub's field names, its `architecture`
//! string) and a Burn module ([`Method`]: built fresh or from a file, written back with
//! AdapterHub's keys). What it does to the backbone is an implementation of
//! [`Hooks`] for a shared reference to the module: it overrides the sites it acts at, and every
//! other site keeps the plain transformer. [`register_methods!`] turns the list in `lib.rs` into
//! the [`crate::Adapter`] and [`crate::MethodConfig`] enums and their dispatch.

use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use sinew_backbone::{BertConfig, Hooks};

use crate::error::Result;
use crate::tensors::{TensorFile, TensorSink};

/// The config of a method, as it appears under `config` in AdapterHub's `adapter_config.json`.
pub trait MethodSpec:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// AdapterHub's `architecture` value.
    const ARCHITECTURE: &'static str;
    /// AdapterHub keys read besides the config's own fields: accepted at their defaults (see
    /// [`check_supported`](Self::check_supported)) or ignored, without a warning.
    const ACCEPTED: &'static [&'static str] = &[];

    /// Rejects AdapterHub settings sinew does not implement, naming the key.
    fn check_supported(raw: &Map<String, Value>) -> std::result::Result<(), String> {
        let _ = raw;
        Ok(())
    }

    /// Checks the settings, against the backbone when one is given.
    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), String> {
        let _ = model;
        Ok(())
    }

    /// The `config` object as AdapterHub writes it.
    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).expect("configs serialise");
        json["architecture"] = Self::ARCHITECTURE.into();
        json
    }
}

/// An adapter method's weights across the whole model.
///
/// Its effect on the encoder is `impl Hooks<B> for &M`: a shared reference, because the same
/// adapter serves every forward pass.
pub trait Method<B: Backend>: Module<B> + Sized
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
}

/// Parses and checks the `config` object of a method's `adapter_config.json` (at `path`);
/// unknown fields are warned about, not fatal.
pub(crate) fn parse_config<C: MethodSpec>(
    path: &std::path::Path,
    raw: &Map<String, Value>,
    model: Option<&BertConfig>,
) -> std::result::Result<C, String> {
    C::check_supported(raw)?;
    let config: C =
        serde_json::from_value(Value::Object(raw.clone())).map_err(|e| format!("config: {e}"))?;
    config.validate(model)?;
    if let Ok(Value::Object(known)) = serde_json::to_value(&config) {
        for key in raw.keys() {
            let ignored = ["architecture", "init_weights_seed"].contains(&key.as_str())
                || C::ACCEPTED.contains(&key.as_str());
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

            /// AdapterHub's `architecture` value.
            pub fn architecture(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config::$spec as $crate::method::MethodSpec>::ARCHITECTURE,)+
                }
            }

            /// The `config` object of `adapter_config.json`, as AdapterHub writes it.
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(Self::$variant(c) => $crate::method::MethodSpec::to_json(c),)+
                }
            }

            /// Parses the `config` object (read from `path`) of the method named by
            /// `architecture`; `None` when no registered method has that name.
            pub fn parse(
                path: &std::path::Path,
                architecture: &str,
                raw: &serde_json::Map<String, serde_json::Value>,
                model: Option<&sinew_backbone::BertConfig>,
            ) -> Option<std::result::Result<Self, String>> {
                $(if architecture == <$config::$spec as $crate::method::MethodSpec>::ARCHITECTURE {
                    return Some($crate::method::parse_config(path, raw, model).map(Self::$variant));
                })+
                None
            }

            /// A new adapter of this method for `model`.
            pub fn init<B: burn::prelude::Backend>(
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
            pub fn load<B: burn::prelude::Backend>(
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

        impl<B: burn::prelude::Backend> Adapter<B> {
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

        impl<B: burn::prelude::Backend> sinew_backbone::Hooks<B> for &Adapter<B> {
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

            fn sublayer_end(
                &mut self,
                layer: usize,
                site: sinew_backbone::SubLayer,
                output: burn::prelude::Tensor<B, 3>,
                residual: burn::prelude::Tensor<B, 3>,
                layer_norm: &burn::nn::LayerNorm<B>,
            ) -> burn::prelude::Tensor<B, 3> {
                match *self {
                    $(Adapter::$variant(a) => sinew_backbone::Hooks::sublayer_end(&mut { a }, layer, site, output, residual, layer_norm),)+
                }
            }
        }
    };
}
pub(crate) use register_methods;
