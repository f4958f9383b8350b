//! Leak hunting over context dumps: read them in whatever form they come, compare them over time,
//! and say which context keeps growing.
//!
//! This is the article's method (dump the context tree of a suspect process now and then, compare
//! the dumps, see which context keeps growing) made into code, for memctx programs and for
//! PostgreSQL itself. It is the library behind the `memctx` command-line tool and is built with the
//! `cli` cargo feature.
//!
//! - [`parse`](mod@parse) recognises a dump by its content and reads it into one model, [`Dump`]: a list of
//!   [`Context`]s per tree with their parent links, levels and counters (and, from memctx
//!   snapshots, allocation sites). It reads memctx's JSON snapshots (`memctx-snapshot`, and
//!   `memctx-stats` as written by [`crate::stats::to_json`]), PostgreSQL's server-log lines of
//!   `pg_log_backend_memory_contexts()`, `MemoryContextStats()` output on stderr, the article's gdb
//!   script output, memctx's gdb walker output (one dump with a tree per thread), and
//!   `pg_backend_memory_contexts` exported as CSV (PostgreSQL 14–16 and 17+ columns). One file may hold several dumps (a server log with several calls): they come back in
//!   order, as a series.
//! - [`diff()`](diff()) (module [`mod@diff`]) matches contexts across a series by their name/identifier path (never by ids),
//!   aggregates same-named siblings, keeps the growth hiding in `N more child contexts` lines, ranks
//!   contexts by growth and gives each a [`Verdict`]: growing, plateau, noisy, shrinking or stable,
//!   all by one [`Metric`] (total bytes unless [`diff_with`] is told otherwise).
//!   [`select_pid`] keeps one process's dumps; [`check_growth`] is the CI gate's judgment for a
//!   host's own test; [`Report::to_json`] is `memctx diff --json`.
//! - [`render`] prints a dump in PostgreSQL's stats format and turns it into folded stacks for a
//!   flame graph.
//!
//! # Examples
//!
//! ```
//! use memctx::leak::{self, Verdict};
//!
//! // Three dumps in the stderr format of MemoryContextStats(): a cache that keeps growing.
//! let dump = |cache: u64| {
//!     format!(
//!         "TopMemoryContext: 8192 total in 1 blocks; 1000 free (1 chunks); 7192 used\n\
//!          \x20 CacheMemoryContext: {cache} total in 4 blocks; 100 free (1 chunks); {} used\n\
//!          Grand total: {} bytes in 5 blocks; 1100 free (2 chunks); {} used\n",
//!         cache - 100,
//!         cache + 8192,
//!         cache + 8192 - 1100
//!     )
//! };
//! let text = [dump(16384), dump(32768), dump(65536)].concat();
//! let dumps = leak::parse_str(&text, "stderr.log").unwrap();
//! assert_eq!(dumps.len(), 3);
//!
//! let report = leak::diff(&dumps).unwrap();
//! let top = &report.entries[0];
//! assert_eq!(top.display_path(), "TopMemoryContext/CacheMemoryContext");
//! assert_eq!(top.verdict, Verdict::Growing);
//! ```

pub mod diff;
pub mod html;
mod metric;
pub mod parse;
pub mod render;
pub mod watch;

pub use diff::{
    check_growth, diff, diff_with, select_pid, verdict, DiffError, DiffOptions, DiffStream,
    EntryKind, EntryReport, GrowthError, GrowthGate, Report, ReportOptions, Segment, Selection,
    SiteReport, Verdict,
};
pub use metric::Metric;
pub use parse::{
    load_series, parse_file, parse_str, visit_series, Context, Dump, Format, ParseError, Series,
    Site, Tree,
};
