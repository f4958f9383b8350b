//! Allocation backtraces: capture, intern, resolve.
//!
//! The debug build records, for every chunk, the call stack that allocated it (and, for freed
//! chunks, the one that freed it), so that a report about a damaged chunk can say *who* owns the
//! bytes that were hit. This file is the machinery for that: it captures a stack as a handful of
//! return addresses, interns the stack in a global depot that hands out a 32-bit [`StackId`] (what
//! a chunk header has room for), and turns an id back into function names, files and lines when —
//! and only when — a report is written.
//!
//! Cost model
//! ----------
//!
//! Capture sits on the allocation path, so it must cost about what an allocation costs, not what a
//! backtrace usually costs. Measured on the machines this project is built on:
//! `backtrace::trace` (DWARF unwinding through libgcc's `_Unwind_Backtrace`) costs ≈ 100 ns a
//! frame, a microsecond or more for a typical stack; following the frame-pointer chain costs a few
//! ns for the same stack; an allocation costs 5–15 ns. So, like AddressSanitizer's "fast
//! unwinder", the hot path here walks frame pointers, and DWARF unwinding is the fallback and the
//! referee. Measured here (release, 16 frames, stack already known): ≈ 33 ns a capture through the
//! walk, ≈ 3 µs through the fallback (`bench_capture`, `bench_capture_fallback`).
//!
//! The frame-pointer walk
//! ----------------------
//!
//! With `-C force-frame-pointers=yes` every function keeps `rbp` pointing at a two-word record
//! `[saved rbp of the caller, return address into the caller]`. Starting from the own `rbp` of
//! `capture_frames`, following the saved `rbp` words yields the return addresses of all the
//! callers, two loads a frame. The chain is only as good as the least careful function on the
//! stack, though: code built without frame pointers (a host app's build without the flag, most of
//! the C library) uses `rbp` as an ordinary register, and a walk that trusts it reads garbage. So
//! every step is checked before anything is read through it:
//!
//! * the record must lie between the current stack pointer and the top of this thread's stack
//!   (the bounds come from `pthread_getattr_np` once a thread and are cached in a thread-local);
//!   that range is mapped memory, so the loads cannot fault;
//! * it must be 8-byte aligned (the ABI gives 16; 8 is what the loads need, and what ASan checks);
//! * the next record must be strictly above the current one (the stack grows down, so a chain that
//!   does not climb is corrupt, and this bounds the walk);
//! * the return address must be non-null; a saved `rbp` of 0 ends the chain cleanly (the C runtime
//!   clears `rbp` at `_start` and at the start of a new thread).
//!
//! The three checks on the next record are one comparison (see `walk_chain`), and the stack's hash
//! is summed on the way, so a frame costs about one load latency, ≈ 1.5 ns. The loads are inline
//! assembly: the words read are not Rust objects, and an `asm!` load is invisible to
//! AddressSanitizer's instrumentation, so a walk never raises a false report on a stack redzone.
//!
//! When the walk is not trusted
//! ----------------------------
//!
//! A chain that yields fewer than [`MIN_FP_FRAMES`] frames is taken as "this code has no frame
//! pointers" — code built without `-C force-frame-pointers=yes` breaks the chain after one frame —
//! and the stack is captured with `backtrace::trace` instead (the synchronized one: the
//! unsynchronized variant races with other users of the backtrace crate's global state).
//!
//! A long chain can be wrong too, and that is the dangerous case, because it looks fine. If a
//! function without a frame pointer sits between two that have one (C code calling back into Rust;
//! any Rust function in a sanitizer build whose RUSTFLAGS forgot the flag), the walk steps over it
//! and loses the return address into its caller: two allocations made from different places in
//! that caller get the same frames, so the same id — silent misattribution. If `capture` itself has
//! no frame pointer (a dependent's build: the project's `.cargo/config.toml` does not reach
//! dependents), `rbp` still holds the frame of some ancestor that has one (Rust's std is built with
//! them) and the walk starts there, skipping every user frame.
//!
//! So the walk is checked once for every stack it produces: the first time a chain is seen (a
//! depot miss), the stack is also unwound with `backtrace::trace` and the two compared. They agree
//! when one is a prefix of the other (the chain may stop a few frames early, in the C runtime's
//! start-up code; the unwinder may stop early where unwind tables are missing). When they disagree
//! the chain's record is marked *ambiguous*, and from then on every walk that produces that chain
//! takes the fallback; the id handed out is always that of the unwinder's stack. A new stack thus
//! costs one unwind, a known stack a walk and a lookup; in a build without frame pointers every
//! chain ends up ambiguous and capture costs what the fallback costs, but stays right. A chain that
//! agreed on first sight is trusted after that; the one hole left is a chain that is the true
//! stack of one path and a lossy walk of another — which needs a function without a frame pointer
//! reached through the same indirect call instruction as its own callee.
//!
//! A chain that breaks *after* [`MIN_FP_FRAMES`] frames, and agrees with the unwinder as far as it
//! goes, is kept truncated: the usual place for that is the top of the stack, and paying 3 µs an
//! allocation to see `__libc_start_main` would be a bad trade. That is ASan's rule too.
//!
//! Not on x86_64 Linux, every capture uses the fallback.
//!
//! The depot
//! ---------
//!
//! A stack is stored once and named by a `u32` id (0 means "no stack"), as in ASan's stack depot;
//! chunks hold the id. Two structures:
//!
//! * the *store*, id → record, is append-only: a fixed array of buckets of doubling size, each a
//!   lazily allocated array of `AtomicPtr<Record>`; a record is leaked when created and never
//!   changes (but for its collision link and its ambiguous mark, both atomics that change once), so
//!   [`frames`]`(id)` is two acquire loads and no lock;
//! * the *index*, hash → first id with that hash, is a `DashMap` (sharded `RwLock`s over
//!   hashbrown tables). Stacks whose hashes collide are chained through the records' `next` field;
//!   the chain only grows, under the shard's write lock.
//!
//! The hash is a multilinear hash of the frames (see `hash_frames`), a few lines of our own, so no
//! new dependency; the index's hasher is the identity on it.
//!
//! The common case is an allocation site seen before. For it there is a per-thread direct-mapped
//! cache of (hash, record) pairs: a hit is confirmed by comparing the frames with the record's (no
//! lock, no shared write), so repeated captures from the same sites never touch the index's locks.
//! That matters more than the raw cost suggests: with the index alone, every thread allocating from
//! the same site takes a read lock on the same shard, and that cache line bounces between cores.
//! The index is consulted only on a cache miss; a stack not yet known is inserted under the shard's
//! write lock, with a re-check, so concurrent first captures of one stack agree on one id.
//!
//! The depot never frees anything. Its size is bounded by the number of distinct allocation stacks
//! a program has (usually thousands, at ~200 bytes each), which is also why ids are `u32`. Past
//! about 2^28 distinct stacks it stops interning and `capture` returns [`StackId::NONE`].
//!
//! Reentrancy
//! ----------
//!
//! Interning a new stack allocates (a record, the index's tables). If memctx is the global
//! allocator with backtraces on, those allocations come back here. A thread-local "busy" flag makes
//! such a nested capture return [`StackId::NONE`] at once instead of recursing; the same flag
//! guards the one-time initialisation. The thread-locals are `const`-initialised and need no
//! destructor, so they stay usable while a thread's other thread-locals are being destroyed.
//!
//! Settings
//! --------
//!
//! Capture can be switched off and its depth changed at run time ([`set_enabled`], [`set_depth`]);
//! their first values come from `MEMCTX_BACKTRACES` (`0`/`1`) and `MEMCTX_BACKTRACE_DEPTH`
//! (1..=64, default 16), read once on first use. When capture is off, [`capture`] is one relaxed
//! atomic load and a branch. The settings are process-wide: tests that change them run in a child
//! process (see the tests below).
//!
//! Resolution
//! ----------
//!
//! Ids are turned into symbols only at report time ([`resolve`]), with the backtrace crate, which
//! reads the binary's debug info (the first call loads it: tens of milliseconds natively, about
//! two seconds under memcheck) and expands inlined calls, so one return address can give several
//! frames. Each return address is symbolised once per process ([`SYMBOLS`]). A report shows the
//! program's frames only ([`shown`], [`shown_frames`]: std, core, alloc, the test harness, the
//! panic and start-up machinery and memctx are left out, and the C library's frames are not even
//! symbolised); leak sites drop only the allocator's frames from the top ([`user_frames`]).
//! [`format_frames`] prints frames in ASan's style.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// Most frames a stack may have ([`set_depth`] clamps to it).
pub(crate) const MAX_DEPTH: usize = 64;

/// Depth used when `MEMCTX_BACKTRACE_DEPTH` is not set.
pub(crate) const DEFAULT_DEPTH: usize = 16;

/// A frame-pointer walk that yields fewer frames than this (or than the depth, if smaller) is
/// taken as broken, and the stack is captured again with `backtrace::trace`.
pub(crate) const MIN_FP_FRAMES: usize = 3;

// ---------------------------------------------------------------------------------------------
// Stack ids
// ---------------------------------------------------------------------------------------------

/// The name of an interned stack: an index into the global depot.
///
/// 0 is reserved for [`StackId::NONE`] ("no stack recorded": capture off, reentrant capture, depot
/// full). Ids are only meaningful within the process that made them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct StackId(u32);

impl StackId {
    /// No stack.
    pub(crate) const NONE: StackId = StackId(0);

