//! Element-wise kernels on f32 slices: exact GELU and its derivative, dropout from a counter-based
//! hash, bias rows and column sums. Work is split into chunks of a fixed size (never a function of
//! the thread count), so the result is the same bytes however rayon schedules them.

use rayon::prelude::*;

use super::math;
use super::simd::{multiversion, Isa};

/// Elements per parallel task: ~128 KiB of f32, enough to pay for a task.
pub(crate) const CHUNK: usize = 1 << 15;

/// Runs `f(offset, chunk)` over `CHUNK`-sized pieces of `out`, in parallel when there is more than one.
pub(crate) fn par_chunks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() <= CHUNK {
        f(0, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| f(i * CHUNK, c));
    }
}

multiversion! {
    fn gelu_chunk(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = math::gelu(v);
        }
    }
}

multiversion! {
    fn gelu_chunk_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = math::gelu(*v);
        }
    }
}

multiversion! {
    fn gelu_backward_chunk(x: &[f32], grad: &mut [f32]) {
        for (g, &v) in grad.iter_mut().zip(x) {
            *g *= math::gelu_derivative(v);
        }
    }
}

/// `out = GELU(x)`.
pub(crate) fn gelu(x: &[f32], out: &mut [f32]) {
    let isa = Isa::detected();
    par_chunks(out, |at, o| gelu_chunk(isa, &x[at..at + o.len()], o));
}

/// `x = GELU(x)`.
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    let isa = Isa::detected();
    par_chunks(x, |_, c| gelu_chunk_in_place(isa, c));
}

/// `grad *= GELU'(x)`.
pub(crate) fn gelu_backward_in_place(x: &[f32], grad: &mut [f32]) {
    let isa = Isa::detected();
    par_chunks(grad, |at, g| {
        gelu_backward_chunk(isa, &x[at..at + g.len()], g)
    });
}

/// One dropout draw: which elements of a tensor are kept is a hash of (key, element index), so a
/// backward pass regenerates the forward's mask from the key alone, whatever the thread timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutKey {
    k0: u32,
    k1: u32,
    /// An element is kept when its hash is at least this (`p·2³²`).
    threshold: u32,
    /// `1/(1−p)`, or 0 when `p ≥ 1`.
    scale: f32,
}

impl DropoutKey {
    /// The draw with probability `prob` of zeroing an element, keyed by `key`.
    pub fn new(prob: f64, key: u64) -> Self {
        let (threshold, scale) = if prob >= 1.0 {
            (u32::MAX, 0.0)
        } else {
            (
                (prob.max(0.0) * 4_294_967_296.0)
                    .round()
                    .min(u32::MAX as f64) as u32,
                (1.0 / (1.0 - prob)) as f32,
            )
        };
        Self {
            k0: key as u32,
            k1: (key >> 32) as u32,
            threshold,
            scale,
        }
    }

    /// The factor element `index` is multiplied by: `1/(1−p)` if kept, else 0.
    #[inline(always)]
    pub(crate) fn factor(&self, index: u64) -> f32 {
        let h = fmix(fmix((index as u32) ^ self.k0) ^ (index >> 32) as u32 ^ self.k1);
        if h >= self.threshold && self.scale != 0.0 {
            self.scale
        } else {
            0.0
        }
    }
}

/// MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ½.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

multiversion! {
    fn dropout_chunk(key: DropoutKey, first: u64, x: &mut [f32]) {
        for (i, v) in x.iter_mut().enumerate() {
            *v *= key.factor(first + i as u64);
        }
    }
}

/// `x *= mask/(1−p)` for the elements of a tensor starting at flat index `first`.
pub(crate) fn dropout_in_place(key: DropoutKey, first: u64, x: &mut [f32]) {
    let isa = Isa::detected();
    par_chunks(x, |at, c| dropout_chunk(isa, key, first + at as u64, c));
}

/// Every row of `out` (`width` wide) set to `row`.
pub(crate) fn fill_rows(out: &mut [f32], row: &[f32]) {
    let width = row.len();
    let rows_per_task = (CHUNK / width.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * width).for_each(|c| {
        for r in c.chunks_exact_mut(width) {
            r.copy_from_slice(row);
        }
    });
}

multiversion! {
    fn add_rows(rows: &[f32], acc: &mut [f32]) {
        let width = acc.len();
        for r in rows.chunks_exact(width) {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += v;
            }
        }
    }
}

/// Rows summed per task by [`column_sums`]: fixed, so the partial sums (and their order) are too.
const SUM_ROWS: usize = 256;

