//! Bad input: sizes and alignments out of range, pointers that are not chunks, tree operations
//! that must be refused, callbacks that reset or delete what is being reset, and panics inside a
//! per-row scope. Each case must end in a clear error or a defined result, and leave nothing
//! corrupted (the debug build's full check finds nothing) or lost (the counters are back where
//! they were).
//!
//! Runs in both builds. The pointer tests of the debug build (`debug_pointers`) hand memctx
//! pointers that are not chunks, which the debug build validates against its block registry
//! before it reads anything; they commit no write, so they are safe under memcheck and ASan.
//! Requests the system cannot satisfy are only made where a failing `malloc` returns null: under
//! ASan that needs `ASAN_OPTIONS=allocator_may_return_null=1` (see [`huge_malloc_ok`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::vec::Vec as AVec;
use core::alloc::Layout;
use memctx::{
    palloc, palloc0, palloc_aligned, palloc_extended, pfree, repalloc, repalloc_extended,
    repalloc_huge, AllocFlags, BlockSizes, ContextError, MemoryContext, MAX_ALIGNMENT,
    MAX_ALLOC_HUGE_SIZE, MAX_ALLOC_SIZE,
};

#[path = "common/panics.rs"]
mod panics;
use panics::expect_panic as panic_message;

/// Whether a request the system cannot satisfy may reach `malloc`: true unless this is an ASan
/// build whose runtime aborts on it (`allocator_may_return_null` not set).
fn huge_malloc_ok() -> bool {
    // SAFETY: dlsym with a NUL-terminated name and the default handle has no preconditions.
    let asan = unsafe { !libc::dlsym(libc::RTLD_DEFAULT, c"__asan_init".as_ptr()).is_null() };
    !asan || std::env::var("ASAN_OPTIONS").is_ok_and(|o| o.contains("allocator_may_return_null=1"))
}

/// A fresh context, and the state to compare with at the end.
struct Fixture {
    ctx: MemoryContext,
    /// Bytes a block costs when every chunk in it is free: its header (and the padding before
    /// the first chunk). Read from the fresh context, whose keeper holds nothing.
    block_overhead: u64,
    /// Bytes the rest of the tree holds.
    tree: usize,
}

impl Fixture {
    fn new(name: &'static str) -> Fixture {
        let tree = MemoryContext::top().mem_allocated(true);
        let ctx = MemoryContext::top().new_child(name, BlockSizes::DEFAULT);
        let c = ctx.counters();
        assert_eq!(c.total_nblocks, 1);
        Fixture {
            ctx,
            block_overhead: c.used_bytes(),
            tree,
        }
    }

    /// Nothing corrupted (debug build: the full check is clean) and nothing lost: with every
    /// chunk freed, every byte the context holds is free space or a block header, and the
    /// context has no children left. Then delete, which gives the tree back what it held.
    fn done(self) {
        assert_eq!(self.ctx.check(), 0, "the full check found damage");
        let c = self.ctx.counters();
        assert_eq!(
            c.used_bytes(),
            c.total_nblocks * self.block_overhead,
            "bytes still in use after every chunk was freed: {c}"
        );
        assert_eq!(c.total_bytes, self.ctx.mem_allocated(false) as u64);
        assert!(self.ctx.children().is_empty());
        self.ctx.delete();
        assert_eq!(MemoryContext::top().mem_allocated(true), self.tree);
    }
}

/// Fills `n` bytes at `p` with a pattern seeded by `seed`.
fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the caller's chunk has `n` bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// Whether `n` bytes at `p` hold the pattern of [`fill`].
fn holds(p: *mut u8, n: usize, seed: u8) -> bool {
    // SAFETY: the caller's chunk has `n` bytes.
    (0..n).all(|i| unsafe { *p.add(i) } == seed.wrapping_add(i as u8))
}

// ---------------------------------------------------------------------------------------------
// Sizes.

#[test]
fn sizes_over_the_limit_are_invalid_requests() {
    let f = Fixture::new("SizeLimit");
    let _g = f.ctx.switch_to();
    for size in [
        MAX_ALLOC_SIZE + 1,
        1 << 31,
        MAX_ALLOC_HUGE_SIZE,
        usize::MAX / 2,
        usize::MAX,
    ] {
        let want = format!("invalid memory alloc request size {size}");
        assert_eq!(panic_message(|| palloc(size)), want);
        assert_eq!(panic_message(|| palloc0(size)), want);
        assert_eq!(
            panic_message(|| palloc_extended(size, AllocFlags::NO_OOM)),
            want
        );
        assert_eq!(panic_message(|| f.ctx.alloc(size)), want);
        assert_eq!(panic_message(|| f.ctx.alloc_zeroed(size)), want);
        assert_eq!(
            panic_message(|| f.ctx.alloc_extended(size, AllocFlags::ZERO)),
            want
        );
    }
    // The panics changed nothing: the switch is still in place and the context is empty.
    assert_eq!(MemoryContext::current(), f.ctx);
    assert!(f.ctx.is_empty());
    drop(_g);
    f.done();
}

