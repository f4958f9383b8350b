//! The debug build's implementation of the allocator's hook points (see `crate::hooks`).
//!
//! Each hook keeps the chunk layout of `layout.rs` true: records written on carve, patterns filled
//! on carve, free and reset, and verified where memory changes hands — the chunk's own redzones at
//! pfree and repalloc, a freed chunk's pattern when the freelist hands it out again, released space
//! when it is carved again, and the whole context at reset, delete and check. Findings made in the
//! middle of an allocator operation are queued and raised when the operation is done, so a panic
//! never leaves the allocator's lists half-updated.

use core::ptr;

use crate::aset::{self, Block};
use crate::chunk::{self, align_up, ChunkKind, CHUNK_PREFIX};
use crate::context::ContextHeader;

use super::blocks::{self, Lookup};
use super::layout::{
    front_redzone, record_ptr, DebugRecord, FREED_BYTE, FRESH_BYTE, FRONT_REDZONE, REDZONE_BYTE,
    STATE_FREE, STATE_LIVE,
};
use super::report::{self, BugClass, Report};
use super::settings;
use super::stack;
use super::verify::{self, ResetCheck};

/// Frames of the allocator itself between the user's call and the capture; trimmed again by
/// symbol at report time, this only saves depth.
const CAPTURE_SKIP: usize = 1;

/// Data bytes a request of `size` needs: rounded to 8, plus the rear redzone.
#[inline(always)]
pub(crate) fn class_request(size: usize) -> usize {
    align_up(size, 8) + settings::redzone()
}

/// The freelist link lives in the free chunk's first word; nothing to open natively (the Valgrind
/// and ASan layers open it).
#[inline(always)]
pub(crate) fn freelist_open(data: *mut u8) {
    let _ = data;
}

/// See [`freelist_open`].
#[inline(always)]
pub(crate) fn freelist_close(data: *mut u8) {
    let _ = data;
}

/// Writes a live chunk's record, redzones and fresh pattern.
///
/// # Safety
/// `data` must be a chunk of capacity `cap` just handed out.
unsafe fn setup_live(data: *mut u8, size: usize, cap: usize) {
    let alloc = stack::capture(CAPTURE_SKIP).as_raw();
    // SAFETY: the prefix and `cap` data bytes belong to the chunk (caller).
    unsafe {
        record_ptr(data).write(DebugRecord::new(STATE_LIVE, size, alloc, 0));
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        ptr::write_bytes(data, FRESH_BYTE, size);
        ptr::write_bytes(data.add(size), REDZONE_BYTE, cap - size);
    }
}

/// A chunk was carved from a block's free space: check the space was untouched since it was
/// released (or since the block was taken), then set the chunk up.
pub(crate) fn chunk_carved(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    let mut found = Vec::new();
    // SAFETY: the chunk was just carved from `ctx`'s block; its bytes are the allocator's.
    unsafe {
        let hdr = chunk::read_header(data);
        if !hdr.is_external() {
            let chunk = chunk::chunk_of(data);
            let block = chunk.sub(hdr.offset()) as *mut Block;
            verify::check_unused(ctx, block, chunk.add(8), data.add(cap), "reuse", &mut found);
        }
        setup_live(data, size, cap);
    }
    report::raise_all(found);
}

/// A chunk was taken from a freelist: check nothing wrote it since its free.
pub(crate) fn chunk_reused(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    let mut found = Vec::new();
    // SAFETY: `data` was a free chunk of `ctx` with capacity `cap`.
    unsafe {
        let rec = *record_ptr(data);
        if rec.is_valid() && rec.state == STATE_FREE {
            verify::check_free(ctx, data, &rec, cap, "reuse", &mut found);
        } else {
            found.push(verify::header_damage(
                ctx,
                data,
                chunk::read_header(data).offset(),
                "reuse",
            ));
        }
        setup_live(data, size, cap);
    }
    report::raise_all(found);
}

/// Leftover block space became a free chunk.
pub(crate) fn leftover_carved(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let mut found = Vec::new();
    // SAFETY: as `chunk_carved`.
    unsafe {
        let chunk = chunk::chunk_of(data);
        let block = chunk.sub(chunk::read_header(data).offset()) as *mut Block;
        verify::check_unused(ctx, block, chunk.add(8), data.add(cap), "reuse", &mut found);
        record_ptr(data).write(DebugRecord::new(STATE_FREE, 0, 0, 0));
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        ptr::write_bytes(data, FREED_BYTE, cap);
    }
    report::defer_all(found);
}