    /// Whether this is [`StackId::NONE`].
    #[inline]
    #[allow(dead_code)] // API for the debug module's users; not every build calls it.
    pub(crate) fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The id as a `u32`, for storing in a chunk header.
    #[inline]
    pub(crate) fn as_raw(self) -> u32 {
        self.0
    }

    /// An id from a `u32` made by [`StackId::as_raw`]. Any value is safe to pass around: an id
    /// that names no stack resolves to no frames.
    #[inline]
    pub(crate) fn from_raw(raw: u32) -> StackId {
        StackId(raw)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// `STATE` before the environment was read.
const STATE_UNINIT: u8 = 0;
/// Capture is off.
const STATE_OFF: u8 = 1;
/// Capture is on.
const STATE_ON: u8 = 2;

/// Whether capture is on (one of the `STATE_*` values). The only thing `capture` reads when off.
static STATE: AtomicU8 = AtomicU8::new(STATE_UNINIT);
/// Frames to keep per stack, 1..=MAX_DEPTH.
static DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_DEPTH);
/// Guards the one reading of the environment.
static INIT: Once = Once::new();

/// Reads `MEMCTX_BACKTRACES` and `MEMCTX_BACKTRACE_DEPTH` once. Later calls return at once (or
/// wait for a concurrent first call to finish, so that a setter that follows cannot be overwritten
/// by a late reading of the environment).
fn ensure_init() {
    if STATE.load(Ordering::Acquire) != STATE_UNINIT {
        return;
    }
    // Reading the environment allocates; a global allocator that captures must not re-enter.
    with_busy(|| {
        INIT.call_once(|| {
            if let Some(depth) = std::env::var("MEMCTX_BACKTRACE_DEPTH")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                DEPTH.store(depth.clamp(1, MAX_DEPTH), Ordering::Relaxed);
            }
            let on = match std::env::var("MEMCTX_BACKTRACES") {
                Ok(v) => !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "off" | "no"
                ),
                Err(_) => true,
            };
            STATE.store(if on { STATE_ON } else { STATE_OFF }, Ordering::Release);
        });
    });
}

/// Switches capture on or off for the whole process. Off, [`capture`] returns
/// [`StackId::NONE`] after one relaxed atomic load. Overrides `MEMCTX_BACKTRACES`.
pub(crate) fn set_enabled(on: bool) {
    ensure_init();
    STATE.store(if on { STATE_ON } else { STATE_OFF }, Ordering::Relaxed);
}

/// Whether capture is on.
#[allow(dead_code)] // API for the debug module's users; not every build calls it.
pub(crate) fn enabled() -> bool {
    ensure_init();
    STATE.load(Ordering::Relaxed) == STATE_ON
}

/// Sets how many frames a capture keeps, clamped to `1..=MAX_DEPTH`. Overrides
/// `MEMCTX_BACKTRACE_DEPTH`. Stacks already interned keep their depth.
pub(crate) fn set_depth(frames: usize) {
    ensure_init();
    DEPTH.store(frames.clamp(1, MAX_DEPTH), Ordering::Relaxed);
}

