//! Loading a HuggingFace model folder: `config.json`, `model.safetensors`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use std::rc::Rc;

use burn::tensor::DType;
use burn_store::{
    Applier, ApplyError, ModuleAdapter, ModuleStore, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};

use crate::config::BertConfig;
use crate::error::{BackboneError, Result};
use crate::model::Bert;
use crate::tokenizer::TextTokenizer;

/// Checkpoint key → sinew module path. Task-model prefixes (`bert.`, `roberta.`) are dropped;
/// `self` and `LayerNorm` are not legal Rust field names.
const KEY_REMAPS: [(&str, &str); 3] = [
    (r"^(bert|roberta|model)\.", ""),
    (r"\.attention\.self\.", ".attention.self_attention."),
    (r"LayerNorm", "layer_norm"),
];

/// Half-precision (f16, bf16) and f64 checkpoint tensors become f32, the dtype sinew computes
/// in (f16 → f32 is exact); integer tensors are left alone.
#[derive(Clone)]
struct FloatToF32;

impl ModuleAdapter for FloatToF32 {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if !matches!(snapshot.dtype, DType::F16 | DType::BF16 | DType::F64) {
            return snapshot.clone();
        }
        let data = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || Ok(data()?.convert_dtype(DType::F32))),
            DType::F32,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// The three files of a HuggingFace BERT-family folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// The files of `dir`; each must exist.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let files = Self {
            config: dir.join("config.json"),
            weights: dir.join("model.safetensors"),
            tokenizer: dir.join("tokenizer.json"),
        };
        for path in [&files.config, &files.weights, &files.tokenizer] {
            if !path.is_file() {
                return Err(BackboneError::Missing {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(files)
    }
}

/// A pretrained encoder with its config and tokenizer.
#[derive(Debug)]
pub struct Pretrained<B: Backend> {
    /// The model's `config.json`.
    pub config: BertConfig,
    /// The encoder, weights loaded.
    pub model: Bert<B>,
    /// The tokenizer, with sinew's padding and truncation.
    pub tokenizer: TextTokenizer,
}

impl<B: Backend> Pretrained<B> {
    /// Loads a model folder; inputs are truncated at `max_len` tokens (default: the model's limit).
    pub fn load(dir: &Path, max_len: Option<usize>, device: &B::Device) -> Result<Self> {
        let files = ModelFiles::in_dir(dir)?;
        let config = BertConfig::from_file(&files.config)?;
        let model = load_weights(&config, &files.weights, device)?;
        let limit = config.max_tokens();
        let max_len = match max_len {
            Some(n) if n > limit => {
                return Err(BackboneError::MaxLen {
                    requested: n,
                    limit,
                    config: files.config.clone(),
                })
            }
            Some(n) => n,
            None => limit,
        };
        let tokenizer = TextTokenizer::from_file(&files.tokenizer, max_len)?;
        Ok(Self {
            config,
            model,
            tokenizer,
        })
    }
}

/// Reads `model.safetensors` into a new encoder shaped by `config`.
///
/// Every encoder tensor must be present with the shape the config implies; the pooler is kept
/// only if the checkpoint has one. Extra tensors (e.g. `embeddings.position_ids`, task heads)
/// are ignored.
pub fn load_weights<B: Backend>(
    config: &BertConfig,
    path: &Path,
    device: &B::Device,
) -> Result<Bert<B>> {
    let weights_error = |message: String| BackboneError::Weights {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(weights_error("not found".into()));
    }
    let mut store = SafetensorsStore::from_file(path);
    for (from, to) in KEY_REMAPS {
        store = store.with_key_remapping(from, to);
    }
    let snapshots: Vec<TensorSnapshot> = store
        .get_all_snapshots()
        .map_err(|e| weights_error(format!("not a readable safetensors file ({e})")))?
        .values()
        .cloned()
        .collect();
    // An owned `map` rather than burn-store's `load_from`: that one moves the module out of a
    // `&mut` with `ptr::read`, so a panic while applying drops it twice (a segfault).
    let adapter = PyTorchToBurnAdapter.chain(FloatToF32);
    let mut applier = Applier::<B>::new(snapshots, None, Some(Box::new(adapter)), false);
    let mut model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        config.init::<B>(true, device).map(&mut applier)
    }))
    .map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        weights_error(format!("could not be loaded ({})", what.replace('\n', " ")))
    })?;
    let result = applier.into_result();

    if let Some(error) = result.errors.first() {
        return Err(weights_error(describe(error)));
    }
    let (pooler, encoder): (Vec<_>, Vec<_>) = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .partition(|p| p.starts_with("pooler."));
    if let Some(first) = encoder.first() {
        return Err(weights_error(format!(
            "missing tensor `{}` ({} of the encoder's tensors are missing)",
            checkpoint_key(first),
            encoder.len()
        )));
    }
    if !pooler.is_empty() {
        model.pooler = None;
    }
    Ok(model)
}

/// sinew module path → the checkpoint's key, for messages.
fn checkpoint_key(path: &str) -> String {
    path.replace(".self_attention.", ".self.")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias")
        .replace("layer_norm", "LayerNorm")
}

/// One line for a tensor that does not fit, in the checkpoint's names and layout.
fn describe(error: &ApplyError) -> String {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => {
            let key = checkpoint_key(path);
            // Linear weights are stored [out, in] in the checkpoint, [in, out] in Burn.
            let torch_layout = |dims: &[usize]| {
                let mut dims = dims.to_vec();
                if dims.len() == 2 && !key.starts_with("embeddings.") {
                    dims.reverse();
                }
                dims
            };
            format!(
                "tensor `{key}` has shape {:?} but config.json implies {:?}",
                torch_layout(found.as_slice()),
                torch_layout(expected.as_slice())
            )
        }
        ApplyError::DTypeMismatch {
            path,
            expected,
            found,
        } => format!(
            "tensor `{}` has dtype {found:?}, expected {expected:?}",
            checkpoint_key(path)
        ),
        ApplyError::AdapterError { path, message } | ApplyError::LoadError { path, message } => {
            format!("tensor `{}`: {message}", checkpoint_key(path))
        }
    }
}
