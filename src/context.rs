//! The context tree: TopMemoryContext, its descendants, CurrentMemoryContext, and the handles that
//! name them.
//!
//! # Design
//!
//! Every thread that touches memctx gets its own tree rooted at a TopMemoryContext, created on first
//! use, exactly as every PostgreSQL backend has one. A context is a [`ContextHeader`] at a fixed heap
//! address: blocks point back at it, Valgrind uses its address as the pool handle, and the safe
//! allocator hands out memory whose validity is tied to it, so it must never move.
//!
//! Contexts are named by [`MemoryContext`], a `Copy` handle holding the header's address and a
//! *generation*. Deleting a context bumps the generation and puts the header on a per-thread recycle
//! list; a handle whose generation no longer matches is stale, and every operation through it
//! panics with the context's name instead of touching memory that now belongs to another context.
//! That check is sound only because headers are never given back to the system while their thread
//! can still run code: the recycle lists keep them, and a thread's tree outlives the thread (see
//! below). Headers are small (a few hundred bytes), so the cost is bounded by the largest number of
//! contexts a thread ever had alive at once.
//!
//! Recycling follows PostgreSQL: up to [`MAX_RECYCLED`] deleted contexts of each of the two common
//! keeper sizes keep their keeper block, so creating and deleting a context per query or per
//! portal costs no system allocation in the steady state.
//!
//! # Tree operations and safety
//!
//! Reset and delete free memory wholesale, so they are where safe code could be left holding a
//! dangling reference. The raw API (`palloc`/`pfree`) makes no promise — its pointers are raw. The
//! safe API borrows memory through a [`crate::PinnedContext`], which *pins* its context: each
//! header counts its own pins and the pins in its subtree, and every operation that would free a
//! pinned context (reset or delete of it or of an ancestor, reset-children or delete-children of an
//! ancestor) is refused with [`ContextError::Pinned`]. `set_parent` moves the subtree's count with
//! it, so a borrowed subtree moved under a context that is about to be reset still protects itself.
//! The same counters mark a context as *busy* while its own reset or delete runs, so a callback
//! cannot free the tree under the operation that called it.
//!
//! # Threads
//!
//! A tree belongs to its thread, like a backend's: [`MemoryContext`] and [`crate::PinnedContext`]
//! are neither `Send` nor `Sync`, and the raw functions must be called on the thread that owns the
//! chunk's context. No context type crosses threads; data does, by copying it out. When a thread
//! exits, its tree is **not** freed: destructors of other thread-locals may run after ours and still
//! hold context memory (or call palloc, which keeps working). A program that runs many short-lived
//! threads should delete their contexts before the threads end; what is left then is one keeper
//! block and the headers.
//!
//! # Tree lifetime
//!
//! Since the tree outlives its thread, so must whatever owns it: not thread-local storage, which is
//! gone once the thread has exited, but the thread's entry in the debugger registry
//! ([`registry::ThreadEntry`]), reached from a global static for the life of the process. The entry
//! holds `top`, the root of the live contexts, and `tree`, the heap-allocated [`ThreadTree`] with
//! the recycle and spare lists of deleted headers. The thread-local `LOCAL` only caches those two
//! pointers (set once, at the thread's first use), so `palloc`/`pfree` cost the same — they read
//! `CURRENT` alone — and a context create or delete reads its lists through one more pointer.
//! After the thread exits, memcheck's leak search finds every header and block of the tree still
//! reachable, and a debugger can still walk it; only chunks whose pointers were dropped are lost,
//! which is what a leak is.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::chunk::Block;
use crate::error::{out_of_memory_message, ContextError};
use crate::kinds::aset::{self, BlockSizes};
use crate::kinds::{self, slab, KindId, KindState};
use crate::registry;
use crate::stats::{Counters, StatsNode};

/// Magic of a live context header ("MEMCTXHD" read as a little-endian u64's bytes).
pub(crate) const CONTEXT_MAGIC: u64 = u64::from_le_bytes(*b"MEMCTXHD");
/// Magic of a deleted header waiting on a recycle list.
pub(crate) const DEAD_CONTEXT_MAGIC: u64 = u64::from_le_bytes(*b"MEMCTXDD");
/// Version of the `#[repr(C)]` layout of the context header and the block header; external tools
/// (the gdb walker) refuse layouts they do not know.
pub const LAYOUT_VERSION: u32 = 5;
/// Deleted contexts kept with their keeper block, per keeper size (PostgreSQL keeps 100).
pub(crate) const MAX_RECYCLED: usize = 100;

/// The header of a memory context.
///
/// `#[repr(C)]` so that a debugger can walk the tree without the process's help: the fields up to
/// `set` have a fixed layout, described by [`LAYOUT_VERSION`] and by the offsets in the debugger
/// registry. The Rust-only tail (identifier storage, callbacks) is opaque to external tools.
#[repr(C)]
pub struct ContextHeader {
    pub(crate) magic: u64,
    pub(crate) layout_version: u32,
    /// The context's kind (`crate::kinds`); `state` holds that kind's fields.
    pub(crate) kind: KindId,
    pub(crate) generation: u64,
    pub(crate) id: u64,
    pub(crate) name_ptr: *const u8,
    pub(crate) name_len: usize,
    pub(crate) ident_ptr: *const u8,
    pub(crate) ident_len: usize,
    pub(crate) parent: *mut ContextHeader,
    pub(crate) first_child: *mut ContextHeader,
    pub(crate) prev_sibling: *mut ContextHeader,
    pub(crate) next_sibling: *mut ContextHeader,
    /// Bytes of all blocks taken from the system (PostgreSQL's `mem_allocated`).
    pub(crate) mem_allocated: usize,
    /// Pins (and busy marks) on this context itself.
    pub(crate) pins: u32,
    /// Pins in this context's subtree, itself included.
    pub(crate) subtree_pins: u32,
    /// No chunk was allocated since the last reset (PostgreSQL's `isReset`).
    pub(crate) is_reset: bool,
    /// A reset or delete of this context is running.
    pub(crate) busy: bool,
    /// Head of the block list (for AllocSet the active block, that new chunks are carved from).
    pub(crate) blocks: *mut Block,
    /// The block kept across resets (null while the context has none).
    pub(crate) keeper: *mut Block,
    /// The kind's own fields.
    pub(crate) state: KindState,
    ident: Option<Box<str>>,
    callbacks: Vec<Box<dyn FnOnce()>>,
}

