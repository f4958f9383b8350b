//! Bump: PostgreSQL 17's context kind for memory that is only ever freed all at once.
//!
//! A Bump context hands out memory by moving a pointer through its active block and never takes
//! a chunk back: there is no freelist, no size class and — in a release build — no chunk header.
//! What a chunk costs is its size rounded up to 16; what an allocation costs is a compare and an
//! add. PostgreSQL 17 uses it for sort tuples (`tuplesort.c`), which live until the sort's reset.
//!
//! Without a header, nothing can be learned from a chunk pointer: `pfree`, `repalloc`,
//! `chunk_context` and `chunk_space` on a Bump chunk are undefined in a release build, as in
//! PostgreSQL (their `# Safety` sections say so). The debug build gives every Bump chunk the
//! header and debug prefix every other chunk has (PostgreSQL does the same under
//! `MEMORY_CONTEXT_CHECKING`), so there those calls are clear errors — `pfree is not supported by
//! the bump memory allocator` — and the redzones, patterns, records and walks of the debug build
//! cover Bump chunks as they cover AllocSet's. The hook constant `BUMP_CHUNK_HEADERS` says which
//! build this is; the code below is the same in both.
//!
//! Blocks grow as an AllocSet's do — the first non-keeper block has the initial size, later ones
//! double up to the maximum — and a request above the chunk limit gets a block of its own, linked
//! behind the active block. When the active block cannot hold a request, its tail is left unused
//! (there are no freelists to give it to) and a new block becomes the active one. Reset gives
//! every block but the keeper back and rewinds the keeper.
//!
//! The safe API of a release build never reads a header of a Bump chunk. Its `deallocate` takes
//! back the last allocation only (as bumpalo does) and otherwise leaves the memory to the next
//! reset; its `grow` extends the last chunk in place when the active block has room, and
//! otherwise allocates and copies. The debug build validates a chunk given back as `pfree` does
//! and keeps it as a freed chunk until the reset.

use core::ptr;

use crate::chunk::{
    self, align_up, Block, ChunkHeader, ChunkKind, BLOCK_HEADER_SIZE, CHUNK_ALIGN, CHUNK_PREFIX,
};
use crate::context::ContextHeader;
use crate::hooks;
use crate::kinds::{self, BadChunk, ContextKind, Damage, KindId, KindState, Walked};
use crate::stats::Counters;

use super::aset::BlockSizes;

/// Bytes in front of a Bump chunk's data: none in a release build, the whole chunk prefix (header
/// word, debug record, front redzone) in the debug build.
const PREFIX: usize = if hooks::BUMP_CHUNK_HEADERS {
    CHUNK_PREFIX
} else {
    0
};

/// A chunk may take at most this fraction of a maximum-sized block (PostgreSQL's
/// `BUMP_CHUNK_FRACTION`); larger requests get a block of their own.
const CHUNK_FRACTION: usize = 8;

/// Bump's part of the context header.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct BumpState {
    /// Largest data size carved from a shared block.
    pub(crate) chunk_limit: usize,
    /// Size of the next non-keeper block.
    pub(crate) next_block_size: usize,
    /// The sizes the context was created with.
    pub(crate) sizes: BlockSizes,
}

/// The first chunk start of a block. With chunk headers (the debug build) where every kind's
/// first chunk starts, which the block walk expects; a release build's bare chunks start right
/// after the block header (data 16-aligned there), since Bump keeps nothing in the kind's bytes
/// and no walk reads its blocks.
#[inline(always)]
fn first_start(block: *mut Block) -> *mut u8 {
    if hooks::BUMP_CHUNK_HEADERS {
        Block::first_chunk(block)
    } else {
        (block as *mut u8).wrapping_add(BLOCK_HEADER_SIZE)
    }
}

/// Data bytes a request of `size` takes: the class request (the debug build adds its redzone)
/// rounded to 16, at least 16, so every chunk is distinct and the next one's data stays aligned.
#[inline(always)]
fn capacity_for(size: usize) -> usize {
    align_up(hooks::class_request(size).max(1), CHUNK_ALIGN)
}

