//! sinew's CPU kernels and the [`FusedOps`](crate::FusedOps) implementation the CPU backends
//! share. A backend only says how to see its f32 tensors as host memory ([`Host`]); everything
//! else — views, output buffers from the [`pool`], in-place work on uniquely owned inputs, the
//! fallback to [`composed`](crate::composed) for other dtypes — is here, once.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod math;
pub(crate) mod mixing;
pub(crate) mod norm;
pub mod pool;
pub(crate) mod simd;

use std::marker::PhantomData;

use burn::prelude::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};

use crate::stats::{self, Kernel};
use crate::{composed, AttentionOptions, AttentionSaved, DropoutDraw, Grads3, NormSaved};
use attention::{Heads, HeadsMut};
use gemm::{Mat, MatMut};

/// A strided f32 view of a host tensor: element `i` is at `ptr + Σ i_d·strides[d]`.
pub(crate) struct HostView<'a> {
    pub ptr: *const f32,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub _tensor: PhantomData<&'a f32>,
}

impl<'a> HostView<'a> {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as a slice, when the view is row-major contiguous.
    fn contiguous(&self) -> Option<&'a [f32]> {
        let mut expected = 1isize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d > 1 && s != expected {
                return None;
            }
            expected *= d as isize;
        }
        // SAFETY: a contiguous view of `len` elements from `ptr`, alive for 'a.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len()) })
    }

    /// A rank-2 view as a strided matrix.
    fn mat(&self) -> Mat {
        debug_assert_eq!(self.shape.len(), 2);
        Mat {
            ptr: self.ptr,
            rs: self.strides[0],
            cs: self.strides[1],
        }
    }

    /// A rank-4 view.
    fn heads(&self) -> Heads {
        Heads {
            ptr: self.ptr,
            shape: self.shape.clone().try_into().expect("rank 4"),
            strides: self.strides.clone().try_into().expect("rank 4"),
        }
    }
}

/// A backend whose f32 tensors live in host memory the kernels can read and write.
pub(crate) trait Host: Backend {
    /// A view of `t`, if it is f32 with non-negative strides.
    fn view(t: &FloatTensor<Self>) -> Option<HostView<'_>>;
    /// `t` row-major and contiguous (a copy only when it is not).
    fn make_contiguous(t: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The elements of `t`, writable, if it is f32, contiguous and owned by nobody else.
    fn unique(t: &mut FloatTensor<Self>) -> Option<&mut [f32]>;
    /// A tensor over `buf` with `shape` and element `strides` (row-major when `None`).
    fn tensor(buf: Vec<f32>, shape: &[usize], strides: Option<&[isize]>) -> FloatTensor<Self>;
}

/// `t`, viewable as f32 host memory (made contiguous if its strides are not usable), or `Err(t)`
/// if it is not f32 at all.
fn host<B: Host>(t: FloatTensor<B>) -> Result<FloatTensor<B>, FloatTensor<B>> {
    if t.dtype() != DType::F32 {
        return Err(t);
    }
    if B::view(&t).is_some() {
        Ok(t)
    } else {
        Ok(B::make_contiguous(t))
    }
}

/// `t`, f32 and row-major contiguous.
fn dense<B: Host>(t: FloatTensor<B>) -> FloatTensor<B> {
    let contiguous = B::view(&t).is_some_and(|v| v.contiguous().is_some());
    if contiguous {
        t
    } else {
        B::make_contiguous(t)
    }
}

fn slice<B: Host>(t: &FloatTensor<B>) -> &[f32] {
    B::view(t)
        .and_then(|v| v.contiguous())
        .expect("a dense f32 tensor")
}

/// A fresh output of `len` elements.
fn output(len: usize) -> Vec<f32> {
    pool::take(len)
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    *s.last_mut().expect("rank ≥ 1") = last;
    s
}

/// Products at least this large (m·n·k) run multi-threaded (below, a task costs more than it saves).
const PARALLEL_GEMM: usize = 1 << 20;

pub(crate) fn linear<B: Host>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let (x, weight) = match (host::<B>(x), host::<B>(weight)) {
        (Ok(x), Ok(w)) => (dense::<B>(x), w),
        (x, w) => {
            let (x, w) = (x.unwrap_or_else(|t| t), w.unwrap_or_else(|t| t));
            return composed::linear::<B>(x, w, bias);
        }
    };
    let bias = bias.map(dense::<B>);
    let xv = slice::<B>(&x);
    let wv = B::view(&weight).expect("viewable");
    let (d_in, d_out) = (wv.shape[0], wv.shape[1]);
    let rows = xv.len() / d_in.max(1);
    let mut out = output(rows * d_out);
    if let Some(b) = &bias {
        elementwise::fill_rows(&mut out, slice::<B>(b));
    }
    // SAFETY: x is [rows, d_in] row-major, the weight view [d_in, d_out], out [rows, d_out].
    unsafe {
        gemm::matmul(
            rows,
            d_out,
            d_in,
            MatMut::rows(&mut out, d_out),
            Mat::rows(xv, d_in),
            wv.mat(),
            1.0,
            bias.is_some(),
            rows * d_out * d_in >= PARALLEL_GEMM,
        )
    };
    stats::count(Kernel::Linear);
    let shape = with_last(&x.shape().to_vec(), d_out);
    B::tensor(out, &shape, None)
}

