//! AllocSet: PostgreSQL's general-purpose context kind.
//!
//! An AllocSet takes blocks from the system allocator and carves them into power-of-two chunks.
//! Chunks up to the *chunk limit* (8 KiB for the default sizes) are never returned to the system
//! individually: `pfree` pushes them onto one of eleven freelists, one per size class 8 .. 8192, and
//! the next request of that class pops them again. The link lives in the freed chunk's own data, so a
//! freelist costs no memory of its own. Larger requests get a block of their own, which `pfree` gives
//! straight back to the system and `repalloc` resizes with `realloc`.
//!
//! Blocks grow geometrically: the first non-keeper block has the initial size, each later one twice
//! the previous, up to the maximum; a request too large for the next block size gets a block just
//! large enough. When the active block cannot hold a request, the space left at its end is carved
//! into freelist chunks of decreasing size before a new block is taken, so nothing is stranded.
//!
//! The *keeper* block is the context's first block. It survives reset, so a context that is reset
//! after every row (an ExprContext) takes no memory from the system in the steady state. Deleted
//! contexts are recycled with their keeper block (see `context.rs`), which makes creating a context
//! in a loop nearly free, as in PostgreSQL.
//!
//! Reset and delete walk the block list, never the chunks: their cost grows with the number of
//! blocks, which grows logarithmically with the bytes allocated.
//!
//! What is deliberately not here: chunk-level checks. In the debug build the hooks in `crate::hooks`
//! see every carve, free and reset and do the checking; the algorithm below is identical in both
//! builds, only the chunk prefix and the size class chosen for a request differ.
//!
//! The context header holds what every kind has — the block list, whose head is the active block,
//! and the keeper — and [`AllocSetState`] the rest: the freelists and the block sizes. [`AllocSet`]
//! puts the functions below behind the kind interface (`crate::kinds`), and its `decode_chunk` is
//! the one description of how a block's chunks follow each other: a header whose value is a size
//! class, a footprint of prefix plus class rounded to 16, and for a chunk with a block of its own,
//! the rest of the block.

use core::ptr;
use std::alloc::{self, Layout};

use crate::chunk::{
    self, align_up, footprint, Block, ChunkHeader, ChunkKind, BLOCK_HEADER_SIZE, CHUNK_ALIGN,
    CHUNK_PREFIX, FIRST_CHUNK_PAD, MAX_BLOCK_OFFSET,
};
use crate::context::ContextHeader;
use crate::hooks;
use crate::kinds::{self, BadChunk, ContextKind, Damage, KindId, KindState, Walked};

/// Number of freelists: size classes 8, 16, ..., 8192 (PostgreSQL's ALLOCSET_NUM_FREELISTS).
pub(crate) const NUM_FREELISTS: usize = 11;
/// log2 of the smallest size class.
const MIN_CLASS_SHIFT: u32 = 3;
/// Largest chunk limit: requests above it always get a block of their own.
const MAX_CHUNK_LIMIT: usize = 1 << (MIN_CLASS_SHIFT as usize + NUM_FREELISTS - 1);
/// A chunk may take at most this fraction of a maximum-sized block, so that a block is shared by at
/// least a few chunks (PostgreSQL's ALLOC_CHUNK_FRACTION).
const CHUNK_FRACTION: usize = 4;
/// Smallest initial block size accepted (PostgreSQL asserts the same).
const MIN_INIT_BLOCK_SIZE: usize = 1024;

/// Block sizes of an AllocSet: PostgreSQL's `minContextSize`, `initBlockSize`, `maxBlockSize`.
///
/// # Examples
/// ```
/// use memctx::{BlockSizes, MemoryContext};
/// let small = MemoryContext::top().new_child("tiny cache", BlockSizes::SMALL);
/// assert_eq!(BlockSizes::SMALL.max_block_size, 8 * 1024);
/// small.delete();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Size of the keeper block; 0 means "the initial block size".
    pub min_context_size: usize,
    /// Size of the first block after the keeper; later blocks double from it.
    pub init_block_size: usize,
    /// Blocks stop doubling at this size.
    pub max_block_size: usize,
}

