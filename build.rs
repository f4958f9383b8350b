//! Build script: detects an AddressSanitizer build.
//!
//! When the crate is compiled with `-Zsanitizer=address` (on the stable toolchain with
//! `RUSTC_BOOTSTRAP=1`, e.g. `RUSTFLAGS="-Zsanitizer=address" cargo test --target
//! x86_64-unknown-linux-gnu`), the debug build poisons its metadata, redzones, freed chunks and
//! unused block space for ASan. No cargo feature is needed: this script finds the flag in the
//! target's rustflags (`CARGO_ENCODED_RUSTFLAGS`, which cargo fills from `RUSTFLAGS`,
//! `CARGO_TARGET_<triple>_RUSTFLAGS` or `build.rustflags`) and sets `cfg(memctx_asan)`.
//!
//! It also sets `cfg(memctx_cold_path)` when the compiler has `core::hint::cold_path` (Rust 1.95;
//! the crate builds with 1.80), which the kind dispatch uses where it can.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(memctx_asan)");
    println!("cargo::rustc-check-cfg=cfg(memctx_cold_path)");
    if rustc_minor().is_some_and(|minor| minor >= 95) {
        // `core::hint::cold_path`, stable since Rust 1.95 (see `kinds::past_allocset`).
        println!("cargo::rustc-cfg=memctx_cold_path");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    // Cargo reruns a build script when an environment variable it names changes; the rustflags
    // may come from any of these.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if sanitizers(&flags).any(|s| s == "address") {
        println!("cargo::rustc-cfg=memctx_asan");
    }
}

/// The sanitizers named by `-Zsanitizer=...` (or `-Z sanitizer=...`) in `\x1f`-separated flags.
fn sanitizers(encoded: &str) -> impl Iterator<Item = &str> {
    let mut after_z = false;
    let mut found = Vec::new();
    for flag in encoded.split('\x1f') {
        let value = if after_z {
            after_z = false;
            flag.strip_prefix("sanitizer=")
        } else if flag == "-Z" {
            after_z = true;
            None
        } else {
            flag.strip_prefix("-Zsanitizer=")
        };
        if let Some(list) = value {
            found.extend(list.split(',').map(str::trim));
        }
    }
    found.into_iter()
}

/// The minor version of the compiler cargo builds with (`$RUSTC --version`: `rustc 1.95.0 ...`).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
