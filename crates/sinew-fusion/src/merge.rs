//! Weight-space merges of LoRA adapters: one adapter from several, per projection.
//!
//! With `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` the update of input `i` (`sᵢ = alpha/r`) and `wᵢ` its weight:
//! - `linear` — AdapterHub's and PEFT's: `A = Σ wᵢ·Aᵢ`, `B = Σ wᵢ·Bᵢ` (same ranks; not `Σ wᵢ·ΔWᵢ`);
//! - `cat` — exactly `Σ wᵢ·ΔWᵢ`, at rank `Σ rᵢ` (the factors side by side);
//! - `svd` — `Σ wᵢ·ΔWᵢ`, truncated to rank `r` by SVD (the best rank-`r` approximation);
//! - `ties` — TIES-merging (Yadav et al., 2023) of the `wᵢ·ΔWᵢ`: keep each one's `density`
//!   largest-magnitude entries, elect each entry's sign by the sum, average the kept entries
//!   that agree with it; then rank `r` by SVD;
//! - `dare_linear`, `dare_ties` — DARE (Yu et al., 2024): drop each entry with probability
//!   `1 − density` and rescale the rest by `1/density`, then sum (or TIES); then rank `r` by SVD.
//!
//! The merged adapter has `alpha = r` (scaling 1) except for `linear`, which keeps the inputs'.

use burn::module::Param;
use burn::prelude::*;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use sinew_adapter::lora::{CompositionMode, LoraAdapter, LoraConfig, LoraSite};
use sinew_adapter::Method;
use sinew_backbone::FusedOps;
use sinew_backbone::{BertConfig, Projection};

/// How the updates are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMethod {
    /// Weighted sums of the A and of the B factors.
    Linear,
    /// Exact weighted sum of the updates, rank `Σ rᵢ`.
    Cat,
    /// Weighted sum of the updates, truncated by SVD.
    Svd,
    /// TIES-merging, then SVD.
    Ties,
    /// DARE, summed, then SVD.
    DareLinear,
    /// DARE, then TIES, then SVD.
    DareTies,
}

/// Merge settings or inputs that do not combine.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A method name that is not one of [`MergeMethod`]'s.
    #[error("unknown merge method `{0}` (linear, cat, svd, ties, dare_linear, dare_ties)")]
    UnknownMethod(String),
    /// Not one weight per input.
    #[error("{weights} weights for {adapters} adapters")]
    Weights {
        /// Weights given.
        weights: usize,
        /// Adapters given.
        adapters: usize,
    },
    /// A density outside (0, 1].
    #[error("density {0} must be in (0, 1]")]
    Density(f64),
    /// `linear` over factors of different ranks.
    #[error("linear merges need equal ranks ({0} and {1}); use cat or svd")]
    Ranks(usize, usize),
    /// No inputs.
    #[error("nothing to merge")]
    Nothing,
    /// Inputs whose kind cannot be merged in weight space (gates, per-module placement, own
    /// biases, LoRA with IA3, IA3 by anything but `linear`).
    #[error("{0}")]
    Inputs(&'static str),
    /// IA3 adapters that scale different projections.
    #[error("IA3 adapters must sit at the same projections: layer {layer} {site:?} differs")]
    Ia3Sites {
        /// The layer.
        layer: usize,
        /// The projection one adapter scales and another does not.
        site: Projection,
    },
    /// The merged adapter could not be built.
    #[error(transparent)]
    Adapter(#[from] sinew_adapter::AdapterError),
}

impl std::str::FromStr for MergeMethod {
    type Err = MergeError;

    fn from_str(s: &str) -> Result<Self, MergeError> {
        Ok(match s {
            "linear" => Self::Linear,
            "cat" => Self::Cat,
            "svd" => Self::Svd,
            "ties" => Self::Ties,
            "dare_linear" => Self::DareLinear,
            "dare_ties" => Self::DareTies,
            other => return Err(MergeError::UnknownMethod(other.to_string())),
        })
    }
}

/// What to merge and how.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOptions {
    /// The method.
    pub method: MergeMethod,
    /// One weight per input.
    pub weights: Vec<f64>,
    /// Fraction of entries kept by TIES and DARE, in (0, 1].
    pub density: f64,
    /// Rank of the result for the SVD-based methods (default: the largest input rank).
    pub rank: Option<usize>,
    /// Seed of DARE's random drops.
    pub seed: u64,
}

