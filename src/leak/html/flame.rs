//! The differential flame graph: the last dump's frames, coloured by their growth since the first
//! (inferno's differential mode: red grew, blue shrank).

use std::io::BufReader;

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
    opts.title = format!(
        "Growth by {metric} bytes: {} against {}",
        last.source, first.source
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
