//! Memory-context statistics: a plain-data tree of per-context counters, printed
//! exactly the way PostgreSQL prints its own, and stored as JSON snapshots.
//!
//! A leak in a long-lived context is found by looking at numbers, not at
//! pointers: dump the tree of contexts with how much memory each one holds, do it
//! again a while later, and see which context keeps growing. This module is the
//! data side of that method. A [`StatsNode`] tree is a *snapshot*: names,
//! identifiers and [`Counters`] copied out of the live contexts at one moment,
//! owning no allocator state. Taking the snapshot is the only part that has to
//! look at live contexts; everything here — formatting, flattening into rows,
//! JSON — works on the copy, so it can run later, on another thread, or in
//! another process that only has the file. The module depends on nothing else in
//! the crate for that reason: the allocator fills the tree in, and tools that
//! never allocate from a context (a CLI comparing two dumps) can still use it.
//!
//! Each node holds the counters of its own context only, as PostgreSQL's
//! per-context `stats` method reports them: bytes obtained from the system
//! (block headers and the context header included), the number of blocks, the
//! free bytes (unused block tails plus chunks on the freelists, chunk headers
//! included) and the number of free chunks; "used" is always derived as total
//! minus free. A Generation node also holds its chunk count and a Slab node its
//! empty blocks ([`KindDetail`]), which their kinds' stats lines print. Sums
//! over a subtree are computed when asked for ([`StatsNode::total`]) rather
//! than stored, so a snapshot cannot disagree with itself.
//!
//! [`format_stats`] reproduces the text that `MemoryContextStatsDetail` writes to
//! stderr (what `MemoryContextStats(TopMemoryContext)` prints from gdb and what
//! an out-of-memory error dumps into the server log) byte for byte. Readers of
//! such dumps — people and scripts — should not have to learn a second format,
//! and the leak-hunting tools can read a PostgreSQL dump and a memctx dump the
//! same way. Being exact means copying PostgreSQL's quirks too, and they are
//! listed on [`format_stats`]: the summary line for children beyond the limits
//! counts every context in the omitted subtrees (not only the omitted siblings)
//! and sums their whole subtrees; the grand total covers the summarised
//! contexts as well as the printed ones; identifiers are cut at 100 bytes on a
//! character boundary, control characters become spaces and a `...` marks the
//! cut; and a context named `dynahash` is shown under its identifier.
//!
//! Like PostgreSQL, which stopped recursing over the context tree because a
//! stack overflow while reporting an error is the worst time to have one, the
//! walks in this module ([`StatsNode::total`], [`format_stats`], [`rows`]) use
//! explicit work lists, so a pathologically deep tree costs heap, not stack.
//! They do allocate, though: unlike PostgreSQL's `fprintf` path, building a
//! `String` is not something to do from a signal handler or after the allocator
//! has failed. Take the snapshot, then format it where allocating is safe.
//!
//! The flat form, [`rows`], follows the columns of PostgreSQL's
//! `pg_backend_memory_contexts` view (master: name, ident, type, level, path and
//! the byte counts) in the view's breadth-first order, with two differences that
//! make rows useful as a stored snapshot: ids are the contexts' own stable ids
//! rather than positions that are only valid within one query, and names and
//! identifiers are kept whole. Even so, ids mean nothing across processes or
//! runs; to compare snapshots over time, match contexts by the path of
//! name/identifier pairs from the root. [`to_json`] stores both the rows and the
//! nested tree, and [`from_json`] rebuilds the tree from the rows, which keeps
//! reading independent of how deep the tree is (a nested JSON document hits
//! `serde_json`'s recursion limit at 128 levels of nesting, about 64 contexts
//! deep).

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// Counters of one context (its own, not its children's).
///
/// These are the four numbers PostgreSQL's `MemoryContextCounters` holds for
/// one context; the fifth figure of every stats line, "used", is derived by
/// [`used_bytes`](Counters::used_bytes).
///
/// Its [`Display`](fmt::Display) form is the stats string of one context in
/// PostgreSQL's format, without the name:
///
/// # Examples
///
/// ```
/// use memctx::stats::Counters;
///
/// let c = Counters { total_bytes: 8192, total_nblocks: 1, free_bytes: 7504, free_chunks: 2 };
/// assert_eq!(c.used_bytes(), 688);
/// assert_eq!(c.to_string(), "8192 total in 1 blocks; 7504 free (2 chunks); 688 used");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Bytes obtained from the system for this context: all its blocks,
    /// including block headers and (for the block that holds it) the context
    /// header.
    pub total_bytes: u64,
    /// Number of blocks the context holds.
    pub total_nblocks: u64,
    /// Bytes of `total_bytes` not in use: unused block space plus the chunks on
    /// the freelists (chunk headers included).
    pub free_bytes: u64,
    /// Number of chunks on the freelists.
    pub free_chunks: u64,
}

