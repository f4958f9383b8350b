//! The leak-hunting library (`memctx::leak`) and the `memctx` CLI, end to end: every input format
//! read from small files in `tests/data` (the PostgreSQL ones are real PostgreSQL 15 output, see
//! `tests/data/README.md`), the diff's verdicts on synthetic series, same-named siblings and
//! `N more child contexts` lines, and the binary's output, files and exit codes.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memctx::leak::{self, render, EntryKind, Format, Metric, ReportOptions, Verdict};
use memctx::snapshot::{SiteRow, Snapshot, ThreadSnapshot, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
use memctx::stats::{self, format_stats, Counters, PrintOptions, StatsNode};
use memctx::{BlockSizes, MemoryContext};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("memctx-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memctx<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memctx"))
        .args(args)
        .output()
        .expect("run memctx")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn node(id: u64, name: &str, ident: Option<&str>, total: u64, used: u64) -> StatsNode {
    StatsNode {
        id,
        name: name.to_string(),
        ident: ident.map(str::to_string),
        kind: "AllocSet".to_string(),
        counters: Counters {
            total_bytes: total,
            total_nblocks: total.div_ceil(8192),
            free_bytes: total - used,
            free_chunks: 1,
        },
        detail: memctx::stats::KindDetail::default(),
        children: Vec::new(),
    }
}

fn thread(name: &str, tid: u32, root: &StatsNode, sites: Vec<SiteRow>) -> ThreadSnapshot {
    ThreadSnapshot {
        name: Some(name.to_string()),
        os_tid: tid,
        missing: false,
        exited: false,
        exiting: false,
        contexts: stats::rows(root),
        sites,
    }
}

fn snapshot(seq: u64, threads: Vec<ThreadSnapshot>) -> Snapshot {
    Snapshot {
        format: SNAPSHOT_FORMAT.to_string(),
        version: SNAPSHOT_VERSION,
        timestamp_ms: 1_700_000_000_000 + seq * 60_000,
        pid: 4321,
        seq,
        threads,
        trigger: None,
    }
}

/// A synthetic series of six snapshots of a program with two threads:
/// - `main`: CacheMemoryContext leaks steadily (used bytes ramp while the total doubles in
///   blocks), and under it more and more `CachedPlanSource` siblings, each with its own query;
///   PlateauCache grows then stops; ExprContext goes up and down; MessageContext never moves;
///   a site in CacheMemoryContext grows, one in MessageContext does not;
/// - `worker`: constant, but missing from the fourth snapshot.
fn synthetic_series() -> Vec<Snapshot> {
    let cache_total = [8192, 8192, 16384, 16384, 32768, 32768];
    let cache_used = [1000, 3000, 5000, 7000, 9000, 11000];
    let plateau_used = [1000, 3000, 5000, 5000, 5000, 5000];
    let expr_used = [500, 4000, 800, 3900, 600, 4100];
    (0..6)
        .map(|k| {
            let mut top = node(1, "TopMemoryContext", None, 16384, 9000);
            let mut cache = node(2, "CacheMemoryContext", None, cache_total[k], cache_used[k]);
            for j in 0..(2 + 2 * k as u64) {
                cache.children.push(node(
                    100 + j,
                    "CachedPlanSource",
                    Some(&format!("SELECT {j}")),
                    1024,
                    900,
                ));
            }
            top.children.push(cache);
            top.children
                .push(node(3, "PlateauCache", None, 8192, plateau_used[k]));
            top.children
                .push(node(4, "ExprContext", None, 8192, expr_used[k]));
            top.children
                .push(node(5, "MessageContext", None, 8192, 2000));
            let sites = vec![
                SiteRow {
                    context_id: 2,
                    count: 10 * (k as u64 + 1),
                    bytes: 1000 * (k as u64 + 1),
                    frames: vec![
                        "cache::remember at src/cache.rs:42".to_string(),
                        "main at src/main.rs:7".to_string(),
                    ],
                },
                SiteRow {
                    context_id: 5,
                    count: 3,
                    bytes: 300,
                    frames: vec!["message::read at src/message.rs:9".to_string()],
                },
            ];
            let worker_top = node(1, "TopMemoryContext", None, 8192, 4000);
            let mut worker = thread("worker", 11, &worker_top, Vec::new());
            if k == 3 {
                worker.missing = true;
                worker.contexts.clear();
            }
            snapshot(k as u64, vec![thread("main", 10, &top, sites), worker])
        })
        .collect()
}

