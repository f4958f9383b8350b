//! Snapshots of a running program: taken on demand, periodically, or when a signal arrives —
//! PostgreSQL's `pg_log_backend_memory_contexts()` for a Rust program, and the article's "dump the
//! tree every few minutes and compare" made into a product.
//!
//! # Snapshots
//!
//! [`snapshot`] copies the calling thread's tree into a [`Snapshot`]: the rows of
//! [`crate::stats::rows`] (pg_backend_memory_contexts' columns plus stable ids), a timestamp, the
//! pid and the thread's name and OS id, and in the debug build the live chunks of every context
//! grouped by allocation site ([`SiteRow`], the largest [`DEFAULT_SITES_PER_CONTEXT`] per context;
//! see [`crate::MemoryContext::sites`]).
//! [`crate::snapshot::to_json`] and [`crate::snapshot::write_snapshot`] store it;
//! [`crate::snapshot::from_json`] and [`crate::snapshot::read_snapshot`] read it back.
//!
//! # Dumps of every thread: the [`Dumper`]
//!
//! Trees are not thread-safe: only its own thread may walk a tree. A library has no
//! `CHECK_FOR_INTERRUPTS()`, so memctx asks every thread to dump *itself* when it next reaches a
//! **safe point**, a place where its tree is consistent and walking it is harmless:
//!
//! | safe point | where | how often |
//! |---|---|---|
//! | a new block | an AllocSet context takes a new block for small chunks | logarithmic in the bytes a context grows by |
//! | a reset | the end of [`crate::MemoryContext::reset`] (a user's reset, not the internal ones of a delete) | per reset |
//! | the end of a per-row scope | [`crate::MemoryContext::scope`] ends with a reset, which is the safe point above | per row |
//! | an explicit poll | [`poll`], wherever the host puts it (a main loop, between requests) | as the host likes |
//!
//! When nothing is pending, a safe point costs **one relaxed atomic load** and a predicted branch
//! (in a position-independent executable the atomic's address comes from the GOT, a read-only
//! load that stays in cache): the per-allocation fast path (a freelist pop or a carve from the
//! active block) has no safe point at all. When a dump is pending, the thread copies its tree (rows, and its site totals in the
//! debug build), hands the copy to the dumper and goes on; it answers each request once.
//!
//! A [`Dumper`] runs a background *writer* thread that never touches a tree. For each dump it opens
//! a request, waits until every live thread in the registry (`crate::registry`) has answered or the
//! request's deadline ([`DumperConfig::deadline`]) has passed, resolves the site backtraces (so the
//! symbolisation does not stall the answering threads), and writes one numbered file,
//! `snapshot-000001.json`, `snapshot-000002.json`, ... into its directory (numbering continues after
//! the highest number already there; files are written to a temporary name and renamed, so a reader
//! never sees half a file). Threads that did not answer in time are listed with `missing: true` and
//! no rows. **Exited threads keep their trees**, which still hold memory (see the context module's
//! docs on threads): once the OS thread is gone (its `/proc/self/task` entry has vanished), no code
//! can touch the tree any more and the writer reads it itself, listing the thread with
//! `exited: true` and its rows (no sites). Until then the thread's other thread-local destructors
//! may still use the tree, so it is listed as `exiting` (and missing), not read. Names and OS ids
//! come from the registry. Threads that never created a tree are not listed.
//!
//! A dump is requested
//! - periodically, every [`DumperConfig::interval`];
//! - by the API: [`Dumper::request`], [`request_dump`], or [`Dumper::dump_now`], which also answers
//!   for the calling thread and waits for the file;
//! - by a signal, when [`DumperConfig::signal`] is set (opt-in; [`DumperConfig::with_signal`] picks
//!   `SIGUSR1`, like `kill -USR1 PID`). The handler only sets an atomic flag and then calls the
//!   handler the host had installed for that signal before (unless that was the default action or
//!   "ignore"); the writer sees the flag within [`SIGNAL_POLL`] and opens the request. When the
//!   dumper stops, the previous handler is put back (if nobody replaced ours meanwhile).
//!
//! Each dump is one file, and the file says what asked for it (`trigger`: `periodic`, `signal`,
//! `request`): a signal's dump is always a file of its own, never merged into a periodic dump
//! due at the same moment, so whoever sent the signal finds the dump it asked for. API requests
//! are served by the next dump (a periodic dump due meanwhile is that same dump).
//! [`DumperConfig::keep`] bounds the directory to the newest N files.
//!
//! While a dumper runs, the registry publishes it (`crate::registry::DumperInfo`: on, its signal,
//! its directory), so a tool outside the process (`memctx watch`) can tell whether the dump
//! signal is safe to send: to a process without a handler, `SIGUSR1` is fatal.
//!
//! One dumper runs at a time in a process.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use memctx::dump::{Dumper, DumperConfig};
//! use memctx::{BlockSizes, MemoryContext};
//!
//! let dir = std::env::temp_dir().join(format!("memctx-doc-{}", std::process::id()));
//! let dumper = Dumper::start(DumperConfig::new(&dir).deadline(Duration::from_secs(5))).unwrap();
//! let cache = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
//! let _leak = cache.alloc(1000);
//! let path = dumper.dump_now().unwrap();
//! let snap = memctx::snapshot::read_snapshot(&path).unwrap();
//! let me = snap.threads.iter().find(|t| !t.missing).unwrap();
//! assert!(me.contexts.iter().any(|c| c.name == "CacheMemoryContext" && c.used_bytes >= 1000));
//! dumper.stop();
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::cell::Cell;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::registry::{ThreadEntry, MEMCTX_REGISTRY, THREAD_EXITED, THREAD_LIVE};
use crate::snapshot::{
    list_snapshots, snapshot_file_name, write_snapshot, SiteRow, Snapshot, ThreadSnapshot, Trigger,
    SNAPSHOT_FORMAT, SNAPSHOT_VERSION,
};
use crate::MemoryContext;

