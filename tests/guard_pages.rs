//! Guard pages after chunks with a block of their own (issue 12, item 3).
//!
//! Every case runs in a child process: the test re-executes its own binary with
//! `MEMCTX_GUARD_CASE` naming the case, and the `child` test runs it. A fault ends the child
//! whatever the report policy, and the settings changed here are process-wide. The children are
//! not traced by Valgrind (the memcheck leg runs this binary without `--trace-children`), so
//! natively and under memcheck a guard fault is a `SIGSEGV` with memctx's report. In the ASan
//! build no guard page is used: the chunk's tail is poisoned and ASan reports the access (the
//! ASan variant of the assertions below). Item 4's sampling is covered by the `sample-*` cases.
#![cfg(feature = "debug-contexts")]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use memctx::debug::{self, BugClass, Policy};
use memctx::{BlockSizes, MemoryContext};

const CASE: &str = "MEMCTX_GUARD_CASE";

/// Runs `case` in a child process with `env` set; returns its output.
fn run(case: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .env("ASAN_OPTIONS", "detect_leaks=0:symbolize=1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the child")
}

/// The entry point of the children; does nothing in the parent's run.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    match case.as_str() {
        "overrun" => overrun(guarded_context()),
        "memset-overrun" => memset_overrun(),
        "use-after-free" => use_after_free(guarded_context()),
        "generation-overrun" => overrun(generation_context()),
        "generation-use-after-free" => use_after_free(generation_context()),
        "bump-overrun" => overrun(bump_context()),
        "bump-use-after-reset" => bump_use_after_reset(),
        "not-ours" => not_ours(),
        "stack-overflow" => stack_overflow(),
        "redzone" => redzone_checked_at_free(),
        "fallback" => fallback_when_capped(),
        "steady" => steady_state_maps_nothing(),
        "off" => guard_pages_off(),
        "sample-overrun" => sampled_chunk_overrun(),
        "sample-which" => sampled_chunks_are_external(),
        other => panic!("unknown case {other}"),
    }
}

fn guarded_context() -> MemoryContext {
    MemoryContext::top().new_child("guarded", BlockSizes::DEFAULT)
}

/// A Generation context whose 10,000-byte chunks get a block of their own: with the small sizes
/// its chunk limit (an eighth of the 8 KiB maximum block) is below them.
fn generation_context() -> MemoryContext {
    MemoryContext::top().new_generation_child("guarded generation", BlockSizes::SMALL)
}

/// A Bump context, whose chunks above 8 KiB get a block of their own.
fn bump_context() -> MemoryContext {
    MemoryContext::top().new_bump_child("guarded bump", BlockSizes::DEFAULT)
}

#[inline(never)]
fn write_past(p: *mut u8, at: usize) {
    // SAFETY: none — the bug under test: a write `at` bytes into a 10,000-byte chunk.
    unsafe { std::ptr::write_volatile(p.add(at), 1) };
}

#[inline(never)]
fn allocate_big_chunk(ctx: &MemoryContext) -> *mut u8 {
    ctx.alloc(10_000).as_ptr()
}

fn overrun(ctx: MemoryContext) {
    let p = allocate_big_chunk(&ctx);
    write_past(p, 10_100);
    unreachable!("the write past the guard page returned");
}

/// Fills `len` bytes from `p` with `ptr::write_bytes`, which calls the C library's `memset`: a
/// leaf function that sets up no frame pointer.
#[inline(never)]
fn fill_past(p: *mut u8, len: usize) {
    // SAFETY: none — the bug under test: `len` runs past the chunk.
    unsafe { std::ptr::write_bytes(p, 1, std::hint::black_box(len)) };
}

fn memset_overrun() {
    let p = allocate_big_chunk(&guarded_context());
    fill_past(p, 10_100);
    unreachable!("the memset past the guard page returned");
}

#[inline(never)]
fn write_freed(p: *mut u8) {
    // SAFETY: none — the bug under test: a write through a pointer kept past pfree.
    unsafe { std::ptr::write_volatile(p.add(40), 1) };
}

