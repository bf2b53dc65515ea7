//! Texts in, token ids, hidden states, logits and fusion attentions out: what `sinew encode`
//! writes, and the JSON it writes.

use std::path::Path;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sinew_backbone::FusedOps;

use crate::adapter::HeadLogits;
use crate::backbone::{TextTokenizer, TokenBatch};
use crate::fusion::AdapterModel;

/// The JSON `sinew encode` writes; every array is row-major, padded positions included.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Encoded {
    /// `[batch][token]`.
    pub input_ids: Vec<Vec<u32>>,
    /// `[batch][token]`, 1 for real tokens.
    pub attention_mask: Vec<Vec<u32>>,
    /// `[batch][token][hidden]`.
    pub last_hidden_state: Vec<Vec<Vec<f32>>>,
    /// `[batch][hidden]`, mean over real tokens.
    pub mean_pooled: Vec<Vec<f32>>,
    /// `[batch][labels]`, when the setup has one head, a text-level one (several: `heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<Vec<f32>>>,
    /// `[batch][token][labels]`, when the active adapter has a tagging head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logits: Option<Vec<Vec<Vec<f32>>>>,
    /// Each head's outputs by name, for setups with several heads (`Parallel`, `BatchSplit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<std::collections::BTreeMap<String, HeadRows>>,
    /// Fusion attentions `[batch][token][adapters]` by layer: `"<layer>"` after the FFN
    /// (`output_adapter`), `"<layer>.mh_adapter"` after attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_attentions: Option<std::collections::BTreeMap<String, Vec<Vec<Vec<f32>>>>>,
}

/// One head's outputs in a setup with several heads.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct HeadRows {
    /// The texts it predicted for (0-based lines of the input).
    pub rows: Vec<usize>,
    /// Per row: `[labels]`, or `[token][labels]` for a tagging head.
    pub logits: Vec<serde_json::Value>,
}

/// Reads one text per line; blank lines are skipped with a warning, and a file with no text is
/// an error naming it.
pub fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut texts = Vec::new();
    let mut blank = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            blank.push(i + 1);
        } else {
            texts.push(line.to_string());
        }
    }
    if texts.is_empty() {
        bail!("{}: no text (one text per line expected)", path.display());
    }
    if !blank.is_empty() {
        tracing::warn!("{}: skipped blank lines {blank:?}", path.display());
    }
    Ok(texts)
}

