//! The debug build's reports on Generation chunks (`src/kinds/generation.rs`), at the default
//! settings: each test commits the bug as host code writes it — an overrun, a write through a
//! pointer kept past its `pfree` (into a block that still has live chunks, into the block that
//! emptied and was kept as the spare, into one that was given back, past a reset), a double free,
//! an interior pointer, a free through the wrong context — and checks the class, the context, the
//! damaged range and the backtraces.
//!
//! These tests write into freed memory on purpose, which ASan and memcheck rightly call errors, so
//! the sanitizer legs leave this file out (`ci/sanitizers`); `tests/generation.rs` runs there.
#![cfg(feature = "debug-contexts")]

use memctx::debug::{self, BugClass, Report};
use memctx::{pfree, BlockSizes, MemoryContext};

#[path = "common/reports.rs"]
mod reports;
use reports::{collect, one};

#[path = "common/blocks.rs"]
mod blocks;
use blocks::{fill_blocks, pfree_all};

#[path = "common/headers.rs"]
mod headers;

/// Asserts that the first user frame of `frames` is the function `name` of this file, at `line`
/// when given.
fn assert_frame(frames: &[debug::Frame], name: &str, line: Option<u32>, what: &str) {
    reports::assert_first_frame(frames, "generation_reports", name, what);
    if let Some(line) = line {
        assert_eq!(frames[0].line, Some(line), "{what}: {frames:#?}");
    }
}

fn generation(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_generation_child(name, BlockSizes::DEFAULT)
}

/// Checks the write-after-free report `r` of one byte written at `offset` of the `requested`-byte
/// chunk `chunk`, allocated in `test` and found at `found_at`.
fn assert_write_after_free(
    r: &Report,
    chunk: *mut u8,
    requested: usize,
    offset: isize,
    found_at: &str,
) {
    assert_eq!(r.class, BugClass::WriteAfterFree, "{r}");
    assert_eq!(r.chunk, Some(chunk as usize), "{r}");
    assert_eq!(r.requested, Some(requested));
    assert_eq!(r.range, Some((offset, offset + 1)), "{r}");
    assert_eq!(r.found, [b'!']);
    assert_eq!(r.found_at, found_at, "{r}");
}