/// A low-rank update `scaling · b · a`, PyTorch's layout: `a` `[r, in]`, `b` `[out, r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRank {
    /// `lora_A`, `[r, in]`.
    pub a: DMatrix<f32>,
    /// `lora_B`, `[out, r]`.
    pub b: DMatrix<f32>,
    /// `alpha / r`.
    pub scaling: f32,
}

impl LowRank {
    /// The full update `ΔW = scaling · b · a`, `[out, in]`.
    pub fn delta(&self) -> DMatrix<f32> {
        &self.b * &self.a * self.scaling
    }

    /// The rank-`rank` truncated SVD of `delta`, as factors with scaling 1 (`b = U·√S`,
    /// `a = √S·Vᵀ`).
    pub(crate) fn from_delta(delta: &DMatrix<f32>, rank: usize) -> Self {
        let svd = delta.clone().svd(true, true);
        let (u, v_t) = (svd.u.expect("asked for U"), svd.v_t.expect("asked for Vᵀ"));
        // nalgebra does not sort the singular values.
        let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
        order.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
        let kept = rank.min(order.len());
        let mut a = DMatrix::zeros(rank, delta.ncols());
        let mut b = DMatrix::zeros(delta.nrows(), rank);
        for (k, &i) in order.iter().take(kept).enumerate() {
            let root = svd.singular_values[i].sqrt();
            b.set_column(k, &(u.column(i) * root));
            a.set_row(k, &(v_t.row(i) * root));
        }
        Self { a, b, scaling: 1.0 }
    }
}

