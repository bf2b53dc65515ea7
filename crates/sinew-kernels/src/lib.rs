//! sinew-kernels: the frozen transformer's hot ops as a Burn backend extension.
//!
//! [`FusedOps`] is a trait over Burn's `Backend` with one method per fused op — linear (GEMM and
//! bias in one pass), exact (erf) GELU, dropout, the attention core (`softmax(scale·QKᵀ + mask)`,
//! dropout, `·V`), residual add + LayerNorm and AdapterFusion's per-token products — and one per
//! backward. Every method has a default
//! that composes Burn primitives, so any backend works with an empty `impl FusedOps for MyBackend
//! {}` (wgpu does). flex and ndarray override them with sinew's multi-threaded, vectorised kernels
//! on their f32 buffers ([`cpu`]), and `Autodiff<B>` implements each op as one autodiff node with a
//! hand-written backward that keeps only what that backward needs.
//!
//! The functions at the crate root ([`linear`], [`gelu`], [`dropout`], [`attention`], and
//! [`LayerNorm::forward_add`]) are what models call: `Tensor` in, `Tensor` out, on any `B: FusedOps`.
//! [`stats`] counts calls of the fast paths, so a test can tell that they were taken.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, TensorPrimitive};

mod autodiff;
pub mod composed;
pub mod cpu;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
pub mod stats;

pub use cpu::elementwise::DropoutKey;
pub use cpu::pool;

/// One dropout draw: the probability of zeroing an element and the key the fused kernels hash
/// element indices with (the composed path draws its own mask from the backend's generator).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutDraw {
    /// Probability of zeroing an element, in `[0, 1]`.
    pub prob: f64,
    /// 64 random bits from the backend's seeded generator.
    pub key: u64,
}

impl DropoutDraw {
    /// The kernels' view of this draw.
    pub(crate) fn kernel_key(&self) -> DropoutKey {
        DropoutKey::new(self.prob, self.key)
    }
}

/// The attention core's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    /// Multiplies `QKᵀ` (usually `1/√head_dim`).
    pub scale: f64,
    /// Dropout on the probabilities (training only).
    pub dropout: Option<DropoutDraw>,
}

/// What the attention forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct AttentionSaved<B: Backend> {
    /// The probabilities before dropout, `[batch, heads, queries, keys]`.
    pub probs: FloatTensor<B>,
    /// The scaled dropout mask when the backend drew one as a tensor (the composed path); the
    /// fused kernels recompute theirs from the key.
    pub mask: Option<FloatTensor<B>>,
}

/// What the LayerNorm forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct NormSaved<B: Backend> {
    /// The normalised input `x̂`, shaped as the input.
    pub xhat: FloatTensor<B>,
    /// `1/σ` per row (shape up to the backend: the composed path keeps `[…, 1]`).
    pub rstd: FloatTensor<B>,
}

/// Gradients of a backward that has up to three inputs (`None`: not asked for).
pub type Grads3<B> = [Option<FloatTensor<B>>; 3];

