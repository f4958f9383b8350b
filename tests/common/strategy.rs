//! Proptest strategies for the operation language of `ops.rs`, and the bounds every property
//! test of the language shares.
//!
//! Bounds come from the environment so the slow legs can run fewer cases:
//! - `PROPTEST_CASES`: cases per property (default [`DEFAULT_CASES`]);
//! - `MEMCTX_MODEL_OPS`: most ops per case (default [`DEFAULT_MAX_OPS`]).
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::kinds;
use super::ops::{Op, MAX_ALIGN_SHIFT};

/// Cases per property when `PROPTEST_CASES` is not set.
pub const DEFAULT_CASES: u32 = 64;
/// Most ops per case when `MEMCTX_MODEL_OPS` is not set.
pub const DEFAULT_MAX_OPS: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Cases per property.
pub fn cases() -> u32 {
    env_or("PROPTEST_CASES", DEFAULT_CASES).max(1)
}

/// Most ops per case.
pub fn max_ops() -> usize {
    env_or("MEMCTX_MODEL_OPS", DEFAULT_MAX_OPS).max(1)
}

/// The proptest configuration: [`cases`] cases, no failure files written into the source tree
/// (a failing case is printed, minimised, in the test's output).
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A request size: mostly small chunks, some up to the chunk limit, a few with a block of their
/// own.
pub fn size() -> impl Strategy<Value = u32> {
    prop_oneof![
        14 => 0u32..=256,
        5 => 257u32..=8192,
        1 => 8193u32..=70_000,
    ]
}

/// One op, weighted towards allocation and free so chunks accumulate between resets.
pub fn op() -> impl Strategy<Value = Op> {
    let sel = any::<u16>;
    prop_oneof![
        6 => (sel(), 0u8..3, 0..kinds::ALL.len() as u8)
            .prop_map(|(parent, sizes, kind)| Op::Create { parent, sizes, kind }),
        20 => (sel(), size()).prop_map(|(ctx, size)| Op::Alloc { ctx, size }),
        5 => (sel(), size()).prop_map(|(ctx, size)| Op::AllocZero { ctx, size }),
        8 => size().prop_map(|size| Op::Palloc { size }),
        3 => (sel(), size(), 0..=MAX_ALIGN_SHIFT)
            .prop_map(|(ctx, size, shift)| Op::AllocAligned { ctx, size, shift }),
        10 => (sel(), size()).prop_map(|(chunk, size)| Op::Realloc { chunk, size }),
        14 => sel().prop_map(|chunk| Op::Free { chunk }),
        3 => sel().prop_map(|ctx| Op::Reset { ctx }),
        3 => sel().prop_map(|ctx| Op::Delete { ctx }),
        4 => sel().prop_map(|ctx| Op::Switch { ctx }),
        3 => (sel(), sel()).prop_map(|(ctx, parent)| Op::SetParent { ctx, parent }),
    ]
}

/// A sequence of 1 ..= [`max_ops`] ops.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=max_ops())
}
