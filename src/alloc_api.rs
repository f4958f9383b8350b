//! The safe API: allocator-api2's `Allocator` on a pinned context, a string type, and per-row
//! scopes.
//!
//! # Why pins
//!
//! allocator-api2's contract is that memory stays valid while the allocator (or a clone of it)
//! lives. A [`MemoryContext`] handle is `Copy`, so any copy could reset or delete the context while
//! a `Vec` still lives in it; the borrow checker cannot see that danger, because the handle is
//! not a borrow. So the allocator is a [`PinnedContext`]: a guard that *pins* the context for as long
//! as it (or a clone) lives. Every tree operation that would free a pinned context — reset or
//! delete of it or of any ancestor, reset-children or delete-children above it — is refused with
//! [`ContextError::Pinned`](crate::ContextError::Pinned) (the panicking variants panic with that
//! message), and the memory is untouched. `set_parent` carries the pins along with the subtree.
//!
//! Where the borrow checker *can* see the danger, it does the work at no run-time cost: collections
//! built on `&PinnedContext` borrow the pin, and [`MemoryContext::scope`] hands its closure a
//! reference that cannot escape it (the compile-fail tests in `tests/ui` show both). A pin costs a
//! walk up the ancestors when taken and dropped, not per allocation.
//!
//! # Exact sizes
//!
//! `allocate` returns exactly the requested length, never the size class's slack, so a collection
//! never writes into bytes the debug build guards as a redzone. Zero-sized requests return a
//! dangling, aligned pointer and take no memory. The safe API has PostgreSQL's HUGE semantics: a
//! `Vec` may grow past 1 GB; a failure is an `AllocError`, never a panic inside the allocator.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::vec::Vec;

use crate::chunk::CHUNK_ALIGN;
use crate::context::{add_pins, ContextHeader, MemoryContext};
use crate::hooks;
use crate::kinds::{bump, slab, KindId};
use crate::raw::{self, AllocFlags, MAX_ALIGNMENT, MAX_ALLOC_HUGE_SIZE};

/// A pinned memory context: the allocator of the safe API.
///
/// While a `PinnedContext` (or any clone of it) lives, its context cannot be reset or deleted, and
/// neither can any ancestor; such operations fail with
/// [`ContextError::Pinned`](crate::ContextError::Pinned). Clones share the pin count. Not `Send`.
///
/// # Examples
/// ```
/// use allocator_api2::vec::Vec;
/// use memctx::{BlockSizes, MemoryContext};
///
/// let cache = MemoryContext::top().new_child("CacheMemoryContext", BlockSizes::DEFAULT);
/// let pinned = cache.pin();
/// let mut v: Vec<u64, _> = Vec::new_in(&pinned);
/// v.extend([1, 2, 3]);
/// assert!(cache.try_reset().is_err()); // refused: `v` still lives in the context
/// drop(v);
/// drop(pinned);
/// cache.reset(); // fine now
/// cache.delete();
/// ```
pub struct PinnedContext {
    ctx: NonNull<ContextHeader>,
    handle: MemoryContext,
    _not_send: PhantomData<*mut ()>,
}

impl MemoryContext {
    /// Pins this context for the safe API; see [`PinnedContext`].
    ///
    /// # Panics
    /// If the context was deleted, or it (or an ancestor) is in the middle of its own reset or
    /// delete (pinning from a reset callback).
    pub fn pin(self) -> PinnedContext {
        let ctx = self.raw();
        // SAFETY: `raw` checked the context is live; ancestors of a live context are live.
        unsafe {
            let mut a = ctx;
            while !a.is_null() {
                if (*a).busy {
                    panic!(
                        "cannot pin memory context \"{}\": \"{}\" is being reset or deleted",
                        self.name(),
                        (*a).name()
                    );
                }
                a = (*a).parent;
            }
            add_pins(ctx, 1);
            PinnedContext {
                ctx: NonNull::new_unchecked(ctx),
                handle: self,
                _not_send: PhantomData,
            }
        }
    }

