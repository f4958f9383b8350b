//! The debug build's implementation of the allocator's hook points (see `crate::hooks`).
//!
//! Each hook keeps the chunk layout of `layout.rs` true: records written on carve, patterns filled
//! on carve, free and reset, and verified where memory changes hands — the chunk's own redzones at
//! pfree and repalloc, a freed chunk's pattern when the freelist hands it out again, released space
//! when it is carved again, and the whole context at reset, delete and check. Findings made in the
//! middle of an allocator operation are queued and raised when the operation is done, so a panic
//! never leaves the allocator's lists half-updated.
//!
//! The same hooks tell Valgrind memcheck and ASan about every chunk (see `sanitizer`): a chunk's
//! requested bytes are the only part of it either tool lets the program touch. Everything else —
//! the prefix (header word, record, front redzone), the rear redzone, freed chunks and unused block
//! space — is closed (NOACCESS, poisoned) and opened only around the hook's own reads and writes.
//! The protocol per hook: open what it reads or writes, do the native work, tell the pool, close.
//! Functions of `verify` never open anything themselves: their callers open the bytes they check.

use core::cell::{Cell, RefCell};
use core::ops::ControlFlow;
use core::ptr;
use std::collections::BTreeMap;

use crate::chunk::{
    self, align_up, Block, ChunkHeader, ChunkKind, BLOCK_HEADER_SIZE, BLOCK_META_SIZE,
    CHUNK_HEADER_SIZE,
};
use crate::context::ContextHeader;
use crate::kinds::{self, Damage, Target};

use super::blocks::{self, Ghost, Lookup};
use super::guard;
use super::layout::{
    front_redzone, record_ptr, DebugRecord, FREED_BYTE, FRESH_BYTE, FRONT_REDZONE, RECORD_SIZE,
    REDZONE_BYTE, STATE_FREE, STATE_LIVE,
};
use super::quarantine;
use super::report::{self, BugClass, Report};
use super::sample;
use super::sanitizer;
use super::settings;
use super::stack;
use super::verify::{self, ResetCheck};
use super::vgmap;

/// Bytes between a chunk's start and its data in the debug build: header word, debug record and
/// front redzone (`layout.rs`). The allocator core's chunk prefix is this (through `crate::hooks`).
pub(crate) const CHUNK_PREFIX: usize = super::layout::DEBUG_CHUNK_PREFIX;

/// Bump chunks carry the whole prefix in the debug build, so its checks and walks cover them.
pub(crate) const BUMP_CHUNK_HEADERS: bool = true;

/// The safe API gives back a chunk of a Bump context (the last one or any other): the debug build
/// keeps its space as a freed chunk (record, freed pattern, closed to the tools) so that a use
/// after the free, or a second free, is reported; the space comes back with the context's reset.
pub(crate) fn bump_chunk_given_back(ctx: *mut ContextHeader, data: *mut u8, cap: usize) -> bool {
    chunk_freed(ctx, data, cap);
    freelist_close(data);
    false
}

/// Bytes of the prefix after the header word: the debug record and the front redzone.
const RECORD_AND_FRONT: usize = CHUNK_PREFIX - CHUNK_HEADER_SIZE;

/// The chunk's debug record and front redzone (everything in the prefix but the header word).
#[inline(always)]
fn record_start(data: *mut u8) -> *mut u8 {
    chunk::chunk_of(data).wrapping_add(CHUNK_HEADER_SIZE)
}

/// Frames of the allocator itself between the user's call and the capture; trimmed again by
/// symbol at report time, this only saves depth.
const CAPTURE_SKIP: usize = 1;

/// Data bytes a request of `size` needs: rounded to 8, plus the rear redzone.
#[inline(always)]
pub(crate) fn class_request(size: usize) -> usize {
    align_up(size, 8) + settings::redzone()
}

/// The freelist link lives in the free chunk's first word: open it for the allocator.
#[inline(always)]
pub(crate) fn freelist_open(data: *mut u8) {
    sanitizer::open(data, LINK_SIZE);
}

/// The allocator is done with a free chunk's link word: close it again.
#[inline(always)]
pub(crate) fn freelist_close(data: *mut u8) {
    sanitizer::close(data, LINK_SIZE);
}

/// Size of a free chunk's freelist link.
const LINK_SIZE: usize = core::mem::size_of::<*mut u8>();

/// The allocator is about to read or write the header word of the chunk starting at `chunk`.
#[inline(always)]
pub(crate) fn header_open(chunk: *mut u8) {
    sanitizer::open(chunk, CHUNK_HEADER_SIZE);
}

/// The allocator is done with the header word of the chunk starting at `chunk`.
#[inline(always)]
pub(crate) fn header_close(chunk: *mut u8) {
    sanitizer::close(chunk, CHUNK_HEADER_SIZE);
}

/// Writes a live chunk's record, redzones and fresh pattern, hands the requested bytes to the
/// pool and closes the rest.
///
/// # Safety
/// `data` must be a chunk of `ctx` with capacity `cap` just handed out, its record, front redzone
/// and data opened by the caller.
unsafe fn setup_live(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    // SAFETY: the prefix and `cap` data bytes belong to the chunk (caller).
    unsafe {
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        verify::fill_live(data, size, cap, FRESH_BYTE, REDZONE_BYTE);
        finish_live(ctx, data, size, cap);
    }
}

/// The part of [`setup_live`] after the patterns are in place (the fast paths of carve and reuse
/// wrote them while checking): the record, the pool chunk, and closing what is not the program's.
///
/// # Safety
/// As [`setup_live`], with the front redzone, fresh bytes and rear redzone already written.
#[inline(always)]
unsafe fn finish_live(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    let alloc = stack::capture(CAPTURE_SKIP).as_raw();
    // SAFETY: the record lies in the chunk's prefix (caller).
    unsafe { record_ptr(data).write(DebugRecord::new(STATE_LIVE, size, alloc, 0)) };
    // The fresh pattern is for human eyes; to the tools the bytes are not yet written.
    sanitizer::chunk_alloc(ctx, data, size);
    sanitizer::close(record_start(data), RECORD_AND_FRONT);
    sanitizer::close(data.wrapping_add(size), cap - size);
}

/// A chunk was carved from a block's free space: check the space was untouched since a reset
/// released it (at depth [`ResetCheck::Full`], since the block was taken), then set the chunk up.
pub(crate) fn chunk_carved(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    sanitizer::open(record_start(data), RECORD_AND_FRONT + cap);
    // SAFETY: the chunk was just carved from `ctx`'s block; its bytes are the allocator's, and
    // its header's offset leads to that block's header.
    unsafe {
        let hdr = chunk::read_header(data);
        let block = chunk::block_of(data, hdr);
        if hdr.is_external() || !must_verify(block, chunk::chunk_of(data)) {
            // A block of its own, fresh from the system, has nothing to check; nor does space
            // never handed out at the default depth (see `verify`'s docs): it is only filled.
            setup_live(ctx, data, size, cap);
        } else if let Err(from) = carve_fill(data, size, cap) {
            carve_damaged(ctx, data, from, size, cap);
        } else {
            finish_live(ctx, data, size, cap);
        }
    }
    // With what `space_carving` and `leftover_carved` queued during this allocation.
    report::raise_pending();
}

