//! The attention core, `softmax(scale·QKᵀ + mask)·V` with dropout on the probabilities, one task
//! per (batch, head), forward and backward. The key mask stays `[batch, keys]` (a masked key gets
//! probability 0 exactly; a row with no key left is uniform, as adding `f32::MIN` everywhere gives).
//! The output is written with the heads already merged, `[batch, queries, heads·dv]`, so the
//! caller's `swap_dims(1, 2).reshape(…)` is not needed. The forward keeps the probabilities (before
//! dropout) for the backward only when asked; the dropout mask is a hash of the key and the
//! probability's index, recomputed in the backward.

use std::cell::RefCell;

use rayon::prelude::*;

use super::elementwise::DropoutKey;
use super::gemm::{matmul, Mat, MatMut};
use super::math;
use super::simd::{dot, max, multiversion, sum, Isa};

/// A `[batch, heads, seq, dim]` view with element strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub ptr: *const f32,
    pub shape: [usize; 4],
    pub strides: [isize; 4],
}

/// A writable `[batch, heads, seq, dim]` view with element strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadsMut {
    pub ptr: *mut f32,
    pub strides: [isize; 4],
}

// SAFETY: the views are read (or, for `HeadsMut`, written at disjoint (batch, head) blocks) by the
// tasks of one call, which ends before the buffers behind them are released.
unsafe impl Send for Heads {}
unsafe impl Sync for Heads {}
unsafe impl Send for HeadsMut {}
unsafe impl Sync for HeadsMut {}

impl Heads {
    /// The `[seq, dim]` matrix of (batch `b`, head `h`).
    fn mat(&self, b: usize, h: usize) -> Mat {
        Mat {
            // SAFETY: inside the view.
            ptr: unsafe {
                self.ptr
                    .offset(b as isize * self.strides[0] + h as isize * self.strides[1])
            },
            rs: self.strides[2],
            cs: self.strides[3],
        }
    }
}

impl HeadsMut {
    fn mat(&self, b: usize, h: usize) -> MatMut {
        MatMut {
            // SAFETY: inside the view.
            ptr: unsafe {
                self.ptr
                    .offset(b as isize * self.strides[0] + h as isize * self.strides[1])
            },
            rs: self.strides[2],
            cs: self.strides[3],
        }
    }
}

/// One attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attention<'a> {
    pub q: Heads,
    pub k: Heads,
    pub v: Heads,
    /// `[batch, keys]`: nonzero where a key may be attended to.
    pub keep: &'a [f32],
    pub scale: f32,
    pub dropout: Option<DropoutKey>,
}

