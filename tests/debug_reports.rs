//! The debug build's reports, one test per bug class (the classes of `BugClass`): each commits the bug on
//! purpose and checks the class, the context, the exact damaged range and that the allocation
//! backtrace names the test's own function.
//!
//! These tests write out of bounds on purpose, which ASan and memcheck rightly call errors, so the
//! sanitizer legs leave this file out (`ci/test`); the tools' own view of the same bugs is proven by
//! the dedicated sanitizer tests.
#![cfg(feature = "debug-contexts")]

use memctx::debug::{self, BugClass, ResetCheck};
use memctx::{pfree, BlockSizes, MemoryContext};

#[path = "common/reports.rs"]
mod reports;
use reports::{collect, one};

#[path = "common/child.rs"]
mod child;

/// Asserts that the first user frame of `frames` is the function `name` of this test file.
fn assert_first_frame(frames: &[debug::Frame], name: &str, what: &str) {
    reports::assert_first_frame(frames, "debug_reports", name, what);
}

/// Asserts that the first user frame of `frames` is `name` of this test file, at `line` of it.
fn assert_first_frame_at(frames: &[debug::Frame], name: &str, line: u32, what: &str) {
    reports::assert_first_frame_at(frames, "debug_reports", name, line, what);
}

fn new_ctx(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_child(name, BlockSizes::DEFAULT)
}

/// Bytes before the first chunk of an AllocSet block: the block header (its fields: context,
/// prev, next, free pointer, end pointer, released mark), the kind's 8 bytes and 8 of padding.
const BEFORE_FIRST: usize = 64;

