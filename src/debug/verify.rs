//! Verification: comparing memory with the patterns it should hold, and the heap-consistency walk
//! of a whole context (PostgreSQL's AllocSetCheck, talc's heap check).
//!
//! Three depths of checking, chosen for cost:
//! - **per chunk**, always: `pfree` and `repalloc` check the chunk's own redzones; a chunk taken from
//!   a freelist is checked for writes since its free; space carved from a block is checked for
//!   writes since it was released or since the block was taken. These cost time proportional to
//!   the chunk, which the operation pays anyway to fill its pattern.
//! - **reset walk** ([`ResetCheck::Chunks`], the default at reset): every chunk's header and record,
//!   every live chunk's redzones, every free chunk's pattern. Proportional to the bytes in use.
//! - **full walk** ([`ResetCheck::Full`]; always at delete and on [`crate::MemoryContext::check`]):
//!   also every block's unused space. Proportional to the bytes the context holds, which is why it
//!   is not the default at every per-row reset: a mostly empty 8 KiB keeper block compared on every
//!   row would dominate the row's cost. A write into unused space is still caught by the per-chunk
//!   check when the space is next carved, and by the next delete or check.
//!
//! Under Valgrind or ASan the bytes checked here are closed to the program (see
//! `hooks::sanitizer`). The comparisons (`check_live`, `check_free`, `check_unused`) read what their
//! caller opened; the walks below open each region around its check and close it again, and never
//! touch a live chunk's requested bytes, whose state (defined or not) belongs to the program.

use crate::aset::{self, Block, BLOCK_HEADER_SIZE, NUM_FREELISTS};
use crate::chunk::{self, ChunkKind, CHUNK_HEADER_SIZE, CHUNK_PREFIX};
use crate::context::ContextHeader;

use super::blocks::{self, Ghost};
use super::hooks::sanitizer;
use super::layout::{
    front_redzone, record_ptr, DebugRecord, FREED_BYTE, FRONT_REDZONE, RECORD_SIZE, REDZONE_BYTE,
    STATE_FREE, STATE_LIVE,
};
use super::report::{BugClass, Report};
use super::stack::StackId;

/// How much a reset verifies; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCheck {
    /// Headers, live chunks' redzones and free chunks' patterns.
    Chunks,
    /// Also every block's unused space.
    Full,
}

/// Bytes of a damaged region shown in a report.
const SHOWN_BYTES: usize = 64;

/// The first and last byte of `[ptr, ptr + len)` that differ from `byte`, or `None`.
///
/// # Safety
/// The range must be readable.
pub(crate) unsafe fn damaged(ptr: *const u8, len: usize, byte: u8) -> Option<(usize, usize)> {
    let word = u64::from_ne_bytes([byte; 8]);
    let mut i = 0;
    // SAFETY: every read is inside `[ptr, ptr + len)`, which the caller guarantees readable.
    unsafe {
        // The common case is an intact region: compare a word at a time, without bounds checks.
        while i + 8 <= len {
            if (ptr.add(i) as *const u64).read_unaligned() != word {
                break;
            }
            i += 8;
        }
        while i < len && *ptr.add(i) == byte {
            i += 1;
        }
        if i == len {
            return None;
        }
        let mut last = len - 1;
        while *ptr.add(last) == byte {
            last -= 1;
        }
        Some((i, last))
    }
}

/// Name and path from Top of a context.
///
/// # Safety
/// `ctx` must be a live header.
pub(crate) unsafe fn context_names(ctx: *mut ContextHeader) -> (String, Vec<String>) {
    let mut path = Vec::new();
    let mut c = ctx;
    // SAFETY: ancestors of a live context are live.
    unsafe {
        while !c.is_null() {
            path.push((*c).name().to_owned());
            c = (*c).parent;
        }
    }
    path.reverse();
    (path.last().cloned().unwrap_or_default(), path)
}

/// What a report says about the memory it concerns.
pub(crate) struct Damage {
    /// The class.
    pub(crate) class: BugClass,
    /// Chunk data address, if a chunk is involved.
    pub(crate) chunk: Option<usize>,
    /// Its requested size.
    pub(crate) requested: Option<usize>,
    /// Where the damaged bytes start.
    pub(crate) at: *const u8,
    /// Damaged range relative to the chunk data (or block start).
    pub(crate) range: (isize, isize),
    /// The byte that should be there.
    pub(crate) expected: u8,
    /// Allocation stack.
    pub(crate) alloc_stack: u32,
    /// Free stack.
    pub(crate) free_stack: u32,
}

