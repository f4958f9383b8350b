//! The context kinds and the one interface they share.
//!
//! PostgreSQL has several context kinds because workloads differ: AllocSet for general use,
//! Generation for chunks freed in roughly the order they were allocated, Slab for objects of one
//! size, Bump for memory that is only ever freed all at once. Its pointer operations (`pfree`,
//! `repalloc`, `GetMemoryChunkContext`, `GetMemoryChunkSpace`) read a method id from the chunk
//! header and index a method table (`mcxt_methods[]` in `mcxt.c`); its context operations (alloc,
//! reset, delete, stats, check) go through the context's own method pointer.
//!
//! memctx keeps that split and replaces the tables with a `match`:
//!
//! * every kind implements [`ContextKind`] — alloc, free, realloc, reset, release, chunk → context,
//!   chunk capacity and space, is-empty, the stats counters, and `decode_chunk`, the one place that
//!   knows how the kind lays out a block's chunks;
//! * a context header holds the fields every kind uses (the tree links, `mem_allocated`, the block
//!   list and the keeper block) and a [`KindId`]; the kind's own fields live in [`KindState`], a
//!   `#[repr(C)]` union whose layout the registry publishes (see `crate::registry`);
//! * the free functions below dispatch: context operations on the header's kind id, pointer
//!   operations on the chunk header's. Each `match` arm calls the kind's function directly, so
//!   with `#[inline(always)]` on both the fast path is the kind's own code with a compare in front
//!   (none while AllocSet is the only kind), where a table of function pointers would be an
//!   indirect call the compiler cannot inline;
//! * every kind's block starts with [`Block`], so a block is described the same way to the hooks,
//!   the debug build and the gdb walker whatever its kind;
//! * [`walk_block`] walks a block's chunks through its kind's `decode_chunk`. The debug build's
//!   verification, site attribution and pointer classification all walk through it, so a kind's
//!   chunk layout is written down once; the gdb walker reads what it needs through the layout the
//!   registry publishes.
//!
//! Kind ids are chosen off the bit patterns a pointer memctx never handed out shows in the word
//! in front of it (glibc's size word, the debug build's fill patterns): see
//! `chunk::RESERVED_IDS`.

use core::ptr;

use std::alloc::{self, Layout};

use crate::chunk::{
    self, Block, ChunkHeader, ChunkKind, BLOCK_HEADER_SIZE, BLOCK_META_SIZE, CHUNK_ALIGN,
    CHUNK_PREFIX, FIRST_CHUNK_PAD,
};
use crate::context::ContextHeader;
use crate::hooks;
use crate::stats::{Counters, KindDetail};

pub(crate) mod aset;
pub(crate) mod bump;
pub(crate) mod generation;
pub(crate) mod slab;
mod walk;

pub(crate) use walk::{decode_by_footprint, BadChunk, Damage, Walked};
#[cfg(feature = "debug-contexts")]
pub(crate) use walk::{decode_chunk, walk_block};

use aset::{AllocSet, AllocSetState};

/// The kind of a context, as its header stores it (the same ids as in chunk headers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KindId {
    /// PostgreSQL's general-purpose kind (`kinds/aset.rs`).
    AllocSet = ChunkKind::AllocSet as u32,
    /// Chunks freed in roughly the order they were allocated (`kinds/generation.rs`).
    Generation = ChunkKind::Generation as u32,
    /// Objects of one size (`kinds/slab.rs`).
    Slab = ChunkKind::Slab as u32,
    /// Memory freed only all at once (`kinds/bump.rs`).
    Bump = ChunkKind::Bump as u32,
}

impl KindId {
    /// Whether a chunk of this kind can be freed by its pointer (`pfree`, `repalloc`): not a
    /// Bump chunk, whose memory comes back only with its context's reset or delete.
    #[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
    pub(crate) fn frees_by_pointer(self) -> bool {
        match self {
            KindId::AllocSet | KindId::Generation | KindId::Slab => true,
            KindId::Bump => false,
        }
    }

