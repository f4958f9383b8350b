//! Server logs (`pg_log_backend_memory_contexts()`, any `log_line_prefix`, csvlog, jsonlog) and
//! `MemoryContextStats()` output: lines, classified by [`super::lines`], assembled into dumps.

use super::detect::FORMATS_EXPECTED;
use super::gdb::Walk;
use super::lines::{classify, Line, Stats};
use super::model::{Context, Dump, Format, ParseError, Tree};
use crate::stats::Counters;

/// Reads server logs, `MemoryContextStats` output and gdb script output: every dump in the text.
pub(super) fn parse_text(text: &str, source: &str) -> Result<Vec<Dump>, ParseError> {
    let mut dumps = Vec::new();
    let mut stream = TextStream::new(source);
    for (i, raw) in text.lines().enumerate() {
        stream.line(i + 1, raw, &mut |d| dumps.push(d))?;
    }
    stream.finish(&mut |d| dumps.push(d))?;
    Ok(dumps)
}

/// A text read line by line, each dump handed on as soon as no dump begun before it is still
/// open, so that a log of any size is read in the memory of the dumps open at once.
pub(super) struct TextStream<'a> {
    p: TextParser<'a>,
    /// Whether a line other than the gdb script's `NAME: BYTES` was seen.
    postgres: bool,
    /// The gdb script's lines, kept until the text shows whether it is that script's output:
    /// `NAME: BYTES` lines count only where nothing else in the text is a dump.
    gdb_lines: Vec<(usize, Line)>,
}

impl<'a> TextStream<'a> {
    pub(super) fn new(source: &'a str) -> Self {
        TextStream {
            p: TextParser {
                source,
                gdb: false,
                logs: Vec::new(),
                other: None,
                walk: None,
                done: Vec::new(),
                handed_on: false,
            },
            postgres: false,
            gdb_lines: Vec::new(),
        }
    }

    /// Line `lineno` of the text.
    pub(super) fn line(
        &mut self,
        lineno: usize,
        raw: &str,
        sink: &mut dyn FnMut(Dump),
    ) -> Result<(), ParseError> {
        match classify(raw, lineno, self.p.source)? {
            None => return Ok(()),
            Some(l @ Line::Gdb { .. }) if !self.postgres => self.gdb_lines.push((lineno, l)),
            Some(Line::Gdb { .. }) => {}
            Some(l) => {
                self.postgres = true;
                self.gdb_lines = Vec::new();
                self.p.line(lineno, l)?;
            }
        }
        self.p.hand_on(sink);
        Ok(())
    }

    /// The end of the text: the dumps still open are closed and handed on.
    ///
    /// # Errors
    ///
    /// No dump in the whole text.
    pub(super) fn finish(mut self, sink: &mut dyn FnMut(Dump)) -> Result<(), ParseError> {
        let had_dump = self.p.handed_on;
        if !self.postgres {
            self.p.gdb = true;
            for (lineno, l) in std::mem::take(&mut self.gdb_lines) {
                self.p.line(lineno, l)?;
            }
        }
        let source = self.p.source;
        let done = self.p.finish();
        if !had_dump && done.is_empty() {
            return Err(no_dump(source));
        }
        done.into_iter().for_each(sink);
        Ok(())
    }
}

fn no_dump(source: &str) -> ParseError {
    ParseError::not_a_dump(
        source,
        None,
        format!("no memory-context dump found: {FORMATS_EXPECTED}"),
    )
}

/// The dumps being assembled from a text's lines.
pub(super) struct TextParser<'a> {
    pub(super) source: &'a str,
    /// Whether the text is the gdb script's output.
    pub(super) gdb: bool,
    /// Open log dumps: several backends' dumps may interleave in one log.
    logs: Vec<Builder>,
    /// The open stderr or gdb dump.
    pub(super) other: Option<Builder>,
    /// The open memctx gdb walk: one dump of several threads' trees.
    pub(super) walk: Option<Walk>,
    pub(super) done: Vec<Dump>,
    /// Whether a dump was handed on already.
    handed_on: bool,
}

