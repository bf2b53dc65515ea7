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
}

const KERNELS: usize = 9;

static CALLS: [AtomicU64; KERNELS] = [const { AtomicU64::new(0) }; KERNELS];

pub(crate) fn count(kernel: Kernel) {
    CALLS[kernel as usize].fetch_add(1, Ordering::Relaxed);
}

/// Calls of `kernel` in this process so far.
pub fn calls(kernel: Kernel) -> u64 {
    CALLS[kernel as usize].load(Ordering::Relaxed)
}
