//! An [`AdapterModel`]'s folders: adapters, heads and fusions in AdapterHub's layout (and LoRA
//! adapters in PEFT's).

use std::path::Path;

use serde_json::Value;
use sinew_adapter::folder::{
    config_file, config_object, load_head, read_head_config, read_json, reject_leftovers,
    save_folder, save_head, save_peft_folder, weights_path, write_json, AdapterFolder,
};
use sinew_adapter::tensors::{TensorFile, TensorSink};
use sinew_adapter::{AdapterError, ConfigError};
use sinew_backbone::{FusedOps, SubLayer};

use super::AdapterModel;
use crate::error::{FusionError, Result};
use crate::fusion::{location, AdapterFusion, FusionConfig, FusionLayer};
use crate::setup::FusionId;

/// Key of a saved fusion config: whether the fusion keeps AdapterHub's behaviour (with
/// `residual_before`, its keys see the residual too), so that a fusion read from AdapterHub's
/// folder gives the same outputs after a sinew save and reload.
const ADAPTERHUB_SEMANTICS: &str = "sinew_adapterhub_semantics";

impl<B: FusedOps> AdapterModel<B> {
    /// Loads an adapter folder (AdapterHub's layout, or PEFT's), with its head if it has one;
    /// returns the adapter's name.
    pub fn load_adapter(&mut self, dir: &Path, device: &B::Device) -> Result<String> {
        self.load_adapter_as(dir, None, device)
    }

