//! The phases of [`super::diff`] before ranking: intern each context's path, accumulate its
//! bytes per dump (same-named siblings summed into one group), then fold the sums into series and
//! judge them.

use std::collections::{HashMap, HashSet};

use super::verdict::verdict;
use super::{EntryKind, EntryReport, Segment, SiteReport};
use crate::leak::parse::{Context, Dump, Tree};
use crate::leak::Metric;

/// Interned paths: each node is (parent key, segment); the root of every path is a thread segment.
#[derive(Default)]
pub(super) struct PathKeys {
    map: HashMap<(usize, Segment), usize>,
    nodes: Vec<(usize, Segment)>,
}

/// The parent key of a thread segment.
const ROOT: usize = usize::MAX;

impl PathKeys {
    fn intern(&mut self, parent: usize, seg: Segment) -> usize {
        if let Some(&k) = self.map.get(&(parent, seg.clone())) {
            return k;
        }
        self.nodes.push((parent, seg.clone()));
        let k = self.nodes.len() - 1;
        self.map.insert((parent, seg), k);
        k
    }

    /// The path of `key` without its thread segment, and the thread name.
    fn path(&self, key: usize) -> (String, Vec<Segment>) {
        let mut segs = Vec::new();
        let mut at = key;
        while at != ROOT {
            let (p, seg) = &self.nodes[at];
            segs.push(seg.clone());
            at = *p;
        }
        segs.reverse();
        let thread = segs.remove(0).name;
        (thread, segs)
    }

    /// The key of the thread segment `key` descends from.
    fn thread_of(&self, mut key: usize) -> usize {
        while self.nodes[key].0 != ROOT {
            key = self.nodes[key].0;
        }
        key
    }
}

/// One entry's sums in one dump.
#[derive(Clone, Copy, Default)]
pub(super) struct Acc {
    total: u64,
    used: Option<u64>,
    count: u64,
    subtree: u64,
    present: bool,
}

