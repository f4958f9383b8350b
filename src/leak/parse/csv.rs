//! `pg_backend_memory_contexts` exported as CSV (PostgreSQL 14-16 with a `parent` column, 17+
//! with a `path` column), and the RFC 4180 record splitter the csvlog reader shares.

use std::collections::{HashMap, VecDeque};

use super::model::{Context, Dump, Format, ParseError};
use crate::stats::KindDetail;

/// A header line naming the columns `name` and `total_bytes`.
pub(super) fn looks_like_csv_header(line: &str) -> bool {
    let cols: Vec<String> = line
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    cols.iter().any(|c| c == "name") && cols.iter().any(|c| c == "total_bytes")
}

pub(super) struct Field {
    pub(super) text: String,
    pub(super) quoted: bool,
}

/// Splits CSV text into records (RFC 4180: quotes, doubled quotes, newlines inside quotes), each
/// with the line it starts on.
pub(super) fn csv_records(
    text: &str,
    source: &str,
) -> Result<Vec<(usize, Vec<Field>)>, ParseError> {
    let mut split = Splitter::default();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        let next = chars.peek().copied();
        if split.feed(ch, next) {
            chars.next();
        }
    }
    if split.in_quotes {
        return Err(ParseError::new(
            source,
            Some(split.record_line),
            "unterminated quoted CSV field",
        ));
    }
    Ok(split.finish())
}

/// The state of [`csv_records`] between characters.
struct Splitter {
    records: Vec<(usize, Vec<Field>)>,
    record: Vec<Field>,
    field: Field,
    line: usize,
    record_line: usize,
    in_quotes: bool,
    at_field_start: bool,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            records: Vec::new(),
            record: Vec::new(),
            field: Field::empty(),
            line: 1,
            record_line: 1,
            in_quotes: false,
            at_field_start: true,
        }
    }
}

impl Field {
    fn empty() -> Self {
        Field {
            text: String::new(),
            quoted: false,
        }
    }
}

impl Splitter {
    /// Takes one character (`next` is the one after it); true when it consumed `next` too.
    fn feed(&mut self, ch: char, next: Option<char>) -> bool {
        if self.in_quotes {
            match ch {
                '"' if next == Some('"') => {
                    self.field.text.push('"');
                    return true;
                }
                '"' => self.in_quotes = false,
                '\n' => {
                    self.line += 1;
                    self.field.text.push('\n');
                }
                c => self.field.text.push(c),
            }
            return false;
        }
        match ch {
            '"' if self.at_field_start => {
                self.in_quotes = true;
                self.field.quoted = true;
                self.at_field_start = false;
            }
            ',' => self.end_field(),
            '\r' if next == Some('\n') => {}
            '\n' => self.end_record(),
            c => {
                self.field.text.push(c);
                self.at_field_start = false;
            }
        }
        false
    }

    fn end_field(&mut self) {
        let field = std::mem::replace(&mut self.field, Field::empty());
        self.record.push(field);
        self.at_field_start = true;
    }

    /// Ends the record at a newline; a blank line is no record.
    fn end_record(&mut self) {
        self.end_field();
        let done = std::mem::take(&mut self.record);
        if !(done.len() == 1 && done[0].text.is_empty() && !done[0].quoted) {
            self.records.push((self.record_line, done));
        }
        self.line += 1;
        self.record_line = self.line;
    }

    fn finish(mut self) -> Vec<(usize, Vec<Field>)> {
        if !self.field.text.is_empty() || self.field.quoted || !self.record.is_empty() {
            self.record.push(self.field);
            self.records.push((self.record_line, self.record));
        }
        self.records
    }
}