    /// [`load_adapter`](Self::load_adapter) under `name` (AdapterHub's `load_as`; `None`: the
    /// name it was saved with), its head too; returns the name.
    pub fn load_adapter_as(
        &mut self,
        dir: &Path,
        name: Option<&str>,
        device: &B::Device,
    ) -> Result<String> {
        let folder = AdapterFolder::read(dir, &self.config)?;
        let adapter = folder.load_adapter::<B>(&self.config, device)?;
        let head = folder.load_head::<B>(&self.config, device)?;
        let name = name.unwrap_or(&folder.name).to_string();
        if head.is_some() && self.heads.contains(&name) {
            // Refused before the adapter goes in: a failed load leaves the model as it was.
            return Err(FusionError::Exists {
                what: "a head named",
                name,
            });
        }
        self.insert_adapter(&name, folder.config.clone(), adapter)?;
        if let (Some(config), Some(head)) = (folder.head, head) {
            self.insert_head(&name, config, head)?;
        }
        Ok(name)
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

    /// Head `name` with its config, when `with_head` and there is one.
    fn head_to_save(
        &self,
        name: &str,
        with_head: bool,
    ) -> Option<(
        &sinew_adapter::HeadConfig,
        &sinew_adapter::ClassificationHead<B>,
    )> {
        self.heads.get(&name.to_string()).filter(|_| with_head)
    }

    /// Saves adapter `name` (and its head, with `with_head`) in AdapterHub's layout.
    pub fn save_adapter(&self, dir: &Path, name: &str, with_head: bool) -> Result<()> {
        let adapter = self.adapter_entry(name)?;
        let head = self.head_to_save(name, with_head);
        Ok(save_folder(dir, &self.config, name, adapter, head)?)
    }

    /// Saves LoRA adapter `name` as a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`),
    /// with its head when that is a classifier on the pooler (`modules_to_save`).
    pub fn save_peft(&self, dir: &Path, name: &str) -> Result<()> {
        let (config, adapter) = self.adapter_entry(name)?;
        let head = self.head_to_save(name, true);
        Ok(save_peft_folder(
            dir,
            &self.config,
            name,
            config,
            adapter,
            head,
        )?)
    }

    /// Loads a fusion folder saved by AdapterHub's `save_adapter_fusion` (or by sinew), with its
    /// head if it has one; its adapters must be loaded. Returns the fusion's identity.
    pub fn load_fusion(&mut self, dir: &Path, device: &B::Device) -> Result<FusionId> {
        let path = dir.join("adapter_fusion_config.json");
        let json = read_json(&path)?;
        let adapters: Vec<String> = match json.get("adapter_names") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                AdapterError::config(&path, ConfigError::invalid("adapter_names", e.to_string()))
            })?,
            None => {
                let missing = ConfigError::Missing {
                    key: "adapter_names".into(),
                };
                return Err(AdapterError::config(&path, missing).into());
            }
        };
        let id = FusionId::from(adapters);
        let (raw, name) = config_object(&path, Some(&self.config))?;
        let config: FusionConfig = serde_json::from_value(Value::Object(raw))
            .map_err(|e| AdapterError::config(&path, ConfigError::Json(e.to_string())))?;
        if let Some(p) = config.dropout_prob {
            sinew_adapter::method::probability("dropout_prob", p)
                .map_err(|e| AdapterError::config(&path, e))?;
        }
        if let Some(missing) = id.adapters().iter().find(|a| self.adapter(a).is_none()) {
            return Err(FusionError::MissingAdapter {
                name: missing.clone(),
                fusion: id,
            });
        }
        let mut file = TensorFile::read(&weights_path(dir, "model_adapter_fusion"))?;
        let root = sinew_adapter::bottleneck::model_prefix(&self.config).to_string();
        let mut fusion = AdapterFusion::build(
            &config,
            &self.config,
            |l, site| self.fused_site(&id, l, site),
            |l, site| {
                let prefix = format!(
                    "{root}.encoder.layer.{l}.{}.adapter_fusion_layer.{name}",
                    location(site)
                );
                FusionLayer::load(&config, &self.config, &mut file, &prefix, device)
            },
        )?;
        // Whether it keeps AdapterHub's behaviour: sinew's files say so; AdapterHub's own say
        // it by their `version`.
        fusion.from_adapterhub = match json.get(ADAPTERHUB_SEMANTICS) {
            Some(v) => v.as_bool().ok_or_else(|| {
                let problem = ConfigError::invalid(ADAPTERHUB_SEMANTICS, "is not true or false");
                AdapterError::config(&path, problem)
            })?,
            None => json
                .get("version")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("adapters")),
        };
        // AdapterHub also builds (and saves) fusion layers where its adapters are left out,
        // which never act: read past them.
        let unused = format!(".adapter_fusion_layer.{name}.");
        file.skip(|key| key.contains(&unused));
        reject_leftovers(&file)?;
        self.insert_fusion(id.clone(), config, fusion)?;
        if let Some(head) = read_head_config(dir, Some(&self.config))? {
            let head_name = id.to_string();
            let loaded = load_head(dir, &self.config, &head_name, &head, device)?;
            self.insert_head(&head_name, head, loaded)?;
        }
        Ok(id)
    }

    /// Saves the fusion of `adapters` in AdapterHub's layout (`adapter_fusion_config.json`,
    /// `model_adapter_fusion.safetensors`, and its head with `with_head`).
    pub fn save_fusion(
        &self,
        dir: &Path,
        adapters: impl Into<FusionId>,
        with_head: bool,
    ) -> Result<()> {
        let id = adapters.into();
        let (config, fusion) = self.fusion_entry(&id)?;
        let name = id.to_string();
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let root = sinew_adapter::bottleneck::model_prefix(&self.config);
        let mut sink = TensorSink::default();
        for site in [SubLayer::Attention, SubLayer::FeedForward] {
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
            &name,
        );
        json["adapter_names"] = serde_json::to_value(id.adapters()).expect("strings");
        json[ADAPTERHUB_SEMANTICS] = fusion.from_adapterhub.into();
        write_json(&dir.join("adapter_fusion_config.json"), &json)?;
        match self.head_to_save(&name, with_head) {
            Some((config, head)) => Ok(save_head(dir, &self.config, &name, config, head)?),
            None => Ok(()),
        }
    }
}