impl BlockSizes {
    /// `ALLOCSET_DEFAULT_SIZES`: 0 / 8 KiB / 8 MiB, for most contexts.
    pub const DEFAULT: BlockSizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 8 * 1024,
        max_block_size: 8 * 1024 * 1024,
    };
    /// `ALLOCSET_SMALL_SIZES`: 0 / 1 KiB / 8 KiB, for contexts that stay small.
    pub const SMALL: BlockSizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 1024,
        max_block_size: 8 * 1024,
    };
    /// `ALLOCSET_START_SMALL_SIZES`: 0 / 1 KiB / 8 MiB, for contexts that usually stay small but
    /// may grow large.
    pub const START_SMALL: BlockSizes = BlockSizes {
        min_context_size: 0,
        init_block_size: 1024,
        max_block_size: 8 * 1024 * 1024,
    };

    /// Checks the sizes as PostgreSQL's AllocSetContextCreate asserts them.
    ///
    /// # Errors
    /// A message naming the bad size: the initial block size must be at least 1 KiB and a
    /// multiple of 16, the maximum at least the initial and at most 1 GiB − 1.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("invalid AllocSet block sizes {self:?}: {what}"));
        if self.init_block_size < MIN_INIT_BLOCK_SIZE || self.init_block_size % CHUNK_ALIGN != 0 {
            return bad("initial block size must be at least 1024 and a multiple of 16");
        }
        if self.max_block_size < self.init_block_size || self.max_block_size > MAX_BLOCK_OFFSET {
            return bad("maximum block size must lie between the initial size and 1 GiB - 1");
        }
        if self.min_context_size != 0
            && (self.min_context_size < MIN_INIT_BLOCK_SIZE
                || self.min_context_size > MAX_BLOCK_OFFSET)
        {
            return bad("minimum context size must be 0 or between 1024 and 1 GiB - 1");
        }
        Ok(())
    }

    /// Size of the keeper block these sizes give. Contexts are created only from sizes that
    /// passed [`validate`](Self::validate), so it is at least 1 KiB, always room for a chunk.
    pub(crate) fn keeper_size(&self) -> usize {
        let wanted = if self.min_context_size != 0 {
            self.min_context_size
        } else {
            self.init_block_size
        };
        align_up(wanted, CHUNK_ALIGN)
    }

    /// The chunk limit these sizes give: 8 KiB, halved while a chunk of that size would take more
    /// than a quarter of a maximum-sized block (PostgreSQL's rule).
    pub(crate) fn chunk_limit(&self) -> usize {
        let mut limit = MAX_CHUNK_LIMIT;
        while limit > 8
            && footprint(limit) > (self.max_block_size - BLOCK_HEADER_SIZE) / CHUNK_FRACTION
        {
            limit >>= 1;
        }
        limit
    }
}

/// AllocSet's part of the context header (its block list and keeper are the header's own
/// fields): the head of the block list is the active block that new chunks are carved from.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AllocSetState {
    /// Freelist heads: data pointers of free chunks, linked through their first word.
    pub(crate) freelist: [*mut u8; NUM_FREELISTS],
    /// Largest data size served from the freelists.
    pub(crate) chunk_limit: usize,
    /// Size of the next non-keeper block.
    pub(crate) next_block_size: usize,
    /// The sizes the context was created with.
    pub(crate) sizes: BlockSizes,
}

impl AllocSetState {
    /// An empty state, before `init`.
    pub(crate) const fn empty() -> AllocSetState {
        AllocSetState {
            freelist: [ptr::null_mut(); NUM_FREELISTS],
            chunk_limit: 0,
            next_block_size: 0,
            sizes: BlockSizes::DEFAULT,
        }
    }
}

/// Size class index for a data size (after the debug build's padding): the smallest `i` with
/// `8 << i >= size`.
#[inline(always)]
pub(crate) fn freelist_index(size: usize) -> usize {
    debug_assert!(size <= MAX_CHUNK_LIMIT);
    let bits = usize::BITS - (size.max(1) - 1).leading_zeros();
    bits.saturating_sub(MIN_CLASS_SHIFT) as usize
}

/// Size class of every request up to 1 KiB, indexed by `(size + 7) / 8`: a table load instead of
/// a leading-zero count and a subtraction on the hot path.
const SMALL_CLASSES: [u8; 129] = {
    let mut t = [0u8; 129];
    let mut i = 0;
    while i < 129 {
        let size: usize = if i == 0 { 1 } else { i * 8 };
        let bits = usize::BITS - (size - 1).leading_zeros();
        t[i] = if bits > MIN_CLASS_SHIFT {
            (bits - MIN_CLASS_SHIFT) as u8
        } else {
            0
        };
        i += 1;
    }
    t
};

