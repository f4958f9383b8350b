//! The Slab context kind (`src/kinds/slab.rs`): one chunk size per context, slots carved in
//! order and reused from each block's free list, allocation from the fullest block, empty blocks
//! kept up to a limit and the rest given back, requests of another size refused (a panic in the
//! raw API, `AllocError` in the safe one), reset to the one keeper block, and its stats.
//!
//! Runs in both builds and commits no memory bug, so it runs under memcheck and ASan too; the
//! debug build's reports on Slab chunks are in `tests/slab_reports.rs`.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::alloc::{GlobalAlloc, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use allocator_api2::alloc::Allocator;
use memctx::stats::{format_stats, PrintOptions};
use memctx::{chunk_context, chunk_space, pfree, repalloc, MemoryContext, SLAB_MAX_EMPTY_BLOCKS};

#[path = "common/panics.rs"]
mod panics;
use panics::expect_panic;

const DEBUG: bool = cfg!(feature = "debug-contexts");
const BLOCK: usize = 8192;
const CHUNK: usize = 64;
/// A slot of a 64-byte Slab: header word and 64 bytes rounded to 16 (release); the debug build's
/// 48-byte prefix and 64 bytes plus the 16-byte redzone.
const FOOTPRINT: usize = if DEBUG { 128 } else { 80 };
/// A Slab block's header (the common 48 bytes and the Slab's 32), and in a release build the
/// 8 bytes that put the first chunk's data on 16.
const HEADER: usize = if DEBUG { 80 } else { 88 };
/// Slots in an 8 KiB block.
const PER_BLOCK: usize = (BLOCK - HEADER) / FOOTPRINT;

/// The system allocator, refusing requests of exactly [`REFUSED`] bytes (none while it is 0): a
/// block of that size cannot be had.
struct Refusing;

