//! `per-row-bump`: the Bump kind's workload — `per-row`'s rows (16 allocations of 8..=128 bytes, a
//! byte written into each, then the end of the row) with memctx in a Bump context: `ctx.alloc`
//! (the context handle's alloc, the call a user makes) for each allocation and `ctx.reset()` per
//! row, against bumpalo's `alloc_layout` and `Bump::reset`, the same calls on the arena built for
//! it. Time per allocation, the end of the row amortised over its 16 allocations. glibc and
//! mimalloc (allocate 16, free 16) are shown for information. The stand-ins of `bounds` run on it
//! too, in Bump contexts.

use memctx::{BlockSizes, MemoryContext};

use super::{row_peers, row_sizes, run_workload, Config, Contender, Results, RowMemctx};

/// Rows per batch: as `per-row`'s.
const ROWS: usize = 1 << 11;

pub(super) fn bench_per_row_bump(cfg: &Config) -> Results {
    let sizes = row_sizes(cfg.batch(ROWS));
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    if cfg.runs_memctx() {
        cs.push(Box::new(RowMemctx {
            ctx: MemoryContext::top().new_bump_child("per-row-bump", BlockSizes::DEFAULT),
            sizes: &sizes,
        }));
    }
    row_peers(cfg, &sizes, &mut cs);
    run_workload(
        cfg,
        "per-row-bump",
        "ns per allocation, row end amortised",
        cs,
    )
}
