//! What one line of a text dump is: a line of a server log's dump, of `MemoryContextStats`
//! output, or of the gdb script's output.

use std::borrow::Cow;

use super::csv::csv_records;
use super::model::ParseError;
use crate::stats::{Counters, KindDetail};

/// The shape of a stats line, which names the context kind that prints it (see
/// [`KindDetail`]); the `N more child contexts` and `Grand total` lines are in the AllocSet shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Shape {
    /// `T total in B blocks; F free (C chunks); U used`: AllocSet, or Slab before PostgreSQL 16.
    #[default]
    AllocSet,
    /// `T total in B blocks (N chunks); F free (C chunks); U used`.
    Generation,
    /// `T total in B blocks; E empty blocks; F free (C chunks); U used` (PostgreSQL 16 and later).
    Slab,
    /// `T total in B blocks; F free; U used`.
    Bump,
}

impl Shape {
    /// The context kind the shape names; `None` for the AllocSet shape, which Slab shared before
    /// PostgreSQL 16.
    pub(super) fn kind(self) -> Option<&'static str> {
        match self {
            Shape::AllocSet => None,
            Shape::Generation => Some("Generation"),
            Shape::Slab => Some("Slab"),
            Shape::Bump => Some("Bump"),
        }
    }
}

/// The figures of one stats line, in any kind's shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Stats {
    pub(super) total: u64,
    pub(super) nblocks: u64,
    pub(super) free: u64,
    /// Free chunks: `None` in the Bump shape, which has none.
    pub(super) chunks: Option<u64>,
    pub(super) used: u64,
    pub(super) shape: Shape,
    /// The Generation shape's chunks, the Slab shape's empty blocks.
    pub(super) detail: KindDetail,
}

impl Stats {
    pub(super) fn counters(self) -> Counters {
        Counters {
            total_bytes: self.total,
            total_nblocks: self.nblocks,
            free_bytes: self.free,
            free_chunks: self.chunks.unwrap_or(0),
        }
    }
}

/// Reads leading ASCII digits as a number; returns it and the rest (`None` without a digit, or
/// past `u64::MAX`).
pub(super) fn number(s: &str) -> Option<(u64, &str)> {
    // Every line of a dump holds five numbers: read them digit by digit, without `str::parse`'s
    // sign and radix handling.
    let mut v: u64 = 0;
    let mut n = 0;
    for b in s.bytes().take_while(u8::is_ascii_digit) {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then(|| (v, &s[n..]))
}

/// Parses a stats line's figures at the start of `s`, in any kind's shape (see [`Shape`]):
/// `T <word> in B blocks[ (N chunks)]; [E empty blocks; ]F free[ (C chunks)]; U used`, where
/// `(C chunks)` is there in every shape but Bump's, and at most one of the other two parts (in
/// the Generation and the Slab shape) is; any other combination is no shape.
pub(super) fn block_stats<'a>(s: &'a str, word: &str) -> Option<(Stats, &'a str)> {
    let (total, s) = number(s)?;
    let s = s
        .strip_prefix(' ')?
        .strip_prefix(word)?
        .strip_prefix(" in ")?;
    let (nblocks, s) = number(s)?;
    let s = s.strip_prefix(" blocks")?;
    let (all_chunks, s) = chunks_part(s)?;
    let s = s.strip_prefix("; ")?;
    let (first, s) = number(s)?;
    let (empty_blocks, free, s) = match s.strip_prefix(" empty blocks; ") {
        Some(s) => {
            let (free, s) = number(s)?;
            (Some(first), free, s)
        }
        None => (None, first, s),
    };
    let s = s.strip_prefix(" free")?;
    let (chunks, s) = chunks_part(s)?;
    let s = s.strip_prefix("; ")?;
    let (used, s) = number(s)?;
    let s = s.strip_prefix(" used")?;
    let shape = match (all_chunks, empty_blocks, chunks) {
        (None, None, Some(_)) => Shape::AllocSet,
        (Some(_), None, Some(_)) => Shape::Generation,
        (None, Some(_), Some(_)) => Shape::Slab,
        (None, None, None) => Shape::Bump,
        _ => return None,
    };
    let detail = KindDetail {
        chunks: all_chunks,
        empty_blocks,
    };
    let stats = Stats {
        total,
        nblocks,
        free,
        chunks,
        used,
        shape,
        detail,
    };
    Some((stats, s))
}

