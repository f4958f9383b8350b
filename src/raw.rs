//! The raw API: palloc, palloc0, pfree, repalloc over raw pointers, as in PostgreSQL.
//!
//! This is the API for unsafe code and FFI, and the one the debug build exists to check: nothing
//! here ties a pointer's lifetime to anything, exactly as in C. Allocation functions are safe to
//! call (they only hand out memory); `pfree` and `repalloc` are `unsafe`, because the pointer they
//! take must be a live chunk of the calling thread's tree.
//!
//! Errors follow PostgreSQL: a size above [`MAX_ALLOC_SIZE`] (1 GB − 1) without
//! [`AllocFlags::HUGE`] is `invalid memory alloc request size N`, and a failure of the system
//! allocator is `out of memory` naming the size and the context — both raised as panics, Rust's
//! `ereport(ERROR)`. With [`AllocFlags::NO_OOM`] an out-of-memory failure returns null instead. A
//! zero size is valid and returns a distinct pointer, as `palloc(0)` does.
//!
//! Every pointer carries a chunk header in front of it, so `pfree` dispatches on the kind id stored
//! there; an unknown kind id (a pointer memctx never handed out, or a smashed header) is a clean
//! panic rather than a wild free. The debug build adds full pointer validation before the header is
//! trusted.

use core::ptr::{self, NonNull};

use crate::chunk::{self, align_up, ChunkHeader, ChunkKind, CHUNK_ALIGN, CHUNK_PREFIX};
use crate::context::{current_ptr, ContextHeader, MemoryContext};
use crate::error::{invalid_size_message, out_of_memory_message};
use crate::hooks;
use crate::kinds::{self, Target};

/// Largest request without [`AllocFlags::HUGE`]: PostgreSQL's `MaxAllocSize`, 1 GB − 1.
pub const MAX_ALLOC_SIZE: usize = 0x3fff_ffff;
/// Largest request with [`AllocFlags::HUGE`]: PostgreSQL's `MaxAllocHugeSize` (half the address
/// space), less room for the block and chunk headers and alignment padding.
pub const MAX_ALLOC_HUGE_SIZE: usize = (usize::MAX >> 1) - (1 << 20);
/// Largest alignment [`palloc_aligned`] accepts (the redirect header encodes the distance).
pub const MAX_ALIGNMENT: usize = 1 << 26;

/// Flags of [`palloc_extended`]: PostgreSQL's `MCXT_ALLOC_*`.
///
/// # Examples
/// ```
/// use memctx::{palloc_extended, AllocFlags};
/// let p = palloc_extended(64, AllocFlags::ZERO | AllocFlags::NO_OOM);
/// assert!(!p.is_null());
/// assert_eq!(unsafe { *p.add(63) }, 0);
/// unsafe { memctx::pfree(p) };
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocFlags(u8);

impl AllocFlags {
    /// No flags.
    pub const NONE: AllocFlags = AllocFlags(0);
    /// Allow sizes above [`MAX_ALLOC_SIZE`] (`MCXT_ALLOC_HUGE`).
    pub const HUGE: AllocFlags = AllocFlags(1);
    /// Return null instead of panicking when the system is out of memory (`MCXT_ALLOC_NO_OOM`).
    pub const NO_OOM: AllocFlags = AllocFlags(2);
    /// Zero the memory (`MCXT_ALLOC_ZERO`).
    pub const ZERO: AllocFlags = AllocFlags(4);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: AllocFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for AllocFlags {
    type Output = AllocFlags;
    fn bitor(self, rhs: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 | rhs.0)
    }
}

/// Checks `size` against the limit `flags` allow; panics with PostgreSQL's message.
#[inline(always)]
fn check_size(size: usize, flags: AllocFlags) {
    if size > MAX_ALLOC_SIZE {
        check_huge_size(size, flags);
    }
}

#[cold]
#[inline(never)]
fn check_huge_size(size: usize, flags: AllocFlags) {
    if !flags.contains(AllocFlags::HUGE) || size > MAX_ALLOC_HUGE_SIZE {
        panic!("{}", invalid_size_message(size));
    }
}

