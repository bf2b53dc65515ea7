//! An adapter model: the frozen backbone, named adapters, fusions and heads, and the active setup.
//!
//! [`AdapterModel::forward`] runs the backbone with hooks: a single active [`Adapter`] is the
//! hooks itself (each method acts at its own sites: a bottleneck at sub-layer ends, LoRA at
//! projections, prefixes at the attention's keys and values); a composed setup runs through
//! [`Composition`]. Everywhere else the plain transformer runs.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use sinew_backbone::{
    Bert, BertConfig, EncoderInput, EncoderOutput, FusedOps, NoHooks, Positions, Start,
};

use std::path::Path;

use serde_json::Value;
use sinew_adapter::folder::{
    config_file, config_object, load_head, read_head_config, read_json, reject_leftovers,
    save_folder, save_head, save_peft_folder, weights_path, write_json, AdapterFolder,
};
use sinew_adapter::tensors::{TensorFile, TensorSink};
use sinew_adapter::{
    Adapter, AdapterError, ClassificationHead, HeadConfig, HeadKind, HeadLogits, MethodConfig,
    Result,
};

use crate::compose::{Composition, FusionAttentions, Registry};
use crate::delta::{acts_in, DeltaFusion};
use crate::fusion::{location, AdapterFusion, FusionConfig, FusionLayer, Semantics};
use crate::merge::{merge_lora, MergeOptions};
use crate::setup::Setup;

/// Key of a saved fusion config: whether the fusion keeps AdapterHub's behaviour (with
/// `residual_before`, its keys see the residual too), so that a fusion read from AdapterHub's
/// folder gives the same outputs after a sinew save and reload.
const ADAPTERHUB_SEMANTICS: &str = "sinew_adapterhub_semantics";

/// The backbone with named adapters and heads.
#[derive(Module, Debug)]
pub struct AdapterModel<B: Backend> {
    /// The pretrained encoder.
    pub backbone: Bert<B>,
    /// Adapters, in the order added.
    pub adapters: Vec<Adapter<B>>,
    /// Heads, in the order added.
    pub heads: Vec<ClassificationHead<B>>,
    /// Fusions, in the order added.
    pub fusions: Vec<AdapterFusion<B>>,
    #[module(skip)]
    config: BertConfig,
    #[module(skip)]
    adapter_names: Vec<String>,
    #[module(skip)]
    adapter_configs: Vec<MethodConfig>,
    #[module(skip)]
    head_names: Vec<String>,
    #[module(skip)]
    head_configs: Vec<HeadConfig>,
    /// Per fusion: its name (`a,b,c`), its adapters and config.
    #[module(skip)]
    fusion_specs: Vec<(String, Vec<String>, FusionConfig)>,
    #[module(skip)]
    active: Option<Setup>,
    /// The head used when no adapter is active (head-only and fully fine-tuned models).
    #[module(skip)]
    bare_head: Option<String>,
    #[module(skip)]
    semantics: Semantics,
    /// The merged adapter and the backbone projections its merge replaced.
    #[module(skip)]
    merged: Option<(String, Vec<sinew_adapter::lora::SavedProjection>)>,
}

/// The parts of an [`AdapterModel`] that train, slot for slot (`None`: frozen).
#[derive(Module, Debug)]
pub struct TrainedParts<B: Backend> {
    /// The backbone, when fine-tuned.
    pub backbone: Option<Bert<B>>,
    /// Adapters, in the model's order.
    pub adapters: Vec<Option<Adapter<B>>>,
    /// Heads, in the model's order.
    pub heads: Vec<Option<ClassificationHead<B>>>,
    /// Fusions, in the model's order.
    pub fusions: Vec<Option<AdapterFusion<B>>>,
}

/// The logits of one head of the active setup.
#[derive(Debug, Clone)]
pub struct HeadOutput<B: Backend> {
    /// The head's name.
    pub name: String,
    /// The rows of the batch it predicted for, in input order (of the replicated batch for
    /// `Parallel`).
    pub examples: Vec<usize>,
    /// Its logits.
    pub logits: HeadLogits<B>,
}

/// What a forward pass must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs {
    /// The encoder's output at every position and the heads' logits.
    Everything,
    /// The heads' logits only.
    Logits,
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct AdapterOutput<B: Backend> {
    /// The encoder's output.
    pub encoded: EncoderOutput<B>,
    /// Logits `[batch, labels]` of the active adapter's head, if it has a text-level head.
    pub logits: Option<Tensor<B, 2>>,
    /// Logits `[batch, seq, labels]` of the active adapter's head, if it is a tagging head.
    pub token_logits: Option<Tensor<B, 3>>,
    /// Every head of the setup (several for `Parallel` and `BatchSplit`; `logits` then holds
    /// their rows concatenated when they all predict the same number of labels per text).
    pub heads: Vec<HeadOutput<B>>,
    /// Fusion attentions `(layer, site, [batch, seq, adapters])`, when asked for.
    pub fusion_attentions: Option<FusionAttentions<B>>,
}

impl<B: FusedOps> AdapterModel<B> {
    /// Wraps a loaded backbone; no adapters yet.
    pub fn new(backbone: Bert<B>, config: BertConfig) -> Self {
        Self {
            backbone,
            adapters: Vec::new(),
            heads: Vec::new(),
            fusions: Vec::new(),
            config,
            adapter_names: Vec::new(),
            adapter_configs: Vec::new(),
            head_names: Vec::new(),
            head_configs: Vec::new(),
            fusion_specs: Vec::new(),
            active: None,
            bare_head: None,
            semantics: Semantics::default(),
            merged: None,
        }
    }