/// An optional ` (N chunks)` at the start of `s`: N, if present, and the rest; `None` when it
/// starts but is malformed.
fn chunks_part(s: &str) -> Option<(Option<u64>, &str)> {
    let Some(s) = s.strip_prefix(" (") else {
        return Some((None, s));
    };
    let (n, s) = number(s)?;
    Some((Some(n), s.strip_prefix(" chunks)")?))
}

/// [`block_stats`] in the AllocSet shape only: the `N more child contexts` and `Grand total`
/// lines, which PostgreSQL prints from summed counters whatever the contexts' kinds.
fn common_stats<'a>(s: &'a str, word: &str) -> Option<(Stats, &'a str)> {
    block_stats(s, word).filter(|(st, _)| st.shape == Shape::AllocSet)
}

/// Finds the first `: T total in ...; U used` in `s`: returns the name before it, the stats and
/// the rest after `used`.
pub(super) fn context_stats(s: &str) -> Option<(&str, Stats, &str)> {
    // A byte search for the colon: names are short, and a substring searcher costs more to set
    // up than it saves.
    for (at, _) in s.match_indices(':') {
        let Some(after) = s[at + 1..].strip_prefix(' ') else {
            continue;
        };
        if let Some((st, rest)) = block_stats(after, "total") {
            return Some((&s[..at], st, rest));
        }
    }
    None
}

/// The identifier part after the stats: `""` → none, `": IDENT"` → IDENT.
pub(super) fn ident_part(rest: &str) -> Result<Option<String>, ()> {
    if rest.is_empty() {
        Ok(None)
    } else if let Some(id) = rest.strip_prefix(": ") {
        Ok(Some(id.to_string()))
    } else {
        Err(())
    }
}

#[derive(Debug)]
pub(super) enum Line {
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
    /// memctx's gdb walker: `memctx registry at 0xADDR (...): ..., PID N`, the start of a walk.
    WalkerRegistry {
        pid: Option<u32>,
    },
    /// memctx's gdb walker: `Thread "NAME" tid TID (live|exited), TopMemoryContext at 0xADDR:`.
    WalkerThread {
        /// The thread's name, or `tid TID` when it has none (as memctx snapshots label threads).
        label: String,
        exited: bool,
    },
    /// memctx's gdb walker: `memctx: warning: ...`.
    WalkerWarning(String),
}

pub(super) const STATS_SHAPE: &str = "`NAME: T total in B blocks; F free (C chunks); U used`";
/// The other kinds' shapes of a stats line, for errors.
const OTHER_SHAPES: &str = "(or a Generation, Slab or Bump context's shape of it: \
     `... B blocks (N chunks); ...`, `... B blocks; E empty blocks; ...`, `... F free; U used`)";

/// Finds the message part of a log line: after `level: N; `, `Grand total: ` or the header. In a
/// csvlog line the message is a quoted field; in a jsonlog line, the `message` member.
pub(super) fn log_message(line: &str) -> Option<(String, String)> {
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

pub(super) fn csvlog_message(line: &str) -> Option<(String, String)> {
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

/// What one line of a text is, if anything of a dump. `Ok(None)` for lines that belong to no dump.
pub(super) fn classify(raw: &str, lineno: usize, source: &str) -> Classified {
    let Some(line) = strip_gdb_prompts(raw) else {
        return Ok(None);
    };
    if let Some(walker) = walker_line(line) {
        return Ok(Some(walker));
    }
    let (prefix, msg) = split_log_line(line);
    let bare = prefix.is_empty() && msg.len() == line.len();
    let at = LineAt { lineno, source };
    if let Some(classified) = log_line(&prefix, &msg, bare, at) {
        return classified;
    }
    indented_line(line, at)
}

/// The result of [`classify`].
pub(super) type Classified = Result<Option<Line>, ParseError>;

/// Where a line is, for errors.
#[derive(Clone, Copy)]
struct LineAt<'a> {
    lineno: usize,
    source: &'a str,
}

impl LineAt<'_> {
    fn err(self, m: impl Into<String>) -> Classified {
        Err(ParseError::new(self.source, Some(self.lineno), m))
    }
}

/// The line without the trailing newline and the gdb prompts captured in front of it; `None` for
/// a bare prompt.
fn strip_gdb_prompts(raw: &str) -> Option<&str> {
    let mut line = raw.trim_end_matches(['\r', '\n']);
    while let Some(rest) = line.strip_prefix("(gdb) ") {
        line = rest;
    }
    (line != "(gdb)").then_some(line)
}

