//! The hook contract: where adapters act on the frozen backbone.
//!
//! [`crate::Bert::forward_with`] calls a [`Hooks`] implementation at four kinds of site in every
//! layer. Each method's default is exactly what the plain transformer does, so an implementation
//! overrides only the sites its adapters touch, and [`NoHooks`] — used by [`crate::Bert::forward`] —
//! compiles down to the plain forward pass (the hook calls are monomorphised and inlined).
//!
//! | site | called with | used by |
//! |---|---|---|
//! | [`Hooks::embedded`] | embedding output and keep-mask | prompt tuning |
//! | [`Hooks::project`] | the frozen `Linear` and its input, for Q, K, V, attention output, FFN in, FFN out | LoRA (`x·A·B`), IA3 (rescaling) |
//! | [`Hooks::attention_kv`] | per-head keys, values and the keep-mask | prefix tuning (prepends keys/values) |
//! | [`Hooks::sublayer_end`] | sub-layer output (after dense + dropout), residual input, the pretrained LayerNorm | bottleneck adapters, AdapterFusion, composition |
//!
//! A hook may change the batch size at `sublayer_end` (AdapterHub's `Parallel` replicates the batch);
//! the encoder then repeats the keep-mask to match.

use burn::nn::Linear;
use burn::prelude::*;
use sinew_kernels::{FusedOps, LayerNorm};

/// One of the six linear projections of a transformer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `attention.self.query`.
    Query,
    /// `attention.self.key`.
    Key,
    /// `attention.self.value`.
    Value,
    /// `attention.output.dense`.
    AttentionOutput,
    /// `intermediate.dense` (FFN in).
    Intermediate,
    /// `output.dense` (FFN out).
    Output,
}

/// The two sub-layers of a transformer layer, each ending in residual + LayerNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubLayer {
    /// Multi-head self-attention (`attention.output`; AdapterHub's `mh_adapter` site).
    Attention,
    /// Feed-forward network (`output`; AdapterHub's `output_adapter` site).
    FeedForward,
}

impl SubLayer {
    /// The projections inside this sub-layer.
    pub fn projections(self) -> &'static [Projection] {
        match self {
            Self::Attention => &[
                Projection::Query,
                Projection::Key,
                Projection::Value,
                Projection::AttentionOutput,
            ],
            Self::FeedForward => &[Projection::Intermediate, Projection::Output],
        }
    }
}

/// Per-head keys and values of one attention sub-layer, with the mask over their positions.
#[derive(Debug, Clone)]
pub struct AttentionKv<B: Backend> {
    /// Keys, `[batch, heads, keys, head_dim]`.
    pub key: Tensor<B, 4>,
    /// Values, `[batch, heads, keys, head_dim]`.
    pub value: Tensor<B, 4>,
    /// 1.0 where a key may be attended to, 0.0 for padding, `[batch, keys]`.
    pub keep: Tensor<B, 2>,
    /// The attention sub-layer's input, `[batch, seq, hidden]` (prefix gates read it); changes
    /// to it are ignored.
    pub input: Tensor<B, 3>,
}

/// Extension points of the encoder; every default reproduces the plain transformer.
pub trait Hooks<B: FusedOps> {
    /// After the embedding LayerNorm: `hidden` is `[batch, seq, hidden]`, `keep` is `[batch, seq]`.
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        (hidden, keep)
    }

    /// One linear projection of layer `layer`: `x` is `[batch, seq, in]`, the result `[batch, seq, out]`.
    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let _ = (layer, site);
        sinew_kernels::linear(linear, x)
    }

    /// Keys, values and mask of layer `layer` just before the attention scores are computed.
    fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
        let _ = layer;
        kv
    }

    /// The output of layer `layer` (its FFN sub-layer's end), `[batch, seq', hidden]`, where
    /// `seq'` is `keep`'s `seq` or, when the caller reads only the first position, 1; `keep` is
    /// the `[batch, seq]` mask of real positions. Interventions on chosen positions act here.
    fn layer_end(
        &mut self,
        layer: usize,
        hidden: Tensor<B, 3>,
        keep: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let _ = (layer, keep);
        hidden
    }

    /// The end of a sub-layer: `output` (dense + dropout) and `residual` are `[batch, seq, hidden]`;
    /// the default is the post-LayerNorm residual `layer_norm(output + residual)`, one fused op.
    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        let _ = (layer, site);
        layer_norm.forward_add(output, residual)
    }
}

/// The plain transformer: no adapter anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<B: FusedOps> Hooks<B> for NoHooks {}
