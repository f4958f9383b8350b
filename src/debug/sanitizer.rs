//! The debug build's link to Valgrind memcheck and AddressSanitizer: one interface, two backends.
//!
//! The hooks (`debug::hooks`) and the verification walk (`debug::verify`) say *what* happens to a
//! range of memory — a chunk handed out or taken back, a resize, a reset, a delete, the allocator
//! opening or closing its own metadata — and this module tells whichever tool is watching:
//!
//! | event | memcheck (client requests through crabgrind) | ASan (its runtime's interface) |
//! |---|---|---|
//! | first block of a context | `CREATE_MEMPOOL(ctx)` — the pool handle is the context header | - |
//! | block taken (mapped under memcheck) | its header a pool chunk, DEFINED (`MEMPOOL_ALLOC`) | (left addressable) |
//! | chunk carved or reused | `MEMPOOL_ALLOC(ctx, data, requested)`: UNDEFINED | unpoison the requested bytes |
//! | pfree | `MEMPOOL_FREE` (memcheck keeps the free stack) | poison the whole chunk |
//! | repalloc in place, large realloc | `MEMPOOL_CHANGE` | unpoison / poison the difference |
//! | reset | `MEMPOOL_TRIM` to the keeper's header | poison the keeper's used space |
//! | last block given back | `DESTROY_MEMPOOL` (the block is unmapped) | (the system allocator's free) |
//! | metadata opened / closed | DEFINED / NOACCESS | unpoison / poison |
//!
//! Everything the allocator does not hand out — chunk headers and debug records, redzones, freed
//! chunks, unused block space — is NOACCESS (poisoned) except while the allocator itself reads or
//! writes it, so an instrumented access there is reported by the tool at the faulting instruction,
//! before the debug build's own patterns would find it at the next pfree or reset.
//!
//! ## Blocks under memcheck, and why block headers are pool chunks
//!
//! Under memcheck the blocks are mapped with `mmap`, not taken from `malloc` (`debug::vgmap`
//! says why: so that memcheck describes a stale access by the freed chunk and its stacks, not by
//! the context's block around it). The leak search scans mapped memory as roots — the bytes it
//! holds addressable and defined: block headers and live chunks' contents — and the pool chunks
//! are the blocks it can call lost. A chunk nothing points to is "definitely lost"; the chunks
//! such a chunk points to are reachable through it (it is scanned as part of the mapping), not
//! "indirectly lost".
//!
//! Each block header is a pool chunk too, as in PostgreSQL, whose blocks come from `malloc`:
//! there a `malloc`'d block that *contains* pool chunks is dropped from the search, neither
//! scanned nor reported, so a block's `prev`/`next` pointers would be invisible and a block with
//! no live chunk would look unreferenced (PostgreSQL reported all blocks but the first leaked
//! before 2025, and fixed it this way). With mapped blocks the header chunk keeps the block list
//! in the search's graph (context header → head block → next block → ...). Our context header is
//! a separate `malloc`'d box holding no pool chunk, so memcheck scans it as an ordinary block.
//!
//! ## Cost when no tool is watching
//!
//! Every function here starts with [`active`]: a compile-time `false` for ASan unless the crate is
//! built with `-Zsanitizer=address` (the build script sets `cfg(memctx_asan)`), and a relaxed load
//! of a cached answer to `RUNNING_ON_VALGRIND` for memcheck, asked once per process. The native
//! debug build pays one predictable branch per call.

use core::ffi::c_void;

use crate::context::ContextHeader;

/// Largest range a [`Peek`] can restore exactly.
const MAX_PEEK: usize = 64;

/// Redzone memcheck assumes around each pool chunk: the bytes before a chunk's data are its
/// front redzone and at least as many after its request are its rear redzone, so an access
/// just outside a chunk is described relative to the chunk ("0 bytes after a block of size
/// 10 client-defined") rather than to the malloc'd block that holds it.
pub(crate) const POOL_REDZONE: usize = {
    use crate::debug::layout::{DEFAULT_REDZONE, FRONT_REDZONE};
    if FRONT_REDZONE < DEFAULT_REDZONE {
        FRONT_REDZONE
    } else {
        DEFAULT_REDZONE
    }
};

/// Whether any tool wants to hear from the allocator.
#[inline(always)]
pub(crate) fn active() -> bool {
    asan::ON || valgrind::running()
}