/// Splits a log line into its prefix and its message (jsonlog, csvlog, or plain text with any
/// `log_line_prefix`); a line that is no log line comes back whole as the message.
fn split_log_line(line: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    let structured = log_message(line).or_else(|| {
        // A byte search first: most lines of a plain log have no quote at all.
        let csvlog = line.contains('"')
            && (line.contains(",\"level: ")
                || line.contains(",\"Grand total: ")
                || line.contains(",\"logging memory contexts of PID "));
        csvlog.then(|| csvlog_message(line)).flatten()
    });
    if let Some((p, m)) = structured {
        if !p.is_empty() {
            return (Cow::Owned(p), Cow::Owned(m));
        }
        return match find_log_marker(&m) {
            Some(at) => (
                Cow::Owned(m[..at].to_string()),
                Cow::Owned(m[at..].to_string()),
            ),
            None => (Cow::Borrowed(""), Cow::Owned(m)),
        };
    }
    match find_log_marker(line) {
        Some(at) => (Cow::Borrowed(&line[..at]), Cow::Borrowed(&line[at..])),
        None => (Cow::Borrowed(""), Cow::Borrowed(line)),
    }
}

/// A log message: the dump header, a `level: N; ...` line or a `Grand total` line. `None` when
/// the message is none of them (the line may still be a stderr or gdb line); `bare` when the
/// line had no log prefix (a `Grand total` then ends a stderr dump).
fn log_line(prefix: &str, msg: &str, bare: bool, at: LineAt<'_>) -> Option<Classified> {
    if let Some(rest) = msg.strip_prefix("logging memory contexts of PID ") {
        if let Some((pid, _)) = number(rest) {
            return Some(Ok(Some(Line::LogHeader {
                prefix: prefix.to_string(),
                pid: u32::try_from(pid).unwrap_or(u32::MAX),
            })));
        }
    }
    if let Some(rest) = msg.strip_prefix("level: ") {
        let (level, rest) = number(rest)?;
        let rest = rest.strip_prefix("; ")?;
        let level = u32::try_from(level).unwrap_or(u32::MAX);
        return Some(level_line(prefix, level, rest, at));
    }
    let rest = msg.strip_prefix("Grand total: ")?;
    Some(match common_stats(rest, "bytes") {
        Some((stats, "")) if bare => Ok(Some(Line::StderrGrand { stats })),
        Some((stats, "")) => Ok(Some(Line::LogGrand {
            prefix: prefix.to_string(),
            stats,
        })),
        _ if rest.contains(" bytes in ") => at.err(
            "malformed `Grand total` line: expected `Grand total: T bytes in B blocks; F free \
             (C chunks); U used`",
        ),
        _ => Ok(None),
    })
}

/// What follows `level: N; ` in a log line: a context or a folded line.
fn level_line(prefix: &str, level: u32, rest: &str, at: LineAt<'_>) -> Classified {
    if let Some(tail) = folded_tail(rest) {
        return match common_stats(tail.1, "total") {
            Some((stats, "")) => Ok(Some(Line::LogFolded {
                prefix: prefix.to_string(),
                level,
                count: tail.0,
                stats,
            })),
            _ => at.err(format!(
                "malformed `N more child contexts containing ...` line: expected \
                 `level: {level}; N more child contexts containing T total in B blocks; \
                 F free (C chunks); U used`"
            )),
        };
    }
    match context_stats(rest) {
        Some((name, stats, tail)) => match ident_part(tail) {
            Ok(ident) => Ok(Some(Line::LogContext {
                prefix: prefix.to_string(),
                level,
                name: name.to_string(),
                ident,
                stats,
            })),
            Err(()) => at.err(format!(
                "unexpected text {tail:?} after `used`: expected the end of the line or `: IDENT`"
            )),
        },
        None if rest.contains(" total in ") => at.err(format!(
            "malformed memory-context line: expected {STATS_SHAPE} after `level: {level}; ` \
             {OTHER_SHAPES}"
        )),
        None => Ok(None),
    }
}

/// `N more child contexts containing REST`: N and REST.
fn folded_tail(s: &str) -> Option<(u64, &str)> {
    let (count, tail) = number(s)?;
    Some((
        count,
        tail.strip_prefix(" more child contexts containing ")?,
    ))
}

