//! AllocSet through the raw API: palloc / palloc0 / repalloc / pfree, size classes and large
//! chunks, freelist reuse, aligned allocation, PostgreSQL's limits and error messages, and the
//! block-size presets.
//!
//! Tests that check exact byte counts of the release layout (8-byte chunk header, 48-byte block
//! header, 16-byte data alignment) are compiled only without `debug-contexts`, whose redzones
//! change every size; the behavioural tests run in both builds.

use memctx::{
    chunk_context, chunk_space, palloc, palloc0, palloc_aligned, palloc_extended, pfree, pstrdup,
    repalloc, repalloc_extended, repalloc_huge, AllocFlags, BlockSizes, MemoryContext,
    MAX_ALIGNMENT, MAX_ALLOC_HUGE_SIZE, MAX_ALLOC_SIZE,
};

#[path = "common/panics.rs"]
mod panics;
use panics::expect_panic;

/// A fresh DEFAULT context, current until the guard drops.
fn fresh(name: &'static str) -> (MemoryContext, memctx::SwitchGuard) {
    let ctx = MemoryContext::top().new_child(name, BlockSizes::DEFAULT);
    let g = ctx.switch_to();
    (ctx, g)
}

fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed)
}

unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        unsafe { p.add(i).write(pattern(seed, i)) };
    }
}

unsafe fn check(p: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, pattern(seed, i), "byte {i} of {len}");
    }
}

/// 4611686018427387903: a HUGE request the system allocator always refuses.
const IMPOSSIBLE: usize = usize::MAX / 4;

#[test]
fn palloc_and_pfree_keep_contents_apart() {
    let (ctx, _g) = fresh("contents");
    let sizes = [
        1usize, 7, 8, 9, 16, 17, 100, 128, 1000, 4096, 8192, 8193, 30_000,
    ];
    let ptrs: Vec<*mut u8> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let p = palloc(n);
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0, "palloc data is 16-aligned");
            unsafe { fill(p, n, k as u8) };
            p
        })
        .collect();
    for (k, (&p, &n)) in ptrs.iter().zip(&sizes).enumerate() {
        unsafe { check(p, n, k as u8) };
        assert_eq!(unsafe { chunk_context(p) }, ctx);
    }
    // Freeing every other chunk leaves the rest intact.
    for (k, &p) in ptrs.iter().enumerate() {
        if k % 2 == 0 {
            unsafe { pfree(p) };
        }
    }
    for (k, (&p, &n)) in ptrs.iter().zip(&sizes).enumerate() {
        if k % 2 == 1 {
            unsafe { check(p, n, k as u8) };
        }
    }
    drop(_g);
    ctx.delete();
}

#[test]
fn palloc0_zeroes_even_a_reused_dirty_chunk() {
    let (ctx, _g) = fresh("zero");
    for n in [1usize, 24, 100, 5000, 20_000] {
        let p = palloc(n);
        unsafe { p.write_bytes(0xEE, n) };
        unsafe { pfree(p) };
        let q = palloc0(n);
        assert!((0..n).all(|i| unsafe { *q.add(i) } == 0), "palloc0({n})");
        let r = palloc_extended(n, AllocFlags::ZERO);
        assert!((0..n).all(|i| unsafe { *r.add(i) } == 0));
        let s = ctx.alloc_zeroed(n).as_ptr();
        assert!((0..n).all(|i| unsafe { *s.add(i) } == 0));
    }
    drop(_g);
    ctx.delete();
}

#[test]
fn repalloc_preserves_contents_across_classes_and_large_chunks() {
    let (ctx, _g) = fresh("grow");
    // Up through every size class, into a chunk of its own, grown there, and back down.
    let steps = [
        8usize, 9, 16, 33, 100, 1000, 2048, 4096, 8000, 8192, 8193, 20_000, 100_000, 300_000,
        12_000, 5000, 100, 3,
    ];
    let mut p = palloc(1);
    let mut len = 1usize;
    unsafe { fill(p, len, 0) };
    for &n in &steps {
        p = unsafe { repalloc(p, n) };
        assert_eq!(unsafe { chunk_context(p) }, ctx);
        unsafe { check(p, len.min(n), 0) };
        unsafe { fill(p, n, 0) };
        len = n;
    }
    unsafe { pfree(p) };
    // After the large chunk went away, only small blocks remain.
    let c = ctx.counters();
    assert_eq!(c.total_bytes, ctx.mem_allocated(false) as u64);
    drop(_g);
    ctx.delete();
}

#[test]
fn repalloc_of_many_chunks_keeps_each_ones_contents() {
    let (ctx, _g) = fresh("many");
    let mut chunks: Vec<(*mut u8, usize)> = (0..200)
        .map(|k| {
            let n = 1 + k * 7;
            let p = palloc(n);
            unsafe { fill(p, n, k as u8) };
            (p, n)
        })
        .collect();
    for round in 0..3 {
        for (k, (p, n)) in chunks.iter_mut().enumerate() {
            unsafe { check(*p, *n, k as u8) };
            let new_n = if round % 2 == 0 {
                *n * 3 + 10
            } else {
                *n / 2 + 1
            };
            *p = unsafe { repalloc(*p, new_n) };
            unsafe { check(*p, (*n).min(new_n), k as u8) };
            unsafe { fill(*p, new_n, k as u8) };
            *n = new_n;
        }
    }
    for &(p, n) in &chunks {
        unsafe { pfree(p) };
        let _ = n;
    }
    drop(_g);
    ctx.delete();
}

#[test]
fn palloc_zero_returns_distinct_valid_pointers() {
    let (ctx, _g) = fresh("zero-size");
    let a = palloc(0);
    let b = palloc(0);
    let c = palloc0(0);
    assert!(!a.is_null() && !b.is_null() && !c.is_null());
    assert!(a != b && b != c && a != c);
    assert_eq!(unsafe { chunk_context(a) }, ctx);
    assert!(unsafe { chunk_space(a) } > 0);
    // A zero-size chunk can be grown like any other.
    let b = unsafe { repalloc(b, 100) };
    unsafe { fill(b, 100, 9) };
    unsafe { check(b, 100, 9) };
    unsafe {
        pfree(a);
        pfree(b);
        pfree(c);
    }
    drop(_g);
    ctx.delete();
}

