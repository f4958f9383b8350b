//! Injected bugs (debug build): the model's random sequences (`tests/common/ops.rs`, over contexts
//! of every kind) with exactly one memory bug committed at a random step — an overrun, an
//! underrun, a write after free, a write after reset, a double free or a free through the wrong
//! context — must raise exactly one report, of that class, naming that chunk and its context (and,
//! for the writes, exactly the byte written) with the model's allocation in its allocation
//! backtrace, and the same sequences without a bug must raise none.
//!
//! Each bug hits a chunk of a kind it applies to. Overruns, underruns and writes after reset hit
//! every kind. A free is the kind's own (`Runner::free_index`): `pfree`, or for Bump the safe
//! API's `deallocate`, which the debug build validates as `pfree` does and after which it keeps the
//! chunk as a freed chunk until the reset (a release build takes back only the last allocation's
//! space). A wrong-context free is the safe API's `deallocate` through another context's allocator
//! (an AllocSet's).
//!
//! Each sequence runs at one of the verification depths (`ResetCheck`, [`DEPTHS`]). At `Released`,
//! the default, and at `Full` every bug is reported. At `Chunks`, the opt-down, released space is
//! filled without being verified when it is carved again, so a write after reset whose bytes are carved into a new chunk before the next
//! check or delete is lost (the documented trade-off): there a write after reset may go
//! unreported, but never misreported, and every other bug must still be reported exactly. The
//! same holds for a write after the free of a chunk of a kind whose free can release its block's
//! space (`Kind::free_releases_blocks`: a Generation or Slab block whose last chunk is freed is rewound).
//!
//! After the injection the sequence goes on, so the bug is found wherever the debug build finds
//! it naturally: at pfree or repalloc of the chunk, when its memory is handed out again, at the
//! reset or delete of its context (or of an ancestor), or at the end, when ModelRoot is deleted.
//! No `check()` runs between steps, and neither does `chunk_context` (it validates pointers, which
//! would find an overrun at once).
//!
//! These sequences commit real memory bugs on purpose: writes past a chunk's end, into freed
//! chunks and into memory a reset released, and before a chunk's start (into its front redzone).
//! Under ASan or memcheck the write itself is the error the tool reports (ASan aborts at it), so
//! the sanitizer legs (memcheck, ASan) must leave this file out, as they leave out
//! `tests/debug_reports.rs`; the tools' side of the
//! same bugs is proven by the dedicated sanitizer tests. Every injected write stays inside memory
//! the context owns (a redzone, a freed small chunk, the keeper block), so the process itself is
//! never corrupted.
#![cfg(feature = "debug-contexts")]

#[path = "common/kinds.rs"]
mod kinds;
#[path = "common/ops.rs"]
mod ops;
#[path = "common/strategy.rs"]
mod strategy;

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use kinds::Kind;
use memctx::debug::{self, BugClass, Policy, Report, ResetCheck};
use memctx::{BlockSizes, MemoryContext};
use ops::{ChunkModel, Op, Runner};
use proptest::prelude::*;

/// The bugs the generator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    Overrun,
    Underrun,
    WriteAfterFree,
    WriteAfterReset,
    DoubleFree,
    WrongContext,
}

/// Every bug the generator injects.
const BUGS: [Bug; 6] = [
    Bug::Overrun,
    Bug::Underrun,
    Bug::WriteAfterFree,
    Bug::WriteAfterReset,
    Bug::DoubleFree,
    Bug::WrongContext,
];

/// One injected bug: which, after which op, and its parameters (taken modulo what fits).
#[derive(Clone, Debug)]
struct Injection {
    bug: Bug,
    /// Injected after op `at % ops.len()`.
    at: usize,
    /// Picks the victim chunk among the candidates, or the size of a fresh one.
    victim: u16,
    /// Picks the damaged byte.
    offset: u16,
    /// The byte written (changed if it equals what the debug build expects there).
    byte: u8,
}

/// What the reports must say.
#[derive(Debug)]
struct Expected {
    class: BugClass,
    chunk: usize,
    /// Name of the context owning the chunk.
    context: &'static str,
    /// Kind of that context.
    kind: Kind,
    /// Damaged range relative to the chunk's data; `None` for a double free.
    range: Option<(isize, isize)>,
    /// The byte written (what the report must have found).
    byte: u8,
}