#[test]
fn huge_sizes_beyond_the_huge_limit_are_invalid_requests() {
    let f = Fixture::new("HugeLimit");
    for size in [MAX_ALLOC_HUGE_SIZE + 1, usize::MAX - 15, usize::MAX] {
        let want = format!("invalid memory alloc request size {size}");
        assert_eq!(
            panic_message(|| f.ctx.alloc_extended(size, AllocFlags::HUGE)),
            want
        );
        // NO_OOM covers a system that says no, not a request that is invalid (PostgreSQL's rule).
        assert_eq!(
            panic_message(|| f
                .ctx
                .alloc_extended(size, AllocFlags::HUGE | AllocFlags::NO_OOM)),
            want
        );
    }
    f.done();
}

#[test]
fn huge_sizes_the_system_refuses_are_out_of_memory() {
    if !huge_malloc_ok() {
        eprintln!("skipped: ASan without allocator_may_return_null=1 aborts on impossible sizes");
        return;
    }
    let f = Fixture::new("HugeOom");
    for size in [MAX_ALLOC_HUGE_SIZE, MAX_ALLOC_HUGE_SIZE - 4096, 1 << 62] {
        assert!(f
            .ctx
            .alloc_extended(size, AllocFlags::HUGE | AllocFlags::NO_OOM)
            .is_none());
        {
            let _g = f.ctx.switch_to();
            assert!(palloc_extended(size, AllocFlags::HUGE | AllocFlags::NO_OOM).is_null());
        }
        assert_eq!(
            panic_message(|| f.ctx.alloc_extended(size, AllocFlags::HUGE)),
            format!(
                "out of memory: Failed on request of size {size} in memory context \"HugeOom\"."
            )
        );
    }
    f.done();
}

#[test]
fn zero_sizes_are_distinct_chunks() {
    let f = Fixture::new("ZeroSize");
    let _g = f.ctx.switch_to();
    let a = palloc(0);
    let b = palloc0(0);
    let c = f.ctx.alloc(0).as_ptr();
    let d = palloc_aligned(0, 256, AllocFlags::NONE);
    assert!(!a.is_null() && !b.is_null() && !d.is_null());
    assert!(a != b && b != c && a != c && d != a);
    assert_eq!(d as usize % 256, 0);
    // SAFETY: live chunks of this thread.
    unsafe {
        assert_eq!(memctx::chunk_context(a), f.ctx);
        assert_eq!(memctx::chunk_context(d), f.ctx);
        let a = repalloc(a, 0);
        let a = repalloc(a, 10);
        fill(a, 10, 1);
        let a = repalloc(a, 0);
        let d = repalloc(d, 0);
        assert_eq!(d as usize % 256, 0);
        for p in [a, b, c, d] {
            pfree(p);
        }
    }
    drop(_g);
    f.done();
}

#[test]
fn repalloc_to_a_bad_size_keeps_the_chunk() {
    let f = Fixture::new("ReallocBad");
    let small = f.ctx.alloc(100).as_ptr();
    let large = f.ctx.alloc(20_000).as_ptr(); // a block of its own
    fill(small, 100, 3);
    fill(large, 20_000, 4);
    for p in [small, large] {
        for size in [MAX_ALLOC_SIZE + 1, usize::MAX] {
            let msg = panic_message(|| unsafe { repalloc(p, size) });
            assert_eq!(msg, format!("invalid memory alloc request size {size}"));
        }
        let msg = panic_message(|| unsafe { repalloc_huge(p, usize::MAX) });
        assert!(
            msg.starts_with("invalid memory alloc request size"),
            "{msg}"
        );
    }
    if huge_malloc_ok() {
        for p in [small, large] {
            // SAFETY: live chunks; NO_OOM leaves them valid on failure.
            let q = unsafe {
                repalloc_extended(
                    p,
                    MAX_ALLOC_HUGE_SIZE,
                    AllocFlags::HUGE | AllocFlags::NO_OOM,
                )
            };
            assert!(q.is_null());
            let msg = panic_message(|| unsafe { repalloc_huge(p, MAX_ALLOC_HUGE_SIZE) });
            assert!(
                msg.starts_with("out of memory: Failed on request of size"),
                "{msg}"
            );
        }
    }
    assert!(holds(small, 100, 3) && holds(large, 20_000, 4));
    // SAFETY: still live.
    unsafe {
        assert_eq!(memctx::chunk_context(small), f.ctx);
        assert_eq!(memctx::chunk_context(large), f.ctx);
        pfree(small);
        pfree(large);
    }
    f.done();
}

// ---------------------------------------------------------------------------------------------
// Alignments.

