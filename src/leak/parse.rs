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
//! | `pg_backend_memory_contexts` as CSV | a header line naming `name` and `total_bytes` | `parent` + row order (14–16), or `path` (17+) |
//!
//! Several JSON documents in one file (one after the other, or a JSON array), several dumps in one
//! log (each `logging memory contexts of PID N` … `Grand total` block, or each new top-level
//! context) and several gdb walks appended to one file all come back as a series of [`Dump`]s, in
//! file order. Lines of a log that belong to no dump are skipped. In a log, dumps of several
//! backends may interleave; lines are given to the dump whose PID appears in their prefix when the
//! prefix has one (`%p`), and otherwise to the dump begun last.
//!
//! `N more child contexts containing ...` lines become [`Context`]s of their own with
//! [`Context::folded`] set, under the context whose children they summarise, so that no byte of
//! the dump is lost: the sum over a tree's contexts is the dump's `Grand total`.
//!
//! Errors name the file, the line where it is known, and what was expected.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::snapshot::{Snapshot, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
use crate::stats::{self, ContextRow, Counters, StatsNode};

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
    /// Free chunks, when recorded.
    pub free_chunks: Option<u64>,
    /// Used bytes (total − free), when recorded.
    pub used_bytes: Option<u64>,
    /// `Some(N)` for a `N more child contexts containing ...` line: the counters are the sums over
    /// the contexts it stands for (N counts the omitted siblings before PostgreSQL 17, and every
    /// context of the omitted subtrees from 17 on).
    pub folded: Option<u64>,
    /// The memctx context id (memctx inputs only; meaningless across processes).
    pub id: Option<u64>,
    /// The context kind (`AllocSet`, ...), when the input records it.
    pub kind: Option<String>,
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
    /// The file (or the name given to [`parse_str`]).
    pub file: String,
    /// The line, where known (1-based).
    pub line: Option<usize>,
    /// What was wrong and what was expected.
    pub message: String,
}

impl ParseError {
    fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            file: file.to_string(),
            line,
            message: message.into(),
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

const FORMATS_EXPECTED: &str = "expected a memctx JSON snapshot, pg_log_backend_memory_contexts() \
     log lines (`level: N; NAME: T total in B blocks; F free (C chunks); U used`), \
     MemoryContextStats() output (`NAME: T total in B blocks; ...` indented, `Grand total: ...`), \
     the gdb script's `NAME: BYTES` lines, or pg_backend_memory_contexts exported as CSV with a header";

/// Reads one file: every dump in it, in order.
///
/// # Errors
///
/// The file cannot be read, is binary, or is not a dump in any known format; or a line that looks
/// like part of a dump is malformed. The error names the file and, where it can, the line.
pub fn parse_file(path: &Path) -> Result<Vec<Dump>, ParseError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ if path.is_dir() => "is a directory, not a dump file".to_string(),
            _ => format!("cannot read: {e}"),
        };
        ParseError::new(&name, None, what)
    })?;
    if bytes.contains(&0) {
        return Err(ParseError::new(
            &name,
            None,
            format!("binary file, not a dump: {FORMATS_EXPECTED}"),
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    parse_str(&text, &name)
}

/// Reads a series: each path in order; a directory stands for the files in it (not hidden ones,
/// not subdirectories, not `.svg`/`.png`/`.html` files) in natural name order (`snap-2` before
/// `snap-10`). Every dump of every file
/// is returned, in order.
///
/// # Errors
///
/// A path that does not exist, an empty directory, or any file that [`parse_file`] refuses.
pub fn load_series<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Dump>, ParseError> {
    let mut out = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let name = path.display().to_string();
            let entries = std::fs::read_dir(path)
                .map_err(|e| ParseError::new(&name, None, format!("cannot list directory: {e}")))?;
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| {
                    ParseError::new(&name, None, format!("cannot list directory: {e}"))
                })?;
                let p = entry.path();
                let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
                let hidden = name.starts_with('.');
                // What the tools write next to their snapshots (flame graphs) is not a dump.
                let output = [".svg", ".png", ".html"].iter().any(|e| name.ends_with(e));
                if !hidden && !output && p.is_file() {
                    files.push(p);
                }
            }
            if files.is_empty() {
                return Err(ParseError::new(
                    &name,
                    None,
                    "directory holds no dump files",
                ));
            }
            files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
            for f in files {
                out.extend(parse_file(&f)?);
            }
        } else {
            out.extend(parse_file(path)?);
        }
    }
    Ok(out)
}

/// Compares names so that runs of digits compare by value (`a2` < `a10`).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = a[i].cmp(&b[j]);
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

/// Reads dumps from text; `source` names it in dumps and errors (a file name).
///
/// # Errors
///
/// As [`parse_file`]: not a dump in any known format, or a malformed line in one.
pub fn parse_str(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ParseError::new(
            source,
            None,
            format!("empty file: {FORMATS_EXPECTED}"),
        ));
    }
    let mut dumps = if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && !is_jsonlog(trimmed.lines().next().unwrap_or(""))
    {
        parse_json(text, source)?
    } else if looks_like_csv_header(trimmed.lines().next().unwrap_or("")) {
        parse_csv(text, source)?
    } else {
        parse_text(text, source)?
    };
    if dumps.len() > 1 {
        for (i, d) in dumps.iter_mut().enumerate() {
            d.source = format!("{source}#{}", i + 1);
        }
    }
    Ok(dumps)
}

// ---------------------------------------------------------------------------------------------
// JSON

