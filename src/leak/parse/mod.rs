//! Reading context dumps of every kind into one model.
//!
//! [`parse_str`] and [`parse_file`] look at the content, not the file name, to tell the format:
//!
//! | input | recognised by | levels |
//! |---|---|---|
//! | memctx snapshot JSON ([`crate::snapshot::Snapshot`]) | a JSON document with `"format": "memctx-snapshot"` | rows' `parent_id` |
//! | memctx stats JSON ([`crate::stats::to_json`]) | `"format": "memctx-stats"` | rows' `parent_id` |
//! | `pg_log_backend_memory_contexts()` in a server log | lines holding `level: N; NAME: T total in B blocks; F free (C chunks); U used` after any log-line prefix | `N`, from 0 (PostgreSQL 14–17) or 1 (later): the first context of a dump is the top |
//! | `MemoryContextStats()` on stderr | lines `NAME: T total in ...` indented two spaces per level, `Grand total: ...` | indentation |
//! | the article's gdb script | lines `NAME: BYTES`, indented one space (or any fixed width) per level | indentation |
//! | memctx's gdb walker (`memctx-stats`), as gdb prints it | a `memctx registry at 0x...` line, then per thread `Thread "NAME" tid N (live\|exited), ...:` and its tree as `MemoryContextStats` prints it | indentation; the whole walk is one dump, a tree per thread |
//! | `pg_backend_memory_contexts` as CSV | a header line naming `name` and `total_bytes` | `parent` + row order (14–16), or `path` (17+) |
//!
//! Several JSON documents in one file (one after the other, or a JSON array), several dumps in one
//! log (each `logging memory contexts of PID N` … `Grand total` block, or each new top-level
//! context) and several gdb walks appended to one file all come back as a series of [`Dump`]s, in
//! file order. Lines of a log that belong to no dump are skipped. In a log, dumps of several
//! backends may interleave; lines are given to the dump whose PID appears in their prefix when the
//! prefix has one (`%p`), and otherwise to the dump begun last.
//!
//! A context's stats line is read in whichever of PostgreSQL's shapes its kind prints (AllocSet
//! `T total in B blocks; F free (C chunks); U used`, Generation `... B blocks (N chunks); ...`,
//! Slab from PostgreSQL 16 `... B blocks; E empty blocks; F free ...`, Bump `... F free; U used`),
//! in every text format above: the shape sets [`Context::kind`] (the AllocSet shape leaves it
//! unknown, as Slab printed it before 16) and the extra figure is kept in [`Context::detail`].
//! The `N more child contexts` and `Grand total` lines have the AllocSet shape, which PostgreSQL
//! prints from summed counters; another shape there is an error.
//!
//! `N more child contexts containing ...` lines become [`Context`]s of their own with
//! [`Context::folded`] set, under the context whose children they summarise, so that no byte of
//! the dump is lost: the sum over a tree's contexts is the dump's `Grand total`.
//!
//! Errors name the file, the line where it is known, and what was expected.
//!
//! The readers, one module per family of formats:
//!
//! - `detect`: which format a text is in, files and directories of them;
//! - `json`: memctx's JSON snapshots and stats trees;
//! - `csv`: `pg_backend_memory_contexts` exported as CSV;
//! - `lines`: what one line of a text dump is (log, stderr or gdb line);
//! - `text`: server logs and `MemoryContextStats` output, assembled into dumps;
//! - `gdb`: the article's gdb script output and memctx's gdb walker output;
//! - `stream`: reading a file line by line, each dump handed on as soon as it is complete.

mod csv;
mod detect;
mod gdb;
mod json;
mod lines;
mod model;
mod stream;
mod text;

pub use detect::{load_series, parse_file, parse_str, visit_series, Series};
pub use model::{Context, Dump, Format, ParseError, Site, Tree, FOLDED_NAME};
pub use stream::visit_file;
