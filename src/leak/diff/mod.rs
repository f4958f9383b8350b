//! Comparing dumps over time: which context keeps growing.
//!
//! [`diff`] takes two dumps or a series and matches contexts by their path of names (and
//! identifiers) from the root, never by ids, which mean nothing from one dump to the next. It
//! reports three kinds of entries ([`EntryKind`]):
//!
//! - **groups**: all contexts with the same path of *names*, summed, with their count. Hundreds of
//!   `CachedPlanSource` siblings (each with its own query as identifier) are one group, so growth
//!   that is spread over many small contexts shows up as one large number. A context with no
//!   same-named siblings is a group of one.
//! - **folded** lines: PostgreSQL prints at most 100 children per context and sums the rest in an
//!   `N more child contexts containing ...` line. Each such line is an entry of its own,
//!   `PARENT/(more child contexts)`, so growth hiding there is still attributed to the parent it
//!   hides under; its note names what the printed siblings are, the likely content of the fold.
//! - **contexts**: single contexts with an identifier that are members of a larger group and are
//!   present in the first and the last dump: a relcache entry or a plan that itself grows. A
//!   path whose identifier is an ancestor's and that matches the whole group in every dump (the
//!   `ExprContext`s of a query under the portal `PortalContext[<unnamed>]`) is that group, not
//!   an entry of its own.
//!
//! Each entry's own bytes (not its children's) are followed over the series. One [`Metric`]
//! ([`DiffOptions::metric`], total bytes by default) decides everything: [`verdict`] classifies its
//! series, entries are ranked by its growth ([`EntryReport::change`]) and the report's `+/-` column
//! shows it. Total bytes move in blocks that double in size, so a steady leak shows as a staircase
//! in the total but as a ramp in the used bytes; the verdict's plateau rule tells the two apart.
//!
//! The phases: the `series` module interns each context's path and accumulates its bytes per dump
//! into one `track` per path, written into compact [`Samples`] as the dumps go by; the `judge`
//! module brings the tracks to the end of the series and judges them; [`diff_with`] ranks the
//! entries; the report's text, JSON and the CI gate ([`check_growth`]) read the result.
//!
//! Per-site growth: when snapshots carry allocation sites (memctx's debug build), sites are
//! matched by their context's group path and their frames, and ranked the same way.

mod format;
mod gate;
mod json;
mod judge;
mod processes;
mod samples;
mod series;
mod track;
mod verdict;

use std::fmt::{self, Write as _};

use super::parse::Dump;
use super::Metric;
use judge::Judge;
use series::Accumulated;

pub use format::{human_bytes, ReportOptions};
pub use gate::{check_growth, GrowthError, GrowthGate};
pub use processes::{select_pid, Selection};
pub use samples::{Iter as SamplesIter, Samples};
pub use verdict::{verdict, Verdict};

/// What an entry of a [`Report`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// All contexts with this path of names, summed (one context when it has no same-named
    /// siblings).
    Group,
    /// The `N more child contexts` lines under one parent.
    Folded,
    /// One context, matched by its path of names and identifiers.
    Context,
}

/// One path segment: a context's name and, for [`EntryKind::Context`] entries, its identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The context name (as PostgreSQL shows it: a dynahash under its table name).
    pub name: String,
    /// The identifier, when the entry is matched by it.
    pub ident: Option<String>,
}

/// One context (or group of contexts) followed over the series.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryReport {
    /// The thread (memctx snapshots with several threads), else `None`.
    pub thread: Option<String>,
    /// The path from the root.
    pub path: Vec<Segment>,
    /// What the entry stands for.
    pub kind: EntryKind,
    /// Own `total_bytes` per dump (`None` where the thread did not answer the dump).
    pub total: Samples,
    /// Own `used_bytes` per dump (`None` also where the dump does not record it).
    pub used: Samples,
    /// Number of contexts per dump (for folded lines: the `N` they print).
    pub count: Samples,
    /// Bytes of the contexts with all their descendants, per dump.
    pub subtree: Samples,
    /// The verdict over the series.
    pub verdict: Verdict,
    /// The metric the verdict, the ranking and [`EntryReport::change`] are made on.
    pub metric: Metric,
    /// A remark for the reader (for folded lines: what the printed siblings are).
    pub note: Option<String>,
}

