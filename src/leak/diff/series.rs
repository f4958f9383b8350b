//! The phases of [`super::diff`] before ranking: intern each context's path and accumulate its
//! bytes per dump (same-named siblings summed into one group) into one [`Track`] per path; the
//! `judge` module then folds the tracks into series and judges them.

use std::collections::{HashMap, HashSet};

use hashbrown::{Equivalent, HashMap as PathMap};

use super::track::{Facts, Sums, Track};
use super::Segment;
use crate::leak::parse::{Context, Dump, Tree};

/// One interned path node: its parent's key and its segment.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Node {
    parent: usize,
    seg: Segment,
}

/// A [`Node`] looked up without building one: it hashes as the node does (the same fields in the
/// same order, `str` hashing as `String`), so no string is copied for a path already interned.
#[derive(Hash)]
struct NodeRef<'a> {
    parent: usize,
    name: &'a str,
    ident: Option<&'a str>,
}

impl Equivalent<Node> for NodeRef<'_> {
    fn equivalent(&self, n: &Node) -> bool {
        self.parent == n.parent && self.name == n.seg.name && self.ident == n.seg.ident.as_deref()
    }
}

/// Interned paths: each node is (parent key, segment); the root of every path is a thread segment.
#[derive(Clone, Default)]
pub(super) struct PathKeys {
    map: PathMap<Node, usize>,
    nodes: Vec<Node>,
}

/// The parent key of a thread segment.
const ROOT: usize = usize::MAX;