#[test]
fn bad_alignments_are_refused() {
    let f = Fixture::new("BadAlign");
    let _g = f.ctx.switch_to();
    for align in [
        0,
        3,
        24,
        48,
        1000,
        MAX_ALIGNMENT + 16,
        MAX_ALIGNMENT * 2,
        1 << 40,
        1 << 63,
        usize::MAX,
    ] {
        for flags in [AllocFlags::NONE, AllocFlags::HUGE | AllocFlags::NO_OOM] {
            let msg = panic_message(|| palloc_aligned(16, align, flags));
            assert_eq!(
                msg,
                format!("invalid alignment {align} requested in palloc_aligned")
            );
            let msg = panic_message(|| f.ctx.alloc_aligned(16, align, flags));
            assert!(msg.starts_with("invalid alignment"), "{msg}");
        }
    }
    // A size over the limit is refused before any arithmetic with the alignment.
    for size in [MAX_ALLOC_SIZE + 1, usize::MAX - 10, usize::MAX] {
        let msg = panic_message(|| palloc_aligned(size, 4096, AllocFlags::NONE));
        assert_eq!(msg, format!("invalid memory alloc request size {size}"));
    }
    assert_eq!(
        panic_message(|| palloc_aligned(usize::MAX, 4096, AllocFlags::HUGE)),
        format!("invalid memory alloc request size {}", usize::MAX)
    );
    drop(_g);
    f.done();
}

#[test]
fn every_valid_alignment_up_to_the_maximum() {
    let f = Fixture::new("GoodAlign");
    let mut align = 1;
    while align <= MAX_ALIGNMENT {
        let size = if align >= 1 << 20 { 8 } else { 100 };
        let p = f
            .ctx
            .alloc_aligned(size, align, AllocFlags::ZERO)
            .expect("no NO_OOM: never None")
            .as_ptr();
        assert_eq!(p as usize % align, 0, "align {align}");
        // SAFETY: a live chunk of `size` bytes.
        unsafe {
            assert!((0..size).all(|i| *p.add(i) == 0));
            fill(p, size, align as u8);
            assert_eq!(memctx::chunk_context(p), f.ctx);
            let q = repalloc(p, size * 3);
            assert_eq!(q as usize % align, 0, "repalloc kept align {align}");
            assert!(holds(q, size, align as u8));
            pfree(q);
        }
        align *= 2;
    }
    f.done();
}

/// A size the huge limit allows must fail the same with an alignment as without:
/// `palloc_extended(MAX_ALLOC_HUGE_SIZE, HUGE | NO_OOM)` returns null, and so must
/// `palloc_aligned`, not panic with "invalid memory alloc request size N" for N the size plus
/// its internal over-allocation, a number the caller never asked for (src/raw.rs
/// `alloc_aligned_in` checks the caller's size).
#[test]
fn aligned_huge_request_fails_like_an_unaligned_one() {
    if !huge_malloc_ok() {
        return;
    }
    let f = Fixture::new("AlignedHuge");
    let got = catch_unwind(AssertUnwindSafe(|| {
        f.ctx
            .alloc_aligned(
                MAX_ALLOC_HUGE_SIZE,
                4096,
                AllocFlags::HUGE | AllocFlags::NO_OOM,
            )
            .is_none()
    }));
    assert!(
        matches!(got, Ok(true)),
        "expected None (as alloc_extended gives for the same size and flags), got {:?}",
        got.map_err(|e| e.downcast_ref::<String>().cloned())
    );
    f.done();
}

// ---------------------------------------------------------------------------------------------
// The safe API: Layout edge cases through the Allocator.

#[test]
fn allocator_zero_sized_layouts() {
    let f = Fixture::new("ZeroLayouts");
    let a = f.ctx.pin();
    for align in [1, 2, 8, 16, 64, 4096, 1 << 20] {
        let l = Layout::from_size_align(0, align).unwrap();
        let p = a.allocate(l).expect("zero size");
        assert_eq!(p.len(), 0);
        assert_eq!(p.cast::<u8>().as_ptr() as usize % align, 0);
        // SAFETY: allocated with `l` by `a`.
        unsafe {
            // Grow from nothing, then shrink back to nothing.
            let big = Layout::from_size_align(100, align).unwrap();
            let q = a.grow(p.cast(), l, big).expect("grow from zero");
            assert_eq!(q.cast::<u8>().as_ptr() as usize % align, 0);
            fill(q.cast().as_ptr(), 100, 7);
            let r = a.shrink(q.cast(), big, l).expect("shrink to zero");
            assert_eq!(r.len(), 0);
            a.deallocate(r.cast(), l);
        }
    }
    assert!(f.ctx.is_empty() || f.ctx.counters().free_chunks > 0);
    drop(a);
    f.done();
}

