//! Checkpoints: only what trains (adapters, fusions, heads — the backbone only when it is
//! fine-tuned), the optimizer's state, the best epoch's weights and where the run is (step,
//! epoch, early-stopping counters; the random state is a function of the seed and the step). One
//! zip file (`state.json`, `parts.bin`, `optimizer.bin`, `best.bin`) written atomically, so a
//! crash keeps the previous checkpoint whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param, ParamId};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use serde::{Deserialize, Serialize};
use sinew_backbone::{FusedAutodiff, FusedOps};
use sinew_fusion::{AdapterModel, FusionError, TrainedPartsRecord};

use crate::train::EpochLog;

/// Where a run stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// Epochs done (the current epoch, from 0).
    pub epoch: usize,
    /// Steps done in the current epoch.
    pub step_in_epoch: usize,
    /// Sum of the current epoch's losses so far.
    pub epoch_loss_sum: f64,
    /// The best dev macro-F1 so far.
    pub best_f1: Option<f64>,
    /// Epochs since the best.
    pub since_best: usize,
    /// Early stopping fired.
    pub stopped_early: bool,
    /// Epochs evaluated.
    pub epochs: Vec<EpochLog>,
}

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {path}: {message}")]
pub struct CheckpointError {
    path: String,
    message: String,
}

/// Trained parts that could not be encoded or decoded, or do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    /// Burn's record could not be written or read.
    #[error("record: {0}")]
    Record(String),
    /// The parts do not fit the model (count, names or shapes).
    #[error(transparent)]
    Model(#[from] FusionError),
}

impl From<burn::record::RecorderError> for PartsError {
    fn from(e: burn::record::RecorderError) -> Self {
        Self::Record(e.to_string())
    }
}

/// The checkpoint file of a run.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
}

type Bytes = BinBytesRecorder<FullPrecisionSettings>;

#[derive(Serialize, Deserialize)]
struct State {
    run: String,
    progress: Progress,
}

impl Checkpoint {
    /// `checkpoint.zip` in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("checkpoint.zip"),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: impl std::fmt::Display) -> CheckpointError {
        CheckpointError {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    /// Writes the trained parts of `model`, `optimizer`'s state, `progress` and the best weights
    /// of the run described by `run`.
    pub fn save<B, O>(
        &self,
        run: &str,
        model: &AdapterModel<B>,
        optimizer: &O,
        progress: &Progress,
        best: Option<&[u8]>,
    ) -> Result<(), CheckpointError>
    where
        B: FusedAutodiff,
        O: Optimizer<AdapterModel<B>, B>,
    {
        let recorder = Bytes::default();
        let state = serde_json::to_vec_pretty(&State {
            run: run.to_string(),
            progress: progress.clone(),
        })
        .expect("serialisable");
        let parts = parts_to_bytes(model).map_err(|e| self.error(e))?;
        let optimizer = recorder
            .record(optimizer.to_record(), ())
            .map_err(|e| self.error(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.error(e))?;
        }
        sinew_backbone::files::write_atomic_with(&self.path, |w| {
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            let entries = [
                ("state.json", Some(state.as_slice())),
                ("parts.bin", Some(parts.as_slice())),
                ("optimizer.bin", Some(optimizer.as_slice())),
                ("best.bin", best),
            ];
            for (name, bytes) in entries {
                if let Some(bytes) = bytes {
                    zip.start_file(name, options)?;
                    zip.write_all(bytes)?;
                }
            }
            w.write_all(&zip.finish()?.into_inner())
        })
        .map_err(|e| self.error(e))
    }

    /// Reads the checkpoint back into `model` (built as for the run: same adapters, heads and
    /// fusions) and `optimizer`; `None` when there is none yet. A checkpoint of another run than
    /// `run` is refused.
    #[allow(clippy::type_complexity)]
    pub fn load<B, O>(
        &self,
        run: &str,
        model: &mut AdapterModel<B>,
        optimizer: O,
    ) -> Result<Option<(Progress, O, Option<Vec<u8>>)>, CheckpointError>
    where
        B: FusedAutodiff,
        O: Optimizer<AdapterModel<B>, B>,
    {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let mut zip = zip::ZipArchive::new(file).map_err(|e| self.error(e))?;
        let mut read = |name: &str| -> Result<Option<Vec<u8>>, CheckpointError> {
            let mut entry = match zip.by_name(name) {
                Ok(entry) => entry,
                Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                Err(e) => return Err(self.error(e)),
            };
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| self.error(format!("{name}: {e}")))?;
            Ok(Some(bytes))
        };
        let missing = |name: &str| self.error(format!("has no {name}"));
        let state: State =
            serde_json::from_slice(&read("state.json")?.ok_or_else(|| missing("state.json"))?)
                .map_err(|e| self.error(format!("state.json: {e}")))?;
        if state.run != run {
            return Err(self.error(format!(
                "was written by another run ({}); this run is {run}",
                state.run
            )));
        }
        let parts = read("parts.bin")?.ok_or_else(|| missing("parts.bin"))?;
        let optimizer_state = read("optimizer.bin")?.ok_or_else(|| missing("optimizer.bin"))?;
        let best = read("best.bin")?;
        restore_from_bytes(model, parts).map_err(|e| self.error(format!("parts.bin: {e}")))?;
        let device = model.devices().into_iter().next().expect("a device");
        let optimizer = optimizer.load_record(
            Bytes::default()
                .load(optimizer_state, &device)
                .map_err(|e| self.error(format!("optimizer.bin: {e}")))?,
        );
        Ok(Some((state.progress, optimizer, best)))
    }
}

/// The trained parts of `model` as bytes (Burn's binary record).
pub fn parts_to_bytes<B: FusedOps>(model: &AdapterModel<B>) -> Result<Vec<u8>, PartsError> {
    Ok(Bytes::default().record(model.trained_parts().into_record(), ())?)
}

/// [`parts_to_bytes`] with the parameters numbered in order instead of Burn's ids (drawn from
/// the OS): the bytes of a run's `parts.bin` are then a function of the weights alone, and two
/// runs with the same seed write the same file. [`restore_from_bytes`] reads it as any other.
pub fn parts_to_stable_bytes<B: FusedOps>(model: &AdapterModel<B>) -> Result<Vec<u8>, PartsError> {
    struct Renumber(u64);
    impl<B: Backend> ModuleMapper<B> for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
        }
    }
    let parts = model.trained_parts().map(&mut Renumber(0));
    Ok(Bytes::default().record(parts.into_record(), ())?)
}

/// Puts trained parts saved by [`parts_to_bytes`] back into `model`.
pub fn restore_from_bytes<B: FusedOps>(
    model: &mut AdapterModel<B>,
    bytes: Vec<u8>,
) -> Result<(), PartsError> {
    let device = model.devices().into_iter().next().expect("a device");
    let parts: TrainedPartsRecord<B> = Bytes::default().load(bytes, &device)?;
    Ok(model.restore_parts(parts)?)
}