    /// The kind's name as PostgreSQL's `pg_backend_memory_contexts` prints it in `type`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            KindId::AllocSet => "AllocSet",
            KindId::Generation => "Generation",
            KindId::Slab => "Slab",
            KindId::Bump => "Bump",
        }
    }

    /// Bytes at the start of a freed chunk's data that the kind writes after the free (a freelist
    /// link), so they hold no freed pattern: none for Generation, which links no freed chunk, so
    /// the debug build checks a freed Generation chunk from its first byte.
    #[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
    pub(crate) fn free_link(self) -> usize {
        match self {
            KindId::Generation => 0,
            KindId::AllocSet | KindId::Slab | KindId::Bump => core::mem::size_of::<*mut u8>(),
        }
    }

    /// What gives a chunk's space back for reuse while its context lives, as a report names it
    /// ("memory released by ..."): a reset; for Generation and Slab also the last `pfree` of a
    /// block, which empties the block for reuse.
    #[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
    pub(crate) fn releaser(self) -> &'static str {
        match self {
            KindId::Generation | KindId::Slab => "a reset or the last pfree of its block",
            KindId::AllocSet | KindId::Bump => "a reset",
        }
    }
}

/// The per-kind part of a context header: the fields of the header's kind.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union KindState {
    /// An AllocSet's freelists and block sizes.
    pub(crate) aset: AllocSetState,
    /// A Generation context's current and spare blocks and block sizes.
    pub(crate) generation: generation::GenerationState,
    /// A Bump context's block sizes.
    pub(crate) bump: bump::BumpState,
    /// A Slab context's chunk size and block lists.
    pub(crate) slab: slab::SlabState,
}

impl KindState {
    /// The state of a header that belongs to no context yet.
    pub(crate) const fn empty() -> KindState {
        KindState {
            aset: AllocSetState::empty(),
        }
    }
}

/// The interface every context kind implements (PostgreSQL's `MemoryContextMethods`).
///
/// Pointer operations take the chunk's data pointer and its header word, already read and
/// dispatched on; context operations take a live context of the kind.
pub(crate) trait ContextKind {
    /// Allocates `size` bytes; null when the system allocator fails (limits are checked by the
    /// caller).
    ///
    /// # Safety
    /// `ctx` must be a live context of this kind, of the calling thread.
    unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8;

    /// Frees the chunk at `data` in the context that owns it.
    ///
    /// # Safety
    /// `data` must be a live chunk of this kind, of a live context of this thread; `hdr` its
    /// header.
    unsafe fn free(data: *mut u8, hdr: ChunkHeader);

    /// Resizes the chunk at `data` in the context that owns it, preserving `old_size` bytes; null
    /// (the chunk untouched) when the system allocator fails.
    ///
    /// # Safety
    /// As [`ContextKind::free`].
    unsafe fn realloc(data: *mut u8, hdr: ChunkHeader, size: usize, old_size: usize) -> *mut u8;

    /// Frees every chunk, keeping what the kind keeps across a reset (the keeper block).
    ///
    /// # Safety
    /// `ctx` must be a live context of this kind whose memory nothing uses any more.
    unsafe fn reset(ctx: *mut ContextHeader);

    /// Gives every block back, the keeper included (the delete of a context not recycled).
    ///
    /// # Safety
    /// As [`ContextKind::reset`].
    unsafe fn release_all(ctx: *mut ContextHeader);