/// Whether memcheck is watching: pool chunks are tracked (ASan has no such notion).
#[inline(always)]
pub(crate) fn pools() -> bool {
    valgrind::running()
}

/// The first block of `ctx` is being taken: create its pool.
#[inline(always)]
pub(crate) fn pool_create(ctx: *mut ContextHeader) {
    if valgrind::running() {
        valgrind::pool_create(ctx as *const c_void);
    }
}

/// The last block of `ctx` was given back: destroy its pool (and every chunk still in it).
#[inline(always)]
pub(crate) fn pool_destroy(ctx: *mut ContextHeader) {
    if valgrind::running() {
        valgrind::pool_destroy(ctx as *const c_void);
    }
}

/// A block header the allocator has written becomes a pool chunk, so that memcheck's leak
/// search scans the block list (see the module docs).
#[inline(always)]
pub(crate) fn block_header_alloc(ctx: *mut ContextHeader, block: *mut u8, len: usize) {
    if valgrind::running() {
        valgrind::pool_alloc(ctx as *const c_void, block, len);
        valgrind::defined(block, len);
    }
}

/// A block header is going back to the system with its block.
#[inline(always)]
pub(crate) fn block_header_free(ctx: *mut ContextHeader, block: *mut u8) {
    if valgrind::running() {
        valgrind::pool_free(ctx as *const c_void, block);
    }
}

/// A chunk's `size` requested bytes at `data` are handed out (contents undefined).
#[inline(always)]
pub(crate) fn chunk_alloc(ctx: *mut ContextHeader, data: *mut u8, size: usize) {
    if active() {
        valgrind::pool_alloc(ctx as *const c_void, data, size);
        asan::unpoison(data, size);
    }
}

/// The chunk at `data` (capacity `cap`) was freed: nothing of it is addressable any more.
#[inline(always)]
pub(crate) fn chunk_free(ctx: *mut ContextHeader, data: *mut u8, cap: usize) {
    if active() {
        valgrind::pool_free(ctx as *const c_void, data);
        asan::poison(data, cap);
    }
}

/// A live chunk moved from `old` to `new` and/or now holds `size` bytes. Memcheck keeps the
/// contents' state; the caller marks grown and shrunk bytes.
#[inline(always)]
pub(crate) fn chunk_change(ctx: *mut ContextHeader, old: *mut u8, new: *mut u8, size: usize) {
    if valgrind::running() {
        valgrind::pool_change(ctx as *const c_void, old, new, size);
    }
}

/// A reset released every chunk of `ctx`: only the pool chunk at `keep` (the keeper block's
/// header, `len` bytes) survives.
#[inline(always)]
pub(crate) fn pool_trim(ctx: *mut ContextHeader, keep: *mut u8, len: usize) {
    if valgrind::running() {
        valgrind::pool_trim(ctx as *const c_void, keep, len);
    }
}

/// The allocator is about to read or write its own metadata (or freed or unused memory) in
/// `[ptr, ptr + len)`: make it accessible and defined.
#[inline(always)]
pub(crate) fn open(ptr: *mut u8, len: usize) {
    if active() && len > 0 {
        valgrind::defined(ptr, len);
        asan::unpoison(ptr, len);
    }
}

/// The allocator is done with `[ptr, ptr + len)`: nobody may touch it.
#[inline(always)]
pub(crate) fn close(ptr: *mut u8, len: usize) {
    if active() && len > 0 {
        valgrind::noaccess(ptr, len);
        asan::poison(ptr, len);
    }
}

/// Bytes the allocator filled with the fresh pattern become part of a live chunk: memcheck must
/// treat them as never written.
#[inline(always)]
pub(crate) fn undefined(ptr: *mut u8, len: usize) {
    if active() && len > 0 {
        valgrind::undefined(ptr, len);
        asan::unpoison(ptr, len);
    }
}

/// Reads of `[ptr, ptr + len)` whose state is not known (a pointer handed to `pfree` that may
/// not be a chunk): while the guard lives the bytes can be read, and when it drops every byte is
/// back in the state it had — memcheck is told to look away instead of having its state changed,
/// ASan's granules are saved and restored.
pub(crate) struct Peek {
    asan: asan::Saved,
    valgrind: bool,
}

