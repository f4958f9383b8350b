//! Comparing dumps over time: which context keeps growing.
//!
//! [`diff`] takes two dumps or a series and matches contexts by their path of names (and
//! identifiers) from the root, never by ids, which mean nothing from one dump to the next. It
//! reports three kinds of entries ([`EntryKind`]):
//!
//! - **groups**: all contexts with the same path of *names*, summed, with their count. Hundreds of
//!   `CachedPlanSource` siblings (each with its own query as identifier) are one group, so growth
//!   that is spread over many small contexts shows up as one large number. A context with no
//!   same-named siblings is a group of one.
//! - **folded** lines: PostgreSQL prints at most 100 children per context and sums the rest in an
//!   `N more child contexts containing ...` line. Each such line is an entry of its own,
//!   `PARENT/(more child contexts)`, so growth hiding there is still attributed to the parent it
//!   hides under; its note names what the printed siblings are, the likely content of the fold.
//! - **contexts**: single contexts with an identifier that are members of a larger group and are
//!   present in the first and the last dump: a relcache entry or a plan that itself grows.
//!
//! Each entry's own bytes (not its children's) are followed over the series; entries are ranked by
//! the growth of `total_bytes` (then of `used_bytes`), and [`verdict`] classifies the series of
//! `used_bytes` (`total_bytes` where the dump does not record used bytes: the gdb script's). Used
//! bytes follow live data; total bytes move in blocks that double in size, so a steady leak shows
//! as steps in the total but as a ramp in the used bytes.
//!
//! Per-site growth: when snapshots carry allocation sites (memctx's debug build), sites are
//! matched by their context's group path and their frames, and ranked the same way.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use super::parse::Dump;

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
/// 2. With at least two steps: if the last third of the steps (at least one) stays within 5% of
///    the range, at a level at least half the range above the first value: [`Verdict::Plateau`]
///    (grew, then stopped).
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
    let steps = n - 1;

    if steps >= 2 {
        let k = steps.div_ceil(3).max(1);
        let tail = &v[n - 1 - k..];
        let tmax = tail.iter().copied().fold(f64::MIN, f64::max);
        let tmin = tail.iter().copied().fold(f64::MAX, f64::min);
        if tmax - tmin <= 0.05 * range_f && tmin - v[0] >= 0.5 * range_f {
            return Verdict::Plateau;
        }
    }

    let flat = range_f / (4.0 * steps as f64);
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

/// Which series a verdict was made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `total_bytes`: the dumps do not record used bytes.
    Total,
    /// `used_bytes`.
    Used,
}

/// What an entry of a [`Report`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// All contexts with this path of names, summed (one context when it has no same-named
    /// siblings).
    Group,
    /// The `N more child contexts` lines under one parent.
    Folded,
    /// One context, matched by its path of names and identifiers.
    Context,
}

/// One path segment: a context's name and, for [`EntryKind::Context`] entries, its identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The context name (as PostgreSQL shows it: a dynahash under its table name).
    pub name: String,
    /// The identifier, when the entry is matched by it.
    pub ident: Option<String>,
}

/// One context (or group of contexts) followed over the series.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryReport {
    /// The thread (memctx snapshots with several threads), else `None`.
    pub thread: Option<String>,
    /// The path from the root.
    pub path: Vec<Segment>,
    /// What the entry stands for.
    pub kind: EntryKind,
    /// Own `total_bytes` per dump (`None` where the thread did not answer the dump).
    pub total: Vec<Option<u64>>,
    /// Own `used_bytes` per dump (`None` also where the dump does not record it).
    pub used: Vec<Option<u64>>,
    /// Number of contexts per dump (for folded lines: the `N` they print).
    pub count: Vec<Option<u64>>,
    /// Bytes of the contexts with all their descendants, per dump.
    pub subtree: Vec<Option<u64>>,
    /// The verdict over the series.
    pub verdict: Verdict,
    /// The series the verdict is made on.
    pub metric: Metric,
    /// A remark for the reader (for folded lines: what the printed siblings are).
    pub note: Option<String>,
}

fn first_last(v: &[Option<u64>]) -> Option<(u64, u64)> {
    let first = v.iter().flatten().next()?;
    let last = v.iter().rev().flatten().next()?;
    Some((*first, *last))
}