/// Stderr and gdb lines: indentation, then a context, a folded line or `NAME: BYTES`.
fn indented_line(line: &str, at: LineAt<'_>) -> Classified {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let body = &line[indent..];
    if body.is_empty() {
        return Ok(None);
    }
    if let Some((count, tail)) = folded_tail(body) {
        return match common_stats(tail, "total") {
            Some((stats, "")) => Ok(Some(Line::StderrFolded {
                indent,
                count,
                stats,
            })),
            _ => at.err(
                "malformed `N more child contexts containing ...` line: expected `N more child \
                 contexts containing T total in B blocks; F free (C chunks); U used`",
            ),
        };
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
    Ok(gdb_script_line(indent, body))
}

/// The lines memctx's gdb walker (`valgrind/memctx_gdb.py`, `memctx-stats`) prints around the
/// trees, which are in `MemoryContextStats` format.
fn walker_line(line: &str) -> Option<Line> {
    if let Some(rest) = line.strip_prefix("memctx registry at 0x") {
        let pid = rest
            .rsplit_once(", PID ")
            .and_then(|(_, p)| p.trim().parse().ok());
        return Some(Line::WalkerRegistry { pid });
    }
    if let Some(w) = line.strip_prefix("memctx: warning: ") {
        return Some(Line::WalkerWarning(w.to_string()));
    }
    let rest = line.strip_prefix("Thread ")?;
    let (name, rest) = match rest.strip_prefix('"') {
        Some(quoted) => {
            let (name, rest) = quoted.rsplit_once("\" tid ")?;
            (Some(name), rest)
        }
        None => (None, rest.strip_prefix("<unnamed> tid ")?),
    };
    let (tid, rest) = number(rest)?;
    let (state, rest) = rest
        .strip_prefix(" (")?
        .split_once("), TopMemoryContext at 0x")?;
    if !rest.ends_with(':') {
        return None;
    }
    Some(Line::WalkerThread {
        label: name.map_or_else(|| format!("tid {tid}"), str::to_string),
        exited: state == "exited",
    })
}

/// The article's gdb script: `NAME: BYTES`.
fn gdb_script_line(indent: usize, body: &str) -> Option<Line> {
    let (name, bytes) = body.rsplit_once(": ")?;
    if name.is_empty() || bytes.is_empty() || !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Line::Gdb {
        indent,
        name: name.to_string(),
        bytes: bytes.parse().ok()?,
    })
}

