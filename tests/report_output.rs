//! How the debug build tells a report: where it goes (`log` with target `memctx` at error level;
//! stderr only without a logger or with `MEMCTX_REPORT_STDERR=1`, never with `0`), which frames it
//! shows (the program's own by default, every frame with `MEMCTX_REPORT_ALL_FRAMES=1`), that it is
//! printed once and fits a screen, and that a report raised while a test unwinds fails that test
//! instead of aborting the test binary.
//!
//! Each case runs in a child process — this test binary run again with only the test `child`
//! selected and `MEMCTX_TEST_CHILD` naming the case — because a logger, the report settings and
//! an abort are process-wide. The cases commit a one-byte overrun on purpose, so the sanitizer
//! legs leave this file out (ci/sanitizers), as they leave out debug_reports.rs.
#![cfg(feature = "debug-contexts")]

use std::process::{Command, Output};

use memctx::debug::{self, Policy};
use memctx::{pfree, BlockSizes, MemoryContext};

/// The environment variable naming the child's case.
const CHILD: &str = "MEMCTX_TEST_CHILD";

/// The headline every case's report starts with.
const HEADLINE: &str =
    "memctx: overrun in memory context \"ChildCtx\" (TopMemoryContext -> ChildCtx), found at pfree";

/// Runs `case` in a child (the test `child` of this binary, alone), with `env` set and the
/// variables that steer reports cleared otherwise.
fn run_child(case: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, case);
    for var in [
        "RUST_LOG",
        "MEMCTX_REPORT_STDERR",
        "MEMCTX_REPORT_ALL_FRAMES",
        "MEMCTX_ON_ERROR",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the child")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The child's output, checked to be a passing run.
fn passing_child(case: &str, env: &[(&str, &str)]) -> (String, String) {
    let out = run_child(case, env);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "child {case} {env:?} failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The value the child printed as `LINE <what> <n>` (the first may follow libtest's `test child
/// ... `).
fn line_of(stdout: &str, what: &str) -> u32 {
    let prefix = format!("LINE {what} ");
    stdout
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, n)| n))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} line in {stdout}"))
}

/// The report's lines on `stderr`: from its headline to the first line that is not indented.
fn report_lines(stderr: &str) -> Vec<&str> {
    let mut lines = stderr.lines().skip_while(|l| !l.starts_with(HEADLINE));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no report in {stderr}"));
    std::iter::once(first)
        .chain(lines.take_while(|l| l.starts_with("  ")))
        .collect()
}

#[test]
fn without_a_logger_a_report_goes_to_stderr_once() {
    let (_, stderr) = passing_child("log-policy", &[]);
    assert_eq!(stderr.matches(HEADLINE).count(), 1, "{stderr}");
}

#[test]
fn memctx_report_stderr_0_keeps_reports_off_stderr() {
    let (stdout, stderr) = passing_child("log-policy", &[("MEMCTX_REPORT_STDERR", "0")]);
    assert!(!stderr.contains("memctx:"), "{stderr}");
    // The report was still made (and kept for take_reports).
    assert!(stdout.contains("REPORTS 1"), "{stdout}");
}

#[test]
fn env_logger_shows_reports_and_rust_log_silences_them() {
    let (_, shown) = passing_child("env-logger", &[("RUST_LOG", "warn")]);
    // Through the logger only: a logger is installed, so not also on stderr directly.
    assert_eq!(shown.matches(HEADLINE).count(), 1, "{shown}");
    assert!(shown.contains("ERROR memctx"), "{shown}");
    let (stdout, silenced) = passing_child("env-logger", &[("RUST_LOG", "warn,memctx=off")]);
    assert!(!silenced.contains("memctx:"), "{silenced}");
    assert!(stdout.contains("REPORTS 1"), "{stdout}");
    let (_, both) = passing_child(
        "env-logger",
        &[("RUST_LOG", "warn"), ("MEMCTX_REPORT_STDERR", "1")],
    );
    assert_eq!(both.matches(HEADLINE).count(), 2, "{both}");
}