fn use_after_free(ctx: MemoryContext) {
    let p = allocate_big_chunk(&ctx);
    // SAFETY: p is a live chunk of ctx.
    unsafe { memctx::pfree(p) };
    write_freed(p);
    unreachable!("the write into the freed chunk returned");
}

/// A Bump chunk is freed by its context's reset only: the reset gives its block back.
fn bump_use_after_reset() {
    let ctx = bump_context();
    let p = allocate_big_chunk(&ctx);
    ctx.reset();
    write_freed(p);
    unreachable!("the write into the chunk released by the reset returned");
}

fn not_ours() {
    let ctx = guarded_context();
    let _p = allocate_big_chunk(&ctx); // installs the handler
                                       // SAFETY: none — a fault that is not a guard page's: the previous action must take it.
    unsafe { std::ptr::write_volatile(8 as *mut u8, 1) };
}

#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    recurse(pad[3] + 1) + pad[7]
}

fn stack_overflow() {
    let ctx = guarded_context();
    let _p = allocate_big_chunk(&ctx);
    std::hint::black_box(recurse(0));
}

fn redzone_checked_at_free() {
    debug::set_thread_policy(Some(Policy::Log));
    let ctx = guarded_context();
    let p = ctx.alloc(10_001).as_ptr();
    write_past(p, 10_001); // the tail before the guard page (request rounded up to 16)
                           // SAFETY: p is a live chunk of ctx.
    unsafe { memctx::pfree(p) };
    let r = debug::take_reports();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].class, BugClass::Overrun);
    assert_eq!(r[0].range, Some((10_001, 10_002)));
    assert!(
        r[0].to_string()
            .contains("guard_pages::redzone_checked_at_free"),
        "{}",
        r[0]
    );
    ctx.delete();
}

fn fallback_when_capped() {
    debug::set_guard_max(2);
    let before = debug::guard_stats();
    let ctx = guarded_context();
    let chunks: Vec<*mut u8> = (0..3).map(|_| ctx.alloc(20_000).as_ptr()).collect();
    for &p in &chunks {
        // SAFETY: each is a live 20,000-byte chunk.
        unsafe { std::ptr::write_bytes(p, 0x11, 20_000) };
    }
    let s = debug::guard_stats();
    assert_eq!(s.live, 2, "{s:?}");
    assert_eq!(s.fallbacks - before.fallbacks, 1, "{s:?}");
    assert_eq!(s.maps - before.maps, 2, "{s:?}");
    ctx.delete();
    let s = debug::guard_stats();
    assert_eq!((s.live, s.quarantined), (0, 2), "{s:?}");
}

fn steady_state_maps_nothing() {
    debug::set_guard_quarantine(1 << 20);
    let ctx = guarded_context();
    let round = |n: usize| {
        for i in 0..n {
            let p = ctx.alloc(10_000 + i % 64).as_ptr();
            // SAFETY: p is a live chunk of ctx.
            unsafe { memctx::pfree(p) };
        }
    };
    round(1_000); // fills the 1 MiB quarantine (3-page mappings) and the cache
    let before = debug::guard_stats();
    round(1_000);
    let after = debug::guard_stats();
    assert_eq!(after.maps, before.maps, "{after:?}");
    assert_eq!(after.unmaps, before.unmaps, "{after:?}");
    assert_eq!(after.fallbacks, 0, "{after:?}");
    assert!(after.quarantined >= 80, "{after:?}");
    ctx.delete();
}

fn guard_pages_off() {
    let ctx = guarded_context();
    let p = ctx.alloc(10_000).as_ptr();
    let s = debug::guard_stats();
    assert_eq!((s.maps, s.live), (0, 0), "{s:?}");
    // SAFETY: p is a live chunk of ctx.
    unsafe { memctx::pfree(p) };
    ctx.delete();
}