static REFUSED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call but a refused one goes to `System` unchanged; a refusal is a null pointer,
// which `GlobalAlloc::alloc` may return.
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == REFUSED.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (through `alloc`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Refusing = Refusing;

fn slab(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_slab_child(name, BLOCK, CHUNK)
}

/// Allocates `n` chunks in `ctx`.
fn fill(ctx: MemoryContext, n: usize) -> Vec<*mut u8> {
    (0..n).map(|_| ctx.alloc(CHUNK).as_ptr()).collect()
}

#[test]
fn a_new_slab_has_one_empty_block() {
    assert_eq!(PER_BLOCK, if DEBUG { 63 } else { 101 });
    let ctx = slab("Change");
    let s = ctx.stats();
    assert_eq!(s.kind, "Slab");
    let c = s.counters;
    assert_eq!((c.total_bytes, c.total_nblocks), (BLOCK as u64, 1));
    assert_eq!(c.free_chunks, PER_BLOCK as u64);
    assert_eq!(c.used_bytes(), HEADER as u64);
    assert!(ctx.is_empty());
    ctx.delete();
}

#[test]
fn slots_are_carved_in_order_and_counted_exactly() {
    let ctx = slab("Change");
    let chunks = fill(ctx, PER_BLOCK);
    for (i, w) in chunks.windows(2).enumerate() {
        assert_eq!(w[1] as usize - w[0] as usize, FOOTPRINT, "slot {i}");
    }
    for (i, &p) in chunks.iter().enumerate() {
        assert_eq!(p as usize % 16, 0);
        unsafe { p.write_bytes(i as u8, CHUNK) };
        assert_eq!(unsafe { chunk_space(p) }, FOOTPRINT);
        assert_eq!(unsafe { chunk_context(p) }, ctx);
    }
    for (i, &p) in chunks.iter().enumerate() {
        let bytes = unsafe { core::slice::from_raw_parts(p, CHUNK) };
        assert!(
            bytes.iter().all(|&b| b == i as u8),
            "slot {i} was overwritten"
        );
    }
    // The block is full: only the tail too short for a slot is free.
    let full = ctx.counters();
    assert_eq!((full.total_nblocks, full.free_chunks), (1, 0));
    assert_eq!(full.free_bytes, ((BLOCK - HEADER) % FOOTPRINT) as u64);
    // The next chunk takes a second block.
    let next = ctx.alloc(CHUNK).as_ptr();
    let c = ctx.counters();
    assert_eq!((c.total_nblocks, c.total_bytes), (2, 2 * BLOCK as u64));
    assert_eq!(c.free_chunks, PER_BLOCK as u64 - 1);
    assert_eq!(
        c.used_bytes(),
        (2 * HEADER + (PER_BLOCK + 1) * FOOTPRINT) as u64
    );
    unsafe { pfree(next) };
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn a_freed_slot_is_the_next_one_handed_out() {
    let ctx = slab("Change");
    let chunks = fill(ctx, 5);
    unsafe {
        pfree(chunks[3]);
        pfree(chunks[1]);
    }
    assert_eq!(ctx.counters().free_chunks, PER_BLOCK as u64 - 3);
    // Last freed, first reused; then the never-used slots after the last carved one.
    assert_eq!(ctx.alloc(CHUNK).as_ptr(), chunks[1]);
    assert_eq!(ctx.alloc(CHUNK).as_ptr(), chunks[3]);
    assert_eq!(
        ctx.alloc(CHUNK).as_ptr() as usize,
        chunks[4] as usize + FOOTPRINT
    );
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

/// The block a chunk lies in, as an index into `blocks` (each block's first chunk).
fn block_of(blocks: &[*mut u8], p: *mut u8) -> usize {
    blocks
        .iter()
        .position(|&b| (b as usize..b as usize + BLOCK).contains(&(p as usize)))
        .expect("a chunk of one of the blocks")
}

#[test]
fn allocation_takes_from_the_fullest_block() {
    let ctx = slab("Change");
    let chunks: Vec<Vec<*mut u8>> = (0..3).map(|_| fill(ctx, PER_BLOCK)).collect();
    let firsts: Vec<*mut u8> = chunks.iter().map(|c| c[0]).collect();
    // Block 0 nearly empty, block 1 with two free slots, block 2 full.
    for &p in &chunks[0][..PER_BLOCK - 2] {
        unsafe { pfree(p) };
    }
    for &p in &chunks[1][..2] {
        unsafe { pfree(p) };
    }
    // Block 1 is the fullest with room: it takes the next two, then block 0 the rest.
    let taken = fill(ctx, 3);
    let blocks: Vec<usize> = taken.iter().map(|&p| block_of(&firsts, p)).collect();
    assert_eq!(blocks, [1, 1, 0]);
    // Freeing one of block 2's chunks makes it the fullest with room (one free slot, where
    // block 0 has many): the next chunk is that slot.
    unsafe { pfree(chunks[2][7]) };
    assert_eq!(ctx.alloc(CHUNK).as_ptr(), chunks[2][7]);
    assert_eq!(block_of(&firsts, ctx.alloc(CHUNK).as_ptr()), 0);
    assert_eq!(ctx.counters().total_nblocks, 3);
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn empty_blocks_beyond_the_limit_go_back_to_the_system() {
    assert_eq!(SLAB_MAX_EMPTY_BLOCKS, 10);
    let ctx = slab("Change");
    let blocks = SLAB_MAX_EMPTY_BLOCKS + 3; // the keeper, ten to keep, two to give back
    let chunks = fill(ctx, blocks * PER_BLOCK);
    assert_eq!(ctx.counters().total_nblocks, blocks as u64);
    for &p in &chunks {
        unsafe { pfree(p) };
    }
    let c = ctx.counters();
    let kept = 1 + SLAB_MAX_EMPTY_BLOCKS;
    assert_eq!(
        (c.total_nblocks, c.total_bytes),
        (kept as u64, (kept * BLOCK) as u64)
    );
    assert_eq!(c.free_chunks, (kept * PER_BLOCK) as u64);
    assert_eq!(c.used_bytes(), (kept * HEADER) as u64);
    // The kept blocks serve the next chunks before the system is asked for another.
    let again = fill(ctx, kept * PER_BLOCK);
    assert_eq!(ctx.mem_allocated(false), kept * BLOCK);
    ctx.alloc(CHUNK);
    assert_eq!(ctx.mem_allocated(false), (kept + 1) * BLOCK);
    assert_eq!(ctx.check(), 0);
    drop(again);
    ctx.delete();
}

#[test]
fn reset_keeps_the_first_block_and_rewinds_it() {
    let ctx = slab("Change");
    let chunks = fill(ctx, 3 * PER_BLOCK);
    assert!(!ctx.is_empty());
    ctx.reset();
    let c = ctx.counters();
    assert_eq!((c.total_nblocks, c.total_bytes), (1, BLOCK as u64));
    assert_eq!(c.free_chunks, PER_BLOCK as u64);
    assert!(ctx.is_empty());
    // The keeper was the first block: its first slot comes back first.
    assert_eq!(ctx.alloc(CHUNK).as_ptr(), chunks[0]);
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn another_size_is_a_clear_error() {
    let ctx = slab("Change");
    assert_eq!(
        expect_panic(|| ctx.alloc(65)),
        "unexpected alloc chunk size 65 (expected 64)"
    );
    let guard = ctx.switch_to();
    assert_eq!(
        expect_panic(|| memctx::palloc(0)),
        "unexpected alloc chunk size 0 (expected 64)"
    );
    let p = memctx::palloc(CHUNK);
    drop(guard);
    unsafe { p.write_bytes(0x5A, CHUNK) };
    // repalloc to the same size keeps the chunk; to another size it is refused, chunk intact.
    assert_eq!(unsafe { repalloc(p, CHUNK) }, p);
    assert_eq!(
        expect_panic(|| unsafe { repalloc(p, 128) }),
        "slab allocator does not support realloc() (chunk size 64, requested 128)"
    );
    let bytes = unsafe { core::slice::from_raw_parts(p, CHUNK) };
    assert!(bytes.iter().all(|&b| b == 0x5A));
    assert_eq!(ctx.counters().free_chunks, PER_BLOCK as u64 - 1);
    unsafe { pfree(p) };
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn invalid_sizes_are_refused_with_the_reason() {
    let top = MemoryContext::top();
    let cases: [(usize, usize, &str); 4] = [
        (
            8192,
            0,
            "invalid Slab sizes (block size 8192, chunk size 0): chunk size must be at least 1",
        ),
        (
            8200,
            64,
            "invalid Slab sizes (block size 8200, chunk size 64): block size must be a multiple \
             of 16 below 1 GiB",
        ),
        (
            1 << 30,
            64,
            "invalid Slab sizes (block size 1073741824, chunk size 64): block size must be a \
             multiple of 16 below 1 GiB",
        ),
        (
            1024,
            2000,
            "block size 1024 for slab is too small for 2000-byte chunks",
        ),
    ];
    for (block, chunk, message) in cases {
        assert_eq!(
            expect_panic(|| top.new_slab_child("bad", block, chunk)),
            message
        );
    }
    // Nothing was created.
    assert!(top.children().iter().all(|c| c.name() != "bad"));
}

#[test]
fn safe_api_serves_the_chunk_size_only() {
    let ctx = slab("Change");
    let pinned = ctx.pin();
    let layout = Layout::from_size_align(CHUNK, 8).unwrap();
    let p = pinned.allocate(layout).unwrap().cast::<u8>();
    assert_eq!(unsafe { chunk_context(p.as_ptr()) }, ctx);
    for other in [
        Layout::from_size_align(32, 8).unwrap(),
        Layout::from_size_align(CHUNK + 1, 8).unwrap(),
        Layout::from_size_align(CHUNK, 64).unwrap(),
    ] {
        assert!(pinned.allocate(other).is_err(), "{other:?}");
    }
    // Up to 16-byte alignment, every chunk's own, the chunk size is served (the next slot).
    let aligned = Layout::from_size_align(CHUNK, 16).unwrap();
    let q = pinned.allocate(aligned).unwrap().cast::<u8>();
    assert_eq!(
        q.as_ptr() as usize,
        p.as_ptr() as usize + unsafe { chunk_space(p.as_ptr()) }
    );
    unsafe { pinned.deallocate(q, aligned) };
    let bigger = Layout::from_size_align(2 * CHUNK, 8).unwrap();
    let smaller = Layout::from_size_align(CHUNK / 2, 8).unwrap();
    unsafe {
        assert!(pinned.grow(p, layout, bigger).is_err());
        assert!(pinned.shrink(p, layout, smaller).is_err());
        let same = pinned.grow(p, layout, layout).unwrap().cast::<u8>();
        assert_eq!(same, p);
        pinned.deallocate(p, layout);
    }
    // The freed slot is the next one, and a boxed value of the chunk size lives in it.
    let b = allocator_api2::boxed::Box::new_in([7u64; CHUNK / 8], &pinned);
    assert_eq!(NonNull::from(&*b).cast::<u8>(), p);
    assert_eq!(ctx.counters().free_chunks, PER_BLOCK as u64 - 1);
    drop(b);
    drop(pinned);
    assert_eq!(ctx.counters().free_chunks, PER_BLOCK as u64);
    ctx.delete();
}

#[test]
fn stats_print_in_postgres_format() {
    let ctx = slab("Change");
    let chunks = fill(ctx, 3);
    unsafe { pfree(chunks[1]) };
    let text = format_stats(&ctx.stats(), &PrintOptions::default());
    let free = BLOCK - HEADER - 2 * FOOTPRINT;
    let line = format!(
        "Change: {BLOCK} total in 1 blocks; 0 empty blocks; {free} free ({} chunks); {} used\n",
        PER_BLOCK - 2,
        HEADER + 2 * FOOTPRINT
    );
    assert!(text.starts_with(&line), "{text}");
    // Emptied, the block is kept on the empty list: counted among the blocks and as empty, its
    // slots all free.
    unsafe {
        pfree(chunks[0]);
        pfree(chunks[2]);
    }
    let text = format_stats(&ctx.stats(), &PrintOptions::default());
    let line = format!(
        "Change: {BLOCK} total in 1 blocks; 1 empty blocks; {} free ({PER_BLOCK} chunks); \
         {HEADER} used\n",
        BLOCK - HEADER
    );
    assert!(text.starts_with(&line), "{text}");
    ctx.delete();
}

#[test]
fn a_deleted_slab_header_serves_another_kind_next() {
    let s = slab("short-lived");
    s.alloc(CHUNK);
    s.delete();
    let a = MemoryContext::top().new_child("after", memctx::BlockSizes::SMALL);
    assert_eq!(a.stats().kind, "AllocSet");
    let p = a.alloc(100).as_ptr();
    unsafe { pfree(p) };
    a.delete();
    let s = MemoryContext::top().new_slab_child("small objects", 1024, 8);
    assert_eq!(s.stats().kind, "Slab");
    let p = s.alloc(8).as_ptr();
    assert_eq!(unsafe { chunk_context(p) }, s);
    unsafe { pfree(p) };
    s.delete();
}

/// A keeper block the system refuses is PostgreSQL's out-of-memory error, naming the block size
/// (the keeper's) and the context; nothing is created, and the same sizes work once the system
/// gives the block.
#[test]
fn a_refused_keeper_is_out_of_memory_naming_the_block_size() {
    if std::env::var_os("MEMCTX_UNDER_VALGRIND").is_some() {
        // Under memcheck every block is a mapping of its own (`sanitizer::pools`), not the
        // global allocator's.
        eprintln!("skipped under memcheck: blocks are not the global allocator's");
        return;
    }
    // A size no other test of this file asks the system for.
    const REFUSED_BLOCK: usize = (3 << 20) + 48;
    REFUSED.store(REFUSED_BLOCK, Ordering::Relaxed);
    let msg = expect_panic(|| MemoryContext::top().new_slab_child("Refused", REFUSED_BLOCK, CHUNK));
    REFUSED.store(0, Ordering::Relaxed);
    assert_eq!(
        msg,
        format!(
            "out of memory: Failed on request of size {REFUSED_BLOCK} in memory context \"Refused\"."
        )
    );
    assert!(MemoryContext::top()
        .children()
        .iter()
        .all(|c| c.name() != "Refused"));
    let ctx = MemoryContext::top().new_slab_child("Refused", REFUSED_BLOCK, CHUNK);
    assert_eq!(ctx.counters().total_bytes, REFUSED_BLOCK as u64);
    ctx.delete();
}

/// Blocks of one slot each — 224 bytes hold one 64-byte slot in either build — are full or
/// empty: the free of a block's slot empties it at once, so it is kept on the empty list (the
/// keeper and up to [`SLAB_MAX_EMPTY_BLOCKS`] others) or given back, never listed as a block
/// with a free slot.
#[test]
fn a_block_of_one_slot_empties_at_its_free() {
    const ONE_SLOT: usize = 224;
    const { assert!(ONE_SLOT - HEADER >= FOOTPRINT && ONE_SLOT - HEADER < 2 * FOOTPRINT) };
    let ctx = MemoryContext::top().new_slab_child("one slot", ONE_SLOT, CHUNK);
    let blocks = SLAB_MAX_EMPTY_BLOCKS + 2; // the keeper, ten to keep, one to give back
    let chunks = fill(ctx, blocks);
    let empty = |c: MemoryContext| c.stats().detail.empty_blocks;
    assert_eq!(ctx.counters().total_nblocks, blocks as u64);
    assert_eq!(empty(ctx), Some(0));
    for &p in &chunks {
        unsafe { pfree(p) };
    }
    let c = ctx.counters();
    assert_eq!(c.total_nblocks, blocks as u64 - 1);
    assert_eq!(c.free_chunks, blocks as u64 - 1);
    assert_eq!(empty(ctx), Some(blocks as u64 - 1));
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}