#[test]
fn allocator_changes_alignment_on_grow_and_shrink() {
    let f = Fixture::new("AlignChange");
    let a = f.ctx.pin();
    let l8 = Layout::from_size_align(40, 8).unwrap();
    let l64 = Layout::from_size_align(200, 64).unwrap();
    let l4k = Layout::from_size_align(300, 4096).unwrap();
    let l16 = Layout::from_size_align(10, 16).unwrap();
    // SAFETY: each pointer is passed on with the layout it was last allocated with.
    unsafe {
        let p = a.allocate(l8).unwrap().cast::<u8>();
        fill(p.as_ptr(), 40, 9);
        let p = a.grow(p, l8, l64).unwrap().cast::<u8>();
        assert_eq!(p.as_ptr() as usize % 64, 0);
        assert!(holds(p.as_ptr(), 40, 9));
        let p = a.grow_zeroed(p, l64, l4k).unwrap().cast::<u8>();
        assert_eq!(p.as_ptr() as usize % 4096, 0);
        assert!(holds(p.as_ptr(), 40, 9));
        let p = a.shrink(p, l4k, l16).unwrap().cast::<u8>();
        assert!(holds(p.as_ptr(), 10, 9));
        a.deallocate(p, l16);
    }
    drop(a);
    f.done();
}

#[test]
fn allocator_sizes_beyond_the_limit_are_errors_not_panics() {
    let f = Fixture::new("LayoutHuge");
    let a = f.ctx.pin();
    for size in [MAX_ALLOC_HUGE_SIZE + 1, isize::MAX as usize - 15] {
        let l = Layout::from_size_align(size, 16).unwrap();
        assert_eq!(a.allocate(l), Err(AllocError));
        assert_eq!(a.allocate_zeroed(l), Err(AllocError));
    }
    if huge_malloc_ok() {
        let l = Layout::from_size_align(MAX_ALLOC_HUGE_SIZE, 16).unwrap();
        assert_eq!(a.allocate(l), Err(AllocError));
    }
    // Collections see the errors as errors.
    let mut v: AVec<u8, _> = AVec::new_in(&a);
    assert!(v.try_reserve(usize::MAX).is_err());
    assert!(v.try_reserve(isize::MAX as usize - 100).is_err());
    v.extend_from_slice(b"still usable");
    assert_eq!(&v[..], b"still usable");
    // A failed grow leaves the old allocation alone.
    let l = Layout::from_size_align(64, 8).unwrap();
    let p = a.allocate(l).unwrap().cast::<u8>();
    fill(p.as_ptr(), 64, 5);
    let huge = Layout::from_size_align(MAX_ALLOC_HUGE_SIZE + 1, 8).unwrap();
    // SAFETY: `p` is live with layout `l`.
    unsafe {
        assert_eq!(a.grow(p, l, huge), Err(AllocError));
        assert!(holds(p.as_ptr(), 64, 5));
        a.deallocate(p, l);
    }
    drop(v);
    drop(a);
    f.done();
}

/// The safe API promises "a failure is an AllocError, never a panic inside the allocator": a
/// `Layout` whose alignment exceeds `MAX_ALIGNMENT` (valid for `Layout`: any power of two) is an
/// error, refused by src/alloc_api.rs `allocate` before `alloc_aligned_in` could panic with
/// "invalid alignment".
#[test]
fn allocator_alignment_beyond_the_maximum_is_an_error_not_a_panic() {
    let f = Fixture::new("LayoutAlign");
    let a = f.ctx.pin();
    for align in [MAX_ALIGNMENT * 2, 1 << 40] {
        let l = Layout::from_size_align(1, align).unwrap();
        let got = catch_unwind(AssertUnwindSafe(|| a.allocate(l).map(|p| p.len())));
        assert!(
            matches!(got, Ok(Err(AllocError))),
            "allocate(size 1, align {align}) should be Err(AllocError), it panicked or succeeded"
        );
    }
    drop(a);
    f.done();
}

/// An over-aligned `Layout` whose size is within the huge limit, but not once the alignment is
/// added, is an `AllocError` too, not a panic from `check_size` on the `size + align +
/// CHUNK_PREFIX` that `alloc_aligned_in` asks for.
#[test]
fn allocator_over_aligned_huge_size_is_an_error_not_a_panic() {
    let f = Fixture::new("LayoutAlignHuge");
    let a = f.ctx.pin();
    let l = Layout::from_size_align(MAX_ALLOC_HUGE_SIZE, 32).unwrap();
    let got = catch_unwind(AssertUnwindSafe(|| a.allocate(l).map(|p| p.len())));
    assert!(
        matches!(got, Ok(Err(AllocError))),
        "allocate(MAX_ALLOC_HUGE_SIZE, align 32) should be Err(AllocError); it panicked"
    );
    drop(a);
    f.done();
}

// ---------------------------------------------------------------------------------------------
// Tree operations that must be refused.