/// Allocation in `ctx` with the size already checked: null only when the system allocator failed.
///
/// # Safety
/// `ctx` must be a live context of the calling thread; `size` at most [`MAX_ALLOC_HUGE_SIZE`].
#[inline(always)]
pub(crate) unsafe fn alloc_unchecked(ctx: *mut ContextHeader, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: `ctx` is a live context of this thread and `size` within the huge limit (caller),
    // which is what every kind's alloc needs.
    let p = unsafe { kinds::alloc(ctx, size) };
    if zero && !p.is_null() {
        // SAFETY: `p` has at least `size` writable bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// The allocation path shared by every palloc variant.
///
/// # Safety
/// `ctx` must be a live context of the calling thread.
#[inline(always)]
unsafe fn alloc_in(ctx: *mut ContextHeader, size: usize, flags: AllocFlags) -> *mut u8 {
    check_size(size, flags);
    // SAFETY: `ctx` is a live context of this thread (caller) and `check_size` just bounded
    // `size` by the limit `flags` allow, at most the huge limit.
    let p = unsafe { alloc_unchecked(ctx, size, flags.contains(AllocFlags::ZERO)) };
    if p.is_null() && !flags.contains(AllocFlags::NO_OOM) {
        // SAFETY: live context.
        out_of_memory(size, unsafe { (*ctx).name() });
    }
    p
}

#[cold]
#[inline(never)]
fn out_of_memory(size: usize, name: &str) -> ! {
    panic!("{}", out_of_memory_message(size, name))
}

/// Allocates `size` bytes in CurrentMemoryContext (`palloc`). The memory is not initialised.
///
/// # Panics
/// `invalid memory alloc request size N` above [`MAX_ALLOC_SIZE`]; out of memory.
///
/// # Examples
/// ```
/// let p = memctx::palloc(16);
/// unsafe {
///     p.write_bytes(1, 16);
///     memctx::pfree(p);
/// }
/// ```
#[inline]
pub fn palloc(size: usize) -> *mut u8 {
    // SAFETY: the current context is live.
    unsafe { alloc_in(current_ptr(), size, AllocFlags::NONE) }
}

/// Allocates `size` zeroed bytes in CurrentMemoryContext (`palloc0`).
///
/// # Panics
/// As [`palloc`].
#[inline]
pub fn palloc0(size: usize) -> *mut u8 {
    // SAFETY: the current context is live.
    unsafe { alloc_in(current_ptr(), size, AllocFlags::ZERO) }
}

/// Allocates in CurrentMemoryContext with [`AllocFlags`] (`palloc_extended`).
///
/// # Panics
/// As [`palloc`], except that with [`AllocFlags::NO_OOM`] an out-of-memory failure returns null.
#[inline]
pub fn palloc_extended(size: usize, flags: AllocFlags) -> *mut u8 {
    // SAFETY: the current context is live.
    unsafe { alloc_in(current_ptr(), size, flags) }
}

/// Allocates `size` bytes aligned to `align` (a power of two) in CurrentMemoryContext
/// (`palloc_aligned`). Alignments up to 16 take the ordinary path; larger ones over-allocate and
/// put a redirect header in front of the aligned pointer, which `pfree` and `repalloc` follow.
///
/// # Panics
/// As [`palloc_extended`], and if `align` is not a power of two or exceeds [`MAX_ALIGNMENT`].
pub fn palloc_aligned(size: usize, align: usize, flags: AllocFlags) -> *mut u8 {
    // SAFETY: the current context is live.
    unsafe { alloc_aligned_in(current_ptr(), size, align, flags) }
}

/// Aligned allocation in `ctx`.
///
/// # Safety
/// `ctx` must be a live context of the calling thread.
pub(crate) unsafe fn alloc_aligned_in(
    ctx: *mut ContextHeader,
    size: usize,
    align: usize,
    flags: AllocFlags,
) -> *mut u8 {
    if !align.is_power_of_two() || align > MAX_ALIGNMENT {
        panic!("invalid alignment {align} requested in palloc_aligned");
    }
    if align <= CHUNK_ALIGN {
        // SAFETY: `ctx` is a live context of this thread (caller); every chunk is already
        // `CHUNK_ALIGN`-aligned, so the plain path serves this alignment.
        return unsafe { alloc_in(ctx, size, flags) };
    }
    check_size(size, flags);
    // The over-allocation is ours, not the caller's: a size the limit allows that cannot be padded
    // is out of memory for the request, never "invalid size" for a number nobody asked for.
    let base = match size.checked_add(align + CHUNK_PREFIX) {
        // SAFETY: `ctx` is a live context of this thread (caller); the guard bounds the padded
        // size by the huge limit.
        Some(total) if total <= MAX_ALLOC_HUGE_SIZE => unsafe {
            alloc_unchecked(ctx, total, false)
        },
        _ => ptr::null_mut(),
    };
    if base.is_null() {
        if !flags.contains(AllocFlags::NO_OOM) {
            // SAFETY: live context.
            out_of_memory(size, unsafe { (*ctx).name() });
        }
        return base;
    }
    let aligned = align_up(base as usize + CHUNK_PREFIX, align);
    let p = base.wrapping_add(aligned - base as usize);
    let header = ChunkHeader::new(
        ChunkKind::AlignedRedirect,
        false,
        align.trailing_zeros(),
        p as usize - base as usize,
    );
    // SAFETY: the redirect header lies inside `base`'s data: p - CHUNK_PREFIX >= base.
    unsafe {
        hooks::redirect_written(ctx, base, p, size);
        chunk::write_header(chunk::chunk_of(p), header);
        if flags.contains(AllocFlags::ZERO) {
            ptr::write_bytes(p, 0, size);
        }
    }
    p
}

/// Frees a chunk (`pfree`).
///
/// # Safety
/// `ptr` must have been returned by this crate's allocation functions on this thread, not freed
/// since, and its context not reset or deleted since. The debug build reports violations of this
/// contract instead of corrupting memory; a release build trusts it.
///
/// `ptr` must not be a chunk of a Bump context ([`MemoryContext::new_bump_child`]): a release
/// build's Bump chunks have no header, so `pfree`, `repalloc`, `chunk_context` and `chunk_space`
/// of one read whatever lies in front of it — undefined behaviour, as in PostgreSQL. The debug
/// build gives Bump chunks a header, and these calls panic with `pfree is not supported by the
/// bump memory allocator` (`repalloc`, `GetMemoryChunkContext`, `GetMemoryChunkSpace`).
///
/// # Panics
/// If `ptr` is null, or its header names no context kind (a pointer memctx never handed out).
#[inline]
pub unsafe fn pfree(ptr: *mut u8) {
    // SAFETY: the caller promises `ptr` is a live chunk of this thread; the debug build checks
    // that first and returns on a reported violation, so the header read and the kind's free
    // below see a chunk header.
    unsafe {
        if !hooks::validate_pointer(ptr, "pfree", None) {
            return;
        }
        free_unvalidated(ptr, "pfree");
    }
}

/// The free both `pfree` and the safe API's `deallocate` end in, once the pointer was validated.
///
/// # Safety
/// As [`pfree`].
#[inline(always)]
unsafe fn free_unvalidated(ptr: *mut u8, op: &str) {
    // SAFETY: the caller promises a live chunk of this thread's tree (the debug build has
    // validated it), so its header is readable and names its kind, or a redirect to its base.
    unsafe {
        let hdr = chunk::read_header(ptr);
        match kinds::target(ptr, hdr, op) {
            Target::Chunk(kind) => kinds::free(kind, ptr, hdr),
            Target::Redirect(base) => pfree(base),
        }
    }
}

/// Frees a chunk, checking (in the debug build) that `expected` owns it.
///
/// # Safety
/// As [`pfree`].
pub(crate) unsafe fn pfree_in(expected: *mut ContextHeader, ptr: *mut u8) {
    // SAFETY: as in `pfree`: `ptr` is a live chunk of this thread (caller), checked first in the
    // debug build against `expected` too.
    unsafe {
        if !hooks::validate_pointer(ptr, "deallocate", Some(expected)) {
            return;
        }
        free_unvalidated(ptr, "deallocate");
    }
}

/// Resizes a chunk (`repalloc`), keeping it in its own context. Returns the new pointer; the old
/// one is invalid afterwards unless they are equal. Contents up to the smaller size are preserved;
/// grown bytes are not initialised.
///
/// # Safety
/// As [`pfree`].
///
/// # Panics
/// As [`palloc`] for the new size, and as [`pfree`] for the pointer.
pub unsafe fn repalloc(ptr: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: `repalloc_extended` asks what this function's caller promises: a live chunk.
    unsafe { repalloc_extended(ptr, size, AllocFlags::NONE) }
}

/// [`repalloc`] allowing sizes above 1 GB (`repalloc_huge`).
///
/// # Safety
/// As [`pfree`].
///
/// # Panics
/// As [`repalloc`].
pub unsafe fn repalloc_huge(ptr: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: `repalloc_extended` asks what this function's caller promises: a live chunk.
    unsafe { repalloc_extended(ptr, size, AllocFlags::HUGE) }
}

/// [`repalloc`] with flags (`repalloc_extended`): with [`AllocFlags::NO_OOM`] a failure returns
/// null and leaves the old chunk valid; [`AllocFlags::ZERO`] is not supported (as in PostgreSQL)
/// and ignored.
///
/// # Safety
/// As [`pfree`].
///
/// # Panics
/// As [`repalloc`].
pub unsafe fn repalloc_extended(ptr: *mut u8, size: usize, flags: AllocFlags) -> *mut u8 {
    // SAFETY: `realloc_in` asks what this function's caller promises: a live chunk.
    unsafe { realloc_in(ptr, size, flags, None, None) }
}

/// The repalloc path shared with the safe API.
///
/// `known_old` is the old size when the caller knows it (the safe API's layout); `expected` the
/// context the caller believes owns the chunk (checked in the debug build).
///
/// # Safety
/// As [`pfree`].
pub(crate) unsafe fn realloc_in(
    ptr: *mut u8,
    size: usize,
    flags: AllocFlags,
    known_old: Option<usize>,
    expected: Option<*mut ContextHeader>,
) -> *mut u8 {
    check_size(size, flags);
    // SAFETY: `ptr` is a live chunk of this thread (caller); the debug build checks that first
    // and returns null on a reported violation, so the header reads below see a chunk header.
    unsafe {
        if !hooks::validate_pointer(ptr, "repalloc", expected) {
            return ptr::null_mut();
        }
        let hdr = chunk::read_header(ptr);
        let new = match kinds::target(ptr, hdr, "repalloc") {
            Target::Chunk(kind) => {
                let cap = kinds::capacity(kind, ptr, hdr);
                let old = known_old.unwrap_or_else(|| hooks::requested_size(ptr, cap));
                kinds::realloc(kind, ptr, hdr, size, old)
            }
            Target::Redirect(base) => realloc_redirect(ptr, base, hdr, size, flags, known_old),
        };
        if new.is_null() && !flags.contains(AllocFlags::NO_OOM) {
            out_of_memory(size, (*chunk_context_ptr(ptr)).name());
        }
        new
    }
}

/// repalloc of an over-aligned chunk: a new aligned chunk in the same context, contents copied.
///
/// # Safety
/// `ptr` must be a live aligned-redirect pointer with header `hdr`, `base` the chunk holding it.
unsafe fn realloc_redirect(
    ptr: *mut u8,
    base: *mut u8,
    hdr: ChunkHeader,
    size: usize,
    flags: AllocFlags,
    known_old: Option<usize>,
) -> *mut u8 {
    let align = 1usize << hdr.value();
    // SAFETY: `base` is the live chunk holding `ptr` (caller).
    unsafe {
        let bh = chunk::read_header(base);
        let Target::Chunk(kind) = kinds::target(base, bh, "repalloc") else {
            kinds::invalid_pointer("repalloc", base, bh);
        };
        let ctx = kinds::owner(kind, base, bh);
        let base_cap = kinds::capacity(kind, base, bh);
        let old = known_old.unwrap_or_else(|| hooks::requested_size(base, base_cap) - hdr.offset());
        let new = alloc_aligned_in(ctx, size, align, AllocFlags(flags.0 | AllocFlags::NO_OOM.0));
        if new.is_null() {
            return new;
        }
        ptr::copy_nonoverlapping(ptr, new, old.min(size));
        pfree(base);
        new
    }
}

/// The header of the context owning `ptr`, following redirects.
///
/// # Safety
/// `ptr` must be a live chunk.
pub(crate) unsafe fn chunk_context_ptr(ptr: *mut u8) -> *mut ContextHeader {
    // SAFETY: `ptr` is a live chunk (caller), so a chunk header precedes it and its kind's
    // back-link leads to its block and context.
    unsafe {
        let hdr = chunk::read_header(ptr);
        match kinds::target(ptr, hdr, "GetMemoryChunkContext") {
            Target::Chunk(kind) => kinds::owner(kind, ptr, hdr),
            Target::Redirect(base) => chunk_context_ptr(base),
        }
    }
}

/// The context that owns a chunk (`GetMemoryChunkContext`).
///
/// # Safety
/// As [`pfree`].
///
/// # Panics
/// As [`pfree`].
pub unsafe fn chunk_context(ptr: *mut u8) -> MemoryContext {
    // SAFETY: `ptr` is a live chunk of this thread (caller), checked first in the debug build,
    // so its header and the context it names are readable.
    unsafe {
        if !hooks::validate_pointer(ptr, "GetMemoryChunkContext", None) {
            // The debug build has reported what is wrong with the pointer; there is no context
            // to return.
            panic!("GetMemoryChunkContext called with invalid pointer {ptr:p}");
        }
        MemoryContext::from_raw(chunk_context_ptr(ptr))
    }
}

/// Bytes a chunk occupies in its block, header and alignment padding included
/// (`GetMemoryChunkSpace`); for a chunk with a block of its own, the chunk's part of that block.
///
/// # Safety
/// As [`pfree`].
///
/// # Panics
/// As [`pfree`].
pub unsafe fn chunk_space(ptr: *mut u8) -> usize {
    // SAFETY: `ptr` is a live chunk (caller), so a chunk header precedes it to be decoded.
    unsafe {
        let hdr = chunk::read_header(ptr);
        match kinds::target(ptr, hdr, "GetMemoryChunkSpace") {
            Target::Chunk(kind) => kinds::space(kind, ptr, hdr),
            Target::Redirect(base) => chunk_space(base),
        }
    }
}

/// Copies `s` into CurrentMemoryContext as a NUL-terminated C string (`pstrdup`).
///
/// # Panics
/// As [`palloc`].
pub fn pstrdup(s: &str) -> *mut u8 {
    let p = palloc(s.len() + 1);
    // SAFETY: `p` has `len + 1` writable bytes.
    unsafe {
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        p.add(s.len()).write(0);
    }
    p
}

impl MemoryContext {
    /// Allocates `size` bytes in this context (`MemoryContextAlloc`).
    ///
    /// # Panics
    /// If the context was deleted; otherwise as [`palloc`].
    #[inline]
    pub fn alloc(self, size: usize) -> NonNull<u8> {
        // SAFETY: `raw` checked the context is live; alloc_in never returns null without NO_OOM.
        unsafe { NonNull::new_unchecked(alloc_in(self.raw(), size, AllocFlags::NONE)) }
    }

    /// Allocates `size` zeroed bytes in this context (`MemoryContextAllocZero`).
    ///
    /// # Panics
    /// As [`MemoryContext::alloc`].
    #[inline]
    pub fn alloc_zeroed(self, size: usize) -> NonNull<u8> {
        // SAFETY: as `alloc`.
        unsafe { NonNull::new_unchecked(alloc_in(self.raw(), size, AllocFlags::ZERO)) }
    }

    /// Allocates with flags (`MemoryContextAllocExtended`); `None` only with
    /// [`AllocFlags::NO_OOM`] when out of memory.
    ///
    /// # Panics
    /// As [`palloc_extended`], and if the context was deleted.
    #[inline]
    pub fn alloc_extended(self, size: usize, flags: AllocFlags) -> Option<NonNull<u8>> {
        // SAFETY: `raw` checked the context is live.
        NonNull::new(unsafe { alloc_in(self.raw(), size, flags) })
    }

    /// Allocates `size` bytes aligned to `align` (`MemoryContextAllocAligned`).
    ///
    /// # Panics
    /// As [`palloc_aligned`], and if the context was deleted.
    pub fn alloc_aligned(
        self,
        size: usize,
        align: usize,
        flags: AllocFlags,
    ) -> Option<NonNull<u8>> {
        // SAFETY: `raw` checked the context is live.
        NonNull::new(unsafe { alloc_aligned_in(self.raw(), size, align, flags) })
    }
}