impl PathKeys {
    fn intern(&mut self, parent: usize, name: &str, ident: Option<&str>) -> usize {
        if let Some(&k) = self.map.get(&NodeRef {
            parent,
            name,
            ident,
        }) {
            return k;
        }
        let seg = Segment {
            name: name.to_string(),
            ident: ident.map(str::to_string),
        };
        let node = Node { parent, seg };
        self.nodes.push(node.clone());
        self.map.insert(node, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// The path of `key` without its thread segment, and the thread name.
    pub(super) fn path(&self, key: usize) -> (String, Vec<Segment>) {
        let mut segs = Vec::new();
        let mut at = key;
        while at != ROOT {
            let node = &self.nodes[at];
            segs.push(node.seg.clone());
            at = node.parent;
        }
        segs.reverse();
        let thread = segs.remove(0).name;
        (thread, segs)
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

/// An entry's columns: total, used, count, subtree (see [`super::EntryReport`]).
impl Sums for Acc {
    type Row = [Option<u64>; 4];

    fn row(sums: Option<&Acc>, known: bool, detail: bool) -> [Option<u64>; 4] {
        match sums {
            _ if !known => [None; 4],
            Some(a) => [Some(a.total), a.used, Some(a.count), Some(a.subtree)],
            None => [Some(0), detail.then_some(0), Some(0), Some(0)],
        }
    }
}

/// A site's live bytes and chunks in one dump, summed over the contexts of its group (same-named
/// siblings allocating from one line are one site, as they are one entry).
#[derive(Clone, Copy, Default)]
pub(super) struct Live {
    bytes: u64,
    count: u64,
}

/// A site's columns: live bytes, live chunks (an absent site has none).
impl Sums for Live {
    type Row = [Option<u64>; 2];

    fn row(sums: Option<&Live>, known: bool, _detail: bool) -> [Option<u64>; 2] {
        match sums {
            _ if !known => [None; 2],
            Some(l) => [Some(l.bytes), Some(l.count)],
            None => [Some(0); 2],
        }
    }
}

/// A context's keys: its group (path of names) and its single (path of names and identifiers),
/// and whether it or an ancestor has an identifier.
#[derive(Clone, Copy)]
struct ContextKeys {
    group: usize,
    single: usize,
    has_ident: bool,
}

/// A single context's track, with the key of its group.
pub(super) type SingleTrack = (usize, Track<Acc>);

/// Everything [`super::diff`] gathers from the dumps before it builds entries.
#[derive(Clone, Default)]
pub(super) struct Accumulated {
    pub(super) n: usize,
    /// Paths of names: the groups.
    pub(super) groups: PathKeys,
    /// Paths of names and identifiers: single contexts.
    pub(super) singles: PathKeys,
    /// The track of each group, by key (`None` for thread segments).
    pub(super) group_tracks: Vec<Option<Track<Acc>>>,
    /// The track of each single context that has an identifier (or an ancestor with one).
    pub(super) single_tracks: Vec<Option<SingleTrack>>,
    /// Groups that are `N more child contexts` lines.
    pub(super) folded: HashSet<usize>,
    /// Groups some of whose members are folded away in some dump.
    pub(super) partial: HashSet<usize>,
    pub(super) notes: HashMap<usize, String>,
    /// The dumps each thread did not answer, those without used bytes.
    pub(super) facts: Facts,
    pub(super) sites: HashMap<(usize, Vec<String>), Track<Live>>,
    pub(super) threads: Vec<String>,
}

/// The slot of `key` in `v`, grown to hold it.
fn slot<T>(v: &mut Vec<Option<T>>, key: usize) -> &mut Option<T> {
    if v.len() <= key {
        v.resize_with(key + 1, || None);
    }
    &mut v[key]
}

impl Accumulated {
    /// Interns every context's path and sums its bytes per dump.
    pub(super) fn from_dumps(dumps: &[Dump]) -> Self {
        let mut acc = Self::default();
        for dump in dumps {
            acc.add_dump(dump);
        }
        acc
    }

    /// Folds the next dump of the series into the sums; the dump is not needed afterwards.
    pub(super) fn add_dump(&mut self, dump: &Dump) {
        let d = self.n;
        self.n += 1;
        if !dump.has_detail {
            self.facts.without_detail(d);
        }
        for tree in &dump.trees {
            self.add_tree(d, tree);
        }
    }

    fn add_tree(&mut self, d: usize, tree: &Tree) {
        let label = tree.thread.as_deref().unwrap_or_default();
        if !self.threads.iter().any(|t| t == label) {
            self.threads.push(label.to_string());
        }
        let thread = ContextKeys {
            group: self.groups.intern(ROOT, label, None),
            single: self.singles.intern(ROOT, label, None),
            has_ident: false,
        };
        if tree.missing {
            self.facts.thread_missing(thread.group, d);
            return;
        }
        let keys = self.intern_tree(tree, thread);
        let subtree = tree.subtree_totals();
        for (i, c) in tree.contexts.iter().enumerate() {
            self.add_context(d, c, thread.group, keys[i], subtree[i]);
        }
        self.note_folds(tree, &keys);
        for s in &tree.sites {
            let key = (keys[s.context].group, s.frames.clone());
            let facts = &self.facts;
            let track = self
                .sites
                .entry(key)
                .or_insert_with(|| Track::new(thread.group, d, facts));
            let live = track.sums(d, facts);
            live.bytes = live.bytes.saturating_add(s.bytes);
            live.count = live.count.saturating_add(s.count);
        }
    }

    /// Interns each context's paths; parents come before children, so theirs are known.
    fn intern_tree(&mut self, tree: &Tree, thread: ContextKeys) -> Vec<ContextKeys> {
        let mut keys: Vec<ContextKeys> = Vec::with_capacity(tree.contexts.len());
        for c in &tree.contexts {
            let parent = c.parent.map_or(thread, |p| keys[p]);
            let name = c.display_name();
            let ident = c.display_ident();
            keys.push(ContextKeys {
                group: self.groups.intern(parent.group, name, None),
                single: self.singles.intern(parent.single, name, ident),
                has_ident: parent.has_ident || ident.is_some(),
            });
        }
        keys
    }

    fn add_context(&mut self, d: usize, c: &Context, thread: usize, keys: ContextKeys, sub: u64) {
        let facts = &self.facts;
        let group = slot(&mut self.group_tracks, keys.group);
        let track = group.get_or_insert_with(|| Track::new(thread, d, facts));
        track.sums(d, facts).add(c, sub);
        if keys.has_ident {
            let single = slot(&mut self.single_tracks, keys.single);
            let (_, track) =
                single.get_or_insert_with(|| (keys.group, Track::new(thread, d, facts)));
            track.sums(d, facts).add(c, sub);
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
