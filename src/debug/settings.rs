//! Run-time settings of the debug build.
//!
//! Each setting has a default, an environment variable read once at first use, and a setter, so a
//! test or a host app can change it in code:
//!
//! | setting | default | environment |
//! |---|---|---|
//! | rear redzone bytes ([`set_redzone`]) | 16 | `MEMCTX_REDZONE` |
//! | verification depth ([`set_reset_check`], [`set_thread_reset_check`]) | `released` | `MEMCTX_RESET_CHECK=chunks\|released\|full` |
//! | quarantine of blocks a reset or delete releases, bytes per thread ([`set_quarantine`]; 0: off) | 8 MiB | `MEMCTX_QUARANTINE` |
//! | backtraces on/off ([`set_backtraces`]) | on | `MEMCTX_BACKTRACES=0\|1` |
//! | backtrace depth ([`set_backtrace_depth`]) | 16 | `MEMCTX_BACKTRACE_DEPTH` |
//! | report policy ([`super::set_default_policy`]) | panic | `MEMCTX_ON_ERROR=panic\|abort\|log` |
//! | guard pages after chunks with a block of their own ([`set_guard_pages`]) | on | `MEMCTX_GUARD_PAGES=0\|1` |
//! | guarded mappings at most ([`set_guard_max`]) | 16384 | `MEMCTX_GUARD_MAX` |
//! | bytes of freed guarded mappings kept inaccessible ([`set_guard_quarantine`]) | 16 MiB | `MEMCTX_GUARD_QUARANTINE` |
//! | reports also on stderr ([`set_report_stderr`]) | only without a logger | `MEMCTX_REPORT_STDERR=0\|1` |
//! | frames a report shows ([`set_report_frames`]) | the user's | `MEMCTX_REPORT_ALL_FRAMES=0\|1` |
//! | one small chunk in N guarded ([`set_guard_sample`]) | 0 (off) | `MEMCTX_GUARD_SAMPLE` |
//! | live sampled chunks at most ([`set_guard_slots`]) | 256 | `MEMCTX_GUARD_SLOTS` |
//! | seed of the sampling gaps ([`set_guard_seed`]; 0: exactly every N-th) | 0 | `MEMCTX_GUARD_SEED` |

use core::cell::Cell;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::layout::DEFAULT_REDZONE;
use super::verify::ResetCheck;

/// 0: not read from the environment yet.
static REDZONE: AtomicUsize = AtomicUsize::new(0);
/// 0: not read yet; 1: chunks; 2: full; 3: released.
static RESET_CHECK: AtomicU8 = AtomicU8::new(0);

/// Largest rear redzone accepted.
const MAX_REDZONE: usize = 4096;

/// Bytes of rear redzone new chunks get.
#[inline(always)]
pub(crate) fn redzone() -> usize {
    let r = REDZONE.load(Ordering::Relaxed);
    if r != 0 {
        r
    } else {
        redzone_from_env()
    }
}