fn delta(v: &[Option<u64>]) -> i128 {
    first_last(v).map_or(0, |(a, b)| i128::from(b) - i128::from(a))
}

impl EntryReport {
    /// The path as text: names joined by `/`, identifiers (of [`EntryKind::Context`] entries) in
    /// brackets and cut at 40 characters, the thread in front when there is one.
    #[must_use]
    pub fn display_path(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.thread {
            let _ = write!(s, "[{t}] ");
        }
        for (i, seg) in self.path.iter().enumerate() {
            if i > 0 {
                s.push('/');
            }
            s.push_str(&seg.name);
            if let Some(id) = &seg.ident {
                s.push('[');
                let mut cut: String = id.chars().take(40).collect();
                if cut.len() < id.len() {
                    cut.push_str("...");
                }
                s.push_str(&cut);
                s.push(']');
            }
        }
        s
    }

    /// Growth of own `total_bytes`: last known value minus first known value.
    #[must_use]
    pub fn growth(&self) -> i128 {
        delta(&self.total)
    }

    /// Growth of own `used_bytes`, when recorded.
    #[must_use]
    pub fn used_growth(&self) -> Option<i128> {
        if self.used.iter().all(Option::is_none) {
            return None;
        }
        Some(delta(&self.used))
    }
}

/// Allocation-site growth (memctx debug-build snapshots).
#[derive(Clone, Debug, PartialEq)]
pub struct SiteReport {
    /// The thread, when the series has several.
    pub thread: Option<String>,
    /// The path of names of the context the chunks live in.
    pub context: Vec<String>,
    /// The allocation backtrace, user frames first.
    pub frames: Vec<String>,
    /// Live bytes per dump.
    pub bytes: Vec<Option<u64>>,
    /// Live chunks per dump.
    pub count: Vec<Option<u64>>,
    /// The verdict on `bytes`.
    pub verdict: Verdict,
}

impl SiteReport {
    /// Growth of live bytes, last minus first.
    #[must_use]
    pub fn growth(&self) -> i128 {
        delta(&self.bytes)
    }
}

/// The result of [`diff`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The dumps compared, by [`Dump::source`], in order.
    pub snapshots: Vec<String>,
    /// Their formats' descriptions, deduplicated, in order of first appearance.
    pub formats: Vec<&'static str>,
    /// The process ids of the dumps, deduplicated.
    pub pids: Vec<u32>,
    /// Milliseconds between the first and the last dump, when both have timestamps.
    pub span_ms: Option<u64>,
    /// Sum of all contexts' `total_bytes` per dump.
    pub grand_total: Vec<u64>,
    /// Every entry, ranked: largest growth of own `total_bytes` first, then of `used_bytes`.
    pub entries: Vec<EntryReport>,
    /// Allocation sites ranked by growth of live bytes (empty without sites).
    pub sites: Vec<SiteReport>,
    /// Warnings from parsing the dumps.
    pub warnings: Vec<String>,
}

/// Why two dumps could not be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffError(pub String);

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiffError {}

/// Keeps the dumps of one process when a file holds several processes' dumps.
///
/// With `pid`, keeps the dumps of that process. Without, checks that no single file (dumps whose
/// [`Dump::source`] share a file name) mixes processes: a server log may hold
/// `pg_log_backend_memory_contexts` output of several backends, and comparing one backend's dump
/// with another's says nothing.
///
/// # Errors
///
/// No dump of `pid`; or, without `pid`, a file holding dumps of several processes (the message
/// lists them, to choose one).
pub fn select_pid(dumps: Vec<Dump>, pid: Option<u32>) -> Result<Vec<Dump>, DiffError> {
    if let Some(pid) = pid {
        let kept: Vec<Dump> = dumps.into_iter().filter(|d| d.pid == Some(pid)).collect();
        if kept.is_empty() {
            return Err(DiffError(format!("no dump of PID {pid} found")));
        }
        return Ok(kept);
    }
    let mut by_file: HashMap<&str, Vec<(u32, usize)>> = HashMap::new();
    for d in &dumps {
        let file = d
            .source
            .rsplit_once('#')
            .map_or(d.source.as_str(), |(f, _)| f);
        if let Some(p) = d.pid {
            let v = by_file.entry(file).or_default();
            match v.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 += 1,
                None => v.push((p, 1)),
            }
        }
    }
    let mut files: Vec<_> = by_file.into_iter().filter(|(_, v)| v.len() > 1).collect();
    files.sort();
    if let Some((file, pids)) = files.first() {
        let list: Vec<String> = pids
            .iter()
            .map(|(p, n)| format!("PID {p} ({n} dump{})", if *n == 1 { "" } else { "s" }))
            .collect();
        return Err(DiffError(format!(
            "{file} holds dumps of several processes: {}; choose one with --pid",
            list.join(", ")
        )));
    }
    Ok(dumps)
}

