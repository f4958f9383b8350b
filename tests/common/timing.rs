//! Wall-clock allowances that still hold under Valgrind (included with `#[path]`).
//!
//! Memcheck runs a program 30-50 times slower than natively, and one thread at a time, so a bound
//! like "the dumper writes a snapshot within 10 s" that is generous natively fails there. Tests
//! that wait for something with a deadline stretch it with [`allow`]: the wait still ends as
//! soon as its condition holds, so a longer bound costs nothing when things work, and a test that
//! would hang still fails, only later.
//!
//! Under Valgrind means: `MEMCTX_UNDER_VALGRIND` is set (to anything but `0` or empty;
//! `valgrind/memcheck`, the runner of the memcheck leg, exports it), or Valgrind's preload
//! libraries are in `LD_PRELOAD` (as they are in any program Valgrind runs, however it was
//! started).
#![allow(dead_code)] // not every test file uses every helper

use std::time::Duration;

/// How much slower than native [`slowdown`] assumes a run under Valgrind is.
pub const VALGRIND_SLOWDOWN: u32 = 50;

/// Whether this process runs under Valgrind (see the module docs).
pub fn under_valgrind() -> bool {
    let flag = std::env::var("MEMCTX_UNDER_VALGRIND").unwrap_or_default();
    let flag = flag.trim();
    if !flag.is_empty() && flag != "0" {
        return true;
    }
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
}

/// How many times slower than native this run is assumed to be: [`VALGRIND_SLOWDOWN`] under
/// Valgrind, 1 otherwise.
pub fn slowdown() -> u32 {
    if under_valgrind() {
        VALGRIND_SLOWDOWN
    } else {
        1
    }
}

/// A deadline of `native` as it should be in this run: `native` times [`slowdown`]. For upper
/// bounds only — waits that end as soon as what they wait for happens.
pub fn allow(native: Duration) -> Duration {
    native * slowdown()
}