/// The chunk limit `sizes` give: the largest power of two whose chunk fits an eighth of a
/// maximum-sized block, at most 8 KiB.
fn chunk_limit(sizes: &BlockSizes) -> usize {
    let mut limit = 8 * 1024;
    while limit > 16 && limit + PREFIX > (sizes.max_block_size - BLOCK_HEADER_SIZE) / CHUNK_FRACTION
    {
        limit >>= 1;
    }
    limit
}

/// Sets up a fresh, block-less context header as a Bump context and allocates its keeper block.
/// Returns false when the system allocator fails.
///
/// # Safety
/// `ctx` must point to a context header that holds no blocks.
pub(crate) unsafe fn init(ctx: *mut ContextHeader, sizes: BlockSizes) -> bool {
    // SAFETY: the caller promises a valid header without blocks, so writing its kind and state
    // and linking a first block into it is all there is to do.
    unsafe {
        debug_assert!((*ctx).blocks.is_null() && (*ctx).keeper.is_null());
        (*ctx).kind = KindId::Bump;
        (*ctx).state = KindState {
            bump: BumpState {
                chunk_limit: chunk_limit(&sizes),
                next_block_size: sizes.init_block_size,
                sizes,
            },
        };
        let keeper = new_block(ctx, sizes.keeper_size(), true, ptr::null_mut());
        (*ctx).keeper = keeper;
        !keeper.is_null()
    }
}

/// [`kinds::new_block`], with the free pointer where Bump's first chunk starts.
///
/// # Safety
/// As [`kinds::new_block`].
unsafe fn new_block(
    ctx: *mut ContextHeader,
    size: usize,
    as_head: bool,
    mem: *mut u8,
) -> *mut Block {
    // SAFETY: the caller's promise is `kinds::new_block`'s; a block it returns is ours to set up.
    unsafe {
        let block = kinds::new_block(ctx, size, as_head, mem);
        if !block.is_null() {
            (*block).free_ptr = first_start(block);
        }
        block
    }
}

/// Carves a chunk of capacity `cap` from `block`, which has room for its footprint.
///
/// # Safety
/// `block` must be a block of the live context `ctx` with `PREFIX + cap` free bytes.
#[inline(always)]
unsafe fn carve(
    ctx: *mut ContextHeader,
    block: *mut Block,
    size: usize,
    cap: usize,
    external: bool,
) -> *mut u8 {
    // SAFETY: the caller promises the footprint is unused space of `block`, so the header (in the
    // debug build) and the data lie inside it.
    unsafe {
        let start = (*block).free_ptr;
        (*block).free_ptr = start.add(PREFIX + cap);
        if hooks::BUMP_CHUNK_HEADERS {
            // A block of its own was never filled as unused space: nothing to check there.
            if !external {
                hooks::space_carving(ctx, block, start);
            }
            let value = if external {
                0
            } else {
                (cap / CHUNK_ALIGN) as u32
            };
            let offset = start as usize - block as usize;
            chunk::write_header(
                start,
                ChunkHeader::new(ChunkKind::Bump, external, value, offset),
            );
        }
        let data = start.add(PREFIX);
        hooks::chunk_carved(ctx, data, size, cap);
        data
    }
}

/// Allocates `size` bytes in `ctx`; null when the system allocator fails.
///
/// # Safety
/// `ctx` must be a live Bump context of the calling thread.
#[inline(always)]
pub(crate) unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    let cap = capacity_for(size);
    // SAFETY: the caller promises a live Bump context: its head block is the active block, and
    // the keeper keeps the list non-empty.
    unsafe {
        (*ctx).is_reset = false;
        if cap > (*ctx).state.bump.chunk_limit || hooks::sample_chunk() {
            return alloc_large(ctx, size, cap);
        }
        let block = (*ctx).blocks;
        if (*block).end_ptr as usize - (*block).free_ptr as usize >= PREFIX + cap {
            return carve(ctx, block, size, cap, false);
        }
        alloc_from_new_block(ctx, size, cap)
    }
}

