//! `report-cost first|later <ms>` (debug build, mode `backtraces`): the time from the `pfree` that
//! finds a one-byte overrun to the report's text in hand — the report raised under
//! `Policy::Log`, taken with `take_reports()` and formatted with `to_string()`, which is where its
//! stacks are symbolised. `first` is the process's first report (the debug information is loaded
//! then); `later` a second one, from another allocation site, so its stacks are new to the stack
//! depot but most of their frames were symbolised before. The reports go to a logger that drops
//! them, so the bench's output stays clean.

use crate::Config;

/// Measures `first` and `later` when this is the debug build in mode `backtraces` running every
/// workload; else nothing. Must run before any other report of the process.
pub(crate) fn bench_report_cost(cfg: &Config) -> Vec<(&'static str, f64)> {
    #[cfg(feature = "debug-contexts")]
    if cfg.mode == "backtraces" && cfg.only.is_none() {
        return measure();
    }
    let _ = cfg;
    Vec::new()
}

#[cfg(feature = "debug-contexts")]
fn measure() -> Vec<(&'static str, f64)> {
    use memctx::debug::{self, Policy};
    use memctx::{BlockSizes, MemoryContext};

    /// Takes every record and drops it.
    struct Drop;
    impl log::Log for Drop {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, _: &log::Record) {}
        fn flush(&self) {}
    }
    static DROP: Drop = Drop;
    if log::set_logger(&DROP).is_err() {
        println!("report-cost skipped: a logger is installed already");
        return Vec::new();
    }
    log::set_max_level(log::LevelFilter::Error);

    let ctx = MemoryContext::top().new_child("report cost", BlockSizes::SMALL);
    debug::set_thread_policy(Some(Policy::Log));
    let first = overrun_site_a(ctx);
    let later = overrun_site_b(ctx);
    debug::set_thread_policy(None);
    ctx.delete();
    log::set_max_level(log::LevelFilter::Off);
    vec![("first", first), ("later", later)]
}

/// Allocates 10 bytes, writes the 11th, and times its report (ms).
#[cfg(feature = "debug-contexts")]
#[inline(never)]
fn overrun_site_a(ctx: memctx::MemoryContext) -> f64 {
    time_report(ctx.alloc(10).as_ptr(), 10)
}

/// [`overrun_site_a`] from another site, with another size.
#[cfg(feature = "debug-contexts")]
#[inline(never)]
fn overrun_site_b(ctx: memctx::MemoryContext) -> f64 {
    time_report(ctx.alloc(24).as_ptr(), 24)
}

/// Writes the byte after the `len` requested at `p`, frees `p`, takes the report and formats it;
/// returns the milliseconds from the free to the text. Panics unless exactly that overrun was
/// reported.
#[cfg(feature = "debug-contexts")]
#[inline(never)]
fn time_report(p: *mut u8, len: usize) -> f64 {
    use std::hint::black_box;
    use std::time::Instant;
    // SAFETY: byte `len` is the chunk's rear redzone, inside its size class: the write stays in
    // memctx's block, and the debug build reports it at the free below (its purpose).
    unsafe { black_box(p).add(len).write(0) };
    let t0 = Instant::now();
    // SAFETY: a live chunk of a live context; under Policy::Log the overrun is logged and the
    // free carried out.
    unsafe { memctx::pfree(p) };
    let reports = memctx::debug::take_reports();
    let text: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(
        reports.len() == 1
            && reports[0].class == memctx::debug::BugClass::Overrun
            && reports[0].range == Some((len as isize, len as isize + 1)),
        "report-cost: expected one overrun of byte {len}, got:\n{}",
        text.join("\n")
    );
    black_box(text);
    ms
}
