//! Compile-fail tests (trybuild): what the borrow checker and the auto traits refuse in the safe
//! API. Each case in `tests/ui` must fail to compile, with the error in its `.stderr` file.
//!
//! Regenerate the expected output after a deliberate change with
//! `TRYBUILD=overwrite cargo test --test compile_fail`, then read the diff.
//!
//! Runs in the release build only: trybuild compiles each case against the crate, and the
//! debug build's dependencies would make that minutes slower without proving anything more.
#![cfg(not(feature = "debug-contexts"))]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