/// How many frames a capture keeps.
#[allow(dead_code)] // API for the debug module's users; not every build calls it.
pub(crate) fn depth() -> usize {
    ensure_init();
    DEPTH.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Per-thread state
// ---------------------------------------------------------------------------------------------

/// log2 of the number of slots in the per-thread cache of recently seen stacks.
const CACHE_BITS: u32 = 7;
/// Slots in the per-thread cache.
const CACHE_SLOTS: usize = 1 << CACHE_BITS;

/// What one thread keeps for capture. `const`-initialised and without a destructor, so it is
/// usable at any point of a thread's life, including while other thread-locals are destroyed.
struct ThreadState {
    /// Set while this thread is inside `capture` (or initialising): a nested capture — from the
    /// global allocator, when interning allocates — returns `StackId::NONE`.
    busy: Cell<bool>,
    /// This thread's stack as `(low, high)`; `(0, 0)` until looked up, `(1, 0)` (an empty range)
    /// when it could not be, which makes every frame-pointer walk fail over to the fallback.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    bounds: Cell<(usize, usize)>,
    /// Direct-mapped cache of `(hash, record)` of recently captured stacks, indexed by the hash's
    /// top bits. An entry is a hint: a hit is confirmed by comparing the frames with the record's.
    cache: [Cell<(u64, Option<&'static Record>)>; CACHE_SLOTS],
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            busy: Cell::new(false),
            bounds: Cell::new((0, 0)),
            cache: [const { Cell::new((0, None)) }; CACHE_SLOTS],
        }
    };
}

/// Clears the busy flag when dropped, so a panic inside a capture cannot leave a thread unable to
/// capture.
struct BusyGuard<'a>(&'a Cell<bool>);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Runs `f` with this thread's busy flag set (a nested capture returns `NONE`); runs it anyway if
/// the flag was already set.
fn with_busy<R>(f: impl FnOnce() -> R) -> R {
    THREAD.with(|t| {
        let was = t.busy.replace(true);
        let r = f();
        t.busy.set(was);
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------------------------

/// `capture_frames`'s own frame and stack pointers, read at its start.
#[derive(Clone, Copy)]
struct FrameRegs {
    /// The frame pointer (`rbp`); 0 where it is not read.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    fp: usize,
    /// `capture_frames`'s stack pointer or, where registers are not read, the address of a local
    /// in its frame: the frames of its callers all lie above it, those of the functions it calls
    /// (the unwinder's) at or below it.
    sp: usize,
}

/// Reads the current function's `rbp` and `rsp` as a [`FrameRegs`]. A macro, not a function:
/// the registers must be read in the frame of the function that uses it, and `#[inline(always)]`
/// is not a promise (debug builds keep such a function as a call of its own).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
macro_rules! current_frame {
    () => {{
        let fp: usize;
        let sp: usize;
        // SAFETY: two register moves; no memory is touched and no flags change.
        unsafe {
            std::arch::asm!(
                "mov {fp}, rbp",
                "mov {sp}, rsp",
                fp = out(reg) fp,
                sp = out(reg) sp,
                options(nomem, nostack, preserves_flags)
            );
        }
        FrameRegs { fp, sp }
    }};
}

/// Elsewhere only the stack pointer is needed (for the fallback): the address of a local of the
/// function that uses the macro.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
macro_rules! current_frame {
    () => {{
        let marker = 0u8;
        FrameRegs {
            fp: 0,
            sp: std::hint::black_box(&marker) as *const u8 as usize,
        }
    }};
}

/// Captures the current call stack and returns its id.
///
/// The first frame is the return address into `capture`'s caller — the call site of `capture` —
/// after `skip` more frames are dropped (`skip = 1` starts at the caller's caller, and so on).
/// Keeps at most [`depth()`] frames. Returns [`StackId::NONE`] when capture is off, when called
/// from inside another capture on this thread (the global allocator, while interning), when no
/// frame could be captured, or when the depot is full.
///
/// Walks frame pointers when it can (a few ns), else uses `backtrace::trace` (≈ 100 ns a frame);
/// see the module notes.
#[inline(always)]
pub(crate) fn capture(skip: usize) -> StackId {
    // Capture off (mode `patterns`) is decided here, inlined into the hook: no call at all. The
    // walk's frames are unchanged, as `capture_frames` is called from where `capture` is used.
    let state = STATE.load(Ordering::Relaxed);
    if state == STATE_OFF {
        return StackId::NONE;
    }
    capture_frames(state, skip)
}

/// The stack of the calling code, captured whether or not capture is on and as deep as the depot
/// keeps ([`MAX_DEPTH`]): the "found at" stack of a report. Unwinds with `backtrace::trace` (a
/// report is rare, and its stack should reach past memctx's frames to the program's); the
/// unwinder's and memctx's own frames are left out when the report is shown.
#[cold]
#[inline(never)]
pub(crate) fn capture_always() -> StackId {
    THREAD.with(|t| {
        if t.busy.replace(true) {
            return StackId::NONE;
        }
        let _guard = BusyGuard(&t.busy);
        let mut buf = [MaybeUninit::<usize>::uninit(); MAX_DEPTH];
        // A stack pointer of 0 keeps every frame the unwinder reports.
        let n = fallback_walk(0, 0, &mut buf);
        // SAFETY: fallback_walk initialised buf[..n], n <= MAX_DEPTH.
        let frames = unsafe { assume_init_prefix(&buf, n) };
        if n == 0 {
            StackId::NONE
        } else {
            intern(t, frames, hash_frames(frames))
        }
    })
}

/// The body of [`capture`] when capture may be on: reads its own frame and walks from there.
#[inline(never)]
fn capture_frames(state: u8, skip: usize) -> StackId {
    // Read this function's frame registers first thing: the walk starts from this frame.
    let regs = current_frame!();
    // The closure stays small so that `with` (and the thread-local's accessor) inline here.
    let id = THREAD.with(|t| capture_on(t, state, regs, skip));
    // Not a tail call: this frame, where both walks start, must stay on the stack until
    // `capture_on` returns. The opaque use of the result after the call keeps it there.
    std::hint::black_box(id)
}

/// The body of [`capture`], given this thread's state, the `STATE` value `capture` read and
/// `capture_frames`'s frame registers. Not inlined, which keeps `capture_frames` small enough for
/// the thread-local access to be inlined into it (else it is an indirect call).
#[inline(never)]
fn capture_on(t: &ThreadState, state: u8, regs: FrameRegs, skip: usize) -> StackId {
    if t.busy.replace(true) {
        return StackId::NONE;
    }
    let _guard = BusyGuard(&t.busy);
    if state == STATE_UNINIT {
        // Reads the environment, with the busy flag still set: allocations there do not capture.
        ensure_init();
        if STATE.load(Ordering::Relaxed) != STATE_ON {
            return StackId::NONE;
        }
    }
    let depth = DEPTH.load(Ordering::Relaxed).clamp(1, MAX_DEPTH);
    // Uninitialised: zeroing 512 bytes would cost a tenth of a capture.
    let mut buf = [MaybeUninit::<usize>::uninit(); MAX_DEPTH];
    let (n, hash) = fp_walk(t, regs, skip, &mut buf[..depth]);
    if n >= MIN_FP_FRAMES.min(depth) {
        // SAFETY: the walk initialised buf[..n], n <= depth <= MAX_DEPTH.
        let frames = unsafe { assume_init_prefix(&buf, n) };
        match lookup(t, frames, hash) {
            Some(rec) if !rec.ambiguous.load(Ordering::Relaxed) => return StackId(rec.id),
            // A chain known not to identify its stack: unwind properly.
            Some(_) => {}
            None => return first_sight(t, regs.sp, skip, depth, frames, hash),
        }
    }
    capture_fallback(t, regs.sp, skip, depth)
}

/// Initialised prefix of a frame buffer.
///
/// # Safety
///
/// `buf[..n]` must be initialised (and so `n <= buf.len()`).
#[inline(always)]
unsafe fn assume_init_prefix(buf: &[MaybeUninit<usize>], n: usize) -> &[usize] {
    debug_assert!(n <= buf.len());
    // SAFETY: the caller guarantees buf[..n] initialised, hence in bounds; MaybeUninit<usize>
    // has usize's layout.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<usize>(), n) }
}

/// Captures with the fallback unwinder and interns the result. `sp` is `capture_frames`'s stack
/// pointer.
#[cold]
#[inline(never)]
fn capture_fallback(t: &ThreadState, sp: usize, skip: usize, depth: usize) -> StackId {
    let mut buf = [MaybeUninit::<usize>::uninit(); MAX_DEPTH];
    let n = fallback_walk(sp, skip, &mut buf[..depth]);
    if n == 0 {
        return StackId::NONE;
    }
    // SAFETY: fallback_walk initialised buf[..n], n <= depth <= MAX_DEPTH.
    let frames = unsafe { assume_init_prefix(&buf, n) };
    intern(t, frames, hash_frames(frames))
}

/// How many more frames than a frame-pointer chain the unwinder may find above the chain's end
/// for the two to still agree: the C runtime's start-up frames, built without frame pointers
/// (`__libc_start_call_main`, `__libc_start_main`, `_start`; `clone3` for other threads).
const RUNTIME_TOP_FRAMES: usize = 3;

/// A stack the frame-pointer walk has not produced before (`fp_frames`, hash `hash`): checks it
/// once against the fallback unwinder, records the verdict with it in the depot, and returns the
/// id of the right stack.
///
/// The two agree when one is a prefix of the other — the chain may end at the C runtime's
/// start-up code, a few frames before the unwinder does; the unwinder may stop early where
/// unwind tables are missing. Otherwise the chain went through a function without frame pointers
/// and lost frames (or started from an ancestor's frame, if `capture` itself has none), so it does
/// not identify its stack: the record is marked ambiguous, and every later walk that produces it
/// takes the fallback instead. A new stack thus costs one unwind; known stacks cost a walk.
#[cold]
#[inline(never)]
fn first_sight(
    t: &ThreadState,
    sp: usize,
    skip: usize,
    depth: usize,
    fp_frames: &[usize],
    hash: u64,
) -> StackId {
    let mut buf = [MaybeUninit::<usize>::uninit(); MAX_DEPTH];
    let m = fallback_walk(sp, skip, &mut buf[..depth]);
    // SAFETY: fallback_walk initialised buf[..m], m <= depth <= MAX_DEPTH.
    let unwound = unsafe { assume_init_prefix(&buf, m) };
    let common = fp_frames.len().min(m);
    let agree = m == 0
        || (fp_frames[..common] == unwound[..common] && m <= fp_frames.len() + RUNTIME_TOP_FRAMES);
    // Created with its mark, so no other thread sees the record unmarked first.
    let Some(rec) = depot_insert(hash, fp_frames, !agree) else {
        return StackId::NONE;
    };
    remember(t, hash, rec);
    if m > 0 && rec.ambiguous.load(Ordering::Relaxed) {
        intern(t, unwound, hash_frames(unwound))
    } else {
        StackId(rec.id)
    }
}

/// Whether the frame-pointer walk is used (tests and the fallback benchmark turn it off).
static FP_WALK: AtomicBool = AtomicBool::new(true);

/// Walks the frame-pointer chain from `capture_frames`'s frame, writing return addresses into `out`
/// after skipping `skip`; returns how many were written and their [`hash_frames`]. Returns
/// `(0, 0)` when the walk is not possible (unknown stack bounds, another stack, walk turned off).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
fn fp_walk(
    t: &ThreadState,
    regs: FrameRegs,
    skip: usize,
    out: &mut [MaybeUninit<usize>],
) -> (usize, u64) {
    let (lo, hi) = match t.bounds.get() {
        (0, 0) => {
            let b = thread_stack_bounds().unwrap_or((1, 0));
            t.bounds.set(b);
            b
        }
        b => b,
    };
    // Running on another stack (a signal's alternate stack, a coroutine): no walk.
    if regs.sp < lo || regs.sp >= hi || !FP_WALK.load(Ordering::Relaxed) {
        return (0, 0);
    }
    // SAFETY: [regs.sp, hi) is the live part of this thread's stack (sp was checked to lie in the
    // thread's bounds above), hence mapped and readable.
    unsafe { walk_chain(regs.fp, regs.sp, hi, skip, out) }
}

/// Not on x86_64 Linux: no frame-pointer walk.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[inline(always)]
fn fp_walk(
    _t: &ThreadState,
    _regs: FrameRegs,
    _skip: usize,
    _out: &mut [MaybeUninit<usize>],
) -> (usize, u64) {
    (0, 0)
}

/// Follows the chain of `[saved rbp, return address]` records from `fp`, checking each step (see
/// the module notes); writes return addresses after skipping `skip`, and returns how many were
/// written and their [`hash_frames`] (computed on the way: the multiplies overlap the loads).
///
/// # Safety
///
/// Every byte of `[lo, hi)` must be mapped and readable for the duration of the call (the live
/// part of the current thread's stack: from the stack pointer up to the stack's top).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
unsafe fn walk_chain(
    mut fp: usize,
    lo: usize,
    hi: usize,
    skip: usize,
    out: &mut [MaybeUninit<usize>],
) -> (usize, u64) {
    // The highest 8-aligned address a 16-byte record may start at.
    let top = hi.saturating_sub(16) & !7;
    if fp < lo || fp > top || fp & 7 != 0 {
        return (0, hash_finish(0, 0));
    }
    // `room` is (top - fp) / 8 for the current record, and the check of the next one is a single
    // comparison. `next` may follow `fp` if it is above it (the stack grows down; this also
    // bounds the walk), at most `top`, and 8-aligned. With e = top - next (wrapping), rotated
    // right by 3: an aligned next in (fp, top] gives e / 8 < room, and that value is the next
    // record's room; a misaligned next puts its low bits on top of e (e >= 2^61), and a next
    // above `top` makes e wrap to a huge value — both fail `< room`, as does next <= fp. A saved
    // rbp of 0, the runtime's mark of the outermost frame, fails too and ends the chain cleanly.
    let mut room = (top - fp) >> 3;
    let next_room = |next: usize| top.wrapping_sub(next).rotate_right(3);
    // Records of the frames to skip.
    for _ in 0..skip {
        // SAFETY: lo <= fp <= top <= hi - 16, fp 8-aligned: checked above for the first record,
        // and for each next one by `next_room(next) < room` (fp < next <= top, aligned); so both
        // words are inside [lo, hi), which the caller guarantees readable.
        let (next, ret) = unsafe { read_frame(fp) };
        let r = next_room(next);
        if ret == 0 || r >= room {
            return (0, hash_finish(0, 0));
        }
        (fp, room) = (next, r);
    }
    let mut n = 0;
    let mut sum = 0;
    for (slot, &key) in out.iter_mut().zip(POSITION_KEYS.iter()) {
        // SAFETY: as above.
        let (next, ret) = unsafe { read_frame(fp) };
        if ret == 0 {
            break;
        }
        slot.write(ret);
        sum = hash_step(sum, key, ret);
        n += 1;
        let r = next_room(next);
        if r >= room {
            break;
        }
        (fp, room) = (next, r);
    }
    (n, hash_finish(sum, n))
}

/// Loads the two words of a frame record: `(saved rbp, return address)`.
///
/// # Safety
///
/// `fp` must be 8-aligned and `[fp, fp + 16)` mapped and readable.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
unsafe fn read_frame(fp: usize) -> (usize, usize) {
    let next: usize;
    let ret: usize;
    // SAFETY: the caller guarantees the 16 bytes at fp are readable. The loads are asm so that
    // they are plain machine loads of stack words that are no Rust object, invisible to ASan's
    // instrumentation (no false report on a stack redzone) and to the optimiser.
    unsafe {
        std::arch::asm!(
            "mov {next}, qword ptr [{fp}]",
            "mov {ret}, qword ptr [{fp} + 8]",
            fp = in(reg) fp,
            next = out(reg) next,
            ret = out(reg) ret,
            options(readonly, nostack, preserves_flags)
        );
    }
    (next, ret)
}

/// Looks this thread's stack bounds up now, if not yet known, so that [`walk_interrupted`] can
/// walk it later from a signal handler (where `pthread_getattr_np` may not be called).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn cache_stack_bounds() {
    let _ = THREAD.try_with(|t| {
        if t.bounds.get() == (0, 0) {
            t.bounds.set(thread_stack_bounds().unwrap_or((1, 0)));
        }
    });
}

/// Not on x86_64 Linux: nothing to cache.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) fn cache_stack_bounds() {}

/// Walks the frame-pointer chain of code a signal interrupted, from its frame and stack pointers
/// (`fp`, `sp`, read from the signal context), into `out`; returns how many return addresses it
/// wrote. Async-signal-safe: reads a `const`-initialised thread-local and stack words, no lock,
/// no allocation. Writes nothing when this thread's stack bounds were never looked up
/// ([`cache_stack_bounds`]) or `sp` is not on this thread's stack.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn walk_interrupted(fp: usize, sp: usize, out: &mut [MaybeUninit<usize>]) -> usize {
    let Ok((lo, hi)) = THREAD.try_with(|t| t.bounds.get()) else {
        return 0;
    };
    if sp < lo || sp >= hi {
        return 0;
    }
    // SAFETY: [sp, hi) is the live part of this thread's stack (sp lies within the thread's
    // bounds, checked above), hence mapped and readable; the walk checks every record against it.
    unsafe { walk_chain(fp, sp, hi, 0, out).0 }
}

/// Not on x86_64 Linux: no frame-pointer walk.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) fn walk_interrupted(_fp: usize, _sp: usize, _out: &mut [MaybeUninit<usize>]) -> usize {
    0
}

