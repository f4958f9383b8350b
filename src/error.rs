//! Errors of the context tree and of allocation.
//!
//! PostgreSQL reports these with `ereport(ERROR)` and a longjmp; the raw API here panics with the
//! same wording (so a log reads alike), the `try_` tree operations return [`ContextError`], and the
//! safe allocator API returns allocator-api2's `AllocError`.

use core::fmt;

/// Why a tree operation on a context was refused.
///
/// Each refusal leaves the tree and every chunk exactly as they were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextError {
    /// The operation would free memory that safe code still borrows: a [`crate::PinnedContext`]
    /// (or a per-row scope) pins `pinned`, which lies in the subtree the operation frees.
    Pinned {
        /// The context asked to operate on.
        context: &'static str,
        /// The pinned context inside its subtree.
        pinned: &'static str,
        /// Number of live pins on `pinned`.
        pins: u32,
    },
    /// The context, or an ancestor, is in the middle of its own reset or delete: an operation from
    /// a reset callback may not change the subtree under the operation that runs the callback.
    Busy {
        /// The context being reset or deleted.
        context: &'static str,
    },
    /// TopMemoryContext cannot be deleted, re-parented, or have its subtree freed under it.
    IsTop,
    /// The operation would delete CurrentMemoryContext (switch away from it first).
    ContainsCurrent {
        /// The context asked to operate on.
        context: &'static str,
        /// The current context.
        current: &'static str,
    },
    /// `set_parent` would make a context its own ancestor.
    WouldCycle {
        /// The context being moved.
        context: &'static str,
        /// The requested new parent, which lies in its subtree.
        new_parent: &'static str,
    },
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::Pinned {
                context,
                pinned,
                pins,
            } => write!(
                f,
                "cannot free memory context \"{context}\": context \"{pinned}\" is pinned by {pins} \
                 live borrow(s) of the safe API"
            ),
            ContextError::Busy { context } => write!(
                f,
                "memory context \"{context}\" is being reset or deleted (called from its callback)"
            ),
            ContextError::IsTop => write!(f, "TopMemoryContext cannot be deleted or moved"),
            ContextError::ContainsCurrent { context, current } => write!(
                f,
                "cannot free memory context \"{context}\": CurrentMemoryContext \"{current}\" \
                 would be deleted (switch away from it first)"
            ),
            ContextError::WouldCycle {
                context,
                new_parent,
            } => write!(
                f,
                "cannot move memory context \"{context}\" under \"{new_parent}\", which is inside \
                 its own subtree"
            ),
        }
    }
}

impl std::error::Error for ContextError {}

/// The message PostgreSQL gives for a size beyond the limit.
pub(crate) fn invalid_size_message(size: usize) -> String {
    format!("invalid memory alloc request size {size}")
}

/// The message PostgreSQL gives when the system allocator fails.
pub(crate) fn out_of_memory_message(size: usize, context: &str) -> String {
    format!("out of memory: Failed on request of size {size} in memory context \"{context}\".")
}
