//! Reading adapter weights by their checkpoint key, with one-line errors naming file and key.
//!
//! Adapter files are small, so they are read whole into memory; tensors are taken out by name and
//! turned into Burn modules here (PyTorch stores `Linear` weights `[out, in]`, Burn `[in, out]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use safetensors::SafeTensors;
use sinew_backbone::FusedOps;
use sinew_backbone::{LayerNorm, LayerNormConfig};

use crate::error::{AdapterError, Result};

/// One tensor of a checkpoint, as f32.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// The tensors of one checkpoint file, taken out by key.
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    tensors: BTreeMap<String, RawTensor>,
}

impl TensorFile {
    /// Reads a checkpoint: `.safetensors`, or PyTorch's `.bin`/`.pt` (through burn-store's reader).
    pub fn read(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("bin") | Some("pt") | Some("pth") => Self::read_pytorch(path),
            _ => Self::read_safetensors(path),
        }
    }

    /// Reads a PyTorch pickle checkpoint (tensors converted to f32).
    pub(crate) fn read_pytorch(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(AdapterError::file(path, "not found"));
        }
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .map_err(|e| AdapterError::file(path, format!("not a readable PyTorch file ({e})")))?;
        let mut tensors = BTreeMap::new();
        for (name, snapshot) in reader.into_tensors() {
            let data = snapshot
                .to_data()
                .map_err(|e| AdapterError::file(path, format!("tensor `{name}`: {e}")))?;
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| AdapterError::file(path, format!("tensor `{name}`: {e:?}")))?;
            tensors.insert(name, RawTensor { shape, values });
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Reads a `.safetensors` file (f32, f16 or bf16 tensors, converted to f32).
    pub(crate) fn read_safetensors(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AdapterError::io(path, e))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| AdapterError::File {
            path: path.to_path_buf(),
            message: format!("not a readable safetensors file ({e})"),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(AdapterError::File {
                        path: path.to_path_buf(),
                        message: format!("tensor `{name}` has unsupported dtype {other:?}"),
                    })
                }
            };
            let shape = view.shape().to_vec();
            tensors.insert(name, RawTensor { shape, values });
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor `key`, if present and not yet taken.
    pub fn get(&self, key: &str) -> Option<&RawTensor> {
        self.tensors.get(key)
    }

    /// Drops every remaining tensor whose key `matches`: what a file holds besides what is read
    /// (copies of shared tensors, parts that never act).
    pub fn skip(&mut self, matches: impl Fn(&str) -> bool) {
        self.tensors.retain(|key, _| !matches(key));
    }

    /// Keys not yet taken.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Renames every key with `rename`; a key it returns `None` for is an error naming it.
    pub fn rename_keys(&mut self, rename: impl Fn(&str) -> Option<String>) -> Result<()> {
        let old = std::mem::take(&mut self.tensors);
        for (key, tensor) in old {
            let new = rename(&key).ok_or_else(|| AdapterError::UnusedTensor {
                path: self.path.clone(),
                key: key.clone(),
            })?;
            self.tensors.insert(new, tensor);
        }
        Ok(())
    }

    /// Number of values in the tensors not yet taken.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }

    /// Takes the tensor `key`, which must have shape `shape`.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<RawTensor> {
        let tensor = self
            .tensors
            .remove(key)
            .ok_or_else(|| AdapterError::MissingTensor {
                path: self.path.clone(),
                key: key.to_string(),
            })?;
        if tensor.shape != shape {
            return Err(AdapterError::Shape {
                path: self.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: tensor.shape,
            });
        }
        Ok(tensor)
    }

    /// Takes the tensor `key` of shape `shape` as a Burn tensor.
    pub fn take_tensor<B: FusedOps, const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let raw = self.take(key, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(raw.values, shape),
            device,
        ))
    }

    /// Takes `{prefix}.weight` `[out, in]` (and `{prefix}.bias` `[out]`) as a Burn `Linear`.
    pub fn take_linear<B: FusedOps>(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let weight = self.take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let mut linear = LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init::<B>(device);
        let w = Tensor::<B, 2>::from_data(TensorData::new(weight.values, [d_out, d_in]), device);
        linear.weight = Param::from_tensor(w.transpose());
        if bias {
            let b = self.take(&format!("{prefix}.bias"), &[d_out])?;
            linear.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b.values, [d_out]),
                device,
            )));
        }
        Ok(linear)
    }

    /// Takes `{prefix}.weight` and `{prefix}.bias` `[width]` as a Burn `LayerNorm`.
    pub fn take_layer_norm<B: FusedOps>(
        &mut self,
        prefix: &str,
        width: usize,
        epsilon: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let gamma = self.take(&format!("{prefix}.weight"), &[width])?;
        let beta = self.take(&format!("{prefix}.bias"), &[width])?;
        let mut norm = LayerNormConfig::new(width)
            .with_epsilon(epsilon)
            .init::<B>(device);
        norm.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(gamma.values, [width]),
            device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(beta.values, [width]),
            device,
        )));
        Ok(norm)
    }
}

/// Tensors gathered under checkpoint keys, then written as one `.safetensors` file.
#[derive(Debug, Default)]
pub struct TensorSink {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl TensorSink {
    /// Adds `tensor` under `key`, as f32 in its own shape.
    pub fn put<B: FusedOps, const D: usize>(&mut self, key: String, tensor: Tensor<B, D>) {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("converted to f32");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((key, shape, bytes));
    }

    /// Adds a Burn `Linear` as PyTorch stores it: `{prefix}.weight` `[out, in]`, `{prefix}.bias`.
    pub fn put_linear<B: FusedOps>(&mut self, prefix: &str, linear: &Linear<B>) {
        self.put(format!("{prefix}.weight"), linear.weight.val().transpose());
        if let Some(bias) = &linear.bias {
            self.put(format!("{prefix}.bias"), bias.val());
        }
    }

    /// Adds a Burn `LayerNorm` as PyTorch names it: `{prefix}.weight`, `{prefix}.bias`.
    pub fn put_layer_norm<B: FusedOps>(&mut self, prefix: &str, norm: &LayerNorm<B>) {
        self.put(format!("{prefix}.weight"), norm.gamma.val());
        if let Some(beta) = &norm.beta {
            self.put(format!("{prefix}.bias"), beta.val());
        }
    }

    /// Renames every key with `rename`.
    pub fn rename_keys(&mut self, rename: impl Fn(&str) -> String) {
        for (key, _, _) in &mut self.tensors {
            *key = rename(key);
        }
    }

    /// Writes the file atomically.
    pub fn write(self, path: &Path) -> Result<()> {
        let views = self
            .tensors
            .iter()
            .map(|(key, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .map_err(|e| AdapterError::file(path, format!("tensor `{key}`: {e}")))?;
                Ok((key.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| AdapterError::file(path, e.to_string()))?;
        sinew_backbone::files::write_atomic(path, &bytes)?;
        Ok(())
    }
}
