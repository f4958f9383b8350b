//! Bounds: the least the debug build's required memory work can cost here.
//!
//! The debug build does memory work the release build does not do at all: every fresh chunk filled
//! with a pattern, a redzone on both sides, freed chunks and reset contexts clobbered, and (at its
//! default settings) the redzones verified at pfree and reset and freed or released memory verified
//! when it is carved again. How much of its time is that work itself, and how much its code? The
//! stand-ins below answer it for churn, per-row and per-row-bump (per-row in a Bump context, whose
//! chunks have no header and a capacity of the request rounded to 16). Each one *is* memctx's
//! release build — `palloc`/`pfree`, `alloc`/`reset` on a context of its own — plus the least of
//! that work a debug build could do, in plain stores and branch-light 16-byte compares around each
//! call, and nothing else: no records beyond an 8-byte size word, no registry of blocks, no
//! backtraces, no sanitizer calls, no queued reports, a rear redzone of exactly 16 bytes. Inside
//! the chunk memctx hands out (an AllocSet's 8-byte header word before it; a Bump chunk has none)
//! the stand-in lays out
//!
//! ```text
//!  header (memctx's) | size word (8) | front redzone (16) | request | rear redzone (16) | slack
//! ```
//!
//! so the size class is AllocSet's power of two for the request rounded to 8 plus 40 bytes (on
//! these workloads' sizes, the same bytes per chunk on average as the debug build's 48-byte
//! prefix with a class for the request plus 16). The slack keeps the freed pattern it already
//! holds, so a free rewrites only the front redzone, the request and the rear redzone. Duties:
//! - `none`: the bare calls — the stand-in is memctx's release build, so `bound <w> none` compares
//!   that build with itself and must stay within 10 % of 1 (else the rounds were too noisy, or
//!   the stand-in's loop is not the release build's code: the context handle reloaded at every
//!   call costs per-row 25 %, so the loop copies it first);
//! - `fills`: plus the stores: size word, front redzone, fresh pattern (0xA5), rear redzone
//!   (0x7E); 0x7F over a freed chunk's front redzone, request and rear redzone, and over the
//!   used space of a context before its reset — no verification;
//! - `checks`: plus the least verification the default settings promise: both redzones at pfree
//!   and before a reset (an overrun of a per-row chunk is found at the reset), and the freed
//!   pattern of every chunk handed out — a chunk from a freelist (a write after pfree) and space a
//!   reset released, carved again (a write through a pointer kept past the reset).
//!
//! The stand-ins count the checks that fail and say so (none may: the workloads are clean). For
//! the carve check to hold from the first round, each stand-in's context is filled with the freed
//! pattern once before it is measured (a real debug build fills a block when it takes it).
//! Each stand-in runs beside a fresh copy of memctx's release contender of the same workload, in
//! a context configured and prefilled as the stand-in's, their rounds alternating, and
//! `bound <workload> <duty> <X>` = the stand-in's median over that copy's median — the least
//! `overhead` a debug build doing that duty could show; ci/bench divides the debug build's time
//! by the `checks` stand-in's for `waste`.

use std::hint::black_box;

use memctx::{BlockSizes, MemoryContext};

use crate::{
    measure, row_sizes, summarize, Churn, ChurnSeq, Config, Contender, Palloc, RawAlloc, RowMemctx,
    Timing, ROW_LEN,
};

/// What a stand-in does besides memctx's release work (see the module docs): a const parameter
/// of the stand-ins, so that each duty's loop is compiled for it alone (at `none`, the release
/// build's loop).
type Duty = u8;
const NONE: Duty = 0;
const FILLS: Duty = 1;
const CHECKS: Duty = 2;
const DUTIES: [(Duty, &str); 3] = [
    (NONE, "bound:none"),
    (FILLS, "bound:fills"),
    (CHECKS, "bound:checks"),
];

/// Bytes asked of memctx for a request of `size`: the request itself at `none`, above it with
/// room for the size word, the front redzone and the rear redzone.
#[inline(always)]
fn request<const D: Duty>(size: usize) -> usize {
    if D == NONE {
        size
    } else {
        PREFIX + ((size + 7) & !7) + REAR
    }
}

