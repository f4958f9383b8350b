//! Per-site attribution: the live chunks of a context grouped by allocation site, as
//! LeakSanitizer groups leaked objects ("N bytes in M objects allocated from: ...").
//!
//! Every live chunk of the debug build carries a record with its requested size and the id of its
//! allocation backtrace in the stack depot. Walking a context's blocks and adding up the records by
//! stack id tells which line of code holds how much of the context's memory — the step after the
//! snapshot diff has named the context that grows. The walk is the kind's block walk
//! (`kinds::walk_block`), the one the verification walk (`verify.rs`) uses, and never writes; it
//! costs time proportional to the chunks in the context, plus one symbolisation per distinct site
//! when the frames are resolved.
//!
//! Under Valgrind or ASan, chunk headers and records are closed to the program; the block walk
//! peeks at each header word, this walk opens each record around its read, and neither touches a
//! chunk's data.
//!
//! The API is [`crate::MemoryContext::sites`] (which exists in a release build too and returns an
//! empty list there), [`print_sites`] for LeakSanitizer-style text on stderr, and the `sites` of a
//! snapshot (`crate::dump`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use core::ops::ControlFlow;

use crate::chunk::CHUNK_HEADER_SIZE;
use crate::context::ContextHeader;
use crate::kinds;
use crate::snapshot::{Site, SiteFrame};
use crate::MemoryContext;

use super::layout::{record_ptr, RECORD_SIZE, STATE_LIVE};
use super::sanitizer;
use super::stack::{self, StackId};

/// Per-stack totals of live chunks: stack id → (count, bytes).
pub(crate) type SiteTotals = HashMap<u32, (u64, u64)>;

/// Adds the live chunks of `ctx` (this context only) to `acc`.
///
/// # Safety
/// `ctx` must be a live context of the calling thread, not in the middle of an allocator operation
/// that leaves a block half-carved (every safe point of `crate::dump` qualifies).
pub(crate) unsafe fn collect(ctx: *mut ContextHeader, acc: &mut SiteTotals) {
    // SAFETY: walking the context's own block list with its kind's block walk, which decodes every
    // chunk's header (offset, kind, extent inside the block) before the chunk's record is read. A
    // header or record that does not decode ends the walk of its block (the verification walk
    // reports such damage; attribution only skips it).
    unsafe {
        let mut block = (*ctx).blocks;
        while !block.is_null() {
            let (free, end) = ((*block).free_ptr, (*block).end_ptr);
            if free >= kinds::first_chunk_of((*ctx).kind, block) && free <= end {
                let _ = kinds::walk_block((*ctx).kind, block, |w| {
                    // Under Valgrind or ASan the record is closed to everyone but the allocator:
                    // open it around the read, as the verification walk does.
                    let meta = w.start.add(CHUNK_HEADER_SIZE);
                    sanitizer::open(meta, RECORD_SIZE);
                    let rec = *record_ptr(w.data);
                    sanitizer::close(meta, RECORD_SIZE);
                    if rec.is_valid() && rec.state == STATE_LIVE {
                        let e = acc.entry(rec.alloc_stack).or_insert((0, 0));
                        e.0 += 1;
                        e.1 += rec.requested;
                    }
                    ControlFlow::Continue(())
                });
            }
            block = (*block).next;
        }
    }
}

/// Resolved user frames per stack id. Stack ids are never reused (the depot only grows), so an
/// id's frames never change; symbolising is slow, so each id is resolved once per process.
static FRAMES: Mutex<Option<HashMap<u32, Arc<[SiteFrame]>>>> = Mutex::new(None);

/// The user frames of stack `id`, allocator frames trimmed (empty for id 0).
pub(crate) fn frames(id: u32) -> Arc<[SiteFrame]> {
    if id == 0 {
        return Arc::from(Vec::new());
    }
    if let Some(f) = FRAMES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&id))
    {
        return Arc::clone(f);
    }
    // Resolved outside the lock: symbolising may take long (the first call loads debug info).
    let resolved: Arc<[SiteFrame]> = stack::user_frames(stack::resolve(StackId::from_raw(id)))
        .into_iter()
        .map(|f| SiteFrame {
            function: f.function,
            file: f.file,
            line: f.line,
        })
        .collect();
    FRAMES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(id, Arc::clone(&resolved));
    resolved
}

/// Turns per-stack totals into sites, largest first (by bytes, then count, then stack id, so the
/// order is deterministic), all of them.
///
/// Stacks are merged by their *user* frames: one line of code reached through different paths
/// inside the allocator (a chunk carved from a block, or taken from a freelist) has several stack
/// ids but is one site. The merged site keeps the id of its largest stack.
pub(crate) fn merge(acc: &SiteTotals) -> Vec<Site> {
    let mut ids: Vec<(u32, u64, u64)> = acc.iter().map(|(&id, &(c, b))| (id, c, b)).collect();
    // Largest stack first, so each merged site's id is its largest stack's.
    ids.sort_unstable_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
    let mut by_frames: HashMap<Arc<[SiteFrame]>, usize> = HashMap::new();
    let mut out: Vec<Site> = Vec::new();
    for (id, count, bytes) in ids {
        let f = frames(id);
        match by_frames.get(&f) {
            Some(&i) => {
                out[i].count += count;
                out[i].bytes += bytes;
            }
            None => {
                by_frames.insert(Arc::clone(&f), out.len());
                out.push(Site {
                    count,
                    bytes,
                    frames: f.to_vec(),
                    stack_id: id,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    out
}

/// The live chunks of `ctx` (with its descendants when `recursive`) grouped by site, unresolved.
///
/// # Safety
/// As [`collect`].
pub(crate) unsafe fn raw_sites(ctx: MemoryContext, recursive: bool) -> SiteTotals {
    let mut acc = SiteTotals::new();
    let mut stack = vec![ctx];
    while let Some(c) = stack.pop() {
        // SAFETY: `c` is a live context of this thread (reached from a live handle).
        unsafe { collect(c.raw(), &mut acc) };
        if recursive {
            stack.extend(c.children());
        }
    }
    acc
}

/// Prints the sites of `ctx` (with its descendants when `recursive`) to stderr, largest first, in
/// LeakSanitizer's style:
///
/// ```text
/// Live chunks of "CacheMemoryContext" by allocation site (top 10 of 3 sites):
/// 9600 bytes in 100 objects allocated from:
///     #0 demo::run_query at examples/demo.rs:201
///     #1 demo::main at examples/demo.rs:95
/// ```
///
/// # Panics
/// If the context was deleted.
pub fn print_sites(ctx: MemoryContext, recursive: bool, top_n: usize) {
    eprint!("{}", format_sites(ctx, recursive, top_n));
}

/// The text [`print_sites`] prints.
///
/// # Panics
/// If the context was deleted.
pub fn format_sites(ctx: MemoryContext, recursive: bool, top_n: usize) -> String {
    let sites = ctx.sites(recursive, usize::MAX);
    let mut out = format!(
        "Live chunks of \"{}\"{} by allocation site (top {top_n} of {} sites):\n",
        ctx.name(),
        if recursive {
            " and its descendants"
        } else {
            ""
        },
        sites.len()
    );
    for site in sites.iter().take(top_n) {
        out.push_str(&site.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_without_backtraces_merge_and_order_by_bytes() {
        // Id 0 (no backtrace) resolves to no frames without touching the depot.
        let mut acc = SiteTotals::new();
        acc.insert(0, (5, 100));
        let v = merge(&acc);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].count, v[0].bytes, v[0].stack_id), (5, 100, 0));
        assert!(v[0].frames.is_empty());
    }
}
