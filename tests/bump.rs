//! The Bump context kind (`src/kinds/bump.rs`): allocation by a moving pointer, blocks that grow
//! as an AllocSet's do, reset and delete as the only frees, its stats, the safe API's
//! take-back-the-last `deallocate` and in-place `grow`, and — in the debug build — the clear
//! errors of `pfree`, `repalloc`, `chunk_context` and `chunk_space` on a Bump chunk.
//!
//! Runs in both builds and commits no memory bug, so it runs under memcheck and ASan too.

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec as AVec;
use memctx::{BlockSizes, MemoryContext};

const DEBUG: bool = cfg!(feature = "debug-contexts");

fn bump(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_bump_child(name, BlockSizes::DEFAULT)
}

#[path = "common/child.rs"]
mod child;

#[cfg(feature = "debug-contexts")]
#[path = "common/panics.rs"]
mod panics;
#[cfg(feature = "debug-contexts")]
use panics::expect_panic as panic_message;

#[test]
fn chunks_are_aligned_distinct_and_freed_by_reset() {
    let ctx = bump("Caller tuples");
    let stats = ctx.stats();
    assert_eq!(stats.kind, "Bump");
    assert_eq!(
        (stats.counters.total_nblocks, stats.counters.total_bytes),
        (1, 8192)
    );
    assert!(ctx.is_empty());
    let mut chunks = Vec::new();
    for i in 0..2000usize {
        let size = 1 + i % 200;
        let p = ctx.alloc(size).as_ptr();
        assert_eq!(p as usize % 16, 0, "chunk {i} misaligned");
        unsafe { p.write_bytes(i as u8, size) };
        chunks.push((p, size, i as u8));
    }
    for &(p, size, byte) in &chunks {
        let bytes = unsafe { core::slice::from_raw_parts(p, size) };
        assert!(
            bytes.iter().all(|&b| b == byte),
            "a later chunk overlapped this one"
        );
    }
    assert!(!ctx.is_empty());
    let grown = ctx.counters();
    assert!(grown.total_nblocks > 1, "{grown:?}");
    // Blocks double from the initial size: 8 KiB keeper, then 8, 16, 32 KiB, ...
    assert_eq!(ctx.mem_allocated(false) as u64, grown.total_bytes);
    assert_eq!(grown.free_chunks, 0);
    assert_eq!(ctx.check(), 0);
    ctx.reset();
    let after = ctx.counters();
    assert_eq!((after.total_nblocks, after.total_bytes), (1, 8192));
    assert!(ctx.is_empty());
    // The keeper is rewound: the first chunk after the reset is where the first one was.
    assert_eq!(ctx.alloc(1).as_ptr(), chunks[0].0);
    ctx.delete();
}

/// A release build's Bump chunk is its size rounded to 16 and nothing else: the free bytes are
/// the keeper's size less its header and the chunks.
#[cfg(not(feature = "debug-contexts"))]
#[test]
fn release_chunks_have_no_header() {
    /// Block header size: where a release build's first Bump chunk starts in its block.
    const BLOCK_HEADER: u64 = 48;
    let ctx = bump("bare");
    let a = ctx.alloc(24).as_ptr();
    let b = ctx.alloc(24).as_ptr();
    assert_eq!(b as usize - a as usize, 32);
    for _ in 0..8 {
        ctx.alloc(24);
    }
    assert_eq!(ctx.counters().free_bytes, 8192 - BLOCK_HEADER - 10 * 32);
    ctx.delete();
}

#[test]
fn large_requests_get_a_block_of_their_own() {
    let ctx = bump("large");
    let small = ctx.alloc(64).as_ptr();
    let big = ctx.alloc(100_000).as_ptr();
    unsafe { big.write_bytes(7, 100_000) };
    let c = ctx.counters();
    assert_eq!(c.total_nblocks, 2);
    assert!(c.total_bytes >= 8192 + 100_000, "{c:?}");
    // The active block still serves small requests, right after the first one.
    let next = ctx.alloc(64).as_ptr();
    assert!(next > small && (next as usize) < small as usize + 8192);
    assert_eq!(ctx.check(), 0);
    ctx.reset();
    assert_eq!(ctx.counters().total_nblocks, 1);
    ctx.delete();
}

