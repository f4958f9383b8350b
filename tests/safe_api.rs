//! The safe API: allocator-api2's `Allocator` on a pinned context (Vec, Box, hashbrown), exact
//! allocation lengths and alignments, PString, pins and what they refuse, and per-row scopes.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::rc::Rc;

use allocator_api2::alloc::{AllocError, Allocator, Layout};
use allocator_api2::boxed::Box as ABox;
use allocator_api2::vec::Vec as AVec;
use memctx::{BlockSizes, ContextError, MemoryContext, PString, PinnedContext};

#[path = "common/panics.rs"]
mod panics;
use panics::{expect_panic, panic_text};

fn child(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_child(name, BlockSizes::DEFAULT)
}

#[test]
fn vec_box_and_hashmap_live_in_the_context() {
    let ctx = child("collections");
    let keeper = ctx.mem_allocated(false);
    let pinned = ctx.pin();
    assert_eq!(pinned.context(), ctx);

    let mut v: AVec<u64, _> = AVec::new_in(&pinned);
    for i in 0..100_000u64 {
        v.push(i * 3);
    }
    let b = ABox::new_in([7u32; 64], &pinned);
    let mut m = hashbrown::HashMap::new_in(&pinned);
    for i in 0..100_000u32 {
        m.insert(i, i.wrapping_mul(2_654_435_761));
    }
    // The memory is the context's: it grew by at least the data.
    assert!(ctx.mem_allocated(false) >= keeper + 100_000 * 8 + 100_000 * 8);
    assert_eq!(
        unsafe { memctx::chunk_context(v.as_ptr() as *mut u8) },
        ctx,
        "the Vec's buffer is a chunk of the context"
    );
    assert_eq!(
        unsafe { memctx::chunk_context(&*b as *const [u32; 64] as *mut u8) },
        ctx
    );
    // Contents intact.
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    assert_eq!(*b, [7u32; 64]);
    assert_eq!(m.len(), 100_000);
    assert!((0..100_000u32).all(|i| m[&i] == i.wrapping_mul(2_654_435_761)));
    // Removing and shrinking work too.
    for i in 0..50_000u32 {
        assert!(m.remove(&i).is_some());
    }
    m.shrink_to_fit();
    assert!((50_000..100_000u32).all(|i| m[&i] == i.wrapping_mul(2_654_435_761)));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(&v[..], &[0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);

    drop((v, b, m));
    drop(pinned);
    ctx.reset();
    assert_eq!(ctx.mem_allocated(false), keeper);
    ctx.delete();
}

#[test]
fn an_owned_pin_works_as_the_allocator_too() {
    let ctx = child("owned");
    let mut v: AVec<String, PinnedContext> = AVec::new_in(ctx.pin());
    for i in 0..1000 {
        v.push(format!("row {i}"));
    }
    assert_eq!(ctx.pin_count(), 1);
    let w = v.clone(); // clones the allocator, i.e. the pin
    assert_eq!(ctx.pin_count(), 2);
    assert_eq!(v, w);
    assert!(matches!(ctx.try_reset(), Err(ContextError::Pinned { .. })));
    drop(v);
    assert_eq!(ctx.pin_count(), 1);
    drop(w);
    assert_eq!(ctx.pin_count(), 0);
    ctx.delete();
}

#[test]
fn allocate_returns_exactly_the_requested_length() {
    let ctx = child("exact");
    let pinned = ctx.pin();
    for size in [
        1usize, 3, 8, 9, 15, 16, 17, 100, 1000, 1023, 4097, 8192, 8193, 100_000,
    ] {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = pinned.allocate(layout).unwrap();
            assert_eq!(p.len(), size, "size {size} align {align}");
            let data = p.as_ptr() as *mut u8;
            assert_eq!(data as usize % align, 0, "size {size} align {align}");
            unsafe { data.write_bytes(0xAB, size) };
            let z = pinned.allocate_zeroed(layout).unwrap();
            assert_eq!(z.len(), size);
            let zdata = z.as_ptr() as *mut u8;
            assert!((0..size).all(|i| unsafe { *zdata.add(i) } == 0));
            unsafe {
                pinned.deallocate(NonNull::new_unchecked(data), layout);
                pinned.deallocate(NonNull::new_unchecked(zdata), layout);
            }
        }
    }
    // grow / shrink return the new exact length, contents kept.
    let l1 = Layout::from_size_align(10, 8).unwrap();
    let l2 = Layout::from_size_align(5000, 8).unwrap();
    let l3 = Layout::from_size_align(3, 8).unwrap();
    let p = pinned.allocate(l1).unwrap().cast::<u8>();
    unsafe { p.as_ptr().copy_from(b"0123456789".as_ptr(), 10) };
    let g = unsafe { pinned.grow_zeroed(p, l1, l2) }.unwrap();
    assert_eq!(g.len(), 5000);
    let gp = g.as_ptr() as *mut u8;
    assert_eq!(unsafe { std::slice::from_raw_parts(gp, 10) }, b"0123456789");
    assert!((10..5000).all(|i| unsafe { *gp.add(i) } == 0));
    let s = unsafe { pinned.shrink(NonNull::new_unchecked(gp), l2, l3) }.unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, 3) },
        b"012"
    );
    unsafe { pinned.deallocate(s.cast(), l3) };
    drop(pinned);
    ctx.delete();
}