#[test]
fn repalloc_stays_in_place_within_the_size_class() {
    let (ctx, _g) = fresh("in-place");
    let p = palloc(10);
    unsafe { fill(p, 10, 1) };
    let q = unsafe { repalloc(p, 12) };
    assert_eq!(q, p, "growing within the class stays in place");
    let q = unsafe { repalloc(q, 1) };
    assert_eq!(q, p, "shrinking stays in place");
    unsafe { check(q, 1, 1) };
    let r = unsafe { repalloc(q, 1000) };
    assert_ne!(r, p, "a larger class moves");
    unsafe { check(r, 1, 1) };
    // The old chunk went to its freelist: the next request of its class gets it back.
    let s = palloc(10);
    assert_eq!(s, p);
    drop(_g);
    ctx.delete();
}

#[test]
fn freed_chunks_are_reused_lifo_per_class() {
    let (ctx, _g) = fresh("lifo");
    let a = palloc(100);
    let b = palloc(100);
    let c = palloc(100);
    let other = palloc(20);
    unsafe {
        pfree(a);
        pfree(c);
        pfree(other);
    }
    // A different class does not take them.
    let big = palloc(200);
    assert!(big != a && big != c);
    // Same class (65..=128 bytes): last freed, first reused.
    assert_eq!(palloc(100), c);
    assert_eq!(palloc(65), a);
    let fresh_one = palloc(128);
    assert!(fresh_one != a && fresh_one != b && fresh_one != c);
    assert_eq!(palloc(17), other);
    drop(_g);
    ctx.delete();
}

#[test]
fn large_chunk_pfree_returns_its_block() {
    let (ctx, _g) = fresh("large");
    let small = palloc(100);
    let base = ctx.mem_allocated(false);
    let blocks = ctx.counters().total_nblocks;
    let p = palloc(100_000);
    let grown = ctx.mem_allocated(false) - base;
    assert!(grown >= 100_000);
    assert_eq!(ctx.counters().total_nblocks, blocks + 1);
    assert!(unsafe { chunk_space(p) } >= 100_000);
    assert!(unsafe { chunk_space(p) } < grown);
    unsafe { fill(p, 100_000, 3) };
    unsafe { pfree(p) };
    assert_eq!(
        ctx.mem_allocated(false),
        base,
        "the block went back to the system"
    );
    assert_eq!(ctx.counters().total_nblocks, blocks);

    // repalloc of a large chunk changes the block by exactly the difference.
    let p = palloc(50_000);
    let with_50k = ctx.mem_allocated(false);
    let p = unsafe { repalloc(p, 200_000) };
    let with_200k = ctx.mem_allocated(false);
    assert!(with_200k - with_50k >= 150_000 && with_200k - with_50k < 150_100);
    assert_eq!(ctx.counters().total_nblocks, blocks + 1);
    unsafe { pfree(p) };
    assert_eq!(ctx.mem_allocated(false), base);
    unsafe { pfree(small) };
    drop(_g);
    ctx.delete();
}

#[test]
fn aligned_allocations() {
    let (ctx, _g) = fresh("aligned");
    let other = MemoryContext::top().new_child("other", BlockSizes::DEFAULT);
    let mut align = 32;
    while align <= 4096 {
        let p = palloc_aligned(100, align, AllocFlags::NONE);
        assert_eq!(p as usize % align, 0, "align {align}");
        assert_eq!(unsafe { chunk_context(p) }, ctx);
        unsafe { fill(p, 100, align as u8) };

        // repalloc keeps the alignment and the contents (a new aligned chunk in the same
        // context), also into a chunk of its own and back.
        let q = unsafe { repalloc(p, 5000) };
        assert_eq!(q as usize % align, 0, "repalloc keeps align {align}");
        assert_eq!(unsafe { chunk_context(q) }, ctx);
        unsafe { check(q, 100, align as u8) };
        unsafe { fill(q, 5000, 1) };
        let q = unsafe { repalloc(q, 40_000) };
        assert_eq!(q as usize % align, 0);
        unsafe { check(q, 5000, 1) };
        let q = unsafe { repalloc(q, 50) };
        assert_eq!(q as usize % align, 0);
        unsafe { check(q, 50, 1) };
        unsafe { pfree(q) };

        // Zeroed, and in a named context.
        let z = other
            .alloc_aligned(300, align, AllocFlags::ZERO)
            .unwrap()
            .as_ptr();
        assert_eq!(z as usize % align, 0);
        assert!((0..300).all(|i| unsafe { *z.add(i) } == 0));
        assert_eq!(unsafe { chunk_context(z) }, other);
        assert!(unsafe { chunk_space(z) } >= 300 + align);
        unsafe { pfree(z) };
        align *= 2;
    }
    // Alignments up to 16 take the ordinary path.
    for align in [1, 2, 4, 8, 16] {
        let p = palloc_aligned(24, align, AllocFlags::NONE);
        assert_eq!(p as usize % align, 0);
        let plain = palloc(24);
        assert_eq!(unsafe { chunk_space(p) }, unsafe { chunk_space(plain) });
        unsafe {
            pfree(p);
            pfree(plain);
        }
    }
    // Bad alignments.
    assert_eq!(
        expect_panic(|| palloc_aligned(10, 48, AllocFlags::NONE)),
        "invalid alignment 48 requested in palloc_aligned"
    );
    assert_eq!(
        expect_panic(|| palloc_aligned(10, MAX_ALIGNMENT * 2, AllocFlags::NONE)),
        format!(
            "invalid alignment {} requested in palloc_aligned",
            MAX_ALIGNMENT * 2
        )
    );
    drop(_g);
    ctx.delete();
    other.delete();
}

