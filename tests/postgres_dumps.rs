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

use memctx::leak::{self, EntryKind, Format, Verdict};

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