/// Builds a report from a damage description.
///
/// # Safety
/// `ctx` must be live (or null for a pointer no context owns); the damaged bytes readable.
pub(crate) unsafe fn make_report(
    ctx: *mut ContextHeader,
    d: Damage,
    found_at: &str,
    detail: String,
) -> Report {
    let len = (d.range.1 - d.range.0).max(0) as usize;
    let shown = len.min(SHOWN_BYTES);
    // SAFETY: the damaged bytes are readable (caller).
    let found = unsafe { core::slice::from_raw_parts(d.at, shown).to_vec() };
    let (context, context_path) = if ctx.is_null() {
        (String::new(), Vec::new())
    } else {
        // SAFETY: live context (caller).
        unsafe { context_names(ctx) }
    };
    Report {
        class: d.class,
        context,
        context_path,
        chunk: d.chunk,
        requested: d.requested,
        range: Some(d.range),
        expected: vec![d.expected; shown],
        found,
        found_at: found_at.to_owned(),
        detail,
        alloc_stack: StackId::from_raw(d.alloc_stack),
        free_stack: StackId::from_raw(d.free_stack),
    }
}

/// A report without a damaged range (double free, invalid pointer, wrong context).
///
/// # Safety
/// `ctx` must be live or null.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn plain_report(
    class: BugClass,
    ctx: *mut ContextHeader,
    chunk: Option<usize>,
    requested: Option<usize>,
    alloc_stack: u32,
    free_stack: u32,
    found_at: &str,
    detail: String,
) -> Report {
    let (context, context_path) = if ctx.is_null() {
        (String::new(), Vec::new())
    } else {
        // SAFETY: live context (caller).
        unsafe { context_names(ctx) }
    };
    Report {
        class,
        context,
        context_path,
        chunk,
        requested,
        range: None,
        expected: Vec::new(),
        found: Vec::new(),
        found_at: found_at.to_owned(),
        detail,
        alloc_stack: StackId::from_raw(alloc_stack),
        free_stack: StackId::from_raw(free_stack),
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
            let d = Damage {
                class: BugClass::Underrun,
                chunk: Some(data as usize),
                requested: Some(req),
                at: front.add(a),
                range: (
                    a as isize - FRONT_REDZONE as isize,
                    b as isize + 1 - FRONT_REDZONE as isize,
                ),
                expected: REDZONE_BYTE,
                alloc_stack: rec.alloc_stack,
                free_stack: 0,
            };
            out.push(make_report(
                ctx,
                d,
                found_at,
                "bytes before the chunk's data were written (front redzone)".into(),
            ));
        }
        if let Some((a, b)) = damaged(data.add(req), cap - req, REDZONE_BYTE) {
            let d = Damage {
                class: BugClass::Overrun,
                chunk: Some(data as usize),
                requested: Some(req),
                at: data.add(req + a),
                range: ((req + a) as isize, (req + b + 1) as isize),
                expected: REDZONE_BYTE,
                alloc_stack: rec.alloc_stack,
                free_stack: 0,
            };
            out.push(make_report(
                ctx,
                d,
                found_at,
                format!("bytes past the requested {req} were written (rear redzone)"),
            ));
        }
    }
}

/// Checks a free chunk's pattern (all but its freelist link word) and front redzone.
///
/// # Safety
/// `data` must be a free chunk of the live context `ctx` with capacity `cap` and record `rec`;
/// its front redzone and data readable (opened by the caller under a sanitizer).
pub(crate) unsafe fn check_free(
    ctx: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    cap: usize,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    let link = core::mem::size_of::<usize>();
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
                let d = Damage {
                    class: BugClass::WriteAfterFree,
                    chunk: Some(data as usize),
                    requested: Some(rec.requested as usize),
                    at: start.add(a),
                    range: (rel + a as isize, rel + b as isize + 1),
                    expected: byte,
                    alloc_stack: rec.alloc_stack,
                    free_stack: rec.free_stack,
                };
                out.push(make_report(
                    ctx,
                    d,
                    found_at,
                    "a freed chunk was written through a stale pointer".into(),
                ));
                return;
            }
        }
    }
}

