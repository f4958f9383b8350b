//! Threads: many threads, each with its own context tree of contexts of every kind
//! (`common/kinds.rs`: a worker's cache, per-row and scratch contexts each take their turn through
//! the kinds), churning and resetting at the same time,
//! with the process-wide structures under contention — the debugger registry every tree is
//! entered in, the dumper that asks every thread for a snapshot at its safe points, and, in the
//! debug build, the stack depot that interns every allocation's backtrace and the per-thread
//! report lists.
//!
//! What crosses threads here — and what cannot. A tree belongs to its thread: `MemoryContext` and
//! `PinnedContext` are neither `Send` nor `Sync` (the compile-fail tests in `tests/ui` prove it),
//! so no context type is ever sent to or shared with another thread, and no API allows it. What
//! crosses is plain data copied out of a tree: `StatsNode` snapshots (owned `String`s and
//! numbers), checksums of chunk contents, counts, `Snapshot`s read back from the dumper's files,
//! and, in the debug-build test of foreign pointers, a chunk's *address* as a `usize` — handed to
//! another thread precisely to check that freeing it there is reported, not done.
//!
//! Bounded: `MEMCTX_STRESS_THREADS` threads (default 8) for about `MEMCTX_STRESS_MS` ms (default
//! 1500) of churn each. `ci/tsan` runs this file under ThreadSanitizer with smaller values. No
//! assertion is about time; the dumper's deadline and the workers' hard stop are upper bounds,
//! stretched under Valgrind (`common/timing.rs`), where threads run one at a time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use memctx::dump::{Dumper, DumperConfig};
use memctx::stats::StatsNode;
use memctx::{palloc, pfree, repalloc, BlockSizes, MemoryContext};

#[path = "common/kinds.rs"]
mod kinds;
#[path = "common/timing.rs"]
mod timing;
use kinds::Kind;
use timing::allow;

/// The tests of this file run one at a time. A dump waits for every live thread with a tree to
/// reach a safe point, up to its deadline; a thread of another test blocked meanwhile (on a barrier,
/// a join, a channel) reaches none, so the dump would wait out the whole deadline — a second
/// natively, but under Valgrind, where threads run one at a time and the deadline is stretched,
/// long enough to stall the leg.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn threads() -> usize {
    env_or("MEMCTX_STRESS_THREADS", 8).clamp(1, 256) as usize
}

fn churn_time() -> Duration {
    Duration::from_millis(env_or("MEMCTX_STRESS_MS", 1500))
}

/// xorshift64*: a tiny deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The byte at `i` of a chunk seeded `seed`.
fn pat(seed: u64, i: usize) -> u8 {
    (seed as u8).wrapping_add((i as u8).wrapping_mul(31))
}

fn fill(p: *mut u8, n: usize, seed: u64) {
    for i in 0..n {
        // SAFETY: the caller's chunk has `n` bytes.
        unsafe { p.add(i).write(pat(seed, i)) };
    }
}

/// Checks a chunk's bytes; returns a checksum of them.
fn verify(p: *mut u8, n: usize, seed: u64, what: &str) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        // SAFETY: the caller's chunk has `n` bytes.
        let b = unsafe { *p.add(i) };
        assert_eq!(b, pat(seed, i), "{what}: byte {i} of {n} changed at {p:p}");
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    sum
}

/// Allocates `n` bytes in the current context from a call stack `depth` frames deeper, so the
/// debug build's stack depot interns many distinct stacks from many threads at once.
#[inline(never)]
fn alloc_at_depth(depth: u32, n: usize) -> *mut u8 {
    if depth == 0 {
        palloc(n)
    } else {
        let p = alloc_at_depth(depth - 1, n);
        std::hint::black_box(p)
    }
}

/// The kinds of worker `index`'s cache and per-row contexts, both of which take requests of any
/// size: the cache, where chunks are freed one by one, cycles through such kinds with `pfree`;
/// the per-row context, only ever reset, through all such kinds. (The scratch contexts take
/// every kind in turn, Slab included.)
fn worker_kinds(index: usize) -> (Kind, Kind) {
    let any_size = |k: &Kind| k.fixed_size(BlockSizes::DEFAULT).is_none();
    let freeing: Vec<Kind> = kinds::ALL
        .iter()
        .copied()
        .filter(|k| any_size(k) && k.frees_chunks())
        .collect();
    let rows: Vec<Kind> = kinds::ALL.iter().copied().filter(any_size).collect();
    (freeing[index % freeing.len()], rows[index % rows.len()])
}

