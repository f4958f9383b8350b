//! A real PostgreSQL backend whose memory grows, dumped with `pg_log_backend_memory_contexts()`
//! between batches: `memctx diff LOGFILE` must name the context that grows.
//!
//! The test starts a throwaway cluster (initdb in a temporary directory, Unix socket only, no TCP),
//! runs one psql session that PREPAREs statements in batches and logs its own memory contexts after
//! each batch, exports `pg_backend_memory_contexts` as CSV, and stops the cluster (also when an
//! assertion fails: a drop guard). What grows is known from PostgreSQL's code: every prepared
//! statement keeps a `CachedPlanSource` context (with a `CachedPlanQuery` child) under
//! `CacheMemoryContext`, and a `Prepared Queries` hash entry. With more than 100 children,
//! PostgreSQL prints the newest 100 and folds the rest into a `N more child contexts` line, so
//! the growth is in that line under CacheMemoryContext.
//!
//! A walsender's dump holds a Generation context (the reorder buffer's `Tuples`), whose stats line
//! PostgreSQL prints in its own shape: the second live test decodes through a logical replication
//! slot and dumps the walsender into a plain, a csvlog and a jsonlog log at once, and every one
//! must read. The fixture tests read the shapes of releases not installed here (Slab's `empty
//! blocks` from PostgreSQL 16, Bump from 17; see tests/data/README.md), and `memctx stats` must
//! print them back as PostgreSQL did.
//!
//! It needs PostgreSQL 14 or later (`pg_config --bindir`, or `/usr/lib/postgresql/*/bin`; override
//! with `MEMCTX_PG_BINDIR`). As root, the server runs as the `postgres` user through `runuser`.
//! Without PostgreSQL the test prints why and passes, unless `MEMCTX_REQUIRE_POSTGRES=1`.
#![cfg(feature = "cli")]

#[path = "common/postgres.rs"]
mod postgres;
use postgres::{run, start_cluster};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use memctx::leak::{self, Context, Dump, EntryKind, Format, Verdict};
use memctx::stats::KindDetail;

/// Statements per batch, and batches (one dump after each).
const BATCH: usize = 80;
const DUMPS: usize = 5;

