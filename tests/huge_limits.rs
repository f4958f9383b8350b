//! The safe API at the huge limit, seen from the system allocator: a request of exactly
//! `MAX_ALLOC_HUGE_SIZE` bytes is tried (the system refuses a block that size, and the caller
//! gets `AllocError`), one byte more is refused before the system is asked. A refused grow
//! leaves the old allocation as it was. The same for `palloc_aligned`, whose padding counts
//! towards the limit.
//!
//! The blocks of the release build come from the global allocator, so this file's global
//! allocator records the largest request it sees. (The debug build may take a chunk of its own
//! from a guard-page mapping instead, so the file is for the release build.) One test only: the
//! record is process-wide.
#![cfg(not(feature = "debug-contexts"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use allocator_api2::alloc::{AllocError, Allocator};
use memctx::{palloc_aligned, AllocFlags, BlockSizes, MemoryContext, MAX_ALLOC_HUGE_SIZE};

/// The system allocator, recording the largest size asked of it since the last [`largest`].
struct Recording;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged; the recording is one atomic.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (through `alloc`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Recording = Recording;

/// The largest request since the previous call.
fn largest() -> usize {
    LARGEST.swap(0, Ordering::Relaxed)
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

#[test]
fn requests_past_the_huge_limit_never_reach_the_system() {
    let ctx = MemoryContext::top().new_child("huge", BlockSizes::DEFAULT);
    let pinned = ctx.pin();
    let _ = largest();

    assert_eq!(
        pinned.allocate(layout(MAX_ALLOC_HUGE_SIZE)),
        Err(AllocError)
    );
    assert!(
        largest() > MAX_ALLOC_HUGE_SIZE,
        "the request at the limit was not tried"
    );
    for size in [MAX_ALLOC_HUGE_SIZE + 1, isize::MAX as usize - 7] {
        assert_eq!(pinned.allocate(layout(size)), Err(AllocError), "{size}");
    }
    assert!(
        largest() < MAX_ALLOC_HUGE_SIZE,
        "a request past the limit was tried"
    );

    let p = pinned.allocate(layout(100)).unwrap().cast::<u8>();
    unsafe { p.as_ptr().write_bytes(0x3C, 100) };
    let _ = largest();
    let grown = unsafe { pinned.grow(p, layout(100), layout(MAX_ALLOC_HUGE_SIZE)) };
    assert_eq!(grown, Err(AllocError));
    assert!(
        largest() > MAX_ALLOC_HUGE_SIZE,
        "the grow to the limit was not tried"
    );
    let grown = unsafe { pinned.grow(p, layout(100), layout(MAX_ALLOC_HUGE_SIZE + 1)) };
    assert_eq!(grown, Err(AllocError));
    assert!(
        largest() < MAX_ALLOC_HUGE_SIZE,
        "a grow past the limit was tried"
    );
    // Refused grows leave the allocation where and as it was.
    assert_eq!(unsafe { memctx::chunk_context(p.as_ptr()) }, ctx);
    let kept = unsafe { std::slice::from_raw_parts(p.as_ptr(), 100) };
    assert!(kept.iter().all(|&b| b == 0x3C));
    unsafe { pinned.deallocate(NonNull::from(&kept[0]).cast(), layout(100)) };
    drop(pinned);
    aligned_requests_padded_past_the_limit_never_reach_the_system(ctx);
    ctx.delete();
}

/// `palloc_aligned` pads a request above 16-byte alignment by the alignment and a chunk prefix
/// (8 bytes in the release build): padded to exactly the huge limit it is tried, one byte more
/// and the padding is refused before the system is asked (null with `NO_OOM`, never an
/// allocation past the limit).
fn aligned_requests_padded_past_the_limit_never_reach_the_system(ctx: MemoryContext) {
    let _g = ctx.switch_to();
    let flags = AllocFlags::HUGE | AllocFlags::NO_OOM;
    let at_limit = MAX_ALLOC_HUGE_SIZE - 64 - 8;
    let _ = largest();
    assert!(palloc_aligned(at_limit, 64, flags).is_null());
    assert!(
        largest() > MAX_ALLOC_HUGE_SIZE,
        "the aligned request padded to the limit was not tried"
    );
    for size in [at_limit + 1, MAX_ALLOC_HUGE_SIZE] {
        assert!(palloc_aligned(size, 64, flags).is_null(), "{size}");
    }
    assert!(
        largest() < MAX_ALLOC_HUGE_SIZE,
        "an aligned request padded past the limit was tried"
    );
}