/// Live (bytes, chunks) of one site per dump.
type SiteSeries = Vec<Option<(u64, u64)>>;

#[derive(Clone, Copy, Default)]
struct Acc {
    total: u64,
    used: Option<u64>,
    count: u64,
    subtree: u64,
    present: bool,
}

impl Acc {
    fn add(&mut self, total: u64, used: Option<u64>, count: u64, subtree: u64) {
        self.used = match (self.present, self.used, used) {
            (false, _, u) => u,
            (true, Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        self.total = self.total.saturating_add(total);
        self.count = self.count.saturating_add(count);
        self.subtree = self.subtree.saturating_add(subtree);
        self.present = true;
    }
}

/// Interns paths as (parent key, segment) pairs.
#[derive(Default)]
struct Keys {
    map: HashMap<(usize, Segment), usize>,
    nodes: Vec<(usize, Segment)>,
}

const ROOT: usize = usize::MAX;

impl Keys {
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
}

/// Compares two dumps or a series, oldest first.
///
/// # Errors
///
/// Fewer than two dumps.
///
/// # Examples
///
/// See the [module documentation](crate::leak).
pub fn diff(dumps: &[Dump]) -> Result<Report, DiffError> {
    let n = dumps.len();
    if n < 2 {
        return Err(DiffError(format!(
            "need at least two snapshots to compare, got {n}{}",
            dumps
                .first()
                .map(|d| format!(" ({})", d.source))
                .unwrap_or_default()
        )));
    }

    let mut gkeys = Keys::default();
    let mut ikeys = Keys::default();
    let mut groups: HashMap<usize, Vec<Acc>> = HashMap::new();
    let mut singles: HashMap<usize, Vec<Acc>> = HashMap::new();
    let mut single_group: HashMap<usize, usize> = HashMap::new();
    let mut folded_keys: HashMap<usize, ()> = HashMap::new();
    let mut partial_keys: HashMap<usize, ()> = HashMap::new();
    let mut notes: HashMap<usize, String> = HashMap::new();
    let mut missing: Vec<(usize, usize)> = Vec::new(); // (thread group key, dump)
    let mut sites: HashMap<(usize, Vec<String>), SiteSeries> = HashMap::new();
    let mut threads: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let mut grand_total = Vec::with_capacity(n);

    for (d, dump) in dumps.iter().enumerate() {
        for w in &dump.warnings {
            warnings.push(format!("{}: {w}", dump.source));
        }
        grand_total.push(dump.total().total_bytes);
        for tree in &dump.trees {
            let label = tree.thread.clone().unwrap_or_default();
            if !threads.contains(&label) {
                threads.push(label.clone());
            }
            let root_seg = Segment {
                name: label,
                ident: None,
            };
            let gthread = gkeys.intern(ROOT, root_seg.clone());
            let ithread = ikeys.intern(ROOT, root_seg);
            if tree.missing {
                missing.push((gthread, d));
                continue;
            }
            let subtree = tree.subtree_totals();
            let children = if tree.contexts.iter().any(|c| c.folded.is_some()) {
                Some(tree.children())
            } else {
                None
            };
            let mut gk = Vec::with_capacity(tree.contexts.len());
            let mut ik = Vec::with_capacity(tree.contexts.len());
            let mut has_ident = Vec::with_capacity(tree.contexts.len());
            // Contexts some of whose siblings (or their ancestors' siblings) are folded away:
            // their group sums only the printed ones.
            let mut partial = vec![false; tree.contexts.len()];
            if let Some(children) = &children {
                for (i, c) in tree.contexts.iter().enumerate() {
                    if let Some(p) = c.parent {
                        partial[i] = partial[p]
                            || children[p]
                                .iter()
                                .any(|&s| tree.contexts[s].folded.is_some());
                    }
                }
            }
            for (i, c) in tree.contexts.iter().enumerate() {
                let (gp, ip, hp) = match c.parent {
                    Some(p) => (gk[p], ik[p], has_ident[p]),
                    None => (gthread, ithread, false),
                };
                let name = c.display_name().to_string();
                let ident = c.display_ident().map(str::to_string);
                let h = hp || ident.is_some();
                let g = gkeys.intern(
                    gp,
                    Segment {
                        name: name.clone(),
                        ident: None,
                    },
                );
                let k = ikeys.intern(ip, Segment { name, ident });
                gk.push(g);
                ik.push(k);
                has_ident.push(h);

                let count = c.folded.unwrap_or(1);
                groups.entry(g).or_insert_with(|| vec![Acc::default(); n])[d].add(
                    c.total_bytes,
                    c.used_bytes,
                    count,
                    subtree[i],
                );
                if h {
                    singles.entry(k).or_insert_with(|| vec![Acc::default(); n])[d].add(
                        c.total_bytes,
                        c.used_bytes,
                        count,
                        subtree[i],
                    );
                    single_group.insert(k, g);
                }
                if partial[i] && c.folded.is_none() {
                    partial_keys.insert(g, ());
                }
                if c.folded.is_some() {
                    folded_keys.insert(g, ());
                    if let (Some(children), Some(p)) = (&children, c.parent) {
                        notes.insert(g, folded_note(tree, &children[p]));
                    }
                }
            }
            for s in &tree.sites {
                let key = (gk[s.context], s.frames.clone());
                sites.entry(key).or_insert_with(|| vec![Some((0, 0)); n])[d] =
                    Some((s.bytes, s.count));
            }
        }
    }
    let show_thread = threads.len() > 1;

    // Per dump, whether a thread is missing: its entries are unknown there, not zero.
    let is_missing = |thread_key: usize, d: usize| missing.contains(&(thread_key, d));
    let thread_of = |keys: &Keys, mut k: usize| {
        while keys.nodes[k].0 != ROOT {
            k = keys.nodes[k].0;
        }
        k
    };

    // `gtk`: the entry's thread key in the group interner.
    let build =
        |keys: &Keys, k: usize, gtk: usize, accs: &[Acc], kind: EntryKind, note: Option<String>| {
            let known = |d: usize| !is_missing(gtk, d);
            let total: Vec<Option<u64>> =
                (0..n).map(|d| known(d).then_some(accs[d].total)).collect();
            let used: Vec<Option<u64>> = (0..n)
                .map(|d| {
                    if !known(d) {
                        None
                    } else if accs[d].present {
                        accs[d].used
                    } else if dumps[d].has_detail {
                        Some(0)
                    } else {
                        None
                    }
                })
                .collect();
            let count = (0..n).map(|d| known(d).then_some(accs[d].count)).collect();
            let subtree = (0..n)
                .map(|d| known(d).then_some(accs[d].subtree))
                .collect();
            let (metric, series): (Metric, Vec<u64>) = if used
                .iter()
                .zip(&total)
                .all(|(u, t)| u.is_some() || t.is_none())
            {
                (Metric::Used, used.iter().flatten().copied().collect())
            } else {
                (Metric::Total, total.iter().flatten().copied().collect())
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
                verdict: verdict(&series),
                metric,
                note,
            }
        };

    let mut entries = Vec::new();
    for (&k, accs) in &groups {
        let kind = if folded_keys.contains_key(&k) {
            EntryKind::Folded
        } else {
            EntryKind::Group
        };
        let note = notes.get(&k).cloned().or_else(|| {
            partial_keys.contains_key(&k).then(|| {
                "partial: some of these contexts are folded into an `N more child contexts` line \
                 in some dumps, and counted there"
                    .to_string()
            })
        });
        entries.push(build(&gkeys, k, thread_of(&gkeys, k), accs, kind, note));
    }
    for (&k, accs) in &singles {
        let g = single_group[&k];
        let group_is_larger = groups[&g].iter().any(|a| a.count > 1);
        let first = accs.iter().position(|a| a.present);
        let persistent = accs[0].present && accs[n - 1].present;
        if group_is_larger && persistent && first.is_some() && !folded_keys.contains_key(&g) {
            entries.push(build(
                &ikeys,
                k,
                thread_of(&gkeys, g),
                accs,
                EntryKind::Context,
                None,
            ));
        }
    }
    entries.sort_by(|a, b| {
        b.growth()
            .cmp(&a.growth())
            .then_with(|| b.used_growth().cmp(&a.used_growth()))
            .then_with(|| a.display_path().cmp(&b.display_path()))
    });

    let mut site_reports: Vec<SiteReport> = sites
        .into_iter()
        .map(|((g, frames), vals)| {
            let (thread, path) = gkeys.path(g);
            let tk = thread_of(&gkeys, g);
            let bytes: Vec<Option<u64>> = (0..n)
                .map(|d| {
                    if is_missing(tk, d) {
                        None
                    } else {
                        vals[d].map(|v| v.0)
                    }
                })
                .collect();
            let count = (0..n)
                .map(|d| {
                    if is_missing(tk, d) {
                        None
                    } else {
                        vals[d].map(|v| v.1)
                    }
                })
                .collect();
            let series: Vec<u64> = bytes.iter().flatten().copied().collect();
            SiteReport {
                thread: show_thread.then_some(thread),
                context: path.into_iter().map(|s| s.name).collect(),
                frames,
                verdict: verdict(&series),
                bytes,
                count,
            }
        })
        .collect();
    site_reports.sort_by(|a, b| {
        b.growth()
            .cmp(&a.growth())
            .then_with(|| a.context.cmp(&b.context))
            .then_with(|| a.frames.cmp(&b.frames))
    });

    let mut formats = Vec::new();
    let mut pids = Vec::new();
    for d in dumps {
        let f = d.format.description();
        if !formats.contains(&f) {
            formats.push(f);
        }
        if let Some(p) = d.pid {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    let span_ms = match (dumps[0].timestamp_ms, dumps[n - 1].timestamp_ms) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    Ok(Report {
        snapshots: dumps.iter().map(|d| d.source.clone()).collect(),
        formats,
        pids,
        span_ms,
        grand_total,
        entries,
        sites: site_reports,
        warnings,
    })
}

/// What the printed siblings of a folded line are: `CachedPlanSource ×100 of 100 printed`.
fn folded_note(tree: &super::parse::Tree, siblings: &[usize]) -> String {
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

/// How [`Report::format`] prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    /// Rows of the ranked table and verdict lines (at most).
    pub top: usize,
    /// Allocation sites to show (at most).
    pub sites: usize,
    /// Print exact byte counts instead of kB/MB.
    pub exact: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            top: 20,
            sites: 10,
            exact: false,
        }
    }
}

/// Formats a byte count like `pg_size_pretty`, with one decimal: `512 bytes`, `12.5 kB`, `1.2 MB`.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn fmt_bytes(b: u64, exact: bool) -> String {
    if exact {
        b.to_string()
    } else {
        human_bytes(b)
    }
}

fn fmt_delta(d: i128, exact: bool) -> String {
    let sign = if d < 0 { "-" } else { "+" };
    let mag = u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX);
    format!("{sign}{}", fmt_bytes(mag, exact))
}