/// The word at the top of the stack of code a signal interrupted (`[sp]`), or `None` when `sp`
/// is not an 8-aligned address on this thread's stack with a word above it. Async-signal-safe as
/// [`walk_interrupted`].
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn interrupted_top(sp: usize) -> Option<usize> {
    let (lo, hi) = THREAD.try_with(|t| t.bounds.get()).ok()?;
    if sp < lo || sp.checked_add(16)? > hi || sp & 7 != 0 {
        return None;
    }
    // SAFETY: [sp, sp + 16) lies in the live part of this thread's stack (checked above), mapped
    // and readable; sp is 8-aligned.
    Some(unsafe { read_frame(sp) }.0)
}

/// Not on x86_64 Linux: no stack is read.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) fn interrupted_top(_sp: usize) -> Option<usize> {
    None
}

/// This thread's stack as `(low, high)`, from `pthread_getattr_np`.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn thread_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: pthread_attr_t is a plain C struct for which all-zero is a valid "not yet
    // initialised" value; pthread_getattr_np initialises it.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_self() is the calling thread, alive; attr is a valid out-pointer.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return None;
    }
    let mut addr: *mut c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: attr was initialised by the successful pthread_getattr_np; the out-pointers are
    // valid locals.
    let rc = unsafe { libc::pthread_attr_getstack(&attr, &mut addr, &mut size) };
    // SAFETY: attr was initialised by pthread_getattr_np and is destroyed once.
    unsafe { libc::pthread_attr_destroy(&mut attr) };
    if rc != 0 || addr.is_null() || size == 0 {
        return None;
    }
    let lo = addr as usize;
    Some((lo, lo.checked_add(size)?))
}

/// Captures with `backtrace::trace` (DWARF unwinding), writing return addresses into `out` after
/// skipping `skip`; returns how many were written.
///
/// `sp` is `capture_frames`'s stack pointer. The unwinder reports each frame's stack pointer at
/// its call (`Frame::sp`): the unwinder's own frames, this module's and `capture_frames`'s are at
/// or below `sp`, and the first frame above it is `capture`'s caller, which is where the stack
/// starts.
#[inline(never)]
fn fallback_walk(sp: usize, mut skip: usize, out: &mut [MaybeUninit<usize>]) -> usize {
    let mut n = 0;
    let mut passed = false;
    backtrace::trace(|frame| {
        if !passed {
            let frame_sp = frame.sp() as usize;
            // An unwinder that cannot report stack pointers (0) gives no way to find the caller:
            // keep every frame (user_frames trims this module's and the backtrace crate's frames
            // at report time).
            if frame_sp != 0 && frame_sp <= sp {
                return true;
            }
            passed = true;
        }
        let ip = frame.ip() as usize;
        if ip == 0 {
            return false;
        }
        if skip > 0 {
            skip -= 1;
            return true;
        }
        out[n].write(ip);
        n += 1;
        n < out.len()
    });
    n
}

// ---------------------------------------------------------------------------------------------
// The depot
// ---------------------------------------------------------------------------------------------

/// One interned stack. Created once, leaked, never changed except for its two atomics (`next`
/// and `ambiguous`, each written at most once).
struct Record {
    /// The stack's id.
    id: u32,
    /// The stack's hash.
    hash: u64,
    /// The next record whose stack has the same hash (0: none). Written once, under the index
    /// shard's write lock, after the new record is in the store.
    next: AtomicU32,
    /// Set when these frames, produced by a frame-pointer walk, were found not to be the whole
    /// stack (see `first_sight`): a walk that produces them takes the fallback instead. Only
    /// ever goes from false to true.
    ambiguous: AtomicBool,
    /// Return addresses, innermost first.
    frames: Box<[usize]>,
}

/// log2 of the first bucket's size.
const BASE_BITS: u32 = 10;
/// Slots in the first bucket; bucket `b` has `BASE << b`.
const BASE: usize = 1 << BASE_BITS;
/// Number of buckets: ids go up to `BASE * (2^BUCKETS - 1)`, about 2^28.
const BUCKETS: usize = 18;
/// Largest id the store can hold.
const MAX_ID: usize = BASE * ((1 << BUCKETS) - 1);

/// The store, id → record: bucket `b` is an array of `BASE << b` slots, allocated on first use
/// and never freed.
static STORE: [AtomicPtr<AtomicPtr<Record>>; BUCKETS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; BUCKETS];
/// The last id handed out.
static LAST_ID: AtomicU32 = AtomicU32::new(0);
/// The index, hash → first id with that hash.
static INDEX: OnceLock<DashMap<u64, StackId, BuildHasherDefault<IdentityHasher>>> = OnceLock::new();

/// Bucket and offset of an id's slot (`id` in `1..=MAX_ID`).
#[inline(always)]
fn slot_of(id: u32) -> (usize, usize) {
    let v = (id as usize - 1) + BASE;
    let b = (usize::BITS - 1 - v.leading_zeros() - BASE_BITS) as usize;
    (b, v - (BASE << b))
}

/// The record of `id`, if it names one.
#[inline(always)]
fn record(id: u32) -> Option<&'static Record> {
    if id == 0 || id as usize > MAX_ID {
        return None;
    }
    let (b, off) = slot_of(id);
    let bucket = STORE[b].load(Ordering::Acquire);
    if bucket.is_null() {
        return None;
    }
    // SAFETY: a non-null bucket pointer was published (release) after the allocation of its
    // `BASE << b` slots, which is never freed; `off < BASE << b` by construction of slot_of.
    let slot = unsafe { &*bucket.add(off) };
    let rec = slot.load(Ordering::Acquire);
    // SAFETY: a non-null slot was published (release) after its record was fully built; records
    // are leaked, so the reference is valid for 'static, and never mutated except through its
    // atomics.
    (!rec.is_null()).then(|| unsafe { &*rec })
}

/// The slot for `id`, allocating its bucket if needed. `None` if the allocation failed.
fn slot_for_insert(id: u32) -> Option<&'static AtomicPtr<Record>> {
    let (b, off) = slot_of(id);
    let mut bucket = STORE[b].load(Ordering::Acquire);
    if bucket.is_null() {
        let len = BASE << b;
        let mut v: Vec<AtomicPtr<Record>> = Vec::new();
        v.try_reserve_exact(len).ok()?;
        v.extend((0..len).map(|_| AtomicPtr::new(std::ptr::null_mut())));
        let fresh = Box::into_raw(v.into_boxed_slice()) as *mut AtomicPtr<Record>;
        match STORE[b].compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => bucket = fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from Box::into_raw of a boxed slice of `len` slots just
                // above and was not published (the exchange failed), so we own it.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(fresh, len)) });
                bucket = winner;
            }
        }
    }
    // SAFETY: `bucket` is a published (or our own, now published) allocation of `BASE << b`
    // slots that is never freed, and `off < BASE << b`.
    Some(unsafe { &*bucket.add(off) })
}

/// Creates the record of a new stack and puts it in the store. Called with the index shard of
/// `hash` write-locked. `None` when the depot is full.
fn new_record(hash: u64, frames: &[usize], ambiguous: bool) -> Option<&'static Record> {
    let id = LAST_ID.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    if id == 0 || id as usize > MAX_ID {
        // Keep the counter from wrapping around to ids in use.
        LAST_ID.store(MAX_ID as u32, Ordering::Relaxed);
        return None;
    }
    let slot = slot_for_insert(id)?;
    let rec: &'static Record = Box::leak(Box::new(Record {
        id,
        hash,
        next: AtomicU32::new(0),
        ambiguous: AtomicBool::new(ambiguous),
        frames: frames.into(),
    }));
    slot.store(rec as *const Record as *mut Record, Ordering::Release);
    Some(rec)
}

