//! The hooks of a composed setup: at each sub-layer end, the setup's bottleneck adapters are
//! walked block by block as AdapterHub's `BottleneckLayer.compose_*` do (its `BottleneckState`
//! is [`State`]); LoRA, prefix and prompt adapters of a top-level `Stack` act at their own sites
//! one after another.

use burn::nn::Linear;
use burn::prelude::*;
use sinew_adapter::bottleneck::Bottleneck;
use sinew_adapter::method::Composes;
use sinew_adapter::Adapter;
use sinew_backbone::FusedOps;
use sinew_backbone::LayerNorm;
use sinew_backbone::{kernels, AttentionKv, Hooks, Projection, SubLayer};

use crate::fusion::{AdapterFusion, FusionConfig, Semantics};
use crate::setup::{FusionId, Setup};

/// What a composition reads: adapters and fusions by name.
pub trait Registry<B: FusedOps> {
    /// Adapter `name`.
    fn adapter(&self, name: &str) -> Option<&Adapter<B>>;
    /// The fusion of these adapters, and its config.
    fn fusion(&self, id: &FusionId) -> Option<(&FusionConfig, &AdapterFusion<B>)>;
}

/// Fusion attentions recorded during a forward pass: `(layer, site, [batch, seq, adapters])`.
pub type FusionAttentions<B> = Vec<(usize, SubLayer, Tensor<B, 3>)>;

/// The state passed between blocks at one sub-layer end (AdapterHub's `BottleneckState`).
#[derive(Clone)]
struct State<B: Backend> {
    /// What the next adapter reads.
    hidden: Tensor<B, 3>,
    /// The sub-layer's input (the transformer residual).
    input: Tensor<B, 3>,
    /// The residual the next adapter adds.
    residual: Tensor<B, 3>,
    /// The last adapter's up-projection (what fusion attends over).
    up: Option<Tensor<B, 3>>,
    /// The last adapter that acted.
    last: Option<String>,
}

impl<B: FusedOps> State<B> {
    fn map(self, f: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>) -> Self {
        Self {
            hidden: f(self.hidden),
            input: f(self.input),
            residual: f(self.residual),
            up: self.up.map(&f),
            last: self.last,
        }
    }

    fn concat(states: Vec<Self>, dim: usize) -> Self {
        let cat =
            |f: &dyn Fn(&Self) -> Tensor<B, 3>| Tensor::cat(states.iter().map(f).collect(), dim);
        let up = states
            .iter()
            .all(|s| s.up.is_some())
            .then(|| cat(&|s| s.up.clone().expect("checked")));
        Self {
            hidden: cat(&|s| s.hidden.clone()),
            input: cat(&|s| s.input.clone()),
            residual: cat(&|s| s.residual.clone()),
            up,
            last: states.last().and_then(|s| s.last.clone()),
        }
    }
}

/// The hooks of one forward pass through a composed setup.
pub struct Composition<'a, B: FusedOps, R: Registry<B>> {
    registry: &'a R,
    setup: &'a Setup,
    semantics: Semantics,
    /// `Parallel`: the batch was replicated, and the original batch size.
    parallel: Option<usize>,
    /// Fusion attentions, when asked for.
    pub attentions: Option<FusionAttentions<B>>,
    layer: usize,
    site: SubLayer,
}

impl<'a, B: FusedOps, R: Registry<B>> Composition<'a, B, R> {
    /// Hooks for `setup` (already checked against `registry`).
    pub fn new(registry: &'a R, setup: &'a Setup, semantics: Semantics, attentions: bool) -> Self {
        Self {
            registry,
            setup,
            semantics,
            parallel: None,
            attentions: attentions.then(Vec::new),
            layer: 0,
            site: SubLayer::Attention,
        }
    }

    /// The adapters that act outside sub-layer ends (LoRA, prefix, prompt), in setup order.
    fn others(&self) -> impl Iterator<Item = &'a Adapter<B>> + '_ {
        self.setup
            .flatten()
            .into_iter()
            .filter_map(|n| self.registry.adapter(n))
            .filter(|a| a.composes() != Composes::Bottleneck)
    }

