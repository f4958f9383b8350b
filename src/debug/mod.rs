//! The debug build (`debug-contexts`): redzones, fill patterns, backtraces and checks.
//!
//! The debug build is the same allocator with a longer chunk prefix and the hook points of
//! `crate::hooks` filled in. Every chunk carries a record (state, requested size, backtrace ids), a
//! front redzone and a rear redzone; fresh, freed and unused memory hold recognisable patterns;
//! and the patterns are verified where memory changes hands and when a context is reset, deleted or
//! checked. What it finds becomes a [`Report`] of one of the [`BugClass`]es, raised according to the
//! [`Policy`].
//!
//! PostgreSQL's MEMORY_CONTEXT_CHECKING build is the model. It goes further in four ways: a
//! sentinel even when a request fills its size class, a redzone *before* the data, verification of
//! freed chunks when they are reused and of released space when it is carved again (PostgreSQL
//! wipes freed memory but never looks at it again), and the allocation and free backtraces of the
//! chunk that was hit, which turn "detected write past chunk end" into a file and a line.
//!
//! Modules: `layout` (the prefix and patterns), `blocks` (the registry of block ranges),
//! `quarantine` (released blocks kept back from the system and verified), `verify`
//! (comparisons and the context walk), `report` (reports, their builder and policy), `stack`
//! (backtrace capture and the stack depot), `settings`, `sanitizer` (the Valgrind and ASan
//! backends behind one interface, and [`tool_view`]: what the running tool believes about a range
//! of memory, for tests of what the debug build tells it), `vgmap` (blocks mapped under
//! memcheck), `guard` (guard pages after chunks with a block of their own), `fault` (the handler
//! of their faults), `sample` (guarded sampling of small chunks), and `hooks` (the glue the
//! allocator calls).
//!
//! # Examples
//! ```
//! use memctx::debug::{self, BugClass, Policy};
//! use memctx::{BlockSizes, MemoryContext};
//!
//! debug::set_thread_policy(Some(Policy::Log)); // collect instead of panicking
//! let ctx = MemoryContext::top().new_child("doc", BlockSizes::SMALL);
//! let p = ctx.alloc(10).as_ptr();
//! unsafe {
//!     p.add(10).write(0); // one byte past the request
//!     memctx::pfree(p);
//! }
//! let reports = debug::take_reports();
//! assert_eq!(reports[0].class, BugClass::Overrun);
//! assert_eq!(reports[0].range, Some((10, 11)));
//! ctx.delete();
//! debug::set_thread_policy(None);
//! ```

pub(crate) mod blocks;
mod cost;
mod fault;
mod guard;
pub(crate) mod hooks;
pub(crate) mod layout;
mod lineage;
mod quarantine;
mod report;
mod sample;
pub(crate) mod sanitizer;
mod settings;
pub(crate) mod sites;
pub(crate) mod stack;
mod verify;
mod vgmap;

pub use guard::{guard_stats, GuardStats};
pub use report::{
    default_policy, set_default_policy, set_thread_policy, take_reports, thread_policy, BugClass,
    Frame, Policy, Report,
};
pub use sanitizer::{tool, tool_view, write_unseen, ByteView, Tool};
pub use settings::{
    report_frames, report_stderr, reset_check, set_backtrace_depth, set_backtraces, set_guard_max,
    set_guard_pages, set_guard_quarantine, set_guard_sample, set_guard_seed, set_guard_slots,
    set_quarantine, set_redzone, set_report_frames, set_report_stderr, set_reset_check,
    set_thread_reset_check, ReportFrames, ReportStderr,
};
pub use sites::{format_sites, print_sites};
pub use verify::ResetCheck;

/// The median cost in nanoseconds of one backtrace capture `frames` deep (stack already in the
/// depot), for the benchmark; not part of the API.
#[doc(hidden)]
pub fn __bench_capture(frames: usize, iters: usize) -> f64 {
    stack::bench_capture(frames, iters)
}

/// Milliseconds the process's first report takes (from the `pfree` that finds a one-byte overrun
/// to the report's text, symbolised), then a later one's, for the benchmark's
/// `report-cost first|later <ms>` lines; not part of the API. Call it once, before any other
/// report in the process (else "first" is not the first); it prints nothing.
#[doc(hidden)]
pub fn __bench_report_cost() -> (f64, f64) {
    cost::report_cost()
}
