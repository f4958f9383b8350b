//! Generation: PostgreSQL's context kind for chunks freed in roughly the order they were allocated.
//!
//! A queue, a reorder buffer, a stream of tuples built, processed and thrown away: chunks of similar
//! lifetime are allocated together and freed together, oldest first. For them the freelists of an
//! AllocSet are wasted work — a freed chunk's space would be handed out again piece by piece while
//! its neighbours live on — and power-of-two classes waste memory. A Generation context instead
//! carves every chunk from the *current* block exactly as large as its request (rounded so the next
//! chunk's data stays 16-aligned), never reuses a freed chunk on its own, and lets each block count
//! its chunks and its frees. When the two counts meet, the whole block is empty and is reused at
//! once:
//!
//! * the keeper block and the current block are rewound in place (their free pointer goes back to
//!   the first chunk);
//! * any other block becomes the context's one *spare* block (PostgreSQL's `freeblock`), which the
//!   next allocation that does not fit the current block takes over instead of a new block — a
//!   FIFO workload then cycles between blocks without calling the system. When there is a spare
//!   already, the larger of the two stays and the smaller goes back to the system.
//!
//! Allocation is the fast path: a compare of the request against the current block's free space,
//! a pointer bump, a header and one count, all on the block's first cache line. Taking the spare or
//! a new block when the current one is full is the cold path. Blocks grow as an AllocSet's do (the
//! first non-keeper block has the initial size, each new one twice the last up to the maximum, a
//! chunk too large for that size a block rounded up to a power of two); a request whose chunk
//! would take more than an eighth of a maximum-sized block (PostgreSQL's
//! `Generation_CHUNK_FRACTION`) gets a block of its own, which its `pfree` gives back.
//!
//! `pfree` finds the block through the chunk header's offset, as every kind does, and counts the
//! free there; a chunk's header value is its footprint in 16-byte units, so the block walk of the
//! debug build steps from chunk to chunk (`decode_chunk`). `repalloc` stays in place when the new
//! size fits the chunk's capacity and otherwise allocates, copies and frees, as PostgreSQL does.
//! Reset gives every block but the keeper back and rewinds the keeper.
//!
//! The per-block counts live in the kind's bytes right after the block header
//! (`chunk::BLOCK_KIND_BYTES`): [`Counts`]. The stats report, as PostgreSQL's `GenerationStats`
//! does, the blocks' unused tails as free bytes and the freed chunks not yet given back with their
//! block as free chunks (their bytes stay "used" until the block empties: no allocation can take
//! them before).
//!
//! In the debug build the hooks check every chunk as they check AllocSet's; the emptying of a
//! block is a hook of its own (`block_emptied`), which verifies the freed chunks and then either
//! marks the rewound space released — carving it again verifies that nothing wrote it since — or
//! hands the block to the quarantine of released memory.

use core::ptr;

use crate::chunk::{
    self, align_up, Block, ChunkHeader, ChunkKind, BLOCK_HEADER_SIZE, CHUNK_ALIGN, CHUNK_PREFIX,
    FIRST_CHUNK_PAD,
};
use crate::context::ContextHeader;
use crate::hooks;
use crate::kinds::{self, BadChunk, ContextKind, KindId, KindState, Walked};
use crate::stats::{Counters, KindDetail};

use super::aset::BlockSizes;

/// A chunk may take at most this fraction of a maximum-sized block (PostgreSQL's
/// `Generation_CHUNK_FRACTION`); larger requests get a block of their own.
const CHUNK_FRACTION: usize = 8;

/// Bytes of a block before its first chunk.
const BLOCK_START: usize = BLOCK_HEADER_SIZE + FIRST_CHUNK_PAD;
const _: () = assert!((BLOCK_START + CHUNK_PREFIX) % CHUNK_ALIGN == 0);

/// Generation's part of the context header.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct GenerationState {
    /// The block chunks are carved from (PostgreSQL's `block`); never null in a live context.
    pub(crate) current: *mut Block,
    /// An empty block kept for reuse, or null (PostgreSQL's `freeblock`); never the keeper or the
    /// current block.
    pub(crate) spare: *mut Block,
    /// Largest footprint carved from a shared block; larger chunks get a block of their own.
    pub(crate) chunk_limit: usize,
    /// Size of the next non-keeper block.
    pub(crate) next_block_size: usize,
    /// The sizes the context was created with.
    pub(crate) sizes: BlockSizes,
}

