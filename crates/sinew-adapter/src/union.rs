//! AdapterHub's `ConfigUnion` (architecture `union`): one adapter name whose parts — prefix
//! tuning, a bottleneck, LoRA, any registered method — each act where they would alone. Its
//! presets are MAM (He et al., 2022: prefix tuning and a parallel bottleneck) and UniPELT (Mao et
//! al., 2022: gated prefix tuning, bottleneck and LoRA).
//!
//! The parts never read each other's weights: a union computes what a top-level `Stack` of its
//! parts computes, and its folder holds each part's tensors under the union's name, with the keys
//! the part has alone. As in AdapterHub, no two parts share a method (AdapterHub also allows two
//! bottlenecks at different sites or with `leave_out`; sinew refuses those, naming the key).

use burn::module::{
    AutodiffModule, Content, Devices, HasAutodiffModule, Module, ModuleDisplay,
    ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::nn::Linear;
use burn::prelude::*;
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sinew_backbone::{AttentionKv, BertConfig, FusedOps, Hooks, NoHooks, Projection, SubLayer};

use crate::bottleneck::{BnConfig, Bottleneck, ReductionFactor};
use crate::error::{ConfigError, Result};
use crate::lora::LoraConfig;
use crate::method::{Composes, Method, MethodSpec};
use crate::prefix::PrefixTuningConfig;
use crate::tensors::{TensorFile, TensorSink};
use crate::{Adapter, AdapterRecord, MethodConfig};

/// AdapterHub's `ConfigUnion`: the parts' configs, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UnionJson")]
pub struct UnionConfig {
    /// One config per part, each of another method.
    pub configs: Vec<MethodConfig>,
}

/// The `configs` list as read, before each part is parsed by its own `architecture`.
#[derive(Deserialize)]
struct UnionJson {
    configs: Vec<Map<String, Value>>,
}

impl TryFrom<UnionJson> for UnionConfig {
    type Error = ConfigError;

    /// Parses each part as its method does alone (a bottleneck when it names no
    /// `architecture`); an error names the part: `configs[1].reduction_factor`.
    fn try_from(json: UnionJson) -> std::result::Result<Self, ConfigError> {
        let configs = json
            .configs
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                MethodConfig::parse(std::path::Path::new("config"), &raw, None)
                    .map_err(|e| e.within(&format!("configs[{i}]")))
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { configs })
    }
}

impl UnionConfig {
    /// AdapterHub's `MAMConfig()`: prefix tuning with a 800-wide MLP and a parallel bottleneck
    /// (`par_bn`).
    pub fn mam() -> Self {
        Self {
            configs: vec![
                MethodConfig::Prefix(PrefixTuningConfig {
                    bottleneck_size: 800,
                    ..PrefixTuningConfig::default()
                }),
                MethodConfig::Bottleneck(BnConfig::par_bn()),
            ],
        }
    }

    /// AdapterHub's `UniPELTConfig()`: gated prefix tuning (length 10), a gated `seq_bn`
    /// (reduction 16) and gated LoRA (r 8, alpha 2: a gate replaces alpha / r).
    pub fn unipelt() -> Self {
        Self {
            configs: vec![
                MethodConfig::Prefix(PrefixTuningConfig {
                    prefix_length: 10,
                    use_gating: true,
                    ..PrefixTuningConfig::default()
                }),
                MethodConfig::Bottleneck(BnConfig {
                    reduction_factor: ReductionFactor::Uniform(16.0),
                    use_gating: true,
                    ..BnConfig::seq_bn()
                }),
                MethodConfig::Lora(LoraConfig {
                    r: 8,
                    alpha: 2.0,
                    use_gating: true,
                    ..LoraConfig::lora()
                }),
            ],
        }
    }
}

impl MethodSpec for UnionConfig {
    const ARCHITECTURE: &'static str = "union";

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("mam", Self::mam()), ("unipelt", Self::unipelt())]
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self.configs.iter().map(MethodConfig::summary).collect();
        format!("union of {}", parts.join(" + "))
    }

    fn validate(&self, model: Option<&BertConfig>) -> std::result::Result<(), ConfigError> {
        if self.configs.is_empty() {
            return Err(ConfigError::invalid(
                "configs",
                "is empty: a union needs parts",
            ));
        }
        for (i, part) in self.configs.iter().enumerate() {
            let key = format!("configs[{i}]");
            let architecture = part.architecture();
            if architecture == Self::ARCHITECTURE {
                return Err(ConfigError::invalid(&key, "is a union: unions do not nest"));
            }
            if let Some(j) = self.configs[..i]
                .iter()
                .position(|p| p.architecture() == architecture)
            {
                return Err(ConfigError::invalid(
                    &key,
                    format!("is a second `{architecture}` part (configs[{j}]): a union holds one part per method"),
                ));
            }
            part.validate(model).map_err(|e| e.within(&key))?;
        }
        Ok(())
    }

    /// `{"architecture": "union", "configs": [...]}`, each part as it is saved alone: AdapterHub
    /// writes no `init_weights_seed` around the parts.
    fn saved(&self) -> Value {
        self.to_json()
    }
}

