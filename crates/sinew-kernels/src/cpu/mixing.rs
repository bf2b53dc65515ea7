//! Per-token products over a few rows — what AdapterFusion does at every token: a score per
//! adapter output (`dots`), the outputs mixed by their weights (`mix`), and the outer product both
//! backwards need (`outer`). Each token's work is a handful of short vectors, so a batched GEMM
//! (one tiny product per token) spends its time in dispatch; these loops stream the rows once.
//! Tokens are split into fixed-size groups, so the bytes do not depend on thread timing.

use rayon::prelude::*;

use super::elementwise::CHUNK;
use super::simd::{dot, multiversion, Isa};

/// Tokens per parallel task for rows of `n × h` elements (about [`CHUNK`] elements each).
fn tokens_per_task(n: usize, h: usize) -> usize {
    (CHUNK / (n * h).max(1)).max(1)
}

multiversion! {
    fn dots_chunk(rows: &[f32], probe: &[f32], out: &mut [f32], n: usize, h: usize) {
        for (t, o) in out.chunks_exact_mut(n).enumerate() {
            let p = &probe[t * h..(t + 1) * h];
            for (i, o) in o.iter_mut().enumerate() {
                *o = dot(&rows[(t * n + i) * h..(t * n + i + 1) * h], p);
            }
        }
    }
}

multiversion! {
    fn mix_chunk(weights: &[f32], rows: &[f32], out: &mut [f32], n: usize, h: usize) {
        for (t, o) in out.chunks_exact_mut(h).enumerate() {
            o.fill(0.0);
            for i in 0..n {
                let w = weights[t * n + i];
                let r = &rows[(t * n + i) * h..(t * n + i + 1) * h];
                for (o, &r) in o.iter_mut().zip(r) {
                    *o += w * r;
                }
            }
        }
    }
}

multiversion! {
    fn outer_chunk(a: &[f32], b: &[f32], out: &mut [f32], n: usize, h: usize) {
        for (t, o) in out.chunks_exact_mut(n * h).enumerate() {
            let b = &b[t * h..(t + 1) * h];
            for (i, o) in o.chunks_exact_mut(h).enumerate() {
                let a = a[t * n + i];
                for (o, &b) in o.iter_mut().zip(b) {
                    *o = a * b;
                }
            }
        }
    }
}

/// `out[t, i] = rows[t, i, :] · probe[t, :]` (`rows` `[tokens, n, h]`, `out` `[tokens, n]`).
pub(crate) fn dots(rows: &[f32], probe: &[f32], out: &mut [f32], n: usize, h: usize) {
    let isa = Isa::detected();
    let group = tokens_per_task(n, h);
    out.par_chunks_mut(group * n)
        .enumerate()
        .for_each(|(g, o)| {
            let t = g * group;
            dots_chunk(isa, &rows[t * n * h..], &probe[t * h..], o, n, h)
        });
}

/// `out[t, :] = Σ_i weights[t, i] · rows[t, i, :]` (`out` `[tokens, h]`).
pub(crate) fn mix(weights: &[f32], rows: &[f32], out: &mut [f32], n: usize, h: usize) {
    let isa = Isa::detected();
    let group = tokens_per_task(n, h);
    out.par_chunks_mut(group * h)
        .enumerate()
        .for_each(|(g, o)| {
            let t = g * group;
            mix_chunk(isa, &weights[t * n..], &rows[t * n * h..], o, n, h)
        });
}

/// `out[t, i, :] = a[t, i] · b[t, :]` (`a` `[tokens, n]`, `b` `[tokens, h]`).
pub(crate) fn outer(a: &[f32], b: &[f32], out: &mut [f32], n: usize, h: usize) {
    let isa = Isa::detected();
    let group = tokens_per_task(n, h);
    out.par_chunks_mut(group * n * h)
        .enumerate()
        .for_each(|(g, o)| {
            let t = g * group;
            outer_chunk(isa, &a[t * n..], &b[t * h..], o, n, h)
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| ((i * 2_654_435_761 + seed * 97) % 10_007) as f32 / 10_007.0 - 0.5)
            .collect()
    }

    /// The vector kernels give the plain kernels' bits, and the plain kernels the definitions
    /// (in f64) to f32 rounding, over several task groups and a ragged last one.
    #[test]
    fn kernels_equal_their_definitions_and_the_scalar_fallback() {
        let (tokens, n, h) = (3 * tokens_per_task(5, 131) + 7, 5, 131);
        let rows = inputs(tokens * n * h, 1);
        let probe = inputs(tokens * h, 2);
        let weights = inputs(tokens * n, 3);
        for isa in [Isa::Scalar, Isa::detected()] {
            let mut d = vec![0f32; tokens * n];
            dots_chunk(isa, &rows, &probe, &mut d, n, h);
            let mut m = vec![0f32; tokens * h];
            mix_chunk(isa, &weights, &rows, &mut m, n, h);
            let mut o = vec![0f32; tokens * n * h];
            outer_chunk(isa, &weights, &probe, &mut o, n, h);
            let (mut pd, mut pm, mut po) = (d.clone(), m.clone(), o.clone());
            dots(&rows, &probe, &mut pd, n, h);
            mix(&weights, &rows, &mut pm, n, h);
            outer(&weights, &probe, &mut po, n, h);
            if isa == Isa::detected() {
                assert_eq!(
                    (&pd, &pm, &po),
                    (&d, &m, &o),
                    "parallel = one chunk, bitwise"
                );
            }
            for t in 0..tokens {
                for i in 0..n {
                    let r = &rows[(t * n + i) * h..][..h];
                    let want: f64 = r
                        .iter()
                        .zip(&probe[t * h..])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    assert!((d[t * n + i] as f64 - want).abs() <= 1e-5, "dots[{t}, {i}]");
                    for j in 0..h {
                        let want = weights[t * n + i] as f64 * probe[t * h + j] as f64;
                        assert!((o[(t * n + i) * h + j] as f64 - want).abs() <= 1e-7 * want.abs());
                    }
                }
                for j in 0..h {
                    let want: f64 = (0..n)
                        .map(|i| weights[t * n + i] as f64 * rows[(t * n + i) * h + j] as f64)
                        .sum();
                    assert!((m[t * h + j] as f64 - want).abs() <= 1e-6, "mix[{t}, {j}]");
                }
            }
        }
        let run = |isa| {
            let mut d = vec![0f32; tokens * n];
            dots_chunk(isa, &rows, &probe, &mut d, n, h);
            let mut m = vec![0f32; tokens * h];
            mix_chunk(isa, &weights, &rows, &mut m, n, h);
            (d, m)
        };
        assert_eq!(
            run(Isa::Scalar),
            run(Isa::detected()),
            "vector = scalar, bitwise"
        );
    }
}
