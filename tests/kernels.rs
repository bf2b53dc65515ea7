//! The fused ops (`sinew::kernels`) against references built from Burn's own tensor ops and
//! modules (`burn::nn::Linear`, `burn::nn::LayerNorm`, erf, softmax, matmul), on every compiled
//! backend: flex and ndarray run sinew's kernels, wgpu the composed default path. Forward to 1e-6
//! of the values' scale, gradients against Burn's autodiff of the reference and against central
//! finite differences in f64; AdapterFusion's per-token products against batched matmul. Edges:
//! |x| > 10, masked keys, one real key, no real key, rows of length 1, non-contiguous inputs,
//! batch 1. The CPU backends must have run their kernels (the
//! kernel counters move), so a silent fallback cannot pass.

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::{LayerNormConfig as BurnNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use common::reference::{
    attention_numeric_gradients, erf64, keep_mask, numeric_gradient, values, weighted,
};
use sinew::kernels::stats::{calls, Kernel};
use sinew::kernels::{self, FusedOps, LayerNorm, LayerNormConfig};

type A<B> = Autodiff<B>;
/// A function of (q, k, v, keep) under autodiff.
type AttentionFn<B> =
    dyn Fn(Tensor<A<B>, 4>, Tensor<A<B>, 4>, Tensor<A<B>, 4>, Tensor<A<B>, 2>) -> Tensor<A<B>, 3>;
/// A function of (x, residual) under autodiff.
type PairFn<'a, B> = dyn Fn(Tensor<A<B>, 2>, Tensor<A<B>, 2>) -> Tensor<A<B>, 2> + 'a;

fn tensor<B: FusedOps, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    // Through f32, so every backend and precision sees the same numbers.
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let data = TensorData::new(v, shape).convert::<B::FloatElem>();
    Tensor::from_data(data, &Default::default())
}

fn flat<B: FusedOps, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// `max |got − want| ≤ rel · max |want|` over the whole tensor.
fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        err <= rel * scale,
        "{what}: max error {err:e} > {rel:e} × scale {scale:e}"
    );
}

/// Runs `f` and checks that `kernel` ran (on the CPU backends, whose kernels count their calls).
fn counted<R>(fused: bool, kernel: Kernel, f: impl FnOnce() -> R) -> R {
    let before = calls(kernel);
    let out = f();
    if fused {
        assert!(
            calls(kernel) > before,
            "{kernel:?}: the fused kernel did not run"
        );
    }
    out
}

fn gelu_ref<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * (x / std::f64::consts::SQRT_2).erf().add_scalar(1.0) * 0.5
}

fn attention_ref<B: FusedOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [b, h, s, d] = q.dims();
    let dv = v.dims()[3];
    let keys = keep.dims()[1];
    let bias = (keep.neg() + 1.0)
        .mul_scalar(f32::MIN)
        .reshape([b, 1, 1, keys]);
    let scores = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt() + bias;
    softmax(scores, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, s, h * dv])
}

/// sinew's LayerNorm and Burn's with the same γ, β, ε.
fn norms<B: FusedOps>(width: usize, eps: f64, seed: u64) -> (LayerNorm<B>, burn::nn::LayerNorm<B>) {
    let device = Default::default();
    let gamma = tensor::<B, 1>(&values(width, seed, 2.0), [width]);
    let beta = tensor::<B, 1>(&values(width, seed + 1, 1.0), [width]);
    let mut ours = LayerNormConfig::new(width)
        .with_epsilon(eps)
        .init::<B>(&device);
    let mut burns = BurnNormConfig::new(width)
        .with_epsilon(eps)
        .init::<B>(&device);
    ours.gamma = Param::from_tensor(gamma.clone());
    ours.beta = Some(Param::from_tensor(beta.clone()));
    burns.gamma = Param::from_tensor(gamma);
    burns.beta = Some(Param::from_tensor(beta));
    (ours, burns)
}

fn linear_layer<B: FusedOps>(d_in: usize, d_out: usize, seed: u64) -> Linear<B> {
    let mut l = LinearConfig::new(d_in, d_out).init::<B>(&Default::default());
    l.weight = Param::from_tensor(tensor(&values(d_in * d_out, seed, 0.3), [d_in, d_out]));
    l.bias = Some(Param::from_tensor(tensor(
        &values(d_out, seed + 1, 0.3),
        [d_out],
    )));
    l
}

