//! Exact accounting: a counting global allocator (per thread) sees every block a context takes
//! from the system, and `mem_allocated`, `counters()` and the stats text must agree with it to
//! the byte.
//!
//! Every test runs on a thread of its own, so it has a fresh TopMemoryContext and its own
//! counter: tests running in parallel do not disturb each other's numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use allocator_api2::vec::Vec as AVec;
use memctx::stats::{format_stats, rows, Counters, PrintOptions};
use memctx::{pfree, repalloc, BlockSizes, MemoryContext};

/// The system allocator, counting the live bytes it handed to the calling thread.
struct Counting;

thread_local! {
    /// Const-initialised and without a destructor: usable from inside the allocator, also while
    /// the thread's other locals are being destroyed.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes this thread holds from the system allocator.
fn live() -> isize {
    LIVE.with(|c| c.get())
}

/// Runs `f` on a new thread (fresh Top, fresh counter), propagating its panic.
fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::spawn(f).join() {
        std::panic::resume_unwind(e);
    }
}

/// Runs `op` and returns (bytes the system allocator saw, change of `ctx.mem_allocated(true)`).
fn deltas<R>(ctx: MemoryContext, op: impl FnOnce() -> R) -> (isize, isize, R) {
    let m0 = ctx.mem_allocated(true) as isize;
    let s0 = live();
    let r = op();
    let s1 = live();
    let m1 = ctx.mem_allocated(true) as isize;
    (s1 - s0, m1 - m0, r)
}

/// The system allocator saw exactly the context's block traffic. In the debug build the side
/// tables (block registry, backtraces, released-chunk records) take system memory as well, so
/// the comparison is exact in the release build only.
#[track_caller]
fn assert_blocks_only(sys: isize, mem: isize) {
    if cfg!(not(feature = "debug-contexts")) {
        assert_eq!(sys, mem, "system allocator vs mem_allocated");
    }
}

fn assert_consistent(ctx: MemoryContext) -> Counters {
    let c = ctx.counters();
    assert_eq!(
        c.total_bytes,
        ctx.mem_allocated(false) as u64,
        "{}",
        ctx.name()
    );
    assert_eq!(c.used_bytes() + c.free_bytes, c.total_bytes);
    assert!(c.free_bytes <= c.total_bytes);
    c
}

#[test]
fn block_allocations_match_the_system_allocator() {
    on_fresh_thread(|| {
        let top = MemoryContext::top();
        let ctx = top.new_child("blocks", BlockSizes::DEFAULT);

        // Many small chunks: the context takes blocks, nothing else.
        let (sys, mem, _) = deltas(ctx, || {
            for _ in 0..10_000 {
                let _ = ctx.alloc(1000);
            }
        });
        assert!(mem > 10_000 * 1000);
        assert_blocks_only(sys, mem);
        // Top sees the same, recursively.
        let (sys, mem, _) = deltas(top, || {
            // More than the free space of the current (8 MiB) block.
            for _ in 0..5000 {
                let _ = ctx.alloc(3000);
            }
        });
        assert!(mem > 0);
        assert_blocks_only(sys, mem);

        // A chunk of its own, its growth by realloc, and its free.
        let (sys, mem, p) = deltas(ctx, || ctx.alloc(100_000).as_ptr());
        assert!(mem >= 100_000);
        assert_blocks_only(sys, mem);
        let (sys, mem, p) = deltas(ctx, || unsafe { repalloc(p, 1_000_000) });
        assert!(mem >= 900_000);
        assert_blocks_only(sys, mem);
        let (sys, mem, p) = deltas(ctx, || unsafe { repalloc(p, 20_000) });
        assert!(mem <= -900_000);
        assert_blocks_only(sys, mem);
        let (sys, mem, _) = deltas(ctx, || unsafe { pfree(p) });
        assert!(mem <= -20_000);
        assert_blocks_only(sys, mem);

        // Reset gives back everything but the keeper.
        let (sys, mem, _) = deltas(ctx, || ctx.reset());
        assert_eq!(ctx.mem_allocated(false), 8192);
        assert!(mem < -10_000_000);
        assert_blocks_only(sys, mem);

        // The safe API: a Vec's and a hash map's growth is all context blocks.
        let pinned = ctx.pin();
        let (sys, mem, v) = deltas(ctx, || {
            let mut v: AVec<u64, _> = AVec::new_in(&pinned);
            v.extend(0..100_000u64);
            v
        });
        assert_blocks_only(sys, mem);
        let (sys, mem, m) = deltas(ctx, || {
            let mut m = hashbrown::HashMap::new_in(&pinned);
            for i in 0..50_000u32 {
                m.insert(i, i);
            }
            m
        });
        assert!(mem > 50_000 * 8);
        assert_blocks_only(sys, mem);
        drop((v, m));
        drop(pinned);
        let (sys, mem, _) = deltas(top, || ctx.delete());
        // A deleted context is recycled with its keeper block: the system gets back every block
        // but the keeper.
        assert!(mem < -8192);
        assert_blocks_only(sys, mem + 8192);
    });
}