    /// The backbone's config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Adds a new adapter `name` of method `config` (freshly initialised).
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: MethodConfig,
        device: &B::Device,
    ) -> Result<()> {
        let adapter = config.init(&self.config, device)?;
        self.insert_adapter(name, config, adapter)
    }

    /// Adds head `name`, used when adapter `name` is active.
    pub fn add_head(&mut self, name: &str, config: HeadConfig, device: &B::Device) -> Result<()> {
        let head = ClassificationHead::new(&config, &self.config, device)?;
        self.insert_head(name, config, head)
    }

    /// Loads an adapter folder (AdapterHub's layout), with its head if it has one; returns the
    /// adapter's name.
    pub fn load_adapter(&mut self, dir: &Path, device: &B::Device) -> Result<String> {
        let folder = AdapterFolder::read(dir, &self.config)?;
        let adapter = folder.load_adapter::<B>(&self.config, device)?;
        let head = folder.load_head::<B>(&self.config, device)?;
        self.insert_adapter(&folder.name, folder.config.clone(), adapter)?;
        if let (Some(config), Some(head)) = (folder.head, head) {
            self.insert_head(&folder.name, config, head)?;
        }
        Ok(folder.name)
    }

    /// Loads a head saved alone (AdapterHub's `save_head`: `head_config.json` and its weights)
    /// under the name it was saved with — the adapter or fusion it predicts for; returns it.
    pub fn load_head(&mut self, dir: &Path, device: &B::Device) -> Result<String> {
        let path = dir.join("head_config.json");
        let config = read_head_config(dir, Some(&self.config))?
            .ok_or_else(|| AdapterError::file(&path, "not found"))?;
        let (_, name) = config_object(&path, Some(&self.config))?;
        let head = load_head(dir, &self.config, &name, &config, device)?;
        self.insert_head(&name, config, head)?;
        Ok(name)
    }

    /// Saves adapter `name` (and its head, with `with_head`) in AdapterHub's layout.
    pub fn save_adapter(&self, dir: &Path, name: &str, with_head: bool) -> Result<()> {
        let index = self.adapter_index(name)?;
        let head = Self::index_of(&self.head_names, name)
            .filter(|_| with_head)
            .map(|i| (&self.head_configs[i], &self.heads[i]));
        let adapter = (&self.adapter_configs[index], &self.adapters[index]);
        save_folder(dir, &self.config, name, adapter, head)
    }

    /// Saves LoRA adapter `name` as a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`),
    /// with its head when that is a classifier on the pooler (`modules_to_save`).
    pub fn save_peft(&self, dir: &Path, name: &str) -> Result<()> {
        let index = self.adapter_index(name)?;
        let head =
            Self::index_of(&self.head_names, name).map(|i| (&self.head_configs[i], &self.heads[i]));
        save_peft_folder(
            dir,
            &self.config,
            name,
            &self.adapter_configs[index],
            &self.adapters[index],
            head,
        )
    }

    fn insert_adapter(
        &mut self,
        name: &str,
        config: MethodConfig,
        adapter: Adapter<B>,
    ) -> Result<()> {
        if self.adapter_names.iter().any(|n| n == name) {
            return Err(AdapterError::Input(format!(
                "an adapter named `{name}` already exists"
            )));
        }
        self.adapter_names.push(name.to_string());
        self.adapter_configs.push(config);
        self.adapters.push(adapter);
        Ok(())
    }

    fn insert_head(
        &mut self,
        name: &str,
        config: HeadConfig,
        head: ClassificationHead<B>,
    ) -> Result<()> {
        if self.head_names.iter().any(|n| n == name) {
            return Err(AdapterError::Input(format!(
                "a head named `{name}` already exists"
            )));
        }
        self.head_names.push(name.to_string());
        self.head_configs.push(config);
        self.heads.push(head);
        Ok(())
    }

    fn adapter_index(&self, name: &str) -> Result<usize> {
        Self::index_of(&self.adapter_names, name).ok_or_else(|| {
            AdapterError::Input(format!(
                "unknown adapter `{name}` (loaded: {})",
                self.adapter_names.join(", ")
            ))
        })
    }

    /// Names of the adapters, in the order added.
    pub fn adapter_names(&self) -> &[String] {
        &self.adapter_names
    }

    /// Makes `setup` the active setup: an adapter name or an expression such as
    /// `Fuse(a, b)` or `Stack(a, Parallel(b, c))` (`None`: the bare backbone). A merged adapter
    /// (see [`merge_adapter`](Self::merge_adapter)) stays merged only while it alone is active:
    /// any other setup unmerges it first, since its weights would otherwise act a second time.
    pub fn set_active(&mut self, setup: Option<&str>) -> Result<()> {
        let setup = setup
            .map(|text| {
                let setup = Setup::parse(text).map_err(AdapterError::Input)?;
                self.check_setup(&setup)?;
                Ok::<_, AdapterError>(setup)
            })
            .transpose()?;
        if self.merged_conflicts(setup.as_ref()).is_some() {
            self.unmerge_adapter();
        }
        self.active = setup;
        Ok(())
    }

    /// The merged adapter's name when running `setup` on the merged weights would be wrong
    /// (anything but that adapter alone).
    fn merged_conflicts(&self, setup: Option<&Setup>) -> Option<&str> {
        let (merged, _) = self.merged.as_ref()?;
        match setup {
            Some(Setup::Adapter(name)) if name == merged => None,
            _ => Some(merged),
        }
    }

    /// The active setup.
    pub fn active(&self) -> Option<&Setup> {
        self.active.as_ref()
    }

    /// Chooses sinew's corrected behaviour or AdapterHub's exact one (see the crate docs).
    pub fn set_semantics(&mut self, semantics: Semantics) {
        self.semantics = semantics;
    }

    /// Every name is loaded, every `Fuse` has its fusion, and adapters other than bottlenecks
    /// (they act outside sub-layer ends, where blocks cannot route them) stand alone or in a
    /// top-level `Stack`.
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        for name in setup.flatten() {
            self.adapter_index(name)?;
        }
        fn walk<B: FusedOps>(model: &AdapterModel<B>, s: &Setup, top_stack: bool) -> Result<()> {
            match s {
                Setup::Adapter(name) => {
                    let i = model.adapter_index(name)?;
                    if !top_stack && !matches!(model.adapters[i], Adapter::Bottleneck(_)) {
                        return Err(AdapterError::Input(format!(
                            "`{name}` is a {} adapter: it can stand alone or in a top-level Stack, not inside a composition block",
                            model.adapter_configs[i].architecture()
                        )));
                    }
                    Ok(())
                }
                Setup::Fuse(children) => {
                    let name = Setup::fusion_name(children);
                    if !model.fusion_specs.iter().any(|(n, _, _)| *n == name) {
                        return Err(AdapterError::Input(format!(
                            "no fusion `{name}` is loaded (add_fusion or --fusion DIR)"
                        )));
                    }
                    children.iter().try_for_each(|c| walk(model, c, false))
                }
                Setup::Stack(children) => {
                    children.iter().try_for_each(|c| walk(model, c, top_stack))
                }
                block => block
                    .children()
                    .iter()
                    .try_for_each(|c| walk(model, c, false)),
            }
        }
        match setup {
            Setup::Adapter(_) => Ok(()),
            Setup::Stack(_) => walk(self, setup, true),
            Setup::Fuse(_) if self.delta_fusion(setup).is_some() => Ok(()),
            _ => walk(self, setup, false),
        }
    }

    /// The adapters of a top-level `Fuse` of LoRA/IA3 adapters (a delta fusion), if `setup` is one.
    fn delta_fusion<'s>(&self, setup: &'s Setup) -> Option<Vec<&'s str>> {
        let Setup::Fuse(children) = setup else {
            return None;
        };
        let names: Vec<&str> = children
            .iter()
            .map(|c| match c {
                Setup::Adapter(n) => Some(n.as_str()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        names
            .iter()
            .all(|n| matches!(self.adapter(n), Some(Adapter::Lora(_))))
            .then_some(names)
    }

    /// Trains adapter `name` and its head only: the backbone, every other adapter and head are
    /// frozen, so autodiff computes no gradient for them. Also makes `name` the active adapter.
    pub fn train_adapter(&mut self, name: &str) -> Result<()> {
        self.train_adapters(&[name])?;
        self.set_active(Some(name))
    }

    /// Trains adapters `names` and their heads (multi-task training: route each example with
    /// [`forward_routed`](Self::forward_routed)); everything else is frozen.
    pub fn train_adapters(&mut self, names: &[&str]) -> Result<()> {
        for name in names {
            self.adapter_index(name)?;
        }
        self.freeze_all();
        let adapters = std::mem::take(&mut self.adapters);
        self.adapters = adapters
            .into_iter()
            .zip(&self.adapter_names)
            .map(|(adapter, n)| set_trainable(adapter, names.contains(&n.as_str())))
            .collect();
        self.set_heads_trainable(names);
        Ok(())
    }

    /// Trains head `name` on the bare backbone — no adapter is active — and, with
    /// `with_backbone`, the backbone too (full fine-tuning): the two baselines of adapters.
    pub fn train_head(&mut self, name: &str, with_backbone: bool) -> Result<()> {
        self.use_bare_head(Some(name))?;
        self.freeze_all();
        self.backbone = set_trainable(self.backbone.clone(), with_backbone);
        self.set_heads_trainable(&[name]);
        Ok(())
    }

    /// Head `name` predicts from the bare backbone (`None`: no head), and no adapter is active.
    pub fn use_bare_head(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(name) = name {
            Self::index_of(&self.head_names, name)
                .ok_or_else(|| AdapterError::Input(format!("no head `{name}` is loaded")))?;
        }
        self.active = None;
        self.bare_head = name.map(str::to_string);
        Ok(())
    }

    fn freeze_all(&mut self) {
        *self = set_trainable(self.clone(), false);
    }

    fn set_heads_trainable(&mut self, names: &[&str]) {
        let heads = std::mem::take(&mut self.heads);
        self.heads = heads
            .into_iter()
            .zip(&self.head_names)
            .map(|(head, n)| set_trainable(head, names.contains(&n.as_str())))
            .collect();
    }

    /// The modules with a trainable parameter (the others are `None`): what a checkpoint keeps.
    pub fn trained_parts(&self) -> TrainedParts<B> {
        fn keep<B: FusedOps, M: Module<B> + Clone>(m: &M) -> Option<M> {
            let mut counter = ParamCounter::default();
            m.visit(&mut counter);
            (counter.trainable > 0).then(|| m.clone())
        }
        TrainedParts {
            backbone: keep(&self.backbone),
            adapters: self.adapters.iter().map(keep).collect(),
            heads: self.heads.iter().map(keep).collect(),
            fusions: self.fusions.iter().map(keep).collect(),
        }
    }

    /// Puts saved [`trained_parts`](Self::trained_parts) back (each keeps whether it trains);
    /// the model must hold the same adapters, heads and fusions, in the same order.
    pub fn restore_parts(&mut self, parts: TrainedPartsRecord<B>) -> Result<()> {
        fn put<B: FusedOps, M: Module<B> + Clone>(
            what: &str,
            slots: &mut [M],
            saved: Vec<Option<M::Record>>,
        ) -> Result<()> {
            if saved.len() != slots.len() {
                return Err(AdapterError::Input(format!(
                    "the checkpoint has {} {what}, the model {}",
                    saved.len(),
                    slots.len()
                )));
            }
            for (i, (slot, record)) in slots.iter_mut().zip(saved).enumerate() {
                if let Some(record) = record {
                    *slot = load_checked(slot, record, &format!("{what}[{i}]"))?;
                }
            }
            Ok(())
        }
        if let Some(record) = parts.backbone {
            self.backbone = load_checked(&self.backbone, record, "backbone")?;
        }
        put("adapters", &mut self.adapters, parts.adapters)?;
        put("heads", &mut self.heads, parts.heads)?;
        put("fusions", &mut self.fusions, parts.fusions)
    }

    /// Adds a new fusion of `adapters` (already loaded, in this order), named `a,b,c` as in
    /// AdapterHub, with a layer wherever all of them have a bottleneck; returns its name.
    pub fn add_fusion(
        &mut self,
        adapters: &[&str],
        config: FusionConfig,
        device: &B::Device,
    ) -> Result<String> {
        let names: Vec<String> = adapters.iter().map(|s| s.to_string()).collect();
        let fusion = AdapterFusion::build(
            &config,
            &self.config,
            |l, site| self.fused_site(&names, l, site),
            |_, _| Ok(FusionLayer::new(&config, &self.config, device)),
        )?;
        self.insert_fusion(names, config, fusion)
    }

    fn fused_site(
        &self,
        adapters: &[String],
        layer: usize,
        site: sinew_backbone::SubLayer,
    ) -> bool {
        let fused: Vec<&Adapter<B>> = adapters
            .iter()
            .filter_map(|n| self.adapter_index(n).ok().map(|i| &self.adapters[i]))
            .collect();
        // Bottleneck fusion: where all the adapters sit; delta fusion: where any acts.
        fused
            .iter()
            .all(|a| matches!(a, Adapter::Bottleneck(b) if b.at(layer, site).is_some()))
            || fused.iter().any(|a| acts_in(a, layer, site))
    }

    fn insert_fusion(
        &mut self,
        adapters: Vec<String>,
        config: FusionConfig,
        fusion: AdapterFusion<B>,
    ) -> Result<String> {
        let mut kinds = Vec::new();
        for name in &adapters {
            match self.adapter_index(name).map(|i| &self.adapters[i]) {
                Ok(Adapter::Bottleneck(_)) => kinds.push("bottleneck"),
                Ok(Adapter::Lora(_)) => kinds.push("lora"),
                Ok(_) => {
                    return Err(AdapterError::Input(format!(
                        "fusion over `{name}`: sinew fuses bottleneck adapters, or LoRA/IA3 adapters (over their sub-layer deltas), not prefix or prompt tuning"
                    )))
                }
                Err(_) => {
                    return Err(AdapterError::Input(format!(
                        "fusion needs adapter `{name}`: load it first"
                    )))
                }
            }
        }
        if kinds.windows(2).any(|w| w[0] != w[1]) {
            return Err(AdapterError::Input(format!(
                "fusion over {}: bottleneck and LoRA/IA3 adapters fuse separately",
                adapters.join(", ")
            )));
        }
        let name = adapters.join(",");
        if self.fusion_specs.iter().any(|(n, _, _)| *n == name) {
            return Err(AdapterError::Input(format!(
                "a fusion `{name}` already exists"
            )));
        }
        self.fusion_specs.push((name.clone(), adapters, config));
        self.fusions.push(fusion);
        Ok(name)
    }

    /// Loads a fusion folder saved by AdapterHub's `save_adapter_fusion` (or by sinew), with its
    /// head if it has one; its adapters must be loaded. Returns the fusion's name.
    pub fn load_fusion(&mut self, dir: &Path, device: &B::Device) -> Result<String> {
        let path = dir.join("adapter_fusion_config.json");
        let json = read_json(&path)?;
        let adapters: Vec<String> = match json.get("adapter_names") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| AdapterError::file(&path, format!("adapter_names: {e}")))?,
            None => return Err(AdapterError::file(&path, "missing key `adapter_names`")),
        };
        let (raw, name) = config_object(&path, Some(&self.config))?;
        let config: FusionConfig = serde_json::from_value(Value::Object(raw))
            .map_err(|e| AdapterError::file(&path, format!("config: {e}")))?;
        if let Some(p) = config.dropout_prob {
            sinew_adapter::method::probability("dropout_prob", p)
                .map_err(|e| AdapterError::file(&path, e))?;
        }
        if let Some(missing) = adapters.iter().find(|a| self.adapter_index(a).is_err()) {
            return Err(AdapterError::file(
                &path,
                format!("fusion `{name}` needs adapter `{missing}`: load it first (--adapter DIR)"),
            ));
        }
        let mut file = TensorFile::read(&weights_path(dir, "model_adapter_fusion"))?;
        let root = sinew_adapter::bottleneck::model_prefix(&self.config).to_string();
        let mut fusion = AdapterFusion::build(
            &config,
            &self.config,
            |l, site| self.fused_site(&adapters, l, site),
            |l, site| {
                let prefix = format!(
                    "{root}.encoder.layer.{l}.{}.adapter_fusion_layer.{name}",
                    location(site)
                );
                FusionLayer::load(&config, &self.config, &mut file, &prefix, device)
            },
        )?;
        // AdapterHub also builds (and saves) fusion layers where its adapters are left out,
        // which never act: read past them.
        // Whether it keeps AdapterHub's behaviour: sinew's files say so; AdapterHub's own say
        // it by their `version`.
        fusion.from_adapterhub = match json.get(ADAPTERHUB_SEMANTICS) {
            Some(v) => v.as_bool().ok_or_else(|| {
                AdapterError::file(&path, format!("{ADAPTERHUB_SEMANTICS}: not true or false"))
            })?,
            None => json
                .get("version")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("adapters")),
        };
        let unused = format!(".adapter_fusion_layer.{name}.");
        file.skip(|key| key.contains(&unused));
        reject_leftovers(&file)?;
        let fusion_name = self.insert_fusion(adapters, config, fusion)?;
        if let Some(head) = read_head_config(dir, Some(&self.config))? {
            let loaded = load_head(dir, &self.config, &fusion_name, &head, device)?;
            self.insert_head(&fusion_name, head, loaded)?;
        }
        Ok(fusion_name)
    }

    /// Saves fusion `name` in AdapterHub's layout (`adapter_fusion_config.json`,
    /// `model_adapter_fusion.safetensors`, and its head with `with_head`).
    pub fn save_fusion(&self, dir: &Path, name: &str, with_head: bool) -> Result<()> {
        let index = self.fusion_index(name)?;
        let (_, adapters, config) = &self.fusion_specs[index];
        let fusion = &self.fusions[index];
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let root = sinew_adapter::bottleneck::model_prefix(&self.config);
        let mut sink = TensorSink::default();
        for site in [
            sinew_backbone::SubLayer::Attention,
            sinew_backbone::SubLayer::FeedForward,
        ] {
            for l in 0..self.config.num_hidden_layers {
                if let Some(layer) = fusion.at(l, site) {
                    let prefix = format!(
                        "{root}.encoder.layer.{l}.{}.adapter_fusion_layer.{name}",
                        location(site)
                    );
                    layer.save(&mut sink, &prefix);
                }
            }
        }
        sink.write(&dir.join("model_adapter_fusion.safetensors"))?;
        let mut json = config_file(
            serde_json::to_value(config).expect("configs serialise"),
            &self.config,
            name,
        );
        json["adapter_names"] = serde_json::to_value(adapters).expect("strings");
        json[ADAPTERHUB_SEMANTICS] = fusion.from_adapterhub.into();
        write_json(&dir.join("adapter_fusion_config.json"), &json)?;
        match Self::index_of(&self.head_names, name).filter(|_| with_head) {
            Some(i) => save_head(
                dir,
                &self.config,
                name,
                &self.head_configs[i],
                &self.heads[i],
            ),
            None => Ok(()),
        }
    }

    fn fusion_index(&self, name: &str) -> Result<usize> {
        self.fusion_specs
            .iter()
            .position(|(n, _, _)| n == name)
            .ok_or_else(|| AdapterError::Input(format!("unknown fusion `{name}`")))
    }

    /// Stage two of AdapterFusion: trains fusion `name` (`a,b,c`) and its head; the backbone and
    /// every adapter are frozen unless `unfreeze_adapters`. Makes `Fuse(a, b, c)` active.
    pub fn train_fusion(&mut self, name: &str, unfreeze_adapters: bool) -> Result<()> {
        let index = self.fusion_index(name)?;
        let fused = self.fusion_specs[index].1.clone();
        self.freeze_all();
        let adapters = std::mem::take(&mut self.adapters);
        self.adapters = adapters
            .into_iter()
            .zip(&self.adapter_names)
            .map(|(a, n)| set_trainable(a, unfreeze_adapters && fused.contains(n)))
            .collect();
        let fusions = std::mem::take(&mut self.fusions);
        self.fusions = fusions
            .into_iter()
            .enumerate()
            .map(|(i, f)| set_trainable(f, i == index))
            .collect();
        self.set_heads_trainable(&[name]);
        self.set_active(Some(&format!("Fuse({})", fused.join(", "))))
    }

    /// AdapterFusion's value regularisation `0.01·Σ‖I − W_v‖²` over the trained fusions whose
    /// config asks for it; add it to the training loss.
    pub fn fusion_regularization_loss(&self) -> Option<Tensor<B, 1>> {
        self.fusions
            .iter()
            .zip(&self.fusion_specs)
            .filter(|(_, (_, _, c))| c.regularization)
            .filter_map(|(f, _)| f.regularization_loss())
            .reduce(|a, b| a + b)
    }

    /// One temperature-annealing step of every fusion with `temperature` (call once per
    /// optimizer step).
    pub fn anneal_fusion_temperatures(&mut self) {
        for (fusion, (_, _, config)) in self.fusions.iter_mut().zip(&self.fusion_specs) {
            fusion.anneal(config);
        }
    }

    /// Parameters that would be trained now, and all parameters.
    pub fn param_counts(&self) -> (usize, usize) {
        let mut counter = ParamCounter::default();
        self.visit(&mut counter);
        (counter.trainable, counter.total)
    }

    /// Parameters of adapter `name` (without its head).
    pub fn adapter_params(&self, name: &str) -> Result<usize> {
        Ok(self.adapters[self.adapter_index(name)?].num_params())
    }

    /// Folds LoRA/IA3 adapter `name` into the backbone's weights: it then costs nothing at
    /// inference. One adapter at a time; [`unmerge_adapter`](Self::unmerge_adapter) undoes it exactly.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        if let Some((merged, _)) = &self.merged {
            return Err(AdapterError::Input(format!(
                "adapter `{merged}` is already merged"
            )));
        }
        let index = self.adapter_index(name)?;
        let Adapter::Lora(lora) = &self.adapters[index] else {
            return Err(AdapterError::Input(format!(
                "only LoRA/IA3 adapters can be merged; `{name}` is not one"
            )));
        };
        let saved = lora.merge_into(&mut self.backbone)?;
        self.merged = Some((name.to_string(), saved));
        Ok(())
    }

    /// Adds adapter `name`, the weight-space merge of LoRA (or IA3) adapters `inputs` (see
    /// [`crate::merge`]); save it with [`save_adapter`](Self::save_adapter).
    pub fn merge_loras(
        &mut self,
        name: &str,
        inputs: &[&str],
        options: &MergeOptions,
        device: &B::Device,
    ) -> Result<()> {
        let mut loras = Vec::new();
        for input in inputs {
            let i = self.adapter_index(input)?;
            match (&self.adapter_configs[i], &self.adapters[i]) {
                (MethodConfig::Lora(c), Adapter::Lora(a)) => loras.push((c, a)),
                _ => {
                    return Err(AdapterError::Input(format!(
                        "`{input}` is not a LoRA/IA3 adapter: only those merge in weight space"
                    )))
                }
            }
        }
        let (config, adapter) =
            merge_lora(&self.config, &loras, options, device).map_err(AdapterError::Input)?;
        self.insert_adapter(name, MethodConfig::Lora(config), Adapter::Lora(adapter))
    }

    /// Replaces prefix-tuning adapter `name`'s reparameterisation MLP by the static prefixes it
    /// produces: same outputs, less work per forward pass; it is then saved as `flat`.
    pub fn eject_prefix(&mut self, name: &str) -> Result<()> {
        let index = self.adapter_index(name)?;
        let (Adapter::Prefix(_), MethodConfig::Prefix(config)) =
            (&self.adapters[index], &mut self.adapter_configs[index])
        else {
            return Err(AdapterError::Input(format!(
                "`{name}` is not a prefix-tuning adapter"
            )));
        };
        config.flat = true;
        let Adapter::Prefix(prefix) = self.adapters.remove(index) else {
            unreachable!("matched above")
        };
        self.adapters.insert(index, Adapter::Prefix(prefix.eject()));
        Ok(())
    }

    /// Restores the backbone weights a merge replaced.
    pub fn unmerge_adapter(&mut self) {
        if let Some((_, saved)) = self.merged.take() {
            sinew_adapter::lora::LoraAdapter::unmerge_from(&mut self.backbone, saved);
        }
    }

    fn index_of(names: &[String], name: &str) -> Option<usize> {
        names.iter().position(|n| n == name)
    }

    /// The encoder with the active setup, and the logits of its heads.
    pub fn forward(&self, input: &EncoderInput<B>) -> Result<AdapterOutput<B>> {
        self.run(input, false)
    }

    /// [`forward`](Self::forward) for a caller that reads only the heads' logits (training,
    /// evaluation, prediction): when every head of the setup reads only the first position, the
    /// last layer runs for that position alone, and `encoded` holds only it. The logits are the
    /// full pass's (tested).
    pub fn logits(&self, input: &EncoderInput<B>) -> Result<AdapterOutput<B>> {
        self.logits_from(Start::Tokens(input))
    }

    /// [`logits`](Self::logits) from `start` (as [`forward_from`](Self::forward_from)).
    pub fn logits_from(&self, start: Start<'_, B>) -> Result<AdapterOutput<B>> {
        self.from(start, Outputs::Logits)
    }

    /// [`forward`](Self::forward) from `start`: with [`Start::Hidden`], from the hidden states
    /// entering a layer at or below [`frozen_prefix`](Self::frozen_prefix), computed once by
    /// [`Bert::hidden_before`] and reused (the layers below run with no adapter anyway).
    pub fn forward_from(&self, start: Start<'_, B>) -> Result<AdapterOutput<B>> {
        self.from(start, Outputs::Everything)
    }

    fn from(&self, start: Start<'_, B>, outputs: Outputs) -> Result<AdapterOutput<B>> {
        if let Start::Hidden { layer, .. } = &start {
            let frozen = self.frozen_prefix();
            if *layer > frozen {
                return Err(AdapterError::Input(format!(
                    "cannot start at layer {layer}: the active setup leaves only the {frozen} layers below as pretrained"
                )));
            }
        }
        self.run_setup(start, self.active.as_ref(), false, outputs)
    }

    /// How many of the lowest layers run as pretrained under the active setup, with nothing
    /// training in them: their outputs for an example's real tokens never change, so
    /// [`forward_from`](Self::forward_from) can skip them (AdapterDrop's observation).
    pub fn frozen_prefix(&self) -> usize {
        let layers = self.backbone.num_layers();
        let mut counter = ParamCounter::default();
        self.backbone.visit(&mut counter);
        if counter.trainable > 0 {
            return 0;
        }
        let Some(setup) = &self.active else {
            return layers;
        };
        setup
            .flatten()
            .into_iter()
            .filter_map(|name| self.adapter(name))
            .map(Adapter::unchanged_below)
            .fold(layers, usize::min)
    }

    /// [`forward`](Self::forward), also returning the fusion attentions.
    pub fn forward_with_attentions(&self, input: &EncoderInput<B>) -> Result<AdapterOutput<B>> {
        self.run(input, true)
    }

    /// Per-example routing: example `i` goes through adapter `tasks[i]` and its head, in one
    /// batch (for training too: gradients reach each adapter from its own examples). The
    /// examples are grouped by task into a `BatchSplit` and put back in input order.
    pub fn forward_routed(
        &self,
        input: &EncoderInput<B>,
        tasks: &[&str],
    ) -> Result<AdapterOutput<B>> {
        self.routed(input, tasks, Outputs::Everything)
    }

    /// [`forward_routed`](Self::forward_routed) for a caller that reads only the logits (see
    /// [`logits`](Self::logits)).
    pub fn logits_routed(
        &self,
        input: &EncoderInput<B>,
        tasks: &[&str],
    ) -> Result<AdapterOutput<B>> {
        self.routed(input, tasks, Outputs::Logits)
    }

    fn routed(
        &self,
        input: &EncoderInput<B>,
        tasks: &[&str],
        outputs: Outputs,
    ) -> Result<AdapterOutput<B>> {
        let [batch, _] = input.input_ids.dims();
        if tasks.len() != batch {
            return Err(AdapterError::Input(format!(
                "{} task names for a batch of {batch} examples",
                tasks.len()
            )));
        }
        let mut names: Vec<&str> = Vec::new();
        for task in tasks {
            if !names.contains(task) {
                names.push(task);
            }
        }
        // Stable: examples of the first task seen, then the second, ...
        let order: Vec<usize> = names
            .iter()
            .flat_map(|n| (0..batch).filter(move |&i| tasks[i] == *n))
            .collect();
        let sizes: Vec<String> = names
            .iter()
            .map(|n| tasks.iter().filter(|t| *t == n).count().to_string())
            .collect();
        let text = format!(
            "BatchSplit({}, batch_sizes=[{}])",
            names.join(", "),
            sizes.join(", ")
        );
        let setup = if names.len() == 1 {
            Setup::Adapter(names[0].to_string())
        } else {
            Setup::parse(&text).map_err(AdapterError::Input)?
        };
        self.check_setup(&setup)?;
        let device = input.input_ids.device();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(order.iter().map(|&i| i as i64).collect::<Vec<_>>(), [batch]),
            &device,
        );
        let sorted = EncoderInput {
            input_ids: input.input_ids.clone().select(0, index.clone()),
            token_type_ids: input.token_type_ids.clone().select(0, index.clone()),
            attention_mask: input.attention_mask.clone().select(0, index),
        };
        let mut inverse = vec![0; batch];
        for (sorted_row, &i) in order.iter().enumerate() {
            inverse[i] = sorted_row;
        }
        let back = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                inverse.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [batch],
            ),
            &device,
        );
        let out = self.run_setup(Start::Tokens(&sorted), Some(&setup), false, outputs)?;
        let encoded = out.encoded;
        Ok(AdapterOutput {
            encoded: EncoderOutput {
                last_hidden_state: encoded.last_hidden_state.select(0, back.clone()),
                keep: encoded.keep.select(0, back.clone()),
                pooler_output: encoded.pooler_output.map(|p| p.select(0, back.clone())),
            },
            logits: out.logits.map(|l| l.select(0, back.clone())),
            token_logits: out.token_logits.map(|l| l.select(0, back)),
            heads: out
                .heads
                .into_iter()
                .map(|h| HeadOutput {
                    examples: h.examples.iter().map(|&r| order[r]).collect(),
                    ..h
                })
                .collect(),
            fusion_attentions: None,
        })
    }

    fn run(&self, input: &EncoderInput<B>, attentions: bool) -> Result<AdapterOutput<B>> {
        self.run_setup(
            Start::Tokens(input),
            self.active.as_ref(),
            attentions,
            Outputs::Everything,
        )
    }

    /// The positions of the last layer a pass must compute: the first only when just the logits
    /// are wanted and every head reads only it (no tagging head, no `Split` moving positions,
    /// no gate averaging over positions, no fusion attentions asked for).
    fn positions(&self, setup: Option<&Setup>, attentions: bool, outputs: Outputs) -> Positions {
        let heads = match setup {
            Some(s) => s.heads(),
            None => self.bare_head.iter().cloned().collect(),
        };
        let text_heads = heads.iter().all(|name| {
            Self::index_of(&self.head_names, name)
                .is_none_or(|i| self.heads[i].kind() != HeadKind::Tagging)
        });
        let gated = setup.is_some_and(|s| {
            s.flatten()
                .into_iter()
                .filter_map(|name| self.adapter(name))
                .any(Adapter::mixes_positions)
        });
        let first = outputs == Outputs::Logits
            && !attentions
            && text_heads
            && !gated
            && !setup.is_some_and(Setup::splits_positions);
        if first {
            Positions::First
        } else {
            Positions::All
        }
    }

    fn run_setup(
        &self,
        start: Start<'_, B>,
        setup: Option<&Setup>,
        attentions: bool,
        outputs: Outputs,
    ) -> Result<AdapterOutput<B>> {
        if let Some(merged) = self.merged_conflicts(setup) {
            return Err(AdapterError::Input(format!(
                "adapter `{merged}` is merged into the backbone's weights: unmerge it before running {}",
                setup.map_or("the bare backbone".to_string(), |s| format!("`{s}`"))
            )));
        }
        let merged = self.merged.as_ref().map(|(n, _)| n.as_str());
        let [batch, seq] = start.dims();
        let positions = self.positions(setup, attentions, outputs);
        let mut fusion_attentions = None;
        let encoded = match setup {
            // A merged adapter already lives in the backbone's weights.
            Some(Setup::Adapter(name)) if Some(name.as_str()) == merged => {
                self.backbone.run_for(start, &mut NoHooks, positions)
            }
            Some(Setup::Adapter(name)) => {
                let mut adapter = &self.adapters[self.adapter_index(name)?];
                self.backbone.run_for(start, &mut adapter, positions)
            }
            Some(setup) if self.delta_fusion(setup).is_some() => {
                let names = self.delta_fusion(setup).expect("checked");
                let name = Setup::fusion_name(setup.children());
                let (_, fusion) = self
                    .fusion(&name)
                    .ok_or_else(|| AdapterError::Input(format!("no fusion `{name}` is loaded")))?;
                let mut hooks = DeltaFusion::new(self, &names, fusion, self.semantics, attentions);
                let encoded = self.backbone.run_for(start, &mut hooks, positions);
                fusion_attentions = hooks.attentions;
                // Every replica holds the fused states: keep the first.
                slice_output(&encoded, 0..batch)
            }
            Some(setup) => {
                check_sizes(setup, batch, seq)?;
                let mut hooks = Composition::new(self, setup, self.semantics, attentions);
                let encoded = self.backbone.run_for(start, &mut hooks, positions);
                fusion_attentions = hooks.attentions;
                encoded
            }
            None => self.backbone.run_for(start, &mut NoHooks, positions),
        };
        let heads = self.head_outputs(setup, &encoded, batch)?;
        let (logits, token_logits) = match heads.as_slice() {
            [one] => match &one.logits {
                HeadLogits::Text(l) => (Some(l.clone()), None),
                HeadLogits::Tokens(l) => (None, Some(l.clone())),
            },
            [] => (None, None),
            many => {
                let texts: Vec<Tensor<B, 2>> = many
                    .iter()
                    .filter_map(|h| match &h.logits {
                        HeadLogits::Text(l) => Some(l.clone()),
                        HeadLogits::Tokens(_) => None,
                    })
                    .collect();
                let same = texts.len() == many.len()
                    && texts.windows(2).all(|w| w[0].dims()[1] == w[1].dims()[1]);
                (same.then(|| Tensor::cat(texts, 0)), None)
            }
        };
        Ok(AdapterOutput {
            encoded,
            logits,
            token_logits,
            heads,
            fusion_attentions,
        })
    }

    /// The heads of the active setup, each on its rows: all rows for one head, one slice per
    /// branch for `Parallel` (of the replicated batch) and `BatchSplit`.
    fn head_outputs(
        &self,
        setup: Option<&Setup>,
        encoded: &EncoderOutput<B>,
        batch: usize,
    ) -> Result<Vec<HeadOutput<B>>> {
        let Some(setup) = setup else {
            let Some(name) = &self.bare_head else {
                return Ok(Vec::new());
            };
            let i = Self::index_of(&self.head_names, name).expect("checked by use_bare_head");
            return Ok(vec![HeadOutput {
                name: name.clone(),
                examples: (0..batch).collect(),
                logits: self.heads[i].forward(encoded)?,
            }]);
        };
        let last = match setup {
            Setup::Stack(children) => children.last().expect("non-empty"),
            s => s,
        };
        let names = setup.heads();
        let rows: Vec<std::ops::Range<usize>> = match last {
            Setup::Parallel(children) => (0..children.len())
                .map(|i| i * batch..(i + 1) * batch)
                .collect(),
            Setup::BatchSplit(_, sizes) => {
                let mut start = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        start += n;
                        start - n..start
                    })
                    .collect()
            }
            _ => std::iter::once(0..encoded.last_hidden_state.dims()[0]).collect(),
        };
        // A setup without heads gives hidden states only; one with heads for some of its
        // branches but not all would give logits for only part of the batch.
        if let Some(missing) = names
            .iter()
            .find(|n| Self::index_of(&self.head_names, n).is_none())
            .filter(|_| {
                names
                    .iter()
                    .any(|n| Self::index_of(&self.head_names, n).is_some())
            })
        {
            return Err(AdapterError::Input(format!(
                "setup `{setup}` has heads, but none named `{missing}` for its rows"
            )));
        }
        let mut out = Vec::new();
        for (name, rows) in names.into_iter().zip(rows) {
            let Some(i) = Self::index_of(&self.head_names, &name) else {
                continue;
            };
            let [total, _, _] = encoded.last_hidden_state.dims();
            let part = if rows == (0..total) {
                encoded.clone()
            } else {
                slice_output(encoded, rows.clone())
            };
            out.push(HeadOutput {
                logits: self.heads[i].forward(&part)?,
                name,
                examples: rows.collect(),
            });
        }
        Ok(out)
    }
}