/// Reads `pg_backend_memory_contexts` exported as CSV: one dump.
pub(super) fn parse_csv(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let records = csv_records(text, source)?;
    let (_, header) = &records[0];
    let cols = Columns::from_header(header, source)?;
    let rows = records[1..]
        .iter()
        .map(|(line, rec)| cols.row(rec, *line, source))
        .collect::<Result<Vec<Row>, ParseError>>()?;
    if rows.is_empty() {
        return Err(ParseError::new(
            source,
            Some(1),
            "CSV has a header but no rows",
        ));
    }
    let mut warnings = Vec::new();
    let (format, contexts) = if cols.path.is_some() {
        (Format::PostgresCsvPath, tree_from_paths(&rows, source)?)
    } else {
        let contexts = tree_from_parent_names(&rows, source, &mut warnings)?;
        (Format::PostgresCsvParent, contexts)
    };
    Ok(vec![Dump::single_tree(
        source, 1, format, contexts, warnings,
    )])
}

/// Where the view's columns are in the header.
struct Columns {
    count: usize,
    name: usize,
    level: usize,
    total: usize,
    nblocks: usize,
    free: usize,
    chunks: usize,
    used: Option<usize>,
    ident: Option<usize>,
    parent: Option<usize>,
    path: Option<usize>,
    kind: Option<usize>,
}

/// One row of the view.
struct Row {
    line: usize,
    name: String,
    ident: Option<String>,
    parent: Option<String>,
    level: u32,
    path: Vec<u64>,
    kind: Option<String>,
    /// total, nblocks, free, free chunks, used.
    counts: [u64; 5],
}

impl Columns {
    fn from_header(header: &[Field], source: &str) -> Result<Self, ParseError> {
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
        let cols = Columns {
            count: names.len(),
            name: need("name")?,
            level: need("level")?,
            total: need("total_bytes")?,
            nblocks: need("total_nblocks")?,
            free: need("free_bytes")?,
            chunks: need("free_chunks")?,
            used: col("used_bytes"),
            ident: col("ident"),
            parent: col("parent"),
            path: col("path"),
            kind: col("type"),
        };
        if cols.parent.is_none() && cols.path.is_none() {
            return Err(ParseError::new(
                source,
                Some(1),
                "CSV has neither a `parent` column (PostgreSQL 14-16) nor a `path` column \
                 (PostgreSQL 17+): the tree cannot be rebuilt",
            ));
        }
        Ok(cols)
    }

    /// Reads one record as a row of the view.
    fn row(&self, rec: &[Field], line: usize, source: &str) -> Result<Row, ParseError> {
        if rec.len() != self.count {
            return Err(ParseError::new(
                source,
                Some(line),
                format!(
                    "CSV row has {} fields, the header has {}",
                    rec.len(),
                    self.count
                ),
            ));
        }
        let num = |c: usize, what: &str| csv_number(&rec[c], what, line, source);
        let total = num(self.total, "total_bytes")?;
        let free = num(self.free, "free_bytes")?;
        let used = match self.used {
            Some(c) => used_bytes(num(c, "used_bytes")?, total, free, line, source)?,
            None => total.saturating_sub(free),
        };
        let path = match self.path {
            Some(c) => csv_path(&rec[c], line, source)?,
            None => Vec::new(),
        };
        Ok(Row {
            line,
            name: rec[self.name].text.clone(),
            ident: optional_field(rec, self.ident),
            parent: optional_field(rec, self.parent),
            level: u32::try_from(num(self.level, "level")?).unwrap_or(u32::MAX),
            path,
            kind: optional_field(rec, self.kind),
            counts: [
                total,
                num(self.nblocks, "total_nblocks")?,
                free,
                num(self.chunks, "free_chunks")?,
                used,
            ],
        })
    }
}

/// The view's `used_bytes`, which PostgreSQL computes as total minus free (`mcxtfuncs.c`): any
/// other value is a row cut short inside its last field, or altered.
fn used_bytes(
    used: u64,
    total: u64,
    free: u64,
    line: usize,
    source: &str,
) -> Result<u64, ParseError> {
    if total.checked_sub(free) == Some(used) {
        return Ok(used);
    }
    Err(ParseError::new(
        source,
        Some(line),
        format!(
            "column `used_bytes`: {used} is not total_bytes {total} minus free_bytes {free} \
             (the row is cut short or altered)"
        ),
    ))
}