impl Counters {
    /// Bytes in use: `total_bytes - free_bytes` (0 if the counters are
    /// inconsistent and free exceeds total).
    ///
    /// # Examples
    ///
    /// ```
    /// use memctx::stats::Counters;
    ///
    /// let c = Counters { total_bytes: 1024, total_nblocks: 1, free_bytes: 24, free_chunks: 0 };
    /// assert_eq!(c.used_bytes(), 1000);
    /// ```
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }

    /// Adds `other`'s counters to these, field by field (saturating).
    ///
    /// # Examples
    ///
    /// ```
    /// use memctx::stats::Counters;
    ///
    /// let mut sum = Counters::default();
    /// sum.add(&Counters { total_bytes: 8192, total_nblocks: 1, free_bytes: 100, free_chunks: 1 });
    /// sum.add(&Counters { total_bytes: 1024, total_nblocks: 1, free_bytes: 24, free_chunks: 2 });
    /// assert_eq!(
    ///     sum,
    ///     Counters { total_bytes: 9216, total_nblocks: 2, free_bytes: 124, free_chunks: 3 }
    /// );
    /// ```
    pub fn add(&mut self, other: &Counters) {
        self.total_bytes = self.total_bytes.saturating_add(other.total_bytes);
        self.total_nblocks = self.total_nblocks.saturating_add(other.total_nblocks);
        self.free_bytes = self.free_bytes.saturating_add(other.free_bytes);
        self.free_chunks = self.free_chunks.saturating_add(other.free_chunks);
    }
}

impl fmt::Display for Counters {
    /// Writes `T total in B blocks; F free (C chunks); U used`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} total in {} blocks; {} free ({} chunks); {} used",
            self.total_bytes,
            self.total_nblocks,
            self.free_bytes,
            self.free_chunks,
            self.used_bytes()
        )
    }
}

/// The figures of one context's stats line beyond [`Counters`]: PostgreSQL prints each context
/// kind's line in its own shape (the `*Stats` functions of `aset.c`, `generation.c`, `slab.c` and
/// `bump.c`), and two of the shapes hold a number the others do not.
///
/// | kind | line |
/// |---|---|
/// | AllocSet (and Slab before PostgreSQL 16) | `T total in B blocks; F free (C chunks); U used` |
/// | Generation | `T total in B blocks (N chunks); F free (C chunks); U used` |
/// | Slab (PostgreSQL 16 and later) | `T total in B blocks; E empty blocks; F free (C chunks); U used` |
/// | Bump | `T total in B blocks; F free; U used` |
///
/// A field is `None` where the kind has no such figure or the input did not record it (a
/// `pg_backend_memory_contexts` export has neither).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindDetail {
    /// Generation: the chunks carved from its blocks, live or freed (`N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Slab: the empty blocks it keeps for reuse (`E`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_blocks: Option<u64>,
}

impl KindDetail {
    /// The stats line of a context of `kind` with these counters, in the kind's shape (the table
    /// above), without the name: the AllocSet shape when the kind's figure is unknown, as for any
    /// kind but Generation, Slab and Bump.
    ///
    /// # Examples
    ///
    /// ```
    /// use memctx::stats::{Counters, KindDetail};
    ///
    /// let c = Counters { total_bytes: 16384, total_nblocks: 2, free_bytes: 11136, free_chunks: 3 };
    /// let generation = KindDetail { chunks: Some(37), empty_blocks: None };
    /// assert_eq!(
    ///     generation.line("Generation", &c).to_string(),
    ///     "16384 total in 2 blocks (37 chunks); 11136 free (3 chunks); 5248 used"
    /// );
    /// assert_eq!(
    ///     KindDetail::default().line("Bump", &c).to_string(),
    ///     "16384 total in 2 blocks; 11136 free; 5248 used"
    /// );
    /// assert_eq!(KindDetail::default().line("AllocSet", &c).to_string(), c.to_string());
    /// ```
    #[must_use]
    pub fn line<'a>(&'a self, kind: &'a str, counters: &'a Counters) -> impl fmt::Display + 'a {
        KindLine {
            kind,
            counters,
            detail: self,
        }
    }
}

