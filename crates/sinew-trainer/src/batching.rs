//! From examples to batches: tokenized once (and cached beside the split), padded per batch to
//! its longest text, with texts of similar length batched together (length buckets) in a
//! seeded order that changes every epoch.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sinew_backbone::{TextTokenizer, TokenBatch};

use sinew_data::{DataError, Example};

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids (1 on a pair's second text).
    pub types: Vec<u32>,
    /// Index of the label in the task's label list.
    pub label: usize,
}

/// Tokenizes `examples` (pairs where they have one); labels become indices into `labels`.
pub fn tokenize(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    labels: &[String],
) -> Result<Vec<Tokens>, DataError> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(256) {
        let pairs: Vec<(&str, Option<&str>)> = chunk
            .iter()
            .map(|e| (e.text.as_str(), e.pair.as_deref()))
            .collect();
        let batch = tokenizer
            .encode_pairs(&pairs)
            .map_err(|e| DataError::File {
                path: "tokenizer".into(),
                message: e.to_string(),
            })?;
        for (i, e) in chunk.iter().enumerate() {
            let label =
                labels
                    .iter()
                    .position(|l| *l == e.label)
                    .ok_or_else(|| DataError::File {
                        path: "labels".into(),
                        message: format!("label `{}` is not one of {}", e.label, labels.join(", ")),
                    })?;
            let len = batch.attention_mask[i].iter().filter(|&&m| m == 1).count();
            out.push(Tokens {
                ids: batch.input_ids[i][..len].to_vec(),
                types: batch.token_type_ids[i][..len].to_vec(),
                label,
            });
        }
    }
    Ok(out)
}

/// [`tokenize`], cached in `cache` (JSON) under a key of what it depends on.
pub fn tokenize_cached(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    labels: &[String],
    cache: &Path,
    key: &str,
) -> Result<Vec<Tokens>, DataError> {
    #[derive(Serialize, Deserialize)]
    struct Cached {
        key: String,
        /// SHA-256 of the tokens' JSON: a damaged file that still parses is not trusted.
        sha256: String,
        tokens: Vec<Tokens>,
    }
    let digest = |tokens: &[Tokens]| {
        let json = serde_json::to_vec(tokens).expect("serialisable");
        format!("{:x}", Sha256::digest(&json))
    };
    if let Ok(text) = std::fs::read(cache) {
        if let Ok(cached) = serde_json::from_slice::<Cached>(&text) {
            if cached.key == key
                && cached.tokens.len() == examples.len()
                && cached.sha256 == digest(&cached.tokens)
            {
                return Ok(cached.tokens);
            }
        }
    }
    let tokens = tokenize(tokenizer, examples, labels)?;
    let cached = Cached {
        key: key.to_string(),
        sha256: digest(&tokens),
        tokens,
    };
    let json = serde_json::to_vec(&cached).expect("serialisable");
    sinew_backbone::files::write_atomic(cache, &json).map_err(|e| DataError::File {
        path: cache.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(cached.tokens)
}

/// The batches of one epoch, as indices: a seeded shuffle (by `seed` and `epoch`), cut into
/// buckets of 50 batches, each sorted by length and cut into batches; the batch order is
/// shuffled again. Every index appears once.
pub(crate) fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for bucket in order.chunks(batch_size * 50) {
        let mut bucket = bucket.to_vec();
        bucket.sort_by_key(|&i| lengths[i]);
        batches.extend(bucket.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Pads the chosen examples to the longest of them: a batch ready for the encoder, and labels.
pub fn collate(tokens: &[Tokens], indices: &[usize]) -> (TokenBatch, Vec<usize>) {
    let longest = indices
        .iter()
        .map(|&i| tokens[i].ids.len())
        .max()
        .unwrap_or(0);
    let pad = |v: &[u32], fill: u32| {
        let mut row = v.to_vec();
        row.resize(longest, fill);
        row
    };
    let batch = TokenBatch {
        input_ids: indices.iter().map(|&i| pad(&tokens[i].ids, 0)).collect(),
        token_type_ids: indices.iter().map(|&i| pad(&tokens[i].types, 0)).collect(),
        attention_mask: indices
            .iter()
            .map(|&i| pad(&vec![1; tokens[i].ids.len()], 0))
            .collect(),
        truncated: Vec::new(),
    };
    (batch, indices.iter().map(|&i| tokens[i].label).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once_in_length_buckets() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 101 + 1).collect();
        let batches = epoch_batches(&lengths, 8, 5, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        // 1000 = 2 buckets of 400 and one of 200: 50 + 50 + 25 batches of 8.
        assert_eq!(batches.len(), 125);
        // Sorted within buckets: a batch spans far less than the whole range of lengths.
        let spread: usize = batches
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .max()
            .unwrap();
        assert!(spread <= 10, "{spread}");
        assert_eq!(epoch_batches(&lengths, 8, 5, 0), batches);
        assert_ne!(epoch_batches(&lengths, 8, 5, 1), batches);
    }

    #[test]
    fn collate_pads_to_the_longest() {
        let tokens = vec![
            Tokens {
                ids: vec![101, 7, 102],
                types: vec![0, 0, 0],
                label: 1,
            },
            Tokens {
                ids: vec![101, 102],
                types: vec![0, 0],
                label: 0,
            },
        ];
        let (batch, labels) = collate(&tokens, &[1, 0]);
        assert_eq!(batch.input_ids, [vec![101, 102, 0], vec![101, 7, 102]]);
        assert_eq!(batch.attention_mask, [vec![1, 1, 0], vec![1, 1, 1]]);
        assert_eq!(labels, [0, 1]);
    }
}