/// Sites kept per context in a snapshot unless configured otherwise.
pub const DEFAULT_SITES_PER_CONTEXT: usize = 20;
/// How often the writer looks at the signal flag while idle (only when a signal is configured).
pub const SIGNAL_POLL: Duration = Duration::from_millis(20);
/// How often the writer re-reads the registry while waiting for answers, to notice threads that
/// exit instead of answering.
const ANSWER_POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Snapshots of the calling thread.

/// Live chunks of one context from one stack, before the frames are resolved.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
struct PendingSite {
    context_id: u64,
    stack: u32,
    count: u64,
    bytes: u64,
}

/// A thread's copy of its tree, as handed to the writer: the sites are resolved (and merged and
/// cut to the largest per context) by the writer, not by the answering thread.
#[derive(Debug)]
#[cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]
struct ThreadCopy {
    snapshot: ThreadSnapshot,
    /// Every (context, stack) pair with live chunks, in context order.
    sites: Vec<PendingSite>,
    /// Sites to keep per context.
    sites_per_context: usize,
}

/// Copies the calling thread's tree. Must only run where the tree is consistent (a safe point, or
/// user code).
fn copy_own_tree(sites_per_context: usize) -> ThreadCopy {
    let top = MemoryContext::top();
    let contexts = crate::stats::rows(&top.stats());
    let sites = if sites_per_context == 0 {
        Vec::new()
    } else {
        own_sites(top)
    };
    ThreadCopy {
        snapshot: ThreadSnapshot {
            // The name the registry took at the thread's first use of memctx: asking
            // `std::thread::current()` here could panic in a late thread-local destructor.
            name: own_entry().and_then(entry_name),
            os_tid: gettid(),
            missing: false,
            exited: false,
            exiting: false,
            contexts,
            sites: Vec::new(),
        },
        sites,
        sites_per_context,
    }
}

/// The live chunks of every context of the tree under `top`, per context and stack.
#[cfg(feature = "debug-contexts")]
fn own_sites(top: MemoryContext) -> Vec<PendingSite> {
    let mut out = Vec::new();
    let mut stack = vec![top];
    while let Some(c) = stack.pop() {
        // SAFETY: a live context of this thread, at a safe point or in user code.
        let acc = unsafe { crate::debug::sites::raw_sites(c, false) };
        let id = c.id();
        out.extend(acc.into_iter().map(|(stack, (count, bytes))| PendingSite {
            context_id: id,
            stack,
            count,
            bytes,
        }));
        stack.extend(c.children());
    }
    out
}

#[cfg(not(feature = "debug-contexts"))]
fn own_sites(_top: MemoryContext) -> Vec<PendingSite> {
    Vec::new()
}

