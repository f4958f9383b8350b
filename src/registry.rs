//! The debugger registry: where an external tool finds every thread's TopMemoryContext.
//!
//! The article this project started from walks PostgreSQL's `TopMemoryContext` global with a gdb
//! script. A Rust program has one tree per thread, and thread-locals are awkward to reach from a
//! debugger (and impossible in a core file without libthread_db's help), so memctx keeps a plain
//! `#[no_mangle]` static, [`MEMCTX_REGISTRY`], heading a lock-free, append-only list of
//! [`ThreadEntry`] records, one per thread that ever created a tree. Entries are never freed, so a
//! reader that stops the process at any instant sees a valid list.
//!
//! The registry is also what keeps a thread's tree *owned* after the thread exits. Context headers
//! are never freed (stale handles read them), and a thread's tree outlives the thread, so each
//! entry holds the pointers that own the tree — `top` for the live contexts, `tree` for the
//! recycle lists of deleted headers — rather than the thread's own thread-local storage, which is
//! gone at exit. Every header and block of a tree is thus reachable from a global for the life of
//! the process, which Valgrind memcheck's leak search calls "still reachable"; a chunk, as with
//! malloc, is reachable only while something points to it.
//!
//! The registry also publishes the layout a walker needs: the size and field offsets of the
//! context header and block header, and the kind ids chunk headers and context headers carry. A walker that reads those offsets instead of debug info works
//! on a release build without debug info too: only the `MEMCTX_REGISTRY` symbol is required.

use core::ffi::c_void;
use core::mem::offset_of;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU8, Ordering};

use crate::chunk::{Block, ChunkKind};
use crate::context::{ContextHeader, LAYOUT_VERSION};
use crate::kinds::aset::AllocSetState;
use crate::kinds::generation::Counts;
use crate::kinds::slab::{SlabBlock, SlabState};

/// Magic at the start of [`MEMCTX_REGISTRY`] ("MCTXREG1" as little-endian bytes).
pub const REGISTRY_MAGIC: u64 = u64::from_le_bytes(*b"MCTXREG1");

/// Thread state in [`ThreadEntry::state`]: the thread is running.
pub const THREAD_LIVE: u32 = 1;
/// Thread state in [`ThreadEntry::state`]: the thread has exited; its tree is kept (see the context
/// module's docs on threads).
pub const THREAD_EXITED: u32 = 2;

/// Byte offsets of the fields of the context and block headers, for walkers without debug info.
#[repr(C)]
#[derive(Debug)]
pub struct LayoutInfo {
    /// `size_of` the context header.
    pub context_size: u32,
    /// Offset of the magic (u64).
    pub magic: u32,
    /// Offset of the id (u64).
    pub id: u32,
    /// Offset of the name pointer (`*const u8`) and, 8 bytes later, its length.
    pub name: u32,
    /// Offset of the identifier pointer (null if none) and, 8 bytes later, its length.
    pub ident: u32,
    /// Offset of the parent pointer.
    pub parent: u32,
    /// Offset of the first-child pointer.
    pub first_child: u32,
    /// Offset of the next-sibling pointer.
    pub next_sibling: u32,
    /// Offset of `mem_allocated` (usize).
    pub mem_allocated: u32,
    /// Offset of the block-list head (every kind's).
    pub blocks: u32,
    /// Offset of the AllocSet's eleven freelist heads (in the kind state, valid when the
    /// context's kind is AllocSet).
    pub freelist: u32,
    /// `size_of` the block header.
    pub block_size: u32,
    /// Offset of a block's next pointer.
    pub block_next: u32,
    /// Offset of a block's free pointer.
    pub block_free_ptr: u32,
    /// Offset of a block's end pointer.
    pub block_end_ptr: u32,
    /// Bytes from a chunk's start to its data (chunk prefix), for walking freelists.
    pub chunk_prefix: u32,
    /// Offset of the context's kind id (u32), the id its chunks' headers carry.
    pub kind: u32,
    /// The kind id of AllocSet contexts and chunks.
    pub alloc_set_id: u32,
    /// The kind id of an aligned-redirect chunk header.
    pub redirect_id: u32,
    /// The kind id of Bump contexts (their chunks carry it in the debug build only).
    pub bump_id: u32,
    /// The kind id of Generation contexts and chunks.
    pub generation_id: u32,
    /// Offset in a Generation block of its count of freed chunks (u32), which its stats report
    /// as free chunks.
    pub generation_nfree: u32,
    /// The kind id of Slab contexts and chunks.
    pub slab_id: u32,
    /// Offset in a Slab block of its count of free slots (u32: on its free list or never used).
    pub slab_nfree: u32,
    /// Offset in the context header of a Slab's slot footprint (usize: every chunk's bytes in its
    /// block, prefix included), valid when the context's kind is Slab.
    pub slab_footprint: u32,
}

