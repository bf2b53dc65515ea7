//! The fused ops composed from Burn primitives: [`FusedOps`](crate::FusedOps)'s defaults (what
//! wgpu and any backend without kernels of its own runs), the fallback of the CPU kernels for
//! dtypes other than f32, and the plain path the kernels are tested against.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, FloatDType, Scalar, TensorMetadata};

use crate::{AttentionOptions, AttentionSaved, DropoutDraw, Grads3, NormSaved};

fn s(v: f64) -> Scalar {
    Scalar::Float(v)
}

fn dims<B: Backend>(t: &FloatTensor<B>) -> Vec<usize> {
    t.shape().to_vec()
}

fn float_dtype<B: Backend>(t: &FloatTensor<B>) -> FloatDType {
    t.dtype().into()
}

/// `[…, n]` → `[rows, n]`.
fn flat<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let d = dims::<B>(&t);
    let n = *d.last().expect("rank ≥ 1");
    let rows = d.iter().product::<usize>() / n.max(1);
    B::float_reshape(t, Shape::new([rows, n]))
}

/// `leading` with its last dimension replaced by `last`.
fn with_last(mut leading: Vec<usize>, last: usize) -> Shape {
    *leading.last_mut().expect("rank ≥ 1") = last;
    Shape::from(leading)
}

/// See [`FusedOps::fused_linear`](crate::FusedOps::fused_linear).
pub fn linear<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let shape = dims::<B>(&x);
    let out = weight.shape()[1];
    let mut y = B::float_matmul(flat::<B>(x), weight);
    if let Some(b) = bias {
        y = B::float_add(y, B::float_reshape(b, Shape::new([1, out])));
    }
    B::float_reshape(y, with_last(shape, out))
}

/// See [`FusedOps::fused_linear_backward`](crate::FusedOps::fused_linear_backward).
pub(crate) fn linear_backward<B: Backend>(
    x: Option<FloatTensor<B>>,
    weight: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    wanted: [bool; 3],
) -> Grads3<B> {
    let shape = dims::<B>(&grad);
    let g = flat::<B>(grad);
    let dx = wanted[0].then(|| {
        let w = weight.expect("the weight, for x's gradient");
        let d_in = w.shape()[0];
        let dx = B::float_matmul(g.clone(), B::float_swap_dims(w, 0, 1));
        B::float_reshape(dx, with_last(shape.clone(), d_in))
    });
    let dw = wanted[1].then(|| {
        let x = flat::<B>(x.expect("the input, for the weight's gradient"));
        B::float_matmul(B::float_swap_dims(x, 0, 1), g.clone())
    });
    let db = wanted[2].then(|| {
        let out = *shape.last().expect("rank ≥ 1");
        B::float_reshape(B::float_sum_dim(g, 0), Shape::new([out]))
    });
    [dx, dw, db]
}

/// `Φ(x) = (1 + erf(x/√2))/2`.
fn cdf<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let e = B::float_erf(B::float_mul_scalar(x, s(std::f64::consts::FRAC_1_SQRT_2)));
    B::float_mul_scalar(B::float_add_scalar(e, s(1.0)), s(0.5))
}

/// See [`FusedOps::fused_gelu`](crate::FusedOps::fused_gelu).
pub fn gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), cdf::<B>(x))
}

/// See [`FusedOps::fused_gelu_backward`](crate::FusedOps::fused_gelu_backward).
pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let sq = B::float_mul(x.clone(), x.clone());
    let pdf = B::float_mul_scalar(
        B::float_exp(B::float_mul_scalar(sq, s(-0.5))),
        s(1.0 / (2.0 * std::f64::consts::PI).sqrt()),
    );
    let d = B::float_add(cdf::<B>(x.clone()), B::float_mul(x, pdf));
    B::float_mul(grad, d)
}

/// A scaled Bernoulli mask like `x`: `1/(1−p)` with probability `1−p`, else 0.
fn mask_like<B: Backend>(x: &FloatTensor<B>, prob: f64) -> FloatTensor<B> {
    let keep = B::float_random(
        x.shape(),
        Distribution::Bernoulli(1.0 - prob),
        &B::float_device(x),
        float_dtype::<B>(x),
    );
    let scale = if prob >= 1.0 { 0.0 } else { 1.0 / (1.0 - prob) };
    B::float_mul_scalar(keep, s(scale))
}

