//! Reports: what the debug build found, how it is told, and what happens next.
//!
//! A finding becomes a [`Report`] naming its [`BugClass`] (one list of names, the same in code,
//! tests and docs), the context and its path from Top, the chunk and its requested size, the
//! damaged bytes relative to the chunk with what was expected and what was found, the chunk's
//! allocation and free backtraces, and where the damage was found.
//!
//! Every report goes to `log` (target `memctx`, error level), and to stderr when no logger is
//! installed or `MEMCTX_REPORT_STDERR` asks for it (see `settings`); it is kept for
//! [`take_reports`], and then the thread's [`Policy`] decides: panic (the default, so `cargo test`
//! fails at the faulty test), abort, or log and go on. The panic message is the report's headline
//! and detail only, so the report is printed once. A report is raised only when the allocator's
//! state is consistent — checks that run in the middle of an operation queue their findings and
//! the operation raises them as its last step — and a panic is never raised where it cannot unwind:
//! while the thread is already panicking (a `Drop` during unwinding) the report is told and not
//! panicked, so the test that is failing fails alone instead of aborting its test binary.

use core::cell::{Cell, RefCell};
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::settings;
use super::stack::{self, StackId};
use crate::context::ContextHeader;

/// The bug classes the debug build reports; the same names are used in reports, tests and docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BugClass {
    /// Bytes past the requested size written (rear redzone damaged).
    Overrun,
    /// Bytes before the chunk's data written (front redzone damaged).
    Underrun,
    /// A freed chunk, or memory a reset or delete released, written through an old pointer.
    WriteAfterFree,
    /// Bytes no chunk owns written: block headers, unused block space.
    WildWrite,
    /// A chunk freed twice.
    DoubleFree,
    /// A pointer that is not a chunk: foreign, interior, misaligned, null.
    InvalidPointer,
    /// A chunk freed or reallocated through a context that does not own it, or a header naming
    /// another context.
    WrongContext,
    /// A chunk's header or debug record overwritten.
    CorruptHeader,
}

impl BugClass {
    /// The class's name as used everywhere: `overrun`, `underrun`, `write-after-free`,
    /// `wild-write`, `double-free`, `invalid-pointer`, `wrong-context`, `corrupt-header`.
    pub fn name(self) -> &'static str {
        match self {
            BugClass::Overrun => "overrun",
            BugClass::Underrun => "underrun",
            BugClass::WriteAfterFree => "write-after-free",
            BugClass::WildWrite => "wild-write",
            BugClass::DoubleFree => "double-free",
            BugClass::InvalidPointer => "invalid-pointer",
            BugClass::WrongContext => "wrong-context",
            BugClass::CorruptHeader => "corrupt-header",
        }
    }
}

impl fmt::Display for BugClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One finding of the debug build.
#[derive(Clone, Debug)]
pub struct Report {
    /// What kind of bug.
    pub class: BugClass,
    /// Name of the context the damaged memory belongs to (empty if none: a foreign pointer).
    pub context: String,
    /// Names from Top down to that context.
    pub context_path: Vec<String>,
    /// Address of the chunk's data, where a chunk is involved.
    pub chunk: Option<usize>,
    /// The chunk's requested size, where known.
    pub requested: Option<usize>,
    /// Damaged byte range `[start, end)`, relative to the chunk's data (negative: before it), or
    /// to the block start when no chunk is involved (`chunk` is `None`).
    pub range: Option<(isize, isize)>,
    /// The bytes that should have been there (at most 64 shown).
    pub expected: Vec<u8>,
    /// The bytes found there.
    pub found: Vec<u8>,
    /// Where it was found: `pfree`, `repalloc`, `reuse`, `reset of "X"`, `delete of "X"`, `check`.
    pub found_at: String,
    /// A sentence of detail.
    pub detail: String,
    pub(crate) alloc_stack: StackId,
    pub(crate) free_stack: StackId,
    /// The stack of the operation that found it (the pfree, reset, check).
    pub(crate) found_stack: StackId,
}

/// One resolved frame of a backtrace.
pub use super::stack::ResolvedFrame as Frame;

/// Most damaged bytes a report shows (expected and found).
const SHOWN_BYTES: usize = 64;