/// Merges the updates of one projection.
pub fn merge(parts: &[LowRank], options: &MergeOptions) -> Result<LowRank, MergeError> {
    if parts.len() != options.weights.len() {
        return Err(MergeError::Weights {
            weights: options.weights.len(),
            adapters: parts.len(),
        });
    }
    if !(options.density > 0.0 && options.density <= 1.0) {
        return Err(MergeError::Density(options.density));
    }
    let weights: Vec<f32> = options.weights.iter().map(|&w| w as f32).collect();
    let rank = options
        .rank
        .unwrap_or_else(|| parts.iter().map(|p| p.a.nrows()).max().unwrap_or(1));
    let weighted = || -> Vec<DMatrix<f32>> {
        parts
            .iter()
            .zip(&weights)
            .map(|(p, &w)| p.delta() * w)
            .collect()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    Ok(match options.method {
        MergeMethod::Linear => {
            let r = parts[0].a.nrows();
            if let Some(p) = parts.iter().find(|p| p.a.nrows() != r) {
                return Err(MergeError::Ranks(r, p.a.nrows()));
            }
            let sum = |f: &dyn Fn(&LowRank) -> &DMatrix<f32>| {
                parts
                    .iter()
                    .zip(&weights)
                    .map(|(p, &w)| f(p) * w)
                    .reduce(|x, y| x + y)
                    .expect("non-empty")
            };
            LowRank {
                a: sum(&|p| &p.a),
                b: sum(&|p| &p.b),
                scaling: parts[0].scaling,
            }
        }
        MergeMethod::Cat => {
            let total: usize = parts.iter().map(|p| p.a.nrows()).sum();
            let (d_in, d_out) = (parts[0].a.ncols(), parts[0].b.nrows());
            let mut a = DMatrix::zeros(total, d_in);
            let mut b = DMatrix::zeros(d_out, total);
            let mut at = 0;
            for (p, &w) in parts.iter().zip(&weights) {
                let r = p.a.nrows();
                a.view_mut((at, 0), (r, d_in)).copy_from(&p.a);
                b.view_mut((0, at), (d_out, r))
                    .copy_from(&(&p.b * (w * p.scaling)));
                at += r;
            }
            LowRank { a, b, scaling: 1.0 }
        }
        MergeMethod::Svd => LowRank::from_delta(&sum(weighted()), rank),
        MergeMethod::Ties => LowRank::from_delta(&ties(&weighted(), options.density), rank),
        MergeMethod::DareLinear => {
            let dropped: Vec<_> = weighted()
                .iter()
                .map(|t| dare(t, options.density, &mut rng))
                .collect();
            LowRank::from_delta(&sum(dropped), rank)
        }
        MergeMethod::DareTies => {
            let dropped: Vec<_> = weighted()
                .iter()
                .map(|t| dare(t, options.density, &mut rng))
                .collect();
            LowRank::from_delta(&ties(&dropped, 1.0), rank)
        }
    })
}

/// Merges LoRA/IA3 adapters placed at the same projections into a new adapter of `model`.
/// IA3 adapters (scaling vectors) merge by `linear` only.
pub(crate) fn merge_lora<B: FusedOps>(
    model: &BertConfig,
    inputs: &[(&LoraConfig, &LoraAdapter<B>)],
    options: &MergeOptions,
    device: &B::Device,
) -> Result<(LoraConfig, LoraAdapter<B>), MergeError> {
    let (first, _) = *inputs.first().ok_or(MergeError::Nothing)?;
    if inputs.iter().any(|(c, _)| c.use_gating) {
        return Err(MergeError::Inputs("gated LoRA adapters cannot be merged"));
    }
    // Per-module ranks, alphas or sites (PEFT's rank_pattern, alpha_pattern, rsLoRA, the
    // attention output) do not fit the one rank and scaling a merged adapter has.
    if inputs
        .iter()
        .any(|(c, _)| c.peft.as_ref().is_some_and(|p| !p.sites.is_empty()))
    {
        return Err(MergeError::Inputs(
            "LoRA adapters placed per module (PEFT's rank_pattern, alpha_pattern, use_rslora or \
             the attention output) cannot be merged in weight space",
        ));
    }
    if inputs.iter().any(|(_, a)| a.has_own_biases()) {
        return Err(MergeError::Inputs(
            "LoRA adapters with their own biases (PEFT's bias \"lora_only\") cannot be merged in \
             weight space",
        ));
    }
    let ia3 = first.composition_mode == CompositionMode::Scale;
    if inputs
        .iter()
        .any(|(c, _)| (c.composition_mode == CompositionMode::Scale) != ia3)
    {
        return Err(MergeError::Inputs(
            "LoRA and IA3 adapters cannot be merged together",
        ));
    }
    if ia3 && options.method != MergeMethod::Linear {
        return Err(MergeError::Inputs(
            "IA3 adapters (scaling vectors) merge by `linear` only",
        ));
    }
    let to_matrix = |t: Tensor<B, 2>| {
        let [rows, cols] = t.dims();
        DMatrix::from_row_slice(rows, cols, &t.into_data().to_vec::<f32>().expect("f32"))
    };
    let to_tensor = |m: &DMatrix<f32>| {
        let rows: Vec<f32> = m.transpose().iter().copied().collect();
        Tensor::<B, 2>::from_data(TensorData::new(rows, [m.nrows(), m.ncols()]), device)
    };
    // The result sits wherever any input does; an input without an update somewhere counts as
    // a zero update there (IA3 scaling vectors have no such neutral element: same places only).
    let mut placement = first.clone();
    for (c, _) in &inputs[1..] {
        for m in &c.attn_matrices {
            if c.selfattn_lora && !placement.attn_matrices.contains(m) {
                placement.attn_matrices.push(m.clone());
            }
        }
        placement.selfattn_lora |= c.selfattn_lora;
        placement.intermediate_lora |= c.intermediate_lora;
        placement.output_lora |= c.output_lora;
        placement.leave_out.retain(|l| c.leave_out.contains(l));
    }
    let (h, inter) = (model.hidden_size, model.intermediate_size);
    let mut merged: Vec<(usize, Projection, LowRank)> = Vec::new();
    for layer in 0..model.num_hidden_layers {
        for site in SITES.into_iter().filter(|&s| placement.placed_at(layer, s)) {
            let (d_in, d_out) = match site {
                Projection::Intermediate => (h, inter),
                Projection::Output => (inter, h),
                _ => (h, h),
            };
            let mut parts = Vec::new();
            for (c, a) in inputs {
                let part = match a.at(layer, site) {
                    // Burn keeps the factors transposed: a [in, r], b [r, out].
                    Some(s) => LowRank {
                        a: s.lora_a.as_ref().map_or_else(
                            || DMatrix::from_element(1, 1, 1.0),
                            |a| to_matrix(a.val().transpose()),
                        ),
                        b: to_matrix(s.lora_b.val().transpose()),
                        scaling: if ia3 { c.alpha } else { c.alpha / c.r as f64 } as f32,
                    },
                    None if ia3 => return Err(MergeError::Ia3Sites { layer, site }),
                    None => LowRank {
                        a: DMatrix::zeros(c.r, d_in),
                        b: DMatrix::zeros(d_out, c.r),
                        scaling: 1.0,
                    },
                };
                parts.push(part);
            }
            merged.push((layer, site, merge(&parts, options)?));
        }
    }
    let r = merged.first().map_or(first.r, |(_, _, m)| m.a.nrows());
    let config = if options.method == MergeMethod::Linear {
        placement
    } else {
        LoraConfig {
            r,
            alpha: r as f64,
            ..placement
        }
    };
    let mut adapter = LoraAdapter::new(&config, model, device)?;
    for (layer, site, m) in merged {
        let slot = sites_mut(&mut adapter, site)[layer]
            .as_mut()
            .expect("placed by the merged config");
        if let Some(a) = &mut slot.lora_a {
            *a = Param::from_tensor(to_tensor(&m.a).transpose());
        }
        slot.lora_b = Param::from_tensor(to_tensor(&m.b).transpose());
    }
    Ok((config, adapter))
}

const SITES: [Projection; 5] = [
    Projection::Query,
    Projection::Key,
    Projection::Value,
    Projection::Intermediate,
    Projection::Output,
];

fn sites_mut<B: FusedOps>(
    adapter: &mut LoraAdapter<B>,
    site: Projection,
) -> &mut Vec<Option<LoraSite<B>>> {
    match site {
        Projection::Query => &mut adapter.query,
        Projection::Key => &mut adapter.key,
        Projection::Value => &mut adapter.value,
        Projection::Intermediate => &mut adapter.intermediate,
        Projection::Output | Projection::AttentionOutput => &mut adapter.output,
    }
}

fn sum(tasks: Vec<DMatrix<f32>>) -> DMatrix<f32> {
    tasks.into_iter().reduce(|x, y| x + y).expect("non-empty")
}

/// TIES-merging of task updates: trim each to its `density` largest magnitudes, elect the sign
/// of each entry by the sum of the trimmed updates, and average the entries that agree with it.
pub fn ties(tasks: &[DMatrix<f32>], density: f64) -> DMatrix<f32> {
    let trimmed: Vec<DMatrix<f32>> = tasks.iter().map(|t| trim(t, density)).collect();
    let (rows, cols) = trimmed[0].shape();
    DMatrix::from_fn(rows, cols, |i, j| {
        let total: f32 = trimmed.iter().map(|t| t[(i, j)]).sum();
        if total == 0.0 {
            return 0.0; // no elected sign
        }
        let sign = total.signum();
        let agreeing: Vec<f32> = trimmed
            .iter()
            .map(|t| t[(i, j)])
            .filter(|&v| v != 0.0 && v.signum() == sign)
            .collect();
        if agreeing.is_empty() {
            0.0
        } else {
            agreeing.iter().sum::<f32>() / agreeing.len() as f32
        }
    })
}

/// Keeps the `density` fraction of entries with the largest magnitude (ties kept), zeroes the rest.
fn trim(task: &DMatrix<f32>, density: f64) -> DMatrix<f32> {
    let keep = ((task.len() as f64 * density).round() as usize).clamp(1, task.len());
    let mut magnitudes: Vec<f32> = task.iter().map(|v| v.abs()).collect();
    magnitudes.sort_by(|a, b| b.total_cmp(a));
    let threshold = magnitudes[keep - 1];
    task.map(|v| if v.abs() >= threshold { v } else { 0.0 })
}

/// DARE: each entry dropped with probability `1 − density`, the rest rescaled by `1/density`.
pub fn dare(task: &DMatrix<f32>, density: f64, rng: &mut impl Rng) -> DMatrix<f32> {
    task.map(|v| {
        if rng.random::<f64>() < density {
            v / density as f32
        } else {
            0.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, v: &[f32]) -> DMatrix<f32> {
        DMatrix::from_row_slice(rows, cols, v)
    }

    fn options(method: MergeMethod) -> MergeOptions {
        MergeOptions {
            method,
            weights: vec![0.5, 2.0],
            density: 1.0,
            rank: None,
            seed: 7,
        }
    }

    fn parts() -> Vec<LowRank> {
        vec![
            LowRank {
                a: m(1, 3, &[1.0, 2.0, 0.0]),
                b: m(2, 1, &[1.0, -1.0]),
                scaling: 2.0,
            },
            LowRank {
                a: m(1, 3, &[0.0, 1.0, 1.0]),
                b: m(2, 1, &[3.0, 1.0]),
                scaling: 0.5,
            },
        ]
    }

    fn close(x: &DMatrix<f32>, y: &DMatrix<f32>) {
        assert!((x - y).abs().max() < 1e-5, "{x} vs {y}");
    }

    #[test]
    fn linear_sums_the_factors() {
        let merged = merge(&parts(), &options(MergeMethod::Linear)).unwrap();
        close(&merged.a, &m(1, 3, &[0.5, 3.0, 2.0]));
        close(&merged.b, &m(2, 1, &[6.5, 1.5]));
        assert_eq!(merged.scaling, 2.0);
    }

    #[test]
    fn cat_and_svd_are_the_weighted_sum_of_updates() {
        // 0.5·2·[1,2,0;-1,-2,0] + 2·0.5·[0,3,3;0,1,1]
        let want = m(2, 3, &[1.0, 5.0, 3.0, -1.0, -1.0, 1.0]);
        close(
            &merge(&parts(), &options(MergeMethod::Cat)).unwrap().delta(),
            &want,
        );
        let svd = merge(
            &parts(),
            &MergeOptions {
                rank: Some(2),
                ..options(MergeMethod::Svd)
            },
        )
        .unwrap();
        close(&svd.delta(), &want);
        // Rank 1: the best rank-1 approximation keeps the largest singular value only.
        let one = merge(&parts(), &options(MergeMethod::Svd)).unwrap();
        let s = want.clone().svd(false, false).singular_values;
        let (big, small) = (s.max(), s.min());
        let err = (&want - one.delta()).norm();
        assert!(
            (err - small).abs() < 1e-4 && big > small,
            "{err} vs {small}"
        );
    }

    #[test]
    fn ties_trims_elects_and_averages() {
        let tasks = [
            m(1, 4, &[3.0, -1.0, 0.2, 2.0]),
            m(1, 4, &[1.0, 4.0, -0.1, -3.0]),
            m(1, 4, &[-2.0, 1.0, 0.3, 1.0]),
        ];
        // density 0.5 keeps two entries per task: [3,0,0,2], [0,4,0,-3], [-2,0,0,1]... and the
        // third keeps its two largest, |-2| and |1| (1 twice: ties are kept) → [-2,1,0,1].
        // Signs: 3+0-2=1 → +; 0+4+1 → +; 0 → 0 stays 0; 2-3+1=0 → no sign, 0.
        let got = ties(&tasks, 0.5);
        close(&got, &m(1, 4, &[3.0, 2.5, 0.0, 0.0]));
    }

    #[test]
    fn dare_drops_and_rescales() {
        let task = DMatrix::from_element(50, 40, 2.0f32);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let dropped = dare(&task, 0.25, &mut rng);
        let kept = dropped.iter().filter(|&&v| v != 0.0).count();
        assert!(dropped.iter().all(|&v| v == 0.0 || v == 8.0));
        // 2000 entries kept with probability 1/4: 500 ± 4σ (σ ≈ 19).
        assert!((424..=576).contains(&kept), "{kept}");
        // density 1 keeps everything as is.
        close(&dare(&task, 1.0, &mut rng), &task);
    }

    #[test]
    fn bad_options_are_named() {
        let mut o = options(MergeMethod::Ties);
        o.weights = vec![1.0];
        assert!(matches!(
            merge(&parts(), &o).unwrap_err(),
            MergeError::Weights {
                weights: 1,
                adapters: 2
            }
        ));
        let mut o = options(MergeMethod::Ties);
        o.density = 0.0;
        assert!(matches!(
            merge(&parts(), &o).unwrap_err(),
            MergeError::Density(d) if d == 0.0
        ));
        assert!("mean"
            .parse::<MergeMethod>()
            .unwrap_err()
            .to_string()
            .contains("`mean`"));
    }
}