/// Resolves a thread's pending sites into rows: per context, stacks merged by their user frames,
/// largest first, at most `copy.sites_per_context`.
#[cfg(feature = "debug-contexts")]
fn resolve_sites(copy: &ThreadCopy) -> Vec<SiteRow> {
    use crate::debug::sites::{merge, SiteTotals};
    let mut per_context: Vec<(u64, SiteTotals)> = Vec::new();
    for p in &copy.sites {
        let same = matches!(per_context.last(), Some((id, _)) if *id == p.context_id);
        if !same {
            per_context.push((p.context_id, SiteTotals::new()));
        }
        let acc = &mut per_context.last_mut().expect("pushed above").1;
        let e = acc.entry(p.stack).or_insert((0, 0));
        e.0 += p.count;
        e.1 += p.bytes;
    }
    let mut rows = Vec::new();
    for (context_id, acc) in per_context {
        rows.extend(
            merge(&acc)
                .into_iter()
                .take(copy.sites_per_context)
                .map(|site| SiteRow {
                    context_id,
                    count: site.count,
                    bytes: site.bytes,
                    frames: site.frames.iter().map(ToString::to_string).collect(),
                }),
        );
    }
    rows
}

#[cfg(not(feature = "debug-contexts"))]
fn resolve_sites(_copy: &ThreadCopy) -> Vec<SiteRow> {
    Vec::new()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// A snapshot of the calling thread's tree (creating the tree if the thread has none yet), with
/// up to [`DEFAULT_SITES_PER_CONTEXT`] sites per context in the debug build; `seq` is 0.
///
/// This walks only the caller's own tree, at once; to dump every thread, use a [`Dumper`].
pub fn snapshot() -> Snapshot {
    snapshot_with_sites(DEFAULT_SITES_PER_CONTEXT)
}

/// [`snapshot`] with at most `sites_per_context` sites per context (0: none).
pub fn snapshot_with_sites(sites_per_context: usize) -> Snapshot {
    let copy = copy_own_tree(sites_per_context);
    let sites = resolve_sites(&copy);
    let mut thread = copy.snapshot;
    thread.sites = sites;
    Snapshot {
        format: SNAPSHOT_FORMAT.to_owned(),
        version: SNAPSHOT_VERSION,
        timestamp_ms: now_ms(),
        pid: std::process::id(),
        seq: 0,
        threads: vec![thread],
        trigger: Some(Trigger::Direct),
    }
}

// ---------------------------------------------------------------------------------------------
// Safe points.

/// The generation of the open dump request, 0 when none is open. The only thing a safe point
/// reads when nothing is pending.
static REQUEST: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last request generation this thread answered.
    static ANSWERED: Cell<u64> = const { Cell::new(0) };
    /// This thread is copying its tree (no nested answer).
    static ANSWERING: Cell<bool> = const { Cell::new(false) };
}

/// A safe point: if a dump is pending, the calling thread copies its tree and hands it to the
/// dumper; otherwise nothing happens, at the cost of one relaxed atomic load.
///
/// The allocator has safe points of its own (see the module docs); place `poll` where a thread
/// may spend long without reaching one — a worker's idle loop, between requests — so it is not
/// listed as missing. A thread without a tree answers nothing (it is not waited for either).
///
/// Call it where no borrow of context memory would be disturbed by a read-only walk of the tree:
/// anywhere in safe code.
#[inline(always)]
pub fn poll() {
    let gen = REQUEST.load(Ordering::Relaxed);
    if gen != 0 {
        answer(gen);
    }
}

/// Whether a dump request is open: the calling thread would answer it at its next safe point
/// (unless it already has).
pub fn dump_pending() -> bool {
    let gen = REQUEST.load(Ordering::Relaxed);
    gen != 0 && ANSWERED.with(Cell::get) != gen
}

/// The allocator's safe points; see [`poll`].
#[inline(always)]
pub(crate) fn safe_point() {
    poll();
}

/// The calling thread's live registry entry: it exists once the thread has a tree, so this also
/// tells whether it has one, without creating it.
fn own_entry() -> Option<&'static ThreadEntry> {
    let tid = gettid();
    registry_entries().find(|e| e.os_tid == tid && e.state.load(Ordering::Acquire) == THREAD_LIVE)
}

/// Every registry entry, newest first.
fn registry_entries() -> impl Iterator<Item = &'static ThreadEntry> {
    let mut p = MEMCTX_REGISTRY.head.load(Ordering::Acquire);
    core::iter::from_fn(move || {
        if p.is_null() {
            return None;
        }
        // SAFETY: registry entries are published with release ordering, never freed and their
        // `next` links never change after publication.
        let e: &'static ThreadEntry = unsafe { &*p };
        p = e.next;
        Some(e)
    })
}