/// [`freelist_index`] through [`SMALL_CLASSES`] for requests up to 1 KiB.
#[inline(always)]
fn small_class_index(size: usize) -> usize {
    if size <= 1024 {
        // SAFETY: (size + 7) / 8 <= 128 < SMALL_CLASSES.len().
        unsafe { *SMALL_CLASSES.get_unchecked((size + 7) >> 3) as usize }
    } else {
        freelist_index(size)
    }
}

/// Data size of size class `idx`.
#[inline(always)]
pub(crate) const fn class_size(idx: usize) -> usize {
    1 << (idx + MIN_CLASS_SHIFT as usize)
}

/// Footprints of the size classes, precomputed for the carve path.
const FOOTPRINTS: [usize; NUM_FREELISTS] = {
    let mut f = [0; NUM_FREELISTS];
    let mut i = 0;
    while i < NUM_FREELISTS {
        f[i] = footprint(class_size(i));
        i += 1;
    }
    f
};

/// Sets up the AllocSet state of a fresh (or recycled, keeper-less) context and allocates its
/// keeper block. Returns false when the system allocator fails.
///
/// # Safety
/// `ctx` must point to a context header that holds no blocks.
pub(crate) unsafe fn init(ctx: *mut ContextHeader, sizes: BlockSizes) -> bool {
    // SAFETY: the caller guarantees `ctx` is valid and owns no blocks yet.
    unsafe {
        debug_assert!((*ctx).blocks.is_null() && (*ctx).keeper.is_null());
        (*ctx).kind = KindId::AllocSet;
        (*ctx).state = KindState {
            aset: AllocSetState::empty(),
        };
        let set = &mut (*ctx).state.aset;
        set.sizes = sizes;
        set.chunk_limit = sizes.chunk_limit();
        set.next_block_size = sizes.init_block_size;
        set.freelist = [ptr::null_mut(); NUM_FREELISTS];
        let keeper = kinds::new_block(ctx, sizes.keeper_size(), true, ptr::null_mut());
        if keeper.is_null() {
            return false;
        }
        (*ctx).keeper = keeper;
        true
    }
}

/// Re-targets a recycled context's state to new maximum sizes, keeping its keeper block (the
/// recycling lists are per keeper size, so the keeper already fits).
///
/// # Safety
/// `ctx` must be a reset, recycled AllocSet context.
pub(crate) unsafe fn reinit(ctx: *mut ContextHeader, sizes: BlockSizes) {
    // SAFETY: caller guarantees `ctx` is a valid, reset AllocSet.
    unsafe {
        debug_assert!((*ctx).blocks == (*ctx).keeper && (*(*ctx).keeper).next.is_null());
        let set = &mut (*ctx).state.aset;
        set.sizes = sizes;
        set.chunk_limit = sizes.chunk_limit();
        set.next_block_size = sizes.init_block_size;
    }
}

/// Allocates `size` bytes of chunk data in `ctx`. Returns null when the system allocator fails;
/// size limits are checked by the caller.
///
/// # Safety
/// `ctx` must be a live AllocSet context of the calling thread.
#[inline(always)]
pub(crate) unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    let need = hooks::class_request(size);
    // SAFETY: `ctx` is live (caller).
    unsafe {
        if need > (*ctx).state.aset.chunk_limit || hooks::sample_chunk() {
            (*ctx).is_reset = false;
            return alloc_large(ctx, size, need);
        }
        let idx = small_class_index(need);
        // A freelist is empty right after a reset, so popping never needs to clear `is_reset`.
        let head = *(*ctx).state.aset.freelist.get_unchecked(idx);
        if !head.is_null() {
            hooks::freelist_open(head);
            *(*ctx).state.aset.freelist.get_unchecked_mut(idx) = (head as *mut *mut u8).read();
            hooks::chunk_reused(ctx, head, size, class_size(idx));
            return head;
        }
        // Carve from the active block inline when it has room; taking a new block is the cold
        // path. (The keeper block is always on the list, so `blocks` is never null here.)
        (*ctx).is_reset = false;
        let fp = *FOOTPRINTS.get_unchecked(idx);
        let block = (*ctx).blocks;
        debug_assert!(!block.is_null());
        if ((*block).end_ptr as usize - (*block).free_ptr as usize) >= fp {
            return carve(ctx, block, size, idx, fp);
        }
        alloc_from_new_block(ctx, size, idx)
    }
}