#[test]
fn aligned_free_returns_the_underlying_chunk() {
    let (ctx, _g) = fresh("aligned-free");
    let p = palloc_aligned(100, 256, AllocFlags::NONE);
    let before = ctx.counters();
    unsafe { pfree(p) };
    let after = ctx.counters();
    assert_eq!(after.free_chunks, before.free_chunks + 1);
    assert!(after.free_bytes > before.free_bytes + 256);
    // The same request gets the same chunk back, so the same aligned pointer.
    let q = palloc_aligned(100, 256, AllocFlags::NONE);
    assert_eq!(q, p);
    drop(_g);
    ctx.delete();
}

#[test]
fn size_limit_panics_with_postgres_message() {
    let (ctx, _g) = fresh("limits");
    let msg = "invalid memory alloc request size 1073741824";
    assert_eq!(MAX_ALLOC_SIZE, (1 << 30) - 1);
    assert_eq!(expect_panic(|| palloc(MAX_ALLOC_SIZE + 1)), msg);
    assert_eq!(expect_panic(|| palloc0(MAX_ALLOC_SIZE + 1)), msg);
    assert_eq!(expect_panic(|| ctx.alloc(MAX_ALLOC_SIZE + 1)), msg);
    // NO_OOM does not lift the size limit.
    assert_eq!(
        expect_panic(|| palloc_extended(MAX_ALLOC_SIZE + 1, AllocFlags::NO_OOM)),
        msg
    );
    assert_eq!(
        expect_panic(|| palloc_aligned(MAX_ALLOC_SIZE + 1, 64, AllocFlags::NONE)),
        msg
    );
    assert_eq!(
        expect_panic(|| palloc(usize::MAX)),
        format!("invalid memory alloc request size {}", usize::MAX)
    );
    // Nor does HUGE past the huge limit.
    assert_eq!(
        expect_panic(|| palloc_extended(MAX_ALLOC_HUGE_SIZE + 1, AllocFlags::HUGE)),
        format!(
            "invalid memory alloc request size {}",
            MAX_ALLOC_HUGE_SIZE + 1
        )
    );

    // repalloc beyond the limit: refused, the chunk stays valid.
    let p = palloc(64);
    unsafe { fill(p, 64, 5) };
    assert_eq!(
        expect_panic(|| unsafe { repalloc(p, MAX_ALLOC_SIZE + 1) }),
        msg
    );
    unsafe { check(p, 64, 5) };
    unsafe { pfree(p) };
    // Nothing was taken from the system by the refused requests.
    assert_eq!(ctx.counters().total_nblocks, 1);
    drop(_g);
    ctx.delete();
}

#[test]
fn huge_no_oom_returns_null_and_oom_names_size_and_context() {
    let (ctx, _g) = fresh("ExecutorState");
    // HUGE lets the request past the 1 GB check; the system refuses it; NO_OOM gives null.
    let p = palloc_extended(IMPOSSIBLE, AllocFlags::HUGE | AllocFlags::NO_OOM);
    assert!(p.is_null());
    assert_eq!(
        ctx.alloc_extended(IMPOSSIBLE, AllocFlags::HUGE | AllocFlags::NO_OOM),
        None
    );
    assert!(palloc_aligned(IMPOSSIBLE, 64, AllocFlags::HUGE | AllocFlags::NO_OOM).is_null());

    let oom = format!(
        "out of memory: Failed on request of size {IMPOSSIBLE} in memory context \"ExecutorState\"."
    );
    assert_eq!(
        expect_panic(|| palloc_extended(IMPOSSIBLE, AllocFlags::HUGE)),
        oom
    );
    let other = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    assert_eq!(
        expect_panic(|| other.alloc_extended(IMPOSSIBLE, AllocFlags::HUGE)),
        format!(
            "out of memory: Failed on request of size {IMPOSSIBLE} in memory context \
             \"CacheMemoryContext\"."
        )
    );

    // An over-aligned chunk too.
    let a = other
        .alloc_aligned(100, 256, AllocFlags::NONE)
        .unwrap()
        .as_ptr();
    unsafe { fill(a, 100, 8) };
    let r = unsafe { repalloc_extended(a, IMPOSSIBLE, AllocFlags::HUGE | AllocFlags::NO_OOM) };
    assert!(r.is_null());
    unsafe { check(a, 100, 8) };
    assert_eq!(
        expect_panic(|| unsafe { repalloc_huge(a, IMPOSSIBLE) }),
        format!(
            "out of memory: Failed on request of size {IMPOSSIBLE} in memory context \
             \"CacheMemoryContext\"."
        )
    );
    unsafe { check(a, 100, 8) };
    unsafe { pfree(a) };

    // repalloc: NO_OOM gives null and keeps the chunk; without it, the error names the chunk's
    // context (not the current one).
    for n in [100usize, 50_000] {
        let q = other.alloc(n).as_ptr();
        unsafe { fill(q, n, 7) };
        let r = unsafe { repalloc_extended(q, IMPOSSIBLE, AllocFlags::HUGE | AllocFlags::NO_OOM) };
        assert!(r.is_null());
        unsafe { check(q, n, 7) };
        let msg = expect_panic(|| unsafe { repalloc_huge(q, IMPOSSIBLE) });
        assert_eq!(
            msg,
            format!(
                "out of memory: Failed on request of size {IMPOSSIBLE} in memory context \
                 \"CacheMemoryContext\"."
            )
        );
        unsafe { check(q, n, 7) };
        unsafe { pfree(q) };
    }
    drop(_g);
    ctx.delete();
    other.delete();
}

#[test]
fn chunk_context_and_pstrdup() {
    let top = MemoryContext::top();
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = top.new_child("B", BlockSizes::SMALL);
    let pa = a.alloc(10).as_ptr();
    let pb = b.alloc(10_000).as_ptr();
    assert_eq!(unsafe { chunk_context(pa) }, a);
    assert_eq!(unsafe { chunk_context(pb) }, b);
    // repalloc keeps a chunk in its own context, whatever is current.
    let _g = b.switch_to();
    let pa = unsafe { repalloc(pa, 5000) };
    assert_eq!(unsafe { chunk_context(pa) }, a);

    let s = pstrdup("pg_class");
    assert_eq!(unsafe { chunk_context(s) }, b);
    let bytes = unsafe { std::slice::from_raw_parts(s, 9) };
    assert_eq!(bytes, b"pg_class\0");
    let empty = pstrdup("");
    assert_eq!(unsafe { *empty }, 0);
    let c = unsafe { std::ffi::CStr::from_ptr(s as *const std::ffi::c_char) };
    assert_eq!(c.to_str().unwrap(), "pg_class");
    drop(_g);
    a.delete();
    b.delete();
}