impl ContextHeader {
    fn empty() -> ContextHeader {
        ContextHeader {
            magic: DEAD_CONTEXT_MAGIC,
            layout_version: LAYOUT_VERSION,
            kind: KindId::AllocSet,
            generation: 0,
            id: 0,
            name_ptr: ptr::null(),
            name_len: 0,
            ident_ptr: ptr::null(),
            ident_len: 0,
            parent: ptr::null_mut(),
            first_child: ptr::null_mut(),
            prev_sibling: ptr::null_mut(),
            next_sibling: ptr::null_mut(),
            mem_allocated: 0,
            pins: 0,
            subtree_pins: 0,
            is_reset: true,
            busy: false,
            blocks: ptr::null_mut(),
            keeper: ptr::null_mut(),
            state: KindState::empty(),
            ident: None,
            callbacks: Vec::new(),
        }
    }

    /// The context's name.
    pub(crate) fn name(&self) -> &'static str {
        // SAFETY: name_ptr/len always come from a `&'static str` (set in `create`).
        unsafe {
            core::str::from_utf8_unchecked(core::slice::from_raw_parts(
                self.name_ptr,
                self.name_len,
            ))
        }
    }
}

/// Source of the stable context ids used by snapshots.
static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The deleted headers a thread keeps for reuse (see the module docs on threads).
///
/// It lives on the heap, never freed, and the thread's registry entry points at it
/// ([`registry::ThreadEntry`]'s `tree`), not in thread-local storage: these lists hold the only
/// pointers to recycled and spare headers (and, through them, to recycled keeper blocks), and a
/// thread's TLS is gone once the thread has exited while the headers are kept for the life of the
/// process. Reachable from the `MEMCTX_REGISTRY` static, they stay "still reachable" for memcheck's
/// leak search instead of "definitely lost".
struct ThreadTree {
    /// Deleted contexts that kept their keeper block, for DEFAULT-sized and SMALL-sized keepers,
    /// linked through `next_sibling`.
    recycled: [Cell<*mut ContextHeader>; 2],
    recycled_len: [Cell<usize>; 2],
    /// Deleted headers without blocks, linked through `next_sibling`.
    spare: Cell<*mut ContextHeader>,
}

impl ThreadTree {
    const fn new() -> ThreadTree {
        ThreadTree {
            recycled: [Cell::new(ptr::null_mut()), Cell::new(ptr::null_mut())],
            recycled_len: [Cell::new(0), Cell::new(0)],
            spare: Cell::new(ptr::null_mut()),
        }
    }
}

/// The thread-local part of a thread's tree: two pointers, set once when the tree is created.
struct LocalTree {
    /// The thread's TopMemoryContext; null until the tree exists.
    top: Cell<*mut ContextHeader>,
    /// The thread's recycle lists (heap, never freed; also reachable from the registry entry).
    tree: Cell<*const ThreadTree>,
}

thread_local! {
    /// CurrentMemoryContext; null until the thread's tree exists. Const-initialised and without a
    /// destructor, so reading it is a plain TLS load, also from other thread-locals' destructors.
    static CURRENT: Cell<*mut ContextHeader> = const { Cell::new(ptr::null_mut()) };
    /// Const-initialised and without a destructor, like `CURRENT`: usable until the thread is gone.
    static LOCAL: LocalTree = const {
        LocalTree {
            top: Cell::new(ptr::null_mut()),
            tree: Cell::new(ptr::null()),
        }
    };
    /// Marks the thread's registry entry as exited when the thread ends; frees nothing.
    static EXIT_MARK: registry::ExitMark = const { registry::ExitMark::new() };
}

/// CurrentMemoryContext of this thread, creating the tree on first use.
#[inline(always)]
pub(crate) fn current_ptr() -> *mut ContextHeader {
    let cur = CURRENT.with(|c| c.get());
    if cur.is_null() {
        init_thread_tree()
    } else {
        cur
    }
}

/// Creates this thread's recycle lists and TopMemoryContext, makes Top current and registers the
/// thread, which from then on keeps both reachable (see [`ThreadTree`]).
#[cold]
#[inline(never)]
fn init_thread_tree() -> *mut ContextHeader {
    let tree = LOCAL.with(|l| {
        if l.tree.get().is_null() {
            // Never freed: the registry entry keeps it for the life of the process.
            l.tree.set(Box::into_raw(Box::new(ThreadTree::new())));
        }
        l.tree.get()
    });
    let top = create(
        ptr::null_mut(),
        "TopMemoryContext",
        BlockSizes::DEFAULT,
        KindId::AllocSet,
    );
    LOCAL.with(|l| l.top.set(top));
    CURRENT.with(|c| c.set(top));
    let entry = registry::register_thread(
        top as *mut core::ffi::c_void,
        tree as *mut core::ffi::c_void,
    );
    // The exit mark may already be gone if this runs inside a late thread-local destructor; then
    // the entry simply stays marked live, which only affects what a debugger prints.
    let _ = EXIT_MARK.try_with(|m| m.set(entry));
    top
}

/// This thread's TopMemoryContext.
pub(crate) fn top_ptr() -> *mut ContextHeader {
    let top = LOCAL.with(|l| l.top.get());
    if top.is_null() {
        init_thread_tree()
    } else {
        top
    }
}

/// This thread's recycle lists. They exist from the start of `init_thread_tree`, before the first
/// `create`, and every later `create` or delete runs on a thread with a tree.
fn thread_tree() -> &'static ThreadTree {
    let tree = LOCAL.with(|l| l.tree.get());
    debug_assert!(
        !tree.is_null(),
        "a context operation on a thread without a tree"
    );
    // SAFETY: set once per thread before any context exists and never freed; `ThreadTree` is only
    // used by its own thread (the registry keeps the pointer for reachability and never reads it).
    unsafe { &*tree }
}

/// Which recycle list a keeper size belongs to.
fn recycle_slot(sizes: &BlockSizes) -> Option<usize> {
    let keeper = sizes.keeper_size();
    if keeper == BlockSizes::DEFAULT.keeper_size() {
        Some(0)
    } else if keeper == BlockSizes::SMALL.keeper_size() {
        Some(1)
    } else {
        None
    }
}

/// A header with blocks for a new context of `sizes`: a recycled one with a matching keeper, or
/// a spare or new header given a keeper block. Panics with PostgreSQL's out-of-memory message if
/// the keeper block cannot be allocated.
fn take_header(name: &'static str, sizes: BlockSizes, kind: KindId) -> *mut ContextHeader {
    let t = thread_tree();
    if let Some(slot) = recycle_slot(&sizes).filter(|_| kind == KindId::AllocSet) {
        let head = t.recycled[slot].get();
        if !head.is_null() {
            // SAFETY: recycle lists hold valid, reset headers linked through next_sibling.
            unsafe {
                t.recycled[slot].set((*head).next_sibling);
                t.recycled_len[slot].set(t.recycled_len[slot].get() - 1);
                aset::reinit(head, sizes);
            }
            return head;
        }
    }
    // SAFETY: `kinds::init` sets up a header without blocks as a context of `kind`.
    spare_header(name, sizes.keeper_size(), |ctx| unsafe {
        kinds::init(ctx, kind, sizes)
    })
}

