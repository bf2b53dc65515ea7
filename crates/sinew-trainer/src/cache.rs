//! The frozen-prefix activation cache: when the adapters being trained leave the lowest layers
//! as pretrained (`leave_out` of the lower layers, as AdapterDrop does, or a head-only run, which
//! leaves all of them), those layers give the same states for an example in every epoch. They
//! run once per example, without autodiff; later epochs start the forward pass above them
//! ([`AdapterModel::forward_from`]).
//!
//! Only the states of an example's real tokens are kept, `[tokens, hidden]` f32 each, in memory
//! up to a budget and beyond it in an unnamed temporary file (gone when the cache is dropped).
//! Padded positions of a batch start from zeros instead of the states the plain pass gives them:
//! the real tokens never attend to padding, and adapters whose gates average over padded
//! positions make [`AdapterModel::frozen_prefix`] 0, so the cache is never used with them.
//!
//! The cached layers run as in evaluation — no dropout — which is the point of computing them
//! once; with the backbone's dropout at 0 a cached run gives the uncached run's results.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use burn::module::AutodiffModule;
use burn::prelude::*;
use sinew_backbone::FusedAutodiff;
use sinew_backbone::TokenBatch;
use sinew_fusion::AdapterModel;

/// Where one example's states are.
enum Slot {
    Memory(Vec<f32>),
    Disk { offset: u64, values: usize },
}

/// Hidden states entering layer [`layer`](Self::layer), per training example.
pub struct ActivationCache {
    layer: usize,
    budget: usize,
    in_memory: usize,
    slots: HashMap<(usize, usize), Slot>,
    spill: Option<File>,
    spilled: u64,
}

impl ActivationCache {
    /// A cache of the states entering `layer`, holding up to `budget_bytes` in memory.
    pub fn new(layer: usize, budget_bytes: usize) -> Self {
        Self {
            layer,
            budget: budget_bytes,
            in_memory: 0,
            slots: HashMap::new(),
            spill: None,
            spilled: 0,
        }
    }

    /// The layer the cached states enter.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Examples held in memory and in the spill file.
    pub fn counts(&self) -> (usize, usize) {
        let memory = self
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Memory(_)))
            .count();
        (memory, self.slots.len() - memory)
    }

    /// The states entering [`layer`](Self::layer) for `batch` (examples `indices` of task
    /// `task`, collated in that order), `[batch, seq, hidden]`, and its keep-mask `[batch, seq]`.
    /// Examples seen for the first time run through the layers below, without autodiff.
    pub fn start<B: FusedAutodiff>(
        &mut self,
        model: &AdapterModel<B>,
        task: usize,
        indices: &[usize],
        batch: &TokenBatch,
        device: &B::Device,
    ) -> std::io::Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let lengths: Vec<usize> = batch
            .attention_mask
            .iter()
            .map(|row| row.iter().filter(|&&m| m == 1).count())
            .collect();
        let missing: Vec<usize> = (0..indices.len())
            .filter(|&row| !self.slots.contains_key(&(task, indices[row])))
            .collect();
        let width = model.config().hidden_size;
        if !missing.is_empty() {
            let rows = |v: &Vec<Vec<u32>>| missing.iter().map(|&r| v[r].clone()).collect();
            let part = TokenBatch {
                input_ids: rows(&batch.input_ids),
                token_type_ids: rows(&batch.token_type_ids),
                attention_mask: rows(&batch.attention_mask),
                truncated: Vec::new(),
            };
            let input = part.to_input::<B::InnerBackend>(device);
            let hidden = model.backbone().valid().hidden_before(&input, self.layer);
            let seq = hidden.dims()[1];
            let values = hidden
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 states");
            for (i, &row) in missing.iter().enumerate() {
                let start = i * seq * width;
                let states = &values[start..start + lengths[row] * width];
                self.put((task, indices[row]), states)?;
            }
        }
        let seq = batch.attention_mask.first().map_or(0, Vec::len);
        let mut values = vec![0.0f32; indices.len() * seq * width];
        for (row, &index) in indices.iter().enumerate() {
            let start = row * seq * width;
            self.read(
                (task, index),
                &mut values[start..start + lengths[row] * width],
            )?;
        }
        let hidden =
            Tensor::from_data(TensorData::new(values, [indices.len(), seq, width]), device);
        let keep: Vec<f32> = batch
            .attention_mask
            .iter()
            .flatten()
            .map(|&m| m as f32)
            .collect();
        let keep = Tensor::from_data(TensorData::new(keep, [indices.len(), seq]), device);
        Ok((hidden, keep))
    }

    fn put(&mut self, key: (usize, usize), states: &[f32]) -> std::io::Result<()> {
        let bytes = std::mem::size_of_val(states);
        let slot = if self.in_memory + bytes <= self.budget {
            self.in_memory += bytes;
            Slot::Memory(states.to_vec())
        } else {
            let file = match &mut self.spill {
                Some(file) => file,
                None => self.spill.insert(tempfile::tempfile()?),
            };
            let offset = self.spilled;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&le_bytes(states))?;
            self.spilled += bytes as u64;
            Slot::Disk {
                offset,
                values: states.len(),
            }
        };
        self.slots.insert(key, slot);
        Ok(())
    }

    fn read(&mut self, key: (usize, usize), out: &mut [f32]) -> std::io::Result<()> {
        match self.slots.get(&key) {
            Some(Slot::Memory(states)) => out.copy_from_slice(states),
            Some(&Slot::Disk { offset, values }) => {
                debug_assert_eq!(values, out.len());
                let file = self.spill.as_mut().expect("a disk slot has a file");
                file.seek(SeekFrom::Start(offset))?;
                let mut bytes = vec![0u8; values * 4];
                file.read_exact(&mut bytes)?;
                for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            None => unreachable!("every example of the batch was cached above"),
        }
        Ok(())
    }
}

/// The little-endian bytes of `values`.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Examples beyond the budget go to the spill file and come back bit for bit.
    #[test]
    fn spills_beyond_the_budget_and_reads_back() {
        let mut cache = ActivationCache::new(2, 3 * 4);
        let a = [1.0f32, -2.5, 3.25];
        let b = [f32::MIN_POSITIVE, 7.0];
        let c = [0.1f32, 0.2, 0.3, 0.4];
        cache.put((0, 0), &a).unwrap();
        cache.put((0, 1), &b).unwrap();
        cache.put((1, 0), &c).unwrap();
        assert_eq!(cache.counts(), (1, 2));
        for (key, want) in [((1, 0), &c[..]), ((0, 0), &a[..]), ((0, 1), &b[..])] {
            let mut got = vec![0.0; want.len()];
            cache.read(key, &mut got).unwrap();
            assert_eq!(got, want);
        }
    }
}
