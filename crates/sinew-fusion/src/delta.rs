//! AdapterFusion over adapters that act inside a sub-layer (LoRA, IA3), which AdapterHub cannot
//! fuse (its issue #416): fusion over the **sub-layer deltas** the adapters cause.
//!
//! The batch runs as `N + 1` replicas: replica 0 without adapters, replica `n` with adapter `n`
//! at the projections. At each sub-layer end, with `z₀` the frozen sub-layer output, `zₙ` the
//! output under adapter `n` and `r` the sub-layer input, the adapters' deltas `uₙ = zₙ − z₀` are
//! fused by a [`crate::FusionLayer`] queried by the frozen model's hidden state `LN(z₀ + r)`:
//!
//! `h = LN(z₀ + r + Σₙ pₙ·V·uₙ)`,  `p = softmax(Q·Kᵀuₙ)`
//!
//! and every replica continues from `h`. With one adapter and `V = I` this is exactly the adapter
//! alone; with several, the attention picks per token how much of each adapter's change to take.

use burn::nn::Linear;
use burn::prelude::*;
use sinew_adapter::Adapter;
use sinew_backbone::FusedOps;
use sinew_backbone::LayerNorm;
use sinew_backbone::{kernels, Hooks, Projection, SubLayer};

use crate::compose::{tile, FusionAttentions, Registry};
use crate::fusion::{AdapterFusion, Semantics};

/// The hooks of a delta fusion over LoRA/IA3 adapters.
pub struct DeltaFusion<'a, B: Backend> {
    adapters: Vec<&'a Adapter<B>>,
    fusion: &'a AdapterFusion<B>,
    semantics: Semantics,
    /// The original batch size (set when the batch is replicated).
    batch: usize,
    /// Fusion attentions, when asked for.
    pub attentions: Option<FusionAttentions<B>>,
}

impl<'a, B: FusedOps> DeltaFusion<'a, B> {
    /// Hooks fusing `names` (LoRA/IA3 adapters of `registry`) with fusion `fusion`.
    pub fn new<R: Registry<B>>(
        registry: &'a R,
        names: &[&str],
        fusion: &'a AdapterFusion<B>,
        semantics: Semantics,
        attentions: bool,
    ) -> Self {
        Self {
            adapters: names.iter().filter_map(|n| registry.adapter(n)).collect(),
            fusion,
            semantics,
            batch: 0,
            attentions: attentions.then(Vec::new),
        }
    }

    fn replicas(&self) -> usize {
        self.adapters.len() + 1
    }

    fn rows<const D: usize>(&self, t: Tensor<B, D>, replica: usize) -> Tensor<B, D> {
        t.narrow(0, replica * self.batch, self.batch)
    }
}

impl<B: FusedOps> Hooks<B> for DeltaFusion<'_, B> {
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        self.batch = hidden.dims()[0];
        let n = self.replicas();
        (tile(hidden, n), tile(keep, n))
    }

    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let y = kernels::linear(linear, x.clone());
        if !self.adapters.iter().any(|a| a.updates(layer, site)) {
            return y;
        }
        let mut parts = vec![self.rows(y.clone(), 0)];
        for (i, adapter) in self.adapters.iter().enumerate() {
            let (xi, yi) = (self.rows(x.clone(), i + 1), self.rows(y.clone(), i + 1));
            parts.push(adapter.update_projection(layer, site, linear, xi, yi));
        }
        Tensor::cat(parts, 0)
    }

    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        let n = self.replicas();
        let (z0, r) = (self.rows(output.clone(), 0), self.rows(residual, 0));
        let hidden = match self.fusion.at(layer, site) {
            Some(fusion) => {
                let deltas: Vec<Tensor<B, 3>> = (1..n)
                    .map(|i| self.rows(output.clone(), i) - z0.clone())
                    .collect();
                let query = layer_norm.forward_add(z0.clone(), r.clone());
                let out = fusion.forward(
                    query,
                    Tensor::stack(deltas, 2),
                    z0 + r,
                    self.fusion.temperature(),
                    self.fusion.semantics(self.semantics),
                );
                if let Some(attentions) = &mut self.attentions {
                    attentions.push((layer, site, out.attention));
                }
                layer_norm.forward(out.hidden)
            }
            None => layer_norm.forward_add(z0, r),
        };
        tile(hidden, n)
    }
}
