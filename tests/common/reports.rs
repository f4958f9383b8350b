//! Report helpers shared by the debug build's integration tests (included with `#[path]`):
//! collect what a piece of code raises, insist on exactly one report, and check that a backtrace
//! starts in a given function of the calling test file.
#![allow(dead_code)] // not every test file uses every helper

use memctx::debug::{self, Frame, Policy, Report};

/// Runs `f` with this thread's policy set to collect, returning the reports it raised.
pub fn collect(f: impl FnOnce()) -> Vec<Report> {
    debug::set_thread_policy(Some(Policy::Log));
    let _ = debug::take_reports();
    f();
    let r = debug::take_reports();
    debug::set_thread_policy(None);
    r
}

/// Asserts there is exactly one report and returns it.
pub fn one(mut reports: Vec<Report>) -> Report {
    let texts: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
    assert_eq!(reports.len(), 1, "expected one report, got: {texts:#?}");
    reports.remove(0)
}

/// Asserts that the first frame of `frames` is the function `name` of the test file whose module
/// is `file` (`debug_reports`, `released_memory`, ...). Bugs are committed inside closures of the
/// test function (`collect`'s, a row's), so closure suffixes are ignored.
pub fn assert_first_frame(frames: &[Frame], file: &str, name: &str, what: &str) {
    let f = frames
        .first()
        .unwrap_or_else(|| panic!("{what} backtrace is empty"));
    let func = f.function.as_deref().unwrap_or("");
    let func = func.trim_end_matches("::{{closure}}");
    assert!(
        func.ends_with(&format!("{file}::{name}")),
        "{what} backtrace should start in {name}, starts in {func:?}; frames: {frames:#?}"
    );
}

/// [`assert_first_frame`], and that the frame is at `line` of `tests/<file>.rs`.
pub fn assert_first_frame_at(frames: &[Frame], file: &str, name: &str, line: u32, what: &str) {
    assert_first_frame(frames, file, name, what);
    let f = &frames[0];
    let path = f.file.as_deref().unwrap_or("");
    assert!(
        path.ends_with(&format!("tests/{file}.rs")) && f.line == Some(line),
        "{what} backtrace should start at tests/{file}.rs:{line}, starts at {path}:{:?}",
        f.line
    );
}