    fn bottleneck(&self, name: &str) -> Option<&'a Bottleneck<B>> {
        self.registry
            .adapter(name)?
            .bottleneck_at(self.layer, self.site)
    }

    fn compose(&mut self, setup: &Setup, state: State<B>, ln: &LayerNorm<B>) -> State<B> {
        match setup {
            Setup::Adapter(name) => {
                let state = self.pre_block(name, state, ln);
                self.single(name, state)
            }
            Setup::Stack(children) => children.iter().fold(state, |state, child| match child {
                Setup::Adapter(name) if self.bottleneck(name).is_some() => {
                    let state = self.pre_block(name, state, ln);
                    self.single(name, state)
                }
                Setup::Adapter(_) => state,
                block => self.compose(block, state, ln),
            }),
            Setup::Fuse(children) => self.fuse(children, setup.last(), state, ln),
            Setup::BatchSplit(children, sizes) => {
                let state = self.pre_block(setup.first(), state, ln);
                let mut start = 0;
                let parts = children
                    .iter()
                    .zip(sizes)
                    .map(|(child, &n)| {
                        let rows = start..start + n;
                        start += n;
                        let part = state.clone().map(|t| slice_rows(t, rows.clone()));
                        self.child(child, part, ln)
                    })
                    .collect();
                State::concat(parts, 0)
            }
            Setup::Split(children, splits) => {
                let state = self.pre_block(setup.first(), state, ln);
                let mut start = 0;
                let parts: Vec<State<B>> = children
                    .iter()
                    .zip(splits)
                    .map(|(child, &n)| {
                        let cols = start..start + n;
                        start += n;
                        let part = state.clone().map(|t| slice_positions(t, cols.clone()));
                        self.child(child, part, ln)
                    })
                    .collect();
                let last = parts.iter().rev().find_map(|p| p.last.clone());
                let hidden = Tensor::cat(parts.into_iter().map(|p| p.hidden).collect(), 1);
                State {
                    hidden,
                    last: last.or(state.last.clone()),
                    ..state
                }
            }
            Setup::Parallel(children) => {
                let n = children.len();
                let batch = state.hidden.dims()[0];
                let original = match self.parallel {
                    Some(original) if batch != original => batch / n,
                    _ => {
                        self.parallel = Some(batch);
                        batch
                    }
                };
                let state = if batch == original {
                    state.map(|t| tile(t, n))
                } else {
                    state
                };
                let state = self.pre_block(setup.first(), state, ln);
                let parts = children
                    .iter()
                    .enumerate()
                    .map(|(i, child)| {
                        let part = state
                            .clone()
                            .map(|t| slice_rows(t, i * original..(i + 1) * original));
                        self.child(child, part, ln)
                    })
                    .collect();
                State::concat(parts, 0)
            }
            Setup::Average(children, weights) => {
                let state = self.pre_block(setup.first(), state, ln);
                let parts: Vec<State<B>> = children
                    .iter()
                    .map(|child| self.child(child, state.clone(), ln))
                    .collect();
                let mut hidden = parts
                    .iter()
                    .zip(weights)
                    .map(|(p, &w)| p.hidden.clone() * w)
                    .reduce(|a, b| a + b)
                    .expect("non-empty");
                if self.semantics == Semantics::AdapterHub {
                    // AdapterHub takes the mean of the weighted outputs: an extra 1/N.
                    hidden = hidden / parts.len() as f64;
                }
                let first = parts[0].clone();
                State {
                    hidden,
                    last: parts.last().and_then(|p| p.last.clone()),
                    ..first
                }
            }
        }
    }

    /// A child of a block: a nested block, or an adapter applied without its own pre-forward.
    fn child(&mut self, child: &Setup, state: State<B>, ln: &LayerNorm<B>) -> State<B> {
        match child {
            Setup::Adapter(name) => self.single(name, state),
            block => self.compose(block, state, ln),
        }
    }

    /// AdapterHub's `pre_block`: the first adapter's pre-forward sets what the block reads.
    fn pre_block(&self, first: &str, state: State<B>, ln: &LayerNorm<B>) -> State<B> {
        match self.bottleneck(first) {
            Some(b) => {
                let (hidden, residual) = b.pre_forward(state.hidden, state.input.clone(), ln);
                State {
                    hidden,
                    residual,
                    ..state
                }
            }
            None => state,
        }
    }

    fn single(&self, name: &str, state: State<B>) -> State<B> {
        match self.bottleneck(name) {
            Some(b) => {
                let (hidden, up) = b.forward_with_up(state.hidden.clone(), state.residual.clone());
                State {
                    hidden,
                    up: Some(up),
                    last: Some(name.to_string()),
                    ..state
                }
            }
            None => state,
        }
    }

    fn fuse(
        &mut self,
        children: &[Setup],
        last: &str,
        state: State<B>,
        ln: &LayerNorm<B>,
    ) -> State<B> {
        let id = FusionId::of(children);
        let (Some(lb), Some((config, fusion))) = (self.bottleneck(last), self.registry.fusion(&id))
        else {
            return state;
        };
        let Some(layer) = fusion.at(self.layer, self.site) else {
            return state;
        };
        let (hidden, residual) = lb.pre_forward(state.hidden.clone(), state.input.clone(), ln);
        let query = lb.fusion_query(
            state.hidden.clone(),
            hidden.clone(),
            state.input.clone(),
            config.query_before_ln,
        );
        let state = State {
            hidden,
            residual,
            ..state
        };
        let ups: Vec<Tensor<B, 3>> = children
            .iter()
            .filter_map(|child| self.child(child, state.clone(), ln).up)
            .collect();
        if ups.is_empty() {
            return state;
        }
        let ups = Tensor::stack(ups, 2);
        let out = layer.forward(
            query,
            ups,
            state.residual.clone(),
            fusion.temperature(),
            fusion.semantics(self.semantics),
        );
        if let Some(attentions) = &mut self.attentions {
            attentions.push((self.layer, self.site, out.attention));
        }
        State {
            hidden: out.hidden,
            last: Some(last.to_string()),
            ..state
        }
    }
}