/// Checks that `[from, to)` inside `block` still holds the released/unused pattern; attributes
/// damage to the chunk a reset released there (write-after-free) or to nobody (wild write).
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
) {
    let len = to as usize - from as usize;
    // SAFETY: the range lies in the block (caller).
    unsafe {
        let Some((a, b)) = damaged(from, len, FREED_BYTE) else {
            return;
        };
        let first = from as usize + a;
        let last = from as usize + b;
        out.push(match blocks::ghost_at(block as usize, first) {
            Some(g) => ghost_report(ctx, &g, first, last.min(g.end - 1), found_at),
            None => {
                let d = Damage {
                    class: BugClass::WildWrite,
                    chunk: None,
                    requested: None,
                    at: first as *const u8,
                    range: (
                        (first - block as usize) as isize,
                        (last + 1 - block as usize) as isize,
                    ),
                    expected: FREED_BYTE,
                    alloc_stack: 0,
                    free_stack: 0,
                };
                make_report(
                    ctx,
                    d,
                    found_at,
                    "unused block space, owned by no chunk, was written".into(),
                )
            }
        });
    }
}

/// A write-after-free report for damage in memory a reset released.
///
/// # Safety
/// `first..=last` must be readable and inside `g`.
unsafe fn ghost_report(
    ctx: *mut ContextHeader,
    g: &Ghost,
    first: usize,
    last: usize,
    found_at: &str,
) -> Report {
    let d = Damage {
        class: BugClass::WriteAfterFree,
        chunk: Some(g.data),
        requested: Some(g.requested),
        at: first as *const u8,
        range: (
            first as isize - g.data as isize,
            last as isize + 1 - g.data as isize,
        ),
        expected: FREED_BYTE,
        alloc_stack: g.alloc_stack,
        free_stack: g.free_stack,
    };
    // SAFETY: per the contract.
    unsafe {
        make_report(
            ctx,
            d,
            found_at,
            "memory released by a reset was written through a pointer kept past it".into(),
        )
    }
}

