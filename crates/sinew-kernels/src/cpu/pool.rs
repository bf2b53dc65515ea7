//! Reused output buffers. A training step or a forward pass allocates the same large
//! activations every time; from the system allocator each one is fresh `mmap`ed memory whose pages
//! fault in on first touch (hundreds of thousands of minor faults per step). The fused ops take
//! their outputs from here and, on flex, hand them to Burn in [`Bytes`] whose drop gives them back,
//! so in steady state a step reuses the buffers of the step before.
//!
//! Buffers are kept per size class (⅛-octave steps, so nearby lengths share a class), at most
//! [`limit`] bytes in all; past it the least recently returned buffers are freed. Buffers below
//! [`MIN_POOLED`] elements are left to the allocator, which serves small sizes without faults.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn_std::{AllocationController, AllocationProperty, Bytes};

/// Smallest buffer (in f32 elements) worth keeping: 256 KiB.
const MIN_POOLED: usize = 1 << 16;

/// Default byte limit of what the pool keeps.
const DEFAULT_LIMIT: usize = 1 << 30;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_LIMIT);

#[derive(Default)]
struct Pool {
    /// Free buffers per class (capacity in elements), each with the stamp of its return.
    free: BTreeMap<usize, Vec<(u64, Vec<f32>)>>,
    bytes: usize,
    stamp: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: BTreeMap::new(),
    bytes: 0,
    stamp: 0,
});

/// The capacity a request of `len` elements is served with.
fn class(len: usize) -> usize {
    if len < MIN_POOLED {
        return len;
    }
    let step = 1usize << (usize::BITS - 1 - len.leading_zeros() - 3);
    len.div_ceil(step) * step
}

/// A buffer of `len` elements whose contents are unspecified (old values or zeros): callers write
/// every element before reading any.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let class = class(len);
    if len >= MIN_POOLED {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, mut buf)) = pool.free.get_mut(&class).and_then(Vec::pop) {
            pool.bytes -= class * 4;
            drop(pool);
            // SAFETY: the capacity is `class ≥ len` and every f32 bit pattern is valid; the
            // elements were written by the buffer's previous user.
            unsafe { buf.set_len(len) };
            return buf;
        }
    }
    let mut buf = vec![0f32; class];
    buf.truncate(len);
    buf
}

/// Gives a buffer back (kept if the pool has room, else freed).
pub(crate) fn give(buf: Vec<f32>) {
    let class = buf.capacity();
    if class < MIN_POOLED || class != self::class(class) {
        return;
    }
    let limit = LIMIT.load(Ordering::Relaxed);
    let bytes = class * 4;
    if bytes > limit {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut evicted = Vec::new();
    while pool.bytes + bytes > limit {
        // The least recently returned buffer of any class goes first.
        let oldest = pool
            .free
            .iter()
            .filter_map(|(&c, list)| list.first().map(|(s, _)| (*s, c)))
            .min();
        let Some((_, c)) = oldest else { break };
        let list = pool.free.get_mut(&c).expect("class listed");
        evicted.push(list.remove(0).1);
        pool.bytes -= c * 4;
    }
    pool.stamp += 1;
    let stamp = pool.stamp;
    pool.free.entry(class).or_default().push((stamp, buf));
    pool.bytes += bytes;
    drop(pool);
    drop(evicted);
}

/// Sets how many bytes of free buffers the pool may keep (default 1 GiB); 0 turns pooling off.
/// Lowering it frees what no longer fits at the next return; [`clear`] frees everything now.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The byte limit set by [`set_limit`].
pub fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Frees every buffer the pool keeps.
pub fn clear() {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.free.clear();
    pool.bytes = 0;
}

/// Bytes of free buffers the pool keeps now.
pub fn retained_bytes() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).bytes
}

/// A [`Bytes`] over `buf` whose drop gives the buffer back to the pool.
pub(crate) fn into_bytes(buf: Vec<f32>) -> Bytes {
    let len = buf.len() * 4;
    let controller = Pooled {
        buf: std::mem::ManuallyDrop::new(buf),
    };
    // SAFETY: the first `len` bytes are the vector's initialised elements.
    unsafe { Bytes::from_controller(Box::new(controller), len) }
}

/// The allocation behind pooled [`Bytes`].
struct Pooled {
    buf: std::mem::ManuallyDrop<Vec<f32>>,
}

impl AllocationController for Pooled {
    fn alloc_align(&self) -> usize {
        std::mem::align_of::<f32>()
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::Native
    }

    unsafe fn memory_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let cap = self.buf.capacity() * 4;
        // SAFETY: the vector owns `capacity` elements of memory; callers write initialised bytes only.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast(), cap) }
    }

    fn memory(&self) -> &[MaybeUninit<u8>] {
        let cap = self.buf.capacity() * 4;
        // SAFETY: as above, read-only.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), cap) }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // SAFETY: taken once, in drop.
        let buf = unsafe { std::mem::ManuallyDrop::take(&mut self.buf) };
        give(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth() {
        for len in [
            MIN_POOLED,
            MIN_POOLED + 1,
            1_572_864,
            6_291_456,
            25_165_824,
            99_999_999,
        ] {
            let c = class(len);
            assert!(c >= len && (c - len) * 8 <= len, "{len} -> {c}");
            assert_eq!(class(c), c, "a class is its own class");
        }
        assert_eq!(class(100), 100);
    }

    /// A buffer given back is the next one taken of its class; past the limit the oldest goes.
    /// (The pool is process-global: this test only uses a size no other test in this crate asks for.)
    #[test]
    fn reuse_and_eviction() {
        let len = 3 * MIN_POOLED + 7;
        let a = take(len);
        assert_eq!(a.len(), len);
        let ptr = a.as_ptr();
        give(a);
        let b = take(len);
        assert_eq!(b.as_ptr(), ptr, "the returned buffer is reused");
        let bytes = into_bytes(b);
        assert_eq!(bytes.len(), len * 4);
        drop(bytes);
        let c = take(len);
        assert_eq!(c.as_ptr(), ptr, "dropping pooled Bytes returns the buffer");
        give(c);
    }
}
