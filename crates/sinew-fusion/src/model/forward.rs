//! An [`AdapterModel`]'s forward passes: the active setup (or a per-example routing) through
//! the backbone's hooks, then the setup's heads on their rows.

use burn::prelude::*;
use sinew_adapter::{HeadKind, HeadLogits};
use sinew_backbone::{EncoderInput, EncoderOutput, FusedOps, NoHooks, Positions, Start};

use super::AdapterModel;
use crate::compose::{Composition, FusionAttentions};
use crate::delta::DeltaFusion;
use crate::error::{FusionError, Result};
use crate::routed::{routable, Routed};
use crate::setup::{FusionId, Setup};

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
                return Err(FusionError::StartLayer {
                    layer: *layer,
                    frozen,
                });
            }
        }
        self.run_setup(start, self.active.as_ref(), false, outputs, false)
    }

    /// How many of the lowest layers run as pretrained under the active setup, with nothing
    /// training in them: their outputs for an example's real tokens never change, so
    /// [`forward_from`](Self::forward_from) can skip them (AdapterDrop's observation).
    pub fn frozen_prefix(&self) -> usize {
        let layers = self.backbone.num_layers();
        if self.backbone_trains() {
            return 0;
        }
        let Some(setup) = &self.active else {
            return layers;
        };
        setup
            .flatten()
            .into_iter()
            .filter_map(|name| self.adapter(name))
            .map(|a| a.unchanged_below())
            .fold(layers, usize::min)
    }

    /// [`forward`](Self::forward), also returning the fusion attentions.
    pub fn forward_with_attentions(&self, input: &EncoderInput<B>) -> Result<AdapterOutput<B>> {
        self.run(input, true)
    }

    /// Per-example routing: example `i` goes through adapter `tasks[i]` and its head, in one
    /// batch, with the outputs it would have alone (for training too: gradients reach each
    /// adapter from its own examples). The examples are grouped by task, each group run by its
    /// own adapter ([`Routed`]), and put back in input order. Bottleneck, LoRA and IA3 adapters
    /// mix in one batch; an adapter of another method routes only a batch of its own
    /// ([`FusionError::NotRoutable`]).
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
            return Err(FusionError::TaskCount {
                tasks: tasks.len(),
                batch,
            });
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
        let sizes: Vec<usize> = names
            .iter()
            .map(|n| tasks.iter().filter(|t| *t == n).count())
            .collect();
        let setup = match names.as_slice() {
            [one] => Setup::adapter(*one),
            _ => Setup::BatchSplit(names.iter().map(|n| Setup::adapter(*n)).collect(), sizes),
        };
        for name in names.iter().filter(|_| names.len() > 1) {
            let (config, adapter) = self.adapter_entry(name)?;
            if !routable(adapter.composes()) {
                return Err(FusionError::NotRoutable {
                    name: name.to_string(),
                    method: config.architecture(),
                });
            }
        }
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
        let out = self.run_setup(Start::Tokens(&sorted), Some(&setup), false, outputs, true)?;
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
            false,
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
            self.head(name)
                .is_none_or(|h| h.kind() != HeadKind::Tagging)
        });
        let gated = setup.is_some_and(|s| {
            s.flatten()
                .into_iter()
                .filter_map(|name| self.adapter(name))
                .any(|a| a.mixes_positions())
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

    /// One pass of `setup`; with `routed`, a `BatchSplit` of adapters runs each group of rows
    /// as its adapter alone ([`Routed`]) instead of as AdapterHub's block.
    fn run_setup(
        &self,
        start: Start<'_, B>,
        setup: Option<&Setup>,
        attentions: bool,
        outputs: Outputs,
        routed: bool,
    ) -> Result<AdapterOutput<B>> {
        if let Some(merged) = self.merged_conflicts(setup) {
            return Err(FusionError::Merged {
                merged: merged.to_string(),
                setup: setup.map_or("the bare backbone".to_string(), |s| format!("`{s}`")),
            });
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
                let mut adapter = self.adapter_entry(name)?.1;
                self.backbone.run_for(start, &mut adapter, positions)
            }
            Some(Setup::BatchSplit(children, sizes)) if routed => {
                let adapters = children
                    .iter()
                    .map(|child| self.adapter_entry(child.first()).map(|(_, a)| a))
                    .collect::<Result<Vec<_>>>()?;
                self.backbone
                    .run_for(start, &mut Routed::new(adapters, sizes), positions)
            }
            Some(setup) if self.delta_fusion(setup).is_some() => {
                let names = self.delta_fusion(setup).expect("checked");
                let (_, fusion) = self.fusion_entry(&FusionId::of(setup.children()))?;
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
            let head = self.head(name).expect("checked by use_bare_head");
            return Ok(vec![HeadOutput {
                name: name.clone(),
                examples: (0..batch).collect(),
                logits: head.forward(encoded)?,
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
            .find(|n| self.head(n).is_none())
            .filter(|_| names.iter().any(|n| self.head(n).is_some()))
        {
            return Err(FusionError::MissingHead {
                setup: setup.to_string(),
                missing: missing.clone(),
            });
        }
        let mut out = Vec::new();
        for (name, rows) in names.into_iter().zip(rows) {
            let Some(head) = self.head(&name) else {
                continue;
            };
            let [total, _, _] = encoded.last_hidden_state.dims();
            let part = if rows == (0..total) {
                encoded.clone()
            } else {
                slice_output(encoded, rows.clone())
            };
            out.push(HeadOutput {
                logits: head.forward(&part)?,
                name,
                examples: rows.collect(),
            });
        }
        Ok(out)
    }
}

/// `BatchSplit` sizes must sum to the batch and `Split` splits to the sequence length (checked
/// where the block meets the whole batch: at the top or in a top-level `Stack`).
fn check_sizes(setup: &Setup, batch: usize, seq: usize) -> Result<()> {
    let check = |s: &Setup| match s {
        Setup::BatchSplit(_, sizes) if sizes.iter().sum::<usize>() != batch => {
            Err(FusionError::Sizes {
                setup: s.to_string(),
                what: "batch_sizes",
                sum: sizes.iter().sum(),
                of: "batch",
                size: format!("{batch} rows"),
            })
        }
        Setup::Split(_, splits) if splits.iter().sum::<usize>() != seq => Err(FusionError::Sizes {
            setup: s.to_string(),
            what: "splits",
            sum: splits.iter().sum(),
            of: "sequence",
            size: format!("{seq} positions"),
        }),
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