/// Answers request `gen` for the calling thread, once.
#[cold]
#[inline(never)]
fn answer(gen: u64) {
    if ANSWERED.with(Cell::get) == gen || ANSWERING.with(Cell::get) {
        return;
    }
    // Not while unwinding: the allocator may be reached from a drop during a panic, and a
    // second panic there would abort. The thread answers at its next safe point, or is missing.
    if std::thread::panicking() {
        return;
    }
    if own_entry().is_none() {
        // No tree: nothing to dump, and nobody waits for this thread. Not marked answered, so a
        // tree it creates before the dump closes is still dumped.
        return;
    }
    ANSWERED.with(|a| a.set(gen));
    let per_context = lock_state().sites_per_context;
    ANSWERING.with(|a| a.set(true));
    let copy = copy_own_tree(per_context);
    ANSWERING.with(|a| a.set(false));
    let mut st = lock_state();
    if st.open_gen == gen {
        st.answers.push(copy);
        CV.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// The dumper.

/// State shared by the writer, the answering threads and the API.
struct State {
    /// A dumper is running.
    active: bool,
    /// The running dumper should stop.
    stop: bool,
    /// The last generation handed out (never reset, so thread-local marks stay meaningful).
    last_gen: u64,
    /// Generation of the open request (as `REQUEST`), 0 when none.
    open_gen: u64,
    /// Answers to the open request.
    answers: Vec<ThreadCopy>,
    /// API requests made so far.
    requested: u64,
    /// API requests covered by a finished dump (written or failed).
    served: u64,
    /// The last snapshot written.
    last_path: Option<PathBuf>,
    /// The error of the last dump, if it failed.
    last_error: Option<String>,
    /// Snapshots written by the running dumper.
    written: u64,
    /// Sites kept per context.
    sites_per_context: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    active: false,
    stop: false,
    last_gen: 0,
    open_gen: 0,
    answers: Vec::new(),
    requested: 0,
    served: 0,
    last_path: None,
    last_error: None,
    written: 0,
    sites_per_context: DEFAULT_SITES_PER_CONTEXT,
});
static CV: Condvar = Condvar::new();

fn lock_state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a [`Dumper`] works; build with [`DumperConfig::new`] and the setters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumperConfig {
    /// Directory of the numbered snapshot files (created if missing).
    pub dir: PathBuf,
    /// Take a snapshot this often; `None`: only when requested.
    pub interval: Option<Duration>,
    /// How long a dump waits for live threads to reach a safe point before it lists them as
    /// missing. Default 2 s.
    pub deadline: Duration,
    /// Dump when this signal arrives; `None` (the default): no signal handler is installed.
    pub signal: Option<i32>,
    /// Sites kept per context in the debug build. Default [`DEFAULT_SITES_PER_CONTEXT`].
    pub sites_per_context: usize,
    /// Keep only the newest this many numbered snapshot files in `dir`, deleting older ones after
    /// each write; `None` (the default): keep every file.
    pub keep: Option<usize>,
}

impl DumperConfig {
    /// Snapshots into `dir`, on request only, with a 2 s deadline and no signal.
    pub fn new(dir: impl Into<PathBuf>) -> DumperConfig {
        DumperConfig {
            dir: dir.into(),
            interval: None,
            deadline: Duration::from_secs(2),
            signal: None,
            sites_per_context: DEFAULT_SITES_PER_CONTEXT,
            keep: None,
        }
    }

    /// Keeps only the newest `n` snapshot files (at least 1) in the directory: a long-running
    /// host's dumper then holds its disk use to `n` files.
    #[must_use]
    pub fn keep(mut self, n: usize) -> DumperConfig {
        self.keep = Some(n.max(1));
        self
    }

    /// Takes a snapshot every `interval`.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> DumperConfig {
        self.interval = Some(interval);
        self
    }

    /// Sets the deadline of each dump.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> DumperConfig {
        self.deadline = deadline;
        self
    }

    /// Dumps on `SIGUSR1` (`kill -USR1 PID`).
    #[must_use]
    pub fn with_signal(self) -> DumperConfig {
        self.signal(libc::SIGUSR1)
    }

    /// Dumps on `signal` (e.g. `libc::SIGUSR2`).
    #[must_use]
    pub fn signal(mut self, signal: i32) -> DumperConfig {
        self.signal = Some(signal);
        self
    }

    /// Keeps at most `n` sites per context (debug build; 0: none).
    #[must_use]
    pub fn sites_per_context(mut self, n: usize) -> DumperConfig {
        self.sites_per_context = n;
        self
    }
}

/// A running dumper: a writer thread that takes snapshots of every thread into a directory. See
/// the module docs. Dropping it stops it, like [`Dumper::stop`].
#[derive(Debug)]
pub struct Dumper {
    dir: PathBuf,
    signal: Option<i32>,
    writer: Option<JoinHandle<()>>,
}