/// Counts `Grand total` lines, waiting until there are `n` (the dumps are written by the backend
/// at its next interrupt check, which may come after psql has its answer).
fn wait_for_dumps(log: &Path, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let got = text.matches("LOG:  Grand total: ").count();
        if got >= n || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn memctx_diff_names_the_growing_context_of_a_real_backend() {
    let t0 = Instant::now();
    let Some(cluster) = start_cluster("") else {
        return;
    };

    // One session: BATCH prepared statements, then a dump of its own contexts; DUMPS times.
    // Then the view, exported as psql's \copy writes it.
    let csv = cluster.dir.join("contexts.csv");
    let mut sql = String::from("\\set ON_ERROR_STOP 1\n");
    for b in 0..DUMPS {
        for i in 0..BATCH {
            let n = b * BATCH + i;
            sql.push_str(&format!(
                "PREPARE leak_{n} AS SELECT relname, {n} + $1::int FROM pg_class WHERE oid = $2::oid;\n"
            ));
        }
        sql.push_str("SELECT pg_log_backend_memory_contexts(pg_backend_pid());\n");
    }
    sql.push_str(&format!(
        "\\copy (select * from pg_backend_memory_contexts) to '{}' csv header\n",
        csv.display()
    ));
    let script = cluster.dir.join("grow.sql");
    std::fs::write(&script, sql).unwrap();
    let o = run(cluster
        .runner
        .command(&cluster.bindir.join("psql"))
        .args(["-X", "-q", "-U", "postgres", "-d", "postgres", "-h"])
        .arg(&cluster.dir)
        .args(["-p", &cluster.port.to_string(), "-f"])
        .arg(&script));
    assert!(
        o.status.success(),
        "psql failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let log_text = wait_for_dumps(&cluster.log(), DUMPS);

    // The library's view of the log: five complete dumps of one backend.
    let dumps = leak::parse_file(&cluster.log()).unwrap();
    assert_eq!(dumps.len(), DUMPS, "log:\n{log_text}");
    let pid = dumps[0].pid;
    assert!(pid.is_some());
    for d in &dumps {
        assert_eq!(d.format, Format::PostgresLog);
        assert_eq!(d.pid, pid);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(Some(d.trees[0].total()), d.grand_total);
    }

    // The CLI on the log file.
    let o = run(Command::new(env!("CARGO_BIN_EXE_memctx"))
        .arg("diff")
        .arg(cluster.log()));
    let report_text = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("memctx diff {}:\n{report_text}", cluster.log().display());
    assert!(
        o.status.success(),
        "memctx diff failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(report_text.starts_with(&format!("memctx diff: {DUMPS} snapshots")));
    let first_verdict = report_text
        .lines()
        .find(|l| l.starts_with("growing ") || l.starts_with("plateau ") || l.starts_with("noisy "))
        .expect("a verdict line");
    assert!(
        first_verdict.starts_with("growing   TopMemoryContext/CacheMemoryContext/"),
        "{first_verdict}"
    );
    assert!(
        first_verdict.contains("CachedPlanSource"),
        "{first_verdict}"
    );

    // What it found, in detail: the contexts folded under CacheMemoryContext grow by a batch per
    // dump, and the printed siblings are the prepared statements' CachedPlanSource contexts.
    let report = leak::diff(&dumps).unwrap();
    assert_eq!(
        report.hotspot().unwrap().0.display_path(),
        "TopMemoryContext/CacheMemoryContext"
    );
    assert!(report_text
        .contains("\nmost growth is under: TopMemoryContext/CacheMemoryContext (its subtree +"));
    let top = report.growing().next().unwrap();
    assert_eq!(
        top.display_path(),
        "TopMemoryContext/CacheMemoryContext/(more child contexts)"
    );
    assert_eq!(top.kind, EntryKind::Folded);
    let counts: Vec<u64> = top.count.known();
    assert_eq!(counts.len(), DUMPS);
    for w in counts.windows(2) {
        assert!(w[1] >= w[0] + BATCH as u64, "folded counts {counts:?}");
    }
    // Each statement holds a CachedPlanSource (4 kB) and a CachedPlanQuery (8 kB here).
    assert!(top.growth() >= (BATCH * (DUMPS - 1) * 8192) as i128);
    assert!(top
        .note
        .as_deref()
        .unwrap()
        .contains("probably CachedPlanSource: all 100 printed siblings are"));
    // The prepared statements' hash table: its total bytes grow in doubling steps (a step
    // pattern the verdict may call a plateau), its used bytes steadily.
    let pq_of = |report: &leak::Report| {
        report
            .entries
            .iter()
            .find(|e| e.display_path() == "TopMemoryContext/Prepared Queries")
            .cloned()
            .unwrap()
    };
    assert!(pq_of(&report).change() > 0);
    let by_used = leak::diff_with(
        &dumps,
        &leak::DiffOptions {
            metric: leak::Metric::Used,
        },
    )
    .unwrap();
    assert_eq!(pq_of(&by_used).verdict, Verdict::Growing);
    // The contexts that do not belong to the session's statements stayed put.
    let cache_own = report
        .entries
        .iter()
        .find(|e| e.display_path() == "TopMemoryContext/CacheMemoryContext")
        .unwrap();
    assert_ne!(cache_own.verdict, Verdict::Growing);

    // The view, as CSV: every statement's CachedPlanSource is there (the view does not fold).
    let dumps = leak::parse_file(&csv).unwrap();
    assert_eq!(dumps.len(), 1);
    assert!(matches!(
        dumps[0].format,
        Format::PostgresCsvParent | Format::PostgresCsvPath
    ));
    assert!(dumps[0].warnings.is_empty(), "{:?}", dumps[0].warnings);
    let t = &dumps[0].trees[0];
    assert_eq!(t.contexts[0].name, "TopMemoryContext");
    let cache = t
        .contexts
        .iter()
        .position(|c| c.name == "CacheMemoryContext")
        .unwrap();
    let plans: Vec<usize> = (0..t.contexts.len())
        .filter(|&i| {
            t.contexts[i].parent == Some(cache) && t.contexts[i].name == "CachedPlanSource"
        })
        .collect();
    assert!(plans.len() >= BATCH * DUMPS, "{} plans", plans.len());
    assert!(plans.iter().all(|&p| t
        .contexts
        .iter()
        .any(|c| c.parent == Some(p) && c.name == "CachedPlanQuery")));
    let leak_ident = t.contexts[plans[0]].ident.as_deref().unwrap_or("");
    assert!(leak_ident.starts_with("PREPARE leak_"), "{leak_ident}");
    let o = run(Command::new(env!("CARGO_BIN_EXE_memctx"))
        .arg("stats")
        .arg(&csv));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("more child contexts containing"));

    drop(cluster);
    eprintln!("PostgreSQL test took {:.1}s", t0.elapsed().as_secs_f64());
}

/// The dumps of a file of tests/data.
fn fixture(file: &str) -> Vec<Dump> {
    leak::parse_file(&Path::new("tests/data").join(file)).unwrap()
}

/// The one context named `name` in the dump's tree.
fn context<'a>(d: &'a Dump, name: &str) -> &'a Context {
    let mut found = d.trees[0].contexts.iter().filter(|c| c.name == name);
    let c = found.next().unwrap_or_else(|| panic!("no {name}"));
    assert!(found.next().is_none(), "several {name}");
    c
}