/// Largest request a victim of a free may have: its chunk then lies in a shared block (the chunk
/// limit is at least 1 KiB for every preset), never in a block of its own that pfree gives back
/// to the system, where a stale write would hit memory the process no longer owns.
const SMALL: usize = 512;

/// Bytes of rear redzone a request of `n` bytes gets at least (rounded to 8, plus 16).
fn redzone_len(n: usize) -> usize {
    n.next_multiple_of(8) - n + 16
}

/// The byte to write where `pattern` is expected.
fn differ(byte: u8, pattern: u8) -> u8 {
    if byte == pattern {
        byte ^ 0x5a
    } else {
        byte
    }
}

/// Which chunks a bug may hit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victims {
    /// Any chunk.
    Any,
    /// Chunks whose free frees them: any of a kind with `pfree`; of a Bump context, any with
    /// bytes (the debug build keeps a chunk the safe API's `deallocate` gives back as a freed
    /// chunk; a zero-sized layout gives nothing back).
    Freeable,
    /// Chunks of at least one byte.
    Sized,
}

/// Whether the chunk at `i` is one `which` allows.
fn allowed(r: &Runner, i: usize, which: Victims) -> bool {
    let c = &r.chunks[i];
    let kind = r.kind_of(i);
    match which {
        Victims::Any => true,
        Victims::Freeable => kind.frees_chunks() || !c.data.is_empty(),
        Victims::Sized => !c.data.is_empty(),
    }
}

/// Index of a victim among the live ordinary chunks of at most `max` bytes that `which` allows,
/// or of a fresh chunk allocated in the current context (its last allocation).
fn victim(r: &mut Runner, inj: &Injection, max: usize, which: Victims) -> usize {
    let candidates: Vec<usize> = (0..r.chunks.len())
        .filter(|&i| r.chunks[i].align == 16 && r.chunks[i].data.len() <= max)
        .filter(|&i| allowed(r, i, which))
        .collect();
    if candidates.is_empty() {
        let size = 1 + usize::from(inj.victim) % max.min(300);
        r.alloc_in(r.current, size)
    } else {
        candidates[usize::from(inj.victim) % candidates.len()]
    }
}

/// What the reports of a bug at `range` of the chunk `c` must say.
fn expect(
    r: &Runner,
    class: BugClass,
    c: &ChunkModel,
    range: Option<(isize, isize)>,
    byte: u8,
) -> Expected {
    Expected {
        class,
        chunk: c.ptr as usize,
        context: r.ctxs[&c.ctx].handle.name(),
        kind: r.ctxs[&c.ctx].kind,
        range,
        byte,
    }
}

/// Frees the chunk `c` a second time, as its kind frees: `pfree`, or the safe API's `deallocate`.
///
/// # Safety
/// None: the second free is the bug under test, which the debug build reports and skips.
unsafe fn free_again(r: &Runner, c: &ChunkModel) {
    let m = &r.ctxs[&c.ctx];
    if m.kind.frees_chunks() {
        unsafe { memctx::pfree(c.ptr) };
    } else {
        let layout = Layout::from_size_align(c.data.len(), c.align).expect("a layout");
        unsafe {
            m.handle
                .pin()
                .deallocate(NonNull::new(c.ptr).expect("a chunk"), layout)
        };
    }
}

/// The verification depths every sequence runs at: the default first, then the full depth and
/// the cheaper opt-down.
const DEPTHS: [ResetCheck; 3] = [ResetCheck::Released, ResetCheck::Full, ResetCheck::Chunks];