/// Building a report: `Report::at(class, found_at)`, then the setters for what the finding knows
/// (`context`, `chunk`, `stacks`, `damage`, `detail`); what is not set stays empty.
impl Report {
    /// A report of `class`, found at `found_at` (`pfree`, `reset of "X"`, ...), with the stack
    /// of the call that found it and nothing else known yet.
    pub(crate) fn at(class: BugClass, found_at: &str) -> Report {
        Report {
            class,
            context: String::new(),
            context_path: Vec::new(),
            chunk: None,
            requested: None,
            range: None,
            expected: Vec::new(),
            found: Vec::new(),
            found_at: found_at.to_owned(),
            detail: String::new(),
            alloc_stack: StackId::NONE,
            free_stack: StackId::NONE,
            found_stack: stack::capture_always(),
        }
    }

    /// The context the memory belongs to, and its path from Top; a null `ctx` names none (a
    /// foreign pointer).
    ///
    /// # Safety
    /// `ctx` must be null or a live context header (its ancestors are then live too).
    pub(crate) unsafe fn context(mut self, ctx: *mut ContextHeader) -> Report {
        if !ctx.is_null() {
            // SAFETY: a live context (caller).
            let (name, path) = unsafe { context_names(ctx) };
            self.context = name;
            self.context_path = path;
        }
        self
    }

    /// The chunk (its data address) and its requested size, where known.
    pub(crate) fn chunk(mut self, data: usize, requested: Option<usize>) -> Report {
        self.chunk = Some(data);
        self.requested = requested;
        self
    }

    /// The chunk's allocation and free stack ids (0: none).
    pub(crate) fn stacks(mut self, alloc: u32, free: u32) -> Report {
        self.alloc_stack = StackId::from_raw(alloc);
        self.free_stack = StackId::from_raw(free);
        self
    }

    /// The damaged bytes: `range` relative to the chunk's data (or the block start), starting at
    /// `at`, which should all hold `expected`. Copies up to [`SHOWN_BYTES`] of them.
    ///
    /// # Safety
    /// The `range.1 - range.0` bytes from `at` (or the first [`SHOWN_BYTES`]) must be readable.
    pub(crate) unsafe fn damage(
        mut self,
        at: *const u8,
        range: (isize, isize),
        expected: u8,
    ) -> Report {
        let shown = ((range.1 - range.0).max(0) as usize).min(SHOWN_BYTES);
        // SAFETY: readable (caller).
        self.found = unsafe { core::slice::from_raw_parts(at, shown).to_vec() };
        self.expected = vec![expected; shown];
        self.range = Some(range);
        self
    }

    /// The sentence of detail.
    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Report {
        self.detail = detail.into();
        self
    }
}

/// Name and path from Top of a context.
///
/// # Safety
/// `ctx` must be a live header.
pub(crate) unsafe fn context_names(ctx: *mut ContextHeader) -> (String, Vec<String>) {
    let mut path = Vec::new();
    let mut c = ctx;
    // SAFETY: the ancestors of a live context are live, and Top's parent is null.
    unsafe {
        while !c.is_null() {
            path.push((*c).name().to_owned());
            c = (*c).parent;
        }
    }
    path.reverse();
    (path.last().cloned().unwrap_or_default(), path)
}

impl Report {
    /// The chunk's allocation backtrace (empty if none was captured). Frames of the standard
    /// library, the test harness and memctx itself are left out unless
    /// [`super::set_report_frames`] says `All`.
    pub fn alloc_backtrace(&self) -> Vec<Frame> {
        stack::shown(self.alloc_stack)
    }

    /// The chunk's free backtrace (for memory a reset released, the reset's), where there is one;
    /// for a double free, the first free.
    pub fn free_backtrace(&self) -> Vec<Frame> {
        stack::shown(self.free_stack)
    }

    /// The backtrace of the operation that found the bug: the `pfree` of a double free or an
    /// invalid pointer, the reset, delete, `check()` or reuse that found damage.
    pub fn found_backtrace(&self) -> Vec<Frame> {
        stack::shown(self.found_stack)
    }

