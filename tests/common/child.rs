//! A test that needs a process-wide setting (guard pages, the redzone) runs itself again in a
//! child process with the setting in its environment (included with `#[path]`).
#![allow(dead_code)]

/// Set in the child process a test runs itself in.
const CHILD_VAR: &str = "MEMCTX_TEST_CHILD";

/// For a test that needs process-wide settings (`env`): in the test process, runs the test `name`
/// of this binary again in a child with `env` set, checks it passed there and returns false; in
/// that child, returns true, and the test goes on.
pub fn in_child_with(name: &str, env: &[(&str, &str)]) -> bool {
    if std::env::var_os(CHILD_VAR).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .envs(env.iter().copied())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Guard pages off, for [`in_child_with`].
pub const NO_GUARD_PAGES: [(&str, &str); 1] = [("MEMCTX_GUARD_PAGES", "0")];