/// See [`FusedOps::fused_dropout`](crate::FusedOps::fused_dropout).
pub fn dropout<B: Backend>(
    x: FloatTensor<B>,
    draw: DropoutDraw,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let mask = mask_like::<B>(&x, draw.prob);
    (B::float_mul(x, mask.clone()), Some(mask))
}

/// See [`FusedOps::fused_dropout_backward`](crate::FusedOps::fused_dropout_backward).
pub(crate) fn dropout_backward<B: Backend>(
    grad: FloatTensor<B>,
    _draw: DropoutDraw,
    mask: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    B::float_mul(grad, mask.expect("the composed dropout keeps its mask"))
}

/// `[batch, heads, queries, dv]` → `[batch, queries, heads·dv]`.
fn merge_heads<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let [b, h, q, d] = <[usize; 4]>::try_from(dims::<B>(&t)).expect("rank 4");
    B::float_reshape(B::float_swap_dims(t, 1, 2), Shape::new([b, q, h * d]))
}

/// See [`FusedOps::fused_attention`](crate::FusedOps::fused_attention): the scores get
/// `f32::MIN` at masked keys, as HuggingFace adds.
pub fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    keep: FloatTensor<B>,
    options: AttentionOptions,
    save: bool,
) -> (FloatTensor<B>, Option<AttentionSaved<B>>) {
    let [batch, _, _, _] = <[usize; 4]>::try_from(dims::<B>(&q)).expect("rank 4");
    let keys = k.shape()[2];
    let scores = B::float_mul_scalar(
        B::float_matmul(q, B::float_swap_dims(k, 2, 3)),
        s(options.scale),
    );
    let bias = B::float_mul_scalar(
        B::float_add_scalar(B::float_neg(keep), s(1.0)),
        s(f32::MIN as f64),
    );
    let scores = B::float_add(
        scores,
        B::float_reshape(bias, Shape::new([batch, 1, 1, keys])),
    );
    let max = B::float_max_dim(scores.clone(), 3);
    let e = B::float_exp(B::float_sub(scores, max));
    let probs = B::float_div(e.clone(), B::float_sum_dim(e, 3));
    let mask = options.dropout.map(|d| mask_like::<B>(&probs, d.prob));
    let used = match &mask {
        Some(m) => B::float_mul(probs.clone(), m.clone()),
        None => probs.clone(),
    };
    let out = merge_heads::<B>(B::float_matmul(used, v));
    (out, save.then_some(AttentionSaved { probs, mask }))
}

/// See [`FusedOps::fused_attention_backward`](crate::FusedOps::fused_attention_backward).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    q: Option<FloatTensor<B>>,
    k: Option<FloatTensor<B>>,
    v: Option<FloatTensor<B>>,
    _keep: FloatTensor<B>,
    saved: AttentionSaved<B>,
    grad: FloatTensor<B>,
    options: AttentionOptions,
    wanted: [bool; 3],
) -> Grads3<B> {
    let [b, h, sq, _] = <[usize; 4]>::try_from(dims::<B>(&saved.probs)).expect("rank 4");
    let width = *dims::<B>(&grad).last().expect("rank 3");
    let g = B::float_swap_dims(
        B::float_reshape(grad, Shape::new([b, sq, h, width / h])),
        1,
        2,
    );
    let AttentionSaved { probs, mask } = saved;
    let used = match &mask {
        Some(m) => B::float_mul(probs.clone(), m.clone()),
        None => probs.clone(),
    };
    let dv = wanted[2].then(|| B::float_matmul(B::float_swap_dims(used, 2, 3), g.clone()));
    if !wanted[0] && !wanted[1] {
        return [None, None, dv];
    }
    let v = v.expect("the values, for the scores' gradient");
    let mut dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
    if let Some(m) = mask {
        dp = B::float_mul(dp, m);
    }
    let c = B::float_sum_dim(B::float_mul(dp.clone(), probs.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(probs, B::float_sub(dp, c)), s(options.scale));
    let dq = wanted[0].then(|| B::float_matmul(ds.clone(), k.expect("the keys, for dQ")));
    let dk = wanted[1].then(|| {
        B::float_matmul(
            B::float_swap_dims(ds, 2, 3),
            q.expect("the queries, for dK"),
        )
    });
    [dq, dk, dv]
}

/// `[width]` → `[1, …, 1, width]` of rank `rank`.
fn row<B: Backend>(t: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let width = t.shape()[0];
    let mut d = vec![1; rank];
    d[rank - 1] = width;
    B::float_reshape(t, Shape::from(d))
}

/// See [`FusedOps::fused_layer_norm`](crate::FusedOps::fused_layer_norm).
pub fn layer_norm<B: Backend>(
    x: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    epsilon: f64,
    save: bool,
) -> (FloatTensor<B>, Option<NormSaved<B>>) {
    let rank = dims::<B>(&x).len();
    let last = rank - 1;
    let sum = match residual {
        Some(r) => B::float_add(x, r),
        None => x,
    };
    let centered = B::float_sub(sum.clone(), B::float_mean_dim(sum, last));
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, s(epsilon))));
    let xhat = B::float_mul(centered, rstd.clone());
    let mut y = B::float_mul(xhat.clone(), row::<B>(gamma, rank));
    if let Some(b) = beta {
        y = B::float_add(y, row::<B>(b, rank));
    }
    (y, save.then_some(NormSaved { xhat, rstd }))
}