#[test]
fn small_context_gives_a_2k_request_a_block_of_its_own() {
    let ctx = MemoryContext::top().new_child("small", BlockSizes::SMALL);
    let keeper = ctx.mem_allocated(false);
    // 200 bytes are well below SMALL's chunk limit (1 KiB): carved from the keeper.
    let p = ctx.alloc(200).as_ptr();
    assert_eq!(ctx.mem_allocated(false), keeper);
    assert_eq!(ctx.counters().total_nblocks, 1);
    // 2 KiB is above it: a block of its own, larger than the request.
    let q = ctx.alloc(2048).as_ptr();
    let grown = ctx.mem_allocated(false) - keeper;
    assert!(grown > 2048, "grew by {grown}");
    assert!(grown < 2048 + 256, "grew by {grown}");
    assert_eq!(ctx.counters().total_nblocks, 2);
    unsafe { pfree(q) };
    assert_eq!(ctx.mem_allocated(false), keeper);
    assert_eq!(ctx.counters().total_nblocks, 1);
    unsafe { pfree(p) };
    ctx.delete();
}

#[test]
fn block_sizes_validate() {
    assert!(BlockSizes::DEFAULT.validate().is_ok());
    assert!(BlockSizes::SMALL.validate().is_ok());
    assert!(BlockSizes::START_SMALL.validate().is_ok());
    assert_eq!(
        (
            BlockSizes::DEFAULT.min_context_size,
            BlockSizes::DEFAULT.init_block_size,
            BlockSizes::DEFAULT.max_block_size
        ),
        (0, 8192, 8 << 20)
    );
    assert_eq!(
        (
            BlockSizes::SMALL.min_context_size,
            BlockSizes::SMALL.init_block_size,
            BlockSizes::SMALL.max_block_size
        ),
        (0, 1024, 8192)
    );
    assert_eq!(
        (
            BlockSizes::START_SMALL.min_context_size,
            BlockSizes::START_SMALL.init_block_size,
            BlockSizes::START_SMALL.max_block_size
        ),
        (0, 1024, 8 << 20)
    );
    let bad = BlockSizes {
        min_context_size: 0,
        init_block_size: 512,
        max_block_size: 8192,
    };
    assert!(bad.validate().is_err());
    let msg = expect_panic(|| MemoryContext::top().new_child("bad", bad));
    assert!(msg.starts_with("invalid AllocSet block sizes"), "{msg}");
    let bad = BlockSizes {
        min_context_size: 0,
        init_block_size: 8192,
        max_block_size: 4096,
    };
    assert!(bad.validate().is_err());
    // A custom size works and its keeper is min_context_size.
    let custom = BlockSizes {
        min_context_size: 64 * 1024,
        init_block_size: 16 * 1024,
        max_block_size: 64 * 1024,
    };
    let ctx = MemoryContext::top().new_child("custom", custom);
    assert_eq!(ctx.mem_allocated(false), 64 * 1024);
    ctx.delete();
}

/// Each bound of `BlockSizes::validate` on both sides: the limits themselves are accepted, one
/// past them refused (1 GiB − 1 is the largest block offset a chunk header encodes).
#[test]
fn block_sizes_validate_at_the_bounds() {
    const MAX: usize = (1 << 30) - 1;
    let sizes = |min_context_size, init_block_size, max_block_size| BlockSizes {
        min_context_size,
        init_block_size,
        max_block_size,
    };
    for ok in [
        sizes(0, 1024, 1024),
        sizes(0, 8192, 8192),
        sizes(0, 1024, MAX),
        sizes(1024, 1024, 8192),
        sizes(MAX, 1024, 8192),
    ] {
        assert_eq!(ok.validate(), Ok(()), "{ok:?}");
    }
    for (bad, what) in [
        (sizes(0, 1008, 8192), "initial block size"),
        (sizes(0, 1032, 8192), "initial block size"),
        (sizes(0, 8192, 8176), "maximum block size"),
        (sizes(0, 1024, MAX + 1), "maximum block size"),
        (sizes(1023, 1024, 8192), "minimum context size"),
        (sizes(16, 1024, 8192), "minimum context size"),
        (sizes(MAX + 1, 1024, 8192), "minimum context size"),
    ] {
        let err = bad
            .validate()
            .expect_err(&format!("{bad:?} must be refused"));
        assert!(err.contains(what), "{bad:?}: {err}");
    }
}

/// Flags combine as a set: adding a flag already present changes nothing.
#[test]
fn alloc_flags_combine_as_a_set() {
    let f = AllocFlags::HUGE | AllocFlags::NO_OOM;
    assert_eq!(f | AllocFlags::HUGE, f);
    assert!(f.contains(AllocFlags::HUGE) && f.contains(AllocFlags::NO_OOM));
    assert!(!f.contains(AllocFlags::ZERO));
    assert_eq!(AllocFlags::ZERO | AllocFlags::ZERO, AllocFlags::ZERO);
}

#[test]
fn reset_keeps_the_keeper_and_restarts_block_doubling() {
    let ctx = MemoryContext::top().new_child("restart", BlockSizes::DEFAULT);
    let keeper = ctx.mem_allocated(false);
    let first_growth = |ctx: MemoryContext| {
        let before = ctx.mem_allocated(false);
        loop {
            let _ = ctx.alloc(1024);
            let now = ctx.mem_allocated(false);
            if now != before {
                return now - before;
            }
        }
    };
    let g1 = first_growth(ctx);
    for _ in 0..200 {
        let _ = ctx.alloc(1024);
    }
    ctx.reset();
    assert_eq!(ctx.mem_allocated(false), keeper);
    assert_eq!(
        first_growth(ctx),
        g1,
        "block sizes start doubling again after reset"
    );
    ctx.delete();
}