fn delta(v: &Samples) -> i128 {
    v.first_last()
        .map_or(0, |(a, b)| i128::from(b) - i128::from(a))
}

impl EntryReport {
    /// The path as text: names joined by `/`, identifiers (of [`EntryKind::Context`] entries) in
    /// brackets and cut at 40 characters, the thread in front when there is one.
    #[must_use]
    pub fn display_path(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.thread {
            let _ = write!(s, "[{t}] ");
        }
        for (i, seg) in self.path.iter().enumerate() {
            if i > 0 {
                s.push('/');
            }
            s.push_str(&seg.name);
            if let Some(id) = &seg.ident {
                s.push('[');
                let mut cut: String = id.chars().take(40).collect();
                if cut.len() < id.len() {
                    cut.push_str("...");
                }
                s.push_str(&cut);
                s.push(']');
            }
        }
        s
    }

    /// Growth of own `total_bytes`: last known value minus first known value.
    #[must_use]
    pub fn growth(&self) -> i128 {
        delta(&self.total)
    }

    /// The series of the entry's [`EntryReport::metric`].
    #[must_use]
    pub fn series(&self) -> &Samples {
        match self.metric {
            Metric::Total => &self.total,
            Metric::Used => &self.used,
        }
    }

    /// Growth by the entry's metric: last known value minus first known value. This is what the
    /// ranking orders by and the report's `+/-` column shows.
    #[must_use]
    pub fn change(&self) -> i128 {
        delta(self.series())
    }

    /// Growth of own `used_bytes`, when recorded.
    #[must_use]
    pub fn used_growth(&self) -> Option<i128> {
        self.used.last_known()?;
        Some(delta(&self.used))
    }
}

/// Allocation-site growth (memctx debug-build snapshots).
#[derive(Clone, Debug, PartialEq)]
pub struct SiteReport {
    /// The thread, when the series has several.
    pub thread: Option<String>,
    /// The path of names of the context the chunks live in.
    pub context: Vec<String>,
    /// The allocation backtrace, user frames first.
    pub frames: Vec<String>,
    /// Live bytes per dump.
    pub bytes: Samples,
    /// Live chunks per dump.
    pub count: Samples,
    /// The verdict on `bytes`.
    pub verdict: Verdict,
}

impl SiteReport {
    /// Growth of live bytes, last minus first.
    #[must_use]
    pub fn growth(&self) -> i128 {
        delta(&self.bytes)
    }
}

/// The result of [`diff`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The metric of the verdicts, the ranking and the `+/-` column.
    pub metric: Metric,
    /// The dumps compared, by [`Dump::source`], in order.
    pub snapshots: Vec<String>,
    /// Their formats' descriptions, deduplicated, in order of first appearance.
    pub formats: Vec<&'static str>,
    /// The process ids of the dumps, deduplicated.
    pub pids: Vec<u32>,
    /// Milliseconds between the first and the last dump, when both have timestamps.
    pub span_ms: Option<u64>,
    /// Sum of all contexts' `total_bytes` per dump.
    pub grand_total: Vec<u64>,
    /// Every entry, ranked: largest [`EntryReport::change`] first, then by the other metric.
    pub entries: Vec<EntryReport>,
    /// Allocation sites ranked by growth of live bytes (empty without sites).
    pub sites: Vec<SiteReport>,
    /// Warnings from parsing the dumps.
    pub warnings: Vec<String>,
}

/// Why two dumps could not be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffError(pub String);

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiffError {}

/// How [`diff_with`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// The bytes that decide verdicts, ranking and [`EntryReport::change`].
    pub metric: Metric,
}

/// Compares two dumps or a series, oldest first, by total bytes ([`diff_with`] with the default
/// options).
///
/// # Errors
///
/// Fewer than two dumps.
///
/// # Examples
///
/// See the [module documentation](crate::leak).
pub fn diff(dumps: &[Dump]) -> Result<Report, DiffError> {
    diff_with(dumps, &DiffOptions::default())
}