/// grow and shrink within the alignment every chunk has (up to 16) go through repalloc: a new
/// size that still fits the chunk keeps it where it is. A resize from or to zero bytes has no
/// chunk on one side: it allocates (or frees) one, and the other side is the dangling pointer.
#[test]
fn resize_keeps_the_chunk_when_it_has_room() {
    let ctx = child("resize");
    let pinned = ctx.pin();
    for align in [1usize, 8, 16] {
        let layout = |size| Layout::from_size_align(size, align).unwrap();
        let p = pinned.allocate(layout(100)).unwrap().cast::<u8>();
        unsafe { p.as_ptr().write_bytes(0x5A, 100) };
        // 100 and 101 bytes are both in the 128-byte class, redzone included.
        let g = unsafe { pinned.grow(p, layout(100), layout(101)) }.unwrap();
        assert_eq!(g.len(), 101);
        assert_eq!(g.cast::<u8>(), p, "align {align}: 100 -> 101 bytes moved");
        let s = unsafe { pinned.shrink(g.cast(), layout(101), layout(90)) }.unwrap();
        assert_eq!(s.len(), 90);
        assert_eq!(s.cast::<u8>(), p, "align {align}: 101 -> 90 bytes moved");
        let kept = unsafe { std::slice::from_raw_parts(p.as_ptr(), 90) };
        assert!(kept.iter().all(|&b| b == 0x5A), "align {align}");

        // To zero bytes: the chunk is freed (onto its freelist), the result is dangling.
        let free_before = ctx.counters().free_chunks;
        let z = unsafe { pinned.shrink(p, layout(90), layout(0)) }.unwrap();
        assert_eq!(z.len(), 0);
        assert_eq!(z.cast::<u8>().as_ptr() as usize, align, "align {align}");
        assert_eq!(ctx.counters().free_chunks, free_before + 1, "align {align}");
        // From zero bytes: a new chunk; the dangling pointer is never read or freed.
        let g = unsafe { pinned.grow(z.cast(), layout(0), layout(40)) }.unwrap();
        assert_eq!(g.len(), 40);
        let gp = g.cast::<u8>();
        assert_eq!(unsafe { memctx::chunk_context(gp.as_ptr()) }, ctx);
        unsafe { pinned.deallocate(gp, layout(40)) };
    }
    drop(pinned);
    ctx.delete();
}

/// The largest alignment the allocator serves, `MAX_ALIGNMENT` itself, is served; one beyond it
/// is an error.
#[test]
fn the_largest_alignment_is_served() {
    let ctx = child("aligned");
    let pinned = ctx.pin();
    let layout = Layout::from_size_align(64, memctx::MAX_ALIGNMENT).unwrap();
    let p = pinned.allocate(layout).unwrap();
    assert_eq!(p.len(), 64);
    assert_eq!(p.as_ptr() as *mut u8 as usize % memctx::MAX_ALIGNMENT, 0);
    assert_eq!(unsafe { memctx::chunk_context(p.as_ptr() as *mut u8) }, ctx);
    unsafe { pinned.deallocate(p.cast(), layout) };
    let beyond = Layout::from_size_align(64, memctx::MAX_ALIGNMENT * 2).unwrap();
    assert_eq!(pinned.allocate(beyond), Err(AllocError));
    drop(pinned);
    ctx.delete();
}

