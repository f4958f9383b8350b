//! Guarded sampling of small chunks (`MEMCTX_GUARD_SAMPLE=N`).
//!
//! Guard pages catch an overrun at the writing instruction, but only chunks with a block of their
//! own get one. With sampling on, one small chunk in N is given a block of its own too — a guarded
//! mapping like a large chunk's (see `guard`), its capacity (request + rear redzone, rounded to
//! 16) ending at the guard page — so a long test run catches overruns of small chunks at the
//! instruction, in code that never frees them. A sampled chunk is an ordinary external chunk of
//! its context: on the block list, counted in the stats, freed at reset and delete, seen by the
//! walker, and a pool chunk under memcheck (where, as under ASan, it is not guarded: the tools
//! watch its tail).
//!
//! Which allocations: each thread counts its allocations down. With `MEMCTX_GUARD_SEED` 0 (the
//! default) exactly every N-th allocation of the thread is sampled; with another seed the gaps are
//! drawn uniformly from 1 ..= 2N−1 (mean N) by a generator started from the seed on each thread —
//! the same program on the same thread samples the same chunks, so a test can pick them.
//!
//! Slots come from a fixed pool of `MEMCTX_GUARD_SLOTS` (256 by default) live sampled chunks;
//! while all are taken, allocations are not sampled. Memory cost: each sampled chunk takes a page
//! of its own (4 KiB, plus the guard page's address space) instead of its size class, so at most
//! `slots` pages live (1 MiB by default), and its pages go through the guard quarantine
//! (`MEMCTX_GUARD_QUARANTINE`) when it is freed. Sampling is off (`N = 0`) by default: the
//! defaults must stay cheap for per-row workloads, where a page per sampled chunk and two system
//! calls per free would dominate.

use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::settings;

/// How many allocations an off setting waits before it is read again.
const RECHECK: u64 = 4096;

/// Live sampled chunks (at most [`settings::guard_slots`]).
pub(crate) static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations left before the next sample (0: not started), and the generator's state.
    static COUNTDOWN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// Set between [`sample_chunk`] choosing this allocation and the block being taken.
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this allocation is sampled; counts down on every call.
#[inline(always)]
pub(crate) fn sample_chunk() -> bool {
    COUNTDOWN
        .try_with(|c| {
            let (left, state) = c.get();
            if left > 1 {
                c.set((left - 1, state));
                false
            } else {
                next_sample(c)
            }
        })
        .unwrap_or(false)
}

/// The countdown ran out (this allocation is due) or was never started: decide, and start the
/// next countdown.
#[cold]
#[inline(never)]
fn next_sample(c: &Cell<(u64, u64)>) -> bool {
    let (left, mut state) = c.get();
    let n = settings::guard_sample() as u64;
    if n == 0 {
        c.set((RECHECK, state));
        return false;
    }
    let seed = settings::guard_seed() as u64;
    if left == 0 {
        // A thread's first allocation: it is the first of the first gap.
        state = seed;
        let first = gap(n, seed, &mut state);
        if first > 1 {
            c.set((first - 1, state));
            return false;
        }
    }
    let next = gap(n, seed, &mut state);
    c.set((next, state));
    let taken = LIVE
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
            (l < settings::guard_slots()).then_some(l + 1)
        })
        .is_ok();
    if taken {
        let _ = PENDING.try_with(|p| p.set(true));
    }
    taken
}

/// Whether the block being taken is for a sampled chunk (clears the mark). A sampled chunk that
/// gets no guarded mapping (guard pages off, memcheck, ASan, the cap) gives its slot back here.
pub(crate) fn take_pending() -> bool {
    PENDING.try_with(|p| p.replace(false)).unwrap_or(false)
}

/// A sampled chunk's slot is free again.
pub(crate) fn slot_returned() {
    LIVE.fetch_sub(1, Ordering::Relaxed);
}

/// Restarts this thread's countdown (after the setting changed).
pub(crate) fn restart() {
    let _ = COUNTDOWN.try_with(|c| c.set((0, 0)));
}

/// The next gap between samples: `n`, or drawn from 1 ..= 2n−1 when seeded.
fn gap(n: u64, seed: u64, state: &mut u64) -> u64 {
    if seed == 0 {
        n
    } else {
        *state = splitmix(*state);
        1 + *state % (2 * n - 1)
    }
}

/// SplitMix64's step: a cheap generator good enough to spread the gaps.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
