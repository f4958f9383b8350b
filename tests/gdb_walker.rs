//! The gdb walker (`valgrind/memctx_gdb.py`) against a real process and a core file.
//!
//! For each build profile — the test's own (debug info) and `release` (no debug info: the walker
//! must get by with the `MEMCTX_REGISTRY` symbol and the registry's layout table) — this builds
//! `examples/gdb_target.rs` (a tree with contexts of every kind), starts it, waits for it to write
//! its own stats and print `READY`, then runs gdb in batch mode on the live process and on a core
//! written with `gcore`, and checks
//! that the walker prints, for every thread, exactly the lines the program printed with
//! `memctx::format_stats`, and (with the `cli` feature) that `memctx::leak` reads gdb's output as
//! one snapshot with a tree per thread. It also checks that the walker refuses a registry with
//! the wrong magic or an unknown layout version.
//!
//! With the `debug-contexts` feature the example is built with it too (a different chunk prefix,
//! read from the registry), in the test's profile only.
//!
//! Needs gdb and ptrace permission (we run as root). It is skipped, with a message, under a
//! sanitizer or Valgrind, where the example would be rebuilt with other flags for nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "common/examples.rs"]
mod examples;
use examples::build_example;

/// Where the walker is.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("valgrind/memctx_gdb.py")
}

/// A thread's tree as printed: name, state, and the stats lines (through `Grand total`).
#[derive(Debug, PartialEq, Eq)]
struct ThreadTree {
    name: String,
    state: String,
    lines: Vec<String>,
}

/// The running example; killed and cleaned up on drop if the test fails half-way.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stats_file: PathBuf,
}

impl Target {
    fn start(exe: &Path, tag: &str) -> Target {
        let stats_file =
            std::env::temp_dir().join(format!("memctx-gdb-{}-{tag}.txt", std::process::id()));
        let _ = std::fs::remove_file(&stats_file);
        let mut child = Command::new(exe)
            .arg(&stats_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut target = Target {
            child,
            stdin,
            stats_file,
        };
        // Wait for READY, with a deadline (the reader thread ends when the child's stdout does).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = target.child.try_wait();
            panic!("gdb_target did not print READY (status {status:?})");
        }
        target
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program's own stats, by thread id: with the default limits, or (`limited`) with
    /// `max_level` 1 and `max_children` 2.
    fn own_stats(&self, limited: bool) -> BTreeMap<u32, ThreadTree> {
        let mut path = self.stats_file.clone().into_os_string();
        if limited {
            path.push(".limited");
        }
        let text = std::fs::read_to_string(path).expect("read the stats file");
        let mut out = BTreeMap::new();
        let mut lines = text.lines();
        while let Some(head) = lines.next() {
            let rest = head
                .strip_prefix("thread \"")
                .unwrap_or_else(|| panic!("unexpected line in the stats file: {head:?}"));
            let (name, tid) = rest.rsplit_once("\" tid ").expect("thread header");
            let tree = take_tree(&mut lines);
            out.insert(
                tid.parse().expect("tid"),
                ThreadTree {
                    name: name.to_string(),
                    state: String::new(),
                    lines: tree,
                },
            );
        }
        out
    }

    /// Closes stdin and waits for the program to exit.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for gdb_target");
        assert!(status.success(), "gdb_target exited with {status}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Failing half-way: do not leave the program running.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stats_file);
        let mut limited = self.stats_file.clone().into_os_string();
        limited.push(".limited");
        let _ = std::fs::remove_file(limited);
    }
}

/// A file removed on drop (the core file: tens of MiB).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The stats lines from here through the `Grand total` line.
fn take_tree<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut tree = Vec::new();
    for line in lines.by_ref() {
        tree.push(line.to_string());
        if line.starts_with("Grand total: ") {
            return tree;
        }
    }
    panic!("a tree without a Grand total line: {tree:#?}");
}

