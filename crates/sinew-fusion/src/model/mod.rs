//! An adapter model: the frozen backbone, named adapters, fusions and heads, and the active setup.
//!
//! One room per concern: [`named`] keeps each name with its module and config; [`files`] reads
//! and writes AdapterHub's (and PEFT's) folders; [`training`] holds what trains, checkpoints'
//! parts and merges; [`forward`] runs the active setup. This file holds the registry's public
//! face and the choice of setup.
//!
//! [`AdapterModel::forward`] runs the backbone with hooks: a single active [`Adapter`] is the
//! hooks itself (each method acts at its own sites: a bottleneck at sub-layer ends, LoRA at
//! projections, prefixes at the attention's keys and values); a composed setup runs through
//! [`Composition`](crate::compose::Composition). Everywhere else the plain transformer runs.

mod files;
mod forward;
mod named;
mod training;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use sinew_adapter::method::{Composes, SavedProjection};
use sinew_adapter::{Adapter, ClassificationHead, HeadConfig, MethodConfig};
use sinew_backbone::{Bert, BertConfig, FusedOps, SubLayer};

use crate::compose::Registry;
use crate::error::{FusionError, Result};
use crate::fusion::{AdapterFusion, FusionConfig, FusionLayer, Semantics};
use crate::setup::{FusionId, Setup};

pub use forward::{AdapterOutput, HeadOutput};
use named::Named;
pub use training::{TrainedParts, TrainedPartsRecord};

/// The backbone with named adapters, heads and fusions.
#[derive(Module, Debug)]
pub struct AdapterModel<B: Backend> {
    backbone: Bert<B>,
    adapters: Named<B, Adapter<B>, String, MethodConfig>,
    /// Named after the adapter or fusion they predict for (a fusion's by AdapterHub's `a,b,c`).
    heads: Named<B, ClassificationHead<B>, String, HeadConfig>,
    fusions: Named<B, AdapterFusion<B>, FusionId, FusionConfig>,
    #[module(skip)]
    config: BertConfig,
    #[module(skip)]
    active: Option<Setup>,
    /// The head used when no adapter is active (head-only and fully fine-tuned models).
    #[module(skip)]
    bare_head: Option<String>,
    #[module(skip)]
    semantics: Semantics,
    /// The merged adapter and the backbone projections its merge replaced.
    #[module(skip)]
    merged: Option<(String, Vec<SavedProjection>)>,
}

