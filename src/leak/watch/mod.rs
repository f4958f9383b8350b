//! `memctx watch`: the article's loop — dump a process's contexts every few seconds and compare —
//! as one command.
//!
//! A [`Source`] takes one dump of the watched process into the series directory:
//! - a memctx program whose registry publishes a running dumper with a signal ([`host`]): the
//!   signal, and the dumper's own file for it copied into the series (the process is not
//!   stopped: each thread copies its own tree at a safe point). The signal is sent only when the
//!   registry says the dumper is on *and* `/proc/PID/status` shows the signal caught: an
//!   unhandled `SIGUSR1` ends a process;
//! - any other memctx program: gdb with the walker (`valgrind/memctx_gdb.py`, carried inside this
//!   binary), which stops the process while it reads the trees;
//! - a PostgreSQL backend ([`pg`]): `pg_log_backend_memory_contexts(PID)` through psql, and the
//!   dump read back from the server log.
//!
//! [`watch`] runs the loop: a dump every interval, each dump's stop time printed (with a warning
//! when it exceeds a tenth of the interval), and the ranking redrawn ([`view`]) until Ctrl-C,
//! `count` dumps or `duration`. The series stays on disk for `memctx diff` and `memctx report`.

pub mod host;
pub mod pg;
pub mod procmem;
pub mod view;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::diff::DiffStream;
use super::parse::parse_file;

/// An error that ends the watch, with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchError(pub String);

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WatchError {}

impl From<String> for WatchError {
    fn from(s: String) -> WatchError {
        WatchError(s)
    }
}

/// One dump taken by a [`Source`].
#[derive(Debug, Clone)]
pub struct Taken {
    /// The file of the dump in the series directory.
    pub path: PathBuf,
    /// How long the dump took.
    pub took: Duration,
    /// Whether the process was stopped for all of `took` (gdb), or kept running (signal, log).
    pub stopped: bool,
}

/// A way of dumping the watched process.
pub trait Source {
    /// How the dumps are taken, for the user.
    fn describe(&self) -> String;
    /// Takes dump number `n` into `out`.
    ///
    /// # Errors
    /// Why the dump could not be taken (the process is gone, gdb failed, the log stayed silent).
    fn take(&mut self, n: u64, out: &Path) -> Result<Taken, WatchError>;
}

/// How to watch, and when to stop.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Time between the starts of two dumps.
    pub every: Duration,
    /// The series directory.
    pub out: PathBuf,
    /// Stop after this many dumps.
    pub count: Option<u64>,
    /// Stop once this much time has passed.
    pub duration: Option<Duration>,
    /// Rows of the ranking.
    pub top: usize,
    /// The bytes that decide verdicts, ranking and sparklines.
    pub metric: crate::leak::Metric,
    /// Redraw the screen each interval (a terminal) instead of printing one line per dump.
    pub live: bool,
}

/// Set by the SIGINT handler [`stop_on_ctrl_c`] installs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Release);
}

/// Makes Ctrl-C end the watch after the current dump instead of killing the program, so the view
/// is printed one last time.
///
/// # Errors
/// The OS error of `sigaction`.
pub fn stop_on_ctrl_c() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
    // async-signal-safe, and `sa_mask` is initialised by sigemptyset before use.
    let rc = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, core::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Parses a duration: a number with `ms`, `s`, `m` or `h` (`500ms`, `10s`, `2m`, `1h`); a bare
/// number is seconds.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (value, unit) = number_and_unit(s)
        .ok_or_else(|| format!("{s:?}: expected a number and a unit (500ms, 10s, 2m, 1h)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    let d = Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Splits `12.5ms` into 12.5 and `ms`; `None` when it does not start with a number.
pub(crate) fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit))
}

/// Creates the series directory, refusing one that already holds files: a series is one watch.
///
/// # Errors
/// The directory is not empty, or cannot be created.
pub fn prepare_out(out: &Path) -> Result<(), WatchError> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
    let mut entries =
        std::fs::read_dir(out).map_err(|e| format!("{}: cannot list: {e}", out.display()))?;
    if entries.next().is_some() {
        return Err(WatchError(format!(
            "{}: not empty; a series directory holds one watch (choose another --out, or empty it)",
            out.display()
        )));
    }
    Ok(())
}