/// The active block is full: a new one, the next size in the doubling series (or larger), becomes
/// the active block; the old one's tail stays unused.
///
/// # Safety
/// As [`alloc`].
#[cold]
#[inline(never)]
unsafe fn alloc_from_new_block(ctx: *mut ContextHeader, size: usize, cap: usize) -> *mut u8 {
    // SAFETY: the caller promises a live Bump context.
    unsafe {
        let state = &mut (*ctx).state.bump;
        let mut block_size = state.next_block_size;
        state.next_block_size = (block_size * 2).min(state.sizes.max_block_size);
        while block_size < BLOCK_HEADER_SIZE + CHUNK_ALIGN + PREFIX + cap {
            block_size *= 2;
        }
        let block = new_block(ctx, block_size, true, ptr::null_mut());
        if block.is_null() {
            return block as *mut u8;
        }
        hooks::safe_point(); // a new block, linked and consistent
        carve(ctx, block, size, cap, false)
    }
}

/// A request above the chunk limit: a block of its own, behind the active block.
///
/// # Safety
/// As [`alloc`].
#[inline(never)]
unsafe fn alloc_large(ctx: *mut ContextHeader, size: usize, cap: usize) -> *mut u8 {
    let Some(block_size) = cap.checked_add(BLOCK_HEADER_SIZE + CHUNK_ALIGN + PREFIX) else {
        return ptr::null_mut();
    };
    let (mem, block_size) = hooks::large_block_memory(size, block_size & !(CHUNK_ALIGN - 1));
    // SAFETY: the caller promises a live Bump context; the block holds header, padding, prefix and
    // `cap` (or, from the hooks, ends the chunk at a guard page past `size` and its redzone).
    unsafe {
        let block = new_block(ctx, block_size, false, mem);
        if block.is_null() {
            return ptr::null_mut();
        }
        let cap = (*block).end_ptr as usize - ((*block).free_ptr as usize + PREFIX);
        carve(ctx, block, size, cap, true)
    }
}

/// Whether the chunk at `data` of capacity `cap` ends at the active block's free pointer: the last
/// allocation, which the safe API can take back or grow in place.
///
/// # Safety
/// `ctx` must be a live Bump context.
unsafe fn is_last(ctx: *mut ContextHeader, data: *mut u8, cap: usize) -> bool {
    // SAFETY: the caller promises a live context; its head block's header is readable.
    unsafe { data.wrapping_add(cap) == (*(*ctx).blocks).free_ptr }
}

/// The safe API's `deallocate` of `size` bytes at `data`: the last allocation's space is taken
/// back, any other chunk waits for the reset (the debug build keeps every chunk given back as a
/// freed chunk, the last one too).
///
/// # Safety
/// `data` must be a live chunk of the live Bump context `ctx`, allocated with `size` bytes.
pub(crate) unsafe fn deallocate(ctx: *mut ContextHeader, data: *mut u8, size: usize) {
    let cap = capacity_for(size);
    // SAFETY: the caller promises a live chunk of `ctx`; rewinding the head block's free pointer to
    // its start returns exactly its footprint.
    unsafe {
        let last = is_last(ctx, data, cap);
        if hooks::bump_chunk_given_back(ctx, data, cap) && last {
            (*(*ctx).blocks).free_ptr = data.sub(PREFIX);
        }
    }
}

/// The safe API's in-place `grow`: the last allocation's capacity is extended to hold `new` bytes
/// when the active block has room. False when it is not the last or the block is full.
///
/// # Safety
/// `data` must be a live chunk of the live Bump context `ctx`, allocated with `old` bytes.
pub(crate) unsafe fn grow_in_place(
    ctx: *mut ContextHeader,
    data: *mut u8,
    old: usize,
    new: usize,
) -> bool {
    let (cap, new_cap) = (capacity_for(old), capacity_for(new));
    // SAFETY: the caller promises a live chunk of `ctx`; when it is the last one, the bytes up to
    // its new capacity are the head block's unused space.
    unsafe {
        let block = (*ctx).blocks;
        if !is_last(ctx, data, cap) || (*block).end_ptr < data.wrapping_add(new_cap) {
            return false;
        }
        (*block).free_ptr = data.add(new_cap);
        if hooks::BUMP_CHUNK_HEADERS {
            let start = data.sub(PREFIX);
            let hdr = ChunkHeader::new(
                ChunkKind::Bump,
                false,
                (new_cap / CHUNK_ALIGN) as u32,
                start as usize - block as usize,
            );
            chunk::write_header(start, hdr);
        }
        hooks::chunk_resized(ctx, data, old, new, new_cap);
        true
    }
}

