//! The report as JSON (`memctx diff --json`): the verdicts and each context's series.
//!
//! One set of borrowing structs describes the document, their fields in name order (the order a
//! [`Value`]'s object keeps): [`Report::to_json`] makes a [`Value`] of it, and
//! [`Report::write_json`] writes it straight out, so the JSON of a long series is never built in
//! memory (a [`Value`] costs tens of bytes per number).

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use super::{EntryKind, EntryReport, Report, Samples, SiteReport};
use crate::leak::Metric;

/// The document: `format` (`"memctx-diff"`), the metric, the snapshots, the grand totals, the
/// entries ranked as in the text report, the allocation sites, the warnings.
#[derive(Serialize)]
struct ReportJson<'a> {
    entries: Vec<EntryJson<'a>>,
    format: &'static str,
    formats: &'a [&'static str],
    grand_total: &'a [u64],
    metric: Metric,
    pids: &'a [u32],
    sites: Vec<SiteJson<'a>>,
    snapshots: &'a [String],
    span_ms: Option<u64>,
    version: u32,
    warnings: &'a [String],
}

/// One entry: its path, kind, verdict, change by the metric and the series of total bytes, used
/// bytes and context counts (`null` where unknown).
#[derive(Serialize)]
struct EntryJson<'a> {
    change: i64,
    count: &'a Samples,
    kind: &'static str,
    names: Vec<&'a str>,
    note: &'a Option<String>,
    path: String,
    thread: &'a Option<String>,
    total: &'a Samples,
    used: &'a Samples,
    verdict: &'static str,
}

/// One allocation site: its context, frames, verdict, change and series of live bytes and chunks.
#[derive(Serialize)]
struct SiteJson<'a> {
    bytes: &'a Samples,
    change: i64,
    context: String,
    count: &'a Samples,
    frames: &'a [String],
    thread: &'a Option<String>,
    verdict: &'static str,
}

impl Report {
    /// The report as one JSON document: `format` (`"memctx-diff"`), the metric, the snapshots,
    /// the grand totals, and per entry its path, kind, verdict, change by the metric and the
    /// series of total bytes, used bytes and context counts (`null` where unknown), ranked as in
    /// the text report; then the allocation sites.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.json()).expect("the report's JSON holds no map with other keys")
    }

    /// Writes [`Report::to_json`]'s document, pretty-printed (as `{:#}` prints the value), to
    /// `w` as it goes.
    ///
    /// # Errors
    ///
    /// Writing to `w`.
    pub fn write_json(&self, w: &mut dyn Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *w, &self.json()).map_err(std::io::Error::from)
    }

    fn json(&self) -> ReportJson<'_> {
        ReportJson {
            entries: self.entries.iter().map(entry_json).collect(),
            format: "memctx-diff",
            formats: &self.formats,
            grand_total: &self.grand_total,
            metric: self.metric,
            pids: &self.pids,
            sites: self.sites.iter().map(site_json).collect(),
            snapshots: &self.snapshots,
            span_ms: self.span_ms,
            version: 1,
            warnings: &self.warnings,
        }
    }
}

fn entry_json(e: &EntryReport) -> EntryJson<'_> {
    let kind = match e.kind {
        EntryKind::Group => "group",
        EntryKind::Folded => "folded",
        EntryKind::Context => "context",
    };
    EntryJson {
        change: i64::try_from(e.change()).unwrap_or(i64::MAX),
        count: &e.count,
        kind,
        names: e.path.iter().map(|s| s.name.as_str()).collect(),
        note: &e.note,
        path: e.display_path(),
        thread: &e.thread,
        total: &e.total,
        used: &e.used,
        verdict: e.verdict.as_str(),
    }
}

fn site_json(s: &SiteReport) -> SiteJson<'_> {
    SiteJson {
        bytes: &s.bytes,
        change: i64::try_from(s.growth()).unwrap_or(i64::MAX),
        context: s.context.join("/"),
        count: &s.count,
        frames: &s.frames,
        thread: &s.thread,
        verdict: s.verdict.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use crate::leak::{diff, parse_str};

    /// The document written as it goes is the value's, byte for byte (its fields in the order a
    /// value's object keeps its keys).
    #[test]
    fn written_json_is_the_values() {
        let text = |cache: u64| {
            format!(
                "TopMemoryContext: 8192 total in 1 blocks; 0 free (0 chunks); 8192 used\n  \
                 CacheMemoryContext: {cache} total in 1 blocks; 100 free (1 chunks); {} used\n",
                cache - 100
            )
        };
        let dumps: Vec<_> = [1024, 2048, 4096]
            .iter()
            .map(|&c| parse_str(&text(c), "d").unwrap().remove(0))
            .collect();
        let report = diff(&dumps).unwrap();
        let mut written = Vec::new();
        report.write_json(&mut written).unwrap();
        let value = report.to_json();
        assert_eq!(String::from_utf8(written).unwrap(), format!("{value:#}"));
        assert_eq!(
            value["entries"][0]["path"],
            "TopMemoryContext/CacheMemoryContext"
        );
        assert_eq!(
            value["entries"][0]["total"],
            serde_json::json!([1024, 2048, 4096])
        );
    }
}
