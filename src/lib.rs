//! # memctx — PostgreSQL's memory contexts for Rust
//!
//! A tree of memory contexts, as in PostgreSQL's `mmgr`: every thread has a TopMemoryContext, code
//! creates child contexts for work with a lifetime (a query, a request, a row), allocates in them
//! freely, and frees whole subtrees at once with a reset or a delete. The AllocSet context kind
//! carves chunks from blocks with power-of-two freelists, so allocation is a few instructions and a
//! reset costs per block, not per chunk.
//!
//! Two APIs share one allocator:
//! - the **raw API** ([`palloc`], [`palloc0`], [`pfree`], [`repalloc`], ...) is PostgreSQL's, over
//!   raw pointers, for unsafe code and FFI;
//! - the **safe API** implements allocator-api2's `Allocator` on a [`PinnedContext`], so
//!   allocator-api2's `Vec` and `Box` and hashbrown's `HashMap` live in a context, with
//!   [`PString`] for strings and [`MemoryContext::scope`] for per-row work. A pinned context cannot
//!   be reset or deleted under the collections that borrow it.
//!
//! [`MemoryContext::stats`] gives the tree's accounting, printed in PostgreSQL's
//! `MemoryContextStats` format by [`print_stats`] and exported as JSON by [`stats::to_json`].
//!
//! The cargo feature `debug-contexts` turns the same allocator into a debug build that surrounds
//! chunks with redzones, fills fresh and freed memory with patterns, and checks them.
//!
//! ## Example
//! ```
//! use memctx::{BlockSizes, MemoryContext};
//!
//! let top = MemoryContext::top();
//! let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
//! let executor = portal.new_child("ExecutorState", BlockSizes::DEFAULT);
//! let per_row = executor.new_child("ExprContext", BlockSizes::DEFAULT);
//! for _row in 0..1000 {
//!     let _g = per_row.switch_to();
//!     let tuple = memctx::palloc(64); // freed wholesale below
//!     unsafe { tuple.write_bytes(0, 64) };
//!     drop(_g);
//!     per_row.reset();
//! }
//! let text = memctx::format_stats(&top.stats(), &memctx::stats::PrintOptions::default());
//! assert!(text.contains("ExprContext: 8192 total in 1 blocks"));
//! portal.delete(); // the whole subtree
//! ```
//!
//! See `INTERNALS.md` in the repository for the design of the chunk and block layout.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod alloc_api;
mod chunk;
mod context;
pub mod dump;
mod error;
mod hooks;
mod kinds;
#[cfg(feature = "cli")]
pub mod leak;
mod raw;
pub mod registry;
pub mod snapshot;
pub mod stats;

#[cfg(feature = "debug-contexts")]
pub mod debug;

pub use alloc_api::{PString, PinnedContext};
pub use context::{switch_to, MemoryContext, SwitchGuard, LAYOUT_VERSION};
pub use error::ContextError;
pub use kinds::aset::BlockSizes;
pub use kinds::slab::MAX_EMPTY_BLOCKS as SLAB_MAX_EMPTY_BLOCKS;
pub use raw::{
    chunk_context, chunk_space, palloc, palloc0, palloc_aligned, palloc_extended, pfree, pstrdup,
    repalloc, repalloc_extended, repalloc_huge, AllocFlags, MAX_ALIGNMENT, MAX_ALLOC_HUGE_SIZE,
    MAX_ALLOC_SIZE,
};
pub use snapshot::{Site, SiteFrame};
pub use stats::format_stats;

/// Bytes of the chunk header in front of every chunk (8, as in PostgreSQL; the debug build adds
/// its record and redzone after it, see [`chunk_prefix_size`]).
pub const CHUNK_HEADER_SIZE: usize = chunk::CHUNK_HEADER_SIZE;

/// Bytes between a chunk's start and its data in this build: the header alone in a release build,
/// header, debug record and redzone in the debug build.
pub const fn chunk_prefix_size() -> usize {
    chunk::CHUNK_PREFIX
}

/// Prints the stats tree of `ctx` to stderr in PostgreSQL's `MemoryContextStats` format.
///
/// # Panics
/// If `ctx` was deleted.
pub fn print_stats(ctx: MemoryContext) {
    eprint!(
        "{}",
        stats::format_stats(&ctx.stats(), &stats::PrintOptions::default())
    );
}
