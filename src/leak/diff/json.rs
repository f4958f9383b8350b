//! The report as JSON (`memctx diff --json`): the verdicts and each context's series.

use serde_json::{json, Value};

use super::{EntryKind, EntryReport, Report, SiteReport};

impl Report {
    /// The report as one JSON document: `format` (`"memctx-diff"`), the metric, the snapshots,
    /// the grand totals, and per entry its path, kind, verdict, change by the metric and the
    /// series of total bytes, used bytes and context counts (`null` where unknown), ranked as in
    /// the text report; then the allocation sites.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "format": "memctx-diff",
            "version": 1,
            "metric": self.metric,
            "snapshots": self.snapshots,
            "formats": self.formats,
            "pids": self.pids,
            "span_ms": self.span_ms,
            "grand_total": self.grand_total,
            "entries": self.entries.iter().map(entry_json).collect::<Vec<_>>(),
            "sites": self.sites.iter().map(site_json).collect::<Vec<_>>(),
            "warnings": self.warnings,
        })
    }
}

fn entry_json(e: &EntryReport) -> Value {
    let kind = match e.kind {
        EntryKind::Group => "group",
        EntryKind::Folded => "folded",
        EntryKind::Context => "context",
    };
    json!({
        "path": e.display_path(),
        "thread": e.thread,
        "names": e.path.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "kind": kind,
        "verdict": e.verdict.as_str(),
        "change": i64::try_from(e.change()).unwrap_or(i64::MAX),
        "total": e.total,
        "used": e.used,
        "count": e.count,
        "note": e.note,
    })
}

fn site_json(s: &SiteReport) -> Value {
    json!({
        "thread": s.thread,
        "context": s.context.join("/"),
        "frames": s.frames,
        "verdict": s.verdict.as_str(),
        "change": i64::try_from(s.growth()).unwrap_or(i64::MAX),
        "bytes": s.bytes,
        "count": s.count,
    })
}
