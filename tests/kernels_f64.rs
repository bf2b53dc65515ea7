//! The composed path of the fused ops (what wgpu and any backend without kernels runs, and the
//! CPU backends for dtypes other than f32) in f64 on ndarray: forward against plain-f64
//! references, the hand-written backward passes against central finite differences. A binary of
//! its own: Burn keeps one default float dtype per device, so f64 and f32 ndarray tensors must not
//! share a process.

#![cfg(feature = "ndarray")]

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use common::reference::{
    attention_f64, attention_numeric_gradients, erf64, keep_mask, numeric_gradient, values,
    weighted,
};
use sinew::kernels::{self, LayerNormConfig};

type F = NdArray<f64>;
type A = Autodiff<F>;

fn tensor<B: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    let data = t.into_data();
    assert_eq!(data.dtype, burn::tensor::DType::F64, "the f64 path");
    data.iter::<f64>().collect()
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(err <= rel * scale, "{what}: {err:e} > {rel:e} × {scale:e}");
}

#[test]
fn attention() {
    let (b, h, s, d) = (3, 2, 5, 4);
    let dims = [b, h, s, d];
    let n = b * h * s * d;
    let (qv, kv, vv) = (values(n, 1, 1.0), values(n, 2, 1.0), values(n, 3, 1.0));
    let keep = keep_mask(b, s);
    let w = values(b * s * h * d, 4, 1.0);
    let t = |x: &[f64]| tensor::<A, 4>(x, dims).require_grad();
    let (q, k, v) = (t(&qv), t(&kv), t(&vv));
    let out = kernels::attention(q.clone(), k.clone(), v.clone(), tensor(&keep, [b, s]), 0.0);
    assert_close(
        &flat(out.clone()),
        &attention_f64(&qv, &kv, &vv, &keep, dims),
        1e-12,
        "forward",
    );
    let g = (out * tensor::<A, 3>(&w, [b, s, h * d])).sum().backward();
    let numeric = attention_numeric_gradients((&qv, &kv, &vv), &keep, dims, &w);
    for (i, t) in [q, k, v].iter().enumerate() {
        assert_close(&flat(t.grad(&g).unwrap()), &numeric[i], 1e-7, "gradient");
    }
}

#[test]
fn gelu() {
    let xv = values(50, 5, 12.0);
    let w = values(50, 6, 1.0);
    let gelu = |x: f64| 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
    let x = tensor::<A, 1>(&xv, [50]).require_grad();
    let y = kernels::gelu(x.clone());
    let want: Vec<f64> = xv.iter().map(|&x| gelu(x)).collect();
    assert_close(&flat(y.clone()), &want, 1e-12, "forward");
    let g = (y * tensor::<A, 1>(&w, [50])).sum().backward();
    let numeric = numeric_gradient(&xv, |x| x.iter().zip(&w).map(|(x, w)| gelu(*x) * w).sum());
    assert_close(&flat(x.grad(&g).unwrap()), &numeric, 1e-7, "gradient");
}

#[test]
fn add_layer_norm() {
    let (rows, width) = (5, 7);
    let (xv, rv) = (values(rows * width, 7, 2.0), values(rows * width, 8, 2.0));
    let (gamma, beta) = (values(width, 9, 2.0), values(width, 10, 1.0));
    let w = values(rows * width, 11, 1.0);
    let norm64 = |x: &[f64], r: &[f64], gamma: &[f64], beta: &[f64]| -> Vec<f64> {
        x.chunks(width)
            .zip(r.chunks(width))
            .flat_map(|(x, r)| {
                let s: Vec<f64> = x.iter().zip(r).map(|(a, b)| a + b).collect();
                let mean = s.iter().sum::<f64>() / width as f64;
                let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                let inv = 1.0 / (var + 1e-5).sqrt();
                (0..width)
                    .map(|c| (s[c] - mean) * inv * gamma[c] + beta[c])
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut norm = LayerNormConfig::new(width).init::<A>(&Default::default());
    norm.gamma = Param::from_tensor(tensor(&gamma, [width]));
    norm.beta = Some(Param::from_tensor(tensor(&beta, [width])));
    let x = tensor::<A, 2>(&xv, [rows, width]).require_grad();
    let r = tensor::<A, 2>(&rv, [rows, width]).require_grad();
    let y = norm.forward_add(x.clone(), r.clone());
    assert_close(
        &flat(y.clone()),
        &norm64(&xv, &rv, &gamma, &beta),
        1e-12,
        "forward",
    );
    let g = (y * tensor::<A, 2>(&w, [rows, width])).sum().backward();
    let checks = [
        (
            flat(x.grad(&g).unwrap()),
            numeric_gradient(&xv, |x| weighted(&norm64(x, &rv, &gamma, &beta), &w)),
        ),
        (
            flat(r.grad(&g).unwrap()),
            numeric_gradient(&rv, |r| weighted(&norm64(&xv, r, &gamma, &beta), &w)),
        ),
        (
            flat(norm.gamma.val().grad(&g).unwrap()),
            numeric_gradient(&gamma, |gm| weighted(&norm64(&xv, &rv, gm, &beta), &w)),
        ),
        (
            flat(norm.beta.as_ref().unwrap().val().grad(&g).unwrap()),
            numeric_gradient(&beta, |bt| weighted(&norm64(&xv, &rv, &gamma, bt), &w)),
        ),
    ];
    for (got, want) in checks {
        assert_close(&got, &want, 1e-7, "gradient");
    }
}

#[test]
fn linear() {
    let (rows, d_in, d_out) = (6, 5, 4);
    let (xv, wv, bv) = (
        values(rows * d_in, 12, 1.0),
        values(d_in * d_out, 13, 1.0),
        values(d_out, 14, 1.0),
    );
    let w = values(rows * d_out, 15, 1.0);
    let lin64 = |x: &[f64], wt: &[f64], b: &[f64]| -> Vec<f64> {
        (0..rows)
            .flat_map(|i| {
                (0..d_out).map(move |o| {
                    b[o] + (0..d_in)
                        .map(|k| x[i * d_in + k] * wt[k * d_out + o])
                        .sum::<f64>()
                })
            })
            .collect()
    };
    let mut layer: Linear<A> = LinearConfig::new(d_in, d_out).init(&Default::default());
    layer.weight = Param::from_tensor(tensor(&wv, [d_in, d_out]));
    layer.bias = Some(Param::from_tensor(tensor(&bv, [d_out])));
    let x = tensor::<A, 3>(&xv, [2, 3, d_in]).require_grad();
    let y = kernels::linear(&layer, x.clone());
    assert_close(&flat(y.clone()), &lin64(&xv, &wv, &bv), 1e-12, "forward");
    let g = (y * tensor::<A, 3>(&w, [2, 3, d_out])).sum().backward();
    let checks = [
        (
            flat(x.grad(&g).unwrap()),
            numeric_gradient(&xv, |x| weighted(&lin64(x, &wv, &bv), &w)),
        ),
        (
            flat(layer.weight.val().grad(&g).unwrap()),
            numeric_gradient(&wv, |wt| weighted(&lin64(&xv, wt, &bv), &w)),
        ),
        (
            flat(layer.bias.as_ref().unwrap().val().grad(&g).unwrap()),
            numeric_gradient(&bv, |b| weighted(&lin64(&xv, &wv, b), &w)),
        ),
    ];
    for (got, want) in checks {
        assert_close(&got, &want, 1e-7, "gradient");
    }
}