impl<B: FusedOps> Registry<B> for AdapterModel<B> {
    fn adapter(&self, name: &str) -> Option<&Adapter<B>> {
        Self::index_of(&self.adapter_names, name).map(|i| &self.adapters[i])
    }

    fn fusion(&self, name: &str) -> Option<(&FusionConfig, &AdapterFusion<B>)> {
        let i = self.fusion_specs.iter().position(|(n, _, _)| n == name)?;
        Some((&self.fusion_specs[i].2, &self.fusions[i]))
    }
}

/// `BatchSplit` sizes must sum to the batch and `Split` splits to the sequence length (checked
/// where the block meets the whole batch: at the top or in a top-level `Stack`).
fn check_sizes(setup: &Setup, batch: usize, seq: usize) -> Result<()> {
    let check = |s: &Setup| match s {
        Setup::BatchSplit(_, sizes) if sizes.iter().sum::<usize>() != batch => {
            Err(AdapterError::Input(format!(
                "setup `{s}`: batch_sizes sum to {}, the batch has {batch} rows",
                sizes.iter().sum::<usize>()
            )))
        }
        Setup::Split(_, splits) if splits.iter().sum::<usize>() != seq => {
            Err(AdapterError::Input(format!(
                "setup `{s}`: splits sum to {}, the sequence has {seq} positions",
                splits.iter().sum::<usize>()
            )))
        }
        _ => Ok(()),
    };
    check(setup)?;
    if let Setup::Stack(children) = setup {
        children.iter().try_for_each(check)?;
    }
    Ok(())
}

