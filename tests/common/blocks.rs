//! Block helpers shared by the Generation tests (included with `#[path]`): fill a context block by
//! block, knowing which chunk went into which block, and free a block's chunks.
#![allow(dead_code)] // not every test file uses both

use memctx::MemoryContext;

/// Allocates chunks of `size` bytes until the context holds `blocks` blocks and the last one has
/// `extra` chunks; returns the chunks grouped by the block they were carved from (the count of
/// blocks grows exactly when a chunk needs a new one).
pub fn fill_blocks(
    ctx: MemoryContext,
    size: usize,
    blocks: u64,
    extra: usize,
) -> Vec<Vec<*mut u8>> {
    let mut groups: Vec<Vec<*mut u8>> = vec![Vec::new()];
    let mut nblocks = ctx.counters().total_nblocks;
    loop {
        let p = ctx.alloc(size).as_ptr();
        let now = ctx.counters().total_nblocks;
        if now != nblocks {
            groups.push(Vec::new());
            nblocks = now;
        }
        groups.last_mut().unwrap().push(p);
        if nblocks == blocks && groups.last().unwrap().len() == extra {
            return groups;
        }
    }
}

/// Frees `chunks`, live chunks of this thread, in order.
pub fn pfree_all(chunks: &[*mut u8]) {
    for &p in chunks {
        unsafe { memctx::pfree(p) };
    }
}