/// [`KindDetail::line`]'s result.
struct KindLine<'a> {
    kind: &'a str,
    counters: &'a Counters,
    detail: &'a KindDetail,
}

impl fmt::Display for KindLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.counters;
        let (total, blocks, free, used) =
            (c.total_bytes, c.total_nblocks, c.free_bytes, c.used_bytes());
        let chunks = c.free_chunks;
        match (self.kind, self.detail.chunks, self.detail.empty_blocks) {
            ("Generation", Some(n), _) => write!(
                f,
                "{total} total in {blocks} blocks ({n} chunks); {free} free ({chunks} chunks); \
                 {used} used"
            ),
            ("Slab", _, Some(e)) => write!(
                f,
                "{total} total in {blocks} blocks; {e} empty blocks; {free} free ({chunks} chunks); \
                 {used} used"
            ),
            ("Bump", _, _) => write!(f, "{total} total in {blocks} blocks; {free} free; {used} used"),
            _ => c.fmt(f),
        }
    }
}

/// One context in a stats tree.
///
/// A snapshot of one context and, through `children`, of its whole subtree.
/// Children are kept in the order they are to be printed and listed.
///
/// # Examples
///
/// ```
/// use memctx::stats::{Counters, KindDetail, StatsNode};
///
/// let leaf = |id, name: &str, total| StatsNode {
///     id,
///     name: name.to_string(),
///     ident: None,
///     kind: "AllocSet".to_string(),
///     counters: Counters { total_bytes: total, total_nblocks: 1, free_bytes: 0, free_chunks: 0 },
///     detail: KindDetail::default(),
///     children: Vec::new(),
/// };
/// let mut top = leaf(1, "TopMemoryContext", 8192);
/// top.children.push(leaf(2, "MessageContext", 1024));
/// assert_eq!(top.total().total_bytes, 9216);
/// assert_eq!(top.total().total_nblocks, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsNode {
    /// Stable id of the context (unique within one snapshot; meaningless across
    /// processes).
    pub id: u64,
    /// The context's name, e.g. `"CacheMemoryContext"`.
    pub name: String,
    /// The context's optional identifier (a relation name, a query string, ...),
    /// kept whole; [`format_stats`] shortens it for display.
    pub ident: Option<String>,
    /// The kind of context, e.g. `"AllocSet"`, like the `type` column of
    /// `pg_backend_memory_contexts`.
    pub kind: String,
    /// The context's own counters, not including its children.
    pub counters: Counters,
    /// What the kind's stats line shows beyond the counters (a Generation's chunks, a Slab's
    /// empty blocks); in JSON, optional fields beside `counters`.
    #[serde(flatten)]
    pub detail: KindDetail,
    /// The child contexts, in display order.
    pub children: Vec<StatsNode>,
}

/// Dropping a tree iteratively: the derived drop would recurse once per level, and a deep tree (a
/// context chain thousands long) would overflow the stack.
impl Drop for StatsNode {
    fn drop(&mut self) {
        let mut stack = core::mem::take(&mut self.children);
        while let Some(mut node) = stack.pop() {
            stack.append(&mut node.children);
        }
    }
}

impl StatsNode {
    /// The counters of this context and all its descendants, summed.
    ///
    /// Walks the subtree with an explicit stack, so depth costs no call stack.
    ///
    /// # Examples
    ///
    /// See [`StatsNode`].
    #[must_use]
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            sum.add(&node.counters);
            stack.extend(node.children.iter());
        }
        sum
    }
}

/// Limits on how much of the tree [`format_stats`] prints one line per context,
/// like `MemoryContextStatsDetail`'s `max_level` and `max_children`.
///
/// The default, 100 and 100, is what PostgreSQL's `MemoryContextStats` and
/// `pg_log_backend_memory_contexts` use.
///
/// # Examples
///
/// ```
/// use memctx::stats::PrintOptions;
///
/// let opts = PrintOptions::default();
/// assert_eq!((opts.max_level, opts.max_children), (100, 100));
/// let terse = PrintOptions { max_level: 1, max_children: 10 };
/// # let _ = terse;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrintOptions {
    /// How many levels below the root get lines of their own. The root is at
    /// level 0 and is always printed; the children of a context at level
    /// `max_level` are summarised instead of printed (so `0` prints the root and
    /// one summary line). PostgreSQL counts levels from 1 and tests
    /// `level <= max_level` before descending, which is the same rule.
    pub max_level: usize,
    /// How many children of one context get lines of their own, in order; the
    /// rest are summarised.
    pub max_children: usize,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            max_level: 100,
            max_children: 100,
        }
    }
}

