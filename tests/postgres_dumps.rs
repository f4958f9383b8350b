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

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use memctx::leak::{self, EntryKind, Format, Verdict};

/// Statements per batch, and batches (one dump after each).
const BATCH: usize = 80;
const DUMPS: usize = 5;

fn skip(reason: &str) {
    if std::env::var_os("MEMCTX_REQUIRE_POSTGRES").is_some_and(|v| v != "0") {
        panic!("the PostgreSQL test cannot run: {reason}");
    }
    eprintln!("skipping the PostgreSQL test: {reason}");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MEMCTX_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        if o.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if dir.join("initdb").exists() {
                return Some(dir);
            }
        }
    }
    // Debian installs the server binaries outside PATH.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Runs PostgreSQL's programs: as the `postgres` user when we are root (the server refuses root).
struct Runner {
    as_postgres: bool,
}

impl Runner {
    fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

/// The throwaway cluster; stopped and removed on drop, also when the test panics.
struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    runner: Runner,
    port: u16,
    started: bool,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = self
                .runner
                .command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
        if std::env::var_os("MEMCTX_KEEP_PG_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn start_cluster() -> Option<Cluster> {
    let Some(bindir) = find_bindir() else {
        skip("PostgreSQL not found (no pg_config --bindir, nothing in /usr/lib/postgresql)");
        return None;
    };
    let version = run(Command::new(bindir.join("postgres")).arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let major: u32 = version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
        .unwrap_or(0);
    if major < 14 {
        skip(&format!(
            "{} is older than 14 (no pg_log_backend_memory_contexts)",
            version.trim()
        ));
        return None;
    }
    let root = is_root();
    if root {
        let ok = Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            skip("running as root and there is no `postgres` user to run the server as");
            return None;
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // As root the server runs as `postgres`, which must be able to reach the directory: use /tmp
    // rather than a TMPDIR that may sit under root's home.
    let base = if root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("memctx-pg-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster {
        dir,
        bindir,
        runner: Runner { as_postgres: root },
        // Any port will do: the socket lives in our own directory.
        port: 50000 + (std::process::id() % 10000) as u16,
        started: false,
    };
    if root {
        let o = run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(&cluster.dir));
        assert!(o.status.success(), "chown: {o:?}");
    }
    eprintln!("{} in {}", version.trim(), cluster.dir.display());

    let o = run(cluster
        .runner
        .command(&cluster.bindir.join("initdb"))
        .arg("-D")
        .arg(cluster.data())
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]));
    assert!(
        o.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let conf = format!(
        "\n# memctx test cluster\n\
         listen_addresses = ''\n\
         unix_socket_directories = '{dir}'\n\
         port = {port}\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         shared_buffers = 16MB\n\
         max_connections = 10\n\
         logging_collector = off\n\
         lc_messages = 'C'\n\
         log_line_prefix = '%m [%p] %q%u@%d/%a '\n",
        dir = cluster.dir.display(),
        port = cluster.port
    );
    let conf_path = cluster.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf_path).unwrap();
    text.push_str(&conf);
    std::fs::write(&conf_path, text).unwrap();

    cluster.started = true; // from here on, stop it on drop
    let o = run(cluster
        .runner
        .command(&cluster.bindir.join("pg_ctl"))
        .arg("-D")
        .arg(cluster.data())
        .arg("-l")
        .arg(cluster.log())
        .args(["-w", "-t", "60", "start"]));
    assert!(
        o.status.success(),
        "pg_ctl start failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        std::fs::read_to_string(cluster.log()).unwrap_or_default()
    );
    Some(cluster)
}

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
    let Some(cluster) = start_cluster() else {
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
    let counts: Vec<u64> = top.count.iter().flatten().copied().collect();
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
        .contains("printed siblings: CachedPlanSource x100"));
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