/// Starts a [`Peek`] of at most 64 bytes.
#[inline(always)]
pub(crate) fn peek(ptr: *mut u8, len: usize) -> Peek {
    debug_assert!(len <= MAX_PEEK);
    if !active() {
        return Peek {
            asan: asan::Saved::NONE,
            valgrind: false,
        };
    }
    let vg = valgrind::running();
    if vg {
        valgrind::disable_reports();
    }
    Peek {
        asan: asan::save_and_unpoison(ptr, len),
        valgrind: vg,
    }
}

impl Drop for Peek {
    fn drop(&mut self) {
        if self.valgrind {
            valgrind::enable_reports();
        }
        asan::restore(&self.asan);
    }
}

/// A tool watching this process (see [`tool_view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// Valgrind memcheck (the process runs under `valgrind --tool=memcheck`).
    Memcheck,
    /// AddressSanitizer (the crate is built with `-Zsanitizer=address`).
    Asan,
}

/// What the running tool believes about one byte of memory (see [`tool_view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteView {
    /// Not addressable: the tool reports any access (memcheck's NOACCESS, ASan's poison).
    NoAccess,
    /// Addressable, its value not defined (memcheck: never written since it was handed out).
    Undefined,
    /// Addressable and defined (memcheck).
    Defined,
    /// Addressable (ASan, which does not track whether a byte was written).
    Addressable,
}

impl ByteView {
    /// Whether the program may touch the byte.
    pub fn is_addressable(self) -> bool {
        self != ByteView::NoAccess
    }
}

/// The tool watching this process, if any: ASan in a build with `-Zsanitizer=address`, memcheck
/// when the process runs under Valgrind (asked once, as the allocator asks).
pub fn tool() -> Option<Tool> {
    if asan::ON {
        Some(Tool::Asan)
    } else if valgrind::running() {
        Some(Tool::Memcheck)
    } else {
        None
    }
}

/// What the running tool believes about each byte of `[ptr, ptr + len)`, or `None` when no tool
/// watches: how tests see what the debug build told memcheck or ASan about a chunk (its prefix
/// and redzones closed, its requested bytes open and, under memcheck, undefined until written).
///
/// Memcheck answers through `VALGRIND_GET_VBITS`, which reports no error for unaddressable bytes
/// (it returns 3, and the bytes are asked one by one then); ASan through
/// `__asan_address_is_poisoned`, byte by byte. ASan's shadow describes 8-byte granules as "the
/// first k bytes addressable", so a range it holds addressable is exact only where it ends a
/// granule's addressable prefix: a chunk's data starts on a granule and its rear redzone ends on
/// one, which makes every boundary of a chunk exact.
///
/// # Safety
/// `[ptr, ptr + len)` must lie in the process's address space as the tools know it (memory the
/// process mapped or had mapped, such as a context's block, live or given back); the bytes are
/// never read, only the tool's record of them.
pub unsafe fn tool_view(ptr: *const u8, len: usize) -> Option<Vec<ByteView>> {
    match tool()? {
        // SAFETY: the range is in the process's memory (caller); only ASan's shadow is read.
        Tool::Asan => Some(unsafe { asan::view(ptr, len) }),
        Tool::Memcheck => Some(valgrind::view(ptr, len)),
    }
}

/// Writes `bytes` at `ptr` as a bug would, whatever the running tool believes about them, and
/// leaves the tool's view of them as it was: how a test plants damage in a redzone or a freed
/// chunk under Valgrind or ASan (which would otherwise stop the write itself) to see what the
/// debug build's own checks then find and restore. Memcheck is told not to report the write;
/// ASan's granules are opened and closed again as they were. Natively it is a plain write.
///
/// # Safety
/// `[ptr, ptr + bytes.len())` must be memory the process owns and may write (a context's block),
/// at most 64 bytes; whatever the write breaks there is the caller's to expect.
pub unsafe fn write_unseen(ptr: *mut u8, bytes: &[u8]) {
    assert!(
        bytes.len() <= MAX_PEEK,
        "write_unseen: at most {MAX_PEEK} bytes"
    );
    let _peek = peek(ptr, bytes.len());
    // SAFETY: the range is writable memory of the process (caller), and while the peek lives
    // neither tool stops the write.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
}

/// Memcheck, through crabgrind's client requests.
mod valgrind {
    use core::ffi::c_void;
    use core::sync::atomic::{AtomicU8, Ordering};

    use crabgrind::memcheck::{self, MemState};
    use crabgrind::valgrind as vg;

