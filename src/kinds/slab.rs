//! Slab: PostgreSQL's context kind for many objects of one size (`slab.c`).
//!
//! A Slab context is created for one chunk size and one block size, and every block is cut into
//! slots of the same footprint: header word (the debug build's whole chunk prefix), the chunk
//! size rounded so the next slot's data stays 16-aligned. A request of any other size is an
//! error (`unexpected alloc chunk size`), and so is a `repalloc` to another size; one to the same
//! size returns the chunk. Since every slot fits every request, there are no size classes: what
//! an allocation has to find is a block with a free slot, and what it should prefer is the
//! *fullest* such block, so that the emptier blocks drain and can be given back.
//!
//! Each block keeps its own free list (linked through the first word of the free chunks' data)
//! and a count of free slots, and the slots it never handed out are the space past its free
//! pointer, carved one at a time as AllocSet carves — so a fresh block costs nothing per slot,
//! and freed slots are reused before new ones are touched (they are more likely in cache). The
//! blocks with free slots are grouped by how many they have, as in PostgreSQL: list `i` (1 or 2,
//! [`BLOCKLISTS`] counting the full blocks' 0) holds those whose free count, shifted right by
//! the context's `shift`, rounds up to `i`. The shift is the smallest that puts an empty block's
//! count in the last list, so few lists cover any chunks-per-block, and a block changes list
//! only when its count crosses a boundary, not on every alloc and free. An allocation takes the
//! head of the lowest list that has one — a block among the fullest with room.
//!
//! Unlike PostgreSQL, a full block is on no list, and there is no index of the lowest list in
//! use: nothing needs to find a full block (the context's block list reaches every block), and
//! with two lists a look at both heads costs less than keeping an index. The step a pool of live
//! objects repeats — a free gives a full block one free slot, the next allocation takes it —
//! is then a push and a pop of a list head, inline, where PostgreSQL moves the block between
//! lists twice; only crossing between lists 1 and 2, and a block becoming empty, take the cold
//! path.
//!
//! A block whose last chunk is freed leaves the lists: it is rewound (every slot unused again, as
//! in a fresh block) and kept on the empty list, to be reused before a new block is taken, unless
//! [`MAX_EMPTY_BLOCKS`] are kept already; then it goes back to the system. The debug build
//! verifies its freed chunks first (the `block_emptied` hook), so a write through a pointer kept
//! past its free is found before the rewind or the give-back wipes the evidence. The keeper —
//! the first block, taken when the context is created, as every memctx kind has one — is always
//! kept, so a Slab reset after each use takes no memory from the system in the steady state
//! (PostgreSQL's Slab has no keeper and frees every block at reset).
//!
//! Every block carries the common block header (`chunk::Block`, whose free pointer is the start
//! of the never-used slots) and after it [`SlabBlock`]'s fields; the kind's `first_chunk` tells
//! the debug build and the walk where the slots begin. Every slot ever handed out lies below the
//! free pointer with its header word intact, live or free, so the one block walk
//! (`kinds::walk_block`) steps through them by the footprint the header carries.
//!
//! What is not here: chunk checks. As for the other kinds, the hooks see every carve, reuse and
//! free; the debug build's redzone is part of the footprint (the chunk size plus the redzone,
//! rounded), and its verification, reports and Valgrind/ASan annotations are the same as for an
//! AllocSet chunk.

use core::mem::size_of;
use core::ptr;

use crate::chunk::{
    self, align_up, Block, ChunkHeader, ChunkKind, CHUNK_ALIGN, CHUNK_PREFIX, MAX_BLOCK_OFFSET,
};
use crate::context::ContextHeader;
use crate::hooks;
use crate::kinds::{self, BadChunk, ContextKind, KindId, KindState, Walked};
use crate::stats::{Counters, KindDetail};

/// Number of lists blocks are grouped in by their free count, counting list 0, the full blocks,
/// which no list holds here (PostgreSQL's `SLAB_BLOCKLIST_COUNT`).
pub(crate) const BLOCKLISTS: usize = 3;
// `alloc` looks at the heads of lists 1 and 2 by name.
const _: () = assert!(BLOCKLISTS == 3);