#[test]
fn reports_are_logged_at_error_level_with_target_memctx() {
    let (stdout, stderr) = passing_child("recording-logger", &[]);
    let records: Vec<&str> = stdout.lines().filter(|l| l.starts_with("LOG ")).collect();
    assert_eq!(
        records,
        [format!("LOG ERROR memctx {HEADLINE}")],
        "{stdout}"
    );
    assert!(!stderr.contains("memctx:"), "{stderr}");
}

#[test]
fn a_one_byte_overrun_is_printed_once_with_the_programs_frames() {
    let (stdout, stderr) = passing_child("panic-policy", &[]);
    let report = report_lines(&stderr);
    assert!(report.len() <= 24, "longer than a screen: {report:#?}");
    // The panic message is the headline and the detail: the report is not printed again.
    let payload = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PAYLOAD "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        payload,
        format!("{HEADLINE}: bytes past the requested 10 were written (rear redzone)")
    );
    assert_eq!(
        stderr.matches("damaged bytes [10, 11)").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("allocated at:").count(), 1, "{stderr}");
    // Only this file's frames, and the first of each stack is the line that did it.
    let frames: Vec<&str> = report
        .iter()
        .copied()
        .filter(|l| l.contains(" #"))
        .collect();
    assert!(!frames.is_empty(), "{report:#?}");
    for f in &frames {
        assert!(f.contains(" in report_output::"), "{f}\n{report:#?}");
    }
    let first_after = |title: &str| {
        let i = report.iter().position(|l| l.trim() == title).expect(title);
        report[i + 1]
    };
    let at = |what: &str, func: &str| {
        format!(
            "in report_output::{func} at tests/report_output.rs:{}",
            line_of(&stdout, what)
        )
    };
    assert!(
        first_after("found at pfree:").ends_with(&at("pfree", "overrun_one_byte")),
        "{report:#?}"
    );
    assert!(
        first_after("allocated at:").ends_with(&at("alloc", "overrun_one_byte")),
        "{report:#?}"
    );
}

#[test]
fn report_all_frames_shows_std_the_harness_and_memctx() {
    let (_, stderr) = passing_child("log-policy", &[("MEMCTX_REPORT_ALL_FRAMES", "1")]);
    let report = report_lines(&stderr).join("\n");
    for part in [
        " in report_output::overrun_one_byte at ",
        " in memctx::",
        " in std::",
        " in test::",
    ] {
        assert!(report.contains(part), "no {part:?} in {report}");
    }
}

