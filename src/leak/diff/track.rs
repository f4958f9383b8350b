//! A path's series, built one dump at a time: [`Track`] sums what the current dump holds of the
//! path and writes the sums into its [`Samples`] once a later dump (or the end) comes, filling the
//! dumps the path was absent from with zeros — and with unknowns where its thread did not answer
//! ([`Facts`]). Only dumps the path is in cost work, so a series of thousands of dumps with
//! short-lived contexts is not walked path by path at every dump.

use std::collections::HashMap;

use super::samples::Samples;

/// What a track sums within one dump, and the values it writes per dump.
pub(super) trait Sums: Clone + Default {
    /// The values of one dump, one per column.
    type Row: AsRef<[Option<u64>]>;

    /// The row of a dump: unknown throughout where the thread did not answer (`known` false),
    /// zeros where the path was not in the dump (`sums` is `None`); `detail` says whether the
    /// dump records used bytes.
    fn row(sums: Option<&Self>, known: bool, detail: bool) -> Self::Row;
}

/// What is known of each dump as a whole, for the dumps a path was absent from.
#[derive(Clone, Default)]
pub(super) struct Facts {
    /// Per thread key, the dumps the thread did not answer, in order.
    missing: HashMap<usize, Vec<usize>>,
    /// The dumps that record no used bytes, in order.
    no_detail: Vec<usize>,
}

impl Facts {
    pub(super) fn thread_missing(&mut self, thread: usize, d: usize) {
        let dumps = self.missing.entry(thread).or_default();
        if dumps.last() != Some(&d) {
            dumps.push(d);
        }
    }

    pub(super) fn without_detail(&mut self, d: usize) {
        self.no_detail.push(d);
    }

    fn known(&self, thread: usize, d: usize) -> bool {
        !self
            .missing
            .get(&thread)
            .is_some_and(|m| m.binary_search(&d).is_ok())
    }

    fn detail(&self, d: usize) -> bool {
        self.no_detail.binary_search(&d).is_err()
    }

    /// The dumps in `from..to` that are unknown for `thread` or record no used bytes, in order.
    fn exceptions(&self, thread: usize, from: usize, to: usize) -> Vec<usize> {
        let within = |v: &[usize]| {
            let (a, b) = (
                v.partition_point(|&x| x < from),
                v.partition_point(|&x| x < to),
            );
            v[a..b].to_vec()
        };
        let mut out = within(&self.no_detail);
        if let Some(m) = self.missing.get(&thread) {
            out.extend(within(m));
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// One path's series (of its thread `thread`), complete up to the dump it was last in.
#[derive(Clone)]
pub(super) struct Track<S> {
    thread: usize,
    /// The sums of dump `at`, the last dump the path was in.
    cur: S,
    at: usize,
    /// The first dump the path was in.
    first: usize,
    /// One series per column, written up to dump `at` (excluded).
    cols: Vec<Samples>,
}

/// A track brought to the end of the series.
pub(super) struct Finished {
    /// One series per column, one value per dump.
    pub(super) cols: Vec<Samples>,
    /// Whether the path is in the first dump and in the last.
    pub(super) in_first: bool,
    pub(super) in_last: bool,
}

impl<S: Sums> Track<S> {
    /// The track of a path first seen in dump `d`: absent from the dumps before it.
    pub(super) fn new(thread: usize, d: usize, facts: &Facts) -> Self {
        let columns = S::row(None, false, false).as_ref().len();
        let mut t = Track {
            thread,
            cur: S::default(),
            at: d,
            first: d,
            cols: vec![Samples::new(); columns],
        };
        t.fill_absent(0, d, facts);
        t
    }

    /// The sums of dump `d`, the dump being read; the dumps before it are written first.
    pub(super) fn sums(&mut self, d: usize, facts: &Facts) -> &mut S {
        if d != self.at {
            self.close(facts);
            self.fill_absent(self.at + 1, d, facts);
            self.at = d;
        }
        &mut self.cur
    }

    /// The series over `n` dumps, the path absent from those after the last it was in.
    pub(super) fn finish(mut self, n: usize, facts: &Facts) -> Finished {
        self.close(facts);
        self.fill_absent(self.at + 1, n, facts);
        Finished {
            cols: self.cols,
            in_first: self.first == 0,
            in_last: self.at + 1 == n,
        }
    }

    /// Writes the sums of dump `at`.
    fn close(&mut self, facts: &Facts) {
        let sums = std::mem::take(&mut self.cur);
        let row = S::row(
            Some(&sums),
            facts.known(self.thread, self.at),
            facts.detail(self.at),
        );
        self.write(&row, 1);
    }

    /// Writes the dumps `from..to`, which do not hold the path: zeros, in runs between the
    /// dumps that are unknown or record no used bytes.
    fn fill_absent(&mut self, from: usize, to: usize, facts: &Facts) {
        if from >= to {
            return;
        }
        let plain = S::row(None, true, true);
        let mut d = from;
        for e in facts.exceptions(self.thread, from, to) {
            self.write(&plain, e - d);
            let row = S::row(None, facts.known(self.thread, e), facts.detail(e));
            self.write(&row, 1);
            d = e + 1;
        }
        self.write(&plain, to - d);
    }

    fn write(&mut self, row: &S::Row, n: usize) {
        for (col, v) in self.cols.iter_mut().zip(row.as_ref()) {
            col.push_n(*v, n);
        }
    }
}