/// The parts of a union, in its config's order.
#[derive(Debug)]
pub struct UnionAdapter<B: Backend> {
    /// One adapter per part.
    pub parts: Vec<Adapter<B>>,
}

impl<B: FusedOps> Method<B> for UnionAdapter<B> {
    type Config = UnionConfig;

    fn new(config: &UnionConfig, model: &BertConfig, device: &B::Device) -> Result<Self> {
        config.validate(Some(model))?;
        let parts = config
            .configs
            .iter()
            .map(|part| part.init(model, device))
            .collect::<Result<_>>()?;
        Ok(Self { parts })
    }

    /// Each part reads its own keys under the union's name.
    fn load(
        config: &UnionConfig,
        model: &BertConfig,
        name: &str,
        file: &mut TensorFile,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate(Some(model))?;
        let parts = config
            .configs
            .iter()
            .map(|part| part.load(model, name, file, device))
            .collect::<Result<_>>()?;
        Ok(Self { parts })
    }

    fn save(&self, model: &BertConfig, name: &str, sink: &mut TensorSink) {
        for part in &self.parts {
            part.save(model, name, sink);
        }
    }

    fn unchanged_below(&self) -> usize {
        self.parts
            .iter()
            .map(Adapter::unchanged_below)
            .min()
            .unwrap_or(usize::MAX)
    }

    fn mixes_positions(&self) -> bool {
        self.parts.iter().any(Adapter::mixes_positions)
    }

    /// Alone or in a top-level `Stack`, never fused: its parts are of different kinds. In a
    /// `Stack`, its bottleneck (see [`bottleneck_at`](Method::bottleneck_at)) is routed like any
    /// other, and its other parts act through the hooks.
    fn composes(&self) -> Composes {
        Composes::Alone
    }

    fn bottleneck_at(&self, layer: usize, site: SubLayer) -> Option<&Bottleneck<B>> {
        self.parts.iter().find_map(|p| p.bottleneck_at(layer, site))
    }

    fn update_projection(
        &self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.parts.iter().fold(y, |y, p| {
            p.update_projection(layer, site, linear, x.clone(), y)
        })
    }

    fn updates(&self, layer: usize, site: Projection) -> bool {
        self.parts.iter().any(|p| p.updates(layer, site))
    }
}

/// Each hook folds over the parts in order; a sub-layer end belongs to the bottleneck part.
impl<B: FusedOps> Hooks<B> for &UnionAdapter<B> {
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        self.parts
            .iter()
            .fold((hidden, keep), |(h, k), mut p| p.embedded(h, k))
    }

    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let y = NoHooks.project(layer, site, linear, x.clone());
        Method::update_projection(*self, layer, site, linear, x, y)
    }

    fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
        self.parts
            .iter()
            .fold(kv, |kv, mut p| p.attention_kv(layer, kv))
    }

    fn layer_end(
        &mut self,
        layer: usize,
        hidden: Tensor<B, 3>,
        keep: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        self.parts
            .iter()
            .fold(hidden, |h, mut p| p.layer_end(layer, h, keep))
    }

    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &sinew_backbone::LayerNorm<B>,
    ) -> Tensor<B, 3> {
        match self
            .parts
            .iter()
            .find(|p| p.composes() == Composes::Bottleneck)
        {
            Some(mut part) => part.sublayer_end(layer, site, output, residual, layer_norm),
            None => NoHooks.sublayer_end(layer, site, output, residual, layer_norm),
        }
    }
}

// Burn's `Module` by hand: the derive would put the parts' record (an `AdapterRecord`, which
// holds this record again) into the serde bounds of its own item, a cycle rustc cannot prove.
// Each method delegates to the parts' `Vec`, as the derive does for a field.

impl<B: Backend> Clone for UnionAdapter<B> {
    fn clone(&self) -> Self {
        Self {
            parts: self.parts.clone(),
        }
    }
}

const CONTAINER: &str = "Struct:UnionAdapter";