impl TextParser<'_> {
    fn line(&mut self, lineno: usize, l: Line) -> Result<(), ParseError> {
        match l {
            Line::LogHeader { prefix, pid } => self.log_header(lineno, &prefix, pid),
            Line::LogContext {
                prefix,
                level,
                name,
                ident,
                stats,
            } => {
                let c = detail_context(name, ident, stats);
                return self.log_context(lineno, &prefix, level, c);
            }
            Line::LogFolded {
                prefix,
                level,
                count,
                stats,
            } => return self.log_folded(lineno, &prefix, level, count, stats),
            Line::LogGrand { prefix, stats } => {
                if let Some(i) = self.route(&prefix) {
                    let b = self.logs.remove(i);
                    self.close_with_grand(b, stats);
                }
            }
            Line::StderrContext {
                indent,
                name,
                ident,
                stats,
            } => return self.stderr_context(lineno, indent, detail_context(name, ident, stats)),
            Line::StderrFolded {
                indent,
                count,
                stats,
            } => return self.stderr_folded(lineno, indent, count, stats),
            Line::StderrGrand { stats } => self.stderr_grand(stats),
            Line::Gdb {
                indent,
                name,
                bytes,
            } => return self.gdb_line(lineno, indent, name, bytes),
            Line::WalkerRegistry { pid } => self.walker_registry(lineno, pid),
            Line::WalkerThread { label, exited } => self.walker_thread(lineno, label, exited),
            Line::WalkerWarning(w) => self.walker_warning(w),
        }
        Ok(())
    }

    /// A `N more child contexts` line of `MemoryContextStats` output, indented like the children
    /// it stands for.
    fn stderr_folded(
        &mut self,
        lineno: usize,
        indent: usize,
        count: u64,
        stats: Stats,
    ) -> Result<(), ParseError> {
        if let Some(b) = self.other.as_mut().filter(|b| b.kind == Kind::Stderr) {
            b.push_folded(indent / 2, count, stats, lineno, self.source)?;
        }
        Ok(())
    }

    pub(super) fn close(&mut self, b: Builder) {
        if b.thread.is_some() {
            self.close_thread(b);
        } else if let Some(d) = b.finish(self.source) {
            self.done.push(d);
        }
    }

    fn close_with_grand(&mut self, mut b: Builder, stats: Stats) {
        b.grand = Some(stats.counters());
        self.close(b);
    }

    /// The open log dump a line with this prefix belongs to: the one of the PID in the prefix,
    /// else the one begun last.
    fn route(&self, prefix: &str) -> Option<usize> {
        if self.logs.is_empty() {
            return None;
        }
        self.logs
            .iter()
            .position(|b| b.pid.is_some_and(|p| prefix_has_pid(prefix, p)))
            .or(Some(self.logs.len() - 1))
    }

    /// `logging memory contexts of PID N`: a new dump of that backend.
    fn log_header(&mut self, lineno: usize, prefix: &str, pid: u32) {
        if let Some(i) = self.logs.iter().position(|b| b.pid == Some(pid)) {
            let b = self.logs.remove(i);
            self.close(b);
        }
        let b = Builder::new(Kind::Log, lineno, Some(pid), find_timestamp(prefix));
        self.logs.push(b);
    }

    fn log_context(
        &mut self,
        lineno: usize,
        prefix: &str,
        level: u32,
        c: Context,
    ) -> Result<(), ParseError> {
        let Some(i) = self.log_dump_for(lineno, prefix, level, &c.name) else {
            return Ok(());
        };
        let b = &mut self.logs[i];
        let base = *b.base.get_or_insert(level);
        if b.timestamp_ms.is_none() {
            b.timestamp_ms = find_timestamp(prefix);
        }
        b.push((level - base) as usize, c, lineno, self.source)
    }

    /// The open log dump a context line goes to, opening one when the line starts a dump; `None`
    /// for the tail of a dump whose beginning is not in the file (a rotated log), which is
    /// skipped.
    fn log_dump_for(
        &mut self,
        lineno: usize,
        prefix: &str,
        level: u32,
        name: &str,
    ) -> Option<usize> {
        if let Some(i) = self.route(prefix) {
            let b = &self.logs[i];
            if !b.base.is_some_and(|base| level <= base) {
                return Some(i);
            }
            // A new top context: the previous dump ended without its grand total.
            let pid = b.pid.filter(|&p| prefix_has_pid(prefix, p));
            let old = self.logs.remove(i);
            self.close(old);
            self.logs
                .push(Builder::new(Kind::Log, lineno, pid, find_timestamp(prefix)));
            return Some(self.logs.len() - 1);
        }
        // Without its `logging memory contexts` line, a dump is known to begin at
        // TopMemoryContext, at level 0 (PostgreSQL 14-17) or 1 (later).
        if level > 1 || (level == 1 && name != "TopMemoryContext") {
            return None;
        }
        self.logs.push(Builder::new(
            Kind::Log,
            lineno,
            None,
            find_timestamp(prefix),
        ));
        Some(self.logs.len() - 1)
    }

    fn log_folded(
        &mut self,
        lineno: usize,
        prefix: &str,
        level: u32,
        count: u64,
        stats: Stats,
    ) -> Result<(), ParseError> {
        let Some(i) = self.route(prefix) else {
            // Part of a dump whose beginning is not in the file.
            return Ok(());
        };
        let b = &mut self.logs[i];
        let base = b.base.unwrap_or(level);
        if level < base {
            return Err(ParseError::new(
                self.source,
                Some(lineno),
                format!("`more child contexts` line at level {level}, above the dump's top level {base}"),
            ));
        }
        // Its level is the parent's: the summarised contexts are one level deeper.
        b.push_folded(
            (level - base) as usize + 1,
            count,
            stats,
            lineno,
            self.source,
        )
    }

    fn stderr_context(
        &mut self,
        lineno: usize,
        indent: usize,
        c: Context,
    ) -> Result<(), ParseError> {
        if indent % 2 != 0 {
            return Err(ParseError::new(
                self.source,
                Some(lineno),
                format!(
                    "indentation of {indent} spaces: MemoryContextStats indents two spaces per level"
                ),
            ));
        }
        let depth = indent / 2;
        // A walker's thread header opened the builder this tree goes to.
        let awaiting_tree = self
            .other
            .as_ref()
            .is_some_and(|b| b.thread.is_some() && b.contexts.is_empty());
        if depth == 0 && !awaiting_tree {
            if let Some(b) = self.other.take() {
                self.close(b);
            }
            self.other = Some(Builder::new(Kind::Stderr, lineno, None, None));
        }
        match self.other.as_mut().filter(|b| b.kind == Kind::Stderr) {
            Some(b) => b.push(depth, c, lineno, self.source),
            // Part of a dump whose beginning is not in the file.
            None => Ok(()),
        }
    }

    fn stderr_grand(&mut self, stats: Stats) {
        if let Some(b) = self.other.take() {
            self.close_with_grand(b, stats);
        } else if let Some(b) = self.logs.pop() {
            // A log whose prefix is empty: the grand total belongs to the open log dump.
            self.close_with_grand(b, stats);
        }
    }

    /// Hands on, in the order they begin, the closed dumps that begin before every open one:
    /// no dump still open can come before them.
    fn hand_on(&mut self, sink: &mut dyn FnMut(Dump)) {
        if self.done.is_empty() {
            return;
        }
        let open = self.logs.iter().map(|b| b.start_line);
        let open = open.chain(self.other.iter().map(|b| b.start_line));
        let first_open = open
            .chain(self.walk.iter().map(|w| w.start_line))
            .min()
            .unwrap_or(usize::MAX);
        self.done.sort_by_key(|d| d.line);
        let ready = self
            .done
            .iter()
            .take_while(|d| d.line.unwrap_or(0) < first_open)
            .count();
        self.handed_on |= ready > 0;
        self.done.drain(..ready).for_each(sink);
    }

    /// Closes the dumps still open; the dumps not handed on yet, in the order they begin.
    fn finish(mut self) -> Vec<Dump> {
        for b in std::mem::take(&mut self.logs) {
            self.close(b);
        }
        if let Some(b) = self.other.take() {
            self.close(b);
        }
        self.close_walk();
        self.done.sort_by_key(|d| d.line);
        self.done
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Log,
    Stderr,
    Gdb,
}