// Release build only: the debug build's side tables (block registry, ghosts, stack depot) take
// memory from the system allocator too, so its deltas are not the blocks' alone.
#[cfg(not(feature = "debug-contexts"))]
#[test]
fn contexts_are_recycled_up_to_100_keepers() {
    on_fresh_thread(|| {
        let top = MemoryContext::top();
        let first = top.new_child("first", BlockSizes::DEFAULT);
        // The first context ever takes its header and its keeper from the system.
        let (sys, mem, second) = deltas(top, || top.new_child("second", BlockSizes::DEFAULT));
        assert_eq!(mem, 8192);
        let header = sys - mem;
        assert!(header > 0, "the header comes from the system too");
        second.delete();
        first.delete();

        let ctxs: Vec<MemoryContext> = (0..101)
            .map(|_| top.new_child("many", BlockSizes::DEFAULT))
            .collect();
        let mut freed = Vec::new();
        for c in &ctxs {
            let (sys, mem, _) = deltas(top, || c.delete());
            assert_eq!(mem, -8192);
            freed.push(sys);
        }
        // PostgreSQL keeps 100 deleted contexts with their keeper; the 101st gives its keeper
        // back (its header is kept for reuse without blocks).
        assert!(freed[..100].iter().all(|&s| s == 0), "{freed:?}");
        assert_eq!(freed[100], -8192);

        // Recreating takes nothing from the system while recycled contexts last.
        let (sys, mem, again) = deltas(top, || top.new_child("again", BlockSizes::DEFAULT));
        assert_eq!((sys, mem), (0, 8192));
        again.delete();
        // SMALL keepers are recycled on their own list.
        let (sys, mem, small) = deltas(top, || top.new_child("small", BlockSizes::SMALL));
        assert_eq!(mem, 1024);
        assert!(sys == 1024 || sys == 1024 + header, "{sys}");
        let (sys, _, _) = deltas(top, || small.delete());
        assert_eq!(sys, 0);
        let (sys, _, small) = deltas(top, || top.new_child("small", BlockSizes::SMALL));
        assert_eq!(sys, 0);
        small.delete();
    });
}

#[test]
fn counters_count_free_chunks_and_blocks() {
    on_fresh_thread(|| {
        let ctx = MemoryContext::top().new_child("counted", BlockSizes::DEFAULT);
        let c = assert_consistent(ctx);
        assert_eq!((c.total_nblocks, c.free_chunks), (1, 0));

        // All inside the keeper: no leftover is carved, so the freelists hold exactly what was
        // freed and not reused.
        let big: Vec<*mut u8> = (0..10).map(|_| ctx.alloc(100).as_ptr()).collect();
        let small: Vec<*mut u8> = (0..5).map(|_| ctx.alloc(20).as_ptr()).collect();
        assert_eq!(assert_consistent(ctx).free_chunks, 0);
        for &p in &big[..4] {
            unsafe { pfree(p) };
        }
        for &p in &small[..2] {
            unsafe { pfree(p) };
        }
        let c = assert_consistent(ctx);
        assert_eq!((c.total_nblocks, c.free_chunks), (1, 6));
        let reused = ctx.alloc(100).as_ptr();
        assert_eq!(reused, big[3], "LIFO reuse");
        let c = assert_consistent(ctx);
        assert_eq!(c.free_chunks, 5);
        #[cfg(not(feature = "debug-contexts"))]
        {
            // 56 bytes of block overhead, chunks of 144 (128 class) and 48 (32 class).
            assert_eq!(
                c.free_bytes,
                (8192 - 56 - 10 * 144 - 5 * 48) + 3 * 144 + 2 * 48
            );
            assert_eq!(c.used_bytes(), 56 + 7 * 144 + 3 * 48);
        }

        // A chunk of its own adds a block and no free space.
        let before = c;
        let large = ctx.alloc(50_000).as_ptr();
        let c = assert_consistent(ctx);
        assert_eq!(c.total_nblocks, before.total_nblocks + 1);
        assert_eq!(c.free_chunks, before.free_chunks);
        assert_eq!(c.free_bytes, before.free_bytes);
        unsafe { pfree(large) };
        assert_eq!(assert_consistent(ctx), before);

        // Filling past the keeper adds blocks one at a time.
        let mut blocks = before.total_nblocks;
        for _ in 0..100 {
            let _ = ctx.alloc(1024);
            let c = assert_consistent(ctx);
            assert!(c.total_nblocks == blocks || c.total_nblocks == blocks + 1);
            blocks = c.total_nblocks;
        }
        assert!(blocks >= 5);
        ctx.reset();
        let c = assert_consistent(ctx);
        assert_eq!(
            (c.total_nblocks, c.free_chunks, c.total_bytes),
            (1, 0, 8192)
        );
        ctx.delete();
    });
}

