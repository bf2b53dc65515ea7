//! The model's matrix products on two well-kept GEMM crates: `gemm` (what flex and sinew's fused
//! linear use) and `matrixmultiply` (what ndarray uses), both multi-threaded, at
//! all-MiniLM-L6-v2's shapes for the training step (4096 rows: 32 × 128 tokens) and inference
//! (8192 rows). `x·W` is the forward of a projection, `g·Wᵀ` its input gradient. Which of their
//! AVX-512 kernels are compiled in is a cargo feature of each crate (`gemm/x86-v4`,
//! `matrixmultiply/avx512`): BENCHMARKS.md has this bench with them off and on.
//!
//! `cargo bench --bench gemm` — groups `gemm_<rows>x<in>x<out>_<x·W|g·Wᵀ>`, functions
//! `gemm` and `matrixmultiply`; GFLOP/s are 2·rows·in·out / time.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// `c[m×n] = a[m×k] · b`, where `b` is `[k×n]` row-major, or `[n×k]` read transposed.
fn with_gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], transposed: bool, c: &mut [f32]) {
    let (rs, cs) = if transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the slices hold m·k, k·n and m·n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            cs,
            rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

fn with_matrixmultiply(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    transposed: bool,
    c: &mut [f32],
) {
    let (rs, cs) = if transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: as above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            rs,
            cs,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

fn benches(c: &mut Criterion) {
    for rows in [4096usize, 8192] {
        for (k, n) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
            for transposed in [false, true] {
                let a = values(rows * k, 1);
                let b = values(k * n, 2);
                let mut out = vec![0f32; rows * n];
                let name = if transposed { "g·Wᵀ" } else { "x·W" };
                let mut group = c.benchmark_group(format!("gemm_{rows}x{k}x{n}_{name}"));
                group.throughput(Throughput::Elements((2 * rows * k * n) as u64));
                group.sample_size(20);
                group.measurement_time(std::time::Duration::from_secs(3));
                group.bench_function("gemm", |bench| {
                    bench.iter(|| with_gemm(rows, k, n, &a, &b, transposed, &mut out))
                });
                group.bench_function("matrixmultiply", |bench| {
                    bench.iter(|| with_matrixmultiply(rows, k, n, &a, &b, transposed, &mut out))
                });
                group.finish();
            }
        }
    }
}

criterion_group!(gemm_shapes, benches);
criterion_main!(gemm_shapes);