/// Empty blocks kept for reuse besides the keeper; a block that empties beyond them goes back to
/// the system (PostgreSQL's `SLAB_MAXIMUM_EMPTY_BLOCKS`).
pub const MAX_EMPTY_BLOCKS: usize = 10;

/// A Slab block: the common block header, then the Slab's own fields.
#[repr(C, align(16))]
pub(crate) struct SlabBlock {
    /// The header every kind's block starts with; its free pointer is the first never-used slot.
    pub(crate) base: Block,
    /// Free slots: on the free list plus never used.
    pub(crate) nfree: u32,
    /// Data pointer of the first chunk on the block's free list (null: none).
    pub(crate) freehead: *mut u8,
    /// Neighbours in the block's list (a block list, or the empty list).
    pub(crate) prev: *mut SlabBlock,
    pub(crate) next: *mut SlabBlock,
}

/// Bytes of a Slab block's header.
const SLAB_BLOCK_HEADER: usize = size_of::<SlabBlock>();
/// Padding after it that puts the first chunk's data on 16 (8 bytes in a release build).
const FIRST_PAD: usize =
    (CHUNK_ALIGN - (SLAB_BLOCK_HEADER + CHUNK_PREFIX) % CHUNK_ALIGN) % CHUNK_ALIGN;
/// Bytes before a Slab block's first chunk.
const BEFORE_FIRST: usize = SLAB_BLOCK_HEADER + FIRST_PAD;

/// Slab's part of the context header.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SlabState {
    /// The one request size the context serves.
    pub(crate) chunk_size: usize,
    /// Bytes a slot takes: prefix and capacity, a multiple of 16.
    pub(crate) footprint: usize,
    /// Size of every block.
    pub(crate) block_size: usize,
    /// Slots per block.
    pub(crate) chunks_per_block: u32,
    /// Right shift of a free count that gives its list (see the module docs).
    pub(crate) shift: u32,
    /// `(1 << shift) - 1`: a block's list changes when its free count crosses a multiple of
    /// `1 << shift`.
    pub(crate) width_mask: u32,
    /// Heads of lists 1 to `BLOCKLISTS - 1` (a full block is on no list).
    pub(crate) lists: [*mut SlabBlock; BLOCKLISTS - 1],
    /// Empty blocks kept for reuse (the keeper among them when it is empty).
    pub(crate) empty: *mut SlabBlock,
    /// Number of blocks on the empty list.
    pub(crate) nempty: usize,
}

// valgrind/memctx_gdb.py reads the count of empty blocks this far past the slot footprint, whose
// offset the registry publishes.
const _: () = assert!(
    core::mem::offset_of!(SlabState, nempty) - core::mem::offset_of!(SlabState, footprint) == 56
);

/// The sizes a Slab context is created with, checked: what [`SlabState`] derives from them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlabSizes {
    chunk_size: usize,
    footprint: usize,
    block_size: usize,
    chunks_per_block: u32,
}

impl SlabSizes {
    /// Checks a chunk size and a block size as `SlabContextCreate` would, and derives the slot
    /// footprint and slots per block.
    ///
    /// # Errors
    /// A message naming the bad size: the chunk size must be at least 1, the block size a
    /// multiple of 16 below 1 GiB that holds at least one slot.
    pub(crate) fn new(block_size: usize, chunk_size: usize) -> Result<SlabSizes, String> {
        let bad = |what: &str| {
            Err(format!(
                "invalid Slab sizes (block size {block_size}, chunk size {chunk_size}): {what}"
            ))
        };
        if chunk_size == 0 {
            return bad("chunk size must be at least 1");
        }
        if block_size % CHUNK_ALIGN != 0 || block_size > MAX_BLOCK_OFFSET {
            return bad("block size must be a multiple of 16 below 1 GiB");
        }
        // Room for the free-list link in a free slot, and the debug build's redzone.
        let request = hooks::class_request(chunk_size.max(size_of::<*mut u8>()));
        let footprint = align_up(CHUNK_PREFIX + request, CHUNK_ALIGN);
        let room = block_size.saturating_sub(BEFORE_FIRST);
        if room < footprint {
            return Err(format!(
                "block size {block_size} for slab is too small for {chunk_size}-byte chunks"
            ));
        }
        Ok(SlabSizes {
            chunk_size,
            footprint,
            block_size,
            chunks_per_block: (room / footprint) as u32,
        })
    }