pub(crate) fn linear_backward<B: Host>(
    x: Option<FloatTensor<B>>,
    weight: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    wanted: [bool; 3],
) -> Grads3<B> {
    let grad = match host::<B>(grad) {
        Ok(g) => dense::<B>(g),
        Err(g) => return composed::linear_backward::<B>(x, weight, g, wanted),
    };
    let shape = grad.shape().to_vec();
    let d_out = *shape.last().expect("rank ≥ 1");
    let g = slice::<B>(&grad);
    let rows = g.len() / d_out.max(1);
    let dx = wanted[0].then(|| {
        let w = host::<B>(weight.expect("the weight, for x's gradient")).expect("f32");
        let wv = B::view(&w).expect("viewable");
        let d_in = wv.shape[0];
        let mut dx = output(rows * d_in);
        // SAFETY: grad [rows, d_out] · weightᵀ [d_out, d_in] → dx [rows, d_in].
        unsafe {
            gemm::matmul(
                rows,
                d_in,
                d_out,
                MatMut::rows(&mut dx, d_in),
                Mat::rows(g, d_out),
                wv.mat().t(),
                1.0,
                false,
                rows * d_out * d_in >= PARALLEL_GEMM,
            )
        };
        B::tensor(dx, &with_last(&shape, d_in), None)
    });
    let dw = wanted[1].then(|| {
        let x =
            dense::<B>(host::<B>(x.expect("the input, for the weight's gradient")).expect("f32"));
        let xv = slice::<B>(&x);
        let d_in = xv.len() / rows.max(1);
        let mut dw = output(d_in * d_out);
        // SAFETY: xᵀ [d_in, rows] · grad [rows, d_out] → dw [d_in, d_out].
        unsafe {
            gemm::matmul(
                d_in,
                d_out,
                rows,
                MatMut::rows(&mut dw, d_out),
                Mat::rows(xv, d_in).t(),
                Mat::rows(g, d_out),
                1.0,
                false,
                rows * d_out * d_in >= PARALLEL_GEMM,
            )
        };
        B::tensor(dw, &[d_in, d_out], None)
    });
    let db = wanted[2].then(|| B::tensor(elementwise::column_sums(g, d_out), &[d_out], None));
    stats::count(Kernel::LinearBackward);
    [dx, dw, db]
}

pub(crate) fn gelu<B: Host>(x: FloatTensor<B>) -> FloatTensor<B> {
    let mut x = match host::<B>(x) {
        Ok(x) => x,
        Err(x) => return composed::gelu::<B>(x),
    };
    stats::count(Kernel::Gelu);
    if let Some(data) = B::unique(&mut x) {
        elementwise::gelu_in_place(data);
        return x;
    }
    let x = dense::<B>(x);
    let src = slice::<B>(&x);
    let mut out = output(src.len());
    elementwise::gelu(src, &mut out);
    B::tensor(out, &x.shape().to_vec(), None)
}