fn csv_number(f: &Field, what: &str, line: usize, source: &str) -> Result<u64, ParseError> {
    f.text.trim().parse::<u64>().map_err(|_| {
        ParseError::new(
            source,
            Some(line),
            format!(
                "column `{what}`: expected a non-negative integer, found {:?}",
                f.text
            ),
        )
    })
}

fn csv_path(f: &Field, line: usize, source: &str) -> Result<Vec<u64>, ParseError> {
    parse_int_array(&f.text).ok_or_else(|| {
        ParseError::new(
            source,
            Some(line),
            format!(
                "column `path`: expected an integer array like {{1,2,5}}, found {:?}",
                f.text
            ),
        )
    })
}

/// A column's text, `None` when the column is absent or the field is an unquoted empty (SQL NULL).
fn optional_field(rec: &[Field], c: Option<usize>) -> Option<String> {
    let f = &rec[c?];
    (!f.text.is_empty() || f.quoted).then(|| f.text.clone())
}

fn row_context(r: &Row, level: u32, parent: Option<usize>) -> Context {
    Context {
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
        // The view has no column for them.
        detail: KindDetail::default(),
    }
}

/// PostgreSQL 17+: the last element of `path` is the row's own id, the one before its parent's.
/// Rows are emitted breadth-first, but this does not rely on it.
fn tree_from_paths(rows: &[Row], source: &str) -> Result<Vec<Context>, ParseError> {
    let (root, children) = link_paths(rows, source)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut queue = VecDeque::from([(root, None, 0u32)]);
    while let Some((i, parent, level)) = queue.pop_front() {
        out.push(row_context(&rows[i], level, parent));
        let me = out.len() - 1;
        queue.extend(children[i].iter().map(|&c| (c, Some(me), level + 1)));
    }
    Ok(out)
}

/// The one root row and each row's children, from the `path` column.
fn link_paths(rows: &[Row], source: &str) -> Result<(usize, Vec<Vec<usize>>), ParseError> {
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
            continue;
        }
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
    match roots[..] {
        [root] => Ok((root, children)),
        _ => Err(ParseError::new(
            source,
            None,
            format!(
                "expected one top context (a `path` with one element), found {}",
                roots.len()
            ),
        )),
    }
}

/// PostgreSQL 14-16: rows come depth-first (a context, then its children), levels from 0; the
/// parent of a row is the last row one level up, whose name `parent` repeats.
fn tree_from_parent_names(
    rows: &[Row],
    source: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Context>, ParseError> {
    let base = rows[0].level;
    let mut out: Vec<Context> = Vec::with_capacity(rows.len());
    let mut stack: Vec<usize> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let depth = depth_in_view_order(r, i == 0, base, stack.len(), source)?;
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
        out.push(row_context(r, depth as u32, parent));
        stack.push(out.len() - 1);
    }
    Ok(out)
}

/// A row's depth below the first row, checking the rows are one tree in the view's own order
/// (`open` is how many ancestors the row may have).
fn depth_in_view_order(
    r: &Row,
    first: bool,
    base: u32,
    open: usize,
    source: &str,
) -> Result<usize, ParseError> {
    let err = |m: String| Err(ParseError::new(source, Some(r.line), m));
    if !first && r.level <= base {
        return err(format!(
            "a second top-level context {:?} (level {}): expected one tree, exported \
             unsorted (select * from pg_backend_memory_contexts)",
            r.name, r.level
        ));
    }
    let depth = (r.level - base) as usize;
    if depth > open {
        return err(format!(
            "row at level {} has no row at level {} before it: the rows must be in the \
             view's own order (select * from pg_backend_memory_contexts, unsorted)",
            r.level,
            r.level.saturating_sub(1)
        ));
    }
    Ok(depth)
}

fn parse_int_array(s: &str) -> Option<Vec<u64>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|p| p.trim().parse().ok()).collect()
}