/// Reset gives back every block but the keeper, rewinds the keeper to empty and empties the
/// freelists: the counters are those of a fresh context, and the next chunk is the keeper's first.
#[test]
fn reset_rewinds_the_keeper_and_empties_the_freelists() {
    let ctx = MemoryContext::top().new_child("rewind", BlockSizes::DEFAULT);
    let fresh = ctx.counters();
    assert_eq!((fresh.total_nblocks, fresh.free_chunks), (1, 0));
    let first = ctx.alloc(100).as_ptr();
    let chunks: Vec<*mut u8> = (0..100).map(|i| ctx.alloc(100 + i).as_ptr()).collect();
    for &p in chunks.iter().step_by(3) {
        unsafe { pfree(p) };
    }
    let used = ctx.counters();
    assert!(used.total_nblocks > 1, "{used:?}");
    assert!(used.free_chunks >= 34, "{used:?}");
    ctx.reset();
    assert_eq!(ctx.counters(), fresh, "counters after reset");
    assert_eq!(
        ctx.alloc(100).as_ptr(),
        first,
        "the keeper's first chunk again"
    );
    ctx.delete();
}

/// Sizes of the debug build's layout: a 48-byte chunk prefix (header word, debug record, front
/// redzone), a rear redzone of at least 16 bytes after every request, and the same 48-byte block
/// header as the release build, followed by the kind's 8 bytes and 8 of padding (the first
/// chunk's data lands on 16: 64 + 48).
#[cfg(feature = "debug-contexts")]
mod debug_layout {
    use super::*;

    /// Bytes before a block's first chunk.
    const BLOCK_HEADER: usize = 64;
    const PREFIX: usize = 48;

    /// Bytes a chunk of size class `class` takes in its block.
    fn footprint(class: usize) -> usize {
        (PREFIX + class + 15) & !15
    }

    #[test]
    fn prefix_and_footprints() {
        assert_eq!(memctx::chunk_prefix_size(), PREFIX);
        assert_eq!([8usize, 16, 32, 8192].map(footprint), [64, 64, 80, 8240]);
        let ctx = MemoryContext::top().new_child("debug sizes", BlockSizes::DEFAULT);
        let c = ctx.counters();
        assert_eq!((c.total_bytes, c.total_nblocks), (8192, 1));
        assert_eq!(c.free_bytes, (8192 - BLOCK_HEADER) as u64);
        ctx.delete();
    }

    /// When the active block cannot hold a request, a leftover of exactly one smallest chunk's
    /// footprint still becomes a free chunk (of the 8-byte class, which no debug request uses).
    #[test]
    fn a_leftover_of_one_smallest_chunk_becomes_a_free_chunk() {
        let ctx = MemoryContext::top().new_child("leftover", BlockSizes::DEFAULT);
        // 16 bytes + redzone take the 32-byte class (80-byte footprint), 0 bytes + redzone the
        // 16-byte class (64): they leave 8128 - 100 * 80 - 64 = 64 bytes of the keeper, one
        // 8-byte-class footprint.
        for _ in 0..100 {
            let _ = ctx.alloc(16);
        }
        let _ = ctx.alloc(0);
        let before = ctx.counters();
        assert_eq!(
            (before.total_nblocks, before.free_bytes, before.free_chunks),
            (1, footprint(8) as u64, 0)
        );
        let p = ctx.alloc(16).as_ptr();
        let after = ctx.counters();
        assert_eq!(after.total_nblocks, 2);
        assert_eq!(after.free_chunks, 1, "the 64-byte leftover is a free chunk");
        assert_eq!(
            after.free_bytes,
            (footprint(8) + 8192 - BLOCK_HEADER - footprint(32)) as u64
        );
        assert_eq!(unsafe { chunk_space(p) }, footprint(32));
        assert_eq!(ctx.check(), 0);
        ctx.delete();
    }

    /// A new block of exactly the bytes a chunk needs is enough: 1000 bytes and their redzone
    /// take the 1024-byte class (1072-byte footprint), which with the 64 bytes before a block's
    /// first chunk needs 1136. The keeper (1136) holds the first; the second gets a block of
    /// 1136, not of twice that.
    #[test]
    fn a_new_block_of_exactly_the_needed_size_does_not_double() {
        let sizes = BlockSizes {
            min_context_size: 0,
            init_block_size: 1136,
            max_block_size: 8192,
        };
        let ctx = MemoryContext::top().new_child("exact", sizes);
        for _ in 0..2 {
            let p = ctx.alloc(1000).as_ptr();
            assert_eq!(unsafe { chunk_space(p) }, footprint(1024));
        }
        assert_eq!(ctx.counters().total_nblocks, 2);
        assert_eq!(ctx.mem_allocated(false), 2 * 1136);
        assert_eq!(ctx.check(), 0);
        ctx.delete();
    }

