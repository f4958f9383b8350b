//! The report as text: a header, the ranked table, the verdict lines, per-site growth.

use std::fmt::Write as _;

use super::{delta, EntryKind, EntryReport, Report, SiteReport, Verdict};
use crate::leak::Metric;

/// How [`Report::format`] prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    /// Rows of the ranked table and verdict lines (at most).
    pub top: usize,
    /// Allocation sites to show (at most).
    pub sites: usize,
    /// Print exact byte counts instead of kB/MB.
    pub exact: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            top: 20,
            sites: 10,
            exact: false,
        }
    }
}

/// Formats a byte count like `pg_size_pretty`, with one decimal: `512 bytes`, `12.5 kB`, `1.2 MB`.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn fmt_bytes(b: u64, exact: bool) -> String {
    if exact {
        b.to_string()
    } else {
        human_bytes(b)
    }
}

fn fmt_delta(d: i128, exact: bool) -> String {
    let sign = if d < 0 { "-" } else { "+" };
    let mag = u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX);
    format!("{sign}{}", fmt_bytes(mag, exact))
}

fn fmt_span(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{}.{:01}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

impl Report {
    /// The entries whose verdict is [`Verdict::Growing`], largest growth first.
    pub fn growing(&self) -> impl Iterator<Item = &EntryReport> {
        self.entries
            .iter()
            .filter(|e| e.verdict == Verdict::Growing)
    }

    /// Where the growth is: walking down from the root, the deepest context whose subtree holds
    /// at least half of its parent's subtree growth (folded lines are not walked into). Returns
    /// the entry and its subtree growth; `None` when nothing grew.
    #[must_use]
    pub fn hotspot(&self) -> Option<(&EntryReport, i128)> {
        let tree_entries = || self.entries.iter().filter(|e| e.kind == EntryKind::Group);
        let mut best: Option<(&EntryReport, i128)> = None;
        for e in tree_entries().filter(|e| e.path.len() == 1) {
            let g = delta(&e.subtree);
            if g > 0 && best.map_or(true, |(_, b)| g > b) {
                best = Some((e, g));
            }
        }
        let (mut at, mut growth) = best?;
        loop {
            let child = tree_entries()
                .filter(|c| {
                    c.thread == at.thread
                        && c.path.len() == at.path.len() + 1
                        && c.path[..at.path.len()] == at.path[..]
                })
                .map(|c| (c, delta(&c.subtree)))
                .max_by_key(|&(_, g)| g);
            match child {
                Some((c, g)) if g > 0 && g * 2 >= growth => {
                    at = c;
                    growth = g;
                }
                _ => return Some((at, growth)),
            }
        }
    }

    /// The verdict line of an entry: `growing  PATH  +1.2 MB total over 5 snapshots (...)`,
    /// the change by the report's metric, the other metric's in brackets.
    #[must_use]
    pub fn verdict_line(&self, e: &EntryReport, exact: bool) -> String {
        let n = self.snapshots.len();
        let mut s = format!(
            "{:<9} {}  {} {} over {n} snapshots",
            e.verdict,
            e.display_path(),
            fmt_delta(e.change(), exact),
            e.metric
        );
        if let Some(ms) = self.span_ms {
            let _ = write!(s, " in {}", fmt_span(ms));
        }
        let mut extra = Vec::new();
        match e.metric {
            Metric::Total => {
                if let Some(u) = e.used_growth() {
                    extra.push(format!("used {}", fmt_delta(u, exact)));
                }
            }
            Metric::Used => extra.push(format!("total {}", fmt_delta(e.growth(), exact))),
        }
        if let Some((a, b)) = e.count.first_last() {
            if a != b || a > 1 {
                let what = if e.kind == EntryKind::Folded {
                    "folded contexts"
                } else {
                    "contexts"
                };
                extra.push(format!("{what} {a} -> {b}"));
            }
        }
        if !extra.is_empty() {
            let _ = write!(s, " ({})", extra.join(", "));
        }
        if let Some(note) = &e.note {
            let _ = write!(s, "; {note}");
        }
        s
    }

    /// Formats the report: a header, the ranked table of contexts that grew, the verdict lines
    /// (growing first, then plateau and noisy) and the per-site growth.
    #[must_use]
    pub fn format(&self, opts: &ReportOptions) -> String {
        let mut out = self.header(opts.exact);
        out.push('\n');
        let grew: Vec<&EntryReport> = self.entries.iter().filter(|e| e.change() > 0).collect();
        if grew.is_empty() {
            out.push_str("no context grew.\n");
        } else {
            out.push_str(&ranked_table(self.metric, &grew, opts));
            out.push('\n');
            out.push_str(&self.verdict_lines(&grew, opts));
        }
        if self.snapshots.len() == 2 {
            out.push_str(
                "note: with two snapshots a verdict only says which way a context moved; compare \
                 a series (memctx diff DIR) to tell steady growth from a step.\n",
            );
        }
        if !self.sites.is_empty() {
            out.push('\n');
            out.push_str(&self.site_lines(opts));
        }
        out
    }

    /// What was compared, the grand totals and where most growth is.
    fn header(&self, exact: bool) -> String {
        let n = self.snapshots.len();
        let mut out = String::new();
        let _ = write!(
            out,
            "memctx diff: {n} snapshots ({})",
            self.formats.join(", ")
        );
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            let _ = write!(out, ", PID {}", pids.join(", "));
        }
        if let Some(ms) = self.span_ms {
            let _ = write!(out, ", over {}", fmt_span(ms));
        }
        out.push('\n');
        let _ = writeln!(out, "  {}", self.sources_line());
        let (g0, g1) = (self.grand_total[0], self.grand_total[n - 1]);
        let _ = writeln!(
            out,
            "grand total: {} -> {} ({})",
            fmt_bytes(g0, exact),
            fmt_bytes(g1, exact),
            fmt_delta(i128::from(g1) - i128::from(g0), exact)
        );
        let _ = writeln!(
            out,
            "metric: {} bytes (verdicts, ranking and +/-; --metric {} for {} bytes)",
            self.metric,
            other_metric(self.metric),
            other_metric(self.metric)
        );
        if let Some((e, g)) = self.hotspot() {
            let _ = writeln!(
                out,
                "most growth is under: {} (its subtree {} total bytes)",
                e.display_path(),
                fmt_delta(g, exact)
            );
        }
        out
    }

    /// The snapshots compared: `FILE: dumps #1 to #N`, `A -> B`, or `A -> ... -> Z`.
    fn sources_line(&self) -> String {
        let n = self.snapshots.len();
        let files: Vec<&str> = self
            .snapshots
            .iter()
            .map(|s| s.rsplit_once('#').map_or(s.as_str(), |(f, _)| f))
            .collect();
        if self.snapshots.iter().all(|s| s.contains('#')) && files.iter().all(|f| *f == files[0]) {
            format!("{}: dumps #1 to #{n}", files[0])
        } else if n <= 4 {
            self.snapshots.join(" -> ")
        } else {
            format!("{} -> ... -> {}", self.snapshots[0], self.snapshots[n - 1])
        }
    }

    /// The verdict lines of the entries that grew: growing first, then plateau and noisy.
    fn verdict_lines(&self, grew: &[&EntryReport], opts: &ReportOptions) -> String {
        let mut out = String::new();
        let mut lines: Vec<&EntryReport> = grew
            .iter()
            .copied()
            .filter(|e| {
                matches!(
                    e.verdict,
                    Verdict::Growing | Verdict::Plateau | Verdict::Noisy
                )
            })
            .collect();
        lines.sort_by_key(|e| e.verdict); // stable: growth order within a verdict
        if lines.is_empty() {
            out.push_str("no context is growing.\n");
        }
        for e in lines.iter().take(opts.top) {
            out.push_str(&self.verdict_line(e, opts.exact));
            out.push('\n');
        }
        if !self.growing().any(|_| true) {
            out.push_str("no context is growing steadily.\n");
        }
        out
    }

    /// Per-site growth: the sites that grew, with their frames.
    fn site_lines(&self, opts: &ReportOptions) -> String {
        let exact = opts.exact;
        let site_grew: Vec<&SiteReport> = self.sites.iter().filter(|s| s.growth() > 0).collect();
        if site_grew.is_empty() {
            return "per-site growth: no allocation site grew.\n".to_string();
        }
        let mut out = "per-site growth (live chunks by allocation site):\n".to_string();
        for s in site_grew.iter().take(opts.sites) {
            let (b0, b1) = s.bytes.first_last().unwrap_or((0, 0));
            let (c0, c1) = s.count.first_last().unwrap_or((0, 0));
            let thread = s
                .thread
                .as_ref()
                .map(|t| format!("[{t}] "))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<9} {} ({} -> {}, chunks {c0} -> {c1}) in {thread}{}",
                s.verdict,
                fmt_delta(s.growth(), exact),
                fmt_bytes(b0, exact),
                fmt_bytes(b1, exact),
                s.context.join("/")
            );
            if s.frames.is_empty() {
                out.push_str("      (no frames recorded)\n");
            }
            for f in s.frames.iter().take(6) {
                let _ = writeln!(out, "      {f}");
            }
        }
        out
    }
}

