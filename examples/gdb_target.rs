//! A target for the gdb walker (`valgrind/memctx_gdb.py`) and its test (`tests/gdb_walker.rs`).
//!
//! Run it as `gdb_target STATS_FILE`. It builds a known context tree on the main thread and on
//! two more threads, writes each thread's own stats (`format_stats` of its TopMemoryContext) to
//! `STATS_FILE`, prints `READY` on stdout and then waits, without touching any context, until its
//! stdin reaches end of file, so that gdb can attach (or `gcore` can write a core) and walk the
//! same trees from outside.
//!
//! The trees exercise everything the walker reads:
//!
//! - several levels of contexts, siblings in creation order (printed newest first);
//! - more than 100 children under one context (a summary line);
//! - identifiers: a plain one, one longer than 100 bytes with control characters (cut and
//!   cleaned), and a `dynahash` context (printed under its identifier);
//! - a few hundred chunks of many size classes, some of them freed (freelist chunks), blocks that
//!   filled up (their leftover space carved into freelist chunks), a chunk with a block of its
//!   own and a reallocated one, a deleted context (must not show), a reset context;
//! - every context kind: AllocSet (most), Bump (sort tuples, its free bytes the blocks' tails),
//!   Slab (freed slots) and Generation (a FIFO queue with freed chunks waiting for their blocks
//!   to empty);
//! - a second live thread with a tree of its own, and a third thread that has already exited
//!   (its tree stays in the registry, marked exited).
//!
//! `STATS_FILE` holds one section per thread, oldest thread first:
//!
//! ```text
//! thread "NAME" tid TID
//! <format_stats output, ending with the Grand total line>
//! ```
//!
//! and `STATS_FILE.limited` the same with `max_level` 1 and `max_children` 2 (what
//! `memctx-stats --max-level 1 --max-children 2` must print).

use std::io::{Read, Write};
use std::sync::mpsc;

use memctx::stats::PrintOptions;
use memctx::{BlockSizes, MemoryContext};

/// The OS thread id, as the registry records it.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The limits of the second stats file (`STATS_FILE.limited`).
const LIMITED: PrintOptions = PrintOptions {
    max_level: 1,
    max_children: 2,
};

/// This thread's sections of the two stats files: with the default limits and with [`LIMITED`].
fn own_stats() -> (String, String) {
    let name = std::thread::current().name().unwrap_or("").to_owned();
    let tree = MemoryContext::top().stats();
    let section = |opts: &PrintOptions| {
        format!(
            "thread \"{name}\" tid {}\n{}",
            gettid(),
            memctx::format_stats(&tree, opts)
        )
    };
    (section(&PrintOptions::default()), section(&LIMITED))
}

/// Allocates `n` chunks of varied sizes in `ctx` and frees every `free_every`-th one. Returns the
/// chunks kept.
fn churn(ctx: MemoryContext, n: usize, seed: usize, free_every: usize) -> Vec<*mut u8> {
    let mut kept = Vec::new();
    for i in 0..n {
        // Sizes from 1 to a few KiB, spread over the size classes.
        let size = 1 + ((i * 7919 + seed * 104_729) % 13) * ((i % 7) * 61 + 3);
        let p = ctx.alloc(size).as_ptr();
        // SAFETY: `p` has `size` writable bytes.
        unsafe { p.write_bytes((i % 251) as u8, size) };
        if free_every != 0 && i % free_every == 0 {
            // SAFETY: `p` is a live chunk of this thread.
            unsafe { memctx::pfree(p) };
        } else {
            kept.push(p);
        }
    }
    kept
}