#[test]
fn top_cannot_be_deleted_or_moved() {
    let top = MemoryContext::top();
    let other = top.new_child("Other", BlockSizes::SMALL);
    assert_eq!(top.try_delete(), Err(ContextError::IsTop));
    assert_eq!(top.try_set_parent(other), Err(ContextError::IsTop));
    assert_eq!(
        panic_message(|| top.delete()),
        "TopMemoryContext cannot be deleted or moved"
    );
    assert!(top.is_alive());
    assert_eq!(other.parent(), Some(top));
    other.delete();
}

#[test]
fn resetting_top_frees_the_whole_tree_but_keeps_top() {
    // On a thread of its own: resetting Top deletes every context of the thread.
    std::thread::spawn(|| {
        let top = MemoryContext::top();
        let a = top.new_child("A", BlockSizes::DEFAULT);
        let b = a.new_child("B", BlockSizes::SMALL);
        let _ = b.alloc(100);
        let _ = top.alloc(100_000);
        {
            let _g = b.switch_to();
            assert!(matches!(
                top.try_reset(),
                Err(ContextError::ContainsCurrent { .. })
            ));
        }
        assert!(a.is_alive() && b.is_alive());
        top.reset();
        assert!(!a.is_alive() && !b.is_alive());
        assert!(top.is_alive() && top.is_empty());
        assert_eq!(top.counters().total_nblocks, 1);
        assert_eq!(top.check(), 0);
    })
    .join()
    .unwrap();
}

#[test]
fn the_current_context_and_its_ancestors_cannot_be_deleted() {
    let f = Fixture::new("Ancestor");
    let mid = f.ctx.new_child("Mid", BlockSizes::DEFAULT);
    let leaf = mid.new_child("Leaf", BlockSizes::SMALL);
    let p = leaf.alloc(64).as_ptr();
    fill(p, 64, 11);
    {
        let _g = leaf.switch_to();
        for c in [leaf, mid, f.ctx] {
            assert_eq!(
                c.try_delete(),
                Err(ContextError::ContainsCurrent {
                    context: c.name(),
                    current: "Leaf"
                })
            );
        }
        for c in [mid, f.ctx] {
            assert_eq!(
                c.try_reset(),
                Err(ContextError::ContainsCurrent {
                    context: c.name(),
                    current: "Leaf"
                })
            );
            assert!(c.try_delete_children().is_err());
        }
        let msg = panic_message(|| f.ctx.delete());
        assert!(
            msg.contains("\"Ancestor\"") && msg.contains("CurrentMemoryContext \"Leaf\""),
            "{msg}"
        );
        assert!(holds(p, 64, 11), "a refused operation changed nothing");
        // Resetting the current context itself is fine (its chunks go, it stays current).
        leaf.reset();
        assert_eq!(MemoryContext::current(), leaf);
    }
    assert_eq!(
        leaf.try_set_parent(leaf),
        Err(ContextError::WouldCycle {
            context: "Leaf",
            new_parent: "Leaf"
        })
    );
    assert_eq!(
        f.ctx.try_set_parent(leaf),
        Err(ContextError::WouldCycle {
            context: "Ancestor",
            new_parent: "Leaf"
        })
    );
    assert_eq!(leaf.parent(), Some(mid));
    mid.delete();
    f.done();
}

#[test]
fn stale_handles_panic_with_the_context_name() {
    let c = MemoryContext::top().new_child("Gone", BlockSizes::SMALL);
    c.delete();
    let msg = panic_message(|| c.alloc(8));
    assert!(
        msg.starts_with("memory context \"Gone\" used after it was deleted"),
        "{msg}"
    );
    for msg in [
        panic_message(|| c.reset()),
        panic_message(|| c.delete()),
        panic_message(|| c.counters()),
        panic_message(|| c.switch_to()),
        panic_message(|| c.new_child("X", BlockSizes::SMALL)),
    ] {
        assert!(msg.contains("\"Gone\" used after it was deleted"), "{msg}");
    }
    // A recycled header does not revive old handles.
    let d = MemoryContext::top().new_child("Gone", BlockSizes::SMALL);
    assert!(!c.is_alive() && d.is_alive() && c != d);
    d.delete();
}

// ---------------------------------------------------------------------------------------------
// Reset callbacks that reset or delete.