#[test]
fn a_report_while_unwinding_fails_the_test_instead_of_aborting() {
    let out = run_child("unwinding", &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // libtest's exit status for failed tests; an abort would be a signal (no code).
    assert_eq!(out.status.code(), Some(101), "{stdout}\n{stderr}");
    assert!(stdout.contains("test child ... FAILED"), "{stdout}");
    assert!(stdout.contains("0 passed; 1 failed"), "{stdout}");
    assert!(stderr.contains("the test's own failure"), "{stderr}");
    assert_eq!(stderr.matches(HEADLINE).count(), 1, "{stderr}");
}

/// `MEMCTX_ON_ERROR` sets the process-wide policy, read once and kept: `log` tells the report
/// and goes on, `abort` tells it and aborts, anything else (or nothing) panics.
/// `set_default_policy` overrides the variable.
#[test]
fn memctx_on_error_sets_the_default_policy() {
    for (value, policy) in [
        ("log", "Log"),
        ("abort", "Abort"),
        ("panic", "Panic"),
        ("Log", "Panic"),
    ] {
        let (stdout, _) = passing_child("default-policy", &[("MEMCTX_ON_ERROR", value)]);
        // Read twice: computed from the variable, then kept.
        let want = format!("DEFAULT {policy} {policy}");
        assert!(stdout.contains(&want), "{value}: {stdout}");
    }
    let (stdout, _) = passing_child("default-policy", &[]);
    assert!(stdout.contains("DEFAULT Panic Panic"), "{stdout}");

    let (stdout, stderr) = passing_child("overrun-by-default", &[("MEMCTX_ON_ERROR", "log")]);
    assert!(stdout.contains("REPORTS 1"), "{stdout}");
    assert_eq!(stderr.matches(HEADLINE).count(), 1, "{stderr}");

    let out = run_child("overrun-by-default", &[("MEMCTX_ON_ERROR", "abort")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{stdout}\n{stderr}"
    );
    assert_eq!(stderr.matches(HEADLINE).count(), 1, "{stderr}");
    assert!(
        !stdout.contains("REPORTS"),
        "went on after the abort: {stdout}"
    );

    let (stdout, _) = passing_child("log-by-default", &[("MEMCTX_ON_ERROR", "abort")]);
    assert!(stdout.contains("DEFAULT Log"), "{stdout}");
    assert!(stdout.contains("REPORTS 1"), "{stdout}");
}

/// The child's side: does nothing unless `MEMCTX_TEST_CHILD` names a case.
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    match case.as_str() {
        "log-policy" => logged_overrun(),
        "env-logger" => {
            env_logger::init();
            logged_overrun();
        }
        "recording-logger" => {
            log::set_logger(&Recorder).expect("the only logger");
            log::set_max_level(log::LevelFilter::Trace);
            logged_overrun();
        }
        "panic-policy" => {
            let err = std::panic::catch_unwind(overrun_one_byte).expect_err("must panic");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            println!("PAYLOAD {msg}");
        }
        "unwinding" => unwinding_with_a_damaged_chunk(),
        "default-policy" => {
            let first = debug::default_policy();
            println!("DEFAULT {first:?} {:?}", debug::default_policy());
        }
        "overrun-by-default" => {
            overrun_one_byte();
            println!("REPORTS {}", debug::take_reports().len());
        }
        "log-by-default" => {
            debug::set_default_policy(Policy::Log);
            println!("DEFAULT {:?}", debug::default_policy());
            overrun_one_byte();
            println!("REPORTS {}", debug::take_reports().len());
        }
        other => panic!("unknown case {other}"),
    }
}

/// The overrun under [`Policy::Log`]; prints how many reports it raised.
fn logged_overrun() {
    debug::set_thread_policy(Some(Policy::Log));
    overrun_one_byte();
    println!("REPORTS {}", debug::take_reports().len());
}

/// Allocates 10 bytes, writes the 11th and frees them, printing the lines of the allocation and
/// the free for the parent.
#[inline(never)]
fn overrun_one_byte() {
    let ctx = MemoryContext::top().new_child("ChildCtx", BlockSizes::SMALL);
    let p = ctx.alloc(10).as_ptr();
    println!("LINE alloc {}", line!() - 1);
    // SAFETY: none — one byte past the request is the bug under test.
    unsafe { p.add(10).write(b'!') };
    println!("LINE pfree {}", line!() + 2);
    // SAFETY: a live chunk (its rear redzone damaged, which pfree reports).
    unsafe { pfree(p) };
    ctx.delete();
}

/// A test that fails by panicking while a guard frees a damaged chunk during the unwinding: the
/// report must be told, not panicked (a second panic aborts the process).
fn unwinding_with_a_damaged_chunk() {
    struct FreeOnDrop(*mut u8);
    impl Drop for FreeOnDrop {
        fn drop(&mut self) {
            // SAFETY: a live chunk of a live context.
            unsafe { pfree(self.0) };
        }
    }
    let ctx = MemoryContext::top().new_child("ChildCtx", BlockSizes::SMALL);
    let p = ctx.alloc(10).as_ptr();
    // SAFETY: none — one byte past the request is the bug under test.
    unsafe { p.add(10).write(b'!') };
    let _guard = FreeOnDrop(p);
    panic!("the test's own failure");
}

/// A logger that prints each record's level, target and first line to stdout.
struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let first = text.lines().next().unwrap_or("");
        println!("LOG {} {} {first}", record.level(), record.target());
    }

    fn flush(&self) {}
}
