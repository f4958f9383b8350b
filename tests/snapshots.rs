//! Snapshots of a running program: contents, the periodic dumper, dumps on signal, safe points,
//! missing, exiting and exited threads and chained signal handlers.
//!
//! The dumper is process-global (one runs at a time, and it waits for every live thread with a
//! tree), so every test here takes `LOCK` first: tests of this file never overlap, and no other
//! test's thread is live while a dump waits for answers.
//!
//! Waits have deadlines, stretched under Valgrind (`common/timing.rs`): each ends as soon as what
//! it waits for happens, so the memcheck leg can run this file at its own pace. No test loses a
//! chunk: each deletes the contexts it allocates in (the one an exited thread leaves alive holds
//! none), so memcheck's leak search finds nothing lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memctx::dump::{self, Dumper, DumperConfig};
use memctx::snapshot::{
    self, Snapshot, ThreadSnapshot, Trigger, SNAPSHOT_FORMAT, SNAPSHOT_VERSION,
};
use memctx::stats::rows;
use memctx::{BlockSizes, MemoryContext};

#[path = "common/timing.rs"]
mod timing;
use timing::allow;

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memctx-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The calling thread's entry in a snapshot.
fn me(snap: &Snapshot) -> &ThreadSnapshot {
    let tid = gettid();
    snap.threads
        .iter()
        .find(|t| t.os_tid == tid)
        .unwrap_or_else(|| panic!("thread {tid} is not in the snapshot: {snap:?}"))
}

/// Total bytes of the context called `name` in a thread's rows.
fn total_of(t: &ThreadSnapshot, name: &str) -> u64 {
    t.contexts
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no context {name:?}"))
        .total_bytes
}