/// A spare or new header, set up by `init` (which takes its keeper block of `keeper_size`
/// bytes). Panics with PostgreSQL's out-of-memory message when `init` fails.
fn spare_header(
    name: &str,
    keeper_size: usize,
    init: impl FnOnce(*mut ContextHeader) -> bool,
) -> *mut ContextHeader {
    let t = thread_tree();
    let spare = t.spare.get();
    let ctx = if spare.is_null() {
        Box::into_raw(Box::new(ContextHeader::empty()))
    } else {
        // SAFETY: the spare list holds valid headers without blocks.
        unsafe { t.spare.set((*spare).next_sibling) };
        spare
    };
    if !init(ctx) {
        // SAFETY: `ctx` is a valid header without blocks; put it back for the next attempt.
        unsafe { (*ctx).next_sibling = t.spare.get() };
        t.spare.set(ctx);
        panic!("{}", out_of_memory_message(keeper_size, name));
    }
    ctx
}

/// Creates an AllocSet context under `parent` (null only for Top). Panics with PostgreSQL's
/// out-of-memory message if the keeper block cannot be allocated.
pub(crate) fn create(
    parent: *mut ContextHeader,
    name: &'static str,
    sizes: BlockSizes,
    kind: KindId,
) -> *mut ContextHeader {
    if let Err(e) = sizes.validate() {
        panic!("{e}");
    }
    let ctx = take_header(name, sizes, kind);
    // SAFETY: `take_header` returns a set-up header no tree holds; `parent` is live or null.
    unsafe { adopt(parent, name, ctx) }
}

/// Creates a Slab context under `parent`. Panics with a message naming the bad size if the sizes
/// are invalid, with PostgreSQL's out-of-memory message if the keeper block cannot be allocated.
pub(crate) fn create_slab(
    parent: *mut ContextHeader,
    name: &'static str,
    block_size: usize,
    chunk_size: usize,
) -> *mut ContextHeader {
    let sizes = slab::SlabSizes::new(block_size, chunk_size).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: `slab::init` sets up a header without blocks as a Slab context.
    let ctx = spare_header(name, sizes.block_size(), |ctx| unsafe {
        slab::init(ctx, sizes)
    });
    // SAFETY: `spare_header` returns a set-up header no tree holds; `parent` is live or null.
    unsafe { adopt(parent, name, ctx) }
}

/// Fills in the common fields of the set-up header `ctx` and links it under `parent`.
///
/// # Safety
/// `ctx` must be a header with its kind and keeper set up, in no tree; `parent` live or null.
unsafe fn adopt(
    parent: *mut ContextHeader,
    name: &'static str,
    ctx: *mut ContextHeader,
) -> *mut ContextHeader {
    // SAFETY: `ctx` is ours and not linked anywhere; `parent` is a live context or null.
    unsafe {
        let c = &mut *ctx;
        c.magic = CONTEXT_MAGIC;
        c.id = NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed);
        c.name_ptr = name.as_ptr();
        c.name_len = name.len();
        c.ident = None;
        c.ident_ptr = ptr::null();
        c.ident_len = 0;
        c.pins = 0;
        c.subtree_pins = 0;
        c.is_reset = true;
        c.busy = false;
        c.first_child = ptr::null_mut();
        link_child(parent, ctx);
        crate::hooks::context_created(ctx);
    }
    ctx
}

/// Links `ctx` as the first child of `parent` (PostgreSQL's order: newest first).
///
/// # Safety
/// `ctx` must be live and unlinked; `parent` live or null.
unsafe fn link_child(parent: *mut ContextHeader, ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live and unlinked, `parent` live or null (caller); the first child we
    // link before is a live member of `parent`'s list.
    unsafe {
        (*ctx).parent = parent;
        (*ctx).prev_sibling = ptr::null_mut();
        if parent.is_null() {
            (*ctx).next_sibling = ptr::null_mut();
            return;
        }
        let first = (*parent).first_child;
        (*ctx).next_sibling = first;
        if !first.is_null() {
            (*first).prev_sibling = ctx;
        }
        (*parent).first_child = ctx;
    }
}

/// Unlinks `ctx` from its parent's child list.
///
/// # Safety
/// `ctx` must be live.
unsafe fn unlink_child(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live (caller), and its siblings and parent are live members of the same
    // tree: only `unlink_child` takes a context out, and it fixes their links first.
    unsafe {
        let (parent, prev, next) = ((*ctx).parent, (*ctx).prev_sibling, (*ctx).next_sibling);
        if !prev.is_null() {
            (*prev).next_sibling = next;
        } else if !parent.is_null() {
            (*parent).first_child = next;
        }
        if !next.is_null() {
            (*next).prev_sibling = prev;
        }
        (*ctx).parent = ptr::null_mut();
        (*ctx).prev_sibling = ptr::null_mut();
        (*ctx).next_sibling = ptr::null_mut();
    }
}

/// Adds `n` pins to `ctx` and to the subtree counts of its ancestors.
///
/// # Safety
/// `ctx` must be live.
pub(crate) unsafe fn add_pins(ctx: *mut ContextHeader, n: i32) {
    // SAFETY: walking live ancestors.
    unsafe {
        (*ctx).pins = (*ctx).pins.wrapping_add_signed(n);
        add_subtree_pins(ctx, n);
    }
}

/// Adds `n` to the subtree pin counts of `ctx` and its ancestors.
///
/// # Safety
/// `ctx` must be live.
unsafe fn add_subtree_pins(mut ctx: *mut ContextHeader, n: i32) {
    // SAFETY: walking live ancestors.
    unsafe {
        while !ctx.is_null() {
            (*ctx).subtree_pins = (*ctx).subtree_pins.wrapping_add_signed(n);
            debug_assert!((*ctx).subtree_pins < u32::MAX / 2, "pin count underflow");
            ctx = (*ctx).parent;
        }
    }
}

/// Finds a pinned context in the subtree of `ctx` (itself included when `include_self`), for the
/// error message. Returns `None` when nothing there is pinned.
///
/// # Safety
/// `ctx` must be live.
unsafe fn find_pinned(ctx: *mut ContextHeader, include_self: bool) -> Option<*mut ContextHeader> {
    // SAFETY: walking a live subtree, down the path of nonzero subtree counts (iteratively: a
    // tree may be deep).
    unsafe {
        let own = if include_self { 0 } else { (*ctx).pins };
        if (*ctx).subtree_pins <= own {
            return None;
        }
        if include_self && (*ctx).pins > 0 {
            return Some(ctx);
        }
        let mut cur = ctx;
        loop {
            let mut child = (*cur).first_child;
            while !child.is_null() && (*child).subtree_pins == 0 {
                child = (*child).next_sibling;
            }
            if child.is_null() {
                return None;
            }
            if (*child).pins > 0 {
                return Some(child);
            }
            cur = child;
        }
    }
}