fn write_series(dir: &TempDir) {
    for (k, s) in synthetic_series().iter().enumerate() {
        // Numbered like the dumper's files; natural order must put 10 after 9, so use both.
        let name = format!("snapshot-{}.json", k * 5);
        dir.file(&name, &serde_json::to_string_pretty(s).unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// Verdicts

#[test]
fn verdicts_on_synthetic_series() {
    assert_eq!(leak::verdict(&[10, 20, 30, 40, 50, 60]), Verdict::Growing);
    assert_eq!(leak::verdict(&[10, 30, 50, 50, 50, 50]), Verdict::Plateau);
    assert_eq!(leak::verdict(&[5, 40, 8, 39, 6, 41]), Verdict::Noisy);
    assert_eq!(leak::verdict(&[7, 7, 7, 7]), Verdict::Stable);
    assert_eq!(leak::verdict(&[60, 50, 40, 30]), Verdict::Shrinking);
    // Block-sized steps that keep coming are growth; growth with small dips too.
    assert_eq!(leak::verdict(&[8, 8, 16, 16, 32]), Verdict::Growing);
    assert_eq!(
        leak::verdict(&[100, 200, 180, 300, 280, 400]),
        Verdict::Growing
    );
    // Jitter around a plateau is still a plateau.
    assert_eq!(
        leak::verdict(&[100, 300, 500, 495, 505, 500]),
        Verdict::Plateau
    );
}

#[test]
fn diff_of_a_synthetic_series_names_the_leak_first() {
    let dir = TempDir::new("series-lib");
    write_series(&dir);
    let dumps = leak::load_series(&[&dir.0]).unwrap().dumps;
    assert_eq!(dumps.len(), 6);
    assert!(dumps.iter().all(|d| d.format == Format::MemctxSnapshot));
    // Natural order: snapshot-5 before snapshot-10.
    let seqs: Vec<u64> = dumps
        .iter()
        .map(|d| d.timestamp_ms.unwrap() / 60_000 % 10)
        .collect();
    assert_eq!(seqs.len(), 6);
    assert!(dumps[1].source.ends_with("snapshot-5.json"));
    assert!(dumps[2].source.ends_with("snapshot-10.json"));

    let report = leak::diff(&dumps).unwrap();
    let find = |path: &str| {
        report
            .entries
            .iter()
            .find(|e| e.display_path() == path)
            .unwrap_or_else(|| panic!("no entry {path}"))
    };
    let cache = find("[main] TopMemoryContext/CacheMemoryContext");
    assert_eq!(cache.verdict, Verdict::Growing);
    assert_eq!(cache.metric, Metric::Total);
    assert_eq!(cache.change(), 32768 - 8192);
    assert_eq!(cache.growth(), 32768 - 8192);
    assert_eq!(cache.used_growth(), Some(10000));
    // The first growing entry is the one that grew most: the cache.
    assert_eq!(
        report.growing().next().unwrap().display_path(),
        "[main] TopMemoryContext/CacheMemoryContext"
    );

    let (hot, hot_growth) = report.hotspot().unwrap();
    assert_eq!(
        hot.display_path(),
        "[main] TopMemoryContext/CacheMemoryContext"
    );
    assert_eq!(hot_growth, 24576 + 10 * 1024);

    let plans = find("[main] TopMemoryContext/CacheMemoryContext/CachedPlanSource");
    assert_eq!(plans.kind, EntryKind::Group);
    assert_eq!(plans.verdict, Verdict::Growing);
    assert_eq!(plans.count.get(0), Some(2));
    assert_eq!(plans.count.get(plans.count.len() - 1), Some(12));
    // A member present all along is matched by its identifier, and it did not grow.
    let one = find("[main] TopMemoryContext/CacheMemoryContext/CachedPlanSource[SELECT 0]");
    assert_eq!(one.kind, EntryKind::Context);
    assert_eq!(one.verdict, Verdict::Stable);

    // Their blocks did not change: by total bytes these are stable; by used bytes, a plateau
    // and noise.
    assert_eq!(
        find("[main] TopMemoryContext/PlateauCache").verdict,
        Verdict::Stable
    );
    let by_used = leak::diff_with(
        &dumps,
        &leak::DiffOptions {
            metric: Metric::Used,
        },
    )
    .unwrap();
    let used_verdict = |path: &str| {
        let e = by_used
            .entries
            .iter()
            .find(|e| e.display_path() == path)
            .unwrap();
        assert_eq!(e.metric, Metric::Used);
        e.verdict
    };
    assert_eq!(
        used_verdict("[main] TopMemoryContext/PlateauCache"),
        Verdict::Plateau
    );
    assert_eq!(
        used_verdict("[main] TopMemoryContext/ExprContext"),
        Verdict::Noisy
    );
    assert_eq!(
        find("[main] TopMemoryContext/MessageContext").verdict,
        Verdict::Stable
    );
    // The worker did not answer the fourth dump: unknown there, not zero, so still stable.
    let worker = find("[worker] TopMemoryContext");
    assert_eq!(worker.total.get(3), None);
    assert_eq!(worker.verdict, Verdict::Stable);

    // Per-site growth: the cache's site grows, the message one does not.
    assert_eq!(report.sites.len(), 2);
    let site = &report.sites[0];
    assert_eq!(site.frames[0], "cache::remember at src/cache.rs:42");
    assert_eq!(site.context, ["TopMemoryContext", "CacheMemoryContext"]);
    assert_eq!(site.verdict, Verdict::Growing);
    assert_eq!(site.growth(), 5000);
    assert_eq!(report.sites[1].verdict, Verdict::Stable);
}

#[test]
fn cli_diff_dir_prints_table_verdicts_and_sites() {
    let dir = TempDir::new("series-cli");
    write_series(&dir);
    let o = memctx(&[Path::new("diff"), dir.0.as_path()]);
    assert!(o.status.success(), "stderr: {}", err(&o));
    let text = out(&o);
    assert!(text.starts_with("memctx diff: 6 snapshots (memctx snapshot), PID 4321, over 5m00s\n"));
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["growing ", "plateau ", "noisy "]
                .iter()
                .any(|v| l.starts_with(v))
        })
        .collect();
    assert!(
        verdicts[0].starts_with(
            "growing   [main] TopMemoryContext/CacheMemoryContext  +24.0 kB total over 6 snapshots in 5m00s (used +9.8 kB)"
        ),
        "{text}"
    );
    // The metric is named, and decides the table: by total bytes, the plateau and the noise of
    // used bytes inside unchanged blocks are no change at all.
    assert!(text.contains("\nmetric: total bytes (verdicts, ranking and +/-;"));
    assert!(text.contains("  #  verdict      total +/-       total first -> last "));
    assert!(!text.contains("PlateauCache"), "{text}");

    // By used bytes: the plateau and the noise show, and the +/- column is used bytes.
    let o = memctx(&[
        Path::new("diff"),
        Path::new("--metric"),
        Path::new("used"),
        dir.0.as_path(),
    ]);
    let text = out(&o);
    assert!(text.contains("\nmetric: used bytes (verdicts, ranking and +/-;"));
    assert!(text.contains("growing   [main] TopMemoryContext/CacheMemoryContext  +9.8 kB used over 6 snapshots in 5m00s (total +24.0 kB)"), "{text}");
    assert!(text.lines().any(|l| l
        .starts_with("plateau   [main] TopMemoryContext/PlateauCache  +")
        && l.contains(" used over ")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("noisy     [main] TopMemoryContext/ExprContext")));
    assert!(text.contains("per-site growth (live chunks by allocation site):\n"));
    assert!(text.contains("growing   +4.9 kB (1000 bytes -> 5.9 kB, chunks 10 -> 60) in [main] TopMemoryContext/CacheMemoryContext\n      cache::remember at src/cache.rs:42\n"));

    // Exact bytes.
    let o = memctx(&[Path::new("diff"), Path::new("--bytes"), dir.0.as_path()]);
    assert!(out(&o)
        .contains("[main] TopMemoryContext/CacheMemoryContext  +24576 total over 6 snapshots"));

    // Two files: OLD NEW.
    let first = dir.0.join("snapshot-0.json");
    let last = dir.0.join("snapshot-25.json");
    let o = memctx(&[Path::new("diff"), &first, &last]);
    assert!(o.status.success(), "stderr: {}", err(&o));
    let text = out(&o);
    assert!(text.contains("memctx diff: 2 snapshots"));
    assert!(text.contains("note: with two snapshots"));
    assert!(text.contains("growing   [main] TopMemoryContext/CacheMemoryContext  +24.0 kB"));
}

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn memctx_stats_json_from_a_real_tree() {
    let top = MemoryContext::top();
    let cache = top.new_child("LeakTestCache", BlockSizes::DEFAULT);
    cache.set_ident("relcache");
    let guard = cache.switch_to();
    for _ in 0..100 {
        let _ = memctx::palloc(200);
    }
    drop(guard);
    let tree = top.stats();
    let json = stats::to_json(&tree);
    let dumps = leak::parse_str(&json, "stats.json").unwrap();
    assert_eq!(dumps.len(), 1);
    assert_eq!(dumps[0].format, Format::MemctxStats);
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts[0].name, "TopMemoryContext");
    let c = t
        .contexts
        .iter()
        .find(|c| c.name == "LeakTestCache")
        .unwrap();
    assert_eq!(c.ident.as_deref(), Some("relcache"));
    assert_eq!(c.level, 1);
    assert!(c.used_bytes.unwrap() >= 20_000);
    // `memctx stats` prints exactly what format_stats prints for the tree.
    assert_eq!(
        render::stats_text(&dumps[0], &PrintOptions::default()),
        format_stats(&tree, &PrintOptions::default())
    );
    cache.delete();
}