/// Commits the bug; returns what the reports must say.
fn inject(r: &mut Runner, inj: &Injection) -> Expected {
    match inj.bug {
        Bug::Overrun => {
            let i = victim(r, inj, usize::MAX, Victims::Any);
            let c = &r.chunks[i];
            let n = c.data.len();
            let off = n + usize::from(inj.offset) % redzone_len(n);
            // SAFETY (as far as the process goes): the byte lies in the chunk's rear redzone,
            // which its block owns. It is the bug under test.
            let byte = differ(inj.byte, 0x7e);
            unsafe { c.ptr.add(off).write(byte) };
            expect(
                r,
                BugClass::Overrun,
                c,
                Some((off as isize, off as isize + 1)),
                byte,
            )
        }
        Bug::Underrun => {
            let i = victim(r, inj, usize::MAX, Victims::Any);
            let c = &r.chunks[i];
            // One of the 16 bytes before the data: the front redzone, after the chunk's record.
            let back = 1 + usize::from(inj.offset) % 16;
            // SAFETY (process): the byte lies in the chunk's front redzone, which its block owns.
            // It is the bug under test.
            let byte = differ(inj.byte, 0x7e);
            unsafe { c.ptr.sub(back).write(byte) };
            let range = Some((-(back as isize), 1 - back as isize));
            expect(r, BugClass::Underrun, c, range, byte)
        }
        Bug::WriteAfterFree => {
            let i = victim(r, inj, SMALL, Victims::Freeable);
            let c = r.free_index(i);
            let n = c.data.len();
            // The first word of a freed chunk is the allocator's freelist link: skip it.
            let off = 8 + usize::from(inj.offset) % (n.next_multiple_of(8) + 16 - 8);
            // SAFETY (process): a freed small chunk stays in its block. The write is the bug.
            let byte = differ(inj.byte, 0x7f);
            unsafe { c.ptr.add(off).write(byte) };
            let range = Some((off as isize, off as isize + 1));
            expect(r, BugClass::WriteAfterFree, &c, range, byte)
        }
        Bug::WriteAfterReset => {
            // The current context can always be reset. After a reset the first small chunk is
            // carved from the start of the keeper block, which the next reset keeps (other
            // blocks go back to the system): the stale write stays in memory the context owns.
            let ctx = r.current;
            r.reset_ctx(ctx).expect("the current context can be reset");
            let n = 9 + usize::from(inj.victim) % 192;
            let i = r.alloc_in(ctx, n);
            let c = r.chunks[i].clone();
            r.reset_ctx(ctx).expect("the current context can be reset");
            // The chunk's own size, not `n`: a Slab context serves its one chunk size whatever
            // was asked, and a byte past that would lie in the next slot's header.
            let off = usize::from(inj.offset) % c.data.len();
            // SAFETY (process): inside the keeper block. The write is the bug.
            let byte = differ(inj.byte, 0x7f);
            unsafe { c.ptr.add(off).write(byte) };
            let range = Some((off as isize, off as isize + 1));
            expect(r, BugClass::WriteAfterFree, &c, range, byte)
        }
        Bug::DoubleFree => {
            let i = victim(r, inj, SMALL, Victims::Freeable);
            let c = r.free_index(i);
            // SAFETY (process): the debug build validates the pointer first and, under
            // Policy::Log, skips the free. The second free is the bug.
            unsafe { free_again(r, &c) };
            expect(r, BugClass::DoubleFree, &c, None, 0)
        }
        Bug::WrongContext => {
            // A zero-sized layout frees nothing, so the victim has bytes.
            let i = victim(r, inj, SMALL, Victims::Sized);
            // The debug build reports the free and carries it out in the chunk's own context
            // (Bump: leaves the chunk to its reset): either way the chunk is gone from the model.
            let c = r.chunks.swap_remove(i);
            // Another context whose allocator validates what it frees: a fresh AllocSet.
            let kind = kinds::ALL
                .iter()
                .position(|&k| k == Kind::AllocSet)
                .expect("a kind") as u8;
            r.apply(&Op::Create {
                parent: 0,
                sizes: 0,
                kind,
            });
            let other = r
                .ctxs
                .values()
                .last()
                .expect("the new context")
                .handle
                .pin();
            let layout = Layout::from_size_align(c.data.len(), 16).expect("a layout");
            // SAFETY (process): the debug build validates the pointer against the allocator's
            // context and, under Policy::Log, skips the free. The free is the bug.
            unsafe { other.deallocate(NonNull::new(c.ptr).expect("a chunk"), layout) };
            expect(r, BugClass::WrongContext, &c, None, 0)
        }
    }
}