#[cold]
fn redzone_from_env() -> usize {
    let r = std::env::var("MEMCTX_REDZONE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(valid_redzone)
        .unwrap_or(DEFAULT_REDZONE);
    REDZONE.store(r, Ordering::Relaxed);
    r
}

fn valid_redzone(n: usize) -> usize {
    (n.clamp(DEFAULT_REDZONE, MAX_REDZONE) + 7) & !7
}

/// Sets the rear redzone of chunks allocated from now on: at least 16 bytes, rounded up to a
/// multiple of 8 (so ASan can poison it exactly), at most 4096.
///
/// # Examples
/// ```
/// memctx::debug::set_redzone(32);
/// memctx::debug::set_redzone(16);
/// ```
pub fn set_redzone(bytes: usize) {
    REDZONE.store(valid_redzone(bytes), Ordering::Relaxed);
}

thread_local! {
    /// This thread's verification depth, overriding the process's (0: none; else `RESET_CHECK`'s
    /// codes).
    static THREAD_RESET_CHECK: Cell<u8> = const { Cell::new(0) };
}

/// How much resets and carving verify on this thread (see [`ResetCheck`]): this thread's setting
/// ([`set_thread_reset_check`]) if it has one, else the process's ([`set_reset_check`], or
/// `MEMCTX_RESET_CHECK`, `released` by default).
///
/// # Examples
/// ```
/// use memctx::debug::{self, ResetCheck};
/// debug::set_thread_reset_check(Some(ResetCheck::Full));
/// assert_eq!(debug::reset_check(), ResetCheck::Full);
/// debug::set_thread_reset_check(None);
/// ```
#[inline]
pub fn reset_check() -> ResetCheck {
    let code = match THREAD_RESET_CHECK.try_with(Cell::get) {
        Ok(0) | Err(_) => RESET_CHECK.load(Ordering::Relaxed),
        Ok(code) => code,
    };
    match code {
        1 => ResetCheck::Chunks,
        2 => ResetCheck::Full,
        3 => ResetCheck::Released,
        _ => reset_check_from_env(),
    }
}

#[cold]
fn reset_check_from_env() -> ResetCheck {
    let c = match std::env::var("MEMCTX_RESET_CHECK").as_deref() {
        Ok("full") => ResetCheck::Full,
        Ok("chunks") => ResetCheck::Chunks,
        _ => ResetCheck::Released,
    };
    set_reset_check(c);
    c
}

fn reset_check_code(check: ResetCheck) -> u8 {
    match check {
        ResetCheck::Chunks => 1,
        ResetCheck::Full => 2,
        ResetCheck::Released => 3,
    }
}

/// Sets how much resets and carving verify, for the whole process (threads with a setting of
/// their own keep it). Delete and [`crate::MemoryContext::check`] always verify fully. Overrides
/// `MEMCTX_RESET_CHECK`.
///
/// # Examples
/// ```
/// use memctx::debug::{self, ResetCheck};
/// debug::set_reset_check(ResetCheck::Full); // what MEMCTX_RESET_CHECK=full does
/// debug::set_reset_check(ResetCheck::Released); // the default
/// ```
pub fn set_reset_check(check: ResetCheck) {
    RESET_CHECK.store(reset_check_code(check), Ordering::Relaxed);
}

/// Sets how much resets and carving verify on the calling thread only (`None`: back to the
/// process's setting). Tests use it, as they use [`super::set_thread_policy`], because cargo runs
/// them in parallel threads of one process.
pub fn set_thread_reset_check(check: Option<ResetCheck>) {
    let code = check.map_or(0, reset_check_code);
    let _ = THREAD_RESET_CHECK.try_with(|c| c.set(code));
}

/// Switches the capture of allocation and free backtraces on or off.
pub fn set_backtraces(on: bool) {
    super::stack::set_enabled(on);
}

/// Sets how many frames a backtrace keeps (1 to 64).
pub fn set_backtrace_depth(frames: usize) {
    super::stack::set_depth(frames);
}

/// A process-wide `usize` setting read from the environment at first use: `usize::MAX` means
/// "not read yet".
struct EnvSetting {
    value: AtomicUsize,
    var: &'static str,
    default: usize,
}

impl EnvSetting {
    const fn new(var: &'static str, default: usize) -> EnvSetting {
        EnvSetting {
            value: AtomicUsize::new(usize::MAX),
            var,
            default,
        }
    }

    #[inline]
    fn get(&self) -> usize {
        match self.value.load(Ordering::Relaxed) {
            usize::MAX => self.read_env(),
            v => v,
        }
    }

    #[cold]
    fn read_env(&self) -> usize {
        let v = std::env::var(self.var)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(self.default)
            .min(usize::MAX - 1);
        self.value.store(v, Ordering::Relaxed);
        v
    }

    fn set(&self, v: usize) {
        self.value.store(v.min(usize::MAX - 1), Ordering::Relaxed);
    }
}

static GUARD_PAGES: EnvSetting = EnvSetting::new("MEMCTX_GUARD_PAGES", 1);
static GUARD_MAX: EnvSetting = EnvSetting::new("MEMCTX_GUARD_MAX", super::guard::TABLE_SIZE);
static GUARD_QUARANTINE: EnvSetting = EnvSetting::new("MEMCTX_GUARD_QUARANTINE", 16 << 20);

/// Whether chunks with a block of their own get a guard page (natively; see [`set_guard_pages`]).
#[inline]
pub(crate) fn guard_pages() -> bool {
    GUARD_PAGES.get() != 0
}

/// Turns guard pages on or off for chunks allocated from now on (`MEMCTX_GUARD_PAGES=0|1`, on by
/// default). With them, a chunk above the chunk limit ends at an inaccessible page, so an
/// overrun past its redzone or a use after its free faults at the instruction; under memcheck
/// and ASan they are never used (those tools see such accesses themselves).
///
/// # Examples
/// ```
/// memctx::debug::set_guard_pages(false);
/// memctx::debug::set_guard_pages(true); // the default
/// ```
pub fn set_guard_pages(on: bool) {
    GUARD_PAGES.set(usize::from(on));
}

/// Most guarded mappings in use at once.
#[inline]
pub(crate) fn guard_max() -> usize {
    GUARD_MAX.get()
}

/// Caps the guarded mappings in use — live, quarantined and cached — at `n` (`MEMCTX_GUARD_MAX`;
/// default and most 16384, which with two kernel mappings each stays well inside the default
/// `vm.max_map_count` of 65,530). Past the cap a chunk gets an ordinary block
/// ([`super::GuardStats::fallbacks`] counts them).
pub fn set_guard_max(n: usize) {
    GUARD_MAX.set(n);
}

/// Bytes of freed guarded mappings kept inaccessible.
#[inline]
pub(crate) fn guard_quarantine() -> usize {
    GUARD_QUARANTINE.get()
}

/// Sets how many bytes of freed guarded mappings stay inaccessible, so a use after free faults
/// (`MEMCTX_GUARD_QUARANTINE`, default 16 MiB). 0 turns the quarantine off: a freed mapping is
/// reused as it is, and steady large alloc/free makes no system call; with it, each free and
/// each reuse costs one `mprotect`.
pub fn set_guard_quarantine(bytes: usize) {
    GUARD_QUARANTINE.set(bytes);
}

/// When a report is also printed to stderr (it always goes to `log`, target `memctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportStderr {
    /// Only when no logger is installed (`log::max_level()` is `Off`): the default.
    NoLogger,
    /// Always (`MEMCTX_REPORT_STDERR=1`), say for a host whose logger drops error lines.
    Always,
    /// Never (`MEMCTX_REPORT_STDERR=0`): reports reach only `log` and [`super::take_reports`].
    Never,
}