#[test]
fn overrun_found_at_pfree() {
    let ctx = new_ctx("OverrunCtx");
    let mut at = 0;
    let r = one(collect(|| {
        let p = ctx.alloc(10).as_ptr();
        unsafe {
            p.add(10).write(b'A');
            p.add(12).write(b'C');
            pfree(p);
        }
        at = line!() - 2;
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "OverrunCtx");
    assert_eq!(r.context_path, ["TopMemoryContext", "OverrunCtx"]);
    assert_eq!(r.requested, Some(10));
    assert_eq!(r.range, Some((10, 13)));
    assert_eq!(r.expected, [0x7e, 0x7e, 0x7e]);
    assert_eq!(r.found, [b'A', 0x7e, b'C']);
    assert_eq!(r.found_at, "pfree");
    assert_first_frame(&r.alloc_backtrace(), "overrun_found_at_pfree", "allocation");
    assert_first_frame_at(
        &r.found_backtrace(),
        "overrun_found_at_pfree",
        at,
        "found-at",
    );
    let text = r.to_string();
    assert!(
        text.contains("overrun in memory context \"OverrunCtx\""),
        "{text}"
    );
    assert!(text.contains("damaged bytes [10, 13)"), "{text}");
    let chunk = format!(
        "  chunk {:#x}, 10 bytes requested\n",
        r.chunk.expect("a chunk")
    );
    assert!(text.contains(&chunk), "{text}");
    assert!(text.contains("\n    expected: 7e 7e 7e\n"), "{text}");
    assert!(text.contains("\n    found:    41 7e 43\n"), "{text}");
    ctx.delete();
}

#[test]
fn overrun_inside_size_class_slack() {
    // 24 bytes land in a class with slack; PostgreSQL's sentinel would guard only byte 24, here
    // every byte up to the class end is redzone.
    let ctx = new_ctx("SlackCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(24).as_ptr();
        unsafe {
            p.add(30).write(0);
            pfree(p);
        }
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.range, Some((30, 31)));
    assert_eq!(r.found, [0]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_inside_size_class_slack",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn overrun_of_request_filling_its_class() {
    // 64 bytes fill the 64-byte class exactly; the debug build still keeps a redzone after it.
    let ctx = new_ctx("ExactCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(64).as_ptr();
        unsafe {
            p.add(64).write(1);
            pfree(p);
        }
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.range, Some((64, 65)));
    ctx.delete();
}

#[test]
fn overrun_found_at_reset_and_repalloc() {
    let ctx = new_ctx("ResetCtx");
    let mut at = 0;
    let reports = collect(|| {
        let p = ctx.alloc(100).as_ptr();
        unsafe { p.add(100).write(9) };
        ctx.reset();
        at = line!() - 1;
        let q = ctx.alloc(40).as_ptr();
        unsafe {
            q.add(41).write(9);
            let _ = memctx::repalloc(q, 20_000);
        }
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    assert_eq!(reports[0].class, BugClass::Overrun);
    assert_eq!(reports[0].found_at, "reset of \"ResetCtx\"");
    assert_eq!(reports[0].range, Some((100, 101)));
    assert_first_frame(
        &reports[0].alloc_backtrace(),
        "overrun_found_at_reset_and_repalloc",
        "allocation",
    );
    assert_first_frame_at(
        &reports[0].found_backtrace(),
        "overrun_found_at_reset_and_repalloc",
        at,
        "found-at",
    );
    assert_eq!(reports[1].class, BugClass::Overrun);
    assert_eq!(reports[1].found_at, "repalloc");
    assert_eq!(reports[1].range, Some((41, 42)));
    ctx.delete();
}

#[test]
fn overrun_far_into_the_slack_found_at_pfree() {
    // 520 bytes land in the 1024-byte class: a 504-byte rear redzone, damaged near its end, far
    // from the request; the free reports it and still clobbers the whole chunk.
    let ctx = new_ctx("FarSlackCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(520).as_ptr();
        unsafe {
            p.add(1000).write(1);
            pfree(p);
        }
        // The same chunk again: every byte of it, the damaged one included, was clobbered.
        let q = ctx.alloc(520).as_ptr();
        assert_eq!(q, p);
        unsafe { pfree(q) };
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "FarSlackCtx");
    assert_eq!(r.found_at, "pfree");
    assert_eq!(r.requested, Some(520));
    assert_eq!(r.range, Some((1000, 1001)));
    assert_eq!(r.expected, [0x7e]);
    assert_eq!(r.found, [1]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_far_into_the_slack_found_at_pfree",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn overrun_found_at_repalloc_in_place() {
    // 40 -> 44 bytes stays in the 64-byte class: the chunk is resized where it is.
    let ctx = new_ctx("InPlaceCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(40).as_ptr();
        unsafe {
            p.add(50).write(2);
            let q = memctx::repalloc(p, 44);
            assert_eq!(q, p);
            pfree(q); // the resize rewrote the redzone: nothing more to report
        }
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "InPlaceCtx");
    assert_eq!(r.found_at, "repalloc");
    assert_eq!(r.requested, Some(40));
    assert_eq!(r.range, Some((50, 51)));
    assert_eq!(r.found, [2]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_found_at_repalloc_in_place",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn overrun_of_large_chunk_found_at_repalloc() {
    // A chunk with a block of its own, grown by the system's realloc.
    let ctx = new_ctx("LargeCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(20_000).as_ptr();
        unsafe {
            p.add(20_005).write(3);
            let q = memctx::repalloc(p, 40_000);
            pfree(q);
        }
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "LargeCtx");
    assert_eq!(r.found_at, "repalloc");
    assert_eq!(r.requested, Some(20_000));
    assert_eq!(r.range, Some((20_005, 20_006)));
    assert_eq!(r.found, [3]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_of_large_chunk_found_at_repalloc",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn overrun_found_when_repalloc_fails() {
    // The system refuses the new size; the old chunk stays, and its redzone is still checked.
    let ctx = new_ctx("FailedCtx");
    let reports = collect(|| {
        let p = ctx.alloc(100).as_ptr();
        unsafe {
            p.add(101).write(4);
            let flags = memctx::AllocFlags::HUGE | memctx::AllocFlags::NO_OOM;
            assert!(memctx::repalloc_extended(p, usize::MAX / 4, flags).is_null());
            pfree(p); // still damaged: found again
        }
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (r, at) in reports.iter().zip(["repalloc", "pfree"]) {
        assert_eq!(r.class, BugClass::Overrun);
        assert_eq!(r.context, "FailedCtx");
        assert_eq!(r.found_at, at);
        assert_eq!(r.range, Some((101, 102)));
        assert_first_frame(
            &r.alloc_backtrace(),
            "overrun_found_when_repalloc_fails",
            "allocation",
        );
    }
    ctx.delete();
}

#[test]
fn underrun_damages_front_redzone() {
    let ctx = new_ctx("UnderrunCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(32).as_ptr();
        unsafe {
            p.sub(3).write(0x11);
            p.sub(1).write(0x22);
            pfree(p);
        }
    }));
    assert_eq!(r.class, BugClass::Underrun);
    assert_eq!(r.context, "UnderrunCtx");
    assert_eq!(r.range, Some((-3, 0)));
    assert_eq!(r.found, [0x11, 0x7e, 0x22]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "underrun_damages_front_redzone",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn write_after_pfree_found_on_reuse() {
    let ctx = new_ctx("UafCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(100).as_ptr();
        unsafe {
            pfree(p);
            p.add(20).write(0x33); // stale pointer
        }
        let q = ctx.alloc(100).as_ptr(); // the freelist hands the same chunk out again
        assert_eq!(q, p);
        unsafe { pfree(q) };
    }));
    assert_eq!(r.class, BugClass::WriteAfterFree);
    assert_eq!(r.context, "UafCtx");
    assert_eq!(r.found_at, "reuse");
    assert_eq!(r.range, Some((20, 21)));
    assert_eq!(r.found, [0x33]);
    assert_eq!(r.expected, [0x7f]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "write_after_pfree_found_on_reuse",
        "allocation",
    );
    assert_first_frame(
        &r.free_backtrace(),
        "write_after_pfree_found_on_reuse",
        "free",
    );
    ctx.delete();
}

#[test]
fn write_after_pfree_found_by_check() {
    let ctx = new_ctx("UafCheckCtx");
    let mut check_line = 0;
    let reports = collect(|| {
        let p = ctx.alloc(200).as_ptr();
        unsafe {
            pfree(p);
            p.add(150).write(0);
        }
        assert_eq!(ctx.check(), 1);
        check_line = line!() - 1;
        ctx.delete(); // one report per damage: the check restored the pattern
    });
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_first_frame_at(
        &reports[0].found_backtrace(),
        "write_after_pfree_found_by_check",
        check_line,
        "found-at",
    );
    for (r, at) in reports.iter().zip(["check"]) {
        assert_eq!(r.class, BugClass::WriteAfterFree);
        assert_eq!(r.found_at, at);
        assert_eq!(r.context_path, ["TopMemoryContext", "UafCheckCtx"]);
        assert_eq!(r.range, Some((150, 151)));
        assert_first_frame(
            &r.alloc_backtrace(),
            "write_after_pfree_found_by_check",
            "allocation",
        );
        assert_first_frame(
            &r.free_backtrace(),
            "write_after_pfree_found_by_check",
            "free",
        );
    }
}

#[test]
fn write_after_reset_found_by_check_and_on_reuse() {
    let ctx = new_ctx("PerRow");
    let reports = collect(|| {
        // Released space is verified when carved again at depth `Full` only.
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let p = ctx.alloc(48).as_ptr();
        ctx.reset();
        unsafe { p.add(5).write(0x44) }; // pointer kept past the reset
        assert_eq!(ctx.check(), 1);
        let q = ctx.alloc(48).as_ptr(); // the same space is carved again
        assert_eq!(q, p);
        ctx.reset();
        unsafe { p.add(5).write(0x44) }; // and written again after the next reset
        let q = ctx.alloc(48).as_ptr();
        assert_eq!(q, p);
        debug::set_thread_reset_check(None);
    });
    // The check restored the pattern: the first damage is reported once, the second at reuse.
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (r, at) in reports.iter().zip(["check", "reuse"]) {
        assert_eq!(r.class, BugClass::WriteAfterFree);
        assert_eq!(r.context, "PerRow");
        assert_eq!(r.found_at, at);
        assert_eq!(r.requested, Some(48));
        assert_eq!(r.range, Some((5, 6)));
        assert_eq!(r.found, [0x44]);
        assert_first_frame(
            &r.alloc_backtrace(),
            "write_after_reset_found_by_check_and_on_reuse",
            "allocation",
        );
        assert_first_frame(
            &r.free_backtrace(),
            "write_after_reset_found_by_check_and_on_reuse",
            "reset",
        );
    }
    ctx.delete();
}

/// At depth `Released`, carving verifies space a reset released: a write after the reset into a
/// released chunk's data, or into its debug record, is found when the space is carved again.
#[test]
fn write_after_reset_at_depth_released_found_on_reuse() {
    let ctx = new_ctx("PerRowReleased");
    // Data byte 9, and a byte of the record (which starts 40 bytes before the data: 24 bytes of
    // record, then the 16-byte front redzone).
    for at in [9isize, -30] {
        let mut chunk = core::ptr::null_mut();
        let reports = collect(|| {
            debug::set_thread_reset_check(Some(ResetCheck::Released));
            let p = ctx.alloc(48).as_ptr();
            ctx.reset();
            unsafe { p.offset(at).write(0x47) }; // pointer kept past the reset
            let q = ctx.alloc(48).as_ptr(); // the same space is carved again
            assert_eq!(q, p);
            chunk = p;
            debug::set_thread_reset_check(None);
        });
        let r = one(reports);
        assert_eq!(r.class, BugClass::WriteAfterFree, "damage at {at}: {r}");
        assert_eq!(r.context, "PerRowReleased");
        assert_eq!(r.found_at, "reuse", "damage at {at}");
        assert_eq!(r.range, Some((at, at + 1)), "damage at {at}: {r}");
        assert_eq!(r.found, [0x47]);
        assert_eq!(r.chunk, Some(chunk as usize), "the released chunk: {r}");
        assert_eq!(r.requested, Some(48), "{r}");
        ctx.reset();
    }
    ctx.delete();
}

/// At the default depth (`Chunks`), carving released space fills it without verifying it (see
/// `ResetCheck`): a write after reset is still found by `check` (and delete, and a reset at depth
/// `Full`) while the space is unused, but not when the space is carved again first.
#[test]
fn write_after_reset_at_default_depth_found_by_check_not_on_reuse() {
    let ctx = new_ctx("PerRowChunks");
    let reports = collect(|| {
        debug::set_thread_reset_check(Some(ResetCheck::Chunks));
        let p = ctx.alloc(48).as_ptr();
        ctx.reset();
        unsafe { p.add(7).write(0x46) }; // pointer kept past the reset
        assert_eq!(ctx.check(), 1);
        let q = ctx.alloc(48).as_ptr(); // carved again: the evidence is overwritten
        assert_eq!(q, p);
        assert_eq!(
            unsafe { q.add(7).read() },
            0xA5,
            "fresh pattern over the stale write"
        );
        ctx.reset();
        assert_eq!(ctx.check(), 0);
        debug::set_thread_reset_check(None);
    });
    let r = one(reports);
    assert_eq!(r.class, BugClass::WriteAfterFree);
    assert_eq!(r.context, "PerRowChunks");
    assert_eq!(r.found_at, "check");
    assert_eq!(r.requested, Some(48));
    assert_eq!(r.range, Some((7, 8)));
    assert_eq!(r.found, [0x46]);
    assert_first_frame(
        &r.alloc_backtrace(),
        "write_after_reset_at_default_depth_found_by_check_not_on_reuse",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn wild_write_into_unused_block_space() {
    let ctx = new_ctx("WildCtx");
    let mut chunk = 0;
    let r = one(collect(|| {
        let p = ctx.alloc(16).as_ptr();
        chunk = p as usize;
        unsafe { p.add(4000).write(0x55) }; // far past any chunk, inside the keeper block
        ctx.delete();
    }));
    assert_eq!(r.class, BugClass::WildWrite);
    assert_eq!(r.context, "WildCtx");
    assert_eq!(r.found_at, "delete of \"WildCtx\"");
    assert_eq!(r.chunk, None);
    let (a, b) = r.range.expect("range");
    assert_eq!(b - a, 1);
    assert_eq!(r.found, [0x55]);
    // Located against the chunk before it, as ASan does, with that chunk's allocation stack.
    let located = format!(
        "unused block space, owned by no chunk, was written: 3984 bytes after the 16-byte chunk \
         at {chunk:#x} (allocated at the stack below)"
    );
    assert_eq!(r.detail, located);
    assert_first_frame(
        &r.alloc_backtrace(),
        "wild_write_into_unused_block_space",
        "allocation",
    );
}

/// A reset verifies blocks' unused space at `ResetCheck::Full` only (the table of `ResetCheck`):
/// at `Chunks` and `Released` a wild write into the keeper's unused space passes the reset and is
/// found by the next `check()`, which always verifies in full; at `Full` the reset finds it.
#[test]
fn a_reset_verifies_unused_space_at_depth_full_only() {
    for depth in [ResetCheck::Chunks, ResetCheck::Released, ResetCheck::Full] {
        let ctx = new_ctx("ResetDepthCtx");
        let p = ctx.alloc(16).as_ptr(); // the keeper's first chunk
        let at = (memctx::chunk_prefix_size() + BEFORE_FIRST + 4000) as isize; // from the block
        debug::set_thread_reset_check(Some(depth));
        let at_reset = collect(|| {
            unsafe { p.add(4000).write(0x55) }; // far past any chunk, inside the keeper
            ctx.reset();
        });
        debug::set_thread_reset_check(None);
        let r = if depth == ResetCheck::Full {
            assert!(collect(|| assert_eq!(ctx.check(), 0)).is_empty());
            one(at_reset)
        } else {
            assert!(at_reset.is_empty(), "{depth:?}: {at_reset:#?}");
            one(collect(|| assert_eq!(ctx.check(), 1)))
        };
        let found_at = match depth {
            ResetCheck::Full => "reset of \"ResetDepthCtx\"",
            _ => "check",
        };
        assert_eq!(r.class, BugClass::WildWrite, "{depth:?}: {r}");
        assert_eq!(r.found_at, found_at, "{depth:?}: {r}");
        assert_eq!(r.range, Some((at, at + 1)), "{depth:?}: {r}");
        assert_eq!(r.found, [0x55]);
        ctx.delete();
    }
}

/// An overrun that stops at the class end and a wild write further on in the unused block space
/// are two findings: the wild write is not taken for the overrun's continuation.
#[test]
fn an_overrun_and_a_wild_write_beyond_it_are_two_findings() {
    let ctx = new_ctx("TwoFindingsCtx");
    let mut chunk = 0;
    let reports = collect(|| {
        let p = ctx.alloc(16).as_ptr(); // a 32-byte class, the last chunk of the keeper
        chunk = p as usize;
        unsafe {
            p.add(31).write(0x57); // the class's last byte
            p.add(200).write(0x58); // unused space well past it
        }
        assert_eq!(ctx.check(), 2);
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let overrun = reports.iter().find(|r| r.class == BugClass::Overrun);
    let overrun = overrun.expect("an overrun");
    assert_eq!(overrun.chunk, Some(chunk));
    assert_eq!(overrun.range, Some((31, 32)), "{overrun}");
    let wild = reports.iter().find(|r| r.class == BugClass::WildWrite);
    let wild = wild.expect("a wild write");
    assert_eq!(wild.chunk, None);
    assert_eq!(wild.found, [0x58]);
    assert!(
        wild.detail.ends_with(&format!(
            "184 bytes after the 16-byte chunk at {chunk:#x} (allocated at the stack below)"
        )),
        "{wild}"
    );
    ctx.delete();
}

/// An overrun that runs past the end of the chunk's class into the unused block space after it
/// is one overrun, from the request's end to the last byte written, found by `check()`.
#[test]
fn overrun_past_the_class_end_is_one_overrun() {
    let ctx = new_ctx("PastEndCtx");
    let r = one(collect(|| {
        let p = ctx.alloc(16).as_ptr(); // a 32-byte class, the last chunk of the keeper
        unsafe { p.add(16).write_bytes(0x56, 24) }; // bytes 16..40: redzone, then unused space
        assert_eq!(ctx.check(), 1);
    }));
    assert_eq!(r.class, BugClass::Overrun, "{r}");
    assert_eq!(r.context, "PastEndCtx");
    assert_eq!(r.found_at, "check");
    assert_eq!(r.requested, Some(16));
    assert_eq!(r.range, Some((16, 40)), "{r}");
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_past_the_class_end_is_one_overrun",
        "allocation",
    );
    ctx.delete();
}

#[test]
fn double_free_names_both_backtraces() {
    let ctx = new_ctx("DoubleCtx");
    let (mut first, mut second) = (0, 0);
    let r = one(collect(|| {
        let p = ctx.alloc(64).as_ptr();
        unsafe {
            pfree(p);
            first = line!() - 1;
            pfree(p);
            second = line!() - 1;
        }
    }));
    assert_eq!(r.class, BugClass::DoubleFree);
    assert_eq!(r.context, "DoubleCtx");
    assert_eq!(r.requested, Some(64));
    assert_first_frame(
        &r.alloc_backtrace(),
        "double_free_names_both_backtraces",
        "allocation",
    );
    // Both frees: the first as the chunk's free stack, the second where it was found.
    assert_first_frame_at(
        &r.free_backtrace(),
        "double_free_names_both_backtraces",
        first,
        "free",
    );
    assert_first_frame_at(
        &r.found_backtrace(),
        "double_free_names_both_backtraces",
        second,
        "found-at",
    );
    let text = r.to_string();
    assert!(text.contains("\n  found at pfree:\n    #0 "), "{text}");
    assert!(text.contains("\n  freed at:\n    #0 "), "{text}");
    ctx.delete();
}

#[test]
fn invalid_pointers_are_reported_not_freed() {
    let ctx = new_ctx("InvalidCtx");
    let foreign = Box::into_raw(Box::new([0u8; 64])) as *mut u8;
    let (mut chunk, mut alloc_line, mut foreign_line) = (0, 0, 0);
    let reports = collect(|| {
        let p = ctx.alloc(64).as_ptr();
        (chunk, alloc_line) = (p as usize, line!() - 1);
        unsafe {
            pfree(foreign); // foreign
            foreign_line = line!() - 1;
            pfree(p.add(16)); // interior
            pfree(p.add(1)); // misaligned
            pfree(core::ptr::null_mut()); // null
            pfree(p); // the real one is still live and frees cleanly
        }
    });
    assert_eq!(reports.len(), 4, "{reports:#?}");
    assert!(reports.iter().all(|r| r.class == BugClass::InvalidPointer));
    // The foreign pointer: no context, no chunk, and the pfree that passed it.
    let name = "invalid_pointers_are_reported_not_freed";
    assert_eq!(reports[0].context, "");
    assert_eq!(reports[0].chunk, None);
    assert!(reports[0].detail.contains("no context of this thread"));
    assert!(reports[0]
        .headline()
        .starts_with("memctx: invalid-pointer outside every memory context, found at pfree"));
    assert!(!reports[0].to_string().contains("\"\""));
    assert_first_frame_at(
        &reports[0].found_backtrace(),
        name,
        foreign_line,
        "found-at",
    );
    // The interior pointer names the chunk it points into, with its allocation.
    assert_eq!(reports[1].context, "InvalidCtx");
    assert_eq!(reports[1].chunk, Some(chunk));
    assert_eq!(reports[1].requested, Some(64));
    assert_first_frame_at(
        &reports[1].alloc_backtrace(),
        name,
        alloc_line,
        "allocation",
    );
    assert_first_frame_at(
        &reports[1].found_backtrace(),
        name,
        foreign_line + 2,
        "found-at",
    );
    assert!(
        reports[1].detail.contains("16 bytes into the chunk"),
        "{}",
        reports[1].detail
    );
    assert!(
        reports[2].detail.contains("1 bytes into the chunk"),
        "{}",
        reports[2].detail
    );
    assert!(reports[3].detail.contains("null pointer"));
    assert_eq!(ctx.check(), 0);
    unsafe { drop(Box::from_raw(foreign as *mut [u8; 64])) };
    ctx.delete();
}

#[test]
fn wrong_context_free_through_another_allocator() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let owner = new_ctx("OwnerCtx");
    let other = new_ctx("OtherCtx");
    let r = one(collect(|| {
        let a = owner.pin();
        let b = other.pin();
        let layout = Layout::from_size_align(40, 8).unwrap();
        let p = a.allocate(layout).unwrap();
        unsafe { b.deallocate(p.cast(), layout) };
    }));
    assert_eq!(r.class, BugClass::WrongContext);
    assert_eq!(r.context, "OwnerCtx");
    assert!(
        r.detail.contains("through context \"OtherCtx\""),
        "{}",
        r.detail
    );
    assert_eq!(r.requested, Some(40));
    assert_eq!(r.found_at, "deallocate");
    assert_eq!(
        owner.counters().free_chunks,
        1,
        "after the report the chunk is freed in its own context"
    );
    assert_eq!(other.counters().free_chunks, 0);
    owner.delete();
    other.delete();
}

/// A Bump chunk given to another context's allocator is reported as the wrong context, and then
/// left alone: Bump frees no chunk by pointer, so it waits for its context's reset (`pfree` on it
/// would be refused), and its context's memory is unchanged.
#[test]
fn wrong_context_free_of_a_bump_chunk_leaves_it_to_its_reset() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let owner = MemoryContext::top().new_bump_child("BumpOwner", BlockSizes::DEFAULT);
    let other = new_ctx("AsetOther");
    let layout = Layout::from_size_align(40, 8).unwrap();
    let mut before = None;
    let r = one(collect(|| {
        let a = owner.pin();
        let b = other.pin();
        let p = a.allocate(layout).unwrap();
        before = Some(owner.counters());
        unsafe { b.deallocate(p.cast(), layout) };
    }));
    assert_eq!(r.class, BugClass::WrongContext);
    assert_eq!(r.context, "BumpOwner");
    assert!(
        r.detail.contains("through context \"AsetOther\""),
        "{}",
        r.detail
    );
    assert_eq!(r.requested, Some(40));
    assert_eq!(r.found_at, "deallocate");
    assert_eq!(owner.counters(), before.unwrap(), "the Bump chunk stays");
    assert_eq!(other.counters().free_chunks, 0);
    assert_eq!(owner.check(), 0);
    owner.delete();
    other.delete();
}

/// Overwrites the header word of a fresh 32-byte chunk of `ctx` with `word` and frees it: the one
/// report that raises.
fn pfree_with_header(ctx: MemoryContext, word: u64) -> debug::Report {
    one(collect(|| {
        let p = ctx.alloc(32).as_ptr();
        unsafe {
            let header = p.sub(memctx::chunk_prefix_size()) as *mut u64;
            header.write(word);
            pfree(p);
        }
    }))
}

#[test]
fn corrupt_header_is_reported() {
    let ctx = new_ctx("HeaderCtx");
    let r = pfree_with_header(ctx, 0xdead_beef);
    assert_eq!(r.class, BugClass::CorruptHeader);
    assert_eq!(r.context, "HeaderCtx");
    let prefix = memctx::chunk_prefix_size() as isize;
    assert_eq!(r.range, Some((-prefix, -prefix + 8)));
}

/// A damaged header word has no expected value (the offset it held is unknown): its report shows
/// the bytes found and no empty `expected:` line.
#[test]
#[ignore = "the report prints an empty \"expected:\" line (src/debug/report.rs Display)"]
fn a_corrupt_header_report_prints_no_empty_expected_line() {
    let r = pfree_with_header(new_ctx("HeaderTextCtx"), 0x4141_4141_4141_4141);
    assert_eq!(r.class, BugClass::CorruptHeader);
    assert!(r.expected.is_empty());
    let text = r.to_string();
    assert!(
        text.contains("\n    found:    41 41 41 41 41 41 41 41\n"),
        "{text}"
    );
    assert!(!text.contains("expected:"), "{text}");
}

/// A block header whose fields no longer agree with the block registry (owner, end, a free
/// pointer outside the block's chunk space) is found by `check()` as a wild write naming the
/// block, and the walk stops there: an overrun in that block's chunk is not reported with it, nor
/// its pattern restored (a header that cannot be trusted does not say where the block's chunk
/// space ends: restoring could write past the block).
#[test]
fn overwritten_block_header_is_found_by_check() {
    let ctx = new_ctx("BlockHeaderCtx");
    let p = ctx.alloc(16).as_ptr(); // the keeper's first chunk
    let block = unsafe { p.sub(memctx::chunk_prefix_size() + BEFORE_FIRST) };
    let first = block as usize + BEFORE_FIRST;
    let field = |i: usize| unsafe { (block as *mut usize).add(i) };
    let (context, free_ptr, end_ptr) = (field(0), field(3), field(4));
    let end = unsafe { end_ptr.read() };
    assert!(unsafe { free_ptr.read() } > p as usize && end > unsafe { free_ptr.read() });
    unsafe { p.add(16).write(0x41) }; // an overrun the walk would report
    for (word, bad) in [
        (context, unsafe { context.read() } + 64),
        (end_ptr, end + 16),
        (free_ptr, first - 16),
        (free_ptr, end + 16),
    ] {
        let kept = unsafe { word.read() };
        unsafe { word.write(bad) };
        let r = one(collect(|| assert_eq!(ctx.check(), 1)));
        unsafe { word.write(kept) };
        assert_eq!(r.class, BugClass::WildWrite, "{r}");
        assert_eq!(r.context, "BlockHeaderCtx");
        assert_eq!(r.found_at, "check");
        assert_eq!(r.chunk, None);
        assert_eq!(
            r.detail,
            format!("the header of block {block:p} was overwritten")
        );
    }
    // The header restored, the walk reaches the chunk: its overrun was left alone (patterns are
    // not restored in a block whose header is not trusted), and is found now.
    let r = one(collect(|| assert_eq!(ctx.check(), 1)));
    assert_eq!(
        (r.class, r.range),
        (BugClass::Overrun, Some((16, 17))),
        "{r}"
    );
    unsafe { pfree(p) };
    ctx.delete();
}

/// A block list leading into the middle of another block of the same context is damage too, even
/// when what it leads to looks like a block header (the context, the containing block's end, a
/// free pointer in range): the registry says the block starting there does not exist. A forged
/// header inside a chunk, linked after the keeper, is reported as that header's damage, and the
/// walk stops there.
#[test]
fn a_block_list_leading_into_another_block_is_a_damaged_header() {
    let ctx = new_ctx("ForgedBlockCtx");
    let p = ctx.alloc(16).as_ptr(); // the keeper's first chunk
    let keeper = unsafe { p.sub(memctx::chunk_prefix_size() + BEFORE_FIRST) } as *mut usize;
    let forged = ctx.alloc(1000).as_ptr() as *mut usize; // in the keeper too, 16-aligned
    let field = |b: *mut usize, i: usize| unsafe { b.add(i) };
    let (context, end) = unsafe { (keeper.read(), field(keeper, 4).read()) };
    assert_eq!(unsafe { field(keeper, 2).read() }, 0, "the keeper is alone");
    assert!((forged as usize) < end);
    let header = [
        context,
        keeper as usize,
        0,
        forged as usize + BEFORE_FIRST,
        end,
        0,
    ];
    for (i, word) in header.into_iter().enumerate() {
        unsafe { field(forged, i).write(word) };
    }
    unsafe { field(keeper, 2).write(forged as usize) };
    let r = one(collect(|| assert_eq!(ctx.check(), 1)));
    unsafe { field(keeper, 2).write(0) };
    assert_eq!(r.class, BugClass::WildWrite, "{r}");
    assert_eq!(r.context, "ForgedBlockCtx");
    assert_eq!(r.found_at, "check");
    assert_eq!(r.chunk, None);
    assert_eq!(
        r.detail,
        format!("the header of block {forged:p} was overwritten")
    );
    assert_eq!(ctx.check(), 0, "the list restored");
    ctx.delete();
}

#[test]
fn default_policy_panics_with_the_report() {
    let ctx = new_ctx("PanicCtx");
    let p = ctx.alloc(8).as_ptr();
    unsafe { p.add(8).write(0) };
    let err = std::panic::catch_unwind(|| unsafe { pfree(p) }).expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("overrun in memory context \"PanicCtx\""),
        "{msg}"
    );
    assert!(!msg.contains("more reports"), "{msg}");
    let _ = debug::take_reports();
}

/// Under the panic policy, an operation that finds several bugs tells (and keeps) every report
/// and panics once, with the first one's headline and how many more there are.
#[test]
fn several_findings_panic_once_naming_how_many_more() {
    let ctx = new_ctx("ManyCtx");
    for _ in 0..3 {
        let p = ctx.alloc(16).as_ptr();
        unsafe { p.add(16).write(0) };
    }
    let err = std::panic::catch_unwind(|| ctx.reset()).expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.starts_with(
            "memctx: overrun in memory context \"ManyCtx\" (TopMemoryContext -> ManyCtx), \
             found at reset of \"ManyCtx\" (and 2 more reports): "
        ),
        "{msg}"
    );
    let reports = debug::take_reports();
    assert_eq!(reports.len(), 3, "{reports:#?}");
    assert!(reports
        .iter()
        .all(|r| r.class == BugClass::Overrun && r.range == Some((16, 17))));
    assert!(ctx.is_empty(), "the reset was carried out");
    ctx.delete();
}

/// The benchmark's report-cost measurement raises its two overruns under its own policy, takes
/// its reports back, and gives the thread its own policy back.
#[test]
fn report_cost_measurement_restores_the_thread_policy() {
    debug::set_thread_policy(Some(debug::Policy::Log));
    // Its own assertions check that each overrun was reported; its times are the bench's.
    let _ = debug::__bench_report_cost();
    assert_eq!(debug::thread_policy(), debug::Policy::Log);
    assert!(debug::take_reports().is_empty());
    debug::set_thread_policy(None);
}

#[test]
fn long_clean_workload_raises_nothing() {
    let ctx = new_ctx("CleanCtx");
    let reports = collect(|| {
        let mut seed = 0x1234_5678_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        for step in 0..20_000 {
            let r = next();
            match r % 4 {
                0 | 1 => {
                    let size = (r >> 8) as usize % 3000;
                    let p = ctx.alloc(size).as_ptr();
                    unsafe { p.write_bytes(step as u8, size) };
                    live.push((p, size));
                }
                2 if !live.is_empty() => {
                    let (p, _) = live.swap_remove((r >> 8) as usize % live.len());
                    unsafe { pfree(p) };
                }
                3 if !live.is_empty() => {
                    let i = (r >> 8) as usize % live.len();
                    let size = (r >> 20) as usize % 20_000;
                    let (p, old) = live[i];
                    let q = unsafe { memctx::repalloc(p, size) };
                    unsafe { q.add(old.min(size)).write_bytes(1, size - old.min(size)) };
                    live[i] = (q, size);
                }
                _ => {}
            }
            if step % 5000 == 4999 {
                assert_eq!(ctx.check(), 0);
                ctx.reset();
                live.clear();
            }
        }
        ctx.delete();
    });
    assert!(reports.is_empty(), "{reports:#?}");
}

/// Bump chunks carry the debug build's prefix and redzones: the reset walk, through Bump's chunk
/// decoding (`src/kinds/bump.rs`), finds an overrun of one and names its allocation.
#[test]
fn overrun_of_a_bump_chunk_found_at_reset() {
    let ctx = MemoryContext::top().new_bump_child("BumpCtx", BlockSizes::DEFAULT);
    let r = one(collect(|| {
        let p = ctx.alloc(10).as_ptr();
        ctx.alloc(10); // a neighbour after it
        unsafe { p.add(11).write(b'B') };
        ctx.reset();
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "BumpCtx");
    assert_eq!(r.requested, Some(10));
    assert_eq!(r.range, Some((11, 12)));
    assert_eq!(r.found, [b'B']);
    assert!(r.found_at.starts_with("reset"), "{}", r.found_at);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_of_a_bump_chunk_found_at_reset",
        "allocation",
    );
    ctx.delete();
}

/// The safe API shrinks a Bump chunk in place; the debug build's record takes the new size, so a
/// write past it is an overrun of the shrunk chunk, found at the reset with the new request.
#[test]
fn overrun_of_a_shrunk_bump_chunk_found_at_reset() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let ctx = MemoryContext::top().new_bump_child("BumpShrunk", BlockSizes::DEFAULT);
    let r = one(collect(|| {
        let pinned = ctx.pin();
        let (old, new) = (
            Layout::from_size_align(64, 8).unwrap(),
            Layout::from_size_align(16, 8).unwrap(),
        );
        let p = pinned.allocate(old).unwrap().cast::<u8>();
        let q = unsafe { pinned.shrink(p, old, new) }.unwrap().cast::<u8>();
        assert_eq!(q, p, "a Bump chunk shrinks in place");
        unsafe { q.as_ptr().add(20).write(b'S') }; // inside the old size, past the new one
        drop(pinned);
        ctx.reset();
    }));
    assert_eq!(r.class, BugClass::Overrun);
    assert_eq!(r.context, "BumpShrunk");
    assert_eq!(r.requested, Some(16));
    assert_eq!(r.range, Some((20, 21)));
    assert_eq!(r.found, [b'S']);
    assert!(r.found_at.starts_with("reset"), "{}", r.found_at);
    assert_first_frame(
        &r.alloc_backtrace(),
        "overrun_of_a_shrunk_bump_chunk_found_at_reset",
        "allocation",
    );
    ctx.delete();
}

/// The safe API gives back a Bump context's last chunk; the debug build keeps its space as a
/// freed chunk, so a write through the pointer kept past the `deallocate` is found by `check()`
/// with that chunk's request, range and allocation line.
#[test]
fn write_after_a_bump_chunk_was_given_back_found_by_check() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let ctx = MemoryContext::top().new_bump_child("BumpBackCtx", BlockSizes::DEFAULT);
    let mut kept = 0usize;
    let r = one(collect(|| {
        let pinned = ctx.pin();
        let layout = Layout::from_size_align(40, 8).unwrap();
        let p = pinned.allocate(layout).unwrap().cast::<u8>();
        kept = p.as_ptr() as usize;
        unsafe { pinned.deallocate(p, layout) };
        unsafe { p.as_ptr().add(12).write(b'W') }; // past the link word a freed chunk keeps
        drop(pinned);
        assert_eq!(ctx.check(), 1);
    }));
    assert_eq!(r.class, BugClass::WriteAfterFree, "{r}");
    assert_eq!(r.context, "BumpBackCtx");
    assert_eq!(r.found_at, "check");
    assert_eq!(r.chunk, Some(kept));
    assert_eq!(r.requested, Some(40));
    assert_eq!(r.range, Some((12, 13)));
    assert_eq!(r.found, [b'W']);
    assert_first_frame(
        &r.alloc_backtrace(),
        "write_after_a_bump_chunk_was_given_back_found_by_check",
        "allocation",
    );
    ctx.delete();
}

/// At depth `Full` the carve of the next chunk verifies the space it takes: an overrun that ran
/// past the last byte of its chunk's class into that space is found there as an overrun of the
/// chunk before it (the part past the class end), and the part inside the class later by the
/// delete's walk.
#[test]
fn overrun_past_the_class_end_found_when_the_next_chunk_is_carved() {
    let ctx = new_ctx("CarveCtx");
    let mut chunk = 0;
    let reports = collect(|| {
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let p = ctx.alloc(16).as_ptr(); // a 32-byte class, the last chunk of the keeper
        chunk = p as usize;
        unsafe { p.add(31).write_bytes(0x5C, 3) }; // the class's last byte and 2 bytes past it
        let q = ctx.alloc(16).as_ptr();
        assert_eq!(q as usize, chunk + 32 + memctx::chunk_prefix_size());
        ctx.delete();
        debug::set_thread_reset_check(None);
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (r, (found_at, range)) in reports
        .iter()
        .zip([("reuse", (32, 34)), ("delete of \"CarveCtx\"", (31, 32))])
    {
        assert_eq!(r.class, BugClass::Overrun, "{r}");
        assert_eq!(r.found_at, found_at);
        assert_eq!(r.chunk, Some(chunk));
        assert_eq!(r.requested, Some(16));
        assert_eq!(r.range, Some(range), "{r}");
        assert_first_frame(
            &r.alloc_backtrace(),
            "overrun_past_the_class_end_found_when_the_next_chunk_is_carved",
            "allocation",
        );
    }
}

/// The same write starting right after the class's last byte, which is intact: no overrun of the
/// chunk before it ran into the space, so the carve finds a wild write, located against that
/// chunk.
#[test]
fn write_right_after_an_intact_class_end_is_a_wild_write() {
    let ctx = new_ctx("CarveWildCtx");
    let mut chunk = 0;
    let r = one(collect(|| {
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let p = ctx.alloc(16).as_ptr(); // a 32-byte class, the last chunk of the keeper
        chunk = p as usize;
        unsafe { p.add(32).write_bytes(0x5D, 2) }; // the 2 bytes after the class
        ctx.alloc(16);
        ctx.delete();
        debug::set_thread_reset_check(None);
    }));
    assert_eq!(r.class, BugClass::WildWrite, "{r}");
    assert_eq!(r.found_at, "reuse");
    assert_eq!(r.chunk, None);
    assert_eq!(r.found, [0x5D, 0x5D]);
    assert_eq!(
        r.detail,
        format!(
            "unused block space, owned by no chunk, was written: 16 bytes after the 16-byte \
             chunk at {chunk:#x} (allocated at the stack below)"
        )
    );
}

/// `pfree` of a chunk whose block header's context field was overwritten: the chunk is judged by
/// the block registry's owner, not through the damaged field, and the damage is reported, the
/// chunk not freed.
#[test]
fn pfree_in_a_block_whose_context_field_was_overwritten_is_reported() {
    let ctx = new_ctx("BlockFieldCtx");
    let p = ctx.alloc(16).as_ptr(); // the keeper's first chunk
    let q = ctx.alloc(16).as_ptr();
    let block = unsafe { p.sub(memctx::chunk_prefix_size() + BEFORE_FIRST) } as *mut usize;
    let kept = unsafe { block.read() };
    unsafe { block.write(kept + 64) };
    let r = one(collect(|| unsafe { pfree(q) }));
    unsafe { block.write(kept) };
    assert_eq!(r.class, BugClass::WildWrite, "{r}");
    assert_eq!(r.context, "BlockFieldCtx");
    assert_eq!(r.found_at, "pfree");
    assert_eq!(
        r.detail,
        format!("the header of block {block:p} was overwritten")
    );
    // Not freed: `q` is still a live chunk of the context.
    let live: u64 = ctx.sites(false, 10).iter().map(|s| s.count).sum();
    assert_eq!(live, 2);
    assert_eq!(ctx.check(), 0);
    unsafe { pfree(q) };
    ctx.delete();
}

/// `pfree` of a live chunk whose debug record was overwritten (its header word intact): a
/// `corrupt-header` report naming the record, and the chunk is not freed.
#[test]
fn pfree_of_a_chunk_whose_record_was_overwritten_is_a_corrupt_header() {
    let ctx = new_ctx("RecordCtx");
    let p = ctx.alloc(32).as_ptr();
    // The record lies between the header word and the 16-byte front redzone.
    let record = unsafe { p.sub(memctx::chunk_prefix_size() - 8) } as *mut u64;
    let kept = unsafe { record.read() };
    unsafe { record.write(u64::MAX) };
    let r = one(collect(|| unsafe { pfree(p) }));
    unsafe { record.write(kept) };
    assert_eq!(r.class, BugClass::CorruptHeader, "{r}");
    assert_eq!(r.context, "RecordCtx");
    assert_eq!(r.found_at, "pfree");
    assert_eq!(r.detail, "the chunk's debug record was overwritten");
    assert_eq!(ctx.check(), 0, "not freed: still a sound live chunk");
    unsafe { pfree(p) };
    ctx.delete();
}

/// An interior pointer into a chunk other than its block's first names that chunk, with its size
/// and allocation line.
#[test]
fn an_interior_pointer_names_the_chunk_it_points_into() {
    let ctx = new_ctx("InteriorCtx");
    let _first = ctx.alloc(64).as_ptr();
    let (mut second, mut line) = (0, 0);
    let r = one(collect(|| {
        let q = ctx.alloc(48).as_ptr();
        (second, line) = (q as usize, line!() - 1);
        unsafe { pfree(q.add(32)) };
    }));
    assert_eq!(r.class, BugClass::InvalidPointer, "{r}");
    assert_eq!(r.chunk, Some(second));
    assert_eq!(r.requested, Some(48));
    assert!(r.detail.contains("32 bytes into the chunk"), "{r}");
    assert_first_frame_at(
        &r.alloc_backtrace(),
        "an_interior_pointer_names_the_chunk_it_points_into",
        line,
        "allocation",
    );
    // Its chunk's start (the header word, where the chunk before it ends) is its chunk too.
    let r = one(collect(|| unsafe {
        pfree((second as *mut u8).sub(memctx::chunk_prefix_size()))
    }));
    assert_eq!(
        (r.class, r.chunk),
        (BugClass::InvalidPointer, Some(second)),
        "{r}"
    );
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

/// A pointer into a block's header (16-aligned, before the first chunk) is an invalid pointer
/// naming no chunk, judged from where the block's chunks start: nothing there is read as a chunk
/// header (which, 48 bytes before such a pointer, would lie before the block itself).
#[test]
fn a_pointer_into_a_block_header_is_an_invalid_pointer_naming_no_chunk() {
    let ctx = new_ctx("BlockHeaderPtrCtx");
    let p = ctx.alloc(16).as_ptr(); // the keeper's first chunk
    let block = unsafe { p.sub(memctx::chunk_prefix_size() + BEFORE_FIRST) };
    for off in (0..BEFORE_FIRST).step_by(16) {
        let q = unsafe { block.add(off) };
        let r = one(collect(|| unsafe { pfree(q) }));
        assert_eq!(r.class, BugClass::InvalidPointer, "{r}");
        assert_eq!(r.context, "BlockHeaderPtrCtx");
        assert_eq!((r.chunk, r.found_at.as_str()), (None, "pfree"), "{r}");
        assert_eq!(
            r.detail,
            format!(
                "pfree called with {q:p}, inside block {block:p} but not at a chunk (misaligned, \
                 or in unused space)"
            )
        );
    }
    assert_eq!(ctx.check(), 0, "the block is untouched");
    unsafe { pfree(p) };
    ctx.delete();
}

/// A chunk header whose offset was overwritten to lead exactly to the start of another context's
/// block names that block: `check()` and `pfree` report the chunk as a wrong context (not merely a
/// corrupt header), the damage the header word, and `pfree` leaves the chunk allocated.
#[test]
fn a_header_offset_naming_another_contexts_block_is_a_wrong_context() {
    const OFFSET_SHIFT: u32 = 34; // the header word's offset field: bits 34-63 (`src/chunk.rs`)
    let (a, b) = (new_ctx("OffsetCtxA"), new_ctx("OffsetCtxB"));
    let prefix = memctx::chunk_prefix_size();
    let (pa, pb) = (a.alloc(16).as_ptr(), b.alloc(16).as_ptr()); // each its keeper's first chunk
    let block_of = |p: *mut u8| p as usize - prefix - BEFORE_FIRST;
    // The chunk whose header lies above the other context's block, so the offset is positive.
    let (ctx, name, victim, other) = if pa > pb {
        (a, "OffsetCtxA", pa, block_of(pb))
    } else {
        (b, "OffsetCtxB", pb, block_of(pa))
    };
    let word = unsafe { victim.sub(prefix) } as *mut u64;
    let kept = unsafe { word.read() };
    let offset = (word as usize - other) as u64;
    assert!(
        offset < 1 << (64 - OFFSET_SHIFT),
        "blocks within the offset's reach"
    );
    unsafe { word.write((kept & ((1 << OFFSET_SHIFT) - 1)) | offset << OFFSET_SHIFT) };
    let found = one(collect(|| assert_eq!(ctx.check(), 1)));
    let freed = one(collect(|| unsafe { pfree(victim) }));
    unsafe { word.write(kept) };
    for (r, at) in [(&found, "check"), (&freed, "pfree")] {
        assert_eq!(r.class, BugClass::WrongContext, "{r}");
        assert_eq!(r.context, name, "{r}");
        assert_eq!(r.chunk, Some(victim as usize), "{r}");
        assert_eq!(r.range, Some((-(prefix as isize), 8 - prefix as isize)));
        assert_eq!(r.found_at, at, "{r}");
        assert_eq!(
            r.detail,
            "the chunk's header names a block of another context"
        );
    }
    assert_eq!(
        ctx.check(),
        0,
        "the header restored, the chunk is sound and live"
    );
    unsafe { pfree(victim) };
    a.delete();
    b.delete();
}

/// Asserts `r` is `pfree`'s report of the chunk `p` of the context `ctx` whose header word was
/// overwritten: a corrupt header, the damage the 8 bytes of the word.
fn assert_header_overwritten(r: &debug::Report, ctx: &str, p: *mut u8) {
    let prefix = memctx::chunk_prefix_size() as isize;
    assert_eq!(r.class, BugClass::CorruptHeader, "{r}");
    assert_eq!(r.context, ctx);
    assert_eq!(r.chunk, Some(p as usize));
    assert_eq!(r.range, Some((-prefix, -prefix + 8)));
    assert_eq!(r.found_at, "pfree");
    assert_eq!(r.detail, "the chunk's header word was overwritten");
}

/// The header word of an aligned allocation (a redirect to the chunk holding it) copied over the
/// header of a block's first chunk: followed, the redirect would lead before the block's chunks,
/// so `pfree` of that chunk reports its header as overwritten instead.
#[test]
fn a_redirect_leading_before_the_first_chunk_is_a_corrupt_header() {
    let ctx = new_ctx("RedirectCtx");
    let guard = ctx.switch_to();
    let first = ctx.alloc(16).as_ptr(); // the keeper's first chunk
    let aligned = memctx::palloc_aligned(16, 64, memctx::AllocFlags::NONE);
    let prefix = memctx::chunk_prefix_size();
    let redirect = unsafe { (aligned.sub(prefix) as *const u64).read() };
    let header = unsafe { first.sub(prefix) } as *mut u64;
    let kept = unsafe { header.read() };
    unsafe { header.write(redirect) };
    let r = one(collect(|| unsafe { pfree(first) }));
    unsafe { header.write(kept) };
    assert_header_overwritten(&r, "RedirectCtx", first);
    assert_eq!(ctx.check(), 0, "not freed, and the header restored");
    unsafe {
        pfree(aligned);
        pfree(first);
    }
    drop(guard);
    ctx.delete();
}

/// `pfree` of a chunk whose header word's size class and debug record were both overwritten (its
/// kind and block offset intact): those still say a chunk starts there, so it is a corrupt
/// header, not an invalid pointer, although neither the record nor a walk of the block (which
/// stops at the undecodable header) confirms it.
#[test]
fn pfree_of_a_chunk_whose_class_and_record_were_overwritten_is_a_corrupt_header() {
    let ctx = new_ctx("ClassCtx");
    let p = ctx.alloc(32).as_ptr(); // the keeper's first chunk
    let prefix = memctx::chunk_prefix_size();
    let (header, record) = unsafe { (p.sub(prefix), p.sub(prefix - 8) as *mut u64) };
    let kept = unsafe { ((header as *const u64).read(), record.read()) };
    unsafe {
        // Bits 8..16 of the header word: bits 3..11 of the size class (bits 5..34), so a class
        // past the largest; the kind (bits 0..4) and the offset (from bit 34) are untouched.
        header.add(1).write(0xff);
        record.write(u64::MAX);
    }
    let r = one(collect(|| unsafe { pfree(p) }));
    unsafe {
        (header as *mut u64).write(kept.0);
        record.write(kept.1);
    }
    assert_header_overwritten(&r, "ClassCtx", p);
    assert_eq!(ctx.check(), 0, "not freed, and the prefix restored");
    unsafe { pfree(p) };
    ctx.delete();
}

/// `pfree` of a chunk whose header word names the size class one past the largest (index 11, 16
/// KiB; kind and block offset intact), in a block with room for such a chunk after it: the class
/// is not believed, the header is reported as overwritten.
#[test]
fn a_header_naming_the_class_past_the_largest_is_a_corrupt_header() {
    /// The size class index: bits 5..34 of the header word.
    const CLASS_BITS: u64 = ((1 << 29) - 1) << 5;
    let sizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 64 << 10,
        max_block_size: 64 << 10,
    };
    let ctx = MemoryContext::top().new_child("ClassPastCtx", sizes);
    let p = ctx.alloc(32).as_ptr(); // the keeper's first chunk, 64 KiB of block after it
    let header = unsafe { p.sub(memctx::chunk_prefix_size()) } as *mut u64;
    let kept = unsafe { header.read() };
    unsafe { header.write((kept & !CLASS_BITS) | 11 << 5) };
    let r = one(collect(|| unsafe { pfree(p) }));
    unsafe { header.write(kept) };
    assert_header_overwritten(&r, "ClassPastCtx", p);
    assert_eq!(ctx.check(), 0, "not freed, and the header restored");
    unsafe { pfree(p) };
    ctx.delete();
}

/// Allocates two 24-byte chunks (64-byte classes, adjacent in the keeper) in `ctx` and overruns
/// the first by 48 bytes — its redzone, its class's slack and the header word of the second, as a
/// copy into a buffer too small does. Returns both chunks and the allocation line of the first.
fn overrun_into_the_next_header(ctx: MemoryContext) -> (*mut u8, *mut u8, u32) {
    let line = line!() + 1;
    let a = ctx.alloc(24).as_ptr();
    let b = ctx.alloc(24).as_ptr();
    assert_eq!(b as usize, a as usize + 64 + memctx::chunk_prefix_size());
    // SAFETY (process): 48 bytes past a's 24, the last 8 over b's header word. The bug.
    unsafe { a.add(24).write_bytes(b'x', 48) };
    (a, b, line)
}

/// An overrun that runs on into the next chunk's header word is found when the next chunk is
/// freed, and its report is the overrun of the chunk that overran — from its request's end on,
/// with its allocation stack — not only the victim's damaged header, which names no allocation:
/// under the default policy that first report is the only one a program sees.
#[test]
#[ignore = "the damaged header is reported without the chunk whose overrun reached it (src/debug/hooks.rs, verify.rs)"]
fn an_overrun_into_the_next_header_names_the_chunk_that_overran() {
    let ctx = new_ctx("NextHeaderCtx");
    let (mut a, mut line) = (core::ptr::null_mut(), 0);
    let reports = collect(|| {
        let (first, b, at) = overrun_into_the_next_header(ctx);
        (a, line) = (first, at);
        unsafe { pfree(b) };
    });
    let r = reports.first().expect("a report at the pfree");
    assert_eq!(r.class, BugClass::Overrun, "{reports:#?}");
    assert_eq!(r.context, "NextHeaderCtx");
    assert_eq!(r.found_at, "pfree");
    assert_eq!(r.chunk, Some(a as usize), "{r}");
    assert_eq!(r.requested, Some(24), "{r}");
    assert_eq!(r.range.map(|(start, _)| start), Some(24), "{r}");
    assert_first_frame_at(
        &r.alloc_backtrace(),
        "overrun_into_the_next_header",
        line,
        "allocation",
    );
    ctx.delete();
}

/// Damage that `check()` reported is not reported again by the reset after it (README: each
/// damage is reported once), a damaged chunk header included; the reset survives the header.
#[test]
#[ignore = "a damaged header found by check() is reported again at the next reset (src/debug/verify.rs)"]
fn a_damaged_header_found_by_check_is_not_reported_again_at_reset() {
    let ctx = new_ctx("HeaderOnceCtx");
    let found = collect(|| {
        overrun_into_the_next_header(ctx);
        assert!(ctx.check() >= 1);
    });
    assert!(!found.is_empty());
    let again = collect(|| ctx.reset());
    assert!(again.is_empty(), "reported again at the reset: {again:#?}");
    assert!(ctx.is_empty());
    let p = ctx.alloc(24).as_ptr();
    unsafe { pfree(p) };
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

/// The two kinds whose free chunks are linked through their data's first word: an AllocSet (its
/// freelists) and a Slab of 40-byte chunks (each block's free list).
fn linked_kinds(name: &'static str) -> [MemoryContext; 2] {
    let top = MemoryContext::top();
    [
        top.new_child(name, BlockSizes::DEFAULT),
        top.new_slab_child(name, 8192, 40),
    ]
}

/// Asserts `r` is a write-after-free of the freed chunk `p` covering byte 3 of its first word (the
/// free-list link), found at `found_at`, with the allocation line `line` of `name`.
fn assert_link_damage(r: &debug::Report, p: *mut u8, found_at: &str, name: &str, line: u32) {
    assert_eq!(r.class, BugClass::WriteAfterFree, "{r}");
    assert_eq!(r.chunk, Some(p as usize), "{r}");
    assert_eq!(r.found_at, found_at, "{r}");
    let (start, end) = r.range.expect("a damaged range");
    assert!((0..=3).contains(&start) && (4..=8).contains(&end), "{r}");
    assert_first_frame_at(&r.alloc_backtrace(), name, line, "allocation");
}

/// A write through a stale pointer into the first word of a freed chunk — where the free list's
/// link lives, and where a program's first field (a refcount, a `next` pointer) is — is found when
/// the free list hands the chunk out again, like a write anywhere else in it; the free list is not
/// followed into the damaged link, so the next allocation of that size is a sound chunk, not a
/// wild pointer (in a child: the damaged link ends the process with `SIGSEGV` today).
#[test]
#[ignore = "a freed chunk's link word is not verified: the next pop follows it (src/debug/hooks.rs freelist_open)"]
fn a_write_into_a_freed_chunks_link_is_found_at_reuse() {
    const NAME: &str = "a_write_into_a_freed_chunks_link_is_found_at_reuse";
    if !child::in_child_with(NAME, &[]) {
        return;
    }
    for ctx in linked_kinds("LinkReuseCtx") {
        let (mut a, mut line) = (core::ptr::null_mut(), 0);
        let reports = collect(|| {
            line = line!() + 1;
            a = ctx.alloc(40).as_ptr();
            let b = ctx.alloc(40).as_ptr();
            let _keep = ctx.alloc(40).as_ptr();
            unsafe {
                pfree(b);
                pfree(a); // a's link now leads to b
                a.add(3).write(0x35); // the bug: a stale write into the link
            }
            let x = ctx.alloc(40).as_ptr(); // a, handed out again
            assert_eq!(x, a);
            let y = ctx.alloc(40).as_ptr(); // must be a sound chunk
            unsafe {
                y.write_bytes(0x11, 40);
                pfree(y);
                pfree(x);
            }
        });
        let r = reports.first().expect("a report at the reuse");
        assert_link_damage(r, a, "reuse", NAME, line);
        assert_eq!(reports.len(), 1, "{reports:#?}");
        assert_eq!(ctx.check(), 0);
        ctx.delete();
    }
}

/// The same write into the link of a chunk that stays on its free list is found by `check()`,
/// once: the delete after it reports nothing more.
#[test]
#[ignore = "a freed chunk's link word is not verified by check() (src/debug/verify.rs)"]
fn a_write_into_a_freed_chunks_link_is_found_by_check() {
    const NAME: &str = "a_write_into_a_freed_chunks_link_is_found_by_check";
    for ctx in linked_kinds("LinkCheckCtx") {
        let (mut a, mut line) = (core::ptr::null_mut(), 0);
        let r = one(collect(|| {
            line = line!() + 1;
            a = ctx.alloc(40).as_ptr();
            let _keep = ctx.alloc(40).as_ptr();
            unsafe {
                pfree(a);
                a.add(3).write(0x35); // the bug: a stale write into the link
            }
            assert_eq!(ctx.check(), 1);
        }));
        assert_link_damage(&r, a, "check", NAME, line);
        let again = collect(|| ctx.delete());
        assert!(again.is_empty(), "reported again at the delete: {again:#?}");
    }
}