/// What a worker hands back: plain data only.
struct WorkerResult {
    name: String,
    /// The kinds of its cache and per-row contexts.
    kinds: (Kind, Kind),
    steps: u64,
    resets: u64,
    checksum: u64,
    /// The worker's tree just before it deleted its contexts.
    stats: StatsNode,
    /// Debug build: reports this thread raised on purpose and saw come back.
    own_reports: usize,
    /// How many times this worker called `raise_own_reports` (debug build): each call must
    /// raise exactly two reports. Counted where the calls happen, not derived from `steps`,
    /// because the stop test at a multiple of 64 ends the loop before that step's body runs.
    report_rounds: usize,
    /// How many times the worker reset its cache context: one `raise_own_reports` follows each
    /// reset, and one more follows the loop.
    cache_resets: usize,
}

/// One worker: churn in a long-lived cache context, per-row work in a context reset every row,
/// scratch contexts created and deleted, until `stop` or its time is up.
fn worker(index: usize, stop: &AtomicBool, until: Instant) -> WorkerResult {
    #[cfg(feature = "debug-contexts")]
    memctx::debug::set_thread_policy(Some(memctx::debug::Policy::Log));
    let name = thread::current().name().unwrap_or("?").to_owned();
    let top = MemoryContext::top();
    let kinds = worker_kinds(index);
    let cache = kinds.0.create(top, "Cache", BlockSizes::DEFAULT);
    let per_row = kinds.1.create(top, "PerRow", BlockSizes::DEFAULT);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1));
    let mut live: Vec<(*mut u8, usize, u64)> = Vec::new();
    let (mut steps, mut resets, mut checksum, mut own_reports) = (0u64, 0u64, 0u64, 0usize);
    let (mut report_rounds, mut cache_resets) = (0usize, 0usize);
    let mut seed = index as u64 * 1_000_003;
    let hard_stop = until + allow(Duration::from_secs(120));
    loop {
        steps += 1;
        if steps % 64 == 0 {
            let now = Instant::now();
            if (stop.load(Ordering::Relaxed) && now >= until) || now >= hard_stop {
                break;
            }
        }
        let r = rng.below(100);
        if r < 55 || live.is_empty() {
            let n = match rng.below(20) {
                0 => 8193 + rng.below(30_000) as usize, // a block of its own
                1..=4 => rng.below(4096) as usize,
                _ => rng.below(256) as usize,
            };
            let p = {
                let _g = cache.switch_to();
                alloc_at_depth(rng.below(12) as u32, n)
            };
            seed += 1;
            fill(p, n, seed);
            live.push((p, n, seed));
        } else if r < 85 {
            let (p, n, s) = live.swap_remove(rng.below(live.len() as u64) as usize);
            checksum = checksum.wrapping_add(verify(p, n, s, "before pfree"));
            // SAFETY: a live chunk of this thread's tree.
            unsafe { pfree(p) };
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (p, n, s) = live[i];
            let m = rng.below(10_000) as usize;
            // SAFETY: a live chunk of this thread's tree.
            let q = unsafe { repalloc(p, m) };
            verify(q, n.min(m), s, "after repalloc");
            for j in n.min(m)..m {
                // SAFETY: `q` has `m` bytes.
                unsafe { q.add(j).write(pat(s, j)) };
            }
            live[i] = (q, m, s);
        }
        if steps % 32 == 0 {
            // A row: allocate freely in the per-row context, then reset it.
            per_row.scope(|_| {
                let mut row = Vec::new();
                for k in 0..16 {
                    let n = 8 + rng.below(120) as usize;
                    let p = alloc_at_depth(k % 5, n);
                    fill(p, n, steps + k as u64);
                    row.push((p, n, steps + k as u64));
                }
                for (p, n, s) in row {
                    verify(p, n, s, "per-row chunk");
                }
            });
            resets += 1;
        }
        if steps % 128 == 0 {
            let kind = kinds::ALL[(steps / 128) as usize % kinds::ALL.len()];
            let scratch = kind.create(cache, "Scratch", BlockSizes::SMALL);
            for _ in 0..8 {
                let n = rng.below(600) as usize;
                let _ = scratch.alloc(kind.fixed_size(BlockSizes::SMALL).unwrap_or(n));
            }
            scratch.delete();
        }
        if steps % 500 == 0 {
            for &(p, n, s) in &live {
                checksum = checksum.wrapping_add(verify(p, n, s, "before reset"));
            }
            assert_eq!(cache.check(), 0);
            cache.reset();
            live.clear();
            resets += 1;
            cache_resets += 1;
            #[cfg(feature = "debug-contexts")]
            {
                own_reports += raise_own_reports(cache);
                report_rounds += 1;
            }
        }
    }
    for &(p, n, s) in &live {
        checksum = checksum.wrapping_add(verify(p, n, s, "at the end"));
    }
    #[cfg(feature = "debug-contexts")]
    {
        own_reports += raise_own_reports(cache);
        report_rounds += 1;
    }
    let stats = top.stats();
    cache.delete();
    per_row.delete();
    let _ = (&mut own_reports, &mut report_rounds);
    WorkerResult {
        name,
        kinds,
        steps,
        resets,
        checksum,
        stats,
        own_reports,
        report_rounds,
        cache_resets,
    }
}

