//! The debug build's reports on Slab chunks (`src/kinds/slab.rs`): a Slab slot is the chunk size
//! plus the rear redzone behind the common prefix, so every class that applies to a chunk that is
//! never resized is found there as for an AllocSet chunk — overrun, underrun, write after free
//! (on reuse of the slot, by `check`) and after reset, double free, interior and foreign
//! pointers, a free through another context — with the context, the damaged range and the
//! backtraces.
//!
//! These tests write out of bounds on purpose, which ASan and memcheck rightly call errors, so the
//! sanitizer legs leave this file out (`ci/sanitizers`), as they leave out `debug_reports.rs`.
#![cfg(feature = "debug-contexts")]

use memctx::debug::{self, BugClass, ResetCheck};
use memctx::{pfree, MemoryContext};

#[path = "common/reports.rs"]
mod reports;
use reports::{collect, one};

#[path = "common/headers.rs"]
mod headers;

const CHUNK: usize = 40;

fn slab(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_slab_child(name, 8192, CHUNK)
}

/// Asserts that the first user frame of `frames` is the function `name` of this file, at `line`
/// when given.
fn assert_frame(frames: &[debug::Frame], name: &str, line: Option<u32>, what: &str) {
    match line {
        Some(line) => reports::assert_first_frame_at(frames, "slab_reports", name, line, what),
        None => reports::assert_first_frame(frames, "slab_reports", name, what),
    }
}

#[test]
fn overrun_of_a_slab_chunk_found_at_pfree() {
    let ctx = slab("SlabOverrun");
    let mut alloc_line = 0;
    let r = one(collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        alloc_line = line!() - 1;
        unsafe {
            p.add(CHUNK).write(b'O');
            p.add(CHUNK + 2).write(b'P');
            pfree(p);
        }
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "SlabOverrun");
    assert_eq!(r.requested, Some(CHUNK));
    assert_eq!(r.range, Some((CHUNK as isize, CHUNK as isize + 3)));
    assert_eq!(r.found, [b'O', 0x7e, b'P']);
    assert_eq!(r.found_at, "pfree");
    assert_frame(
        &r.alloc_backtrace(),
        "overrun_of_a_slab_chunk_found_at_pfree",
        Some(alloc_line),
        "allocation",
    );
    ctx.delete();
}

#[test]
fn underrun_of_a_slab_chunk_found_at_reset() {
    let ctx = slab("SlabUnderrun");
    let r = one(collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        ctx.alloc(CHUNK); // a neighbour after it
        unsafe { p.sub(3).write(b'U') };
        ctx.reset();
    }));
    assert_eq!(r.class, BugClass::Underrun);
    assert_eq!(r.context, "SlabUnderrun");
    assert_eq!(r.range, Some((-3, -2)));
    assert_eq!(r.found, [b'U']);
    assert!(r.found_at.starts_with("reset"), "{}", r.found_at);
    assert_frame(
        &r.alloc_backtrace(),
        "underrun_of_a_slab_chunk_found_at_reset",
        None,
        "allocation",
    );
    ctx.delete();
}

#[test]
fn write_after_free_found_when_the_slot_is_reused_and_by_check() {
    let ctx = slab("SlabUaf");
    let mut free_line = 0;
    let reports = collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        let keep = ctx.alloc(CHUNK).as_ptr(); // the block stays in use
        unsafe {
            pfree(p);
            free_line = line!() - 1;
            p.add(20).write(0x33); // stale pointer
        }
        assert_eq!(ctx.check(), 1);
        unsafe { p.add(21).write(0x34) }; // again, after the check restored the pattern
        let q = ctx.alloc(CHUNK).as_ptr(); // the block's free list hands the slot out again
        assert_eq!(q, p);
        unsafe {
            pfree(q);
            pfree(keep);
        }
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (r, (at, offset, byte)) in reports
        .iter()
        .zip([("check", 20, 0x33), ("reuse", 21, 0x34)])
    {
        assert_eq!(r.class, BugClass::WriteAfterFree);
        assert_eq!(r.context, "SlabUaf");
        assert_eq!(r.found_at, at);
        assert_eq!(r.requested, Some(CHUNK));
        assert_eq!(r.range, Some((offset, offset + 1)));
        assert_eq!(r.found, [byte]);
        assert_eq!(r.expected, [0x7f]);
        let name = "write_after_free_found_when_the_slot_is_reused_and_by_check";
        assert_frame(&r.alloc_backtrace(), name, None, "allocation");
        assert_frame(&r.free_backtrace(), name, Some(free_line), "free");
    }
    ctx.delete();
}

