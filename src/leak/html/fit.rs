//! The growth rate of a series: a least-squares line through (hours, bytes), its R², and when it
//! reaches a limit.

/// A least-squares line through a series' points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Bytes per unit of x (per hour when the dumps carry times, else per dump).
    pub slope: f64,
    /// Bytes at x = 0.
    pub intercept: f64,
    /// The coefficient of determination: 1 for points on a line, near 0 for no linear trend.
    pub r2: f64,
}

/// The least-squares line through `points` (x, y); `None` with fewer than two distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    // A flat series lies exactly on its (flat) line.
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some(Fit {
        slope,
        intercept: my - slope * mx,
        r2,
    })
}

impl Fit {
    /// The x at which the line reaches `limit`, if it is rising.
    pub fn reaches(&self, limit: f64) -> Option<f64> {
        (self.slope > 0.0).then(|| (limit - self.intercept) / self.slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_fits_exactly_and_projects() {
        let f = fit(&[(0.0, 100.0), (1.0, 200.0), (2.0, 300.0)]).unwrap();
        assert!((f.slope - 100.0).abs() < 1e-9 && (f.intercept - 100.0).abs() < 1e-9);
        assert!((f.r2 - 1.0).abs() < 1e-12);
        assert!((f.reaches(1000.0).unwrap() - 9.0).abs() < 1e-9);
    }

    #[test]
    fn noise_has_a_low_r2_and_a_falling_line_never_reaches() {
        let f = fit(&[(0.0, 10.0), (1.0, 0.0), (2.0, 10.0), (3.0, 0.0)]).unwrap();
        assert!(f.r2 < 0.3, "{f:?}");
        let down = fit(&[(0.0, 10.0), (1.0, 5.0)]).unwrap();
        assert_eq!(down.reaches(100.0), None);
        assert_eq!(fit(&[(1.0, 1.0)]), None);
    }
}