    /// Runs `f` with this context pinned and current, then resets the context: a per-row scope,
    /// like an executor's per-tuple ExprContext. Everything allocated in the context during `f`
    /// (through the pinned reference or with `palloc`) is freed at the end. The reference cannot
    /// escape the closure, so nothing borrowed from the row survives it.
    ///
    /// If `f` panics, the context is reset all the same while the panic unwinds.
    ///
    /// # Panics
    /// If the context was deleted or is already pinned (a nested scope on the same context: the
    /// row could not be reset), before `f` runs; after `f`, if the reset is refused because a
    /// clone of the pin escaped (the memory is then left as it is).
    ///
    /// # Examples
    /// ```
    /// use allocator_api2::vec::Vec;
    /// use memctx::{BlockSizes, MemoryContext};
    ///
    /// let expr = MemoryContext::top().new_child("ExprContext", BlockSizes::DEFAULT);
    /// let mut total: u64 = 0;
    /// for row in 0..100u64 {
    ///     total += expr.scope(|mem| {
    ///         let mut v: Vec<u64, _> = Vec::new_in(mem);
    ///         v.extend(0..row);
    ///         v.iter().sum::<u64>()
    ///     });
    ///     assert!(expr.is_empty());
    /// }
    /// assert_eq!(total, (0..100u64).map(|r| r * r.saturating_sub(1) / 2).sum::<u64>());
    /// expr.delete();
    /// ```
    pub fn scope<R>(self, f: impl FnOnce(&PinnedContext) -> R) -> R {
        let pins = self.pin_count();
        if pins > 0 {
            panic!(
                "per-row scope on memory context \"{}\", which is already pinned {pins} time(s): \
                 it could not be reset after the row (a nested scope on the same context?)",
                self.name()
            );
        }
        let scope = RowScope {
            ctx: self,
            switch: Some(self.switch_to()),
            pin: Some(self.pin()),
        };
        f(scope.pin.as_ref().expect("pin present until drop"))
    }
}

/// The guard behind [`MemoryContext::scope`]: on drop (normal or unwinding) it restores the
/// current context, unpins, and resets.
struct RowScope {
    ctx: MemoryContext,
    switch: Option<crate::SwitchGuard>,
    pin: Option<PinnedContext>,
}

impl Drop for RowScope {
    fn drop(&mut self) {
        self.switch.take();
        self.pin.take();
        if let Err(e) = self.ctx.try_reset() {
            if std::thread::panicking() {
                log::error!("memctx: per-row scope could not reset its context: {e}");
            } else {
                panic!("per-row scope could not reset its context: {e}");
            }
        }
    }
}

impl PinnedContext {
    /// The pinned context's handle.
    pub fn context(&self) -> MemoryContext {
        self.handle
    }

    #[inline(always)]
    fn raw(&self) -> *mut ContextHeader {
        self.ctx.as_ptr()
    }
}

impl Clone for PinnedContext {
    fn clone(&self) -> PinnedContext {
        // SAFETY: a pinned context is live.
        unsafe { add_pins(self.raw(), 1) };
        PinnedContext {
            ctx: self.ctx,
            handle: self.handle,
            _not_send: PhantomData,
        }
    }
}

impl Drop for PinnedContext {
    fn drop(&mut self) {
        // SAFETY: a pinned context is live until its last pin goes.
        unsafe { add_pins(self.raw(), -1) };
    }
}

impl fmt::Debug for PinnedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinnedContext").field(&self.handle).finish()
    }
}

/// A dangling pointer for a zero-sized allocation with `layout`'s alignment.
#[inline]
fn dangling(layout: Layout) -> NonNull<[u8]> {
    // SAFETY: an alignment is never zero.
    let p = unsafe { NonNull::new_unchecked(layout.align() as *mut u8) };
    NonNull::slice_from_raw_parts(p, 0)
}