#[test]
fn zero_size_layouts_take_no_memory() {
    let ctx = child("zst");
    let pinned = ctx.pin();
    let before = ctx.counters();
    for align in [1usize, 8, 16, 64, 4096] {
        let layout = Layout::from_size_align(0, align).unwrap();
        let p = pinned.allocate(layout).unwrap();
        assert_eq!(p.len(), 0);
        assert_eq!(p.as_ptr() as *mut u8 as usize % align, 0);
        unsafe { pinned.deallocate(p.cast(), layout) };
    }
    let mut v: AVec<(), _> = AVec::new_in(&pinned);
    for _ in 0..1000 {
        v.push(());
    }
    assert_eq!(v.len(), 1000);
    let e: AVec<u64, _> = AVec::with_capacity_in(0, &pinned);
    assert_eq!(e.capacity(), 0);
    drop((v, e));
    assert_eq!(ctx.counters(), before, "zero-size allocations took memory");
    assert!(ctx.is_empty());
    drop(pinned);
    ctx.delete();
}

#[test]
fn u128_and_overaligned_elements() {
    let ctx = child("align");
    let pinned = ctx.pin();
    let mut v: AVec<u128, _> = AVec::new_in(&pinned);
    for i in 0..10_000u128 {
        v.push(i << 64 | i);
        assert_eq!(v.as_ptr() as usize % 16, 0);
    }
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u128) << 64 | i as u128));

    #[repr(align(64))]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Line([u64; 3]);
    let mut w: AVec<Line, _> = AVec::new_in(&pinned);
    for i in 0..5_000u64 {
        w.push(Line([i, i + 1, i + 2]));
        assert_eq!(w.as_ptr() as usize % 64, 0, "after {i} pushes");
    }
    assert!(w
        .iter()
        .enumerate()
        .all(|(i, l)| *l == Line([i as u64, i as u64 + 1, i as u64 + 2])));
    w.truncate(3);
    w.shrink_to_fit();
    assert_eq!(w.as_ptr() as usize % 64, 0);
    assert_eq!(w[2], Line([2, 3, 4]));

    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let page = ABox::new_in(Page([9; 4096]), &pinned);
    assert_eq!(&*page as *const Page as usize % 4096, 0);
    assert!(page.0.iter().all(|&b| b == 9));
    drop((v, w, page));
    drop(pinned);
    ctx.delete();
}

#[test]
fn impossible_requests_are_alloc_errors_not_panics() {
    let ctx = child("huge");
    let pinned = ctx.pin();
    let mut v: AVec<u8, _> = AVec::new_in(&pinned);
    assert!(v.try_reserve(usize::MAX / 4).is_err());
    assert!(v.try_reserve(isize::MAX as usize).is_err());
    let layout = Layout::from_size_align(usize::MAX / 4, 16).unwrap();
    assert_eq!(pinned.allocate(layout), Err(AllocError));
    let layout = Layout::from_size_align(usize::MAX / 4, 64).unwrap();
    assert_eq!(pinned.allocate(layout), Err(AllocError));
    // Still usable afterwards.
    v.extend_from_slice(b"still fine");
    assert_eq!(&v[..], b"still fine");
    drop(v);
    drop(pinned);
    ctx.delete();
}

