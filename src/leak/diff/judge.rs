//! The last phase before ranking: each path's track, brought to the end of the series, becomes an
//! entry whose series of the chosen metric is judged ([`verdict`]).

use super::series::{Accumulated, PathKeys};
use super::track::Finished;
use super::verdict::verdict;
use super::{EntryKind, EntryReport, SiteReport};
use crate::leak::Metric;

/// The note on a group some of whose members are folded away in some dumps.
const PARTIAL: &str = "partial: some of these contexts are folded into an `N more child \
                       contexts` line in some dumps, and counted there";

/// Builds entries and site reports from what was accumulated.
pub(super) struct Judge {
    pub(super) acc: Accumulated,
    pub(super) metric: Metric,
}

impl Judge {
    /// One entry per group, plus one per single context worth following on its own: one with an
    /// identifier whose group holds others, present in the first and the last dump, not a
    /// folded line, and not the whole group in every dump (contexts under one identified
    /// ancestor, a portal's `ExecutorState/ExprContext`s, are their group again).
    pub(super) fn entries(&mut self) -> Vec<EntryReport> {
        let acc = &mut self.acc;
        let (n, show_thread) = (acc.n, acc.threads.len() > 1);
        let mut counts = vec![None; acc.group_tracks.len()];
        let mut entries = Vec::new();
        for (k, track) in std::mem::take(&mut acc.group_tracks)
            .into_iter()
            .enumerate()
        {
            let Some(track) = track else { continue };
            let done = track.finish(n, &acc.facts);
            let (kind, note) = if acc.folded.contains(&k) {
                (EntryKind::Folded, acc.notes.get(&k).cloned())
            } else {
                let partial = acc.partial.contains(&k).then(|| PARTIAL.to_string());
                (EntryKind::Group, partial)
            };
            let e = entry(&acc.groups, k, (kind, note, done), show_thread, self.metric);
            if e.count.iter().flatten().any(|c| c > 1) {
                counts[k] = Some(e.count.clone());
            }
            entries.push(e);
        }
        for (k, single) in std::mem::take(&mut acc.single_tracks)
            .into_iter()
            .enumerate()
        {
            let Some((group, track)) = single else {
                continue;
            };
            let done = track.finish(n, &acc.facts);
            let Some(group_count) = &counts[group] else {
                continue;
            };
            if done.in_first && done.in_last && !acc.folded.contains(&group) {
                let e = (EntryKind::Context, None, done);
                let e = entry(&acc.singles, k, e, show_thread, self.metric);
                if !e.count.iter().eq(group_count.iter()) {
                    entries.push(e);
                }
            }
        }
        entries
    }

    /// One report per allocation site, its live bytes judged like an entry's.
    pub(super) fn sites(&mut self) -> Vec<SiteReport> {
        let acc = &mut self.acc;
        let show_thread = acc.threads.len() > 1;
        let mut out = Vec::new();
        for ((g, frames), track) in std::mem::take(&mut acc.sites) {
            let (thread, path) = acc.groups.path(g);
            let [bytes, count] = columns(track.finish(acc.n, &acc.facts));
            out.push(SiteReport {
                thread: show_thread.then_some(thread),
                context: path.into_iter().map(|s| s.name).collect(),
                frames,
                verdict: verdict(&bytes.known()),
                bytes,
                count,
            });
        }
        out
    }
}

/// The columns of a finished track, as many as its sums have.
fn columns<const K: usize>(done: Finished) -> [super::Samples; K] {
    done.cols
        .try_into()
        .expect("a track has one column per value of its row")
}

/// The entry of path `k`, its metric's series judged.
fn entry(
    keys: &PathKeys,
    k: usize,
    (kind, note, done): (EntryKind, Option<String>, Finished),
    show_thread: bool,
    metric: Metric,
) -> EntryReport {
    let [total, used, count, subtree] = columns(done);
    let judged = match metric {
        Metric::Total => total.known(),
        Metric::Used => used.known(),
    };
    let (thread, path) = keys.path(k);
    EntryReport {
        thread: show_thread.then_some(thread),
        path,
        kind,
        total,
        used,
        count,
        subtree,
        verdict: verdict(&judged),
        metric,
        note,
    }
}