/// memctx's chunk header word (release build), before the pointer it hands out.
const HEADER: usize = 8;
/// The stand-in's size word and front redzone, at the start of memctx's chunk.
const PREFIX: usize = 24;
/// The rear redzone: the least the contract allows, 16 bytes right after the request.
const REAR: usize = 16;
/// A free chunk's first word is memctx's freelist link, which holds no pattern.
const LINK: usize = 8;
const FRESH: u8 = 0xA5;
const REDZONE: u8 = 0x7E;
const FREED: u8 = 0x7F;

/// The capacity AllocSet gives a request of `bytes`: its power-of-two class, 8 at least.
#[inline(always)]
fn class(bytes: usize) -> usize {
    bytes.next_power_of_two().max(8)
}

/// The capacity a context of the stand-in's kind gives a request of `bytes`: AllocSet's class, or
/// (`BUMP`) a Bump context's request rounded to 16.
#[inline(always)]
fn capacity<const BUMP: bool>(bytes: usize) -> usize {
    if BUMP {
        (bytes.max(1) + 15) & !15
    } else {
        class(bytes)
    }
}

/// Bytes before a chunk memctx's release build hands out in a context of the stand-in's kind:
/// AllocSet's header word, none in a Bump context.
const fn header<const BUMP: bool>() -> usize {
    if BUMP {
        0
    } else {
        HEADER
    }
}

/// Whether the `len` >= 8 bytes at `p` all equal `byte`: 16-byte compares (SSE2 on x86-64)
/// or'ed together and one branch at the end, the last one overlapping when `len` is not a
/// multiple of 16; 8 <= `len` < 16 as two overlapping words.
///
/// # Safety
/// `p` readable for `len` bytes.
#[inline(always)]
unsafe fn all_equal(p: *const u8, len: usize, byte: u8) -> bool {
    debug_assert!(len >= 8);
    // SAFETY: every load lies in [p, p + len) (caller).
    unsafe {
        if len < 16 {
            let w = u64::from_ne_bytes([byte; 8]);
            let a = (p as *const u64).read_unaligned();
            let b = (p.add(len - 8) as *const u64).read_unaligned();
            return (a ^ w) | (b ^ w) == 0;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let w = _mm_set1_epi8(byte as i8);
            let mut diff = _mm_xor_si128(_mm_loadu_si128(p.add(len - 16) as *const __m128i), w);
            let mut i = 0;
            while i + 16 <= len {
                let v = _mm_loadu_si128(p.add(i) as *const __m128i);
                diff = _mm_or_si128(diff, _mm_xor_si128(v, w));
                i += 16;
            }
            _mm_movemask_epi8(_mm_cmpeq_epi8(diff, _mm_setzero_si128())) == 0xFFFF
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let w = u64::from_ne_bytes([byte; 8]);
            let mut diff = (p.add(len - 8) as *const u64).read_unaligned() ^ w;
            let mut i = 0;
            while i + 8 <= len {
                diff |= (p.add(i) as *const u64).read_unaligned() ^ w;
                i += 8;
            }
            diff == 0
        }
    }
}

/// Lays out the stand-in's chunk for a request of `size` in the chunk `q` of capacity `cap` memctx
/// just handed out for `request::<D>(size)`, after verifying at duty `checks` that it held the
/// freed pattern past `skip` bytes (`LINK` where it may come from a freelist); returns the data
/// pointer. `bad` counts a failed check.
///
/// # Safety
/// `size >= 8`; `q` as said; above duty `none`, that chunk's memory held the freed pattern past
/// `skip` since it was last released (the stand-in's own frees and resets see to that after
/// [`prefill`]).
#[inline(always)]
unsafe fn take<const D: Duty>(
    q: *mut u8,
    size: usize,
    cap: usize,
    skip: usize,
    bad: &mut usize,
) -> *mut u8 {
    if D == NONE {
        return q;
    }
    // SAFETY: memctx handed out `cap` bytes at `q`; the request covers the prefix, the data and
    // the rear redzone.
    unsafe {
        if D == CHECKS && !all_equal(q.add(skip), cap - skip, FREED) {
            *bad += 1;
        }
        (q as *mut u64).write(size as u64);
        let data = q.add(PREFIX);
        std::ptr::write_bytes(data.sub(16), REDZONE, 16);
        std::ptr::write_bytes(data, FRESH, size);
        std::ptr::write_bytes(data.add(size), REDZONE, REAR);
        data
    }
}