#[test]
fn safe_api_takes_back_the_last_allocation() {
    let ctx = bump("rows");
    let pinned = ctx.pin();
    let layout = Layout::from_size_align(40, 8).unwrap();
    let first = pinned.allocate(layout).unwrap().as_ptr() as *mut u8;
    let last = pinned.allocate(layout).unwrap().as_ptr() as *mut u8;
    let free_before = ctx.counters().free_bytes;
    unsafe { pinned.deallocate(core::ptr::NonNull::new(last).unwrap(), layout) };
    let again = pinned.allocate(layout).unwrap().as_ptr() as *mut u8;
    if DEBUG {
        // The debug build keeps the freed chunk (a use after the free is reported).
        assert_ne!(again, last);
    } else {
        assert_eq!(again, last);
        assert_eq!(ctx.counters().free_bytes, free_before);
    }
    // Not the last: it waits for the reset, and the space is not handed out again.
    unsafe { pinned.deallocate(core::ptr::NonNull::new(first).unwrap(), layout) };
    let other = pinned.allocate(layout).unwrap().as_ptr() as *mut u8;
    assert_ne!(other, first);
    assert_eq!(ctx.check(), 0);
    drop(pinned);
    ctx.delete();
}

#[test]
fn safe_api_grows_the_last_allocation_in_place() {
    let ctx = bump("sort tuples");
    let pinned = ctx.pin();
    let mut v: AVec<u32, _> = AVec::with_capacity_in(4, &pinned);
    v.push(0);
    let start = v.as_ptr();
    for i in 1..1000u32 {
        v.push(i);
    }
    assert_eq!(v.as_ptr(), start, "the last allocation grew in place");
    // Another allocation after it: growing now moves and copies.
    let mut w: AVec<u8, _> = AVec::with_capacity_in(16, &pinned);
    w.push(1);
    v.reserve(v.capacity() + 1);
    assert_ne!(v.as_ptr(), start);
    assert!(v.iter().copied().eq(0..1000u32));
    assert_eq!(ctx.check(), 0);
    drop((v, w));
    drop(pinned);
    ctx.reset();
    assert!(ctx.is_empty());
    ctx.delete();
}

/// An allocation aligned above 16 bytes (a redirect in front of the aligned pointer) grows and
/// shrinks through the safe API by allocate, copy and forget: it keeps its alignment and its
/// contents, and the debug build finds nothing wrong with the context afterwards.
#[test]
fn safe_api_resizes_an_over_aligned_allocation() {
    let ctx = bump("aligned rows");
    let pinned = ctx.pin();
    let layout = |size| Layout::from_size_align(size, 64).unwrap();
    let p = pinned.allocate(layout(100)).unwrap().cast::<u8>();
    let bytes: Vec<u8> = (0..100u8).collect();
    unsafe { p.as_ptr().copy_from_nonoverlapping(bytes.as_ptr(), 100) };
    let kept = |q: NonNull<u8>, n| {
        assert_eq!(q.as_ptr() as usize % 64, 0);
        assert_eq!(
            unsafe { std::slice::from_raw_parts(q.as_ptr(), n) },
            &bytes[..n]
        );
    };
    let grown = unsafe { pinned.grow(p, layout(100), layout(200)) }
        .unwrap()
        .cast::<u8>();
    kept(grown, 100);
    let shrunk = unsafe { pinned.shrink(grown, layout(200), layout(50)) }
        .unwrap()
        .cast::<u8>();
    kept(shrunk, 50);
    assert_eq!(ctx.check(), 0);
    drop(pinned);
    ctx.delete();
}

#[test]
fn a_deleted_bump_header_serves_an_allocset_next() {
    let b = bump("short-lived");
    b.alloc(100);
    b.delete();
    let a = MemoryContext::top().new_child("after", BlockSizes::SMALL);
    assert_eq!(a.stats().kind, "AllocSet");
    let p = a.alloc(100).as_ptr();
    unsafe { memctx::pfree(p) };
    assert_eq!(unsafe { memctx::chunk_context(a.alloc(8).as_ptr()) }, a);
    a.delete();
}

