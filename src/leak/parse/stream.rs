//! Reading a file of dumps without holding it: the streaming path of [`super::parse_file`].
//!
//! A server log may be gigabytes of `pg_log_backend_memory_contexts()` dumps, so a text file is
//! read through a [`BufReader`] one line at a time into [`TextStream`], which hands each dump on
//! as soon as it is closed and no dump begun before it is still open (a log's dumps of several
//! backends may interleave). The caller's sink decides what to keep: [`super::parse_file`] keeps
//! every dump, `memctx diff` folds each into its per-path sums and drops it. Memory is then the
//! dumps open at once and one line, whatever the file's size.
//!
//! What the format is shows in the file's first non-blank line: JSON documents and CSV exports
//! (small by nature, and their parsers need the whole text) are read whole and given to
//! [`super::parse_str`]; everything else is text. A first pass looks for NUL bytes, so that a
//! binary file is refused before any of its "dumps" is handed on.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;

use super::csv::looks_like_csv_header;
use super::detect::{parse_str, FORMATS_EXPECTED};
use super::model::{Dump, ParseError};
use super::text::TextStream;

/// Reads one file, handing each of its dumps to `sink` in order as soon as it is complete.
///
/// # Errors
///
/// As [`super::parse_file`]; `sink` has then seen the dumps that came before the fault.
pub fn visit_file(path: &Path, sink: &mut dyn FnMut(Dump)) -> Result<(), ParseError> {
    let name = path.display().to_string();
    let cannot_read = |e: std::io::Error| read_error(path, &name, &e);
    let mut file = File::open(path).map_err(cannot_read)?;
    if has_nul(&mut file).map_err(cannot_read)? {
        return Err(ParseError::not_a_dump(
            &name,
            None,
            format!("binary file, not a dump: {FORMATS_EXPECTED}"),
        ));
    }
    file.rewind().map_err(cannot_read)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut lines = Lines::default();
    let Some(first) = lines.first_dump_line(&mut reader).map_err(cannot_read)? else {
        let what = format!("empty file: {FORMATS_EXPECTED}");
        return Err(ParseError::not_a_dump(&name, None, what));
    };
    let head = first.trim_start();
    if head.starts_with(['{', '[']) || looks_like_csv_header(head) {
        let mut text = lines.head;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).map_err(cannot_read)?;
        text.push_str(&String::from_utf8_lossy(&rest));
        parse_str(&text, &name)?.into_iter().for_each(sink);
        return Ok(());
    }
    stream_text(&mut reader, lines, &name, sink)
}

/// Feeds the text's lines to a [`TextStream`], numbering the dumps `FILE#N` when there are several.
fn stream_text(
    reader: &mut impl BufRead,
    mut lines: Lines,
    name: &str,
    sink: &mut dyn FnMut(Dump),
) -> Result<(), ParseError> {
    let mut numbered = Numbered {
        source: name,
        first: None,
        n: 0,
        sink,
    };
    let mut text = TextStream::new(name);
    let mut push = |d| numbered.push(d);
    for (i, raw) in lines.head.lines().enumerate() {
        text.line(i + 1, raw, &mut push)?;
    }
    let mut lineno = lines.read;
    while let Some(raw) = lines
        .next(reader)
        .map_err(|e| ParseError::new(name, Some(lineno + 1), format!("cannot read: {e}")))?
    {
        lineno += 1;
        text.line(lineno, &raw, &mut push)?;
    }
    text.finish(&mut push)?;
    numbered.finish();
    Ok(())
}

/// Lines of a file as text: `\n` or `\r\n` ended, invalid UTF-8 replaced, a leading byte-order
/// mark dropped.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// The lines read up to the first non-blank one, `\n`-joined.
    head: String,
    /// How many lines were read.
    read: usize,
}

impl Lines {
    /// Reads up to the first non-blank line and returns it (`None`: the file is blank).
    fn first_dump_line(&mut self, r: &mut impl BufRead) -> std::io::Result<Option<String>> {
        loop {
            let first = self.read == 0;
            let Some(line) = self.next(r)? else {
                return Ok(None);
            };
            let line = if first {
                line.strip_prefix('\u{feff}').unwrap_or(&line).to_string()
            } else {
                line.into_owned()
            };
            self.head.push_str(&line);
            self.head.push('\n');
            if !line.trim().is_empty() {
                return Ok(Some(line));
            }
        }
    }

