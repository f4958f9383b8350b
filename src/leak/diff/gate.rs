//! The judgment a CI gate makes: did any context grow steadily, by more than a threshold?
//! `memctx diff --fail-on growing` and a host's own test ([`check_growth`]) make the same one.

use std::fmt;

use super::{diff_with, DiffError, DiffOptions, EntryReport, Report, Verdict};
use crate::leak::parse::Dump;
use crate::leak::Metric;

/// What counts as a leak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthGate {
    /// The bytes compared (total by default).
    pub metric: Metric,
    /// Growth (last minus first, by `metric`) at or below which a growing context is let pass.
    pub min_growth: u64,
}

impl Report {
    /// The entries judged [`Verdict::Growing`] that grew by more than `min_growth` bytes of the
    /// report's metric, largest first.
    #[must_use]
    pub fn growing_beyond(&self, min_growth: u64) -> Vec<&EntryReport> {
        self.entries
            .iter()
            .filter(|e| e.verdict == Verdict::Growing && e.change() > i128::from(min_growth))
            .collect()
    }
}

/// Why [`check_growth`] failed.
#[derive(Clone, Debug, PartialEq)]
pub enum GrowthError {
    /// The dumps could not be compared.
    Diff(DiffError),
    /// Contexts grew steadily: the report, and the paths and growth of the ones that did.
    Growing {
        /// The whole comparison.
        report: Box<Report>,
        /// `(display path, growth in bytes of the metric)`, largest first.
        growing: Vec<(String, i128)>,
    },
}

impl fmt::Display for GrowthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrowthError::Diff(e) => write!(f, "{e}"),
            GrowthError::Growing { report, growing } => {
                write!(
                    f,
                    "{} context(s) growing over {} snapshots ({} bytes):",
                    growing.len(),
                    report.snapshots.len(),
                    report.metric
                )?;
                for (path, g) in growing {
                    write!(f, "\n  {path}: +{g} bytes")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for GrowthError {}

/// Compares a series of dumps and fails when a context grows steadily by more than
/// `gate.min_growth` bytes: what `memctx diff --fail-on growing` does, for a host's own test.
///
/// # Errors
///
/// [`GrowthError::Diff`] when the dumps cannot be compared (fewer than two, or used bytes asked
/// of dumps without them); [`GrowthError::Growing`] naming the growing contexts.
///
/// # Examples
///
/// A host's test that takes a snapshot of its thread's tree after each round of work (what the
/// README's leak-hunting section shows):
///
/// ```
/// use memctx::leak::{check_growth, Dump, GrowthError, GrowthGate};
/// use memctx::{BlockSizes, MemoryContext};
///
/// // The code under test: it keeps 4 kB in the cache per round and never frees it.
/// fn handle_requests(cache: MemoryContext) {
///     for _ in 0..4 {
///         let _kept = cache.alloc(1024);
///     }
/// }
///
/// let cache = MemoryContext::top().new_child("RequestCache", BlockSizes::DEFAULT);
/// let mut dumps = Vec::new();
/// for round in 0..5 {
///     handle_requests(cache);
///     let snap = memctx::dump::snapshot(); // this thread's tree, now
///     dumps.push(Dump::from_snapshot(snap, &format!("round {round}")).unwrap());
/// }
/// let err = check_growth(&dumps, &GrowthGate::default()).unwrap_err();
/// assert!(matches!(err, GrowthError::Growing { .. }));
/// assert!(err.to_string().contains("TopMemoryContext/RequestCache: +"));
/// // A threshold above the growth lets it pass.
/// let gate = GrowthGate { min_growth: 1 << 20, ..GrowthGate::default() };
/// assert!(check_growth(&dumps, &gate).is_ok());
/// cache.delete();
/// ```
pub fn check_growth(dumps: &[Dump], gate: &GrowthGate) -> Result<Report, GrowthError> {
    let opts = DiffOptions {
        metric: gate.metric,
    };
    let report = diff_with(dumps, &opts).map_err(GrowthError::Diff)?;
    let growing: Vec<(String, i128)> = report
        .growing_beyond(gate.min_growth)
        .iter()
        .map(|e| (e.display_path(), e.change()))
        .collect();
    if growing.is_empty() {
        Ok(report)
    } else {
        Err(GrowthError::Growing {
            report: Box::new(report),
            growing,
        })
    }
}
