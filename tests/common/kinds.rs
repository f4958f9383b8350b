//! The context kinds as the tests see them: how to create one and which of its chunks' operations
//! apply. Included (`#[path]`) by every test that runs over a mix of kinds — the operation
//! language (`ops.rs`, hence the model, the injected bugs, the fuzz target and its regressions),
//! the thread stress, the per-kind bug reports and the gdb walker's test — so a kind added to
//! memctx is added to all of them here. Depends on nothing but memctx.
#![allow(dead_code)]

use memctx::{BlockSizes, MemoryContext};

/// A context kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL's general-purpose kind.
    AllocSet,
    /// Freed only all at once (reset, delete); no chunk header in a release build.
    Bump,
}

/// Every kind, in the order selectors pick them (`ALL[sel % ALL.len()]`).
pub const ALL: &[Kind] = &[Kind::AllocSet, Kind::Bump];

impl Kind {
    /// The kind selector `sel` picks.
    pub fn pick(sel: u8) -> Kind {
        ALL[usize::from(sel) % ALL.len()]
    }

    /// The kind's name in stats and snapshots (`type` of `pg_backend_memory_contexts`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::AllocSet => "AllocSet",
            Kind::Bump => "Bump",
        }
    }

    /// Creates a child of `parent` of this kind.
    pub fn create(
        self,
        parent: MemoryContext,
        name: &'static str,
        sizes: BlockSizes,
    ) -> MemoryContext {
        match self {
            Kind::AllocSet => parent.new_child(name, sizes),
            Kind::Bump => parent.new_bump_child(name, sizes),
        }
    }

    /// Whether `pfree`, `repalloc`, `chunk_context` and `chunk_space` apply to its chunks. Bump's
    /// do not: a release build's Bump chunk has no header (undefined behaviour, as in
    /// PostgreSQL), and the debug build refuses them; its memory comes back at reset or delete,
    /// or, for the last allocation only, through the safe API's `deallocate`.
    pub fn frees_chunks(self) -> bool {
        match self {
            Kind::AllocSet => true,
            Kind::Bump => false,
        }
    }

    /// The one request size the kind serves, for a kind with fixed-size chunks (a request of
    /// another size is an error there); `None` when any size goes.
    pub fn fixed_size(self) -> Option<usize> {
        match self {
            Kind::AllocSet | Kind::Bump => None,
        }
    }
}
