//! Verification: comparing memory with the patterns it should hold, and the heap-consistency walk
//! of a whole context (PostgreSQL's AllocSetCheck, talc's heap check).
//!
//! Checking happens at three points, each chosen for what it costs against what it catches:
//! - **per chunk**, always: `pfree` and `repalloc` check the chunk's own redzones; a chunk taken from
//!   a freelist is checked for writes since its free (one pass that verifies the freed pattern and
//!   writes the fresh one, [`check_and_fill`]). These cost time proportional to the chunk, which
//!   the operation pays anyway to fill its pattern.
//! - **reset walk**: every chunk's header and record, every live chunk's redzones, every free
//!   chunk's pattern. Proportional to the chunks in use.
//! - **unused space**: the part of each block past its free pointer, and released space when it is
//!   carved into a chunk again. Always at delete and on [`crate::MemoryContext::check`]; released
//!   space when carved at the default depth; every block's unused space at reset only at depth
//!   [`ResetCheck::Full`].
//!
//! The depth ([`ResetCheck`], a run-time setting) decides the last point for resets and carving:
//! - [`ResetCheck::Released`] (the default) also verifies, when space of a keeper block is carved
//!   again, that it still holds the pattern its reset left, so a write through a pointer kept past
//!   a reset is reported when the space is reused at the latest (`found at: reuse`), with the
//!   backtrace of the chunk the reset released there and the reset's own. Only space handed out
//!   before is compared: each keeper remembers how far its resets released (`Block::released`),
//!   and space past that, never handed out, is only filled. The carve writes the live chunk's
//!   patterns in the same pass as the compare ([`check_and_fill`]), so the check costs a load and
//!   a compare per word on top of the fill it replaces.
//! - [`ResetCheck::Chunks`] (an opt-down) fills released space when carved without verifying it:
//!   a write after reset is then caught by the next delete or check only if the space is still
//!   unused, and the new chunk's patterns overwrite the evidence otherwise. Valgrind and ASan
//!   still catch such writes at the faulting instruction (the space is closed to both).
//! - [`ResetCheck::Full`] also verifies every block's unused space at every reset and all space
//!   when it is carved, handed out before or not, so a wild write into space never used is found
//!   at the next reset or carve too.
//!
//! Blocks other than the keeper that a reset releases, and every block of a deleted context, go to
//! the thread's quarantine (`debug::quarantine`), verified when they leave it, at check and at
//! thread exit.
//!
//! Under Valgrind or ASan the bytes checked here are closed to the program (see
//! `debug::sanitizer`). The comparisons (`check_live`, `check_free`, `check_unused`) read what their
//! caller opened; the walks below open each region around its check and close it again, and never
//! touch a live chunk's requested bytes, whose state (defined or not) belongs to the program.

use core::ops::ControlFlow;

use crate::chunk::{self, Block, BLOCK_HEADER_SIZE, CHUNK_HEADER_SIZE, CHUNK_PREFIX};
use crate::context::ContextHeader;
use crate::kinds::{self, Walked};

use super::blocks::{self, Ghost};
use super::layout::{
    front_redzone, record_ptr, DebugRecord, FREED_BYTE, FRONT_REDZONE, RECORD_SIZE, REDZONE_BYTE,
    STATE_FREE, STATE_LIVE,
};
use super::report::{BugClass, Report};
use super::sanitizer;

/// How much resets and carving verify (delete and check always verify in full).
///
/// | depth | reset verifies | carving verifies |
/// |---|---|---|
/// | `Chunks` (opt-down) | headers, records, live chunks' redzones, free chunks' patterns | nothing (space is filled) |
/// | `Released` (default) | as `Chunks` | space a reset released still holds the released pattern |
/// | `Full` | also every block's unused space | all space still holds the unused pattern |
///
/// # Examples
/// ```
/// use memctx::debug::{self, ResetCheck};
/// debug::set_thread_reset_check(Some(ResetCheck::Full));
/// // ... the code under suspicion ...
/// debug::set_thread_reset_check(None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCheck {
    /// Headers, records, live chunks' redzones and free chunks' patterns at reset; released space
    /// is filled, not verified, when carved again.
    Chunks,
    /// As `Chunks`, and space a reset released is verified when carved again (the default).
    Released,
    /// Also every block's unused space at reset, and all space when it is carved.
    Full,
}

/// `byte` in every byte of a word.
#[inline(always)]
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Whether every byte of `[ptr, ptr + len)` is `byte`.
///
/// The hot comparison of the debug build: every pfree, reuse, carve and reset runs it over
/// redzones and freed chunks, nearly always on intact memory. So it has no early exit inside a
/// 32-byte stride — four words XOR'ed with the pattern and OR'ed together, which the compiler turns
/// into vector compares — and answers only yes or no; [`damaged`] finds the range when the answer
/// is no. A rear redzone starts wherever the request ends, so its length varies from chunk to
/// chunk and is rarely a multiple of 8; loops whose trip count varies end in a mispredicted
/// branch (on this machine that cost more than the rest of the reset walk). So up to 32 bytes are
/// read as two or four overlapping words with no loop, and longer ranges as whole strides plus a
/// last stride that overlaps them; no byte is compared alone unless the range is shorter than 8.
///
/// # Safety
/// The range must be readable.
#[inline(always)]
pub(crate) unsafe fn intact(ptr: *const u8, len: usize, byte: u8) -> bool {
    const STRIDE: usize = 32;
    let word = splat(byte);
    // SAFETY: every read is inside `[ptr, ptr + len)`, which the caller guarantees readable.
    unsafe {
        if len < 8 {
            return intact_short(ptr, len, byte);
        }
        let at = |i: usize| (ptr.add(i) as *const u64).read_unaligned() ^ word;
        if len <= 16 {
            return at(0) | at(len - 8) == 0;
        }
        if len <= STRIDE {
            return at(0) | at(8) | at(len - 16) | at(len - 8) == 0;
        }
        if len >= LONG {
            if let Some(ok) = intact_long(ptr, len, byte) {
                return ok;
            }
        }
        // The last stride first, then whole strides up to it.
        let mut bad = at(len - 32) | at(len - 24) | at(len - 16) | at(len - 8);
        let mut i = 0;
        while i + STRIDE < len {
            bad |= at(i) | at(i + 8) | at(i + 16) | at(i + 24);
            if bad != 0 {
                return false;
            }
            i += STRIDE;
        }
        bad == 0
    }
}

