//! The differential flame graph: the last dump's frames, coloured by their growth since the first
//! (inferno's differential mode: red grew, blue shrank).

use std::io::BufReader;
use std::path::Path;

use crate::leak::parse::Dump;
use crate::leak::render::{folded_stacks, under_root, FlameOptions};
use crate::leak::Metric;

/// The folded stacks of a dump under a root frame that names what the graph shows.
fn stacks(dump: &Dump, metric: Metric, root: &str) -> String {
    let opts = FlameOptions {
        metric,
        idents: false,
    };
    let lines = under_root(&folded_stacks(dump, &opts), root);
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// The SVG of the differential flame graph of `last` against `first`.
///
/// # Errors
/// Inferno's error (nothing to draw: every context holds 0 bytes).
pub fn differential(first: &Dump, last: &Dump, metric: Metric) -> std::io::Result<String> {
    let root = format!("{metric} bytes, last dump against the first");
    let (before, after) = (stacks(first, metric, &root), stacks(last, metric, &root));
    let mut folded = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        BufReader::new(before.as_bytes()),
        BufReader::new(after.as_bytes()),
        &mut folded,
    )?;
    let folded = String::from_utf8_lossy(&folded).into_owned();
    let mut opts = inferno::flamegraph::Options::default();
    // The dumps by file name: the page's heading names the series, and a title wider than the
    // graph runs under inferno's search button.
    opts.title = format!(
        "Growth by {metric} bytes: {} against {}",
        file_name(&last.source),
        file_name(&first.source)
    );
    opts.subtitle = Some("width: the last dump; red grew, blue shrank".into());
    opts.count_name = "bytes".into();
    opts.name_type = "Context:".into();
    // A fixed width: inside the page's iframe, inferno's default (the viewport's) would be the
    // iframe's initial 300 pixels.
    opts.image_width = Some(1200);
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut svg)?;
    Ok(String::from_utf8_lossy(&svg).into_owned())
}

/// The last component of a dump's source (`dir/server.log#2` gives `server.log#2`).
fn file_name(source: &str) -> &str {
    Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(source)
}

/// The height the SVG's root element declares, in pixels.
pub fn height(svg: &str) -> Option<u32> {
    let root = &svg[svg.find("<svg")?..];
    let root = &root[..root.find('>')?];
    let at = root.find(" height=\"")? + " height=\"".len();
    root[at..].split('"').next()?.parse().ok()
}