    /// The report's first line: class, context and where it was found.
    pub fn headline(&self) -> String {
        let context = if self.context_path.is_empty() {
            "outside every memory context".to_owned()
        } else {
            format!(
                "in memory context \"{}\" ({})",
                self.context,
                self.context_path.join(" -> ")
            )
        };
        format!(
            "memctx: {} {context}, found at {}",
            self.class, self.found_at
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.headline())?;
        writeln!(f, "  {}", self.detail)?;
        if let Some(c) = self.chunk {
            match self.requested {
                Some(r) => writeln!(f, "  chunk {c:#x}, {r} bytes requested")?,
                None => writeln!(f, "  chunk {c:#x}")?,
            }
        }
        if let Some((a, b)) = self.range {
            let base = if self.chunk.is_some() {
                "the chunk's data"
            } else {
                "the block start"
            };
            writeln!(f, "  damaged bytes [{a}, {b}) relative to {base}")?;
            writeln!(f, "    expected: {}", hex(&self.expected))?;
            writeln!(f, "    found:    {}", hex(&self.found))?;
        }
        // ASan's order: the access, then the free, then the allocation.
        let sections = [
            (
                format!("found at {}:", self.found_at),
                self.found_backtrace(),
            ),
            ("freed at:".to_owned(), self.free_backtrace()),
            ("allocated at:".to_owned(), self.alloc_backtrace()),
        ];
        for (title, frames) in sections {
            if !frames.is_empty() {
                writeln!(f, "  {title}")?;
                f.write_str(&stack::format_frames(&frames))?;
            }
        }
        Ok(())
    }
}

/// What follows a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Panic with the report (the default): `cargo test` fails at the faulty test.
    Panic,
    /// Abort the process after logging.
    Abort,
    /// Log and go on; the faulty operation is skipped where going on would corrupt memory (a
    /// double or invalid free), and carried out where it is safe (an overrun found at pfree).
    Log,
}

/// 0: not yet read from the environment; 1..=3: a [`Policy`].
static DEFAULT_POLICY: AtomicU8 = AtomicU8::new(0);

fn policy_code(p: Policy) -> u8 {
    match p {
        Policy::Panic => 1,
        Policy::Abort => 2,
        Policy::Log => 3,
    }
}

fn code_policy(c: u8) -> Policy {
    match c {
        2 => Policy::Abort,
        3 => Policy::Log,
        _ => Policy::Panic,
    }
}

/// The process-wide default policy: `MEMCTX_ON_ERROR` (`panic`, `abort` or `log`), read once,
/// else [`Policy::Panic`].
pub fn default_policy() -> Policy {
    let c = DEFAULT_POLICY.load(Ordering::Relaxed);
    if c != 0 {
        return code_policy(c);
    }
    let p = match std::env::var("MEMCTX_ON_ERROR").as_deref() {
        Ok("abort") => Policy::Abort,
        Ok("log") => Policy::Log,
        _ => Policy::Panic,
    };
    DEFAULT_POLICY.store(policy_code(p), Ordering::Relaxed);
    p
}

/// Sets the process-wide default policy (overrides `MEMCTX_ON_ERROR`).
pub fn set_default_policy(policy: Policy) {
    DEFAULT_POLICY.store(policy_code(policy), Ordering::Relaxed);
}

thread_local! {
    static THREAD_POLICY: Cell<Option<Policy>> = const { Cell::new(None) };
    static SEEN: RefCell<Vec<Report>> = const { RefCell::new(Vec::new()) };
    static PENDING: RefCell<Vec<Report>> = const { RefCell::new(Vec::new()) };
}

/// Findings queued by [`defer`] and not yet raised, in every thread together. Every allocation
/// and free ends in [`raise_pending`]; with this at zero — nearly always — that is one load of a
/// shared, read-mostly word instead of a look at this thread's queue (a thread-local with a
/// destructor, so each access also checks the thread's state). A thread that exits with findings
/// queued leaves it above zero, which only sends the others down the slower, still exact path.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Most reports kept per thread for [`take_reports`]; older ones are dropped first.
const MAX_KEPT_REPORTS: usize = 1024;

/// Sets this thread's policy (`None`: back to the default). Tests use it to collect reports
/// without panicking, for their own thread only.
pub fn set_thread_policy(policy: Option<Policy>) {
    THREAD_POLICY.with(|p| p.set(policy));
}

/// This thread's own policy, if it has one ([`set_thread_policy`]).
pub(crate) fn thread_policy_override() -> Option<Policy> {
    THREAD_POLICY.try_with(|p| p.get()).ok().flatten()
}