/// The registry a debugger reads. See the module docs.
#[repr(C)]
#[derive(Debug)]
pub struct Registry {
    /// [`REGISTRY_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// Number of entries ever registered.
    pub nthreads: AtomicU32,
    /// Newest entry first.
    pub head: AtomicPtr<ThreadEntry>,
    /// Header layout.
    pub layout: LayoutInfo,
    /// The running [`crate::dump::Dumper`], if any: what `memctx watch` reads (from
    /// `/proc/PID/mem`) to know whether the process's dump signal is safe to send.
    pub dumper: DumperInfo,
}

/// Bytes of [`DumperInfo::dir`].
pub const DUMPER_DIR_MAX: usize = 512;

/// [`DumperInfo::state`]: no dumper runs.
pub const DUMPER_OFF: u32 = 0;
/// [`DumperInfo::state`]: a dumper runs; `signal` and `dir` describe it.
pub const DUMPER_ON: u32 = 1;

/// The dumper's published settings. A reader outside the process checks `state` last-written
/// first: the fields are written before `state` turns [`DUMPER_ON`] (release), and `state` turns
/// [`DUMPER_OFF`] before the signal handler is removed, so a reader that sees `DUMPER_ON` saw a
/// handler installed for `signal` a moment ago (it confirms it in `/proc/PID/status` too).
#[repr(C)]
#[derive(Debug)]
pub struct DumperInfo {
    /// [`DUMPER_OFF`] or [`DUMPER_ON`].
    pub state: AtomicU32,
    /// The dump signal (0: the dumper has none).
    pub signal: AtomicI32,
    /// Bytes of `dir` in use; 0 when the directory's absolute path does not fit.
    pub dir_len: AtomicU32,
    /// The snapshot directory's absolute path (not NUL-terminated).
    pub dir: [AtomicU8; DUMPER_DIR_MAX],
}

/// Publishes a starting dumper's signal and directory.
pub(crate) fn publish_dumper(signal: Option<i32>, dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let info = &MEMCTX_REGISTRY.dumper;
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let bytes = abs.as_os_str().as_bytes();
    let len = if bytes.len() <= DUMPER_DIR_MAX {
        bytes.len()
    } else {
        0
    };
    for (slot, &b) in info.dir.iter().zip(&bytes[..len]) {
        slot.store(b, Ordering::Relaxed);
    }
    info.dir_len.store(len as u32, Ordering::Relaxed);
    info.signal.store(signal.unwrap_or(0), Ordering::Relaxed);
    info.state.store(DUMPER_ON, Ordering::Release);
}

/// Withdraws the dumper's entry (before its signal handler goes).
pub(crate) fn withdraw_dumper() {
    MEMCTX_REGISTRY
        .dumper
        .state
        .store(DUMPER_OFF, Ordering::Release);
}

/// One thread's entry in the registry.
///
/// The entry is also where a thread's tree is *owned from* once the thread is gone: `top` roots the
/// live contexts and `tree` holds the recycle lists of deleted headers. Both stay reachable from
/// [`MEMCTX_REGISTRY`] for the life of the process, so a tree that outlives its thread is memory a
/// global still points to — "still reachable" for Valgrind memcheck's leak search, not lost with
/// the thread's thread-local storage.
#[repr(C)]
#[derive(Debug)]
pub struct ThreadEntry {
    /// Next (older) entry.
    pub next: *mut ThreadEntry,
    /// The thread's TopMemoryContext header.
    pub top: *mut c_void,
    /// [`THREAD_LIVE`] or [`THREAD_EXITED`].
    pub state: AtomicU32,
    /// The OS thread id (Linux `gettid`), 0 where unknown.
    pub os_tid: u32,
    /// The thread's name, NUL-padded, cut to 63 bytes.
    pub name: [u8; 64],
    /// The thread's recycle lists (memctx's own, opaque to walkers, which read the fields above
    /// only): the entry holds this pointer so the deleted headers they link stay reachable after
    /// the thread exits. Written once, before the entry is published; nobody reads it through the
    /// registry.
    pub tree: *mut c_void,
}