/// Ranges at least this long are compared by [`intact_long`].
const LONG: usize = 256;

/// Bytes of each pattern page [`intact_long`] compares against.
const PATTERN_PAGE: usize = 4096;

/// [`intact`] for a long range of the freed or redzone pattern (`None` for another byte):
/// compared with `memcmp` against a page of the pattern, whose speed does not depend on how this
/// crate was optimised — tests run it unoptimised, where the word loop costs ten times as much,
/// and a `check` of a whole tree or of the quarantine compares megabytes of unused space.
///
/// # Safety
/// As [`intact`].
#[inline(never)]
unsafe fn intact_long(ptr: *const u8, len: usize, byte: u8) -> Option<bool> {
    static FREED: [u8; PATTERN_PAGE] = [FREED_BYTE; PATTERN_PAGE];
    static REDZONE: [u8; PATTERN_PAGE] = [REDZONE_BYTE; PATTERN_PAGE];
    let page = match byte {
        FREED_BYTE => &FREED,
        REDZONE_BYTE => &REDZONE,
        _ => return None,
    };
    let mut at = 0;
    while at < len {
        let n = PATTERN_PAGE.min(len - at);
        // SAFETY: `[ptr + at, ptr + at + n)` lies in the range (caller), the page has `n` bytes.
        if unsafe { libc::memcmp(ptr.add(at).cast(), page.as_ptr().cast(), n) } != 0 {
            return Some(false);
        }
        at += n;
    }
    Some(true)
}

/// [`intact`] for fewer than 8 bytes: two overlapping reads of the widest size that fits.
///
/// # Safety
/// As [`intact`]; `len < 8`.
#[inline(always)]
unsafe fn intact_short(ptr: *const u8, len: usize, byte: u8) -> bool {
    // SAFETY: both reads of each pair lie inside the range (caller).
    unsafe {
        if len >= 4 {
            let w = u32::from_ne_bytes([byte; 4]);
            let at = |i: usize| (ptr.add(i) as *const u32).read_unaligned();
            at(0) == w && at(len - 4) == w
        } else if len >= 2 {
            let w = u16::from_ne_bytes([byte; 2]);
            let at = |i: usize| (ptr.add(i) as *const u16).read_unaligned();
            at(0) == w && at(len - 2) == w
        } else {
            len == 0 || *ptr == byte
        }
    }
}

/// Checks that `[ptr, ptr + len)` holds `expect` and overwrites it with `fill`, in one pass.
///
/// Handing out a freed chunk or carving released space both verify a pattern and write another
/// over the same bytes; one pass loads each line once and stores it while it is in hand, where a
/// check followed by a `memset` went over the memory twice. `Ok(())`: the range was intact and now
/// holds `fill`. `Err(i)`: the bytes before offset `i` were intact and now hold `fill`; from `i` on
/// nothing was written, and some byte there differs from `expect` — so [`damaged`] over
/// `[ptr + i, ptr + len)` finds the exact damaged range. The last word is checked first and
/// written last, as in [`intact`], so no tail loop runs byte by byte.
///
/// # Safety
/// The range must be readable and writable.
#[inline]
pub(crate) unsafe fn check_and_fill(
    ptr: *mut u8,
    len: usize,
    expect: u8,
    fill: u8,
) -> Result<(), usize> {
    const STRIDE: usize = 32;
    let want = splat(expect);
    let put = splat(fill);
    // SAFETY: every access is inside `[ptr, ptr + len)` (caller).
    unsafe {
        if len < 8 {
            if !intact_short(ptr, len, expect) {
                return Err(0);
            }
            core::ptr::write_bytes(ptr, fill, len);
            return Ok(());
        }
        let word = |i: usize| ptr.add(i) as *mut u64;
        if word(len - 8).read_unaligned() != want {
            return Err(0); // nothing written yet
        }
        let mut i = 0;
        while i + STRIDE <= len {
            let bad = (word(i).read_unaligned() ^ want)
                | (word(i + 8).read_unaligned() ^ want)
                | (word(i + 16).read_unaligned() ^ want)
                | (word(i + 24).read_unaligned() ^ want);
            if bad != 0 {
                return Err(i);
            }
            for k in (0..STRIDE).step_by(8) {
                word(i + k).write_unaligned(put);
            }
            i += STRIDE;
        }
        while i + 8 <= len {
            if word(i).read_unaligned() != want {
                return Err(i);
            }
            word(i).write_unaligned(put);
            i += 8;
        }
        // The bytes of the last word not yet written were checked at the start.
        word(len - 8).write_unaligned(put);
    }
    Ok(())
}

/// Largest range [`fill`] and [`fill_live`] write with their own stores; above it `memset`'s wide
/// stores are worth its call.
const BY_STRIPES_MAX: usize = 256;

/// 16-byte stores of a byte pattern for [`fill`] and [`fill_live`].
///
/// The pattern is hidden from the optimiser (`black_box`): a loop storing a known byte pattern is
/// recognised and replaced by a call to `memset`, which is what these loops are there to avoid.
/// On x86-64 it lives in a vector register (SSE2 is part of the base architecture); as a `u128`
/// it would be two general registers and two 8-byte stores per stripe.
mod stripes {
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::{__m128i, _mm_set1_epi8, _mm_storeu_si128};