impl Attention<'_> {
    fn dims(&self) -> (usize, usize, usize, usize, usize, usize) {
        let [b, h, sq, d] = self.q.shape;
        (b, h, sq, self.k.shape[2], d, self.v.shape[3])
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a thread-local scratch buffer of `len` elements (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

multiversion! {
    /// Scores → probabilities in place, row by row (`keep` per key). Each pass is a separate
    /// loop so that each vectorises: the max and the sum reduce over 16 lanes.
    fn softmax_rows(scores: &mut [f32], keep: &[f32]) {
        let keys = keep.len();
        let kept = keep.iter().filter(|&&k| k != 0.0).count();
        for row in scores.chunks_exact_mut(keys) {
            if kept == 0 {
                row.fill(1.0 / keys as f32);
                continue;
            }
            for (s, &k) in row.iter_mut().zip(keep) {
                *s = if k != 0.0 { *s } else { f32::NEG_INFINITY };
            }
            let m = max(row);
            for s in row.iter_mut() {
                // exp(−∞) is clamped to ~1e-38 by `math::exp`: masked keys are zeroed below.
                *s = math::exp(*s - m);
            }
            for (s, &k) in row.iter_mut().zip(keep) {
                *s = if k != 0.0 { *s } else { 0.0 };
            }
            let inv = 1.0 / sum(row);
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    }
}

multiversion! {
    /// `p *= dropout factor` for the probabilities starting at flat index `first`.
    fn apply_dropout(key: DropoutKey, first: u64, p: &mut [f32]) {
        for (i, v) in p.iter_mut().enumerate() {
            *v *= key.factor(first + i as u64);
        }
    }
}

multiversion! {
    /// `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, in place over `dp`.
    fn softmax_backward_rows(p: &[f32], dp: &mut [f32], keys: usize, scale: f32) {
        for (pr, dr) in p.chunks_exact(keys).zip(dp.chunks_exact_mut(keys)) {
            let c = dot(pr, dr);
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = pv * (*d - c) * scale;
            }
        }
    }
}

/// The forward: `out` is `[batch, queries, heads·dv]` (row-major); `probs`, when given, receives
/// the probabilities before dropout, `[batch, heads, queries, keys]`.
pub(crate) fn forward(a: &Attention<'_>, out: &mut [f32], probs: Option<&mut [f32]>) {
    let (batch, heads, sq, sk, _, dv) = a.dims();
    let isa = Isa::detected();
    let width = heads * dv;
    let out = HeadsMut {
        ptr: out.as_mut_ptr(),
        strides: [(sq * width) as isize, dv as isize, width as isize, 1],
    };
    let probs = probs.map(|p| HeadsMut {
        ptr: p.as_mut_ptr(),
        strides: [
            (heads * sq * sk) as isize,
            (sq * sk) as isize,
            sk as isize,
            1,
        ],
    });
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let keep = &a.keep[b * sk..(b + 1) * sk];
        with_scratch(sq * sk, |p| {
            // SAFETY: the views cover [sq, d], [sk, d], [sk, dv]; `p` is this thread's scratch.
            unsafe {
                matmul(
                    sq,
                    sk,
                    a.q.shape[3],
                    MatMut::rows(p, sk),
                    a.q.mat(b, h),
                    a.k.mat(b, h).t(),
                    a.scale,
                    false,
                    false,
                );
            }
            softmax_rows(isa, p, keep);
            if let Some(saved) = probs {
                let dst = saved.mat(b, h).ptr;
                // SAFETY: this task's own [sq, sk] block of the saved probabilities.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), dst, sq * sk) };
            }
            if let Some(key) = a.dropout {
                apply_dropout(isa, key, (task * sq * sk) as u64, p);
            }
            // SAFETY: this task's own (b, h) block of `out`.
            unsafe {
                matmul(
                    sq,
                    dv,
                    sk,
                    out.mat(b, h),
                    Mat::rows(p, sk),
                    a.v.mat(b, h),
                    1.0,
                    false,
                    false,
                );
            }
        });
    });
}

/// Where the backward writes each gradient (`None`: not wanted).
pub(crate) struct Grads {
    pub q: Option<HeadsMut>,
    pub k: Option<HeadsMut>,
    pub v: Option<HeadsMut>,
}

