//! Per-site attribution (debug build): live chunks grouped by allocation backtrace, as
//! LeakSanitizer groups leaks — from the API, as text, and inside snapshots.
//!
//! In a release build `MemoryContext::sites` exists and returns nothing; the last test checks that.

use memctx::{BlockSizes, MemoryContext};

/// Backtraces are switched off process-wide by one test: the tests of this file take turns.
#[cfg(feature = "debug-contexts")]
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(feature = "debug-contexts")]
fn serial() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocates `n` chunks of `size` bytes in `ctx`, all from one line (one site), and returns them
/// with that line.
#[cfg(feature = "debug-contexts")]
#[inline(never)]
fn alloc_many(ctx: MemoryContext, n: usize, size: usize) -> (Vec<*mut u8>, u32) {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(ctx.alloc(size).as_ptr()); // the site
    }
    (v, line!() - 2)
}

#[cfg(feature = "debug-contexts")]
#[test]
fn top_site_names_the_allocating_function_file_and_line() {
    let _l = serial();
    let ctx = MemoryContext::top().new_child("RelCache", BlockSizes::DEFAULT);
    let mut big = Vec::new();
    let big_line = line!() + 2;
    for _ in 0..12 {
        big.push(ctx.alloc(100).as_ptr());
    }
    // Two of them freed: they no longer count.
    // SAFETY: live chunks of this thread, freed once.
    unsafe {
        memctx::pfree(big.pop().unwrap());
        memctx::pfree(big.pop().unwrap());
    }
    let (_small, small_line) = alloc_many(ctx, 5, 30);

    let sites = ctx.sites(false, 10);
    assert_eq!(sites.len(), 2, "{sites:#?}");
    let top = &sites[0];
    assert_eq!((top.count, top.bytes), (10, 1000));
    assert_ne!(top.stack_id, 0);
    let f = &top.frames[0];
    assert!(
        f.function
            .as_deref()
            .is_some_and(|n| n.ends_with("top_site_names_the_allocating_function_file_and_line")),
        "{top}"
    );
    assert!(
        f.file
            .as_deref()
            .is_some_and(|p| p.ends_with("tests/sites.rs")),
        "{top}"
    );
    assert_eq!(f.line, Some(big_line), "{top}");
    let text = top.to_string();
    assert!(
        text.starts_with("1000 bytes in 10 objects allocated from:\n    #0 "),
        "{text}"
    );
    assert!(
        text.contains(&format!("tests/sites.rs:{big_line}")),
        "{text}"
    );

    let second = &sites[1];
    assert_eq!((second.count, second.bytes), (5, 150));
    let f = &second.frames[0];
    assert!(
        f.function
            .as_deref()
            .is_some_and(|n| n.ends_with("alloc_many")),
        "{second}"
    );
    assert_eq!(f.line, Some(small_line), "{second}");
    // The caller is the next frame.
    assert!(second.frames[1]
        .function
        .as_deref()
        .is_some_and(|n| n.ends_with("top_site_names_the_allocating_function_file_and_line")));

    // top_n cuts the list.
    assert_eq!(ctx.sites(false, 1), sites[..1]);
    ctx.delete();
}

#[cfg(feature = "debug-contexts")]
#[test]
fn one_line_is_one_site_whichever_path_the_allocator_took() {
    let _l = serial();
    let ctx = MemoryContext::top().new_child("Reuse", BlockSizes::DEFAULT);
    let mut line = 0;
    for round in 0..2 {
        // One call site. The first round's chunks are carved from the block; half of them are
        // freed, and the second round takes those from the freelist: the allocator's own frames
        // differ, the user's do not.
        let (chunks, l) = alloc_many(ctx, 10, 100);
        line = l;
        if round == 0 {
            for p in &chunks[..5] {
                // SAFETY: live chunks of this thread, freed once.
                unsafe { memctx::pfree(*p) };
            }
        }
    }
    let sites = ctx.sites(false, 10);
    assert_eq!(sites.len(), 1, "{sites:#?}");
    assert_eq!((sites[0].count, sites[0].bytes), (15, 1500));
    assert_eq!(sites[0].frames[0].line, Some(line));
    ctx.delete();
}

