//! `memctx report`: one self-contained HTML page about a series — for the top contexts a chart
//! of total and used bytes over time with the growth rate (a least-squares fit and its R²) and,
//! given a limit, when the fit reaches it; the growth of allocation sites (memctx debug-build
//! snapshots); and a differential flame graph of the last dump against the first.
//!
//! Everything is inline (SVG, CSS, a few lines of JS of our own, the flame graph's own SVG in an
//! `iframe srcdoc`): the page needs no network. The page checks its own charts once loaded: it
//! rasterises each chart into a canvas, counts the pixels that are not background, and writes
//! the count into the chart's `data-inked` attribute and a summary line (`#render-check`), which a
//! browser test reads.

mod chart;
pub mod fit;
mod flame;

use std::fmt::Write as _;

use crate::leak::diff::{
    diff_with, human_bytes, DiffError, DiffOptions, EntryReport, Report, Samples,
};
use crate::leak::parse::Dump;
use crate::leak::Metric;
use chart::Line;
use fit::Fit;

/// What the report shows.
#[derive(Clone, Debug)]
pub struct HtmlOptions {
    /// The bytes of verdicts, ranking, fit and flame graph widths.
    pub metric: Metric,
    /// Contexts charted.
    pub top: usize,
    /// Sites listed.
    pub sites: usize,
    /// A size the projection is made to.
    pub limit: Option<u64>,
    /// The page title.
    pub title: String,
}

/// Escapes text for HTML (and SVG) content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses a size: bytes, or a number with `kB`, `MB`, `GB`, `TB` (powers of 1024, as
/// PostgreSQL's sizes; `K`, `KiB`, ... too).
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (value, unit) = crate::leak::watch::number_and_unit(s.trim())
        .ok_or_else(|| format!("{s:?}: expected a size such as 512MB or 2GB"))?;
    let power = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (kB, MB, GB, TB)")),
    };
    Ok((value * 1024f64.powi(power)) as u64)
}

/// The charts' x axis: time since the first dump, in a unit that suits the series' span (a
/// watch of a few seconds is drawn in seconds, a day in hours), or the dump's number when some
/// dump carries no time. Growth rates are stated per hour whatever the unit.
#[derive(Clone, Copy)]
struct Axis {
    /// The unit's name on the axis.
    name: &'static str,
    /// Seconds per unit; `None` when x is the dump's number.
    seconds: Option<f64>,
}

impl Axis {
    const DUMPS: Axis = Axis {
        name: "dump",
        seconds: None,
    };

    /// The unit for a span of `secs` seconds.
    fn for_span(secs: f64) -> Axis {
        let (name, seconds) = match secs {
            s if s < 120.0 => ("s", 1.0),
            s if s < 7200.0 => ("min", 60.0),
            _ => ("hours", 3600.0),
        };
        Axis {
            name,
            seconds: Some(seconds),
        }
    }

    /// `+1.2 MB per hour` (or `per dump`) for a slope in bytes per unit of this axis.
    fn rate(self, slope: f64) -> String {
        match self.seconds {
            Some(secs) => format!("{} per hour", signed(slope * 3600.0 / secs)),
            None => format!("{} per dump", signed(slope)),
        }
    }
}

/// The x of each dump on the axis that suits the series.
fn x_axis(dumps: &[Dump]) -> (Vec<f64>, Axis) {
    let times: Option<Vec<u64>> = dumps.iter().map(|d| d.timestamp_ms).collect();
    match times {
        Some(t) if t.last() > t.first() => {
            let axis = Axis::for_span((t[t.len() - 1] - t[0]) as f64 / 1000.0);
            let per_unit = 1000.0 * axis.seconds.unwrap_or(1.0);
            let xs = t.iter().map(|&ms| (ms - t[0]) as f64 / per_unit).collect();
            (xs, axis)
        }
        _ => ((1..=dumps.len()).map(|i| i as f64).collect(), Axis::DUMPS),
    }
}

fn points(xs: &[f64], series: &Samples) -> Vec<(f64, f64)> {
    xs.iter()
        .zip(series)
        .filter_map(|(&x, v)| v.map(|v| (x, v as f64)))
        .collect()
}

/// `+1.2 MB`, `-300 bytes`, for a signed byte count.
fn signed(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(v.abs() as u64))
}

/// `in 6.0 hours`, `in 12 min`, `in 40 s`, or `after 3.5 more dumps`, for `x` units of `axis`.
fn time_to(axis: Axis, x: f64) -> String {
    let Some(secs) = axis.seconds else {
        return format!("after {x:.1} more dumps");
    };
    duration_text(x * secs)
}

