//! How many times each fused CPU kernel ran in this process: a test reads these to tell that a
//! backend really took the fast path (a silent fallback to the composed ops would leave them at
//! zero). One relaxed atomic add per op call.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fused CPU kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// GEMM + bias.
    Linear,
    /// The linear's gradients.
    LinearBackward,
    /// Exact GELU.
    Gelu,
    /// GELU's gradient.
    GeluBackward,
    /// Dropout (forward or backward: the same mask).
    Dropout,
    /// The attention core.
    Attention,
    /// The attention core's gradients.
    AttentionBackward,
    /// Residual add + LayerNorm.
    LayerNorm,
    /// LayerNorm's gradients.
    LayerNormBackward,
    /// Per-token dot products with a few rows (AdapterFusion's scores).
    Dots,
    /// Per-token weighted sums of a few rows (AdapterFusion's mixture).
    Mix,
    /// Per-token outer products (the gradients of both).
    Outer,
}

const KERNELS: usize = 12;

static CALLS: [AtomicU64; KERNELS] = [const { AtomicU64::new(0) }; KERNELS];

pub(crate) fn count(kernel: Kernel) {
    CALLS[kernel as usize].fetch_add(1, Ordering::Relaxed);
}

/// Calls of `kernel` in this process so far.
pub fn calls(kernel: Kernel) -> u64 {
    CALLS[kernel as usize].load(Ordering::Relaxed)
}