impl ReportStderr {
    /// Whether a report made now goes to stderr.
    pub(crate) fn wanted(self) -> bool {
        match self {
            ReportStderr::NoLogger => log::max_level() == log::LevelFilter::Off,
            ReportStderr::Always => true,
            ReportStderr::Never => false,
        }
    }
}

/// Which frames a report's backtraces show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFrames {
    /// The program's own: frames of std, core, alloc, the test harness (`test::`), the panic and
    /// start-up machinery and memctx itself are left out (the default).
    User,
    /// Every captured frame (`MEMCTX_REPORT_ALL_FRAMES=1`).
    All,
}

/// `MEMCTX_REPORT_STDERR`: 0 never, 1 always, anything else (2 by default) without a logger.
static REPORT_STDERR: EnvSetting = EnvSetting::new("MEMCTX_REPORT_STDERR", 2);
/// `MEMCTX_REPORT_ALL_FRAMES`: 1 every frame, anything else the program's.
static REPORT_ALL_FRAMES: EnvSetting = EnvSetting::new("MEMCTX_REPORT_ALL_FRAMES", 0);

/// Whether reports also go to stderr: [`set_report_stderr`], else `MEMCTX_REPORT_STDERR` (`1`:
/// always, `0`: never; unset: only without a logger).
pub fn report_stderr() -> ReportStderr {
    match REPORT_STDERR.get() {
        0 => ReportStderr::Never,
        1 => ReportStderr::Always,
        _ => ReportStderr::NoLogger,
    }
}

/// Sets whether reports also go to stderr, for the whole process. Overrides
/// `MEMCTX_REPORT_STDERR`.
///
/// # Examples
/// ```
/// use memctx::debug::{self, ReportStderr};
/// debug::set_report_stderr(ReportStderr::Never); // log only
/// debug::set_report_stderr(ReportStderr::NoLogger); // the default
/// ```
pub fn set_report_stderr(when: ReportStderr) {
    REPORT_STDERR.set(match when {
        ReportStderr::Never => 0,
        ReportStderr::Always => 1,
        ReportStderr::NoLogger => 2,
    });
}