/// `t` as a uniquely owned dense f32 tensor (a pooled copy when it is shared).
fn owned<B: Host>(t: FloatTensor<B>) -> FloatTensor<B> {
    let mut t = dense::<B>(t);
    if B::unique(&mut t).is_some() {
        return t;
    }
    let src = slice::<B>(&t);
    let mut copy = output(src.len());
    copy.copy_from_slice(src);
    B::tensor(copy, &t.shape().to_vec(), None)
}

pub(crate) fn gelu_backward<B: Host>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let (x, grad) = match (host::<B>(x), host::<B>(grad)) {
        (Ok(x), Ok(g)) => (dense::<B>(x), owned::<B>(g)),
        (x, g) => {
            let (x, g) = (x.unwrap_or_else(|t| t), g.unwrap_or_else(|t| t));
            return composed::gelu_backward::<B>(x, g);
        }
    };
    let mut grad = grad;
    let g = B::unique(&mut grad).expect("owned");
    elementwise::gelu_backward_in_place(slice::<B>(&x), g);
    stats::count(Kernel::GeluBackward);
    grad
}

pub(crate) fn dropout<B: Host>(
    x: FloatTensor<B>,
    draw: DropoutDraw,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let mut x = match host::<B>(x) {
        Ok(x) => owned::<B>(x),
        Err(x) => return composed::dropout::<B>(x, draw),
    };
    let data = B::unique(&mut x).expect("owned");
    elementwise::dropout_in_place(draw.kernel_key(), 0, data);
    stats::count(Kernel::Dropout);
    (x, None)
}

pub(crate) fn dropout_backward<B: Host>(
    grad: FloatTensor<B>,
    draw: DropoutDraw,
    mask: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match mask {
        Some(m) => composed::dropout_backward::<B>(grad, draw, Some(m)),
        None => dropout::<B>(grad, draw).0,
    }
}

/// The layout the fused attention gives `[batch, heads, seq, dim]` results: heads merged
/// (`[batch, seq, heads, dim]` in memory), as the Q/K/V projections lay their outputs out.
fn merged_heads(shape: [usize; 4]) -> [isize; 4] {
    let [_, h, s, d] = shape;
    [(s * h * d) as isize, d as isize, (h * d) as isize, 1]
}