#[test]
fn stats_text_matches_the_counters() {
    on_fresh_thread(|| {
        let top = MemoryContext::top();
        let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
        cache.set_ident("catalog\tcache");
        let index = cache.new_child("index info", BlockSizes::SMALL);
        index.set_ident("pg_class_oid_index");
        let message = top.new_child("MessageContext", BlockSizes::DEFAULT);
        for i in 0..300 {
            let p = cache.alloc(40 + i % 200).as_ptr();
            if i % 3 == 0 {
                unsafe { pfree(p) };
            }
        }
        for _ in 0..20 {
            let _ = index.alloc(100);
        }
        let _ = message.alloc(20_000);
        let in_top = top.alloc(500);

        let stats = top.stats();
        let text = format_stats(&stats, &PrintOptions::default());
        let (t, c, i, m) = (
            top.counters(),
            cache.counters(),
            index.counters(),
            message.counters(),
        );
        let mut grand = Counters::default();
        for x in [t, c, i, m] {
            grand.add(&x);
        }
        let expected = format!(
            "TopMemoryContext: {t}\n\
             \x20 MessageContext: {m}\n\
             \x20 CacheMemoryContext: {c}: catalog cache\n\
             \x20   index info: {i}: pg_class_oid_index\n\
             Grand total: {} bytes in {} blocks; {} free ({} chunks); {} used\n",
            grand.total_bytes,
            grand.total_nblocks,
            grand.free_bytes,
            grand.free_chunks,
            grand.used_bytes()
        );
        assert_eq!(text, expected);
        // Spelled out, one line, to pin the format down.
        assert_eq!(
            format!("{m}"),
            format!(
                "{} total in {} blocks; {} free ({} chunks); {} used",
                m.total_bytes,
                m.total_nblocks,
                m.free_bytes,
                m.free_chunks,
                m.total_bytes - m.free_bytes
            )
        );
        assert_eq!(grand.total_bytes, top.mem_allocated(true) as u64);
        assert_eq!(stats.total(), grand);
        assert!(c.free_chunks > 0, "pfree'd chunks show as free chunks");

        // The pg_backend_memory_contexts rows carry the same numbers.
        let total_before = stats.total().total_bytes as isize;
        let rows = rows(&stats);
        let by_name = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        for (name, x, level) in [
            ("TopMemoryContext", t, 1),
            ("CacheMemoryContext", c, 2),
            ("index info", i, 3),
            ("MessageContext", m, 2),
        ] {
            let r = by_name(name);
            assert_eq!(
                (
                    r.total_bytes,
                    r.total_nblocks,
                    r.free_bytes,
                    r.free_chunks,
                    r.used_bytes,
                    r.level
                ),
                (
                    x.total_bytes,
                    x.total_nblocks,
                    x.free_bytes,
                    x.free_chunks,
                    x.used_bytes(),
                    level
                ),
                "{name}"
            );
        }
        assert_eq!(
            by_name("index info").ident.as_deref(),
            Some("pg_class_oid_index")
        );
        assert_eq!(
            by_name("index info").path,
            vec![top.id(), cache.id(), index.id()]
        );

        // What reset and reset-children give back, the system allocator gets back.
        let (sys, mem, _) = deltas(top, || {
            cache.reset_children();
            message.reset();
        });
        assert!(mem < -20_000);
        assert_blocks_only(sys, mem);
        assert_eq!(top.stats().total().total_bytes as isize, total_before + mem);

        // The chunks above were never freed one by one: give everything back.
        cache.delete();
        message.delete();
        // SAFETY: a live chunk of Top, freed once.
        unsafe { pfree(in_top.as_ptr()) };
    });
}