/// Allocates eight 24-byte chunks in a fresh thread (whose allocation count starts at zero) in
/// `ctx`, and returns them with the indices of those sampled into guarded mappings: their
/// capacity (24 + 16-byte redzone, rounded to 48) ends at a page.
fn eight_chunks(ctx: MemoryContext) -> (Vec<usize>, Vec<usize>) {
    let chunks: Vec<usize> = (0..8).map(|_| ctx.alloc(24).as_ptr() as usize).collect();
    let page = 4096;
    let sampled = (0..8).filter(|&i| (chunks[i] + 48) % page == 0).collect();
    (chunks, sampled)
}

fn sampled_chunk_overrun() {
    std::thread::spawn(|| {
        let ctx = guarded_context();
        let (chunks, sampled) = eight_chunks(ctx);
        assert_eq!(sampled, [3, 7]);
        write_past(chunks[3] as *mut u8, 100);
        unreachable!("the write past the guard page returned");
    })
    .join()
    .unwrap();
}

fn sampled_chunks_are_external() {
    std::thread::spawn(|| {
        let before = debug::guard_stats();
        let ctx = guarded_context();
        let blocks = ctx.counters().total_nblocks;
        let (_chunks, sampled) = eight_chunks(ctx);
        println!("sampled {sampled:?}");
        let s = debug::guard_stats();
        assert_eq!(s.sampled, sampled.len(), "{s:?}");
        // Each sampled chunk is a block of the context of its own, counted in its stats.
        assert_eq!(ctx.counters().total_nblocks, blocks + sampled.len() as u64);
        assert_eq!(ctx.check(), 0);
        ctx.reset(); // frees them: their mappings go to the quarantine
        let s = debug::guard_stats();
        assert_eq!(s.sampled, 0, "{s:?}");
        assert_eq!(s.quarantined - before.quarantined, sampled.len(), "{s:?}");
        assert_eq!(ctx.counters().total_nblocks, blocks);
        // Sampled again after the reset (the countdown goes on), then freed by the delete.
        let (_chunks, again) = eight_chunks(ctx);
        assert_eq!(debug::guard_stats().sampled, again.len());
        ctx.delete();
        assert_eq!(debug::guard_stats().sampled, 0);
    })
    .join()
    .unwrap();
}

/// Asserts that the first frame of a guard fault's symbolised stack is `function` of this file,
/// with its line: the frames of `core`, `std` and memctx are trimmed (here `ptr::write_volatile`,
/// where an unoptimised build faults).
#[cfg(not(memctx_asan))]
fn assert_first_fault_frame(err: &str, function: &str) {
    let fault = err
        .split("  fault:\n")
        .nth(1)
        .expect("a symbolised fault stack");
    let first = fault.lines().next().unwrap_or("");
    assert!(
        first.starts_with("    #0 ")
            && first.contains(&format!(
                " in guard_pages::{function} at tests/guard_pages.rs:"
            )),
        "{err}"
    );
}

/// The child died of a guard fault: by SIGSEGV with memctx's report naming `class`, the
/// 10,000-byte chunk, the faulting function (first, with its file and line) and the allocating
/// one.
#[cfg(not(memctx_asan))]
fn assert_guard_fault(out: &Output, class: &str, function: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{err}");
    assert!(
        err.contains(&format!("memctx: {class}: write at ")),
        "{err}"
    );
    assert!(err.contains("10000-byte chunk"), "{err}");
    assert_first_fault_frame(&err, function);
    let alloc = err
        .split("  allocated at:\n")
        .nth(1)
        .expect("the allocation stack");
    assert!(
        alloc
            .lines()
            .next()
            .is_some_and(|l| l.contains("guard_pages::allocate_big_chunk")),
        "{err}"
    );
}

/// In the ASan build no guard page is used: the block is ASan's `malloc`'s, its tail poisoned,
/// and ASan reports the access in `function` — past the block, a `heap-buffer-overflow`; into
/// the freed block, a `heap-use-after-free`.
#[cfg(memctx_asan)]
fn assert_guard_fault(out: &Output, class: &str, function: &str) {
    let kind = match class {
        "overrun" => "heap-buffer-overflow",
        _ => "heap-use-after-free",
    };
    assert_asan_report(out, kind, function);
}

