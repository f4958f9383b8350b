//! Fuzz target: the operation language of the model tests (`tests/common/ops.rs`), decoded from
//! the fuzzer's bytes and run against the model, with every invariant checked after every step —
//! contents of every live chunk, chunk owners, the tree's shape, refusals, stats. No bug is
//! injected: any panic (an assertion of the model, or in the debug build a report) and anything
//! AddressSanitizer sees is a crash. `ci/fuzz` runs it and keeps crash inputs in
//! `tests/fuzz_regressions/`, which `tests/fuzz_regressions.rs` replays through the same decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/ops.rs"]
mod ops;

fuzz_target!(|data: &[u8]| {
    ops::run_checked(&ops::decode(data));
});