pub(super) struct Builder {
    pub(super) kind: Kind,
    pub(super) start_line: usize,
    pub(super) pid: Option<u32>,
    pub(super) timestamp_ms: Option<u64>,
    pub(super) contexts: Vec<Context>,
    /// The last context seen at each depth.
    pub(super) stack: Vec<usize>,
    /// The level number (log) the root was printed with.
    pub(super) base: Option<u32>,
    /// Spaces per level (gdb output; 2 for stderr).
    pub(super) unit: Option<usize>,
    pub(super) grand: Option<Counters>,
    pub(super) warnings: Vec<String>,
    /// The thread (label, exited) of a memctx gdb walker's tree.
    pub(super) thread: Option<(String, bool)>,
}

impl Builder {
    pub(super) fn new(
        kind: Kind,
        start_line: usize,
        pid: Option<u32>,
        timestamp_ms: Option<u64>,
    ) -> Self {
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
            thread: None,
        }
    }

    /// Adds a context at `depth` (0 = root).
    pub(super) fn push(
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
    pub(super) fn push_folded(
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
            free_chunks: stats.chunks,
            used_bytes: Some(stats.used),
            folded: Some(count),
            id: None,
            kind: None,
            detail: stats.detail,
        });
        // A folded line has no children: later lines at this depth attach to the parent.
        self.stack.truncate(depth);
        Ok(())
    }

    fn finish(self, source: &str) -> Option<Dump> {
        if self.contexts.is_empty() {
            return None;
        }
        let format = match self.kind {
            Kind::Log => Format::PostgresLog,
            Kind::Stderr => Format::PostgresStderr,
            Kind::Gdb => Format::Gdb,
        };
        let (start_line, pid, timestamp_ms, grand) =
            (self.start_line, self.pid, self.timestamp_ms, self.grand);
        let (tree, warnings) = self.into_tree();
        Some(Dump {
            source: source.to_string(),
            line: Some(start_line),
            format,
            pid,
            timestamp_ms,
            trees: vec![tree],
            grand_total: grand,
            has_detail: format != Format::Gdb,
            warnings,
        })
    }

    /// The tree, and the warnings about it.
    pub(super) fn into_tree(mut self) -> (Tree, Vec<String>) {
        let (thread, exited) = match self.thread.take() {
            Some((label, exited)) => (Some(label), exited),
            None => (None, false),
        };
        let tree = Tree {
            thread,
            missing: false,
            exited,
            exiting: false,
            contexts: std::mem::take(&mut self.contexts),
            sites: Vec::new(),
        };
        if self.kind != Kind::Gdb {
            self.check_grand_total(&tree);
        }
        (tree, self.warnings)
    }

    /// Warns when the dump has no `Grand total` line or its lines do not add up to it.
    fn check_grand_total(&mut self, tree: &Tree) {
        let Some(g) = self.grand else {
            self.warnings.push(format!(
                "the dump starting at line {} has no `Grand total` line: it may be cut short",
                self.start_line
            ));
            return;
        };
        let sum = tree.total();
        if sum != g {
            self.warnings.push(format!(
                "the dump starting at line {}: its lines add up to {} bytes in {} blocks, \
                 but its `Grand total` says {} bytes in {} blocks (lines missing?)",
                self.start_line, sum.total_bytes, sum.total_nblocks, g.total_bytes, g.total_nblocks
            ));
        }
    }
}