    /// A byte repeated 16 times.
    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy)]
    pub(super) struct Stripe(__m128i);

    /// A byte repeated 16 times.
    #[cfg(not(target_arch = "x86_64"))]
    #[derive(Clone, Copy)]
    pub(super) struct Stripe(u128);

    impl Stripe {
        /// `byte` in every byte.
        #[inline(always)]
        pub(super) fn of(byte: u8) -> Stripe {
            // SAFETY: SSE2 is part of x86-64's base architecture, always available.
            #[cfg(target_arch = "x86_64")]
            let s = Stripe(unsafe { _mm_set1_epi8(byte as i8) });
            #[cfg(not(target_arch = "x86_64"))]
            let s = Stripe(u128::from_ne_bytes([byte; 16]));
            core::hint::black_box(s)
        }

        /// Stores the stripe at `p`.
        ///
        /// # Safety
        /// `[p, p + 16)` must be writable.
        #[inline(always)]
        pub(super) unsafe fn store(self, p: *mut u8) {
            // SAFETY: `[p, p + 16)` is writable (caller), exactly the 16 bytes one store writes;
            // both stores are the unaligned kind, so `p` needs no alignment.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                _mm_storeu_si128(p as *mut __m128i, self.0)
            };
            // SAFETY: as above.
            #[cfg(not(target_arch = "x86_64"))]
            unsafe {
                (p as *mut u128).write_unaligned(self.0)
            };
        }
    }
}

use stripes::Stripe;

/// Fills `[ptr, ptr + len)` with `byte`: 16-byte stores, where a call to `memset` for the small,
/// odd-sized ranges of a chunk's patterns (its size-dependent branches mispredicted on random
/// sizes) cost more than the stores themselves.
///
/// # Safety
/// The range must be writable.
#[inline(always)]
pub(crate) unsafe fn fill(ptr: *mut u8, len: usize, byte: u8) {
    // SAFETY: every store is inside `[ptr, ptr + len)` (caller).
    unsafe {
        if !(16..=BY_STRIPES_MAX).contains(&len) {
            core::ptr::write_bytes(ptr, byte, len);
            return;
        }
        let put = Stripe::of(byte);
        let mut i = 0;
        while i + 16 <= len {
            put.store(ptr.add(i));
            i += 16;
        }
        put.store(ptr.add(len - 16));
    }
}

/// Writes a live chunk's data patterns: `fresh` over its first `size` bytes, `redzone` from there
/// to `cap` — one run of 16-byte stores with a mixed stripe at the boundary, not two `memset`s.
///
/// # Safety
/// `[data, data + cap)` must be writable and `size <= cap`; when `cap` is at most 256 (a size
/// class, not a chunk with a block of its own), `cap` is a multiple of 16.
#[inline(always)]
pub(crate) unsafe fn fill_live(data: *mut u8, size: usize, cap: usize, fresh: u8, redzone: u8) {
    debug_assert!(size <= cap);
    // SAFETY: `[data, data + cap)` is writable and `size <= cap` (caller), so every store below
    // lands in the chunk; a `cap` of at most 256 is a multiple of 16, as the stripes need.
    unsafe {
        if cap > BY_STRIPES_MAX {
            core::ptr::write_bytes(data, fresh, size);
            core::ptr::write_bytes(data.add(size), redzone, cap - size);
            return;
        }
        debug_assert!(cap % 16 == 0);
        let (f, r) = (Stripe::of(fresh), Stripe::of(redzone));
        let whole = size & !15;
        let mut i = 0;
        while i < whole {
            f.store(data.add(i));
            i += 16;
        }
        if i < size {
            // The first `size - i` bytes in memory fresh, the rest redzone.
            let low = u128::MAX >> (128 - 8 * (size - i));
            let (fw, rw) = (
                u128::from_ne_bytes([fresh; 16]),
                u128::from_ne_bytes([redzone; 16]),
            );
            (data.add(i) as *mut u128).write_unaligned(((fw & low) | (rw & !low)).to_le());
            i += 16;
        }
        while i < cap {
            r.store(data.add(i));
            i += 16;
        }
    }
}

/// The first and last byte of `[ptr, ptr + len)` that differ from `byte`, or `None`.
///
/// # Safety
/// The range must be readable.
#[inline]
pub(crate) unsafe fn damaged(ptr: *const u8, len: usize, byte: u8) -> Option<(usize, usize)> {
    // SAFETY: the caller's contract is `intact`'s and `damaged_range`'s.
    unsafe {
        if intact(ptr, len, byte) {
            None
        } else {
            Some(damaged_range(ptr, len, byte))
        }
    }
}

/// The first and last byte of `[ptr, ptr + len)` that differ from `byte`, which at least one does.
///
/// # Safety
/// The range must be readable and hold a byte other than `byte`.
#[cold]
#[inline(never)]
unsafe fn damaged_range(ptr: *const u8, len: usize, byte: u8) -> (usize, usize) {
    // SAFETY: reads stay inside the range; a differing byte stops both scans (caller).
    unsafe {
        let mut first = 0;
        while *ptr.add(first) == byte {
            first += 1;
        }
        let mut last = len - 1;
        while *ptr.add(last) == byte {
            last -= 1;
        }
        (first, last)
    }
}