/// A live chunk (already validated) is being freed: record the free and clobber it.
pub(crate) fn chunk_freed(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let _ = ctx;
    let free = stack::capture(CAPTURE_SKIP).as_raw();
    // SAFETY: `data` is a live chunk of capacity `cap` being freed.
    unsafe {
        let rec = &mut *record_ptr(data);
        *rec = DebugRecord::new(STATE_FREE, rec.requested as usize, rec.alloc_stack, free);
        ptr::write_bytes(data, FREED_BYTE, cap);
    }
}

/// A live chunk was resized in place.
pub(crate) fn chunk_resized(
    ctx: *mut ContextHeader,
    data: *mut u8,
    old: usize,
    new: usize,
    cap: usize,
) {
    let _ = (ctx, old);
    // SAFETY: `data` is a live chunk of capacity `cap` >= `new`.
    unsafe {
        let rec = &mut *record_ptr(data);
        let was = rec.requested as usize;
        *rec = DebugRecord::new(STATE_LIVE, new, rec.alloc_stack, 0);
        if new > was {
            ptr::write_bytes(data.add(was), FRESH_BYTE, new - was);
        }
        ptr::write_bytes(data.add(new), REDZONE_BYTE, cap - new);
    }
}

/// A chunk with a block of its own is about to move: its block leaves the registry.
pub(crate) fn large_chunk_moving(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let _ = (ctx, cap);
    // SAFETY: `data` is a live external chunk; its offset leads to its block.
    let block = unsafe { chunk::chunk_of(data).sub(chunk::read_header(data).offset()) };
    blocks::remove(block as usize);
}

/// A chunk with a block of its own moved (or did not): register the block again, and set the
/// record and redzone for the new size.
pub(crate) fn large_chunk_moved(
    ctx: *mut ContextHeader,
    block: *mut Block,
    data: *mut u8,
    size: usize,
    cap: usize,
    failed: bool,
) {
    // SAFETY: `block` is a live block of `ctx` holding the chunk `data` of capacity `cap`.
    unsafe {
        blocks::insert(block as usize, (*block).end_ptr as usize, ctx);
        if failed {
            return;
        }
        let rec = &mut *record_ptr(data);
        let was = rec.requested as usize;
        *rec = DebugRecord::new(STATE_LIVE, size, rec.alloc_stack, 0);
        if size > was {
            ptr::write_bytes(data.add(was), FRESH_BYTE, size - was);
        }
        ptr::write_bytes(data.add(size), REDZONE_BYTE, cap - size);
    }
}

/// A block was taken: register it; fill a shared block's space with the unused pattern.
pub(crate) fn block_allocated(ctx: *mut ContextHeader, block: *mut Block, external: bool) {
    // SAFETY: `block` was just allocated for `ctx`, its header written.
    unsafe {
        blocks::insert(block as usize, (*block).end_ptr as usize, ctx);
        if !external {
            let first = Block::first_chunk(block);
            ptr::write_bytes(
                first,
                FREED_BYTE,
                (*block).end_ptr as usize - first as usize,
            );
        }
    }
}

/// A block goes back to the system.
pub(crate) fn block_freed(ctx: *mut ContextHeader, block: *mut Block) {
    let _ = ctx;
    blocks::remove(block as usize);
}

/// A context is about to be reset: verify it, remember what the keeper's chunks were, and clobber
/// the keeper's used space.
pub(crate) fn context_resetting(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live; its blocks are walked before any is freed.
    unsafe {
        let mut found = Vec::new();
        let depth = if (*ctx).busy {
            settings::reset_check()
        } else {
            ResetCheck::Chunks
        };
        let at = format!("reset of \"{}\"", (*ctx).name());
        verify::verify_context(ctx, depth, &at, &mut found);
        report::defer_all(found);
        let keeper = (*ctx).set.keeper;
        if keeper.is_null() {
            return;
        }
        let reset_stack = stack::capture(CAPTURE_SKIP).as_raw();
        blocks::set_ghosts(keeper as usize, verify::collect_ghosts(keeper, reset_stack));
        let first = Block::first_chunk(keeper);
        ptr::write_bytes(
            first,
            FREED_BYTE,
            (*keeper).free_ptr as usize - first as usize,
        );
    }
}

/// A context was reset.
pub(crate) fn context_reset_done(ctx: *mut ContextHeader) {
    let _ = ctx;
}

/// A context was created.
pub(crate) fn context_created(ctx: *mut ContextHeader) {
    let _ = ctx;
}

/// A context is about to be deleted: full verification.
pub(crate) fn context_deleting(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live until the delete finishes.
    unsafe {
        let mut found = Vec::new();
        let at = format!("delete of \"{}\"", (*ctx).name());
        verify::verify_context(ctx, ResetCheck::Full, &at, &mut found);
        report::defer_all(found);
    }
}