/// A block's counts, in the kind's bytes after its header (PostgreSQL's `nchunks` and `nfree`):
/// the block is empty when they are equal. A block of its own counts its one chunk.
#[repr(C)]
pub(crate) struct Counts {
    /// Chunks carved from the block since it was taken or last rewound.
    pub(crate) nchunks: u32,
    /// Of those, the chunks freed.
    pub(crate) nfree: u32,
}

// valgrind/memctx_gdb.py reads `nchunks` just before `nfree`, whose offset the registry publishes.
const _: () =
    assert!(core::mem::offset_of!(Counts, nfree) - core::mem::offset_of!(Counts, nchunks) == 4);

const _: () = assert!(core::mem::size_of::<Counts>() <= chunk::BLOCK_KIND_BYTES);

/// The counts of `block`.
#[inline(always)]
fn counts(block: *mut Block) -> *mut Counts {
    (block as *mut u8).wrapping_add(BLOCK_HEADER_SIZE) as *mut Counts
}

/// Bytes a request of `size` takes in a block: the chunk prefix and the class request (the debug
/// build adds its redzone) rounded up to 16, so the next chunk's data is aligned too. The chunk's
/// capacity is all of it past the prefix, so no byte is padding.
#[inline(always)]
fn footprint_for(size: usize) -> usize {
    align_up(CHUNK_PREFIX + hooks::class_request(size), CHUNK_ALIGN)
}

/// The largest footprint `sizes` let a shared block hold: an eighth of a maximum-sized block's
/// chunk space, rounded down to 16.
fn chunk_limit(sizes: &BlockSizes) -> usize {
    ((sizes.max_block_size - BLOCK_START) / CHUNK_FRACTION) & !(CHUNK_ALIGN - 1)
}

/// Sets up a fresh, block-less context header as a Generation context and allocates its keeper
/// block. Returns false when the system allocator fails.
///
/// # Safety
/// `ctx` must point to a context header that holds no blocks.
pub(crate) unsafe fn init(ctx: *mut ContextHeader, sizes: BlockSizes) -> bool {
    // SAFETY: the caller promises a valid header without blocks, so writing its kind and state
    // and linking a first block into it is all there is to do.
    unsafe {
        debug_assert!((*ctx).blocks.is_null() && (*ctx).keeper.is_null());
        (*ctx).kind = KindId::Generation;
        (*ctx).state = KindState {
            generation: GenerationState {
                current: ptr::null_mut(),
                spare: ptr::null_mut(),
                chunk_limit: chunk_limit(&sizes),
                next_block_size: sizes.init_block_size,
                sizes,
            },
        };
        let keeper = new_block(ctx, sizes.keeper_size(), true, ptr::null_mut());
        (*ctx).keeper = keeper;
        (*ctx).state.generation.current = keeper;
        !keeper.is_null()
    }
}

/// [`kinds::new_block`], with the block's counts at zero.
///
/// # Safety
/// As [`kinds::new_block`].
unsafe fn new_block(
    ctx: *mut ContextHeader,
    size: usize,
    as_head: bool,
    mem: *mut u8,
) -> *mut Block {
    // SAFETY: the caller's promise is `kinds::new_block`'s; the counts lie in the kind's bytes of
    // the block it returns.
    unsafe {
        let block = kinds::new_block(ctx, size, as_head, mem);
        if !block.is_null() {
            counts(block).write(Counts {
                nchunks: 0,
                nfree: 0,
            });
        }
        block
    }
}

/// Allocates `size` bytes in `ctx`; null when the system allocator fails.
///
/// # Safety
/// `ctx` must be a live Generation context of the calling thread.
#[inline(always)]
pub(crate) unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    let fp = footprint_for(size);
    // SAFETY: the caller promises a live Generation context, whose current block is live.
    unsafe {
        (*ctx).is_reset = false;
        let state = &(*ctx).state.generation;
        if fp > state.chunk_limit || hooks::sample_chunk() {
            return alloc_large(ctx, size);
        }
        let block = state.current;
        if kinds::tail_bytes(block) >= fp {
            return carve(ctx, block, size, fp);
        }
        alloc_from_other_block(ctx, size, fp)
    }
}