/// Checks a live chunk's redzones.
///
/// # Safety
/// `data` must be a live chunk of the live context `ctx` with capacity `cap` and record `rec`;
/// its redzones readable (opened by the caller under a sanitizer).
pub(crate) unsafe fn check_live(
    ctx: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    cap: usize,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    let req = rec.requested as usize;
    // SAFETY: the redzones lie inside the chunk (caller).
    unsafe {
        let front = front_redzone(data);
        if let Some((a, b)) = damaged(front, FRONT_REDZONE, REDZONE_BYTE) {
            let range = (
                a as isize - FRONT_REDZONE as isize,
                b as isize + 1 - FRONT_REDZONE as isize,
            );
            out.push(
                Report::at(BugClass::Underrun, found_at)
                    .context(ctx)
                    .chunk(data as usize, Some(req))
                    .stacks(rec.alloc_stack, 0)
                    .damage(front.add(a), range, REDZONE_BYTE)
                    .detail("bytes before the chunk's data were written (front redzone)"),
            );
        }
        if let Some((a, b)) = damaged(data.add(req), cap - req, REDZONE_BYTE) {
            let range = ((req + a) as isize, (req + b + 1) as isize);
            out.push(
                Report::at(BugClass::Overrun, found_at)
                    .context(ctx)
                    .chunk(data as usize, Some(req))
                    .stacks(rec.alloc_stack, 0)
                    .damage(data.add(req + a), range, REDZONE_BYTE)
                    .detail(format!(
                        "bytes past the requested {req} were written (rear redzone)"
                    )),
            );
        }
    }
}

/// Checks a free chunk's front redzone and its freed pattern from data offset `from` on (all but
/// its freelist link word, if its kind links freed chunks: `from` is at least the link's size
/// then; more when the bytes before it are known intact).
///
/// # Safety
/// `data` must be a free chunk of the live context `ctx` with capacity `cap` and record `rec`;
/// its front redzone and data readable (opened by the caller under a sanitizer).
pub(crate) unsafe fn check_free(
    ctx: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    cap: usize,
    from: usize,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    let link = from.min(cap);
    // SAFETY: the chunk's bytes lie in its block (caller).
    unsafe {
        let front = front_redzone(data);
        let regions = [
            (
                front,
                FRONT_REDZONE,
                -(FRONT_REDZONE as isize),
                REDZONE_BYTE,
            ),
            (data.add(link), cap - link, link as isize, FREED_BYTE),
        ];
        for (start, len, rel, byte) in regions {
            if let Some((a, b)) = damaged(start, len, byte) {
                let range = (rel + a as isize, rel + b as isize + 1);
                out.push(
                    Report::at(BugClass::WriteAfterFree, found_at)
                        .context(ctx)
                        .chunk(data as usize, Some(rec.requested as usize))
                        .stacks(rec.alloc_stack, rec.free_stack)
                        .damage(start.add(a), range, byte)
                        .detail("a freed chunk was written through a stale pointer"),
                );
                return;
            }
        }
    }
}

/// Checks that `[from, to)` inside `block` still holds the released/unused pattern. Damage is
/// attributed, in this order, to a chunk a reset of `ctx` released there, or one a deleted context
/// had there when the block is its recycled keeper (`write-after-free`); to the live chunk before
/// it when it continues that chunk's rear redzone (`overrun`); else it is a `wild-write` naming
/// the nearest chunk before it. The block's ghosts are looked up in `ghosts` when given (the chunks
/// the walk under way releases; a reset has taken the keeper's out of the registry to refill
/// them), then in the registry.
///
/// # Safety
/// The range must lie inside `block`, a block of the live context `ctx`, and be readable (opened
/// by the caller under a sanitizer).
pub(crate) unsafe fn check_unused(
    ctx: *mut ContextHeader,
    block: *mut Block,
    from: *mut u8,
    to: *mut u8,
    found_at: &str,
    out: &mut Vec<Report>,
    ghosts: Option<&[Ghost]>,
) {
    let len = to as usize - from as usize;
    // SAFETY: the range lies in the block (caller).
    unsafe {
        let Some((a, b)) = damaged(from, len, FREED_BYTE) else {
            return;
        };
        let first = from as usize + a;
        let last = from as usize + b;
        let ghost = ghosts
            .and_then(|gs| gs.iter().find(|g| g.covers(first)).copied())
            .or_else(|| blocks::ghost_at(block as usize, first));
        if let Some(g) = ghost {
            let by = (*ctx).kind.releaser();
            let r = ghost_report(&g, first, last.min(g.end() - 1), found_at, by);
            out.push(r.context(ctx));
        } else if let Some((g, former)) = super::quarantine::former_ghost(block, first) {
            let by = format!("the delete of \"{}\"", former.name());
            let mut r = ghost_report(&g, first, last.min(g.end() - 1), found_at, &by);
            former.name_in(&mut r);
            out.push(r);
        } else {
            unowned_damage(ctx, block, first, last, found_at, out);
        }
    }
}

