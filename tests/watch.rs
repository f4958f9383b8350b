//! `memctx watch` against real processes: the demo (a memctx program whose dumper has a signal),
//! a memctx program without a dumper (gdb_target: the watch must not send it a signal, whose
//! default action would end it, and reads it through gdb instead), and a PostgreSQL backend
//! that keeps preparing statements (a throwaway cluster with the logging collector on, so the
//! watch finds the log through `pg_current_logfile()`).
//!
//! Each test runs the CLI as a user would and then checks the series it left with the library's
//! `diff`: the demo's planted leak is CacheMemoryContext, the backend's growth is under
//! CacheMemoryContext (one CachedPlanSource per prepared statement).
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

use memctx::leak::{self, DiffOptions, Metric, Verdict};
use memctx::snapshot::Trigger;

#[path = "common/examples.rs"]
mod examples;
#[path = "common/postgres.rs"]
mod postgres;

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memctx-watch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed on drop, so a failed assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

fn memctx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memctx"))
        .args(args)
        .output()
        .expect("run memctx")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_demos_leak_is_found_through_its_dump_signal() {
    let dir = temp_dir("demo");
    let demo = examples::build_example("demo", "dev");
    let mut host = Running(
        Command::new(&demo)
            .arg(dir.join("host"))
            .args(["--queries", "100000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The dumper is on once the demo has printed its first line (the tree after query 1).
    let mut out = BufReader::new(host.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let series = dir.join("series");
    let pid = host.pid().to_string();
    // Used bytes grow with every query; the total grows in doubling blocks, a step that a short
    // watch may call a plateau.
    let o = memctx(&[
        "watch",
        &pid,
        "--every",
        "300ms",
        "--count",
        "4",
        "--metric",
        "used",
        "-o",
        series.to_str().unwrap(),
    ]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("watching memctx process {pid} by signal 10")),
        "{shown}"
    );
    assert_eq!(
        shown.matches("(process kept running)").count(),
        4,
        "{shown}"
    );
    // The ranking puts the leak first, growing, with its sparkline.
    let first_row = shown
        .lines()
        .skip_while(|l| !l.starts_with("verdict"))
        .nth(1)
        .unwrap();
    assert!(first_row.starts_with("growing"), "{shown}");
    assert!(
        first_row.ends_with("TopMemoryContext/CacheMemoryContext"),
        "{shown}"
    );
    assert!(host.alive(), "the signal must not end the demo");
    for n in 1..=4 {
        let snap =
            memctx::snapshot::read_snapshot(&series.join(memctx::snapshot::snapshot_file_name(n)))
                .unwrap();
        assert_eq!(snap.trigger, Some(Trigger::Signal));
        assert_eq!(snap.pid, host.pid());
    }
    let dumps = leak::load_series(&[&series]).unwrap().dumps;
    let opts = DiffOptions {
        metric: Metric::Used,
    };
    let report = leak::diff_with(&dumps, &opts).unwrap();
    assert_eq!(
        report.entries[0].display_path(),
        "TopMemoryContext/CacheMemoryContext"
    );
    assert_eq!(report.entries[0].verdict, Verdict::Growing);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gdb target: started, and ready once it prints READY; it exits when its stdin closes.
fn start_gdb_target(dir: &Path) -> (Running, ChildStdin) {
    let exe = examples::build_example("gdb_target", "dev");
    let mut child = Command::new(exe)
        .arg(dir.join("own-stats.txt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY");
    (Running(child), stdin)
}

#[test]
fn a_process_without_a_dumper_is_read_through_gdb_and_never_signalled() {
    let dir = temp_dir("nodumper");
    let (mut target, stdin) = start_gdb_target(&dir);
    let series = dir.join("series");
    let pid = target.pid().to_string();
    let o = memctx(&[
        "watch",
        &pid,
        "--every",
        "2s",
        "--count",
        "2",
        "-o",
        series.to_str().unwrap(),
    ]);
    let shown = text(&o);
    assert!(
        shown.contains("through gdb and the walker")
            && shown.contains("its registry shows no running dumper"),
        "{shown}"
    );
    assert!(o.status.success(), "{shown}");
    assert_eq!(shown.matches("process stopped for").count(), 2, "{shown}");
    assert!(target.alive(), "the watch ended a process without a dumper");
    // gdb's output, as the walker printed it (gdb's own lines cut), is the series.
    for n in 1..=2 {
        let walked = std::fs::read_to_string(series.join(format!("gdb-{n:06}.txt"))).unwrap();
        assert!(walked.starts_with("memctx registry at "), "{walked}");
        assert_eq!(walked.matches("Grand total: ").count(), 3, "{walked}");
    }
    assert!(!leak::load_series(&[&series]).unwrap().dumps.is_empty());
    drop(stdin);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A psql session kept open: the backend the watch follows.
struct Session {
    psql: Running,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Session {
    fn open(cluster: &postgres::Cluster) -> Session {
        let mut child = cluster
            .runner
            .command(&cluster.bindir.join("psql"))
            .args([
                "-X", "-q", "-A", "-t", "-U", "postgres", "-d", "postgres", "-h",
            ])
            .arg(&cluster.dir)
            .args(["-p", &cluster.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Session {
            psql: Running(child),
            stdin,
            stdout,
        }
    }

    /// Runs `sql` and returns the first line it printed.
    fn query(&mut self, sql: &str) -> String {
        writeln!(self.stdin, "{sql}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

/// Conninfo of the test cluster.
fn conninfo(cluster: &postgres::Cluster) -> String {
    format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.dir.display(),
        cluster.port
    )
}

#[test]
fn a_postgres_backends_growth_is_found_through_its_log() {
    let Some(cluster) = postgres::start_cluster(
        "logging_collector = on\nlog_directory = 'log'\nlog_filename = 'server.log'\n",
    ) else {
        return;
    };
    let mut session = Session::open(&cluster);
    let backend = session.query("select pg_backend_pid();");
    let series = cluster.dir.join("series");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_memctx"))
        .args(["watch", &backend, "--pg", &conninfo(&cluster)])
        .args(["--every", "1s", "--count", "4", "-o"])
        .arg(&series)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The backend keeps preparing statements while the watch runs: every dump holds more
    // CachedPlanSource contexts than the one before.
    let mut n = 0;
    while watch.try_wait().unwrap().is_none() {
        for _ in 0..20 {
            n += 1;
            writeln!(
                session.stdin,
                "PREPARE grow_{n} AS SELECT relname, {n} + $1::int FROM pg_class WHERE oid = $2::oid;"
            )
            .unwrap();
        }
        session.query("select 1;");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = watch.wait_with_output().unwrap();
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("watching PostgreSQL backend {backend}"))
            && shown.contains("log/server.log"),
        "{shown}"
    );
    let dumps = leak::load_series(&[&series]).unwrap().dumps;
    assert_eq!(dumps.len(), 4, "{shown}");
    assert!(dumps.iter().all(|d| d.pid == backend.parse().ok()));
    let report = leak::diff(&dumps).unwrap();
    let grew = report
        .growing()
        .map(|e| e.display_path())
        .collect::<Vec<_>>();
    assert!(
        grew.iter()
            .any(|p| p.starts_with("TopMemoryContext/CacheMemoryContext")),
        "nothing under CacheMemoryContext grows: {grew:?}\n{shown}"
    );
    assert!(session.psql.alive());
}

#[test]
fn a_server_without_a_readable_log_is_refused_unless_log_is_given() {
    let Some(cluster) = postgres::start_cluster("") else {
        return;
    };
    let mut session = Session::open(&cluster);
    let backend = session.query("select pg_backend_pid();");
    let series = cluster.dir.join("series");
    let info = conninfo(&cluster);
    let o = memctx(&[
        "watch",
        &backend,
        "--pg",
        &info,
        "-o",
        series.to_str().unwrap(),
    ]);
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("no logging collector") && shown.contains("--log FILE"),
        "{shown}"
    );
    assert!(
        !series.exists(),
        "a refused watch leaves no directory behind"
    );
    // The log pg_ctl writes to, given by hand.
    let log = cluster.log();
    let o = memctx(&[
        "watch",
        &backend,
        "--pg",
        &info,
        "--log",
        log.to_str().unwrap(),
        "--every",
        "200ms",
        "--count",
        "2",
        "-o",
        series.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(leak::load_series(&[&series]).unwrap().dumps.len(), 2);
}
