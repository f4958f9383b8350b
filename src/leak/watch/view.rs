//! The watch's live view: the ranking of contexts, growing ones first, each with a sparkline of
//! its size over the series.

use std::io::{self, Write};

use super::WatchOptions;
use crate::leak::diff::{human_bytes, DiffOptions, DiffStream, EntryReport, Verdict};
use crate::leak::Metric;

/// The eight heights of a sparkline.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Points of a sparkline: the newest dumps.
pub const SPARK_WIDTH: usize = 24;

/// A sparkline of the newest [`SPARK_WIDTH`] values, scaled between their minimum and maximum
/// (a flat line when they are equal); a dump without the context is a space.
pub fn sparkline(values: &[Option<u64>]) -> String {
    let tail = &values[values.len().saturating_sub(SPARK_WIDTH)..];
    let present = tail.iter().flatten();
    let (lo, hi) = (
        present.clone().min().copied().unwrap_or(0),
        present.max().copied().unwrap_or(0),
    );
    tail.iter()
        .map(|v| match v {
            None => ' ',
            Some(_) if hi == lo => BARS[0],
            Some(v) => BARS[((v - lo) as u128 * 7 / u128::from(hi - lo)) as usize],
        })
        .collect()
}

/// `+1.5 MB`, `-8.0 kB`, `+0 bytes`.
fn signed(d: i128) -> String {
    let sign = if d < 0 { '-' } else { '+' };
    format!(
        "{sign}{}",
        human_bytes(u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

/// The rows of the view: growing contexts first, then by growth, largest first.
fn ranked(entries: &[EntryReport], top: usize) -> Vec<&EntryReport> {
    let mut rows: Vec<&EntryReport> = entries.iter().collect();
    rows.sort_by_key(|e| (e.verdict != Verdict::Growing, std::cmp::Reverse(e.change())));
    rows.truncate(top);
    rows
}

/// The ranking of the series so far as lines of text.
pub fn ranking(dumps: &DiffStream, top: usize, metric: Metric) -> Vec<String> {
    if dumps.len() < 2 {
        return vec!["(the ranking starts with the second dump)".to_owned()];
    }
    let report = match dumps.report(&DiffOptions { metric }) {
        Ok(r) => r,
        Err(e) => return vec![format!("memctx: cannot compare the dumps: {e}")],
    };
    let mut lines = vec![format!(
        "{:<9} {:>11} {:>10}  {:<SPARK_WIDTH$}  context (own {metric} bytes)",
        "verdict", "+/-", "now", "size over the last dumps"
    )];
    for e in ranked(&report.entries, top) {
        let now = e.series().last_known().unwrap_or(0);
        let tail: Vec<Option<u64>> = (e.series().iter())
            .skip(e.series().len().saturating_sub(SPARK_WIDTH))
            .collect();
        lines.push(format!(
            "{:<9} {:>11} {:>10}  {:<SPARK_WIDTH$}  {}",
            e.verdict,
            signed(e.change()),
            human_bytes(now),
            sparkline(&tail),
            e.display_path()
        ));
    }
    lines
}

/// Draws the view: the ranking, and on a terminal (over the previous drawing) the status lines
/// above it (how the dumps are taken, the newest dumps' stop times).
///
/// # Errors
/// Writing to `w`.
pub fn draw(
    w: &mut dyn Write,
    dumps: &DiffStream,
    status: &[String],
    opts: &WatchOptions,
) -> io::Result<()> {
    if opts.live {
        // Home the cursor and clear the screen (ANSI), then redraw.
        write!(w, "\x1b[H\x1b[2J")?;
        writeln!(w, "{}", status[0])?;
        for line in status.iter().skip(1).rev().take(2).rev() {
            writeln!(w, "{line}")?;
        }
    }
    writeln!(
        w,
        "memctx watch: {} dumps in {}",
        dumps.len(),
        opts.out.display()
    )?;
    for line in ranking(dumps, opts.top, opts.metric) {
        writeln!(w, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_between_min_and_max() {
        assert_eq!(sparkline(&[Some(0), Some(7), Some(14)]), "▁▄█");
        assert_eq!(sparkline(&[Some(5), None, Some(5)]), "▁ ▁");
        let long: Vec<Option<u64>> = (0..30).map(Some).collect();
        assert_eq!(sparkline(&long).chars().count(), SPARK_WIDTH);
        assert!(sparkline(&long).starts_with('▁') && sparkline(&long).ends_with('█'));
    }
}