fn gelu_forward<B: FusedOps>(fused: bool) {
    // Both signs past ±10, and a non-contiguous view.
    let x = tensor::<B, 2>(&values(64 * 300, 1, 14.0), [64, 300]);
    let got = counted(fused, Kernel::Gelu, || kernels::gelu(x.clone()));
    assert_close(&flat(got), &flat(gelu_ref(x.clone())), 1e-6, "gelu");
    let t = x.swap_dims(0, 1);
    assert_close(
        &flat(kernels::gelu(t.clone())),
        &flat(gelu_ref(t)),
        1e-6,
        "gelu, transposed",
    );
}

fn gelu_backward<B: FusedOps>(fused: bool) {
    let v = values(40 * 50, 2, 12.0);
    let w = values(40 * 50, 3, 1.0);
    let grad = |f: &dyn Fn(Tensor<A<B>, 2>) -> Tensor<A<B>, 2>| {
        let x = tensor::<A<B>, 2>(&v, [40, 50]).require_grad();
        let loss = (f(x.clone()) * tensor::<A<B>, 2>(&w, [40, 50])).sum();
        flat(x.grad(&loss.backward()).unwrap())
    };
    let got = counted(fused, Kernel::GeluBackward, || grad(&|x| kernels::gelu(x)));
    assert_close(&got, &grad(&|x| gelu_ref(x)), 1e-5, "gelu gradient");
}

fn attention_forward<B: FusedOps>(fused: bool) {
    let (b, h, s, d) = (4, 3, 7, 8);
    let q = tensor::<B, 4>(&values(b * h * s * d, 4, 2.0), [b, h, s, d]);
    let k = tensor::<B, 4>(&values(b * h * s * d, 5, 2.0), [b, h, s, d]);
    let v = tensor::<B, 4>(&values(b * h * s * d, 6, 2.0), [b, h, s, d]);
    let keep = tensor::<B, 2>(&keep_mask(b, s), [b, s]);
    let got = counted(fused, Kernel::Attention, || {
        kernels::attention(q.clone(), k.clone(), v.clone(), keep.clone(), 0.0)
    });
    let want = attention_ref(q.clone(), k.clone(), v.clone(), keep.clone());
    assert_close(&flat(got), &flat(want), 1e-6, "attention");
    // The layout the model passes: heads split from [b, s, h·d] (a strided view), and batch 1.
    let split = |t: Tensor<B, 4>| {
        t.swap_dims(1, 2)
            .reshape([b, s, h * d])
            .reshape([b, s, h, d])
            .swap_dims(1, 2)
    };
    let (qs, ks, vs) = (split(q.clone()), split(k.clone()), split(v.clone()));
    let got = kernels::attention(qs.clone(), ks.clone(), vs.clone(), keep.clone(), 0.0);
    assert_close(
        &flat(got),
        &flat(attention_ref(qs, ks, vs, keep.clone())),
        1e-6,
        "attention, strided",
    );
    let one = |t: Tensor<B, 4>| t.narrow(0, 1, 1);
    let got = kernels::attention(
        one(q.clone()),
        one(k.clone()),
        one(v.clone()),
        keep.clone().narrow(0, 1, 1),
        0.0,
    );
    let want = attention_ref(one(q), one(k), one(v), keep.narrow(0, 1, 1));
    assert_close(&flat(got), &flat(want), 1e-6, "attention, batch 1");
}

fn attention_backward<B: FusedOps>(fused: bool) {
    let (b, h, s, d) = (4, 2, 6, 4);
    let n = b * h * s * d;
    let (qv, kv, vv) = (values(n, 7, 1.5), values(n, 8, 1.5), values(n, 9, 1.5));
    let w = values(b * s * h * d, 10, 1.0);
    let keep = keep_mask(b, s);
    let grads = |f: &AttentionFn<B>| {
        let q = tensor::<A<B>, 4>(&qv, [b, h, s, d]).require_grad();
        let k = tensor::<A<B>, 4>(&kv, [b, h, s, d]).require_grad();
        let v = tensor::<A<B>, 4>(&vv, [b, h, s, d]).require_grad();
        let out = f(q.clone(), k.clone(), v.clone(), tensor(&keep, [b, s]));
        let g = (out * tensor::<A<B>, 3>(&w, [b, s, h * d]))
            .sum()
            .backward();
        [q, k, v].map(|t| flat(t.grad(&g).unwrap()))
    };
    let got = counted(fused, Kernel::AttentionBackward, || {
        grads(&|q, k, v, keep| kernels::attention(q, k, v, keep, 0.0))
    });
    let want = grads(&|q, k, v, keep| attention_ref(q, k, v, keep));
    // Burn's composed gradients carry f32 error up to ~3e-5 of the scale here (against f64 the
    // kernels hold 2e-6: `finite_differences`), so the comparison allows 5e-5.
    for (i, name) in ["dQ", "dK", "dV"].iter().enumerate() {
        assert_close(&got[i], &want[i], 5e-5, name);
    }
}