/// The status line of one dump, and a warning when the process was held too long.
fn stop_line(n: u64, taken: &Taken, every: Duration) -> String {
    let what = if taken.stopped {
        "process stopped for"
    } else {
        "dump took (process kept running)"
    };
    let mut line = format!(
        "dump {n}: {what} {:.3} s -> {}",
        taken.took.as_secs_f64(),
        taken.path.display()
    );
    if let Some(warning) = slow_dump_warning(n, taken, every) {
        line.push('\n');
        line.push_str(&warning);
    }
    line
}

/// A stopped process held for more than a tenth of `--every` is disturbed by the watch; a dump the
/// running process answers is only late when it takes longer than `--every` itself.
fn slow_dump_warning(n: u64, taken: &Taken, every: Duration) -> Option<String> {
    let (took, every_s) = (taken.took.as_secs_f64(), every.as_secs_f64());
    if taken.stopped && taken.took > every / 10 {
        Some(format!(
            "memctx: warning: dump {n} stopped the process for {took:.3} s, more than a tenth of \
             --every ({every_s:.3} s): the watch is disturbing the process; dump less often"
        ))
    } else if !taken.stopped && taken.took > every {
        Some(format!(
            "memctx: warning: dump {n} took {took:.3} s, longer than --every ({every_s:.3} s): \
             the dumps fall behind; dump less often"
        ))
    } else {
        None
    }
}

/// Sleeps until `until`, waking early on Ctrl-C; returns false when interrupted.
fn sleep_until(until: Instant) -> bool {
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::Acquire) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    !INTERRUPTED.load(Ordering::Acquire)
}

/// Runs the loop: dumps through `source` into `opts.out` until a stop condition, drawing the
/// ranking on `w`. Returns the series read so far, each dump folded into the diff as it came (the
/// dumps themselves are not kept: they are on disk).
///
/// # Errors
/// A dump that could not be taken or read; writing to `w`.
pub fn watch(
    source: &mut dyn Source,
    opts: &WatchOptions,
    w: &mut dyn Write,
) -> Result<DiffStream, WatchError> {
    let io = |e: std::io::Error| WatchError(format!("writing the view: {e}"));
    let start = Instant::now();
    let mut dumps = DiffStream::default();
    let mut status = vec![source.describe()];
    if !opts.live {
        writeln!(w, "{}", status[0]).map_err(io)?;
    }
    for n in 1.. {
        let begun = Instant::now();
        let taken = source.take(n, &opts.out)?;
        let parsed = parse_file(&taken.path).map_err(|e| WatchError(e.to_string()))?;
        parsed.iter().for_each(|d| dumps.push(d));
        status.push(stop_line(n, &taken, opts.every));
        let done = opts.count.is_some_and(|c| n >= c)
            || opts
                .duration
                .is_some_and(|d| start.elapsed() + opts.every > d);
        if !opts.live {
            writeln!(w, "{}", status.last().expect("pushed above")).map_err(io)?;
        }
        if opts.live || done {
            view::draw(w, &dumps, &status, opts).map_err(io)?;
        }
        w.flush().map_err(io)?;
        if done || !sleep_until(begun + opts.every) {
            break;
        }
    }
    if INTERRUPTED.load(Ordering::Acquire) && !opts.live {
        view::draw(w, &dumps, &status, opts).map_err(io)?;
    }
    let out = opts.out.display();
    writeln!(
        w,
        "series of {} dumps in {out}: memctx diff {out}; memctx report {out} -o report.html",
        dumps.len()
    )
    .map_err(io)?;
    Ok(dumps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(ms: u64, stopped: bool) -> Taken {
        Taken {
            path: PathBuf::from("s.json"),
            took: Duration::from_millis(ms),
            stopped,
        }
    }

    /// gdb holds the process: a stop over a tenth of the interval is the watch's disturbance. A
    /// signal's dump leaves the process running: only one slower than the interval is late.
    #[test]
    fn a_slow_dump_is_warned_about_by_what_it_costs_the_process() {
        let every = Duration::from_secs(2);
        let stop = slow_dump_warning(3, &taken(250, true), every).unwrap();
        assert!(
            stop.contains("dump 3 stopped the process for 0.250 s")
                && stop.contains("disturbing the process"),
            "{stop}"
        );
        assert_eq!(slow_dump_warning(3, &taken(150, true), every), None);
        assert_eq!(slow_dump_warning(3, &taken(250, false), every), None);
        let late = slow_dump_warning(4, &taken(2500, false), every).unwrap();
        assert!(
            late.contains("dump 4 took 2.500 s, longer than --every (2.000 s)")
                && !late.contains("disturbing"),
            "{late}"
        );
        assert!(stop_line(3, &taken(250, false), every).ends_with("s.json"));
    }
}
