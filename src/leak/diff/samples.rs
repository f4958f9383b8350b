//! [`Samples`]: one value per dump (`None` where unknown), stored compactly.
//!
//! A diff over thousands of dumps follows every context through every dump, and most contexts
//! hold still between two dumps or move by a few kilobytes. So a series is kept as a byte string
//! of LEB128 tokens, each with a two-bit tag: a change (the zigzag-coded difference to the last
//! known value), an unknown value, or a run of repeats of the value before. A context that never
//! changes costs a few bytes whatever the number of dumps; one that grows by a page per dump costs
//! two or three bytes a dump, where a `Vec<Option<u64>>` costs sixteen.

use std::fmt;

use serde::ser::{Serialize, Serializer};

/// Tag of a token carrying the zigzag-coded difference to the last known value.
const CHANGE: u128 = 0;
/// Tag of a token saying the value is repeated `token >> 2` more times.
const REPEAT: u128 = 1;
/// Tag of the token of an unknown value.
const UNKNOWN: u128 = 2;

/// A series of sizes, one per dump, oldest first; `None` where a dump does not tell (its thread
/// did not answer, or it records no used bytes). Built by pushing values; read by iterating.
///
/// Two series are equal when their values are (the encoding is canonical).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Samples {
    /// The tokens written.
    tokens: Vec<u8>,
    /// The number of values, counting `pending` ones.
    len: usize,
    /// The last value pushed (`None` before the first).
    last: Option<Option<u64>>,
    /// Repeats of `last` pushed but not yet written (a run grows until another value comes).
    pending: u64,
    /// The last known value written: the base of the next change.
    base: u64,
    /// Whether a known value was written.
    any_known: bool,
}

impl Samples {
    /// An empty series.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one value.
    pub fn push(&mut self, v: Option<u64>) {
        self.push_n(v, 1);
    }

    /// Appends `n` copies of a value.
    pub fn push_n(&mut self, v: Option<u64>, n: usize) {
        if n == 0 {
            return;
        }
        self.len += n;
        if self.last == Some(v) {
            self.pending += n as u64;
            return;
        }
        self.flush_run();
        match v {
            None => write_token(&mut self.tokens, UNKNOWN),
            Some(x) => {
                let diff = x.wrapping_sub(self.base) as i64;
                let zigzag = ((diff << 1) ^ (diff >> 63)) as u64;
                write_token(&mut self.tokens, u128::from(zigzag) << 2 | CHANGE);
                self.base = x;
                self.any_known = true;
            }
        }
        self.last = Some(v);
        self.pending = n as u64 - 1;
    }

    fn flush_run(&mut self) {
        if self.pending > 0 {
            write_token(&mut self.tokens, u128::from(self.pending) << 2 | REPEAT);
            self.pending = 0;
        }
    }

    /// The number of values.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no values.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, oldest first.
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            samples: self,
            at: 0,
            value: None,
            base: 0,
            repeats: 0,
            tail: false,
        }
    }

    /// The known values, oldest first (what a verdict judges).
    #[must_use]
    pub fn known(&self) -> Vec<u64> {
        self.iter().flatten().collect()
    }

    /// The first and the last known value, when there is one.
    #[must_use]
    pub fn first_last(&self) -> Option<(u64, u64)> {
        let first = self.iter().flatten().next()?;
        Some((first, self.last_known()?))
    }

    /// The last known value.
    #[must_use]
    pub fn last_known(&self) -> Option<u64> {
        self.any_known.then_some(self.base)
    }

    /// The value of dump `i` (`None` also past the end): a walk from the start.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<u64> {
        self.iter().nth(i).flatten()
    }

    /// The values as a vector.
    #[must_use]
    pub fn to_vec(&self) -> Vec<Option<u64>> {
        self.iter().collect()
    }
}

/// Appends `t` as LEB128: seven bits a byte, the high bit set on all but the last.
fn write_token(out: &mut Vec<u8>, mut t: u128) {
    while t >= 0x80 {
        out.push((t as u8 & 0x7f) | 0x80);
        t >>= 7;
    }
    out.push(t as u8);
}

/// Reads the LEB128 token at `*at`, moving past it.
fn read_token(bytes: &[u8], at: &mut usize) -> u128 {
    let (mut t, mut shift) = (0u128, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        t |= u128::from(b & 0x7f) << shift;
        if b < 0x80 {
            return t;
        }
        shift += 7;
    }
}

