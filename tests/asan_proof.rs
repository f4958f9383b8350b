//! Proof that AddressSanitizer sees the debug build's poisoning (issue 4): each test runs one bug
//! of `examples/bugs.rs` — built with ASan like this test — in a child process, parses ASan's
//! report and checks its kind, the access, and that the stack names the function that committed
//! the bug. ASan sees overruns (also inside the size class's slack), underruns and uses after
//! pfree or reset; uninitialised reads and leaks are memcheck's (`tests/memcheck_proof.rs`).
//!
//! Compiled only into an ASan build (`cfg(memctx_asan)`, set by the build script):
//! `RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" cargo test --features debug-contexts
//! --target x86_64-unknown-linux-gnu`.
#![cfg(all(feature = "debug-contexts", memctx_asan))]

use std::path::PathBuf;
use std::process::Command;

/// What ASan reported.
#[derive(Debug)]
struct AsanReport {
    /// The bug type after `ERROR: AddressSanitizer: `, e.g. `use-after-poison`.
    kind: String,
    /// `READ` or `WRITE`, and the access size.
    access: String,
    /// Function names of the faulting stack, innermost first.
    stack: Vec<String>,
    /// The child's exit status.
    status: Option<i32>,
}

/// The `bugs` example next to this test binary (`target/<triple>/debug/examples/bugs`).
fn bugs_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<triple>/<profile>/deps");
    let bugs = dir.join("examples").join("bugs");
    assert!(
        bugs.exists(),
        "{} is missing: `cargo test` with the same flags builds it (or add `--example bugs`)",
        bugs.display()
    );
    bugs
}

/// Runs `bugs <name>` and parses ASan's report from its stderr (`None`: no report).
fn asan(name: &str) -> Option<AsanReport> {
    let out = Command::new(bugs_exe())
        .arg(name)
        // Leaks are not what these runs are about; symbolised frames are.
        .env("ASAN_OPTIONS", "detect_leaks=0:symbolize=1")
        .output()
        .expect("run the bugs example");
    let err = String::from_utf8_lossy(&out.stderr);
    let mut lines = err.lines();
    let kind = lines
        .by_ref()
        .find_map(|l| l.split("ERROR: AddressSanitizer: ").nth(1))?
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let access_line = lines
        .by_ref()
        .find(|l| l.starts_with("READ of size") || l.starts_with("WRITE of size"))
        .unwrap_or("");
    let access = access_line
        .split(" at ")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    // Frames look like `    #1 0x55d0c8a6ed2e in bugs::overrun /path/examples/bugs.rs:34:14`;
    // the first blank line ends the faulting stack.
    let stack = lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let l = l.trim_start();
            if !l.starts_with('#') {
                return None;
            }
            let after_in = l.split(" in ").nth(1)?;
            Some(after_in.split_whitespace().next()?.to_owned())
        })
        .collect();
    Some(AsanReport {
        kind,
        access,
        stack,
        status: out.status.code(),
    })
}

/// Asserts ASan reported `kind` for an access of `access` in `bugs::<function>`.
fn assert_report(name: &str, kind: &str, access: &str, function: &str) {
    let r = asan(name).unwrap_or_else(|| panic!("no ASan report for `bugs {name}`"));
    assert_eq!(r.kind, kind, "{r:#?}");
    assert_eq!(r.access, access, "{r:#?}");
    let want = format!("bugs::{function}");
    assert!(
        r.stack.iter().take(3).any(|f| *f == want),
        "the faulting stack should name {want}: {r:#?}"
    );
    assert_ne!(
        r.status,
        Some(0),
        "ASan stops the process at the bug: {r:#?}"
    );
}

#[test]
fn overrun_of_one_byte_is_reported_at_the_write() {
    assert_report("overrun", "use-after-poison", "WRITE of size 1", "overrun");
}

#[test]
fn overrun_inside_the_size_class_slack_is_reported_at_the_write() {
    assert_report(
        "overrun-slack",
        "use-after-poison",
        "WRITE of size 1",
        "overrun_slack",
    );
}

#[test]
fn overrun_of_a_chunk_with_a_block_of_its_own_is_reported_at_the_write() {
    // Under ASan no guard page is used: the tail after the request is poisoned instead.
    assert_report(
        "large-overrun",
        "use-after-poison",
        "WRITE of size 1",
        "large_overrun",
    );
}

#[test]
fn underrun_is_reported_at_the_write() {
    assert_report(
        "underrun",
        "use-after-poison",
        "WRITE of size 1",
        "underrun",
    );
}

/// A Slab chunk is poisoned as an AllocSet chunk is: past its object, and once freed or reset.
#[test]
fn slab_chunks_are_poisoned_past_the_object_and_after_pfree_or_reset() {
    assert_report(
        "slab-overrun",
        "use-after-poison",
        "WRITE of size 1",
        "slab_overrun",
    );
    assert_report(
        "slab-read-after-pfree",
        "use-after-poison",
        "READ of size 1",
        "slab_read_after_pfree",
    );
    assert_report(
        "slab-read-after-reset",
        "use-after-poison",
        "READ of size 1",
        "slab_read_after_reset",
    );
}

/// A Generation chunk is poisoned past its request and once freed — also when the `pfree`
/// emptied its block, which the context keeps as its spare or gives back — and after a reset.
#[test]
fn generation_chunks_are_poisoned_past_the_request_and_after_pfree_or_reset() {
    for (name, access) in [
        ("generation-overrun", "WRITE of size 1"),
        ("generation-read-after-pfree", "READ of size 1"),
        ("generation-write-after-spare", "WRITE of size 1"),
        ("generation-read-after-give-back", "READ of size 1"),
        ("generation-read-after-reset", "READ of size 1"),
    ] {
        assert_report(name, "use-after-poison", access, &name.replace('-', "_"));
    }
}

/// A Bump chunk of the debug build is poisoned past its request and after the context's reset.
#[test]
fn bump_chunks_are_poisoned_past_the_request_and_after_reset() {
    assert_report(
        "bump-overrun",
        "use-after-poison",
        "WRITE of size 1",
        "bump_overrun",
    );
    assert_report(
        "bump-read-after-reset",
        "use-after-poison",
        "READ of size 1",
        "bump_read_after_reset",
    );
}

#[test]
fn use_after_pfree_is_reported_at_the_read() {
    assert_report(
        "read-after-pfree",
        "use-after-poison",
        "READ of size 1",
        "read_after_pfree",
    );
}

#[test]
fn use_after_reset_is_reported_at_the_read() {
    assert_report(
        "read-after-reset",
        "use-after-poison",
        "READ of size 1",
        "read_after_reset",
    );
}

/// A block of a deleted context waits in the debug build's quarantine, poisoned: a read through a
/// pointer into it is ASan's report at the read.
#[test]
fn use_after_delete_is_reported_at_the_read() {
    assert_report(
        "read-after-delete",
        "use-after-poison",
        "READ of size 1",
        "read_after_delete",
    );
}

#[test]
fn a_correct_workload_raises_nothing() {
    let out = Command::new(bugs_exe())
        .arg("clean")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("run the bugs example");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("AddressSanitizer"),
        "status {:?}, stderr:\n{err}",
        out.status
    );
}