/// Calls `f` on every context of the subtree of `root`, `root` included, children before their
/// parent (post-order), iteratively. The successor is computed before `f` runs, so `f` may reset
/// the context it is given (but not delete or move contexts).
///
/// # Safety
/// `root` must be live.
unsafe fn for_each_post_order(root: *mut ContextHeader, mut f: impl FnMut(*mut ContextHeader)) {
    /// The first context visited in post-order below `c`: its leftmost leaf.
    ///
    /// # Safety
    /// `c` must be live.
    unsafe fn leftmost_leaf(mut c: *mut ContextHeader) -> *mut ContextHeader {
        // SAFETY: walking live links.
        unsafe {
            while !(*c).first_child.is_null() {
                c = (*c).first_child;
            }
        }
        c
    }
    // SAFETY: every context reached through the links of a live subtree is live.
    unsafe {
        let mut c = leftmost_leaf(root);
        loop {
            let next = if c == root {
                None
            } else if !(*c).next_sibling.is_null() {
                Some(leftmost_leaf((*c).next_sibling))
            } else {
                Some((*c).parent)
            };
            f(c);
            match next {
                Some(n) => c = n,
                None => break,
            }
        }
    }
}

/// Whether `inner` is `outer` or one of its descendants.
///
/// # Safety
/// Both must be live (or `inner` null).
unsafe fn is_within(mut inner: *mut ContextHeader, outer: *mut ContextHeader) -> bool {
    // SAFETY: walking live ancestors.
    unsafe {
        while !inner.is_null() {
            if inner == outer {
                return true;
            }
            inner = (*inner).parent;
        }
    }
    false
}

/// The nearest context among `ctx` and its ancestors whose own reset or delete is running: a tree
/// operation from one of its callbacks must not change the subtree under that operation.
///
/// # Safety
/// `ctx` must be live.
unsafe fn busy_ancestor(ctx: *mut ContextHeader) -> Result<(), ContextError> {
    let mut c = ctx;
    // SAFETY: walking live ancestors.
    unsafe {
        while !c.is_null() {
            if (*c).busy {
                return Err(ContextError::Busy {
                    context: (*c).name(),
                });
            }
            c = (*c).parent;
        }
    }
    Ok(())
}

/// The checks shared by every operation that frees memory of `ctx`'s subtree: no pins there (on
/// `ctx` itself too when `pins_self`), no busy context, and CurrentMemoryContext not in a context
/// that goes away (the children; `ctx` itself too when `deletes_self`).
///
/// # Safety
/// `ctx` must be live.
unsafe fn check_freeable(
    ctx: *mut ContextHeader,
    pins_self: bool,
    deletes_self: bool,
) -> Result<(), ContextError> {
    // SAFETY: `ctx` and its relatives are live.
    unsafe {
        busy_ancestor(ctx)?;
        let name = (*ctx).name();
        if let Some(p) = find_pinned(ctx, pins_self) {
            if (*p).busy {
                return Err(ContextError::Busy {
                    context: (*p).name(),
                });
            }
            return Err(ContextError::Pinned {
                context: name,
                pinned: (*p).name(),
                pins: (*p).pins,
            });
        }
        let cur = CURRENT.with(|c| c.get());
        let inside = if deletes_self {
            is_within(cur, ctx)
        } else {
            cur != ctx && is_within(cur, ctx)
        };
        if inside {
            return Err(ContextError::ContainsCurrent {
                context: name,
                current: (*cur).name(),
            });
        }
    }
    Ok(())
}

/// Marks `ctx` busy (a pin that names itself busy) for the length of an operation; undone on drop,
/// also when a callback panics.
struct BusyMark(*mut ContextHeader);

impl BusyMark {
    /// # Safety
    /// `ctx` must be live and stay live until the mark is dropped.
    unsafe fn new(ctx: *mut ContextHeader) -> BusyMark {
        // SAFETY: `ctx` is live until the mark is dropped (caller), so its header and its
        // ancestors' (whose pin counts `add_pins` raises) are writable.
        unsafe {
            (*ctx).busy = true;
            add_pins(ctx, 1);
        }
        BusyMark(ctx)
    }
}

impl Drop for BusyMark {
    fn drop(&mut self) {
        // SAFETY: the context is live for the mark's lifetime (constructor's contract).
        unsafe {
            (*self.0).busy = false;
            add_pins(self.0, -1);
        }
    }
}

/// Runs and removes `ctx`'s callbacks, last registered first.
///
/// # Safety
/// `ctx` must be live.
unsafe fn call_callbacks(ctx: *mut ContextHeader) {
    loop {
        // SAFETY: `ctx` is live; the borrow of `callbacks` ends before the callback runs, since
        // the callback may register more callbacks on the same context.
        let cb = unsafe { (*ctx).callbacks.pop() };
        match cb {
            Some(cb) => cb(),
            None => break,
        }
    }
}

/// Deletes every descendant of `ctx`, children first, without checks.
///
/// Iterative, so a deep tree cannot overflow the stack. Callbacks may create or delete contexts
/// inside the subtree; the loop re-reads the links after each callback.
///
/// # Safety
/// `ctx` must be live and checked with `check_freeable`.
unsafe fn delete_descendants(ctx: *mut ContextHeader) {
    // SAFETY: every context visited is a live member of `ctx`'s subtree.
    unsafe {
        let mut cur = (*ctx).first_child;
        while !cur.is_null() {
            if !(*cur).first_child.is_null() {
                cur = (*cur).first_child;
                continue;
            }
            call_callbacks(cur);
            if !(*cur).first_child.is_null() {
                continue; // a callback created a child: delete it first
            }
            debug_assert_eq!(
                (*cur).subtree_pins,
                0,
                "pinning is refused under a busy context"
            );
            let parent = (*cur).parent;
            delete_one(cur);
            cur = if parent == ctx {
                (*ctx).first_child
            } else {
                parent
            };
        }
    }
}

/// If a callback made `ctx` current after the checks (a `switch_to` without a guard), move
/// CurrentMemoryContext to its parent so it never names a deleted context.
///
/// # Safety
/// `ctx` must be live and not Top.
unsafe fn leave_if_current(ctx: *mut ContextHeader) {
    if CURRENT.with(|c| c.get()) == ctx {
        // SAFETY: a live context that is not Top has a live parent.
        let parent = unsafe { (*ctx).parent };
        // SAFETY: as above.
        let (name, pname) = unsafe { ((*ctx).name(), (*parent).name()) };
        log::warn!(
            "memctx: memory context \"{name}\" was made current during its own delete; \
             CurrentMemoryContext is now its parent \"{pname}\""
        );
        CURRENT.with(|c| c.set(parent));
    }
}

