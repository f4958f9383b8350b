//! Replays the fuzz target's crash inputs (`tests/fuzz_regressions/`, filled by `ci/fuzz`) through
//! the fuzz target's own decoder and model (`tests/common/ops.rs`): each input is decoded into ops
//! and run against the model with every invariant checked after every step (`run_checked`, a
//! superset of the fuzz target's `run_sampled`), in the release and the debug build.
//!
//! Besides the files, a few fixed inputs exercise the decoder so the test means something while
//! the directory holds no crash: every byte string decodes to some sequence of ops.

#[path = "common/kinds.rs"]
mod kinds;
#[path = "common/ops.rs"]
mod ops;

use std::path::PathBuf;

/// Decodes and runs one input; panics (with the file's name) on any violated invariant.
fn replay(name: &str, data: &[u8]) {
    let ops = ops::decode(data);
    let run = std::panic::catch_unwind(|| ops::run_checked(&ops));
    if let Err(e) = run {
        eprintln!(
            "fuzz regression {name} failed; its {} ops: {ops:#?}",
            ops.len()
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn every_kept_crash_input_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file() && p.extension().map_or(true, |e| e != "md"));
    files.sort();
    for f in &files {
        let data = std::fs::read(f).expect("readable input");
        replay(&f.display().to_string(), &data);
    }
    eprintln!("replayed {} kept fuzz inputs", files.len());
}

#[test]
fn fixed_inputs_decode_and_pass() {
    // Every op kind: create (tag 0), alloc (1), zero-alloc (4), palloc (5), aligned (6),
    // repalloc (7), pfree (9), reset (12), delete (13), switch (14), set-parent (15), with
    // small (class 0), medium (class 5) and large (class 7) sizes.
    let every_op: &[u8] = &[
        0, 0, // create under the root
        16, 1, // create (SMALL) under context 1
        1, 1, 0, 200, // alloc 200 in context 1
        4, 2, 5, 0x10, 0x00, // zero-alloc medium in context 2
        5, 7, 0x40, 0x00, // palloc large in the current context
        0x36, 0, 0, 99, // aligned (shift 3) 99 bytes in the root
        7, 0, 5, 0xff, 0x0f, // repalloc chunk 0 to medium
        14, 2, // switch to context 2
        12, 1, // reset context 1: refused, the current context is below it
        13, 1, // delete: refused as well
        15, 0, 2, // set-parent: a cycle, refused
        14, 0, // switch to the root
        9, 1, // pfree chunk 1
        15, 1, 0, // move context 2 under the root
        12, 1, // reset context 1
        13, 0, // delete context 1
    ];
    let ops = ops::decode(every_op);
    assert_eq!(ops.len(), 16, "{ops:#?}");
    replay("every_op", every_op);
    // Odd inputs: empty, truncated, all zeros, all ones, a counting sequence.
    replay("empty", &[]);
    replay("truncated", &[7]);
    replay("zeros", &[0; 512]);
    replay("ones", &[0xff; 512]);
    let counting: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    replay("counting", &counting);
}