    /// Size of every block, the keeper's too.
    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }
}

/// The list a block with `nfree` free slots belongs in: 0 for none, else `nfree >> shift`
/// rounded up, at most `BLOCKLISTS - 1`.
#[inline(always)]
fn list_of(nfree: u32, shift: u32) -> usize {
    ((nfree + (1 << shift) - 1) >> shift) as usize
}

/// The smallest shift that puts a block's largest free count in the last list.
fn shift_for(chunks_per_block: u32) -> u32 {
    let mut shift = 0;
    while list_of(chunks_per_block, shift) >= BLOCKLISTS {
        shift += 1;
    }
    shift
}

/// Sets up a fresh, block-less context header as a Slab context of `sizes`, with its keeper
/// block on the empty list. Returns false when the system allocator fails.
///
/// # Safety
/// `ctx` must point to a context header that holds no blocks.
pub(crate) unsafe fn init(ctx: *mut ContextHeader, sizes: SlabSizes) -> bool {
    // SAFETY: the caller promises a valid header without blocks: its kind and state are ours to
    // write, and its first block becomes the keeper.
    unsafe {
        debug_assert!((*ctx).blocks.is_null() && (*ctx).keeper.is_null());
        (*ctx).kind = KindId::Slab;
        (*ctx).state = KindState {
            slab: SlabState {
                chunk_size: sizes.chunk_size,
                footprint: sizes.footprint,
                block_size: sizes.block_size,
                chunks_per_block: sizes.chunks_per_block,
                shift: shift_for(sizes.chunks_per_block),
                width_mask: (1 << shift_for(sizes.chunks_per_block)) - 1,
                lists: [ptr::null_mut(); BLOCKLISTS - 1],
                empty: ptr::null_mut(),
                nempty: 0,
            },
        };
        let keeper = new_block(ctx);
        if keeper.is_null() {
            return false;
        }
        (*ctx).keeper = keeper as *mut Block;
        push(&mut (*ctx).state.slab.empty, keeper);
        (*ctx).state.slab.nempty = 1;
        true
    }
}

/// Takes a block from the system, every slot of it free and never used. Null when the system
/// allocator fails.
///
/// # Safety
/// `ctx` must be a live Slab context (its kind set) of this thread.
unsafe fn new_block(ctx: *mut ContextHeader) -> *mut SlabBlock {
    // SAFETY: the caller promises a live Slab context; a block `kinds::new_block` returns is a
    // fresh allocation of the block size, whose Slab fields lie inside its header.
    unsafe {
        let state = &(*ctx).state.slab;
        let block =
            kinds::new_block(ctx, state.block_size, true, ptr::null_mut()) as *mut SlabBlock;
        if !block.is_null() {
            rewind(block, state.chunks_per_block);
        }
        block
    }
}

/// Makes `block` a block whose every slot is free and never used, on no list.
///
/// # Safety
/// `block` must be a block of a Slab context with `chunks_per_block` slots, holding no live chunk.
unsafe fn rewind(block: *mut SlabBlock, chunks_per_block: u32) {
    // SAFETY: the caller promises a Slab block: its header holds the Slab fields.
    unsafe {
        (*block).base.free_ptr = Slab::first_chunk(block as *mut Block);
        (*block).nfree = chunks_per_block;
        (*block).freehead = ptr::null_mut();
        (*block).prev = ptr::null_mut();
        (*block).next = ptr::null_mut();
    }
}

/// Pushes `block` on the list whose head is `head`.
///
/// # Safety
/// `block` must be a live Slab block on no list; `head` a list of the same context.
#[inline(always)]
unsafe fn push(head: &mut *mut SlabBlock, block: *mut SlabBlock) {
    // SAFETY: `block` and the old head (if any) are live blocks of the context (caller).
    unsafe {
        (*block).prev = ptr::null_mut();
        (*block).next = *head;
        if !(*head).is_null() {
            (**head).prev = block;
        }
        *head = block;
    }
}

