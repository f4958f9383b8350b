//! Proof that Valgrind memcheck sees the debug build's chunks (issue 4): each test runs one bug
//! of `examples/bugs.rs` under memcheck with `--xml=yes`, parses the XML and checks the error kind
//! memcheck reports and that its stack names the function that committed the bug — and that the
//! allocator itself raised nothing else.
//!
//! Needs `valgrind` on the PATH and the `bugs` example, which `cargo test` builds (with
//! `--test memcheck_proof` alone, build it first: `cargo build --features debug-contexts
//! --example bugs`; `--example bugs` on the `cargo test` line builds its test harness instead).
//! Left out of ASan builds: an ASan binary cannot run under Valgrind.
#![cfg(all(feature = "debug-contexts", not(memctx_asan)))]

use std::path::PathBuf;
use std::process::Command;

/// One `<error>` of memcheck's XML output.
#[derive(Debug)]
struct VgError {
    /// `InvalidWrite`, `InvalidRead`, `UninitCondition`, `Leak_DefinitelyLost`, ...
    kind: String,
    /// Function names of the first stack, innermost first.
    stack: Vec<String>,
    /// Function names of every stack of the error, in order: the error's, then those its
    /// `<auxwhat>` lines introduce (a freed block's free stack, then its allocation stack).
    stacks: Vec<Vec<String>>,
    /// The `<auxwhat>` lines (where the address lies).
    aux: Vec<String>,
    /// Bytes of a loss record.
    leaked_bytes: Option<u64>,
}

impl VgError {
    /// Whether one of the first `depth` frames is the function `name` of the bugs example.
    fn names(&self, name: &str, depth: usize) -> bool {
        let want = format!("bugs::{name}");
        self.stack.iter().take(depth).any(|f| *f == want)
    }

    fn mentions(&self, function: &str) -> bool {
        self.stack.iter().any(|f| f.contains(function))
    }
}

/// The `bugs` example next to this test binary (`target/.../debug/examples/bugs`).
fn bugs_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bugs = dir.join("examples").join("bugs");
    assert!(
        bugs.exists(),
        "{} is missing: build it with `cargo build --features debug-contexts --example bugs` \
         (plain `cargo test --features debug-contexts` builds it)",
        bugs.display()
    );
    bugs
}

/// Text between `<tag>` and `</tag>` for every occurrence in `s`.
fn elements<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Parses memcheck's XML output into its errors.
fn parse(xml: &str) -> Vec<VgError> {
    elements(xml, "error")
        .into_iter()
        .map(|e| VgError {
            kind: elements(e, "kind")
                .first()
                .copied()
                .unwrap_or("")
                .to_owned(),
            stack: elements(e, "stack")
                .first()
                .map(|s| elements(s, "fn").into_iter().map(unescape).collect())
                .unwrap_or_default(),
            stacks: elements(e, "stack")
                .into_iter()
                .map(|s| elements(s, "fn").into_iter().map(unescape).collect())
                .collect(),
            aux: elements(e, "auxwhat").into_iter().map(unescape).collect(),
            leaked_bytes: elements(e, "leakedbytes")
                .first()
                .and_then(|b| b.trim().parse().ok()),
        })
        .collect()
}