/// Unlinks a childless context, frees its memory and recycles its header.
///
/// # Safety
/// `ctx` must be live, childless, unpinned, its callbacks already run.
unsafe fn delete_one(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live, childless and unpinned, its callbacks run (caller), so nothing
    // reaches its blocks any more; the header goes onto a recycle list, never back to the system.
    unsafe {
        debug_assert!((*ctx).first_child.is_null() && (*ctx).subtree_pins == 0);
        crate::hooks::context_deleting(ctx);
        leave_if_current(ctx);
        unlink_child(ctx);
        (*ctx).generation = (*ctx).generation.wrapping_add(1);
        (*ctx).magic = DEAD_CONTEXT_MAGIC;
        (*ctx).ident = None;
        (*ctx).ident_ptr = ptr::null();
        (*ctx).ident_len = 0;
        let t = thread_tree();
        let slot = match (*ctx).kind {
            KindId::AllocSet => recycle_slot(&(*ctx).state.aset.sizes),
            // Recycling keeps a keeper for the next AllocSet of its size; other kinds' headers
            // go to the spare list.
            KindId::Generation | KindId::Bump | KindId::Slab => None,
        };
        if let Some(slot) = slot {
            if t.recycled_len[slot].get() < MAX_RECYCLED {
                // Always, even when nothing was allocated since the last reset: the debug
                // build clobbers the keeper here so nothing of this life reaches the next.
                kinds::reset(ctx);
                (*ctx).is_reset = true;
                (*ctx).next_sibling = t.recycled[slot].get();
                t.recycled[slot].set(ctx);
                t.recycled_len[slot].set(t.recycled_len[slot].get() + 1);
                return;
            }
        }
        kinds::release_all(ctx);
        (*ctx).next_sibling = t.spare.get();
        t.spare.set(ctx);
    }
}

/// A handle to a memory context of the current thread: PostgreSQL's `MemoryContext`.
///
/// Handles are `Copy` and cheap (an address and a generation). A handle outlives its context
/// harmlessly: after [`MemoryContext::delete`], every use of a copy panics with the context's
/// name, never touches freed memory.
///
/// Not `Send` or `Sync`: a context belongs to the thread whose tree it is in.
///
/// # Examples
/// ```
/// use memctx::{BlockSizes, MemoryContext};
/// let top = MemoryContext::top();
/// let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
/// let p = cache.alloc(100);
/// assert!(cache.mem_allocated(false) >= 100);
/// unsafe { memctx::pfree(p.as_ptr()) };
/// cache.delete();
/// assert!(!cache.is_alive());
/// ```
#[derive(Clone, Copy)]
pub struct MemoryContext {
    ptr: NonNull<ContextHeader>,
    generation: u64,
    name: &'static str,
    _not_send: PhantomData<*mut ()>,
}

// A handle is an address and a generation: a panic caught half-way through an operation leaves it
// as checkable as before (every tree operation keeps the tree consistent before it can panic).
impl std::panic::UnwindSafe for MemoryContext {}
impl std::panic::RefUnwindSafe for MemoryContext {}

impl PartialEq for MemoryContext {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr && self.generation == other.generation
    }
}

impl Eq for MemoryContext {}

impl core::fmt::Debug for MemoryContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MemoryContext(\"{}\" @ {:p}", self.name, self.ptr)?;
        if !self.is_alive() {
            write!(f, ", deleted")?;
        }
        write!(f, ")")
    }
}

impl MemoryContext {
    /// A handle to a live header.
    ///
    /// # Safety
    /// `ctx` must be a live context header of this thread.
    pub(crate) unsafe fn from_raw(ctx: *mut ContextHeader) -> MemoryContext {
        // SAFETY: live header (caller).
        unsafe {
            MemoryContext {
                ptr: NonNull::new_unchecked(ctx),
                generation: (*ctx).generation,
                name: (*ctx).name(),
                _not_send: PhantomData,
            }
        }
    }

    /// The header, after checking the handle is not stale.
    ///
    /// # Panics
    /// If the context was deleted.
    #[inline(always)]
    pub(crate) fn raw(self) -> *mut ContextHeader {
        let p = self.ptr.as_ptr();
        // SAFETY: headers are never freed while their thread runs (module docs), and handles are
        // not Send, so `p` is readable; the generation tells whether it is still our context.
        if unsafe { (*p).generation } != self.generation {
            self.stale()
        }
        p
    }

    #[cold]
    #[inline(never)]
    fn stale(self) -> ! {
        panic!(
            "memory context \"{}\" used after it was deleted (stale handle {:p})",
            self.name, self.ptr
        )
    }

    /// This thread's TopMemoryContext, created on first use.
    pub fn top() -> MemoryContext {
        // SAFETY: Top is live for the thread's lifetime.
        unsafe { MemoryContext::from_raw(top_ptr()) }
    }

    /// This thread's CurrentMemoryContext (Top until something switches).
    pub fn current() -> MemoryContext {
        // SAFETY: the current context is live: deleting it is refused.
        unsafe { MemoryContext::from_raw(current_ptr()) }
    }

    /// Creates an AllocSet child context: PostgreSQL's `AllocSetContextCreate(self, name, sizes)`.
    ///
    /// # Panics
    /// If this handle is stale, `sizes` are invalid (see [`BlockSizes::validate`]), or the keeper
    /// block cannot be allocated.
    pub fn new_child(self, name: &'static str, sizes: BlockSizes) -> MemoryContext {
        let parent = self.raw();
        // SAFETY: `create` returns a live context of this thread.
        unsafe { MemoryContext::from_raw(create(parent, name, sizes, KindId::AllocSet)) }
    }

    /// Creates a Generation child context (PostgreSQL's `GenerationContextCreate`), for chunks
    /// freed in roughly the order they were allocated (a FIFO queue, a reorder buffer): chunks
    /// are carved one after another from the current block, each block counts its chunks and
    /// frees, and a block whose chunks are all freed is reused or given back. `pfree`,
    /// `repalloc`, `chunk_context`, `chunk_space` and the safe API work as for an AllocSet.
    ///
    /// # Panics
    /// If the context was deleted, the sizes are invalid (as for [`MemoryContext::new_child`]),
    /// or the keeper block cannot be allocated.
    ///
    /// # Examples
    /// ```
    /// use memctx::{BlockSizes, MemoryContext};
    /// let queue = MemoryContext::top().new_generation_child("Changes", BlockSizes::DEFAULT);
    /// let mut live = std::collections::VecDeque::new();
    /// for i in 0..1000usize {
    ///     live.push_back(queue.alloc(16 + i % 200));
    ///     if live.len() > 100 {
    ///         unsafe { memctx::pfree(live.pop_front().unwrap().as_ptr()) }; // the oldest
    ///     }
    /// }
    /// assert_eq!(queue.stats().kind, "Generation");
    /// queue.delete();
    /// ```
    pub fn new_generation_child(self, name: &'static str, sizes: BlockSizes) -> MemoryContext {
        let parent = self.raw();
        // SAFETY: `create` returns a live context of this thread.
        unsafe { MemoryContext::from_raw(create(parent, name, sizes, KindId::Generation)) }
    }