impl Acc {
    fn add(&mut self, c: &Context, subtree: u64) {
        self.used = match (self.present, self.used, c.used_bytes) {
            (false, _, u) => u,
            (true, Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        self.total = self.total.saturating_add(c.total_bytes);
        self.count = self.count.saturating_add(c.folded.unwrap_or(1));
        self.subtree = self.subtree.saturating_add(subtree);
        self.present = true;
    }
}

/// Live (bytes, chunks) of one site per dump.
type SiteSeries = Vec<Option<(u64, u64)>>;

/// A context's keys: its group (path of names) and its single (path of names and identifiers),
/// and whether it or an ancestor has an identifier.
#[derive(Clone, Copy)]
struct ContextKeys {
    group: usize,
    single: usize,
    has_ident: bool,
}

/// Everything [`super::diff`] gathers from the dumps before it builds entries.
pub(super) struct Accumulated {
    n: usize,
    /// Paths of names: the groups.
    groups: PathKeys,
    /// Paths of names and identifiers: single contexts.
    singles: PathKeys,
    group_sums: HashMap<usize, Vec<Acc>>,
    single_sums: HashMap<usize, Vec<Acc>>,
    group_of_single: HashMap<usize, usize>,
    /// Groups that are `N more child contexts` lines.
    folded: HashSet<usize>,
    /// Groups some of whose members are folded away in some dump.
    partial: HashSet<usize>,
    notes: HashMap<usize, String>,
    /// (thread group key, dump) where the thread did not answer.
    missing: HashSet<(usize, usize)>,
    sites: HashMap<(usize, Vec<String>), SiteSeries>,
    threads: Vec<String>,
}

impl Accumulated {
    /// Nothing accumulated yet.
    pub(super) fn new() -> Self {
        Accumulated {
            n: 0,
            groups: PathKeys::default(),
            singles: PathKeys::default(),
            group_sums: HashMap::new(),
            single_sums: HashMap::new(),
            group_of_single: HashMap::new(),
            folded: HashSet::new(),
            partial: HashSet::new(),
            notes: HashMap::new(),
            missing: HashSet::new(),
            sites: HashMap::new(),
            threads: Vec::new(),
        }
    }

    /// Interns every context's path and sums its bytes per dump.
    pub(super) fn from_dumps(dumps: &[Dump]) -> Self {
        let mut acc = Self::new();
        for dump in dumps {
            acc.add_dump(dump);
        }
        acc.pad();
        acc
    }

    /// Folds the next dump of the series into the sums; the dump is not needed afterwards.
    pub(super) fn add_dump(&mut self, dump: &Dump) {
        let d = self.n;
        self.n += 1;
        for tree in &dump.trees {
            self.add_tree(d, tree);
        }
    }

    /// Gives every series one slot per dump: a path absent from the last dumps has none there
    /// until now (an absent context sums to nothing; an absent site has no live bytes).
    pub(super) fn pad(&mut self) {
        let n = self.n;
        let sums = self.group_sums.values_mut();
        for v in sums.chain(self.single_sums.values_mut()) {
            v.resize(n, Acc::default());
        }
        for v in self.sites.values_mut() {
            v.resize(n, Some((0, 0)));
        }
    }

    fn add_tree(&mut self, d: usize, tree: &Tree) {
        let label = tree.thread.clone().unwrap_or_default();
        if !self.threads.contains(&label) {
            self.threads.push(label.clone());
        }
        let seg = Segment {
            name: label,
            ident: None,
        };
        let thread = ContextKeys {
            group: self.groups.intern(ROOT, seg.clone()),
            single: self.singles.intern(ROOT, seg),
            has_ident: false,
        };
        if tree.missing {
            self.missing.insert((thread.group, d));
            return;
        }
        let keys = self.intern_tree(tree, thread);
        let subtree = tree.subtree_totals();
        for (i, c) in tree.contexts.iter().enumerate() {
            self.add_context(d, c, keys[i], subtree[i]);
        }
        self.note_folds(tree, &keys);
        for s in &tree.sites {
            let key = (keys[s.context].group, s.frames.clone());
            let series = self.sites.entry(key).or_default();
            *slot(series, d, Some((0, 0))) = Some((s.bytes, s.count));
        }
    }

    /// Interns each context's paths; parents come before children, so theirs are known.
    fn intern_tree(&mut self, tree: &Tree, thread: ContextKeys) -> Vec<ContextKeys> {
        let mut keys: Vec<ContextKeys> = Vec::with_capacity(tree.contexts.len());
        for c in &tree.contexts {
            let parent = c.parent.map_or(thread, |p| keys[p]);
            let name = c.display_name().to_string();
            let ident = c.display_ident().map(str::to_string);
            let has_ident = parent.has_ident || ident.is_some();
            let group = self.groups.intern(
                parent.group,
                Segment {
                    name: name.clone(),
                    ident: None,
                },
            );
            let single = self.singles.intern(parent.single, Segment { name, ident });
            keys.push(ContextKeys {
                group,
                single,
                has_ident,
            });
        }
        keys
    }

    fn add_context(&mut self, d: usize, c: &Context, keys: ContextKeys, subtree: u64) {
        let sums = self.group_sums.entry(keys.group).or_default();
        slot(sums, d, Acc::default()).add(c, subtree);
        if keys.has_ident {
            let sums = self.single_sums.entry(keys.single).or_default();
            slot(sums, d, Acc::default()).add(c, subtree);
            self.group_of_single.insert(keys.single, keys.group);
        }
    }

    /// Marks folded lines' groups (with a note on what their printed siblings are), and the
    /// groups that only sum the printed members because some of their siblings (or their
    /// ancestors' siblings) are folded away.
    fn note_folds(&mut self, tree: &Tree, keys: &[ContextKeys]) {
        if tree.contexts.iter().all(|c| c.folded.is_none()) {
            return;
        }
        let children = tree.children();
        let mut partial = vec![false; tree.contexts.len()];
        for (i, c) in tree.contexts.iter().enumerate() {
            let Some(p) = c.parent else { continue };
            let folded_sibling = children[p]
                .iter()
                .any(|&s| tree.contexts[s].folded.is_some());
            partial[i] = partial[p] || folded_sibling;
            if c.folded.is_some() {
                self.folded.insert(keys[i].group);
                self.notes
                    .insert(keys[i].group, folded_note(tree, &children[p]));
            } else if partial[i] {
                self.partial.insert(keys[i].group);
            }
        }
    }
}

/// Builds entries from the accumulated sums: folds each entry's sums into its series (unknown
/// where its thread did not answer) and judges them.
pub(super) struct Judge<'a> {
    pub(super) acc: &'a Accumulated,
    pub(super) dumps: &'a [Dump],
    pub(super) metric: Metric,
}

impl Judge<'_> {
    fn show_thread(&self) -> bool {
        self.acc.threads.len() > 1
    }

    fn known(&self, thread_key: usize, d: usize) -> bool {
        !self.acc.missing.contains(&(thread_key, d))
    }

    /// One entry per group, plus one per single context worth following on its own.
    pub(super) fn entries(&self) -> Vec<EntryReport> {
        let acc = self.acc;
        let mut entries = Vec::new();
        for (&k, sums) in &acc.group_sums {
            let kind = if acc.folded.contains(&k) {
                EntryKind::Folded
            } else {
                EntryKind::Group
            };
            let note = acc.notes.get(&k).cloned().or_else(|| {
                acc.partial.contains(&k).then(|| {
                    "partial: some of these contexts are folded into an `N more child contexts` \
                     line in some dumps, and counted there"
                        .to_string()
                })
            });
            let thread = acc.groups.thread_of(k);
            entries.push(self.entry(&acc.groups, k, thread, sums, kind, note));
        }
        for (&k, sums) in &acc.single_sums {
            let g = acc.group_of_single[&k];
            if self.followed_alone(g, sums) {
                let thread = acc.groups.thread_of(g);
                entries.push(self.entry(&acc.singles, k, thread, sums, EntryKind::Context, None));
            }
        }
        entries
    }