/// Runs `bugs <name>` under memcheck and returns the errors it reported.
fn memcheck(name: &str) -> Vec<VgError> {
    let bugs = bugs_exe();
    let xml =
        std::env::temp_dir().join(format!("memctx-memcheck-{}-{name}.xml", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=memcheck")
        .arg("--xml=yes")
        .arg(format!("--xml-file={}", xml.display()))
        .args([
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--num-callers=30",
        ])
        .arg(&bugs)
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("cannot run valgrind ({e}); install it (Debian: valgrind)"));
    let text = std::fs::read_to_string(&xml).unwrap_or_else(|e| {
        panic!(
            "no XML from valgrind ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&xml);
    assert!(
        text.contains("</valgrindoutput>"),
        "memcheck did not finish its XML; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text)
}

/// Errors that are not leak records.
fn access_errors(errors: &[VgError]) -> Vec<&VgError> {
    errors
        .iter()
        .filter(|e| !e.kind.starts_with("Leak_"))
        .collect()
}

/// Asserts that memcheck reported exactly one error that is not a leak, of `kind`, raised in
/// `bugs::<function>`, and returns it.
fn the_error<'a>(errors: &'a [VgError], kind: &str, function: &str) -> &'a VgError {
    let errs = access_errors(errors);
    assert_eq!(
        errs.len(),
        1,
        "expected only the {kind} that bugs::{function} commits, got {errs:#?}"
    );
    let e = errs[0];
    assert_eq!(e.kind, kind, "{e:#?}");
    assert!(
        e.names(function, 3),
        "the stack should name bugs::{function}: {e:#?}"
    );
    e
}

#[test]
fn overrun_of_one_byte_is_an_invalid_write_just_after_the_chunk() {
    invalid_write_after("overrun", "0 bytes after a block of size 10");
}

#[test]
fn overrun_inside_the_size_class_slack_is_an_invalid_write() {
    let errors = memcheck("overrun-slack");
    the_error(&errors, "InvalidWrite", "overrun_slack");
}

#[test]
fn overrun_of_a_chunk_with_a_block_of_its_own_is_an_invalid_write_after_it() {
    // Under memcheck no guard page is used: the tail after the request is NOACCESS instead.
    invalid_write_after("large-overrun", "4 bytes after a block of size 10,000");
}

#[test]
fn underrun_is_an_invalid_write_just_before_the_chunk() {
    let errors = memcheck("underrun");
    let e = the_error(&errors, "InvalidWrite", "underrun");
    assert!(
        e.aux
            .iter()
            .any(|a| a.contains("1 bytes before a block of size 10 client-defined")),
        "memcheck should know the 10-byte chunk: {e:#?}"
    );
}

/// Asserts that memcheck describes the address of `e` by the freed chunk of `size` bytes itself —
/// not by the context's block around it — with the stack that freed it (through `freed_by`,
/// called from `bugs::<function>`) and the chunk's allocation stack (from `bugs::<function>` too).
fn described_as_the_freed_chunk(e: &VgError, function: &str, freed_by: &str, size: usize) {
    let at = format!("0 bytes inside a block of size {size} free'd");
    assert!(
        e.aux.iter().any(|a| a.contains(&at)),
        "memcheck should name the freed {size}-byte chunk: {e:#?}"
    );
    assert!(e.aux.iter().any(|a| a == "Block was alloc'd at"), "{e:#?}");
    let [_, free, alloc] = &e.stacks[..] else {
        panic!("expected the error's, the free and the allocation stacks: {e:#?}");
    };
    let caller = format!("bugs::{function}");
    let free_at = free.iter().position(|f| f == freed_by);
    let caller_at = free.iter().position(|f| *f == caller);
    assert!(
        free_at.is_some() && free_at < caller_at,
        "the free stack should be {freed_by} called from {caller}: {free:#?}"
    );
    assert!(
        alloc
            .iter()
            .any(|f| f == "memctx::raw::<impl memctx::context::MemoryContext>::alloc")
            && alloc.contains(&caller),
        "the allocation stack should be the chunk's, from {caller}: {alloc:#?}"
    );
}

/// Asserts memcheck's one error of `bugs <name>` is an `InvalidWrite` in the bug's function
/// (`name` with `_` for `-`), `at` the pool chunk it allocated ("0 bytes after a block of size
/// 10").
fn invalid_write_after(name: &str, at: &str) {
    let errors = memcheck(name);
    let e = the_error(&errors, "InvalidWrite", &name.replace('-', "_"));
    let at = format!("{at} client-defined");
    assert!(
        e.aux.iter().any(|a| a.contains(&at)),
        "memcheck should know the chunk: {e:#?}"
    );
}

/// Asserts memcheck's one error of `bugs <name>` is `kind`, in the bug's function (`name` with
/// `_` for `-`), at the freed chunk of `size` bytes that `freed_by` freed.
fn freed_chunk_case(name: &str, kind: &str, freed_by: &str, size: usize) {
    let errors = memcheck(name);
    let function = name.replace('-', "_");
    let e = the_error(&errors, kind, &function);
    described_as_the_freed_chunk(e, &function, freed_by, size);
}

#[test]
fn read_after_pfree_is_an_invalid_read_of_the_freed_chunk() {
    freed_chunk_case("read-after-pfree", "InvalidRead", "memctx::raw::pfree", 10);
}

/// A Slab chunk is a pool chunk of its object's 40 bytes: memcheck names it at an overrun, and
/// as the freed chunk (freed by `pfree`) at a read after its free.
#[test]
fn slab_chunks_are_described_as_the_objects() {
    invalid_write_after("slab-overrun", "0 bytes after a block of size 40");
    let errors = memcheck("slab-read-after-pfree");
    let e = the_error(&errors, "InvalidRead", "slab_read_after_pfree");
    assert!(
        e.aux
            .iter()
            .any(|a| a.contains("0 bytes inside a block of size 40 free'd")),
        "memcheck should name the freed 40-byte chunk: {e:#?}"
    );
}

/// A Slab context's reset trims its pool as an AllocSet's does: every object is freed at once.
#[test]
fn slab_read_after_reset_is_an_invalid_read_of_the_released_chunk() {
    freed_chunk_case(
        "slab-read-after-reset",
        "InvalidRead",
        "memctx::context::MemoryContext::reset",
        40,
    );
}

/// A Generation chunk is a pool chunk of its request, as an AllocSet chunk is.
#[test]
fn generation_overrun_is_an_invalid_write_just_after_the_chunk() {
    invalid_write_after("generation-overrun", "0 bytes after a block of size 10");
}

#[test]
fn generation_read_after_pfree_is_an_invalid_read_of_the_freed_chunk() {
    freed_chunk_case(
        "generation-read-after-pfree",
        "InvalidRead",
        "memctx::raw::pfree",
        10,
    );
}

/// The `pfree` that empties a Generation block rewinds it as the context's spare: the freed
/// chunk's space stays closed, and memcheck still names the chunk and the `pfree` that freed it.
#[test]
fn generation_write_into_the_spare_block_is_an_invalid_write_of_the_freed_chunk() {
    freed_chunk_case(
        "generation-write-after-spare",
        "InvalidWrite",
        "memctx::raw::pfree",
        200,
    );
}

/// An emptied Generation block that is not kept goes back (to the quarantine of released
/// blocks): a read of one of its chunks is memcheck's error, naming the chunk.
#[test]
fn generation_read_from_a_block_given_back_is_an_invalid_read_of_the_freed_chunk() {
    freed_chunk_case(
        "generation-read-after-give-back",
        "InvalidRead",
        "memctx::raw::pfree",
        200,
    );
}

#[test]
fn generation_read_after_reset_is_an_invalid_read_of_the_released_chunk() {
    freed_chunk_case(
        "generation-read-after-reset",
        "InvalidRead",
        "memctx::context::MemoryContext::reset",
        10,
    );
}

/// A Bump chunk of the debug build has a header and is a pool chunk of its request.
#[test]
fn bump_overrun_is_an_invalid_write_just_after_the_chunk() {
    invalid_write_after("bump-overrun", "0 bytes after a block of size 10");
}

/// A Bump context's reset trims its pool as an AllocSet's does: every chunk is freed at once.
#[test]
fn bump_read_after_reset_is_an_invalid_read_of_the_released_chunk() {
    freed_chunk_case(
        "bump-read-after-reset",
        "InvalidRead",
        "memctx::context::MemoryContext::reset",
        10,
    );
}

/// A block of a deleted context waits in the debug build's quarantine, NOACCESS: a read through a
/// pointer into it is memcheck's error at the read.
#[test]
fn read_after_delete_is_an_invalid_read() {
    let errors = memcheck("read-after-delete");
    let e = the_error(&errors, "InvalidRead", "read_after_delete");
    assert!(
        e.aux
            .iter()
            .any(|a| a.contains("0 bytes inside a block of size 2,000 free'd")),
        "memcheck should name the deleted context's 2000-byte chunk: {e:#?}"
    );
}

#[test]
fn read_after_reset_is_an_invalid_read_of_the_released_chunk() {
    freed_chunk_case(
        "read-after-reset",
        "InvalidRead",
        "memctx::context::MemoryContext::reset",
        10,
    );
}

#[test]
fn branch_on_fresh_chunk_bytes_is_an_uninitialised_condition() {
    let errors = memcheck("uninit");
    the_error(&errors, "UninitCondition", "uninit");
}

#[test]
fn leaked_chunk_is_definitely_lost_and_referenced_memory_is_not() {
    let errors = memcheck("leak");
    assert!(
        access_errors(&errors).is_empty(),
        "no access error expected: {errors:#?}"
    );
    let lost: Vec<&VgError> = errors
        .iter()
        .filter(|e| e.kind == "Leak_DefinitelyLost")
        .collect();
    assert_eq!(lost.len(), 1, "only the leaked chunk is lost: {lost:#?}");
    assert_eq!(lost[0].leaked_bytes, Some(48), "{lost:#?}");
    assert!(
        lost[0].mentions("bugs::leak_one"),
        "the loss record names the allocating function: {lost:#?}"
    );
    // The leaking thread has exited, but its tree has not gone with it: the live context and the
    // headers of the contexts it deleted (on its recycle and spare lists) are reachable from the
    // debugger registry. No context header may appear in a loss record of any kind.
    for e in errors.iter().filter(|e| e.kind.starts_with("Leak_")) {
        assert!(
            !e.mentions("memctx::context::take_header")
                && !e.mentions("memctx::context::init_thread_tree"),
            "a context header or recycle list of the exited thread reported as {}: {e:#?}",
            e.kind
        );
    }
    // The list spread over many blocks, the block with no live chunk between them and the blocks
    // themselves are all still referenced: no chunk or block of the context may appear in a loss
    // record of any kind. (Other allocations of the debug build on the way, such as its stack
    // depot's hash table, are not what this test is about.)
    for e in errors.iter().filter(|e| e.kind.starts_with("Leak_")) {
        let chunk_or_block = e.mentions("memctx::debug::sanitizer::valgrind::pool_alloc")
            || e.mentions("memctx::kinds::aset::new_block");
        if !chunk_or_block {
            continue;
        }
        for f in ["bugs::build_list", "bugs::fill_and_free"] {
            assert!(
                !e.mentions(f),
                "memory of the context allocated by {f} reported as {}: {e:#?}",
                e.kind
            );
        }
        assert!(
            e.kind == "Leak_DefinitelyLost" && e.mentions("bugs::leak_one"),
            "only the leaked chunk may be lost: {e:#?}"
        );
    }
}

/// Errors of a correct workload: none but leak records of the standard library's kinds.
fn assert_clean(name: &str) {
    let errors = memcheck(name);
    let bad: Vec<&VgError> = errors
        .iter()
        .filter(|e| !matches!(e.kind.as_str(), "Leak_PossiblyLost" | "Leak_StillReachable"))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn a_correct_workload_raises_nothing() {
    assert_clean("clean");
}

/// Blocks that leave the quarantine during a reset or delete go back to the system only after
/// the context's pool let go of their chunks: else the trim or destroy marks that range NOACCESS
/// after it was mapped again, and the allocator's own heap memory there reads as invalid.
#[test]
fn releasing_more_than_the_quarantine_closes_no_live_memory() {
    assert_clean("quarantine-overflow");
}
