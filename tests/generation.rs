//! The Generation context kind (`src/kinds/generation.rs`): chunks carved in order from the
//! current block, each block counting its chunks and frees, an emptied block rewound (the keeper,
//! the current block), kept as the one spare, or given back; the keeper rewound by reset; large
//! chunks in blocks of their own; repalloc in place or by a move; its stats; the raw and safe APIs.
//!
//! Runs in both builds and commits no memory bug, so it runs under memcheck and ASan too (the
//! debug build's reports on Generation chunks are `tests/generation_reports.rs`).

use core::alloc::Layout;

use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec as AVec;
use memctx::{BlockSizes, MemoryContext};

const DEBUG: bool = cfg!(feature = "debug-contexts");
/// Bytes of a block before its first chunk: the 48-byte block header, the kind's 8 bytes (the
/// chunk counts) and the padding that aligns the first chunk's data.
const BLOCK_START: u64 = if DEBUG { 64 } else { 56 };

/// Bytes a request of `size` takes in its block: the chunk prefix (the header word; in the debug
/// build also the record and front redzone) and the request (in the debug build rounded to 8 with
/// a 16-byte rear redzone), rounded up to 16.
fn footprint(size: usize) -> u64 {
    let (prefix, need) = if DEBUG {
        (48, size.div_ceil(8) * 8 + 16)
    } else {
        (8, size)
    };
    ((prefix + need).div_ceil(16) * 16) as u64
}

#[path = "common/blocks.rs"]
mod blocks;
use blocks::{fill_blocks, pfree_all};

fn generation(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_generation_child(name, BlockSizes::DEFAULT)
}

/// Allocates `size`-byte chunks in `ctx` until its current block, with `tail` bytes left, has no
/// room for another.
fn fill_tail(ctx: MemoryContext, size: usize, mut tail: u64) {
    while tail >= footprint(size) {
        ctx.alloc(size);
        tail -= footprint(size);
    }
}

#[test]
fn chunks_are_carved_in_order_and_counted() {
    let ctx = generation("ReorderBuffer");
    let stats = ctx.stats();
    assert_eq!(stats.kind, "Generation");
    let c = stats.counters;
    assert_eq!((c.total_nblocks, c.total_bytes), (1, 8192));
    assert_eq!((c.free_bytes, c.free_chunks), (8192 - BLOCK_START, 0));
    assert!(ctx.is_empty());

    // Each chunk is exactly its footprint after the previous one: no size classes.
    let sizes = [24usize, 100, 1, 0, 512, 16];
    let chunks: Vec<*mut u8> = sizes.iter().map(|&s| ctx.alloc(s).as_ptr()).collect();
    for (i, pair) in chunks.windows(2).enumerate() {
        assert_eq!(pair[0] as usize % 16, 0);
        assert_eq!(
            (pair[1] as usize - pair[0] as usize) as u64,
            footprint(sizes[i]),
            "chunk {i}"
        );
    }
    let used: u64 = sizes.iter().map(|&s| footprint(s)).sum();
    assert_eq!(ctx.counters().free_bytes, 8192 - BLOCK_START - used);
    assert!(!ctx.is_empty());

    // A freed chunk is counted, not reused: its bytes stay used until its block empties (as
    // PostgreSQL's GenerationStats reports them).
    unsafe {
        memctx::pfree(chunks[1]);
        memctx::pfree(chunks[4]);
    }
    let c = ctx.counters();
    assert_eq!(
        (c.free_chunks, c.free_bytes),
        (2, 8192 - BLOCK_START - used)
    );
    let next = ctx.alloc(100).as_ptr();
    assert_eq!(
        next as usize,
        chunks[5] as usize + footprint(16) as usize,
        "a new chunk is carved after the last one, not in a freed one"
    );
    assert_eq!(ctx.check(), 0);
    let line = memctx::format_stats(&ctx.stats(), &memctx::stats::PrintOptions::default());
    assert!(
        line.starts_with(&format!(
            "ReorderBuffer: 8192 total in 1 blocks ({} chunks); {} free (2 chunks); {} used",
            sizes.len() + 1,
            8192 - BLOCK_START - used - footprint(100),
            BLOCK_START + used + footprint(100)
        )),
        "{line}"
    );
    ctx.delete();
}