#[test]
fn reset_or_delete_from_inside_a_reset_callback_is_refused() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let f = Fixture::new("CbParent");
    // Children are deleted newest first: the sibling is still alive in the child's callback.
    let sibling = f.ctx.new_child("CbSibling", BlockSizes::SMALL);
    let child = f.ctx.new_child("CbChild", BlockSizes::SMALL);
    let unrelated = MemoryContext::top().new_child("CbUnrelated", BlockSizes::SMALL);
    let seen: Rc<RefCell<Vec<String>>> = Rc::default();
    let parent = f.ctx;
    {
        let seen = seen.clone();
        child.register_reset_callback(move || {
            let mut s = seen.borrow_mut();
            s.push(format!("child: reset self {:?}", child.try_reset()));
            s.push(format!("child: delete self {:?}", child.try_delete()));
            s.push(format!("child: delete parent {:?}", parent.try_delete()));
            s.push(format!("child: reset parent {:?}", parent.try_reset()));
            s.push(format!("child: delete sibling {:?}", sibling.try_delete()));
            s.push(format!(
                "child: move self {:?}",
                child.try_set_parent(unrelated)
            ));
            s.push(format!(
                "child: move in {:?}",
                unrelated.try_set_parent(child)
            ));
            s.push(format!(
                "child: reset unrelated {:?}",
                unrelated.try_reset()
            ));
            // Allocating in the dying context is allowed; the delete frees it.
            let _ = child.alloc(100);
        });
    }
    {
        let seen = seen.clone();
        parent.register_reset_callback(move || {
            let mut s = seen.borrow_mut();
            s.push(format!("parent: reset self {:?}", parent.try_reset()));
            s.push(format!("parent: delete self {:?}", parent.try_delete()));
            s.push(format!(
                "parent: pin {}",
                catch_unwind(AssertUnwindSafe(|| drop(parent.pin()))).is_err()
            ));
        });
    }
    parent.reset();
    let seen = seen.borrow().join("\n");
    let busy_parent = "Err(Busy { context: \"CbParent\" })";
    let expected = [
        format!("child: reset self {busy_parent}"),
        format!("child: delete self {busy_parent}"),
        format!("child: delete parent {busy_parent}"),
        format!("child: reset parent {busy_parent}"),
        format!("child: delete sibling {busy_parent}"),
        format!("child: move self {busy_parent}"),
        format!("child: move in {busy_parent}"),
        "child: reset unrelated Ok(())".to_string(),
        format!("parent: reset self {busy_parent}"),
        format!("parent: delete self {busy_parent}"),
        "parent: pin true".to_string(),
    ]
    .join("\n");
    assert_eq!(seen, expected);
    assert!(!child.is_alive() && !sibling.is_alive());
    assert!(unrelated.is_alive());
    // Nothing is left busy: the parent resets and deletes normally afterwards.
    assert_eq!(parent.try_reset(), Ok(()));
    unrelated.delete();
    f.done();
}

#[test]
fn a_panicking_reset_callback_leaves_a_usable_context() {
    let f = Fixture::new("CbPanic");
    let child = f.ctx.new_child("CbPanicChild", BlockSizes::SMALL);
    let p = f.ctx.alloc(5000).as_ptr();
    fill(p, 5000, 2);
    f.ctx.register_reset_callback(|| panic!("callback failed"));
    assert_eq!(panic_message(|| f.ctx.reset()), "callback failed");
    // The reset stopped at the callback: children were deleted first, the chunks are intact.
    assert!(!child.is_alive());
    assert!(holds(p, 5000, 2));
    // The busy mark was undone: the context can be pinned, reset and deleted.
    drop(f.ctx.pin());
    assert_eq!(f.ctx.try_reset(), Ok(()));
    assert!(f.ctx.is_empty());
    f.done();
}

#[test]
fn a_callback_creating_children_during_delete_does_not_leak_them() {
    let parent = MemoryContext::top().new_child("CbCreator", BlockSizes::SMALL);
    let made = std::rc::Rc::new(std::cell::Cell::new(None));
    let m = made.clone();
    parent.register_reset_callback(move || {
        let c = parent.new_child("BornInCallback", BlockSizes::SMALL);
        let _ = c.alloc(1000);
        m.set(Some(c));
    });
    let tree_before = MemoryContext::top().mem_allocated(true);
    parent.delete();
    let c = made.get().expect("the callback ran");
    assert!(
        !c.is_alive(),
        "a child created by a delete callback must be deleted too"
    );
    assert!(MemoryContext::top().mem_allocated(true) < tree_before);
    assert!(MemoryContext::top()
        .children()
        .iter()
        .all(|c| c.name() != "BornInCallback"));
}