/// Compares two dumps or a series, oldest first, by `opts.metric`.
///
/// # Errors
///
/// Fewer than two dumps, or [`Metric::Used`] on dumps that do not record used bytes.
pub fn diff_with(dumps: &[Dump], opts: &DiffOptions) -> Result<Report, DiffError> {
    check_comparable(dumps, opts)?;
    let acc = Accumulated::from_dumps(dumps);
    let totals = dumps.iter().map(|d| d.total().total_bytes).collect();
    Ok(judge_and_rank(acc, dumps, totals, opts))
}

/// A diff fed one dump at a time, oldest first, for series too large to hold: each dump
/// [`DiffStream::push`]ed is folded into per-path series at once (its paths interned, its bytes
/// summed and written into compact [`Samples`]), and only its header (source, format, PID, time,
/// warnings, grand total) is kept, so memory grows with the number of distinct paths and with how
/// often their sizes change, not with the dumps' text. [`DiffStream::finish`] gives the report
/// [`diff_with`] gives on the same dumps; [`DiffStream::report`] gives it so far and goes on.
#[derive(Clone, Default)]
pub struct DiffStream {
    acc: Accumulated,
    heads: Vec<Dump>,
    totals: Vec<u64>,
}

impl DiffStream {
    /// Folds the next dump of the series in.
    pub fn push(&mut self, dump: &Dump) {
        self.acc.add_dump(dump);
        self.totals.push(dump.total().total_bytes);
        self.heads.push(dump.header());
    }

    /// The number of dumps pushed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Whether no dump was pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Compares the dumps pushed, by `opts.metric`.
    ///
    /// # Errors
    ///
    /// As [`diff_with`].
    pub fn finish(self, opts: &DiffOptions) -> Result<Report, DiffError> {
        check_comparable(&self.heads, opts)?;
        Ok(judge_and_rank(self.acc, &self.heads, self.totals, opts))
    }

    /// Compares the dumps pushed so far, by `opts.metric`; more can be pushed afterwards.
    ///
    /// # Errors
    ///
    /// As [`diff_with`].
    pub fn report(&self, opts: &DiffOptions) -> Result<Report, DiffError> {
        self.clone().finish(opts)
    }
}

/// At least two dumps, all recording used bytes when `opts` compares by them.
fn check_comparable(dumps: &[Dump], opts: &DiffOptions) -> Result<(), DiffError> {
    if dumps.len() < 2 {
        return Err(DiffError(format!(
            "need at least two snapshots to compare, got {}{}",
            dumps.len(),
            dumps
                .first()
                .map(|d| format!(" ({})", d.source))
                .unwrap_or_default()
        )));
    }
    if let Some(d) = dumps
        .iter()
        .find(|d| opts.metric == Metric::Used && !d.has_detail)
    {
        return Err(DiffError(format!(
            "{}: {} records no used bytes: compare by total bytes (--metric total)",
            d.source,
            d.format.description()
        )));
    }
    Ok(())
}

/// The report from the accumulated series; `dumps` are read for their headers only, `totals`
/// are their grand totals.
fn judge_and_rank(
    acc: Accumulated,
    dumps: &[Dump],
    totals: Vec<u64>,
    opts: &DiffOptions,
) -> Report {
    let mut judge = Judge {
        acc,
        metric: opts.metric,
    };
    let mut entries = judge.entries();
    rank_entries(&mut entries, opts.metric);
    let mut sites = judge.sites();
    rank_sites(&mut sites);
    report_of(dumps, totals, opts.metric, entries, sites)
}

/// Largest growth by the metric first, then by the other metric, then by path.
fn rank_entries(entries: &mut [EntryReport], metric: Metric) {
    let other = |e: &EntryReport| match metric {
        Metric::Total => e.used_growth().unwrap_or(0),
        Metric::Used => e.growth(),
    };
    entries.sort_by(|a, b| {
        b.change()
            .cmp(&a.change())
            .then_with(|| other(b).cmp(&other(a)))
            .then_with(|| a.display_path().cmp(&b.display_path()))
    });
}

/// Largest growth of live bytes first, then by context, frames and thread (a total order: the
/// sites are gathered in no particular order).
fn rank_sites(sites: &mut [SiteReport]) {
    sites.sort_by(|a, b| {
        b.growth()
            .cmp(&a.growth())
            .then_with(|| a.context.cmp(&b.context))
            .then_with(|| a.frames.cmp(&b.frames))
            .then_with(|| a.thread.cmp(&b.thread))
    });
}