/// The debug build gives Bump chunks a header: the pointer operations PostgreSQL's Bump does not
/// support are clear errors there (a release build's are undefined, see `pfree`'s `# Safety`).
#[cfg(feature = "debug-contexts")]
#[test]
fn pointer_operations_are_clear_errors_in_the_debug_build() {
    let ctx = bump("no pfree");
    let p = ctx.alloc(32).as_ptr();
    type Op = Box<dyn FnOnce()>;
    let cases: [(&str, Op); 4] = [
        ("pfree", Box::new(move || unsafe { memctx::pfree(p) })),
        (
            "repalloc",
            Box::new(move || unsafe {
                memctx::repalloc(p, 64);
            }),
        ),
        (
            "GetMemoryChunkContext",
            Box::new(move || unsafe {
                memctx::chunk_context(p);
            }),
        ),
        (
            "GetMemoryChunkSpace",
            Box::new(move || unsafe {
                memctx::chunk_space(p);
            }),
        ),
    ];
    for (op, f) in cases {
        assert_eq!(
            panic_message(f),
            format!("{op} is not supported by the bump memory allocator")
        );
    }
    // The chunk is untouched and the context sound.
    assert_eq!(ctx.check(), 0);
    let sites = ctx.sites(false, 10);
    assert_eq!((sites[0].count, sites[0].bytes), (1, 32));
    ctx.delete();
}

/// A request with a block of its own is carved without a check of the space it lands in (that
/// block was never filled as unused space): at the `Full` depth, which checks the header word's
/// space at every carve, it must raise nothing — not a wild write of the unfilled bytes.
#[cfg(feature = "debug-contexts")]
#[test]
fn large_request_at_full_depth_raises_nothing() {
    use memctx::debug::{self, Policy, ResetCheck};
    let reports = std::thread::spawn(|| {
        debug::set_thread_policy(Some(Policy::Log));
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let ctx = bump("large, checked");
        let p = ctx.alloc(9000).as_ptr();
        unsafe { p.write_bytes(1, 9000) };
        assert_eq!(ctx.check(), 0);
        ctx.delete();
        debug::take_reports()
    })
    .join()
    .expect("no panic");
    assert!(reports.is_empty(), "{reports:#?}");
}

/// Bytes in front of a Bump chunk's data: none in a release build, the chunk prefix (header word,
/// debug record, front redzone) in the debug build.
const PREFIX: usize = if DEBUG { 48 } else { 0 };

/// Where the first chunk's data lies in its block: right after the 48-byte block header in a
/// release build; in the debug build past the 16 bytes every kind's first chunk start leaves
/// (the kind's bytes and padding) and the prefix.
const FIRST_DATA: usize = if DEBUG { 48 + 16 + PREFIX } else { 48 };

/// The largest request whose chunk has capacity `cap` (a multiple of 16): `cap` itself in a
/// release build; in the debug build the request rounded to 8 plus the 16-byte rear redzone
/// makes the capacity, so 16 bytes less.
fn request_for(cap: usize) -> usize {
    if DEBUG {
        cap - 16
    } else {
        cap
    }
}

/// The chunk limit is the largest power of two up to 8 KiB whose chunk (capacity and prefix)
/// takes at most an eighth of a maximum-sized block less its header: a request of that capacity
/// is carved from the keeper (large enough for it here), one of 16 bytes more gets a block of its
/// own. The maximum sizes put an eighth of the block at, just below and just above the boundaries
/// of both builds.
#[test]
fn the_chunk_limit_follows_the_maximum_block_size() {
    // (maximum block size, an eighth of it less the header, limit: release build, debug build)
    let cases = [
        (8 << 20, 1_048_570, 8192, 8192),
        (8192, 1018, 512, 512), // BlockSizes::SMALL
        (8232, 1023, 512, 512),
        (8240, 1024, 1024, 512),
        (8616, 1071, 1024, 512),
        (8624, 1072, 1024, 1024),
    ];
    for (max, eighth, release, debug) in cases {
        assert_eq!((max - 48) / 8, eighth);
        let limit = if DEBUG { debug } else { release };
        let sizes = BlockSizes {
            min_context_size: 16 * 1024,
            init_block_size: 1024,
            max_block_size: max,
        };
        let ctx = MemoryContext::top().new_bump_child("limits", sizes);
        ctx.alloc(request_for(limit));
        let c = ctx.counters();
        assert_eq!(c.total_nblocks, 1, "max {max}: capacity {limit} is carved");
        ctx.alloc(request_for(limit + 16));
        let c = ctx.counters();
        assert_eq!(
            c.total_nblocks, 2,
            "max {max}: capacity {limit} + 16 is large"
        );
        ctx.delete();
    }
}