#[test]
fn memctx_snapshot_stats_uses_postgres_format() {
    let dir = TempDir::new("snap-stats");
    let snap = &synthetic_series()[5];
    let path = dir.file("s.json", &serde_json::to_string(snap).unwrap());
    let o = memctx(&[Path::new("stats"), &path]);
    assert!(o.status.success(), "stderr: {}", err(&o));
    let text = out(&o);
    assert!(text.starts_with("thread main:\nTopMemoryContext: 16384 total in 2 blocks; 7384 free (1 chunks); 9000 used\n  CacheMemoryContext: 32768 total in 4 blocks;"));
    assert!(text.contains(
        "    CachedPlanSource: 1024 total in 1 blocks; 124 free (1 chunks); 900 used: SELECT 11\n"
    ));
    assert!(text.contains("thread worker:\n"));
    // --max-children summarises as PostgreSQL does.
    let o = memctx(&[
        Path::new("stats"),
        Path::new("--max-children"),
        Path::new("3"),
        &path,
    ]);
    assert!(out(&o).contains("    9 more child contexts containing 9216 total in 9 blocks;"));
}

#[test]
fn several_snapshots_in_one_json_file() {
    let series = synthetic_series();
    let text = format!(
        "{}\n{}\n",
        serde_json::to_string(&series[0]).unwrap(),
        serde_json::to_string(&series[1]).unwrap()
    );
    let dumps = leak::parse_str(&text, "two.jsonl").unwrap();
    assert_eq!(dumps.len(), 2);
    assert_eq!(dumps[1].source, "two.jsonl#2");
    let array = serde_json::to_string(&series).unwrap();
    assert_eq!(leak::parse_str(&array, "all.json").unwrap().len(), 6);
}

#[test]
fn postgres15_server_log_series() {
    let dumps = leak::parse_file(&data("pg15_server.log")).unwrap();
    assert_eq!(dumps.len(), 3);
    for d in &dumps {
        assert_eq!(d.format, Format::PostgresLog);
        assert_eq!(d.pid, Some(9281));
        // The lines add up to the printed grand total: nothing was lost or misplaced.
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(Some(d.trees[0].total()), d.grand_total);
    }
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts[0].name, "TopMemoryContext");
    assert_eq!(t.contexts[0].level, 0);
    // ExecutorState is under PortalContext (ident <unnamed>) under TopPortalContext.
    let i = t
        .contexts
        .iter()
        .position(|c| c.name == "ExecutorState")
        .unwrap();
    let path: Vec<String> = t
        .path(i)
        .iter()
        .map(|c| match &c.ident {
            Some(id) => format!("{}[{id}]", c.name),
            None => c.name.clone(),
        })
        .collect();
    assert_eq!(
        path,
        [
            "TopMemoryContext",
            "TopPortalContext",
            "PortalContext[<unnamed>]",
            "ExecutorState"
        ]
    );
    // The folded line belongs to CacheMemoryContext (its `level: 1` is the parent's level).
    let f = t.contexts.iter().find(|c| c.folded.is_some()).unwrap();
    assert_eq!(f.folded, Some(46));
    assert_eq!(f.level, 2);
    assert_eq!(t.contexts[f.parent.unwrap()].name, "CacheMemoryContext");
    assert_eq!(f.total_bytes, 84992);
    assert_eq!(f.used_bytes, Some(61584));
    // Timestamps come from the %m prefix.
    assert_eq!(
        dumps[1].timestamp_ms.unwrap() - dumps[0].timestamp_ms.unwrap(),
        15
    );
}

#[test]
fn same_named_siblings_and_folded_lines_are_attributed() {
    let dumps = leak::parse_file(&data("pg15_server.log")).unwrap();
    let report = leak::diff(&dumps).unwrap();
    let top = &report.entries[0];
    assert_eq!(
        top.display_path(),
        "TopMemoryContext/CacheMemoryContext/(more child contexts)"
    );
    assert_eq!(top.kind, EntryKind::Folded);
    assert_eq!(top.verdict, Verdict::Growing);
    let counts: Vec<u64> = top.count.known();
    assert_eq!(counts, [46, 106, 166]);
    assert!(top
        .note
        .as_deref()
        .unwrap()
        .contains("probably CachedPlanSource: all 100 printed siblings are"));
    // The printed CachedPlanSource contexts are one group, summed, with their count.
    let plans = report
        .entries
        .iter()
        .find(|e| e.display_path() == "TopMemoryContext/CacheMemoryContext/CachedPlanSource")
        .unwrap();
    assert_eq!(plans.kind, EntryKind::Group);
    let counts: Vec<u64> = plans.count.known();
    assert_eq!(counts, [60, 100, 100]);
    assert_eq!(plans.total.get(0), Some(59 * 4096 + 8192));
    assert!(plans.note.as_deref().unwrap().starts_with("partial:"));
    // Nothing is lost: the folded entry and the printed groups add up to every byte.
    for d in 0..3 {
        let sum: u64 = report
            .entries
            .iter()
            .filter(|e| e.kind != EntryKind::Context)
            .map(|e| e.total.get(d).unwrap())
            .sum();
        assert_eq!(sum, report.grand_total[d]);
    }
    // Prepared Queries grows in used bytes while its total moves by one block.
    let pq = report
        .entries
        .iter()
        .find(|e| e.display_path() == "TopMemoryContext/Prepared Queries")
        .unwrap();
    assert_eq!(pq.verdict, Verdict::Growing);
}