/// The memctx chunk a stand-in's data pointer lies in.
#[inline(always)]
fn chunk_of<const D: Duty>(data: *mut u8) -> *mut u8 {
    if D == NONE {
        data
    } else {
        data.wrapping_sub(PREFIX)
    }
}

/// At duty `checks`, whether a live chunk's redzones are intact (the request's size read from its
/// size word, as a debug build reads its record); true below.
///
/// # Safety
/// `data` from [`take`] with this duty, live.
#[inline(always)]
unsafe fn redzones_ok<const D: Duty>(data: *mut u8) -> bool {
    D != CHECKS
        // SAFETY: the size word, both redzones and the request lie in the chunk (caller).
        || unsafe {
            let size = (data.sub(PREFIX) as *const u64).read() as usize;
            all_equal(data.sub(16), 16, REDZONE) && all_equal(data.add(size), REAR, REDZONE)
        }
}

/// The churn stand-in: `palloc`/`pfree` in CurrentMemoryContext (the churn loop switches to the
/// stand-in's context) and the duty's work around them.
struct Standin<const D: Duty> {
    /// Failed checks (see [`report_failed_checks`]).
    bad: std::cell::Cell<usize>,
}

impl<const D: Duty> RawAlloc for Standin<D> {
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> *mut u8 {
        let mut bad = 0;
        let req = request::<D>(size);
        // SAFETY: size >= 8 (caller); the context (an AllocSet) was prefilled and every free
        // refills the chunk's pattern (below).
        let data = unsafe { take::<D>(memctx::palloc(req), size, class(req), LINK, &mut bad) };
        if D == CHECKS {
            self.bad.set(self.bad.get() + bad);
        }
        data
    }

    #[inline(always)]
    unsafe fn free(&self, data: *mut u8, size: usize) {
        // SAFETY: `data` is live from `alloc` with `size` (caller).
        unsafe {
            if !redzones_ok::<D>(data) {
                self.bad.set(self.bad.get() + 1);
            }
            if D != NONE {
                // Front redzone, request, rear redzone; the slack holds the freed pattern already.
                std::ptr::write_bytes(data.sub(16), FREED, 16 + size + REAR);
            }
            memctx::pfree(chunk_of::<D>(data));
        }
    }

    unsafe fn realloc(&self, _: *mut u8, _: usize, _: usize) -> *mut u8 {
        unreachable!("the workloads that use the stand-ins never realloc")
    }
}

impl<const D: Duty> Drop for Standin<D> {
    fn drop(&mut self) {
        report_failed_checks("churn stand-in", self.bad.get());
    }
}

/// A stand-in's checks never fail on these workloads (they commit no bugs); one that did would be
/// a bug of the stand-in, so it is said. Reading the count also keeps the checks from being
/// optimised away.
fn report_failed_checks(who: &str, bad: usize) {
    if black_box(bad) != 0 {
        eprintln!("warning: {who}: {bad} checks failed (a bug in the stand-in)");
    }
}

/// Fills the first `bytes` of `ctx`'s keeper block with the freed pattern, as a debug build
/// fills a block it takes: carves 1 KiB chunks over them, writes 0x7F over all of it, headers
/// included (the release build's reset reads no chunk header), and resets `ctx`. After a reset a
/// context carves again from the start of its keeper block, through that space.
fn prefill<const BUMP: bool>(ctx: MemoryContext, bytes: usize) {
    const REQUEST: usize = 1024;
    let (header, step) = (header::<BUMP>(), (header::<BUMP>() + REQUEST + 15) & !15);
    let chunks = bytes.div_ceil(step).max(1);
    let first = ctx.alloc(REQUEST).as_ptr();
    let mut last = first;
    for _ in 1..chunks {
        last = ctx.alloc(REQUEST).as_ptr();
    }
    assert!(
        last as usize - first as usize == (chunks - 1) * step && ctx.counters().total_nblocks == 1,
        "prefill: the chunks are not contiguous in the keeper block"
    );
    // SAFETY: [first - header, last + REQUEST) is the carved part of ctx's keeper block: the
    // chunks and their header words, contiguous (asserted); nothing reads the headers before the
    // reset.
    unsafe {
        let start = first.sub(header);
        std::ptr::write_bytes(start, FREED, last.add(REQUEST) as usize - start as usize);
    }
    ctx.reset();
}

