//! The hooks of a routed pass ([`AdapterModel::forward_routed`](crate::AdapterModel::forward_routed)):
//! the batch's rows grouped by adapter, each group through its own adapter exactly as it would
//! run alone — bottlenecks (their own pre- and post-processing included) at the sub-layer ends,
//! LoRA and IA3 at the projections, so one pass serves a batch that mixes them.
//!
//! This is not AdapterHub's `BatchSplit`: that block runs its first adapter's pre-forward and its
//! last adapter's post-forward on every row, which is only the adapters' own computation when
//! they share those settings; and it takes no LoRA. Methods that change what other rows see
//! (prefixes lengthen the keys, prompts the sequence) are not routed.

use std::ops::Range;

use burn::nn::Linear;
use burn::prelude::*;
use sinew_adapter::method::Composes;
use sinew_adapter::Adapter;
use sinew_backbone::{kernels, FusedOps, Hooks, LayerNorm, Projection, SubLayer};

/// Whether adapters of this kind can share a routed pass with others: those that act only at
/// sub-layer ends or only at projections, on each example by itself.
pub fn routable(composes: Composes) -> bool {
    matches!(composes, Composes::Bottleneck | Composes::Projections)
}

/// Consecutive row groups, each with its adapter.
pub struct Routed<'a, B: FusedOps> {
    groups: Vec<(Range<usize>, &'a Adapter<B>)>,
}

impl<'a, B: FusedOps> Routed<'a, B> {
    /// Hooks for `adapters[i]` on the `sizes[i]` rows after those of the groups before it (each
    /// adapter [`routable`]).
    pub fn new(adapters: Vec<&'a Adapter<B>>, sizes: &[usize]) -> Self {
        let mut start = 0;
        let groups = adapters
            .into_iter()
            .zip(sizes)
            .map(|(adapter, &n)| {
                start += n;
                (start - n..start, adapter)
            })
            .collect();
        Self { groups }
    }

    /// `f` on each group's rows of `a` and `b`, put back together in row order.
    fn per_group(
        &self,
        a: Tensor<B, 3>,
        b: Tensor<B, 3>,
        mut f: impl FnMut(&'a Adapter<B>, Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let parts = self
            .groups
            .iter()
            .map(|(rows, adapter)| {
                let [_, s, h] = a.dims();
                let [_, t, k] = b.dims();
                f(
                    adapter,
                    a.clone().slice([rows.clone(), 0..s, 0..h]),
                    b.clone().slice([rows.clone(), 0..t, 0..k]),
                )
            })
            .collect();
        Tensor::cat(parts, 0)
    }
}

impl<B: FusedOps> Hooks<B> for Routed<'_, B> {
    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let y = kernels::linear(linear, x.clone());
        if !self.groups.iter().any(|(_, a)| a.updates(layer, site)) {
            return y;
        }
        self.per_group(x, y, |adapter, x, y| {
            adapter.update_projection(layer, site, linear, x, y)
        })
    }

    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        let acts = |a: &Adapter<B>| a.bottleneck_at(layer, site).is_some();
        if !self.groups.iter().any(|(_, a)| acts(a)) {
            return layer_norm.forward_add(output, residual);
        }
        self.per_group(output, residual, |mut adapter, output, residual| {
            adapter.sublayer_end(layer, site, output, residual, layer_norm)
        })
    }
}