/// `n` copies of `t` one after another along the batch: `[t; t; …]`. (Burn 0.21's autodiff
/// sums the gradient of `repeat_dim(0, n)` over the wrong rows when the batch has more than one
/// row; concatenation differentiates correctly.)
pub(crate) fn tile<B: FusedOps, const D: usize, K>(t: Tensor<B, D, K>, n: usize) -> Tensor<B, D, K>
where
    K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>,
{
    Tensor::cat(vec![t; n], 0)
}

fn slice_rows<B: FusedOps>(t: Tensor<B, 3>, rows: std::ops::Range<usize>) -> Tensor<B, 3> {
    let [_, s, h] = t.dims();
    t.slice([rows, 0..s, 0..h])
}

fn slice_positions<B: FusedOps>(t: Tensor<B, 3>, cols: std::ops::Range<usize>) -> Tensor<B, 3> {
    let [b, _, h] = t.dims();
    t.slice([0..b, cols, 0..h])
}

impl<B: FusedOps, R: Registry<B>> Hooks<B> for Composition<'_, B, R> {
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        self.others()
            .fold((hidden, keep), |(h, k), mut a| a.embedded(h, k))
    }

    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let y = kernels::linear(linear, x.clone());
        self.others().fold(y, |y, a| {
            a.update_projection(layer, site, linear, x.clone(), y)
        })
    }

    fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
        self.others()
            .fold(kv, |kv, mut a| a.attention_kv(layer, kv))
    }

    fn layer_end(
        &mut self,
        layer: usize,
        hidden: Tensor<B, 3>,
        keep: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        self.others()
            .fold(hidden, |h, mut a| a.layer_end(layer, h, keep))
    }

    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        (self.layer, self.site) = (layer, site);
        let present = self
            .setup
            .flatten()
            .into_iter()
            .any(|n| self.bottleneck(n).is_some());
        if !present {
            return layer_norm.forward_add(output, residual);
        }
        let state = State {
            hidden: output.clone(),
            input: residual.clone(),
            residual,
            up: None,
            last: None,
        };
        let setup = self.setup;
        let state = self.compose(setup, state, layer_norm);
        let last = state.last.as_deref().and_then(|n| self.bottleneck(n));
        match last {
            Some(b) => {
                // A Parallel block may have replicated the batch: the sub-layer output follows.
                let copies = state.hidden.dims()[0] / output.dims()[0];
                let output = if copies > 1 {
                    tile(output, copies)
                } else {
                    output
                };
                b.post_forward(state.hidden, output, state.input, layer_norm)
            }
            None => layer_norm.forward_add(state.hidden, state.input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    /// The gradient of a tiled tensor sums each row's copies (the closed form).
    #[test]
    fn tile_differentiates_per_row() {
        type A = Autodiff<NdArray>;
        let d = Default::default();
        let x = Tensor::<A, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &d).require_grad();
        let w = Tensor::<A, 2>::from_floats(
            [[1.0, 10.0], [100.0, 1000.0], [2.0, 20.0], [200.0, 2000.0]],
            &d,
        );
        let y = tile(x.clone(), 2);
        assert_eq!(
            y.clone().into_data().to_vec::<f32>().unwrap(),
            [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]
        );
        let grads = (y * w).sum().backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g, [3.0, 30.0, 300.0, 3000.0]);
    }
}