/// ASan reported `kind` at an access in `function`, and the child failed.
#[cfg(memctx_asan)]
fn assert_asan_report(out: &Output, kind: &str, function: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("ERROR: AddressSanitizer: {kind}")),
        "{err}"
    );
    assert!(err.contains(&format!("guard_pages::{function}")), "{err}");
}

/// The `case` child writes 100 bytes past its 10,000-byte chunk: a guard fault at the write.
fn assert_overrun_faults(case: &str) {
    let out = run(case, &[]);
    assert_guard_fault(&out, "overrun", "write_past");
    #[cfg(not(memctx_asan))]
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("100 bytes past the end of the 10000-byte chunk"),
            "{err}"
        );
    }
}

#[test]
fn overrun_far_past_a_large_chunk_faults_at_the_write() {
    assert_overrun_faults("overrun");
}

/// A Generation chunk with a block of its own takes the guarded path as an AllocSet one does.
#[test]
fn overrun_far_past_a_large_generation_chunk_faults_at_the_write() {
    assert_overrun_faults("generation-overrun");
}

/// So does a Bump chunk with a block of its own.
#[test]
fn overrun_far_past_a_large_bump_chunk_faults_at_the_write() {
    assert_overrun_faults("bump-overrun");
}

/// An overrun by `memset` faults in the C library, whose `memset` has no frame of its own: the
/// fault stack still names the function that called it, with its line, as the first frame of
/// this file (the frame-pointer walk alone would start at its caller, `memset_overrun`).
#[test]
fn overrun_by_memset_names_the_caller_of_memset() {
    let out = run("memset-overrun", &[]);
    // ASan's memset checks the whole range first and names its first bad byte: the chunk's
    // poisoned tail, inside the block.
    #[cfg(memctx_asan)]
    assert_asan_report(&out, "use-after-poison", "fill_past");
    #[cfg(not(memctx_asan))]
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{err}");
        assert!(err.contains("memctx: overrun: write at "), "{err}");
        assert!(
            err.contains("16 bytes past the end of the 10000-byte chunk"),
            "{err}"
        );
        let fault = err
            .split("  fault:\n")
            .nth(1)
            .expect("a symbolised fault stack");
        let first_here = fault
            .lines()
            .find(|l| l.contains(" in guard_pages::"))
            .unwrap_or("");
        assert!(
            first_here.contains(" in guard_pages::fill_past at tests/guard_pages.rs:"),
            "{err}"
        );
    }
}