/// The report: what was compared (sources, formats, processes, span) and the ranked results.
fn report_of(
    dumps: &[Dump],
    grand_total: Vec<u64>,
    metric: Metric,
    entries: Vec<EntryReport>,
    sites: Vec<SiteReport>,
) -> Report {
    let mut formats = Vec::new();
    let mut pids = Vec::new();
    let mut warnings = Vec::new();
    for d in dumps {
        let f = d.format.description();
        if !formats.contains(&f) {
            formats.push(f);
        }
        if let Some(p) = d.pid.filter(|p| !pids.contains(p)) {
            pids.push(p);
        }
        warnings.extend(d.warnings.iter().map(|w| format!("{}: {w}", d.source)));
    }
    let (first, last) = (&dumps[0], &dumps[dumps.len() - 1]);
    let span_ms = match (first.timestamp_ms, last.timestamp_ms) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    Report {
        metric,
        snapshots: dumps.iter().map(|d| d.source.clone()).collect(),
        formats,
        pids,
        span_ms,
        grand_total,
        entries,
        sites,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::parse_str;

    /// A `MemoryContextStats` dump of a top context and the children `(name, total)`.
    fn dump(children: &[(&str, u64)]) -> Dump {
        let mut text =
            "TopMemoryContext: 8192 total in 1 blocks; 0 free (0 chunks); 8192 used\n".to_string();
        for (name, total) in children {
            text.push_str(&format!(
                "  {name}: {total} total in 1 blocks; 0 free (0 chunks); {total} used\n"
            ));
        }
        parse_str(&text, "d").unwrap().remove(0)
    }

    /// Two same-named siblings allocating from one line are one site, as they are one entry:
    /// their live bytes and chunks add up in each dump.
    #[test]
    fn a_site_sums_its_groups_contexts() {
        let mut dumps = vec![
            dump(&[("Plan", 1024), ("Plan", 1024)]),
            dump(&[("Plan", 2048), ("Plan", 2048)]),
        ];
        for (k, d) in dumps.iter_mut().enumerate() {
            let k = k as u64 + 1;
            for (context, bytes) in [(1, 100 * k), (2, 200 * k)] {
                d.trees[0].sites.push(crate::leak::parse::Site {
                    context,
                    count: bytes / 100,
                    bytes,
                    frames: vec!["plan::build at src/plan.rs:7".to_string()],
                });
            }
        }
        let report = diff(&dumps).unwrap();
        assert_eq!(report.sites.len(), 1);
        let site = &report.sites[0];
        assert_eq!(site.context, ["TopMemoryContext", "Plan"]);
        assert_eq!(site.bytes, [Some(300), Some(600)]);
        assert_eq!(site.count, [Some(3), Some(6)]);
        assert_eq!(site.growth(), 300);
    }

    /// The stream pads the series of paths missing from the first or the last dumps, so its
    /// report is the one `diff_with` makes on the whole series.
    #[test]
    fn stream_reports_as_diff_with() {
        let dumps = vec![
            dump(&[("Gone", 1024), ("Grows", 1024)]),
            dump(&[("Grows", 2048), ("Late", 512)]),
            dump(&[("Grows", 4096), ("Late", 512), ("Late", 512)]),
        ];
        let opts = DiffOptions::default();
        let mut stream = DiffStream::default();
        dumps.iter().for_each(|d| stream.push(d));
        assert_eq!(stream.len(), 3);
        let streamed = stream.finish(&opts).unwrap();
        let mut whole = diff_with(&dumps, &opts).unwrap();
        assert_eq!(streamed.entries, whole.entries);
        let gone = whole
            .entries
            .iter()
            .find(|e| e.display_path() == "TopMemoryContext/Gone");
        assert_eq!(gone.unwrap().total, [Some(1024), Some(0), Some(0)]);
        let late = whole
            .entries
            .iter()
            .find(|e| e.display_path() == "TopMemoryContext/Late");
        assert_eq!(late.unwrap().count, [Some(0), Some(1), Some(2)]);
        whole.entries.clear();
        let mut streamed = streamed;
        streamed.entries.clear();
        assert_eq!(streamed, whole);
    }
}