#[test]
fn overrun_found_at_pfree() {
    let ctx = generation("GenOverrun");
    let mut at = 0;
    let r = one(collect(|| {
        let p = ctx.alloc(21).as_ptr();
        unsafe {
            p.add(21).write(b'A');
            p.add(23).write(b'C');
            pfree(p);
        }
        at = line!() - 2;
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context_path, ["TopMemoryContext", "GenOverrun"]);
    assert_eq!(r.requested, Some(21));
    assert_eq!(r.range, Some((21, 24)));
    assert_eq!(r.found, [b'A', 0x7e, b'C']);
    assert_eq!(r.found_at, "pfree");
    assert_frame(
        &r.alloc_backtrace(),
        "overrun_found_at_pfree",
        None,
        "allocation",
    );
    assert_frame(
        &r.found_backtrace(),
        "overrun_found_at_pfree",
        Some(at),
        "found-at",
    );
    ctx.delete();
}

#[test]
fn underrun_found_by_check() {
    let ctx = generation("GenUnderrun");
    let r = one(collect(|| {
        let p = ctx.alloc(40).as_ptr();
        unsafe { p.sub(2).write(0) };
        assert_eq!(ctx.check(), 1);
        unsafe { pfree(p) };
    }));
    assert_eq!(r.class, BugClass::Underrun);
    assert_eq!(r.context, "GenUnderrun");
    assert_eq!(r.range, Some((-2, -1)));
    assert_eq!(r.found_at, "check");
    ctx.delete();
}

/// A freed chunk stays in its block next to live ones: a write through the stale pointer — at its
/// first byte too, since Generation links no freed chunk — is found by `check`, with the pfree as
/// the free stack.
#[test]
fn write_after_pfree_in_a_live_block_found_by_check() {
    let ctx = generation("GenStale");
    let (mut stale, mut freed_at) = (core::ptr::null_mut(), 0);
    let r = one(collect(|| {
        let _older = ctx.alloc(64).as_ptr();
        stale = ctx.alloc(30).as_ptr();
        let _newer = ctx.alloc(64).as_ptr();
        unsafe {
            pfree(stale);
            freed_at = line!() - 1;
            stale.write(b'!');
        }
        assert_eq!(ctx.check(), 1);
        assert_eq!(
            ctx.check(),
            0,
            "reported once: the check restored the pattern"
        );
    }));
    assert_write_after_free(&r, stale, 30, 0, "check");
    assert_eq!(r.context, "GenStale");
    assert_frame(
        &r.alloc_backtrace(),
        "write_after_pfree_in_a_live_block_found_by_check",
        None,
        "allocation",
    );
    assert_frame(
        &r.free_backtrace(),
        "write_after_pfree_in_a_live_block_found_by_check",
        Some(freed_at),
        "free",
    );
    ctx.delete();
}

/// The stale write lands in a freed chunk of a block that is still in use; when the block's last
/// chunk is freed, the emptying verifies the block and finds it (`found at pfree`).
#[test]
fn write_after_pfree_found_when_the_block_empties() {
    let ctx = generation("GenEmptying");
    let mut stale = core::ptr::null_mut();
    let r = one(collect(|| {
        let groups = fill_blocks(ctx, 1000, 3, 1);
        stale = groups[1][2];
        unsafe { pfree(stale) };
        unsafe { stale.add(100).write(b'!') };
        pfree_all(&groups[1][..2]);
        pfree_all(&groups[1][3..]); // the last free empties the block
    }));
    assert_write_after_free(&r, stale, 1000, 100, "pfree");
    assert_eq!(r.context, "GenEmptying");
    ctx.delete();
}

/// A block that emptied while another was current is kept as the spare; a write through a pointer
/// into it is found when the spare's space is carved again (`found at reuse`), naming the freed
/// chunk, its allocation and its free.
#[test]
fn write_into_the_spare_block_found_at_reuse() {
    let ctx = generation("GenSpare");
    let (mut stale, mut freed_at) = (core::ptr::null_mut(), 0);
    let r = one(collect(|| {
        let groups = fill_blocks(ctx, 700, 3, 1);
        let spare = &groups[1];
        stale = spare[0];
        pfree_all(&spare[1..]);
        unsafe { pfree(stale) }; // the block's last chunk: it becomes the spare
        freed_at = line!() - 1;
        assert_eq!(ctx.counters().total_nblocks, 3, "kept");
        unsafe { stale.add(5).write(b'!') };
        // Fill the current block; the next chunk is carved from the spare, over `stale`.
        let mut p = ctx.alloc(700).as_ptr();
        while p != stale {
            assert_eq!(
                ctx.counters().total_nblocks,
                3,
                "no new block while the spare has room"
            );
            p = ctx.alloc(700).as_ptr();
        }
    }));
    assert_write_after_free(&r, stale, 700, 5, "reuse");
    assert_eq!(r.context, "GenSpare");
    assert!(r.detail.contains("last pfree of its block"), "{r}");
    assert_frame(
        &r.alloc_backtrace(),
        "blocks::fill_blocks",
        None,
        "allocation",
    );
    assert_frame(
        &r.free_backtrace(),
        "write_into_the_spare_block_found_at_reuse",
        Some(freed_at),
        "free",
    );
    ctx.delete();
}

/// A block that emptied while there was a larger spare goes back to the system — through the
/// quarantine of released memory, where a write through a stale pointer is found by `check`.
#[test]
fn write_into_a_given_back_block_found_by_check() {
    let parent = MemoryContext::top().new_child("Decoding", BlockSizes::DEFAULT);
    let ctx = parent.new_generation_child("GenGone", BlockSizes::DEFAULT);
    let mut stale = core::ptr::null_mut();
    let r = one(collect(|| {
        let groups = fill_blocks(ctx, 900, 4, 1);
        pfree_all(&groups[2]); // the 16 KiB block: the spare
        stale = groups[1][1];
        pfree_all(&groups[1]); // the 8 KiB block: given back
        assert_eq!(ctx.counters().total_nblocks, 3);
        unsafe { stale.add(899).write(b'!') };
        assert_eq!(MemoryContext::top().check(), 1);
    }));
    assert_write_after_free(&r, stale, 900, 899, "check");
    assert_eq!(r.context_path, ["TopMemoryContext", "Decoding", "GenGone"]);
    assert!(
        r.detail.contains("last pfree in a block of \"GenGone\""),
        "{r}"
    );
    assert_frame(
        &r.alloc_backtrace(),
        "blocks::fill_blocks",
        None,
        "allocation",
    );
    parent.delete();
}

/// A pointer kept past a reset, written before the keeper's space is carved again: found at
/// reuse.
#[test]
fn write_after_reset_found_at_reuse() {
    let ctx = generation("GenReset");
    let mut stale = core::ptr::null_mut();
    let r = one(collect(|| {
        stale = ctx.alloc(48).as_ptr();
        ctx.reset();
        unsafe { stale.add(47).write(b'!') };
        assert_eq!(ctx.alloc(48).as_ptr(), stale);
    }));
    assert_write_after_free(&r, stale, 48, 47, "reuse");
    assert_eq!(r.context, "GenReset");
    ctx.delete();
}

#[test]
fn double_free_names_both_frees() {
    let ctx = generation("GenDouble");
    let (mut first, mut second) = (0, 0);
    let r = one(collect(|| {
        let _keep = ctx.alloc(16).as_ptr(); // the block stays in use
        let p = ctx.alloc(64).as_ptr();
        unsafe {
            pfree(p);
            first = line!() - 1;
            pfree(p);
            second = line!() - 1;
        }
    }));
    assert_eq!(r.class, BugClass::DoubleFree);
    assert_eq!(r.context, "GenDouble");
    assert_eq!(r.requested, Some(64));
    let name = "double_free_names_both_frees";
    assert_frame(&r.free_backtrace(), name, Some(first), "free");
    assert_frame(&r.found_backtrace(), name, Some(second), "found-at");
    assert_eq!(
        ctx.counters().free_chunks,
        1,
        "the second free changed no count"
    );
    ctx.delete();
}

/// The second free of a chunk whose block was given back meanwhile: the quarantine remembers it.
#[test]
fn double_free_after_the_block_was_given_back() {
    let ctx = generation("GenDoubleGone");
    let mut twice = core::ptr::null_mut();
    let r = one(collect(|| {
        let groups = fill_blocks(ctx, 900, 4, 1);
        pfree_all(&groups[2]); // the spare
        twice = groups[1][0];
        pfree_all(&groups[1]); // given back
        unsafe { pfree(twice) };
    }));
    assert_eq!(r.class, BugClass::DoubleFree);
    assert_eq!(r.context, "GenDoubleGone");
    assert_eq!(r.chunk, Some(twice as usize));
    assert_eq!(r.requested, Some(900));
    ctx.delete();
}

/// The second free of a chunk whose block the first one emptied, kept as the spare: a double free
/// that says what released the chunk — the last pfree of its block, no reset ran.
#[test]
#[ignore = "the detail says \"already freed by a reset of its context\" (src/debug/hooks.rs not_a_live_chunk)"]
fn double_free_into_the_spare_block_names_the_pfree_that_emptied_it() {
    let ctx = generation("GenDoubleSpare");
    let mut twice = core::ptr::null_mut();
    let r = one(collect(|| {
        let groups = fill_blocks(ctx, 700, 3, 1);
        twice = groups[1][0];
        pfree_all(&groups[1]); // the block empties: the spare
        assert_eq!(ctx.counters().total_nblocks, 3, "kept");
        unsafe { pfree(twice) };
    }));
    assert_eq!(r.class, BugClass::DoubleFree, "{r}");
    assert_eq!(r.chunk, Some(twice as usize));
    assert_eq!(r.requested, Some(700));
    assert!(!r.detail.contains("reset"), "{r}");
    assert!(r.detail.contains("last pfree of its block"), "{r}");
    assert_frame(&r.free_backtrace(), "blocks::pfree_all", None, "free");
    ctx.delete();
}

#[test]
fn interior_and_foreign_pointers_are_reported_not_freed() {
    let ctx = generation("GenInvalid");
    let mut chunk = 0;
    let reports = collect(|| {
        let p = ctx.alloc(64).as_ptr();
        chunk = p as usize;
        unsafe {
            pfree(p.add(32));
            let foreign = Box::into_raw(Box::new([0u8; 64])) as *mut u8;
            pfree(foreign);
            drop(Box::from_raw(foreign as *mut [u8; 64]));
            pfree(p);
        }
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    assert!(reports.iter().all(|r| r.class == BugClass::InvalidPointer));
    assert_eq!(reports[0].context, "GenInvalid");
    assert_eq!(reports[0].chunk, Some(chunk));
    assert!(
        reports[0].detail.contains("32 bytes into the chunk"),
        "{}",
        reports[0]
    );
    assert_eq!(reports[1].context, "");
    assert_eq!(
        ctx.counters().free_chunks,
        0,
        "the real free emptied the keeper"
    );
    ctx.delete();
}

#[test]
fn wrong_context_free_through_another_allocator() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let owner = generation("GenOwner");
    let other = MemoryContext::top().new_child("AsetOther", BlockSizes::DEFAULT);
    let r = one(collect(|| {
        let a = owner.pin();
        let b = other.pin();
        let layout = Layout::from_size_align(40, 8).unwrap();
        let p = a.allocate(layout).unwrap();
        unsafe { b.deallocate(p.cast(), layout) };
    }));
    assert_eq!(r.class, BugClass::WrongContext);
    assert_eq!(r.context, "GenOwner");
    assert!(
        r.detail.contains("through context \"AsetOther\""),
        "{}",
        r.detail
    );
    assert_eq!(r.found_at, "deallocate");
    owner.delete();
    other.delete();
}

/// A chunk header whose footprint (Generation's header value) was overwritten, kind and offset
/// intact, is a corrupt header at `check()` and `pfree`: none, the prefix alone, past the block.
#[test]
fn overwritten_footprint_in_a_chunk_header_is_reported() {
    let ctx = generation("GenFootprint");
    let before = ctx.alloc(24).as_ptr();
    let victim = ctx.alloc(40).as_ptr();
    let after = ctx.alloc(24).as_ptr();
    headers::assert_overwritten_footprint_is_reported(ctx, "GenFootprint", victim, 40);
    unsafe {
        pfree(before);
        pfree(after);
    }
    ctx.delete();
}

/// An overrun into the redzone of a chunk with a block of its own is found at its `pfree`, which
/// checks the chunk to its block's end before giving the block back.
#[test]
fn overrun_of_a_large_chunk_found_at_pfree() {
    const SIZE: usize = 2 << 20;
    let ctx = generation("GenLargeOverrun");
    let mut chunk = core::ptr::null_mut();
    let r = one(collect(|| {
        chunk = ctx.alloc(SIZE).as_ptr();
        unsafe {
            chunk.add(SIZE + 3).write(b'L');
            pfree(chunk);
        }
    }));
    assert_eq!(r.class, BugClass::Overrun, "{r}");
    assert_eq!(r.context, "GenLargeOverrun");
    assert_eq!(r.chunk, Some(chunk as usize));
    assert_eq!(r.requested, Some(SIZE));
    assert_eq!(r.range, Some((SIZE as isize + 3, SIZE as isize + 4)));
    assert_eq!(r.found, [b'L']);
    assert_eq!(r.found_at, "pfree");
    assert_frame(
        &r.alloc_backtrace(),
        "overrun_of_a_large_chunk_found_at_pfree",
        None,
        "allocation",
    );
    assert_eq!(ctx.counters().total_nblocks, 1, "the block went back");
    ctx.delete();
}