/// Encodes `texts` with the model's active adapter (if any) in batches of `batch_size`, all
/// padded to the longest text, so the output is the same as one batch of everything.
pub fn encode_texts<B: FusedOps>(
    model: &AdapterModel<B>,
    tokenizer: &TextTokenizer,
    texts: &[String],
    batch_size: usize,
    device: &B::Device,
) -> anyhow::Result<Encoded> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let tokens = tokenizer.encode(texts)?;
    for &i in &tokens.truncated {
        tracing::warn!(
            "text {} is longer than {} tokens and was truncated",
            i + 1,
            tokenizer.max_len()
        );
    }
    let bar = ProgressBar::new(texts.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} texts {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let mut out = Encoded {
        input_ids: tokens.input_ids.clone(),
        attention_mask: tokens.attention_mask.clone(),
        last_hidden_state: Vec::with_capacity(texts.len()),
        mean_pooled: Vec::with_capacity(texts.len()),
        logits: None,
        token_logits: None,
        heads: None,
        fusion_attentions: None,
    };
    for start in (0..texts.len()).step_by(batch_size) {
        let end = (start + batch_size).min(texts.len());
        let chunk = TokenBatch {
            input_ids: tokens.input_ids[start..end].to_vec(),
            token_type_ids: tokens.token_type_ids[start..end].to_vec(),
            attention_mask: tokens.attention_mask[start..end].to_vec(),
            truncated: Vec::new(),
        };
        let output = model.forward_with_attentions(&chunk.to_input::<B>(device))?;
        for (layer, site, attention) in output.fusion_attentions.into_iter().flatten() {
            let key = match site {
                crate::backbone::SubLayer::FeedForward => layer.to_string(),
                crate::backbone::SubLayer::Attention => format!("{layer}.mh_adapter"),
            };
            let [_, seq, n] = attention.dims();
            let values = attention.into_data().to_vec::<f32>()?;
            out.fusion_attentions
                .get_or_insert_with(Default::default)
                .entry(key)
                .or_default()
                .extend(
                    values
                        .chunks(seq * n)
                        .map(|text| text.chunks(n).map(<[f32]>::to_vec).collect()),
                );
        }
        if output.heads.len() > 1 {
            let batch = end - start;
            for head in &output.heads {
                let per_row: Vec<serde_json::Value> = match &head.logits {
                    HeadLogits::Text(l) => {
                        let labels = l.dims()[1];
                        let values = l.clone().into_data().to_vec::<f32>()?;
                        values.chunks(labels).map(|r| r.into()).collect()
                    }
                    HeadLogits::Tokens(l) => {
                        let [_, seq, labels] = l.dims();
                        let values = l.clone().into_data().to_vec::<f32>()?;
                        values
                            .chunks(seq * labels)
                            .map(|t| {
                                t.chunks(labels)
                                    .map(<[f32]>::to_vec)
                                    .collect::<Vec<_>>()
                                    .into()
                            })
                            .collect()
                    }
                };
                let entry = out
                    .heads
                    .get_or_insert_with(Default::default)
                    .entry(head.name.clone())
                    .or_default();
                // `Parallel` replicates the batch: its rows count across the replicas.
                entry
                    .rows
                    .extend(head.examples.iter().map(|&r| start + r % batch));
                entry.logits.extend(per_row);
            }
        }
        // With several heads, each head's logits are under `heads` (a Parallel's concatenation
        // would have more rows than texts).
        let (logits, token_logits) = if output.heads.len() > 1 {
            (None, None)
        } else {
            (output.logits, output.token_logits)
        };
        if let Some(logits) = logits {
            let labels = logits.dims()[1];
            let values = logits.into_data().to_vec::<f32>()?;
            out.logits
                .get_or_insert_with(Vec::new)
                .extend(values.chunks(labels).map(<[f32]>::to_vec));
        }
        if let Some(logits) = token_logits {
            let [_, seq, labels] = logits.dims();
            let values = logits.into_data().to_vec::<f32>()?;
            out.token_logits.get_or_insert_with(Vec::new).extend(
                values
                    .chunks(seq * labels)
                    .map(|text| text.chunks(labels).map(<[f32]>::to_vec).collect()),
            );
        }
        let output = output.encoded;
        let [batch, seq, hidden] = output.last_hidden_state.dims();
        let states = output
            .last_hidden_state
            .clone()
            .into_data()
            .to_vec::<f32>()?;
        let pooled = output.mean_pooled().into_data().to_vec::<f32>()?;
        for b in 0..batch {
            let rows = &states[b * seq * hidden..(b + 1) * seq * hidden];
            out.last_hidden_state
                .push(rows.chunks(hidden).map(<[f32]>::to_vec).collect());
            out.mean_pooled
                .push(pooled[b * hidden..(b + 1) * hidden].to_vec());
        }
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Mean fusion attention over the real tokens of every text: rows `(label, [per adapter])`,
/// by layer (the FFN's fusion after the attention's).
pub fn mean_fusion_attentions(encoded: &Encoded) -> Vec<(String, Vec<f32>)> {
    let Some(maps) = &encoded.fusion_attentions else {
        return Vec::new();
    };
    let mut rows: Vec<(usize, bool, String, Vec<f32>)> = maps
        .iter()
        .map(|(key, texts)| {
            let (layer, attention) = match key.split_once('.') {
                Some((l, _)) => (l, true),
                None => (key.as_str(), false),
            };
            let layer: usize = layer.parse().unwrap_or(usize::MAX);
            let n = texts.first().and_then(|t| t.first()).map_or(0, Vec::len);
            let mut sum = vec![0f32; n];
            let mut count = 0usize;
            for (text, mask) in texts.iter().zip(&encoded.attention_mask) {
                for (token, &keep) in text.iter().zip(mask) {
                    if keep == 1 {
                        sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
                        count += 1;
                    }
                }
            }
            let label = format!(
                "layer {layer} {}",
                if attention { "attention" } else { "FFN" }
            );
            let mean = sum.iter().map(|s| s / count.max(1) as f32).collect();
            (layer, !attention, label, mean)
        })
        .collect();
    rows.sort_by_key(|(layer, ffn, _, _)| (*layer, *ffn));
    rows.into_iter().map(|(_, _, l, m)| (l, m)).collect()
}