#[test]
fn pstring_behaves_like_a_string() {
    let ctx = child("strings");
    let pinned = ctx.pin();
    let mut s = PString::new_in(&pinned);
    assert_eq!(s, "");
    assert_eq!(s.capacity(), 0, "an empty PString holds no memory");
    s.push_str("relation ");
    s.push('"');
    s.push_str("pg_class");
    s.push('"');
    s.push('é');
    assert_eq!(s.as_str(), "relation \"pg_class\"é");
    assert_eq!(s.len(), 21); // Deref to str
    assert!(s.capacity() >= 21);
    assert!(unsafe { memctx::chunk_space(s.as_ptr() as *mut u8) } >= s.capacity());
    assert!(s.ends_with('é'));
    write!(s, " has {} rows, {:.1}% dead", 415, 2.5).unwrap();
    assert_eq!(s, "relation \"pg_class\"é has 415 rows, 2.5% dead");
    assert_eq!(
        format!("{s}"),
        "relation \"pg_class\"é has 415 rows, 2.5% dead"
    );
    assert_eq!(format!("{s:>50}").len(), 51); // Display honours padding
    assert_eq!(
        format!("{s:?}"),
        "\"relation \\\"pg_class\\\"é has 415 rows, 2.5% dead\""
    );

    // Eq across allocators and with str; Hash like str's.
    let other = child("other");
    let other_pin = other.pin();
    let t = PString::from_str_in(s.as_str(), &other_pin);
    assert_eq!(s, t);
    assert!(s != PString::from_str_in("x", &pinned));
    // With str and &str, either way round the comparison reads.
    assert!(s == *"relation \"pg_class\"é has 415 rows, 2.5% dead");
    assert!(s != *"relation");
    assert!(s != "relation");
    let hash = |h: &dyn Fn(&mut DefaultHasher)| {
        let mut st = DefaultHasher::new();
        h(&mut st);
        st.finish()
    };
    assert_eq!(
        hash(&|st| s.hash(st)),
        hash(&|st| "relation \"pg_class\"é has 415 rows, 2.5% dead".hash(st))
    );
    // As a key in a map, looked up by &str.
    let mut set = hashbrown::HashSet::new_in(&pinned);
    set.insert(PString::from_str_in("a", &pinned));
    set.insert(PString::from_str_in("b", &pinned));
    set.insert(PString::from_str_in("a", &pinned));
    assert_eq!(set.len(), 2);
    assert!(set.contains("a") && set.contains("b") && !set.contains("c"));

    // Clone, clear, capacity, into_bytes; the bytes live in the context.
    let c = s.clone();
    assert_eq!(c, s);
    assert_eq!(
        unsafe { memctx::chunk_context(c.as_ptr() as *mut u8) },
        ctx,
        "a clone lives in the same context"
    );
    let cap = s.capacity();
    s.clear();
    assert_eq!(s, "");
    assert_eq!(s.capacity(), cap);
    let bytes = c.into_bytes();
    assert_eq!(&bytes[..5], b"relat");
    drop((s, t, set, bytes));
    drop((pinned, other_pin));
    ctx.delete();
    other.delete();
}

#[test]
fn pin_counts() {
    let ctx = child("pins");
    assert_eq!(ctx.pin_count(), 0);
    let p1 = ctx.pin();
    assert_eq!(ctx.pin_count(), 1);
    let p2 = p1.clone();
    let p3 = ctx.pin();
    assert_eq!(ctx.pin_count(), 3);
    assert_eq!(format!("{p2:?}"), format!("PinnedContext({ctx:?})"));
    drop(p1);
    assert_eq!(ctx.pin_count(), 2);
    drop((p2, p3));
    assert_eq!(ctx.pin_count(), 0);
    // A pin of a child does not count on the parent itself.
    let kid = ctx.new_child("kid", BlockSizes::SMALL);
    let pk = kid.pin();
    assert_eq!((ctx.pin_count(), kid.pin_count()), (0, 1));
    drop(pk);
    ctx.delete();
}

