//! The model every reader fills: dumps, their trees, their contexts.

use std::fmt;

use crate::stats::{Counters, KindDetail};

/// The kind of input a [`Dump`] was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A memctx snapshot (`"format": "memctx-snapshot"`), see [`crate::snapshot`].
    MemctxSnapshot,
    /// A memctx stats tree (`"format": "memctx-stats"`), see [`crate::stats::to_json`].
    MemctxStats,
    /// `pg_log_backend_memory_contexts()` lines in a PostgreSQL server log.
    PostgresLog,
    /// `MemoryContextStats()` output on stderr (also what an out-of-memory error dumps).
    PostgresStderr,
    /// The output of the article's gdb script: `NAME: BYTES`, indented.
    Gdb,
    /// memctx's gdb walker (`valgrind/memctx_gdb.py`, `memctx-stats`) on a live process or a
    /// core: one tree per thread in `MemoryContextStats` format, all of them one dump.
    MemctxWalker,
    /// `pg_backend_memory_contexts` exported as CSV from PostgreSQL 14–16 (`parent` column, levels
    /// from 0).
    PostgresCsvParent,
    /// `pg_backend_memory_contexts` exported as CSV from PostgreSQL 17 and later (`path` column,
    /// levels from 1).
    PostgresCsvPath,
}

impl Format {
    /// A short description for messages, e.g. `"PostgreSQL server log (pg_log_backend_memory_contexts)"`.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            Format::MemctxSnapshot => "memctx snapshot",
            Format::MemctxStats => "memctx stats JSON",
            Format::PostgresLog => "PostgreSQL server log (pg_log_backend_memory_contexts)",
            Format::PostgresStderr => "PostgreSQL MemoryContextStats output",
            Format::Gdb => "gdb script output (NAME: BYTES)",
            Format::MemctxWalker => "memctx gdb walker output",
            Format::PostgresCsvParent => "pg_backend_memory_contexts CSV (PostgreSQL 14-16)",
            Format::PostgresCsvPath => "pg_backend_memory_contexts CSV (PostgreSQL 17+)",
        }
    }
}

/// The name [`crate::leak::diff()`] and the renderers give a folded `N more child contexts` line in
/// a context path.
pub const FOLDED_NAME: &str = "(more child contexts)";

/// One context of a dump (or one `N more child contexts` line, see [`Context::folded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The name as the dump shows it. PostgreSQL shows a `dynahash` context under its identifier,
    /// and so it appears here; memctx snapshots keep the raw name (see [`Context::display_name`]).
    pub name: String,
    /// The identifier, if the dump shows one (PostgreSQL cuts it at 100 bytes in its text formats).
    pub ident: Option<String>,
    /// Depth below the root of its tree: 0 for the root, whatever numbering the input used.
    pub level: u32,
    /// Index of the parent in [`Tree::contexts`]; always smaller than this context's own index.
    pub parent: Option<usize>,
    /// Bytes the context holds (its own blocks, not its children's).
    pub total_bytes: u64,
    /// Number of blocks, when the format records it (not the gdb script's).
    pub total_nblocks: Option<u64>,
    /// Free bytes, when recorded.
    pub free_bytes: Option<u64>,
    /// Free chunks, when recorded (a Bump context's stats line has none).
    pub free_chunks: Option<u64>,
    /// Used bytes (total − free), when recorded.
    pub used_bytes: Option<u64>,
    /// `Some(N)` for a `N more child contexts containing ...` line: the counters are the sums over
    /// the contexts it stands for (N counts the omitted siblings before PostgreSQL 17, and every
    /// context of the omitted subtrees from 17 on).
    pub folded: Option<u64>,
    /// The memctx context id (memctx inputs only; meaningless across processes).
    pub id: Option<u64>,
    /// The context kind (`AllocSet`, ...), when the input records it. A PostgreSQL text dump
    /// records it through the shape of a Generation, Slab (PostgreSQL 16 and later) or Bump
    /// context's stats line; the AllocSet shape leaves it unknown (Slab printed it too before 16).
    pub kind: Option<String>,
    /// The figures the kind's stats line holds beyond the counters (a Generation's chunks, a
    /// Slab's empty blocks), when the input records them.
    pub detail: KindDetail,
}

impl Context {
    /// The name to show and to match by: a `dynahash` context with an identifier is shown under its
    /// identifier, as PostgreSQL does; a folded line is [`FOLDED_NAME`].
    #[must_use]
    pub fn display_name(&self) -> &str {
        if self.folded.is_some() {
            return FOLDED_NAME;
        }
        match &self.ident {
            Some(ident) if self.name == "dynahash" => ident,
            _ => &self.name,
        }
    }

    /// The identifier to show and to match by (`None` where [`Context::display_name`] took it).
    #[must_use]
    pub fn display_ident(&self) -> Option<&str> {
        if self.folded.is_some() || self.name == "dynahash" {
            return None;
        }
        self.ident.as_deref()
    }

    /// The context's counters, with 0 for what the format does not record.
    #[must_use]
    pub fn counters(&self) -> Counters {
        Counters {
            total_bytes: self.total_bytes,
            total_nblocks: self.total_nblocks.unwrap_or(0),
            free_bytes: self.free_bytes.unwrap_or(0),
            free_chunks: self.free_chunks.unwrap_or(0),
        }
    }
}