#[cfg(feature = "debug-contexts")]
#[test]
fn recursive_attribution_covers_the_subtree() {
    let _l = serial();
    let cache = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let entry = cache.new_child("relation info", BlockSizes::SMALL);
    let (_a, line) = alloc_many(entry, 7, 40);
    // A chunk with a block of its own counts too.
    let (_b, _) = alloc_many(cache, 1, 100_000);

    assert_eq!(cache.sites(false, 10).len(), 1);
    let own = &cache.sites(false, 10)[0];
    assert_eq!((own.count, own.bytes), (1, 100_000));

    let all = cache.sites(true, 10);
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].count, all[0].bytes), (1, 100_000));
    assert_eq!((all[1].count, all[1].bytes), (7, 280));
    assert_eq!(all[1].frames[0].line, Some(line));

    let text = memctx::debug::format_sites(cache, true, 10);
    assert!(
        text.starts_with(
            "Live chunks of \"CacheMemoryContext\" and its descendants by allocation site \
             (top 10 of 2 sites):\n100000 bytes in 1 objects allocated from:\n"
        ),
        "{text}"
    );

    // After a reset nothing is live.
    cache.reset();
    assert!(cache.sites(true, 10).is_empty());
    cache.delete();
}

#[cfg(feature = "debug-contexts")]
#[test]
fn snapshots_carry_site_rows_per_context() {
    let _l = serial();
    let cache = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let (_p, line) = alloc_many(cache, 25, 64);
    let snap = memctx::dump::snapshot();
    let t = &snap.threads[0];
    let rows: Vec<_> = t
        .sites
        .iter()
        .filter(|s| s.context_id == cache.id())
        .collect();
    assert_eq!(rows.len(), 1, "{:#?}", t.sites);
    assert_eq!((rows[0].count, rows[0].bytes), (25, 1600));
    assert!(
        rows[0].frames[0].contains("alloc_many at ")
            && rows[0].frames[0].ends_with(&format!("tests/sites.rs:{line}")),
        "{:?}",
        rows[0].frames
    );
    // At most the configured number of sites per context.
    let (_q, _) = alloc_many(cache, 1, 8);
    let snap = memctx::dump::snapshot_with_sites(1);
    let n = snap.threads[0]
        .sites
        .iter()
        .filter(|s| s.context_id == cache.id())
        .count();
    assert_eq!(n, 1);
    cache.delete();
}

#[cfg(feature = "debug-contexts")]
#[test]
fn without_backtraces_chunks_group_under_one_unknown_site() {
    let _l = serial();
    memctx::debug::set_backtraces(false);
    let ctx = MemoryContext::top().new_child("NoTraces", BlockSizes::DEFAULT);
    let (_p, _) = alloc_many(ctx, 3, 10);
    ctx.alloc(20);
    memctx::debug::set_backtraces(true);
    let sites = ctx.sites(false, 10);
    assert_eq!(sites.len(), 1);
    assert_eq!(
        (sites[0].count, sites[0].bytes, sites[0].stack_id),
        (4, 50, 0)
    );
    assert!(sites[0].frames.is_empty());
    assert!(sites[0].to_string().contains("(no backtrace captured)"));
    ctx.delete();
}

#[cfg(not(feature = "debug-contexts"))]
#[test]
fn a_release_build_has_no_sites() {
    let ctx = MemoryContext::top().new_child("Release", BlockSizes::DEFAULT);
    ctx.alloc(100);
    assert!(ctx.sites(true, 10).is_empty());
    assert!(memctx::dump::snapshot().threads[0].sites.is_empty());
    ctx.delete();
}