fn describe(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `ops` with `injection` (or none) at verification depth `depth` and returns what it
/// expected and the reports raised.
fn run(
    ops: &[Op],
    injection: Option<&Injection>,
    depth: ResetCheck,
) -> (Option<Expected>, Vec<Report>) {
    debug::set_thread_policy(Some(Policy::Log));
    debug::set_thread_reset_check(Some(depth));
    let _ = debug::take_reports();
    let mut r = Runner::new();
    let at = injection.map(|inj| inj.at % ops.len());
    let mut expected = None;
    for (i, op) in ops.iter().enumerate() {
        r.apply(op);
        r.verify_contents();
        r.verify_tree(false);
        if expected.is_none() {
            let early = debug::take_reports();
            assert!(
                early.is_empty(),
                "step {i}: {op:?} raised reports before any bug was injected:\n{}",
                describe(&early)
            );
        }
        if Some(i) == at {
            expected = Some(inject(&mut r, injection.expect("at is some")));
        }
    }
    r.finish();
    let reports = debug::take_reports();
    debug::set_thread_policy(None);
    debug::set_thread_reset_check(None);
    (expected, reports)
}

/// The property: no bug, no report; one bug, one report of its class on its chunk and bytes — or,
/// for a write after reset at depth `Chunks`, possibly none (see the module docs).
/// Returns the kind of context the bug hit, if one was injected.
fn check(ops: &[Op], injection: Option<&Injection>, depth: ResetCheck) -> Option<Kind> {
    let (expected, reports) = run(ops, injection, depth);
    let Some(e) = expected else {
        assert!(
            reports.is_empty(),
            "a sequence without a bug raised:\n{}",
            describe(&reports)
        );
        return None;
    };
    let released = |bug| {
        bug == Bug::WriteAfterReset || (bug == Bug::WriteAfterFree && e.kind.free_releases_blocks())
    };
    let may_be_lost = depth == ResetCheck::Chunks && injection.is_some_and(|inj| released(inj.bug));
    if may_be_lost && reports.is_empty() {
        return Some(e.kind);
    }
    assert_eq!(
        reports.len(),
        1,
        "one bug, one report expected ({e:?}, {injection:?}, depth {depth:?}); got:\n{}",
        describe(&reports)
    );
    let rep = &reports[0];
    let exact = rep.class == e.class
        && rep.chunk == Some(e.chunk)
        && rep.context == e.context
        && rep.range == e.range
        && (e.range.is_none() || rep.found == [e.byte]);
    assert!(exact, "expected {e:?}, got:\n{rep}");
    allocated_by_the_model(rep);
    Some(e.kind)
}

/// Asserts that the report's allocation backtrace starts in the model (`Runner`, which made
/// every allocation of the sequence): the backtrace is the victim's own, trimmed to the caller.
fn allocated_by_the_model(rep: &Report) {
    let frames = rep.alloc_backtrace();
    let first = frames.first().and_then(|f| f.function.as_deref());
    assert!(
        first.is_some_and(|f| f.contains("::ops::Runner::")),
        "the allocation backtrace should start in the model, starts in {first:?}:\n{rep}"
    );
}

fn bug() -> impl Strategy<Value = Bug> {
    proptest::sample::select(BUGS.to_vec())
}

fn injection() -> impl Strategy<Value = Injection> {
    (
        bug(),
        any::<usize>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(|(bug, at, victim, offset, byte)| Injection {
            bug,
            at,
            victim,
            offset,
            byte,
        })
}

proptest! {
    #![proptest_config(strategy::config())]

    /// One bug in four of five sequences; the fifth is the control. Each case runs on a fresh
    /// thread, so it starts with a fresh tree and recycle lists, and a report can only come from
    /// its own sequence.
    #[test]
    fn injected_bugs_are_reported(
        ops in strategy::ops(),
        injection in proptest::option::weighted(0.8, injection()),
        depth in proptest::sample::select(&DEPTHS[..]),
    ) {
        on_fresh_thread(move || check(&ops, injection.as_ref(), depth));
    }
}

/// Runs `f` on a new thread (a new tree), passing its panic on.
fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Each bug at each depth, on a context of each kind, whatever `PROPTEST_CASES` says: the
/// sequence's context 1 is of each kind in turn, and the victims range over every chunk live at
/// the injection; every bug must have hit a chunk of every kind.
#[test]
fn each_bug_once_on_every_kind() {
    let mut hit = Vec::new();
    for kind in 0..kinds::ALL.len() as u8 {
        let ops = fixed_sequence(kind);
        for bug in BUGS {
            for (at, depth, victim) in cases() {
                let inj = Injection {
                    bug,
                    at,
                    victim,
                    offset: 3,
                    byte: 0,
                };
                let ops = ops.clone();
                if let Some(k) = on_fresh_thread(move || check(&ops, Some(&inj), depth)) {
                    hit.push((bug, k));
                }
            }
        }
        for depth in DEPTHS {
            let ops = ops.clone();
            assert_eq!(on_fresh_thread(move || check(&ops, None, depth)), None);
        }
    }
    for &kind in kinds::ALL {
        for bug in BUGS {
            assert!(hit.contains(&(bug, kind)), "{bug:?} on {kind:?}");
        }
    }
}

/// A write after reset whose requested size is larger than a Slab context's one chunk size: the
/// stale write must land in the chunk the Slab handed out (its size, not the request's), so the
/// report names that chunk and the byte written.
#[test]
fn write_after_reset_stays_inside_a_slab_chunk() {
    let slab = kinds::ALL
        .iter()
        .position(|&k| k == Kind::Slab)
        .expect("Slab is one of the kinds") as u8;
    let ops = fixed_sequence(slab);
    for depth in DEPTHS {
        let inj = Injection {
            bug: Bug::WriteAfterReset,
            at: 4,
            victim: 191, // a 200-byte request, in a context of 24-byte chunks
            offset: 150,
            byte: 0,
        };
        let ops = ops.clone();
        let hit = on_fresh_thread(move || check(&ops, Some(&inj), depth));
        // At depth Chunks a write after reset may be lost (see `check`); at the others it is found.
        let lost_allowed = depth == ResetCheck::Chunks && hit.is_none();
        assert!(
            hit == Some(Kind::Slab) || lost_allowed,
            "{depth:?}: {hit:?}"
        );
    }
}

/// The injection points of [`each_bug_once_on_every_kind`]: after the first, fifth and last op of
/// [`fixed_sequence`], at every depth, with victims 0, 1 and 2.
fn cases() -> impl Iterator<Item = (usize, ResetCheck, u16)> {
    [0, 4, 9].into_iter().flat_map(|at| {
        DEPTHS
            .into_iter()
            .flat_map(move |depth| (0..3).map(move |victim| (at, depth, victim)))
    })
}

/// A short sequence whose context 1 is of the kind `kind` selects, current from its fourth op on.
fn fixed_sequence(kind: u8) -> Vec<Op> {
    use Op::*;
    vec![
        Create {
            parent: 0,
            sizes: 1,
            kind,
        },
        Alloc { ctx: 1, size: 40 },
        Alloc { ctx: 0, size: 300 },
        Switch { ctx: 1 },
        Palloc { size: 24 },
        Alloc { ctx: 1, size: 9000 },
        Free { chunk: 3 },
        Realloc {
            chunk: 0,
            size: 100,
        },
        Reset { ctx: 1 },
        Palloc { size: 64 },
    ]
}

// ---------------------------------------------------------------------------------------------
// Focused tests of the bugs the property found in the debug build (all fixed since; kept as
// regression tests, each on a fresh thread so no earlier test's tree is involved).

/// Runs `f` on a fresh thread with the Log policy and full verification (these bugs were found
/// at that depth) and returns the reports it raised.
fn reports_of(f: impl FnOnce() + Send + 'static) -> Vec<Report> {
    std::thread::spawn(|| {
        debug::set_thread_policy(Some(Policy::Log));
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        f();
        debug::take_reports()
    })
    .join()
    .expect("no panic")
}

/// An overrun found when its context is deleted is reported once, naming the context's path from
/// Top. `delete_one` (src/context.rs) runs `context_deleting`'s full check, then, because the
/// context goes onto a recycle list, `kinds::aset::reset`, whose `reset_begin` hook
/// (src/debug/hooks.rs) skips contexts marked dead: this test guards against a second report,
/// found at "reset of ..." with the path `["Victim"]` (the context already unlinked).
#[test]
fn one_bug_one_report_at_delete() {
    let reports = reports_of(|| {
        let c = MemoryContext::top().new_child("Victim", BlockSizes::DEFAULT);
        let p = c.alloc(10).as_ptr();
        // SAFETY (process): inside the chunk's redzone. The write is the bug.
        unsafe { p.add(12).write(0) };
        c.delete();
    });
    assert_eq!(reports.len(), 1, "{}", describe(&reports));
    assert_eq!(reports[0].class, BugClass::Overrun);
    assert_eq!(reports[0].found_at, "delete of \"Victim\"");
    assert_eq!(reports[0].context_path, ["TopMemoryContext", "Victim"]);
}

/// A write after reset stays a `write-after-free` of the chunk it hit, however many resets pass
/// before it is found. The keeper block keeps the ghosts (the chunks a reset released,
/// src/debug/blocks.rs) past its free pointer across resets, because a reset does not check that
/// space (ResetCheck::Chunks): this test guards that the carve that finds the damage after a
/// second reset still names the chunk, not a `wild-write` with no chunk.
#[test]
fn write_after_reset_keeps_its_chunk_across_resets() {
    let (p, reports) = std::thread::spawn(|| {
        debug::set_thread_policy(Some(Policy::Log));
        debug::set_thread_reset_check(Some(ResetCheck::Full));
        let c = MemoryContext::top().new_child("Twice", BlockSizes::SMALL);
        let p = c.alloc(48).as_ptr();
        c.reset();
        // SAFETY (process): inside the keeper block. The write is the bug.
        unsafe { p.add(5).write(1) };
        let _other_block = c.alloc(9000); // makes the next reset a real one
        c.reset();
        let _reuse = c.alloc(48);
        c.delete();
        (p as usize, debug::take_reports())
    })
    .join()
    .expect("no panic");
    assert!(
        !reports.is_empty(),
        "the write after reset was not reported"
    );
    for r in &reports {
        assert_eq!(
            (r.class, r.chunk, r.range),
            (BugClass::WriteAfterFree, Some(p), Some((5, 6))),
            "{r}"
        );
    }
}

/// A bug found and reported at a delete is not reported again in the next context that recycles
/// the deleted one's keeper block: the recycling reset clobbers the whole keeper, not only its
/// used space, so damage beyond the free pointer cannot reach the next life's first carve and be
/// reported under the new context's name.
#[test]
fn damage_is_not_carried_into_a_recycled_context() {
    let reports = reports_of(|| {
        let c = MemoryContext::top().new_child("Victim", BlockSizes::DEFAULT);
        let p = c.alloc(48).as_ptr();
        c.reset();
        // SAFETY (process): inside the keeper block. The write is the bug.
        unsafe { p.add(5).write(1) };
        c.delete(); // found here (write-after-free at delete): correct
        let d = MemoryContext::top().new_child("Innocent", BlockSizes::DEFAULT);
        let _q = d.alloc(48); // the recycled keeper: must be clean
        d.delete();
    });
    assert_eq!(reports.len(), 1, "{}", describe(&reports));
    assert_eq!(reports[0].context, "Victim");
}

/// A write after reset into the bytes where a later carve puts a chunk's header word is
/// reported: the carve (src/kinds/aset.rs) writes the header before the `chunk_carved` /
/// `leftover_carved` hooks check the space from `chunk + 8`, so the `space_carving` hook checks
/// the header word first; without it the damage would be overwritten and lost.
#[test]
fn write_after_reset_into_a_new_chunk_header_is_reported() {
    let reports = reports_of(|| {
        let c = MemoryContext::top().new_child("Gap", BlockSizes::SMALL);
        let p = c.alloc(48).as_ptr();
        c.reset();
        // Two 8-byte chunks follow: the second one's header word lands at p + 32.
        // SAFETY (process): inside the keeper block. The write is the bug.
        unsafe { p.add(32).write(1) };
        let n1 = c.alloc(8).as_ptr();
        let n2 = c.alloc(8).as_ptr();
        assert_eq!(n1, p);
        assert_eq!(
            n2 as usize - memctx::chunk_prefix_size(),
            p as usize + 32,
            "the layout this test relies on changed"
        );
        c.delete();
    });
    assert!(
        !reports.is_empty(),
        "the write after reset was never reported"
    );
    assert!(
        reports.iter().all(|r| r.class == BugClass::WriteAfterFree),
        "{}",
        describe(&reports)
    );
}