/// A line of PostgreSQL's jsonlog: one JSON object with a `message` and no `format`.
fn is_jsonlog(first_line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(first_line).is_ok_and(|v| {
        v.get("format").is_none() && v.get("message").is_some_and(serde_json::Value::is_string)
    })
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn json_error(source: &str, e: &serde_json::Error) -> ParseError {
    let line = if e.line() > 0 { Some(e.line()) } else { None };
    ParseError::new(
        source,
        line,
        format!("malformed JSON (column {}): {e}", e.column()),
    )
}

#[derive(Deserialize)]
struct Head {
    format: Option<String>,
}

fn parse_json(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let mut docs: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    loop {
        let start = stream.byte_offset();
        match stream.next() {
            None => break,
            Some(Ok(serde_json::Value::Array(items))) => {
                let line = line_of_offset(
                    text,
                    start + text[start..].len() - text[start..].trim_start().len(),
                );
                docs.extend(items.into_iter().map(|v| (line, v)));
            }
            Some(Ok(v)) => {
                let skipped = text[start..].len() - text[start..].trim_start().len();
                docs.push((line_of_offset(text, start + skipped), v));
            }
            Some(Err(e)) => return Err(json_error(source, &e)),
        }
    }
    let mut out = Vec::new();
    for (line, doc) in docs {
        let head: Head = serde_json::from_value(doc.clone()).map_err(|e| {
            ParseError::new(source, Some(line), format!("not a memctx snapshot: {e}"))
        })?;
        match head.format.as_deref() {
            Some(SNAPSHOT_FORMAT) => out.push(snapshot_dump(doc, source, line)?),
            Some("memctx-stats") => out.push(stats_dump(&doc, source, line)?),
            Some(other) => {
                return Err(ParseError::new(
                    source,
                    Some(line),
                    format!(
                        "unknown JSON format {other:?}: expected \"{SNAPSHOT_FORMAT}\" or \"memctx-stats\""
                    ),
                ))
            }
            None => {
                return Err(ParseError::new(
                    source,
                    Some(line),
                    format!(
                        "JSON document has no \"format\" field: expected a memctx snapshot \
                         (\"format\": \"{SNAPSHOT_FORMAT}\") or stats tree (\"format\": \"memctx-stats\")"
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(ParseError::new(
            source,
            None,
            "JSON array holds no snapshots",
        ));
    }
    Ok(out)
}

fn snapshot_dump(doc: serde_json::Value, source: &str, line: usize) -> Result<Dump, ParseError> {
    let snap: Snapshot = serde_json::from_value(doc).map_err(|e| {
        ParseError::new(
            source,
            Some(line),
            format!("malformed memctx snapshot: {e}"),
        )
    })?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(ParseError::new(
            source,
            Some(line),
            format!(
                "unsupported memctx snapshot version {} (this build reads version {SNAPSHOT_VERSION})",
                snap.version
            ),
        ));
    }
    let mut trees = Vec::new();
    let mut warnings = Vec::new();
    for th in snap.threads {
        let label = th
            .name
            .clone()
            .unwrap_or_else(|| format!("tid {}", th.os_tid));
        let (contexts, ids) = contexts_from_rows(&th.contexts)
            .map_err(|m| ParseError::new(source, Some(line), format!("thread {label}: {m}")))?;
        let mut sites = Vec::new();
        for s in th.sites {
            match ids.get(&s.context_id) {
                Some(&context) => sites.push(Site {
                    context,
                    count: s.count,
                    bytes: s.bytes,
                    frames: s.frames,
                }),
                None => warnings.push(format!(
                    "thread {label}: a site names context {}, which is not in the snapshot",
                    s.context_id
                )),
            }
        }
        trees.push(Tree {
            thread: Some(label),
            missing: th.missing,
            contexts,
            sites,
        });
    }
    Ok(Dump {
        source: source.to_string(),
        line: Some(line),
        format: Format::MemctxSnapshot,
        pid: Some(snap.pid),
        timestamp_ms: Some(snap.timestamp_ms),
        trees,
        grand_total: None,
        has_detail: true,
        warnings,
    })
}

#[derive(Deserialize)]
struct StatsRows {
    contexts: Option<Vec<ContextRow>>,
}

fn stats_dump(doc: &serde_json::Value, source: &str, line: usize) -> Result<Dump, ParseError> {
    let rows: StatsRows = serde_json::from_value(doc.clone()).map_err(|e| {
        ParseError::new(
            source,
            Some(line),
            format!("malformed memctx stats JSON: {e}"),
        )
    })?;
    let contexts = match rows.contexts {
        Some(rows) => {
            contexts_from_rows(&rows)
                .map_err(|m| ParseError::new(source, Some(line), m))?
                .0
        }
        None => {
            let tree = stats::from_json(&doc.to_string()).map_err(|e| {
                ParseError::new(
                    source,
                    Some(line),
                    format!("malformed memctx stats JSON: {e}"),
                )
            })?;
            contexts_from_node(&tree)
        }
    };
    Ok(Dump {
        source: source.to_string(),
        line: Some(line),
        format: Format::MemctxStats,
        pid: None,
        timestamp_ms: None,
        trees: vec![Tree {
            thread: None,
            missing: false,
            contexts,
            sites: Vec::new(),
        }],
        grand_total: None,
        has_detail: true,
        warnings: Vec::new(),
    })
}

fn memctx_context(
    name: &str,
    ident: Option<&String>,
    kind: &str,
    id: u64,
    c: Counters,
    level: u32,
    parent: Option<usize>,
) -> Context {
    Context {
        name: name.to_string(),
        ident: ident.cloned(),
        level,
        parent,
        total_bytes: c.total_bytes,
        total_nblocks: Some(c.total_nblocks),
        free_bytes: Some(c.free_bytes),
        free_chunks: Some(c.free_chunks),
        used_bytes: Some(c.used_bytes()),
        folded: None,
        id: Some(id),
        kind: Some(kind.to_string()),
    }
}

/// Orders memctx rows parent-first (breadth-first from the root) and links them.
fn contexts_from_rows(rows: &[ContextRow]) -> Result<(Vec<Context>, HashMap<u64, usize>), String> {
    if rows.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if by_id.insert(r.id, i).is_some() {
            return Err(format!("duplicate context id {}", r.id));
        }
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
    let mut root = None;
    for (i, r) in rows.iter().enumerate() {
        match r.parent_id {
            None => {
                if root.replace(i).is_some() {
                    return Err("more than one root context (parent_id null)".to_string());
                }
            }
            Some(p) => {
                let &pi = by_id.get(&p).ok_or_else(|| {
                    format!(
                        "context {} names parent {p}, which is not in the snapshot",
                        r.id
                    )
                })?;
                children[pi].push(i);
            }
        }
    }
    let root = root.ok_or("no root context (a row with parent_id null)")?;
    let mut out: Vec<Context> = Vec::with_capacity(rows.len());
    let mut index_of_id = HashMap::with_capacity(rows.len());
    let mut queue = std::collections::VecDeque::from([(root, None, 0u32)]);
    while let Some((i, parent, level)) = queue.pop_front() {
        let r = &rows[i];
        let c = Counters {
            total_bytes: r.total_bytes,
            total_nblocks: r.total_nblocks,
            free_bytes: r.free_bytes,
            free_chunks: r.free_chunks,
        };
        out.push(memctx_context(
            &r.name,
            r.ident.as_ref(),
            &r.kind,
            r.id,
            c,
            level,
            parent,
        ));
        let me = out.len() - 1;
        index_of_id.insert(r.id, me);
        queue.extend(children[i].iter().map(|&c| (c, Some(me), level + 1)));
    }
    if out.len() != rows.len() {
        return Err(format!(
            "{} of {} contexts are not connected to the root",
            rows.len() - out.len(),
            rows.len()
        ));
    }
    Ok((out, index_of_id))
}

fn contexts_from_node(root: &StatsNode) -> Vec<Context> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([(root, None, 0u32)]);
    while let Some((n, parent, level)) = queue.pop_front() {
        out.push(memctx_context(
            &n.name,
            n.ident.as_ref(),
            &n.kind,
            n.id,
            n.counters,
            level,
            parent,
        ));
        let me = out.len() - 1;
        queue.extend(n.children.iter().map(|c| (c, Some(me), level + 1)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// CSV (pg_backend_memory_contexts)

fn looks_like_csv_header(line: &str) -> bool {
    let cols: Vec<String> = line
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    cols.iter().any(|c| c == "name") && cols.iter().any(|c| c == "total_bytes")
}

struct Field {
    text: String,
    quoted: bool,
}

/// Splits CSV text into records (RFC 4180: quotes, doubled quotes, newlines inside quotes), each
/// with the line it starts on.
fn csv_records(text: &str, source: &str) -> Result<Vec<(usize, Vec<Field>)>, ParseError> {
    let mut records = Vec::new();
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    let mut record: Vec<Field> = Vec::new();
    let mut field = Field {
        text: String::new(),
        quoted: false,
    };
    let mut record_line = 1usize;
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(ch) = chars.next() {
        if in_quotes {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.text.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.text.push('\n');
                }
                c => field.text.push(c),
            }
            continue;
        }
        match ch {
            '"' if at_field_start => {
                in_quotes = true;
                field.quoted = true;
                at_field_start = false;
            }
            ',' => {
                record.push(std::mem::replace(
                    &mut field,
                    Field {
                        text: String::new(),
                        quoted: false,
                    },
                ));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::replace(
                    &mut field,
                    Field {
                        text: String::new(),
                        quoted: false,
                    },
                ));
                let done = std::mem::take(&mut record);
                if !(done.len() == 1 && done[0].text.is_empty() && !done[0].quoted) {
                    records.push((record_line, done));
                }
                line += 1;
                record_line = line;
                at_field_start = true;
            }
            c => {
                field.text.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return Err(ParseError::new(
            source,
            Some(record_line),
            "unterminated quoted CSV field",
        ));
    }
    if !field.text.is_empty() || field.quoted || !record.is_empty() {
        record.push(field);
        records.push((record_line, record));
    }
    Ok(records)
}

fn parse_csv(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let records = csv_records(text, source)?;
    let (_, header) = &records[0];
    let names: Vec<String> = header
        .iter()
        .map(|f| f.text.trim().to_ascii_lowercase())
        .collect();
    let col = |n: &str| names.iter().position(|c| c == n);
    let need = |n: &str| {
        col(n).ok_or_else(|| {
            ParseError::new(
                source,
                Some(1),
                format!(
                    "CSV header has no `{n}` column: expected the columns of pg_backend_memory_contexts \
                     (name, ident, parent or type/path, level, total_bytes, total_nblocks, free_bytes, \
                     free_chunks, used_bytes)"
                ),
            )
        })
    };
    let c_name = need("name")?;
    let c_level = need("level")?;
    let c_total = need("total_bytes")?;
    let c_nblocks = need("total_nblocks")?;
    let c_free = need("free_bytes")?;
    let c_chunks = need("free_chunks")?;
    let c_used = col("used_bytes");
    let c_ident = col("ident");
    let c_parent = col("parent");
    let c_path = col("path");
    let c_type = col("type");
    if c_parent.is_none() && c_path.is_none() {
        return Err(ParseError::new(
            source,
            Some(1),
            "CSV has neither a `parent` column (PostgreSQL 14-16) nor a `path` column \
             (PostgreSQL 17+): the tree cannot be rebuilt",
        ));
    }

    struct Row {
        line: usize,
        name: String,
        ident: Option<String>,
        parent: Option<String>,
        level: u32,
        path: Vec<u64>,
        kind: Option<String>,
        counts: [u64; 5],
    }
    let mut rows = Vec::new();
    for (line, rec) in &records[1..] {
        let line = *line;
        if rec.len() != names.len() {
            return Err(ParseError::new(
                source,
                Some(line),
                format!(
                    "CSV row has {} fields, the header has {}",
                    rec.len(),
                    names.len()
                ),
            ));
        }
        let num = |c: usize, what: &str| -> Result<u64, ParseError> {
            rec[c].text.trim().parse::<u64>().map_err(|_| {
                ParseError::new(
                    source,
                    Some(line),
                    format!(
                        "column `{what}`: expected a non-negative integer, found {:?}",
                        rec[c].text
                    ),
                )
            })
        };
        let opt = |c: Option<usize>| {
            c.and_then(|c| {
                let f = &rec[c];
                if f.text.is_empty() && !f.quoted {
                    None
                } else {
                    Some(f.text.clone())
                }
            })
        };
        let total = num(c_total, "total_bytes")?;
        let free = num(c_free, "free_bytes")?;
        let used = match c_used {
            Some(c) => num(c, "used_bytes")?,
            None => total.saturating_sub(free),
        };
        let path = match c_path {
            Some(c) => parse_int_array(&rec[c].text).ok_or_else(|| {
                ParseError::new(
                    source,
                    Some(line),
                    format!(
                        "column `path`: expected an integer array like {{1,2,5}}, found {:?}",
                        rec[c].text
                    ),
                )
            })?,
            None => Vec::new(),
        };
        rows.push(Row {
            line,
            name: rec[c_name].text.clone(),
            ident: opt(c_ident),
            parent: opt(c_parent),
            level: u32::try_from(num(c_level, "level")?).unwrap_or(u32::MAX),
            path,
            kind: opt(c_type),
            counts: [
                total,
                num(c_nblocks, "total_nblocks")?,
                free,
                num(c_chunks, "free_chunks")?,
                used,
            ],
        });
    }
    if rows.is_empty() {
        return Err(ParseError::new(
            source,
            Some(1),
            "CSV has a header but no rows",
        ));
    }

    let mk = |r: &Row, level: u32, parent: Option<usize>| Context {
        name: r.name.clone(),
        ident: r.ident.clone(),
        level,
        parent,
        total_bytes: r.counts[0],
        total_nblocks: Some(r.counts[1]),
        free_bytes: Some(r.counts[2]),
        free_chunks: Some(r.counts[3]),
        used_bytes: Some(r.counts[4]),
        folded: None,
        id: None,
        kind: r.kind.clone(),
    };
    let mut warnings = Vec::new();
    let (format, contexts) = if c_path.is_some() {
        // PostgreSQL 17+: the last element of `path` is the row's own id, the one before its
        // parent's. Rows are emitted breadth-first, but do not rely on it.
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let Some(&id) = r.path.last() else {
                return Err(ParseError::new(
                    source,
                    Some(r.line),
                    "column `path` is empty: expected the ids from the top context down to this one",
                ));
            };
            if by_id.insert(id, i).is_some() {
                return Err(ParseError::new(
                    source,
                    Some(r.line),
                    format!("two rows have the same context id {id} (last element of `path`)"),
                ));
            }
        }
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
        let mut roots = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if r.path.len() < 2 {
                roots.push(i);
            } else {
                let pid = r.path[r.path.len() - 2];
                let &p = by_id.get(&pid).ok_or_else(|| {
                    ParseError::new(
                        source,
                        Some(r.line),
                        format!("`path` names parent id {pid}, which no row has"),
                    )
                })?;
                children[p].push(i);
            }
        }
        if roots.len() != 1 {
            return Err(ParseError::new(
                source,
                None,
                format!(
                    "expected one top context (a `path` with one element), found {}",
                    roots.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(rows.len());
        let mut queue = std::collections::VecDeque::from([(roots[0], None, 0u32)]);
        while let Some((i, parent, level)) = queue.pop_front() {
            out.push(mk(&rows[i], level, parent));
            let me = out.len() - 1;
            queue.extend(children[i].iter().map(|&c| (c, Some(me), level + 1)));
        }
        (Format::PostgresCsvPath, out)
    } else {
        // PostgreSQL 14-16: rows come depth-first (a context, then its children), levels from 0;
        // the parent of a row is the last row one level up, whose name `parent` repeats.
        let base = rows[0].level;
        let mut out: Vec<Context> = Vec::with_capacity(rows.len());
        let mut stack: Vec<usize> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if i > 0 && r.level <= base {
                return Err(ParseError::new(
                    source,
                    Some(r.line),
                    format!(
                        "a second top-level context {:?} (level {}): expected one tree, exported \
                         unsorted (select * from pg_backend_memory_contexts)",
                        r.name, r.level
                    ),
                ));
            }
            if r.level < base {
                return Err(ParseError::new(
                    source,
                    Some(r.line),
                    format!("level {} is above the first row's level {base}", r.level),
                ));
            }
            let depth = (r.level - base) as usize;
            if depth > stack.len() {
                return Err(ParseError::new(
                    source,
                    Some(r.line),
                    format!(
                        "row at level {} has no row at level {} before it: the rows must be in the \
                         view's own order (select * from pg_backend_memory_contexts, unsorted)",
                        r.level,
                        r.level.saturating_sub(1)
                    ),
                ));
            }
            stack.truncate(depth);
            let parent = stack.last().copied();
            if let (Some(p), Some(pname)) = (parent, &r.parent) {
                let pc: &Context = &out[p];
                if &pc.name != pname && pname != "dynahash" {
                    warnings.push(format!(
                        "line {}: `parent` says {pname:?} but the row before it one level up is {:?}",
                        r.line, pc.name
                    ));
                }
            }
            out.push(mk(r, depth as u32, parent));
            stack.push(out.len() - 1);
        }
        (Format::PostgresCsvParent, out)
    };
    Ok(vec![Dump {
        source: source.to_string(),
        line: Some(1),
        format,
        pid: None,
        timestamp_ms: None,
        trees: vec![Tree {
            thread: None,
            missing: false,
            contexts,
            sites: Vec::new(),
        }],
        grand_total: None,
        has_detail: true,
        warnings,
    }])
}

fn parse_int_array(s: &str) -> Option<Vec<u64>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|p| p.trim().parse().ok()).collect()
}

// ---------------------------------------------------------------------------------------------
// Text: server logs, MemoryContextStats output, gdb script output

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    total: u64,
    nblocks: u64,
    free: u64,
    chunks: u64,
    used: u64,
}

impl Stats {
    fn counters(self) -> Counters {
        Counters {
            total_bytes: self.total,
            total_nblocks: self.nblocks,
            free_bytes: self.free,
            free_chunks: self.chunks,
        }
    }
}

/// Reads leading ASCII digits as a number; returns it and the rest.
fn number(s: &str) -> Option<(u64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

/// Parses `T <word> in B blocks; F free (C chunks); U used` at the start of `s`.
fn block_stats<'a>(s: &'a str, word: &str) -> Option<(Stats, &'a str)> {
    let (total, s) = number(s)?;
    let s = s
        .strip_prefix(' ')?
        .strip_prefix(word)?
        .strip_prefix(" in ")?;
    let (nblocks, s) = number(s)?;
    let s = s.strip_prefix(" blocks; ")?;
    let (free, s) = number(s)?;
    let s = s.strip_prefix(" free (")?;
    let (chunks, s) = number(s)?;
    let s = s.strip_prefix(" chunks); ")?;
    let (used, s) = number(s)?;
    let s = s.strip_prefix(" used")?;
    Some((
        Stats {
            total,
            nblocks,
            free,
            chunks,
            used,
        },
        s,
    ))
}

/// Finds the first `: T total in ...; U used` in `s`: returns the name before it, the stats and
/// the rest after `used`.
fn context_stats(s: &str) -> Option<(&str, Stats, &str)> {
    let mut from = 0;
    while let Some(off) = s[from..].find(": ") {
        let at = from + off;
        if let Some((st, rest)) = block_stats(&s[at + 2..], "total") {
            return Some((&s[..at], st, rest));
        }
        from = at + 1;
    }
    None
}

/// The identifier part after the stats: `""` → none, `": IDENT"` → IDENT.
fn ident_part(rest: &str) -> Result<Option<String>, ()> {
    if rest.is_empty() {
        Ok(None)
    } else if let Some(id) = rest.strip_prefix(": ") {
        Ok(Some(id.to_string()))
    } else {
        Err(())
    }
}

#[derive(Debug)]
enum Line {
    /// `logging memory contexts of PID N`.
    LogHeader {
        prefix: String,
        pid: u32,
    },
    LogContext {
        prefix: String,
        level: u32,
        name: String,
        ident: Option<String>,
        stats: Stats,
    },
    LogFolded {
        prefix: String,
        level: u32,
        count: u64,
        stats: Stats,
    },
    LogGrand {
        prefix: String,
        stats: Stats,
    },
    StderrContext {
        indent: usize,
        name: String,
        ident: Option<String>,
        stats: Stats,
    },
    StderrFolded {
        indent: usize,
        count: u64,
        stats: Stats,
    },
    StderrGrand {
        stats: Stats,
    },
    Gdb {
        indent: usize,
        name: String,
        bytes: u64,
    },
}

const STATS_SHAPE: &str = "`NAME: T total in B blocks; F free (C chunks); U used`";

/// Finds the message part of a log line: after `level: N; `, `Grand total: ` or the header. In a
/// csvlog line the message is a quoted field; in a jsonlog line, the `message` member.
fn log_message(line: &str) -> Option<(String, String)> {
    if line.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            let msg = v.get("message")?.as_str()?.to_string();
            let field = |k: &str| {
                v.get(k)
                    .map(|x| x.to_string().trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            let prefix = format!("{} [{}] ", field("timestamp"), field("pid"));
            return Some((prefix, msg));
        }
    }
    None
}

fn csvlog_message(line: &str) -> Option<(String, String)> {
    // A csvlog record: the message is field 14 (index 13); field 4 is the pid.
    let recs = csv_records(line, "").ok()?;
    let (_, fields) = recs.first()?;
    if fields.len() < 14 {
        return None;
    }
    let msg = fields[13].text.clone();
    let prefix = format!("{} [{}] ", fields[0].text, fields[3].text);
    Some((prefix, msg))
}

fn classify(raw: &str, lineno: usize, source: &str) -> Result<Option<Line>, ParseError> {
    let mut line = raw.trim_end_matches(['\r', '\n']);
    // gdb prompts in front of captured output.
    loop {
        if let Some(rest) = line.strip_prefix("(gdb) ") {
            line = rest;
        } else if line == "(gdb)" {
            return Ok(None);
        } else {
            break;
        }
    }
    let err = |m: String| Err(ParseError::new(source, Some(lineno), m));

    // Log lines: `PREFIX level: N; ...`, `PREFIX Grand total: ...`, `PREFIX logging memory ...`.
    let owned;
    let (prefix, msg): (&str, &str) = if let Some((p, m)) = log_message(line) {
        owned = (p, m);
        (&owned.0, &owned.1)
    } else if line.contains(",\"level: ")
        || line.contains(",\"Grand total: ")
        || line.contains(",\"logging memory contexts of PID ")
    {
        match csvlog_message(line) {
            Some((p, m)) => {
                owned = (p, m);
                (&owned.0, &owned.1)
            }
            None => ("", line),
        }
    } else {
        ("", line)
    };
    let (prefix, msg) = if prefix.is_empty() {
        match find_log_marker(msg) {
            Some(at) => (&msg[..at], &msg[at..]),
            None => ("", msg),
        }
    } else {
        (prefix, msg)
    };

    if let Some(rest) = msg.strip_prefix("logging memory contexts of PID ") {
        if let Some((pid, _)) = number(rest) {
            return Ok(Some(Line::LogHeader {
                prefix: prefix.to_string(),
                pid: u32::try_from(pid).unwrap_or(u32::MAX),
            }));
        }
    }
    if let Some(rest) = msg.strip_prefix("level: ") {
        if let Some((level, rest)) = number(rest) {
            if let Some(rest) = rest.strip_prefix("; ") {
                let level = u32::try_from(level).unwrap_or(u32::MAX);
                if let Some((count, tail)) = number(rest) {
                    if let Some(tail) = tail.strip_prefix(" more child contexts containing ") {
                        return match block_stats(tail, "total") {
                            Some((stats, "")) => Ok(Some(Line::LogFolded {
                                prefix: prefix.to_string(),
                                level,
                                count,
                                stats,
                            })),
                            _ => err(format!(
                                "malformed `N more child contexts containing ...` line: expected \
                                 `level: {level}; N more child contexts containing T total in B blocks; \
                                 F free (C chunks); U used`"
                            )),
                        };
                    }
                }
                return match context_stats(rest) {
                    Some((name, stats, tail)) => match ident_part(tail) {
                        Ok(ident) => Ok(Some(Line::LogContext {
                            prefix: prefix.to_string(),
                            level,
                            name: name.to_string(),
                            ident,
                            stats,
                        })),
                        Err(()) => err(format!(
                            "unexpected text {tail:?} after `used`: expected the end of the line or `: IDENT`"
                        )),
                    },
                    None if rest.contains(" total in ") => err(format!(
                        "malformed memory-context line: expected {STATS_SHAPE} after `level: {level}; `"
                    )),
                    None => Ok(None),
                };
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("Grand total: ") {
        return match block_stats(rest, "bytes") {
            Some((stats, "")) => Ok(Some(if prefix.is_empty() && msg.len() == line.len() {
                Line::StderrGrand { stats }
            } else {
                Line::LogGrand {
                    prefix: prefix.to_string(),
                    stats,
                }
            })),
            _ if rest.contains(" bytes in ") => err(
                "malformed `Grand total` line: expected `Grand total: T bytes in B blocks; F free \
                 (C chunks); U used`"
                    .to_string(),
            ),
            _ => Ok(None),
        };
    }

    // Stderr and gdb lines: indentation, then the context.
    let indent = line.len() - line.trim_start_matches(' ').len();
    let body = &line[indent..];
    if body.is_empty() {
        return Ok(None);
    }
    if let Some((count, tail)) = number(body) {
        if let Some(tail) = tail.strip_prefix(" more child contexts containing ") {
            return match block_stats(tail, "total") {
                Some((stats, "")) => Ok(Some(Line::StderrFolded {
                    indent,
                    count,
                    stats,
                })),
                _ => err(
                    "malformed `N more child contexts containing ...` line: expected `N more child \
                     contexts containing T total in B blocks; F free (C chunks); U used`"
                        .to_string(),
                ),
            };
        }
    }
    if let Some((name, stats, tail)) = context_stats(body) {
        if let Ok(ident) = ident_part(tail) {
            return Ok(Some(Line::StderrContext {
                indent,
                name: name.to_string(),
                ident,
                stats,
            }));
        }
    }
    if let Some((name, bytes)) = body.rsplit_once(": ") {
        if !name.is_empty() && !bytes.is_empty() && bytes.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(bytes) = bytes.parse() {
                return Ok(Some(Line::Gdb {
                    indent,
                    name: name.to_string(),
                    bytes,
                }));
            }
        }
    }
    Ok(None)
}

/// Where the message of a log line starts: at `level: N; `, `Grand total: ` or
/// `logging memory contexts of PID `, after a prefix that ends in a space.
fn find_log_marker(line: &str) -> Option<usize> {
    for marker in [
        "level: ",
        "Grand total: ",
        "logging memory contexts of PID ",
    ] {
        let mut from = 0;
        while let Some(off) = line[from..].find(marker) {
            let at = from + off;
            let ok_start = at == 0 || line.as_bytes()[at - 1] == b' ';
            let ok_tail = marker != "level: " || {
                let r = &line[at + marker.len()..];
                number(r).is_some_and(|(_, r)| r.starts_with("; "))
            };
            if ok_start && ok_tail {
                return Some(at);
            }
            from = at + 1;
        }
    }
    None
}

/// True if `pid` occurs in `prefix` as a whole number (not part of a longer one).
fn prefix_has_pid(prefix: &str, pid: u32) -> bool {
    let p = pid.to_string();
    let b = prefix.as_bytes();
    let mut from = 0;
    while let Some(off) = prefix[from..].find(&p) {
        let at = from + off;
        let end = at + p.len();
        let before = at == 0 || !b[at - 1].is_ascii_digit();
        let after = end == b.len() || !b[end].is_ascii_digit();
        if before && after {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Milliseconds since the epoch of the first `YYYY-MM-DD HH:MM:SS[.fff]` in `s` (read as UTC).
fn find_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    for i in 0..b.len() {
        if b.len() - i < 19 {
            break;
        }
        let t = &b[i..i + 19];
        let shape = t.iter().enumerate().all(|(k, &c)| match k {
            4 | 7 => c == b'-',
            10 => c == b' ' || c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
        if !shape {
            continue;
        }
        let num = |r: std::ops::Range<usize>| -> i64 {
            std::str::from_utf8(&t[r])
                .ok()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
        let (h, mi, se) = (num(11..13), num(14..16), num(17..19));
        let mut ms = 0i64;
        if b.get(i + 19) == Some(&b'.') {
            let frac: String = s[i + 20..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let digits: String = frac.chars().chain("000".chars()).take(3).collect();
            ms = digits.parse().unwrap_or(0);
        }
        // Days from the civil date (Howard Hinnant's algorithm).
        let yy = if mo <= 2 { y - 1 } else { y };
        let era = yy.div_euclid(400);
        let yoe = yy - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let total = ((days * 24 + h) * 60 + mi) * 60 + se;
        return u64::try_from(total * 1000 + ms).ok();
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Log,
    Stderr,
    Gdb,
}

struct Builder {
    kind: Kind,
    start_line: usize,
    pid: Option<u32>,
    timestamp_ms: Option<u64>,
    contexts: Vec<Context>,
    /// The last context seen at each depth.
    stack: Vec<usize>,
    /// The level number (log) the root was printed with.
    base: Option<u32>,
    /// Spaces per level (gdb output; 2 for stderr).
    unit: Option<usize>,
    grand: Option<Counters>,
    warnings: Vec<String>,
}

impl Builder {
    fn new(kind: Kind, start_line: usize, pid: Option<u32>, timestamp_ms: Option<u64>) -> Self {
        Builder {
            kind,
            start_line,
            pid,
            timestamp_ms,
            contexts: Vec::new(),
            stack: Vec::new(),
            base: None,
            unit: if kind == Kind::Stderr { Some(2) } else { None },
            grand: None,
            warnings: Vec::new(),
        }
    }

    /// Adds a context at `depth` (0 = root).
    fn push(
        &mut self,
        depth: usize,
        mut c: Context,
        lineno: usize,
        source: &str,
    ) -> Result<(), ParseError> {
        if depth > self.stack.len() {
            return Err(ParseError::new(
                source,
                Some(lineno),
                format!(
                    "context {:?} is {} levels below the previous context's parent: a line of the \
                     dump is missing",
                    c.name,
                    depth - self.stack.len() + 1
                ),
            ));
        }
        self.stack.truncate(depth);
        c.parent = self.stack.last().copied();
        c.level = u32::try_from(depth).unwrap_or(u32::MAX);
        self.contexts.push(c);
        self.stack.push(self.contexts.len() - 1);
        Ok(())
    }

    /// Adds a folded line whose children-level is `depth` (its parent is the last context at
    /// `depth - 1`).
    fn push_folded(
        &mut self,
        depth: usize,
        count: u64,
        stats: Stats,
        lineno: usize,
        source: &str,
    ) -> Result<(), ParseError> {
        if depth == 0 || depth > self.stack.len() {
            return Err(ParseError::new(
                source,
                Some(lineno),
                "`more child contexts` line does not follow a context it could belong to",
            ));
        }
        let parent = self.stack[depth - 1];
        self.contexts.push(Context {
            name: format!("{count} more child contexts"),
            ident: None,
            level: u32::try_from(depth).unwrap_or(u32::MAX),
            parent: Some(parent),
            total_bytes: stats.total,
            total_nblocks: Some(stats.nblocks),
            free_bytes: Some(stats.free),
            free_chunks: Some(stats.chunks),
            used_bytes: Some(stats.used),
            folded: Some(count),
            id: None,
            kind: None,
        });
        // A folded line has no children: later lines at this depth attach to the parent.
        self.stack.truncate(depth);
        Ok(())
    }

    fn finish(mut self, source: &str) -> Option<Dump> {
        if self.contexts.is_empty() {
            return None;
        }
        let format = match self.kind {
            Kind::Log => Format::PostgresLog,
            Kind::Stderr => Format::PostgresStderr,
            Kind::Gdb => Format::Gdb,
        };
        let tree = Tree {
            thread: None,
            missing: false,
            contexts: self.contexts,
            sites: Vec::new(),
        };
        match (self.kind, self.grand) {
            (Kind::Gdb, _) => {}
            (_, None) => self.warnings.push(format!(
                "the dump starting at line {} has no `Grand total` line: it may be cut short",
                self.start_line
            )),
            (_, Some(g)) => {
                let sum = tree.total();
                if sum != g {
                    self.warnings.push(format!(
                        "the dump starting at line {}: its lines add up to {} bytes in {} blocks, \
                         but its `Grand total` says {} bytes in {} blocks (lines missing?)",
                        self.start_line,
                        sum.total_bytes,
                        sum.total_nblocks,
                        g.total_bytes,
                        g.total_nblocks
                    ));
                }
            }
        }
        Some(Dump {
            source: source.to_string(),
            line: Some(self.start_line),
            format,
            pid: self.pid,
            timestamp_ms: self.timestamp_ms,
            trees: vec![tree],
            grand_total: self.grand,
            has_detail: self.kind != Kind::Gdb,
            warnings: self.warnings,
        })
    }
}

fn detail_context(name: String, ident: Option<String>, st: Stats) -> Context {
    Context {
        name,
        ident,
        level: 0,
        parent: None,
        total_bytes: st.total,
        total_nblocks: Some(st.nblocks),
        free_bytes: Some(st.free),
        free_chunks: Some(st.chunks),
        used_bytes: Some(st.used),
        folded: None,
        id: None,
        kind: None,
    }
}

fn parse_text(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if let Some(l) = classify(raw, i + 1, source)? {
            lines.push((i + 1, l));
        }
    }
    let postgres = lines.iter().any(|(_, l)| !matches!(l, Line::Gdb { .. }));
    let gdb = !postgres && lines.iter().any(|(_, l)| matches!(l, Line::Gdb { .. }));
    if !postgres && !gdb {
        return Err(ParseError::new(
            source,
            None,
            format!("no memory-context dump found: {FORMATS_EXPECTED}"),
        ));
    }

    let mut done: Vec<Dump> = Vec::new();
    // Open log dumps (several backends may interleave), the open stderr and gdb dumps.
    let mut logs: Vec<Builder> = Vec::new();
    let mut other: Option<Builder> = None;

    let close = |b: Builder, done: &mut Vec<Dump>| {
        if let Some(d) = b.finish(source) {
            done.push(d);
        }
    };

    // Picks the open log dump a line with this prefix belongs to.
    fn route(logs: &[Builder], prefix: &str) -> Option<usize> {
        if logs.is_empty() {
            return None;
        }
        logs.iter()
            .position(|b| b.pid.is_some_and(|p| prefix_has_pid(prefix, p)))
            .or(Some(logs.len() - 1))
    }

    for (lineno, l) in lines {
        match l {
            Line::LogHeader { prefix, pid } => {
                if let Some(i) = logs.iter().position(|b| b.pid == Some(pid)) {
                    close(logs.remove(i), &mut done);
                }
                logs.push(Builder::new(
                    Kind::Log,
                    lineno,
                    Some(pid),
                    find_timestamp(&prefix),
                ));
            }
            Line::LogContext {
                prefix,
                level,
                name,
                ident,
                stats,
            } => {
                let mut at = route(&logs, &prefix);
                if let Some(i) = at {
                    let b = &logs[i];
                    if let Some(base) = b.base {
                        if level <= base {
                            // A new top context: the previous dump ended without its grand total.
                            let pid = b.pid.filter(|&p| prefix_has_pid(&prefix, p));
                            let old = logs.remove(i);
                            close(old, &mut done);
                            logs.push(Builder::new(
                                Kind::Log,
                                lineno,
                                pid,
                                find_timestamp(&prefix),
                            ));
                            at = Some(logs.len() - 1);
                        }
                    }
                }
                let i = match at {
                    Some(i) => i,
                    // The tail of a dump whose beginning is not in the file (a rotated log):
                    // skipped. Without its `logging memory contexts` line, a dump is known to
                    // begin at TopMemoryContext, at level 0 (PostgreSQL 14-17) or 1 (later).
                    None if level > 1 || (level == 1 && name != "TopMemoryContext") => continue,
                    None => {
                        logs.push(Builder::new(
                            Kind::Log,
                            lineno,
                            None,
                            find_timestamp(&prefix),
                        ));
                        logs.len() - 1
                    }
                };
                let b = &mut logs[i];
                let base = *b.base.get_or_insert(level);
                if b.timestamp_ms.is_none() {
                    b.timestamp_ms = find_timestamp(&prefix);
                }
                b.push(
                    (level - base) as usize,
                    detail_context(name, ident, stats),
                    lineno,
                    source,
                )?;
            }
            Line::LogFolded {
                prefix,
                level,
                count,
                stats,
            } => {
                let Some(i) = route(&logs, &prefix) else {
                    // Part of a dump whose beginning is not in the file.
                    continue;
                };
                let b = &mut logs[i];
                let base = b.base.unwrap_or(level);
                if level < base {
                    return Err(ParseError::new(
                        source,
                        Some(lineno),
                        format!("`more child contexts` line at level {level}, above the dump's top level {base}"),
                    ));
                }
                // Its level is the parent's: the summarised contexts are one level deeper.
                b.push_folded((level - base) as usize + 1, count, stats, lineno, source)?;
            }
            Line::LogGrand { prefix, stats } => {
                if let Some(i) = route(&logs, &prefix) {
                    let mut b = logs.remove(i);
                    b.grand = Some(stats.counters());
                    close(b, &mut done);
                }
            }
            Line::StderrContext {
                indent,
                name,
                ident,
                stats,
            } => {
                if indent % 2 != 0 {
                    return Err(ParseError::new(
                        source,
                        Some(lineno),
                        format!(
                            "indentation of {indent} spaces: MemoryContextStats indents two spaces per level"
                        ),
                    ));
                }
                let depth = indent / 2;
                if depth == 0 {
                    if let Some(b) = other.take() {
                        close(b, &mut done);
                    }
                    other = Some(Builder::new(Kind::Stderr, lineno, None, None));
                }
                let Some(b) = other.as_mut().filter(|b| b.kind == Kind::Stderr) else {
                    // Part of a dump whose beginning is not in the file.
                    continue;
                };
                b.push(depth, detail_context(name, ident, stats), lineno, source)?;
            }
            Line::StderrFolded {
                indent,
                count,
                stats,
            } => {
                let Some(b) = other.as_mut().filter(|b| b.kind == Kind::Stderr) else {
                    // Part of a dump whose beginning is not in the file.
                    continue;
                };
                // Indented like the children it stands for.
                b.push_folded(indent / 2, count, stats, lineno, source)?;
            }
            Line::StderrGrand { stats } => {
                if let Some(mut b) = other.take() {
                    b.grand = Some(stats.counters());
                    close(b, &mut done);
                } else if let Some(b) = logs.pop() {
                    // A log whose prefix is empty: the grand total belongs to the open log dump.
                    let mut b = b;
                    b.grand = Some(stats.counters());
                    close(b, &mut done);
                }
            }
            Line::Gdb {
                indent,
                name,
                bytes,
            } => {
                if !gdb {
                    continue;
                }
                if indent == 0 {
                    if let Some(b) = other.take() {
                        close(b, &mut done);
                    }
                    other = Some(Builder::new(Kind::Gdb, lineno, None, None));
                }
                let Some(b) = other.as_mut() else {
                    // Part of a dump whose beginning is not in the file.
                    continue;
                };
                let depth = if indent == 0 {
                    0
                } else {
                    let unit = *b.unit.get_or_insert(indent);
                    if indent % unit != 0 {
                        return Err(ParseError::new(
                            source,
                            Some(lineno),
                            format!(
                                "indentation of {indent} spaces is not a multiple of this dump's \
                                 {unit} spaces per level"
                            ),
                        ));
                    }
                    indent / unit
                };
                let c = Context {
                    name,
                    ident: None,
                    level: 0,
                    parent: None,
                    total_bytes: bytes,
                    total_nblocks: None,
                    free_bytes: None,
                    free_chunks: None,
                    used_bytes: None,
                    folded: None,
                    id: None,
                    kind: None,
                };
                b.push(depth, c, lineno, source)?;
            }
        }
    }
    for b in logs {
        close(b, &mut done);
    }
    if let Some(b) = other {
        close(b, &mut done);
    }
    if done.is_empty() {
        return Err(ParseError::new(
            source,
            None,
            format!("no memory-context dump found: {FORMATS_EXPECTED}"),
        ));
    }
    done.sort_by_key(|d| d.line);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["s10.json", "s2.json", "s1.json", "s02.json"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["s1.json", "s02.json", "s2.json", "s10.json"]);
    }

    #[test]
    fn timestamps() {
        assert_eq!(find_timestamp("1970-01-01 00:00:01 UTC [1] "), Some(1000));
        assert_eq!(
            find_timestamp("x 2000-03-01T00:00:00.5 y"),
            Some(951_868_800_500)
        );
        assert_eq!(find_timestamp("no time here"), None);
    }

    #[test]
    fn pid_tokens() {
        assert!(prefix_has_pid("2026-01-01 UTC [9281] LOG:  ", 9281));
        assert!(!prefix_has_pid("2026-01-01 UTC [19281] LOG:  ", 9281));
    }

    #[test]
    fn stats_with_colons_in_names_and_idents() {
        let (name, st, rest) =
            context_stats("a: b: 10 total in 1 blocks; 2 free (3 chunks); 8 used: x: 1 total in")
                .unwrap();
        assert_eq!(name, "a: b");
        assert_eq!(st.used, 8);
        assert_eq!(rest, ": x: 1 total in");
    }
}