/// A Burn backend extension: the transformer's hot ops, fused. Every method's default composes
/// Burn primitives ([`composed`]); a backend overrides what it can do faster.
pub trait FusedOps: Backend {
    /// `x·weight + bias` over the last dimension, one 2-D product for all leading dimensions
    /// (`x` `[…, in]`, `weight` `[in, out]`, `bias` `[out]` → `[…, out]`).
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::linear::<Self>(x, weight, bias)
    }

    /// Gradients of [`fused_linear`](Self::fused_linear) for `[x, weight, bias]` as `wanted`
    /// says; `x` is given when the weight's gradient is wanted, `weight` when `x`'s is.
    fn fused_linear_backward(
        x: Option<FloatTensor<Self>>,
        weight: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        wanted: [bool; 3],
    ) -> Grads3<Self> {
        composed::linear_backward::<Self>(x, weight, grad, wanted)
    }

    /// Exact GELU, `x·Φ(x)`.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu::<Self>(x)
    }

    /// `grad·(Φ(x) + x·φ(x))`.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_backward::<Self>(x, grad)
    }

    /// `x·mask/(1−p)`; returns the scaled mask too when the backend drew it as a tensor.
    fn fused_dropout(
        x: FloatTensor<Self>,
        draw: DropoutDraw,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        composed::dropout::<Self>(x, draw)
    }

    /// The gradient of [`fused_dropout`](Self::fused_dropout): the same mask on `grad`.
    fn fused_dropout_backward(
        grad: FloatTensor<Self>,
        draw: DropoutDraw,
        mask: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::dropout_backward::<Self>(grad, draw, mask)
    }

    /// `softmax(scale·QKᵀ + mask)·V`, dropout on the probabilities, heads merged: `q`
    /// `[batch, heads, queries, d]`, `k` `[batch, heads, keys, d]`, `v` `[batch, heads, keys, dv]`,
    /// `keep` `[batch, keys]` (1 where a key may be attended to, 0 for padding) →
    /// `[batch, queries, heads·dv]`. With `save`, also what the backward needs.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        options: AttentionOptions,
        save: bool,
    ) -> (FloatTensor<Self>, Option<AttentionSaved<Self>>) {
        composed::attention::<Self>(q, k, v, keep, options, save)
    }

    /// Gradients of [`fused_attention`](Self::fused_attention) for `[q, k, v]` as `wanted` says;
    /// `grad` is `[batch, queries, heads·dv]`. Only what the wanted gradients read is given: `k`
    /// for dQ, `q` for dK, `v` for either. The gradients may be strided views (the fused kernels
    /// write them with the heads merged, as the projections that made `q`, `k`, `v` laid them out).
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        q: Option<FloatTensor<Self>>,
        k: Option<FloatTensor<Self>>,
        v: Option<FloatTensor<Self>>,
        keep: FloatTensor<Self>,
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
        options: AttentionOptions,
        wanted: [bool; 3],
    ) -> Grads3<Self> {
        composed::attention_backward::<Self>(q, k, v, keep, saved, grad, options, wanted)
    }

    /// `LayerNorm(x + residual)` over the last dimension (`gamma`, `beta` `[width]`). With `save`,
    /// also what the backward needs.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        residual: Option<FloatTensor<Self>>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
        save: bool,
    ) -> (FloatTensor<Self>, Option<NormSaved<Self>>) {
        composed::layer_norm::<Self>(x, residual, gamma, beta, epsilon, save)
    }

    /// Gradients of [`fused_layer_norm`](Self::fused_layer_norm) for `[x (= residual), gamma,
    /// beta]` as `wanted` says.
    fn fused_layer_norm_backward(
        saved: NormSaved<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        wanted: [bool; 3],
    ) -> Grads3<Self> {
        composed::layer_norm_backward::<Self>(saved, gamma, grad, wanted)
    }

    /// `rows[t, i, :] · probe[t, :]` for every token `t` and row `i`: `rows` `[tokens, n, h]`,
    /// `probe` `[tokens, h]` → `[tokens, n]` (AdapterFusion's score of each adapter's output).
    /// Its gradients are `fused_outer(grad, probe)` and `fused_mix(grad, rows)`.
    fn fused_dots(rows: FloatTensor<Self>, probe: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::dots::<Self>(rows, probe)
    }

    /// `Σ_i weights[t, i] · rows[t, i, :]`: `weights` `[tokens, n]`, `rows` `[tokens, n, h]` →
    /// `[tokens, h]` (AdapterFusion's mixture). Its gradients are `fused_dots(rows, grad)` and
    /// `fused_outer(weights, grad)`.
    fn fused_mix(weights: FloatTensor<Self>, rows: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::mix::<Self>(weights, rows)
    }

    /// `a[t, i] · b[t, :]`: `a` `[tokens, n]`, `b` `[tokens, h]` → `[tokens, n, h]`.
    fn fused_outer(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::outer::<Self>(a, b)
    }
}

/// An autodiff backend whose inner backend has the fused ops too: what training needs (the
/// training step runs on `Self`, evaluation on `Self::InnerBackend`).
pub trait FusedAutodiff: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

impl<B: AutodiffBackend<InnerBackend: FusedOps> + FusedOps> FusedAutodiff for B {}

/// Backends without fused kernels: the composed defaults. One line per backend.
#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Wgpu {}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `linear.forward(x)` as one fused GEMM + bias over all leading dimensions.
pub fn linear<B: FusedOps, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    project(
        x,
        linear.weight.val(),
        linear.bias.as_ref().map(|b| b.val()),
    )
}