/// Whether space of `block` at `at`, about to be carved, is verified first: at the default depth
/// when a reset released it (it lies below the block's released mark), at depth `Full` always.
///
/// # Safety
/// `block` must be a live block.
#[inline(always)]
unsafe fn must_verify(block: *mut Block, at: *mut u8) -> bool {
    // SAFETY: `block` is a live block (caller), so its header is readable, and open to the
    // tools (a pool chunk).
    let released = unsafe { (*block).released };
    match settings::reset_check() {
        ResetCheck::Released => at < released,
        ResetCheck::Full => true,
        ResetCheck::Chunks => false,
    }
}

/// The fast path of [`chunk_carved`]: checks that the chunk's record, front redzone and data
/// still hold the released pattern and writes the live chunk's patterns over them in the same
/// pass. `Err(at)`: damage at or after `at`, nothing written from there on (see
/// [`verify::check_and_fill`]).
///
/// # Safety
/// As [`setup_live`].
#[inline(always)]
unsafe fn carve_fill(data: *mut u8, size: usize, cap: usize) -> Result<(), *mut u8> {
    // SAFETY: every range lies in the chunk's prefix or its `cap` data bytes (caller).
    unsafe {
        let record = record_start(data);
        if !verify::intact(record, RECORD_SIZE, FREED_BYTE) {
            return Err(record);
        }
        let front = front_redzone(data);
        verify::check_and_fill(front, FRONT_REDZONE, FREED_BYTE, REDZONE_BYTE)
            .map_err(|i| front.add(i))?;
        verify::check_and_fill(data, size, FREED_BYTE, FRESH_BYTE).map_err(|i| data.add(i))?;
        let rear = data.add(size);
        verify::check_and_fill(rear, cap - size, FREED_BYTE, REDZONE_BYTE).map_err(|i| rear.add(i))
    }
}

/// The slow path of [`chunk_carved`]: the released space was written from `from` on. Queues the
/// finding (attributed to the chunk a reset released there, if any), then sets the chunk up.
///
/// # Safety
/// As [`setup_live`]; `from` lies in `[record_start(data), data + cap)`.
#[cold]
#[inline(never)]
unsafe fn carve_damaged(
    ctx: *mut ContextHeader,
    data: *mut u8,
    from: *mut u8,
    size: usize,
    cap: usize,
) {
    let mut found = Vec::new();
    // SAFETY: `data` is a chunk being set up in `ctx` with capacity `cap` and `from` inside its
    // prefix or data (caller); its header's offset leads back to its block, where the check reads.
    unsafe {
        let chunk = chunk::chunk_of(data);
        let block = chunk.sub(chunk::read_header(data).offset()) as *mut Block;
        verify::check_unused(ctx, block, from, data.add(cap), "reuse", &mut found, None);
        setup_live(ctx, data, size, cap);
    }
    report::defer_all(found);
}

/// Block space is about to become a chunk at `chunk` (its header word is written next): when the
/// carve verifies the space (see [`must_verify`]), check the header word's bytes before they are
/// overwritten; `chunk_carved`/`leftover_carved` check the rest. A write after reset that hit
/// exactly these bytes would otherwise be lost.
#[inline(always)]
pub(crate) fn space_carving(ctx: *mut ContextHeader, block: *mut Block, chunk: *mut u8) {
    // SAFETY: `block` is the live block being carved.
    if unsafe { must_verify(block, chunk) } {
        check_header_word_space(ctx, block, chunk);
    }
}

/// The check of [`space_carving`].
#[inline(never)]
fn check_header_word_space(ctx: *mut ContextHeader, block: *mut Block, chunk: *mut u8) {
    let mut found = Vec::new();
    sanitizer::open(chunk, HEADER_WORD);
    // SAFETY: `chunk` starts unused space of `block`, at least a header word long.
    unsafe {
        verify::check_unused(
            ctx,
            block,
            chunk,
            chunk.add(HEADER_WORD),
            "reuse",
            &mut found,
            None,
        );
    }
    sanitizer::close(chunk, HEADER_WORD);
    report::defer_all(found);
}

/// Bytes of the header word.
const HEADER_WORD: usize = crate::chunk::CHUNK_HEADER_SIZE;

/// A chunk was taken from a freelist: check nothing wrote it since its free.
pub(crate) fn chunk_reused(ctx: *mut ContextHeader, data: *mut u8, size: usize, cap: usize) {
    sanitizer::open(record_start(data), RECORD_AND_FRONT + cap);
    // SAFETY: `data` was a free chunk of `ctx` with capacity `cap`.
    unsafe {
        let rec = DebugRecord::load(record_ptr(data));
        if !(rec.is_valid() && rec.state == STATE_FREE) {
            reuse_damaged(ctx, data, &rec, None, size, cap);
        } else if !verify::intact(front_redzone(data), FRONT_REDZONE, REDZONE_BYTE) {
            reuse_damaged(ctx, data, &rec, Some(LINK_SIZE), size, cap);
        } else if let Err(from) = refill_free(data, size, cap) {
            reuse_damaged(ctx, data, &rec, Some(from), size, cap);
        } else {
            finish_live(ctx, data, size, cap);
        }
    }
}

/// The fast path of [`chunk_reused`]: checks that a free chunk's data (past its freelist link)
/// still holds the freed pattern and writes the live chunk's fresh pattern and rear redzone over
/// it in the same pass. `Err(from)`: damage at or after data offset `from`, nothing written from
/// there on.
///
/// # Safety
/// `data` must be a free chunk of capacity `cap` >= `size` + the rear redzone, its data open.
#[inline(always)]
unsafe fn refill_free(data: *mut u8, size: usize, cap: usize) -> Result<(), usize> {
    // SAFETY: every range lies in the chunk's `cap` data bytes (caller).
    unsafe {
        // The link word held the freelist's pointer: not a pattern, just overwritten.
        let head = size.min(LINK_SIZE);
        ptr::write_bytes(data, FRESH_BYTE, head);
        ptr::write_bytes(data.add(head), REDZONE_BYTE, LINK_SIZE - head);
        let mid = size.max(LINK_SIZE);
        verify::check_and_fill(data.add(LINK_SIZE), mid - LINK_SIZE, FREED_BYTE, FRESH_BYTE)
            .map_err(|i| LINK_SIZE + i)?;
        verify::check_and_fill(data.add(mid), cap - mid, FREED_BYTE, REDZONE_BYTE)
            .map_err(|i| mid + i)
    }
}

