//! `memctx::leak::diff` against a reference: random series of dumps (threads that miss dumps,
//! contexts that come and go, same-named siblings, identifiers, folded lines, dumps without used
//! bytes, allocation sites) are diffed, and every entry's series and verdict must be what a plain
//! per-dump sum over the dumps gives — the diff's compact series ([`memctx::leak::diff::Samples`],
//! written as the dumps stream by) must not change a value or a verdict. The streamed diff
//! ([`DiffStream`]) must give the same report as [`diff_with`].
#![cfg(feature = "cli")]

use std::collections::{BTreeMap, BTreeSet};

use memctx::leak::diff::{EntryKind, Report};
use memctx::leak::parse::{Context, Site, Tree, FOLDED_NAME};
use memctx::leak::{diff_with, verdict, DiffOptions, DiffStream, Dump, Format, Metric};
use proptest::prelude::*;

/// A context that may appear in a dump: name, identifier, parent (an earlier entry), and
/// whether it is a folded `N more child contexts` line.
const POOL: [(&str, Option<&str>, Option<usize>, bool); 9] = [
    ("TopMemoryContext", None, None, false),
    ("CacheMemoryContext", None, Some(0), false),
    ("CachedPlanSource", Some("SELECT 1"), Some(1), false),
    ("CachedPlanSource", Some("SELECT 2"), Some(1), false),
    ("CachedPlanSource", Some("SELECT 1"), Some(1), false),
    ("ExprContext", None, Some(0), false),
    ("", None, Some(1), true),
    ("dynahash", Some("LOCALLOCK hash"), Some(0), false),
    ("CachedPlan", None, Some(2), false),
];

/// What one thread's tree holds in one dump: per pool entry, its bytes if present.
#[derive(Clone, Debug)]
struct TreeSpec {
    missing: bool,
    sizes: Vec<Option<(u64, u64)>>,
    sites: Vec<(usize, u64, bool)>,
}

fn tree_spec() -> impl Strategy<Value = TreeSpec> {
    let size = prop_oneof![
        Just(None),
        (1u64..6, 0u64..3).prop_map(|(t, f)| Some((t * 4096, f * 512))),
    ];
    let site = (0usize..POOL.len(), 1u64..5, any::<bool>()).prop_map(|(c, b, f)| (c, b * 100, f));
    (
        prop::bool::weighted(0.15),
        prop::collection::vec(size, POOL.len()),
        prop::collection::vec(site, 0..3),
    )
        .prop_map(|(missing, sizes, sites)| TreeSpec {
            missing,
            sizes,
            sites,
        })
}

/// Builds the tree of `spec` (entries whose parent is absent are absent too).
fn tree(thread: Option<&str>, spec: &TreeSpec, detail: bool) -> Tree {
    let mut contexts: Vec<Context> = Vec::new();
    let mut index = vec![None; POOL.len()];
    for (i, &(name, ident, parent, folded)) in POOL.iter().enumerate() {
        let Some((total, free)) = spec.sizes[i].filter(|_| !spec.missing) else {
            continue;
        };
        let parent = match parent {
            None => None,
            Some(p) => match index[p] {
                Some(at) => Some(at),
                None => continue,
            },
        };
        index[i] = Some(contexts.len());
        contexts.push(Context {
            name: name.to_string(),
            ident: ident.map(str::to_string),
            level: parent.map_or(0, |p: usize| contexts[p].level + 1),
            parent,
            total_bytes: total,
            total_nblocks: Some(1),
            free_bytes: detail.then_some(free),
            free_chunks: detail.then_some(1),
            used_bytes: detail.then_some(total - free),
            folded: folded.then_some(total / 4096),
            id: None,
            kind: None,
            detail: memctx::stats::KindDetail::default(),
        });
    }
    let sites = spec
        .sites
        .iter()
        .filter_map(|&(c, bytes, other)| {
            let frame = if other { "b at b.rs:2" } else { "a at a.rs:1" };
            index[c].map(|context| Site {
                context,
                count: bytes / 100,
                bytes,
                frames: vec![frame.to_string()],
            })
        })
        .collect();
    Tree {
        thread: thread.map(str::to_string),
        missing: spec.missing,
        contexts,
        sites,
        ..Tree::default()
    }
}