/// Looks for `frames` among the records chained from `first`. On a miss, returns the chain's
/// last record (to append to), or `None` if `first` names no record.
fn find_in_chain(
    first: StackId,
    hash: u64,
    frames: &[usize],
) -> Result<&'static Record, Option<&'static Record>> {
    let mut id = first.0;
    let mut last = None;
    while let Some(rec) = record(id) {
        if rec.hash == hash && same_frames(&rec.frames, frames) {
            return Ok(rec);
        }
        last = Some(rec);
        id = rec.next.load(Ordering::Acquire);
    }
    Err(last)
}

/// The index, created on first use.
fn index() -> &'static DashMap<u64, StackId, BuildHasherDefault<IdentityHasher>> {
    INDEX.get_or_init(DashMap::default)
}

/// The record of `frames` (hash `hash`) if the depot has it. Takes a read lock on one shard.
fn depot_lookup(hash: u64, frames: &[usize]) -> Option<&'static Record> {
    let first = index().get(&hash).map(|r| *r)?;
    find_in_chain(first, hash, frames).ok()
}

/// The record of `frames` (hash `hash`), created if the depot does not have it yet (checked again
/// under the shard's write lock, so that concurrent first captures of a stack agree on one
/// record), and marked `ambiguous` if asked (a mark is never removed). `None` when the depot is
/// full.
fn depot_insert(hash: u64, frames: &[usize], ambiguous: bool) -> Option<&'static Record> {
    match index().entry(hash) {
        Entry::Occupied(mut e) => match find_in_chain(*e.get(), hash, frames) {
            Ok(rec) => {
                if ambiguous {
                    rec.ambiguous.store(true, Ordering::Relaxed);
                }
                Some(rec)
            }
            Err(last) => {
                let rec = new_record(hash, frames, ambiguous)?;
                match last {
                    Some(last) => last.next.store(rec.id, Ordering::Release),
                    // A head always names a record; were it not so, start afresh.
                    None => *e.get_mut() = StackId(rec.id),
                }
                Some(rec)
            }
        },
        Entry::Vacant(e) => {
            let rec = new_record(hash, frames, ambiguous)?;
            e.insert(StackId(rec.id));
            Some(rec)
        }
    }
}

/// The record of `frames` (hash `hash`) if known: from this thread's cache when the stack was
/// seen recently (no lock, no shared write), else from the depot.
#[inline(always)]
fn lookup(t: &ThreadState, frames: &[usize], hash: u64) -> Option<&'static Record> {
    let slot = &t.cache[(hash >> (64 - CACHE_BITS)) as usize];
    if let (h, Some(rec)) = slot.get() {
        if h == hash && same_frames(&rec.frames, frames) {
            return Some(rec);
        }
    }
    let rec = depot_lookup(hash, frames)?;
    slot.set((hash, Some(rec)));
    Some(rec)
}

/// Puts `rec` (hash `hash`) in this thread's cache.
fn remember(t: &ThreadState, hash: u64, rec: &'static Record) {
    t.cache[(hash >> (64 - CACHE_BITS)) as usize].set((hash, Some(rec)));
}

/// The id of `frames` (whose [`hash_frames`] is `hash`), interning the stack if it is new. For
/// frames from the fallback unwinder, which are the whole stack: a record's `ambiguous` mark,
/// which is about frame-pointer walks, does not matter here.
fn intern(t: &ThreadState, frames: &[usize], hash: u64) -> StackId {
    if let Some(rec) = lookup(t, frames, hash) {
        return StackId(rec.id);
    }
    match depot_insert(hash, frames, false) {
        Some(rec) => {
            remember(t, hash, rec);
            StackId(rec.id)
        }
        None => StackId::NONE,
    }
}

/// `a == b`. (The slice comparison is a call to `bcmp`, which compares 32 bytes a step; an
/// or-of-differences loop measured three times the instructions.)
#[inline(always)]
fn same_frames(a: &[usize], b: &[usize]) -> bool {
    a == b
}

/// FxHash's multiplier (rustc-hash 1.x), odd and with well-spread bits.
const FX_K: u64 = 0x517c_c1b7_2722_0a95;

/// One odd multiplier per frame position (splitmix64 outputs, made odd), for [`hash_frames`].
static POSITION_KEYS: [u64; MAX_DEPTH] = position_keys();

/// splitmix64 of 1..=MAX_DEPTH, made odd, computed at compile time.
const fn position_keys() -> [u64; MAX_DEPTH] {
    let mut keys = [0u64; MAX_DEPTH];
    let mut state = 0u64;
    let mut i = 0;
    while i < MAX_DEPTH {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        keys[i] = (z ^ (z >> 31)) | 1;
        i += 1;
    }
    keys
}

/// 64×64→128 multiply, folded: the mixing step of wyhash-style hashes. Every output bit depends
/// on every input bit.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hashes a stack: a multilinear hash — the sum of each frame times its position's key, mod
/// 2^64 — finished by a folded 128-bit multiply with the length.
///
/// Why this shape: the capture's hot loop computes it while it walks, one multiply-add per frame
/// whose terms do not depend on each other, so it adds almost nothing to the walk's own latency
/// (an FxHash-style multiply-rotate chain costs its full latency per frame; it measured as a third
/// of a 16-frame capture). Multilinear hashing with odd keys is a classic almost-universal family for
/// the high bits; the final fold spreads them over all 64 bits: the low bits pick hashbrown's bucket,
/// the high ones dashmap's shard, hashbrown's tag and our cache slot. Collisions cost a chain
/// step, never a wrong id: ids are confirmed by comparing frames.
#[inline]
fn hash_frames(frames: &[usize]) -> u64 {
    let sum = frames
        .iter()
        .zip(POSITION_KEYS.iter())
        .fold(0, |sum, (&f, &key)| hash_step(sum, key, f));
    hash_finish(sum, frames.len())
}

/// Adds `frame`, at the position whose key is `key`, to a running [`hash_frames`] sum.
#[inline(always)]
fn hash_step(sum: u64, key: u64, frame: usize) -> u64 {
    sum.wrapping_add((frame as u64).wrapping_mul(key))
}

/// The hash of a stack of `len` frames whose [`hash_step`] sum is `sum`.
#[inline(always)]
fn hash_finish(sum: u64, len: usize) -> u64 {
    fold_mul(sum ^ len as u64, FX_K)
}

/// The index's hasher: its keys are already hashes, so `write_u64` passes the value through.
/// (Other writes are mixed FxHash-style, so the hasher is correct for any key, just not used so.)
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(FX_K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The return addresses of a stack, innermost first (empty for `NONE` or an unknown id). Lock-free.
pub(crate) fn frames(id: StackId) -> &'static [usize] {
    record(id.0).map_or(&[], |r| &r.frames)
}

/// Number of distinct stacks interned so far.
#[allow(dead_code)] // API for the debug module's users; not every build calls it.
pub(crate) fn stack_count() -> usize {
    (LAST_ID.load(Ordering::Relaxed) as usize).min(MAX_ID)
}

// ---------------------------------------------------------------------------------------------
// Resolution and formatting
// ---------------------------------------------------------------------------------------------

/// One frame of a resolved stack. Inlined calls make several frames with the same `ip`, innermost
/// first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedFrame {
    /// The return address (the instruction after the call).
    pub ip: usize,
    /// Demangled function path, without the hash suffix (`mytest::overrun`).
    pub function: Option<String>,
    /// Source file, as recorded in the debug info (usually absolute).
    pub file: Option<String>,
    /// Line in `file` of the call.
    pub line: Option<u32>,
}

/// Symbolises a stack with the binary's debug info, inlined frames expanded. An address that
/// cannot be symbolised gives one frame with only `ip`. Each address is symbolised once per
/// process (see [`SYMBOLS`]); the first call loads the debug info. For reports only.
pub(crate) fn resolve(id: StackId) -> Vec<ResolvedFrame> {
    resolve_ips(frames(id))
}

/// Symbolises return addresses as [`resolve`] does (each looked up at `ip - 1`, the call).
pub(crate) fn resolve_ips(ips: &[usize]) -> Vec<ResolvedFrame> {
    let mut out = Vec::new();
    for &ip in ips {
        out.extend(symbols(ip).iter().cloned());
    }
    out
}

/// The frames of every return address symbolised so far. Addresses are the process's own and
/// its code does not move, so an entry never goes stale; a report's stacks share most of their
/// frames (the test harness, `main`, the caller's callers), so a later report mostly hits.
/// Taken with `try_lock` only: a report made while this thread holds it (an allocation inside
/// the map's insert, with memctx as the global allocator) goes without the cache, not into a
/// deadlock.
static SYMBOLS: Mutex<BTreeMap<usize, Arc<[ResolvedFrame]>>> = Mutex::new(BTreeMap::new());

