//! The allocator's hook points.
//!
//! The context kinds call these functions at every event the debug build cares about: a chunk
//! carved, reused, resized or freed, a free chunk's link read or written, a block taken or given
//! back, a context reset. In a release build every hook is an empty `#[inline(always)]` function
//! and [`class_request`] is the identity, so the calls compile to nothing and the hot path is the
//! same code as if they were not there. With `debug-contexts` they forward to `crate::debug`, which
//! fills and verifies patterns, records backtraces and talks to Valgrind and ASan.
//!
//! Keeping the calls here, rather than `cfg` blocks inside the allocator, leaves one allocator whose
//! algorithm reads the same in both builds. It is also the allocator core's only way out: the core
//! (`chunk`, `kinds`, `context`, `raw`) names neither the debug build, nor the dumper, nor
//! snapshots or the leak tools — what it needs of them is a hook here, such as [`safe_point`]
//! and the chunk prefix.

/// The allocator's safe points, in both builds: where a pending snapshot request is answered
/// (see `crate::dump`), at the cost of one relaxed atomic load when none is.
#[inline(always)]
pub(crate) fn safe_point() {
    crate::dump::safe_point();
}

#[cfg(feature = "debug-contexts")]
pub(crate) use crate::debug::hooks::*;

#[cfg(not(feature = "debug-contexts"))]
pub(crate) use off::*;

#[cfg(not(feature = "debug-contexts"))]
#[allow(unused_variables)]
mod off {
    use crate::chunk::{Block, ChunkHeader, CHUNK_HEADER_SIZE};
    use crate::context::ContextHeader;

    /// Bytes between a chunk's start and its data: the header word alone.
    pub(crate) const CHUNK_PREFIX: usize = CHUNK_HEADER_SIZE;
    /// Whether Bump chunks carry a chunk prefix: not in a release build, whose Bump chunks are
    /// bare data.
    pub(crate) const BUMP_CHUNK_HEADERS: bool = false;