pub(crate) fn attention<B: Host>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    keep: FloatTensor<B>,
    options: AttentionOptions,
    save: bool,
) -> (FloatTensor<B>, Option<AttentionSaved<B>>) {
    let all = (host::<B>(q), host::<B>(k), host::<B>(v), host::<B>(keep));
    let (Ok(q), Ok(k), Ok(v), Ok(keep)) = all else {
        let un = |t: Result<FloatTensor<B>, FloatTensor<B>>| t.unwrap_or_else(|t| t);
        return composed::attention::<B>(un(all.0), un(all.1), un(all.2), un(all.3), options, save);
    };
    let keep = dense::<B>(keep);
    let (qv, kv, vv) = (
        B::view(&q).expect("f32"),
        B::view(&k).expect("f32"),
        B::view(&v).expect("f32"),
    );
    let a = attention::Attention {
        q: qv.heads(),
        k: kv.heads(),
        v: vv.heads(),
        keep: slice::<B>(&keep),
        scale: options.scale as f32,
        dropout: options.dropout.map(|d| d.kernel_key()),
    };
    let [b, h, sq, _] = a.q.shape;
    let (sk, dv) = (a.k.shape[2], a.v.shape[3]);
    let mut out = output(b * sq * h * dv);
    let mut probs = save.then(|| output(b * h * sq * sk));
    attention::forward(&a, &mut out, probs.as_deref_mut());
    stats::count(Kernel::Attention);
    let saved = probs.map(|p| AttentionSaved {
        probs: B::tensor(p, &[b, h, sq, sk], None),
        mask: None,
    });
    (B::tensor(out, &[b, sq, h * dv], None), saved)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<B: Host>(
    q: Option<FloatTensor<B>>,
    k: Option<FloatTensor<B>>,
    v: Option<FloatTensor<B>>,
    keep: FloatTensor<B>,
    saved: AttentionSaved<B>,
    grad: FloatTensor<B>,
    options: AttentionOptions,
    wanted: [bool; 3],
) -> Grads3<B> {
    let fused = saved.mask.is_none()
        && [&q, &k, &v]
            .iter()
            .all(|t| t.as_ref().is_none_or(|t| t.dtype() == DType::F32))
        && grad.dtype() == DType::F32;
    if !fused {
        return composed::attention_backward::<B>(q, k, v, keep, saved, grad, options, wanted);
    }
    let viewable = |t: Option<FloatTensor<B>>| t.map(|t| host::<B>(t).expect("f32"));
    let (q, k, v) = (viewable(q), viewable(k), viewable(v));
    let grad = host::<B>(grad).expect("f32");
    let probs = dense::<B>(saved.probs);
    let p = slice::<B>(&probs);
    let [b, h, sq, sk] = <[usize; 4]>::try_from(probs.shape().to_vec()).expect("rank 4");
    let gv = B::view(&grad).expect("f32");
    let dv = gv.shape[2] / h;
    let grad_heads = Heads {
        ptr: gv.ptr,
        shape: [b, h, sq, dv],
        strides: [
            gv.strides[0],
            dv as isize * gv.strides[2],
            gv.strides[1],
            gv.strides[2],
        ],
    };
    // Absent inputs are never read (each wanted gradient has what it reads); their views only
    // carry the shapes, taken from the inputs that are there.
    let d = q.as_ref().or(k.as_ref()).map_or(dv, |t| t.shape()[3]);
    let absent = |shape: [usize; 4]| Heads {
        ptr: std::ptr::null(),
        shape,
        strides: [0; 4],
    };
    let view = |t: &Option<FloatTensor<B>>, shape: [usize; 4]| {
        t.as_ref()
            .map_or(absent(shape), |t| B::view(t).expect("f32").heads())
    };
    let keep = dense::<B>(keep);
    let a = attention::Attention {
        q: view(&q, [b, h, sq, d]),
        k: view(&k, [b, h, sk, d]),
        v: view(&v, [b, h, sk, dv]),
        keep: slice::<B>(&keep),
        scale: options.scale as f32,
        dropout: options.dropout.map(|d| d.kernel_key()),
    };
    let mut bufs: [Option<(Vec<f32>, [usize; 4])>; 3] = [
        wanted[0].then(|| (output(b * h * sq * d), [b, h, sq, d])),
        wanted[1].then(|| (output(b * h * sk * d), [b, h, sk, d])),
        wanted[2].then(|| (output(b * h * sk * dv), [b, h, sk, dv])),
    ];
    let mut target = |i: usize| {
        bufs[i].as_mut().map(|(buf, shape)| HeadsMut {
            ptr: buf.as_mut_ptr(),
            strides: merged_heads(*shape),
        })
    };
    let targets = attention::Grads {
        q: target(0),
        k: target(1),
        v: target(2),
    };
    attention::backward(&a, p, grad_heads, targets);
    stats::count(Kernel::AttentionBackward);
    bufs.map(|b| b.map(|(buf, shape)| B::tensor(buf, &shape, Some(&merged_heads(shape)))))
}

pub(crate) fn layer_norm<B: Host>(
    x: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    epsilon: f64,
    save: bool,
) -> (FloatTensor<B>, Option<NormSaved<B>>) {
    let f32s = x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && residual.as_ref().is_none_or(|r| r.dtype() == DType::F32)
        && beta.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !f32s {
        return composed::layer_norm::<B>(x, residual, gamma, beta, epsilon, save);
    }
    let (x, residual) = (dense::<B>(x), residual.map(dense::<B>));
    let (gamma, beta) = (dense::<B>(gamma), beta.map(dense::<B>));
    let shape = x.shape().to_vec();
    let xs = slice::<B>(&x);
    let width = *shape.last().expect("rank ≥ 1");
    let rows = xs.len() / width.max(1);
    let mut out = output(xs.len());
    let mut kept = save.then(|| (output(xs.len()), output(rows)));
    norm::forward(
        xs,
        residual.as_ref().map(slice::<B>),
        slice::<B>(&gamma),
        beta.as_ref().map(slice::<B>),
        epsilon as f32,
        &mut out,
        kept.as_mut()
            .map(|(xhat, rstd)| norm::NormSaved { xhat, rstd }),
    );
    stats::count(Kernel::LayerNorm);
    let saved = kept.map(|(xhat, rstd)| NormSaved {
        xhat: B::tensor(xhat, &shape, None),
        rstd: B::tensor(rstd, &[rows], None),
    });
    (B::tensor(out, &shape, None), saved)
}

pub(crate) fn layer_norm_backward<B: Host>(
    saved: NormSaved<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    wanted: [bool; 3],
) -> Grads3<B> {
    // The fused forward keeps `rstd` per row (rank 1); the composed one keeps `[…, 1]`.
    let fused = saved.rstd.shape().num_dims() == 1
        && saved.xhat.shape().num_dims() > 1
        && grad.dtype() == DType::F32;
    if !fused {
        return composed::layer_norm_backward::<B>(saved, gamma, grad, wanted);
    }
    let (xhat, rstd, gamma) = (
        dense::<B>(saved.xhat),
        dense::<B>(saved.rstd),
        dense::<B>(gamma),
    );
    let mut grad = owned::<B>(host::<B>(grad).expect("f32"));
    let shape = grad.shape().to_vec();
    let g = B::unique(&mut grad).expect("owned");
    let (dgamma, dbeta) = norm::backward(
        slice::<B>(&xhat),
        slice::<B>(&rstd),
        slice::<B>(&gamma),
        g,
        wanted[1],
        wanted[2],
    );
    stats::count(Kernel::LayerNormBackward);
    let width = *shape.last().expect("rank ≥ 1");
    [
        wanted[0].then_some(grad),
        dgamma.map(|d| B::tensor(d, &[width], None)),
        dbeta.map(|d| B::tensor(d, &[width], None)),
    ]
}

/// `[tokens, n, h]` of a dense f32 tensor.
fn dims3<B: Host>(t: &FloatTensor<B>) -> [usize; 3] {
    t.shape().to_vec().try_into().expect("rank 3")
}

pub(crate) fn dots<B: Host>(rows: FloatTensor<B>, probe: FloatTensor<B>) -> FloatTensor<B> {
    let (rows, probe) = match (host::<B>(rows), host::<B>(probe)) {
        (Ok(r), Ok(p)) => (dense::<B>(r), dense::<B>(p)),
        (r, p) => return composed::dots::<B>(r.unwrap_or_else(|t| t), p.unwrap_or_else(|t| t)),
    };
    let [tokens, n, h] = dims3::<B>(&rows);
    let mut out = output(tokens * n);
    mixing::dots(slice::<B>(&rows), slice::<B>(&probe), &mut out, n, h);
    stats::count(Kernel::Dots);
    B::tensor(out, &[tokens, n], None)
}

pub(crate) fn mix<B: Host>(weights: FloatTensor<B>, rows: FloatTensor<B>) -> FloatTensor<B> {
    let (weights, rows) = match (host::<B>(weights), host::<B>(rows)) {
        (Ok(w), Ok(r)) => (dense::<B>(w), dense::<B>(r)),
        (w, r) => return composed::mix::<B>(w.unwrap_or_else(|t| t), r.unwrap_or_else(|t| t)),
    };
    let [tokens, n, h] = dims3::<B>(&rows);
    let mut out = output(tokens * h);
    mixing::mix(slice::<B>(&weights), slice::<B>(&rows), &mut out, n, h);
    stats::count(Kernel::Mix);
    B::tensor(out, &[tokens, h], None)
}

pub(crate) fn outer<B: Host>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    let (a, b) = match (host::<B>(a), host::<B>(b)) {
        (Ok(a), Ok(b)) => (dense::<B>(a), dense::<B>(b)),
        (a, b) => return composed::outer::<B>(a.unwrap_or_else(|t| t), b.unwrap_or_else(|t| t)),
    };
    let ([tokens, n], h) = (
        <[usize; 2]>::try_from(a.shape().to_vec()).expect("rank 2"),
        b.shape()[1],
    );
    let mut out = output(tokens * n * h);
    mixing::outer(slice::<B>(&a), slice::<B>(&b), &mut out, n, h);
    stats::count(Kernel::Outer);
    B::tensor(out, &[tokens, n, h], None)
}