/// Formats the tree exactly as PostgreSQL's `MemoryContextStatsDetail` writes
/// it to stderr.
///
/// Output, one `\n`-terminated line each:
///
/// - every printed context, in pre-order (a context, then its children in the
///   given order): two spaces per level of indentation (none for the root),
///   then `NAME: T total in B blocks; F free (C chunks); U used` — or the
///   context's kind's shape of it ([`KindDetail`]: Generation, Slab and Bump
///   print their own) —, then, if the context has an identifier, `: IDENT`;
/// - when a context has children that are not printed — those past the first
///   `max_children`, or all of them when the context is at level `max_level` —
///   one line at the children's indentation, after the printed children:
///   `N more child contexts containing T total in B blocks; F free (C chunks); U used`;
/// - last, `Grand total: T bytes in B blocks; F free (C chunks); U used`.
///
/// PostgreSQL's details, reproduced here (as of master; versions before 17
/// summarised differently):
///
/// - The summary line's `N` counts *every* context in the omitted subtrees —
///   the omitted children and all their descendants — and the figures are the
///   sums over those subtrees. It says "child contexts" even when `N` is 1.
/// - The grand total is the sum over the whole tree: the summarised contexts
///   are included, not just the printed ones. Note "bytes" where the other lines
///   say "total".
/// - The identifier: if it is longer than 100 bytes it is cut to the longest
///   prefix of at most 100 bytes that ends on a character boundary and `...` is
///   appended; every byte below 0x20 (newline, tab, ... — NUL too, which a C
///   string could not hold) becomes a space; DEL and non-ASCII characters are
///   kept. An empty identifier still prints `: `.
/// - A context named `dynahash` that has an identifier is printed under its
///   identifier as name (whole and unfiltered), with no `: IDENT` part.
/// - The summary line and the grand total are in the AllocSet shape whatever
///   the kinds they sum, as PostgreSQL prints them from summed counters.
/// - The `kind` and `id` of a node are not printed (the kind only chooses the
///   line's shape).
///
/// # Examples
///
/// ```
/// use memctx::stats::{format_stats, Counters, KindDetail, PrintOptions, StatsNode};
///
/// let node = |id, name: &str, ident: Option<&str>, total, free, children| StatsNode {
///     id,
///     name: name.to_string(),
///     ident: ident.map(str::to_string),
///     kind: "AllocSet".to_string(),
///     counters: Counters { total_bytes: total, total_nblocks: 1, free_bytes: free, free_chunks: 1 },
///     detail: KindDetail::default(),
///     children,
/// };
/// let tree = node(1, "TopMemoryContext", None, 8192, 1000, vec![
///     node(2, "CachedPlan", Some("SELECT 1"), 2048, 48, vec![]),
/// ]);
/// assert_eq!(
///     format_stats(&tree, &PrintOptions::default()),
///     "TopMemoryContext: 8192 total in 1 blocks; 1000 free (1 chunks); 7192 used\n\
///      \x20 CachedPlan: 2048 total in 1 blocks; 48 free (1 chunks); 2000 used: SELECT 1\n\
///      Grand total: 10240 bytes in 2 blocks; 1048 free (2 chunks); 9192 used\n"
/// );
/// ```
#[must_use]
pub fn format_stats(root: &StatsNode, opts: &PrintOptions) -> String {
    enum Work<'a> {
        /// Print this context's line, then schedule its children.
        Context(&'a StatsNode, usize),
        /// Print the summary line for these omitted siblings (and their
        /// subtrees), indented for the given level.
        Summary(&'a [StatsNode], usize),
    }

    let mut out = String::new();
    let mut grand = Counters::default();
    let mut work = vec![Work::Context(root, 0)];

    while let Some(item) = work.pop() {
        match item {
            Work::Context(node, level) => {
                push_indent(&mut out, level);
                push_context_line(&mut out, node);
                grand.add(&node.counters);

                let shown = if level < opts.max_level {
                    node.children.len().min(opts.max_children)
                } else {
                    0
                };
                let (printed, omitted) = node.children.split_at(shown);
                // Work is a stack: push what comes last first.
                if !omitted.is_empty() {
                    work.push(Work::Summary(omitted, level + 1));
                }
                for child in printed.iter().rev() {
                    work.push(Work::Context(child, level + 1));
                }
            }
            Work::Summary(omitted, level) => {
                let mut count: u64 = 0;
                let mut sum = Counters::default();
                let mut stack: Vec<&StatsNode> = omitted.iter().collect();
                while let Some(node) = stack.pop() {
                    count += 1;
                    sum.add(&node.counters);
                    stack.extend(node.children.iter());
                }
                push_indent(&mut out, level);
                // Writing to a String cannot fail.
                let _ = writeln!(out, "{count} more child contexts containing {sum}");
                grand.add(&sum);
            }
        }
    }

    push_grand_total(&mut out, &grand);
    out
}

/// The longest identifier, in bytes, that [`format_stats`] prints whole.
const IDENT_DISPLAY_MAX: usize = 100;

fn push_indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// Appends `NAME: STATS[: IDENT]\n` for one context.
fn push_context_line(out: &mut String, node: &StatsNode) {
    let (name, ident) = match &node.ident {
        // PostgreSQL labels hash-table contexts by the table's name alone.
        Some(ident) if node.name == "dynahash" => (ident.as_str(), None),
        ident => (node.name.as_str(), ident.as_deref()),
    };
    let _ = write!(
        out,
        "{name}: {}",
        node.detail.line(&node.kind, &node.counters)
    );
    if let Some(ident) = ident {
        out.push_str(": ");
        push_display_ident(out, ident);
    }
    out.push('\n');
}

/// Appends an identifier as PostgreSQL prints it: cut at 100 bytes on a character boundary (then
/// `...`), control characters as spaces.
pub(crate) fn push_display_ident(out: &mut String, ident: &str) {
    let mut cut = ident.len();
    let truncated = cut > IDENT_DISPLAY_MAX;
    if truncated {
        cut = IDENT_DISPLAY_MAX;
        while !ident.is_char_boundary(cut) {
            cut -= 1;
        }
    }
    out.extend(ident[..cut].chars().map(|c| if c < ' ' { ' ' } else { c }));
    if truncated {
        out.push_str("...");
    }
}

/// Appends the last line of a stats dump: `Grand total: T bytes in B blocks; ...`.
pub(crate) fn push_grand_total(out: &mut String, grand: &Counters) {
    let _ = writeln!(
        out,
        "Grand total: {} bytes in {} blocks; {} free ({} chunks); {} used",
        grand.total_bytes,
        grand.total_nblocks,
        grand.free_bytes,
        grand.free_chunks,
        grand.used_bytes()
    );
}

/// One context as a row, with the columns of PostgreSQL's
/// `pg_backend_memory_contexts` view (master) plus stable ids.
///
/// Differences from the view: `id`, `path` and `parent_id` hold the contexts'
/// stable ids instead of breadth-first positions; `name` and `ident` are kept
/// whole (the view cuts identifiers at 1023 bytes and shows a `dynahash`
/// context under its identifier); `parent_id` is extra. In JSON the `kind`
/// field is called `type`, like the view's column.
///
/// # Examples
///
/// ```
/// use memctx::stats::{rows, Counters, KindDetail, StatsNode};
///
/// let top = StatsNode {
///     id: 7,
///     name: "TopMemoryContext".to_string(),
///     ident: None,
///     kind: "AllocSet".to_string(),
///     counters: Counters { total_bytes: 8192, total_nblocks: 1, free_bytes: 192, free_chunks: 1 },
///     detail: KindDetail::default(),
///     children: Vec::new(),
/// };
/// let r = &rows(&top)[0];
/// assert_eq!((r.level, r.path.as_slice(), r.parent_id), (1, &[7][..], None));
/// assert_eq!(r.used_bytes, 8000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextRow {
    /// Stable id of the context.
    pub id: u64,
    /// The context's name.
    pub name: String,
    /// The context's identifier, if any.
    pub ident: Option<String>,
    /// The kind of context, e.g. `"AllocSet"` (`type` in JSON).
    #[serde(rename = "type")]
    pub kind: String,
    /// Depth in the tree, 1 for the root, like the view's `level` in master
    /// (PostgreSQL 15 and 16 counted from 0). Always `path.len()`.
    pub level: u32,
    /// Ids of the context's ancestors from the root down to the context itself,
    /// inclusive.
    pub path: Vec<u64>,
    /// Id of the parent context; `None` for the root.
    pub parent_id: Option<u64>,
    /// Bytes obtained from the system ([`Counters::total_bytes`]).
    pub total_bytes: u64,
    /// Number of blocks ([`Counters::total_nblocks`]).
    pub total_nblocks: u64,
    /// Unused bytes ([`Counters::free_bytes`]).
    pub free_bytes: u64,
    /// Free chunks ([`Counters::free_chunks`]).
    pub free_chunks: u64,
    /// `total_bytes - free_bytes` ([`Counters::used_bytes`]).
    pub used_bytes: u64,
    /// What the kind's stats line shows beyond the counters ([`StatsNode::detail`]): optional
    /// fields `chunks` and `empty_blocks` in JSON.
    #[serde(flatten)]
    pub detail: KindDetail,
}