/// Which frames reports show: [`set_report_frames`], else `MEMCTX_REPORT_ALL_FRAMES` (`1`: all;
/// the program's by default).
pub fn report_frames() -> ReportFrames {
    if REPORT_ALL_FRAMES.get() == 1 {
        ReportFrames::All
    } else {
        ReportFrames::User
    }
}

/// Sets which frames reports show, for the whole process. Overrides `MEMCTX_REPORT_ALL_FRAMES`.
///
/// # Examples
/// ```
/// use memctx::debug::{self, ReportFrames};
/// debug::set_report_frames(ReportFrames::All); // std, the harness and memctx too
/// debug::set_report_frames(ReportFrames::User); // the default
/// ```
pub fn set_report_frames(frames: ReportFrames) {
    REPORT_ALL_FRAMES.set(usize::from(frames == ReportFrames::All));
}

static GUARD_SAMPLE: EnvSetting = EnvSetting::new("MEMCTX_GUARD_SAMPLE", 0);
static GUARD_SLOTS: EnvSetting = EnvSetting::new("MEMCTX_GUARD_SLOTS", 256);
static GUARD_SEED: EnvSetting = EnvSetting::new("MEMCTX_GUARD_SEED", 0);

/// One small chunk in how many is sampled (0: none).
#[inline]
pub(crate) fn guard_sample() -> usize {
    GUARD_SAMPLE.get()
}

/// Samples one small chunk in `n` into a guarded mapping of its own (`MEMCTX_GUARD_SAMPLE`; 0,
/// the default, turns sampling off). Takes effect at once on the calling thread, on others within
/// 4096 allocations. See `src/debug/sample.rs` for the memory it costs.
///
/// # Examples
/// ```
/// memctx::debug::set_guard_sample(1000);
/// memctx::debug::set_guard_sample(0); // the default
/// ```
pub fn set_guard_sample(n: usize) {
    GUARD_SAMPLE.set(n);
    super::sample::restart();
}

/// Most live sampled chunks.
#[inline]
pub(crate) fn guard_slots() -> usize {
    GUARD_SLOTS.get()
}

/// Sets how many sampled chunks may live at once (`MEMCTX_GUARD_SLOTS`, default 256): each
/// takes a page, so the slots bound sampling's memory. While all are taken nothing is sampled.
pub fn set_guard_slots(n: usize) {
    GUARD_SLOTS.set(n);
}

/// The seed of the sampling gaps.
#[inline]
pub(crate) fn guard_seed() -> usize {
    GUARD_SEED.get()
}

/// Sets the seed of the sampling gaps (`MEMCTX_GUARD_SEED`): 0, the default, samples exactly
/// every N-th allocation of each thread; another seed draws the gaps from 1 ..= 2N−1, the same
/// on every run. Restarts the calling thread's countdown.
pub fn set_guard_seed(seed: usize) {
    GUARD_SEED.set(seed);
    super::sample::restart();
}

/// Bytes of quarantine per thread when nothing else is set.
pub(crate) const DEFAULT_QUARANTINE: usize = 8 << 20;

static QUARANTINE: EnvSetting = EnvSetting::new("MEMCTX_QUARANTINE", DEFAULT_QUARANTINE);

/// Bytes of released blocks each thread keeps in quarantine (see `debug::quarantine`).
#[inline]
pub(crate) fn quarantine() -> usize {
    QUARANTINE.get()
}

/// Sets how many bytes of the blocks a reset or delete releases each thread keeps in quarantine
/// (filled with the freed pattern, closed to Valgrind and ASan, verified when they leave it, at
/// [`crate::MemoryContext::check`] and at thread exit) before they go back to the system
/// (`MEMCTX_QUARANTINE`, default 8 MiB); 0 turns the quarantine off. A block larger than the
/// quarantine goes back at once.
///
/// # Examples
/// ```
/// memctx::debug::set_quarantine(64 << 20); // hunt a stale pointer into a large context
/// memctx::debug::set_quarantine(8 << 20); // the default
/// ```
pub fn set_quarantine(bytes: usize) {
    QUARANTINE.set(bytes);
}