    /// The context owning the chunk at `data`.
    ///
    /// # Safety
    /// `data` must be a live chunk of this kind with header `hdr`.
    unsafe fn owner(data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader;

    /// Data bytes the chunk at `data` can hold.
    ///
    /// # Safety
    /// As [`ContextKind::owner`].
    unsafe fn capacity(data: *mut u8, hdr: ChunkHeader) -> usize;

    /// Bytes the chunk occupies in its block, prefix and padding included
    /// (`GetMemoryChunkSpace`).
    ///
    /// # Safety
    /// As [`ContextKind::owner`].
    unsafe fn space(data: *mut u8, hdr: ChunkHeader) -> usize;

    /// Whether nothing was allocated since the last reset (`MemoryContextIsEmpty`'s own part; the
    /// tree adds "and no children").
    ///
    /// # Safety
    /// `ctx` must be a live context of this kind.
    unsafe fn is_empty(ctx: *mut ContextHeader) -> bool {
        // SAFETY: the caller promises a live context, whose header is readable.
        unsafe { (*ctx).is_reset }
    }

    /// The context's own counters for stats.
    ///
    /// # Safety
    /// `ctx` must be a live context of this kind.
    unsafe fn counters(ctx: *mut ContextHeader) -> Counters;

    /// What the kind's stats line shows beyond the counters: nothing, but for Generation (its
    /// chunks) and Slab (its empty blocks).
    ///
    /// # Safety
    /// `ctx` must be a live context of this kind.
    unsafe fn detail(_ctx: *mut ContextHeader) -> KindDetail {
        KindDetail::default()
    }

    /// Bytes at the start of the kind's blocks that are bookkeeping, not chunk space: the block
    /// header and the kind's fields after it (`chunk::BLOCK_META_SIZE`, unless the kind needs
    /// more than the bytes every kind has there: Slab does).
    #[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
    fn meta_size() -> usize {
        BLOCK_META_SIZE
    }

    /// Where the first chunk of `block` starts: after its bookkeeping, where its data is aligned.
    fn first_chunk(block: *mut Block) -> *mut u8 {
        Block::first_chunk(block)
    }

    /// Decodes the chunk starting at `start` in `block`, whose header word reads `hdr`: its
    /// extent if the header is one this kind writes there, else what is wrong with it. Reads
    /// nothing but the block header. The block walk ([`walk_block`]) is built on it.
    #[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
    fn decode_chunk(
        block: *mut Block,
        start: *mut u8,
        hdr: ChunkHeader,
    ) -> Result<Walked, BadChunk>;
}

/// Runs `$call` with `$k` bound to the kind type named by the context kind id `$id`.
macro_rules! with_kind {
    ($id:expr, $k:ident => $call:expr) => {
        match $id {
            KindId::AllocSet => {
                type $k = AllocSet;
                $call
            }
            KindId::Generation => {
                type $k = generation::Generation;
                $call
            }
            KindId::Slab => {
                type $k = slab::Slab;
                $call
            }
            KindId::Bump => {
                type $k = bump::Bump;
                $call
            }
        }
    };
}

/// Bytes of bookkeeping at the start of `block`, through the kind of the context it names (see
/// [`ContextKind::meta_size`]): what the debug build keeps open as the block's header.
///
/// # Safety
/// As [`first_chunk`].
#[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
pub(crate) unsafe fn block_meta_size(block: *mut Block) -> usize {
    // SAFETY: as `first_chunk`: the block's first word names its context, whose header is
    // readable.
    unsafe { with_kind!((*(*block).context).kind, K => K::meta_size()) }
}

/// Where the first chunk of `block` starts, through the kind of the context it names. The debug
/// build fills, checks and walks a block's chunk space from here.
///
/// # Safety
/// `block` must be a block of a context of this thread (live, or deleted: headers are never
/// freed), its header intact.
pub(crate) unsafe fn first_chunk(block: *mut Block) -> *mut u8 {
    // SAFETY: the caller promises an intact block header, whose first word names its context,
    // whose header stays readable (headers are never freed while their thread runs).
    unsafe { with_kind!((*(*block).context).kind, K => K::first_chunk(block)) }
}

/// Where the first chunk of a block of a context of kind `kind` starts: [`first_chunk`] for a
/// block whose header is not trusted yet (the debug build's check of that header), so the kind
/// comes from the context that owns the block, not from the block's own context field.
#[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
pub(crate) fn first_chunk_of(kind: KindId, block: *mut Block) -> *mut u8 {
    with_kind!(kind, K => K::first_chunk(block))
}

/// Marks the path past AllocSet's own test in [`alloc`], [`reset`] and [`target`], which keeps
/// the compiler from folding that test into the kinds' `match`, where it would become one more
/// case of a jump table. With `core::hint::cold_path` (Rust 1.95, `cfg(memctx_cold_path)` from `build.rs`) the
/// path is also laid out as the less likely one; with an older compiler [`keep_apart`] does it.
#[inline(always)]
fn past_allocset() {
    #[cfg(memctx_cold_path)]
    #[allow(clippy::incompatible_msrv)] // only where the compiler has it (build.rs)
    core::hint::cold_path();
    #[cfg(not(memctx_cold_path))]
    keep_apart();
}

/// Keeps the compiler from folding a test made before this point into the tests after it (a
/// `match` becomes a jump table from four cases on): an empty `asm!` block emits no instruction,
/// but the compiler must assume it has effects, so the tests stay separate branches.
#[inline(always)]
fn keep_apart() {
    // SAFETY: the assembly is empty: it reads, writes and jumps nowhere, as the options say.
    unsafe { core::arch::asm!("", options(nomem, nostack, preserves_flags)) }
}

/// Allocates `size` bytes in `ctx`, through its kind.
///
/// AllocSet is tested first on its own, as in [`target`]: a `match` over every kind would be a
/// jump table that each AllocSet allocation pays. Bump, whose whole allocation is a few
/// instructions (its per-row loop is the one a jump table slows most), is tested next, before the
/// other kinds' `match`.
///
/// # Safety
/// As [`ContextKind::alloc`], for the kind of `ctx`.
#[inline(always)]
pub(crate) unsafe fn alloc(ctx: *mut ContextHeader, size: usize) -> *mut u8 {
    // SAFETY: the header's kind id names the kind whose `init` set the context up, so the caller's
    // promise (a live context of this thread) is the one `K::alloc` asks of a context of kind `K`.
    unsafe {
        if (*ctx).kind == KindId::AllocSet {
            return AllocSet::alloc(ctx, size);
        }
        past_allocset();
        if (*ctx).kind == KindId::Bump {
            return bump::Bump::alloc(ctx, size);
        }
        with_kind!((*ctx).kind, K => K::alloc(ctx, size))
    }
}

/// Sets up the fresh, block-less header `ctx` as a context of kind `kind` with `sizes`, its
/// keeper block allocated; false when the system allocator fails.
///
/// # Safety
/// `ctx` must point to a context header that holds no blocks.
pub(crate) unsafe fn init(ctx: *mut ContextHeader, kind: KindId, sizes: aset::BlockSizes) -> bool {
    // SAFETY: the caller's promise is the one both kinds' `init` ask.
    unsafe {
        match kind {
            KindId::AllocSet => aset::init(ctx, sizes),
            KindId::Generation => generation::init(ctx, sizes),
            KindId::Bump => bump::init(ctx, sizes),
            // Slab contexts are set up by `slab::init`, from their chunk and block size.
            KindId::Slab => unreachable!("a Slab context is created with slab::init"),
        }
    }
}

/// Resets `ctx` through its kind.
///
/// Inlined into the tree's reset, with AllocSet tested first as in [`alloc`]: a per-row loop
/// pays this dispatch once per row, and a call plus the kinds' `match` in front of AllocSet's
/// reset is a measurable share of a short row (BENCHMARKS.md).
///
/// # Safety
/// As [`ContextKind::reset`].
#[inline]
pub(crate) unsafe fn reset(ctx: *mut ContextHeader) {
    // SAFETY: the header's kind id names the kind that set the context up, so the caller's promise
    // (live, its memory unused) is the one `K::reset` asks.
    unsafe {
        if (*ctx).kind == KindId::AllocSet {
            return AllocSet::reset(ctx);
        }
        past_allocset();
        with_kind!((*ctx).kind, K => K::reset(ctx))
    }
}

/// Gives every block of `ctx` back, through its kind.
///
/// # Safety
/// As [`ContextKind::release_all`].
pub(crate) unsafe fn release_all(ctx: *mut ContextHeader) {
    // SAFETY: as `reset`: the kind id picks the kind whose promise the caller made.
    unsafe { with_kind!((*ctx).kind, K => K::release_all(ctx)) }
}

/// Whether `ctx` holds no chunk, through its kind.
///
/// # Safety
/// As [`ContextKind::is_empty`].
pub(crate) unsafe fn is_empty(ctx: *mut ContextHeader) -> bool {
    // SAFETY: the kind id picks the context's own kind; the caller promises it is live.
    unsafe { with_kind!((*ctx).kind, K => K::is_empty(ctx)) }
}

/// The counters of `ctx`, through its kind.
///
/// # Safety
/// As [`ContextKind::counters`].
pub(crate) unsafe fn counters(ctx: *mut ContextHeader) -> Counters {
    // SAFETY: the kind id picks the context's own kind; the caller promises it is live.
    unsafe { with_kind!((*ctx).kind, K => K::counters(ctx)) }
}

/// The block part of a kind's counters: every block of `ctx` counted with its size, and with the
/// free bytes and free chunks `free_of` finds in it (a kind's own rule: the unused tail at the
/// free pointer, plus what the kind keeps freed inside the block).
///
/// # Safety
/// `ctx` must be a live context; `free_of` is called with each of its blocks.
pub(crate) unsafe fn block_counters(
    ctx: *mut ContextHeader,
    mut free_of: impl FnMut(*mut Block) -> (u64, u64),
) -> Counters {
    let mut c = Counters::default();
    // SAFETY: the caller promises a live context, whose block list links its own live blocks.
    unsafe {
        let mut block = (*ctx).blocks;
        while !block.is_null() {
            let (free_bytes, free_chunks) = free_of(block);
            c.total_nblocks += 1;
            c.total_bytes += (*block).size() as u64;
            c.free_bytes += free_bytes;
            c.free_chunks += free_chunks;
            block = (*block).next;
        }
    }
    c
}

/// The unused tail of `block`, from its free pointer to its end.
///
/// # Safety
/// `block` must be a live block.
#[inline(always)]
pub(crate) unsafe fn tail_bytes(block: *mut Block) -> usize {
    // SAFETY: the caller promises a live block, whose header is readable.
    unsafe { (*block).end_ptr as usize - (*block).free_ptr as usize }
}

/// The stats detail of `ctx`, through its kind.
///
/// # Safety
/// As [`ContextKind::detail`].
pub(crate) unsafe fn detail(ctx: *mut ContextHeader) -> KindDetail {
    // SAFETY: the kind id picks the context's own kind; the caller promises it is live.
    unsafe { with_kind!((*ctx).kind, K => K::detail(ctx)) }
}

/// What the kind id of a chunk header names.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// A chunk of a context of this kind.
    Chunk(KindId),
    /// An aligned redirect: the real chunk's data pointer.
    Redirect(*mut u8),
}