    /// Data bytes a request of `size` needs from its size class (the debug build adds a redzone).
    #[inline(always)]
    pub(crate) fn class_request(size: usize) -> usize {
        size
    }
    /// A free chunk's link word is about to be read or written.
    #[inline(always)]
    pub(crate) fn freelist_open(data: *mut u8) {}
    /// The allocator is done with a free chunk's link word.
    #[inline(always)]
    pub(crate) fn freelist_close(data: *mut u8) {}
    /// A chunk's header word (at `chunk`) is about to be read or written (the debug build opens
    /// it to Valgrind and ASan).
    #[inline(always)]
    pub(crate) fn header_open(chunk: *mut u8) {}
    /// The allocator is done with a chunk's header word.
    #[inline(always)]
    pub(crate) fn header_close(chunk: *mut u8) {}
    /// Reads the header word at `chunk` for a walk over a block's chunks (the debug build leaves
    /// what Valgrind and ASan think of the word as it was).
    ///
    /// # Safety
    /// `chunk` must be an 8-aligned address inside a block of this thread.
    #[inline(always)]
    #[allow(dead_code)] // the block walk runs in the debug build only
    pub(crate) unsafe fn header_peek(chunk: *mut u8) -> ChunkHeader {
        // SAFETY: the caller promises an 8-aligned address inside one of this thread's blocks,
        // which are allocated and readable.
        ChunkHeader(unsafe { (chunk as *const u64).read() })
    }
    /// Unused space of `block` at `chunk` is about to become a chunk (its header word is written
    /// next).
    #[inline(always)]
    pub(crate) fn space_carving(ctx: *mut ContextHeader, block: *mut Block, chunk: *mut u8) {}
    /// A chunk was carved from a block's free space.
    #[inline(always)]
    pub(crate) fn chunk_carved(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {}
    /// A chunk was taken from a freelist.
    #[inline(always)]
    pub(crate) fn chunk_reused(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {}
    /// A block's leftover space was carved into a free chunk.
    #[inline(always)]
    pub(crate) fn leftover_carved(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {}
    /// The safe API gives back a chunk of a Bump context: true when the space of the last one
    /// may be taken back (the debug build keeps every chunk given back as a freed chunk instead,
    /// to catch a use after the free).
    #[inline(always)]
    pub(crate) fn bump_chunk_given_back(
        ctx: *mut ContextHeader,
        data: *mut u8,
        cap: usize,
    ) -> bool {
        true
    }
    /// A live chunk is being freed.
    #[inline(always)]
    pub(crate) fn chunk_freed(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {}
    /// Every chunk of `block` (a Generation block) has been freed. `kept`: the kind keeps the
    /// block and rewinds its free pointer next, so its space is carved again; else it gives the
    /// block back next. The debug build verifies the freed chunks and remembers them for the
    /// reports on that space.
    #[inline(always)]
    pub(crate) fn block_emptied(ctx: *mut ContextHeader, block: *mut Block, kept: bool) {}
    /// The block [`block_emptied`] announced was rewound or given back: the debug build lets the
    /// quarantine have a given-back block and raises what the emptying found.
    #[inline(always)]
    pub(crate) fn emptied_block_settled() {}
    /// A live chunk was resized in place.
    #[inline(always)]
    pub(crate) fn chunk_resized(
        ctx: *mut ContextHeader,
        data: *mut u8,
        old: usize,
        new: usize,
        cap: usize,
    ) {
    }
    /// A chunk with a block of its own is about to be moved by `realloc`.
    #[inline(always)]
    pub(crate) fn large_chunk_moving(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {}
    /// A chunk with a block of its own was moved by `realloc` (or the move failed).
    #[inline(always)]
    pub(crate) fn large_chunk_moved(
        ctx: *mut ContextHeader,
        block: *mut Block,
        data: *mut u8,
        size: usize,
        cap: usize,
        failed: bool,
    ) {
    }
    /// Memory for a block of `size` bytes from somewhere other than the system allocator (the
    /// debug build under memcheck maps its blocks): none.
    #[inline(always)]
    pub(crate) fn block_memory(size: usize) -> Option<*mut u8> {
        None
    }
    /// Whether this small allocation gets a block of its own anyway (the debug build's guarded
    /// sampling).
    #[inline(always)]
    pub(crate) fn sample_chunk() -> bool {
        false
    }
    /// Memory for the block of a chunk of `size` requested bytes that needs `block_size` bytes
    /// of its own: none (null), the system allocator provides it. The debug build may give a
    /// guarded mapping, and the block size that puts the chunk's end at its guard page.
    #[inline(always)]
    pub(crate) fn large_block_memory(size: usize, block_size: usize) -> (*mut u8, usize) {
        (core::ptr::null_mut(), block_size)
    }
    /// A block of `size` bytes, unlinked, is going back: true when the hook took it (in the
    /// debug build a guarded mapping, or a block mapped under memcheck), false when the
    /// allocator gives it to the system.
    #[inline(always)]
    pub(crate) fn block_release(block: *mut Block, size: usize) -> bool {
        false
    }
    /// Whether the chunk at `data`, which has a block of its own, must not be moved by the
    /// system's `realloc` (in the debug build: its block is a guarded mapping).
    #[inline(always)]
    pub(crate) fn large_chunk_pinned(data: *mut u8) -> bool {
        false
    }
    /// A block was taken from the system and linked into `ctx`.
    #[inline(always)]
    pub(crate) fn block_allocated(ctx: *mut ContextHeader, block: *mut Block, external: bool) {}
    /// A block, already unlinked, leaves its context (the debug build forgets its range and
    /// tells the tools); [`block_release`] then says where its memory goes.
    #[inline(always)]
    pub(crate) fn block_freed(ctx: *mut ContextHeader, block: *mut Block) {}
    /// A reset of `ctx` begins: no block has been released yet.
    #[inline(always)]
    pub(crate) fn reset_begin(ctx: *mut ContextHeader) {}
    /// The reset of `ctx` ends: its other blocks are gone and its keeper is empty.
    #[inline(always)]
    pub(crate) fn reset_end(ctx: *mut ContextHeader) {}
    /// Checks that `ptr` is a live chunk before its header is trusted; false means "do nothing"
    /// (the debug build has reported why). Release builds trust the caller, as PostgreSQL does,
    /// except for a null pointer, which is a clean panic.
    #[inline(always)]
    pub(crate) fn validate_pointer(
        ptr: *mut u8,
        op: &'static str,
        expected: Option<*mut ContextHeader>,
    ) -> bool {
        if ptr.is_null() {
            null_pointer(op);
        }
        true
    }
    #[cold]
    #[inline(never)]
    fn null_pointer(op: &str) -> ! {
        panic!("{op} called with a null pointer")
    }
    /// Bytes of a live chunk's contents worth preserving when it moves: its capacity, since a
    /// release build does not record the requested size.
    #[inline(always)]
    pub(crate) fn requested_size(data: *mut u8, cap: usize) -> usize {
        cap
    }
    /// An aligned-redirect header was written at `aligned` inside the chunk `base` of `ctx`.
    #[inline(always)]
    pub(crate) fn redirect_written(
        ctx: *mut ContextHeader,
        base: *mut u8,
        aligned: *mut u8,
        size: usize,
    ) {
    }
    /// `ctx` was created (or recycled) and linked into the tree.
    #[inline(always)]
    pub(crate) fn context_created(ctx: *mut ContextHeader) {}
    /// `ctx` was moved to another parent (`set_parent`).
    #[inline(always)]
    pub(crate) fn context_moved(ctx: *mut ContextHeader) {}
    /// `ctx` is about to be deleted; its children are gone and its callbacks have run.
    #[inline(always)]
    pub(crate) fn context_deleting(ctx: *mut ContextHeader) {}
    /// Raises the reports an operation queued (the debug build's findings at reset and delete).
    #[inline(always)]
    pub(crate) fn raise_pending() {}
    /// Verifies a whole context on demand; returns the number of findings.
    #[inline(always)]
    pub(crate) fn check_context(ctx: *mut ContextHeader) -> usize {
        0
    }
    /// Verifies the memory the thread's resets and deletes released (the debug build's
    /// quarantine); returns the number of findings.
    #[inline(always)]
    pub(crate) fn check_released() -> usize {
        0
    }
}