/// This thread's policy.
pub fn thread_policy() -> Policy {
    THREAD_POLICY
        .try_with(|p| p.get())
        .ok()
        .flatten()
        .unwrap_or_else(default_policy)
}

/// Takes the reports this thread has raised so far (oldest first).
pub fn take_reports() -> Vec<Report> {
    SEEN.try_with(|s| core::mem::take(&mut *s.borrow_mut()))
        .unwrap_or_default()
}

/// Queues a finding made in the middle of an operation; the operation raises it when done.
pub(crate) fn defer(report: Report) {
    let mut slot = Some(report);
    let _ = PENDING.try_with(|p| p.borrow_mut().push(slot.take().expect("once")));
    match slot {
        // The thread's queue is gone (thread exit): raise it now.
        Some(report) => raise(report),
        None => {
            QUEUED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Queues several findings. Nearly always there are none: that case is a length test.
#[inline]
pub(crate) fn defer_all(reports: Vec<Report>) {
    if !reports.is_empty() {
        defer_found(reports);
    }
}

/// [`defer_all`] once there is something to queue.
#[cold]
#[inline(never)]
fn defer_found(reports: Vec<Report>) {
    for r in reports {
        defer(r);
    }
}

/// Raises every queued finding. Runs at the end of every allocator operation, so the common case
/// — nothing queued — only reads [`QUEUED`].
#[inline]
pub(crate) fn raise_pending() {
    // This thread's own increments are always visible to it, so zero means its queue is empty.
    if QUEUED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let queued = PENDING
        .try_with(|p| p.try_borrow().is_ok_and(|p| !p.is_empty()))
        .unwrap_or(false);
    if queued {
        raise_queued();
    }
}

/// [`raise_pending`] once something is queued.
#[cold]
#[inline(never)]
fn raise_queued() {
    let pending = PENDING
        .try_with(|p| core::mem::take(&mut *p.borrow_mut()))
        .unwrap_or_default();
    QUEUED.fetch_sub(pending.len(), Ordering::Relaxed);
    raise_all(pending);
}

/// Raises several findings: all are logged and kept, then the policy acts once.
#[inline]
pub(crate) fn raise_all(reports: Vec<Report>) {
    if !reports.is_empty() {
        raise_found(reports);
    }
}

/// [`raise_all`] once there is something to raise.
#[cold]
#[inline(never)]
fn raise_found(reports: Vec<Report>) {
    let Some(first) = reports.first().cloned() else {
        return;
    };
    let n = reports.len();
    for r in reports {
        record(&r);
    }
    act(&first, n);
}

/// Raises one finding.
pub(crate) fn raise(report: Report) {
    record(&report);
    act(&report, 1);
}

/// Tells a report: to `log` (target `memctx`, error level), and to stderr as
/// [`settings::report_stderr`] says; then keeps it for [`take_reports`]. A report nobody will
/// read (filtered out, no stderr) is not formatted, which spares its symbolisation.
fn record(report: &Report) {
    let to_log = log::log_enabled!(target: "memctx", log::Level::Error);
    let to_stderr = settings::report_stderr().wanted();
    if to_log || to_stderr {
        let text = report.to_string();
        if to_log {
            log::error!(target: "memctx", "{text}");
        }
        if to_stderr {
            eprintln!("{text}");
        }
    }
    let _ = SEEN.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() == MAX_KEPT_REPORTS {
            s.remove(0);
        }
        s.push(report.clone());
    });
}

/// What the policy says after `n` reports, `first` the first of them, were told. The panic
/// carries only the headline and detail: the report itself was told once already, and a panic
/// message is printed again by the panic hook.
fn act(first: &Report, n: usize) {
    match thread_policy() {
        Policy::Log => {}
        Policy::Abort => std::process::abort(),
        // A panic while unwinding would abort the process (and with it every other test of a
        // test binary); this thread's panic already fails its test, and the report is told.
        Policy::Panic if std::thread::panicking() => {}
        Policy::Panic => {
            let more = if n > 1 {
                format!(" (and {} more reports)", n - 1)
            } else {
                String::new()
            };
            panic!("{}{more}: {}", first.headline(), first.detail);
        }
    }
}
