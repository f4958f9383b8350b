//! What a report costs: the time from the operation that finds a one-byte overrun to the report's
//! text, symbolised, for the benchmark's `report-cost first|later <ms>` lines.

use std::hint::black_box;
use std::time::Instant;

use crate::{BlockSizes, MemoryContext};

use super::report::{self, Policy};
use super::settings::{self, ReportStderr};
use super::stack;

/// Milliseconds the first report of the process takes, then a later one (a different allocation
/// site, so its stacks are new to the depot but their frames mostly known). Each report is
/// raised by `pfree` under [`Policy::Log`], taken back and formatted; neither goes to stderr.
/// Backtrace capture is on while it runs (a report then has an allocation stack to symbolise, as
/// at the default settings). "First" is only the process's first if no report was made before.
pub(crate) fn report_cost() -> (f64, f64) {
    let backtraces = stack::enabled();
    stack::set_enabled(true);
    let ctx = MemoryContext::top().new_child("report cost", BlockSizes::SMALL);
    let policy = report::thread_policy_override();
    report::set_thread_policy(Some(Policy::Log));
    let stderr = settings::report_stderr();
    settings::set_report_stderr(ReportStderr::Never);
    let first = overrun_site_a(&ctx);
    let later = overrun_site_b(&ctx);
    settings::set_report_stderr(stderr);
    report::set_thread_policy(policy);
    let _ = report::take_reports();
    ctx.delete();
    stack::set_enabled(backtraces);
    (first, later)
}

/// Allocates 10 bytes, writes the 11th and times the `pfree` that reports it and the report's
/// text, in ms.
#[inline(never)]
fn overrun_site_a(ctx: &MemoryContext) -> f64 {
    let p = ctx.alloc(10).as_ptr();
    time_overrun_free(p, 10)
}

/// [`overrun_site_a`] from another site.
#[inline(never)]
fn overrun_site_b(ctx: &MemoryContext) -> f64 {
    let p = ctx.alloc(24).as_ptr();
    time_overrun_free(p, 24)
}

fn time_overrun_free(p: *mut u8, len: usize) -> f64 {
    // SAFETY: byte `len` is the first byte of the chunk's rear redzone (at least 16 bytes past
    // every request), so it lies inside the chunk's size class in a block memctx owns: writable.
    // Written on purpose, so that `pfree` reports an overrun.
    unsafe { black_box(p).add(len).write(0) };
    let start = Instant::now();
    // SAFETY: a live chunk of a live context (the report is kept and the free carried out).
    unsafe { crate::pfree(p) };
    let reports = report::take_reports();
    // What telling it costs: its text, every stack symbolised.
    let text: String = black_box(reports.iter().map(|r| r.to_string()).collect());
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(reports.len(), 1, "the overrun was not reported");
    assert!(text.contains("allocated at:"), "{text}");
    ms
}