/// Flattens the tree into rows, breadth-first like `pg_backend_memory_contexts`:
/// the root, then every context at level 2 in order, then level 3, and so on,
/// each level's contexts grouped by parent in the parents' order.
///
/// # Examples
///
/// ```
/// use memctx::stats::{rows, Counters, KindDetail, StatsNode};
///
/// let node = |id, name: &str, children| StatsNode {
///     id,
///     name: name.to_string(),
///     ident: None,
///     kind: "AllocSet".to_string(),
///     counters: Counters::default(),
///     detail: KindDetail::default(),
///     children,
/// };
/// let tree = node(1, "Top", vec![
///     node(2, "A", vec![node(4, "A1", vec![])]),
///     node(3, "B", vec![]),
/// ]);
/// let names: Vec<_> = rows(&tree).into_iter().map(|r| (r.name, r.path)).collect();
/// assert_eq!(names, [
///     ("Top".to_string(), vec![1]),
///     ("A".to_string(), vec![1, 2]),
///     ("B".to_string(), vec![1, 3]),
///     ("A1".to_string(), vec![1, 2, 4]),
/// ]);
/// ```
#[must_use]
pub fn rows(root: &StatsNode) -> Vec<ContextRow> {
    let mut out = Vec::new();
    // Each queued context carries the index of its parent's row, whose path it
    // extends.
    let mut queue: VecDeque<(&StatsNode, Option<usize>)> = VecDeque::new();
    queue.push_back((root, None));
    while let Some((node, parent_row)) = queue.pop_front() {
        let (mut path, parent_id) = match parent_row {
            Some(i) => {
                let parent: &ContextRow = &out[i];
                (parent.path.clone(), Some(parent.id))
            }
            None => (Vec::new(), None),
        };
        path.push(node.id);
        let c = &node.counters;
        out.push(ContextRow {
            id: node.id,
            name: node.name.clone(),
            ident: node.ident.clone(),
            kind: node.kind.clone(),
            level: u32::try_from(path.len()).unwrap_or(u32::MAX),
            path,
            parent_id,
            total_bytes: c.total_bytes,
            total_nblocks: c.total_nblocks,
            free_bytes: c.free_bytes,
            free_chunks: c.free_chunks,
            used_bytes: c.used_bytes(),
            detail: node.detail,
        });
        let me = out.len() - 1;
        queue.extend(node.children.iter().map(|child| (child, Some(me))));
    }
    out
}