/// Carves a chunk of footprint `fp` for `size` requested bytes from `block`.
///
/// # Safety
/// `block` must be a block of the live context `ctx` with at least `fp` free bytes.
#[inline(always)]
unsafe fn carve(ctx: *mut ContextHeader, block: *mut Block, size: usize, fp: usize) -> *mut u8 {
    // SAFETY: the caller promises `[free_ptr, free_ptr + fp)` is unused space of `block`, so the
    // header written at its start and the data after the prefix lie in the block.
    unsafe {
        let start = (*block).free_ptr;
        (*block).free_ptr = start.add(fp);
        (*counts(block)).nchunks += 1;
        hooks::space_carving(ctx, block, start);
        let value = (fp / CHUNK_ALIGN) as u32;
        let offset = start as usize - block as usize;
        chunk::write_header(
            start,
            ChunkHeader::new(ChunkKind::Generation, false, value, offset),
        );
        let data = chunk::data_of(start);
        hooks::chunk_carved(ctx, data, size, fp - CHUNK_PREFIX);
        data
    }
}

/// The current block is full: the spare block becomes the current one if it has room, else a new
/// block does; the old block's tail stays unused until it empties.
///
/// # Safety
/// As [`alloc`].
#[cold]
#[inline(never)]
unsafe fn alloc_from_other_block(ctx: *mut ContextHeader, size: usize, fp: usize) -> *mut u8 {
    // SAFETY: the caller promises a live Generation context; its spare is an empty live block.
    unsafe {
        let state = &mut (*ctx).state.generation;
        let spare = state.spare;
        let block = if !spare.is_null() && kinds::tail_bytes(spare) >= fp {
            state.spare = ptr::null_mut();
            spare
        } else {
            let mut block_size = state.next_block_size;
            state.next_block_size = (block_size * 2).min(state.sizes.max_block_size);
            if block_size < BLOCK_START + fp {
                block_size = (BLOCK_START + fp).next_power_of_two();
            }
            let block = new_block(ctx, block_size, true, ptr::null_mut());
            if block.is_null() {
                return ptr::null_mut();
            }
            hooks::safe_point(); // a new block, linked and consistent
            block
        };
        (*ctx).state.generation.current = block;
        carve(ctx, block, size, fp)
    }
}

/// A request above the chunk limit: a block of its own, behind the head of the block list.
///
/// # Safety
/// As [`alloc`].
#[inline(never)]
unsafe fn alloc_large(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    // SAFETY: the caller promises a live Generation context, as `alloc_own_block` asks; the
    // block it returns a chunk of is the chunk's own, its counts in the kind's bytes.
    unsafe {
        let data =
            kinds::alloc_own_block(ctx, size, hooks::class_request(size), ChunkKind::Generation);
        if !data.is_null() {
            let block = data.sub(CHUNK_PREFIX + BLOCK_START) as *mut Block;
            counts(block).write(Counts {
                nchunks: 1,
                nfree: 0,
            });
        }
        data
    }
}

/// Frees the chunk at `data`: one more free in its block, and the block emptied when that was its
/// last chunk; a chunk with a block of its own gives the block back.
///
/// # Safety
/// `data` must be a live Generation chunk of a live context of this thread, with header `hdr`.
#[inline(always)]
pub(crate) unsafe fn free(data: *mut u8, hdr: ChunkHeader) {
    // SAFETY: the caller promises a live chunk: its offset leads to its block, whose first word is
    // its context and whose counts count it.
    unsafe {
        let block = chunk::block_of(data, hdr);
        if hdr.is_external() {
            return free_large((*block).context, block, data);
        }
        // The owner is read where it is used: a release build's hooks do nothing, so the common
        // case touches the chunk's header and its block's counts only.
        hooks::chunk_freed((*block).context, data, capacity_of(hdr));
        // A freed chunk is never linked anywhere: its first word keeps the freed pattern.
        hooks::freelist_close(data);
        let c = counts(block);
        (*c).nfree += 1;
        if (*c).nfree == (*c).nchunks {
            block_emptied((*block).context, block);
        }
    }
}

/// Capacity of a chunk in a shared block, from its header value (its footprint in 16-byte units).
#[inline(always)]
fn capacity_of(hdr: ChunkHeader) -> usize {
    hdr.value() as usize * CHUNK_ALIGN - CHUNK_PREFIX
}