/// Debug build: commits a double free and a free of a foreign pointer — both reported and
/// skipped, without touching memory — and checks that exactly those two reports come back on
/// this thread, formatted with their backtraces (which resolves frames while other threads do
/// the same).
#[cfg(feature = "debug-contexts")]
fn raise_own_reports(ctx: MemoryContext) -> usize {
    use memctx::debug::{self, BugClass};
    let _ = debug::take_reports();
    let p = ctx.alloc(40).as_ptr();
    let foreign = Box::into_raw(Box::new([0u64; 8])) as *mut u8;
    // SAFETY: `p` is live; the second pfree and the foreign pfree are validated and skipped.
    unsafe {
        pfree(p);
        pfree(p);
        pfree(foreign);
        drop(Box::from_raw(foreign as *mut [u64; 8]));
    }
    let reports = debug::take_reports();
    let classes: Vec<_> = reports.iter().map(|r| r.class).collect();
    assert_eq!(
        classes,
        [BugClass::DoubleFree, BugClass::InvalidPointer],
        "reports of this thread only"
    );
    assert_eq!(reports[0].chunk, Some(p as usize));
    assert!(reports[0].to_string().contains("double-free"));
    reports.len()
}

/// Checks a worker's stats tree: its own contexts, of their kinds, the counters' invariants.
fn check_stats(r: &WorkerResult) {
    assert_eq!(r.stats.name, "TopMemoryContext", "{}", r.name);
    let kinds: Vec<(&str, &str)> = r
        .stats
        .children
        .iter()
        .map(|c| (c.name.as_str(), c.kind.as_str()))
        .collect();
    for want in [("Cache", r.kinds.0.name()), ("PerRow", r.kinds.1.name())] {
        assert!(kinds.contains(&want), "{}: {want:?} in {kinds:?}", r.name);
    }
    let mut stack = vec![&r.stats];
    while let Some(n) = stack.pop() {
        let c = n.counters;
        assert!(
            c.free_bytes <= c.total_bytes && c.total_nblocks >= 1,
            "{}: {c}",
            n.name
        );
        stack.extend(n.children.iter());
    }
}

#[test]
fn many_threads_churn_while_the_dumper_asks_for_snapshots() {
    let _serial = serial();
    let n = threads();
    let dir = std::env::temp_dir().join(format!("memctx-threads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dumper = Dumper::start(DumperConfig::new(&dir).deadline(allow(Duration::from_secs(60))))
        .expect("no other dumper runs in this test binary");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(n + 1));
    let until = Instant::now() + churn_time();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let stop = stop.clone();
            let started = started.clone();
            thread::Builder::new()
                .name(format!("stress-{i}"))
                .spawn(move || {
                    // Create the tree before the first dump is requested, so every worker is
                    // waited for.
                    let _ = MemoryContext::top();
                    started.wait();
                    worker(i, &stop, until)
                })
                .expect("spawn")
        })
        .collect();
    started.wait();
    // Two dumps while every worker churns: each worker answers at its next safe point.
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        let path = dumper.dump_now().expect("dump");
        snapshots.push(memctx::snapshot::read_snapshot(&path).expect("read snapshot"));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<WorkerResult> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    dumper.stop();
    let _ = std::fs::remove_dir_all(&dir);

    for snap in &snapshots {
        for i in 0..n {
            let name = format!("stress-{i}");
            let t = snap
                .threads
                .iter()
                .find(|t| t.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{name} is not in the snapshot"));
            assert!(!t.missing, "{name} did not answer");
            let row_kind = worker_kinds(i).1.name();
            assert!(
                t.contexts
                    .iter()
                    .any(|c| c.name == "PerRow" && c.kind == row_kind),
                "{name}'s rows, a {row_kind} PerRow among them: {:?}",
                t.contexts
                    .iter()
                    .map(|c| (&c.name, &c.kind))
                    .collect::<Vec<_>>()
            );
        }
    }
    let mut steps = 0;
    for r in &results {
        check_stats(r);
        assert!(r.steps > 0 && r.resets > 0, "{} did nothing", r.name);
        let _ = r.checksum;
        if cfg!(feature = "debug-contexts") {
            // One round after each cache reset and one after the loop, two reports each.
            assert_eq!(r.report_rounds, r.cache_resets + 1, "{}", r.name);
            assert_eq!(r.own_reports, 2 * r.report_rounds, "{}", r.name);
        } else {
            assert_eq!((r.own_reports, r.report_rounds), (0, 0), "{}", r.name);
        }
        steps += r.steps;
    }
    eprintln!(
        "threads: {n} workers, {steps} steps, {} resets",
        results.iter().map(|r| r.resets).sum::<u64>()
    );
}