/// The backward of [`forward`]: `probs` as the forward saved them, `grad` the output's gradient as
/// a `[batch, heads, queries, dv]` view.
pub(crate) fn backward(a: &Attention<'_>, probs: &[f32], grad: Heads, out: Grads) {
    let (batch, heads, sq, sk, d, dv) = a.dims();
    let isa = Isa::detected();
    let want_scores = out.q.is_some() || out.k.is_some();
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let p = &probs[task * sq * sk..(task + 1) * sq * sk];
        let g = grad.mat(b, h);
        with_scratch(2 * sq * sk, |scratch| {
            let (pd, ds) = scratch.split_at_mut(sq * sk);
            // The probabilities as the forward used them (after dropout).
            let pd: &[f32] = match a.dropout {
                Some(key) => {
                    pd.copy_from_slice(p);
                    apply_dropout(isa, key, (task * sq * sk) as u64, pd);
                    pd
                }
                None => p,
            };
            if let Some(dvv) = &out.v {
                // SAFETY: this task's own (b, h) block of dV; views as in the forward.
                unsafe {
                    matmul(
                        sk,
                        dv,
                        sq,
                        dvv.mat(b, h),
                        Mat::rows(pd, sk).t(),
                        g,
                        1.0,
                        false,
                        false,
                    )
                };
            }
            if !want_scores {
                return;
            }
            // SAFETY: `ds` is this thread's scratch.
            unsafe {
                matmul(
                    sq,
                    sk,
                    dv,
                    MatMut::rows(ds, sk),
                    g,
                    a.v.mat(b, h).t(),
                    1.0,
                    false,
                    false,
                )
            };
            if let Some(key) = a.dropout {
                apply_dropout(isa, key, (task * sq * sk) as u64, ds);
            }
            softmax_backward_rows(isa, p, ds, sk, a.scale);
            if let Some(dq) = &out.q {
                // SAFETY: this task's own (b, h) block of dQ.
                unsafe {
                    matmul(
                        sq,
                        d,
                        sk,
                        dq.mat(b, h),
                        Mat::rows(ds, sk),
                        a.k.mat(b, h),
                        1.0,
                        false,
                        false,
                    )
                };
            }
            if let Some(dk) = &out.k {
                // SAFETY: this task's own (b, h) block of dK.
                unsafe {
                    matmul(
                        sk,
                        d,
                        sq,
                        dk.mat(b, h),
                        Mat::rows(ds, sk).t(),
                        a.q.mat(b, h),
                        1.0,
                        false,
                        false,
                    )
                };
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (((i + seed) * 2_654_435_761 % 10_007) as f32 / 10_007.0 - 0.5) * 3.0)
            .collect()
    }

    fn contiguous(ptr: *const f32, shape: [usize; 4]) -> Heads {
        let [_, h, s, d] = shape;
        Heads {
            ptr,
            shape,
            strides: [(h * s * d) as isize, (s * d) as isize, d as isize, 1],
        }
    }

    /// The forward against softmax(scale·QKᵀ + mask)·V in f64, with masked keys, a row with one
    /// real key and one with none.
    #[test]
    fn forward_against_f64() {
        let (b, h, sq, sk, d) = (3, 2, 5, 6, 4);
        let q = data(b * h * sq * d, 1);
        let k = data(b * h * sk * d, 2);
        let v = data(b * h * sk * d, 3);
        let mut keep = vec![1f32; b * sk];
        keep[4] = 0.0;
        keep[5] = 0.0; // batch 0: 4 real keys
        for j in 1..sk {
            keep[sk + j] = 0.0; // batch 1: one real key
        }
        for j in 0..sk {
            keep[2 * sk + j] = 0.0; // batch 2: none
        }
        let a = Attention {
            q: contiguous(q.as_ptr(), [b, h, sq, d]),
            k: contiguous(k.as_ptr(), [b, h, sk, d]),
            v: contiguous(v.as_ptr(), [b, h, sk, d]),
            keep: &keep,
            scale: 0.5,
            dropout: None,
        };
        let mut out = vec![0f32; b * sq * h * d];
        forward(&a, &mut out, None);
        for bi in 0..b {
            for hi in 0..h {
                let at = |t: &[f32], s: usize, len: usize, i: usize, c: usize| {
                    t[((bi * h + hi) * len + i) * s + c] as f64
                };
                for i in 0..sq {
                    let scores: Vec<f64> = (0..sk)
                        .map(|j| {
                            let dotp: f64 = (0..d)
                                .map(|c| at(&q, d, sq, i, c) * at(&k, d, sk, j, c))
                                .sum();
                            0.5 * dotp
                                + if keep[bi * sk + j] == 0.0 {
                                    f32::MIN as f64
                                } else {
                                    0.0
                                }
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..sk).map(|j| e[j] / z * at(&v, d, sk, j, c)).sum();
                        let got = out[(bi * sq + i) * h * d + hi * d + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{bi} h{hi} i{i} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vector_softmax_equals_scalar() {
        let keep: Vec<f32> = (0..130).map(|j| (j % 7 != 3) as u8 as f32).collect();
        let s = data(130 * 9, 4);
        let run = |isa| {
            let mut p = s.clone();
            softmax_rows(isa, &mut p, &keep);
            let mut ds = data(130 * 9, 5);
            softmax_backward_rows(isa, &p, &mut ds, 130, 0.3);
            (p, ds)
        };
        assert_eq!(run(Isa::Scalar), run(Isa::detected()));
    }
}