/// Damage in unused space no released chunk covers: an `overrun` when it continues the rear
/// redzone of the live chunk before it, else a `wild-write` located against that chunk.
///
/// # Safety
/// As [`check_unused`]; `[first, last]` lies in the checked range.
#[cold]
#[inline(never)]
unsafe fn unowned_damage(
    ctx: *mut ContextHeader,
    block: *mut Block,
    first: usize,
    last: usize,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    // SAFETY: `[first, last]` lies in `block`, a block of the live context `ctx`, and is
    // readable (caller); `chunk_before` and the report read only that block's headers.
    unsafe {
        let near = chunk_before(ctx, block, first);
        if let Some(n) = near.filter(|n| n.live && n.end == first && n.rear_damaged) {
            let end = (last + 1 - n.data) as isize;
            // The walk already reported the redzone's part: one report for the whole overrun.
            if let Some(prev) = out.iter_mut().rev().find(|r| {
                r.class == BugClass::Overrun && r.chunk == Some(n.data) && r.range.is_some()
            }) {
                let (start, _) = prev.range.expect("checked");
                prev.range = Some((start, end));
                return;
            }
            let r = Report::at(BugClass::Overrun, found_at)
                .context(ctx)
                .chunk(n.data, Some(n.requested))
                .stacks(n.alloc_stack, 0)
                .damage(
                    first as *const u8,
                    ((first - n.data) as isize, end),
                    FREED_BYTE,
                )
                .detail(format!(
                    "bytes past the requested {} were written, past the chunk's end",
                    n.requested
                ));
            out.push(r);
            return;
        }
        let range = (
            (first - block as usize) as isize,
            (last + 1 - block as usize) as isize,
        );
        let r = Report::at(BugClass::WildWrite, found_at)
            .context(ctx)
            .damage(first as *const u8, range, FREED_BYTE);
        out.push(match near {
            Some(n) => r.stacks(n.alloc_stack, 0).detail(format!(
                "unused block space, owned by no chunk, was written: {}",
                after_chunk(first, n.data, n.requested)
            )),
            None => r.detail("unused block space, owned by no chunk, was written"),
        });
    }
}

/// Where `addr` lies against a chunk before it, as ASan locates an address against the nearest
/// region: "N bytes after the R-byte chunk at 0x..." (its allocation is the report's).
pub(crate) fn after_chunk(addr: usize, data: usize, requested: usize) -> String {
    format!(
        "{} bytes after the {requested}-byte chunk at {data:#x} (allocated at the stack below)",
        addr - (data + requested)
    )
}

/// The ghost nearest before `addr` (the one with the highest start not past it).
pub(crate) fn nearest_ghost(ghosts: &[Ghost], addr: usize) -> Option<&Ghost> {
    ghosts
        .iter()
        .filter(|g| g.data() <= addr)
        .max_by_key(|g| g.start)
}

/// The last chunk of a block starting before an address, as [`chunk_before`] finds it.
#[derive(Clone, Copy)]
struct Near {
    data: usize,
    /// One past its capacity.
    end: usize,
    requested: usize,
    alloc_stack: u32,
    live: bool,
    /// Whether the last byte of its rear redzone differs from the redzone pattern.
    rear_damaged: bool,
}

/// The last chunk of `block` (of `ctx`) whose data starts before `addr`, walking the chunks below
/// the free pointer; `None` when a header does not decode before reaching it (the walk reported
/// that).
///
/// # Safety
/// `block` must be a sane block of the live context `ctx`.
unsafe fn chunk_before(ctx: *mut ContextHeader, block: *mut Block, addr: usize) -> Option<Near> {
    let mut near = None;
    // SAFETY: the walk decodes every chunk before its record is read; every record and byte read
    // lies before the free pointer, inside the block, and is opened around the read.
    let _ = unsafe {
        kinds::walk_block((*ctx).kind, block, |w| {
            if w.start as usize >= addr {
                return ControlFlow::Break(());
            }
            let rec = load_record(w);
            if !rec.is_valid() {
                return ControlFlow::Break(());
            }
            let last = w.data.add(w.cap - 1);
            sanitizer::open(last, 1);
            let rear_damaged = *last != REDZONE_BYTE;
            sanitizer::close(last, 1);
            near = Some(Near {
                data: w.data as usize,
                end: w.data as usize + w.cap,
                requested: (rec.requested as usize).min(w.cap),
                alloc_stack: rec.alloc_stack,
                live: rec.state == STATE_LIVE,
                rear_damaged,
            });
            ControlFlow::Continue(())
        })
    };
    near
}

/// The debug record of a walked chunk, opened around the read.
///
/// # Safety
/// `w` must be a chunk a block walk decoded.
unsafe fn load_record(w: &Walked) -> DebugRecord {
    let meta = w.start.wrapping_add(CHUNK_HEADER_SIZE);
    sanitizer::open(meta, RECORD_SIZE);
    // SAFETY: the record lies in the chunk's prefix, inside its block (caller).
    let rec = unsafe { DebugRecord::load(record_ptr(w.data)) };
    sanitizer::close(meta, RECORD_SIZE);
    rec
}

/// A write-after-free report for damage in memory released by `by` (`a reset`, `the delete of
/// "X"`); the caller names the context.
///
/// # Safety
/// `first..=last` must be readable and inside `g`.
unsafe fn ghost_report(g: &Ghost, first: usize, last: usize, found_at: &str, by: &str) -> Report {
    let range = (
        first as isize - g.data() as isize,
        last as isize + 1 - g.data() as isize,
    );
    // SAFETY: the damaged bytes are readable (caller).
    unsafe {
        Report::at(BugClass::WriteAfterFree, found_at)
            .chunk(g.data(), Some(g.requested as usize))
            .stacks(g.alloc_stack, g.free_stack)
            .damage(first as *const u8, range, FREED_BYTE)
            .detail(format!(
                "memory released by {by} was written through a pointer kept past it"
            ))
    }
}

/// Where the reset and delete walks record the chunks of the blocks they are about to release, as
/// [`Ghost`]s (one walk both verifies them and remembers them).
pub(crate) struct GhostSink<'a> {
    /// Stack id of the reset or delete, the "free" backtrace of chunks still live when it
    /// released them.
    pub(crate) free_stack: u32,
    /// The ghosts, appended to.
    pub(crate) ghosts: &'a mut Vec<Ghost>,
}

impl GhostSink<'_> {
    /// Remembers the walked chunk `w` with record `rec` (a chunk whose record does not check
    /// out has no history to remember).
    fn add(&mut self, w: &Walked, rec: &DebugRecord) {
        if rec.is_valid() && w.cap <= u32::MAX as usize {
            self.ghosts.push(Ghost {
                start: w.start as usize,
                cap: w.cap as u32,
                requested: rec.requested.min(w.cap as u64) as u32,
                alloc_stack: rec.alloc_stack,
                free_stack: if rec.state == STATE_FREE {
                    rec.free_stack
                } else {
                    self.free_stack
                },
            });
        }
    }
}