/// A series: 2 to 12 dumps, of one unnamed tree or of two threads; some dumps without used bytes.
fn series() -> impl Strategy<Value = Vec<Dump>> {
    let dump = (
        any::<bool>(),
        prop::bool::weighted(0.8),
        tree_spec(),
        tree_spec(),
    );
    (any::<bool>(), prop::collection::vec(dump, 2..12)).prop_map(|(threads, dumps)| {
        dumps
            .into_iter()
            .enumerate()
            .map(|(k, (_, detail, a, b))| {
                let trees = if threads {
                    vec![
                        tree(Some("main"), &a, detail),
                        tree(Some("worker"), &b, detail),
                    ]
                } else {
                    let mut a = a;
                    a.missing = false;
                    vec![tree(None, &a, detail)]
                };
                Dump {
                    source: format!("d{k}"),
                    line: None,
                    format: Format::MemctxSnapshot,
                    pid: Some(1),
                    timestamp_ms: Some(1000 * k as u64),
                    trees,
                    grand_total: None,
                    has_detail: detail,
                    warnings: Vec::new(),
                }
            })
            .collect()
    })
}

/// An entry's identity: thread, path of (name, identifier), whether it is a single context.
type Key = (Option<String>, Vec<(String, Option<String>)>, bool);

/// A path's plain sums in one dump: total, used, count, subtree.
type Row = (u64, Option<u64>, u64, u64);

/// Per path, its sums per dump (`None` for a dump it is not in).
type Sums = BTreeMap<Key, Vec<Option<Row>>>;

/// The plain sums: per group (path of names) and per single context with an identifier on its
/// path (path of names and identifiers), summed dump by dump; and the (thread, dump) pairs the
/// thread did not answer.
fn plain_sums(dumps: &[Dump]) -> (Sums, Sums, BTreeSet<(String, usize)>) {
    let (mut groups, mut singles, mut missing) = (Sums::new(), Sums::new(), BTreeSet::new());
    for (d, dump) in dumps.iter().enumerate() {
        for t in &dump.trees {
            let label = t.thread.clone().unwrap_or_default();
            if t.missing {
                missing.insert((label, d));
                continue;
            }
            let subtree = t.subtree_totals();
            for (i, c) in t.contexts.iter().enumerate() {
                let path: Vec<(String, Option<String>)> = (t.path(i).iter())
                    .map(|c| {
                        (
                            c.display_name().to_string(),
                            c.display_ident().map(str::to_string),
                        )
                    })
                    .collect();
                let has_ident = path.iter().any(|(_, id)| id.is_some());
                let names = path.iter().map(|(n, _)| (n.clone(), None)).collect();
                let group = (Some(label.clone()), names, false);
                add(&mut groups, group, dumps.len(), d, c, subtree[i]);
                if has_ident {
                    let single = (Some(label.clone()), path, true);
                    add(&mut singles, single, dumps.len(), d, c, subtree[i]);
                }
            }
        }
    }
    (groups, singles, missing)
}

/// Adds context `c` to `key`'s sums of dump `d` (used bytes: unknown once one member's are).
fn add(sums: &mut Sums, key: Key, n: usize, d: usize, c: &Context, subtree: u64) {
    let slot = &mut sums.entry(key).or_insert_with(|| vec![None; n])[d];
    let used = match *slot {
        None => c.used_bytes,
        Some(s) => s.1.zip(c.used_bytes).map(|(a, b)| a + b),
    };
    let (total, _, count, sub) = slot.unwrap_or_default();
    *slot = Some((
        total + c.total_bytes,
        used,
        count + c.folded.unwrap_or(1),
        sub + subtree,
    ));
}