/// The slow path of [`chunk_reused`]: the free chunk's record (`from` is `None`), front redzone or
/// data from offset `from` on was written since its free. Reports it, then sets the chunk up.
///
/// # Safety
/// As [`setup_live`]; `rec` is the chunk's record as it was found.
#[cold]
#[inline(never)]
unsafe fn reuse_damaged(
    ctx: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    from: Option<usize>,
    size: usize,
    cap: usize,
) {
    let mut found = Vec::new();
    // SAFETY: `data` is a chunk of `ctx` with capacity `cap` being reused, `rec` its record
    // (caller), so the checks read only its prefix and data.
    unsafe {
        match from {
            Some(from) => verify::check_free(ctx, data, rec, cap, from, "reuse", &mut found),
            None => found.push(verify::header_damage(
                ctx,
                data,
                chunk::read_header(data).offset(),
                "reuse",
            )),
        }
        setup_live(ctx, data, size, cap);
    }
    report::raise_all(found);
}

/// Leftover block space became a free chunk. Its link word is left open: the allocator writes
/// it next and closes it with [`freelist_close`].
pub(crate) fn leftover_carved(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let mut found = Vec::new();
    sanitizer::open(record_start(data), RECORD_AND_FRONT + cap);
    // SAFETY: as `chunk_carved`.
    unsafe {
        let chunk = chunk::chunk_of(data);
        let block = chunk.sub(chunk::read_header(data).offset()) as *mut Block;
        verify::check_unused(
            ctx,
            block,
            chunk.add(8),
            data.add(cap),
            "reuse",
            &mut found,
            None,
        );
        record_ptr(data).write(DebugRecord::new(STATE_FREE, 0, 0, 0));
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        ptr::write_bytes(data, FREED_BYTE, cap);
    }
    sanitizer::close(record_start(data), RECORD_AND_FRONT);
    sanitizer::close(data.wrapping_add(LINK_SIZE), cap - LINK_SIZE);
    report::defer_all(found);
}

/// A live chunk (already validated) is being freed: record the free, clobber it and give it back
/// to the pool. Its link word is left open for the allocator, which closes it with
/// [`freelist_close`] (a chunk with a block of its own goes back to the system instead).
pub(crate) fn chunk_freed(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let free = stack::capture(CAPTURE_SKIP).as_raw();
    sanitizer::open(record_start(data), RECORD_AND_FRONT + cap);
    // SAFETY: `data` is a live chunk of capacity `cap` being freed.
    unsafe {
        let rec = &mut *record_ptr(data);
        *rec = DebugRecord::new(STATE_FREE, rec.requested as usize, rec.alloc_stack, free);
        // Damage found at this free was reported already; restore the front redzone so later
        // checks report only new damage (the rear one is overwritten with the free pattern).
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        verify::fill(data, cap, FREED_BYTE);
    }
    if let Some(offset) = take_redirect(data) {
        // The pool chunk is the aligned allocation inside this chunk: bring it back first.
        sanitizer::chunk_change(ctx, data.wrapping_add(offset), data, cap);
    }
    sanitizer::chunk_free(ctx, data, cap);
    sanitizer::close(record_start(data), RECORD_AND_FRONT + cap);
    sanitizer::open(data, LINK_SIZE);
}

/// Every chunk of `block` (a Generation block) was freed: verify them (at the thread's reset
/// depth) and remember them. A block the kind keeps is then released as a reset releases a keeper:
/// clobbered, its released mark raised, so carving the space again verifies that nothing wrote it
/// through a pointer kept past the free. A block that goes back is staged for the quarantine of
/// released memory, which takes it with those chunks' histories (see `quarantine`).
pub(crate) fn block_emptied(ctx: *mut ContextHeader, block: *mut Block, kept: bool) {
    // SAFETY: `block` is a live block of `ctx` with no live chunk (the kind's promise); the walk
    // reads inside it, and the clobber writes only its chunk space up to its free pointer (or its
    // end, after damage in its unused space was reported).
    unsafe {
        let mut ghosts = blocks::take_ghosts(block as usize);
        let free = (*block).free_ptr;
        ghosts.retain(|g| g.start >= free as usize);
        let mut sink = verify::GhostSink {
            free_stack: stack::capture(CAPTURE_SKIP).as_raw(),
            ghosts: &mut ghosts,
        };
        let mut found = Vec::new();
        let depth = settings::reset_check();
        verify::verify_block(ctx, block, depth, "pfree", &mut found, Some(&mut sink));
        let clean = found.is_empty();
        report::defer_all(found);
        if kept {
            blocks::put_ghosts(block as usize, ghosts);
            release_keeper(block, if clean { free } else { (*block).end_ptr });
        } else {
            quarantine::stage(ctx, "last pfree in a block", ghosts);
        }
    }
}

/// The emptied block was rewound or given back: the quarantine has what it took, and what the
/// emptying found is raised now that the context's lists are consistent.
pub(crate) fn emptied_block_settled() {
    quarantine::unstage();
    report::raise_pending();
}

/// A live chunk was resized in place.
pub(crate) fn chunk_resized(
    ctx: *mut ContextHeader,
    data: *mut u8,
    old: usize,
    new: usize,
    cap: usize,
) {
    let _ = old;
    sanitizer::open(record_start(data), RECORD_AND_FRONT);
    // SAFETY: `data` is a live chunk of capacity `cap` >= `new`.
    unsafe {
        let rec = &mut *record_ptr(data);
        let was = rec.requested as usize;
        *rec = DebugRecord::new(STATE_LIVE, new, rec.alloc_stack, 0);
        // Damage the resize's check found was reported already: restore the front redzone so
        // later checks report only new damage (`resize_tail` rewrites the rear one).
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        sanitizer::close(record_start(data), RECORD_AND_FRONT);
        resize_tail(data, was, new, cap);
        sanitizer::chunk_change(ctx, data, data, new);
    }
}

/// Fills and marks the bytes of a live chunk whose requested size went from `was` to `new`:
/// grown bytes fresh (and undefined to the tools), the redzone from `new` to `cap`.
///
/// # Safety
/// `data` must be a live chunk of capacity `cap` >= `new`, `was` <= `cap`.
unsafe fn resize_tail(data: *mut u8, was: usize, new: usize, cap: usize) {
    let from = was.min(new);
    sanitizer::open(data.wrapping_add(from), cap - from);
    // SAFETY: `[data, data + cap)` is the chunk's (caller).
    unsafe {
        if new > was {
            ptr::write_bytes(data.add(was), FRESH_BYTE, new - was);
        }
        ptr::write_bytes(data.add(new), REDZONE_BYTE, cap - new);
    }
    if new > was {
        sanitizer::undefined(data.wrapping_add(was), new - was);
    }
    sanitizer::close(data.wrapping_add(new), cap - new);
}