/// A user-requested reset finished.
pub(crate) fn context_reset(ctx: *mut ContextHeader) {
    let _ = ctx;
}

/// Raises what the operation queued.
pub(crate) fn raise_pending() {
    report::raise_pending();
}

/// Full verification on demand; returns the number of findings (raised per the policy).
pub(crate) fn check_context(ctx: *mut ContextHeader) -> usize {
    let mut found = Vec::new();
    // SAFETY: `ctx` is live (the caller checked the handle).
    unsafe { verify::verify_context(ctx, ResetCheck::Full, "check", &mut found) };
    let n = found.len();
    report::raise_all(found);
    n
}

/// Validates a pointer before its header is trusted. Returns false when the operation must not go
/// on (the report has been raised; under [`report::Policy::Log`] the operation is skipped).
pub(crate) fn validate_pointer(
    ptr: *mut u8,
    op: &'static str,
    expected: Option<*mut ContextHeader>,
) -> bool {
    match classify(ptr, op, expected) {
        Ok(None) => true,
        Ok(Some(r)) => {
            // A damaged redzone: the chunk itself is sound, so after the report the operation
            // may go on.
            report::raise(r);
            true
        }
        Err(r) => {
            report::raise(r);
            false
        }
    }
}

/// `Ok(None)`: a sound live chunk. `Ok(Some(report))`: a live chunk with damaged redzones.
/// `Err(report)`: not something the operation may touch.
fn classify(
    ptr: *mut u8,
    op: &'static str,
    expected: Option<*mut ContextHeader>,
) -> Result<Option<Report>, Report> {
    let addr = ptr as usize;
    let invalid = |ctx: *mut ContextHeader, detail: String| {
        // SAFETY: `ctx` is null or a registered (live) context.
        Err(unsafe {
            verify::plain_report(
                BugClass::InvalidPointer,
                ctx,
                Some(addr),
                None,
                0,
                0,
                op,
                detail,
            )
        })
    };
    if ptr.is_null() {
        return invalid(ptr::null_mut(), format!("{op} called with a null pointer"));
    }
    let (start, end, owner) = match blocks::lookup(addr) {
        Lookup::Unavailable => return Ok(None),
        Lookup::NotFound => {
            return invalid(
                ptr::null_mut(),
                format!(
                    "{op} called with {ptr:p}, which no context of this thread allocated \
                     (a foreign pointer, or a chunk of another thread's tree)"
                ),
            )
        }
        Lookup::Found { start, end, ctx } => (start, end, ctx),
    };
    let block = start as *mut Block;
    // SAFETY: `block` is a registered block of this thread, so its header is readable, and every
    // address read below is checked to lie inside [start, end) first.
    unsafe {
        let first_data = Block::first_chunk(block) as usize + CHUNK_PREFIX;
        if addr % crate::chunk::CHUNK_ALIGN != 0 || addr < first_data || addr >= end {
            return invalid(owner, interior_detail(block, addr, op));
        }
        let hdr = chunk::read_header(ptr);
        match ChunkKind::from_id(hdr.kind_id()) {
            Some(ChunkKind::AlignedRedirect) => {
                let base = ptr.wrapping_sub(hdr.offset());
                if (base as usize) < first_data || base >= ptr {
                    return Err(verify::header_damage(owner, ptr, hdr.offset(), op));
                }
                return classify(base, op, expected);
            }
            Some(ChunkKind::AllocSet) => {}
            None => {
                return if chunk_starts_at(block, addr) {
                    Err(verify::header_damage(owner, ptr, hdr.offset(), op))
                } else {
                    invalid(owner, interior_detail(block, addr, op))
                }
            }
        }
        let chunk_start = chunk::chunk_of(ptr) as usize;
        if hdr.offset() != chunk_start - start {
            return if chunk_starts_at(block, addr) {
                Err(verify::header_damage(owner, ptr, hdr.offset(), op))
            } else {
                invalid(owner, interior_detail(block, addr, op))
            };
        }
        let cap = if hdr.is_external() {
            end - addr
        } else if (hdr.value() as usize) < aset::NUM_FREELISTS {
            aset::class_size(hdr.value() as usize)
        } else {
            return Err(verify::header_damage(owner, ptr, hdr.offset(), op));
        };
        let rec = *record_ptr(ptr);
        if !rec.is_valid() {
            if !chunk_starts_at(block, addr) {
                return invalid(owner, interior_detail(block, addr, op));
            }
            let mut r = verify::header_damage(owner, ptr, hdr.offset(), op);
            r.class = BugClass::CorruptHeader;
            r.detail = "the chunk's debug record was overwritten".into();
            return Err(r);
        }
        if rec.state == STATE_FREE {
            return Err(verify::plain_report(
                BugClass::DoubleFree,
                owner,
                Some(addr),
                Some(rec.requested as usize),
                rec.alloc_stack,
                rec.free_stack,
                op,
                format!("{op} of a chunk that was already freed"),
            ));
        }
        if let Some(exp) = expected {
            if exp != owner {
                let (exp_name, _) = verify::context_names(exp);
                let mut r = verify::plain_report(
                    BugClass::WrongContext,
                    owner,
                    Some(addr),
                    Some(rec.requested as usize),
                    rec.alloc_stack,
                    0,
                    op,
                    format!(
                        "{op} through context \"{exp_name}\", but the chunk belongs to \"{}\"",
                        (*owner).name()
                    ),
                );
                r.found_at = op.to_owned();
                report::raise(r);
            }
        }
        let mut found = Vec::new();
        verify::check_live(owner, ptr, &rec, cap, op, &mut found);
        let mut it = found.into_iter();
        let first = it.next();
        report::defer_all(it.collect());
        Ok(first)
    }
}