/// `in 30 ms`, `in 2.5 s`, `in 40 s`, `in 12 min`, `in 6.0 hours`.
fn duration_text(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("in {:.0} ms", s * 1000.0),
        s if s < 10.0 => format!("in {s:.1} s"),
        s if s < 120.0 => format!("in {s:.0} s"),
        s if s < 7200.0 => format!("in {:.0} min", s / 60.0),
        s => format!("in {:.1} hours", s / 3600.0),
    }
}

/// The sentence on a fit: its rate, R², and the projection to the limit.
fn fit_text(fit: Option<Fit>, axis: Axis, last: (f64, f64), limit: Option<u64>) -> String {
    let Some(f) = fit else {
        return "too few points for a fit".into();
    };
    let mut s = format!(
        "growth {} (least-squares fit, R² = {:.3})",
        axis.rate(f.slope),
        f.r2
    );
    if let Some(limit) = limit {
        let _ = match f.reaches(limit as f64) {
            _ if last.1 >= limit as f64 => write!(s, "; already above {}", human_bytes(limit)),
            Some(x) => write!(
                s,
                "; reaches {} {} after the last dump",
                human_bytes(limit),
                time_to(axis, (x - last.0).max(0.0))
            ),
            None => write!(s, "; not rising: never reaches {}", human_bytes(limit)),
        };
    }
    s
}

/// One context's section: a chart of total and used bytes with the metric's fit.
fn entry_section(e: &EntryReport, xs: &[f64], axis: Axis, opts: &HtmlOptions) -> String {
    let metric_pts = points(xs, e.series());
    let f = fit::fit(&metric_pts);
    let mut lines = vec![Line {
        label: "total bytes",
        colour: "#1f77b4",
        points: points(xs, &e.total),
        dashed: false,
    }];
    if e.used.last_known().is_some() {
        lines.push(Line {
            label: "used bytes",
            colour: "#2ca02c",
            points: points(xs, &e.used),
            dashed: false,
        });
    }
    let range = (xs[0], xs[xs.len() - 1]);
    if let Some(f) = f {
        lines.push(Line {
            label: "fit",
            colour: "#d62728",
            points: vec![
                (range.0, f.intercept + f.slope * range.0),
                (range.1, f.intercept + f.slope * range.1),
            ],
            dashed: true,
        });
    }
    let path = e.display_path();
    let title = format!("{path}: {} bytes over time", opts.metric);
    let last = metric_pts.last().copied().unwrap_or((range.1, 0.0));
    format!(
        "<section class=\"context\"><h3>{} <span class=\"verdict {}\">{}</span></h3>\
         <figure data-context=\"{}\">{}<figcaption>{}: {}</figcaption></figure></section>\n",
        escape(&path),
        e.verdict,
        e.verdict,
        escape(&path),
        chart::svg(&title, axis.name, range, &lines),
        escape(&format!("{} bytes", opts.metric)),
        escape(&fit_text(f, axis, last, opts.limit))
    )
}

/// The per-site table (debug-build snapshots), largest growth first.
fn sites_section(report: &Report, xs: &[f64], axis: Axis, n: usize) -> String {
    if report.sites.is_empty() {
        return "<p>No allocation sites: the snapshots were not taken by a debug build \
                (<code>--features debug-contexts</code>).</p>"
            .into();
    }
    let mut rows = String::new();
    for s in report.sites.iter().take(n) {
        let rate = fit::fit(&points(xs, &s.bytes)).map_or("?".into(), |f| axis.rate(f.slope));
        let (first, last) = s.bytes.first_last().unwrap_or((0, 0));
        let _ = write!(
            rows,
            "<tr class=\"site\"><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            escape(&s.context.join("/")),
            s.verdict,
            human_bytes(first),
            human_bytes(last),
            escape(&rate),
            escape(&s.frames.iter().take(4).cloned().collect::<Vec<_>>().join("\n"))
        );
    }
    format!(
        "<table id=\"sites\"><tr><th>context</th><th>verdict</th><th>live bytes</th>\
         <th>growth</th><th>allocated from</th></tr>{rows}</table>"
    )
}