    /// The next line, borrowed from the buffer unless invalid UTF-8 had to be replaced.
    fn next(&mut self, r: &mut impl BufRead) -> std::io::Result<Option<Cow<'_, str>>> {
        self.buf.clear();
        if r.read_until(b'\n', &mut self.buf)? == 0 {
            return Ok(None);
        }
        self.read += 1;
        let mut line: &[u8] = &self.buf;
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        // A valid line (the usual case) is checked at full speed and not copied.
        Ok(Some(match std::str::from_utf8(line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        }))
    }
}

/// Hands dumps on named `FILE#N` when the file holds several, `FILE` when it holds one: the
/// first is held back until the second shows there are several.
struct Numbered<'a> {
    source: &'a str,
    first: Option<Dump>,
    n: usize,
    sink: &'a mut dyn FnMut(Dump),
}

impl Numbered<'_> {
    fn push(&mut self, mut d: Dump) {
        self.n += 1;
        if self.n == 1 {
            self.first = Some(d);
            return;
        }
        if let Some(mut first) = self.first.take() {
            first.source = format!("{}#1", self.source);
            (self.sink)(first);
        }
        d.source = format!("{}#{}", self.source, self.n);
        (self.sink)(d);
    }

    fn finish(self) {
        if let Some(first) = self.first {
            (self.sink)(first);
        }
    }
}

/// Whether the file holds a NUL byte, read in blocks.
fn has_nul(file: &mut File) -> std::io::Result<bool> {
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(false);
        }
        if block[..n].contains(&0) {
            return Ok(true);
        }
    }
}

fn read_error(path: &Path, name: &str, e: &std::io::Error) -> ParseError {
    let what = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ if path.is_dir() => "is a directory, not a dump file".to_string(),
        _ => format!("cannot read: {e}"),
    };
    ParseError::new(name, None, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "2026-12-03 10:00:00.000 UTC";

    fn log_dump(pid: u32, top: u64) -> Vec<String> {
        let at = |m: &str| format!("{PREFIX} [{pid}] LOG:  {m}");
        vec![
            at(&format!("logging memory contexts of PID {pid}")),
            at(&format!(
                "level: 0; TopMemoryContext: {top} total in 1 blocks; 0 free (0 chunks); {top} used"
            )),
            at(&format!(
                "Grand total: {top} bytes in 1 blocks; 0 free (0 chunks); {top} used"
            )),
        ]
    }

    /// A dump is handed on while the text is still being read, once no dump begun before it is
    /// open: memory does not grow with the log.
    #[test]
    fn dumps_are_handed_on_as_they_close() {
        let mut lines = log_dump(7, 1024);
        lines.extend(log_dump(7, 2048));
        let mut seen = Vec::new();
        let mut text = TextStream::new("log");
        let mut after = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            text.line(i + 1, l, &mut |d| seen.push(d)).unwrap();
            after.push(seen.len());
        }
        assert_eq!(after, [0, 0, 1, 1, 1, 2]);
        text.finish(&mut |d| seen.push(d)).unwrap();
        let tops: Vec<u64> = seen.iter().map(|d| d.total().total_bytes).collect();
        assert_eq!(tops, [1024, 2048]);
    }

    /// Interleaved backends: the later dump closes first but is handed on after the earlier.
    #[test]
    fn interleaved_dumps_keep_their_order() {
        let (a, b) = (log_dump(7, 1024), log_dump(8, 2048));
        let lines = [&a[0], &b[0], &b[1], &b[2], &a[1], &a[2]];
        let mut seen = Vec::new();
        let mut text = TextStream::new("log");
        for (i, l) in lines.iter().enumerate() {
            text.line(i + 1, l, &mut |d| seen.push(d)).unwrap();
            if i == 3 {
                assert!(
                    seen.is_empty(),
                    "PID 8's dump waits for PID 7's, begun before it"
                );
            }
        }
        text.finish(&mut |d| seen.push(d)).unwrap();
        let pids: Vec<Option<u32>> = seen.iter().map(|d| d.pid).collect();
        assert_eq!(pids, [Some(7), Some(8)]);
    }
}