/// The values of a [`Samples`], oldest first.
pub struct Iter<'a> {
    samples: &'a Samples,
    /// The next token's offset.
    at: usize,
    /// The value repeats repeat.
    value: Option<u64>,
    /// The last known value decoded.
    base: u64,
    /// Repeats of `value` still to yield.
    repeats: u64,
    /// Whether the pending repeats (not written as a token) were taken.
    tail: bool,
}

impl Iterator for Iter<'_> {
    type Item = Option<u64>;

    fn next(&mut self) -> Option<Option<u64>> {
        loop {
            if self.repeats > 0 {
                self.repeats -= 1;
                return Some(self.value);
            }
            let tokens = &self.samples.tokens;
            if self.at == tokens.len() {
                if self.tail {
                    return None;
                }
                self.tail = true;
                self.repeats = self.samples.pending;
                continue;
            }
            let t = read_token(tokens, &mut self.at);
            match t & 3 {
                REPEAT => self.repeats = (t >> 2) as u64,
                UNKNOWN => {
                    self.value = None;
                    return Some(None);
                }
                _ => {
                    let zigzag = (t >> 2) as u64;
                    let diff = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
                    self.base = self.base.wrapping_add(diff as u64);
                    self.value = Some(self.base);
                    return Some(self.value);
                }
            }
        }
    }
}

impl<'a> IntoIterator for &'a Samples {
    type Item = Option<u64>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<Option<u64>> for Samples {
    fn from_iter<I: IntoIterator<Item = Option<u64>>>(iter: I) -> Self {
        let mut s = Samples::new();
        for v in iter {
            s.push(v);
        }
        s
    }
}

impl fmt::Debug for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq<[Option<u64>]> for Samples {
    fn eq(&self, other: &[Option<u64>]) -> bool {
        self.len == other.len() && self.iter().eq(other.iter().copied())
    }
}

impl<const N: usize> PartialEq<[Option<u64>; N]> for Samples {
    fn eq(&self, other: &[Option<u64>; N]) -> bool {
        *self == other[..]
    }
}

impl PartialEq<Vec<Option<u64>>> for Samples {
    fn eq(&self, other: &Vec<Option<u64>>) -> bool {
        *self == other[..]
    }
}

/// As a JSON array, `null` where unknown.
impl Serialize for Samples {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(u64::MAX)),
            (0u64..4).prop_map(|x| Some(8192 * x)),
            any::<u64>().prop_map(Some),
        ]
    }

    proptest! {
        /// Any series reads back as pushed, whatever its runs, unknowns and jumps (the extremes
        /// of u64 included); its first and last known values and its length agree.
        #[test]
        fn reads_back_as_pushed(values in prop::collection::vec(value(), 0..60)) {
            let s: Samples = values.iter().copied().collect();
            prop_assert_eq!(s.to_vec(), values.clone());
            prop_assert_eq!(s.len(), values.len());
            let known: Vec<u64> = values.iter().flatten().copied().collect();
            prop_assert_eq!(s.known(), known.clone());
            prop_assert_eq!(s.first_last(), known.first().zip(known.last()).map(|(a, b)| (*a, *b)));
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(s.get(i), *v);
            }
        }
    }

    proptest! {
        /// Runs pushed at once are the same series as their values pushed one by one.
        #[test]
        fn runs_are_their_values(runs in prop::collection::vec((value(), 0usize..4), 0..30)) {
            let mut at_once = Samples::new();
            let mut one_by_one = Samples::new();
            for &(v, n) in &runs {
                at_once.push_n(v, n);
                (0..n).for_each(|_| one_by_one.push(v));
            }
            let values: Vec<Option<u64>> =
                runs.iter().flat_map(|&(v, n)| std::iter::repeat(v).take(n)).collect();
            prop_assert_eq!(at_once.to_vec(), values);
            prop_assert_eq!(at_once, one_by_one);
        }
    }

    #[test]
    fn runs_cost_one_token() {
        let mut s = Samples::new();
        s.push_n(Some(8192), 100_000);
        s.push(None);
        s.push_n(Some(8192), 3);
        assert_eq!(s.len(), 100_004);
        assert!(s.tokens.len() < 10, "{} bytes", s.tokens.len());
        assert_eq!(s.get(100_000), None);
        assert_eq!(s.get(100_003), Some(8192));
        assert_eq!(
            serde_json::to_string(&s.iter().take(2).collect::<Samples>()).unwrap(),
            "[8192,8192]"
        );
    }
}