/// What a page is drawn from: the diff, the dumps' headers (their times), and the first and the
/// last dump in full (the flame graph) — so a series read as a stream need not be held.
pub struct PageInput<'a> {
    /// The diff of the series, by the page's metric.
    pub report: &'a Report,
    /// The dumps compared, oldest first (headers suffice: only their times are read).
    pub dumps: &'a [Dump],
    /// The first dump, with its trees.
    pub first: &'a Dump,
    /// The last dump, with its trees.
    pub last: &'a Dump,
}

/// The page of a series held in memory.
///
/// # Errors
/// What [`diff_with`] refuses (fewer than two dumps, used bytes the dumps do not record), or a
/// flame graph that cannot be drawn.
pub fn page(dumps: &[Dump], opts: &HtmlOptions) -> Result<String, DiffError> {
    let report = diff_with(
        dumps,
        &DiffOptions {
            metric: opts.metric,
        },
    )?;
    let input = PageInput {
        report: &report,
        dumps,
        first: &dumps[0],
        last: &dumps[dumps.len() - 1],
    };
    page_of(&input, opts)
}

/// The page of a series already compared (read as a stream: see [`PageInput`]).
///
/// # Errors
/// A flame graph that cannot be drawn.
pub fn page_of(input: &PageInput<'_>, opts: &HtmlOptions) -> Result<String, DiffError> {
    let report = input.report;
    let (xs, axis) = x_axis(input.dumps);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1><p class=\"summary\">{} dumps ({}){}; verdicts, ranking, fits and the flame \
         graph by <b>{} bytes</b>.</p>",
        escape(&opts.title),
        input.dumps.len(),
        escape(&report.formats.join(", ")),
        report.span_ms.map_or(String::new(), |ms| {
            duration_text(ms as f64 / 1000.0).replacen("in ", " over ", 1)
        }),
        opts.metric
    );
    body.push_str("<p id=\"render-check\">charts not checked yet</p>\n<h2>Top contexts</h2>\n");
    for e in report.entries.iter().take(opts.top) {
        body.push_str(&entry_section(e, &xs, axis, opts));
    }
    body.push_str("<h2>Allocation sites</h2>\n");
    body.push_str(&sites_section(report, &xs, axis, opts.sites));
    body.push_str("<h2>Differential flame graph: last dump against the first</h2>\n");
    let svg = flame::differential(input.first, input.last, opts.metric)
        .map_err(|e| DiffError(format!("drawing the flame graph: {e}")))?;
    // The frame as tall as the graph, which its page shows without margins and as a block (an
    // inline one sits on a text line, a few pixels taller), so it needs no scroll bar; the
    // stylesheet's height is the fallback.
    let fit = flame::height(&svg).map_or(String::new(), |h| format!(" style=\"height:{h}px\""));
    let doc = format!("<style>body{{margin:0}}svg{{display:block}}</style>{svg}");
    let _ = write!(
        body,
        "<iframe id=\"flame\" title=\"differential flame graph\"{fit} srcdoc=\"{}\"></iframe>",
        escape(&doc)
    );
    Ok(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n",
        escape(&opts.title)
    ))
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
section.context{display:inline-block;vertical-align:top;margin:0 1em 1em 0}\
h3{font-size:1em;margin:.2em 0}.verdict{font-weight:normal;color:#555}.verdict.growing{color:#a00}\
figure{margin:0}figcaption{font-size:.85em;max-width:560px}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}\
pre{margin:0;font-size:.8em}iframe#flame{width:100%;height:520px;border:1px solid #ccc}";

/// Rasterises each chart and counts its non-background pixels: proof, for a test in a real
/// browser, that the charts drew.
const SCRIPT: &str = "window.addEventListener('load',function(){\
var charts=document.querySelectorAll('svg.chart'),done=0,inked=0;\
charts.forEach(function(svg){var img=new Image();\
img.onload=function(){var c=document.createElement('canvas');c.width=svg.width.baseVal.value;\
c.height=svg.height.baseVal.value;var g=c.getContext('2d');g.drawImage(img,0,0);\
var d=g.getImageData(0,0,c.width,c.height).data,n=0;\
for(var i=0;i<d.length;i+=4){if(d[i+3]>0&&(d[i]<200||d[i+1]<200||d[i+2]<200))n++;}\
svg.parentNode.setAttribute('data-inked',n);if(n>0)inked++;done++;\
if(done===charts.length)document.getElementById('render-check').textContent=\
'charts drawn: '+inked+' of '+charts.length;};\
img.src='data:image/svg+xml;charset=utf-8,'+encodeURIComponent(new XMLSerializer().serializeToString(svg));});});";
