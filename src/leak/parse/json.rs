//! memctx's JSON: snapshots (`"format": "memctx-snapshot"`, [`crate::snapshot`]) and stats trees
//! (`"format": "memctx-stats"`, [`crate::stats::to_json`]).

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use super::model::{Context, Dump, Format, ParseError, Site, Tree};
use crate::snapshot::{Snapshot, ThreadSnapshot, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
use crate::stats::{self, ContextRow, Counters, KindDetail, StatsNode};

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

/// Reads memctx JSON: one document, several one after the other, or an array of them.
pub(super) fn parse_json(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let mut out = Vec::new();
    for (line, doc) in json_documents(text, source)? {
        out.push(dump_of_document(doc, source, line)?);
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

/// Every JSON document of the text (an array's items each count as one), with the line it starts
/// on.
fn json_documents(text: &str, source: &str) -> Result<Vec<(usize, serde_json::Value)>, ParseError> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    loop {
        let start = stream.byte_offset();
        let skipped = text[start..].len() - text[start..].trim_start().len();
        let line = line_of_offset(text, start + skipped);
        match stream.next() {
            None => return Ok(docs),
            Some(Ok(serde_json::Value::Array(items))) => {
                docs.extend(items.into_iter().map(|v| (line, v)));
            }
            Some(Ok(v)) => docs.push((line, v)),
            Some(Err(e)) => return Err(json_error(source, &e)),
        }
    }
}

/// Reads one document by its `format` field.
fn dump_of_document(doc: serde_json::Value, source: &str, line: usize) -> Result<Dump, ParseError> {
    let head: Head = serde_json::from_value(doc.clone())
        .map_err(|e| ParseError::new(source, Some(line), format!("not a memctx snapshot: {e}")))?;
    match head.format.as_deref() {
        Some(SNAPSHOT_FORMAT) => snapshot_dump(doc, source, line),
        Some("memctx-stats") => stats_dump(&doc, source, line),
        Some(other) => Err(ParseError::not_a_dump(
            source,
            Some(line),
            format!(
                "unknown JSON format {other:?}: expected \"{SNAPSHOT_FORMAT}\" or \"memctx-stats\""
            ),
        )),
        None => Err(ParseError::not_a_dump(
            source,
            Some(line),
            format!(
                "JSON document has no \"format\" field: expected a memctx snapshot \
                 (\"format\": \"{SNAPSHOT_FORMAT}\") or stats tree (\"format\": \"memctx-stats\")"
            ),
        )),
    }
}

fn snapshot_dump(doc: serde_json::Value, source: &str, line: usize) -> Result<Dump, ParseError> {
    let snap: Snapshot = serde_json::from_value(doc).map_err(|e| {
        ParseError::new(
            source,
            Some(line),
            format!("malformed memctx snapshot: {e}"),
        )
    })?;
    let mut dump = Dump::from_snapshot(snap, source).map_err(|e| ParseError {
        line: Some(line),
        ..e
    })?;
    dump.line = Some(line);
    Ok(dump)
}

impl Dump {
    /// A snapshot taken in this process ([`crate::dump::snapshot`], or read with
    /// [`crate::snapshot::read_snapshot`]) as a dump, so that a host's own test can compare
    /// snapshots with [`crate::leak::check_growth`] without writing files; `source` names it.
    ///
    /// # Errors
    ///
    /// A snapshot version this build does not read, or rows that do not form a tree.
    pub fn from_snapshot(snap: Snapshot, source: &str) -> Result<Dump, ParseError> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(ParseError::new(
                source,
                None,
                format!(
                    "unsupported memctx snapshot version {} (this build reads version {SNAPSHOT_VERSION})",
                    snap.version
                ),
            ));
        }
        let mut trees = Vec::new();
        let mut warnings = Vec::new();
        for th in snap.threads {
            trees.push(thread_tree(th, source, &mut warnings)?);
        }
        Ok(Dump {
            source: source.to_string(),
            line: None,
            format: Format::MemctxSnapshot,
            pid: Some(snap.pid),
            timestamp_ms: Some(snap.timestamp_ms),
            trees,
            grand_total: None,
            has_detail: true,
            warnings,
        })
    }
}

/// One thread of a snapshot as a tree; sites naming unknown contexts become warnings.
fn thread_tree(
    th: ThreadSnapshot,
    source: &str,
    warnings: &mut Vec<String>,
) -> Result<Tree, ParseError> {
    let label = th
        .name
        .clone()
        .unwrap_or_else(|| format!("tid {}", th.os_tid));
    let (contexts, ids) = contexts_from_rows(&th.contexts)
        .map_err(|m| ParseError::new(source, None, format!("thread {label}: {m}")))?;
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
    Ok(Tree {
        thread: Some(label),
        missing: th.missing,
        exited: th.exited,
        exiting: th.exiting,
        contexts,
        sites,
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
    Ok(Dump::single_tree(
        source,
        line,
        Format::MemctxStats,
        contexts,
        Vec::new(),
    ))
}

fn memctx_context(
    name: &str,
    ident: Option<&String>,
    kind: &str,
    id: u64,
    (c, detail): (Counters, KindDetail),
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
        detail,
    }
}

/// Orders memctx rows parent-first (breadth-first from the root) and links them; returns the
/// contexts and the index of each memctx id among them.
fn contexts_from_rows(rows: &[ContextRow]) -> Result<(Vec<Context>, HashMap<u64, usize>), String> {
    if rows.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let (root, children) = link_rows(rows)?;
    let mut out: Vec<Context> = Vec::with_capacity(rows.len());
    let mut index_of_id = HashMap::with_capacity(rows.len());
    let mut queue = VecDeque::from([(root, None, 0u32)]);
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
            (c, r.detail),
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

/// The root row and each row's children, from the rows' `id`/`parent_id`.
fn link_rows(rows: &[ContextRow]) -> Result<(usize, Vec<Vec<usize>>), String> {
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
    Ok((root, children))
}

fn contexts_from_node(root: &StatsNode) -> Vec<Context> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([(root, None, 0u32)]);
    while let Some((n, parent, level)) = queue.pop_front() {
        out.push(memctx_context(
            &n.name,
            n.ident.as_ref(),
            &n.kind,
            n.id,
            (n.counters, n.detail),
            level,
            parent,
        ));
        let me = out.len() - 1;
        queue.extend(n.children.iter().map(|c| (c, Some(me), level + 1)));
    }
    out
}
