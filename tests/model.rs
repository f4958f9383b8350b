//! Model-based property tests: random sequences of create, alloc, zero-alloc, aligned alloc,
//! palloc in the current context, repalloc, pfree, reset, delete, switch and set-parent over a
//! context tree of every context kind (`tests/common/kinds.rs`), run against a plain model
//! (`tests/common/ops.rs`) that knows each kind's rules (a Bump chunk is freed only by the safe
//! API's take-back of the last allocation, or the reset). After every step: every live
//! chunk holds the bytes written into it, is owned by the right context, the tree has the model's
//! shape, refusals are the predicted errors, and the stats invariants hold (used + free == total,
//! total == mem_allocated, live chunks fit in the used bytes, the tree's total is the sum of its
//! contexts). In the debug build, every step also runs the full verification walk
//! (`MemoryContext::check`) and must raise no report.
//!
//! Runs in both builds and under the sanitizer legs: it commits no memory bug. Bounded by
//! `PROPTEST_CASES` (default 64) and `MEMCTX_MODEL_OPS` (default 200 ops per case).

#[path = "common/kinds.rs"]
mod kinds;
#[path = "common/ops.rs"]
mod ops;
#[path = "common/strategy.rs"]
mod strategy;

use ops::{Op, Runner};
use proptest::prelude::*;

/// Runs one sequence, verifying after every step.
fn run(ops: &[Op]) {
    #[cfg(feature = "debug-contexts")]
    {
        memctx::debug::set_thread_policy(Some(memctx::debug::Policy::Log));
        let _ = memctx::debug::take_reports();
    }
    let tree_before = memctx::MemoryContext::top().mem_allocated(true);
    let mut r = Runner::new();
    r.verify();
    for op in ops {
        r.apply(op);
        r.verify();
        #[cfg(feature = "debug-contexts")]
        {
            assert_eq!(r.root().check(), 0, "step {}: {op:?}", r.steps);
            let reports = memctx::debug::take_reports();
            assert!(
                reports.is_empty(),
                "step {}: {op:?} raised reports:\n{}",
                r.steps,
                reports
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    r.finish();
    // Deleting ModelRoot takes every context of the sequence out of the tree (recycled headers
    // keep their keeper blocks, but outside the tree).
    assert_eq!(
        memctx::MemoryContext::top().mem_allocated(true),
        tree_before
    );
    #[cfg(feature = "debug-contexts")]
    {
        let reports = memctx::debug::take_reports();
        assert!(reports.is_empty(), "the final delete raised {reports:#?}");
        memctx::debug::set_thread_policy(None);
    }
}

proptest! {
    #![proptest_config(strategy::config())]

    #[test]
    fn random_sequences_match_the_model(ops in strategy::ops()) {
        run(&ops);
    }
}

/// A fixed sequence touching every op, so a regression shows up even with `PROPTEST_CASES=1`:
/// once with every created context of each kind (ModelRoot is an AllocSet), so every op meets a
/// context of every kind, the current one included.
#[test]
fn every_op_once_on_every_kind() {
    for kind in 0..kinds::ALL.len() as u8 {
        every_op_once(kind);
    }
}

fn every_op_once(kind: u8) {
    use Op::*;
    run(&[
        Create {
            parent: 0,
            sizes: 1,
            kind,
        },
        Create {
            parent: 1,
            sizes: 0,
            kind,
        },
        Alloc { ctx: 1, size: 100 },
        AllocZero { ctx: 2, size: 3000 },
        Palloc { size: 0 },
        AllocAligned {
            ctx: 1,
            size: 50,
            shift: 3,
        },
        Alloc {
            ctx: 0,
            size: 20_000,
        },
        Realloc {
            chunk: 0,
            size: 5000,
        },
        Realloc {
            chunk: 3,
            size: 40_000,
        },
        Realloc { chunk: 4, size: 10 },
        Realloc {
            chunk: 2,
            size: 300,
        },
        Switch { ctx: 2 },
        Palloc { size: 77 },
        Reset { ctx: 1 },                // refused: the current context is below it
        Delete { ctx: 1 },               // refused as well
        SetParent { ctx: 0, parent: 1 }, // a cycle: refused
        Switch { ctx: 0 },
        SetParent { ctx: 1, parent: 0 },
        Free { chunk: 1 },
        Create {
            parent: 2,
            sizes: 2,
            kind,
        },
        Reset { ctx: 1 },
        Delete { ctx: 0 },
    ]);
}

/// Many contexts of every kind created and deleted in a loop: the recycling lists keep headers
/// and keepers, and a recycled context must come back empty, of its new kind and with fresh
/// counters.
#[test]
fn create_delete_churn_recycles_cleanly() {
    use Op::*;
    let mut ops = Vec::new();
    for i in 0..300u16 {
        ops.push(Create {
            parent: i,
            sizes: (i % 3) as u8,
            kind: (i / 3) as u8,
        });
        ops.push(Alloc {
            ctx: i.wrapping_mul(7),
            size: u32::from(i) * 37 % 9000,
        });
        if i % 3 == 2 {
            ops.push(Delete { ctx: i });
        }
    }
    run(&ops);
}