impl Dumper {
    /// Starts the writer thread (and installs the signal handler, if configured).
    ///
    /// # Errors
    /// `AlreadyExists` if a dumper is already running in this process; an I/O error creating or
    /// listing the directory; the OS error of `sigaction` for a signal that cannot be caught.
    pub fn start(config: DumperConfig) -> io::Result<Dumper> {
        fs::create_dir_all(&config.dir)?;
        let first_seq = list_snapshots(&config.dir)?
            .last()
            .map_or(1, |(seq, _)| seq + 1);
        {
            let mut st = lock_state();
            if st.active {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a memctx dumper is already running in this process",
                ));
            }
            st.active = true;
            st.stop = false;
            st.requested = 0;
            st.served = 0;
            st.written = 0;
            st.last_path = None;
            st.last_error = None;
            st.sites_per_context = config.sites_per_context;
        }
        if let Some(sig) = config.signal {
            if let Err(e) = signal::install(sig) {
                lock_state().active = false;
                return Err(e);
            }
        }
        crate::registry::publish_dumper(config.signal, &config.dir);
        let dir = config.dir.clone();
        let signal = config.signal;
        let spawned = std::thread::Builder::new()
            .name("memctx-dumper".into())
            .spawn(move || writer(&config, first_seq));
        match spawned {
            Ok(handle) => Ok(Dumper {
                dir,
                signal,
                writer: Some(handle),
            }),
            Err(e) => {
                crate::registry::withdraw_dumper();
                if let Some(sig) = signal {
                    signal::uninstall(sig);
                }
                lock_state().active = false;
                Err(e)
            }
        }
    }

    /// The directory the snapshots go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks for a dump as soon as possible; returns at once. Threads answer at their next safe
    /// point.
    pub fn request(&self) {
        request_dump();
    }

    /// Requests a dump, answers it for the calling thread, and waits until the snapshot is written
    /// (at most the deadline plus the time to write). Returns the file's path.
    ///
    /// # Errors
    /// The error of the dump (an I/O error writing the file), or `Interrupted` if the dumper
    /// stopped first.
    pub fn dump_now(&self) -> io::Result<PathBuf> {
        let mine = {
            let mut st = lock_state();
            st.requested += 1;
            CV.notify_all();
            st.requested
        };
        loop {
            poll();
            let st = lock_state();
            if st.served >= mine {
                return match (&st.last_error, &st.last_path) {
                    (None, Some(p)) => Ok(p.clone()),
                    (Some(e), _) => Err(io::Error::other(e.clone())),
                    (None, None) => Err(io::Error::other("no snapshot was written")),
                };
            }
            if !st.active || st.stop {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the memctx dumper stopped",
                ));
            }
            let (st, _) = CV
                .wait_timeout(st, ANSWER_POLL)
                .unwrap_or_else(PoisonError::into_inner);
            drop(st);
        }
    }

    /// Snapshots written so far by this dumper.
    pub fn written(&self) -> u64 {
        lock_state().written
    }

    /// The most recent snapshot file written, if any.
    pub fn last_path(&self) -> Option<PathBuf> {
        lock_state().last_path.clone()
    }

    /// Waits until this dumper has written at least `n` snapshots, or `timeout` passes; returns
    /// the number written.
    pub fn wait_written(&self, n: u64, timeout: Duration) -> u64 {
        let end = Instant::now() + timeout;
        let mut st = lock_state();
        while st.written < n {
            let now = Instant::now();
            if now >= end || !st.active {
                break;
            }
            st = CV
                .wait_timeout(st, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.written
    }

    /// Stops the writer (an open request is abandoned unwritten) and puts the previous signal
    /// handler back.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(handle) = self.writer.take() else {
            return;
        };
        {
            let mut st = lock_state();
            st.stop = true;
            CV.notify_all();
        }
        if handle.join().is_err() {
            log::error!("memctx: the dumper's writer thread panicked");
        }
        crate::registry::withdraw_dumper();
        if let Some(sig) = self.signal {
            signal::uninstall(sig);
        }
        let mut st = lock_state();
        st.active = false;
        st.stop = false;
        REQUEST.store(0, Ordering::Release);
        st.open_gen = 0;
        st.answers.clear();
        CV.notify_all();
    }
}

impl Drop for Dumper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Asks the running dumper for a dump, as the signal would; returns false if no dumper runs.
pub fn request_dump() -> bool {
    let mut st = lock_state();
    if !st.active || st.stop {
        return false;
    }
    st.requested += 1;
    CV.notify_all();
    true
}

