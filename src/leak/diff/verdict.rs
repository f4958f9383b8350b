//! The verdict on a series of sizes: growing, plateau, noisy, shrinking or stable.

use std::fmt;

/// How a series of sizes moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Steady growth: up in the steps that are not flat, never down (beyond noise), and still
    /// rising at the end; or a clear upward trend with small dips (see [`verdict`]).
    Growing,
    /// Grew, then held still for the last third of the series.
    Plateau,
    /// Up and down without a clear trend.
    Noisy,
    /// Steady shrinking (the mirror of growing).
    Shrinking,
    /// Did not change beyond noise.
    Stable,
}

impl Verdict {
    /// The verdict as a word: `growing`, `plateau`, `noisy`, `shrinking`, `stable`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Growing => "growing",
            Verdict::Plateau => "plateau",
            Verdict::Noisy => "noisy",
            Verdict::Shrinking => "shrinking",
            Verdict::Stable => "stable",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Classifies a series of sizes, oldest first.
///
/// The rule, in order:
///
/// 1. Fewer than two values, or a range (max − min) of 0 or at most 0.1% of the largest value:
///    [`Verdict::Stable`].
/// 2. With at least two steps: if the series has held still at its end (the longest run of last
///    values within 5% of the range) for at least as many steps as it took to get there, at a
///    level at least half the range above the first value: [`Verdict::Plateau`] (grew, then
///    stopped). A staircase whose flat runs are no longer than the climb before them is not a
///    plateau: that is how total bytes grow under a steady leak, a block at a time, each block as
///    large as all before it.
/// 3. Each step is *up*, *down* or *flat*; flat when its size is under a quarter of the average
///    step (range / steps), which absorbs jitter. No down step: [`Verdict::Growing`] (monotone
///    non-decreasing, positive slope). No up step: [`Verdict::Shrinking`].
/// 4. Both: a least-squares line through the points; if it rises, fits well (R² ≥ 0.8), there are
///    more up steps than down ones and the last value is above the first: [`Verdict::Growing`]
///    (growth with small dips); the mirror image: [`Verdict::Shrinking`]. Otherwise
///    [`Verdict::Noisy`].
///
/// # Examples
///
/// ```
/// use memctx::leak::{verdict, Verdict};
///
/// assert_eq!(verdict(&[100, 200, 300, 400, 500]), Verdict::Growing);
/// assert_eq!(verdict(&[100, 300, 500, 500, 500]), Verdict::Plateau);
/// assert_eq!(verdict(&[100, 400, 150, 380, 120]), Verdict::Noisy);
/// assert_eq!(verdict(&[100, 100, 100]), Verdict::Stable);
/// ```
#[must_use]
pub fn verdict(values: &[u64]) -> Verdict {
    let n = values.len();
    if n < 2 {
        return Verdict::Stable;
    }
    let max = values.iter().copied().max().unwrap_or(0);
    let min = values.iter().copied().min().unwrap_or(0);
    let range = max - min;
    if range == 0 || range.saturating_mul(1000) <= max {
        return Verdict::Stable;
    }
    let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    let range_f = range as f64;

    if is_plateau(&v, range_f) {
        return Verdict::Plateau;
    }
    let (ups, downs) = count_steps(&v, range_f);
    if downs == 0 {
        return Verdict::Growing;
    }
    if ups == 0 {
        return Verdict::Shrinking;
    }

    let (slope, r2) = least_squares(&v);
    let (first, last) = (v[0], v[n - 1]);
    if slope > 0.0 && r2 >= 0.8 && ups > downs && last > first {
        Verdict::Growing
    } else if slope < 0.0 && r2 >= 0.8 && downs > ups && last < first {
        Verdict::Shrinking
    } else {
        Verdict::Noisy
    }
}

/// Rule 2: the flat tail (the longest run of last values within 5% of the range) spans at least
/// one step and at least as many steps as came before it, at least half the range above the first
/// value.
fn is_plateau(v: &[f64], range: f64) -> bool {
    let n = v.len();
    if n < 3 {
        return false;
    }
    let (mut lo, mut hi) = (v[n - 1], v[n - 1]);
    let mut start = n - 1;
    while start > 0 {
        let x = v[start - 1];
        if hi.max(x) - lo.min(x) > 0.05 * range {
            break;
        }
        lo = lo.min(x);
        hi = hi.max(x);
        start -= 1;
    }
    let held = n - 1 - start;
    held >= 1 && held >= start && lo - v[0] >= 0.5 * range
}

/// Rule 3: the number of up and down steps, not counting flat ones (under a quarter of the
/// average step).
fn count_steps(v: &[f64], range: f64) -> (usize, usize) {
    let flat = range / (4.0 * (v.len() - 1) as f64);
    let (mut ups, mut downs) = (0usize, 0usize);
    for w in v.windows(2) {
        let d = w[1] - w[0];
        if d.abs() < flat {
            continue;
        }
        if d > 0.0 {
            ups += 1;
        } else {
            downs += 1;
        }
    }
    (ups, downs)
}

/// Slope and R² of the least-squares line through `(i, v[i])`.
fn least_squares(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = v.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, &y) in v.iter().enumerate() {
        let dx = i as f64 - mean_x;
        let dy = y - mean_y;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return (0.0, 0.0);
    }
    let slope = sxy / sxx;
    (slope, (sxy * sxy) / (sxx * syy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_rules() {
        assert_eq!(verdict(&[1]), Verdict::Stable);
        assert_eq!(verdict(&[5, 5, 5, 5]), Verdict::Stable);
        assert_eq!(verdict(&[100, 200]), Verdict::Growing);
        assert_eq!(verdict(&[200, 100]), Verdict::Shrinking);
        // Steps, like blocks doubling, are still growth while the last step rises.
        assert_eq!(verdict(&[8, 8, 16, 16, 32]), Verdict::Growing);
        // ... and while the flat run at the end is no longer than the climb before it (the demo's
        // CacheMemoryContext, in kB of total bytes).
        assert_eq!(
            verdict(&[32, 64, 128, 128, 128, 128, 256, 256, 256, 256]),
            Verdict::Growing
        );
        // A step that then held as long as the climb took is a plateau.
        assert_eq!(verdict(&[512, 4096, 4096, 4096]), Verdict::Plateau);
        // Growth with small dips.
        assert_eq!(verdict(&[100, 200, 180, 300, 280, 400]), Verdict::Growing);
        // Plateau with jitter.
        assert_eq!(verdict(&[100, 300, 500, 495, 505, 500]), Verdict::Plateau);
        assert_eq!(verdict(&[100, 200, 200]), Verdict::Plateau);
        assert_eq!(verdict(&[100, 400, 150, 380, 120]), Verdict::Noisy);
        // Tiny relative change is stable.
        assert_eq!(verdict(&[1_000_000, 1_000_100, 1_000_050]), Verdict::Stable);
    }
}
