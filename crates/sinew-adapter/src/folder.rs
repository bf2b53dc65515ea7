//! Adapter folders as AdapterHub's `save_adapter(dir, name, with_head, use_safetensors=True)`
//! writes them: `adapter_config.json`, `adapter.safetensors`, and with a head `head_config.json`,
//! `model_head.safetensors`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sinew_backbone::BertConfig;
use sinew_backbone::FusedOps;

use crate::error::{AdapterError, ConfigError, Result};
use crate::head::{ClassificationHead, HeadConfig};
use crate::method::Method;
use crate::tensors::{TensorFile, TensorSink};
use crate::{Adapter, MethodConfig};

/// The JSON AdapterHub wraps around every config it saves.
pub fn config_file(config: Value, model: &BertConfig, name: &str) -> Value {
    serde_json::json!({
        "config": config,
        "hidden_size": model.hidden_size,
        "model_class": "BertAdapterModel",
        "model_name": model.model_type,
        "model_type": model.model_type,
        "name": name,
        "version": concat!("sinew.", env!("CARGO_PKG_VERSION")),
    })
}

/// Writes `json` (pretty) atomically.
pub fn write_json(path: &Path, json: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(json).expect("serialisable");
    sinew_backbone::files::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Writes an adapter folder in AdapterHub's layout (`save_adapter(dir, name, with_head,
/// use_safetensors=True)`); every file is written atomically.
pub fn save_folder<B: FusedOps>(
    dir: &Path,
    model: &BertConfig,
    name: &str,
    (config, adapter): (&MethodConfig, &Adapter<B>),
    head: Option<(&HeadConfig, &ClassificationHead<B>)>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
    let mut sink = TensorSink::default();
    adapter.save(model, name, &mut sink);
    sink.write(&dir.join("adapter.safetensors"))?;
    write_json(
        &dir.join("adapter_config.json"),
        &config_file(config.to_json(), model, name),
    )?;
    match head {
        Some((config, head)) => save_head(dir, model, name, config, head),
        None => Ok(()),
    }
}

/// Writes head `name` into `dir` as AdapterHub does: `head_config.json`, `model_head.safetensors`.
pub fn save_head<B: FusedOps>(
    dir: &Path,
    model: &BertConfig,
    name: &str,
    config: &HeadConfig,
    head: &ClassificationHead<B>,
) -> Result<()> {
    let mut sink = TensorSink::default();
    head.save(name, &mut sink);
    sink.write(&dir.join("model_head.safetensors"))?;
    write_json(
        &dir.join("head_config.json"),
        &config_file(config.to_json(), model, name),
    )
}

/// The head config of `dir/head_config.json`, if the folder has one.
pub fn read_head_config(dir: &Path, model: Option<&BertConfig>) -> Result<Option<HeadConfig>> {
    let path = dir.join("head_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let (raw, _) = config_object(&path, model)?;
    let config: HeadConfig = serde_json::from_value(Value::Object(raw))
        .map_err(|e| AdapterError::config(&path, ConfigError::Json(e.to_string())))?;
    if let Some(p) = config.dropout_prob {
        crate::method::probability("dropout_prob", p)
            .map_err(|e| AdapterError::config(&path, e))?;
    }
    Ok(Some(config))
}

/// Head `name` with `config` read from `dir`'s `model_head` weights; every tensor must be used.
pub fn load_head<B: FusedOps>(
    dir: &Path,
    model: &BertConfig,
    name: &str,
    config: &HeadConfig,
    device: &B::Device,
) -> Result<ClassificationHead<B>> {
    let mut file = TensorFile::read(&weights_path(dir, "model_head"))?;
    // A config the head cannot be built from is the config file's fault: name it.
    let head = ClassificationHead::load(config, model, name, &mut file, device)
        .map_err(|e| e.in_file(&dir.join("head_config.json")))?;
    reject_leftovers(&file)?;
    Ok(head)
}

/// Whose layout a folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderFormat {
    /// AdapterHub's `save_adapter`: `adapter_config.json`, `adapter.safetensors`, head files.
    AdapterHub,
    /// PEFT's `save_pretrained` for LoRA: `adapter_config.json`, `adapter_model.safetensors`.
    Peft,
}

/// Writes LoRA adapter `name` as a PEFT folder (`save_pretrained`'s layout). A `head` goes with
/// it when PEFT can hold it: a classifier on the pooler (`BertForSequenceClassification`'s, one
/// layer), saved as a module to save; other heads are left out.
pub fn save_peft_folder<B: FusedOps>(
    dir: &Path,
    model: &BertConfig,
    name: &str,
    config: &MethodConfig,
    adapter: &Adapter<B>,
    head: Option<(&HeadConfig, &ClassificationHead<B>)>,
) -> Result<()> {
    let (MethodConfig::Lora(config), Adapter::Lora(adapter)) = (config, adapter) else {
        return Err(AdapterError::NotLora {
            name: name.to_string(),
        });
    };
    let classifier = head.filter(|(c, _)| {
        c.head_type == "classification" && c.layers == 1 && c.use_pooler && c.bias
    });
    let json = crate::peft::config_to_peft(
        config,
        model,
        adapter.has_own_biases(),
        classifier.is_some(),
    )?;
    std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
    let mut sink = TensorSink::default();
    adapter.save(model, name, &mut sink);
    let wrapped = crate::peft::wraps_encoder(&json);
    sink.rename_keys(|k| {
        crate::peft::key_to_peft(k, model, name, wrapped).unwrap_or_else(|| k.to_string())
    });
    if let Some((_, head)) = classifier {
        let [weight, bias] = crate::peft::CLASSIFIER_KEYS;
        sink.put_linear("classifier", &head.layers[0]);
        sink.rename_keys(|k| match k {
            "classifier.weight" => weight.into(),
            "classifier.bias" => bias.into(),
            k => k.into(),
        });
    }
    sink.write(&dir.join("adapter_model.safetensors"))?;
    write_json(&dir.join("adapter_config.json"), &json)
}

/// What an adapter folder holds, parsed and checked against the backbone.
#[derive(Debug, Clone)]
pub struct AdapterFolder {
    /// Whose layout the folder has.
    pub format: FolderFormat,
    /// The folder.
    pub dir: PathBuf,
    /// The adapter's name (`name` in `adapter_config.json`).
    pub name: String,
    /// The method and its settings.
    pub config: MethodConfig,
    /// The head's config, when the folder has one.
    pub head: Option<HeadConfig>,
}

/// Reads a JSON object.
pub fn read_json(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| AdapterError::io(path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AdapterError::file(path, "expected a JSON object")),
        Err(e) => Err(AdapterError::file(path, e.to_string())),
    }
}