/// `Σ_rows x[row, :]` of a `[rows, width]` row-major matrix, in a fixed order.
pub(crate) fn column_sums(x: &[f32], width: usize) -> Vec<f32> {
    let isa = Isa::detected();
    let partials: Vec<Vec<f32>> = x
        .par_chunks(SUM_ROWS * width)
        .map(|c| {
            let mut acc = vec![0f32; width];
            add_rows(isa, c, &mut acc);
            acc
        })
        .collect();
    let mut total = vec![0f32; width];
    for p in &partials {
        add_rows(isa, p, &mut total);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 2_654_435_761 % 20_011) as f32 / 20_011.0 - 0.5) * 30.0)
            .collect()
    }

    /// The vector kernels give the plain kernels' bits, over several chunks and a ragged tail.
    #[test]
    fn vector_kernels_equal_the_scalar_fallback() {
        let x = inputs(3 * CHUNK + 77);
        let isa = Isa::detected();
        let run = |isa: Isa| {
            let mut y = vec![0f32; x.len()];
            gelu_chunk(isa, &x, &mut y);
            let mut g: Vec<f32> = x.iter().map(|v| v.sin()).collect();
            gelu_backward_chunk(isa, &x, &mut g);
            let mut d = x.clone();
            dropout_chunk(isa, DropoutKey::new(0.1, 99), 5, &mut d);
            let mut s = vec![0f32; 7];
            add_rows(isa, &x[..7 * 1000], &mut s);
            (y, g, d, s)
        };
        let (a, b) = (run(Isa::Scalar), run(isa));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        assert_eq!(bits(&a.2), bits(&b.2));
        assert_eq!(bits(&a.3), bits(&b.3));
    }

    /// The parallel drivers equal one sequential pass (fixed chunking, no dependence on threads).
    #[test]
    fn parallel_drivers_equal_sequential() {
        let x = inputs(5 * CHUNK + 3);
        let mut y = vec![0f32; x.len()];
        gelu(&x, &mut y);
        let mut z = x.clone();
        gelu_in_place(&mut z);
        let mut seq = vec![0f32; x.len()];
        gelu_chunk(Isa::Scalar, &x, &mut seq);
        assert_eq!(y, seq);
        assert_eq!(z, seq);
        let key = DropoutKey::new(0.25, 0xdead_beef_1234);
        let mut d = x.clone();
        dropout_in_place(key, 0, &mut d);
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v * key.factor(i as u64))
            .collect();
        assert_eq!(d, want);
    }

    /// Dropout keeps a 1−p share of the elements (binomial bounds), scales them by 1/(1−p), and
    /// different keys give different masks.
    #[test]
    fn dropout_rate_and_scale() {
        let n = 1_000_000u64;
        for p in [0.1, 0.5, 0.9] {
            let key = DropoutKey::new(p, 7);
            let kept = (0..n).filter(|&i| key.factor(i) != 0.0).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (kept - n as f64 * (1.0 - p)).abs() < 5.0 * sd,
                "p={p}: kept {kept}"
            );
            let f = (0..n).map(|i| key.factor(i)).find(|&f| f != 0.0).unwrap();
            assert!((f as f64 - 1.0 / (1.0 - p)).abs() < 1e-6);
        }
        let (a, b) = (DropoutKey::new(0.5, 1), DropoutKey::new(0.5, 2));
        let same = (0..10_000u64)
            .filter(|&i| (a.factor(i) == 0.0) == (b.factor(i) == 0.0))
            .count();
        assert!((4_500..5_500).contains(&same), "{same}");
        assert!((0..100).all(|i| DropoutKey::new(0.0, 3).factor(i) == 1.0));
        assert!((0..100).all(|i| DropoutKey::new(1.0, 3).factor(i) == 0.0));
    }

    #[test]
    fn column_sums_against_f64() {
        let width = 13;
        let x = inputs(width * 1000);
        let got = column_sums(&x, width);
        for (c, g) in got.iter().enumerate() {
            let want: f64 = x.iter().skip(c).step_by(width).map(|&v| v as f64).sum();
            assert!(
                (*g as f64 - want).abs() < 1e-4 * 1000.0,
                "{c}: {g} vs {want}"
            );
        }
        let mut rows = vec![0f32; 4 * width];
        fill_rows(&mut rows, &x[..width]);
        assert!(rows.chunks(width).all(|r| r == &x[..width]));
    }
}