/// Runs gdb in batch mode with the walker loaded; `target` are the arguments naming the process
/// or the program and its core. Returns stdout and stderr.
fn gdb(target: &[&str], commands: &[&str]) -> (String, String) {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-iex", "set debuginfod enabled off"])
        .args(target)
        .arg("-x")
        .arg(script());
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run gdb (is it installed?)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The trees of the walker's output by thread id. Fails on warnings.
fn parse_walker(out: &str, err: &str) -> BTreeMap<u32, ThreadTree> {
    let context = || format!("gdb stdout:\n{out}\ngdb stderr:\n{err}");
    assert!(
        !out.contains("memctx: warning:"),
        "the walker warned:\n{}",
        context()
    );
    assert!(
        out.lines().any(|l| l.starts_with("memctx registry at 0x")),
        "no registry line\n{}",
        context()
    );
    let mut trees = BTreeMap::new();
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("Thread \"") else {
            continue;
        };
        // Thread "NAME" tid TID (STATE), TopMemoryContext at 0xADDR:
        let (name, rest) = rest.rsplit_once("\" tid ").expect("thread header");
        let (tid, rest) = rest.split_once(" (").expect("thread header");
        let (state, _) = rest.split_once("), ").expect("thread header");
        trees.insert(
            tid.parse().expect("tid"),
            ThreadTree {
                name: name.to_string(),
                state: state.to_string(),
                lines: take_tree(&mut lines),
            },
        );
    }
    assert!(!trees.is_empty(), "no thread trees\n{}", context());
    trees
}

/// Checks the walker's trees against the program's own, thread by thread.
fn check_trees(what: &str, walker: &BTreeMap<u32, ThreadTree>, own: &BTreeMap<u32, ThreadTree>) {
    assert_eq!(
        walker.keys().collect::<Vec<_>>(),
        own.keys().collect::<Vec<_>>(),
        "{what}: the walker and the program list different threads"
    );
    for (tid, mine) in own {
        let seen = &walker[tid];
        assert_eq!(seen.name, mine.name, "{what}: name of thread {tid}");
        let want_state = if mine.name == "short-lived" {
            "exited"
        } else {
            "live"
        };
        assert_eq!(seen.state, want_state, "{what}: state of thread {tid}");
        for (i, (a, b)) in seen.lines.iter().zip(&mine.lines).enumerate() {
            assert_eq!(a, b, "{what}: thread {tid} ({}), line {}", mine.name, i + 1);
        }
        assert_eq!(
            seen.lines.len(),
            mine.lines.len(),
            "{what}: thread {tid}: number of lines"
        );
    }
}