/// The `config` object and `name` of an AdapterHub config file, with its `hidden_size` checked
/// against `model` when given.
pub fn config_object(
    path: &Path,
    model: Option<&BertConfig>,
) -> Result<(Map<String, Value>, String)> {
    let mut json = read_json(path)?;
    let hidden = json.get("hidden_size").and_then(Value::as_u64);
    if let (Some(hidden), Some(model)) = (hidden, model) {
        if hidden as usize != model.hidden_size {
            let problem = format!(
                "{hidden} does not fit the backbone's {} (the adapter was trained on another model)",
                model.hidden_size
            );
            return Err(AdapterError::config(
                path,
                ConfigError::invalid("hidden_size", problem),
            ));
        }
    }
    let name = match json.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => {
            let missing = ConfigError::Missing { key: "name".into() };
            return Err(AdapterError::config(path, missing));
        }
    };
    match json.remove("config") {
        Some(Value::Object(config)) => Ok((config, name)),
        _ => Err(AdapterError::config(
            path,
            ConfigError::Missing {
                key: "config".into(),
            },
        )),
    }
}

impl AdapterFolder {
    /// Reads and checks `dir/adapter_config.json` (and `head_config.json`, if present).
    pub fn read(dir: &Path, model: &BertConfig) -> Result<Self> {
        Self::read_with(dir, Some(model))
    }

    /// Reads `dir` without a backbone to check it against (for `sinew inspect`).
    pub fn read_unchecked(dir: &Path) -> Result<Self> {
        Self::read_with(dir, None)
    }