#[test]
fn write_after_reset_found_by_check_and_on_reuse() {
    let ctx = slab("SlabPerRow");
    let reports = collect(|| {
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let p = ctx.alloc(CHUNK).as_ptr();
        ctx.reset();
        unsafe { p.add(5).write(0x44) }; // pointer kept past the reset
        assert_eq!(ctx.check(), 1);
        ctx.reset();
        unsafe { p.add(6).write(0x45) };
        let q = ctx.alloc(CHUNK).as_ptr(); // the keeper's first slot is carved again
        assert_eq!(q, p);
        debug::set_thread_reset_check(None);
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (r, (at, offset)) in reports.iter().zip([("check", 5), ("reuse", 6)]) {
        assert_eq!(r.class, BugClass::WriteAfterFree);
        assert_eq!(r.context, "SlabPerRow");
        assert_eq!(r.found_at, at);
        assert_eq!(r.requested, Some(CHUNK));
        assert_eq!(r.range, Some((offset, offset + 1)));
        assert_frame(
            &r.alloc_backtrace(),
            "write_after_reset_found_by_check_and_on_reuse",
            None,
            "allocation",
        );
    }
    ctx.delete();
}

#[test]
fn double_free_names_both_frees() {
    let ctx = slab("SlabDouble");
    let (mut first, mut second) = (0, 0);
    let r = one(collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        ctx.alloc(CHUNK); // the block stays in use
        unsafe {
            pfree(p);
            first = line!() - 1;
            pfree(p);
            second = line!() - 1;
        }
    }));
    assert_eq!(r.class, BugClass::DoubleFree);
    assert_eq!(r.context, "SlabDouble");
    assert_eq!(r.requested, Some(CHUNK));
    let name = "double_free_names_both_frees";
    assert_frame(&r.free_backtrace(), name, Some(first), "free");
    assert_frame(&r.found_backtrace(), name, Some(second), "found-at");
    // The slot went onto the free list once: it is handed out once.
    let a = ctx.alloc(CHUNK).as_ptr();
    let b = ctx.alloc(CHUNK).as_ptr();
    assert_ne!(a, b);
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn interior_and_foreign_pointers_are_reported_not_freed() {
    let ctx = slab("SlabInvalid");
    let foreign = Box::into_raw(Box::new([0u8; 64])) as *mut u8;
    let mut chunk = 0;
    let reports = collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        chunk = p as usize;
        unsafe {
            pfree(p.add(16)); // interior
            pfree(foreign);
            pfree(p);
        }
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    assert!(reports.iter().all(|r| r.class == BugClass::InvalidPointer));
    assert_eq!(reports[0].context, "SlabInvalid");
    assert_eq!(reports[0].chunk, Some(chunk));
    assert!(
        reports[0].detail.contains("16 bytes into the chunk"),
        "{}",
        reports[0].detail
    );
    assert_eq!(reports[1].context, "");
    // The real chunk was freed once, the others not at all: every slot of the block is free.
    // (A 40-byte slot in the debug build: 48-byte prefix, 40 bytes and the 16-byte redzone.)
    assert_eq!(ctx.counters().free_chunks, ((8192 - 80) / 112) as u64);
    assert_eq!(ctx.check(), 0);
    unsafe { drop(Box::from_raw(foreign as *mut [u8; 64])) };
    ctx.delete();
}

#[test]
fn a_free_through_another_context_is_a_wrong_context() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let owner = slab("SlabOwner");
    let other = slab("SlabOther");
    let r = one(collect(|| {
        let a = owner.pin();
        let b = other.pin();
        let layout = Layout::from_size_align(CHUNK, 8).unwrap();
        let p = a.allocate(layout).unwrap();
        unsafe { b.deallocate(p.cast(), layout) };
    }));
    assert_eq!(r.class, BugClass::WrongContext);
    assert_eq!(r.context, "SlabOwner");
    assert!(
        r.detail.contains("through context \"SlabOther\""),
        "{}",
        r.detail
    );
    assert_eq!(r.found_at, "deallocate");
    owner.delete();
    other.delete();
}

