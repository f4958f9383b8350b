//! The debug build's registry of block ranges, per thread.
//!
//! Before the debug build trusts a chunk header it must know the pointer lies inside one of its
//! own blocks; otherwise a foreign or wild pointer would make it read garbage as a header. It keeps
//! the address ranges of the calling thread's blocks in a vector sorted by start address — *blocks*,
//! not chunks: a map holding a pointer to every chunk would keep every chunk reachable, and
//! memcheck's leak search could never call one lost. Blocks are few (they double in size), so a
//! binary search is a handful of comparisons over one contiguous array, where a `BTreeMap` (the
//! first version) walked node to node — its look-up was about a tenth of a `pfree`+`palloc` step
//! in the churn benchmark's profile. Insertion and removal shift the entries after the one that
//! changes, which is cheap for the tens to thousands of blocks a thread holds (a block is taken
//! about once per doubling of a context's size, or once per chunk too large for a size class).
//!
//! The map is per thread because a tree is: a chunk of another thread's tree is not found, and
//! freeing it here is reported as an invalid pointer. When the thread's locals are being destroyed
//! the map may be gone; from then on the thread's pointers are trusted, as in a release build.
//!
//! A keeper block also remembers the chunks its last reset released ("ghosts"), so a write through a
//! pointer kept past the reset, found later in the block's free space, is reported with the
//! backtrace of the chunk it hit.

use core::cell::RefCell;

use crate::chunk::CHUNK_PREFIX;
use crate::context::ContextHeader;

/// A chunk a reset released, remembered for reports.
///
/// 24 bytes: the reset walk writes one for every chunk of the keeper block, on every reset of a
/// per-row context, so its size is part of the reset's cost. The data address and the end follow
/// from the start and the capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ghost {
    /// Chunk start (header word).
    pub(crate) start: usize,
    /// Capacity (a size class: at most a block's size, far below 4 GiB).
    pub(crate) cap: u32,
    /// Requested size while it lived (at most the capacity).
    pub(crate) requested: u32,
    /// Allocation stack id.
    pub(crate) alloc_stack: u32,
    /// Stack id of the reset that released it (or of its pfree).
    pub(crate) free_stack: u32,
}

impl Ghost {
    /// The chunk's data address.
    pub(crate) fn data(&self) -> usize {
        self.start + CHUNK_PREFIX
    }

    /// One past the chunk's capacity.
    pub(crate) fn end(&self) -> usize {
        self.data() + self.cap as usize
    }

    /// Whether `addr` lies in the chunk, header to capacity.
    pub(crate) fn covers(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end()
    }
}

const _: () = assert!(core::mem::size_of::<Ghost>() == 24);

/// What the registry knows of a block.
#[derive(Clone, Debug)]
pub(crate) struct BlockInfo {
    /// The block's first byte (its header).
    pub(crate) start: usize,
    /// One past the block's last byte.
    pub(crate) end: usize,
    /// The owning context.
    pub(crate) ctx: *mut ContextHeader,
    /// Chunks the last reset released in this block.
    pub(crate) ghosts: Vec<Ghost>,
}

thread_local! {
    /// This thread's blocks, sorted by `start`; blocks never overlap.
    static BLOCKS: RefCell<Vec<BlockInfo>> = const { RefCell::new(Vec::new()) };
}

/// Index of the entry starting at `start`, or where one would be inserted.
fn position(blocks: &[BlockInfo], start: usize) -> Result<usize, usize> {
    blocks.binary_search_by(|b| b.start.cmp(&start))
}

/// Registers a block. Returns false when the registry is gone (thread exit).
pub(crate) fn insert(start: usize, end: usize, ctx: *mut ContextHeader) -> bool {
    BLOCKS
        .try_with(|b| {
            let mut b = b.borrow_mut();
            let info = BlockInfo {
                start,
                end,
                ctx,
                ghosts: Vec::new(),
            };
            let i = match position(&b, start) {
                // The same address again (a block given back to the system without our hearing
                // of it cannot happen; a re-registration after `realloc` can): replace it.
                Ok(i) => {
                    b[i] = info;
                    i
                }
                Err(i) => {
                    b.insert(i, info);
                    i
                }
            };
            // Blocks never overlap: the new entry ends before its successor starts and starts
            // after its predecessor ends (only the neighbours: the rest was checked before).
            debug_assert!(i == 0 || b[i - 1].end <= b[i].start);
            debug_assert!(i + 1 == b.len() || b[i].end <= b[i + 1].start);
        })
        .is_ok()
}

/// Forgets a block.
pub(crate) fn remove(start: usize) {
    let _ = BLOCKS.try_with(|b| {
        let mut b = b.borrow_mut();
        if let Ok(i) = position(&b, start) {
            b.remove(i);
        }
    });
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
#[inline]
pub(crate) fn lookup(addr: usize) -> Lookup {
    BLOCKS
        .try_with(|b| {
            let b = b.borrow();
            // The last block starting at or before `addr`.
            let i = b.partition_point(|info| info.start <= addr);
            match i.checked_sub(1).map(|i| &b[i]) {
                Some(info) if addr < info.end => Lookup::Found {
                    start: info.start,
                    end: info.end,
                    ctx: info.ctx,
                },
                _ => Lookup::NotFound,
            }
        })
        .unwrap_or(Lookup::Unavailable)
}

/// Takes the ghosts of the block starting at `start` out of the registry, to be refilled and put
/// back with [`put_ghosts`] (so a walk may look blocks up meanwhile). The vector keeps its
/// capacity: no allocation per reset once it has grown.
pub(crate) fn take_ghosts(start: usize) -> Vec<Ghost> {
    BLOCKS
        .try_with(|b| {
            let mut b = b.borrow_mut();
            position(&b, start)
                .map(|i| core::mem::take(&mut b[i].ghosts))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Gives a block its ghosts back (see [`take_ghosts`]).
pub(crate) fn put_ghosts(start: usize, ghosts: Vec<Ghost>) {
    let _ = BLOCKS.try_with(|b| {
        let mut b = b.borrow_mut();
        if let Ok(i) = position(&b, start) {
            b[i].ghosts = ghosts;
        }
    });
}

/// The ghost covering `addr` in the block starting at `start`.
pub(crate) fn ghost_at(start: usize, addr: usize) -> Option<Ghost> {
    BLOCKS
        .try_with(|b| {
            let b = b.borrow();
            let i = position(&b, start).ok()?;
            b[i].ghosts.iter().find(|g| g.covers(addr)).copied()
        })
        .ok()
        .flatten()
}