    /// Creates a Bump child context (PostgreSQL 17's `BumpContextCreate`): memory handed out by
    /// moving a pointer, with no chunk header in a release build, freed only by the context's
    /// reset or delete. `pfree`, `repalloc`, `chunk_context` and `chunk_space` do not apply to
    /// its chunks (see their `# Safety`); the safe API's `deallocate` takes back only the last
    /// allocation, and its `grow` extends the last allocation in place.
    ///
    /// # Panics
    /// If the context was deleted, the sizes are invalid (as for [`MemoryContext::new_child`]),
    /// or the keeper block cannot be allocated.
    ///
    /// # Examples
    /// ```
    /// use memctx::{BlockSizes, MemoryContext};
    /// let tuples = MemoryContext::top().new_bump_child("Caller tuples", BlockSizes::DEFAULT);
    /// for i in 0..100u64 {
    ///     let p = tuples.alloc(24).as_ptr() as *mut u64;
    ///     unsafe { p.write(i) };
    /// }
    /// assert_eq!(tuples.stats().kind, "Bump");
    /// tuples.reset(); // every tuple at once
    /// tuples.delete();
    /// ```
    pub fn new_bump_child(self, name: &'static str, sizes: BlockSizes) -> MemoryContext {
        let parent = self.raw();
        // SAFETY: `create` returns a live context of this thread.
        unsafe { MemoryContext::from_raw(create(parent, name, sizes, KindId::Bump)) }
    }

    /// Creates a Slab child context (PostgreSQL's `SlabContextCreate`): every chunk has the one
    /// size `chunk_size`, carved from blocks of `block_size` bytes, and a block whose chunks are
    /// all free is kept for reuse (at most [`SLAB_MAX_EMPTY_BLOCKS`](crate::SLAB_MAX_EMPTY_BLOCKS)
    /// besides the first block) or given back to the system. Allocation takes from the fullest
    /// block with room.
    ///
    /// A request of another size panics (`unexpected alloc chunk size N (expected M)`), as does a
    /// `repalloc` to another size (to the same size it returns the chunk); the safe API answers
    /// both with `AllocError`.
    ///
    /// # Panics
    /// If the context was deleted; if `chunk_size` is 0, `block_size` not a multiple of 16 below
    /// 1 GiB, or too small to hold one chunk (`block size N for slab is too small for M-byte
    /// chunks`); or if the first block cannot be allocated.
    ///
    /// # Examples
    /// ```
    /// use memctx::MemoryContext;
    /// let changes = MemoryContext::top().new_slab_child("Change", 8192, 64);
    /// let a = changes.alloc(64).as_ptr();
    /// let b = changes.alloc(64).as_ptr();
    /// assert_eq!(changes.stats().kind, "Slab");
    /// unsafe {
    ///     memctx::pfree(a);
    ///     memctx::pfree(b);
    /// }
    /// changes.delete();
    /// ```
    pub fn new_slab_child(
        self,
        name: &'static str,
        block_size: usize,
        chunk_size: usize,
    ) -> MemoryContext {
        let parent = self.raw();
        // SAFETY: `create_slab` returns a live context of this thread.
        unsafe { MemoryContext::from_raw(create_slab(parent, name, block_size, chunk_size)) }
    }

    /// Whether the context still exists (this handle is not stale).
    pub fn is_alive(self) -> bool {
        // SAFETY: headers are never freed while the thread runs (module docs).
        unsafe { (*self.ptr.as_ptr()).generation == self.generation }
    }

