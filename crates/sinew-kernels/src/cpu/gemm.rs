//! Matrix products on strided f32 views through the `gemm` crate (the GEMM flex uses): one call
//! per product, multi-threaded for the model's large products, single-threaded inside the
//! attention's per-(batch, head) tasks, which are themselves parallel.

/// A strided matrix view: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A strided mutable destination.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

impl MatMut {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &mut [f32], cols: usize) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
}

/// `dst[m×n] = (dst if accumulate) + scale · a[m×k] · b[k×n]`.
///
/// # Safety
/// Every view must be valid for its `m×k`, `k×n`, `m×n` elements, and `dst` must not alias `a`
/// or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m as isize {
                for j in 0..n as isize {
                    // SAFETY: inside the m×n destination.
                    unsafe { *dst.ptr.offset(i * dst.rs + j * dst.cs) = 0.0 };
                }
            }
        }
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller. gemm computes dst := alpha·dst + beta·a·b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transposed and strided views against a triple loop in f64.
    #[test]
    fn strided_products_against_loops() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 / 7.0 - 1.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 / 5.0 - 1.2).collect(); // [n, k]
        let mut c = vec![1f32; m * n];
        // c = c + 0.5 · a · btᵀ
        unsafe {
            matmul(
                m,
                n,
                k,
                MatMut::rows(&mut c, n),
                Mat::rows(&a, k),
                Mat::rows(&bt, k).t(),
                0.5,
                true,
                true,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 1.0
                    + 0.5
                        * (0..k)
                            .map(|p| a[i * k + p] as f64 * bt[j * k + p] as f64)
                            .sum::<f64>();
                assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "{i},{j}");
            }
        }
    }
}