/// A dump read whole: one tree whose lines add up to its `Grand total`.
fn assert_whole(d: &Dump, format: Format) {
    assert_eq!(d.format, format);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(Some(d.trees[0].total()), d.grand_total);
}

/// A PostgreSQL 15 walsender decoding a slot: its reorder buffer's `Tuples` is a Generation context,
/// printed `T total in B blocks (N chunks); ...`; its `TXN` and `Change` are Slab contexts, which
/// PostgreSQL 15 printed in the AllocSet shape. The same dump through three log destinations.
#[test]
fn a_pg15_walsenders_generation_context_reads_in_every_log_format() {
    let mut trees = Vec::new();
    for file in [
        "pg15_walsender.log",
        "pg15_walsender.csv.log",
        "pg15_walsender.json.log",
    ] {
        let dumps = fixture(file);
        assert_eq!(dumps.len(), 1, "{file}");
        let d = &dumps[0];
        assert_whole(d, Format::PostgresLog);
        assert_eq!(d.pid, Some(10353));
        let tuples = context(d, "Tuples");
        assert_eq!(tuples.kind.as_deref(), Some("Generation"));
        assert_eq!(
            tuples.detail,
            KindDetail {
                chunks: Some(0),
                empty_blocks: None
            }
        );
        assert_eq!(
            (
                tuples.total_bytes,
                tuples.total_nblocks,
                tuples.free_bytes,
                tuples.free_chunks
            ),
            (16384, Some(2), Some(16136), Some(0))
        );
        assert_eq!(tuples.used_bytes, Some(248));
        let parent = &d.trees[0].contexts[tuples.parent.unwrap()];
        assert_eq!(parent.name, "ReorderBuffer");
        let txn = context(d, "TXN");
        assert_eq!(
            (txn.kind.as_deref(), txn.detail),
            (None, KindDetail::default())
        );
        assert_eq!((txn.total_bytes, txn.total_nblocks), (544, Some(0)));
        trees.push(d.trees[0].clone());
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

/// PostgreSQL 16's Slab line: `T total in B blocks; E empty blocks; F free (C chunks); U used`,
/// the empty blocks counted in T (and so in used) but not in B nor F.
#[test]
fn a_pg16_slab_line_keeps_its_empty_blocks() {
    let dumps = fixture("pg16_walsender.log");
    assert_eq!(dumps.len(), 1);
    let d = &dumps[0];
    assert_whole(d, Format::PostgresLog);
    let change = context(d, "Change");
    assert_eq!(change.kind.as_deref(), Some("Slab"));
    assert_eq!(
        change.detail,
        KindDetail {
            chunks: None,
            empty_blocks: Some(1)
        }
    );
    assert_eq!(
        (
            change.total_bytes,
            change.total_nblocks,
            change.free_bytes,
            change.used_bytes
        ),
        (9696, Some(0), Some(0), Some(9696))
    );
    let txn = context(d, "TXN");
    assert_eq!(txn.detail.empty_blocks, Some(0));
    assert_eq!(context(d, "Tuples").detail.chunks, Some(0));
}

/// PostgreSQL 17's Bump line, `T total in B blocks; F free; U used`, in `MemoryContextStats`
/// output: a sort's `Caller tuples`.
#[test]
fn a_pg17_bump_line_reads_in_memory_context_stats_output() {
    let dumps = fixture("pg17_stderr_bump.txt");
    assert_eq!(dumps.len(), 1);
    let d = &dumps[0];
    assert_whole(d, Format::PostgresStderr);
    let tuples = context(d, "Caller tuples");
    assert_eq!(tuples.kind.as_deref(), Some("Bump"));
    assert_eq!(
        (
            tuples.total_bytes,
            tuples.total_nblocks,
            tuples.free_bytes,
            tuples.free_chunks
        ),
        (1_056_768, Some(9), Some(7040), None)
    );
    assert_eq!(tuples.used_bytes, Some(1_049_728));
    let parent = &d.trees[0].contexts[tuples.parent.unwrap()];
    assert_eq!((parent.name.as_str(), tuples.level), ("TupleSort sort", 5));
}

/// Kills the logical-replication client if the test ends before it exits.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The real thing: a walsender streaming a logical slot has a reorder buffer, whose `Tuples` is a
/// Generation context. Its dump, written to a plain, a csvlog and a jsonlog log at once, reads
/// whole from each, with the Generation line's chunk count kept.
#[test]
fn a_real_walsenders_dump_reads_from_every_log_destination() {
    let Some(probe) = postgres::find_bindir() else {
        return postgres::skip("PostgreSQL not found");
    };
    if !probe.join("pg_recvlogical").exists() {
        return postgres::skip("no pg_recvlogical");
    }
    let Some(cluster) = start_cluster(
        "wal_level = logical\nmax_wal_senders = 4\nmax_replication_slots = 4\n\
         logging_collector = on\nlog_destination = 'stderr,csvlog,jsonlog'\n\
         log_directory = 'log'\n",
    ) else {
        return;
    };
    let psql = |sql: &str| {
        let o = run(cluster
            .runner
            .command(&cluster.bindir.join("psql"))
            .args([
                "-X", "-q", "-t", "-A", "-U", "postgres", "-d", "postgres", "-h",
            ])
            .arg(&cluster.dir)
            .args(["-p", &cluster.port.to_string(), "-c", sql]));
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    psql("select pg_create_logical_replication_slot('s1', 'test_decoding')");
    psql(
        "create table t(a int, b text); insert into t select g, 'x' from generate_series(1, 500) g",
    );
    let recv = cluster
        .runner
        .command(&cluster.bindir.join("pg_recvlogical"))
        .arg("-h")
        .arg(&cluster.dir)
        .args([
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-S", "s1", "--start", "--no-loop", "-f", "/dev/null"])
        // It complains when the cluster stops under it.
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pg_recvlogical");
    let _reaper = Reaper(recv);
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let pid = psql("select pid from pg_stat_replication");
        if !pid.is_empty() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no walsender");
        std::thread::sleep(Duration::from_millis(50));
    };
    psql(&format!("select pg_log_backend_memory_contexts({pid})"));

    let logs = cluster.data().join("log");
    let mut trees = Vec::new();
    for ext in ["log", "csv", "json"] {
        let file = loop {
            let f = std::fs::read_dir(&logs)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == ext))
                .unwrap();
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            if text.contains("Grand total: ") || Instant::now() > deadline {
                break f;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let dumps = leak::parse_file(&file).unwrap();
        assert_eq!(dumps.len(), 1, "{}", file.display());
        let d = &dumps[0];
        assert_whole(d, Format::PostgresLog);
        assert_eq!(d.pid.map(|p| p.to_string()), Some(pid.clone()));
        let tuples = context(d, "Tuples");
        assert_eq!(tuples.kind.as_deref(), Some("Generation"));
        assert!(tuples.detail.chunks.is_some(), "{tuples:?}");
        assert_eq!(
            d.trees[0].contexts[tuples.parent.unwrap()].name,
            "ReorderBuffer"
        );
        trees.push(d.trees[0].clone());
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

/// `memctx stats` prints a PostgreSQL dump's lines as PostgreSQL printed them, each kind's in its
/// own shape: `MemoryContextStats` output comes back byte for byte, a log dump as the same lines
/// with `level: N; ` turned into indentation.
#[test]
fn memctx_stats_prints_every_kinds_line_as_postgres_did() {
    let stats = |file: &str| {
        let o = run(Command::new(env!("CARGO_BIN_EXE_memctx"))
            .arg("stats")
            .arg(Path::new("tests/data").join(file)));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let bump = std::fs::read_to_string("tests/data/pg17_stderr_bump.txt").unwrap();
    assert_eq!(stats("pg17_stderr_bump.txt"), bump);

    let log = std::fs::read_to_string("tests/data/pg16_walsender.log").unwrap();
    let mut want = String::new();
    for line in log.lines() {
        let msg = line.split_once("LOG:  ").unwrap().1;
        if let Some(rest) = msg.strip_prefix("level: ") {
            let (level, body) = rest.split_once("; ").unwrap();
            want.push_str(&"  ".repeat(level.parse().unwrap()));
            want.push_str(body);
            want.push('\n');
        } else if msg.starts_with("Grand total: ") {
            want.push_str(msg);
            want.push('\n');
        }
    }
    let got = stats("pg16_walsender.log");
    assert!(
        got.contains("\n          Change: 9696 total in 0 blocks; 1 empty blocks; "),
        "{got}"
    );
    assert!(
        got.contains("\n          Tuples: 16384 total in 2 blocks (0 chunks); "),
        "{got}"
    );
    assert_eq!(got, want);
}

/// A backend mid-query (a sort, then a hash aggregate), dumped three times: everything it runs is
/// under the unnamed portal, `PortalContext` with the identifier `<unnamed>`. Its same-named
/// `ExprContext`s (5 -> 8) are one group; the same contexts matched by a path that carries the
/// portal's identifier are that group again, not a single context, so they are no entry of
/// their own: each growth is reported once.
#[test]
fn contexts_under_an_identified_portal_are_reported_once() {
    let dumps = fixture("pg15_sort_hashagg.log");
    assert_eq!(dumps.len(), 3);
    let report = leak::diff(&dumps).unwrap();
    let expr: Vec<_> = (report.entries.iter())
        .filter(|e| e.path.last().unwrap().name == "ExprContext")
        .filter(|e| e.path[e.path.len() - 2].name == "ExecutorState")
        .collect();
    let paths: Vec<String> = expr.iter().map(|e| e.display_path()).collect();
    assert_eq!(
        paths,
        ["TopMemoryContext/TopPortalContext/PortalContext/ExecutorState/ExprContext"]
    );
    let group = expr[0];
    assert_eq!(group.kind, EntryKind::Group);
    assert_eq!(group.verdict, Verdict::Growing);
    assert_eq!(group.count.to_vec(), [Some(5), Some(5), Some(8)]);
    assert_eq!(group.growth(), 159_383_552 + 7 * 8192 - 40_960);
    // No entry of any kind is another entry's series under another name.
    for (i, a) in report.entries.iter().enumerate() {
        for b in &report.entries[i + 1..] {
            let same = a.total == b.total && a.count == b.count && a.subtree == b.subtree;
            assert!(
                !(same && a.growth() != 0),
                "{} and {} are one growth",
                a.display_path(),
                b.display_path()
            );
        }
    }
}