/// Walks every block and chunk of `ctx`, appending findings to `out`, and every chunk to `sink`.
/// Never modifies memory.
///
/// # Safety
/// `ctx` must be a live context of this thread.
pub(crate) unsafe fn verify_context(
    ctx: *mut ContextHeader,
    depth: ResetCheck,
    found_at: &str,
    out: &mut Vec<Report>,
    mut sink: Option<&mut GhostSink<'_>>,
) {
    // SAFETY: walking the context's own blocks; every read is bounded by the block's extent,
    // which is checked against the registry before the block's contents are trusted.
    unsafe {
        let mut block = (*ctx).blocks;
        while !block.is_null() {
            if !block_header_sane(ctx, block, found_at, out) {
                return; // the list itself cannot be trusted past this block
            }
            verify_block(ctx, block, depth, found_at, out, sink.as_deref_mut());
            block = (*block).next;
        }
    }
}

/// Checks a block header against the registry.
///
/// # Safety
/// `block` must be on `ctx`'s block list.
unsafe fn block_header_sane(
    ctx: *mut ContextHeader,
    block: *mut Block,
    found_at: &str,
    out: &mut Vec<Report>,
) -> bool {
    // SAFETY: `block` is on `ctx`'s list (caller), and `ctx` is live.
    unsafe {
        let ok = header_agrees(ctx, block).unwrap_or(true);
        if !ok {
            out.push(block_header_damage(ctx, block, found_at));
        }
        ok
    }
}

/// The report of a block header of `ctx` found overwritten: a wild write, naming the block.
///
/// # Safety
/// `ctx` must be a live context (its name is read).
pub(crate) unsafe fn block_header_damage(
    ctx: *mut ContextHeader,
    block: *mut Block,
    found_at: &str,
) -> Report {
    // SAFETY: `ctx` is live (caller).
    unsafe {
        Report::at(BugClass::WildWrite, found_at)
            .context(ctx)
            .detail(format!("the header of block {block:p} was overwritten"))
    }
}

/// Whether the header of `block`, on `ctx`'s list, agrees with the block registry: its start and
/// end, its owner `ctx`, a free pointer inside its chunk space. `None` when the registry cannot be
/// read (this thread is exiting).
///
/// # Safety
/// `block` must be on `ctx`'s block list.
unsafe fn header_agrees(ctx: *mut ContextHeader, block: *mut Block) -> Option<bool> {
    // SAFETY: a block on the list was allocated by us and is at least a header long; `ctx` is
    // live, and its kind, not the block's context field (which may be the damage), says where
    // the block's chunks start.
    unsafe {
        let first = kinds::first_chunk_of((*ctx).kind, block);
        match blocks::lookup(block as usize) {
            blocks::Lookup::Found {
                start,
                end,
                ctx: owner,
            } => Some(
                start == block as usize
                    && owner == ctx
                    && (*block).context == ctx
                    && (*block).end_ptr as usize == end
                    && (*block).free_ptr >= first
                    && (*block).free_ptr <= (*block).end_ptr,
            ),
            blocks::Lookup::Unavailable => None,
            blocks::Lookup::NotFound => Some(false),
        }
    }
}

/// Walks one block's chunks (and records them in `sink`, if given).
///
/// # Safety
/// `block` must be a sane block of the live context `ctx`.
pub(crate) unsafe fn verify_block(
    ctx: *mut ContextHeader,
    block: *mut Block,
    depth: ResetCheck,
    found_at: &str,
    out: &mut Vec<Report>,
    mut sink: Option<&mut GhostSink<'_>>,
) {
    // SAFETY: the walk decodes each chunk inside the block before it is checked; the unused
    // space checked lies between the sane free pointer and the block's end.
    unsafe {
        let walked = kinds::walk_block((*ctx).kind, block, |w| {
            let rec = verify_chunk(ctx, w, found_at, out);
            if let Some(s) = sink.as_deref_mut() {
                s.add(w, &rec);
            }
            ControlFlow::Continue(())
        });
        if let Err(bad) = walked {
            out.push(header_damage(ctx, bad.data, bad.hdr.offset(), found_at));
            return;
        }
        // Under Valgrind or ASan the unused space is closed to the program: the tool reported
        // any write into it at the instruction, and comparing it at every delete and check cost
        // those runs more than the rest of the walk (memcheck runs `memcmp` byte by byte).
        let (free, end) = ((*block).free_ptr, (*block).end_ptr);
        if depth == ResetCheck::Full && free < end && !sanitizer::active() {
            let len = end as usize - free as usize;
            sanitizer::open(free, len);
            let ghosts = sink.as_deref().map(|s| &s.ghosts[..]);
            check_unused(ctx, block, free, end, found_at, out, ghosts);
            sanitizer::close(free, len);
        }
    }
}