    /// 0: not asked yet; 1: native; 2: under Valgrind.
    static STATE: AtomicU8 = AtomicU8::new(0);

    /// Whether the process runs under Valgrind (asked once, then cached).
    #[inline(always)]
    pub(super) fn running() -> bool {
        match STATE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => probe(),
        }
    }

    #[cold]
    #[inline(never)]
    fn probe() -> bool {
        // Without Valgrind's headers at build time crabgrind's requests panic; such a build
        // cannot talk to Valgrind, so it behaves as if it ran natively.
        let on = crabgrind::VALGRIND_AVAILABLE && vg::running_mode().is_valgrind();
        STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
        on
    }

    pub(super) fn pool_create(pool: *const c_void) {
        // Creating a pool twice aborts Valgrind; a context header is never freed, so its pool
        // can only exist already if a previous life's last block was not given back.
        if !vg::mempool_exists(pool) {
            vg::create_mempool(pool, super::POOL_REDZONE, false, None);
        }
    }

    pub(super) fn pool_destroy(pool: *const c_void) {
        vg::mempool_destroy(pool);
    }

    pub(super) fn pool_alloc(pool: *const c_void, addr: *mut u8, size: usize) {
        if running() {
            vg::mempool_alloc(pool, addr as *const c_void, size);
        }
    }

    pub(super) fn pool_free(pool: *const c_void, addr: *mut u8) {
        if running() {
            vg::mempool_free(pool, addr as *const c_void);
        }
    }

    pub(super) fn pool_change(pool: *const c_void, old: *mut u8, new: *mut u8, size: usize) {
        vg::mempool_change(pool, old as *const c_void, new as *const c_void, size);
    }

    pub(super) fn pool_trim(pool: *const c_void, addr: *mut u8, size: usize) {
        vg::mempool_trim(pool, addr as *const c_void, size);
    }

    fn mark(addr: *mut u8, len: usize, state: MemState) {
        if running() {
            // The result only says whether Valgrind is running, which `running` established.
            let _ = memcheck::mark_memory(addr as *const c_void, len, state);
        }
    }

    pub(super) fn defined(addr: *mut u8, len: usize) {
        mark(addr, len, MemState::Defined);
    }

    pub(super) fn undefined(addr: *mut u8, len: usize) {
        mark(addr, len, MemState::Undefined);
    }

    pub(super) fn noaccess(addr: *mut u8, len: usize) {
        mark(addr, len, MemState::NoAccess);
    }

    /// Memcheck's view of `[addr, addr + len)`: the V bits of the whole range at once when it
    /// is addressable, else byte by byte (a range with an unaddressable byte yields no bits).
    pub(super) fn view(addr: *const u8, len: usize) -> Vec<super::ByteView> {
        use super::ByteView;
        let state = |bits: u8| {
            if bits == 0 {
                ByteView::Defined
            } else {
                ByteView::Undefined
            }
        };
        let mut bits = vec![0u8; len];
        if memcheck::vbits(addr as *const c_void, &mut bits).is_ok() {
            return bits.into_iter().map(state).collect();
        }
        (0..len)
            .map(|i| {
                let mut one = [0u8];
                match memcheck::vbits(addr.wrapping_add(i) as *const c_void, &mut one) {
                    Ok(()) => state(one[0]),
                    Err(_) => ByteView::NoAccess,
                }
            })
            .collect()
    }

    /// Stops error reports from this thread (nestable). Reads of inaccessible bytes then load
    /// them as defined without a report, and change no state.
    pub(super) fn disable_reports() {
        vg::disable_error_reporting();
    }

    /// Undoes one [`disable_reports`].
    pub(super) fn enable_reports() {
        vg::enable_error_reporting();
    }
}

/// AddressSanitizer's manual poisoning, when the crate is built with `-Zsanitizer=address`.
///
/// Shadow memory describes 8-byte granules, each "the first k bytes addressable" (k = 0..=8):
/// poisoning a range that starts inside a granule keeps the bytes before it addressable, and a
/// range that ends inside one is only poisoned if the rest of that granule is. The chunk layout
/// keeps metadata, data starts and redzone ends on 8-byte boundaries, so every state here is
/// exact.
#[cfg(memctx_asan)]
mod asan {
    use core::ffi::c_void;

