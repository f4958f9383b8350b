//! gdb's output: the article's script (`NAME: BYTES` lines, indented a fixed width per level),
//! and memctx's gdb walker (`valgrind/memctx_gdb.py`), whose walk of a process or a core is one
//! dump with a tree per thread, each in `MemoryContextStats` format.
//!
//! Lines gdb prints around them (`[New LWP 1234]`, `[Thread debugging using libthread_db
//! enabled]`, prompts) belong to no dump and are skipped.

use super::model::{Context, Dump, Format, ParseError, Tree};
use super::text::{Builder, Kind, TextParser};
use crate::stats::KindDetail;

/// A memctx gdb walk being read: the trees of its threads so far.
pub(super) struct Walk {
    pub(super) start_line: usize,
    pid: Option<u32>,
    trees: Vec<Tree>,
    warnings: Vec<String>,
}

impl TextParser<'_> {
    /// `memctx registry at ...`: a new walk begins.
    pub(super) fn walker_registry(&mut self, lineno: usize, pid: Option<u32>) {
        if let Some(b) = self.other.take() {
            self.close(b);
        }
        self.close_walk();
        self.walk = Some(Walk {
            start_line: lineno,
            pid,
            trees: Vec::new(),
            warnings: Vec::new(),
        });
    }

    /// `Thread "NAME" tid TID (STATE), ...:`: the next tree is this thread's.
    pub(super) fn walker_thread(&mut self, lineno: usize, label: String, exited: bool) {
        if let Some(b) = self.other.take() {
            self.close(b);
        }
        if self.walk.is_none() {
            // Output whose registry line was cut off: the walk starts here.
            self.walker_registry(lineno, None);
        }
        let mut b = Builder::new(Kind::Stderr, lineno, None, None);
        b.thread = Some((label, exited));
        self.other = Some(b);
    }

    pub(super) fn walker_warning(&mut self, warning: String) {
        if let Some(walk) = &mut self.walk {
            walk.warnings.push(warning);
        }
    }

    /// A thread's tree is complete: it joins the open walk.
    pub(super) fn close_thread(&mut self, b: Builder) {
        let (tree, warnings) = b.into_tree();
        let walk = self
            .walk
            .as_mut()
            .expect("a thread's tree belongs to an open walk");
        let label = tree.thread.clone().unwrap_or_default();
        walk.warnings
            .extend(warnings.into_iter().map(|w| format!("thread {label}: {w}")));
        walk.trees.push(tree);
    }

    /// The open walk, with all its threads' trees, becomes one dump.
    pub(super) fn close_walk(&mut self) {
        let Some(walk) = self.walk.take() else {
            return;
        };
        if walk.trees.is_empty() {
            return;
        }
        self.done.push(Dump {
            source: self.source.to_string(),
            line: Some(walk.start_line),
            format: Format::MemctxWalker,
            pid: walk.pid,
            timestamp_ms: None,
            trees: walk.trees,
            grand_total: None,
            has_detail: true,
            warnings: walk.warnings,
        });
    }

    /// A `NAME: BYTES` line: an indent of 0 starts a new dump.
    pub(super) fn gdb_line(
        &mut self,
        lineno: usize,
        indent: usize,
        name: String,
        bytes: u64,
    ) -> Result<(), ParseError> {
        if !self.gdb {
            return Ok(());
        }
        if indent == 0 {
            if let Some(b) = self.other.take() {
                self.close(b);
            }
            self.other = Some(Builder::new(Kind::Gdb, lineno, None, None));
        }
        let source = self.source;
        let Some(b) = self.other.as_mut() else {
            // Part of a dump whose beginning is not in the file.
            return Ok(());
        };
        let depth = gdb_depth(b, indent, lineno, source)?;
        b.push(depth, bytes_context(name, bytes), lineno, source)
    }
}

/// The depth of a line indented `indent` spaces: the dump's first indented line sets the width of
/// one level.
fn gdb_depth(
    b: &mut Builder,
    indent: usize,
    lineno: usize,
    source: &str,
) -> Result<usize, ParseError> {
    if indent == 0 {
        return Ok(0);
    }
    let unit = *b.unit.get_or_insert(indent);
    if indent % unit != 0 {
        return Err(ParseError::new(
            source,
            Some(lineno),
            format!(
                "indentation of {indent} spaces is not a multiple of this dump's {unit} spaces per \
                 level"
            ),
        ));
    }
    Ok(indent / unit)
}

/// A context of which only its total bytes are known.
fn bytes_context(name: String, bytes: u64) -> Context {
    Context {
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
        detail: KindDetail::default(),
    }
}
