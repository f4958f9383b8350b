//! Showing a dump: PostgreSQL's stats text, and folded stacks for a flame graph.

use std::fmt::Write as _;

use super::parse::{Dump, Tree};
use super::Metric;
use crate::stats::{format_stats, Counters, PrintOptions, StatsNode};

/// Prints a dump in PostgreSQL's `MemoryContextStats` format.
///
/// Trees are turned into [`StatsNode`]s and printed by [`crate::stats::format_stats`] with `opts`
/// (so more than `max_children` children are summarised as PostgreSQL would), except trees that
/// PostgreSQL already summarised: those are printed as they were dumped, their
/// `N more child contexts` lines included. The gdb script records only bytes, so its dumps
/// print as `NAME: BYTES` lines, two spaces per level. A tree of a memctx snapshot with several
/// threads is headed by `thread NAME:`.
#[must_use]
pub fn stats_text(dump: &Dump, opts: &PrintOptions) -> String {
    let mut out = String::new();
    let several = dump.trees.len() > 1;
    for tree in &dump.trees {
        if several || tree.missing || tree.exited {
            let state = if tree.exiting {
                " (exiting: its tree is read once the thread is gone)"
            } else if tree.missing {
                " (missing: did not answer the dump)"
            } else if tree.exited {
                " (exited: its tree still holds memory)"
            } else {
                ""
            };
            let thread = tree.thread.as_deref().unwrap_or("?");
            let _ = writeln!(out, "thread {thread}:{state}");
        }
        if tree.contexts.is_empty() {
            continue;
        }
        let folded = tree.contexts.iter().any(|c| c.folded.is_some());
        if !dump.has_detail {
            out.push_str(&bytes_text(tree));
        } else if folded {
            out.push_str(&postgres_text(tree));
        } else {
            out.push_str(&format_stats(&to_stats_node(tree), opts));
        }
    }
    out
}

/// Turns a tree into a [`StatsNode`] (folded lines, which have no place there, are dropped; ids
/// are the memctx ids, or positions when the input had none).
///
/// # Panics
///
/// If the tree is empty.
#[must_use]
pub fn to_stats_node(tree: &Tree) -> StatsNode {
    let children = tree.children();
    let node = |i: usize| {
        let c = &tree.contexts[i];
        StatsNode {
            id: c.id.unwrap_or(i as u64 + 1),
            name: c.name.clone(),
            ident: c.ident.clone(),
            kind: c.kind.clone().unwrap_or_else(|| "AllocSet".to_string()),
            counters: c.counters(),
            detail: c.detail,
            children: Vec::new(),
        }
    };
    // Build bottom-up without recursion: contexts come parent-first, so walk them backwards.
    let mut built: Vec<Option<StatsNode>> = (0..tree.contexts.len()).map(|_| None).collect();
    for i in (0..tree.contexts.len()).rev() {
        if tree.contexts[i].folded.is_some() {
            continue;
        }
        let mut n = node(i);
        n.children = children[i]
            .iter()
            .filter_map(|&c| built[c].take())
            .collect();
        built[i] = Some(n);
    }
    built[0].take().expect("a tree has a root")
}

/// Pre-order walk: (index, depth).
fn preorder(tree: &Tree) -> Vec<usize> {
    let children = tree.children();
    let mut out = Vec::with_capacity(tree.contexts.len());
    let mut stack: Vec<usize> = tree
        .contexts
        .iter()
        .enumerate()
        .filter(|(_, c)| c.parent.is_none())
        .map(|(i, _)| i)
        .rev()
        .collect();
    while let Some(i) = stack.pop() {
        out.push(i);
        // Folded lines come after the printed children.
        let (folded, printed): (Vec<usize>, Vec<usize>) = children[i]
            .iter()
            .partition(|&&c| tree.contexts[c].folded.is_some());
        stack.extend(folded.iter().rev());
        stack.extend(printed.iter().rev());
    }
    out
}

fn indent(out: &mut String, level: u32) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn postgres_text(tree: &Tree) -> String {
    let mut out = String::new();
    let mut grand = Counters::default();
    for i in preorder(tree) {
        let c = &tree.contexts[i];
        let counters = c.counters();
        grand.add(&counters);
        indent(&mut out, c.level);
        match c.folded {
            Some(n) => {
                let _ = writeln!(out, "{n} more child contexts containing {counters}");
            }
            None => {
                let kind = c.kind.as_deref().unwrap_or("AllocSet");
                let _ = write!(out, "{}: {}", c.name, c.detail.line(kind, &counters));
                if let Some(id) = &c.ident {
                    out.push_str(": ");
                    crate::stats::push_display_ident(&mut out, id);
                }
                out.push('\n');
            }
        }
    }
    crate::stats::push_grand_total(&mut out, &grand);
    out
}

fn bytes_text(tree: &Tree) -> String {
    let mut out = String::new();
    let mut total = 0u64;
    for i in preorder(tree) {
        let c = &tree.contexts[i];
        total = total.saturating_add(c.total_bytes);
        indent(&mut out, c.level);
        let _ = writeln!(out, "{}: {}", c.name, c.total_bytes);
    }
    let _ = writeln!(
        out,
        "Grand total: {total} bytes (the gdb script records no blocks or free space)"
    );
    out
}

/// What [`folded_stacks`] counts and how it names frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlameOptions {
    /// The bytes that give a frame its width (used bytes count as total bytes where the dump
    /// does not record them).
    pub metric: Metric,
    /// Give each identifier its own frame (`CachedPlanSource: SELECT ...`) instead of merging
    /// same-named siblings.
    pub idents: bool,
}

/// Frame text: no `;` (the stack separator) and no control characters.
fn frame(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' => ',',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Folded stacks under one root frame named `root`, so that the graph's root says what it shows
/// (inferno's own root above it is `all`).
#[must_use]
pub fn under_root(lines: &[String], root: &str) -> Vec<String> {
    let root = frame(root);
    lines.iter().map(|l| format!("{root};{l}")).collect()
}

/// The dump as folded stacks, one line per context with its own bytes:
/// `TopMemoryContext;CacheMemoryContext;CachedPlanSource 4096`, the input of
/// `inferno::flamegraph::from_lines` (and of `flamegraph.pl`). Same-named siblings merge into one
/// frame unless `opts.idents`; a folded `N more child contexts` line is a frame of its own; a
/// context with no bytes is left out. Threads of a memctx snapshot are the bottom frames when
/// there are several.
#[must_use]
pub fn folded_stacks(dump: &Dump, opts: &FlameOptions) -> Vec<String> {
    let mut out = Vec::new();
    let several = dump.trees.len() > 1;
    for tree in &dump.trees {
        let mut names: Vec<String> = Vec::with_capacity(tree.contexts.len());
        for c in &tree.contexts {
            let own = match c.folded {
                Some(n) => format!("({n} more child contexts)"),
                None => match (opts.idents, c.display_ident()) {
                    (true, Some(id)) => frame(&format!("{}: {id}", c.display_name())),
                    _ => frame(c.display_name()),
                },
            };
            let stack = match c.parent {
                Some(p) => format!("{};{own}", names[p]),
                None if several => format!(
                    "{};{own}",
                    frame(tree.thread.as_deref().unwrap_or("thread"))
                ),
                None => own,
            };
            let bytes = opts.metric.of(c).unwrap_or(c.total_bytes);
            if bytes > 0 {
                out.push(format!("{stack} {bytes}"));
            }
            names.push(stack);
        }
    }
    out
}