/// Where the message of a log line starts: at `level: N; `, `Grand total: ` or
/// `logging memory contexts of PID `, after a prefix that ends in a space.
fn find_log_marker(line: &str) -> Option<usize> {
    for marker in [
        "level: ",
        "Grand total: ",
        "logging memory contexts of PID ",
    ] {
        // Most lines (every line of `MemoryContextStats` output) hold no marker at all: a
        // substring test rules them out at once. Otherwise candidates are found by a byte search
        // for the marker's first character, and must start a word: the prefix ends in a space.
        if !line.contains(marker) {
            continue;
        }
        let first = char::from(marker.as_bytes()[0]);
        for (at, _) in line.match_indices(first) {
            let word_start = at == 0 || line.as_bytes()[at - 1] == b' ';
            let Some(r) = line[at..].strip_prefix(marker).filter(|_| word_start) else {
                continue;
            };
            if marker != "level: " || number(r).is_some_and(|(_, r)| r.starts_with("; ")) {
                return Some(at);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One context line of each kind's shape (`aset.c`, `generation.c`, `slab.c` of PostgreSQL
    /// 16+, `bump.c`), and the figures it holds.
    const SHAPES: [(&str, Stats); 4] = [
        (
            "8192 total in 1 blocks; 7400 free (9 chunks); 792 used",
            Stats {
                total: 8192,
                nblocks: 1,
                free: 7400,
                chunks: Some(9),
                used: 792,
                shape: Shape::AllocSet,
                detail: KindDetail {
                    chunks: None,
                    empty_blocks: None,
                },
            },
        ),
        (
            "16384 total in 2 blocks (37 chunks); 11136 free (3 chunks); 5248 used",
            Stats {
                total: 16384,
                nblocks: 2,
                free: 11136,
                chunks: Some(3),
                used: 5248,
                shape: Shape::Generation,
                detail: KindDetail {
                    chunks: Some(37),
                    empty_blocks: None,
                },
            },
        ),
        (
            "9696 total in 1 blocks; 2 empty blocks; 640 free (8 chunks); 9056 used",
            Stats {
                total: 9696,
                nblocks: 1,
                free: 640,
                chunks: Some(8),
                used: 9056,
                shape: Shape::Slab,
                detail: KindDetail {
                    chunks: None,
                    empty_blocks: Some(2),
                },
            },
        ),
        (
            "1056768 total in 9 blocks; 7040 free; 1049728 used",
            Stats {
                total: 1_056_768,
                nblocks: 9,
                free: 7040,
                chunks: None,
                used: 1_049_728,
                shape: Shape::Bump,
                detail: KindDetail {
                    chunks: None,
                    empty_blocks: None,
                },
            },
        ),
    ];

    /// The context line `level: 5; Tuples: STATS` in a plain log, a csvlog and a jsonlog line, and
    /// `Tuples: STATS` in `MemoryContextStats` output.
    fn in_every_format(stats: &str) -> [String; 4] {
        let msg = format!("level: 5; Tuples: {stats}");
        [
            format!("2026-12-03 15:46:21.297 UTC [10353] postgres@postgres LOG:  {msg}"),
            format!(
                "2026-12-03 15:46:21.297 UTC,\"postgres\",\"postgres\",10353,\"[local]\",\
                 6b118ecb.2871,9,\"START_REPLICATION\",2026-12-03 15:46:19 UTC,3/0,0,LOG,00000,\
                 \"{msg}\",,,,,,,,,\"pg_recvlogical\",\"walsender\",,0"
            ),
            format!(
                "{{\"timestamp\":\"2026-12-03 15:46:21.297 UTC\",\"pid\":10353,\
                 \"error_severity\":\"LOG\",\"message\":\"{msg}\"}}"
            ),
            format!("          Tuples: {stats}"),
        ]
    }

    #[test]
    fn every_kinds_shape_reads_in_every_format() {
        for (text, want) in SHAPES {
            for line in in_every_format(text) {
                let got = match classify(&line, 1, "t") {
                    Ok(Some(Line::LogContext { name, stats, .. })) => (name, stats),
                    Ok(Some(Line::StderrContext { name, stats, .. })) => (name, stats),
                    other => panic!("{line}: {other:?}"),
                };
                assert_eq!(got, ("Tuples".to_string(), want), "{line}");
            }
        }
    }

    #[test]
    fn shapes_no_kind_prints_are_errors() {
        for bad in [
            // Generation's chunk count and Slab's empty blocks together.
            "16384 total in 2 blocks (37 chunks); 2 empty blocks; 640 free (3 chunks); 5248 used",
            // Bump's free without chunks, with Generation's chunk count.
            "16384 total in 2 blocks (37 chunks); 640 free; 15744 used",
            "16384 total in 2 blocks (x chunks); 640 free (3 chunks); 15744 used",
            "16384 total in 2 blocks; 2 empty; 640 free (3 chunks); 15744 used",
            "16384 total in 2 blocks; 640 free (3 chunks) 15744 used",
        ] {
            let [log, csvlog, jsonlog, stderr] = in_every_format(bad);
            for line in [log, csvlog, jsonlog] {
                let e = classify(&line, 7, "t").unwrap_err();
                assert_eq!(e.line, Some(7));
                assert!(
                    e.message.starts_with("malformed memory-context line"),
                    "{e}"
                );
            }
            // An indented line that is no context line is no line of a dump (the `Grand total`
            // check then warns of the missing context).
            assert!(matches!(classify(&stderr, 7, "t"), Ok(None)), "{stderr}");
        }
    }

    #[test]
    fn folded_and_grand_total_lines_take_only_the_common_shape() {
        for (text, want) in &SHAPES[1..] {
            let folded = format!("LOG:  level: 2; 3 more child contexts containing {text}");
            let e = classify(&folded, 1, "t").unwrap_err();
            assert!(e.message.contains("more child contexts"), "{e}");
            let grand = format!("Grand total: {}", text.replacen("total in", "bytes in", 1));
            let e = classify(&grand, 1, "t").unwrap_err();
            assert!(
                e.message.contains("malformed `Grand total` line"),
                "{e} ({want:?})"
            );
        }
        let (text, want) = SHAPES[0];
        let folded = format!("  3 more child contexts containing {text}");
        match classify(&folded, 1, "t") {
            Ok(Some(Line::StderrFolded {
                count: 3, stats, ..
            })) => assert_eq!(stats, want),
            other => panic!("{other:?}"),
        }
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