/// Dispatches on the chunk header `hdr` read in front of `ptr`; an id no kind uses is the clean
/// panic `<op> called with invalid pointer`.
///
/// AllocSet, the general-purpose kind, is tested first on its own (see [`past_allocset`]): with five
/// ids to tell apart the compiler makes the `match` a jump table, which every AllocSet `pfree`
/// would pay (an indirect jump and its address computation) where one compare does.
#[inline(always)]
pub(crate) fn target(ptr: *mut u8, hdr: ChunkHeader, op: &str) -> Target {
    if hdr.kind_id() == ChunkKind::AllocSet as u64 {
        return Target::Chunk(KindId::AllocSet);
    }
    past_allocset();
    other_target(ptr, hdr, op)
}

/// [`target`] for every id but AllocSet's. Generation's, the other kind whose chunks are freed
/// one by one at a high rate (a queue), is tested on its own too (see [`keep_apart`]): the
/// `match` of the rest is then short enough to stay a chain of compares, where a jump table of
/// all of them cost a Generation `pfree` five more instructions.
#[inline(always)]
fn other_target(ptr: *mut u8, hdr: ChunkHeader, op: &str) -> Target {
    if hdr.kind_id() == ChunkKind::Generation as u64 {
        return Target::Chunk(KindId::Generation);
    }
    keep_apart();
    match ChunkKind::from_id(hdr.kind_id()) {
        Some(ChunkKind::AllocSet) => Target::Chunk(KindId::AllocSet),
        Some(ChunkKind::Generation) => Target::Chunk(KindId::Generation),
        Some(ChunkKind::Bump) => Target::Chunk(KindId::Bump),
        Some(ChunkKind::Slab) => Target::Chunk(KindId::Slab),
        Some(ChunkKind::AlignedRedirect) => Target::Redirect(ptr.wrapping_sub(hdr.offset())),
        None => invalid_pointer(op, ptr, hdr),
    }
}