/// Rows `rows` of an encoder output.
fn slice_output<B: FusedOps>(
    encoded: &EncoderOutput<B>,
    rows: std::ops::Range<usize>,
) -> EncoderOutput<B> {
    let [_, s, h] = encoded.last_hidden_state.dims();
    let [_, k] = encoded.keep.dims();
    EncoderOutput {
        last_hidden_state: encoded
            .last_hidden_state
            .clone()
            .slice([rows.clone(), 0..s, 0..h]),
        keep: encoded.keep.clone().slice([rows.clone(), 0..k]),
        pooler_output: encoded.pooler_output.clone().map(|p| p.slice([rows, 0..h])),
    }
}

/// Sets whether every parameter of a module is trained.
struct RequireGrad(bool);

impl<B: FusedOps> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.0)
    }
}

fn set_trainable<B: FusedOps, M: Module<B>>(module: M, trainable: bool) -> M {
    module.map(&mut RequireGrad(trainable))
}

/// Counts parameters, and those that require a gradient.
#[derive(Default)]
struct ParamCounter {
    trainable: usize,
    total: usize,
}

impl<B: FusedOps> ModuleVisitor<B> for ParamCounter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.total += n;
        if param.val().is_require_grad() {
            self.trainable += n;
        }
    }
}

/// `module` with `record` loaded, refused when a saved tensor's shape differs from the module's
/// (Burn's `load_record` takes any shape, and the mismatch would surface later as a wrong answer
/// or a panic deep in a kernel).
fn load_checked<B: Backend, M: Module<B> + Clone>(
    module: &M,
    record: M::Record,
    what: &str,
) -> Result<M> {
    let expected = ParamShapes::of(module);
    let loaded = module.clone().load_record(record);
    let found = ParamShapes::of(&loaded);
    if expected.len() != found.len() {
        return Err(AdapterError::Input(format!(
            "{what} has {} tensors, the model expects {}",
            found.len(),
            expected.len()
        )));
    }
    for ((path, want), (saved, got)) in expected.iter().zip(&found) {
        if path != saved {
            return Err(AdapterError::Input(format!(
                "{what} has `{saved}` where the model expects `{path}`"
            )));
        }
        if want != got {
            return Err(AdapterError::Input(format!(
                "{what}.{path} has shape {got:?}, the model expects {want:?}"
            )));
        }
    }
    Ok(loaded)
}

/// The shape of every float parameter of a module, by path, without initialising lazy ones.
#[derive(Default)]
struct ParamShapes {
    path: Vec<String>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl ParamShapes {
    fn of<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
        let mut visitor = Self::default();
        module.visit(&mut visitor);
        visitor.shapes
    }
}

impl<B: Backend> ModuleVisitor<B> for ParamShapes {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes
            .push((self.path.join("."), param.lazy_shape().to_vec()));
    }
}
