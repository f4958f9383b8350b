//! Fuzz target: the operation language of the model tests (`tests/common/ops.rs`), decoded from
//! the fuzzer's bytes and run against the model: the contents of every live chunk are checked
//! after every step, chunk owners, the tree's shape and the stats after every tree operation and
//! every few steps (`ops::run_sampled`), refusals always. No bug is injected: any panic (an
//! assertion of the model, or in the debug build a report) and anything AddressSanitizer sees is
//! a crash. `ci/fuzz` runs it and keeps crash inputs in
//! `tests/fuzz_regressions/`, which `tests/fuzz_regressions.rs` replays through the same decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/kinds.rs"]
mod kinds;
#[path = "../../tests/common/ops.rs"]
mod ops;

fuzz_target!(|data: &[u8]| {
    ops::run_sampled(&ops::decode(data));
});