#[test]
fn a_log_that_starts_in_the_middle_of_a_dump() {
    // A rotated log: the first dump's beginning is gone; its tail is skipped.
    let text = std::fs::read_to_string(data("pg15_server.log")).unwrap();
    let tail: String = text.lines().skip(50).map(|l| format!("{l}\n")).collect();
    let dumps = leak::parse_str(&tail, "rotated.log").unwrap();
    assert_eq!(dumps.len(), 2);
    for d in &dumps {
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }
    // Without the `logging memory contexts` lines, dumps still start at TopMemoryContext.
    let headless: String = text
        .lines()
        .filter(|l| !l.contains("logging memory contexts"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dumps = leak::parse_str(&headless, "headless.log").unwrap();
    assert_eq!(dumps.len(), 3);
    assert!(dumps
        .iter()
        .all(|d| d.warnings.is_empty() && d.pid.is_none()));
}

#[test]
fn log_line_prefixes_csvlog_and_jsonlog() {
    let custom = leak::parse_file(&data("pg15_custom_prefix.log")).unwrap();
    assert_eq!(custom.len(), 1);
    assert_eq!(custom[0].pid, Some(15065));
    assert!(custom[0].warnings.is_empty());
    let csv = leak::parse_file(&data("pg15_csvlog.csv.log")).unwrap();
    let json = leak::parse_file(&data("pg15_jsonlog.json.log")).unwrap();
    assert_eq!(csv.len(), 1);
    assert_eq!(json.len(), 1);
    assert!(csv[0].warnings.is_empty(), "{:?}", csv[0].warnings);
    assert_eq!(csv[0].trees, json[0].trees);
    assert_eq!(csv[0].pid, Some(12958));
    let ident = csv[0].trees[0]
        .contexts
        .iter()
        .find(|c| c.name == "CachedPlanSource")
        .and_then(|c| c.ident.clone());
    assert_eq!(ident.as_deref(), Some("prepare x as select 1"));
}

#[test]
fn newer_log_levels_start_at_one() {
    let dumps = leak::parse_file(&data("pg18_server.log")).unwrap();
    assert_eq!(dumps.len(), 2);
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts[0].level, 0);
    assert!(dumps[0].warnings.is_empty(), "{:?}", dumps[0].warnings);
    let f = t.contexts.iter().find(|c| c.folded.is_some()).unwrap();
    assert_eq!(t.contexts[f.parent.unwrap()].name, "CacheMemoryContext");
    // The same tree as PostgreSQL 15 would log it.
    let text = render::stats_text(&dumps[0], &PrintOptions::default());
    assert!(text.starts_with("TopMemoryContext: 97680 total in 5 blocks;"));
    assert!(text.contains("\n    3 more child contexts containing 36864 total"));
    assert!(text.contains("\n      CachedPlanQuery: 8192 total in 4 blocks;"));
}

/// Two backends dumping at once: dump 1 of `pg15_server.log` (PID 9281) and dump 2 with its PID
/// changed to 9282, interleaved line by line.
fn interleaved_log() -> String {
    let text = std::fs::read_to_string(data("pg15_server.log")).unwrap();
    let dump = |k: usize| -> Vec<String> {
        let mut n = 0;
        let mut out = Vec::new();
        for l in text.lines() {
            if l.contains("logging memory contexts of PID") {
                n += 1;
            }
            if n == k {
                out.push(l.to_string());
                if l.contains("Grand total") {
                    break;
                }
            }
        }
        out
    };
    let a = dump(1);
    let b: Vec<String> = dump(2)
        .iter()
        .map(|l| {
            l.replace("[9281]", "[9282]")
                .replace("PID 9281", "PID 9282")
        })
        .collect();
    let mut out = String::new();
    for i in 0..a.len().max(b.len()) {
        for side in [&a, &b] {
            if let Some(l) = side.get(i) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn interleaved_backends_are_separated_by_pid() {
    let dir = TempDir::new("interleaved");
    let log = dir.file("interleaved.log", &interleaved_log());
    let dumps = leak::parse_file(&log).unwrap();
    assert_eq!(dumps.len(), 2);
    let pids: Vec<Option<u32>> = dumps.iter().map(|d| d.pid).collect();
    assert_eq!(pids, [Some(9281), Some(9282)]);
    for d in &dumps {
        // Every line went to its own dump: each adds up to its grand total.
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }
    let o = memctx(&[Path::new("diff"), &log]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains(
        "the inputs hold dumps of several processes: PID 9281 (1 dump), PID 9282 (1 dump); choose one with --pid"
    ));
    let o = memctx(&[
        Path::new("diff"),
        &data("pg15_server.log"),
        &log,
        Path::new("--pid"),
        Path::new("9281"),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("memctx diff: 4 snapshots"));
}

#[test]
fn stderr_output_round_trips_exactly() {
    let path = data("pg15_stderr.txt");
    let dumps = leak::parse_file(&path).unwrap();
    assert_eq!(dumps.len(), 1);
    assert_eq!(dumps[0].format, Format::PostgresStderr);
    assert!(dumps[0].warnings.is_empty());
    let o = memctx(&[Path::new("stats"), &path]);
    assert!(o.status.success());
    assert_eq!(out(&o), std::fs::read_to_string(&path).unwrap());
    // The folded line is indented like the children it stands for.
    let t = &dumps[0].trees[0];
    let f = t.contexts.iter().find(|c| c.folded.is_some()).unwrap();
    assert_eq!(f.folded, Some(116));
    assert_eq!(t.contexts[f.parent.unwrap()].name, "CacheMemoryContext");
}

#[test]
fn gdb_script_output_series() {
    let dir = data("gdb_series");
    let dumps = leak::load_series(&[&dir]).unwrap().dumps;
    assert_eq!(dumps.len(), 4);
    let d = &dumps[1];
    assert_eq!(d.format, Format::Gdb);
    assert!(!d.has_detail);
    let t = &d.trees[0];
    assert_eq!(t.contexts[0].name, "TopMemoryContext");
    let ec = t
        .contexts
        .iter()
        .position(|c| c.name == "SRF multi-call context")
        .unwrap();
    assert_eq!(t.contexts[ec].level, 4);
    assert_eq!(
        t.path(ec)
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        [
            "TopMemoryContext",
            "PortalMemory",
            "PortalHeapMemory",
            "ExecutorState",
            "SRF multi-call context"
        ]
    );
    let cache = t
        .contexts
        .iter()
        .find(|c| c.name == "CacheMemoryContext")
        .unwrap();
    assert_eq!(cache.total_bytes, 1_040_384);
    assert_eq!(cache.used_bytes, None);

    let o = memctx(&[Path::new("diff"), dir.as_path()]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains(
            "\ngrowing   TopMemoryContext/CacheMemoryContext  +768.0 kB total over 4 snapshots\n"
        ),
        "{text}"
    );
    // Three ExprContext siblings are one group of three.
    let report = leak::diff(&dumps).unwrap();
    let expr = report
        .entries
        .iter()
        .find(|e| e.display_path().ends_with("/ExprContext"))
        .unwrap();
    assert_eq!(expr.count.get(0), Some(3));
    assert_eq!(expr.metric, Metric::Total);
}

#[test]
fn csv_from_postgres15_rebuilds_the_tree() {
    let dumps = leak::parse_file(&data("pg15_contexts.csv")).unwrap();
    assert_eq!(dumps.len(), 1);
    assert_eq!(dumps[0].format, Format::PostgresCsvParent);
    assert!(dumps[0].warnings.is_empty(), "{:?}", dumps[0].warnings);
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts.len(), 114);
    let i = t
        .contexts
        .iter()
        .position(|c| c.name == "ExprContext")
        .unwrap();
    let names: Vec<&str> = t.path(i).iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "TopMemoryContext",
            "TopPortalContext",
            "PortalContext",
            "COPY",
            "ExecutorState",
            "ExprContext"
        ]
    );
    // NULL ident (empty, unquoted) vs a real one.
    assert_eq!(t.contexts[0].ident, None);
    assert_eq!(t.path(i)[2].ident.as_deref(), Some("<unnamed>"));
}

#[test]
fn csv_from_newer_postgres_uses_path() {
    let dumps = leak::parse_file(&data("pg17_contexts.csv")).unwrap();
    assert_eq!(dumps[0].format, Format::PostgresCsvPath);
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts.len(), 24);
    assert_eq!(t.contexts[0].level, 0);
    let portal = t
        .contexts
        .iter()
        .find(|c| c.name == "PortalContext")
        .unwrap();
    // A quoted identifier with a comma, doubled quotes and a newline.
    assert_eq!(
        portal.ident.as_deref(),
        Some("select name, \"ident\"\nfrom pg_backend_memory_contexts, x")
    );
    assert_eq!(t.contexts[portal.parent.unwrap()].name, "TopPortalContext");
    assert_eq!(portal.level, 2);
    assert_eq!(portal.kind.as_deref(), Some("AllocSet"));
    // The same contexts as in the PostgreSQL 15 export they were made from.
    let old = leak::parse_file(&data("pg15_contexts.csv")).unwrap();
    let old_names: std::collections::BTreeSet<_> = old[0].trees[0].contexts[..24]
        .iter()
        .map(|c| (c.name.clone(), c.total_bytes, c.level))
        .collect();
    let new_names: std::collections::BTreeSet<_> = t
        .contexts
        .iter()
        .map(|c| (c.name.clone(), c.total_bytes, c.level))
        .collect();
    assert_eq!(old_names, new_names);
}

// ---------------------------------------------------------------------------------------------
// Flame graphs

#[test]
fn flame_writes_an_svg() {
    let dir = TempDir::new("flame");
    let svg = dir.0.join("tree.svg");
    let o = memctx(&[
        Path::new("flame"),
        &data("pg15_server.log"),
        Path::new("-o"),
        &svg,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml"));
    assert!(text.contains("<svg"));
    assert!(text.trim_end().ends_with("</svg>"));
    assert!(text.contains("CacheMemoryContext"));
    assert!(text.contains("(166 more child contexts)"));
    // The root frame names the dump and the metric (the graph's root, not inferno's `all`).
    let root = format!("{}#3 (total bytes)", data("pg15_server.log").display());
    assert!(text.contains(&format!("<title>{root} (")), "{root}");

    // Folded stacks merge same-named siblings unless asked not to.
    let dumps = leak::parse_file(&data("pg15_server.log")).unwrap();
    let lines = render::folded_stacks(&dumps[0], &render::FlameOptions::default());
    assert!(lines.contains(&"TopMemoryContext 97680".to_string()));
    assert!(
        lines.contains(&"TopMemoryContext;CacheMemoryContext;CachedPlanSource 4096".to_string())
    );
    assert!(lines.contains(
        &"TopMemoryContext;CacheMemoryContext;(46 more child contexts) 84992".to_string()
    ));
    let with_idents = render::folded_stacks(
        &dumps[0],
        &render::FlameOptions {
            metric: Metric::Used,
            idents: true,
        },
    );
    assert!(with_idents.iter().any(|l| l
        .starts_with("TopMemoryContext;CacheMemoryContext;CachedPlanSource: PREPARE s59 AS")
        && l.ends_with(" 3312")));

    // To standard output, from a memctx snapshot with two threads.
    let snap = dir.file(
        "s.json",
        &serde_json::to_string(&synthetic_series()[0]).unwrap(),
    );
    let o = memctx(&[
        Path::new("flame"),
        &snap,
        Path::new("-o"),
        Path::new("-"),
        Path::new("--title"),
        Path::new("my tree"),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(text.contains("my tree"));
    assert!(text.contains("worker"));
}

// ---------------------------------------------------------------------------------------------
// Errors and exit codes

#[test]
fn missing_files_are_errors_naming_the_file() {
    let o = memctx(&["stats", "/nonexistent/dump.log"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "memctx: error: /nonexistent/dump.log: no such file\n"
    );
    let o = memctx(&["diff", "/nonexistent/a.json", "/nonexistent/b.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("/nonexistent/a.json: no such file"));
    let o = memctx(&["flame", "/nonexistent/a.json", "-o", "/tmp/x.svg"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn malformed_files_are_errors_with_line_numbers() {
    let dir = TempDir::new("malformed");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad.log",
            "2026-01-01 00:00:00 UTC [1] LOG:  logging memory contexts of PID 1\n\
             2026-01-01 00:00:00 UTC [1] LOG:  level: 0; TopMemoryContext: 8192 total in 1 blocks; lots free\n"
                .to_string(),
            "bad.log:2: malformed memory-context line: expected `NAME: T total in B blocks; F free (C chunks); U used` after `level: 0; `",
        ),
        (
            "bad.json",
            "{\"format\": \"memctx-snapshot\",\n \"version\": 1,\n \"threads\": [}".to_string(),
            "bad.json:3: malformed JSON",
        ),
        (
            "other.json",
            "{\"format\": \"something-else\"}".to_string(),
            "other.json:1: unknown JSON format \"something-else\"",
        ),
        (
            "cols.csv",
            "name,total_bytes\nTop,1\n".to_string(),
            "cols.csv:1: CSV header has no `level` column",
        ),
        (
            "num.csv",
            "name,ident,parent,level,total_bytes,total_nblocks,free_bytes,free_chunks,used_bytes\n\
             Top,,,0,8192,1,10,1,8182\nChild,,Top,1,many,1,0,0,0\n"
                .to_string(),
            "num.csv:3: column `total_bytes`: expected a non-negative integer, found \"many\"",
        ),
        (
            // A real export cut inside its last number (264 used bytes read as 26).
            "cut.csv",
            (std::fs::read_to_string(data("pg15_contexts.csv")).unwrap())
                .strip_suffix("4\n")
                .unwrap()
                .to_string(),
            "cut.csv:115: column `used_bytes`: 26 is not total_bytes 8192 minus free_bytes 7928 \
             (the row is cut short or altered)",
        ),
        (
            "gap.txt",
            "TopMemoryContext: 8192 total in 1 blocks; 100 free (1 chunks); 8092 used\n\
             \x20     Deep: 8192 total in 1 blocks; 100 free (1 chunks); 8092 used\n"
                .to_string(),
            "gap.txt:2: context \"Deep\" is 3 levels below the previous context's parent",
        ),
        (
            "prose.txt",
            "just some text\nnothing to see\n".to_string(),
            "prose.txt: no memory-context dump found: expected a memctx JSON snapshot",
        ),
        (
            "empty.log",
            String::new(),
            "empty.log: empty file",
        ),
    ];
    for (name, content, expected) in cases {
        let p = dir.file(name, &content);
        let o = memctx(&[Path::new("stats"), &p]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", err(&o));
        let e = err(&o);
        let want = format!("memctx: error: {}", dir.0.join(expected).display());
        assert!(e.starts_with(&want), "{name}:\n got  {e}\n want {want}");
    }
    // A directory of non-dumps, an empty directory.
    let empty = TempDir::new("empty-dir");
    let o = memctx(&[Path::new("diff"), empty.0.as_path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("directory holds no dump files"));
    let o = memctx(&[Path::new("diff"), dir.0.as_path()]);
    assert_eq!(o.status.code(), Some(1));
    // One dump is not a series.
    let o = memctx(&[Path::new("diff"), &data("pg15_stderr.txt")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("holds 1 dump; diff needs two snapshots"));
    // --index out of range.
    let o = memctx(&[
        Path::new("stats"),
        Path::new("--index"),
        Path::new("4"),
        &data("pg15_server.log"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--index 4: the file holds 3 dumps"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["diff"][..],
        &["frobnicate"][..],
        &["stats"][..],
        &["flame", "x.json"][..],
        &["diff", "--top", "many", "a", "b"][..],
    ] {
        let o = memctx(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
    }
    let o = memctx(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = out(&o);
    for cmd in ["stats", "diff", "flame"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn report_options_limit_rows() {
    let dumps = leak::parse_file(&data("pg15_server.log")).unwrap();
    let report = leak::diff(&dumps).unwrap();
    let text = report.format(&ReportOptions {
        top: 1,
        sites: 0,
        exact: true,
    });
    assert!(
        text.contains("... 3 more that grew (--top to show more)"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("growing ") || l.starts_with("plateau "))
            .count(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// One metric; JSON and the CI gate; one rule for several processes; stray files

/// `MemoryContextStats` output of one context per dump: `(total, free)` of CacheMemoryContext.
fn cache_dumps(sizes: &[(u64, u64)]) -> String {
    let mut text = String::new();
    for &(total, free) in sizes {
        text.push_str(&format!(
            "TopMemoryContext: 8192 total in 1 blocks; 1000 free (1 chunks); 7192 used\n\
             \x20 CacheMemoryContext: {total} total in 4 blocks; {free} free (1 chunks); {} used\n\
             Grand total: {} bytes in 5 blocks; {} free (2 chunks); {} used\n",
            total - free,
            total + 8192,
            free + 1000,
            total + 8192 - free - 1000
        ));
    }
    text
}

#[test]
fn one_metric_decides_verdict_ranking_and_the_column() {
    // A cache that took 4 MB of blocks in one step and held them while its used bytes fell (a
    // backend's CacheMemoryContext after WITH HOLD cursors and temp tables).
    let dir = TempDir::new("metric");
    let f = dir.file(
        "cache.log",
        &cache_dumps(&[
            (524_288, 24_288),
            (4_194_304, 3_794_304),
            (4_194_304, 3_894_304),
            (4_194_304, 3_994_304),
        ]),
    );
    let o = memctx(&[Path::new("diff"), &f]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    // By total bytes (the default) it grew and held: the verdict and the +/- agree.
    assert!(
        text.contains(
            "\nmetric: total bytes (verdicts, ranking and +/-; --metric used for used bytes)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("\nplateau   TopMemoryContext/CacheMemoryContext  +3.5 MB total over 4 snapshots (used -293.0 kB)\n"),
        "{text}"
    );
    // By used bytes it shrank: no row of the table grew, and the verdict says shrinking with a
    // minus.
    let o = memctx(&[
        Path::new("diff"),
        Path::new("--metric"),
        Path::new("used"),
        &f,
    ]);
    let text = out(&o);
    assert!(text.contains("\nmetric: used bytes"), "{text}");
    assert!(text.contains("\nno context grew.\n"), "{text}");
    let report = leak::diff_with(
        &leak::parse_file(&f).unwrap(),
        &leak::DiffOptions {
            metric: Metric::Used,
        },
    )
    .unwrap();
    let cache = &report
        .entries
        .iter()
        .find(|e| e.display_path() == "TopMemoryContext/CacheMemoryContext")
        .unwrap();
    assert_eq!(cache.verdict, Verdict::Shrinking);
    assert_eq!(cache.change(), -300_000);
    // Ranking follows the metric: changes never increase down the list, and a growing entry
    // never shows +0.
    for report in [
        &report,
        &leak::diff(&leak::parse_file(&f).unwrap()).unwrap(),
    ] {
        for w in report.entries.windows(2) {
            assert!(w[0].change() >= w[1].change());
        }
        assert!(report.growing().all(|e| e.change() > 0));
    }
    // The gdb script records no used bytes: --metric used is refused, not silently total.
    let o = memctx(&[
        Path::new("diff"),
        Path::new("--metric"),
        Path::new("used"),
        &data("gdb_series"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("records no used bytes: compare by total bytes (--metric total)"));
    // flame: --metric and its alias --used; the title names the metric.
    let svg = dir.0.join("f.svg");
    for args in [&["--metric", "used"][..], &["--used"][..]] {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "flame".as_ref(),
            f.as_os_str(),
            "-o".as_ref(),
            svg.as_os_str(),
        ];
        a.extend(args.iter().map(std::ffi::OsStr::new));
        let o = memctx(&a);
        assert!(o.status.success(), "{}", err(&o));
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(svg_text.contains("(used bytes)"));
        assert!(svg_text.contains("width = used bytes"));
    }
}

#[test]
fn diff_json_carries_verdicts_and_series() {
    let dir = TempDir::new("json");
    write_series(&dir);
    let o = memctx(&[Path::new("diff"), Path::new("--json"), dir.0.as_path()]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["format"], "memctx-diff");
    assert_eq!(v["metric"], "total");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 6);
    assert_eq!(v["pids"], serde_json::json!([4321]));
    let top = &v["entries"][0];
    assert_eq!(top["path"], "[main] TopMemoryContext/CacheMemoryContext");
    assert_eq!(top["kind"], "group");
    assert_eq!(top["verdict"], "growing");
    assert_eq!(top["change"], 24576);
    assert_eq!(top["total"].as_array().unwrap().len(), 6);
    assert_eq!(top["total"][0], 8192);
    assert_eq!(top["total"][5], 32768);
    assert!(top["used"][0].is_u64());
    // The worker did not answer the fourth dump: unknown, not zero.
    let worker = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "[worker] TopMemoryContext")
        .unwrap();
    assert!(worker["total"][3].is_null());
    assert_eq!(
        v["sites"][0]["frames"][0],
        "cache::remember at src/cache.rs:42"
    );
}

#[test]
fn fail_on_growing_sets_exit_code_3() {
    let dir = TempDir::new("gate");
    write_series(&dir);
    let gate = |extra: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> =
            vec!["diff".as_ref(), "--fail-on".as_ref(), "growing".as_ref()];
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        a.push(dir.0.as_os_str());
        memctx(&a).status.code()
    };
    // The cache grew by 24576 bytes, the plan sources by 10240.
    assert_eq!(gate(&[]), Some(3));
    assert_eq!(gate(&["--json"]), Some(3));
    assert_eq!(gate(&["--min-growth", "24575"]), Some(3));
    assert_eq!(gate(&["--min-growth", "24576"]), Some(0));
    // Without --fail-on growth is no failure.
    let o = memctx(&[Path::new("diff"), dir.0.as_path()]);
    assert_eq!(o.status.code(), Some(0));
    // Nothing growing: 0.
    let flat = dir.file(
        "flat.log",
        &cache_dumps(&[(16384, 100), (16384, 100), (16384, 100)]),
    );
    let o = memctx(&[
        Path::new("diff"),
        Path::new("--fail-on"),
        Path::new("growing"),
        &flat,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // Bad input is 1, not 3; a usage error is 2.
    let o = memctx(&[
        Path::new("diff"),
        Path::new("--fail-on"),
        Path::new("growing"),
        &dir.0.join("none"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    for args in [
        &["diff", "--min-growth", "5", "x"][..],
        &["diff", "--metric", "free", "x"][..],
        &["diff", "--fail-on", "plateau", "x"][..],
    ] {
        assert_eq!(memctx(args).status.code(), Some(2), "{args:?}");
    }
}

/// What the README's leak-hunting section shows: a host's own test comparing snapshots of its
/// tree with the library's judgment, no CLI involved.
#[test]
fn host_test_gates_on_growth_with_the_library() {
    use memctx::leak::{check_growth, Dump, GrowthError, GrowthGate};

    let cache = MemoryContext::top().new_child("RequestCache", BlockSizes::DEFAULT);
    let mut kept = Vec::new();
    let mut dumps = Vec::new();
    for round in 0..5 {
        // The code under test: it keeps 4 kB per round in the cache.
        for _ in 0..4 {
            kept.push(cache.alloc(1024));
        }
        let snap = memctx::dump::snapshot();
        dumps.push(Dump::from_snapshot(snap, &format!("round {round}")).unwrap());
    }
    let err = check_growth(&dumps, &GrowthGate::default()).unwrap_err();
    let GrowthError::Growing { growing, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        growing[0].0.ends_with("TopMemoryContext/RequestCache"),
        "{err}"
    );
    assert!(err.to_string().contains("TopMemoryContext/RequestCache: +"));
    // Above the threshold only.
    let gate = GrowthGate {
        min_growth: 1 << 30,
        ..GrowthGate::default()
    };
    assert!(check_growth(&dumps, &gate).is_ok());
    cache.delete();
}

#[test]
fn stray_files_in_a_directory_are_skipped_with_a_warning() {
    let dir = TempDir::new("stray");
    write_series(&dir);
    dir.file("notes.txt", "what I tried on Tuesday\n");
    dir.file("package.json", "{\"name\": \"x\"}\n");
    let o = memctx(&[Path::new("diff"), dir.0.as_path()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("memctx diff: 6 snapshots"));
    let e = err(&o);
    assert!(
        e.contains(&format!(
            "memctx: warning: skipped {}: no memory-context dump found",
            dir.0.join("notes.txt").display()
        )),
        "{e}"
    );
    assert!(
        e.contains("package.json:1: JSON document has no \"format\" field"),
        "{e}"
    );
    // A dump with a fault is still an error, and so is a stray file named on its own.
    let o = memctx(&[
        Path::new("diff"),
        &dir.0.join("notes.txt"),
        &dir.0.join("snapshot-0.json"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    dir.file("broken.log", "TopMemoryContext: 8192 total in 1 blocks; 1000 free (1 chunks); 7192 used\n\x20 A: 1 total in x\n");
    let o = memctx(&[Path::new("diff"), dir.0.as_path()]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
}

#[test]
fn several_processes_follow_one_rule_in_every_command() {
    let dir = TempDir::new("processes");
    let log = dir.file("interleaved.log", &interleaved_log());
    // stats and flame refuse, list the PIDs, and take --pid.
    for cmd in [&["stats"][..], &["flame", "-o", "-"][..]] {
        let mut a: Vec<&std::ffi::OsStr> = cmd.iter().map(std::ffi::OsStr::new).collect();
        a.push(log.as_os_str());
        let o = memctx(&a);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        assert!(err(&o).contains("PID 9281 (1 dump), PID 9282 (1 dump); choose one with --pid"));
        a.extend(["--pid", "9282"].map(std::ffi::OsStr::new));
        let o = memctx(&a);
        assert!(o.status.success(), "{cmd:?}: {}", err(&o));
    }
    // A memctx snapshot and PostgreSQL dumps are never one process.
    let mixed = TempDir::new("processes-mixed");
    mixed.file(
        "a.json",
        &serde_json::to_string(&synthetic_series()[0]).unwrap(),
    );
    mixed.file(
        "b.txt",
        &std::fs::read_to_string(data("pg15_stderr.txt")).unwrap(),
    );
    let o = memctx(&[Path::new("diff"), mixed.0.as_path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("mix a memctx dump"), "{}", err(&o));
    // With --pid, inputs that record no PID are skipped by name.
    let o = memctx(&[
        Path::new("diff"),
        &data("pg15_server.log"),
        &data("pg15_contexts.csv"),
        Path::new("--pid"),
        Path::new("9281"),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("pg15_contexts.csv: skipped by --pid 9281: a pg_backend_memory_contexts CSV (PostgreSQL 14-16) records no PID"), "{}", err(&o));
    let o = memctx(&[Path::new("stats"), &log, Path::new("--pid"), Path::new("1")]);
    assert!(err(&o)
        .contains("no dump of PID 1 found: the inputs hold dumps of several processes: PID 9281"));
}

#[test]
fn stats_and_flame_name_the_dump_they_show() {
    let log = data("pg15_server.log");
    let o = memctx(&[Path::new("stats"), &log]);
    assert!(o.status.success());
    let e = err(&o);
    assert!(e.contains("holds 3 dumps; showing the last, "), "{e}");
    assert!(e.contains("pg15_server.log#3 at line "), "{e}");
    assert!(e.contains("(--index N for another)"), "{e}");
    let o = memctx(&[
        Path::new("stats"),
        &log,
        Path::new("--index"),
        Path::new("1"),
    ]);
    assert!(!err(&o).contains("showing the last"));
    // One dump: nothing to say.
    let o = memctx(&[Path::new("stats"), &data("pg15_stderr.txt")]);
    assert!(!err(&o).contains("showing"));
}

#[test]
fn gdb_walker_output_is_one_snapshot_of_every_thread() {
    // As gdb prints it: `[New LWP ...]` first (which is not JSON), then the walk.
    let path = data("memctx_walker_live.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("[New LWP "));
    let dumps = leak::parse_file(&path).unwrap();
    assert_eq!(
        dumps.len(),
        1,
        "one walk is one snapshot, not a series of threads"
    );
    let d = &dumps[0];
    assert_eq!(d.format, Format::MemctxWalker);
    assert_eq!(d.pid, Some(32291));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let threads: Vec<(&str, bool)> = d
        .trees
        .iter()
        .map(|t| (t.thread.as_deref().unwrap(), t.exited))
        .collect();
    assert_eq!(
        threads,
        [("short-lived", true), ("main", false), ("worker-1", false)]
    );
    // Each tree adds up to the Grand total the walker printed under it.
    let grands: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Grand total: "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let totals: Vec<u64> = d.trees.iter().map(|t| t.total().total_bytes).collect();
    assert_eq!(totals, grands);
    assert_eq!(d.trees[0].contexts[1].name, "Job");

    // Two walks appended to one file are a series of two snapshots of three threads each.
    let two = leak::parse_str(&format!("{text}{text}"), "two.txt").unwrap();
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|d| d.trees.len() == 3));
    let report = leak::diff(&two).unwrap();
    assert!(report.entries.iter().all(|e| e.change() == 0));
    assert!(report
        .entries
        .iter()
        .any(|e| e.display_path() == "[short-lived] TopMemoryContext/Job"));

    // The CLI prints it per thread, the exited one marked.
    let o = memctx(&[Path::new("stats"), &path]);
    assert!(o.status.success(), "{}", err(&o));
    let printed = out(&o);
    assert!(printed.starts_with("thread short-lived: (exited: its tree still holds memory)\nTopMemoryContext: 8192 total in 1 blocks;"));
    assert!(printed.contains("\nthread worker-1:\n"));
}

#[test]
fn gdb_noise_around_the_article_script_output_is_skipped() {
    let dir = TempDir::new("gdb-noise");
    let series = data("gdb_series");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&series)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        dir.file(
            f.file_name().unwrap().to_str().unwrap(),
            &format!(
                "[New LWP 4242]\n[Thread debugging using libthread_db enabled]\n\
                 0x00007f3a in epoll_wait () from /lib/x86_64-linux-gnu/libc.so.6\n{text}\
                 [Inferior 1 (process 4241) detached]\n"
            ),
        );
    }
    let noisy = leak::load_series(&[&dir.0]).unwrap().dumps;
    let clean = leak::load_series(&[&series]).unwrap().dumps;
    assert_eq!(noisy.len(), clean.len());
    for (a, b) in noisy.iter().zip(&clean) {
        assert_eq!(a.format, Format::Gdb);
        assert_eq!(a.trees, b.trees);
    }
}