    /// The context's name.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// The context's identifier, if one was set.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn ident(self) -> Option<String> {
        // SAFETY: `raw` checked the header is live.
        unsafe { (*self.raw()).ident.as_deref().map(str::to_owned) }
    }

    /// Sets the identifier printed after the stats (PostgreSQL's
    /// `MemoryContextCopyAndSetIdentifier`): the string is copied.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn set_ident(self, ident: &str) {
        let ctx = self.raw();
        // SAFETY: live header; the boxed string's address is stable until replaced.
        unsafe {
            let b: Box<str> = ident.into();
            (*ctx).ident_ptr = b.as_ptr();
            (*ctx).ident_len = b.len();
            (*ctx).ident = Some(b);
        }
    }

    /// The stable id of this context (unique within the process, never reused), as used by
    /// snapshots.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn id(self) -> u64 {
        // SAFETY: live header.
        unsafe { (*self.raw()).id }
    }

    /// The parent context, `None` for Top.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn parent(self) -> Option<MemoryContext> {
        // SAFETY: a live context's parent is live.
        unsafe {
            let p = (*self.raw()).parent;
            (!p.is_null()).then(|| MemoryContext::from_raw(p))
        }
    }

    /// The child contexts, newest first (PostgreSQL's order).
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn children(self) -> Vec<MemoryContext> {
        let mut out = Vec::new();
        // SAFETY: children of a live context are live.
        unsafe {
            let mut c = (*self.raw()).first_child;
            while !c.is_null() {
                out.push(MemoryContext::from_raw(c));
                c = (*c).next_sibling;
            }
        }
        out
    }

    /// Names from Top down to this context, e.g. `["TopMemoryContext", "PortalContext"]`.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn path(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut c = self.raw();
        // SAFETY: ancestors of a live context are live.
        unsafe {
            while !c.is_null() {
                out.push((*c).name());
                c = (*c).parent;
            }
        }
        out.reverse();
        out
    }

    /// Frees every chunk of this context and deletes its children (PostgreSQL's
    /// `MemoryContextReset`); the keeper block stays. Reset callbacks run first, last registered
    /// first.
    ///
    /// # Panics
    /// If the context was deleted, or the reset is refused (see [`MemoryContext::try_reset`]).
    pub fn reset(self) {
        if let Err(e) = self.try_reset() {
            panic!("{e}");
        }
    }

    /// [`MemoryContext::reset`], returning an error instead of panicking when refused.
    ///
    /// # Errors
    /// [`ContextError::Pinned`] if safe-API memory in this context or a descendant is still
    /// borrowed; [`ContextError::ContainsCurrent`] if CurrentMemoryContext is a descendant;
    /// [`ContextError::Busy`] from inside this context's own reset or delete callbacks.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn try_reset(self) -> Result<(), ContextError> {
        let ctx = self.raw();
        // SAFETY: live context; checked before anything is freed.
        unsafe {
            if (*ctx).first_child.is_null() && (*ctx).callbacks.is_empty() {
                // The per-row case: a leaf without callbacks. Nothing can run in the middle, so
                // it needs no busy mark, and no child can hold CurrentMemoryContext.
                busy_ancestor(ctx)?;
                if let Some(p) = find_pinned(ctx, true) {
                    return Err(ContextError::Pinned {
                        context: (*ctx).name(),
                        pinned: (*p).name(),
                        pins: (*p).pins,
                    });
                }
            } else {
                check_freeable(ctx, true, false)?;
                let _busy = BusyMark::new(ctx);
                delete_descendants(ctx);
                call_callbacks(ctx);
            }
            if !kinds::is_empty(ctx) {
                kinds::reset(ctx);
                (*ctx).is_reset = true;
            }
        }
        crate::hooks::raise_pending();
        crate::hooks::safe_point(); // a user reset: the tree is consistent
        Ok(())
    }

    /// Deletes every child context, keeping this context's own chunks
    /// (`MemoryContextDeleteChildren`).
    ///
    /// # Panics
    /// If the context was deleted or the operation is refused (see [`MemoryContext::try_reset`]).
    pub fn delete_children(self) {
        if let Err(e) = self.try_delete_children() {
            panic!("{e}");
        }
    }

    /// [`MemoryContext::delete_children`], returning an error when refused.
    ///
    /// # Errors
    /// As [`MemoryContext::try_reset`], for the descendants only.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn try_delete_children(self) -> Result<(), ContextError> {
        let ctx = self.raw();
        // SAFETY: live context; checked before anything is freed.
        unsafe {
            check_freeable(ctx, false, false)?;
            let _busy = BusyMark::new(ctx);
            delete_descendants(ctx);
        }
        crate::hooks::raise_pending();
        Ok(())
    }

    /// Resets every child context, recursively, without deleting any
    /// (`MemoryContextResetChildren`); this context's own chunks stay.
    ///
    /// # Panics
    /// If the context was deleted or the operation is refused.
    pub fn reset_children(self) {
        if let Err(e) = self.try_reset_children() {
            panic!("{e}");
        }
    }

    /// [`MemoryContext::reset_children`], returning an error when refused.
    ///
    /// # Errors
    /// [`ContextError::Pinned`] if a descendant is pinned, [`ContextError::Busy`] from a callback.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn try_reset_children(self) -> Result<(), ContextError> {
        let ctx = self.raw();
        // SAFETY: live context; checked before anything is freed. Resetting keeps every context,
        // so CurrentMemoryContext stays valid wherever it is.
        unsafe {
            busy_ancestor(ctx)?;
            if let Some(p) = find_pinned(ctx, false) {
                return Err(if (*p).busy {
                    ContextError::Busy {
                        context: (*p).name(),
                    }
                } else {
                    ContextError::Pinned {
                        context: (*ctx).name(),
                        pinned: (*p).name(),
                        pins: (*p).pins,
                    }
                });
            }
            let _busy = BusyMark::new(ctx);
            for child in self.children() {
                reset_subtree_keeping(child.raw());
            }
        }
        crate::hooks::raise_pending();
        Ok(())
    }

    /// Deletes this context and its whole subtree, children first (`MemoryContextDelete`).
    /// Callbacks of each context run before its memory goes. Handles to any deleted context become
    /// stale.
    ///
    /// # Panics
    /// If the context was already deleted or the delete is refused (see
    /// [`MemoryContext::try_delete`]).
    pub fn delete(self) {
        if let Err(e) = self.try_delete() {
            panic!("{e}");
        }
    }

    /// [`MemoryContext::delete`], returning an error instead of panicking when refused.
    ///
    /// # Errors
    /// [`ContextError::IsTop`] for TopMemoryContext; [`ContextError::Pinned`] if safe-API memory
    /// in the subtree is borrowed; [`ContextError::ContainsCurrent`] if CurrentMemoryContext is in
    /// the subtree; [`ContextError::Busy`] from inside the context's own callbacks.
    ///
    /// # Panics
    /// If the context was already deleted.
    pub fn try_delete(self) -> Result<(), ContextError> {
        let ctx = self.raw();
        // SAFETY: live context; checked before anything is freed.
        unsafe {
            if (*ctx).parent.is_null() {
                return Err(ContextError::IsTop);
            }
            check_freeable(ctx, true, true)?;
            {
                let _busy = BusyMark::new(ctx);
                delete_descendants(ctx);
                call_callbacks(ctx);
            }
            // A callback may have created children; they go too. Pinning was refused while the
            // context was busy, and a callback that switched into the subtree is undone by
            // `leave_if_current`, so nothing can refuse the delete any more.
            if !(*ctx).first_child.is_null() {
                delete_descendants(ctx);
            }
            debug_assert_eq!((*ctx).subtree_pins, 0);
            delete_one(ctx);
        }
        crate::hooks::raise_pending();
        Ok(())
    }

    /// Moves this context (with its subtree) under `new_parent` (`MemoryContextSetParent`).
    ///
    /// # Panics
    /// If either handle is stale or the move is refused.
    pub fn set_parent(self, new_parent: MemoryContext) {
        if let Err(e) = self.try_set_parent(new_parent) {
            panic!("{e}");
        }
    }

    /// [`MemoryContext::set_parent`], returning an error when refused.
    ///
    /// Pins move with the subtree: a pinned subtree moved under a context stays protected from
    /// that context's reset.
    ///
    /// # Errors
    /// [`ContextError::IsTop`] to move Top; [`ContextError::WouldCycle`] if `new_parent` is this
    /// context or inside its subtree.
    ///
    /// # Panics
    /// If either handle is stale.
    pub fn try_set_parent(self, new_parent: MemoryContext) -> Result<(), ContextError> {
        let ctx = self.raw();
        let np = new_parent.raw();
        // SAFETY: both live; counts moved with the subtree keep the pin invariant.
        unsafe {
            if (*ctx).parent.is_null() {
                return Err(ContextError::IsTop);
            }
            busy_ancestor(ctx)?;
            busy_ancestor(np)?;
            if is_within(np, ctx) {
                return Err(ContextError::WouldCycle {
                    context: (*ctx).name(),
                    new_parent: (*np).name(),
                });
            }
            if (*ctx).parent == np {
                return Ok(());
            }
            let pins = (*ctx).subtree_pins as i32;
            add_subtree_pins((*ctx).parent, -pins);
            unlink_child(ctx);
            link_child(np, ctx);
            add_subtree_pins(np, pins);
            crate::hooks::context_moved(ctx);
        }
        Ok(())
    }

    /// Makes this the CurrentMemoryContext until the returned guard drops, which restores the
    /// previous one — also when a panic unwinds through it.
    ///
    /// # Panics
    /// If the context was deleted.
    ///
    /// # Examples
    /// ```
    /// use memctx::{BlockSizes, MemoryContext};
    /// let msg = MemoryContext::top().new_child("MessageContext", BlockSizes::DEFAULT);
    /// {
    ///     let _g = msg.switch_to();
    ///     assert_eq!(MemoryContext::current(), msg);
    ///     let _p = memctx::palloc(32); // lands in MessageContext
    /// }
    /// assert_eq!(MemoryContext::current(), MemoryContext::top());
    /// msg.delete();
    /// ```
    pub fn switch_to(self) -> SwitchGuard {
        let ctx = self.raw();
        let prev = current_ptr();
        CURRENT.with(|c| c.set(ctx));
        SwitchGuard {
            // SAFETY: the current context is live.
            prev: unsafe { MemoryContext::from_raw(prev) },
        }
    }

    /// Registers a callback run when this context is next reset or deleted, before its memory
    /// goes (`MemoryContextRegisterResetCallback`). Callbacks run once, last registered first.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn register_reset_callback(self, callback: impl FnOnce() + 'static) {
        // SAFETY: live header.
        unsafe { (*self.raw()).callbacks.push(Box::new(callback)) }
    }

    /// True when the context has no children and nothing was allocated since its last reset
    /// (`MemoryContextIsEmpty`).
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn is_empty(self) -> bool {
        let ctx = self.raw();
        // SAFETY: live header.
        unsafe { (*ctx).first_child.is_null() && kinds::is_empty(ctx) }
    }

    /// Bytes this context holds from the system, optionally with its descendants
    /// (`MemoryContextMemAllocated`).
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn mem_allocated(self, recurse: bool) -> usize {
        let ctx = self.raw();
        if !recurse {
            // SAFETY: live header.
            return unsafe { (*ctx).mem_allocated };
        }
        let mut total = 0;
        // SAFETY: a live subtree; the closure only reads.
        unsafe { for_each_post_order(ctx, |c| total += (*c).mem_allocated) };
        total
    }

    /// This context's own counters (blocks, free space), as PostgreSQL's stats method reports.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn counters(self) -> Counters {
        // SAFETY: live context.
        unsafe { kinds::counters(self.raw()) }
    }

    /// The stats tree of this context and its descendants.
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn stats(self) -> StatsNode {
        let root = self.raw();
        // Built bottom-up without recursion (a tree may be deep): post-order visits every child
        // before its parent, so each context's children are complete when it is reached; they
        // wait on a stack tagged with their parent.
        let mut pending: Vec<(*mut ContextHeader, StatsNode)> = Vec::new();
        // SAFETY: a live subtree; the closure only reads it.
        unsafe {
            for_each_post_order(root, |c| {
                let mut children = Vec::new();
                while pending.last().is_some_and(|(parent, _)| *parent == c) {
                    children.push(pending.pop().expect("non-empty").1);
                }
                // Popped last sibling first; restore the list's order (newest first, as
                // PostgreSQL prints).
                children.reverse();
                let node = StatsNode {
                    id: (*c).id,
                    name: (*c).name().to_owned(),
                    ident: (*c).ident.as_deref().map(str::to_owned),
                    kind: (*c).kind.name().to_owned(),
                    counters: kinds::counters(c),
                    detail: kinds::detail(c),
                    children,
                };
                pending.push(((*c).parent, node));
            });
        }
        pending.pop().expect("the root").1
    }

    /// Verifies this context's blocks and chunks now (PostgreSQL's `MemoryContextCheck`): in the
    /// debug build, every header, redzone, free chunk and unused block space of this context and
    /// its descendants, and the memory this thread's resets and deletes released (its quarantine),
    /// raising a report per finding as the policy says; returns the number of findings. Damage
    /// found is restored to its pattern, so it is reported once. A release build has nothing to check and returns 0.
    ///
    /// # Panics
    /// If the context was deleted, or (debug build, default policy) when something is found.
    pub fn check(self) -> usize {
        let mut n = 0;
        // SAFETY: a live subtree; checking only reads it.
        unsafe { for_each_post_order(self.raw(), |c| n += crate::hooks::check_context(c)) };
        n += crate::hooks::check_released();
        n
    }

    /// Number of live pins on this context (0 unless the safe API borrows it).
    ///
    /// # Panics
    /// If the context was deleted.
    pub fn pin_count(self) -> u32 {
        // SAFETY: live header.
        unsafe { (*self.raw()).pins }
    }
}

