//! Building an example for a test that runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Builds example `name` in `profile` (with the features this test was built with) and returns
/// the path of its executable.
pub fn build_example(name: &str, profile: &str) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--example",
            name,
            "--message-format=json-render-diagnostics",
        ])
        .args(["--profile", profile])
        .stderr(Stdio::inherit());
    // The features this test was built with, so that the library is not rebuilt with others.
    let features: Vec<&str> = [
        ("debug-contexts", cfg!(feature = "debug-contexts")),
        ("cli", cfg!(feature = "cli")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(feature, _)| *feature)
    .collect();
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build --example {name} --profile {profile} failed"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for the {name} example"))
}