/// Keeper block of the churn stand-ins' contexts: room for the live set and every freelist the
/// sequence ever fills, so that all their carving happens in prefilled space (ample: the live set
/// takes about 1.8 MiB). Filled but for the last 64 KiB (room for the context's own headers).
const CHURN_KEEPER: usize = 16 << 20;
const CHURN_FILL: usize = CHURN_KEEPER - (64 << 10);
/// Bytes a per-row stand-in's row can take: 16 chunks of the largest class (128 + 40 -> 256
/// bytes) with their header words and padding; the default keeper block (8 KiB) holds them.
const ROW_FILL: usize = ROW_LEN * (256 + 16);

/// A context for a stand-in — an AllocSet, or (`BUMP`) a Bump context — with a keeper block of
/// `keeper` bytes (0: the default 8 KiB) whose first `fill` bytes hold the freed pattern.
fn standin_context<const BUMP: bool>(
    name: &'static str,
    keeper: usize,
    fill: usize,
) -> MemoryContext {
    let sizes = BlockSizes {
        min_context_size: keeper,
        ..BlockSizes::DEFAULT
    };
    let top = MemoryContext::top();
    let ctx = if BUMP {
        top.new_bump_child(name, sizes)
    } else {
        top.new_child(name, sizes)
    };
    prefill::<BUMP>(ctx, fill);
    ctx
}

/// The per-row stand-in: `ctx.alloc` 16 times, then (above `none`) every chunk's redzones checked
/// at duty `checks` and the used space clobbered, then `ctx.reset()`; in an AllocSet, or (`BUMP`)
/// a Bump context.
struct RowStandin<'s, const D: Duty, const BUMP: bool> {
    name: &'static str,
    ctx: MemoryContext,
    sizes: &'s [u8],
}

impl<const D: Duty, const BUMP: bool> Contender for RowStandin<'_, D, BUMP> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        // A copy, so the stores into chunks below cannot make the compiler reload it.
        let ctx = self.ctx;
        let mut bad = 0usize;
        for row in self.sizes.chunks_exact(ROW_LEN) {
            let mut live = [std::ptr::null_mut::<u8>(); ROW_LEN];
            let mut seen = 0;
            for (slot, &s) in live.iter_mut().zip(row) {
                // SAFETY: s >= 8; the space a row carves was prefilled, and every reset below
                // clobbers what the row used (the header word before the first chunk is memctx's,
                // so the check starts at the chunk).
                unsafe {
                    let req = request::<D>(s as usize);
                    let q = ctx.alloc(req).as_ptr();
                    let data = take::<D>(q, s as usize, capacity::<BUMP>(req), 0, &mut bad);
                    data.write(s);
                    seen ^= data as usize;
                    *slot = data;
                }
            }
            black_box(seen);
            if D != NONE {
                for &data in &live {
                    // SAFETY: live chunks of this row.
                    bad += !unsafe { redzones_ok::<D>(data) } as usize;
                }
                let start = chunk_of::<D>(live[0]).wrapping_sub(header::<BUMP>());
                let last = chunk_of::<D>(live[ROW_LEN - 1]);
                let last_req = request::<D>(row[ROW_LEN - 1] as usize);
                let end = last.wrapping_add(capacity::<BUMP>(last_req));
                // SAFETY: the row's chunks were carved one after the other from the start of the
                // keeper block's free space, so [start, end) is the used space, headers and
                // padding included.
                unsafe { std::ptr::write_bytes(start, FREED, end as usize - start as usize) };
            }
            ctx.reset();
        }
        report_failed_checks(self.name, bad);
        self.sizes.len() as u64
    }
}

impl<const D: Duty, const BUMP: bool> Drop for RowStandin<'_, D, BUMP> {
    fn drop(&mut self) {
        self.ctx.delete();
    }
}