    fn read_with(dir: &Path, model: Option<&BertConfig>) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        let json = read_json(&path)?;
        if crate::peft::is_peft(&json) {
            let layers = model.map(|m| m.num_hidden_layers);
            let config = crate::peft::config_from_peft(&json, layers)
                .map_err(|e| AdapterError::config(&path, e))?;
            // PEFT folders carry no adapter name: the folder's name is used.
            let name = dir.file_name().map_or_else(
                || "default".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let head = if crate::peft::saves_classifier(&json) {
                let file = TensorFile::read(&dir.join("adapter_model.safetensors"))?;
                match file.get(crate::peft::CLASSIFIER_KEYS[0]) {
                    Some(t) if t.shape.len() == 2 && t.shape[0] > 0 => {
                        Some(HeadConfig::peft_classifier(t.shape[0]))
                    }
                    Some(t) => {
                        return Err(AdapterError::file(
                            file.path(),
                            format!(
                                "tensor `{}` has shape {:?}, not [labels, hidden]",
                                crate::peft::CLASSIFIER_KEYS[0],
                                t.shape
                            ),
                        ))
                    }
                    None => None,
                }
            } else {
                None
            };
            return Ok(Self {
                format: FolderFormat::Peft,
                dir: dir.to_path_buf(),
                name,
                config: MethodConfig::Lora(config),
                head,
            });
        }
        let (raw, name) = config_object(&path, model)?;
        let config =
            MethodConfig::parse(&path, &raw, model).map_err(|e| AdapterError::config(&path, e))?;
        let head = read_head_config(dir, model)?;
        Ok(Self {
            format: FolderFormat::AdapterHub,
            dir: dir.to_path_buf(),
            name,
            config,
            head,
        })
    }

    /// `{stem}.safetensors`, or AdapterHub's default `pytorch_{stem}.bin` when only that exists.
    pub fn weights_file(&self, stem: &str) -> PathBuf {
        weights_path(&self.dir, stem)
    }

    /// Loads the adapter's weights (`adapter.safetensors`); every tensor must be used.
    pub fn load_adapter<B: FusedOps>(
        &self,
        model: &BertConfig,
        device: &B::Device,
    ) -> Result<Adapter<B>> {
        let mut file = match self.format {
            FolderFormat::AdapterHub => TensorFile::read(&self.weights_file("adapter"))?,
            FolderFormat::Peft => {
                let mut file = TensorFile::read(&self.dir.join("adapter_model.safetensors"))?;
                if self.head.is_some() {
                    file.skip(|k| crate::peft::CLASSIFIER_KEYS.contains(&k));
                }
                file.rename_keys(|k| crate::peft::key_from_peft(k, model, &self.name))?;
                file
            }
        };
        let adapter = self.config.load(model, &self.name, &mut file, device)?;
        reject_leftovers(&file)?;
        Ok(adapter)
    }

    /// Loads the head's weights (`model_head.safetensors`), if the folder has a head.
    pub fn load_head<B: FusedOps>(
        &self,
        model: &BertConfig,
        device: &B::Device,
    ) -> Result<Option<ClassificationHead<B>>> {
        let Some(config) = &self.head else {
            return Ok(None);
        };
        if self.format == FolderFormat::AdapterHub {
            return load_head(&self.dir, model, &self.name, config, device).map(Some);
        }
        // PEFT: the classifier beside the LoRA, as the head's one layer (`heads.NAME.1`).
        let mut file = TensorFile::read(&self.dir.join("adapter_model.safetensors"))?;
        file.skip(|k| !crate::peft::CLASSIFIER_KEYS.contains(&k));
        let [weight, _] = crate::peft::CLASSIFIER_KEYS;
        let prefix = format!("heads.{}.1", self.name);
        file.rename_keys(|k| {
            Some(if k == weight {
                format!("{prefix}.weight")
            } else {
                format!("{prefix}.bias")
            })
        })?;
        let head = ClassificationHead::load(config, model, &self.name, &mut file, device)?;
        reject_leftovers(&file)?;
        Ok(Some(head))
    }
}

/// `dir/{stem}.safetensors`, or AdapterHub's default `dir/pytorch_{stem}.bin` when only that
/// exists.
pub fn weights_path(dir: &Path, stem: &str) -> PathBuf {
    let safetensors = dir.join(format!("{stem}.safetensors"));
    let bin = dir.join(format!("pytorch_{stem}.bin"));
    if !safetensors.exists() && bin.exists() {
        bin
    } else {
        safetensors
    }
}

/// A tensor nobody read means the file and the config disagree: say which.
pub fn reject_leftovers(file: &TensorFile) -> Result<()> {
    match file.remaining().next() {
        None => Ok(()),
        Some(key) => Err(AdapterError::UnusedTensor {
            path: file.path().to_path_buf(),
            key: key.to_string(),
        }),
    }
}
