//! Run-time settings of the debug build.
//!
//! Each setting has a default, an environment variable read once at first use, and a setter, so a
//! test or a host app can change it in code:
//!
//! | setting | default | environment |
//! |---|---|---|
//! | rear redzone bytes ([`set_redzone`]) | 16 | `MEMCTX_REDZONE` |
//! | verification depth ([`set_reset_check`], [`set_thread_reset_check`]) | `chunks` | `MEMCTX_RESET_CHECK=chunks\|full` |
//! | backtraces on/off ([`set_backtraces`]) | on | `MEMCTX_BACKTRACES=0\|1` |
//! | backtrace depth ([`set_backtrace_depth`]) | 16 | `MEMCTX_BACKTRACE_DEPTH` |
//! | report policy ([`super::set_default_policy`]) | panic | `MEMCTX_ON_ERROR=panic\|abort\|log` |

use core::cell::Cell;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::layout::DEFAULT_REDZONE;
use super::verify::ResetCheck;

/// 0: not read from the environment yet.
static REDZONE: AtomicUsize = AtomicUsize::new(0);
/// 0: not read yet; 1: chunks; 2: full.
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
/// `MEMCTX_RESET_CHECK`, `chunks` by default).
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
        _ => reset_check_from_env(),
    }
}

#[cold]
fn reset_check_from_env() -> ResetCheck {
    let c = match std::env::var("MEMCTX_RESET_CHECK").as_deref() {
        Ok("full") => ResetCheck::Full,
        _ => ResetCheck::Chunks,
    };
    set_reset_check(c);
    c
}

fn reset_check_code(check: ResetCheck) -> u8 {
    match check {
        ResetCheck::Chunks => 1,
        ResetCheck::Full => 2,
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
/// debug::set_reset_check(ResetCheck::Chunks); // the default
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