/// The [`FusedOps`](crate::FusedOps) methods of a [`Host`] backend, all forwarded to this module.
macro_rules! host_fused_ops {
    () => {
        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            $crate::cpu::linear::<Self>(x, weight, bias)
        }

        fn fused_linear_backward(
            x: Option<FloatTensor<Self>>,
            weight: Option<FloatTensor<Self>>,
            grad: FloatTensor<Self>,
            wanted: [bool; 3],
        ) -> $crate::Grads3<Self> {
            $crate::cpu::linear_backward::<Self>(x, weight, grad, wanted)
        }

        fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            $crate::cpu::gelu::<Self>(x)
        }

        fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            $crate::cpu::gelu_backward::<Self>(x, grad)
        }

        fn fused_dropout(
            x: FloatTensor<Self>,
            draw: $crate::DropoutDraw,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
            $crate::cpu::dropout::<Self>(x, draw)
        }

        fn fused_dropout_backward(
            grad: FloatTensor<Self>,
            draw: $crate::DropoutDraw,
            mask: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            $crate::cpu::dropout_backward::<Self>(grad, draw, mask)
        }

        fn fused_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            keep: FloatTensor<Self>,
            options: $crate::AttentionOptions,
            save: bool,
        ) -> (FloatTensor<Self>, Option<$crate::AttentionSaved<Self>>) {
            $crate::cpu::attention::<Self>(q, k, v, keep, options, save)
        }

        fn fused_attention_backward(
            q: Option<FloatTensor<Self>>,
            k: Option<FloatTensor<Self>>,
            v: Option<FloatTensor<Self>>,
            keep: FloatTensor<Self>,
            saved: $crate::AttentionSaved<Self>,
            grad: FloatTensor<Self>,
            options: $crate::AttentionOptions,
            wanted: [bool; 3],
        ) -> $crate::Grads3<Self> {
            $crate::cpu::attention_backward::<Self>(q, k, v, keep, saved, grad, options, wanted)
        }

        fn fused_layer_norm(
            x: FloatTensor<Self>,
            residual: Option<FloatTensor<Self>>,
            gamma: FloatTensor<Self>,
            beta: Option<FloatTensor<Self>>,
            epsilon: f64,
            save: bool,
        ) -> (FloatTensor<Self>, Option<$crate::NormSaved<Self>>) {
            $crate::cpu::layer_norm::<Self>(x, residual, gamma, beta, epsilon, save)
        }

        fn fused_layer_norm_backward(
            saved: $crate::NormSaved<Self>,
            gamma: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            wanted: [bool; 3],
        ) -> $crate::Grads3<Self> {
            $crate::cpu::layer_norm_backward::<Self>(saved, gamma, grad, wanted)
        }
        fn fused_dots(rows: FloatTensor<Self>, probe: FloatTensor<Self>) -> FloatTensor<Self> {
            $crate::cpu::dots::<Self>(rows, probe)
        }

        fn fused_mix(weights: FloatTensor<Self>, rows: FloatTensor<Self>) -> FloatTensor<Self> {
            $crate::cpu::mix::<Self>(weights, rows)
        }

        fn fused_outer(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
            $crate::cpu::outer::<Self>(a, b)
        }
    };
}

#[allow(unused_imports)]
pub(crate) use host_fused_ops;