/// Takes `block` off the list whose head is `head`.
///
/// # Safety
/// `block` must be on the list `head`.
#[inline(always)]
unsafe fn unlink(head: &mut *mut SlabBlock, block: *mut SlabBlock) {
    // SAFETY: `block` is on the list (caller), so its neighbours are live blocks of it or null.
    unsafe {
        let (prev, next) = ((*block).prev, (*block).next);
        if prev.is_null() {
            *head = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
    }
}

/// The head of list `list` (1 or more: a full block is on no list).
#[inline(always)]
fn head(state: &mut SlabState, list: usize) -> &mut *mut SlabBlock {
    debug_assert!((1..BLOCKLISTS).contains(&list));
    // SAFETY: lists 1 to BLOCKLISTS - 1 are kept at indexes 0 to BLOCKLISTS - 2.
    unsafe { state.lists.get_unchecked_mut(list - 1) }
}

/// Takes `block`, the head of `head`'s list, off it.
///
/// # Safety
/// `block` must be the head of the list `head`.
#[inline(always)]
unsafe fn pop(head: &mut *mut SlabBlock, block: *mut SlabBlock) {
    // SAFETY: `block` heads the list (caller), so its successor is a live block of it or null.
    unsafe {
        debug_assert!(*head == block && (*block).prev.is_null());
        let next = (*block).next;
        *head = next;
        if !next.is_null() {
            (*next).prev = ptr::null_mut();
        }
    }
}

/// Allocates a chunk of the context's chunk size in `ctx`; null when the system allocator fails.
///
/// # Panics
/// `unexpected alloc chunk size` when `size` is not the context's chunk size.
///
/// # Safety
/// `ctx` must be a live Slab context of the calling thread.
#[inline(always)]
pub(crate) unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    // SAFETY: the caller promises a live Slab context: a block on one of its lists has a free
    // slot.
    unsafe {
        let state = &mut (*ctx).state.slab;
        if size != state.chunk_size {
            wrong_size(size, state.chunk_size);
        }
        let (first, second) = (state.lists[0], state.lists[1]);
        let (block, list) = if !first.is_null() {
            (first, 1)
        } else if !second.is_null() {
            (second, 2)
        } else {
            return alloc_from_new_block(ctx, size);
        };
        let data = take_slot(ctx, block, size);
        let state = &mut (*ctx).state.slab;
        let nfree = (*block).nfree;
        // The list changes when the count falls to a multiple of the list width: to none at 0.
        if nfree & state.width_mask == 0 {
            if nfree == 0 {
                pop(head(state, list), block); // full: on no list
            } else {
                regroup(ctx, block, list);
            }
        }
        data
    }
}

/// `unexpected alloc chunk size`: PostgreSQL's error for a request of another size.
#[cold]
#[inline(never)]
fn wrong_size(size: usize, chunk_size: usize) -> ! {
    panic!("unexpected alloc chunk size {size} (expected {chunk_size})")
}

/// Hands out a free slot of `block`: the head of its free list, else its first never-used slot.
///
/// # Safety
/// `block` must be a block of the live Slab context `ctx` with a free slot.
#[inline(always)]
unsafe fn take_slot(ctx: *mut ContextHeader, block: *mut SlabBlock, size: usize) -> *mut u8 {
    // SAFETY: the caller promises a free slot: a free-list head is a free chunk of the block
    // whose first word is the link, and otherwise a never-used slot lies at the free pointer.
    unsafe {
        debug_assert!((*block).nfree > 0);
        (*block).nfree -= 1;
        let cap = (*ctx).state.slab.footprint - CHUNK_PREFIX;
        let head = (*block).freehead;
        if !head.is_null() {
            hooks::freelist_open(head);
            (*block).freehead = (head as *mut *mut u8).read();
            hooks::chunk_reused(ctx, head, size, cap);
            return head;
        }
        carve(ctx, block, size, cap)
    }
}