/// The value of the `format` field of a JSON snapshot.
const JSON_FORMAT: &str = "memctx-stats";
/// The value of the `version` field this module writes and reads.
const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: &'static str,
    version: u32,
    contexts: Vec<ContextRow>,
    tree: &'a StatsNode,
}

/// The header and rows of a snapshot; `tree` is skipped unread (`serde_json`
/// skips values without recursing, so any depth is fine).
#[derive(Deserialize)]
struct SnapshotRows {
    format: String,
    version: u64,
    contexts: Option<Vec<ContextRow>>,
}

#[derive(Deserialize)]
struct SnapshotTree {
    tree: StatsNode,
}

/// Writes the tree as a pretty-printed JSON snapshot.
///
/// The document is one object:
///
/// ```text
/// {
///   "format": "memctx-stats",
///   "version": 1,
///   "contexts": [ ContextRow, ... ],   // rows(root), breadth-first
///   "tree": StatsNode                  // the same tree, nested
/// }
/// ```
///
/// A row has the fields of [`ContextRow`] (`id`, `name`, `ident` — `null` when
/// absent —, `type`, `level`, `path`, `parent_id`, `total_bytes`,
/// `total_nblocks`, `free_bytes`, `free_chunks`, `used_bytes`); a tree node has
/// `id`, `name`, `ident`, `kind`, `counters` (`total_bytes`, `total_nblocks`,
/// `free_bytes`, `free_chunks`) and `children`. Both have, when the kind has
/// them, the optional `chunks` (Generation) and `empty_blocks` (Slab) of
/// [`KindDetail`]; a document without them reads as none. `contexts` is the part
/// [`from_json`] reads: it is flat, so tools (`jq`, spreadsheets, the snapshot
/// diff) can take it row by row and it parses at any depth. `tree` is there for
/// readers who want the nesting; it is as deep as the context tree, which
/// JSON parsers with a nesting limit may refuse for very deep trees.
///
/// # Examples
///
/// ```
/// use memctx::stats::{from_json, to_json, Counters, KindDetail, StatsNode};
///
/// let top = StatsNode {
///     id: 1,
///     name: "TopMemoryContext".to_string(),
///     ident: None,
///     kind: "AllocSet".to_string(),
///     counters: Counters { total_bytes: 8192, total_nblocks: 1, free_bytes: 192, free_chunks: 1 },
///     detail: KindDetail::default(),
///     children: Vec::new(),
/// };
/// let json = to_json(&top);
/// assert!(json.contains("\"format\": \"memctx-stats\""));
/// assert_eq!(from_json(&json).unwrap(), top);
/// ```
///
/// # Panics
///
/// Never in practice: the document is made of strings, integers, arrays and
/// objects with string keys, which `serde_json` always serialises.
#[must_use]
pub fn to_json(root: &StatsNode) -> String {
    let doc = SnapshotOut {
        format: JSON_FORMAT,
        version: JSON_VERSION,
        contexts: rows(root),
        tree: root,
    };
    // Plain structs with string keys: serialisation cannot fail.
    serde_json::to_string_pretty(&doc).expect("serialising a stats snapshot cannot fail")
}