/// The `case` child writes 40 bytes into its 10,000-byte chunk after `freed_in` freed it: a guard
/// fault at the write, with `freed_in` first in the free stack. In the ASan build, ASan's report
/// `asan_kind` at the write: a block its `pfree` gave back is ASan's freed heap memory, one a
/// reset gave back waits in the quarantine of released blocks, poisoned.
fn assert_write_after_free_faults(case: &str, freed_in: &str, asan_kind: &str) {
    let out = run(case, &[]);
    #[cfg(memctx_asan)]
    {
        let _ = freed_in;
        assert_asan_report(&out, asan_kind, "write_freed");
    }
    #[cfg(not(memctx_asan))]
    {
        let _ = asan_kind;
        assert_guard_fault(&out, "write-after-free", "write_freed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("40 bytes into the 10000-byte chunk"), "{err}");
        let freed = err.split("  freed at:\n").nth(1).expect("the free stack");
        assert!(
            freed
                .lines()
                .next()
                .unwrap_or("")
                .contains(&format!("guard_pages::{freed_in}")),
            "{err}"
        );
    }
}

#[test]
fn write_after_free_of_a_large_chunk_faults() {
    assert_write_after_free_faults("use-after-free", "use_after_free", "heap-use-after-free");
}

#[test]
fn write_after_free_of_a_large_generation_chunk_faults() {
    assert_write_after_free_faults(
        "generation-use-after-free",
        "use_after_free",
        "heap-use-after-free",
    );
}

#[test]
fn write_after_reset_into_a_large_bump_chunk_faults() {
    assert_write_after_free_faults(
        "bump-use-after-reset",
        "bump_use_after_reset",
        "use-after-poison",
    );
}

#[test]
#[cfg(not(memctx_asan))] // ASan handles SIGSEGV itself; memctx installs no handler there
fn other_faults_go_to_the_previous_action() {
    let out = run("not-ours", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{err}");
    assert!(!err.contains("memctx:"), "{err}");
}

#[test]
#[cfg(not(memctx_asan))]
fn std_stack_overflow_handler_still_runs() {
    let out = run("stack-overflow", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has overflowed its stack"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{err}");
}

/// Cases that must end normally (their assertions run in the child).
fn assert_clean(case: &str, env: &[(&str, &str)]) {
    let out = run(case, env);
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{case}: {text}\n{err}");
    assert!(text.contains("test child ... ok"), "{case}: {text}");
}

#[test]
#[cfg(not(memctx_asan))]
fn tail_before_the_guard_page_is_a_redzone_checked_at_free() {
    assert_clean("redzone", &[]);
}

#[test]
#[cfg(not(memctx_asan))]
fn past_the_cap_chunks_get_ordinary_blocks() {
    assert_clean("fallback", &[]);
}

#[test]
#[cfg(not(memctx_asan))]
fn steady_large_alloc_and_free_map_nothing() {
    assert_clean("steady", &[]);
}

#[test]
fn guard_pages_can_be_turned_off() {
    assert_clean("off", &[("MEMCTX_GUARD_PAGES", "0")]);
}

#[test]
#[cfg(not(memctx_asan))]
fn sampled_small_chunk_overrun_faults_at_the_write() {
    let out = run("sample-overrun", &[("MEMCTX_GUARD_SAMPLE", "4")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{err}");
    assert!(err.contains("memctx: overrun: write at "), "{err}");
    assert!(
        err.contains("76 bytes past the end of the 24-byte chunk"),
        "{err}"
    );
    assert_first_fault_frame(&err, "write_past");
}

/// The sampled chunks printed by the `sample-which` child.
fn sampled_in(env: &[(&str, &str)]) -> String {
    let out = run("sample-which", env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest may have printed `test child ... ` on the same line.
    let at = text.find("sampled [").expect("the sampled line");
    text[at..].lines().next().unwrap_or("").to_owned()
}

#[test]
#[cfg(not(memctx_asan))]
fn sampling_is_every_nth_or_seeded_and_deterministic() {
    assert_eq!(
        sampled_in(&[("MEMCTX_GUARD_SAMPLE", "4")]),
        "sampled [3, 7]"
    );
    assert_eq!(
        sampled_in(&[("MEMCTX_GUARD_SAMPLE", "1")]),
        "sampled [0, 1, 2, 3, 4, 5, 6, 7]"
    );
    // One slot: only the first sampled chunk is guarded while it lives.
    let one_slot = [("MEMCTX_GUARD_SAMPLE", "1"), ("MEMCTX_GUARD_SLOTS", "1")];
    assert_eq!(sampled_in(&one_slot), "sampled [0]");
    assert_eq!(sampled_in(&[]), "sampled []");
    let seeded = [("MEMCTX_GUARD_SAMPLE", "3"), ("MEMCTX_GUARD_SEED", "12345")];
    let first = sampled_in(&seeded);
    assert_eq!(sampled_in(&seeded), first);
    assert_ne!(first, "sampled []");
    let other = [("MEMCTX_GUARD_SAMPLE", "3"), ("MEMCTX_GUARD_SEED", "99")];
    assert_ne!(
        sampled_in(&other),
        first,
        "different seeds, different chunks"
    );
}
