//! Build script: detects an AddressSanitizer build.
//!
//! When the crate is compiled with `-Zsanitizer=address` (on the stable toolchain with
//! `RUSTC_BOOTSTRAP=1`, e.g. `RUSTFLAGS="-Zsanitizer=address" cargo test --target
//! x86_64-unknown-linux-gnu`), the debug build poisons its metadata, redzones, freed chunks and
//! unused block space for ASan. No cargo feature is needed: this script finds the flag in the
//! target's rustflags (`CARGO_ENCODED_RUSTFLAGS`, which cargo fills from `RUSTFLAGS`,
//! `CARGO_TARGET_<triple>_RUSTFLAGS` or `build.rustflags`) and sets `cfg(memctx_asan)`.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(memctx_asan)");
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