/// Reads a snapshot written by [`to_json`] and rebuilds the tree.
///
/// The tree is rebuilt from `contexts`: every row but one names its parent in
/// `parent_id`, and children keep the order of their rows. Only the stored
/// fields are used; the derived ones (`level`, `path`, `used_bytes`) are not
/// checked. If `contexts` is absent, the nested `tree` is read instead (subject
/// to `serde_json`'s nesting limit).
///
/// # Errors
///
/// A JSON syntax or shape error; a `format` other than `"memctx-stats"` or a
/// `version` other than 1; rows that do not form one tree (no root or several,
/// a duplicate id, a `parent_id` naming no row, rows not connected to the
/// root); neither `contexts` nor `tree` present.
///
/// # Examples
///
/// ```
/// use memctx::stats::from_json;
///
/// let json = r#"{"format": "memctx-stats", "version": 1, "contexts": [
///   {"id": 1, "name": "Top", "ident": null, "type": "AllocSet", "level": 1, "path": [1],
///    "parent_id": null, "total_bytes": 8192, "total_nblocks": 1, "free_bytes": 0,
///    "free_chunks": 0, "used_bytes": 8192},
///   {"id": 5, "name": "Child", "ident": "x", "type": "AllocSet", "level": 2, "path": [1, 5],
///    "parent_id": 1, "total_bytes": 1024, "total_nblocks": 1, "free_bytes": 24,
///    "free_chunks": 1, "used_bytes": 1000}
/// ]}"#;
/// let tree = from_json(json).unwrap();
/// assert_eq!(tree.children[0].ident.as_deref(), Some("x"));
/// assert_eq!(tree.total().total_bytes, 9216);
///
/// assert!(from_json(r#"{"format": "something-else", "version": 1}"#).is_err());
/// ```
pub fn from_json(s: &str) -> Result<StatsNode, serde_json::Error> {
    use serde::de::Error as _;

    let head: SnapshotRows = serde_json::from_str(s)?;
    if head.format != JSON_FORMAT {
        return Err(serde_json::Error::custom(format!(
            "not a memctx stats snapshot: format is {:?}, expected {JSON_FORMAT:?}",
            head.format
        )));
    }
    if head.version != u64::from(JSON_VERSION) {
        return Err(serde_json::Error::custom(format!(
            "unsupported memctx stats snapshot version {} (this build reads version {JSON_VERSION})",
            head.version
        )));
    }
    if let Some(contexts) = head.contexts {
        tree_from_rows(contexts).map_err(serde_json::Error::custom)
    } else {
        let doc: SnapshotTree = serde_json::from_str(s)?;
        Ok(doc.tree)
    }
}