/// Whether every live thread in the registry has answered.
fn all_answered(answers: &[ThreadCopy]) -> bool {
    registry_entries().all(|e| {
        e.state.load(Ordering::Acquire) != THREAD_LIVE
            || answers.iter().any(|a| a.snapshot.os_tid == e.os_tid)
    })
}

/// Reasons to dump that arrived and are not served yet.
#[derive(Default)]
struct Due {
    signal: bool,
    periodic: bool,
    next_periodic: Option<Instant>,
}

impl Due {
    /// Notes what arrived (a signal, the interval's end) and picks the trigger of the next dump:
    /// a signal first (its dump is a file of its own), then API requests, then the interval (a
    /// request's dump serves a periodic dump due at the same time).
    fn next(&mut self, config: &DumperConfig, api: bool) -> Option<Trigger> {
        let now = Instant::now();
        self.signal |= config.signal.is_some() && signal::take_pending();
        if self.next_periodic.is_some_and(|t| now >= t) {
            let d = config.interval.expect("periodic dumps have an interval");
            let t = self.next_periodic.expect("set with the interval") + d;
            self.next_periodic = Some(if t > now { t } else { now + d });
            self.periodic = true;
        }
        if core::mem::take(&mut self.signal) {
            Some(Trigger::Signal)
        } else if api {
            self.periodic = false;
            Some(Trigger::Request)
        } else {
            core::mem::take(&mut self.periodic).then_some(Trigger::Periodic)
        }
    }

    /// How long the idle writer may sleep.
    fn wait(&self, config: &DumperConfig) -> Duration {
        let now = Instant::now();
        let mut wait = self.next_periodic.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(now)
        });
        if config.signal.is_some() {
            wait = wait.min(SIGNAL_POLL);
        }
        wait
    }
}

/// The writer thread: waits for a reason to dump, collects the answers, writes the file.
fn writer(config: &DumperConfig, first_seq: u64) {
    let mut seq = first_seq;
    let mut due = Due {
        next_periodic: config.interval.map(|d| Instant::now() + d),
        ..Due::default()
    };
    let mut st = lock_state();
    loop {
        let Some((guard, trigger)) = wait_for_trigger(st, config, &mut due) else {
            return;
        };
        let covers = guard.requested;
        let Some(answers) = collect_answers(guard, config) else {
            return;
        };
        let mut snapshot = assemble(answers, seq);
        snapshot.trigger = Some(trigger);
        let path = config.dir.join(snapshot_file_name(seq));
        let result = write_snapshot(&path, &snapshot);
        if let (Ok(()), Some(n)) = (&result, config.keep) {
            prune(&config.dir, n);
        }
        st = lock_state();
        st.served = covers;
        match result {
            Ok(()) => {
                st.written += 1;
                st.last_path = Some(path);
                st.last_error = None;
                seq += 1;
            }
            Err(e) => {
                let msg = format!("memctx: writing {} failed: {e}", path.display());
                log::error!("{msg}");
                st.last_error = Some(msg);
            }
        }
        CV.notify_all();
    }
}