/// A new block has the next size of the doubling series when the chunk fits it with the block's
/// overhead (its header, 16 bytes — the debug build's padding before the first chunk, slack in a
/// release build — and the prefix), and doubles until it does: a chunk of exactly the room takes
/// an 8 KiB block, 16 bytes more a 16 KiB one.
#[test]
fn a_new_block_doubles_only_when_the_chunk_does_not_fit() {
    let room = 8192 - (48 + 16 + PREFIX);
    for (cap, block) in [(room, 8192), (room + 16, 16384)] {
        let ctx = bump("new block");
        ctx.alloc(64); // the 8 KiB keeper can no longer hold the chunk
        let p = ctx.alloc(request_for(cap)).as_ptr();
        unsafe { p.write_bytes(1, request_for(cap)) };
        let c = ctx.counters();
        assert_eq!(
            (c.total_nblocks, c.total_bytes),
            (2, 8192 + block),
            "capacity {cap}"
        );
        assert_eq!(ctx.check(), 0);
        ctx.delete();
    }
}

/// A chunk above the chunk limit gets a block of exactly the block header, 16 bytes, the prefix
/// and its capacity: nothing rounded away from a size whose bit 4 is set, nothing added. The
/// debug build's guard pages size such a block for the guard page instead, and they are a
/// process-wide setting: there the test runs itself again in a child without them.
#[test]
fn a_large_block_is_header_slack_prefix_and_chunk() {
    const NAME: &str = "a_large_block_is_header_slack_prefix_and_chunk";
    if DEBUG && !child::in_child_with(NAME, &child::NO_GUARD_PAGES) {
        return;
    }
    let ctx = bump("large, exact");
    // (request, its block: release build, debug build)
    for (size, release, debug) in [
        (100_016, 100_080, 100_144),
        (100_001, 100_080, 100_144),
        (100_032, 100_096, 100_160),
    ] {
        let p = ctx.alloc(size).as_ptr();
        unsafe { p.write_bytes(1, size) };
        let block = if DEBUG { debug } else { release };
        let c = ctx.counters();
        assert_eq!(
            (c.total_nblocks, c.total_bytes),
            (2, 8192 + block),
            "{size}"
        );
        assert_eq!(ctx.check(), 0);
        ctx.reset();
    }
    ctx.delete();
}

/// The safe API grows the last allocation in place up to exactly its block's end; 16 bytes more
/// move it.
#[test]
fn safe_api_grows_the_last_allocation_to_exactly_the_block_end() {
    let room = 8192 - FIRST_DATA;
    for (cap, in_place) in [(room, true), (room + 16, false)] {
        let ctx = bump("grown to the end");
        let pinned = ctx.pin();
        let old = Layout::from_size_align(16, 8).unwrap();
        let p = pinned.allocate(old).unwrap().cast::<u8>();
        unsafe { p.as_ptr().write_bytes(3, 16) };
        let new = Layout::from_size_align(request_for(cap), 8).unwrap();
        let q = unsafe { pinned.grow(p, old, new) }.unwrap().cast::<u8>();
        assert_eq!(q == p, in_place, "capacity {cap}");
        let c = ctx.counters();
        if in_place {
            assert_eq!((c.total_nblocks, c.free_bytes), (1, 0));
        } else {
            assert_eq!(c.total_nblocks, 2);
        }
        let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), 16) };
        assert!(bytes.iter().all(|&b| b == 3));
        assert_eq!(ctx.check(), 0);
        drop(pinned);
        ctx.delete();
    }
}