/// Carves a chunk of class `idx` (footprint `fp`) from `block`, which has room for it.
///
/// # Safety
/// `block` must be the active block of the live context `ctx` with at least `fp` free bytes.
#[inline(always)]
unsafe fn carve(
    ctx: *mut ContextHeader,
    block: *mut Block,
    size: usize,
    idx: usize,
    fp: usize,
) -> *mut u8 {
    // SAFETY: the caller promises `[free_ptr, free_ptr + fp)` is unused space of `block`.
    unsafe {
        let data = cut(ctx, block, idx, fp);
        hooks::chunk_carved(ctx, data, size, class_size(idx));
        data
    }
}

/// Cuts a chunk of class `idx` (footprint `fp`) from the free space of `block` and writes its
/// header; returns its data pointer. The caller tells the hooks what the chunk is for.
///
/// # Safety
/// `block` must be a block of the live context `ctx` with at least `fp` free bytes.
#[inline(always)]
unsafe fn cut(ctx: *mut ContextHeader, block: *mut Block, idx: usize, fp: usize) -> *mut u8 {
    // SAFETY: the caller promises `[free_ptr, free_ptr + fp)` is unused space of `block`, so the
    // header written at its start lies in the block.
    unsafe {
        let chunk = (*block).free_ptr;
        (*block).free_ptr = chunk.add(fp);
        let offset = chunk as usize - block as usize;
        hooks::space_carving(ctx, block, chunk);
        chunk::write_header(
            chunk,
            ChunkHeader::new(ChunkKind::AllocSet, false, idx as u32, offset),
        );
        chunk::data_of(chunk)
    }
}

/// The active block is full: carve its leftover into freelists, take a new block, and carve a
/// chunk of class `idx` from it. Null when the system allocator fails.
///
/// # Safety
/// As [`alloc`].
#[cold]
#[inline(never)]
unsafe fn alloc_from_new_block(ctx: *mut ContextHeader, size: usize, idx: usize) -> *mut u8 {
    let fp = FOOTPRINTS[idx];
    // SAFETY: `ctx` is live; its head block is the active block.
    unsafe {
        carve_leftover(ctx, (*ctx).blocks);
        let block = grow(ctx, fp);
        if block.is_null() {
            return ptr::null_mut();
        }
        carve(ctx, block, size, idx, fp)
    }
}

/// Carves what is left at the end of `block` into freelist chunks, largest class first, so the
/// space is not stranded when a new block becomes the active one.
///
/// # Safety
/// `block` must be the active block of the live context `ctx`.
unsafe fn carve_leftover(ctx: *mut ContextHeader, block: *mut Block) {
    // SAFETY: the block's free space belongs to the context and holds no chunk.
    unsafe {
        loop {
            let avail = (*block).end_ptr as usize - (*block).free_ptr as usize;
            if avail < FOOTPRINTS[0] {
                break;
            }
            let mut idx = NUM_FREELISTS - 1;
            while FOOTPRINTS[idx] > avail {
                idx -= 1;
            }
            let data = cut(ctx, block, idx, FOOTPRINTS[idx]);
            hooks::leftover_carved(ctx, data, class_size(idx));
            (data as *mut *mut u8).write((*ctx).state.aset.freelist[idx]);
            hooks::freelist_close(data);
            (*ctx).state.aset.freelist[idx] = data;
        }
    }
}

/// Takes a new active block able to hold a chunk of footprint `fp`: the next size in the doubling
/// series, or larger if `fp` needs it.
///
/// # Safety
/// `ctx` must be a live AllocSet context.
unsafe fn grow(ctx: *mut ContextHeader, fp: usize) -> *mut Block {
    // SAFETY: `ctx` is live.
    unsafe {
        let set = &mut (*ctx).state.aset;
        let mut size = set.next_block_size;
        set.next_block_size = (size * 2).min(set.sizes.max_block_size);
        let required = BLOCK_HEADER_SIZE + FIRST_CHUNK_PAD + fp;
        while size < required {
            size *= 2;
        }
        let block = kinds::new_block(ctx, size, true, ptr::null_mut());
        if !block.is_null() {
            hooks::safe_point(); // a new block, linked and consistent
        }
        block
    }
}