    /// The chunk limit (8 KiB for DEFAULT) applies to the request plus its redzone: 8176 bytes
    /// need exactly 8192 and are a freelist chunk; one byte more gets a block of its own. The
    /// same holds when repalloc crosses the limit.
    #[test]
    fn a_request_of_exactly_the_chunk_limit_is_a_freelist_chunk() {
        let ctx = MemoryContext::top().new_child("threshold", BlockSizes::DEFAULT);
        let at_limit = ctx.alloc(8176).as_ptr();
        assert_eq!(unsafe { chunk_space(at_limit) }, footprint(8192));
        // (The keeper's space went to freelists when the 8 KiB chunk took a new block.)
        let c = ctx.counters();
        let (blocks, free) = (c.total_nblocks, c.free_chunks);
        unsafe { pfree(at_limit) };
        let c = ctx.counters();
        assert_eq!(
            (c.total_nblocks, c.free_chunks),
            (blocks, free + 1),
            "on its freelist"
        );

        let above = ctx.alloc(8177).as_ptr();
        let c = ctx.counters();
        assert_eq!(
            (c.total_nblocks, c.free_chunks),
            (blocks + 1, free + 1),
            "a block of its own"
        );
        // Down to the limit: the chunk leaves its block for the freed 8 KiB chunk.
        let q = unsafe { repalloc(above, 8176) };
        assert_eq!(q, at_limit, "the freed 8 KiB chunk is reused");
        let c = ctx.counters();
        assert_eq!((c.total_nblocks, c.free_chunks), (blocks, free));
        // And up again by one byte: a block of its own.
        let r = unsafe { repalloc(q, 8177) };
        assert_ne!(r, q);
        let c = ctx.counters();
        assert_eq!((c.total_nblocks, c.free_chunks), (blocks + 1, free + 1));
        unsafe { pfree(r) };
        assert_eq!(ctx.counters().total_nblocks, blocks);
        ctx.delete();
    }
}

/// Exact sizes of the release layout.
#[cfg(not(feature = "debug-contexts"))]
mod release_layout {
    use super::*;

    /// Block header (48) plus the pad that puts the first chunk's data on 16 bytes (8): the first
    /// chunk starts 56 bytes into its block, its data (after the 8-byte header) at 64.
    const BLOCK_OVERHEAD: usize = 56;
    const CHUNK_HEADER: usize = 8;

    /// Bytes a chunk of size class `class` takes in its block.
    fn footprint(class: usize) -> usize {
        (CHUNK_HEADER + class + 15) & !15
    }

    /// Size of the block a chunk of its own gets for a request of `n` bytes.
    fn large_block(n: usize) -> usize {
        (n + BLOCK_OVERHEAD + CHUNK_HEADER + 16) & !15
    }

    #[test]
    fn header_and_keeper_sizes() {
        assert_eq!(memctx::CHUNK_HEADER_SIZE, 8);
        assert_eq!(memctx::chunk_prefix_size(), 8);
        let d = MemoryContext::top().new_child("d", BlockSizes::DEFAULT);
        let s = MemoryContext::top().new_child("s", BlockSizes::SMALL);
        let ss = MemoryContext::top().new_child("ss", BlockSizes::START_SMALL);
        // The keeper is the initial block size, as in PostgreSQL.
        assert_eq!(d.mem_allocated(false), 8192);
        assert_eq!(s.mem_allocated(false), 1024);
        assert_eq!(ss.mem_allocated(false), 1024);
        for c in [d, s, ss] {
            let k = c.counters();
            assert_eq!(k.total_nblocks, 1);
            assert_eq!(
                k.free_bytes,
                c.mem_allocated(false) as u64 - BLOCK_OVERHEAD as u64
            );
            assert_eq!(k.free_chunks, 0);
            c.delete();
        }
    }

    /// GetMemoryChunkSpace: a chunk's footprint in its block (header, class, padding to 16), or
    /// for a chunk of its own, its block but the block header.
    #[test]
    fn chunk_space_is_the_chunks_footprint() {
        assert_eq!(
            [8usize, 16, 32, 64, 128, 1024, 8192].map(footprint),
            [16, 32, 48, 80, 144, 1040, 8208]
        );
        let (ctx, _g) = fresh("space");
        for (n, class) in [
            (0usize, 8usize),
            (1, 8),
            (8, 8),
            (9, 16),
            (100, 128),
            (1000, 1024),
            (4097, 8192),
            (8192, 8192),
        ] {
            let p = palloc(n);
            assert_eq!(unsafe { chunk_space(p) }, footprint(class), "palloc({n})");
            unsafe { pfree(p) };
        }
        for n in [8193usize, 10_000, 100_000] {
            let before = ctx.mem_allocated(false);
            let p = palloc(n);
            assert_eq!(
                ctx.mem_allocated(false) - before,
                large_block(n),
                "palloc({n})"
            );
            assert_eq!(
                unsafe { chunk_space(p) },
                large_block(n) - BLOCK_OVERHEAD,
                "palloc({n})"
            );
            unsafe { pfree(p) };
            assert_eq!(ctx.mem_allocated(false), before);
        }
        assert_eq!(large_block(10_000), 10_080);
        // pstrdup: 9 bytes -> the 16-byte class.
        let s = pstrdup("pg_class");
        assert_eq!(unsafe { chunk_space(s) }, 32);
        // palloc_aligned: the underlying chunk holds size + align + header.
        for (align, class) in [(32usize, 256usize), (256, 512), (1024, 2048), (4096, 8192)] {
            let p = palloc_aligned(100, align, AllocFlags::NONE);
            assert_eq!(unsafe { chunk_space(p) }, footprint(class), "align {align}");
        }
        drop(_g);
        ctx.delete();
    }

    #[test]
    fn an_8k_chunk_takes_a_16k_block() {
        let (ctx, _g) = fresh("8k");
        let p = palloc(8192);
        // The keeper (8192) cannot hold an 8208-byte chunk; the next block (8192) cannot either,
        // so it doubles to 16384, as in PostgreSQL.
        assert_eq!(ctx.mem_allocated(false), 8192 + 16384);
        let c = ctx.counters();
        assert_eq!(c.total_nblocks, 2);
        // The keeper's space was carved into freelist chunks: 8136 = 4112 (4096 class) +
        // 2064 (2048) + 1040 (1024) + 528 (512) + 272 (256) + 80 (64) + 32 (16) + 8 left.
        assert_eq!(c.free_chunks, 7);
        assert_eq!(c.free_bytes, 8136 + (16384 - 56 - 8208));
        unsafe { pfree(p) };
        drop(_g);
        ctx.delete();
    }