/// Rebuilds a tree from rows linked by `parent_id`, without recursion.
fn tree_from_rows(contexts: Vec<ContextRow>) -> Result<StatsNode, String> {
    let (root, parent_of) = parents_of(&contexts)?;
    let mut children_of: Vec<Vec<usize>> = vec![Vec::new(); contexts.len()];
    for (i, parent) in parent_of.iter().enumerate() {
        if let Some(p) = parent {
            children_of[*p].push(i);
        }
    }
    // Turn the rows into childless nodes, then attach children bottom-up.
    let nodes = contexts.into_iter().map(|row| Some(node_of(row))).collect();
    attach_children(nodes, &children_of, root)
}

/// The root's index and each row's parent index, checking that ids are unique, that exactly one
/// row has no parent, and that every parent id is a row of the snapshot.
fn parents_of(contexts: &[ContextRow]) -> Result<(usize, Vec<Option<usize>>), String> {
    let mut index_of: HashMap<u64, usize> = HashMap::with_capacity(contexts.len());
    for (i, row) in contexts.iter().enumerate() {
        if index_of.insert(row.id, i).is_some() {
            return Err(format!("duplicate context id {} in snapshot", row.id));
        }
    }
    let mut root: Option<usize> = None;
    let mut parent_of = Vec::with_capacity(contexts.len());
    for (i, row) in contexts.iter().enumerate() {
        let Some(pid) = row.parent_id else {
            if let Some(first) = root {
                return Err(format!(
                    "snapshot has more than one root context (ids {} and {})",
                    contexts[first].id, row.id
                ));
            }
            root = Some(i);
            parent_of.push(None);
            continue;
        };
        let p = *index_of.get(&pid).ok_or_else(|| {
            format!(
                "context {} names parent {pid}, which is not in the snapshot",
                row.id
            )
        })?;
        parent_of.push(Some(p));
    }
    let root = root.ok_or("snapshot has no root context (a row with parent_id null)")?;
    Ok((root, parent_of))
}

/// A row as a childless stats node.
fn node_of(row: ContextRow) -> StatsNode {
    StatsNode {
        id: row.id,
        name: row.name,
        ident: row.ident,
        kind: row.kind,
        counters: Counters {
            total_bytes: row.total_bytes,
            total_nblocks: row.total_nblocks,
            free_bytes: row.free_bytes,
            free_chunks: row.free_chunks,
        },
        detail: row.detail,
        children: Vec::new(),
    }
}

/// Attaches every node to its parent, post-order from `root` without recursion (a context is
/// attached once all its own children are), and returns the root; an error when a node is
/// reached twice or not at all.
fn attach_children(
    mut nodes: Vec<Option<StatsNode>>,
    children_of: &[Vec<usize>],
    root: usize,
) -> Result<StatsNode, String> {
    let n = nodes.len();
    let mut attached = 0usize;
    let mut stack: Vec<(usize, bool)> = vec![(root, false)];
    while let Some((i, expanded)) = stack.pop() {
        if !expanded {
            stack.push((i, true));
            stack.extend(children_of[i].iter().rev().map(|&c| (c, false)));
            continue;
        }
        let mut node = nodes[i]
            .take()
            .ok_or("context reached twice while rebuilding")?;
        node.children = children_of[i]
            .iter()
            .map(|&c| {
                nodes[c]
                    .take()
                    .ok_or("context reached twice while rebuilding")
            })
            .collect::<Result<_, _>>()?;
        attached += 1;
        if i == root {
            if attached != n {
                return Err(format!(
                    "{} of {n} contexts in the snapshot are not connected to the root",
                    n - attached
                ));
            }
            return Ok(node);
        }
        nodes[i] = Some(node);
    }
    Err("snapshot rows do not form a tree".to_string())
}