/// Whether a chunk of `block` starts (has its data) exactly at `addr`, walking the block.
///
/// # Safety
/// `block` must be a registered block.
unsafe fn chunk_starts_at(block: *mut Block, addr: usize) -> bool {
    // SAFETY: per the contract; the walk stops at the free pointer or an undecodable header.
    unsafe { chunk_containing(block, addr).is_some_and(|(data, _)| data == addr) }
}

/// The chunk of `block` whose extent holds `addr`: (data address, capacity).
///
/// # Safety
/// `block` must be a registered block.
unsafe fn chunk_containing(block: *mut Block, addr: usize) -> Option<(usize, usize)> {
    // SAFETY: per the contract; headers are validated before their footprint is used.
    unsafe {
        let free = (*block).free_ptr as usize;
        let mut c = Block::first_chunk(block) as usize;
        while c < free {
            let data = c + CHUNK_PREFIX;
            let hdr = chunk::read_header(data as *mut u8);
            if hdr.offset() != c - block as usize {
                return None;
            }
            let cap = if hdr.is_external() {
                (*block).end_ptr as usize - data
            } else if (hdr.value() as usize) < aset::NUM_FREELISTS {
                aset::class_size(hdr.value() as usize)
            } else {
                return None;
            };
            let end = c + CHUNK_PREFIX + cap;
            if addr >= c && addr < end.max(data + 1) {
                return Some((data, cap));
            }
            c = if hdr.is_external() {
                free
            } else {
                c + chunk::footprint(cap)
            };
        }
        None
    }
}

/// Describes where a pointer that is not a chunk start lies in its block.
///
/// # Safety
/// `block` must be a registered block.
unsafe fn interior_detail(block: *mut Block, addr: usize, op: &str) -> String {
    // SAFETY: per the contract.
    match unsafe { chunk_containing(block, addr) } {
        Some((data, _)) => format!(
            "{op} called with {addr:#x}, {} bytes into the chunk at {data:#x} (an interior pointer)",
            addr as isize - data as isize
        ),
        None => format!(
            "{op} called with {addr:#x}, inside block {block:p} but not at a chunk \
             (misaligned, or in unused space)"
        ),
    }
}

/// The requested size of a live chunk.
pub(crate) fn requested_size(data: *mut u8, cap: usize) -> usize {
    // SAFETY: `data` is a live chunk (validated by the caller).
    let rec = unsafe { *record_ptr(data) };
    if rec.is_valid() {
        rec.requested as usize
    } else {
        cap
    }
}

/// An aligned-redirect header was written inside `base`: move the base chunk's rear redzone to
/// right after the aligned region, so an overrun of it is caught.
pub(crate) fn redirect_written(base: *mut u8, aligned: *mut u8, size: usize) {
    // SAFETY: `base` is a live chunk holding `[aligned, aligned + size)`.
    unsafe {
        let hdr = chunk::read_header(base);
        let cap = aset::chunk_capacity(base, hdr);
        let req = aligned as usize - base as usize + size;
        let rec = &mut *record_ptr(base);
        *rec = DebugRecord::new(STATE_LIVE, req, rec.alloc_stack, 0);
        ptr::write_bytes(base.add(req), REDZONE_BYTE, cap - req);
    }
}

const _: () = assert!(FREED_BYTE != REDZONE_BYTE && FRESH_BYTE != FREED_BYTE);