    extern "C" {
        fn __asan_poison_memory_region(addr: *const c_void, size: usize);
        fn __asan_unpoison_memory_region(addr: *const c_void, size: usize);
        fn __asan_region_is_poisoned(beg: *mut c_void, size: usize) -> *mut c_void;
        fn __asan_address_is_poisoned(addr: *const c_void) -> i32;
    }

    /// ASan's view of `[addr, addr + len)`, byte by byte.
    ///
    /// # Safety
    /// As [`super::tool_view`].
    pub(super) unsafe fn view(addr: *const u8, len: usize) -> Vec<super::ByteView> {
        (0..len)
            .map(|i| {
                // SAFETY: the byte is in the application's memory (caller); the runtime reads
                // only its shadow.
                let poisoned =
                    unsafe { __asan_address_is_poisoned(addr.wrapping_add(i) as *const c_void) };
                if poisoned != 0 {
                    super::ByteView::NoAccess
                } else {
                    super::ByteView::Addressable
                }
            })
            .collect()
    }

    /// The crate is built with ASan.
    pub(super) const ON: bool = true;

    const GRANULE: usize = 8;
    const MAX_GRANULES: usize = super::MAX_PEEK / GRANULE + 1;

    pub(super) fn poison(addr: *mut u8, len: usize) {
        if len > 0 {
            // SAFETY: the runtime only writes the shadow of the range; the range lies in memory
            // the allocator owns (a block), as every caller passes.
            unsafe { __asan_poison_memory_region(addr as *const c_void, len) }
        }
    }

    pub(super) fn unpoison(addr: *mut u8, len: usize) {
        if len > 0 {
            // SAFETY: as `poison`.
            unsafe { __asan_unpoison_memory_region(addr as *const c_void, len) }
        }
    }

    /// The addressable prefix of each granule of a peeked range.
    pub(super) struct Saved {
        start: usize,
        count: usize,
        addressable: [u8; MAX_GRANULES],
    }

    impl Saved {
        pub(super) const NONE: Saved = Saved {
            start: 0,
            count: 0,
            addressable: [GRANULE as u8; MAX_GRANULES],
        };
    }

    pub(super) fn save_and_unpoison(addr: *mut u8, len: usize) -> Saved {
        let start = addr as usize & !(GRANULE - 1);
        let end = (addr as usize + len + GRANULE - 1) & !(GRANULE - 1);
        let count = ((end - start) / GRANULE).min(MAX_GRANULES);
        let mut saved = Saved {
            start,
            count,
            addressable: [GRANULE as u8; MAX_GRANULES],
        };
        for (i, slot) in saved.addressable[..count].iter_mut().enumerate() {
            let g = start + i * GRANULE;
            // SAFETY: a pure query of the shadow of one granule of our own block.
            let first = unsafe { __asan_region_is_poisoned(g as *mut c_void, GRANULE) } as usize;
            *slot = if first == 0 { GRANULE } else { first - g } as u8;
        }
        unpoison(start as *mut u8, count * GRANULE);
        saved
    }

    pub(super) fn restore(saved: &Saved) {
        for i in 0..saved.count {
            let k = saved.addressable[i] as usize;
            if k < GRANULE {
                let g = saved.start + i * GRANULE;
                poison((g + k) as *mut u8, GRANULE - k);
            }
        }
    }
}

/// Without ASan every call is empty.
#[cfg(not(memctx_asan))]
mod asan {
    /// The crate is not built with ASan.
    pub(super) const ON: bool = false;

    #[inline(always)]
    pub(super) fn poison(_addr: *mut u8, _len: usize) {}

    #[inline(always)]
    pub(super) fn unpoison(_addr: *mut u8, _len: usize) {}

    /// Nothing to save.
    pub(super) struct Saved;

    impl Saved {
        pub(super) const NONE: Saved = Saved;
    }

    #[inline(always)]
    pub(super) fn save_and_unpoison(_addr: *mut u8, _len: usize) -> Saved {
        Saved
    }

    #[inline(always)]
    pub(super) fn restore(_saved: &Saved) {}

    /// Never called: [`super::tool`] names ASan only in an ASan build.
    ///
    /// # Safety
    /// None needed; it reads nothing.
    pub(super) unsafe fn view(_addr: *const u8, _len: usize) -> Vec<super::ByteView> {
        unreachable!("ASan's view asked for in a build without ASan")
    }
}