fn fmt_span(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{}.{:01}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

impl Report {
    /// The entries whose verdict is [`Verdict::Growing`], largest growth first.
    pub fn growing(&self) -> impl Iterator<Item = &EntryReport> {
        self.entries
            .iter()
            .filter(|e| e.verdict == Verdict::Growing)
    }

    /// Where the growth is: walking down from the root, the deepest context whose subtree holds
    /// at least half of its parent's subtree growth (folded lines are not walked into). Returns
    /// the entry and its subtree growth; `None` when nothing grew.
    #[must_use]
    pub fn hotspot(&self) -> Option<(&EntryReport, i128)> {
        let tree_entries = || self.entries.iter().filter(|e| e.kind == EntryKind::Group);
        let mut best: Option<(&EntryReport, i128)> = None;
        for e in tree_entries().filter(|e| e.path.len() == 1) {
            let g = delta(&e.subtree);
            if g > 0 && best.map_or(true, |(_, b)| g > b) {
                best = Some((e, g));
            }
        }
        let (mut at, mut growth) = best?;
        loop {
            let child = tree_entries()
                .filter(|c| {
                    c.thread == at.thread
                        && c.path.len() == at.path.len() + 1
                        && c.path[..at.path.len()] == at.path[..]
                })
                .map(|c| (c, delta(&c.subtree)))
                .max_by_key(|&(_, g)| g);
            match child {
                Some((c, g)) if g > 0 && g * 2 >= growth => {
                    at = c;
                    growth = g;
                }
                _ => return Some((at, growth)),
            }
        }
    }

    /// The verdict line of an entry: `growing  PATH  +1.2 MB over 5 snapshots (...)`.
    #[must_use]
    pub fn verdict_line(&self, e: &EntryReport, exact: bool) -> String {
        let n = self.snapshots.len();
        let mut s = format!(
            "{:<9} {}  {} over {n} snapshots",
            e.verdict,
            e.display_path(),
            fmt_delta(e.growth(), exact)
        );
        if let Some(ms) = self.span_ms {
            let _ = write!(s, " in {}", fmt_span(ms));
        }
        let mut extra = Vec::new();
        if let Some(u) = e.used_growth() {
            extra.push(format!("used {}", fmt_delta(u, exact)));
        }
        if let Some((a, b)) = first_last(&e.count) {
            if a != b || a > 1 {
                let what = if e.kind == EntryKind::Folded {
                    "folded contexts"
                } else {
                    "contexts"
                };
                extra.push(format!("{what} {a} -> {b}"));
            }
        }
        if !extra.is_empty() {
            let _ = write!(s, " ({})", extra.join(", "));
        }
        if let Some(note) = &e.note {
            let _ = write!(s, "; {note}");
        }
        s
    }

    /// Formats the report: a header, the ranked table of contexts that grew, the verdict lines
    /// (growing first, then plateau and noisy) and the per-site growth.
    #[must_use]
    pub fn format(&self, opts: &ReportOptions) -> String {
        let n = self.snapshots.len();
        let exact = opts.exact;
        let mut out = String::new();
        let _ = write!(
            out,
            "memctx diff: {n} snapshots ({})",
            self.formats.join(", ")
        );
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            let _ = write!(out, ", PID {}", pids.join(", "));
        }
        if let Some(ms) = self.span_ms {
            let _ = write!(out, ", over {}", fmt_span(ms));
        }
        out.push('\n');
        let files: Vec<&str> = self
            .snapshots
            .iter()
            .map(|s| s.rsplit_once('#').map_or(s.as_str(), |(f, _)| f))
            .collect();
        if self.snapshots.iter().all(|s| s.contains('#')) && files.iter().all(|f| *f == files[0]) {
            let _ = writeln!(out, "  {}: dumps #1 to #{n}", files[0]);
        } else if n <= 4 {
            let _ = writeln!(out, "  {}", self.snapshots.join(" -> "));
        } else {
            let _ = writeln!(
                out,
                "  {} -> ... -> {}",
                self.snapshots[0],
                self.snapshots[n - 1]
            );
        }
        let (g0, g1) = (self.grand_total[0], self.grand_total[n - 1]);
        let _ = writeln!(
            out,
            "grand total: {} -> {} ({})",
            fmt_bytes(g0, exact),
            fmt_bytes(g1, exact),
            fmt_delta(i128::from(g1) - i128::from(g0), exact)
        );
        if let Some((e, g)) = self.hotspot() {
            let _ = writeln!(
                out,
                "most growth is under: {} (its subtree {})",
                e.display_path(),
                fmt_delta(g, exact)
            );
        }
        out.push('\n');

        let grew: Vec<&EntryReport> = self
            .entries
            .iter()
            .filter(|e| e.growth() > 0 || e.used_growth().is_some_and(|u| u > 0))
            .collect();
        if grew.is_empty() {
            out.push_str("no context grew.\n");
        } else {
            let _ = writeln!(
                out,
                "{:>3}  {:<9} {:>12} {:>12} {:>25} {:>13}  context (own bytes)",
                "#", "verdict", "total +/-", "used +/-", "total first -> last", "count"
            );
            for (i, e) in grew.iter().take(opts.top).enumerate() {
                let (t0, t1) = first_last(&e.total).unwrap_or((0, 0));
                let (c0, c1) = first_last(&e.count).unwrap_or((0, 0));
                let used = e
                    .used_growth()
                    .map_or_else(|| "?".to_string(), |u| fmt_delta(u, exact));
                let _ = writeln!(
                    out,
                    "{:>3}  {:<9} {:>12} {:>12} {:>25} {:>13}  {}",
                    i + 1,
                    e.verdict,
                    fmt_delta(e.growth(), exact),
                    used,
                    format!("{} -> {}", fmt_bytes(t0, exact), fmt_bytes(t1, exact)),
                    format!("{c0} -> {c1}"),
                    e.display_path()
                );
            }
            if grew.len() > opts.top {
                let _ = writeln!(
                    out,
                    "     ... {} more that grew (--top to show more)",
                    grew.len() - opts.top
                );
            }
            out.push('\n');

            let mut lines: Vec<&EntryReport> = grew
                .iter()
                .copied()
                .filter(|e| {
                    matches!(
                        e.verdict,
                        Verdict::Growing | Verdict::Plateau | Verdict::Noisy
                    )
                })
                .collect();
            lines.sort_by_key(|e| e.verdict); // stable: growth order within a verdict
            if lines.is_empty() {
                out.push_str("no context is growing.\n");
            } else {
                for e in lines.iter().take(opts.top) {
                    out.push_str(&self.verdict_line(e, exact));
                    out.push('\n');
                }
            }
            if !self.growing().any(|_| true) {
                out.push_str("no context is growing steadily.\n");
            }
        }
        if n == 2 {
            out.push_str(
                "note: with two snapshots a verdict only says which way a context moved; compare \
                 a series (memctx diff DIR) to tell steady growth from a step.\n",
            );
        }

        let site_grew: Vec<&SiteReport> = self.sites.iter().filter(|s| s.growth() > 0).collect();
        if !self.sites.is_empty() {
            out.push('\n');
            if site_grew.is_empty() {
                out.push_str("per-site growth: no allocation site grew.\n");
            } else {
                out.push_str("per-site growth (live chunks by allocation site):\n");
                for s in site_grew.iter().take(opts.sites) {
                    let (b0, b1) = first_last(&s.bytes).unwrap_or((0, 0));
                    let (c0, c1) = first_last(&s.count).unwrap_or((0, 0));
                    let thread = s
                        .thread
                        .as_ref()
                        .map(|t| format!("[{t}] "))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{:<9} {} ({} -> {}, chunks {c0} -> {c1}) in {thread}{}",
                        s.verdict,
                        fmt_delta(s.growth(), exact),
                        fmt_bytes(b0, exact),
                        fmt_bytes(b1, exact),
                        s.context.join("/")
                    );
                    if s.frames.is_empty() {
                        out.push_str("      (no frames recorded)\n");
                    }
                    for f in s.frames.iter().take(6) {
                        let _ = writeln!(out, "      {f}");
                    }
                }
            }
        }
        out
    }
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
        // Growth with small dips.
        assert_eq!(verdict(&[100, 200, 180, 300, 280, 400]), Verdict::Growing);
        // Plateau with jitter.
        assert_eq!(verdict(&[100, 300, 500, 495, 505, 500]), Verdict::Plateau);
        assert_eq!(verdict(&[100, 200, 200]), Verdict::Plateau);
        assert_eq!(verdict(&[100, 400, 150, 380, 120]), Verdict::Noisy);
        // Tiny relative change is stable.
        assert_eq!(verdict(&[1_000_000, 1_000_100, 1_000_050]), Verdict::Stable);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(1_258_291), "1.2 MB");
        assert_eq!(fmt_delta(-2048, false), "-2.0 kB");
    }
}