#[test]
fn short_lived_threads_register_and_exit() {
    let _serial = serial();
    use memctx::registry::{MEMCTX_REGISTRY, THREAD_EXITED};
    let batches = 4;
    let per_batch = 16;
    let before = MEMCTX_REGISTRY.nthreads.load(Ordering::Relaxed);
    let made = Arc::new(AtomicUsize::new(0));
    for b in 0..batches {
        let start = Arc::new(Barrier::new(per_batch));
        let hs: Vec<_> = (0..per_batch)
            .map(|i| {
                let start = start.clone();
                let made = made.clone();
                thread::Builder::new()
                    .name(format!("short-{b}-{i}"))
                    .spawn(move || {
                        start.wait(); // all register at once
                        let c = MemoryContext::top().new_child("Short", BlockSizes::SMALL);
                        let p = c.alloc(100).as_ptr();
                        fill(p, 100, i as u64);
                        verify(p, 100, i as u64, "short-lived");
                        c.delete();
                        made.fetch_add(1, Ordering::Relaxed);
                    })
                    .expect("spawn")
            })
            .collect();
        for h in hs {
            h.join().expect("thread panicked");
        }
    }
    assert_eq!(made.load(Ordering::Relaxed), batches * per_batch);
    let after = MEMCTX_REGISTRY.nthreads.load(Ordering::Relaxed);
    assert!(after - before >= (batches * per_batch) as u32);
    // Every one of them is in the registry, marked exited.
    let mut found = 0;
    let mut e = MEMCTX_REGISTRY.head.load(Ordering::Acquire);
    while !e.is_null() {
        // SAFETY: registry entries are never freed.
        let entry = unsafe { &*e };
        let name = String::from_utf8_lossy(&entry.name);
        if name.starts_with("short-") {
            assert_eq!(entry.state.load(Ordering::Acquire), THREAD_EXITED, "{name}");
            assert!(!entry.top.is_null());
            found += 1;
        }
        e = entry.next;
    }
    assert_eq!(found, batches * per_batch);
}

#[test]
fn each_thread_has_its_own_current_context_and_top() {
    let _serial = serial();
    let n = threads().min(8);
    let barrier = Arc::new(Barrier::new(n));
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let top = MemoryContext::top();
                let mine = top.new_child("Mine", BlockSizes::SMALL);
                let _g = mine.switch_to();
                barrier.wait();
                // Every other thread switched too; ours is unchanged.
                assert_eq!(MemoryContext::current(), mine);
                let p = palloc(64);
                // SAFETY: a live chunk.
                let owner = unsafe { memctx::chunk_context(p) };
                assert_eq!(owner, mine);
                fill(p, 64, i as u64);
                barrier.wait();
                verify(p, 64, i as u64, "own current context");
                drop(_g);
                mine.delete();
                (top.id(), top.stats().total().total_bytes)
            })
        })
        .collect();
    let tops: Vec<(u64, u64)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ids: Vec<u64> = tops.iter().map(|t| t.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "every thread has a Top of its own");
}

/// Debug build: a chunk's address handed to another thread cannot be freed there — that thread's
/// tree does not own it — and is reported as an invalid pointer, while the owner's chunk stays
/// intact and frees normally at home.
#[cfg(feature = "debug-contexts")]
#[test]
fn a_chunk_freed_on_another_thread_is_reported_not_freed() {
    let _serial = serial();
    use memctx::debug::{self, BugClass, Policy};
    let owner = MemoryContext::top().new_child("Owner", BlockSizes::DEFAULT);
    let p = owner.alloc(256).as_ptr();
    fill(p, 256, 77);
    let addr = p as usize; // plain data crosses, not the context
    let reports = thread::spawn(move || {
        debug::set_thread_policy(Some(Policy::Log));
        // SAFETY (for the process): the debug build validates the pointer against this
        // thread's blocks before reading anything, finds none, and skips the free.
        unsafe {
            pfree(addr as *mut u8);
            assert!(repalloc(addr as *mut u8, 10).is_null());
        }
        debug::take_reports()
            .into_iter()
            .map(|r| (r.class, r.detail))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (class, detail) in &reports {
        assert_eq!(*class, BugClass::InvalidPointer);
        assert!(detail.contains("another thread's tree"), "{detail}");
    }
    verify(p, 256, 77, "the owner's chunk");
    // SAFETY: still live, on its own thread.
    unsafe { pfree(p) };
    assert_eq!(owner.check(), 0);
    owner.delete();
}