/// `x·weight + bias` over the last dimension of `x` (`weight` `[in, out]` in any layout, e.g. a
/// transposed view): [`linear`] on tensors instead of a module.
pub fn project<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    tensor(B::fused_linear(
        primitive(x),
        primitive(weight),
        bias.map(primitive),
    ))
}

/// `rows` `[batch, seq, n, h]` · `probe` `[batch, seq, h]` → `[batch, seq, n]`: each token's
/// dot product with each of its `n` rows.
pub fn dots<B: FusedOps>(rows: Tensor<B, 4>, probe: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, n, h] = rows.dims();
    let out = B::fused_dots(
        primitive(rows.reshape([b * s, n, h])),
        primitive(probe.reshape([b * s, h])),
    );
    tensor::<B, 2>(out).reshape([b, s, n])
}

/// `weights` `[batch, seq, n]`, `rows` `[batch, seq, n, h]` → `[batch, seq, h]`: each token's
/// rows summed with its weights.
pub fn mix<B: FusedOps>(weights: Tensor<B, 3>, rows: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, s, n, h] = rows.dims();
    let out = B::fused_mix(
        primitive(weights.reshape([b * s, n])),
        primitive(rows.reshape([b * s, n, h])),
    );
    tensor::<B, 2>(out).reshape([b, s, h])
}

/// Exact (erf) GELU with an exact derivative.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::fused_gelu(primitive(x)))
}

/// A dropout draw for training (`None` when nothing is dropped: inference, or `prob` 0). The key
/// comes from the backend's seeded generator, so a run's masks are a function of its seed.
pub fn draw<B: Backend>(prob: f64, device: &B::Device) -> Option<DropoutDraw> {
    if prob <= 0.0 || !B::ad_enabled(device) {
        return None;
    }
    let bits: Vec<f32> = Tensor::<B, 1>::random([4], Distribution::Default, device)
        .into_data()
        .iter::<f32>()
        .collect();
    // The 23 mantissa bits of each uniform draw are its random part.
    let key = bits.iter().fold(0u64, |k, b| {
        k.rotate_left(23) ^ (b.to_bits() & 0x7f_ffff) as u64
    });
    Some(DropoutDraw { prob, key })
}

/// Dropout while training (identity otherwise), as Burn's `Dropout`, with the mask from
/// [`draw`].
pub fn dropout<B: FusedOps, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    match draw::<B>(prob, &x.device()) {
        Some(d) => tensor(B::fused_dropout(primitive(x), d).0),
        None => x,
    }
}

/// Scaled dot-product attention with a key mask and dropout on the probabilities:
/// `q` `[batch, heads, queries, d]`, `k` `[batch, heads, keys, d]`, `v` `[batch, heads, keys,
/// dv]`, `keep` `[batch, keys]` (1.0 for keys that may be attended to) → `[batch, queries,
/// heads·dv]`, scaled by `1/√d`. A masked key gets probability 0; `keep` gets no gradient.
pub fn attention<B: FusedOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: Tensor<B, 2>,
    dropout: f64,
) -> Tensor<B, 3> {
    let d = q.dims()[3];
    let options = AttentionOptions {
        scale: 1.0 / (d as f64).sqrt(),
        dropout: draw::<B>(dropout, &q.device()),
    };
    let (out, _) = B::fused_attention(
        primitive(q),
        primitive(k),
        primitive(v),
        primitive(keep),
        options,
        false,
    );
    tensor(out)
}

/// LayerNorm whose forward runs the fused op; fields and record as `burn::nn::LayerNorm`'s, with
/// the epsilon readable.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// The scale, `[width]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// The shift, `[width]`.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Width of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the variance.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// γ = 1, β = 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: Some(Param::from_tensor(Tensor::zeros([self.d_model], device))),
            epsilon: self.epsilon,
        }
    }
}

impl<B: FusedOps> LayerNorm<B> {
    /// `[…, width]` → `[…, width]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.run(x, None)
    }

    /// `LayerNorm(x + residual)` in one pass (the end of a post-LN sub-layer); same shapes.
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.run(x, Some(residual))
    }

    fn run<const D: usize>(&self, x: Tensor<B, D>, residual: Option<Tensor<B, D>>) -> Tensor<B, D> {
        let (y, _) = B::fused_layer_norm(
            primitive(x),
            residual.map(primitive),
            primitive(self.gamma.val()),
            self.beta.as_ref().map(|b| primitive(b.val())),
            self.epsilon,
            false,
        );
        tensor(y)
    }
}
