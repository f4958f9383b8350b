//! The one measure of a context's size that decides verdicts, ranking and the `+/-` column.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::parse::Context;

/// Which bytes of a context are compared: what `memctx diff`, `flame`, `report` and `watch` take
/// with `--metric total|used`.
///
/// Total bytes (the default) are what the blocks of a context hold, what the article compares and
/// what the process costs; they move in steps as blocks double. Used bytes (total minus free)
/// follow live data more closely but are not recorded by every input (the gdb script records
/// only total bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `total_bytes`.
    #[default]
    Total,
    /// `used_bytes` (`total_bytes - free_bytes`).
    Used,
}

impl Metric {
    /// `total` or `used`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Total => "total",
            Metric::Used => "used",
        }
    }

    /// The context's bytes by this metric; `None` for used bytes the input does not record.
    #[must_use]
    pub fn of(self, c: &Context) -> Option<u64> {
        match self {
            Metric::Total => Some(c.total_bytes),
            Metric::Used => c.used_bytes,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "total" => Ok(Metric::Total),
            "used" => Ok(Metric::Used),
            _ => Err(format!("unknown metric {s:?}: expected `total` or `used`")),
        }
    }
}