#[cold]
#[inline(never)]
pub(crate) fn invalid_pointer(op: &str, ptr: *mut u8, hdr: ChunkHeader) -> ! {
    panic!(
        "{op} called with invalid pointer {ptr:p} (header 0x{:016x})",
        hdr.0
    )
}

/// Frees the chunk at `data` of kind `kind` in its own context.
///
/// # Safety
/// As [`ContextKind::free`], the context being the chunk's owner.
#[inline(always)]
pub(crate) unsafe fn free(kind: KindId, data: *mut u8, hdr: ChunkHeader) {
    // SAFETY: `kind` is the id the chunk's header carries, and the caller promises the chunk is
    // live, which `K::free` asks.
    unsafe { with_kind!(kind, K => K::free(data, hdr)) }
}

/// Resizes the chunk at `data` of kind `kind` in its own context.
///
/// # Safety
/// As [`ContextKind::realloc`], the context being the chunk's owner.
#[inline]
pub(crate) unsafe fn realloc(
    kind: KindId,
    data: *mut u8,
    hdr: ChunkHeader,
    size: usize,
    old_size: usize,
) -> *mut u8 {
    // SAFETY: as `free`: `kind` is the chunk's own, and the chunk is live (caller).
    unsafe { with_kind!(kind, K => K::realloc(data, hdr, size, old_size)) }
}