/// The main thread's tree.
fn build_main_tree() {
    let top = MemoryContext::top();
    churn(top, 40, 1, 5);

    let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    churn(cache, 300, 2, 3);
    for (i, rel) in ["pg_class", "pg_attribute", "orders"].iter().enumerate() {
        let info = cache.new_child("relation info", BlockSizes::SMALL);
        info.set_ident(rel);
        churn(info, 20 + 10 * i, 3 + i, 4);
    }
    let hash = cache.new_child("dynahash", BlockSizes::SMALL);
    hash.set_ident("LOCALLOCK hash");
    churn(hash, 30, 7, 0);

    let _transaction = top.new_child("TopTransactionContext", BlockSizes::DEFAULT);

    // More than 100 children: the last ones are summed up in one "N more child contexts" line.
    let plans = top.new_child("PlanCache", BlockSizes::SMALL);
    for i in 0..104 {
        let plan = plans.new_child("CachedPlanSource", BlockSizes::SMALL);
        plan.set_ident(&format!("SELECT {i}"));
        if i % 10 == 0 {
            plan.new_child("CachedPlan", BlockSizes::SMALL);
        }
        churn(plan, 3, i, 0);
    }

    let message = top.new_child("MessageContext", BlockSizes::DEFAULT);
    // A query string longer than 100 bytes, with a newline and a tab: cut and cleaned.
    message.set_ident(
        "SELECT customer,\n\tsum(amount) FROM orders WHERE placed_at > now() - interval '1 day' \
         GROUP BY customer ORDER BY 2 DESC",
    );
    churn(message, 50, 8, 2);
    // A chunk above the chunk limit: a block of its own.
    let big = message.alloc(100_000).as_ptr();
    // SAFETY: `big` has 100000 writable bytes.
    unsafe { big.write_bytes(1, 100_000) };
    // Another one, grown by realloc.
    let grown = message.alloc(20_000).as_ptr();
    // SAFETY: `grown` is a live chunk of this thread; the result replaces it.
    let grown = unsafe { memctx::repalloc(grown, 50_000) };
    // SAFETY: `grown` has 50000 writable bytes.
    unsafe { grown.write_bytes(2, 50_000) };

    let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
    let executor = portal.new_child("ExecutorState", BlockSizes::DEFAULT);
    churn(executor, 200, 9, 7);
    let per_row = executor.new_child("ExprContext", BlockSizes::DEFAULT);
    for row in 0..50 {
        churn(per_row, 10, row, 0);
        per_row.reset();
    }
    churn(per_row, 5, 11, 0);
    // A Bump context (sort tuples, as PostgreSQL 17's tuplesort): no freelists, its free bytes
    // are its blocks' unused tails, one of them a block of its own.
    let tuples = executor.new_bump_child("Caller tuples", BlockSizes::DEFAULT);
    for i in 0..300 {
        tuples.alloc(24 + i % 40);
    }
    tuples.alloc(20_000);
    // A Slab context (the reorder buffer's changes): slots freed onto their blocks' free lists,
    // never-used slots in a block's tail, and a full block.
    let changes = executor.new_slab_child("Change", 8192, 72);
    let slots: Vec<*mut u8> = (0..250).map(|_| changes.alloc(72).as_ptr()).collect();
    for &p in slots.iter().step_by(3) {
        // SAFETY: a live chunk of `changes`, freed once.
        unsafe { memctx::pfree(p) };
    }

    // Deleted before the dump: must not appear.
    let gone = top.new_child("deleted context", BlockSizes::DEFAULT);
    churn(gone, 10, 12, 0);
    gone.delete();
}

/// The second thread's tree.
fn build_worker_tree() {
    let top = MemoryContext::top();
    let session = top.new_child("WorkerSession", BlockSizes::START_SMALL);
    session.set_ident("worker 1");
    churn(session, 150, 21, 4);
    let scratch = session.new_child("Scratch", BlockSizes::SMALL);
    churn(scratch, 60, 22, 2);
    let big = session.alloc(9000).as_ptr();
    // SAFETY: `big` has 9000 writable bytes.
    unsafe { big.write_bytes(3, 9000) };
    fifo(session);
}

/// A Generation context used as a FIFO queue (as PostgreSQL's reorder buffer uses one): chunks
/// allocated in order and freed oldest first, so some blocks emptied and were reused or given
/// back, and the live ones hold freed chunks waiting for their block to empty (free chunks whose
/// bytes stay used); one chunk has a block of its own.
fn fifo(parent: MemoryContext) {
    let queue = parent.new_generation_child("ReorderBuffer", BlockSizes::DEFAULT);
    let mut live = std::collections::VecDeque::new();
    for i in 0..3000usize {
        let size = 16 + (i * 37) % 500;
        let p = queue.alloc(size).as_ptr();
        // SAFETY: `p` has `size` writable bytes.
        unsafe { p.write_bytes(4, size) };
        live.push_back(p);
        if live.len() > 700 {
            // SAFETY: the oldest live chunk of this thread's queue.
            unsafe { memctx::pfree(live.pop_front().expect("non-empty")) };
        }
    }
    queue.alloc(200_000);
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: gdb_target STATS_FILE (then close stdin to exit)");

    // A thread that is gone before the dump; its tree stays in the registry, marked exited.
    let exited = std::thread::Builder::new()
        .name("short-lived".into())
        .spawn(|| {
            let top = MemoryContext::top();
            let job = top.new_child("Job", BlockSizes::SMALL);
            churn(job, 25, 31, 3);
            own_stats()
        })
        .expect("spawn")
        .join()
        .expect("join");

    build_main_tree();

    // A thread that stays alive, blocked, while the debugger looks.
    let (stats_tx, stats_rx) = mpsc::channel();
    let (quit_tx, quit_rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("worker-1".into())
        .spawn(move || {
            build_worker_tree();
            stats_tx.send(own_stats()).expect("send");
            // Keep the tree (and the thread) alive until told to go.
            let _ = quit_rx.recv();
        })
        .expect("spawn");
    let worker_stats = stats_rx.recv().expect("worker stats");

    // Oldest thread first, as the walker prints them.
    let main_stats = own_stats();
    let sections = [exited, main_stats, worker_stats];
    let default: String = sections.iter().map(|s| s.0.as_str()).collect();
    let limited: String = sections.iter().map(|s| s.1.as_str()).collect();
    std::fs::write(&path, default).expect("write the stats file");
    std::fs::write(format!("{path}.limited"), limited).expect("write the limited stats file");

    println!("READY");
    std::io::stdout().flush().expect("flush");

    // Wait, touching no context, until stdin is closed.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);

    drop(quit_tx);
    worker.join().expect("join worker");
}