fn layer_norm_forward<B: FusedOps>(fused: bool) {
    for (rows, width) in [(33, 384), (5, 1), (2, 7)] {
        let (ours, burns) = norms::<B>(width, 1e-12, 11);
        let x = tensor::<B, 3>(&values(rows * width, 12, 5.0), [1, rows, width]);
        let r = tensor::<B, 3>(&values(rows * width, 13, 5.0), [1, rows, width]);
        let got = counted(fused, Kernel::LayerNorm, || {
            ours.forward_add(x.clone(), r.clone())
        });
        let want = burns.forward(x.clone() + r.clone());
        assert_close(
            &flat(got),
            &flat(want),
            1e-6,
            &format!("add + layer norm {rows}×{width}"),
        );
        assert_close(
            &flat(ours.forward(x.clone())),
            &flat(burns.forward(x)),
            1e-6,
            "layer norm",
        );
    }
}

fn layer_norm_backward<B: FusedOps>(fused: bool) {
    let (rows, width) = (70, 24);
    let xv = values(rows * width, 14, 3.0);
    let rv = values(rows * width, 15, 3.0);
    let w = values(rows * width, 16, 1.0);
    let (ours, burns) = norms::<A<B>>(width, 1e-5, 17);
    let run = |f: &PairFn<'_, B>, gamma: &Param<Tensor<A<B>, 1>>, beta: &Param<Tensor<A<B>, 1>>| {
        let x = tensor::<A<B>, 2>(&xv, [rows, width]).require_grad();
        let r = tensor::<A<B>, 2>(&rv, [rows, width]).require_grad();
        let g = (f(x.clone(), r.clone()) * tensor::<A<B>, 2>(&w, [rows, width]))
            .sum()
            .backward();
        [
            flat(x.grad(&g).unwrap()),
            flat(r.grad(&g).unwrap()),
            flat(gamma.val().grad(&g).unwrap()),
            flat(beta.val().grad(&g).unwrap()),
        ]
    };
    let got = counted(fused, Kernel::LayerNormBackward, || {
        run(
            &|x, r| ours.forward_add(x, r),
            &ours.gamma,
            ours.beta.as_ref().unwrap(),
        )
    });
    let want = run(
        &|x, r| burns.forward(x + r),
        &burns.gamma,
        burns.beta.as_ref().unwrap(),
    );
    // As for attention: Burn's composed LayerNorm gradient is the noisier side (see above).
    for (i, name) in ["dx", "dresidual", "dγ", "dβ"].iter().enumerate() {
        assert_close(&got[i], &want[i], 5e-5, name);
    }
}

fn linear_forward_backward<B: FusedOps>(fused: bool) {
    let layer = linear_layer::<A<B>>(24, 40, 18);
    let xv = values(3 * 5 * 24, 19, 2.0);
    let w = values(3 * 5 * 40, 20, 1.0);
    let run = |f: &dyn Fn(Tensor<A<B>, 3>) -> Tensor<A<B>, 3>| {
        let x = tensor::<A<B>, 3>(&xv, [3, 5, 24]).require_grad();
        let y = f(x.clone());
        let out = flat(y.clone());
        let g = (y * tensor::<A<B>, 3>(&w, [3, 5, 40])).sum().backward();
        [
            out,
            flat(x.grad(&g).unwrap()),
            flat(layer.weight.val().grad(&g).unwrap()),
            flat(layer.bias.as_ref().unwrap().val().grad(&g).unwrap()),
        ]
    };
    let got = counted(fused, Kernel::LinearBackward, || {
        counted(fused, Kernel::Linear, || {
            run(&|x| kernels::linear(&layer, x))
        })
    });
    let want = run(&|x| layer.forward(x));
    for (i, name) in ["y", "dx", "dW", "db"].iter().enumerate() {
        assert_close(&got[i], &want[i], if i == 0 { 1e-6 } else { 1e-5 }, name);
    }
    // A transposed (non-contiguous) input.
    let x = tensor::<B, 3>(&xv, [3, 24, 5]).swap_dims(1, 2);
    let plain = linear_layer::<B>(24, 40, 18);
    assert_close(
        &flat(kernels::linear(&plain, x.clone())),
        &flat(plain.forward(x)),
        1e-6,
        "linear, transposed",
    );
}