/// The context owning the chunk at `data` of kind `kind`.
///
/// # Safety
/// As [`ContextKind::owner`].
#[inline(always)]
pub(crate) unsafe fn owner(kind: KindId, data: *mut u8, hdr: ChunkHeader) -> *mut ContextHeader {
    // SAFETY: `kind` is the id the chunk's header carries; the caller promises a live chunk.
    unsafe { with_kind!(kind, K => K::owner(data, hdr)) }
}

/// Data bytes the chunk at `data` of kind `kind` can hold.
///
/// # Safety
/// As [`ContextKind::capacity`].
#[inline]
pub(crate) unsafe fn capacity(kind: KindId, data: *mut u8, hdr: ChunkHeader) -> usize {
    // SAFETY: `kind` is the id the chunk's header carries; the caller promises a live chunk.
    unsafe { with_kind!(kind, K => K::capacity(data, hdr)) }
}

/// Bytes the chunk at `data` of kind `kind` occupies in its block.
///
/// # Safety
/// As [`ContextKind::space`].
pub(crate) unsafe fn space(kind: KindId, data: *mut u8, hdr: ChunkHeader) -> usize {
    // SAFETY: `kind` is the id the chunk's header carries; the caller promises a live chunk.
    unsafe { with_kind!(kind, K => K::space(data, hdr)) }
}

/// Takes a block of `size` bytes for `ctx` — `mem` if given, else what the hooks provide (the
/// debug build maps blocks under memcheck), else the system allocator's — links it as the head
/// (the active block) or right after it (a chunk's own block), and tells the hooks. Its free
/// pointer is `Block::first_chunk`; a kind whose chunks start elsewhere moves it. Null when the
/// system allocator fails.
///
/// # Safety
/// `ctx` must be a live context of this thread; `mem` null or `size` writable bytes, 16-aligned;
/// `size` a multiple of 16 and at least a block header.
pub(crate) unsafe fn new_block(
    ctx: *mut ContextHeader,
    size: usize,
    as_head: bool,
    mem: *mut u8,
) -> *mut Block {
    debug_assert!(size >= BLOCK_HEADER_SIZE && size % CHUNK_ALIGN == 0);
    let Ok(layout) = Layout::from_size_align(size, CHUNK_ALIGN) else {
        return ptr::null_mut();
    };
    let block = match (mem.is_null(), hooks::block_memory(size)) {
        (false, _) => mem as *mut Block,
        (true, Some(mem)) => mem as *mut Block,
        // SAFETY: `layout` has a non-zero size (at least the block header).
        (true, None) => unsafe { alloc::alloc(layout) as *mut Block },
    };
    if !block.is_null() {
        // SAFETY: `ctx` is live (caller); `block` is a fresh allocation of `size` bytes, large
        // enough for its header.
        unsafe {
            link_block(ctx, block, size, as_head);
            hooks::block_allocated(ctx, block, !as_head);
        }
    }
    block
}

