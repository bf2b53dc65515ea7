//! Residual add + LayerNorm over rows, forward and backward. The forward keeps what the backward
//! needs — the normalised rows `x̂` and `1/σ` per row — and nothing else; the backward is
//! `dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))/σ` with `dx̂ = dy·γ`, and `dγ = Σ dy·x̂`, `dβ = Σ dy`
//! summed over rows in fixed blocks.

use rayon::prelude::*;

use super::simd::{dot, multiversion, sum, Isa};

/// Rows per parallel task.
const ROWS: usize = 64;

/// One block's `(dγ, dβ)` partial sums.
type Partial = (Option<Vec<f32>>, Option<Vec<f32>>);

/// What the forward keeps for the backward.
pub(crate) struct NormSaved<'a> {
    /// `x̂`, the normalised rows, `[rows, width]`.
    pub xhat: &'a mut [f32],
    /// `1/σ` per row.
    pub rstd: &'a mut [f32],
}

multiversion! {
    fn forward_rows(
        x: &[f32],
        residual: Option<&[f32]>,
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
        out: &mut [f32],
        xhat: Option<&mut [f32]>,
        rstd: Option<&mut [f32]>,
    ) {
        let (mut xhat, mut rstd) = (xhat, rstd);
        let width = gamma.len();
        for (r, o) in out.chunks_exact_mut(width).enumerate() {
            let xs = &x[r * width..(r + 1) * width];
            match residual {
                Some(res) => {
                    for ((o, &a), &b) in o.iter_mut().zip(xs).zip(&res[r * width..(r + 1) * width]) {
                        *o = a + b;
                    }
                }
                None => o.copy_from_slice(xs),
            }
            let mean = sum(o) / width as f32;
            for v in o.iter_mut() {
                *v -= mean;
            }
            let var = dot(o, o) / width as f32;
            let inv = 1.0 / (var + eps).sqrt();
            if let Some(rs) = rstd.as_deref_mut() {
                rs[r] = inv;
            }
            if let Some(xh) = xhat.as_deref_mut() {
                let xh = &mut xh[r * width..(r + 1) * width];
                for (h, &c) in xh.iter_mut().zip(o.iter()) {
                    *h = c * inv;
                }
            }
            match beta {
                Some(b) => {
                    for ((v, &g), &b) in o.iter_mut().zip(gamma).zip(b) {
                        *v = (*v * inv).mul_add(g, b);
                    }
                }
                None => {
                    for (v, &g) in o.iter_mut().zip(gamma) {
                        *v = *v * inv * g;
                    }
                }
            }
        }
    }
}

/// `out = LayerNorm(x + residual)` over rows of `gamma.len()`; fills `saved` when asked.
pub(crate) fn forward(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    saved: Option<NormSaved<'_>>,
) {
    let isa = Isa::detected();
    let width = gamma.len();
    let block = ROWS * width;
    let (xhat, rstd) = match saved {
        Some(s) => (Some(s.xhat), Some(s.rstd)),
        None => (None, None),
    };
    let mut xhat_blocks: Vec<Option<&mut [f32]>> = match xhat {
        Some(x) => x.chunks_mut(block).map(Some).collect(),
        None => Vec::new(),
    };
    let mut rstd_blocks: Vec<Option<&mut [f32]>> = match rstd {
        Some(r) => r.chunks_mut(ROWS).map(Some).collect(),
        None => Vec::new(),
    };
    let blocks = out.len().div_ceil(block);
    xhat_blocks.resize_with(blocks, || None);
    rstd_blocks.resize_with(blocks, || None);
    out.par_chunks_mut(block)
        .zip(xhat_blocks)
        .zip(rstd_blocks)
        .enumerate()
        .for_each(|(i, ((o, xh), rs))| {
            let rows = i * block..i * block + o.len();
            forward_rows(
                isa,
                &x[rows.clone()],
                residual.map(|r| &r[rows.clone()]),
                gamma,
                beta,
                eps,
                o,
                xh,
                rs,
            );
        });
}

multiversion! {
    fn backward_rows(
        xhat: &[f32],
        rstd: &[f32],
        gamma: &[f32],
        grad: &mut [f32],
        scratch: &mut [f32],
        dgamma: Option<&mut [f32]>,
        dbeta: Option<&mut [f32]>,
    ) {
        let (mut dgamma, mut dbeta) = (dgamma, dbeta);
        let width = gamma.len();
        for (r, g) in grad.chunks_exact_mut(width).enumerate() {
            let xh = &xhat[r * width..(r + 1) * width];
            if let Some(dg) = dgamma.as_deref_mut() {
                for ((d, &gv), &h) in dg.iter_mut().zip(g.iter()).zip(xh) {
                    *d = gv.mul_add(h, *d);
                }
            }
            if let Some(db) = dbeta.as_deref_mut() {
                for (d, &gv) in db.iter_mut().zip(g.iter()) {
                    *d += gv;
                }
            }
            for ((s, &gv), &w) in scratch.iter_mut().zip(g.iter()).zip(gamma) {
                *s = gv * w;
            }
            let c1 = sum(scratch) / width as f32;
            let c2 = dot(scratch, xh) / width as f32;
            let inv = rstd[r];
            for ((gv, &s), &h) in g.iter_mut().zip(scratch.iter()).zip(xh) {
                *gv = (s - c1 - h * c2) * inv;
            }
        }
    }
}