/// Waits (without reaching a safe point) until a dump request is open for this thread.
fn wait_pending() {
    let end = Instant::now() + allow(Duration::from_secs(10));
    while !dump::dump_pending() {
        assert!(Instant::now() < end, "no dump request was opened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn snapshot_matches_stats_rows() {
    let _l = serial();
    let top = MemoryContext::top();
    let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    cache.set_ident("relcache");
    let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
    let exec = portal.new_child("ExecutorState", BlockSizes::SMALL);
    for i in 0..50 {
        cache.alloc(100 + i);
        exec.alloc(10_000);
    }

    let snap = dump::snapshot();
    let expected = rows(&top.stats());
    assert_eq!(snap.format, SNAPSHOT_FORMAT);
    assert_eq!(snap.version, SNAPSHOT_VERSION);
    assert_eq!(snap.pid, std::process::id());
    assert_eq!(snap.seq, 0);
    assert!(snap.timestamp_ms > 1_600_000_000_000);
    assert_eq!(snap.threads.len(), 1);
    let t = &snap.threads[0];
    assert_eq!(t.os_tid, gettid());
    assert_eq!(t.name.as_deref(), std::thread::current().name());
    assert!(!t.missing);
    assert_eq!(t.contexts, expected);
    assert_eq!(t.contexts[0].name, "TopMemoryContext");
    let c = t.contexts.iter().find(|c| c.id == cache.id()).unwrap();
    assert_eq!(c.ident.as_deref(), Some("relcache"));
    assert_eq!(c.total_bytes, cache.mem_allocated(false) as u64);
    if cfg!(feature = "debug-contexts") {
        // 50 chunks of distinct sizes from one line: one site in CacheMemoryContext.
        let site = t.sites.iter().find(|s| s.context_id == cache.id()).unwrap();
        assert_eq!((site.count, site.bytes), (50, (100..150).sum::<u64>()));
    } else {
        assert!(t.sites.is_empty());
    }

    // JSON round trip, and refusal of what is not a snapshot.
    let json = snapshot::to_json(&snap);
    assert_eq!(snapshot::from_json(&json).unwrap(), snap);
    let wrong = json.replace(SNAPSHOT_FORMAT, "memctx-stats");
    assert!(snapshot::from_json(&wrong).is_err());

    portal.delete();
    cache.delete();
}

#[test]
fn periodic_dumper_writes_a_growing_numbered_series() {
    let _l = serial();
    let dir = temp_dir("periodic");
    let cache = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let dumper = Dumper::start(
        DumperConfig::new(&dir)
            .interval(Duration::from_millis(20))
            .deadline(allow(Duration::from_secs(20))),
    )
    .unwrap();
    const STEPS: u64 = 5;
    for step in 1..=STEPS {
        // The slow leak: 64 KiB more every step, never freed.
        for _ in 0..64 {
            cache.alloc(1000);
        }
        // Wait for the next periodic snapshot, answering at explicit safe points.
        let end = Instant::now() + allow(Duration::from_secs(10));
        while dumper.written() < step {
            assert!(Instant::now() < end, "snapshot {step} was not written");
            dump::poll();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    dumper.stop();

    let files = snapshot::list_snapshots(&dir).unwrap();
    assert!(files.len() as u64 >= STEPS, "{files:?}");
    let mut totals = Vec::new();
    for (i, (seq, path)) in files.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("snapshot-{:06}.json", i + 1)
        );
        let snap = snapshot::read_snapshot(path).unwrap();
        assert_eq!(snap.seq, *seq);
        let t = me(&snap);
        assert!(!t.missing);
        totals.push(total_of(t, "CacheMemoryContext"));
    }
    assert!(totals.windows(2).all(|w| w[0] <= w[1]), "{totals:?}");
    assert!(totals.last() > totals.first(), "{totals:?}");
    assert!(*totals.last().unwrap() >= STEPS * 64 * 1000, "{totals:?}");

    // A new dumper over the same directory continues the numbering.
    let dumper = Dumper::start(DumperConfig::new(&dir)).unwrap();
    let path = dumper.dump_now().unwrap();
    let next = files.last().unwrap().0 + 1;
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        snapshot::snapshot_file_name(next)
    );
    drop(dumper);
    cache.delete();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_safe_point_answers_a_pending_dump() {
    let _l = serial();
    let dir = temp_dir("safe-points");
    // A deadline far beyond the waits below: a dump is written in time only if the thread
    // answered at the safe point under test.
    let dumper =
        Dumper::start(DumperConfig::new(&dir).deadline(allow(Duration::from_secs(120)))).unwrap();
    let ctx = MemoryContext::top().new_child("SafePoints", BlockSizes::DEFAULT);
    let safe_points: [(&str, &dyn Fn()); 4] = [
        ("reset", &|| ctx.reset()),
        ("new block", &|| {
            ctx.alloc(8000); // does not fit the keeper block's remaining space
        }),
        ("end of a per-row scope", &|| {
            ctx.scope(|_| ());
        }),
        ("poll", &dump::poll),
    ];
    for (n, (what, safe_point)) in safe_points.iter().enumerate() {
        dumper.request();
        wait_pending();
        safe_point();
        assert!(!dump::dump_pending(), "{what} did not answer");
        let written = dumper.wait_written(n as u64 + 1, allow(Duration::from_secs(10)));
        assert_eq!(written, n as u64 + 1, "no snapshot after the {what}");
        let snap = snapshot::read_snapshot(&dumper.last_path().unwrap()).unwrap();
        assert!(!me(&snap).missing);
        assert!(me(&snap).contexts.iter().any(|c| c.name == "SafePoints"));
    }
    drop(dumper);
    ctx.delete();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn signal_dumps_at_a_safe_point_and_lists_a_silent_thread_missing() {
    let _l = serial();
    let dir = temp_dir("signal");
    // The dump waits this long for the silent thread below, so this deadline is time the test
    // spends, not only a bound: it must outlast this thread's own answer, which takes
    // milliseconds natively; ten times 2 s is ample under Valgrind too.
    let deadline = Duration::from_secs(2) * timing::slowdown().min(10);
    let dumper = Dumper::start(DumperConfig::new(&dir).with_signal().deadline(deadline)).unwrap();

    // A thread with a tree that then blocks, never reaching a safe point.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let silent = std::thread::Builder::new()
        .name("silent-worker".into())
        .spawn(move || {
            let c = MemoryContext::top().new_child("WorkerContext", BlockSizes::DEFAULT);
            c.alloc(100);
            ready_tx.send(gettid()).unwrap();
            done_rx.recv().unwrap();
            c.delete();
        })
        .unwrap();
    let silent_tid = ready_rx.recv().unwrap();

    let ctx = MemoryContext::top().new_child("SignalledContext", BlockSizes::DEFAULT);
    ctx.alloc(5000);
    // SAFETY: raise has no preconditions; the dumper's handler is installed for SIGUSR1.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    wait_pending();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        dumper.written(),
        0,
        "a dump was written before any safe point"
    );
    ctx.reset(); // the safe point
    assert!(!dump::dump_pending());
    assert_eq!(dumper.wait_written(1, allow(Duration::from_secs(20))), 1);
    done_tx.send(()).unwrap();
    silent.join().unwrap();
    dumper.stop();

    let snap = snapshot::read_snapshot(&dir.join("snapshot-000001.json")).unwrap();
    assert_eq!(snap.seq, 1);
    assert_eq!(snap.trigger, Some(Trigger::Signal));
    let t = me(&snap);
    assert!(!t.missing);
    assert!(t.contexts.iter().any(|c| c.name == "SignalledContext"));
    let w = snap
        .threads
        .iter()
        .find(|t| t.os_tid == silent_tid)
        .unwrap();
    assert!(w.missing);
    assert!(w.contexts.is_empty());
    assert_eq!(w.name.as_deref(), Some("silent-worker"));
    ctx.delete();
    std::fs::remove_dir_all(&dir).unwrap();
}

static CHAINED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn host_handler(_sig: libc::c_int) {
    CHAINED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_handler_the_host_installed_still_runs() {
    let _l = serial();
    let dir = temp_dir("chained");
    // The host's own SIGUSR2 handler, installed before the dumper.
    // SAFETY: installing a handler that only does an atomic add.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = host_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &sa, core::ptr::null_mut()),
            0
        );
    }
    let dumper = Dumper::start(
        DumperConfig::new(&dir)
            .signal(libc::SIGUSR2)
            .deadline(allow(Duration::from_secs(20))),
    )
    .unwrap();
    let ctx = MemoryContext::top().new_child("Chained", BlockSizes::DEFAULT);
    // SAFETY: raise has no preconditions; handlers are installed.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    assert_eq!(
        CHAINED.load(Ordering::SeqCst),
        1,
        "the host's handler did not run"
    );
    wait_pending();
    dump::poll();
    assert_eq!(dumper.wait_written(1, allow(Duration::from_secs(10))), 1);
    dumper.stop();

    // Stopping put the host's handler back: the signal reaches it alone.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    assert_eq!(CHAINED.load(Ordering::SeqCst), 2);
    assert!(!dump::dump_pending());
    ctx.delete();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exited_threads_keep_their_trees_and_are_not_waited_for() {
    let _l = serial();
    let dir = temp_dir("exited");
    MemoryContext::top(); // this thread answers; the exited one cannot
    let tid = std::thread::Builder::new()
        .name("short-lived".into())
        .spawn(|| {
            // A context the thread leaves alive: its tree outlives the thread, reachable through
            // the registry. (No chunk in it: one whose pointer died with the thread would be a
            // leak in memcheck's eyes; its first block is enough to hold bytes.)
            MemoryContext::top().new_child("Forgotten", BlockSizes::DEFAULT);
            gettid()
        })
        .unwrap()
        .join()
        .unwrap();
    // The OS thread is reaped a moment after join returns.
    let end = Instant::now() + allow(Duration::from_secs(10));
    while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        assert!(
            Instant::now() < end,
            "thread {tid} is still in /proc/self/task"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The deadline is far beyond the wait: the dump completes only if it does not wait for the
    // exited thread.
    let dumper =
        Dumper::start(DumperConfig::new(&dir).deadline(allow(Duration::from_secs(120)))).unwrap();
    dumper.request();
    wait_pending();
    dump::poll();
    assert_eq!(dumper.wait_written(1, allow(Duration::from_secs(10))), 1);
    let snap = snapshot::read_snapshot(&dumper.last_path().unwrap()).unwrap();
    let gone = snap.threads.iter().find(|t| t.os_tid == tid).unwrap();
    assert!(gone.exited && !gone.missing && !gone.exiting, "{gone:?}");
    assert_eq!(gone.name.as_deref(), Some("short-lived"));
    assert_eq!(gone.contexts[0].name, "TopMemoryContext");
    assert!(total_of(gone, "Forgotten") > 0);
    assert!(!me(&snap).missing);

    // The leak tools count it: its bytes are in the dump's total.
    #[cfg(feature = "cli")]
    {
        let d = memctx::leak::Dump::from_snapshot(snap.clone(), "exited").unwrap();
        let tree = d
            .trees
            .iter()
            .find(|t| t.thread.as_deref() == Some("short-lived"))
            .unwrap();
        assert!(tree.exited && !tree.missing);
        let expect: u64 = gone.contexts.iter().map(|c| c.total_bytes).sum();
        assert_eq!(tree.total().total_bytes, expect);
    }

    // One dumper at a time.
    let again = Dumper::start(DumperConfig::new(&dir));
    assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    dumper.stop();
    assert!(!dump::request_dump(), "no dumper runs any more");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Holds its thread in a thread-local destructor until told to go on.
struct HoldInDestructor(Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>);

impl Drop for HoldInDestructor {
    fn drop(&mut self) {
        if let Some((entered, go_on)) = self.0.take() {
            let _ = entered.send(());
            let _ = go_on.recv();
        }
    }
}

thread_local! {
    static HOLD: std::cell::RefCell<HoldInDestructor> =
        const { std::cell::RefCell::new(HoldInDestructor(None)) };
}

/// The registry state of the thread `tid`.
fn registry_state(tid: u32) -> Option<u32> {
    let mut e = memctx::registry::MEMCTX_REGISTRY
        .head
        .load(Ordering::Acquire);
    while !e.is_null() {
        // SAFETY: registry entries are never freed.
        let entry = unsafe { &*e };
        if entry.os_tid == tid {
            return Some(entry.state.load(Ordering::Acquire));
        }
        e = entry.next;
    }
    None
}

#[test]
fn an_exiting_thread_is_listed_without_its_tree_until_it_is_gone() {
    let _l = serial();
    let dir = temp_dir("exiting");
    MemoryContext::top();
    let (entered_tx, entered) = mpsc::channel();
    let (go_on, go_on_rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("exiting".into())
        .spawn(move || {
            // Registered before memctx's thread-locals, so its destructor runs after theirs
            // (destructors run in reverse order): the thread is marked exited, and still runs.
            HOLD.with(|h| h.borrow_mut().0 = Some((entered_tx, go_on_rx)));
            MemoryContext::top().new_child("Lingering", BlockSizes::DEFAULT);
            tid_tx.send(gettid()).unwrap();
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    entered
        .recv_timeout(allow(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        registry_state(tid),
        Some(memctx::registry::THREAD_EXITED),
        "memctx's thread-locals were not destroyed before the test's"
    );
    let dumper =
        Dumper::start(DumperConfig::new(&dir).deadline(allow(Duration::from_secs(120)))).unwrap();
    let snap = snapshot::read_snapshot(&dumper.dump_now().unwrap()).unwrap();
    let t = snap.threads.iter().find(|t| t.os_tid == tid).unwrap();
    assert!(
        t.exiting && t.missing && !t.exited && t.contexts.is_empty(),
        "{t:?}"
    );

    go_on.send(()).unwrap();
    handle.join().unwrap();
    let end = Instant::now() + allow(Duration::from_secs(10));
    while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        assert!(
            Instant::now() < end,
            "thread {tid} is still in /proc/self/task"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let snap = snapshot::read_snapshot(&dumper.dump_now().unwrap()).unwrap();
    let t = snap.threads.iter().find(|t| t.os_tid == tid).unwrap();
    assert!(t.exited && !t.missing && !t.exiting, "{t:?}");
    assert!(total_of(t, "Lingering") > 0);
    dumper.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_thread_without_a_tree_answers_nothing_and_gets_none() {
    let _l = serial();
    let dir = temp_dir("treeless");
    MemoryContext::top(); // this thread has a tree; the one spawned below does not
    let dumper =
        Dumper::start(DumperConfig::new(&dir).deadline(allow(Duration::from_secs(120)))).unwrap();
    // A thread that never touches memctx polls: it must not create a tree.
    let before = memctx::registry::MEMCTX_REGISTRY
        .nthreads
        .load(Ordering::SeqCst);
    dumper.request();
    std::thread::spawn(|| {
        wait_pending();
        dump::poll();
    })
    .join()
    .unwrap();
    assert_eq!(
        memctx::registry::MEMCTX_REGISTRY
            .nthreads
            .load(Ordering::SeqCst),
        before
    );
    let path = dumper.dump_now().unwrap();
    let snap = snapshot::read_snapshot(&path).unwrap();
    assert!(!me(&snap).missing);
    dumper.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bounded directories and the registry's dumper entry.

#[test]
fn keep_holds_the_directory_to_the_newest_files() {
    let _l = serial();
    let dir = temp_dir("keep");
    let dumper = Dumper::start(
        DumperConfig::new(&dir)
            .keep(2)
            .deadline(allow(Duration::from_secs(120))),
    )
    .unwrap();
    let ctx = MemoryContext::top().new_child("Kept", BlockSizes::DEFAULT);
    for _ in 0..4 {
        dumper.dump_now().unwrap();
    }
    dumper.stop();
    let seqs: Vec<u64> = snapshot::list_snapshots(&dir)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(seqs, [3, 4]);
    let snap = snapshot::read_snapshot(&dir.join("snapshot-000004.json")).unwrap();
    assert_eq!(snap.trigger, Some(Trigger::Request));
    ctx.delete();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_registry_publishes_a_running_dumper_and_withdraws_it() {
    use memctx::registry::{DUMPER_OFF, DUMPER_ON, MEMCTX_REGISTRY};
    let _l = serial();
    let dir = temp_dir("published");
    let info = &MEMCTX_REGISTRY.dumper;
    assert_eq!(info.state.load(Ordering::Acquire), DUMPER_OFF);
    let dumper = Dumper::start(DumperConfig::new(&dir).signal(libc::SIGUSR2)).unwrap();
    assert_eq!(info.state.load(Ordering::Acquire), DUMPER_ON);
    assert_eq!(info.signal.load(Ordering::Relaxed), libc::SIGUSR2);
    let len = info.dir_len.load(Ordering::Relaxed) as usize;
    let published: Vec<u8> = info.dir[..len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    assert_eq!(published, dir.as_os_str().as_encoded_bytes());
    dumper.stop();
    assert_eq!(info.state.load(Ordering::Acquire), DUMPER_OFF);
    let _ = std::fs::remove_dir_all(&dir);
}