impl<B: FusedOps> AdapterModel<B> {
    /// Wraps a loaded backbone; no adapters yet.
    pub fn new(backbone: Bert<B>, config: BertConfig) -> Self {
        Self {
            backbone,
            adapters: Named::new(),
            heads: Named::new(),
            fusions: Named::new(),
            config,
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

    /// The backbone (with a merged adapter's weights folded in, while one is merged).
    pub fn backbone(&self) -> &Bert<B> {
        &self.backbone
    }

    /// Adapter `name`.
    pub fn adapter(&self, name: &str) -> Option<&Adapter<B>> {
        self.adapters.module(&name.to_string())
    }

    /// Adapter `name`, to change its weights in place (its method and shapes stay).
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut Adapter<B>> {
        self.adapters.module_mut(&name.to_string())
    }

    /// The settings of adapter `name`.
    pub fn adapter_config(&self, name: &str) -> Option<&MethodConfig> {
        self.adapters.get(&name.to_string()).map(|(c, _)| c)
    }

    /// Names of the adapters, in the order added.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }

    /// Head `name` (named after the adapter or fusion it predicts for).
    pub fn head(&self, name: &str) -> Option<&ClassificationHead<B>> {
        self.heads.module(&name.to_string())
    }

    /// Head `name`, to change its weights in place.
    pub fn head_mut(&mut self, name: &str) -> Option<&mut ClassificationHead<B>> {
        self.heads.module_mut(&name.to_string())
    }

    /// The settings of head `name`: its kind and labels.
    pub fn head_config(&self, name: &str) -> Option<&HeadConfig> {
        self.heads.get(&name.to_string()).map(|(c, _)| c)
    }

    /// Names of the heads, in the order added.
    pub fn head_names(&self) -> Vec<&str> {
        self.heads.keys().map(String::as_str).collect()
    }

    /// The fusion of `adapters` (a list of names, or AdapterHub's `a,b,c`).
    pub fn fusion(&self, adapters: impl Into<FusionId>) -> Option<&AdapterFusion<B>> {
        self.fusions.module(&adapters.into())
    }

    /// The fusion of `adapters`, to change its weights in place.
    pub fn fusion_mut(&mut self, adapters: impl Into<FusionId>) -> Option<&mut AdapterFusion<B>> {
        self.fusions.module_mut(&adapters.into())
    }

    /// The fusions, in the order added.
    pub fn fusion_ids(&self) -> impl Iterator<Item = &FusionId> {
        self.fusions.keys()
    }

    /// Adds a new adapter `name` of method `config` (freshly initialised).
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: MethodConfig,
        device: &B::Device,
    ) -> Result<()> {
        let adapter = materialized(config.init(&self.config, device)?);
        self.insert_adapter(name, config, adapter)
    }

    /// Adds head `name`, used when adapter (or fusion) `name` is active.
    pub fn add_head(&mut self, name: &str, config: HeadConfig, device: &B::Device) -> Result<()> {
        let head = materialized(ClassificationHead::new(&config, &self.config, device)?);
        self.insert_head(name, config, head)
    }

    /// Adds a new fusion of `adapters` (already loaded, in this order), with a layer wherever
    /// they can be fused; returns its identity (AdapterHub names it and its head `a,b,c`).
    pub fn add_fusion(
        &mut self,
        adapters: &[&str],
        config: FusionConfig,
        device: &B::Device,
    ) -> Result<FusionId> {
        let id = FusionId::new(adapters.iter().copied());
        let fusion = AdapterFusion::build(
            &config,
            &self.config,
            |l, site| self.fused_site(&id, l, site),
            |_, _| Ok(FusionLayer::new(&config, &self.config, device)),
        )?;
        let fusion = materialized(fusion);
        self.insert_fusion(id.clone(), config, fusion)?;
        Ok(id)
    }

    /// Whether a fusion of `id` acts at sub-layer `site` of `layer`: where all its adapters have
    /// a bottleneck, or (a delta fusion) where any of them updates a projection.
    fn fused_site(&self, id: &FusionId, layer: usize, site: SubLayer) -> bool {
        let fused: Vec<&Adapter<B>> = id
            .adapters()
            .iter()
            .filter_map(|n| self.adapter(n))
            .collect();
        fused.iter().all(|a| a.bottleneck_at(layer, site).is_some())
            || fused
                .iter()
                .any(|a| site.projections().iter().any(|&p| a.updates(layer, p)))
    }

    fn insert_fusion(
        &mut self,
        id: FusionId,
        config: FusionConfig,
        fusion: AdapterFusion<B>,
    ) -> Result<()> {
        let mut kinds = Vec::new();
        for name in id.adapters() {
            let Some(adapter) = self.adapter(name) else {
                return Err(FusionError::MissingAdapter {
                    fusion: id.clone(),
                    name: name.clone(),
                });
            };
            match adapter.composes() {
                Composes::Alone => {
                    return Err(FusionError::NotFusable {
                        name: name.clone(),
                        method: self.adapter_entry(name)?.0.architecture(),
                    })
                }
                kind => kinds.push(kind),
            }
        }
        if kinds.windows(2).any(|w| w[0] != w[1]) {
            return Err(FusionError::MixedFusion { fusion: id });
        }
        if !self.fusions.insert(id.clone(), config, fusion) {
            return Err(FusionError::Exists {
                what: "a fusion",
                name: id.to_string(),
            });
        }
        Ok(())
    }

    fn insert_adapter(
        &mut self,
        name: &str,
        config: MethodConfig,
        adapter: Adapter<B>,
    ) -> Result<()> {
        if !self.adapters.insert(name.to_string(), config, adapter) {
            return Err(FusionError::Exists {
                what: "an adapter named",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn insert_head(
        &mut self,
        name: &str,
        config: HeadConfig,
        head: ClassificationHead<B>,
    ) -> Result<()> {
        if !self.heads.insert(name.to_string(), config, head) {
            return Err(FusionError::Exists {
                what: "a head named",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Adapter `name` with its settings, or an error listing the loaded ones.
    fn adapter_entry(&self, name: &str) -> Result<(&MethodConfig, &Adapter<B>)> {
        self.adapters
            .get(&name.to_string())
            .ok_or_else(|| FusionError::UnknownAdapter {
                name: name.to_string(),
                loaded: self.adapters.keys().cloned().collect(),
            })
    }

    fn fusion_entry(&self, id: &FusionId) -> Result<(&FusionConfig, &AdapterFusion<B>)> {
        self.fusions
            .get(id)
            .ok_or_else(|| FusionError::UnknownFusion { fusion: id.clone() })
    }

    /// Removes adapter `name` and returns its config (its head, if any, stays: see
    /// [`delete_head`](Self::delete_head)). Refused while the active setup, a fusion or a merge
    /// uses it.
    pub fn delete_adapter(&mut self, name: &str) -> Result<MethodConfig> {
        let in_use = |by: String| FusionError::InUse {
            name: name.to_string(),
            by,
        };
        if self
            .active
            .as_ref()
            .is_some_and(|s| s.flatten().contains(&name))
        {
            return Err(in_use("the active setup".into()));
        }
        if let Some(id) = self
            .fusions
            .keys()
            .find(|id| id.adapters().iter().any(|a| a == name))
        {
            return Err(in_use(format!("fusion `{id}`")));
        }
        if self.merged.as_ref().is_some_and(|(m, _)| m == name) {
            return Err(in_use("its merge into the backbone".into()));
        }
        let (config, _) =
            self.adapters
                .remove(&name.to_string())
                .ok_or_else(|| FusionError::UnknownAdapter {
                    name: name.to_string(),
                    loaded: self.adapters.keys().cloned().collect(),
                })?;
        Ok(config)
    }

    /// Removes head `name` and returns its config.
    pub fn delete_head(&mut self, name: &str) -> Result<HeadConfig> {
        if self.bare_head.as_deref() == Some(name) {
            self.bare_head = None;
        }
        let (config, _) =
            self.heads
                .remove(&name.to_string())
                .ok_or_else(|| FusionError::UnknownHead {
                    name: name.to_string(),
                })?;
        Ok(config)
    }

    /// Makes `setup` the active setup: an adapter name or an expression such as
    /// `Fuse(a, b)` or `Stack(a, Parallel(b, c))` (`None`: the bare backbone). See
    /// [`activate`](Self::activate).
    pub fn set_active(&mut self, setup: Option<&str>) -> Result<()> {
        let setup = setup.map(Setup::parse).transpose()?;
        self.activate(setup)
    }

    /// Makes `setup` the active setup (`None`: the bare backbone). A merged adapter (see
    /// [`merge_adapter`](Self::merge_adapter)) stays merged only while it alone is active: any
    /// other setup unmerges it first, since its weights would otherwise act a second time.
    pub fn activate(&mut self, setup: Option<Setup>) -> Result<()> {
        if let Some(setup) = &setup {
            self.check_setup(setup)?;
        }
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

    /// Every name is loaded, every `Fuse` has its fusion, and adapters that do not route through
    /// bottlenecks (they act outside sub-layer ends, where blocks cannot route them) stand alone
    /// or in a top-level `Stack`.
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        for name in setup.flatten() {
            self.adapter_entry(name)?;
        }
        fn walk<B: FusedOps>(model: &AdapterModel<B>, s: &Setup, top_stack: bool) -> Result<()> {
            match s {
                Setup::Adapter(name) => {
                    let (config, adapter) = model.adapter_entry(name)?;
                    if !top_stack && adapter.composes() != Composes::Bottleneck {
                        return Err(FusionError::NotComposable {
                            name: name.clone(),
                            method: config.architecture(),
                        });
                    }
                    Ok(())
                }
                Setup::Fuse(children) => {
                    let id = FusionId::of(children);
                    if !model.fusions.contains(&id) {
                        return Err(FusionError::UnknownFusion { fusion: id });
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

    /// The adapters of a top-level `Fuse` of adapters that update projections (a delta fusion),
    /// if `setup` is one.
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
            .all(|n| {
                self.adapter(n)
                    .is_some_and(|a| a.composes() == Composes::Projections)
            })
            .then_some(names)
    }
}

/// `module` with every parameter initialised now, in the module's order. Burn initialises a new
/// parameter lazily, at its first use, drawing from the backend's seeded generator then: a new
/// module's weights would depend on what else drew before that use (a clone that counts
/// parameters, another peer). Drawn here, they are a function of the seed and the order modules
/// are added.
fn materialized<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

impl<B: FusedOps> Registry<B> for AdapterModel<B> {
    fn adapter(&self, name: &str) -> Option<&Adapter<B>> {
        AdapterModel::adapter(self, name)
    }

    fn fusion(&self, id: &FusionId) -> Option<(&FusionConfig, &AdapterFusion<B>)> {
        self.fusions.get(id)
    }
}
