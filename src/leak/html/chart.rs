//! A line chart of one context's total and used bytes over time, as inline SVG.

use super::escape;
use crate::leak::diff::human_bytes;

/// Chart size in CSS pixels, and the margin left for the axis labels.
const W: f64 = 560.0;
const H: f64 = 200.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 24.0;

/// One line of a chart.
pub struct Line<'a> {
    /// Legend text.
    pub label: &'a str,
    /// CSS colour.
    pub colour: &'a str,
    /// Points (x, bytes); x in the chart's unit.
    pub points: Vec<(f64, f64)>,
    /// Dashed (a fitted line).
    pub dashed: bool,
}

/// An SVG chart of `lines` between x in `[x0, x1]`, titled `title`, x axis in `unit`.
pub fn svg(title: &str, unit: &str, (x0, x1): (f64, f64), lines: &[Line<'_>]) -> String {
    let ymax = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0_f64, f64::max);
    let scale = Scale { x0, x1, ymax };
    let mut s = format!(
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\"><title>{}</title>\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>",
        escape(title)
    );
    s.push_str(&axes(&scale, unit));
    for (i, line) in lines.iter().enumerate() {
        s.push_str(&polyline(&scale, i, line));
    }
    s.push_str("</svg>");
    s
}

/// From data to pixels: x in `[x0, x1]` across, bytes up to `ymax` up.
struct Scale {
    x0: f64,
    x1: f64,
    ymax: f64,
}

impl Scale {
    fn x(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(f64::MIN_POSITIVE) * (W - LEFT - 10.0)
    }

    fn y(&self, y: f64) -> f64 {
        (H - BOTTOM) - y / self.ymax * (H - BOTTOM - 10.0)
    }
}

/// The two axes, the byte scale's top and 0, and the x axis's end in `unit`.
fn axes(scale: &Scale, unit: &str) -> String {
    let (axis_x, axis_y) = (scale.x(scale.x0), scale.y(0.0));
    format!(
        "<line x1=\"{axis_x}\" y1=\"10\" x2=\"{axis_x}\" y2=\"{axis_y}\" stroke=\"#888\"/>\
         <line x1=\"{axis_x}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#888\"/>\
         <text x=\"4\" y=\"16\" font-size=\"11\">{}</text>\
         <text x=\"4\" y=\"{axis_y}\" font-size=\"11\">0</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        W - 10.0,
        escape(&human_bytes(scale.ymax as u64)),
        W - 10.0,
        H - 6.0,
        escape(&format!("{} {unit}", axis_number(scale.x1)))
    )
}

/// Line `i` of a chart and its legend entry.
fn polyline(scale: &Scale, i: usize, line: &Line<'_>) -> String {
    let pts: Vec<String> = line
        .points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", scale.x(x), scale.y(y)))
        .collect();
    let dash = if line.dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    format!(
        "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} \
         points=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{}\">{}</text>",
        line.colour,
        pts.join(" "),
        LEFT + 8.0,
        24.0 + 14.0 * i as f64,
        line.colour,
        escape(line.label)
    )
}

/// An axis value with the precision it needs.
fn axis_number(x: f64) -> String {
    if x >= 10.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
