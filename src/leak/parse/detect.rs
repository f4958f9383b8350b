//! Which format a text is in, and reading files and directories of dumps.

use std::path::{Path, PathBuf};

use super::model::{Dump, ParseError};
use super::stream::visit_file;
use super::{csv, json, text};

pub(super) const FORMATS_EXPECTED: &str = "expected a memctx JSON snapshot, pg_log_backend_memory_contexts() \
     log lines (`level: N; NAME: T total in B blocks; F free (C chunks); U used`, or a \
     Generation, Slab or Bump context's shape of it), \
     MemoryContextStats() output (`NAME: T total in B blocks; ...` indented, `Grand total: ...`), \
     the gdb script's `NAME: BYTES` lines, memctx's gdb walker output, or pg_backend_memory_contexts \
     exported as CSV with a header";

/// Reads one file: every dump in it, in order.
///
/// # Errors
///
/// The file cannot be read, is binary, or is not a dump in any known format; or a line that looks
/// like part of a dump is malformed. The error names the file and, where it can, the line.
pub fn parse_file(path: &Path) -> Result<Vec<Dump>, ParseError> {
    let mut dumps = Vec::new();
    visit_file(path, &mut |d| dumps.push(d))?;
    Ok(dumps)
}

/// What [`load_series`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    /// Every dump of every file, in order.
    pub dumps: Vec<Dump>,
    /// One warning per file of a directory that was skipped because it holds no dump, naming it
    /// and saying why.
    pub skipped: Vec<String>,
}

/// Reads a series: each path in order; a directory stands for the files in it (not hidden ones,
/// not subdirectories, not `.svg`/`.png`/`.html` pictures) in natural name order
/// (`snap-2` before `snap-10`). A file of a directory that is no dump at all (empty, binary, text
/// without a dump, JSON of another kind) is skipped and named in [`Series::skipped`]; a dump with
/// a fault is an error, as is a file named on its own that is no dump.
///
/// # Errors
///
/// A path that does not exist, a directory with no dump in it, or a file that [`parse_file`]
/// refuses (other than the skipped ones).
pub fn load_series<P: AsRef<Path>>(paths: &[P]) -> Result<Series, ParseError> {
    let mut dumps = Vec::new();
    let skipped = visit_series(paths, &mut |d| dumps.push(d))?;
    Ok(Series { dumps, skipped })
}

/// Reads a series as [`load_series`] does, but hands each dump to `sink` as soon as it is read
/// ([`super::visit_file`]), so that a caller that folds dumps into something smaller (a
/// [`crate::leak::DiffStream`]) never holds the series. Returns the warnings [`Series::skipped`]
/// holds.
///
/// # Errors
///
/// As [`load_series`]; `sink` has then seen the dumps read before the error.
pub fn visit_series<P: AsRef<Path>>(
    paths: &[P],
    sink: &mut dyn FnMut(Dump),
) -> Result<Vec<String>, ParseError> {
    let mut skipped = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if !path.is_dir() {
            visit_file(path, &mut *sink)?;
            continue;
        }
        let mut found = false;
        for f in dump_files_in(path)? {
            let mut read = 0;
            let counted = &mut |d| {
                read += 1;
                sink(d);
            };
            // Files that are no dump at all are refused before any dump is handed on.
            match visit_file(&f, counted) {
                Ok(()) => found |= read > 0,
                Err(e) if e.not_a_dump => skipped.push(format!("skipped {e}")),
                Err(e) => return Err(e),
            }
        }
        if !found {
            let name = path.display().to_string();
            return Err(ParseError::new(
                &name,
                None,
                "directory holds no dump files",
            ));
        }
    }
    Ok(skipped)
}

/// The files of a directory that may be dumps, in natural name order.
fn dump_files_in(dir: &Path) -> Result<Vec<PathBuf>, ParseError> {
    let name = dir.display().to_string();
    let cannot_list =
        |e: std::io::Error| ParseError::new(&name, None, format!("cannot list directory: {e}"));
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot_list)? {
        let entry = entry.map_err(cannot_list)?;
        let p = entry.path();
        let file = entry.file_name().to_string_lossy().to_ascii_lowercase();
        let hidden = file.starts_with('.');
        // What the tools write next to their snapshots (flame graphs, reports) is not a dump.
        let output = [".svg", ".png", ".html"].iter().any(|e| file.ends_with(e));
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
    Ok(files)
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
        return Err(ParseError::not_a_dump(
            source,
            None,
            format!("empty file: {FORMATS_EXPECTED}"),
        ));
    }
    let mut dumps = if looks_like_json(trimmed) {
        json::parse_json(text, source)?
    } else if csv::looks_like_csv_header(trimmed.lines().next().unwrap_or("")) {
        csv::parse_csv(text, source)?
    } else {
        text::parse_text(text, source)?
    };
    if dumps.len() > 1 {
        for (i, d) in dumps.iter_mut().enumerate() {
            d.source = format!("{source}#{}", i + 1);
        }
    }
    Ok(dumps)
}

/// A JSON document or an array of them, not a jsonlog line, nor a text starting with a bracketed
/// line such as gdb's `[New LWP 1234]`.
fn looks_like_json(trimmed: &str) -> bool {
    let array_of_objects = trimmed
        .strip_prefix('[')
        .is_some_and(|rest| rest.trim_start().starts_with(['{', ']']));
    (trimmed.starts_with('{') || array_of_objects)
        && !is_jsonlog(trimmed.lines().next().unwrap_or(""))
}

/// A line of PostgreSQL's jsonlog: one JSON object with a `message` and no `format`.
fn is_jsonlog(first_line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(first_line).is_ok_and(|v| {
        v.get("format").is_none() && v.get("message").is_some_and(serde_json::Value::is_string)
    })
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
}
