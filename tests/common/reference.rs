//! Plain-f64 references (no Burn): deterministic inputs, attention, erf, finite differences.

/// Deterministic values in `[-scale, scale)`.
pub fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `[batch, keys]` masks: batch 0 all real, batch 1 the last third padded, batch 2 one real key,
/// batch 3 none (uniform attention).
pub fn keep_mask(batch: usize, keys: usize) -> Vec<f64> {
    (0..batch)
        .flat_map(|b| {
            (0..keys).map(move |j| match b % 4 {
                0 => 1.0,
                1 => (j < keys - keys / 3) as u8 as f64,
                2 => (j == 0) as u8 as f64,
                _ => 0.0,
            })
        })
        .collect()
}

/// Attention in plain f64 (no Burn): `[b, h, s, d]` inputs, `[b, s]` mask, `[b, s, h·d]` out.
pub fn attention_f64(q: &[f64], k: &[f64], v: &[f64], keep: &[f64], dims: [usize; 4]) -> Vec<f64> {
    let [b, h, s, d] = dims;
    let at =
        |t: &[f64], bi: usize, hi: usize, i: usize, c: usize| t[((bi * h + hi) * s + i) * d + c];
    let mut out = vec![0.0; b * s * h * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|c| at(q, bi, hi, i, c) * at(k, bi, hi, j, c))
                            .sum();
                        dot / (d as f64).sqrt() + if keep[bi * s + j] == 0.0 { -1e30 } else { 0.0 }
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[(bi * s + i) * h * d + hi * d + c] =
                        (0..s).map(|j| e[j] / z * at(v, bi, hi, j, c)).sum();
                }
            }
        }
    }
    out
}

/// `Σ w·f(x)` differentiated by central differences in f64, one input element at a time.
pub fn numeric_gradient(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    (0..x.len())
        .map(|i| {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += eps;
            down[i] -= eps;
            (loss(&up) - loss(&down)) / (2.0 * eps)
        })
        .collect()
}

/// Central-difference gradients of `Σ attention_f64(q, k, v)·w` for `[q, k, v]`.
pub fn attention_numeric_gradients(
    (q, k, v): (&[f64], &[f64], &[f64]),
    keep: &[f64],
    dims: [usize; 4],
    w: &[f64],
) -> [Vec<f64>; 3] {
    [
        numeric_gradient(q, |q| weighted(&attention_f64(q, k, v, keep, dims), w)),
        numeric_gradient(k, |k| weighted(&attention_f64(q, k, v, keep, dims), w)),
        numeric_gradient(v, |v| weighted(&attention_f64(q, k, v, keep, dims), w)),
    ]
}

pub fn weighted(y: &[f64], w: &[f64]) -> f64 {
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// erf by its Maclaurin series (|x| < 3) and continued fraction beyond, in f64.
pub fn erf64(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let (mut term, mut sum) = (x, x);
        for n in 1..120 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let a = x.abs();
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        (1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)).copysign(x)
    }
}
