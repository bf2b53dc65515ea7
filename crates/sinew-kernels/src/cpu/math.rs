//! Branch-free `erf` and `exp` for f32 that vectorise: every step is a multiply-add, a min/max,
//! a floor or an integer shift, so a loop over them becomes one vector instruction stream.
//! `mul_add` is fused on every path (the instruction with FMA, libm's exact `fmaf` without), so
//! the plain and the vector versions give the same bits.

/// `erf(x)`: the rational approximation XLA and Eigen use (odd degree-13 numerator, even degree-8
/// denominator), with `x` clamped to ±4 where `erf` is ±1 to f32 precision. Max relative error
/// ≈ 4e-7 (tested against f64).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp_fast(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    p *= x;
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329_2e-3);
    q = x2.mul_add(q, -1.426_473_9e-2);
    p / q
}

/// `exp(x)` for `x ≤ 88` (Cephes `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`, then
/// `2^n` through the exponent bits). Inputs below −87.3 give `exp(−87.3)` ≈ 1.2e-38 instead of a
/// subnormal. Max relative error ≈ 1.2e-7 (tested against f64).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp_fast(-87.3, 88.3);
    let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let r2 = r * r;
    let mut y = r.mul_add(1.987_569_1e-4, 1.398_199_9e-3);
    y = r.mul_add(y, 8.333_452e-3);
    y = r.mul_add(y, 4.166_579_6e-2);
    y = r.mul_add(y, 1.666_666_5e-1);
    y = r.mul_add(y, 0.5);
    y = r2.mul_add(y, r) + 1.0;
    // `n` is a whole number in [−126, 127] after the clamp: the conversion is exact, and the
    // unchecked one vectorises (`as` saturates, which it does not).
    // SAFETY: finite and in i32's range.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    y * scale
}

/// `1/√(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact (erf) GELU: `x·Φ(x)`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    x * cdf
}

/// `d GELU/dx = Φ(x) + x·φ(x)`.
#[inline(always)]
pub(crate) fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
    x.mul_add(pdf, cdf)
}

/// `min(max(x, lo), hi)` without `f32::clamp`'s assertion and NaN branch (a NaN input stays NaN
/// through the arithmetic that follows: `max`/`min` return the other operand, so it becomes a bound;
/// the callers never see NaN from finite inputs).
trait ClampFast {
    fn clamp_fast(self, lo: f32, hi: f32) -> f32;
}

impl ClampFast for f32 {
    #[inline(always)]
    fn clamp_fast(self, lo: f32, hi: f32) -> f32 {
        self.max(lo).min(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf from its Maclaurin series for |x| < 3 and its continued fraction tail beyond, in f64.
    fn erf64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..120 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = exp(-x²)/(x√π) · 1/(1 + 1/(2x²)/(1 + 2/(2x²)/(1 + …))), Lentz-free backwards.
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-12_000..=12_000).map(|i| i as f32 / 1000.0)
    }

    #[test]
    fn erf_is_within_f32_rounding_of_f64() {
        let mut worst = 0f64;
        for x in grid() {
            let want = erf64(x as f64);
            let got = erf(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst < 1e-6, "max relative error {worst:e}");
    }

    #[test]
    fn exp_is_within_f32_rounding_of_f64() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max((exp(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 1.3e-38 && exp(-1e4) >= 0.0);
    }

    /// GELU and its derivative against the f64 closed forms, scale-relative.
    #[test]
    fn gelu_and_derivative_against_f64() {
        let (mut worst_y, mut worst_d) = (0f64, 0f64);
        for x in grid() {
            let x64 = x as f64;
            let cdf = 0.5 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            let pdf = (-x64 * x64 / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst_y = worst_y.max((gelu(x) as f64 - x64 * cdf).abs() / x64.abs().max(1.0));
            worst_d = worst_d.max((gelu_derivative(x) as f64 - (cdf + x64 * pdf)).abs());
        }
        assert!(worst_y < 1e-6, "gelu {worst_y:e}");
        assert!(worst_d < 1e-6, "gelu' {worst_d:e}");
    }
}
