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
    /// Chunks freed in roughly the order they were allocated; a block whose chunks are all freed
    /// is reused or given back.
    Generation,
    /// Freed only all at once (reset, delete); no chunk header in a release build.
    Bump,
    /// Chunks of one size per context ([`Kind::fixed_size`]).
    Slab,
}

/// Every kind, in the order selectors pick them (`ALL[sel % ALL.len()]`).
pub const ALL: &[Kind] = &[Kind::AllocSet, Kind::Generation, Kind::Bump, Kind::Slab];

impl Kind {
    /// The kind selector `sel` picks.
    pub fn pick(sel: u8) -> Kind {
        ALL[usize::from(sel) % ALL.len()]
    }

    /// The kind's name in stats and snapshots (`type` of `pg_backend_memory_contexts`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::AllocSet => "AllocSet",
            Kind::Generation => "Generation",
            Kind::Bump => "Bump",
            Kind::Slab => "Slab",
        }
    }

    /// Whether a free chunk's bytes are free bytes in the kind's stats: an AllocSet's freelist
    /// chunks are; a Generation's freed chunks stay used until their whole block is empty (as
    /// PostgreSQL's `GenerationStats` counts them); Bump has no free chunks.
    pub fn free_chunks_are_free_bytes(self) -> bool {
        match self {
            Kind::AllocSet | Kind::Bump | Kind::Slab => true,
            Kind::Generation => false,
        }
    }

    /// Whether a free can release its chunk's block's space, as a reset does: a Generation or
    /// Slab block whose chunks are all freed is rewound (kept) or given back.
    pub fn free_releases_blocks(self) -> bool {
        match self {
            Kind::AllocSet | Kind::Bump => false,
            Kind::Generation | Kind::Slab => true,
        }
    }

    /// The one request size a context of this kind created with the preset `sizes` serves (a
    /// request of another size is an error there), for a kind with fixed-size chunks (Slab: 64
    /// bytes for `DEFAULT`, 24 for `SMALL`, 200 for `START_SMALL`); `None` when any size goes.
    pub fn fixed_size(self, sizes: BlockSizes) -> Option<usize> {
        match self {
            Kind::AllocSet | Kind::Generation | Kind::Bump => None,
            Kind::Slab if sizes == BlockSizes::DEFAULT => Some(64),
            Kind::Slab if sizes == BlockSizes::SMALL => Some(24),
            Kind::Slab => Some(200),
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
            Kind::Generation => parent.new_generation_child(name, sizes),
            Kind::Bump => parent.new_bump_child(name, sizes),
            Kind::Slab => {
                let chunk = self.fixed_size(sizes).expect("Slab has a chunk size");
                parent.new_slab_child(name, sizes.max_block_size.min(8192), chunk)
            }
        }
    }

    /// Whether `pfree`, `repalloc`, `chunk_context` and `chunk_space` apply to its chunks. Bump's
    /// do not: a release build's Bump chunk has no header (undefined behaviour, as in
    /// PostgreSQL), and the debug build refuses them; its memory comes back at reset or delete,
    /// or, for the last allocation only, through the safe API's `deallocate`.
    pub fn frees_chunks(self) -> bool {
        match self {
            Kind::AllocSet | Kind::Generation | Kind::Slab => true,
            Kind::Bump => false,
        }
    }
}