// SAFETY: memory handed out stays valid until deallocated or until the context is reset or
// deleted, and neither can happen while this allocator (or a clone, which shares the pin) lives.
// The context's header never moves, so moving the `PinnedContext` does not invalidate anything.
unsafe impl Allocator for PinnedContext {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let size = layout.size();
        if size == 0 {
            return Ok(dangling(layout));
        }
        if size > MAX_ALLOC_HUGE_SIZE || layout.align() > MAX_ALIGNMENT {
            return Err(AllocError);
        }
        // A Slab serves its chunk size, 16-aligned, and nothing else (its `alloc` would panic on
        // another size).
        // SAFETY: a pinned context is live, its header readable, and a Slab's state with it.
        let refused = unsafe {
            (*self.raw()).kind == KindId::Slab
                && (layout.align() > CHUNK_ALIGN || !slab::serves(self.raw(), size))
        };
        if refused {
            return Err(AllocError);
        }
        let p = if layout.align() <= CHUNK_ALIGN {
            // SAFETY: a pinned context is live; the size was checked.
            unsafe { raw::alloc_unchecked(self.raw(), size, false) }
        } else {
            // SAFETY: a pinned context is live.
            unsafe {
                raw::alloc_aligned_in(
                    self.raw(),
                    size,
                    layout.align(),
                    AllocFlags::HUGE | AllocFlags::NO_OOM,
                )
            }
        };
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, size))
            .ok_or(AllocError)
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = self.allocate(layout)?;
        // SAFETY: `p` has `layout.size()` writable bytes.
        unsafe { ptr::write_bytes(p.as_ptr() as *mut u8, 0, layout.size()) };
        Ok(p)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        let ctx = self.raw();
        // SAFETY: `ptr` was allocated by this allocator (a clone shares the context) with
        // `layout` and is live (the trait's contract). A release build never reads a Bump
        // chunk's header: Bump takes the chunk back by its layout. The debug build, whose Bump
        // chunks have headers, validates the chunk first as `pfree` does — its redzones, a second
        // deallocate, another context's chunk — and skips what it reported.
        unsafe {
            match (*ctx).kind {
                KindId::Bump if layout.align() <= CHUNK_ALIGN => {
                    if hooks::validate_pointer(ptr.as_ptr(), "deallocate", Some(ctx)) {
                        bump::deallocate(ctx, ptr.as_ptr(), layout.size())
                    }
                }
                KindId::Bump => {}
                KindId::AllocSet | KindId::Generation | KindId::Slab => {
                    raw::pfree_in(ctx, ptr.as_ptr())
                }
            }
        }
    }

    #[inline]
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait's contract: `ptr` is live with layout `old`, `new.size() >= old.size()`.
        unsafe { self.resize(ptr, old, new) }
    }

    #[inline]
    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as `grow`; the bytes past the old size are ours to zero.
        unsafe {
            let p = self.resize(ptr, old, new)?;
            ptr::write_bytes(
                (p.as_ptr() as *mut u8).add(old.size()),
                0,
                new.size() - old.size(),
            );
            Ok(p)
        }
    }

    #[inline]
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait's contract: `ptr` is live with layout `old`.
        unsafe { self.resize(ptr, old, new) }
    }
}