/// AdapterFusion's per-token products against Burn's batched matmul, chained as the fusion
/// chains them (scores → softmax → mixture of the same rows), so the rows' gradient sums both
/// paths; one row per token and a non-contiguous input as edges.
fn products<B: FusedOps>(fused: bool) {
    for (b, s, n, h) in [(2, 3, 5, 7), (1, 4, 1, 9)] {
        let rv = values(b * s * n * h, 40, 2.0);
        let pv = values(b * s * h, 41, 1.0);
        let w = values(b * s * h, 42, 1.0);
        type Products<'a, B> =
            dyn Fn(Tensor<A<B>, 4>, Tensor<A<B>, 3>) -> (Tensor<A<B>, 3>, Tensor<A<B>, 3>) + 'a;
        let run = |f: &Products<B>| {
            let rows = tensor::<A<B>, 4>(&rv, [b, s, n, h]).require_grad();
            let probe = tensor::<A<B>, 3>(&pv, [b, s, h]).require_grad();
            let (scores, mixed) = f(rows.clone(), probe.clone());
            let out = [flat(scores), flat(mixed.clone())];
            let g = (mixed * tensor::<A<B>, 3>(&w, [b, s, h])).sum().backward();
            [
                out[0].clone(),
                out[1].clone(),
                flat(rows.grad(&g).unwrap()),
                flat(probe.grad(&g).unwrap()),
            ]
        };
        let got = counted(fused, Kernel::Outer, || {
            counted(fused, Kernel::Dots, || {
                counted(fused, Kernel::Mix, || {
                    run(&|rows, probe| {
                        let scores = kernels::dots(rows.clone(), probe);
                        let mixed = kernels::mix(softmax(scores.clone(), 2), rows);
                        (scores, mixed)
                    })
                })
            })
        });
        let want = run(&|rows, probe| {
            let scores = rows
                .clone()
                .matmul(probe.unsqueeze_dim::<4>(3))
                .reshape([b, s, n]);
            let mixed = softmax(scores.clone(), 2)
                .unsqueeze_dim::<4>(2)
                .matmul(rows)
                .reshape([b, s, h]);
            (scores, mixed)
        });
        for (i, name) in ["scores", "mixture", "d rows", "d probe"]
            .iter()
            .enumerate()
        {
            assert_close(&got[i], &want[i], if i < 2 { 1e-6 } else { 1e-5 }, name);
        }
        // Rows given as a transposed view.
        let rows = tensor::<B, 4>(&rv, [b, s, h, n]).swap_dims(2, 3);
        let probe = tensor::<B, 3>(&pv, [b, s, h]);
        assert_close(
            &flat(kernels::dots(rows.clone(), probe.clone())),
            &flat(rows.matmul(probe.unsqueeze_dim::<4>(3)).reshape([b, s, n])),
            1e-6,
            "scores, transposed rows",
        );
    }
}

/// Dropout: the same seed gives the same mask, which the backward applies again; about `p` of
/// the elements are dropped, the rest scaled by 1/(1−p); identity outside training.
fn dropout<B: FusedOps>(fused: bool) {
    let device = Default::default();
    let n = 20_000;
    let xv = values(n, 21, 1.0);
    let run = || {
        A::<B>::seed(&device, 42);
        let x = tensor::<A<B>, 1>(&xv, [n]).require_grad();
        let y = kernels::dropout(x.clone(), 0.3);
        let g = y.clone().sum().backward();
        (flat(y), flat(x.grad(&g).unwrap()))
    };
    let (y, g) = counted(fused, Kernel::Dropout, run);
    assert_eq!((y.clone(), g.clone()), run(), "same seed, same mask");
    let scale = 1.0 / 0.7f32;
    let mut dropped = 0;
    for i in 0..n {
        if g[i] == 0.0 {
            dropped += 1;
            assert_eq!(y[i], 0.0);
        } else {
            assert_eq!(g[i] as f32, scale);
            assert_close(
                &[y[i]],
                &[xv[i] as f32 as f64 * scale as f64],
                1e-6,
                "kept element",
            );
        }
    }
    let sd = (n as f64 * 0.3 * 0.7).sqrt();
    assert!(
        (dropped as f64 - 0.3 * n as f64).abs() < 5.0 * sd,
        "{dropped} dropped of {n}"
    );
    let x = tensor::<B, 1>(&xv, [n]);
    assert_eq!(
        flat(kernels::dropout(x.clone(), 0.3)),
        flat(x),
        "inference: identity"
    );
}