/// Carves the never-used slot at `block`'s free pointer.
///
/// # Safety
/// `block` must be a block of the live Slab context `ctx` with a never-used slot.
#[inline(always)]
unsafe fn carve(
    ctx: *mut ContextHeader,
    block: *mut SlabBlock,
    size: usize,
    cap: usize,
) -> *mut u8 {
    // SAFETY: the caller promises the slot at the free pointer is unused space of the block, so
    // its header and data lie inside it.
    unsafe {
        let footprint = CHUNK_PREFIX + cap;
        let start = (*block).base.free_ptr;
        (*block).base.free_ptr = start.add(footprint);
        debug_assert!((*block).base.free_ptr <= (*block).base.end_ptr);
        (*ctx).is_reset = false;
        hooks::space_carving(ctx, block as *mut Block, start);
        let offset = start as usize - block as usize;
        let value = (footprint / CHUNK_ALIGN) as u32;
        chunk::write_header(
            start,
            ChunkHeader::new(ChunkKind::Slab, false, value, offset),
        );
        let data = chunk::data_of(start);
        hooks::chunk_carved(ctx, data, size, cap);
        data
    }
}

/// No block has a free slot: an empty block (a kept one, else a new one from the system) joins
/// the lists and serves the request. Null when the system allocator fails.
///
/// # Safety
/// As [`alloc`].
#[cold]
#[inline(never)]
unsafe fn alloc_from_new_block(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    // SAFETY: the caller promises a live Slab context; blocks on its empty list are its own, with
    // every slot free.
    unsafe {
        let state = &mut (*ctx).state.slab;
        let block = if state.empty.is_null() {
            let block = new_block(ctx);
            if block.is_null() {
                return ptr::null_mut();
            }
            hooks::safe_point(); // a new block, linked and consistent
            block
        } else {
            let block = state.empty;
            unlink(&mut state.empty, block);
            state.nempty -= 1;
            block
        };
        let data = take_slot(ctx, block, size);
        let state = &mut (*ctx).state.slab;
        let list = list_of((*block).nfree, state.shift);
        if list != 0 {
            push(head(state, list), block);
        }
        data
    }
}

/// `block`, on list `from` (none if 0: it was full), has a free count that belongs to another
/// list now (none if it is full), or it is empty: moves it there (or to the empty list, or back
/// to the system).
///
/// # Safety
/// `block` must be a block of the live Slab context `ctx`, on list `from`.
#[cold]
#[inline(never)]
unsafe fn regroup(ctx: *mut ContextHeader, block: *mut SlabBlock, from: usize) {
    // SAFETY: the caller promises `block` is on list `from` of the live context `ctx`.
    unsafe {
        let state = &mut (*ctx).state.slab;
        if from != 0 {
            unlink(head(state, from), block);
        }
        let to = list_of((*block).nfree, state.shift);
        if (*block).nfree == state.chunks_per_block {
            keep_or_release(ctx, block);
        } else if to != 0 {
            push(head(state, to), block);
        }
    }
}

/// `block` has no live chunk and is on no list: kept on the empty list, rewound to a fresh
/// block, if it is the keeper or fewer than [`MAX_EMPTY_BLOCKS`] others are kept, else given back
/// to the system. Either way the debug build verifies its freed chunks first (`block_emptied`):
/// a write through a pointer kept past its `pfree` is found here, before the evidence goes.
///
/// # Safety
/// `block` must be a block of the live Slab context `ctx`, on no list, every slot free.
unsafe fn keep_or_release(ctx: *mut ContextHeader, block: *mut SlabBlock) {
    // SAFETY: the caller promises an empty block of `ctx` that no list holds: rewinding it or
    // giving it back frees nothing in use.
    unsafe {
        let keep = block as *mut Block == (*ctx).keeper
            || (*ctx).state.slab.nempty - usize::from(keeper_is_empty(ctx)) < MAX_EMPTY_BLOCKS;
        hooks::block_emptied(ctx, block as *mut Block, keep);
        if keep {
            rewind(block, (*ctx).state.slab.chunks_per_block);
            push(&mut (*ctx).state.slab.empty, block);
            (*ctx).state.slab.nempty += 1;
        } else {
            kinds::free_block(ctx, block as *mut Block);
        }
        hooks::emptied_block_settled();
    }
}

/// Whether the keeper is on the empty list (an empty keeper is always there, but while it is
/// passed to [`keep_or_release`]).
///
/// # Safety
/// `ctx` must be a live Slab context.
unsafe fn keeper_is_empty(ctx: *mut ContextHeader) -> bool {
    // SAFETY: the keeper is a live block of `ctx` (caller), its Slab fields readable.
    unsafe {
        let keeper = (*ctx).keeper as *mut SlabBlock;
        (*keeper).nfree == (*ctx).state.slab.chunks_per_block
    }
}