    /// A single context with an identifier is followed on its own when its group holds others,
    /// it is in the first and the last dump, and its group is not a folded line.
    fn followed_alone(&self, group: usize, sums: &[Acc]) -> bool {
        let group_is_larger = self.acc.group_sums[&group].iter().any(|a| a.count > 1);
        let persistent = sums[0].present && sums[self.acc.n - 1].present;
        group_is_larger && persistent && !self.acc.folded.contains(&group)
    }

    /// Folds an entry's per-dump sums into its series and judges them.
    fn entry(
        &self,
        keys: &PathKeys,
        k: usize,
        thread_key: usize,
        sums: &[Acc],
        kind: EntryKind,
        note: Option<String>,
    ) -> EntryReport {
        let known = |d: usize| self.known(thread_key, d);
        let series = |f: fn(&Acc) -> u64| -> Vec<Option<u64>> {
            sums.iter()
                .enumerate()
                .map(|(d, a)| known(d).then(|| f(a)))
                .collect()
        };
        let total = series(|a| a.total);
        let used: Vec<Option<u64>> = sums
            .iter()
            .enumerate()
            .map(|(d, a)| match () {
                () if !known(d) => None,
                () if a.present => a.used,
                () => self.dumps[d].has_detail.then_some(0),
            })
            .collect();
        let judged: Vec<u64> = match self.metric {
            Metric::Total => total.iter().flatten().copied().collect(),
            Metric::Used => used.iter().flatten().copied().collect(),
        };
        let (thread, path) = keys.path(k);
        EntryReport {
            thread: self.show_thread().then_some(thread),
            path,
            kind,
            total,
            used,
            count: series(|a| a.count),
            subtree: series(|a| a.subtree),
            verdict: verdict(&judged),
            metric: self.metric,
            note,
        }
    }

    /// One report per allocation site, its live bytes judged like an entry's.
    pub(super) fn sites(&self) -> Vec<SiteReport> {
        let acc = self.acc;
        let mut out = Vec::new();
        for ((g, frames), vals) in &acc.sites {
            let (thread, path) = acc.groups.path(*g);
            let tk = acc.groups.thread_of(*g);
            let at = |d: usize| vals[d].filter(|_| self.known(tk, d));
            let bytes: Vec<Option<u64>> = (0..acc.n).map(|d| at(d).map(|v| v.0)).collect();
            let count = (0..acc.n).map(|d| at(d).map(|v| v.1)).collect();
            let series: Vec<u64> = bytes.iter().flatten().copied().collect();
            out.push(SiteReport {
                thread: self.show_thread().then_some(thread),
                context: path.into_iter().map(|s| s.name).collect(),
                frames: frames.clone(),
                verdict: verdict(&series),
                bytes,
                count,
            });
        }
        out
    }
}

/// Dump `d`'s slot of a series, the dumps before it that lacked the path filled with `fill`.
fn slot<T: Clone>(series: &mut Vec<T>, d: usize, fill: T) -> &mut T {
    if series.len() <= d {
        series.resize(d + 1, fill);
    }
    &mut series[d]
}

/// What the printed siblings of a folded line are: `probably CachedPlanSource: all 100 printed
/// siblings are` when they all have one name (PostgreSQL prints the first 100 children, so the
/// folded ones are likely the same), else the three commonest names with their counts.
fn folded_note(tree: &Tree, siblings: &[usize]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut printed = 0;
    for &s in siblings {
        let c = &tree.contexts[s];
        if c.folded.is_some() {
            continue;
        }
        printed += 1;
        let name = c.display_name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += 1,
            None => counts.push((name, 1)),
        }
    }
    if let [(name, _)] = counts[..] {
        return format!(
            "hidden in `N more child contexts` lines; probably {name}: all {printed} printed \
             siblings are"
        );
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let top: Vec<String> = counts
        .iter()
        .take(3)
        .map(|(name, k)| format!("{name} x{k}"))
        .collect();
    format!(
        "hidden in `N more child contexts` lines; the {printed} printed siblings: {}",
        top.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::parse_str;

    /// A parent with the printed children `names` and a folded line after them.
    fn folded_tree(names: &[&str]) -> Tree {
        let mut text =
            "TopMemoryContext: 8192 total in 1 blocks; 0 free (0 chunks); 8192 used\n".to_string();
        for n in names {
            text.push_str(&format!(
                "  {n}: 1024 total in 1 blocks; 0 free (0 chunks); 1024 used\n"
            ));
        }
        text.push_str("  7 more child contexts containing 7168 total in 7 blocks; 0 free (0 chunks); 7168 used\n");
        parse_str(&text, "t").unwrap().remove(0).trees.remove(0)
    }

    #[test]
    fn folded_note_names_the_likely_content() {
        let tree = folded_tree(&["CachedPlanSource"; 3]);
        let siblings = &tree.children()[0];
        assert_eq!(
            folded_note(&tree, siblings),
            "hidden in `N more child contexts` lines; probably CachedPlanSource: all 3 printed \
             siblings are"
        );
        let tree = folded_tree(&["b", "a", "b", "c", "d"]);
        assert_eq!(
            folded_note(&tree, &tree.children()[0]),
            "hidden in `N more child contexts` lines; the 5 printed siblings: b x2, a x1, c x1"
        );
    }
}
