//! An adapter model: the frozen backbone, named adapters and heads, and the active adapter.
//!
//! [`AdapterModel::forward`] runs the backbone with the active [`Adapter`] as its hooks: each
//! method acts at its own sites (a bottleneck at sub-layer ends, LoRA at projections, prefixes at
//! the attention's keys and values); everywhere else the plain transformer runs.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use sinew_backbone::{Bert, BertConfig, EncoderInput, EncoderOutput};

use std::path::Path;

use crate::error::{AdapterError, Result};
use crate::folder::{save_folder, save_peft_folder, AdapterFolder};
use crate::head::{ClassificationHead, HeadConfig, HeadLogits};
use crate::{Adapter, MethodConfig};

/// The backbone with named adapters and heads.
#[derive(Module, Debug)]
pub struct AdapterModel<B: Backend> {
    /// The pretrained encoder.
    pub backbone: Bert<B>,
    /// Adapters, in the order added.
    pub adapters: Vec<Adapter<B>>,
    /// Heads, in the order added.
    pub heads: Vec<ClassificationHead<B>>,
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
    #[module(skip)]
    active: Option<String>,
    /// The merged adapter and the backbone projections its merge replaced.
    #[module(skip)]
    merged: Option<(String, Vec<crate::lora::SavedProjection>)>,
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
}

impl<B: Backend> AdapterModel<B> {
    /// Wraps a loaded backbone; no adapters yet.
    pub fn new(backbone: Bert<B>, config: BertConfig) -> Self {
        Self {
            backbone,
            adapters: Vec::new(),
            heads: Vec::new(),
            config,
            adapter_names: Vec::new(),
            adapter_configs: Vec::new(),
            head_names: Vec::new(),
            head_configs: Vec::new(),
            active: None,
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

    /// Saves adapter `name` (and its head, with `with_head`) in AdapterHub's layout.
    pub fn save_adapter(&self, dir: &Path, name: &str, with_head: bool) -> Result<()> {
        let index = self.adapter_index(name)?;
        let head = Self::index_of(&self.head_names, name)
            .filter(|_| with_head)
            .map(|i| (&self.head_configs[i], &self.heads[i]));
        let adapter = (&self.adapter_configs[index], &self.adapters[index]);
        save_folder(dir, &self.config, name, adapter, head)
    }

    /// Saves LoRA adapter `name` as a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`).
    pub fn save_peft(&self, dir: &Path, name: &str) -> Result<()> {
        let index = self.adapter_index(name)?;
        save_peft_folder(
            dir,
            &self.config,
            name,
            &self.adapter_configs[index],
            &self.adapters[index],
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

    /// Makes adapter `name` the active setup (`None`: the bare backbone).
    pub fn set_active(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(name) = name {
            self.adapter_index(name)?;
        }
        self.active = name.map(str::to_string);
        Ok(())
    }

    /// Trains adapter `name` and its head only: the backbone, every other adapter and head are
    /// frozen, so autodiff computes no gradient for them. Also makes `name` the active adapter.
    pub fn train_adapter(&mut self, name: &str) -> Result<()> {
        self.adapter_index(name)?;
        self.backbone = set_trainable(self.backbone.clone(), false);
        let adapters = std::mem::take(&mut self.adapters);
        self.adapters = adapters
            .into_iter()
            .zip(&self.adapter_names)
            .map(|(adapter, n)| set_trainable(adapter, n == name))
            .collect();
        let heads = std::mem::take(&mut self.heads);
        self.heads = heads
            .into_iter()
            .zip(&self.head_names)
            .map(|(head, n)| set_trainable(head, n == name))
            .collect();
        self.set_active(Some(name))
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
            crate::lora::LoraAdapter::unmerge_from(&mut self.backbone, saved);
        }
    }

    fn index_of(names: &[String], name: &str) -> Option<usize> {
        names.iter().position(|n| n == name)
    }

    /// The encoder with the active adapter, and the logits of its head.
    pub fn forward(&self, input: &EncoderInput<B>) -> Result<AdapterOutput<B>> {
        let active = self.active.as_deref();
        let merged = self.merged.as_ref().map(|(n, _)| n.as_str());
        // A merged adapter already lives in the backbone's weights.
        let adapter = active
            .filter(|&n| Some(n) != merged)
            .and_then(|n| Self::index_of(&self.adapter_names, n))
            .map(|i| &self.adapters[i]);
        let encoded = match adapter {
            Some(mut adapter) => self.backbone.forward_with(input, &mut adapter),
            None => self.backbone.forward(input),
        };
        let head = active.and_then(|n| Self::index_of(&self.head_names, n));
        let (logits, token_logits) =
            match head.map(|i| self.heads[i].forward(&encoded)).transpose()? {
                Some(HeadLogits::Text(l)) => (Some(l), None),
                Some(HeadLogits::Tokens(l)) => (None, Some(l)),
                None => (None, None),
            };
        Ok(AdapterOutput {
            encoded,
            logits,
            token_logits,
        })
    }
}

/// Sets whether every parameter of a module is trained.
struct RequireGrad(bool);

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.0)
    }
}

fn set_trainable<B: Backend, M: Module<B>>(module: M, trainable: bool) -> M {
    module.map(&mut RequireGrad(trainable))
}

/// Counts parameters, and those that require a gradient.
#[derive(Default)]
struct ParamCounter {
    trainable: usize,
    total: usize,
}

impl<B: Backend> ModuleVisitor<B> for ParamCounter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.total += n;
        if param.val().is_require_grad() {
            self.trainable += n;
        }
    }
}