/// Returns the chunk at `data` to its block's free list.
///
/// # Safety
/// `data` must be a live Slab chunk with header `hdr`, of a live context of this thread.
#[inline(always)]
pub(crate) unsafe fn free(data: *mut u8, hdr: ChunkHeader) {
    // SAFETY: the caller promises a live chunk: its offset leads to its Slab block, whose first
    // word is the live context, and its data's first word may hold the free-list link.
    unsafe {
        let block = chunk::block_of(data, hdr) as *mut SlabBlock;
        let ctx = (*block).base.context;
        hooks::chunk_freed(ctx, data, (*ctx).state.slab.footprint - CHUNK_PREFIX);
        (data as *mut *mut u8).write((*block).freehead);
        hooks::freelist_close(data);
        (*block).freehead = data;
        let nfree = (*block).nfree + 1;
        (*block).nfree = nfree;
        let state = &mut (*ctx).state.slab;
        // The list changes when the count rises past a multiple of the list width (from none at
        // 0); an empty block leaves the lists.
        if (nfree - 1) & state.width_mask == 0 || nfree == state.chunks_per_block {
            if nfree == 1 && nfree != state.chunks_per_block {
                push(head(state, 1), block); // was full: on no list
            } else {
                regroup(ctx, block, list_of(nfree - 1, state.shift));
            }
        }
    }
}

/// `repalloc` of a Slab chunk: to its own size the chunk is returned as it is; any other size is
/// an error, as in PostgreSQL.
///
/// # Safety
/// `data` must be a live Slab chunk with header `hdr`.
unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old_size: usize) -> *mut u8 {
    // SAFETY: the caller promises a live chunk, whose block names its live context.
    unsafe {
        let ctx = Slab::owner(data, hdr);
        let state = &(*ctx).state.slab;
        if size != state.chunk_size {
            realloc_unsupported(size, state.chunk_size);
        }
        // The chunk stays as it is, but the debug build reported what the resize's check found
        // and must rewrite the redzones, or the next check reports the same damage again.
        hooks::chunk_resized(ctx, data, old_size, size, state.footprint - CHUNK_PREFIX);
        data
    }
}

#[cold]
#[inline(never)]
fn realloc_unsupported(size: usize, chunk_size: usize) -> ! {
    panic!("slab allocator does not support realloc() (chunk size {chunk_size}, requested {size})")
}

/// Whether the safe API may ask `ctx` for `size` bytes: its chunk size, nothing else.
///
/// # Safety
/// `ctx` must be a live Slab context.
#[inline(always)]
pub(crate) unsafe fn serves(ctx: *mut ContextHeader, size: usize) -> bool {
    // SAFETY: the caller promises a live Slab context.
    unsafe { (*ctx).state.slab.chunk_size == size }
}

/// Slab behind the kind interface (see `crate::kinds`).
pub(crate) struct Slab;