    /// Allocates `size`-byte chunks until the context has taken `blocks` more blocks; returns,
    /// per new block, its size and how many chunks the previous block took.
    fn growth(ctx: MemoryContext, size: usize, blocks: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut before = ctx.mem_allocated(false);
        let mut nblocks = ctx.counters().total_nblocks;
        let mut in_block = 0;
        while out.len() < blocks {
            let _ = ctx.alloc(size);
            in_block += 1;
            let now = ctx.mem_allocated(false);
            if now != before {
                let c = ctx.counters();
                assert_eq!(c.total_nblocks, nblocks + 1);
                assert_eq!(c.total_bytes, now as u64);
                nblocks += 1;
                out.push((now - before, in_block - 1));
                in_block = 1;
                before = now;
            }
        }
        out
    }

    /// How many chunks of `size` bytes a block of `block` bytes holds.
    fn fits(block: usize, size: usize) -> usize {
        (block - BLOCK_OVERHEAD) / footprint(size.next_power_of_two())
    }

    #[test]
    fn default_blocks_double_up_to_the_maximum() {
        let ctx = MemoryContext::top().new_child("doubling", BlockSizes::DEFAULT);
        let got = growth(ctx, 1024, 12);
        let mut want = Vec::new();
        let mut prev = 8192; // the keeper
        for k in 0..12 {
            let size = (8192usize << k).min(8 << 20);
            want.push((size, fits(prev, 1024)));
            prev = size;
        }
        assert_eq!(got, want);
        assert_eq!(got[0], (8192, 7));
        assert_eq!(got[10], (8 << 20, fits(4 << 20, 1024)));
        assert_eq!(got[11].0, 8 << 20, "capped at max_block_size");
        ctx.delete();
    }

    #[test]
    fn small_and_start_small_blocks_double() {
        let ctx = MemoryContext::top().new_child("small", BlockSizes::SMALL);
        let got = growth(ctx, 100, 6);
        let sizes: Vec<usize> = got.iter().map(|g| g.0).collect();
        assert_eq!(sizes, vec![1024, 2048, 4096, 8192, 8192, 8192]);
        assert_eq!(got[0].1, 6); // (1024 - 56) / 144
        assert_eq!(got[1].1, fits(1024, 100));
        assert_eq!(got[2].1, fits(2048, 100));
        ctx.delete();

        let ctx = MemoryContext::top().new_child("start small", BlockSizes::START_SMALL);
        let got = growth(ctx, 100, 8);
        let sizes: Vec<usize> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            sizes,
            vec![1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
        );
        ctx.delete();

        // A chunk larger than the next block size gets a bigger block, and the series goes on
        // from where it was (PostgreSQL's rule): 1040 + 56 > 1024, so 2048, then 2048, 4096.
        let ctx = MemoryContext::top().new_child("start small 1k", BlockSizes::START_SMALL);
        let got = growth(ctx, 1024, 3);
        assert_eq!(got, vec![(2048, 0), (2048, 1), (4096, 1)]);
        ctx.delete();
    }

    #[test]
    fn small_context_chunk_limit_is_1k() {
        let ctx = MemoryContext::top().new_child("small", BlockSizes::SMALL);
        // A 1 KiB chunk (1040 bytes) does not fit the 1024-byte keeper: the next block (1024)
        // doubles to 2048 to hold it; it is a freelist-class chunk, not a block of its own.
        let p = ctx.alloc(1024).as_ptr();
        assert_eq!(unsafe { chunk_space(p) }, 1040);
        assert_eq!(ctx.mem_allocated(false), 1024 + 2048);
        assert_eq!(ctx.counters().total_nblocks, 2);
        let before = ctx.mem_allocated(false);
        // One byte more is above the limit: a block of its own.
        let q = ctx.alloc(1025).as_ptr();
        assert_eq!(ctx.mem_allocated(false) - before, large_block(1025));
        let r = ctx.alloc(2048).as_ptr();
        assert_eq!(
            ctx.mem_allocated(false) - before,
            large_block(1025) + large_block(2048)
        );
        assert_eq!(large_block(2048), 2128);
        assert_eq!(ctx.counters().total_nblocks, 4);
        unsafe {
            pfree(q);
            pfree(r);
        }
        assert_eq!(ctx.mem_allocated(false), before);
        // The 1 KiB chunk goes to its freelist; its block stays.
        unsafe { pfree(p) };
        assert_eq!(ctx.mem_allocated(false), before);
        ctx.delete();
    }

    /// The size limits include their bound: exactly `MAX_ALLOC_SIZE` needs no HUGE flag, exactly
    /// `MAX_ALLOC_HUGE_SIZE` is accepted with it (the system refuses it: NO_OOM gives null). Release
    /// only: the debug build would fill the gibibyte with its fresh pattern.
    #[test]
    fn size_limits_include_their_bound() {
        let (ctx, _g) = fresh("bounds");
        let p = palloc_extended(MAX_ALLOC_SIZE, AllocFlags::NO_OOM);
        if !p.is_null() {
            assert_eq!(unsafe { chunk_context(p) }, ctx);
            unsafe { pfree(p) };
        }
        let huge = AllocFlags::HUGE | AllocFlags::NO_OOM;
        assert!(palloc_extended(MAX_ALLOC_HUGE_SIZE, huge).is_null());
        drop(_g);
        ctx.delete();
    }

    /// The chunk limit is the largest class whose footprint is at most a quarter of a maximum
    /// block less its header, the bound included: with 4208-byte blocks (4160 / 4 = 1040, the
    /// footprint of 1 KiB) it is 1 KiB; one byte less and it is 512.
    #[test]
    fn chunk_limit_at_a_quarter_of_the_maximum_block() {
        assert_eq!(footprint(1024), 1040);
        for (max, limit) in [(4208usize, 1024usize), (4207, 512)] {
            let sizes = BlockSizes {
                min_context_size: 0,
                init_block_size: 1024,
                max_block_size: max,
            };
            let ctx = MemoryContext::top().new_child("limit", sizes);
            for n in [limit, limit + 1] {
                let p = ctx.alloc(n).as_ptr();
                let want = if n <= limit {
                    footprint(n)
                } else {
                    large_block(n) - BLOCK_OVERHEAD
                };
                assert_eq!(unsafe { chunk_space(p) }, want, "max {max}, {n} bytes");
            }
            ctx.delete();
        }
    }

