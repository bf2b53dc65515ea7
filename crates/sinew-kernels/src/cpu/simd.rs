//! The widest instruction set this CPU has, found once at run time, and the macro that compiles
//! one kernel body three times behind it: AVX-512, AVX2 + FMA, and plain code (the fallback the
//! tests hold the vector versions to).
//!
//! The bodies are plain loops over slices with `#[inline(always)]` helpers; inside a
//! `#[target_feature]` function LLVM vectorises them for that instruction set. `mul_add` must only
//! be used where FMA is enabled or the fallback is rare: without it, it is a libm call.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set a kernel can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable code, no target features.
    Scalar,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 (F, BW, DQ, VL) with FMA.
    Avx512,
}

static DETECTED: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// The widest instruction set of this CPU (detected once).
    pub(crate) fn detected() -> Self {
        match DETECTED.load(Ordering::Relaxed) {
            1 => Self::Scalar,
            2 => Self::Avx2,
            3 => Self::Avx512,
            _ => {
                let isa = Self::detect();
                let code = match isa {
                    Self::Scalar => 1,
                    Self::Avx2 => 2,
                    Self::Avx512 => 3,
                };
                DETECTED.store(code, Ordering::Relaxed);
                isa
            }
        }
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
            {
                return Self::Avx512;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }
}

/// Defines `fn name(isa: Isa, args…)` that runs `body` compiled for `isa`. Only [`Isa::detected`]
/// and [`Isa::Scalar`] are ever passed, so the `unsafe` calls below only run instructions the CPU has.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::cpu::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match isa {
                // SAFETY: `isa` is `Isa::detected()` (or `Scalar`): the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

pub(crate) use multiversion;

/// Lanes of the multi-lane accumulators below: one AVX-512 register of f32.
const LANES: usize = 16;

/// `Σ x`, in a fixed order (16 running lanes, then the lanes and the tail in order) that vectorises.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for a in acc {
        s += a;
    }
    for &v in tail {
        s += v;
    }
    s
}

/// `Σ x·y` in the fixed order of [`sum`].
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0f32; LANES];
    let full = n - n % LANES;
    for (cx, cy) in x[..full]
        .chunks_exact(LANES)
        .zip(y[..full].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += cx[i] * cy[i];
        }
    }
    let mut s = 0.0;
    for a in acc {
        s += a;
    }
    for i in full..n {
        s += x[i] * y[i];
    }
    s
}

/// `max x` (−∞ for an empty slice) over 16 lanes.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for a in acc {
        m = m.max(a);
    }
    for &v in tail {
        m = m.max(v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        fn sum_of(x: &[f32]) -> f32 { sum(x) }
    }

    /// The reductions agree across instruction sets bit for bit (the order is fixed, not the ISA's).
    #[test]
    fn reductions_do_not_depend_on_the_instruction_set() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        let s = sum_of(Isa::Scalar, &x);
        assert_eq!(s.to_bits(), sum_of(Isa::detected(), &x).to_bits());
        assert!((s as f64 - exact).abs() <= 1e-5 * exact.abs().max(1.0));
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let d: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((dot(&x, &x) as f64 - d).abs() <= 1e-6 * d);
    }
}