impl PinnedContext {
    /// [`PinnedContext::resize`] on a Bump context, the alignment unchanged and at most 16: in
    /// place when shrinking or when the chunk is the last allocation and its block has room, else
    /// allocate and copy. The debug build validates the chunk first, as `repalloc` does (a damaged
    /// redzone would otherwise be overwritten by the grown bytes unreported), and fails the
    /// resize of a pointer it reported.
    ///
    /// # Safety
    /// `ptr` must be live in this Bump context with layout `old`.
    unsafe fn resize_bump(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let ctx = self.raw();
        if !hooks::validate_pointer(ptr.as_ptr(), "repalloc", Some(ctx)) {
            return Err(AllocError);
        }
        // SAFETY: `ptr` is a live chunk of this Bump context with `old.size()` bytes (the
        // caller's promise), which is all `shrink_in_place` and `grow_in_place` need.
        let in_place = unsafe {
            if new.size() <= old.size() {
                bump::shrink_in_place(ctx, ptr.as_ptr(), old.size(), new.size());
                true
            } else {
                bump::grow_in_place(ctx, ptr.as_ptr(), old.size(), new.size())
            }
        };
        if in_place {
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
        let p = self.allocate(new)?;
        // SAFETY: both regions are live and distinct; the old one, validated above, is given back
        // (its space taken back if it is the last, else left to the reset).
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), p.as_ptr() as *mut u8, old.size());
            bump::deallocate(ctx, ptr.as_ptr(), old.size());
        }
        Ok(p)
    }

    /// Shared grow/shrink: repalloc when the alignment allows, else allocate, copy and free.
    ///
    /// # Safety
    /// `ptr` must be live in this context with layout `old`.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0
            || new.size() == 0
            || new.align() > CHUNK_ALIGN
            || old.align() != new.align()
        {
            let p = self.allocate(new)?;
            // SAFETY: both regions are live and distinct; `old` is freed after the copy.
            unsafe {
                ptr::copy_nonoverlapping(
                    ptr.as_ptr(),
                    p.as_ptr() as *mut u8,
                    old.size().min(new.size()),
                );
                self.deallocate(ptr, old);
            }
            return Ok(p);
        }
        if new.size() > MAX_ALLOC_HUGE_SIZE {
            return Err(AllocError);
        }
        let ctx = self.raw();
        // SAFETY: a pinned context is live, its header readable. A Slab chunk has the one size:
        // a resize to it keeps the chunk, to any other is refused (its `repalloc` would panic).
        if unsafe { (*ctx).kind } == KindId::Slab {
            return if new.size() == old.size() {
                Ok(NonNull::slice_from_raw_parts(ptr, new.size()))
            } else {
                Err(AllocError)
            };
        }
        // SAFETY: as above.
        if unsafe { (*ctx).kind } == KindId::Bump {
            // SAFETY: the caller's promise, passed on.
            return unsafe { self.resize_bump(ptr, old, new) };
        }
        // SAFETY: `ptr` is a live chunk (caller); NO_OOM makes failure a null, leaving it valid.
        let p = unsafe {
            raw::realloc_in(
                ptr.as_ptr(),
                new.size(),
                AllocFlags::HUGE | AllocFlags::NO_OOM,
                Some(old.size()),
                Some(self.raw()),
            )
        };
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, new.size()))
            .ok_or(AllocError)
    }
}

/// A UTF-8 string whose bytes live in a context (allocator-api2 has no `String`).
///
/// # Examples
/// ```
/// use memctx::{BlockSizes, MemoryContext, PString};
/// let cache = MemoryContext::top().new_child("names", BlockSizes::SMALL);
/// let pinned = cache.pin();
/// let mut s = PString::from_str_in("relation ", &pinned);
/// s.push_str("pg_class");
/// assert_eq!(s, "relation pg_class");
/// drop(s);
/// drop(pinned);
/// cache.delete();
/// ```
pub struct PString<A: Allocator> {
    bytes: Vec<u8, A>,
}

impl<A: Allocator> PString<A> {
    /// An empty string in `alloc`.
    pub fn new_in(alloc: A) -> PString<A> {
        PString {
            bytes: Vec::new_in(alloc),
        }
    }

    /// A copy of `s` in `alloc`.
    pub fn from_str_in(s: &str, alloc: A) -> PString<A> {
        let mut p = PString {
            bytes: Vec::with_capacity_in(s.len(), alloc),
        };
        p.push_str(s);
        p
    }

    /// Appends `s`.
    pub fn push_str(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
    }

    /// Appends one character.
    pub fn push(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf));
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: only whole `str`s are ever appended.
        unsafe { core::str::from_utf8_unchecked(&self.bytes) }
    }

    /// Removes every character, keeping the capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Bytes the string can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// The underlying bytes.
    pub fn into_bytes(self) -> Vec<u8, A> {
        self.bytes
    }
}

impl<A: Allocator> Deref for PString<A> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<A: Allocator> fmt::Write for PString<A> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

impl<A: Allocator> fmt::Display for PString<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl<A: Allocator> fmt::Debug for PString<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<A: Allocator + Clone> Clone for PString<A> {
    fn clone(&self) -> Self {
        PString {
            bytes: self.bytes.clone(),
        }
    }
}

impl<A: Allocator, B: Allocator> PartialEq<PString<B>> for PString<A> {
    fn eq(&self, other: &PString<B>) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<A: Allocator> Eq for PString<A> {}

impl<A: Allocator> PartialEq<str> for PString<A> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<A: Allocator> PartialEq<&str> for PString<A> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<A: Allocator> core::hash::Hash for PString<A> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl<A: Allocator> core::borrow::Borrow<str> for PString<A> {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