/// The fused gradients (f32) against central finite differences of plain-f64 references, at
/// points that are exact f32 values. (No fully masked row here: with an infinite mask the scores
/// do not move the output, while the additive `f32::MIN` of HF and Burn still passes their
/// softmax gradient through, and the kernels follow HF.)
fn finite_differences<B: FusedOps>(_fused: bool) {
    let round = |v: Vec<f64>| v.into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>();
    let (b, h, s, d) = (3, 2, 5, 4);
    let dims = [b, h, s, d];
    let n = b * h * s * d;
    let (qv, kv, vv) = (
        round(values(n, 22, 1.0)),
        round(values(n, 23, 1.0)),
        round(values(n, 24, 1.0)),
    );
    let keep = keep_mask(b, s);
    let w = values(b * s * h * d, 25, 1.0);
    let numeric = attention_numeric_gradients((&qv, &kv, &vv), &keep, dims, &w);
    let t = |x: &[f64]| tensor::<A<B>, 4>(x, dims).require_grad();
    let (q, k, v) = (t(&qv), t(&kv), t(&vv));
    let out = kernels::attention(q.clone(), k.clone(), v.clone(), tensor(&keep, [b, s]), 0.0);
    let g = (out * tensor::<A<B>, 3>(&w, [b, s, h * d]))
        .sum()
        .backward();
    for (i, t) in [q, k, v].iter().enumerate() {
        assert_close(
            &flat(t.grad(&g).unwrap()),
            &numeric[i],
            2e-6,
            "attention gradient vs finite differences",
        );
    }

    let xv = round(values(40, 26, 12.0));
    let gelu64 = |x: f64| 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
    let wg = values(40, 27, 1.0);
    let numeric = numeric_gradient(&xv, |x| {
        x.iter().zip(&wg).map(|(x, w)| gelu64(*x) * w).sum()
    });
    let x = tensor::<A<B>, 1>(&xv, [40]).require_grad();
    let g = (kernels::gelu(x.clone()) * tensor::<A<B>, 1>(&wg, [40]))
        .sum()
        .backward();
    assert_close(
        &flat(x.grad(&g).unwrap()),
        &numeric,
        2e-6,
        "gelu gradient vs finite differences",
    );

    let (rows, width) = (4, 6);
    let xn = round(values(rows * width, 28, 2.0));
    let rn = round(values(rows * width, 29, 2.0));
    let wn = values(rows * width, 30, 1.0);
    let gamma = round(values(width, 31, 2.0));
    let beta = round(values(width, 32, 1.0));
    let norm64 = |x: &[f64]| -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for (x, r) in x.chunks(width).zip(rn.chunks(width)) {
            let s: Vec<f64> = x.iter().zip(r).map(|(a, b)| a + b).collect();
            let mean = s.iter().sum::<f64>() / width as f64;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            let inv = 1.0 / (var + 1e-5).sqrt();
            out.extend((0..width).map(|c| (s[c] - mean) * inv * gamma[c] + beta[c]));
        }
        out
    };
    let numeric = numeric_gradient(&xn, |x| weighted(&norm64(x), &wn));
    let mut norm = LayerNormConfig::new(width)
        .with_epsilon(1e-5)
        .init::<A<B>>(&Default::default());
    norm.gamma = Param::from_tensor(tensor(&gamma, [width]));
    norm.beta = Some(Param::from_tensor(tensor(&beta, [width])));
    let x = tensor::<A<B>, 2>(&xn, [rows, width]).require_grad();
    let y = norm.forward_add(x.clone(), tensor(&rn, [rows, width]))
        * tensor::<A<B>, 2>(&wn, [rows, width]);
    assert_close(
        &flat(x.grad(&y.sum().backward()).unwrap()),
        &numeric,
        2e-6,
        "layer norm gradient vs finite differences",
    );
}

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "ndarray")]
        mod ndarray {
            $(#[test] fn $test() { super::$test::<sinew::backend::NdArrayBackend>(true) })*
        }
        #[cfg(feature = "flex")]
        mod flex {
            $(#[test] fn $test() { super::$test::<sinew::backend::FlexBackend>(true) })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $test() { super::$test::<sinew::backend::WgpuBackend>(false) })*
        }
    };
}

per_backend!(
    gelu_forward,
    gelu_backward,
    attention_forward,
    attention_backward,
    layer_norm_forward,
    layer_norm_backward,
    linear_forward_backward,
    products,
    dropout,
    finite_differences,
);