/// Resets `ctx` and, recursively, its descendants, keeping every context.
///
/// # Safety
/// `ctx` must be live and nothing in its subtree pinned.
unsafe fn reset_subtree_keeping(ctx: *mut ContextHeader) {
    // SAFETY: `ctx` is live and nothing under it pinned (caller); a reset never unlinks a
    // context, so the post-order walk's links stay valid while it resets.
    unsafe {
        for_each_post_order(ctx, |c| {
            call_callbacks(c);
            if !kinds::is_empty(c) {
                kinds::reset(c);
                (*c).is_reset = true;
            }
        });
    }
}

/// Restores the previous CurrentMemoryContext when dropped; see [`MemoryContext::switch_to`].
#[must_use = "the previous context is restored when the guard drops"]
pub struct SwitchGuard {
    prev: MemoryContext,
}

impl SwitchGuard {
    /// The context that was current before the switch.
    pub fn previous(&self) -> MemoryContext {
        self.prev
    }
}

impl Drop for SwitchGuard {
    fn drop(&mut self) {
        // If the previous context was deleted meanwhile there is nothing to go back to: fall back
        // to Top rather than panic in a drop.
        let target = if self.prev.is_alive() {
            self.prev.ptr.as_ptr()
        } else {
            log::warn!(
                "memctx: context \"{}\" was deleted while switched away from; CurrentMemoryContext \
                 is now TopMemoryContext",
                self.prev.name
            );
            top_ptr()
        };
        CURRENT.with(|c| c.set(target));
    }
}

/// Sets CurrentMemoryContext and returns the previous one (`MemoryContextSwitchTo`), for code that
/// manages the switch itself rather than with a guard.
///
/// # Panics
/// If `ctx` was deleted.
pub fn switch_to(ctx: MemoryContext) -> MemoryContext {
    let new = ctx.raw();
    let prev = current_ptr();
    CURRENT.with(|c| c.set(new));
    // SAFETY: the previous current context is live.
    unsafe { MemoryContext::from_raw(prev) }
}