impl<B: Backend> Module<B> for UnionAdapter<B> {
    type Record = UnionAdapterRecord<B>;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.parts.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            parts: self.parts.fork(device),
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            parts: self.parts.to_device(device),
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        visitor.enter_module("parts", CONTAINER);
        self.parts.visit(visitor);
        visitor.exit_module("parts", CONTAINER);
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        mapper.enter_module("parts", CONTAINER);
        let parts = self.parts.map(mapper);
        mapper.exit_module("parts", CONTAINER);
        Self { parts }
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            parts: self.parts.load_record(record.parts),
        }
    }

    fn into_record(self) -> Self::Record {
        UnionAdapterRecord {
            parts: self.parts.into_record(),
        }
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for UnionAdapter<B> {
    type InnerModule = UnionAdapter<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        UnionAdapter {
            parts: self.parts.valid(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self {
            parts: Vec::from_inner(module.parts),
        }
    }
}

impl<B: AutodiffBackend> HasAutodiffModule<B> for UnionAdapter<B::InnerBackend> {
    type TrainModule = UnionAdapter<B>;
}

impl<B: Backend> ModuleDisplayDefault for UnionAdapter<B> {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .set_top_level_type("UnionAdapter")
            .add("parts", &self.parts)
            .optional()
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl<B: Backend> ModuleDisplay for UnionAdapter<B> {}

/// The parts' records.
pub struct UnionAdapterRecord<B: Backend> {
    /// One per part.
    pub parts: Vec<AdapterRecord<B>>,
}

/// [`UnionAdapterRecord`] at precision `S`, serialised as the list of the parts' items.
pub struct UnionAdapterItem<B: Backend, S: PrecisionSettings> {
    parts: Vec<<AdapterRecord<B> as Record<B>>::Item<S>>,
}

impl<B: Backend> Record<B> for UnionAdapterRecord<B> {
    type Item<S: PrecisionSettings> = UnionAdapterItem<B, S>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        UnionAdapterItem {
            parts: self.parts.into_iter().map(Record::into_item).collect(),
        }
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        Self {
            parts: item
                .parts
                .into_iter()
                .map(|part| Record::from_item(part, device))
                .collect(),
        }
    }
}

impl<B: Backend, S: PrecisionSettings> Clone for UnionAdapterItem<B, S> {
    fn clone(&self) -> Self {
        Self {
            parts: self.parts.clone(),
        }
    }
}

impl<B: Backend, S: PrecisionSettings> Serialize for UnionAdapterItem<B, S> {
    fn serialize<Z: serde::Serializer>(
        &self,
        serializer: Z,
    ) -> std::result::Result<Z::Ok, Z::Error> {
        self.parts.serialize(serializer)
    }
}

impl<'de, B: Backend, S: PrecisionSettings> Deserialize<'de> for UnionAdapterItem<B, S> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        Ok(Self {
            parts: Vec::deserialize(deserializer)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    type B = NdArray;

    fn model() -> BertConfig {
        BertConfig::from_json(
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,
            "intermediate_size":16,"max_position_embeddings":16}"#,
        )
        .unwrap()
    }

    /// Parts of one method twice, nested unions and an empty list are refused by key; a bad
    /// part's key carries its index.
    #[test]
    fn bad_unions_name_the_part() {
        let model = model();
        let lora = MethodConfig::Lora(LoraConfig::lora());
        let twice = UnionConfig {
            configs: vec![lora.clone(), lora.clone()],
        };
        let err = twice.validate(Some(&model)).unwrap_err();
        assert_eq!(err.key(), Some("configs[1]"), "{err}");
        let nested = UnionConfig {
            configs: vec![lora.clone(), MethodConfig::Union(UnionConfig::mam())],
        };
        assert_eq!(
            nested.validate(Some(&model)).unwrap_err().key(),
            Some("configs[1]")
        );
        let empty = UnionConfig { configs: vec![] };
        assert_eq!(empty.validate(None).unwrap_err().key(), Some("configs"));
        let json = serde_json::json!({"architecture": "union", "configs": [
            {"architecture": "lora", "r": 0},
        ]});
        let err = serde_json::from_value::<MethodConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("configs[0].r"), "{err}");
    }

    /// The AdapterHub form reads back as the same union: the bottleneck part without an
    /// `architecture`, each part at its saved defaults.
    #[test]
    fn presets_read_back() {
        for (name, preset) in UnionConfig::presets() {
            let config = MethodConfig::Union(preset);
            let json = config.to_json();
            assert_eq!(json["architecture"], "union", "{name}");
            assert!(json.get("init_weights_seed").is_none(), "{name}");
            assert!(json["configs"][1].get("architecture").is_none(), "{name}");
            assert_eq!(
                json["configs"][0]["init_weights_seed"],
                Value::Null,
                "{name}"
            );
            let back: MethodConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back, config, "{name}");
        }
    }

    /// A union holds every part's parameters; its record goes through Burn's recorder and back,
    /// and its autodiff form to the inner backend and back.
    #[test]
    fn record_and_autodiff_round_trip() {
        let model = model();
        let d = Default::default();
        let config = UnionConfig::unipelt();
        let union = UnionAdapter::<Autodiff<B>>::new(&config, &model, &d).unwrap();
        let alone: usize = config
            .configs
            .iter()
            .map(|c| Module::num_params(&c.init::<B>(&model, &d).unwrap()))
            .sum();
        assert_eq!(Module::num_params(&union), alone);
        let inner = union.valid();
        let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(inner.clone().into_record(), ())
            .unwrap();
        let record = BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, &d)
            .unwrap();
        let fresh = UnionAdapter::<B>::new(&config, &model, &d).unwrap();
        let loaded = fresh.load_record(record);
        let flat = |u: &UnionAdapter<B>| {
            let mut sink = TensorSink::default();
            u.save(&model, "u", &mut sink);
            format!("{sink:?}")
        };
        assert_eq!(flat(&loaded), flat(&inner));
        let back = UnionAdapter::<Autodiff<B>>::from_inner(loaded);
        assert_eq!(Module::num_params(&back), alone);
    }
}