fn other_metric(m: Metric) -> Metric {
    match m {
        Metric::Total => Metric::Used,
        Metric::Used => Metric::Total,
    }
}

/// The ranked table of the entries that grew, by the report's metric.
fn ranked_table(metric: Metric, grew: &[&EntryReport], opts: &ReportOptions) -> String {
    let exact = opts.exact;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>3}  {:<9} {:>12} {:>25} {:>13}  context (own bytes)",
        "#",
        "verdict",
        format!("{metric} +/-"),
        format!("{metric} first -> last"),
        "count"
    );
    for (i, e) in grew.iter().take(opts.top).enumerate() {
        let (v0, v1) = e.series().first_last().unwrap_or((0, 0));
        let (c0, c1) = e.count.first_last().unwrap_or((0, 0));
        let _ = writeln!(
            out,
            "{:>3}  {:<9} {:>12} {:>25} {:>13}  {}",
            i + 1,
            e.verdict,
            fmt_delta(e.change(), exact),
            format!("{} -> {}", fmt_bytes(v0, exact), fmt_bytes(v1, exact)),
            format!("{c0} -> {c1}"),
            e.display_path()
        );
    }
    if grew.len() > opts.top {
        let _ = writeln!(
            out,
            "     ... {} more that grew (--top to show more)",
            grew.len() - opts.top
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(1_258_291), "1.2 MB");
        assert_eq!(fmt_delta(-2048, false), "-2.0 kB");
    }
}