/// The frames of return address `ip`, from [`SYMBOLS`] or symbolised now.
fn symbols(ip: usize) -> Arc<[ResolvedFrame]> {
    if let Some(f) = SYMBOLS.try_lock().ok().and_then(|m| m.get(&ip).cloned()) {
        return f;
    }
    let mut out = Vec::new();
    // The synchronized resolve; it looks up ip - 1 itself, so the call's line is found.
    backtrace::resolve(ip as *mut c_void, |sym| {
        out.push(ResolvedFrame {
            ip,
            function: sym.name().map(|n| format!("{n:#}")),
            file: sym.filename().map(|p| p.display().to_string()),
            line: sym.lineno(),
        });
    });
    if out.is_empty() {
        out.push(ResolvedFrame {
            ip,
            function: None,
            file: None,
            line: None,
        });
    }
    let f: Arc<[ResolvedFrame]> = out.into();
    if let Ok(mut m) = SYMBOLS.try_lock() {
        m.insert(ip, Arc::clone(&f));
    }
    f
}

/// Paths (of the frame's subject: the function, or the `Self` type of a trait method) whose
/// leading frames are plumbing, not the caller: the allocator itself, the backtrace crate, the
/// allocator API and the standard collections that call an allocator on the user's behalf.
///
/// This is the one place the trimming rule lives. `memctx::` is taken whole, not module by
/// module, so a module added later is covered too; its test modules are exempt (see
/// [`is_plumbing`]). A user's frame is never in these crates, so over-matching costs nothing but a
/// collection's API frame (`alloc::vec::Vec::push`), which is dropped so the first frame shown is
/// the code that called it.
const PLUMBING: &[&str] = &[
    "memctx::",
    "backtrace::",
    "allocator_api2::",
    "alloc::",
    "hashbrown::",
    "std::alloc::",
    "core::alloc::",
    "core::ptr::drop_in_place",
    "__rust_",
    "__rustc::",
    "__rdl_",
    "__rg_",
];

/// Whether a demangled function name belongs to the allocator's plumbing (see [`PLUMBING`]).
/// Functions inside a `tests`/`test`/`benches` module of memctx are the user's (unit tests).
fn is_plumbing(function: &str) -> bool {
    let path = subject_path(function);
    if path.starts_with("memctx::") {
        return !path
            .split("::")
            .any(|seg| matches!(seg, "tests" | "test" | "benches"));
    }
    PLUMBING.iter().any(|p| path.starts_with(p))
}

/// The path a frame is classified by: the function's path, or for a trait method
/// (`<Self as Trait>::method`) the `Self` type's path — or the trait's when `Self` is not a path
/// (`<[T] as alloc::slice::hack::ConvertVec>::to_vec`). Cut before generics.
fn subject_path(name: &str) -> &str {
    let mut s = name;
    if let Some(rest) = s.strip_prefix('<') {
        s = rest;
        loop {
            let t = s
                .trim_start_matches(['&', '*', ' '])
                .trim_start_matches("mut ")
                .trim_start_matches("const ")
                .trim_start_matches("dyn ");
            if t.len() == s.len() {
                break;
            }
            s = t;
        }
        if !s.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            if let Some(i) = s.find(" as ") {
                s = &s[i + 4..];
            }
        }
    }
    let end = s.find(['<', '>', ' ']).unwrap_or(s.len());
    let subject = &s[..end];
    // A `Self` that is a bare generic parameter (`<&A as allocator_api2::…::Allocator>`) says
    // nothing: classify by the trait instead.
    if !subject.contains("::") {
        if let Some(i) = s.find(" as ") {
            let t = &s[i + 4..];
            return &t[..t.find(['<', '>', ' ']).unwrap_or(t.len())];
        }
    }
    subject
}

/// Drops the leading frames that belong to the allocator (see [`PLUMBING`]), so the first frame
/// is the caller's. Stops at the first frame that is not plumbing, or whose function is unknown.
/// If every frame is plumbing (a stack too short to reach the caller) nothing is dropped.
pub(crate) fn user_frames(frames: Vec<ResolvedFrame>) -> Vec<ResolvedFrame> {
    let first_user = frames
        .iter()
        .position(|f| !f.function.as_deref().is_some_and(is_plumbing));
    match first_user {
        Some(i) => frames.into_iter().skip(i).collect(),
        None => frames,
    }
}

/// Paths whose frames a report leaves out besides [`PLUMBING`] (see [`shown_frames`]): the
/// standard library, the test harness, the panic and unwinding machinery and the C runtime's
/// start-up and thread-start code. Matched against the frame's subject path and, for a trait
/// method, its trait's too (`<app::Row as core::ops::drop::Drop>::drop` is the program's).
const RUNTIME: &[&str] = &[
    "std::",
    "core::",
    "test::",
    "panic_unwind::",
    "dashmap::",
    "rust_begin_unwind",
    "rust_panic",
    "__libc_start",
    "_start",
    "start_thread",
    "clone",
];

/// Whether a report leaves out a frame of `function` (see [`shown_frames`]).
fn is_hidden(function: &str) -> bool {
    // `main` is the C entry point rustc emits; the program's own is `crate::main`.
    let hidden = |path: &str| {
        is_plumbing(path) || RUNTIME.iter().any(|p| path.starts_with(p)) || path == "main"
    };
    hidden(subject_path(function)) && trait_path(function).map_or(true, hidden)
}

/// The trait of a trait method's name (`<Self as Trait>::method`), cut before its generics.
fn trait_path(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('<')?;
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => return None,
            '>' => depth -= 1,
            ' ' if depth == 0 && rest[i..].starts_with(" as ") => {
                let t = &rest[i + 4..];
                return Some(&t[..t.find(['<', '>', ' ']).unwrap_or(t.len())]);
            }
            _ => {}
        }
    }
    None
}

/// The frames of stack `id` a report shows, symbolised: every frame, or by default the program's
/// only (see [`shown_frames`]). By default the C library's and the loader's frames are not even
/// symbolised: they would be left out anyway, and symbolising them means loading and
/// decompressing the C library's separate debug info where it is installed (as Valgrind wants
/// it) — more than half of the process's first report.
pub(crate) fn shown(id: StackId) -> Vec<ResolvedFrame> {
    if super::settings::report_frames() == super::settings::ReportFrames::All {
        return resolve(id);
    }
    let mut out = Vec::new();
    for &ip in frames(id) {
        if in_c_runtime(ip) {
            out.push(ResolvedFrame {
                ip,
                function: None,
                file: None,
                line: None,
            });
        } else {
            out.extend(symbols(ip).iter().cloned());
        }
    }
    shown_frames(out)
}