impl ContextKind for Slab {
    #[inline(always)]
    unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
        // SAFETY: the caller promises a live Slab context of this thread, as `alloc` asks.
        unsafe { alloc(ctx, size) }
    }
    #[inline(always)]
    unsafe fn free(data: *mut u8, hdr: ChunkHeader) {
        // SAFETY: the caller promises a live Slab chunk with header `hdr`, as `free` asks.
        unsafe { free(data, hdr) }
    }
    unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old: usize) -> *mut u8 {
        // SAFETY: the caller promises a live Slab chunk with header `hdr`, as `realloc` asks.
        unsafe { realloc(data, hdr, size, old) }
    }
    unsafe fn reset(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Slab context whose memory nothing uses: every block
        // but the keeper goes, and the keeper is rewound onto the empty list.
        unsafe {
            hooks::reset_begin(ctx);
            let keeper = kinds::free_all_but_keeper(ctx) as *mut SlabBlock;
            let state = &mut (*ctx).state.slab;
            rewind(keeper, state.chunks_per_block);
            state.lists = [ptr::null_mut(); BLOCKLISTS - 1];
            state.empty = keeper;
            state.nempty = 1;
            hooks::reset_end(ctx);
        }
    }
    unsafe fn release_all(ctx: *mut ContextHeader) {
        // SAFETY: the caller promises a live Slab context whose memory nothing uses.
        unsafe {
            kinds::free_all_blocks(ctx);
            let state = &mut (*ctx).state.slab;
            state.lists = [ptr::null_mut(); BLOCKLISTS - 1];
            state.empty = ptr::null_mut();
            state.nempty = 0;
        }
    }
    #[inline(always)]
    unsafe fn owner(data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader {
        // SAFETY: the offset leads to the chunk's block, whose first word is its context
        // (the caller promises a live chunk).
        unsafe { (*chunk::block_of(data, hdr)).context }
    }
    unsafe fn capacity(_: *mut u8, hdr: ChunkHeader) -> usize {
        hdr.value() as usize * CHUNK_ALIGN - CHUNK_PREFIX
    }
    unsafe fn space(_: *mut u8, hdr: ChunkHeader) -> usize {
        hdr.value() as usize * CHUNK_ALIGN
    }
    unsafe fn counters(ctx: *mut ContextHeader) -> Counters {
        // SAFETY: the caller promises a live Slab context; its block list holds Slab blocks.
        unsafe {
            let footprint = (*ctx).state.slab.footprint as u64;
            kinds::block_counters(ctx, |block| {
                // Free slots are the never-used ones in the tail and the listed freed ones.
                let tail = kinds::tail_bytes(block) as u64;
                let nfree = u64::from((*(block as *mut SlabBlock)).nfree);
                let listed = nfree - tail / footprint;
                (listed * footprint + tail, nfree)
            })
        }
    }
    unsafe fn detail(ctx: *mut ContextHeader) -> KindDetail {
        KindDetail {
            chunks: None,
            // SAFETY: the caller promises a live Slab context, whose state is the Slab's.
            empty_blocks: Some(unsafe { (*ctx).state.slab.nempty } as u64),
        }
    }
    fn meta_size() -> usize {
        SLAB_BLOCK_HEADER
    }
    fn first_chunk(block: *mut Block) -> *mut u8 {
        (block as *mut u8).wrapping_add(BEFORE_FIRST)
    }

    /// A Slab chunk: its value is its footprint in 16-byte units; it never has a block of its
    /// own.
    fn decode_chunk(
        block: *mut Block,
        start: *mut u8,
        hdr: ChunkHeader,
    ) -> Result<Walked, BadChunk> {
        kinds::decode_by_footprint(block, start, hdr, ChunkKind::Slab, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_postgres_shift() {
        // 100 slots: shift 6 puts 100 in list 2, 1..=64 in list 1 and 0 in list 0.
        let shift = shift_for(100);
        assert_eq!(shift, 6);
        assert_eq!(list_of(0, shift), 0);
        assert_eq!(list_of(1, shift), 1);
        assert_eq!(list_of(64, shift), 1);
        assert_eq!(list_of(65, shift), 2);
        assert_eq!(list_of(100, shift), 2);
        // One slot per block: full or empty.
        assert_eq!(shift_for(1), 0);
        assert_eq!(list_of(1, 0), 1);
        for n in 1..2000u32 {
            let s = shift_for(n);
            assert!(list_of(n, s) < BLOCKLISTS, "{n}");
            assert!(
                s == 0 || list_of(n, s - 1) >= BLOCKLISTS,
                "{n}: shift not the smallest"
            );
            // The fast paths' test for a change of list: a count crossing a multiple of 1 << s.
            let mask = (1 << s) - 1;
            for k in 1..=n {
                assert_eq!(
                    list_of(k - 1, s) != list_of(k, s),
                    (k - 1) & mask == 0,
                    "{n} {k}"
                );
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        let s = SlabSizes::new(8192, 64).unwrap();
        assert_eq!(s.footprint % CHUNK_ALIGN, 0);
        assert!(s.footprint >= CHUNK_PREFIX + 64);
        assert_eq!(
            s.chunks_per_block as usize,
            (8192 - BEFORE_FIRST) / s.footprint
        );
        assert!(SlabSizes::new(8192, 0).is_err());
        assert!(SlabSizes::new(8200, 64).is_err());
        assert_eq!(
            SlabSizes::new(1024, 2000).unwrap_err(),
            "block size 1024 for slab is too small for 2000-byte chunks"
        );
    }
}