/// Gives a request above the chunk limit a block of its own, linked behind the active block so the
/// active block keeps serving small chunks.
///
/// # Safety
/// `ctx` must be a live AllocSet context; `size` at most the huge limit.
#[inline(never)]
unsafe fn alloc_large(ctx: *mut ContextHeader, size: usize, need: usize) -> *mut u8 {
    // SAFETY: the caller's promise is the one `kinds::alloc_own_block` asks.
    unsafe { kinds::alloc_own_block(ctx, size, need, ChunkKind::AllocSet) }
}

/// Returns the chunk at `data` to its context: onto its freelist, or, for a chunk with a block of
/// its own, back to the system.
///
/// # Safety
/// `data` must be a live chunk of the live AllocSet context `ctx`, with header `hdr`.
#[inline(always)]
pub(crate) unsafe fn free(ctx: *mut ContextHeader, data: *mut u8, hdr: ChunkHeader) {
    // SAFETY: the caller guarantees `data` is a live chunk of `ctx`.
    unsafe {
        if hdr.is_external() {
            let block = chunk::block_of(data, hdr);
            hooks::chunk_freed(ctx, data, (*block).end_ptr as usize - data as usize);
            kinds::free_block(ctx, block);
            return;
        }
        let idx = hdr.value() as usize;
        debug_assert!(idx < NUM_FREELISTS);
        hooks::chunk_freed(ctx, data, class_size(idx));
        (data as *mut *mut u8).write((*ctx).state.aset.freelist[idx]);
        hooks::freelist_close(data);
        (*ctx).state.aset.freelist[idx] = data;
    }
}

/// Data capacity of a live chunk: its size class, or what its own block holds.
///
/// # Safety
/// `data` must be a live AllocSet chunk with header `hdr`.
#[inline]
pub(crate) unsafe fn chunk_capacity(data: *mut u8, hdr: ChunkHeader) -> usize {
    if hdr.is_external() {
        // SAFETY: an external chunk's offset leads to its block header (caller).
        unsafe {
            let block = chunk::block_of(data, hdr);
            (*block).end_ptr as usize - data as usize
        }
    } else {
        class_size(hdr.value() as usize)
    }
}