/// Whether `ip` lies in the C library or the dynamic loader (by the file of the object that
/// holds it, as `dladdr` names it).
fn in_c_runtime(ip: usize) -> bool {
    // SAFETY: an all-zero `Dl_info` is a valid value (null pointers).
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and writes `info`; `ip` need not be mapped.
    if unsafe { libc::dladdr(ip as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dladdr set `dli_fname` to the object's name, a string the loader keeps.
    let name = unsafe { core::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
    let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
    base.starts_with(b"libc.so") || base.starts_with(b"ld-linux")
}

/// The frames a report shows ([`super::settings::report_frames`]): every frame, or by default the
/// program's own only — frames whose function is unknown or is the standard library's, the test
/// harness's, the panic machinery's, the C runtime's or memctx's own are left out wherever they
/// are in the stack. A stack with no frame of the program's (a report made from a thread-exit
/// destructor) is shown whole.
pub(crate) fn shown_frames(frames: Vec<ResolvedFrame>) -> Vec<ResolvedFrame> {
    if super::settings::report_frames() == super::settings::ReportFrames::All {
        return frames;
    }
    let user: Vec<ResolvedFrame> = frames
        .iter()
        .filter(|f| f.function.as_deref().is_some_and(|n| !is_hidden(n)))
        .cloned()
        .collect();
    if user.is_empty() {
        frames
    } else {
        user
    }
}

/// Formats frames one per line, ASan-style:
/// `    #0 0x55d0c0a1b2c3 in mytest::overrun at tests/debug.rs:42`. Unknown functions print as
/// `??`; the location is left out when unknown. Files under the current directory are shown
/// relative to it.
pub(crate) fn format_frames(frames: &[ResolvedFrame]) -> String {
    let cwd = std::env::current_dir()
        .ok()
        .map(|d| format!("{}/", d.display()));
    let mut s = String::new();
    for (i, f) in frames.iter().enumerate() {
        let _ = write!(
            s,
            "    #{i} {:#x} in {}",
            f.ip,
            f.function.as_deref().unwrap_or("??")
        );
        if let Some(file) = &f.file {
            let file = cwd
                .as_deref()
                .and_then(|c| file.strip_prefix(c))
                .unwrap_or(file);
            let _ = write!(s, " at {file}");
            if let Some(line) = f.line {
                let _ = write!(s, ":{line}");
            }
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------------------------

/// Median ns per [`capture`] at a stack `frames` deep (clamped to `1..=MAX_DEPTH`), `iters`
/// captures per round, over nine rounds after one of warm-up. The stack is a known one (the common
/// case: the depot lookup hits). For the bench binary's `backtrace-capture <frames> <ns>` line;
/// 100 000 iterations take about 30 ms a round.
///
/// Sets the process-wide depth to `frames` and turns capture on for the measurement, and restores
/// both after; run it alone.
#[allow(dead_code)] // For the bench binary, through a hidden public wrapper.
pub(crate) fn bench_capture(frames: usize, iters: usize) -> f64 {
    let frames = frames.clamp(1, MAX_DEPTH);
    let (old_on, old_depth) = (enabled(), depth());
    set_enabled(true);
    set_depth(frames);
    let ns = bench_chain(frames, iters.max(1));
    set_depth(old_depth);
    set_enabled(old_on);
    ns
}

/// Like [`bench_capture`], with the frame-pointer walk switched off, so every capture goes
/// through `backtrace::trace`: the cost of a build without frame pointers. Process-wide while it
/// runs (other threads' captures take the fallback too); run it alone. A capture costs
/// microseconds here: 1 000 iterations are plenty.
#[allow(dead_code)] // For the bench binary, through a hidden public wrapper.
pub(crate) fn bench_capture_fallback(frames: usize, iters: usize) -> f64 {
    let old = FP_WALK.swap(false, Ordering::Relaxed);
    let ns = bench_capture(frames, iters);
    FP_WALK.store(old, Ordering::Relaxed);
    ns
}

/// Recurses `level - 1` times so that captures at the bottom see at least `level` frames of this
/// function (plus the callers'), then times captures there.
#[inline(never)]
fn bench_chain(level: usize, iters: usize) -> f64 {
    if level > 1 {
        let r = bench_chain(level - 1, iters);
        // Not a tail call: the frames must stay on the stack.
        std::hint::black_box(level);
        return r;
    }
    const ROUNDS: usize = 9;
    let mut per = [0f64; ROUNDS + 1];
    for p in per.iter_mut() {
        let start = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(capture(0));
        }
        *p = start.elapsed().as_nanos() as f64 / iters as f64;
    }
    // The first round only warms up: it interns the stack (once per call site, should the
    // compiler unroll the loop) and looks up the thread's stack bounds.
    let timed = &mut per[1..];
    timed.sort_by(f64::total_cmp);
    timed[ROUNDS / 2]
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #[test]
    fn generic_self_is_classified_by_its_trait() {
        let f = "<&A as allocator_api2::stable::alloc::Allocator>::allocate";
        assert_eq!(subject_path(f), "allocator_api2::stable::alloc::Allocator");
        assert!(is_plumbing(f));
        assert!(!is_plumbing("<T as myapp::Parse>::parse"));
    }

    use super::*;

    // The sites' bodies differ (the black_box of a constant): identical functions may be merged
    // into one by the optimiser, and would be one site.

    /// A known allocation site.
    #[inline(never)]
    fn site_a() -> StackId {
        std::hint::black_box(0xa);
        std::hint::black_box(capture(0))
    }

    /// Another one.
    #[inline(never)]
    fn site_b() -> StackId {
        std::hint::black_box(0xb);
        std::hint::black_box(capture(0))
    }

    /// A site that captures through a plumbing-like wrapper and skips it.
    #[inline(never)]
    fn wrapper_skipping_itself() -> StackId {
        std::hint::black_box(capture(1))
    }

    /// Calls the wrapper.
    #[inline(never)]
    fn site_c() -> StackId {
        std::hint::black_box(wrapper_skipping_itself())
    }

    /// Calls `pick(i)()` for `i` in `0..n`, always from the same call site, and returns the ids.
    /// A stack is the whole chain of return addresses, so "the same site" must be the same call
    /// instruction every time: a plain loop may be unrolled into several. Here the trip count
    /// and the function are opaque to the compiler.
    #[inline(never)]
    fn repeat(n: usize, pick: &dyn Fn(usize) -> fn() -> StackId) -> Vec<StackId> {
        let mut ids = Vec::with_capacity(n);
        let mut i = 0;
        while i < std::hint::black_box(n) {
            let f = std::hint::black_box(pick(i));
            ids.push(f());
            i += 1;
        }
        ids
    }

    /// Name of the first user frame of a stack.
    fn first_user_function(id: StackId) -> String {
        let frames = user_frames(resolve(id));
        frames
            .first()
            .and_then(|f| f.function.clone())
            .unwrap_or_else(|| panic!("no user frame in\n{}", format_frames(&resolve(id))))
    }

    fn assert_first_is(id: StackId, name: &str) {
        let f = first_user_function(id);
        assert!(
            f.ends_with(&format!("stack::tests::{name}")),
            "first user frame is {f}, expected ...::{name}; stack:\n{}",
            format_frames(&resolve(id))
        );
    }

    // These tests run with the default settings (capture on, depth 16, unless the environment
    // says otherwise); the ones that change settings run in a child process (`child_*`).

    #[test]
    fn first_user_frame_is_the_capturing_function() {
        if !enabled() {
            return;
        }
        let id = site_a();
        assert!(!id.is_none());
        assert_first_is(id, "site_a");
        let text = format_frames(&user_frames(resolve(id)));
        assert!(text.starts_with("    #0 0x"), "{text}");
        assert!(text.contains("stack.rs:"), "{text}");
    }

    #[test]
    fn skip_drops_the_callers_frames() {
        if !enabled() {
            return;
        }
        assert_first_is(site_c(), "site_c");
    }

    #[test]
    fn same_site_same_id_different_sites_differ() {
        if !enabled() {
            return;
        }
        // The same call site gives the same id; another function, or another call of site_a,
        // gives another.
        let ids = repeat(100, &|_| site_a);
        let a = ids[0];
        assert!(ids.iter().all(|&i| i == a), "{ids:?}");
        let b = site_b();
        let a_elsewhere = site_a();
        assert_ne!(a, b);
        assert_ne!(a, a_elsewhere);
        // The same return address into site_a; then another call of site_a.
        assert_eq!(frames(a)[0], frames(a_elsewhere)[0]);
        assert_ne!(frames(a)[1], frames(a_elsewhere)[1]);
        assert!(!frames(a).is_empty() && frames(a).len() <= depth());
    }

    // A function without a frame pointer, as C code built without them would be: it calls `f`
    // leaving rbp as its caller's, so a frame-pointer walk from `f` loses the return address into
    // that caller. Its unwind table entry (the CFI lines) lets the fallback unwinder see it all.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    std::arch::global_asm!(
        ".pushsection .text.memctx_stack_test_no_fp,\"ax\",@progbits",
        ".globl memctx_stack_test_no_fp",
        ".hidden memctx_stack_test_no_fp",
        ".type memctx_stack_test_no_fp,@function",
        ".p2align 4",
        "memctx_stack_test_no_fp:",
        ".cfi_startproc",
        "sub rsp, 8",
        ".cfi_adjust_cfa_offset 8",
        "call rdi",
        "add rsp, 8",
        ".cfi_adjust_cfa_offset -8",
        "ret",
        ".cfi_endproc",
        ".size memctx_stack_test_no_fp, .-memctx_stack_test_no_fp",
        ".popsection",
    );

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    extern "C" {
        /// Calls `f` from a frame without a frame pointer; returns what `f` returns.
        fn memctx_stack_test_no_fp(f: extern "C" fn() -> u32) -> u32;
    }

    /// An allocation site reached through `memctx_stack_test_no_fp`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[inline(never)]
    extern "C" fn site_d() -> u32 {
        std::hint::black_box(0xd);
        std::hint::black_box(capture(0)).as_raw()
    }

    /// Two captures that differ only by the call site of the function without frame pointers:
    /// the frame-pointer walk gives both the same frames.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[inline(never)]
    fn two_sites_without_fp() -> [StackId; 2] {
        // SAFETY: the assembly function keeps the ABI (stack aligned at the call, no
        // callee-saved register touched) and calls `site_d`, a valid extern "C" fn.
        let a = unsafe { memctx_stack_test_no_fp(site_d) };
        std::hint::black_box(());
        // SAFETY: as above.
        let b = unsafe { memctx_stack_test_no_fp(site_d) };
        [StackId::from_raw(a), StackId::from_raw(b)]
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn chain_through_code_without_frame_pointers() {
        if !enabled() {
            return;
        }
        let [a, b] = two_sites_without_fp();
        assert!(!a.is_none() && !b.is_none());
        // The unwinder's stacks, not the walk's: the two sites differ, and the frame the walk
        // lost (the return into two_sites_without_fp) is there.
        assert_ne!(a, b);
        assert_first_is(a, "site_d");
        let names: Vec<String> = resolve(a).into_iter().filter_map(|f| f.function).collect();
        assert!(
            names.iter().any(|n| n.ends_with("two_sites_without_fp")),
            "{names:?}"
        );
        // And the same site keeps its id, through the walk, the depot's mark and the fallback.
        let ids = repeat(4, &|_| || two_sites_without_fp()[0]);
        assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    }

    #[test]
    fn none_and_unknown_ids_resolve_to_nothing() {
        assert!(frames(StackId::NONE).is_empty());
        assert!(resolve(StackId::NONE).is_empty());
        assert!(frames(StackId::from_raw(u32::MAX)).is_empty());
        assert_eq!(StackId::from_raw(7).as_raw(), 7);
        assert!(StackId::default().is_none());
        assert!(stack_count() < MAX_ID);
    }

    #[test]
    fn concurrent_captures_agree() {
        if !enabled() {
            return;
        }
        const THREADS: usize = 8;
        const CAPTURES: usize = 10_000;
        let results: Vec<(StackId, StackId)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        let ids = repeat(CAPTURES, &|i| if i % 2 == 0 { site_a } else { site_b });
                        let (a, b) = (ids[0], ids[1]);
                        assert!(ids.iter().step_by(2).all(|&id| id == a));
                        assert!(ids.iter().skip(1).step_by(2).all(|&id| id == b));
                        (a, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (a, b) = results[0];
        assert!(!a.is_none() && a != b);
        // Same code path from the same spawn site: every thread sees the same stacks.
        assert!(results.iter().all(|&r| r == (a, b)), "{results:?}");
        assert_first_is(a, "site_a");
    }

    /// A frame of function `name` (unknown if `None`), without a location.
    fn unresolved_frame(name: Option<&str>) -> ResolvedFrame {
        ResolvedFrame {
            ip: 1,
            function: name.map(String::from),
            file: None,
            line: None,
        }
    }

    #[test]
    fn trimming_rule() {
        for p in [
            "memctx::aset::AllocSet::alloc",
            "memctx::some_future_module::f",
            "<memctx::aset::AllocSet as allocator_api2::stable::alloc::Allocator>::allocate",
            "<&memctx::context::Ctx as allocator_api2::stable::alloc::Allocator>::allocate",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop",
            "<[T] as alloc::slice::hack::ConvertVec>::to_vec",
            "core::ptr::drop_in_place<alloc::boxed::Box<u8>>",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "backtrace::backtrace::trace",
            "__rustc::__rust_alloc",
        ] {
            assert!(is_plumbing(p), "{p} should be plumbing");
        }
        for p in [
            "memctx::debug::stack::tests::site_a",
            "memctx::aset::tests::churn::{{closure}}",
            "mytest::overrun",
            "<mycrate::Foo as core::clone::Clone>::clone",
            "core::ops::function::FnOnce::call_once",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "main",
            "alloc_like_crate::f",
        ] {
            assert!(!is_plumbing(p), "{p} should be the user's");
        }
        let f = unresolved_frame;
        let trimmed = user_frames(vec![
            f(Some("backtrace::trace")),
            f(Some("memctx::aset::AllocSet::alloc")),
            f(Some("alloc::vec::Vec<T>::push")),
            f(Some("app::work")),
            f(Some("memctx::context::Ctx::alloc")),
        ]);
        assert_eq!(trimmed.len(), 2);
        assert_eq!(trimmed[0].function.as_deref(), Some("app::work"));
        // An unknown frame stops the trimming; all-plumbing keeps everything.
        assert_eq!(user_frames(vec![f(None), f(Some("app::x"))]).len(), 2);
        assert_eq!(user_frames(vec![f(Some("memctx::a::b"))]).len(), 1);
    }

    #[test]
    fn report_frames_rule() {
        for p in [
            "memctx::aset::AllocSet::alloc",
            "std::panicking::try::do_call",
            "std::rt::lang_start_internal",
            "core::ops::function::FnOnce::call_once",
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once",
            "test::run_test_in_process",
            "__rust_try",
            "rust_begin_unwind",
            "__libc_start_call_main",
            "_start",
            "start_thread",
            "clone3",
            "main",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
        ] {
            assert!(is_hidden(p), "{p} should be left out");
        }
        for p in [
            "app::work",
            "app::main",
            "memctx::debug::stack::tests::site_a",
            "<app::Row as core::ops::drop::Drop>::drop",
            "<std::vec::Vec<T> as app::Fill>::fill",
            "<memctx::context::MemoryContext as app::Arena>::make",
            "debug_reports::overrun::{{closure}}",
        ] {
            assert!(!is_hidden(p), "{p} should be shown");
        }
        assert_eq!(
            trait_path("<std::vec::Vec<T> as app::Fill<u8>>::fill"),
            Some("app::Fill")
        );
        assert_eq!(trait_path("app::f<T>"), None);
        let f = unresolved_frame;
        let shown = shown_frames(vec![
            f(Some("memctx::aset::AllocSet::alloc")),
            f(Some("app::inner")),
            f(Some("core::ops::function::FnOnce::call_once")),
            f(None),
            f(Some("app::outer")),
            f(Some("std::rt::lang_start")),
        ]);
        let names: Vec<_> = shown.iter().map(|f| f.function.as_deref()).collect();
        assert_eq!(names, [Some("app::inner"), Some("app::outer")]);
        // Nothing of the program's: shown whole.
        assert_eq!(
            shown_frames(vec![f(Some("std::thread::local::x"))]).len(),
            1
        );
    }

    #[test]
    fn c_runtime_frames_are_told_by_their_object() {
        // A spawned thread's stack ends in the C library (`start_thread`, `clone3`).
        // Through a closure of this module, so the stack has a frame of the program's.
        #[allow(clippy::redundant_closure)]
        let id = std::thread::spawn(|| capture_always()).join().unwrap();
        let ips = frames(id);
        assert!(ips.len() > 3, "{ips:x?}");
        let in_libc = ips.iter().filter(|&&ip| in_c_runtime(ip)).count();
        assert!(in_libc >= 1, "no C library frame in {ips:x?}");
        // The unwinder's and this test's frames are not the C library's.
        assert!(!in_c_runtime(ips[0]));
        assert!(!in_c_runtime(
            c_runtime_frames_are_told_by_their_object as fn() as usize + 1
        ));
        // By default they are not symbolised, and left out.
        assert!(shown(id).iter().all(|f| f.function.is_some()));
    }

    #[test]
    fn format_is_asan_like() {
        let cwd = std::env::current_dir().unwrap();
        let frames = [
            ResolvedFrame {
                ip: 0x55d0_c0a1_b2c3,
                function: Some("mytest::overrun".into()),
                file: Some(format!("{}/tests/debug.rs", cwd.display())),
                line: Some(42),
            },
            ResolvedFrame {
                ip: 0x10,
                function: None,
                file: None,
                line: None,
            },
        ];
        assert_eq!(
            format_frames(&frames),
            "    #0 0x55d0c0a1b2c3 in mytest::overrun at tests/debug.rs:42\n    #1 0x10 in ??\n"
        );
    }

    #[test]
    fn hash_spreads() {
        let a = hash_frames(&[1, 2, 3]);
        assert_ne!(a, hash_frames(&[1, 2, 4]));
        assert_ne!(a, hash_frames(&[1, 2]));
        assert_ne!(a >> 57, hash_frames(&[1, 2, 4]) >> 57);
        for id in [1u32, 2, 1024, 1025, 3072, 3073, MAX_ID as u32] {
            let (b, off) = slot_of(id);
            assert!(b < BUCKETS && off < BASE << b, "id {id} -> {b}/{off}");
        }
        assert_eq!(slot_of(1), (0, 0));
        assert_eq!(slot_of(1025), (1, 0));
        assert_eq!(
            slot_of(MAX_ID as u32),
            (BUCKETS - 1, (BASE << (BUCKETS - 1)) - 1)
        );
    }

    /// Environment variable that makes the `child_*` tests run (in a child process).
    const CHILD: &str = "MEMCTX_STACK_TEST_CHILD";

    /// Runs the test `name` of this module in a child process of this test binary, with `env`.
    fn run_child(name: &str, env: &[(&str, &str)]) {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([&format!("{module}::{name}"), "--exact", "--test-threads=1"])
            .env(CHILD, "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The harness's verdict, not the exit status: under ThreadSanitizer a test binary exits
        // with 66 for reports in the (uninstrumented) standard library's test harness.
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "child {name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn settings_and_environment() {
        run_child("child_settings", &[]);
        run_child(
            "child_environment",
            &[("MEMCTX_BACKTRACES", "0"), ("MEMCTX_BACKTRACE_DEPTH", "5")],
        );
        run_child("child_fallback", &[]);
    }

    #[test]
    fn child_settings() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        set_enabled(true);
        assert!(!site_a().is_none());
        set_enabled(false);
        assert!(site_a().is_none());
        assert!(!enabled());
        set_enabled(true);
        for d in [1, 2, 4, 7] {
            set_depth(d);
            assert_eq!(depth(), d);
            let id = site_a();
            assert!(!id.is_none());
            assert!(frames(id).len() <= d, "{} > {d}", frames(id).len());
            if d >= 2 {
                assert_first_is(id, "site_a");
            }
        }
        set_depth(0);
        assert_eq!(depth(), 1);
        set_depth(1000);
        assert_eq!(depth(), MAX_DEPTH);
        // A deep stack is cut at the depth.
        set_depth(16);
        assert_eq!(frames(deep(40)).len(), 16);
        // The benchmarks run (timings belong to the bench binary) and restore the settings.
        set_depth(5);
        assert!(bench_capture(4, 10) > 0.0);
        assert!(bench_capture_fallback(4, 10) > 0.0);
        assert_eq!(depth(), 5);
        assert!(enabled() && FP_WALK.load(Ordering::Relaxed));
    }

    /// Captures `n` frames below here.
    #[inline(never)]
    fn deep(n: usize) -> StackId {
        if n == 0 {
            return site_a();
        }
        let r = deep(n - 1);
        std::hint::black_box(n);
        r
    }

    #[test]
    fn child_environment() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert!(!enabled());
        assert_eq!(depth(), 5);
        assert!(site_a().is_none());
        set_enabled(true);
        let id = site_a();
        assert!(!id.is_none() && frames(id).len() <= 5);
    }

    #[test]
    fn child_fallback() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        set_enabled(true);
        set_depth(16);
        // One call site, captured through both paths, then again through the fallback.
        let ids = repeat(3, &|i| {
            if i == 1 {
                FP_WALK.store(false, Ordering::Relaxed);
            }
            site_a
        });
        let (fp, slow) = (ids[0], ids[1]);
        assert!(!slow.is_none());
        assert_eq!(slow, ids[2]);
        assert_first_is(slow, "site_a");
        assert_ne!(slow, site_b());
        assert_first_is(site_c(), "site_c");
        // Both paths start at the same return address.
        assert_eq!(frames(fp)[0], frames(slow)[0]);
    }
}