/// Every operation that would free a pinned context is refused, and the data stays intact.
#[test]
fn tree_operations_on_a_pinned_subtree_are_refused() {
    let top = MemoryContext::top();
    let grand = top.new_child("PortalContext", BlockSizes::DEFAULT);
    let parent = grand.new_child("ExecutorState", BlockSizes::DEFAULT);
    let ctx = parent.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let sibling = parent.new_child("sibling", BlockSizes::DEFAULT);
    let below = ctx.new_child("below", BlockSizes::DEFAULT);
    let pinned = ctx.pin();
    let _second = pinned.clone();
    let mut v: AVec<u64, _> = AVec::new_in(&pinned);
    v.extend(0..10_000u64);
    let s = PString::from_str_in("cached plan", &pinned);
    let before = ctx.counters();

    let refused = |context: &'static str| ContextError::Pinned {
        context,
        pinned: "CacheMemoryContext",
        pins: 2,
    };
    assert_eq!(ctx.try_reset(), Err(refused("CacheMemoryContext")));
    assert_eq!(ctx.try_delete(), Err(refused("CacheMemoryContext")));
    assert_eq!(parent.try_reset(), Err(refused("ExecutorState")));
    assert_eq!(parent.try_delete(), Err(refused("ExecutorState")));
    assert_eq!(parent.try_reset_children(), Err(refused("ExecutorState")));
    assert_eq!(parent.try_delete_children(), Err(refused("ExecutorState")));
    assert_eq!(grand.try_reset(), Err(refused("PortalContext")));
    assert_eq!(grand.try_delete(), Err(refused("PortalContext")));
    assert_eq!(grand.try_reset_children(), Err(refused("PortalContext")));
    assert_eq!(grand.try_delete_children(), Err(refused("PortalContext")));
    assert_eq!(top.try_reset_children(), Err(refused("TopMemoryContext")));
    assert_eq!(top.try_delete_children(), Err(refused("TopMemoryContext")));
    assert!(matches!(
        top.try_reset(),
        Err(ContextError::Pinned { .. } | ContextError::ContainsCurrent { .. })
    ));
    assert_eq!(top.try_delete(), Err(ContextError::IsTop));
    // The panicking forms panic with the same message.
    let msg = expect_panic(|| parent.delete());
    assert_eq!(
        msg,
        "cannot free memory context \"ExecutorState\": context \"CacheMemoryContext\" is pinned \
         by 2 live borrow(s) of the safe API"
    );
    assert_eq!(msg, refused("ExecutorState").to_string());
    expect_panic(|| ctx.reset());
    expect_panic(|| grand.reset_children());

    // Nothing was freed, nothing deleted.
    for c in [grand, parent, ctx, sibling, below] {
        assert!(c.is_alive(), "{} was deleted", c.name());
    }
    assert_eq!(ctx.counters(), before);
    assert!(v.iter().copied().eq(0..10_000u64));
    assert_eq!(s, "cached plan");

    // What does not touch the pinned context still works: its own children, its siblings.
    ctx.delete_children();
    assert!(!below.is_alive());
    ctx.reset_children();
    sibling.reset();
    sibling.delete();
    assert!(v.iter().copied().eq(0..10_000u64));

    // After the last pin goes, everything is allowed again.
    drop((v, s));
    drop(pinned);
    // One pin is left: the clone.
    assert_eq!(
        parent.try_reset(),
        Err(ContextError::Pinned {
            context: "ExecutorState",
            pinned: "CacheMemoryContext",
            pins: 1
        })
    );
    drop(_second);
    assert_eq!(ctx.pin_count(), 0);
    assert_eq!(ctx.try_reset(), Ok(()));
    assert_eq!(parent.try_reset_children(), Ok(()));
    assert_eq!(grand.try_delete(), Ok(()));
    assert!(!ctx.is_alive() && !parent.is_alive());
}

#[test]
fn a_pinned_subtree_moved_under_another_context_protects_itself() {
    let top = MemoryContext::top();
    let old_parent = top.new_child("old parent", BlockSizes::DEFAULT);
    let new_parent = top.new_child("new parent", BlockSizes::DEFAULT);
    let ctx = old_parent.new_child("moved", BlockSizes::DEFAULT);
    let leaf = ctx.new_child("leaf", BlockSizes::DEFAULT);
    let pinned = leaf.pin();
    let mut v: AVec<u32, _> = AVec::new_in(&pinned);
    v.extend(0..1000u32);

    ctx.set_parent(new_parent);
    // The old parent is free now; the new one is protected.
    assert_eq!(old_parent.try_reset(), Ok(()));
    let refused = |context| ContextError::Pinned {
        context,
        pinned: "leaf",
        pins: 1,
    };
    assert_eq!(new_parent.try_reset(), Err(refused("new parent")));
    assert_eq!(new_parent.try_delete(), Err(refused("new parent")));
    assert_eq!(new_parent.try_delete_children(), Err(refused("new parent")));
    // Moving it back moves the protection back.
    ctx.set_parent(old_parent);
    assert_eq!(new_parent.try_reset(), Ok(()));
    assert_eq!(old_parent.try_delete(), Err(refused("old parent")));
    assert!(v.iter().copied().eq(0..1000u32));
    drop(v);
    drop(pinned);
    old_parent.delete();
    new_parent.delete();
    assert!(!leaf.is_alive());
}