/// A chunk with a block of its own is freed: the block goes back.
///
/// # Safety
/// `data` must be the live external chunk of `block`, a block of the live context `ctx`.
#[cold]
#[inline(never)]
unsafe fn free_large(ctx: *mut ContextHeader, block: *mut Block, data: *mut u8) {
    // SAFETY: the caller promises the chunk is live and alone in `block`, so nothing uses the block
    // once the chunk is freed.
    unsafe {
        hooks::chunk_freed(ctx, data, (*block).end_ptr as usize - data as usize);
        kinds::free_block(ctx, block);
    }
}

/// Every chunk of `block` is freed: the keeper and the current block are rewound; of any other
/// block and the spare, the larger is kept as the spare and the smaller goes back to the system.
///
/// PostgreSQL keeps the first block that empties as its spare and frees later ones; memctx keeps
/// the larger, since a small early block held as the spare would have every later, full-sized
/// block given back and taken anew (a fresh mapping, its pages faulted in again) once per cycle of
/// a FIFO workload.
///
/// # Safety
/// `block` must be a shared block of the live Generation context `ctx` whose chunks are all freed.
#[cold]
#[inline(never)]
unsafe fn block_emptied(ctx: *mut ContextHeader, block: *mut Block) {
    // SAFETY: the caller promises a block of `ctx` that holds no live chunk, and the spare holds
    // none either, so rewinding or giving back either frees nothing in use.
    unsafe {
        let state = &mut (*ctx).state.generation;
        if block == (*ctx).keeper || block == state.current {
            keep_emptied(ctx, block);
        } else {
            let spare = state.spare;
            let (keep, give) = if spare.is_null() || (*block).size() > (*spare).size() {
                (block, spare)
            } else {
                (spare, block)
            };
            if keep == block {
                keep_emptied(ctx, block);
                (*ctx).state.generation.spare = block;
            }
            if !give.is_null() {
                hooks::block_emptied(ctx, give, false);
                kinds::free_block(ctx, give);
            }
        }
        hooks::emptied_block_settled();
    }
}

/// Keeps the emptied `block` for reuse: rewound.
///
/// # Safety
/// As [`block_emptied`].
unsafe fn keep_emptied(ctx: *mut ContextHeader, block: *mut Block) {
    hooks::block_emptied(ctx, block, true);
    // SAFETY: the caller promises a block of `ctx` with no live chunk.
    unsafe { rewind(block) };
}

/// Makes `block` empty: no chunks, its whole space free (PostgreSQL's `GenerationBlockMarkEmpty`).
///
/// # Safety
/// `block` must be a live block none of whose chunks is live.
unsafe fn rewind(block: *mut Block) {
    // SAFETY: the caller promises a live block; its header and counts are its own.
    unsafe {
        (*block).free_ptr = Block::first_chunk(block);
        counts(block).write(Counts {
            nchunks: 0,
            nfree: 0,
        });
    }
}

/// Data bytes the chunk at `data` can hold.
///
/// # Safety
/// `data` must be a live Generation chunk with header `hdr`.
#[inline]
unsafe fn chunk_capacity(data: *mut u8, hdr: ChunkHeader) -> usize {
    if hdr.is_external() {
        // SAFETY: an external chunk's offset leads to its own block (caller).
        unsafe { (*chunk::block_of(data, hdr)).end_ptr as usize - data as usize }
    } else {
        capacity_of(hdr)
    }
}

/// Resizes the chunk at `data` to `size` bytes, preserving `old_size`: in place when the request
/// fits its capacity, else allocate, copy and free in the same context. Null (the chunk untouched)
/// when the system allocator fails.
///
/// # Safety
/// `data` must be a live Generation chunk of a live context of this thread, with header `hdr`.
unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old_size: usize) -> *mut u8 {
    // SAFETY: the caller promises a live chunk: its block names its context, and the new chunk
    // is distinct from it, so the copy does not overlap.
    unsafe {
        let ctx = (*chunk::block_of(data, hdr)).context;
        let cap = chunk_capacity(data, hdr);
        if !hdr.is_external() && hooks::class_request(size) <= cap {
            hooks::chunk_resized(ctx, data, old_size, size, cap);
            return data;
        }
        let new = alloc(ctx, size);
        if new.is_null() {
            return new;
        }
        ptr::copy_nonoverlapping(data, new, old_size.min(size));
        free(data, hdr);
        new
    }
}

/// Generation behind the kind interface (see `crate::kinds`).
pub(crate) struct Generation;

