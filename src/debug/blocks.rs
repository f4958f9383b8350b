//! The debug build's registry of block ranges, per thread.
//!
//! Before the debug build trusts a chunk header it must know the pointer lies inside one of its
//! own blocks; otherwise a foreign or wild pointer would make it read garbage as a header. It keeps
//! the address ranges of the calling thread's blocks in an ordered map — *blocks*, not chunks: a map
//! holding a pointer to every chunk would keep every chunk reachable, and memcheck's leak search
//! could never call one lost. Blocks are few (they double in size), so a lookup is a handful of
//! comparisons.
//!
//! The map is per thread because a tree is: a chunk of another thread's tree is not found, and
//! freeing it here is reported as an invalid pointer. When the thread's locals are being destroyed
//! the map may be gone; from then on the thread's pointers are trusted, as in a release build.
//!
//! A keeper block also remembers the chunks its last reset released ("ghosts"), so a write through a
//! pointer kept past the reset, found later in the block's free space, is reported with the
//! backtrace of the chunk it hit.

use core::cell::RefCell;
use std::collections::BTreeMap;

use crate::context::ContextHeader;

/// A chunk a reset released, remembered for reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ghost {
    /// Chunk start (header word).
    pub(crate) start: usize,
    /// Data address.
    pub(crate) data: usize,
    /// One past the chunk's capacity.
    pub(crate) end: usize,
    /// Requested size while it lived.
    pub(crate) requested: usize,
    /// Allocation stack id.
    pub(crate) alloc_stack: u32,
    /// Stack id of the reset that released it (or of its pfree).
    pub(crate) free_stack: u32,
}

/// What the registry knows of a block.
#[derive(Clone, Debug)]
pub(crate) struct BlockInfo {
    /// One past the block's last byte.
    pub(crate) end: usize,
    /// The owning context.
    pub(crate) ctx: *mut ContextHeader,
    /// Chunks the last reset released in this block.
    pub(crate) ghosts: Vec<Ghost>,
}

thread_local! {
    static BLOCKS: RefCell<BTreeMap<usize, BlockInfo>> = const { RefCell::new(BTreeMap::new()) };
}

/// Registers a block. Returns false when the registry is gone (thread exit).
pub(crate) fn insert(start: usize, end: usize, ctx: *mut ContextHeader) -> bool {
    BLOCKS
        .try_with(|b| {
            b.borrow_mut().insert(
                start,
                BlockInfo {
                    end,
                    ctx,
                    ghosts: Vec::new(),
                },
            );
        })
        .is_ok()
}

/// Forgets a block.
pub(crate) fn remove(start: usize) {
    let _ = BLOCKS.try_with(|b| b.borrow_mut().remove(&start));
}

/// Result of a lookup.
pub(crate) enum Lookup {
    /// The registry is gone (thread exit): trust the pointer.
    Unavailable,
    /// No block of this thread holds the address.
    NotFound,
    /// The block holding the address: its start, end and owner.
    Found {
        /// Block start.
        start: usize,
        /// Block end.
        end: usize,
        /// Owner.
        ctx: *mut ContextHeader,
    },
}

/// The block holding `addr`.
pub(crate) fn lookup(addr: usize) -> Lookup {
    BLOCKS
        .try_with(|b| {
            let b = b.borrow();
            match b.range(..=addr).next_back() {
                Some((&start, info)) if addr < info.end => Lookup::Found {
                    start,
                    end: info.end,
                    ctx: info.ctx,
                },
                _ => Lookup::NotFound,
            }
        })
        .unwrap_or(Lookup::Unavailable)
}

/// Updates the ghosts of a block in place (the vector is reused: no allocation per reset once it
/// has grown).
pub(crate) fn with_ghosts(start: usize, fill: impl FnOnce(&mut Vec<Ghost>)) {
    let _ = BLOCKS.try_with(|b| {
        if let Some(info) = b.borrow_mut().get_mut(&start) {
            fill(&mut info.ghosts);
        }
    });
}

/// The ghost covering `addr` in the block starting at `start`.
pub(crate) fn ghost_at(start: usize, addr: usize) -> Option<Ghost> {
    BLOCKS
        .try_with(|b| {
            b.borrow().get(&start).and_then(|info| {
                info.ghosts
                    .iter()
                    .find(|g| g.start <= addr && addr < g.end)
                    .copied()
            })
        })
        .ok()
        .flatten()
}