/// The context that owns the chunk at `data`.
///
/// # Safety
/// `data` must be a live AllocSet chunk with header `hdr`.
#[inline(always)]
pub(crate) unsafe fn owner(data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader {
    // SAFETY: the offset leads to the chunk's block, whose first word is its context (caller).
    unsafe { (*chunk::block_of(data, hdr)).context }
}

/// Resizes the chunk at `data` to `size` bytes. Returns the (possibly moved) data pointer, or null
/// when the system allocator fails, in which case the old chunk is untouched.
///
/// `old_size` is the number of bytes to preserve when the chunk moves (the requested size where it
/// is known, else the capacity).
///
/// # Safety
/// `data` must be a live chunk of the live AllocSet context `ctx` with header `hdr`.
pub(crate) unsafe fn realloc(
    ctx: *mut ContextHeader,
    data: *mut u8,
    hdr: ChunkHeader,
    size: usize,
    old_size: usize,
) -> *mut u8 {
    let need = hooks::class_request(size);
    // SAFETY: `data` is a live chunk of `ctx` (caller).
    unsafe {
        (*ctx).is_reset = false;
        if hdr.is_external()
            && need > (*ctx).state.aset.chunk_limit
            && !hooks::large_chunk_pinned(data)
        {
            return realloc_large(ctx, data, hdr, size, need);
        }
        if !hdr.is_external() && need <= class_size(hdr.value() as usize) {
            // Still fits its size class: resize in place, as PostgreSQL does.
            hooks::chunk_resized(ctx, data, old_size, size, class_size(hdr.value() as usize));
            return data;
        }
        let new = alloc(ctx, size);
        if new.is_null() {
            return new;
        }
        ptr::copy_nonoverlapping(data, new, old_size.min(size));
        free(ctx, data, hdr);
        new
    }
}

/// Resizes a chunk that has a block of its own with the system's `realloc`, relinking the block.
///
/// # Safety
/// `data` must be a live external chunk of the live context `ctx`.
unsafe fn realloc_large(
    ctx: *mut ContextHeader,
    data: *mut u8,
    hdr: ChunkHeader,
    size: usize,
    need: usize,
) -> *mut u8 {
    let Some(new_size) = kinds::large_block_size(need) else {
        return ptr::null_mut();
    };
    // SAFETY: `block` is the chunk's own block (caller); after realloc only the new address is
    // used.
    unsafe {
        let block = chunk::block_of(data, hdr);
        let old_size = (*block).size();
        let old_cap = (*block).end_ptr as usize - data as usize;
        hooks::large_chunk_moving(ctx, data, old_cap);
        let layout = Layout::from_size_align_unchecked(old_size, CHUNK_ALIGN);
        let moved = alloc::realloc(block as *mut u8, layout, new_size) as *mut Block;
        if moved.is_null() {
            hooks::large_chunk_moved(ctx, block, data, size, old_cap, true);
            return ptr::null_mut();
        }
        (*moved).end_ptr = (moved as *mut u8).add(new_size);
        (*moved).free_ptr = (*moved).end_ptr;
        kinds::relink_moved_block(ctx, moved);
        (*ctx).mem_allocated = (*ctx).mem_allocated - old_size + new_size;
        let new_data = (moved as *mut u8).add(hdr.offset() + CHUNK_PREFIX);
        hooks::large_chunk_moved(
            ctx,
            moved,
            new_data,
            size,
            new_size - (hdr.offset() + CHUNK_PREFIX),
            false,
        );
        new_data
    }
}

/// Frees every chunk: all blocks but the keeper go back to the system, the keeper is emptied, the
/// freelists are cleared and block sizes start doubling again.
///
/// # Safety
/// `ctx` must be a live AllocSet context whose memory nothing uses any more.
pub(crate) unsafe fn reset(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live and its memory unused (caller).
    unsafe {
        hooks::reset_begin(ctx);
        let keeper = kinds::free_all_but_keeper(ctx);
        (*keeper).free_ptr = Block::first_chunk(keeper);
        (*ctx).state.aset.freelist = [ptr::null_mut(); NUM_FREELISTS];
        (*ctx).state.aset.next_block_size = (*ctx).state.aset.sizes.init_block_size;
        hooks::reset_end(ctx);
    }
}

/// Gives every block, the keeper included, back to the system.
///
/// # Safety
/// `ctx` must be a live AllocSet context whose memory nothing uses any more.
pub(crate) unsafe fn release_all(ctx: *mut ContextHeader) {
    // SAFETY: as `reset`.
    unsafe {
        kinds::free_all_blocks(ctx);
        (*ctx).state.aset.freelist = [ptr::null_mut(); NUM_FREELISTS];
    }
}

/// The context's own counters: bytes and blocks taken from the system, and the free bytes and
/// chunks inside them (freelist chunks by footprint, plus unused block tails).
///
/// # Safety
/// `ctx` must be a live AllocSet context.
pub(crate) unsafe fn counters(ctx: *mut ContextHeader) -> crate::stats::Counters {
    // SAFETY: walking the context's own lists: its blocks (each live, so its tail readable)
    // and its freelists.
    unsafe {
        let mut c = kinds::block_counters(ctx, |block| (kinds::tail_bytes(block) as u64, 0));
        for (idx, &head) in (*ctx).state.aset.freelist.iter().enumerate() {
            let mut chunk = head;
            while !chunk.is_null() {
                c.free_chunks += 1;
                c.free_bytes += FOOTPRINTS[idx] as u64;
                hooks::freelist_open(chunk);
                let next = (chunk as *mut *mut u8).read();
                hooks::freelist_close(chunk);
                chunk = next;
            }
        }
        debug_assert_eq!(c.total_bytes, (*ctx).mem_allocated as u64);
        c
    }
}

/// AllocSet behind the kind interface (see `crate::kinds`).
pub(crate) struct AllocSet;

impl ContextKind for AllocSet {
    #[inline(always)]
    unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
        // SAFETY: the caller promises a live AllocSet context of this thread, as `alloc` asks.
        unsafe { alloc(ctx, size) }
    }
    #[inline(always)]
    unsafe fn free(data: *mut u8, hdr: ChunkHeader) {
        // SAFETY: the caller promises a live AllocSet chunk with header `hdr`: its offset leads
        // to its block, whose context is the one `free` asks for.
        unsafe { free(owner(data, hdr), data, hdr) }
    }
    #[inline]
    unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old_size: usize) -> *mut u8 {
        // SAFETY: as `free`: the chunk's owner is the context `realloc` asks for.
        unsafe { realloc(owner(data, hdr), data, hdr, size, old_size) }
    }
    unsafe fn reset(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live AllocSet whose memory nothing uses, as `reset` asks.
        unsafe { reset(ctx) }
    }
    unsafe fn release_all(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live AllocSet whose memory nothing uses, as `release_all`
        // asks.
        unsafe { release_all(ctx) }
    }
    #[inline(always)]
    unsafe fn owner(data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader {
        // SAFETY: the caller promises a live AllocSet chunk with header `hdr`, as `owner` asks.
        unsafe { owner(data, hdr) }
    }
    #[inline]
    unsafe fn capacity(data: *mut u8, hdr: ChunkHeader) -> usize {
        // SAFETY: the caller promises a live AllocSet chunk with header `hdr`, as `chunk_capacity`
        // asks.
        unsafe { chunk_capacity(data, hdr) }
    }
    unsafe fn space(data: *mut u8, hdr: ChunkHeader) -> usize {
        // SAFETY: the caller promises a live AllocSet chunk with header `hdr`, as `chunk_capacity`
        // asks.
        let cap = unsafe { chunk_capacity(data, hdr) };
        if hdr.is_external() {
            cap + CHUNK_PREFIX
        } else {
            footprint(cap)
        }
    }
    unsafe fn counters(ctx: *mut ContextHeader) -> crate::stats::Counters {
        // SAFETY: the caller promises a live AllocSet context, as `counters` asks.
        unsafe { counters(ctx) }
    }

    /// An AllocSet chunk: its offset leads back to its block, its value is a size class (its
    /// footprint follows) unless it is external, when it fills the rest of its block.
    fn decode_chunk(
        block: *mut Block,
        start: *mut u8,
        hdr: ChunkHeader,
    ) -> Result<Walked, BadChunk> {
        // SAFETY: only the block header's end pointer is read; the caller passes a live block.
        let end = unsafe { (*block).end_ptr } as usize;
        let data = chunk::data_of(start);
        BadChunk::unless_owned(block, start, data, hdr, ChunkKind::AllocSet)?;
        let bad = |why| Err(BadChunk { data, hdr, why });
        let (cap, fp) = if hdr.is_external() {
            let cap = end.saturating_sub(data as usize);
            (cap, CHUNK_PREFIX + cap)
        } else if (hdr.value() as usize) < NUM_FREELISTS {
            let cap = class_size(hdr.value() as usize);
            (cap, footprint(cap))
        } else {
            return bad(Damage::Value);
        };
        Walked {
            start,
            data,
            cap,
            footprint: fp,
        }
        .within(end, hdr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freelist_index_matches_classes() {
        assert_eq!(freelist_index(0), 0);
        assert_eq!(freelist_index(1), 0);
        assert_eq!(freelist_index(8), 0);
        assert_eq!(freelist_index(9), 1);
        assert_eq!(freelist_index(16), 1);
        assert_eq!(freelist_index(17), 2);
        assert_eq!(freelist_index(4096), 9);
        assert_eq!(freelist_index(8192), 10);
        for size in 1..=MAX_CHUNK_LIMIT {
            let idx = freelist_index(size);
            assert_eq!(small_class_index(size), idx);
            assert!(class_size(idx) >= size);
            assert!(idx == 0 || class_size(idx - 1) < size);
        }
    }

    #[test]
    fn chunk_limits_follow_postgres() {
        assert_eq!(BlockSizes::DEFAULT.chunk_limit(), 8192);
        assert_eq!(BlockSizes::START_SMALL.chunk_limit(), 8192);
        assert!(BlockSizes::SMALL.chunk_limit() <= 2048);
        assert!(BlockSizes::DEFAULT.validate().is_ok());
        assert!(BlockSizes {
            init_block_size: 100,
            ..BlockSizes::DEFAULT
        }
        .validate()
        .is_err());
    }
}