/// Live chunks of one context allocated from one site (memctx debug-build snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Index of the context in [`Tree::contexts`].
    pub context: usize,
    /// Number of live chunks.
    pub count: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// The allocation backtrace, user frames first.
    pub frames: Vec<String>,
}

/// One tree of contexts: a PostgreSQL backend's, or one thread's in a memctx snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// The thread's name (or `tid N`) in memctx snapshots; `None` for PostgreSQL dumps.
    pub thread: Option<String>,
    /// True when the thread did not answer the dump (memctx snapshots): it has no contexts.
    pub missing: bool,
    /// True when the thread had exited (memctx snapshots and gdb walks): its tree is still
    /// there, holding memory, and counted.
    pub exited: bool,
    /// True when the thread was exiting (memctx snapshots): its tree was not read yet, and
    /// `missing` is set.
    pub exiting: bool,
    /// The contexts; every parent comes before its children.
    pub contexts: Vec<Context>,
    /// Allocation sites, when the snapshot has them.
    pub sites: Vec<Site>,
}

impl Tree {
    /// The contexts from the root down to `index`, inclusive.
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    #[must_use]
    pub fn path(&self, index: usize) -> Vec<&Context> {
        let mut out = Vec::new();
        let mut at = Some(index);
        while let Some(i) = at {
            let c = &self.contexts[i];
            out.push(c);
            at = c.parent;
        }
        out.reverse();
        out
    }

    /// For each context, its total bytes plus those of all its descendants (folded lines
    /// included).
    #[must_use]
    pub fn subtree_totals(&self) -> Vec<u64> {
        let mut sums: Vec<u64> = self.contexts.iter().map(|c| c.total_bytes).collect();
        for i in (0..self.contexts.len()).rev() {
            if let Some(p) = self.contexts[i].parent {
                sums[p] = sums[p].saturating_add(sums[i]);
            }
        }
        sums
    }

    /// The sum over all contexts of the tree (what PostgreSQL's `Grand total` line says).
    #[must_use]
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        for c in &self.contexts {
            sum.add(&c.counters());
        }
        sum
    }

    /// The children of each context, in order.
    #[must_use]
    pub fn children(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.contexts.len()];
        for (i, c) in self.contexts.iter().enumerate() {
            if let Some(p) = c.parent {
                out[p].push(i);
            }
        }
        out
    }
}

/// One dump: the context trees of one process at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// Where it came from: the file name, with `#N` when the file holds several dumps.
    pub source: String,
    /// The line of the file where the dump starts (text formats).
    pub line: Option<usize>,
    /// The input format.
    pub format: Format,
    /// The process id, when the input names it.
    pub pid: Option<u32>,
    /// Milliseconds since the Unix epoch when the dump was taken, when known (memctx snapshots,
    /// and log lines whose prefix starts with a `%t`/`%m` timestamp, read as UTC).
    pub timestamp_ms: Option<u64>,
    /// The trees: one for PostgreSQL inputs, one per thread for memctx snapshots.
    pub trees: Vec<Tree>,
    /// The `Grand total` line as printed, when the dump has one.
    pub grand_total: Option<Counters>,
    /// Whether used/free/blocks are recorded (false for the gdb script's output).
    pub has_detail: bool,
    /// Things that looked wrong but did not stop the parse (a grand total that does not match the
    /// lines, a dump cut short, ...).
    pub warnings: Vec<String>,
}

impl Dump {
    /// A dump of one tree that belongs to no thread (PostgreSQL's CSV export, memctx stats JSON),
    /// with PID, time and `Grand total` unknown and every counter recorded.
    pub(super) fn single_tree(
        source: &str,
        line: usize,
        format: Format,
        contexts: Vec<Context>,
        warnings: Vec<String>,
    ) -> Dump {
        Dump {
            source: source.to_string(),
            line: Some(line),
            format,
            pid: None,
            timestamp_ms: None,
            trees: vec![Tree {
                contexts,
                ..Tree::default()
            }],
            grand_total: None,
            has_detail: true,
            warnings,
        }
    }

    /// The dump without its trees: what it is and where it came from, for a list of the dumps
    /// read that need not hold their contexts.
    #[must_use]
    pub fn header(&self) -> Dump {
        Dump {
            source: self.source.clone(),
            line: self.line,
            format: self.format,
            pid: self.pid,
            timestamp_ms: self.timestamp_ms,
            trees: Vec::new(),
            grand_total: self.grand_total,
            has_detail: self.has_detail,
            warnings: self.warnings.clone(),
        }
    }

    /// The sum of all trees' counters.
    #[must_use]
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        for t in &self.trees {
            sum.add(&t.total());
        }
        sum
    }
}

/// A file that could not be read as a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file (or the name given to [`parse_str`](super::parse_str)).
    pub file: String,
    /// The line, where known (1-based).
    pub line: Option<usize>,
    /// What was wrong and what was expected.
    pub message: String,
    /// True when the file is no dump at all (empty, binary, text without a dump, JSON of another
    /// kind), rather than a dump with a fault: [`super::load_series`] skips such files in a
    /// directory.
    pub not_a_dump: bool,
}

impl ParseError {
    pub(super) fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            file: file.to_string(),
            line,
            message: message.into(),
            not_a_dump: false,
        }
    }

    /// An error for a file that holds no dump at all.
    pub(super) fn not_a_dump(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            not_a_dump: true,
            ..ParseError::new(file, line, message)
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ParseError {}
