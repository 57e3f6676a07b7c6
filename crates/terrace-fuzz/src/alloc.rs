//! A counting global allocator: how many bytes one input made its target
//! allocate.
//!
//! The binary and the replay test each install [`Counting`] as their
//! `#[global_allocator]`; [`measure`] then counts, on the calling thread
//! only, every byte requested while its closure runs. A `realloc` counts as
//! a fresh allocation of the new size (it may copy everything), so a buffer
//! that doubles its way to `n` bytes counts about `2n`, and work that copies
//! a buffer once per line counts the copies.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting on threads inside [`measure`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

/// What one measured run allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every byte requested (allocations and the new size of reallocations).
    pub allocated: usize,
    /// The most bytes the run held at once beyond what it started with.
    pub peak: usize,
    /// How many allocations and reallocations it made.
    pub calls: usize,
}

struct Counters {
    on: Cell<bool>,
    allocated: Cell<usize>,
    live: Cell<isize>,
    peak: Cell<isize>,
    calls: Cell<usize>,
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static COUNTERS: Counters = const {
        Counters {
            on: Cell::new(false),
            allocated: Cell::new(0),
            live: Cell::new(0),
            peak: Cell::new(0),
            calls: Cell::new(0),
        }
    };
}

fn record(grow: usize, shrink: usize) {
    let _ = COUNTERS.try_with(|c| {
        if c.on.get() {
            if grow > 0 {
                c.allocated.set(c.allocated.get().saturating_add(grow));
                c.calls.set(c.calls.get() + 1);
            }
            let live = c.live.get() + grow as isize - shrink as isize;
            c.live.set(live);
            if live > c.peak.get() {
                c.peak.set(live);
            }
        }
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counting
// touches only a const-initialised thread local of `Cell`s, which neither
// allocates nor can be reached re-entrantly.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f`, catching a panic, and counts what it allocated on this thread.
pub fn measure<R>(f: impl FnOnce() -> R) -> (std::thread::Result<R>, Usage) {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            let _ = COUNTERS.try_with(|c| c.on.set(false));
        }
    }
    let _ = COUNTERS.try_with(|c| {
        c.allocated.set(0);
        c.live.set(0);
        c.peak.set(0);
        c.calls.set(0);
        c.on.set(true);
    });
    let result = {
        let _off = Off;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    };
    let usage = COUNTERS
        .try_with(|c| Usage {
            allocated: c.allocated.get(),
            peak: c.peak.get().max(0) as usize,
            calls: c.calls.get(),
        })
        .unwrap_or_default();
    (result, usage)
}

/// Stops counting until the guard is dropped: for what a harness does
/// around its target (cutting a body into chunks, signing a token), which
/// the target's bound is not about.
pub fn paused() -> impl Drop {
    struct Resume(bool);
    impl Drop for Resume {
        fn drop(&mut self) {
            let was = self.0;
            let _ = COUNTERS.try_with(|c| c.on.set(was));
        }
    }
    let was = COUNTERS.try_with(|c| c.on.replace(false)).unwrap_or(false);
    Resume(was)
}

/// Whether [`Counting`] is this program's allocator: a check without it
/// would pass every bound vacuously.
pub fn installed() -> bool {
    let (_, usage) = measure(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    usage.allocated >= 64
}