/// A stand-in's result: its workload, duty, timing, and the median of memctx's release build
/// measured in the same rounds.
pub(crate) struct Bound {
    pub(crate) workload: &'static str,
    pub(crate) duty: &'static str,
    pub(crate) standin: Timing,
    pub(crate) release: f64,
}

/// Runs every stand-in on the churn, per-row and per-row-bump workloads' own sequences, each paired
/// with memctx's release build on the same workload (in a context of its own), their rounds
/// alternating as the peers' do — so `bound` compares two times taken in the same moments of this
/// noisy machine — and with nothing else beside them (three peers' working sets would slow both;
/// the debug build too runs memctx alone).
pub(crate) fn bench_bounds(cfg: &Config) -> Vec<Bound> {
    let seq = ChurnSeq::new(cfg.batch(1 << 15));
    let sizes = row_sizes(cfg.batch(1 << 11));
    let mut out = Vec::new();
    println!();
    println!("bounds (memctx release + the least work of each duty, beside memctx; ns per op)");
    println!(
        "  {:<24} {:>12} {:>12} {:>14}",
        "stand-in", "median ns", "min ns", "memctx median"
    );
    for workload in ["churn", "per-row", "per-row-bump"] {
        if !cfg.wants(workload) {
            continue;
        }
        for (duty, name) in DUTIES {
            let standin = match duty {
                NONE => standin::<NONE>(workload, name, &seq, &sizes),
                FILLS => standin::<FILLS>(workload, name, &seq, &sizes),
                _ => standin::<CHECKS>(workload, name, &seq, &sizes),
            };
            let release = release_contender(workload, &seq, &sizes);
            let mut samples = measure(cfg, &mut [standin, release]);
            let t = summarize(&mut samples[0]);
            let release = summarize(&mut samples[1]).median;
            let label = format!("{workload} {name}");
            println!(
                "  {label:<24} {:>12.2} {:>12.2} {:>14.2}",
                t.median, t.min, release
            );
            out.push(Bound {
                workload,
                duty: name.trim_start_matches("bound:"),
                standin: t,
                release,
            });
        }
    }
    out
}

/// memctx's release contender of `workload` (churn, per-row or per-row-bump), as in its table but
/// in a context like the stand-ins' (on churn their one 16 MiB block is by itself a little faster
/// than the default's growing blocks), so that a stand-in and its release pair differ by the duty
/// alone.
fn release_contender<'s>(
    workload: &str,
    seq: &'s ChurnSeq,
    sizes: &'s [u8],
) -> Box<dyn Contender + 's> {
    match workload {
        "churn" => {
            let ctx = standin_context::<false>("churn release", CHURN_KEEPER, CHURN_FILL);
            Box::new(Churn::new("memctx", Palloc, seq, Some(ctx)))
        }
        "per-row" => {
            let ctx = standin_context::<false>("per-row release", 0, ROW_FILL);
            Box::new(RowMemctx { ctx, sizes })
        }
        _ => {
            let ctx = standin_context::<true>("per-row-bump release", 0, ROW_FILL);
            Box::new(RowMemctx { ctx, sizes })
        }
    }
}

/// The stand-in of duty `D` for `workload` (churn, per-row or per-row-bump), in a prefilled
/// context of its own.
fn standin<'s, const D: Duty>(
    workload: &str,
    name: &'static str,
    seq: &'s ChurnSeq,
    sizes: &'s [u8],
) -> Box<dyn Contender + 's> {
    if workload == "churn" {
        let ctx = standin_context::<false>("churn stand-in", CHURN_KEEPER, CHURN_FILL);
        let alloc = Standin::<D> {
            bad: std::cell::Cell::new(0),
        };
        Box::new(Churn::new(name, alloc, seq, Some(ctx)))
    } else if workload == "per-row" {
        let ctx = standin_context::<false>("per-row stand-in", 0, ROW_FILL);
        Box::new(RowStandin::<D, false> { name, ctx, sizes })
    } else {
        let ctx = standin_context::<true>("per-row-bump stand-in", 0, ROW_FILL);
        Box::new(RowStandin::<D, true> { name, ctx, sizes })
    }
}