/// The safe API's in-place `shrink`: the chunk keeps its place and capacity, and the debug
/// build's record takes the new size, so the bytes past it are redzone again (an overrun of the
/// shrunk chunk is found as one).
///
/// # Safety
/// `data` must be a live chunk of the live Bump context `ctx`, allocated with `old` >= `new`
/// bytes.
pub(crate) unsafe fn shrink_in_place(
    ctx: *mut ContextHeader,
    data: *mut u8,
    old: usize,
    new: usize,
) {
    debug_assert!(new <= old);
    hooks::chunk_resized(ctx, data, old, new, capacity_for(old));
}

/// `op` on a Bump chunk: PostgreSQL's error.
#[cold]
#[inline(never)]
fn unsupported(op: &str) -> ! {
    panic!("{op} is not supported by the bump memory allocator")
}

/// Bump behind the kind interface (see `crate::kinds`).
pub(crate) struct Bump;

impl ContextKind for Bump {
    #[inline(always)]
    unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
        // SAFETY: the caller promises a live Bump context of this thread, as `alloc` asks.
        unsafe { alloc(ctx, size) }
    }
    unsafe fn free(_: *mut u8, _: ChunkHeader) {
        unsupported("pfree")
    }
    unsafe fn realloc(_: *mut u8, _: ChunkHeader, _: usize, _: usize) -> *mut u8 {
        unsupported("repalloc")
    }
    unsafe fn reset(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Bump context whose memory nothing uses: every block
        // but the keeper goes, the keeper is rewound.
        unsafe {
            hooks::reset_begin(ctx);
            let keeper = kinds::free_all_but_keeper(ctx);
            (*keeper).free_ptr = first_start(keeper);
            (*ctx).state.bump.next_block_size = (*ctx).state.bump.sizes.init_block_size;
            hooks::reset_end(ctx);
        }
    }
    unsafe fn release_all(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Bump context whose memory nothing uses.
        unsafe { kinds::free_all_blocks(ctx) }
    }
    unsafe fn owner(_: *mut u8, _: ChunkHeader) -> *mut ContextHeader {
        unsupported("GetMemoryChunkContext")
    }
    unsafe fn capacity(data: *mut u8, hdr: ChunkHeader) -> usize {
        if hdr.is_external() {
            // SAFETY: the caller promises a live Bump chunk whose header (debug build) leads to its
            // block.
            unsafe { (*chunk::block_of(data, hdr)).end_ptr as usize - data as usize }
        } else {
            hdr.value() as usize * CHUNK_ALIGN
        }
    }
    unsafe fn space(_: *mut u8, _: ChunkHeader) -> usize {
        unsupported("GetMemoryChunkSpace")
    }
    unsafe fn counters(ctx: *mut ContextHeader) -> Counters {
        // SAFETY: the caller promises a live context; a Bump block's only free space is its
        // tail (a chunk given back stays in place until the reset).
        unsafe { kinds::block_counters(ctx, |block| (kinds::tail_bytes(block) as u64, 0)) }
    }

    /// A Bump chunk of the debug build: its value is its capacity in 16-byte units, or it is
    /// external and fills the rest of its block.
    fn decode_chunk(
        block: *mut Block,
        start: *mut u8,
        hdr: ChunkHeader,
    ) -> Result<Walked, BadChunk> {
        // SAFETY: only the block header's end pointer is read; the caller passes a live block.
        let end = unsafe { (*block).end_ptr } as usize;
        let data = start.wrapping_add(PREFIX);
        BadChunk::unless_owned(block, start, data, hdr, ChunkKind::Bump)?;
        let bad = |why| Err(BadChunk { data, hdr, why });
        let cap = if hdr.is_external() {
            end.saturating_sub(data as usize)
        } else if hdr.value() != 0 {
            hdr.value() as usize * CHUNK_ALIGN
        } else {
            return bad(Damage::Value);
        };
        Walked {
            start,
            data,
            cap,
            footprint: PREFIX + cap,
        }
        .within(end, hdr)
    }
}