/// Memory for a chunk with a block of its own: natively, with guard pages on, a guarded mapping
/// and the block size that ends the chunk's capacity — the request and its rear redzone
/// ([`class_request`]), rounded up to 16 — at its guard page (see `guard`). Under memcheck and
/// ASan none: those tools watch the chunk's tail, which [`finish_live`] closes, themselves.
pub(crate) fn large_block_memory(size: usize, block_size: usize) -> (*mut u8, usize) {
    let sampled = sample::take_pending();
    let cap = align_up(class_request(size), crate::chunk::CHUNK_ALIGN);
    let tight = BLOCK_HEADER_SIZE + crate::chunk::FIRST_CHUNK_PAD + CHUNK_PREFIX + cap;
    let mem = if settings::guard_pages() && !sanitizer::active() {
        guard::take(tight, sampled)
    } else {
        None
    };
    match mem {
        Some(mem) => (mem, tight),
        None => {
            if sampled {
                sample::slot_returned();
            }
            (ptr::null_mut(), block_size)
        }
    }
}

/// Whether this small allocation is sampled into a guarded mapping (see `sample`).
#[inline(always)]
pub(crate) fn sample_chunk() -> bool {
    sample::sample_chunk()
}

/// A block goes back: a guarded one to the guard quarantine, with what its chunk was (the free
/// stack is its `pfree`'s, or this reset's or delete's); any other that a reset or delete released
/// to the quarantine of released blocks (see `quarantine`). True when the hook took it.
pub(crate) fn block_release(block: *mut Block, size: usize) -> bool {
    let end = block as usize + size;
    let guarded = !sanitizer::pools() && guard::is_guarded(end);
    let taken = if guarded {
        release_guarded(block, end)
    } else {
        quarantine::admit(block, size) || {
            // Under memcheck every block is a mapping of its own.
            sanitizer::pools() && quarantine::give_back(block, size)
        }
    };
    quarantine::unstage_if_done();
    taken
}

/// Gives a block that is not guarded back to where `kinds::aset::new_block` took it: under memcheck its
/// mapping, else the system allocator. Returns true (it is gone).
pub(crate) fn release_to_system(block: *mut Block, size: usize) -> bool {
    // SAFETY: the block is unlinked and unregistered, `size` its size; under memcheck it was
    // mapped by `block_memory`, else allocated by `kinds::aset::new_block` with `CHUNK_ALIGN`.
    unsafe {
        if sanitizer::pools() {
            vgmap::unmap(block as *mut u8, size);
        } else {
            std::alloc::dealloc(
                block as *mut u8,
                core::alloc::Layout::from_size_align_unchecked(size, chunk::CHUNK_ALIGN),
            );
        }
    }
    true
}

/// [`block_release`] of a guarded block ending at `end`.
fn release_guarded(block: *mut Block, end: usize) -> bool {
    let data = Block::first_chunk(block).wrapping_add(CHUNK_PREFIX);
    // SAFETY: a guarded block holds exactly one chunk, at its first chunk position.
    let rec = unsafe { read_record(data) };
    let (requested, alloc, free) = if !rec.is_valid() {
        (0, 0, 0)
    } else if rec.state == STATE_FREE {
        (rec.requested as usize, rec.alloc_stack, rec.free_stack)
    } else {
        let free = stack::capture(CAPTURE_SKIP).as_raw();
        (rec.requested as usize, rec.alloc_stack, free)
    };
    guard::release(end, data as usize, requested, alloc, free)
}

/// Memory for a block: under memcheck a mapping of its own (see `vgmap` for why), else none.
pub(crate) fn block_memory(size: usize) -> Option<*mut u8> {
    sanitizer::pools().then(|| vgmap::map(size))
}

/// A chunk in a guarded mapping, or in a block mapped under memcheck, is moved by allocating,
/// copying and freeing, never by `realloc`.
pub(crate) fn large_chunk_pinned(data: *mut u8) -> bool {
    if sanitizer::pools() {
        return true;
    }
    if !guard::in_use() {
        return false;
    }
    // SAFETY: `data` is a live external chunk (the caller read its header); its offset leads to
    // its block.
    let block =
        unsafe { chunk::chunk_of(data).sub(chunk::read_header(data).offset()) as *mut Block };
    // SAFETY: the block header of a live chunk's block is readable.
    guard::is_guarded(unsafe { (*block).end_ptr } as usize)
}

