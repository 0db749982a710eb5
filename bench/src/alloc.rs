//! A counting global allocator (cargo feature `count-alloc`).
//!
//! It wraps [`std::alloc::System`] and, once [`enable`]d, counts with atomics:
//! the live heap in bytes (current and peak) and the number of allocations
//! (`alloc`, `alloc_zeroed` and `realloc` each count one). Only the memory
//! workloads (W5, W6, W9, W10 pending) enable it, so the speed workloads pay
//! one relaxed load per allocation and nothing else.
//!
//! Without the feature the allocator is not installed and [`snapshot`]
//! returns `None`, which the report shows as "n/a".

use std::sync::atomic::AtomicBool;
#[cfg(feature = "count-alloc")]
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

static ENABLED: AtomicBool = AtomicBool::new(false);
#[cfg(feature = "count-alloc")]
static LIVE: AtomicI64 = AtomicI64::new(0);
#[cfg(feature = "count-alloc")]
static PEAK: AtomicI64 = AtomicI64::new(0);
#[cfg(feature = "count-alloc")]
static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// The counters at one moment. `live` and `peak` are signed: memory
/// allocated before counting was enabled and freed after makes them drift
/// below zero, so only differences between snapshots mean anything.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Bytes allocated and not yet freed since counting began.
    pub live: i64,
    /// The highest `live` since the last [`reset_peak`].
    pub peak: i64,
    /// Allocations made since counting began.
    pub allocs: u64,
}

/// Starts counting. Call it before building the runtime.
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The current counters, or `None` when the feature is off or counting was
/// never enabled in this process.
pub fn snapshot() -> Option<Snapshot> {
    #[cfg(feature = "count-alloc")]
    {
        if ENABLED.load(Relaxed) {
            return Some(Snapshot {
                live: LIVE.load(Relaxed),
                peak: PEAK.load(Relaxed),
                allocs: ALLOCS.load(Relaxed),
            });
        }
    }
    None
}

/// Restarts peak tracking from the current live heap.
pub fn reset_peak() {
    #[cfg(feature = "count-alloc")]
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// The allocator installed by `main.rs` under the `count-alloc` feature.
#[cfg(feature = "count-alloc")]
#[derive(Debug)]
pub struct Counting;

#[cfg(feature = "count-alloc")]
fn grew(bytes: usize) {
    let bytes = bytes as i64;
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

#[cfg(feature = "count-alloc")]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only atomics and never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as for `alloc`; `ptr` came from this allocator, i.e. from `System`.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        if ENABLED.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`.
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
            grew(new_size);
        }
        p
    }
}