/// The writer idle: waits for a request, a signal, the next periodic dump, or stop (`None`).
fn wait_for_trigger<'a>(
    mut st: MutexGuard<'a, State>,
    config: &DumperConfig,
    due: &mut Due,
) -> Option<(MutexGuard<'a, State>, Trigger)> {
    loop {
        if st.stop {
            return None;
        }
        if let Some(t) = due.next(config, st.requested > st.served) {
            return Some((st, t));
        }
        st = CV
            .wait_timeout(st, due.wait(config))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Opens a request and collects the threads' answers until every live thread answered or the
/// deadline passed; closes it and returns them with the state unlocked (`None` on stop).
fn collect_answers(
    mut st: MutexGuard<'_, State>,
    config: &DumperConfig,
) -> Option<Vec<ThreadCopy>> {
    st.last_gen += 1;
    let gen = st.last_gen;
    st.open_gen = gen;
    st.answers.clear();
    REQUEST.store(gen, Ordering::Release);
    CV.notify_all();
    let deadline = Instant::now() + config.deadline;
    loop {
        if st.stop {
            REQUEST.store(0, Ordering::Release);
            st.open_gen = 0;
            st.answers.clear();
            return None;
        }
        let now = Instant::now();
        if all_answered(&st.answers) || now >= deadline {
            break;
        }
        st = CV
            .wait_timeout(st, (deadline - now).min(ANSWER_POLL))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    REQUEST.store(0, Ordering::Release);
    st.open_gen = 0;
    Some(core::mem::take(&mut st.answers))
}

/// Builds the snapshot from the answers: answered threads with their trees, exited threads whose
/// OS thread is gone with theirs (read here), every other thread in the registry (live but late,
/// or still exiting) as missing. Oldest thread first.
fn assemble(answers: Vec<ThreadCopy>, seq: u64) -> Snapshot {
    let mut entries: Vec<&ThreadEntry> = registry_entries().collect();
    entries.reverse();
    let mut answers: Vec<Option<ThreadCopy>> = answers.into_iter().map(Some).collect();
    let mut threads = Vec::with_capacity(entries.len());
    for e in entries {
        let state = e.state.load(Ordering::Acquire);
        let found = if state == THREAD_LIVE {
            answers
                .iter_mut()
                .find(|a| a.as_ref().is_some_and(|a| a.snapshot.os_tid == e.os_tid))
                .and_then(Option::take)
        } else {
            None
        };
        threads.push(match found {
            Some(copy) => {
                let sites = resolve_sites(&copy);
                let mut t = copy.snapshot;
                t.sites = sites;
                t
            }
            None if state == THREAD_EXITED => exited_thread(e),
            None => unanswered(e),
        });
    }
    Snapshot {
        format: SNAPSHOT_FORMAT.to_owned(),
        version: SNAPSHOT_VERSION,
        timestamp_ms: now_ms(),
        pid: std::process::id(),
        seq,
        threads,
        trigger: None,
    }
}

/// Deletes the oldest numbered snapshot files of `dir` beyond the newest `keep`.
fn prune(dir: &Path, keep: usize) {
    let files = match list_snapshots(dir) {
        Ok(files) => files,
        Err(e) => {
            log::warn!("memctx: listing {} to prune it: {e}", dir.display());
            return;
        }
    };
    let excess = files.len().saturating_sub(keep);
    for (_, path) in &files[..excess] {
        if let Err(e) = fs::remove_file(path) {
            log::warn!("memctx: removing {}: {e}", path.display());
        }
    }
}

/// A thread listed without its tree.
fn unanswered(e: &ThreadEntry) -> ThreadSnapshot {
    ThreadSnapshot {
        name: entry_name(e),
        os_tid: e.os_tid,
        missing: true,
        exited: false,
        exiting: false,
        contexts: Vec::new(),
        sites: Vec::new(),
    }
}

/// An exited thread: its tree, once its OS thread is gone; until then (its other thread-local
/// destructors may still use the tree) it is listed as exiting, without the tree.
fn exited_thread(e: &ThreadEntry) -> ThreadSnapshot {
    if e.top.is_null() || !os_thread_gone(e.os_tid) {
        return ThreadSnapshot {
            exiting: true,
            ..unanswered(e)
        };
    }
    // SAFETY: `e.top` is the exited thread's TopMemoryContext, which is never deleted (a thread's
    // top context lives as long as its tree, and the registry keeps the tree after the thread).
    // Its OS thread is gone, so no code runs on that thread any more, and no other thread may use
    // another thread's tree: nothing changes the tree while it is read here.
    let top = unsafe { MemoryContext::from_raw(e.top.cast()) };
    ThreadSnapshot {
        name: entry_name(e),
        os_tid: e.os_tid,
        missing: false,
        exited: true,
        exiting: false,
        contexts: crate::stats::rows(&top.stats()),
        sites: Vec::new(),
    }
}

/// Whether the thread `tid` of this process no longer exists (its `/proc/self/task` entry is
/// gone). A tid of 0 (unknown) never counts as gone. A tid the kernel has given to a new thread
/// counts as not gone, which only delays reading a tree.
fn os_thread_gone(tid: u32) -> bool {
    tid != 0
        && matches!(
            fs::metadata(format!("/proc/self/task/{tid}")),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        )
}

/// A registry entry's thread name.
fn entry_name(e: &ThreadEntry) -> Option<String> {
    let len = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
    (len > 0).then(|| String::from_utf8_lossy(&e.name[..len]).into_owned())
}

// ---------------------------------------------------------------------------------------------
// The signal handler.

mod signal {
    //! Installing, chaining and removing the dump signal's handler.

    use super::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
    use std::io;

    /// Set by the handler, taken by the writer.
    static PENDING: AtomicBool = AtomicBool::new(false);
    /// The signal our handler is installed for (0: none).
    static INSTALLED: AtomicI32 = AtomicI32::new(0);
    /// The action that was installed before ours, newest installation first. Each installation
    /// keeps its copy for the life of the process (a few hundred bytes), so a handler still running
    /// on another thread never reads freed memory; each copy links the one before it, so every copy
    /// stays reachable from this static (memcheck's leak search calls none of them lost).
    static PREVIOUS: AtomicPtr<Saved> = AtomicPtr::new(core::ptr::null_mut());

    /// One installation's copy of the previous action.
    struct Saved {
        action: libc::sigaction,
        /// The copy of the installation before, or null: never read, it only keeps that copy
        /// reachable.
        #[allow(dead_code)]
        older: *mut Saved,
    }

    /// Takes the flag the handler set.
    pub(super) fn take_pending() -> bool {
        PENDING.swap(false, Ordering::AcqRel)
    }

    /// The handler: sets the flag, then runs the previous handler. Only async-signal-safe work:
    /// atomic operations and a call.
    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
        PENDING.store(true, Ordering::Release);
        let prev = PREVIOUS.load(Ordering::Acquire);
        if prev.is_null() {
            return;
        }
        // SAFETY: `prev` was published before our handler was installed and is never freed.
        let prev = unsafe { &(*prev).action };
        let h = prev.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            return; // the default action of the dump signal would end the process
        }
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: with SA_SIGINFO, the previous owner installed a three-argument handler.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { core::mem::transmute(h) };
            f(sig, info, uctx);
        } else {
            // SAFETY: without SA_SIGINFO, the previous owner installed a one-argument handler.
            let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(h) };
            f(sig);
        }
    }

    /// Installs the handler for `sig`, remembering the current action for chaining.
    pub(super) fn install(sig: i32) -> io::Result<()> {
        // SAFETY: sigaction with a null new action only reads the current one into `old`.
        let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: as above; `old` is a valid out-parameter.
        if unsafe { libc::sigaction(sig, core::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let saved = Box::new(Saved {
            action: old,
            older: PREVIOUS.load(Ordering::Acquire),
        });
        PREVIOUS.store(Box::into_raw(saved), Ordering::Release);
        PENDING.store(false, Ordering::Release);
        // SAFETY: a zeroed sigaction is a valid starting point; the mask is emptied below.
        let mut new: libc::sigaction = unsafe { core::mem::zeroed() };
        new.sa_sigaction = handler as *const () as libc::sighandler_t;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `new.sa_mask` is a valid sigset; `new` is a fully initialised action whose
        // handler only does async-signal-safe work.
        let rc = unsafe {
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(sig, &new, core::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        INSTALLED.store(sig, Ordering::Release);
        Ok(())
    }

    /// Puts the previous action back, if ours is still the installed one.
    pub(super) fn uninstall(sig: i32) {
        if INSTALLED.swap(0, Ordering::AcqRel) != sig {
            return;
        }
        // SAFETY: querying the current action into a valid out-parameter.
        let mut cur: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::sigaction(sig, core::ptr::null(), &mut cur) } != 0 {
            return;
        }
        if cur.sa_sigaction != handler as *const () as libc::sighandler_t {
            return; // someone installed their own over ours: leave theirs alone
        }
        let prev = PREVIOUS.load(Ordering::Acquire);
        if prev.is_null() {
            return;
        }
        // SAFETY: `prev` is a valid, never-freed copy of the previous action.
        unsafe { libc::sigaction(sig, &(*prev).action, core::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with an interval and no signal: `Due::next` then reads no signal flag of its own,
    /// and the tests set `Due::signal` as the handler's flag would.
    fn periodic_config() -> DumperConfig {
        DumperConfig::new("unused").interval(Duration::from_secs(3600))
    }

    #[test]
    fn a_signal_due_with_a_periodic_dump_gets_a_file_of_its_own() {
        let config = periodic_config();
        let mut due = Due {
            signal: true,
            periodic: false,
            next_periodic: Some(Instant::now()),
        };
        assert_eq!(due.next(&config, false), Some(Trigger::Signal));
        assert_eq!(due.next(&config, false), Some(Trigger::Periodic));
        assert_eq!(due.next(&config, false), None);
    }

    #[test]
    fn a_request_serves_the_periodic_dump_due_with_it_but_not_the_signal() {
        let config = periodic_config();
        let mut due = Due {
            signal: true,
            periodic: false,
            next_periodic: Some(Instant::now()),
        };
        assert_eq!(due.next(&config, true), Some(Trigger::Signal));
        assert_eq!(due.next(&config, true), Some(Trigger::Request));
        assert_eq!(due.next(&config, false), None);
    }
}