thread_local! {
    /// Block and data address of a chunk with a block of its own while `realloc` moves it, so
    /// the pool chunks can follow it.
    static MOVING: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// A chunk with a block of its own is about to move: its block leaves the registry.
pub(crate) fn large_chunk_moving(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    let _ = (ctx, cap);
    // SAFETY: `data` is a live external chunk; its offset leads to its block.
    let block = unsafe { chunk::chunk_of(data).sub(chunk::read_header(data).offset()) };
    blocks::remove(block as usize);
    let _ = MOVING.try_with(|m| m.set((block as usize, data as usize)));
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
    let (old_block, old_data) = MOVING
        .try_with(|m| m.replace((0, 0)))
        .unwrap_or((block as usize, data as usize));
    // SAFETY: `block` is a live block of `ctx` holding the chunk `data` of capacity `cap`.
    unsafe {
        blocks::insert(block as usize, (*block).end_ptr as usize, ctx);
        if failed {
            return;
        }
        // `realloc` kept the contents and (under memcheck) their state; the pool chunks follow.
        sanitizer::chunk_change(ctx, old_block as *mut u8, block as *mut u8, BLOCK_META_SIZE);
        sanitizer::open(record_start(data), RECORD_AND_FRONT);
        let rec = &mut *record_ptr(data);
        let was = rec.requested as usize;
        *rec = DebugRecord::new(STATE_LIVE, size, rec.alloc_stack, 0);
        // As in `chunk_resized`: damage found by the move's check was reported already.
        ptr::write_bytes(front_redzone(data), REDZONE_BYTE, FRONT_REDZONE);
        // ASan's realloc left the whole new block addressable: close the whole prefix.
        sanitizer::close(chunk::chunk_of(data), CHUNK_PREFIX);
        resize_tail(data, was.min(cap), size, cap);
        sanitizer::chunk_change(ctx, old_data as *mut u8, data, size);
    }
}

/// A block was taken: register it; fill a shared block's space with the unused pattern and close
/// it. The context's first block creates its pool; every block header, with the kind's fields
/// after it (`kinds::block_meta_size`), becomes a pool chunk.
pub(crate) fn block_allocated(ctx: *mut ContextHeader, block: *mut Block, external: bool) {
    // SAFETY: `block` was just allocated for `ctx`, its header written.
    unsafe {
        if (*ctx).keeper.is_null() {
            // Only the keeper is taken while the context has no keeper (see `kinds::aset::init`).
            sanitizer::pool_create(ctx);
        }
        let first = kinds::first_chunk(block);
        let meta = kinds::block_meta_size(block);
        sanitizer::block_header_alloc(ctx, block as *mut u8, meta);
        blocks::insert(block as usize, (*block).end_ptr as usize, ctx);
        let space = (block as *mut u8).add(meta);
        let len = (*block).end_ptr as usize - space as usize;
        if !external {
            sanitizer::open(space, len);
            ptr::write_bytes(
                first,
                FREED_BYTE,
                (*block).end_ptr as usize - first as usize,
            );
        }
        sanitizer::close(space, len);
    }
}

/// A block goes back to the system (already unlinked). When it was the context's last, the
/// context's pool goes too.
pub(crate) fn block_freed(ctx: *mut ContextHeader, block: *mut Block) {
    blocks::remove(block as usize);
    // SAFETY: the block's header is intact until the block goes back to the system.
    forget_redirects(block as usize, unsafe { (*block).end_ptr } as usize);
    sanitizer::block_header_free(ctx, block as *mut u8);
    quarantine::forget_keeper(block);
    // SAFETY: `ctx` is live; only `release_all` unlinks its last block.
    if unsafe { (*ctx).blocks.is_null() } {
        sanitizer::pool_destroy(ctx);
    }
}

/// A context is about to be reset: verify it, remember what its chunks were (in the same walk),
/// stage them for the quarantine that takes its other blocks, and clobber the keeper's used space.
pub(crate) fn reset_begin(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live; its blocks are walked before any is freed.
    unsafe {
        let keeper = (*ctx).keeper;
        if keeper.is_null() {
            return;
        }
        // A deleted context going onto a recycle list was verified in full, and its chunks
        // staged, by `context_deleting`: its keeper is remembered as the deleted context's and
        // clobbered whole, so nothing of its life is reported as the next one's.
        if (*ctx).magic == crate::context::DEAD_CONTEXT_MAGIC {
            quarantine::recycle_keeper(keeper);
            blocks::put_ghosts(keeper as usize, Vec::new());
            release_keeper(keeper, (*keeper).end_ptr);
            return;
        }
        let (mut ghosts, clean) = reset_walk(ctx, keeper);
        // The keeper's ghosts stay in the registry; the other blocks' go to the quarantine.
        let (start, end) = (keeper as usize, (*keeper).end_ptr as usize);
        let others: Vec<Ghost> = if (*keeper).next.is_null() && (*ctx).blocks == keeper {
            Vec::new()
        } else {
            let (mine, others) = ghosts
                .into_iter()
                .partition(|g: &Ghost| start <= g.start && g.start < end);
            ghosts = mine;
            others
        };
        quarantine::stage(ctx, "reset", others);
        blocks::put_ghosts(keeper as usize, ghosts);
        // Damage the walk found in the keeper's unused space is reported now: clobber the whole
        // keeper, so the carve that reuses the space does not report it a second time.
        let upto = if clean {
            (*keeper).free_ptr
        } else {
            (*keeper).end_ptr
        };
        release_keeper(keeper, upto);
    }
}

/// The reset walk of `ctx`: verifies it at the thread's depth and returns the ghosts of the chunks
/// the reset releases — with those of the keeper's space past its free pointer, which no chunk
/// took since earlier resets released it — and whether nothing was found.
///
/// # Safety
/// `ctx` must be live, `keeper` its keeper.
unsafe fn reset_walk(ctx: *mut ContextHeader, keeper: *mut Block) -> (Vec<Ghost>, bool) {
    // SAFETY: `ctx` is live and `keeper` its keeper (caller); the walk reads only its blocks,
    // none of which has been freed yet.
    unsafe {
        let mut ghosts = blocks::take_ghosts(keeper as usize);
        let free = (*keeper).free_ptr as usize;
        ghosts.retain(|g| g.start >= free);
        let mut sink = verify::GhostSink {
            free_stack: stack::capture(CAPTURE_SKIP).as_raw(),
            ghosts: &mut ghosts,
        };
        let mut found = Vec::new();
        let depth = settings::reset_check();
        verify::verify_context(ctx, depth, "reset", &mut found, Some(&mut sink));
        let clean = found.is_empty();
        if !clean {
            name_the_operation(&mut found, "reset", ctx);
            report::defer_all(found);
        }
        (ghosts, clean)
    }
}

/// Clobbers the keeper's (or an emptied Generation block's) space up to `upto` with the released
/// pattern and raises its released mark to there: carving that space again verifies it.
///
/// # Safety
/// `keeper` must be a live block whose chunks are all released, `upto` inside it.
unsafe fn release_keeper(keeper: *mut Block, upto: *mut u8) {
    // SAFETY: `keeper` is a live keeper whose chunks are all released and `upto` lies inside it
    // (caller), so `[first chunk, upto)` is the allocator's to fill, opened around the fill.
    unsafe {
        let first = kinds::first_chunk(keeper);
        let used = upto as usize - first as usize;
        sanitizer::open(first, used);
        ptr::write_bytes(first, FREED_BYTE, used);
        sanitizer::close(first, used);
        if (*keeper).released < upto {
            (*keeper).released = upto;
        }
    }
}

/// Completes `found_at` of reports made during a reset or delete of `ctx` with the context's name
/// (`reset of "X"`): formatted only when something was found, not on every reset.
///
/// # Safety
/// `ctx` must be live.
unsafe fn name_the_operation(found: &mut [Report], op: &str, ctx: *mut ContextHeader) {
    for r in found {
        // SAFETY: `ctx` is live (caller), so its name is readable.
        r.found_at = format!("{op} of \"{}\"", unsafe { (*ctx).name() });
    }
}

/// A context was reset: its other blocks are gone, and every chunk with them. Like PostgreSQL,
/// trim the pool to the keeper's header, which frees every chunk's pool chunk at once (memcheck
/// then reports a stale access with the reset's stack as the free stack).
pub(crate) fn reset_end(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live and was just reset.
    let keeper = unsafe { (*ctx).keeper };
    if !keeper.is_null() {
        // SAFETY: the keeper is a live block of `ctx`.
        forget_redirects(keeper as usize, unsafe { (*keeper).end_ptr } as usize);
        // SAFETY: the keeper's header is intact after the reset.
        let meta = unsafe { kinds::block_meta_size(keeper) };
        sanitizer::pool_trim(ctx, keeper as *mut u8, meta);
    }
    // After the trim: the blocks that leave the process hold no pool chunk any more.
    quarantine::unstage();
}

/// A context was created: when it took a deleted context's keeper, that keeper's space is its
/// own now.
pub(crate) fn context_created(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is a live context with a keeper.
    quarantine::keeper_taken(unsafe { (*ctx).keeper });
}

/// A context was moved to another parent: the paths kept for naming released memory changed.
pub(crate) fn context_moved(_ctx: *mut ContextHeader) {
    super::lineage::context_moved();
}

/// A context is about to be deleted: full verification, in a walk that also stages its chunks and
/// its name (as it is now, linked) for the quarantine that takes its blocks.
pub(crate) fn context_deleting(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live until the delete finishes.
    unsafe {
        let mut ghosts = Vec::new();
        let mut sink = verify::GhostSink {
            free_stack: stack::capture(CAPTURE_SKIP).as_raw(),
            ghosts: &mut ghosts,
        };
        let mut found = Vec::new();
        verify::verify_context(ctx, ResetCheck::Full, "delete", &mut found, Some(&mut sink));
        name_the_operation(&mut found, "delete", ctx);
        report::defer_all(found);
        let former = quarantine::Former::of(ctx, "delete");
        quarantine::stage_named(ctx, "delete", ghosts, Some(former));
    }
}

/// Raises what the operation queued.
pub(crate) fn raise_pending() {
    report::raise_pending();
}

/// Full verification on demand; returns the number of findings (raised per the policy). Damage
/// found is restored to its pattern, so a later reset, delete or check does not report it again.
pub(crate) fn check_context(ctx: *mut ContextHeader) -> usize {
    let mut found = Vec::new();
    // SAFETY: `ctx` is live (the caller checked the handle).
    unsafe {
        verify::verify_context(ctx, ResetCheck::Full, "check", &mut found, None);
        if !found.is_empty() {
            verify::restore_patterns(ctx);
        }
    }
    let n = found.len();
    report::raise_all(found);
    n
}

/// Verifies the thread's quarantine on demand (once per `check`); returns the number of findings
/// (raised per the policy).
pub(crate) fn check_released() -> usize {
    let found = quarantine::check();
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
#[allow(clippy::result_large_err)] // the cold path; the report is raised right after
fn classify(
    ptr: *mut u8,
    op: &'static str,
    expected: Option<*mut ContextHeader>,
) -> Result<Option<Report>, Report> {
    let addr = ptr as usize;
    // A pointer no context owns: the report names no context and no chunk.
    let invalid = |detail: String| Err(Report::at(BugClass::InvalidPointer, op).detail(detail));
    if ptr.is_null() {
        return invalid(format!("{op} called with a null pointer"));
    }
    match blocks::lookup(addr) {
        Lookup::Unavailable => Ok(None),
        Lookup::NotFound => match quarantine::freed_again(addr, op) {
            Some(r) => Err(r),
            None => invalid(format!(
                "{op} called with {ptr:p}, which no context of this thread allocated \
                     (a foreign pointer, or a chunk of another thread's tree)"
            )),
        },
        // SAFETY: the registry found the block holding `addr`, a block of `ctx` on this thread.
        Lookup::Found { start, end, ctx } => unsafe {
            classify_in_block(ctx, start as *mut Block, end, ptr, op, expected)
        },
    }
}

/// [`classify`] of a pointer inside a block of `owner` ending at `end`: decodes the chunk it
/// would be the data of (following an aligned redirect), then checks it as a live chunk.
///
/// # Safety
/// `block` must be a registered block of `owner` holding `ptr`.
#[allow(clippy::result_large_err)] // as `classify`, whose result it is
unsafe fn classify_in_block(
    owner: *mut ContextHeader,
    block: *mut Block,
    end: usize,
    ptr: *mut u8,
    op: &'static str,
    expected: Option<*mut ContextHeader>,
) -> Result<Option<Report>, Report> {
    let addr = ptr as usize;
    // SAFETY: `block` is a registered block of this thread (caller), so its header is readable,
    // and the header and record read below lie between its first chunk's data and `end`.
    unsafe {
        // The owner's kind, from the registry: the block's own context field may be the damage.
        let first_data = kinds::first_chunk_of((*owner).kind, block) as usize + CHUNK_PREFIX;
        if addr % crate::chunk::CHUNK_ALIGN != 0 || addr < first_data || addr >= end {
            return not_a_live_chunk(owner, block, addr, op);
        }
        // The operation finds its context through this field: refuse it when it lies.
        if (*block).context != owner {
            return Err(verify::block_header_damage(owner, block, op));
        }
        let hdr = peek_header(ptr);
        if ChunkKind::from_id(hdr.kind_id()) == Some(ChunkKind::AlignedRedirect) {
            let base = ptr.wrapping_sub(hdr.offset());
            if (base as usize) < first_data || base >= ptr {
                return Err(verify::header_damage(owner, ptr, hdr.offset(), op));
            }
            return classify(base, op, expected);
        }
        let cap = match kinds::decode_chunk((*owner).kind, block, chunk::chunk_of(ptr), hdr) {
            Ok(w) => w.cap,
            // A real chunk whose header word alone was overwritten still has its record.
            Err(bad) if matches!(bad.why, Damage::Offset | Damage::Kind) => {
                return if chunk_starts_at(owner, block, addr) || peek_record(ptr).is_valid() {
                    Err(verify::header_damage(owner, ptr, hdr.offset(), op))
                } else {
                    not_a_live_chunk(owner, block, addr, op)
                };
            }
            Err(_) => return Err(verify::header_damage(owner, ptr, hdr.offset(), op)),
        };
        let rec = peek_record(ptr);
        if !rec.is_valid() {
            if !chunk_starts_at(owner, block, addr) {
                return not_a_live_chunk(owner, block, addr, op);
            }
            let mut r = verify::header_damage(owner, ptr, hdr.offset(), op);
            r.class = BugClass::CorruptHeader;
            r.detail = "the chunk's debug record was overwritten".into();
            return Err(r);
        }
        classify_chunk(owner, ptr, &rec, cap, op, expected)
    }
}

/// [`classify`] of a chunk whose header and record decoded: freed already, passed through the
/// wrong context (raised; the operation goes on in the chunk's own context, unless its kind frees
/// no chunk by pointer — a Bump chunk then waits for its context's reset), or live with its
/// redzones checked.
///
/// # Safety
/// `data` must be a chunk of `owner` with capacity `cap` and the valid record `rec`.
#[allow(clippy::result_large_err)] // as `classify`, whose result it is
unsafe fn classify_chunk(
    owner: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    cap: usize,
    op: &'static str,
    expected: Option<*mut ContextHeader>,
) -> Result<Option<Report>, Report> {
    let addr = data as usize;
    if rec.state == STATE_FREE {
        // SAFETY: `owner` is a registered context, so live (caller).
        return Err(
            unsafe { Report::at(BugClass::DoubleFree, op).context(owner) }
                .chunk(addr, Some(rec.requested as usize))
                .stacks(rec.alloc_stack, rec.free_stack)
                .detail(format!("{op} of a chunk that was already freed")),
        );
    }
    if let Some(exp) = expected.filter(|&e| e != owner) {
        // SAFETY: `expected` is the context the safe API holds a pinned handle of, so live.
        let (exp_name, _) = unsafe { report::context_names(exp) };
        // SAFETY: `owner` is a registered context, so live (caller).
        let r = unsafe { Report::at(BugClass::WrongContext, op).context(owner) }
            .chunk(addr, Some(rec.requested as usize))
            .stacks(rec.alloc_stack, 0)
            .detail(format!(
                "{op} through context \"{exp_name}\", but the chunk belongs to \"{}\"",
                // SAFETY: as above.
                unsafe { (*owner).name() }
            ));
        // SAFETY: as above.
        if !unsafe { (*owner).kind }.frees_by_pointer() {
            return Err(r);
        }
        report::raise(r);
    }
    // A sound live chunk: its redzones are closed, and open only for the check.
    let req = (rec.requested as usize).min(cap);
    // SAFETY: the front redzone and `[req, cap)` lie in the chunk's prefix and capacity (caller).
    unsafe {
        sanitizer::open(front_redzone(data), FRONT_REDZONE);
        sanitizer::open(data.add(req), cap - req);
        let intact = verify::intact(front_redzone(data), FRONT_REDZONE, REDZONE_BYTE)
            && verify::intact(data.add(req), cap - req, REDZONE_BYTE);
        let found = if intact {
            Ok(None)
        } else {
            redzones_damaged(owner, data, rec, cap, op)
        };
        sanitizer::close(front_redzone(data), FRONT_REDZONE);
        sanitizer::close(data.add(req), cap - req);
        found
    }
}

/// The slow path of [`classify`]: a live chunk's redzones were written. The first finding is
/// returned, the others (both redzones damaged) queued.
///
/// # Safety
/// `data` must be a live chunk of `owner` with capacity `cap` and record `rec`, its redzones open.
#[cold]
#[inline(never)]
#[allow(clippy::result_large_err)] // as `classify`, whose result it is
unsafe fn redzones_damaged(
    owner: *mut ContextHeader,
    data: *mut u8,
    rec: &DebugRecord,
    cap: usize,
    op: &'static str,
) -> Result<Option<Report>, Report> {
    let mut found = Vec::new();
    // SAFETY: `data` is a live chunk of `owner` with capacity `cap` and record `rec`, its
    // redzones open (caller): what `check_live` reads.
    unsafe { verify::check_live(owner, data, rec, cap, op, &mut found) };
    if found.is_empty() {
        return Ok(None);
    }
    let first = found.remove(0);
    report::defer_all(found);
    Ok(Some(first))
}

/// A pointer inside a registered block that is not the data of a live chunk. A pointer into a
/// freed chunk (an over-aligned chunk freed twice: its redirect header was wiped) or into memory a
/// reset released is a `double-free`, reported with that chunk's history; anything else is an
/// `invalid-pointer`.
///
/// # Safety
/// `block` must be a registered block of `owner`.
#[allow(clippy::result_large_err)] // as `classify`, whose result it is
unsafe fn not_a_live_chunk(
    owner: *mut ContextHeader,
    block: *mut Block,
    addr: usize,
    op: &'static str,
) -> Result<Option<Report>, Report> {
    // SAFETY: `block` is a registered block of `owner` (caller), so the walk reads inside it;
    // records are read only for chunks the walk decoded.
    unsafe {
        let freed = match chunk_containing(owner, block, addr) {
            Some((data, _)) => {
                let rec = peek_record(data as *mut u8);
                (rec.is_valid() && rec.state == STATE_FREE).then(|| {
                    let detail = format!(
                        "{op} of {addr:#x}, inside the chunk at {data:#x}, which was already freed"
                    );
                    (
                        data,
                        rec.requested as usize,
                        rec.alloc_stack,
                        rec.free_stack,
                        detail,
                    )
                })
            }
            None => blocks::ghost_at(block as usize, addr).map(|g| {
                let detail = format!(
                    "{op} of {addr:#x}: the chunk at {:#x} was already freed by a reset of its \
                     context",
                    g.data()
                );
                let requested = g.requested as usize;
                (g.data(), requested, g.alloc_stack, g.free_stack, detail)
            }),
        };
        Err(match freed {
            Some((data, requested, alloc, free, detail)) => Report::at(BugClass::DoubleFree, op)
                .context(owner)
                .chunk(data, Some(requested))
                .stacks(alloc, free)
                .detail(detail),
            None => interior_report(owner, block, addr, op),
        })
    }
}

/// Whether a chunk of `block` starts (has its data) exactly at `addr`, walking the block.
///
/// # Safety
/// `block` must be a registered block of `owner`.
unsafe fn chunk_starts_at(owner: *mut ContextHeader, block: *mut Block, addr: usize) -> bool {
    // SAFETY: the caller promises a registered block of `owner`, which `chunk_containing` needs.
    unsafe { chunk_containing(owner, block, addr).is_some_and(|(data, _)| data == addr) }
}

/// The chunk of `block` whose extent holds `addr`: (data address, capacity).
///
/// # Safety
/// `block` must be a registered block of `owner`.
unsafe fn chunk_containing(
    owner: *mut ContextHeader,
    block: *mut Block,
    addr: usize,
) -> Option<(usize, usize)> {
    let mut found = None;
    // SAFETY: `block` is a registered block of `owner` (the caller's promise), so its header is
    // readable and its chunks are `owner`'s kind; the walk stops at the free pointer or an
    // undecodable header, and reads header words without changing what the tools think of them.
    let _ = unsafe {
        kinds::walk_block((*owner).kind, block, |w| {
            let data = w.data as usize;
            if addr >= w.start as usize && addr < (data + w.cap).max(data + 1) {
                found = Some((data, w.cap));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
    };
    found
}

/// The `invalid-pointer` report for `addr`, inside `block` of `owner` but not at a chunk's data:
/// an interior pointer names the chunk it points into, with that chunk's size and allocation
/// stack; a pointer at no chunk (misaligned, or in unused space) names none.
///
/// # Safety
/// `block` must be a registered block of `owner`.
unsafe fn interior_report(
    owner: *mut ContextHeader,
    block: *mut Block,
    addr: usize,
    op: &str,
) -> Report {
    // SAFETY: `owner` is registered, so live; the walk reads only inside `block` (caller).
    let r = unsafe { Report::at(BugClass::InvalidPointer, op).context(owner) };
    // SAFETY: `block` is a registered block of `owner` (caller), which the walk stays inside.
    match unsafe { chunk_containing(owner, block, addr) } {
        Some((data, _)) => {
            // SAFETY: `data` is a chunk the walk decoded, its prefix inside the block.
            let rec = unsafe { peek_record(data as *mut u8) };
            let detail = format!(
                "{op} called with {addr:#x}, {} bytes into the chunk at {data:#x} (an interior \
                 pointer)",
                addr as isize - data as isize
            );
            let r = r.detail(detail);
            if rec.is_valid() {
                r.chunk(data, Some(rec.requested as usize))
                    .stacks(rec.alloc_stack, 0)
            } else {
                r.chunk(data, None)
            }
        }
        None => r.detail(format!(
            "{op} called with {addr:#x}, inside block {block:p} but not at a chunk \
             (misaligned, or in unused space)"
        )),
    }
}

/// Reads the debug record of a chunk of this thread's tree (live or free), opening and closing it
/// for Valgrind and ASan. Walks outside this module that read records use it.
///
/// # Safety
/// `data` must be the data pointer of a chunk (its whole prefix inside one of our blocks).
pub(crate) unsafe fn read_record(data: *mut u8) -> DebugRecord {
    sanitizer::open(record_start(data), RECORD_SIZE);
    // SAFETY: the record lies in the chunk's prefix (caller); 8-aligned as the data is 16-aligned.
    let rec = unsafe { record_ptr(data).read() };
    sanitizer::close(record_start(data), RECORD_SIZE);
    rec
}

/// The requested size of a live chunk.
pub(crate) fn requested_size(data: *mut u8, cap: usize) -> usize {
    // SAFETY: `data` is a live chunk (validated by the caller).
    let rec = unsafe { read_record(data) };
    if rec.is_valid() {
        rec.requested as usize
    } else {
        cap
    }
}

/// An aligned-redirect header is about to be written inside `base`: move the base chunk's rear
/// redzone to right after the aligned region, so an overrun of it is caught, and close the bytes
/// before the aligned region (the redirect header among them). Under memcheck, as in PostgreSQL,
/// the pool chunk becomes the aligned region itself, so that the pointer the program holds is
/// its start (a leak search calls a block reachable only through an interior pointer "possibly
/// lost"); the base is remembered, and [`chunk_freed`] moves the pool chunk back before freeing it.
pub(crate) fn redirect_written(
    ctx: *mut ContextHeader,
    base: *mut u8,
    aligned: *mut u8,
    size: usize,
) {
    // SAFETY: `base` is a live chunk of `ctx` holding `[aligned, aligned + size)`. The pool is
    // `ctx`'s, passed in: a Bump chunk's header cannot name its context (`kinds::owner` refuses).
    unsafe {
        let hdr = chunk::read_header(base);
        let Target::Chunk(kind) = kinds::target(base, hdr, "palloc_aligned") else {
            unreachable!("an aligned allocation's base is a chunk of its context's kind")
        };
        let cap = kinds::capacity(kind, base, hdr);
        let req = aligned as usize - base as usize + size;
        sanitizer::open(record_start(base), RECORD_SIZE);
        let rec = &mut *record_ptr(base);
        *rec = DebugRecord::new(STATE_LIVE, req, rec.alloc_stack, 0);
        sanitizer::close(record_start(base), RECORD_SIZE);
        sanitizer::open(base.add(req), cap - req);
        ptr::write_bytes(base.add(req), REDZONE_BYTE, cap - req);
        sanitizer::close(base.add(req), cap - req);
        let offset = aligned as usize - base as usize;
        if sanitizer::pools()
            && REDIRECTS
                .try_with(|r| r.borrow_mut().insert(base as usize, offset))
                .is_ok()
        {
            sanitizer::chunk_change(ctx, base, aligned, size);
        }
        sanitizer::close(base, offset);
    }
}

thread_local! {
    /// Under memcheck: base chunk address → offset of the aligned allocation that its pool chunk
    /// describes (see [`redirect_written`]). Empty otherwise. Only offsets and base addresses,
    /// which no pool chunk starts at, so the map keeps nothing reachable for the leak search.
    static REDIRECTS: RefCell<BTreeMap<usize, usize>> = const { RefCell::new(BTreeMap::new()) };
}

/// The offset of the aligned allocation whose pool chunk the base chunk `base` has lent, if any;
/// forgets it.
fn take_redirect(base: *mut u8) -> Option<usize> {
    if !sanitizer::pools() {
        return None;
    }
    REDIRECTS
        .try_with(|r| r.borrow_mut().remove(&(base as usize)))
        .ok()
        .flatten()
}

/// Forgets the redirects of chunks in `[start, end)`, memory a reset or a freed block released
/// (their pool chunks went with the pool trim or the block).
fn forget_redirects(start: usize, end: usize) {
    if !sanitizer::pools() {
        return;
    }
    let _ = REDIRECTS.try_with(|r| {
        let mut r = r.borrow_mut();
        let gone: Vec<usize> = r.range(start..end).map(|(&b, _)| b).collect();
        for b in gone {
            r.remove(&b);
        }
    });
}

/// Reads the header word in front of `data`, a pointer not yet known to be a chunk, without
/// changing what the tools think of those bytes.
///
/// # Safety
/// The header word must lie inside one of this thread's blocks.
unsafe fn peek_header(data: *mut u8) -> ChunkHeader {
    // SAFETY: inside a registered block (caller); 8-aligned because `data` is 16-aligned.
    unsafe { header_peek(chunk::chunk_of(data)) }
}

/// Reads the header word at `chunk` for a walk over a block's chunks, without changing what the
/// tools think of those bytes (a walk may pass over damage, and must not disturb it).
///
/// # Safety
/// `chunk` must be an 8-aligned address inside one of this thread's blocks.
pub(crate) unsafe fn header_peek(chunk: *mut u8) -> ChunkHeader {
    let _peek = sanitizer::peek(chunk, CHUNK_HEADER_SIZE);
    // SAFETY: the caller promises an 8-aligned address inside one of this thread's blocks, which
    // are mapped and readable; the peek keeps the tools from reporting the read.
    ChunkHeader(unsafe { (chunk as *const u64).read() })
}

/// Reads the debug record in front of `data`, a pointer not yet known to be a chunk, without
/// changing what the tools think of those bytes.
///
/// # Safety
/// The record must lie inside one of this thread's blocks.
unsafe fn peek_record(data: *mut u8) -> DebugRecord {
    let _peek = sanitizer::peek(record_start(data), RECORD_SIZE);
    // SAFETY: inside a registered block (caller); 8-aligned because `data` is 16-aligned.
    unsafe { record_ptr(data).read() }
}

const _: () = assert!(FREED_BYTE != REDZONE_BYTE && FRESH_BYTE != FREED_BYTE);