/// The reference: per entry, its four series — unknown where the thread did not answer, zero
/// where the path is absent (used bytes unknown where the dump records none).
fn reference(dumps: &[Dump]) -> BTreeMap<Key, [Vec<Option<u64>>; 4]> {
    let (groups, singles, missing) = plain_sums(dumps);
    let n = dumps.len();
    let series = |key: &Key, sums: &[Option<Row>]| -> [Vec<Option<u64>>; 4] {
        let label = key.0.clone().unwrap_or_default();
        let row = |d: usize| match sums[d] {
            _ if missing.contains(&(label.clone(), d)) => None,
            Some(s) => Some(s),
            None => Some((0, dumps[d].has_detail.then_some(0), 0, 0)),
        };
        let rows: Vec<Option<Row>> = (0..n).map(row).collect();
        [
            rows.iter().map(|r| r.map(|s| s.0)).collect(),
            rows.iter().map(|r| r.and_then(|s| s.1)).collect(),
            rows.iter().map(|r| r.map(|s| s.2)).collect(),
            rows.iter().map(|r| r.map(|s| s.3)).collect(),
        ]
    };
    let mut out: BTreeMap<Key, _> = (groups.iter())
        .map(|(key, sums)| (key.clone(), series(key, sums)))
        .collect();
    for (key, sums) in &singles {
        let names = key.1.iter().map(|(n, _)| (n.clone(), None)).collect();
        let group = &groups[&(key.0.clone(), names, false)];
        let several = group.iter().flatten().any(|s| s.2 > 1);
        // Every member of the group in every dump: the single is its group again.
        let whole = (group.iter().zip(sums)).all(|(g, s)| g.map(|g| g.2) == s.map(|s| s.2));
        let folded = key.1.last().is_some_and(|(n, _)| n == FOLDED_NAME);
        if several && !whole && sums[0].is_some() && sums[n - 1].is_some() && !folded {
            out.insert(key.clone(), series(key, sums));
        }
    }
    if !dumps
        .iter()
        .flat_map(|d| &d.trees)
        .any(|t| t.thread.is_some())
    {
        out = out
            .into_iter()
            .map(|((_, p, s), v)| ((None, p, s), v))
            .collect();
    }
    out
}

/// The reference's live bytes per site: by thread, context names and frames, summed over
/// same-named contexts that share a site.
fn reference_sites(dumps: &[Dump]) -> BTreeMap<SiteKey, Vec<Option<u64>>> {
    let n = dumps.len();
    let mut live: BTreeMap<SiteKey, Vec<Option<u64>>> = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for (d, dump) in dumps.iter().enumerate() {
        for t in &dump.trees {
            let label = t.thread.clone().unwrap_or_default();
            if t.missing {
                missing.insert((label.clone(), d));
            }
            for s in &t.sites {
                let path = t.path(s.context);
                let names = path.iter().map(|c| c.display_name().to_string()).collect();
                let key = (label.clone(), names, s.frames.clone());
                let bytes = &mut live.entry(key).or_insert_with(|| vec![Some(0); n])[d];
                *bytes = bytes.map(|b| b + s.bytes);
            }
        }
    }
    for ((label, _, _), bytes) in &mut live {
        for (d, b) in bytes.iter_mut().enumerate() {
            if missing.contains(&(label.clone(), d)) {
                *b = None;
            }
        }
    }
    live
}

/// A site's identity: thread, context names, frames.
type SiteKey = (String, Vec<String>, Vec<String>);

/// The report's entries by key, with their four series.
fn entries(report: &Report) -> BTreeMap<Key, [Vec<Option<u64>>; 4]> {
    let mut out = BTreeMap::new();
    for e in &report.entries {
        let path = e.path.iter().map(|s| (s.name.clone(), s.ident.clone()));
        let key = (
            e.thread.clone(),
            path.collect(),
            e.kind == EntryKind::Context,
        );
        let cols = [&e.total, &e.used, &e.count, &e.subtree].map(|s| s.to_vec());
        assert!(
            out.insert(key, cols).is_none(),
            "{} twice",
            e.display_path()
        );
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn diff_matches_plain_per_dump_sums(dumps in series(), used in any::<bool>()) {
        let all_detail = dumps.iter().all(|d| d.has_detail);
        let metric = if used && all_detail { Metric::Used } else { Metric::Total };
        let opts = DiffOptions { metric };
        let report = diff_with(&dumps, &opts).unwrap();
        prop_assert_eq!(entries(&report), reference(&dumps));
        for e in &report.entries {
            let judged = match metric { Metric::Total => &e.total, Metric::Used => &e.used };
            let plain: Vec<u64> = judged.to_vec().into_iter().flatten().collect();
            prop_assert_eq!(e.verdict, verdict(&plain), "{}", e.display_path());
        }
        let sites: BTreeMap<SiteKey, Vec<Option<u64>>> = report
            .sites
            .iter()
            .map(|s| {
                let key = (s.thread.clone().unwrap_or_default(), s.context.clone(), s.frames.clone());
                prop_assert_eq!(s.verdict, verdict(&s.bytes.known()));
                Ok((key, s.bytes.to_vec()))
            })
            .collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(sites, reference_sites(&dumps));
        let mut stream = DiffStream::default();
        dumps.iter().for_each(|d| stream.push(d));
        let so_far = stream.report(&opts).unwrap();
        prop_assert_eq!(&so_far, &stream.finish(&opts).unwrap());
        prop_assert_eq!(so_far, report);
    }
}