/// A block whose last chunk is freed is rewound for reuse: its freed chunks are verified first,
/// so a write through a pointer kept past its `pfree` is found at that last `pfree` (and the
/// slot, carved again, holds no trace of it).
#[test]
fn write_after_free_found_when_the_block_empties() {
    let ctx = slab("SlabEmptied");
    let (mut free_line, mut last_line) = (0, 0);
    let mut stale = core::ptr::null_mut();
    let r = one(collect(|| {
        let chunks: Vec<*mut u8> = (0..3).map(|_| ctx.alloc(CHUNK).as_ptr()).collect();
        stale = chunks[1];
        unsafe {
            pfree(chunks[1]);
            free_line = line!() - 1;
            stale.add(9).write(0x39); // pointer kept past its pfree
            pfree(chunks[0]);
            pfree(chunks[2]); // the block's last chunk: it empties
            last_line = line!() - 1;
        }
    }));
    let name = "write_after_free_found_when_the_block_empties";
    assert_eq!(r.class, BugClass::WriteAfterFree);
    assert_eq!(r.context, "SlabEmptied");
    assert_eq!(r.chunk, Some(stale as usize));
    assert_eq!(r.requested, Some(CHUNK));
    assert_eq!(r.range, Some((9, 10)));
    assert_eq!(r.found, [0x39]);
    assert_frame(&r.free_backtrace(), name, Some(free_line), "free");
    assert_frame(&r.found_backtrace(), name, Some(last_line), "found-at");
    // The block was rewound: its first slot is carved again, and the context is sound.
    let again: Vec<*mut u8> = (0..2).map(|_| ctx.alloc(CHUNK).as_ptr()).collect();
    assert_eq!(again[1], stale);
    assert_eq!(unsafe { stale.add(9).read() }, 0xA5, "the fresh pattern");
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

/// Allocates `blocks` blocks' worth of chunks in `ctx` (8 KiB blocks of `CHUNK`-byte chunks),
/// then frees them block by block: the keeper and ten more are kept, the rest given back.
/// Returns the chunks, grouped by block.
fn fill_and_empty(ctx: MemoryContext, blocks: usize) -> Vec<Vec<*mut u8>> {
    // A 40-byte slot in the debug build: 48-byte prefix, 40 bytes and the 16-byte redzone.
    const PER_BLOCK: usize = (8192 - 80) / 112;
    let groups: Vec<Vec<*mut u8>> = (0..blocks)
        .map(|_| (0..PER_BLOCK).map(|_| ctx.alloc(CHUNK).as_ptr()).collect())
        .collect();
    for group in &groups {
        for &p in group {
            unsafe { pfree(p) };
        }
    }
    groups
}

/// Blocks that empty beyond the ten kept go back to the system — through the quarantine of
/// released memory, where a write through a stale pointer is found by `check`, and a second free
/// of one of their chunks is still a double free.
#[test]
fn a_given_back_block_keeps_its_history() {
    let ctx = slab("SlabGone");
    let blocks = 1 + memctx::SLAB_MAX_EMPTY_BLOCKS + 1;
    let mut stale = core::ptr::null_mut();
    let reports = collect(|| {
        let groups = fill_and_empty(ctx, blocks);
        assert_eq!(ctx.counters().total_nblocks, blocks as u64 - 1);
        stale = groups[blocks - 1][3]; // in the block given back
        unsafe { stale.add(7).write(b'!') };
        assert_eq!(MemoryContext::top().check(), 1);
        unsafe { pfree(stale) };
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let (r, twice) = (&reports[0], &reports[1]);
    assert_eq!(r.class, BugClass::WriteAfterFree);
    assert_eq!(r.context, "SlabGone");
    assert_eq!(r.chunk, Some(stale as usize));
    assert_eq!(r.range, Some((7, 8)));
    assert_eq!(r.found, [b'!']);
    assert_eq!(r.found_at, "check");
    assert!(
        r.detail.contains("last pfree in a block of \"SlabGone\""),
        "{r}"
    );
    assert_frame(&r.alloc_backtrace(), "fill_and_empty", None, "allocation");
    assert_eq!(twice.class, BugClass::DoubleFree);
    assert_eq!(twice.chunk, Some(stale as usize));
    assert_eq!(twice.requested, Some(CHUNK));
    ctx.delete();
}

/// `repalloc` to the chunk's own size keeps the slot; the overrun its check finds is reported
/// there, once: the redzone is rewritten, so the reset after it finds nothing more.
#[test]
fn overrun_found_at_repalloc_to_the_same_size_is_reported_once() {
    let ctx = slab("SlabSameSize");
    let reports = collect(|| {
        let p = ctx.alloc(CHUNK).as_ptr();
        unsafe { p.add(CHUNK + 1).write(b'R') };
        let q = unsafe { memctx::repalloc(p, CHUNK) };
        assert_eq!(q, p);
        ctx.reset();
    });
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "SlabSameSize");
    assert_eq!(r.found_at, "repalloc");
    assert_eq!(r.range, Some((CHUNK as isize + 1, CHUNK as isize + 2)));
    assert_eq!(r.found, [b'R']);
    let name = "overrun_found_at_repalloc_to_the_same_size_is_reported_once";
    assert_frame(&r.alloc_backtrace(), name, None, "allocation");
    ctx.delete();
}

/// A slot header whose footprint (Slab's header value) was overwritten, kind and offset intact, is
/// a corrupt header at `check()` and `pfree`: none, the prefix alone, past the block.
#[test]
fn overwritten_footprint_in_a_slot_header_is_reported() {
    let ctx = slab("SlabFootprint");
    let before = ctx.alloc(CHUNK).as_ptr();
    let victim = ctx.alloc(CHUNK).as_ptr();
    let after = ctx.alloc(CHUNK).as_ptr();
    headers::assert_overwritten_footprint_is_reported(ctx, "SlabFootprint", victim, CHUNK);
    unsafe {
        pfree(before);
        pfree(after);
    }
    ctx.delete();
}