/// Unlinks `block` from `ctx` and gives it back: to the hooks if they take it (a guarded
/// mapping, a block mapped under memcheck), else to the system allocator.
///
/// # Safety
/// `block` must be a block of the live context `ctx` that [`new_block`] took, and nothing may use
/// its memory afterwards.
pub(crate) unsafe fn free_block(ctx: *mut ContextHeader, block: *mut Block) {
    // SAFETY: the caller promises a block of `ctx` that nothing uses: unlinking it touches its
    // list mates only, and it goes back to where `new_block` took it with the layout it had.
    unsafe {
        let size = unlink_block(ctx, block);
        hooks::block_freed(ctx, block);
        if !hooks::block_release(block, size) {
            alloc::dealloc(
                block as *mut u8,
                Layout::from_size_align_unchecked(size, CHUNK_ALIGN),
            );
        }
    }
}

/// Gives a chunk of `size` requested bytes (`need` with the debug build's redzone) a block of its
/// own, linked right after the head of `ctx`'s block list so the active block keeps serving small
/// chunks: the chunk sits at the block's first chunk start with the external bit and `kind`'s id,
/// and fills the block. Its memory comes from the hooks (the debug build's guarded mapping, which
/// ends the chunk at a guard page past `size` and its redzone) or the system. Returns the chunk's
/// data; null when the system allocator fails or the size overflows.
///
/// # Safety
/// `ctx` must be a live context of kind `kind` of this thread; `size` at most the huge limit.
pub(crate) unsafe fn alloc_own_block(
    ctx: *mut ContextHeader,
    size: usize,
    need: usize,
    kind: ChunkKind,
) -> *mut u8 {
    let Some(block_size) = large_block_size(need) else {
        return ptr::null_mut();
    };
    let (mem, block_size) = hooks::large_block_memory(size, block_size);
    // SAFETY: `ctx` is live (caller); the new block holds header, padding, prefix and `need` (or
    // ends the chunk at the hooks' guard page), so the header and data lie in it.
    unsafe {
        let block = new_block(ctx, block_size, false, mem);
        if block.is_null() {
            return ptr::null_mut();
        }
        let chunk = Block::first_chunk(block);
        (*block).free_ptr = (*block).end_ptr;
        let offset = chunk as usize - block as usize;
        chunk::write_header(chunk, ChunkHeader::new(kind, true, 0, offset));
        let data = chunk::data_of(chunk);
        hooks::chunk_carved(ctx, data, size, (*block).end_ptr as usize - data as usize);
        data
    }
}

/// Block size for a chunk of its own with `need` data bytes, `None` on overflow.
#[inline]
pub(crate) fn large_block_size(need: usize) -> Option<usize> {
    let size =
        need.checked_add(BLOCK_HEADER_SIZE + FIRST_CHUNK_PAD + CHUNK_PREFIX + CHUNK_ALIGN)?;
    Some(size & !(CHUNK_ALIGN - 1))
}

/// A reset's block work, the same for every kind with a keeper: every block but the keeper goes
/// back, and the keeper is left alone on the list (its free pointer is the kind's to rewind).
/// Returns the keeper.
///
/// # Safety
/// `ctx` must be a live context with a keeper, whose memory nothing uses any more.
pub(crate) unsafe fn free_all_but_keeper(ctx: *mut ContextHeader) -> *mut Block {
    // SAFETY: the caller promises a live context whose memory is unused; each block is read for
    // its successor before it is given back, and the keeper stays.
    unsafe {
        let keeper = (*ctx).keeper;
        let mut block = (*ctx).blocks;
        while !block.is_null() {
            let next = (*block).next;
            if block != keeper {
                free_block(ctx, block);
            }
            block = next;
        }
        debug_assert!((*ctx).blocks == keeper && (*keeper).prev.is_null());
        (*keeper).next = ptr::null_mut();
        keeper
    }
}

/// A delete's block work: every block, the keeper included, goes back.
///
/// # Safety
/// As [`free_all_but_keeper`].
pub(crate) unsafe fn free_all_blocks(ctx: *mut ContextHeader) {
    // SAFETY: the caller promises a live context whose memory is unused.
    unsafe {
        while !(*ctx).blocks.is_null() {
            free_block(ctx, (*ctx).blocks);
        }
        (*ctx).keeper = ptr::null_mut();
        debug_assert_eq!((*ctx).mem_allocated, 0);
    }
}