/// The keeper and the current block are rewound in place when their last chunk is freed.
#[test]
fn emptied_keeper_and_current_block_are_rewound() {
    let ctx = generation("fifo");
    let a = ctx.alloc(40).as_ptr();
    let b = ctx.alloc(40).as_ptr();
    unsafe {
        memctx::pfree(b);
        memctx::pfree(a);
    }
    let c = ctx.counters();
    assert_eq!(
        (c.total_nblocks, c.free_bytes, c.free_chunks),
        (1, 8192 - BLOCK_START, 0)
    );
    assert_eq!(ctx.alloc(40).as_ptr(), a, "the keeper starts over");

    // A later block, current when it empties, starts over too and stays.
    let groups = fill_blocks(ctx, 200, 2, 3);
    let current = &groups[1];
    pfree_all(current);
    assert_eq!(ctx.counters().total_nblocks, 2);
    assert_eq!(ctx.alloc(200).as_ptr(), current[0]);
    ctx.delete();
}

/// A block emptied while another is current becomes the one spare block, which the next
/// allocation that does not fit the current block takes instead of a new block. Of two emptied
/// blocks the larger stays the spare and the smaller goes back to the system.
#[test]
fn emptied_blocks_are_kept_as_the_spare_or_released() {
    let ctx = generation("spare");
    // Keeper (8 KiB), then 8, 16, 32 and 64 KiB blocks; the last one current with one chunk.
    let groups = fill_blocks(ctx, 500, 5, 1);
    let sizes = |c: MemoryContext| (c.counters().total_nblocks, c.mem_allocated(false));
    assert_eq!(sizes(ctx), (5, 8192 * 16));
    let tail = |block: u64, group: usize| {
        block - BLOCK_START - footprint(500) * groups[group].len() as u64
    };

    // The 16 KiB block empties first: kept whole as the spare.
    let free_before = ctx.counters().free_bytes;
    pfree_all(&groups[2]);
    let c = ctx.counters();
    assert_eq!(sizes(ctx), (5, 8192 * 16));
    assert_eq!(c.free_chunks, 0, "an emptied block counts nothing");
    assert_eq!(
        c.free_bytes,
        free_before - tail(16384, 2) + (16384 - BLOCK_START)
    );

    // The 8 KiB block empties: smaller than the spare, given back.
    pfree_all(&groups[1]);
    assert_eq!(sizes(ctx), (4, 8192 * 15));
    // The 32 KiB block empties: larger, it becomes the spare and the 16 KiB one goes back.
    pfree_all(&groups[3]);
    assert_eq!(sizes(ctx), (3, 8192 * 13));
    let c = ctx.counters();
    assert_eq!(
        c.free_bytes,
        tail(8192, 0) + (32768 - BLOCK_START) + tail(65536, 4)
    );

    // Fill the current block to its end: the next chunk comes from the spare's first chunk,
    // with no new block.
    fill_tail(ctx, 500, tail(65536, 4));
    assert_eq!(ctx.alloc(500).as_ptr(), groups[3][0]);
    assert_eq!(sizes(ctx), (3, 8192 * 13));
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn reset_rewinds_the_keeper_and_gives_the_rest_back() {
    let ctx = generation("per query");
    let groups = fill_blocks(ctx, 300, 3, 2);
    let first = groups[0][0];
    pfree_all(&groups[1]); // the spare, given back by the reset too
    ctx.reset();
    let c = ctx.counters();
    assert_eq!(
        (c.total_nblocks, c.total_bytes, c.free_bytes, c.free_chunks),
        (1, 8192, 8192 - BLOCK_START, 0)
    );
    assert!(ctx.is_empty());
    assert_eq!(ctx.alloc(300).as_ptr(), first);
    // Blocks grow from the initial size again: the first one after the keeper is 8 KiB.
    fill_blocks(ctx, 300, 2, 1);
    assert_eq!(ctx.mem_allocated(false), 2 * 8192);
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn large_chunks_get_a_block_of_their_own() {
    let ctx = generation("large");
    let small = ctx.alloc(64).as_ptr();
    // Above an eighth of the 8 MiB maximum block: a block of its own.
    let big = ctx.alloc(2 << 20).as_ptr();
    unsafe { big.write_bytes(7, 2 << 20) };
    let c = ctx.counters();
    assert_eq!(c.total_nblocks, 2);
    assert!(c.total_bytes >= 8192 + (2 << 20), "{c:?}");
    assert_eq!(unsafe { memctx::chunk_context(big) }, ctx);
    assert!(unsafe { memctx::chunk_space(big) } >= 2 << 20);
    // The current block still serves small requests, right after the first one.
    assert_eq!(
        ctx.alloc(64).as_ptr() as usize,
        small as usize + footprint(64) as usize
    );
    unsafe { memctx::pfree(big) };
    let c = ctx.counters();
    assert_eq!((c.total_nblocks, c.total_bytes), (1, 8192));
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn repalloc_stays_in_place_when_it_fits_else_moves() {
    let ctx = generation("repalloc");
    // A 20-byte request's chunk holds the whole footprint past its prefix.
    let p = ctx.alloc(20).as_ptr();
    unsafe { p.copy_from(b"generation chunk!!!!".as_ptr(), 20) };
    let cap = footprint(20) as usize - if DEBUG { 48 + 16 } else { 8 };
    let same = unsafe { memctx::repalloc(p, cap) };
    assert_eq!(same, p, "fits its capacity: in place");
    let moved = unsafe { memctx::repalloc(p, 1000) };
    assert_ne!(moved, p);
    assert_eq!(
        unsafe { core::slice::from_raw_parts(moved, 20) },
        b"generation chunk!!!!"
    );
    assert_eq!(unsafe { memctx::chunk_context(moved) }, ctx);
    // The old chunk was freed in its block.
    assert_eq!(ctx.counters().free_chunks, 1);
    // Into and out of a block of its own.
    let huge = unsafe { memctx::repalloc(moved, 3 << 20) };
    assert_eq!(
        unsafe { core::slice::from_raw_parts(huge, 20) },
        b"generation chunk!!!!"
    );
    assert_eq!(ctx.counters().total_nblocks, 2);
    let back = unsafe { memctx::repalloc(huge, 64) };
    assert_eq!(
        unsafe { core::slice::from_raw_parts(back, 20) },
        b"generation chunk!!!!"
    );
    assert_eq!(ctx.counters().total_nblocks, 1);
    assert_eq!(unsafe { memctx::chunk_space(back) }, footprint(64) as usize);
    unsafe { memctx::pfree(back) };
    assert_eq!(
        ctx.counters().free_chunks,
        0,
        "the keeper emptied and was rewound"
    );
    ctx.delete();
}

/// A FIFO queue, as the reorder buffer uses one: allocate in order, free the oldest. Once the
/// blocks have grown, the context cycles between its blocks and takes nothing more from the
/// system.
#[test]
fn fifo_reaches_a_steady_state() {
    let ctx = generation("ReorderBufferChanges");
    let mut live = std::collections::VecDeque::new();
    let mut peak = 0;
    for i in 0..30_000usize {
        let size = 16 + (i * 7919) % 497;
        let p = ctx.alloc(size).as_ptr();
        unsafe { p.write_bytes(i as u8, size) };
        live.push_back((p, size, i as u8));
        if live.len() > 1000 {
            let (p, size, byte) = live.pop_front().unwrap();
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(
                bytes.iter().all(|&b| b == byte),
                "chunk {i} was overwritten"
            );
            unsafe { memctx::pfree(p) };
        }
        if i == 15_000 {
            peak = ctx.mem_allocated(false);
        }
    }
    assert!(
        ctx.mem_allocated(false) <= peak,
        "the steady state takes no more memory"
    );
    assert!(peak < 2 << 20, "{peak} bytes for ~270 KiB live");
    while let Some((p, _, _)) = live.pop_front() {
        unsafe { memctx::pfree(p) };
    }
    assert_eq!(ctx.counters().free_chunks, 0, "every block emptied");
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

#[test]
fn safe_api_collections_live_in_a_generation_context() {
    let ctx = generation("safe");
    {
        let mem = ctx.pin();
        let mut v: AVec<u64, _> = AVec::new_in(&mem);
        v.extend(0..10_000u64);
        assert_eq!(v.iter().sum::<u64>(), 49_995_000);
        let mut map = hashbrown::HashMap::new_in(&mem);
        for i in 0..1000u32 {
            map.insert(i, i * 2);
        }
        assert_eq!(map[&999], 1998);
        assert!(ctx.try_reset().is_err(), "pinned");
        let layout = Layout::from_size_align(48, 16).unwrap();
        let p = mem.allocate(layout).unwrap();
        assert_eq!(p.len(), 48);
        unsafe { mem.deallocate(p.cast(), layout) };
    }
    // Everything was deallocated: every chunk counted as freed or its block emptied.
    let c = ctx.counters();
    assert_eq!(c.total_bytes, ctx.mem_allocated(false) as u64);
    assert_eq!(ctx.check(), 0);
    ctx.reset();
    assert_eq!(ctx.counters().total_nblocks, 1);
    ctx.delete();
}

#[test]
fn contexts_of_every_kind_share_a_tree() {
    let top = MemoryContext::top();
    let parent = top.new_child("Executor", BlockSizes::DEFAULT);
    let gen = parent.new_generation_child("tuples", BlockSizes::SMALL);
    let p = gen.alloc(100).as_ptr();
    let q = unsafe { memctx::repalloc(p, 50) };
    assert_eq!(q, p);
    let stats = parent.stats();
    assert_eq!(stats.children.len(), 1);
    assert_eq!(stats.children[0].kind, "Generation");
    assert_eq!(stats.children[0].counters.total_bytes, 1024);
    assert_eq!(parent.mem_allocated(true), 8192 + 1024);
    parent.delete();
    assert!(!gen.is_alive());
}

/// The largest request whose footprint is `fp` (a multiple of 16): the footprint less the
/// prefix (8 bytes in a release build; in the debug build 48, and the 16-byte rear redzone).
fn request_for(fp: u64) -> usize {
    let size = (if DEBUG { fp - 64 } else { fp - 8 }) as usize;
    assert_eq!(footprint(size), fp);
    size
}

/// The chunks a Generation context's stats count (`N chunks`): every chunk carved from its
/// blocks since each was taken or rewound, a block of its own counting its one chunk.
fn chunks(ctx: MemoryContext) -> u64 {
    ctx.stats()
        .detail
        .chunks
        .expect("a Generation context counts its chunks")
}

/// The chunk limit is an eighth of a maximum-sized block's chunk space (its size less the bytes
/// before the first chunk), rounded down to 16: a chunk of that footprint is carved from the
/// keeper (large enough for it here), one of 16 bytes more gets a block of its own. The maximum
/// sizes put the eighth just below a multiple of 16 in both builds, and at one in the release
/// build.
#[test]
fn the_chunk_limit_is_an_eighth_of_the_maximum_block() {
    // (maximum block size, limit: release build, debug build)
    let cases = [
        (8192, 1008, 1008), // BlockSizes::SMALL
        (8224, 1008, 1008), // debug: 8160 / 8 = 1020
        (8232, 1008, 1008), // release: 8176 / 8 = 1022
        (8248, 1024, 1008), // release: 8192 / 8 = 1024
    ];
    for (max, release, debug) in cases {
        let limit = if DEBUG { debug } else { release };
        let sizes = BlockSizes {
            min_context_size: 16 * 1024,
            init_block_size: 1024,
            max_block_size: max,
        };
        let ctx = MemoryContext::top().new_generation_child("limits", sizes);
        ctx.alloc(request_for(limit));
        assert_eq!(
            ctx.counters().total_nblocks,
            1,
            "max {max}: {limit} is carved"
        );
        let big = ctx.alloc(request_for(limit + 16)).as_ptr();
        assert_eq!(
            ctx.counters().total_nblocks,
            2,
            "max {max}: {limit} + 16 is large"
        );
        assert_eq!(unsafe { memctx::chunk_context(big) }, ctx);
        ctx.delete();
    }
}

/// A new block has the next size of the doubling series when the chunk fits it after the
/// block's first-chunk offset — exactly, in the debug build, whose offset and footprints are
/// multiples of 16 — and is rounded up to a power of two when it does not: an initial size of
/// 1536 shows which.
#[test]
fn a_new_block_is_the_next_size_or_the_chunk_rounded_to_a_power_of_two() {
    let sizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 1536,
        max_block_size: 8 << 20,
    };
    for (fp, block) in [(1536 - 64, 1536), (1536 - 48, 2048)] {
        let ctx = MemoryContext::top().new_generation_child("odd sizes", sizes);
        ctx.alloc(16); // the 1536-byte keeper can no longer hold the chunk
        let p = ctx.alloc(request_for(fp)).as_ptr();
        unsafe { p.write_bytes(1, request_for(fp)) };
        let c = ctx.counters();
        assert_eq!((c.total_nblocks, c.total_bytes), (2, 1536 + block), "{fp}");
        assert_eq!(ctx.check(), 0);
        ctx.delete();
    }
    // A chunk larger than the next block: the block is the chunk and its offset rounded up to
    // a power of two, 16 KiB for a 10 KiB chunk.
    let ctx = generation("larger than the next block");
    ctx.alloc(request_for(10_016));
    let c = ctx.counters();
    assert_eq!((c.total_nblocks, c.total_bytes), (2, 8192 + 16384));
    ctx.delete();
}

/// A chunk with a block of its own counts as a chunk of that block: the stats' chunk count
/// includes it, and its `pfree` takes it out with the block.
#[test]
fn a_large_chunk_counts_in_its_own_block() {
    let ctx = generation("counted");
    ctx.alloc(64);
    ctx.alloc(64);
    let big = ctx.alloc(2 << 20).as_ptr();
    unsafe { big.write_bytes(9, 2 << 20) };
    assert_eq!((ctx.counters().total_nblocks, chunks(ctx)), (2, 3));
    let c = ctx.counters();
    assert_eq!(c.free_chunks, 0);
    unsafe { memctx::pfree(big) };
    assert_eq!((ctx.counters().total_nblocks, chunks(ctx)), (1, 2));
    ctx.delete();
}

/// A block taken from the system starts with no chunks, whatever its memory held before: after
/// a reset gave the chunks' block back, the block the next chunks take (likely the same memory)
/// counts only them, and empties when they are freed.
#[test]
fn a_new_block_counts_only_its_own_chunks() {
    let ctx = generation("counts");
    // Rounds of a block taken, counted and given back by the reset: each round's block is likely
    // the memory of the round before.
    for _ in 0..3 {
        let groups = fill_blocks(ctx, 1000, 2, 3);
        unsafe { memctx::pfree(groups[1][0]) };
        assert_eq!(chunks(ctx), (groups[0].len() + 3) as u64);
        assert_eq!(ctx.counters().free_chunks, 1);
        ctx.reset();
        assert_eq!(chunks(ctx), 0);
    }
    let groups = fill_blocks(ctx, 1000, 2, 2);
    assert_eq!(chunks(ctx), (groups[0].len() + 2) as u64);
    pfree_all(&groups[1]);
    let c = ctx.counters();
    assert_eq!(
        (c.total_nblocks, c.free_chunks),
        (2, 0),
        "emptied and rewound"
    );
    assert_eq!(ctx.alloc(1000).as_ptr(), groups[1][0]);
    ctx.delete();
}

/// The keeper emptied while a later block is current is rewound where it is: it is not the
/// spare, so when the current block fills up the next chunk takes a new block — and the keeper's
/// whole chunk space counts as free.
#[test]
fn an_emptied_keeper_that_is_not_current_stays_the_keeper() {
    let ctx = generation("keeper emptied");
    let groups = fill_blocks(ctx, 500, 2, 1);
    pfree_all(&groups[0]);
    let c = ctx.counters();
    let current_tail = 8192 - BLOCK_START - footprint(500);
    assert_eq!(
        (c.total_nblocks, c.free_bytes, c.free_chunks),
        (2, (8192 - BLOCK_START) + current_tail, 0)
    );
    fill_tail(ctx, 500, current_tail);
    let next = ctx.alloc(500).as_ptr();
    assert_eq!(
        ctx.counters().total_nblocks,
        3,
        "a new block, not the keeper"
    );
    assert!(!groups[0].contains(&next));
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}

/// Of two emptied blocks of the same size the one kept as the spare stays: the later one goes
/// back, and the next chunk that does not fit the current block lands on the spare's first
/// chunk.
#[test]
fn of_two_emptied_blocks_of_one_size_the_spare_stays() {
    let sizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 8192,
        max_block_size: 8192,
    };
    let ctx = MemoryContext::top().new_generation_child("equal blocks", sizes);
    let groups = fill_blocks(ctx, 900, 4, 1);
    pfree_all(&groups[1]); // the spare
    pfree_all(&groups[2]); // as large: given back
    assert_eq!(ctx.counters().total_nblocks, 3);
    fill_tail(ctx, 900, 8192 - BLOCK_START - footprint(900));
    assert_eq!(ctx.alloc(900).as_ptr(), groups[1][0]);
    assert_eq!(ctx.counters().total_nblocks, 3);
    assert_eq!(ctx.check(), 0);
    ctx.delete();
}
