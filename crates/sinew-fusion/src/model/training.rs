//! What trains in an [`AdapterModel`]: freezing for each regime, the parts a checkpoint keeps,
//! fusion training's extras, and merges of adapters into the backbone or into each other.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use sinew_adapter::method::restore_projections;
use sinew_adapter::{Adapter, ClassificationHead, MethodConfig};
use sinew_backbone::{Bert, FusedOps};

use super::AdapterModel;
use crate::error::{FusionError, Result};
use crate::fusion::AdapterFusion;
use crate::merge::{merge_lora, MergeOptions};
use crate::setup::{FusionId, Setup};

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

impl<B: FusedOps> AdapterModel<B> {
    /// Trains adapter `name` and its head only: the backbone, every other adapter and head are
    /// frozen, so autodiff computes no gradient for them. Also makes `name` the active adapter.
    pub fn train_adapter(&mut self, name: &str) -> Result<()> {
        self.train_adapters(&[name])?;
        self.activate(Some(Setup::adapter(name)))
    }

    /// Trains adapters `names` and their heads (multi-task training: route each example with
    /// [`forward_routed`](Self::forward_routed)); everything else is frozen.
    pub fn train_adapters(&mut self, names: &[&str]) -> Result<()> {
        for name in names {
            self.adapter_entry(name)?;
        }
        self.freeze_all();
        self.adapters
            .map_modules(|n, _, a| set_trainable(a, names.contains(&n.as_str())));
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
            if self.head(name).is_none() {
                return Err(FusionError::UnknownHead {
                    name: name.to_string(),
                });
            }
        }
        self.active = None;
        self.bare_head = name.map(str::to_string);
        Ok(())
    }

    /// Stage two of AdapterFusion: trains the fusion of `adapters` (a list of names, or
    /// AdapterHub's `a,b,c`) and its head; the backbone and every adapter are frozen unless
    /// `unfreeze_adapters`. Makes `Fuse(a, b, c)` active.
    pub fn train_fusion(
        &mut self,
        adapters: impl Into<FusionId>,
        unfreeze_adapters: bool,
    ) -> Result<()> {
        let id = adapters.into();
        self.fusion_entry(&id)?;
        self.freeze_all();
        let fused = id.adapters();
        self.adapters
            .map_modules(|n, _, a| set_trainable(a, unfreeze_adapters && fused.contains(n)));
        self.fusions
            .map_modules(|f, _, m| set_trainable(m, *f == id));
        self.set_heads_trainable(&[&id.to_string()]);
        self.activate(Some(id.setup()))
    }

    fn freeze_all(&mut self) {
        *self = set_trainable(self.clone(), false);
    }

    fn set_heads_trainable(&mut self, names: &[&str]) {
        self.heads
            .map_modules(|n, _, h| set_trainable(h, names.contains(&n.as_str())));
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
            adapters: self.adapters.modules().iter().map(keep).collect(),
            heads: self.heads.modules().iter().map(keep).collect(),
            fusions: self.fusions.modules().iter().map(keep).collect(),
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
                return Err(FusionError::Parts {
                    what: what.to_string(),
                    problem: format!(
                        "number {} in the saved parts, {} in the model",
                        saved.len(),
                        slots.len()
                    ),
                });
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
        put("adapters", self.adapters.modules_mut(), parts.adapters)?;
        put("heads", self.heads.modules_mut(), parts.heads)?;
        put("fusions", self.fusions.modules_mut(), parts.fusions)
    }

    /// AdapterFusion's value regularisation `0.01·Σ‖I − W_v‖²` over the trained fusions whose
    /// config asks for it; add it to the training loss.
    pub fn fusion_regularization_loss(&self) -> Option<Tensor<B, 1>> {
        self.fusions
            .iter()
            .filter(|(_, c, _)| c.regularization)
            .filter_map(|(_, _, f)| f.regularization_loss())
            .reduce(|a, b| a + b)
    }

    /// One temperature-annealing step of every fusion with `temperature` (call once per
    /// optimizer step).
    pub fn anneal_fusion_temperatures(&mut self) {
        self.fusions.map_modules(|_, config, mut fusion| {
            fusion.anneal(config);
            fusion
        });
    }

    /// Parameters that would be trained now, and all parameters.
    pub fn param_counts(&self) -> (usize, usize) {
        let mut counter = ParamCounter::default();
        self.visit(&mut counter);
        (counter.trainable, counter.total)
    }

    /// Parameters of adapter `name` (without its head).
    pub fn adapter_params(&self, name: &str) -> Result<usize> {
        Ok(self.adapter_entry(name)?.1.num_params())
    }

    /// Whether the backbone has a parameter that trains (full fine-tuning).
    pub(crate) fn backbone_trains(&self) -> bool {
        let mut counter = ParamCounter::default();
        self.backbone.visit(&mut counter);
        counter.trainable > 0
    }

    /// Folds adapter `name` (a method that can merge: LoRA, IA3) into the backbone's weights: it
    /// then costs nothing at inference. One adapter at a time;
    /// [`unmerge_adapter`](Self::unmerge_adapter) undoes it exactly.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        if let Some((merged, _)) = &self.merged {
            return Err(FusionError::AlreadyMerged {
                merged: merged.clone(),
            });
        }
        self.adapter_entry(name)?;
        let adapter = self.adapters.module(&name.to_string()).expect("checked");
        let saved =
            adapter
                .merge_into(&mut self.backbone)
                .ok_or_else(|| FusionError::WrongMethod {
                    name: name.to_string(),
                    needed: "an adapter that merges into the backbone (LoRA, IA3)",
                })??;
        self.merged = Some((name.to_string(), saved));
        Ok(())
    }

    /// Restores the backbone weights a merge replaced.
    pub fn unmerge_adapter(&mut self) {
        if let Some((_, saved)) = self.merged.take() {
            restore_projections(&mut self.backbone, saved);
        }
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
            match self.adapter_entry(input)? {
                (MethodConfig::Lora(c), Adapter::Lora(a)) => loras.push((c, a)),
                _ => {
                    return Err(FusionError::WrongMethod {
                        name: input.to_string(),
                        needed: "a LoRA/IA3 adapter: only those merge in weight space",
                    })
                }
            }
        }
        let (config, adapter) = merge_lora(&self.config, &loras, options, device)?;
        self.insert_adapter(name, MethodConfig::Lora(config), Adapter::Lora(adapter))
    }

    /// Replaces prefix-tuning adapter `name`'s reparameterisation MLP by the static prefixes it
    /// produces: same outputs, less work per forward pass; it is then saved as `flat`.
    pub fn eject_prefix(&mut self, name: &str) -> Result<()> {
        self.adapter_entry(name)?;
        let Some((MethodConfig::Prefix(config), Adapter::Prefix(prefix))) =
            self.adapters.get_mut(&name.to_string())
        else {
            return Err(FusionError::WrongMethod {
                name: name.to_string(),
                needed: "a prefix-tuning adapter",
            });
        };
        config.flat = true;
        *prefix = prefix.clone().eject();
        Ok(())
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
        return Err(FusionError::Parts {
            what: what.to_string(),
            problem: format!(
                "has {} tensors, the model expects {}",
                found.len(),
                expected.len()
            ),
        });
    }
    for ((path, want), (saved, got)) in expected.iter().zip(&found) {
        if path != saved {
            return Err(FusionError::Parts {
                what: what.to_string(),
                problem: format!("has `{saved}` where the model expects `{path}`"),
            });
        }
        if want != got {
            return Err(FusionError::Shape {
                what: what.to_string(),
                key: path.clone(),
                expected: want.clone(),
                found: got.clone(),
            });
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