/// Gradients of [`forward`]: `grad` (`dy`) becomes `dx` in place; returns `(dγ, dβ)` when asked.
pub(crate) fn backward(
    xhat: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    grad: &mut [f32],
    want_gamma: bool,
    want_beta: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let isa = Isa::detected();
    let width = gamma.len();
    let block = ROWS * width;
    let partials: Vec<Partial> = grad
        .par_chunks_mut(block)
        .enumerate()
        .map(|(i, g)| {
            let rows = i * ROWS..i * ROWS + g.len() / width;
            let mut dg = want_gamma.then(|| vec![0f32; width]);
            let mut db = want_beta.then(|| vec![0f32; width]);
            let mut scratch = vec![0f32; width];
            backward_rows(
                isa,
                &xhat[rows.start * width..rows.end * width],
                &rstd[rows],
                gamma,
                g,
                &mut scratch,
                dg.as_deref_mut(),
                db.as_deref_mut(),
            );
            (dg, db)
        })
        .collect();
    let total = |pick: fn(&Partial) -> Option<&Vec<f32>>| {
        let mut acc: Option<Vec<f32>> = None;
        for p in partials.iter().filter_map(pick) {
            match &mut acc {
                Some(a) => a.iter_mut().zip(p).for_each(|(a, v)| *a += v),
                None => acc = Some(p.clone()),
            }
        }
        acc
    };
    (total(|p| p.0.as_ref()), total(|p| p.1.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (((i + seed) * 2_654_435_761 % 10_007) as f32 / 10_007.0 - 0.5) * 8.0)
            .collect()
    }

    /// LayerNorm(x + r) and its gradients against f64 closed forms, whole tensors, scale-relative.
    #[test]
    fn forward_and_backward_against_f64() {
        let (rows, width) = (150, 37);
        let x = data(rows * width, 1);
        let r = data(rows * width, 2);
        let gamma = data(width, 3);
        let beta = data(width, 4);
        let dy = data(rows * width, 5);
        let eps = 1e-5;
        let mut out = vec![0f32; rows * width];
        let mut xhat = vec![0f32; rows * width];
        let mut rstd = vec![0f32; rows];
        forward(
            &x,
            Some(&r),
            &gamma,
            Some(&beta),
            eps,
            &mut out,
            Some(NormSaved {
                xhat: &mut xhat,
                rstd: &mut rstd,
            }),
        );
        let mut dx = dy.clone();
        let (dg, db) = backward(&xhat, &rstd, &gamma, &mut dx, true, true);
        let (dg, db) = (dg.unwrap(), db.unwrap());

        let mut want_dg = vec![0f64; width];
        let mut want_db = vec![0f64; width];
        let (mut err_y, mut err_dx) = (0f64, 0f64);
        for row in 0..rows {
            let s: Vec<f64> = (0..width)
                .map(|c| x[row * width + c] as f64 + r[row * width + c] as f64)
                .collect();
            let mean = s.iter().sum::<f64>() / width as f64;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            let h: Vec<f64> = s.iter().map(|v| (v - mean) * inv).collect();
            let g: Vec<f64> = (0..width).map(|c| dy[row * width + c] as f64).collect();
            let dh: Vec<f64> = (0..width).map(|c| g[c] * gamma[c] as f64).collect();
            let c1 = dh.iter().sum::<f64>() / width as f64;
            let c2 = dh.iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() / width as f64;
            for c in 0..width {
                let y = h[c] * gamma[c] as f64 + beta[c] as f64;
                err_y = err_y.max((out[row * width + c] as f64 - y).abs());
                let d = (dh[c] - c1 - h[c] * c2) * inv;
                err_dx = err_dx.max((dx[row * width + c] as f64 - d).abs());
                want_dg[c] += g[c] * h[c];
                want_db[c] += g[c];
            }
        }
        assert!(err_y < 1e-5, "y {err_y:e}");
        assert!(err_dx < 1e-4, "dx {err_dx:e}");
        for c in 0..width {
            assert!((dg[c] as f64 - want_dg[c]).abs() < 1e-4 * rows as f64);
            assert!((db[c] as f64 - want_db[c]).abs() < 1e-4 * rows as f64);
        }
    }

    #[test]
    fn vector_rows_equal_scalar_rows() {
        let (rows, width) = (9, 384);
        let x = data(rows * width, 7);
        let gamma = data(width, 8);
        let run = |isa: Isa| {
            let mut out = vec![0f32; rows * width];
            let mut xh = vec![0f32; rows * width];
            let mut rs = vec![0f32; rows];
            forward_rows(
                isa,
                &x,
                None,
                &gamma,
                None,
                1e-12,
                &mut out,
                Some(&mut xh),
                Some(&mut rs),
            );
            let mut g = x.clone();
            let mut scratch = vec![0f32; width];
            let mut dg = vec![0f32; width];
            backward_rows(
                isa,
                &xh,
                &rs,
                &gamma,
                &mut g,
                &mut scratch,
                Some(&mut dg),
                None,
            );
            (out, g, dg)
        };
        assert_eq!(run(Isa::Scalar), run(Isa::detected()));
    }
}