/// Checks one walked chunk of `ctx`: its record, and the redzones of a live chunk or the pattern
/// of a free one. Returns its record (as read, valid or not).
///
/// # Safety
/// `w` must be a chunk a walk of a sane block of the live context `ctx` decoded.
unsafe fn verify_chunk(
    ctx: *mut ContextHeader,
    w: &Walked,
    found_at: &str,
    out: &mut Vec<Report>,
) -> DebugRecord {
    let (data, cap) = (w.data, w.cap);
    // SAFETY: the prefix and the chunk's capacity lie in its block (caller); each region is
    // opened around its check.
    unsafe {
        // The record and front redzone, open for this chunk's checks.
        let meta = w.start.add(CHUNK_HEADER_SIZE);
        sanitizer::open(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
        let rec = DebugRecord::load(record_ptr(data));
        let front_ok = intact(front_redzone(data), FRONT_REDZONE, REDZONE_BYTE);
        if !rec.is_valid() {
            out.push(record_damage(ctx, data, found_at));
        } else if rec.state == STATE_LIVE {
            // Only the rear redzone: the requested bytes are the program's.
            let req = (rec.requested as usize).min(cap);
            sanitizer::open(data.add(req), cap - req);
            if !(front_ok && intact(data.add(req), cap - req, REDZONE_BYTE)) {
                check_live(ctx, data, &rec, cap, found_at, out);
            }
            sanitizer::close(data.add(req), cap - req);
        } else {
            let link = (*ctx).kind.free_link().min(cap);
            sanitizer::open(data, cap);
            if !(front_ok && intact(data.add(link), cap - link, FREED_BYTE)) {
                check_free(ctx, data, &rec, cap, link, found_at, out);
            }
            sanitizer::close(data, cap);
        }
        sanitizer::close(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
        rec
    }
}

/// Writes the patterns back over every redzone, free chunk and unused space of `ctx` (after a
/// check reported damage), so that each damage is reported once: a later reset, delete or check
/// finds only new damage. Stops in a block at a header or record that does not decode, which
/// cannot be restored.
///
/// # Safety
/// `ctx` must be a live context of this thread whose block list was found sane.
pub(crate) unsafe fn restore_patterns(ctx: *mut ContextHeader) {
    // SAFETY: as `verify_block`'s walk; each range written lies in its chunk or the block's
    // unused space, opened around the write, and a live chunk's requested bytes are not touched.
    unsafe {
        let mut block = (*ctx).blocks;
        while !block.is_null() {
            if header_agrees(ctx, block) != Some(true) {
                return; // a damaged block header: the list cannot be trusted
            }
            let (free, end) = ((*block).free_ptr, (*block).end_ptr);
            let link = (*ctx).kind.free_link();
            let _ = kinds::walk_block((*ctx).kind, block, |w| restore_chunk(w, link));
            let len = end as usize - free as usize;
            sanitizer::open(free, len);
            fill(free, len, FREED_BYTE);
            sanitizer::close(free, len);
            block = (*block).next;
        }
    }
}

/// Writes the patterns back over a walked chunk's front redzone and its rear redzone (live) or
/// freed bytes past its first `link` (free); breaks the walk at a record that does not decode.
///
/// # Safety
/// `w` must be a chunk a walk of a sane block decoded.
unsafe fn restore_chunk(w: &Walked, link: usize) -> ControlFlow<()> {
    let (data, cap) = (w.data, w.cap);
    // SAFETY: the prefix and capacity lie in the chunk's block (caller), opened around writes.
    unsafe {
        let meta = w.start.add(CHUNK_HEADER_SIZE);
        sanitizer::open(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
        let rec = DebugRecord::load(record_ptr(data));
        if rec.is_valid() {
            fill(front_redzone(data), FRONT_REDZONE, REDZONE_BYTE);
            let (from, byte) = if rec.state == STATE_LIVE {
                ((rec.requested as usize).min(cap), REDZONE_BYTE)
            } else {
                (link.min(cap), FREED_BYTE)
            };
            sanitizer::open(data.add(from), cap - from);
            fill(data.add(from), cap - from, byte);
            sanitizer::close(data.add(from), cap - from);
        }
        sanitizer::close(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
        if rec.is_valid() {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }
}

/// A report for a chunk whose debug record does not check out.
///
/// # Safety
/// `data` must be a chunk of the live context `ctx` whose prefix is open.
#[cold]
#[inline(never)]
unsafe fn record_damage(ctx: *mut ContextHeader, data: *mut u8, found_at: &str) -> Report {
    let range = (
        -((FRONT_REDZONE + RECORD_SIZE) as isize),
        -(FRONT_REDZONE as isize),
    );
    // SAFETY: `ctx` is live and the record, in the open prefix, readable (caller).
    unsafe {
        Report::at(BugClass::CorruptHeader, found_at)
            .context(ctx)
            .chunk(data as usize, None)
            .damage(record_ptr(data) as *const u8, range, 0)
            .detail(
                "the chunk's debug record was overwritten (an underrun past its front redzone?)",
            )
    }
}

/// A report for a chunk header that does not decode: `wrong-context` when its offset leads to a
/// block of another context, else `corrupt-header`.
///
/// # Safety
/// `data`'s header must be readable; `ctx` live.
pub(crate) unsafe fn header_damage(
    ctx: *mut ContextHeader,
    data: *mut u8,
    offset: usize,
    found_at: &str,
) -> Report {
    let named = chunk::chunk_of(data).wrapping_sub(offset) as usize;
    let (class, detail) = match blocks::lookup(named) {
        blocks::Lookup::Found {
            start, ctx: other, ..
        } if start == named && other != ctx => (
            BugClass::WrongContext,
            "the chunk's header names a block of another context".to_owned(),
        ),
        _ => (
            BugClass::CorruptHeader,
            "the chunk's header word was overwritten".to_owned(),
        ),
    };
    let header = chunk::chunk_of(data);
    let range = (-(CHUNK_PREFIX as isize), -(CHUNK_PREFIX as isize) + 8);
    sanitizer::open(header, CHUNK_HEADER_SIZE);
    // SAFETY: `ctx` is live and the header word readable (caller), and open.
    let mut r = unsafe {
        Report::at(class, found_at)
            .context(ctx)
            .chunk(data as usize, None)
            .damage(header, range, 0)
            .detail(detail)
    };
    sanitizer::close(header, CHUNK_HEADER_SIZE);
    r.expected.clear();
    r
}

const _: () = assert!(BLOCK_HEADER_SIZE % 16 == 0);

#[cfg(test)]
mod tests {
    //! The word-wise kernels against byte-by-byte references, over every length and alignment a
    //! chunk's ranges can have and every single damaged byte.

    use super::*;

    const PAT: u8 = 0x7F;
    const PUT: u8 = 0xA5;

    /// A buffer with guard bytes around `[OFF + align, OFF + align + len)`.
    const OFF: usize = 16;

    /// Guard byte around the range under test.
    const GUARD: u8 = 0x11;

    fn buffer(align: usize, len: usize) -> Vec<u8> {
        let mut b = vec![GUARD; OFF + align + len + OFF];
        b[OFF + align..OFF + align + len].fill(PAT);
        b
    }

    /// Whether every byte of `b` outside `[at, at + len)` is still a guard byte.
    fn guards_intact(b: &[u8], at: usize, len: usize) -> bool {
        b[..at].iter().chain(&b[at + len..]).all(|&x| x == GUARD)
    }

    #[test]
    fn intact_matches_a_byte_loop() {
        for align in 0..8 {
            for len in 0..100 {
                let mut b = buffer(align, len);
                let at = OFF + align;
                // SAFETY: the range lies in `b`.
                let ok = unsafe { intact(b.as_ptr().add(at), len, PAT) };
                assert!(ok, "{align} {len}");
                for bad in 0..len {
                    b[at + bad] = PAT ^ 1;
                    // SAFETY: as above.
                    let ok = unsafe { intact(b.as_ptr().add(at), len, PAT) };
                    assert!(!ok, "align {align} len {len} damage at {bad} not seen");
                    // SAFETY: as above.
                    let range = unsafe { damaged(b.as_ptr().add(at), len, PAT) };
                    assert_eq!(range, Some((bad, bad)));
                    b[at + bad] = PAT;
                }
            }
        }
    }

    /// Ranges long enough for the page compare, of each pattern it knows and of another byte.
    #[test]
    fn long_ranges_match_a_byte_loop() {
        for byte in [FREED_BYTE, REDZONE_BYTE, 0x33] {
            for len in [
                LONG,
                LONG + 7,
                PATTERN_PAGE,
                PATTERN_PAGE + 1,
                3 * PATTERN_PAGE + 5,
            ] {
                let mut b = vec![byte; len + 1];
                let p = b.as_ptr().wrapping_add(1);
                // SAFETY: `len` bytes from `p` lie in `b`.
                assert!(unsafe { intact(p, len, byte) }, "{byte:#x} {len}");
                for bad in [
                    0,
                    1,
                    LONG - 1,
                    len / 2,
                    PATTERN_PAGE - 1,
                    PATTERN_PAGE,
                    len - 1,
                ] {
                    if bad >= len {
                        continue;
                    }
                    b[1 + bad] = byte ^ 1;
                    // SAFETY: as above.
                    let found = unsafe { (intact(p, len, byte), damaged(p, len, byte)) };
                    assert_eq!(found, (false, Some((bad, bad))), "{byte:#x} {len} {bad}");
                    b[1 + bad] = byte;
                }
            }
        }
    }

    #[test]
    fn check_and_fill_fills_exactly_the_intact_prefix() {
        for align in 0..8 {
            for len in 0..100 {
                let mut b = buffer(align, len);
                let at = OFF + align;
                // SAFETY: the range lies in `b`.
                let r = unsafe { check_and_fill(b.as_mut_ptr().add(at), len, PAT, PUT) };
                assert_eq!(r, Ok(()));
                assert!(b[at..at + len].iter().all(|&x| x == PUT));
                assert!(guards_intact(&b, at, len));
                for bad in 0..len {
                    let mut b = buffer(align, len);
                    b[at + bad] = 0;
                    // SAFETY: as above.
                    let r = unsafe { check_and_fill(b.as_mut_ptr().add(at), len, PAT, PUT) };
                    let from = r.expect_err("damage not seen");
                    assert!(from <= bad, "align {align} len {len}: {from} > {bad}");
                    // The contract: filled before `from`, untouched from there on.
                    assert!(b[at..at + from].iter().all(|&x| x == PUT));
                    let rest = &b[at + from..at + len];
                    assert!(rest
                        .iter()
                        .enumerate()
                        .all(|(i, &x)| x == if from + i == bad { 0 } else { PAT }));
                }
            }
        }
    }

    #[test]
    fn fills_write_exactly_their_range() {
        for len in 0..600 {
            let mut b = buffer(0, len);
            // SAFETY: the range lies in `b`.
            unsafe { fill(b.as_mut_ptr().add(OFF), len, PUT) };
            assert!(b[OFF..OFF + len].iter().all(|&x| x == PUT), "{len}");
            assert!(guards_intact(&b, OFF, len));
        }
        for cap in (16..=512).step_by(16) {
            for size in 0..=cap {
                let mut b = vec![u64::from_ne_bytes([GUARD; 8]); (OFF + cap + OFF) / 8];
                let p = b.as_mut_ptr() as *mut u8;
                // SAFETY: `p + OFF` has `cap` bytes and a guard after them.
                let bytes = unsafe {
                    fill_live(p.add(OFF), size, cap, PUT, PAT);
                    core::slice::from_raw_parts(p, OFF + cap + OFF)
                };
                let data = &bytes[OFF..OFF + cap];
                assert!(data[..size].iter().all(|&x| x == PUT), "{cap} {size}");
                assert!(data[size..].iter().all(|&x| x == PAT), "{cap} {size}");
                assert!(guards_intact(bytes, OFF, cap));
            }
        }
    }
}