/// The registry of every thread's tree, for debuggers (`p MEMCTX_REGISTRY` in gdb).
#[no_mangle]
pub static MEMCTX_REGISTRY: Registry = Registry {
    magic: REGISTRY_MAGIC,
    layout_version: LAYOUT_VERSION,
    nthreads: AtomicU32::new(0),
    head: AtomicPtr::new(ptr::null_mut()),
    layout: LayoutInfo {
        context_size: core::mem::size_of::<ContextHeader>() as u32,
        magic: offset_of!(ContextHeader, magic) as u32,
        id: offset_of!(ContextHeader, id) as u32,
        name: offset_of!(ContextHeader, name_ptr) as u32,
        ident: offset_of!(ContextHeader, ident_ptr) as u32,
        parent: offset_of!(ContextHeader, parent) as u32,
        first_child: offset_of!(ContextHeader, first_child) as u32,
        next_sibling: offset_of!(ContextHeader, next_sibling) as u32,
        mem_allocated: offset_of!(ContextHeader, mem_allocated) as u32,
        blocks: offset_of!(ContextHeader, blocks) as u32,
        freelist: (offset_of!(ContextHeader, state) + offset_of!(AllocSetState, freelist)) as u32,
        block_size: core::mem::size_of::<Block>() as u32,
        block_next: offset_of!(Block, next) as u32,
        block_free_ptr: offset_of!(Block, free_ptr) as u32,
        block_end_ptr: offset_of!(Block, end_ptr) as u32,
        chunk_prefix: crate::chunk::CHUNK_PREFIX as u32,
        kind: offset_of!(ContextHeader, kind) as u32,
        alloc_set_id: ChunkKind::AllocSet as u32,
        redirect_id: ChunkKind::AlignedRedirect as u32,
        bump_id: ChunkKind::Bump as u32,
        generation_id: ChunkKind::Generation as u32,
        generation_nfree: (core::mem::size_of::<Block>() + offset_of!(Counts, nfree)) as u32,
        slab_id: ChunkKind::Slab as u32,
        slab_nfree: offset_of!(SlabBlock, nfree) as u32,
        slab_footprint: (offset_of!(ContextHeader, state) + offset_of!(SlabState, footprint))
            as u32,
    },
    dumper: DumperInfo {
        state: AtomicU32::new(DUMPER_OFF),
        signal: AtomicI32::new(0),
        dir_len: AtomicU32::new(0),
        dir: [const { AtomicU8::new(0) }; DUMPER_DIR_MAX],
    },
};

/// Adds an entry for the calling thread, whose tree is rooted at `top` and whose recycle lists
/// are at `tree`. Entries are leaked on purpose: the registry must stay walkable at every instant,
/// and it keeps every thread's tree reachable after the thread exits.
pub(crate) fn register_thread(top: *mut c_void, tree: *mut c_void) -> *mut ThreadEntry {
    let mut name = [0u8; 64];
    if let Some(n) = std::thread::current().name() {
        let n = n.as_bytes();
        let len = n.len().min(63);
        name[..len].copy_from_slice(&n[..len]);
    }
    // SAFETY: gettid has no preconditions.
    let os_tid = unsafe { libc::gettid() } as u32;
    let entry = Box::into_raw(Box::new(ThreadEntry {
        next: ptr::null_mut(),
        top,
        state: AtomicU32::new(THREAD_LIVE),
        os_tid,
        name,
        tree,
    }));
    let mut head = MEMCTX_REGISTRY.head.load(Ordering::Acquire);
    loop {
        // SAFETY: `entry` is ours until published by the CAS below.
        unsafe { (*entry).next = head };
        match MEMCTX_REGISTRY.head.compare_exchange_weak(
            head,
            entry,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    MEMCTX_REGISTRY.nthreads.fetch_add(1, Ordering::Relaxed);
    entry
}

/// Marks the thread's entry as exited when the thread-local holding it is destroyed.
pub(crate) struct ExitMark(core::cell::Cell<*mut ThreadEntry>);

impl ExitMark {
    /// An unset mark.
    pub(crate) const fn new() -> ExitMark {
        ExitMark(core::cell::Cell::new(ptr::null_mut()))
    }

    /// Remembers the thread's entry.
    pub(crate) fn set(&self, entry: *mut ThreadEntry) {
        self.0.set(entry);
    }
}

impl Drop for ExitMark {
    fn drop(&mut self) {
        let e = self.0.get();
        if !e.is_null() {
            // SAFETY: entries are never freed.
            unsafe { (*e).state.store(THREAD_EXITED, Ordering::Release) };
        }
    }
}