/// A reset callback of a context that is being deleted may make that context current
/// (`switch_to` has no check): the delete must not leave CurrentMemoryContext naming a deleted
/// header on the recycle list (from which `current()` would hand out a handle that claims to be
/// alive, and `palloc` would allocate into a context no tree reaches). `delete_one` moves
/// CurrentMemoryContext to the parent in that case.
#[test]
fn a_callback_cannot_leave_current_in_a_deleted_context() {
    std::thread::spawn(|| {
        let top = MemoryContext::top();
        let parent = top.new_child("SwParent", BlockSizes::SMALL);
        let child = parent.new_child("SwChild", BlockSizes::SMALL);
        child.register_reset_callback(move || {
            let _ = memctx::switch_to(child);
        });
        let _ = parent.try_delete();
        let cur = MemoryContext::current();
        // Whatever the outcome, CurrentMemoryContext must be a live context of the tree.
        let in_tree = cur.is_alive() && cur.path().first() == Some(&"TopMemoryContext");
        assert!(
            in_tree,
            "CurrentMemoryContext is {cur:?} with path {:?} after its delete",
            cur.path()
        );
        if parent.is_alive() {
            parent.delete();
        }
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Panics inside a per-row scope.

#[test]
fn a_panic_inside_a_scope_still_resets_and_unpins() {
    let f = Fixture::new("ScopePanic");
    let outer = MemoryContext::current();
    for row in 0..10 {
        let msg = panic_message(|| {
            f.ctx.scope(|mem| {
                let mut v: AVec<u64, _> = AVec::new_in(mem);
                v.extend(0..1000u64);
                let _raw = palloc(5000); // in the scope's context: it is current
                let _child = f.ctx.new_child("RowChild", BlockSizes::SMALL);
                if row % 2 == 0 {
                    panic!("row {row} failed");
                }
                // A nested scope on a child context: both are reset on the way out.
                _child.scope(|_| {
                    let _ = palloc(100);
                    panic!("nested row {row} failed")
                })
            })
        });
        assert!(msg.contains(&format!("row {row} failed")), "{msg}");
        assert_eq!(MemoryContext::current(), outer, "the switch was undone");
        assert_eq!(f.ctx.pin_count(), 0, "the pin was dropped");
        assert!(f.ctx.is_empty(), "the context was reset");
        assert!(f.ctx.children().is_empty());
        assert_eq!(f.ctx.counters().total_nblocks, 1, "only the keeper is left");
    }
    f.done();
}

#[test]
fn a_scope_whose_pin_escaped_refuses_to_reset() {
    let f = Fixture::new("ScopeLeak");
    // A forgotten clone of the pin keeps the context pinned: the scope cannot reset it. Without
    // a panic in flight the scope says so with a panic; while unwinding it logs instead (a panic
    // in a drop during unwinding would abort).
    let row_chunk = std::cell::Cell::new(std::ptr::null_mut());
    let msg = panic_message(|| {
        f.ctx.scope(|mem| {
            row_chunk.set(palloc(10));
            std::mem::forget(mem.clone());
        })
    });
    assert!(
        msg.starts_with("per-row scope could not reset its context"),
        "{msg}"
    );
    // The next scope refuses to start on a pinned context: its row could not be reset.
    let msg = panic_message(|| f.ctx.scope(|_| panic!("row ran")));
    assert!(msg.contains("already pinned"), "{msg}");
    assert_eq!(f.ctx.pin_count(), 1, "the forgotten pin is still there");
    assert!(matches!(
        f.ctx.try_reset(),
        Err(ContextError::Pinned { .. })
    ));
    assert!(matches!(
        f.ctx.try_delete(),
        Err(ContextError::Pinned { .. })
    ));
    // The context stays pinned for good; it is leaked on purpose (no API can unpin it). Its
    // row's chunk, which no reset will free now, is freed by hand: its pointer must not be lost.
    // SAFETY: the chunk is live (the reset was refused), freed once.
    unsafe { pfree(row_chunk.get()) };
}

// ---------------------------------------------------------------------------------------------
// Pointers that are not chunks (debug build: reports, not crashes).

#[cfg(feature = "debug-contexts")]
mod debug_pointers {
    use super::*;
    use memctx::debug::{self, BugClass, Policy, Report};

    /// Runs `f` with the Log policy; returns the classes and details it raised.
    fn reports(f: impl FnOnce()) -> Vec<Report> {
        debug::set_thread_policy(Some(Policy::Log));
        let _ = debug::take_reports();
        f();
        let r = debug::take_reports();
        debug::set_thread_policy(None);
        r
    }

    fn classes(r: &[Report]) -> Vec<BugClass> {
        r.iter().map(|r| r.class).collect()
    }

    #[test]
    fn foreign_interior_and_misaligned_pointers_are_reported_and_skipped() {
        let f = Fixture::new("Pointers");
        let keep = f.ctx.alloc(200).as_ptr();
        fill(keep, 200, 6);
        let mut on_stack = [0u8; 256];
        let heap = Box::into_raw(Box::new([0u8; 256])) as *mut u8;
        static STATIC: [u8; 64] = [0; 64];
        let stat = STATIC.as_ptr() as *mut u8;
        let aligned = f
            .ctx
            .alloc_aligned(64, 256, AllocFlags::NONE)
            .unwrap()
            .as_ptr();
        let got = reports(|| unsafe {
            let stack = on_stack.as_mut_ptr().add(64);
            for p in [stack, heap.add(64), stat.add(32)] {
                pfree(p);
                assert!(repalloc(p, 10).is_null());
            }
            pfree(keep.add(16)); // interior
            pfree(keep.add(3)); // misaligned
            assert!(repalloc(keep.add(48), 10).is_null()); // interior
            pfree(aligned.add(16)); // interior of an aligned chunk
        });
        assert_eq!(classes(&got), [BugClass::InvalidPointer; 10], "{got:#?}");
        assert!(holds(keep, 200, 6), "no operation touched the real chunk");
        assert!(on_stack.iter().all(|&b| b == 0));
        // SAFETY: the real chunks are still live.
        unsafe {
            assert_eq!(memctx::chunk_context(keep), f.ctx);
            pfree(keep);
            pfree(aligned);
            drop(Box::from_raw(heap as *mut [u8; 256]));
        }
        f.done();
    }

    /// For a pointer that is not a chunk, the debug build reports `invalid-pointer` and
    /// `chunk_context` panics naming the pointer (never "GetMemoryChunkContext called with a null
    /// pointer" for a pointer that is not null).
    #[test]
    fn chunk_context_of_a_foreign_pointer_names_the_pointer() {
        let f = Fixture::new("ForeignCtx");
        let heap = Box::into_raw(Box::new([0u8; 64])) as *mut u8;
        let mut msg = String::new();
        let got = reports(|| {
            msg = panic_message(|| unsafe { memctx::chunk_context(heap.add(32)) });
        });
        assert_eq!(classes(&got), [BugClass::InvalidPointer]);
        // SAFETY: ours.
        unsafe { drop(Box::from_raw(heap as *mut [u8; 64])) };
        assert!(!msg.contains("null pointer"), "misleading panic: {msg}");
        f.done();
    }

    #[test]
    fn double_frees_are_reported_and_skipped() {
        let f = Fixture::new("Double");
        let keep = f.ctx.alloc(64).as_ptr();
        fill(keep, 64, 8);
        let got = reports(|| unsafe {
            let p = f.ctx.alloc(64).as_ptr();
            pfree(p);
            pfree(p);
            assert!(repalloc(p, 100).is_null());
            // A chunk with a block of its own: its block went back to the system, so the
            // pointer is no longer inside any block of this thread.
            let big = f.ctx.alloc(100_000).as_ptr();
            pfree(big);
            pfree(big);
        });
        assert_eq!(
            classes(&got),
            [
                BugClass::DoubleFree,
                BugClass::DoubleFree,
                BugClass::InvalidPointer
            ],
            "{got:#?}"
        );
        assert!(holds(keep, 64, 8));
        // The freelist was not corrupted: the next allocations are distinct and usable.
        let a = f.ctx.alloc(64).as_ptr();
        let b = f.ctx.alloc(64).as_ptr();
        assert!(a != b && a != keep && b != keep);
        // SAFETY: live chunks.
        unsafe {
            pfree(a);
            pfree(b);
            pfree(keep);
        }
        f.done();
    }

    /// A second `pfree` of an aligned chunk and a `pfree` of a chunk a reset released are double
    /// frees; a `pfree` into unused block space is an invalid pointer. (Freed and unused memory
    /// is filled with 0x7F, whose low four bits, 15, are no kind id: the aligned redirect's id is
    /// 9, which no fill pattern has (src/chunk.rs), so such a header is never taken for a
    /// redirect and reported as `corrupt-header` with no chunk and no history; frees of released
    /// memory are classified as double frees.)
    #[test]
    fn pfree_of_freed_or_unused_memory_is_not_a_corrupt_header() {
        let f = Fixture::new("FreedTwice");
        let got = reports(|| unsafe {
            let p = f
                .ctx
                .alloc_aligned(100, 64, AllocFlags::NONE)
                .unwrap()
                .as_ptr();
            pfree(p);
            pfree(p); // double free of an aligned chunk
            let q = f.ctx.alloc(48).as_ptr();
            f.ctx.reset();
            pfree(q); // its chunk was freed by the reset
            let r = f.ctx.alloc(16).as_ptr();
            pfree(r.add(4000)); // unused space of the keeper block
            pfree(r);
        });
        assert_eq!(
            classes(&got),
            [
                BugClass::DoubleFree,
                BugClass::DoubleFree,
                BugClass::InvalidPointer
            ],
            "{got:#?}"
        );
        f.done();
    }

    #[test]
    fn freeing_through_the_wrong_allocator_is_reported() {
        let a = Fixture::new("OwnerA");
        let b = Fixture::new("OtherB");
        let pa = a.ctx.pin();
        let pb = b.ctx.pin();
        let l = Layout::from_size_align(32, 8).unwrap();
        let got = reports(|| unsafe {
            let p = pa.allocate(l).unwrap().cast::<u8>();
            pb.deallocate(p, l); // reported, then freed in its own context
        });
        assert_eq!(classes(&got), [BugClass::WrongContext], "{got:#?}");
        drop(pa);
        drop(pb);
        b.done();
        a.done();
    }
}