/// Walks every block and chunk of `ctx`, appending findings to `out`. Never modifies memory.
///
/// # Safety
/// `ctx` must be a live context of this thread.
pub(crate) unsafe fn verify_context(
    ctx: *mut ContextHeader,
    depth: ResetCheck,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    // SAFETY: walking the context's own blocks; every read is bounded by the block's extent,
    // which is checked against the registry before the block's contents are trusted.
    unsafe {
        let mut block = (*ctx).set.blocks;
        while !block.is_null() {
            if !block_header_sane(ctx, block, found_at, out) {
                return; // the list itself cannot be trusted past this block
            }
            verify_block(ctx, block, depth, found_at, out);
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
    // SAFETY: a block on the list was allocated by us and is at least a header long.
    unsafe {
        let first = Block::first_chunk(block);
        let ok = match blocks::lookup(block as usize) {
            blocks::Lookup::Found {
                start,
                end,
                ctx: owner,
            } => {
                start == block as usize
                    && owner == ctx
                    && (*block).context == ctx
                    && (*block).end_ptr as usize == end
                    && (*block).free_ptr >= first
                    && (*block).free_ptr <= (*block).end_ptr
            }
            blocks::Lookup::Unavailable => true,
            blocks::Lookup::NotFound => false,
        };
        if !ok {
            out.push(plain_report(
                BugClass::WildWrite,
                ctx,
                None,
                None,
                0,
                0,
                found_at,
                format!("the header of block {block:p} was overwritten"),
            ));
        }
        ok
    }
}

/// Walks one block's chunks.
///
/// # Safety
/// `block` must be a sane block of the live context `ctx`.
unsafe fn verify_block(
    ctx: *mut ContextHeader,
    block: *mut Block,
    depth: ResetCheck,
    found_at: &str,
    out: &mut Vec<Report>,
) {
    // SAFETY: every chunk start is checked to lie before the block's free pointer before its
    // header is read; footprints come from validated headers.
    unsafe {
        let free = (*block).free_ptr;
        let mut c = Block::first_chunk(block);
        while c < free {
            let data = chunk::data_of(c);
            let hdr = chunk::read_header(data);
            let offset_ok = hdr.offset() == c as usize - block as usize;
            let kind_ok = ChunkKind::from_id(hdr.kind_id()) == Some(ChunkKind::AllocSet);
            let (cap, fp) = if hdr.is_external() {
                let cap = (*block).end_ptr as usize - data as usize;
                (cap, CHUNK_PREFIX + cap)
            } else if (hdr.value() as usize) < NUM_FREELISTS {
                let cap = aset::class_size(hdr.value() as usize);
                (cap, chunk::footprint(cap))
            } else {
                (0, 0)
            };
            if !offset_ok || !kind_ok || fp == 0 || c as usize + fp > (*block).end_ptr as usize {
                out.push(header_damage(ctx, data, hdr.offset(), found_at));
                return;
            }
            // The record and front redzone, open for this chunk's checks.
            let meta = c.add(CHUNK_HEADER_SIZE);
            sanitizer::open(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
            let rec = *record_ptr(data);
            if !rec.is_valid() {
                let d = Damage {
                    class: BugClass::CorruptHeader,
                    chunk: Some(data as usize),
                    requested: None,
                    at: record_ptr(data) as *const u8,
                    range: (
                        -((FRONT_REDZONE + super::layout::RECORD_SIZE) as isize),
                        -(FRONT_REDZONE as isize),
                    ),
                    expected: 0,
                    alloc_stack: 0,
                    free_stack: 0,
                };
                out.push(make_report(
                    ctx,
                    d,
                    found_at,
                    "the chunk's debug record was overwritten (an underrun past its front redzone?)"
                        .into(),
                ));
            } else if rec.state == STATE_LIVE {
                // Only the rear redzone: the requested bytes are the program's.
                let req = (rec.requested as usize).min(cap);
                sanitizer::open(data.add(req), cap - req);
                check_live(ctx, data, &rec, cap, found_at, out);
                sanitizer::close(data.add(req), cap - req);
            } else if rec.state == STATE_FREE {
                sanitizer::open(data, cap);
                check_free(ctx, data, &rec, cap, found_at, out);
                sanitizer::close(data, cap);
            }
            sanitizer::close(meta, CHUNK_PREFIX - CHUNK_HEADER_SIZE);
            c = c.add(fp);
        }
        if depth == ResetCheck::Full && free < (*block).end_ptr {
            let len = (*block).end_ptr as usize - free as usize;
            sanitizer::open(free, len);
            check_unused(ctx, block, free, (*block).end_ptr, found_at, out);
            sanitizer::close(free, len);
        }
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
    let d = Damage {
        class,
        chunk: Some(data as usize),
        requested: None,
        at: chunk::chunk_of(data),
        range: (-(CHUNK_PREFIX as isize), -(CHUNK_PREFIX as isize) + 8),
        expected: 0,
        alloc_stack: 0,
        free_stack: 0,
    };
    let header = chunk::chunk_of(data);
    sanitizer::open(header, CHUNK_HEADER_SIZE);
    // SAFETY: the header word is readable (caller), and open.
    let mut r = unsafe { make_report(ctx, d, found_at, detail) };
    sanitizer::close(header, CHUNK_HEADER_SIZE);
    r.expected.clear();
    r
}

/// Collects the chunks of a keeper block as ghosts, into `ghosts`, before a reset releases them.
///
/// # Safety
/// `block` must be a sane block of a live context.
pub(crate) unsafe fn collect_ghosts(block: *mut Block, free_stack: u32, ghosts: &mut Vec<Ghost>) {
    // SAFETY: as in `verify_block`; stops at the first header that does not decode.
    unsafe {
        let free = (*block).free_ptr;
        let mut c = Block::first_chunk(block);
        while c < free {
            let data = chunk::data_of(c);
            let hdr = chunk::read_header(data);
            if hdr.is_external() || hdr.value() as usize >= NUM_FREELISTS {
                break;
            }
            let cap = aset::class_size(hdr.value() as usize);
            let fp = chunk::footprint(cap);
            let meta = c.add(CHUNK_HEADER_SIZE);
            sanitizer::open(meta, RECORD_SIZE);
            let rec = *record_ptr(data);
            sanitizer::close(meta, RECORD_SIZE);
            if rec.state == STATE_LIVE || rec.state == STATE_FREE {
                ghosts.push(Ghost {
                    start: c as usize,
                    data: data as usize,
                    end: data as usize + cap,
                    requested: rec.requested as usize,
                    alloc_stack: rec.alloc_stack,
                    free_stack: if rec.state == STATE_FREE {
                        rec.free_stack
                    } else {
                        free_stack
                    },
                });
            }
            c = c.add(fp);
        }
    }
}

const _: () = assert!(BLOCK_HEADER_SIZE % 16 == 0);