#[test]
fn scope_resets_after_each_row() {
    let ctx = child("ExprContext");
    let keeper = ctx.mem_allocated(false);
    let top = MemoryContext::top();
    let mut sums = Vec::new();
    for row in 0..200u64 {
        let sum = ctx.scope(|mem| {
            assert_eq!(
                MemoryContext::current(),
                ctx,
                "the scope's context is current"
            );
            assert_eq!(mem.context(), ctx);
            assert_eq!(ctx.pin_count(), 1);
            let mut v: AVec<u64, _> = AVec::new_in(mem);
            v.extend(0..row * 10);
            let mut s = PString::new_in(mem);
            write!(s, "row {row}").unwrap();
            let raw = memctx::palloc(100); // palloc lands in the scope's context too
            assert_eq!(unsafe { memctx::chunk_context(raw) }, ctx);
            assert_eq!(s, format!("row {row}").as_str());
            v.iter().sum::<u64>()
        });
        sums.push(sum);
        assert!(ctx.is_empty(), "row {row}: context not reset");
        assert_eq!(ctx.mem_allocated(false), keeper);
        assert_eq!(ctx.pin_count(), 0);
        assert_eq!(MemoryContext::current(), top);
    }
    assert_eq!(sums[3], (0..30).sum::<u64>());
    assert_eq!(sums[199], (0..1990).sum::<u64>());
    ctx.delete();
}

#[test]
fn a_panic_inside_scope_still_resets_and_restores_current() {
    let ctx = child("ExprContext");
    let outer = child("outer");
    let _g = outer.switch_to();
    let msg = expect_panic(|| {
        ctx.scope(|mem| {
            let mut v: AVec<u8, _> = AVec::new_in(mem);
            v.resize(100_000, 1);
            panic!("division by zero");
        })
    });
    assert_eq!(msg, "division by zero");
    assert!(ctx.is_empty());
    assert_eq!(ctx.pin_count(), 0);
    assert_eq!(ctx.counters().total_nblocks, 1);
    assert_eq!(MemoryContext::current(), outer);
    drop(_g);
    ctx.delete();
    outer.delete();
}

#[test]
fn an_escaped_pin_makes_the_scope_reset_panic_and_keeps_memory_intact() {
    let ctx = child("ExprContext");
    let escaped: RefCell<Option<AVec<u64, PinnedContext>>> = RefCell::new(None);
    let msg = expect_panic(|| {
        ctx.scope(|mem| {
            let mut v = AVec::new_in(mem.clone());
            v.extend(0..5000u64);
            *escaped.borrow_mut() = Some(v);
        })
    });
    assert_eq!(
        msg,
        "per-row scope could not reset its context: cannot free memory context \"ExprContext\": \
         context \"ExprContext\" is pinned by 1 live borrow(s) of the safe API"
    );
    assert_eq!(MemoryContext::current(), MemoryContext::top());
    let v = escaped.borrow_mut().take().unwrap();
    assert!(v.iter().copied().eq(0..5000u64), "memory was freed");
    assert_eq!(ctx.pin_count(), 1);
    drop(v);
    assert_eq!(ctx.pin_count(), 0);
    ctx.reset();
    assert!(ctx.is_empty());
    ctx.delete();
}

#[test]
fn pinning_from_a_reset_callback_panics() {
    let ctx = child("cb");
    let kid = ctx.new_child("kid", BlockSizes::DEFAULT);
    let seen: Rc<RefCell<Vec<String>>> = Default::default();
    {
        let seen = seen.clone();
        ctx.register_reset_callback(move || {
            let m = catch_unwind(AssertUnwindSafe(|| ctx.pin())).map(drop);
            seen.borrow_mut().push(panic_text(m.unwrap_err()));
        });
    }
    {
        // A child's callback during the parent's reset: pinning the child is refused too.
        let seen = seen.clone();
        kid.register_reset_callback(move || {
            let m = catch_unwind(AssertUnwindSafe(|| kid.pin())).map(drop);
            seen.borrow_mut().push(panic_text(m.unwrap_err()));
        });
    }
    let _ = ctx.alloc(10);
    ctx.reset();
    assert_eq!(
        *seen.borrow(),
        vec![
            "cannot pin memory context \"kid\": \"cb\" is being reset or deleted".to_owned(),
            "cannot pin memory context \"cb\": \"cb\" is being reset or deleted".to_owned(),
        ]
    );
    assert!(ctx.is_empty());
    assert_eq!(ctx.pin_count(), 0);
    // Uncaught, the panic propagates out of reset; the context can be reset again afterwards.
    ctx.register_reset_callback(move || {
        let _p = ctx.pin();
    });
    let msg = expect_panic(|| ctx.reset());
    assert_eq!(
        msg,
        "cannot pin memory context \"cb\": \"cb\" is being reset or deleted"
    );
    assert_eq!(ctx.try_reset(), Ok(()));
    ctx.delete();
}