    /// `repalloc` of a chunk with a block of its own to a size the freelists serve (`need` at most
    /// the chunk limit, 8 KiB for DEFAULT) moves it into a size-class chunk and gives its block
    /// back, at the limit itself too; above the limit it keeps a block of its own, resized.
    #[test]
    fn a_large_chunk_resized_to_the_chunk_limit_or_below_leaves_its_block() {
        // (new size, its chunk's space, the context's memory after the resize)
        for (n, space, total) in [
            (100usize, footprint(128), 8192),
            // 8208 bytes do not fit the keeper: a new block, doubled to 16 KiB.
            (8192, footprint(8192), 8192 + 16384),
            (
                8193,
                large_block(8193) - BLOCK_OVERHEAD,
                8192 + large_block(8193),
            ),
            (
                20_000,
                large_block(20_000) - BLOCK_OVERHEAD,
                8192 + large_block(20_000),
            ),
        ] {
            let (ctx, _g) = fresh("resized large");
            let p = palloc(10_000);
            assert_eq!(ctx.mem_allocated(false), 8192 + large_block(10_000));
            unsafe { fill(p, 10_000, 5) };
            let q = unsafe { repalloc(p, n) };
            unsafe { check(q, n.min(10_000), 5) };
            assert_eq!(unsafe { chunk_space(q) }, space, "10000 -> {n} bytes");
            assert_eq!(ctx.mem_allocated(false), total, "10000 -> {n} bytes");
            unsafe { pfree(q) };
            drop(_g);
            ctx.delete();
        }
    }

    #[test]
    fn leftover_space_is_carved_into_freelists_before_a_new_block() {
        let ctx = MemoryContext::top().new_child("leftover", BlockSizes::DEFAULT);
        // Seven 1 KiB chunks fill the keeper to 56 + 7 * 1040 = 7336; 856 bytes remain.
        let first: Vec<*mut u8> = (0..7).map(|_| ctx.alloc(1024).as_ptr()).collect();
        assert_eq!(ctx.counters().free_bytes, 856);
        let _eighth = ctx.alloc(1024);
        let c = ctx.counters();
        // 856 = 528 (512 class) + 272 (256) + 48 (32) + 8 unusable bytes.
        assert_eq!(c.free_chunks, 3);
        assert_eq!(c.free_bytes, 8 + 528 + 272 + 48 + (8192 - 56 - 1040));
        // Those chunks serve the next requests of their classes, from the keeper.
        let a = ctx.alloc(500).as_ptr();
        let b = ctx.alloc(200).as_ptr();
        let d = ctx.alloc(20).as_ptr();
        let keeper_start = first[0] as usize - 64;
        for p in [a, b, d] {
            assert!((p as usize) > keeper_start && (p as usize) < keeper_start + 8192);
        }
        assert_eq!(ctx.counters().free_chunks, 0);
        ctx.delete();
    }

    /// Pointers memctx never handed out are refused with a clean panic when the word in front
    /// of them names no context kind; null is refused by every entry point.
    #[test]
    fn null_and_foreign_pointers_are_refused() {
        assert_eq!(
            expect_panic(|| unsafe { pfree(std::ptr::null_mut()) }),
            "pfree called with a null pointer"
        );
        assert_eq!(
            expect_panic(|| unsafe { repalloc(std::ptr::null_mut(), 8) }),
            "repalloc called with a null pointer"
        );
        assert_eq!(
            expect_panic(|| unsafe { chunk_context(std::ptr::null_mut()) }),
            "GetMemoryChunkContext called with a null pointer"
        );
        let mut words = [0u64; 4];
        let p = words[1..].as_mut_ptr() as *mut u8;
        let msg = expect_panic(|| unsafe { pfree(p) });
        assert_eq!(
            msg,
            format!("pfree called with invalid pointer {p:p} (header 0x0000000000000000)")
        );
    }

    /// A new block must hold its header, the pad and the chunk: a 1024-byte class (1040-byte
    /// footprint) needs 1096 bytes. With an initial size of 1088 the keeper cannot hold one, and
    /// the next block doubles to 2176 (room for both); with 1104 the keeper holds the first and
    /// the second gets a block of 1104.
    #[test]
    fn a_new_block_doubles_until_the_chunk_and_its_header_fit() {
        for (init, total) in [(1088usize, 1088 + 2176), (1104, 1104 + 1104)] {
            let sizes = BlockSizes {
                min_context_size: 0,
                init_block_size: init,
                max_block_size: 8192,
            };
            let ctx = MemoryContext::top().new_child("grow", sizes);
            for _ in 0..2 {
                let p = ctx.alloc(1024).as_ptr();
                assert_eq!(unsafe { chunk_space(p) }, footprint(1024));
            }
            assert_eq!(ctx.mem_allocated(false), total, "initial block size {init}");
            assert_eq!(ctx.counters().total_nblocks, 2);
            ctx.delete();
        }
    }

    /// Only a zeroing request zeroes: `palloc` and `palloc_extended` without `ZERO` hand back a
    /// reused chunk as its last owner left it (past the freelist link, the data's first 8 bytes),
    /// as PostgreSQL's `palloc` does. Release build only: the debug build fills a chunk it hands
    /// out with its pattern.
    #[test]
    fn palloc_leaves_a_reused_chunk_as_it_was() {
        let (ctx, _g) = fresh("dirty");
        for flags in [AllocFlags::NONE, AllocFlags::NO_OOM, AllocFlags::HUGE] {
            for n in [24usize, 100, 5000] {
                let p = palloc(n);
                unsafe { p.write_bytes(0xEE, n) };
                unsafe { pfree(p) };
                let q = palloc_extended(n, flags);
                assert_eq!(q, p, "palloc_extended({n}) reuses the freed chunk");
                let kept = (8..n).filter(|&i| unsafe { *q.add(i) } == 0xEE).count();
                assert_eq!(kept, n - 8, "palloc_extended({n}, {flags:?})");
                unsafe { pfree(q) };
            }
        }
        drop(_g);
        ctx.delete();
    }
}