/// Links a fresh block of `size` bytes into `ctx`'s block list — as the head (the active block)
/// or right after it — and writes its header.
///
/// # Safety
/// `ctx` must be live; `block` a fresh allocation of `size` bytes, at least a block header.
unsafe fn link_block(ctx: *mut ContextHeader, block: *mut Block, size: usize, as_head: bool) {
    // SAFETY: `block` is a fresh allocation of `size` bytes (the caller's promise), so its header
    // and its end lie in it; the list head and its successor are blocks of the live `ctx`.
    unsafe {
        let head = (*ctx).blocks;
        let (prev, next) = if as_head || head.is_null() {
            (ptr::null_mut(), head)
        } else {
            (head, (*head).next)
        };
        block.write(Block {
            context: ctx,
            prev,
            next,
            free_ptr: Block::first_chunk(block),
            end_ptr: (block as *mut u8).add(size),
            released: ptr::null_mut(),
        });
        relink_moved_block(ctx, block);
        (*ctx).mem_allocated += size;
    }
}

/// Points `block`'s neighbours (or the list head) at it: after it was written or moved.
///
/// # Safety
/// `block` must be a block of the live context `ctx` whose `prev` and `next` are right.
pub(crate) unsafe fn relink_moved_block(ctx: *mut ContextHeader, block: *mut Block) {
    // SAFETY: the caller promises `prev` and `next` are blocks of `ctx` or null, so each store hits
    // a live block header or `ctx`'s list head.
    unsafe {
        if (*block).prev.is_null() {
            (*ctx).blocks = block;
        } else {
            (*(*block).prev).next = block;
        }
        if !(*block).next.is_null() {
            (*(*block).next).prev = block;
        }
    }
}

/// Unlinks `block` from `ctx`'s block list and its bytes from `mem_allocated`; returns its size.
///
/// # Safety
/// `block` must be a block of the live context `ctx`.
unsafe fn unlink_block(ctx: *mut ContextHeader, block: *mut Block) -> usize {
    // SAFETY: `block` is on `ctx`'s list (the caller's promise), so its neighbours are live blocks of
    // `ctx` or null, and its size was added to `mem_allocated` when it was linked.
    unsafe {
        let (prev, next, size) = ((*block).prev, (*block).next, (*block).size());
        if prev.is_null() {
            (*ctx).blocks = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*ctx).mem_allocated -= size;
        size
    }
}

#[cfg(test)]
mod tests {
    /// The allocator core reaches the debug build, the dumper, snapshots and the leak tools only
    /// through `crate::hooks`: it names none of them itself.
    #[test]
    fn core_imports_only_through_hooks() {
        let core = [
            ("chunk.rs", include_str!("../chunk.rs")),
            ("context.rs", include_str!("../context.rs")),
            ("raw.rs", include_str!("../raw.rs")),
            ("kinds/mod.rs", include_str!("mod.rs")),
            ("kinds/aset.rs", include_str!("aset.rs")),
            ("kinds/bump.rs", include_str!("bump.rs")),
            ("kinds/generation.rs", include_str!("generation.rs")),
            ("kinds/slab.rs", include_str!("slab.rs")),
            ("kinds/walk.rs", include_str!("walk.rs")),
        ];
        let banned = ["dump", "snapshot", "leak", "debug"];
        for (file, text) in core {
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                // The modules a line names from the crate root: `crate::x` and `crate::{x, y}`.
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let ident = |p: &str| {
                        p.trim()
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or("")
                            .to_owned()
                    };
                    let named: Vec<String> = match rest.strip_prefix('{') {
                        Some(group) => group
                            .split('}')
                            .next()
                            .unwrap_or("")
                            .split(',')
                            .map(ident)
                            .collect(),
                        None => vec![ident(rest)],
                    };
                    for name in named {
                        assert!(
                            !banned.contains(&name.as_str()),
                            "{file} names crate::{name} outside the hooks: {line}"
                        );
                    }
                }
            }
        }
    }
}