/// See [`FusedOps::fused_layer_norm_backward`](crate::FusedOps::fused_layer_norm_backward).
pub fn layer_norm_backward<B: Backend>(
    saved: NormSaved<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    wanted: [bool; 3],
) -> Grads3<B> {
    let NormSaved { xhat, rstd } = saved;
    let rank = dims::<B>(&xhat).len();
    let last = rank - 1;
    let width = gamma.shape()[0];
    let over_rows = |t: FloatTensor<B>| {
        B::float_reshape(B::float_sum_dim(flat::<B>(t), 0), Shape::new([width]))
    };
    let dgamma = wanted[1].then(|| over_rows(B::float_mul(grad.clone(), xhat.clone())));
    let dbeta = wanted[2].then(|| over_rows(grad.clone()));
    let dx = wanted[0].then(|| {
        let dxhat = B::float_mul(grad, row::<B>(gamma, rank));
        let c1 = B::float_mean_dim(dxhat.clone(), last);
        let c2 = B::float_mean_dim(B::float_mul(dxhat.clone(), xhat.clone()), last);
        let inner = B::float_sub(B::float_sub(dxhat, c1), B::float_mul(xhat, c2));
        B::float_mul(inner, rstd)
    });
    [dx, dgamma, dbeta]
}

/// `[tokens, n, h]`.
fn dims3<B: Backend>(t: &FloatTensor<B>) -> [usize; 3] {
    dims::<B>(t).try_into().expect("rank 3")
}

/// See [`FusedOps::fused_dots`](crate::FusedOps::fused_dots).
pub fn dots<B: Backend>(rows: FloatTensor<B>, probe: FloatTensor<B>) -> FloatTensor<B> {
    let [tokens, n, h] = dims3::<B>(&rows);
    let probe = B::float_reshape(probe, Shape::new([tokens, 1, h]));
    let products = B::float_mul(rows, probe);
    B::float_reshape(B::float_sum_dim(products, 2), Shape::new([tokens, n]))
}

/// See [`FusedOps::fused_mix`](crate::FusedOps::fused_mix).
pub fn mix<B: Backend>(weights: FloatTensor<B>, rows: FloatTensor<B>) -> FloatTensor<B> {
    let [tokens, n, h] = dims3::<B>(&rows);
    let weights = B::float_reshape(weights, Shape::new([tokens, n, 1]));
    let products = B::float_mul(rows, weights);
    B::float_reshape(B::float_sum_dim(products, 1), Shape::new([tokens, h]))
}

/// See [`FusedOps::fused_outer`](crate::FusedOps::fused_outer).
pub fn outer<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    let ([tokens, n], h) = (
        <[usize; 2]>::try_from(dims::<B>(&a)).expect("rank 2"),
        b.shape()[1],
    );
    B::float_mul(
        B::float_reshape(a, Shape::new([tokens, n, 1])),
        B::float_reshape(b, Shape::new([tokens, 1, h])),
    )
}