impl ContextKind for Generation {
    #[inline(always)]
    unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
        // SAFETY: the caller promises a live Generation context of this thread, as `alloc` asks.
        unsafe { alloc(ctx, size) }
    }
    #[inline(always)]
    unsafe fn free(data: *mut u8, hdr: ChunkHeader) {
        // SAFETY: the caller promises a live Generation chunk with header `hdr`, as `free` asks.
        unsafe { free(data, hdr) }
    }
    unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old_size: usize) -> *mut u8 {
        // SAFETY: the caller promises a live Generation chunk with header `hdr`, as `realloc`
        // asks.
        unsafe { realloc(data, hdr, size, old_size) }
    }
    unsafe fn reset(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Generation context whose memory nothing uses: every
        // block but the keeper goes, the keeper is rewound and becomes the current block.
        unsafe {
            hooks::reset_begin(ctx);
            let keeper = kinds::free_all_but_keeper(ctx);
            rewind(keeper);
            let state = &mut (*ctx).state.generation;
            state.current = keeper;
            state.spare = ptr::null_mut();
            state.next_block_size = state.sizes.init_block_size;
            hooks::reset_end(ctx);
        }
    }
    unsafe fn release_all(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Generation context whose memory nothing uses.
        unsafe {
            kinds::free_all_blocks(ctx);
            let state = &mut (*ctx).state.generation;
            state.current = ptr::null_mut();
            state.spare = ptr::null_mut();
        }
    }
    #[inline(always)]
    unsafe fn owner(data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader {
        // SAFETY: the caller promises a live chunk, whose offset leads to its block.
        unsafe { (*chunk::block_of(data, hdr)).context }
    }
    #[inline]
    unsafe fn capacity(data: *mut u8, hdr: ChunkHeader) -> usize {
        // SAFETY: the caller promises a live Generation chunk, as `chunk_capacity` asks.
        unsafe { chunk_capacity(data, hdr) }
    }
    unsafe fn space(data: *mut u8, hdr: ChunkHeader) -> usize {
        // SAFETY: the caller promises a live Generation chunk, as `chunk_capacity` asks.
        CHUNK_PREFIX + unsafe { chunk_capacity(data, hdr) }
    }
    unsafe fn counters(ctx: *mut ContextHeader) -> Counters {
        // SAFETY: the caller promises a live context; each of its blocks is a Generation block,
        // its counts in the kind's bytes after the header.
        unsafe {
            kinds::block_counters(ctx, |block| {
                (
                    kinds::tail_bytes(block) as u64,
                    u64::from((*counts(block)).nfree),
                )
            })
        }
    }
    unsafe fn detail(ctx: *mut ContextHeader) -> KindDetail {
        let mut chunks = 0;
        // SAFETY: the caller promises a live context; its block list and counts are its own.
        unsafe {
            let mut block = (*ctx).blocks;
            while !block.is_null() {
                chunks += u64::from((*counts(block)).nchunks);
                block = (*block).next;
            }
        }
        KindDetail {
            chunks: Some(chunks),
            empty_blocks: None,
        }
    }

    /// A Generation chunk: its value is its footprint in 16-byte units, or it is external and
    /// fills the rest of its block.
    fn decode_chunk(
        block: *mut Block,
        start: *mut u8,
        hdr: ChunkHeader,
    ) -> Result<Walked, BadChunk> {
        kinds::decode_by_footprint(block, start, hdr, ChunkKind::Generation, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprints_keep_data_aligned_without_padding() {
        for size in 0..2000 {
            let fp = footprint_for(size);
            assert_eq!(fp % CHUNK_ALIGN, 0, "{size}");
            assert!(fp - CHUNK_PREFIX >= hooks::class_request(size), "{size}");
            assert!(
                fp - CHUNK_PREFIX < hooks::class_request(size) + CHUNK_ALIGN,
                "{size}"
            );
        }
    }

    #[test]
    fn chunk_limits_are_an_eighth_of_a_block() {
        let limit = chunk_limit(&BlockSizes::DEFAULT);
        assert_eq!(limit % CHUNK_ALIGN, 0);
        assert!(limit * CHUNK_FRACTION <= BlockSizes::DEFAULT.max_block_size - BLOCK_START);
        assert!(
            (limit + CHUNK_ALIGN) * CHUNK_FRACTION
                > BlockSizes::DEFAULT.max_block_size - BLOCK_START
        );
        assert!(chunk_limit(&BlockSizes::SMALL) < 1024);
    }
}