pub(super) fn detail_context(name: String, ident: Option<String>, st: Stats) -> Context {
    Context {
        name,
        ident,
        level: 0,
        parent: None,
        total_bytes: st.total,
        total_nblocks: Some(st.nblocks),
        free_bytes: Some(st.free),
        free_chunks: st.chunks,
        used_bytes: Some(st.used),
        folded: None,
        id: None,
        kind: st.shape.kind().map(str::to_string),
        detail: st.detail,
    }
}

/// True if `pid` occurs in `prefix` as a whole number (not part of a longer one).
fn prefix_has_pid(prefix: &str, pid: u32) -> bool {
    // Every line of a log dump is routed by this test: the PID's digits are written into a buffer
    // on the stack and compared with each run of digits, with no allocation and no searcher.
    let mut digits = [0u8; 10];
    let (mut n, mut at) = (pid, digits.len());
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let want = &digits[at..];
    prefix
        .as_bytes()
        .split(|b| !b.is_ascii_digit())
        .any(|run| run == want)
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
        let total = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + se;
        return u64::try_from(total * 1000 + ms).ok();
    }
    None
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, mo: i64, d: i64) -> i64 {
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!prefix_has_pid("2026-01-01 UTC [92810] LOG:  ", 9281));
        assert!(!prefix_has_pid("[09281] ", 9281));
        assert!(prefix_has_pid("9281 ", 9281));
        assert!(prefix_has_pid("[4294967295] ", u32::MAX));
        assert!(prefix_has_pid("a0b", 0));
    }
}