/// Checks that `memctx::leak` reads gdb's whole output (`[New LWP ...]` and all) as one snapshot
/// of the process with a tree per thread, each adding up to the program's own grand total.
#[cfg(feature = "cli")]
fn check_leak_reader(what: &str, out: &str, own: &BTreeMap<u32, ThreadTree>, pid: u32) {
    let dumps = memctx::leak::parse_str(out, "gdb.out")
        .unwrap_or_else(|e| panic!("{what}: memctx::leak cannot read gdb's output: {e}\n{out}"));
    assert_eq!(dumps.len(), 1, "{what}: one walk, one snapshot");
    let d = &dumps[0];
    assert_eq!(d.format, memctx::leak::Format::MemctxWalker, "{what}");
    assert_eq!(d.pid, Some(pid), "{what}: the PID");
    assert!(d.warnings.is_empty(), "{what}: {:?}", d.warnings);
    assert_eq!(d.trees.len(), own.len(), "{what}: a tree per thread");
    for mine in own.values() {
        let tree = d
            .trees
            .iter()
            .find(|t| t.thread.as_deref() == Some(mine.name.as_str()))
            .unwrap_or_else(|| panic!("{what}: no tree for thread {}", mine.name));
        assert_eq!(
            tree.exited,
            mine.name == "short-lived",
            "{what}: {}",
            mine.name
        );
        let grand: u64 = mine.lines.last().unwrap()["Grand total: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(tree.total().total_bytes, grand, "{what}: {}", mine.name);
    }
}

/// Builds, runs and walks the example in one profile.
fn check_profile(profile: &str) {
    let start = Instant::now();
    let exe = build_example("gdb_target", profile);
    let built = start.elapsed();
    let exe_s = exe.to_str().expect("utf-8 path");
    let target = Target::start(&exe, profile);
    let pid = target.pid().to_string();
    let own = target.own_stats(false);
    let own_limited = target.own_stats(true);
    assert_eq!(own.len(), 3, "the example runs three threads");
    // The example covers an identifier cut at 100 bytes and the summary of children past 100.
    let lines = || own.values().flat_map(|t| t.lines.iter());
    assert!(lines().any(|l| l.ends_with("...")));
    assert!(lines().any(|l| l.starts_with("    5 more child contexts containing ")));
    // Every kind is in the trees: the walker reads each through its own entry of the script's
    // kind table — a Bump context, a Slab one with freed slots, and a Generation one whose freed
    // chunks wait for their blocks.
    let context = |name: &str| lines().find(|l| l.trim_start().starts_with(name)).cloned();
    assert!(context("Caller tuples: ").is_some(), "no Bump context");
    let slab = context("Change: ").expect("no Slab context");
    assert!(!slab.contains("(0 chunks)"), "no free Slab slots: {slab}");
    let fifo = context("ReorderBuffer: ").expect("no Generation context");
    assert!(
        !fifo.contains("(0 chunks)"),
        "no freed Generation chunks: {fifo}"
    );

    // One gdb session on the live process: the walk, the thread list, a core, then the refusals:
    // something that is not a registry (wrong magic), and a registry whose layout version the
    // walker does not know (patched in the process, then restored and walked again).
    let core = TempFile(
        std::env::temp_dir().join(format!("memctx-gdb-{}-{profile}.core", std::process::id())),
    );
    let core_s = core.0.to_str().expect("utf-8 path").to_string();
    let version = "*(unsigned int *)((char *)&MEMCTX_REGISTRY + 8)";
    let (out, err) = gdb(
        &["-p", &pid],
        &[
            "memctx-stats",
            "echo @@limited\\n",
            "memctx-stats --max-level 1 --max-children 2",
            "echo @@threads\\n",
            "memctx-threads",
            &format!("gcore {core_s}"),
            "echo @@refusals\\n",
            "set language c",
            "memctx-stats --registry '(char *)&MEMCTX_REGISTRY + 8'",
            &format!("set var {version} = 99"),
            "memctx-stats",
            &format!("set var {version} = {}", memctx::LAYOUT_VERSION),
            "echo @@again\\n",
            "memctx-stats",
        ],
    );
    let section = |name: &str| -> &str {
        let (_, after) = out
            .split_once(&format!("@@{name}\n"))
            .unwrap_or_else(|| panic!("no {name} section in gdb's output:\n{out}\n{err}"));
        after.split("@@").next().unwrap_or("")
    };
    let live_out = out.split("@@limited\n").next().unwrap_or("");
    let live = parse_walker(live_out, &err);
    check_trees(&format!("{profile}, live process"), &live, &own);
    #[cfg(feature = "cli")]
    check_leak_reader(
        &format!("{profile}, live process"),
        live_out,
        &own,
        target.pid(),
    );
    let limited = parse_walker(section("limited"), &err);
    check_trees(
        &format!("{profile}, live process, limited"),
        &limited,
        &own_limited,
    );
    let threads = section("threads");
    for t in own.values() {
        assert!(threads.contains(&t.name), "memctx-threads:\n{threads}");
    }
    assert!(
        err.contains("not a memctx registry"),
        "wrong magic not refused:\n{err}"
    );
    assert!(
        err.contains("layout version 99"),
        "unknown layout version not refused:\n{err}"
    );
    let again = parse_walker(section("again"), &err);
    check_trees(&format!("{profile}, after restoring"), &again, &own);

    // The core.
    assert!(core.0.exists(), "gcore wrote no core file\n{out}\n{err}");
    let (out, err) = gdb(&[exe_s, &core_s], &["memctx-stats"]);
    drop(core);
    let from_core = parse_walker(&out, &err);
    check_trees(&format!("{profile}, core file"), &from_core, &own);
    #[cfg(feature = "cli")]
    check_leak_reader(&format!("{profile}, core file"), &out, &own, target.pid());

    target.finish();
    eprintln!(
        "gdb walker, {profile} profile: built in {:.1?}, checked in {:.1?}",
        built,
        start.elapsed() - built
    );
}

/// Whether this run is instrumented (a sanitizer build or Valgrind), where the test is skipped.
fn instrumented() -> Option<String> {
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        if let Ok(v) = std::env::var(var) {
            if v.contains("sanitizer") {
                return Some(format!("{var} asks for a sanitizer"));
            }
        }
    }
    if std::env::var("LD_PRELOAD").is_ok_and(|v| v.contains("vgpreload")) {
        return Some("running under Valgrind".to_string());
    }
    None
}

#[test]
fn gdb_walker_matches_own_stats() {
    if let Some(why) = instrumented() {
        eprintln!("skipping the gdb walker test: {why}");
        return;
    }
    if let Ok(scope) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        assert!(
            scope.trim() == "0" || is_root(),
            "ptrace_scope is {} and we are not root: gdb cannot attach",
            scope.trim()
        );
    }
    let own = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    check_profile(own);
    if own != "release" && !cfg!(feature = "debug-contexts") {
        check_profile("release");
    }
    let _ = std::io::stderr().flush();
}

/// Whether we run as root (uid 0).
fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}
