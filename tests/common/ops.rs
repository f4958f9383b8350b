//! The operation language of the reliability tests, and the model it runs against.
//!
//! One file, included (`#[path]`) by every user so they all speak the same language:
//! `tests/model.rs` (proptest, release and debug build), `tests/injected_bugs.rs` (the same
//! sequences with one memory bug injected, debug build), the cargo-fuzz target
//! `fuzz/fuzz_targets/ops.rs` (bytes decoded by [`decode`]) and `tests/fuzz_regressions.rs`
//! (replays the inputs the fuzzer once crashed on). It depends on nothing but memctx and std.
//!
//! An [`Op`] names its operands by *selectors*: small integers taken modulo the number of live
//! contexts or chunks when the op runs, so every sequence of ops is valid and shrinks well.
//! [`Runner`] applies ops to a real context tree (a `ModelRoot` context under the thread's
//! TopMemoryContext) and to a plain model of it — which contexts exist and where, which chunks are
//! live in which context and what bytes they hold — and [`Runner::verify`] compares the two:
//! contents of every live chunk, the owner of every chunk ([`memctx::chunk_context`]), the tree's
//! shape, the current context, and the stats invariants of every context and of the whole tree.
//! Refusals are part of the model: a reset or delete that would free CurrentMemoryContext and a
//! `set_parent` that would make a cycle must fail with exactly the error the model predicts.
//!
//! Contexts are of every kind (`kinds.rs`, which every user includes next to this file), and the
//! model knows each kind's rules: a chunk of a kind whose chunks cannot be freed one by one
//! (Bump) is never given to `pfree`, `repalloc`, `chunk_context` or `chunk_space`; its free is
//! the safe API's `deallocate`, which takes back the last allocation only (the model predicts the
//! free bytes it gives back), its grow the safe API's `grow`, and its shrink a copy into a new
//! chunk of the same context. A context of one chunk size (Slab) gets every request and
//! over-aligned request at that size, and its resizes are `repalloc`s to that size.
#![allow(dead_code)]

use std::collections::BTreeMap;

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use memctx::stats::{Counters, StatsNode};
use memctx::{BlockSizes, ContextError, MemoryContext};

use super::kinds::Kind;

/// One step of a sequence. Selectors (`ctx`, `parent`, `chunk`) pick among the live contexts
/// (ordered by creation) or live chunks modulo their number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a child of the selected context with one of three block-size presets, of the kind
    /// `kind` selects ([`Kind::pick`]).
    Create { parent: u16, sizes: u8, kind: u8 },
    /// `MemoryContext::alloc(size)` in the selected context.
    Alloc { ctx: u16, size: u32 },
    /// `MemoryContext::alloc_zeroed(size)` in the selected context.
    AllocZero { ctx: u16, size: u32 },
    /// `palloc(size)` in CurrentMemoryContext.
    Palloc { size: u32 },
    /// `MemoryContext::alloc_aligned(size, 32 << shift)` in the selected context.
    AllocAligned { ctx: u16, size: u32, shift: u8 },
    /// `repalloc(chunk, size)`.
    Realloc { chunk: u16, size: u32 },
    /// `pfree(chunk)`.
    Free { chunk: u16 },
    /// `try_reset` of the selected context.
    Reset { ctx: u16 },
    /// `try_delete` of the selected context (never ModelRoot: it selects among the others).
    Delete { ctx: u16 },
    /// `switch_to` the selected context.
    Switch { ctx: u16 },
    /// `try_set_parent` of the selected context (never ModelRoot) under the selected parent.
    SetParent { ctx: u16, parent: u16 },
}

/// Largest size any op allocates (decoders and strategies stay below it; the runner clamps).
pub const MAX_SIZE: u32 = 1 << 20;
/// Most ops [`decode`] produces from one input.
pub const MAX_DECODED_OPS: usize = 1000;
/// Largest alignment shift of [`Op::AllocAligned`] (32 << 7 = 4096).
pub const MAX_ALIGN_SHIFT: u8 = 7;

/// Names the created contexts get (they must be `'static`).
const NAMES: [&str; 8] = [
    "ModelA", "ModelB", "ModelC", "ModelD", "ModelE", "ModelF", "ModelG", "ModelH",
];

/// Decodes fuzzer bytes into ops. Every byte string decodes (a short tail is dropped), so the
/// fuzzer explores sequences, not syntax. Sizes follow the same rough distribution as the
/// proptest strategy: mostly small, some up to the chunk limit, a few with a block of their own.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader { data, pos: 0 };
    let mut ops = Vec::new();
    while ops.len() < MAX_DECODED_OPS {
        let Some(tag) = r.byte() else { break };
        let op = match tag % 16 {
            0 => r.sel().map(|parent| Op::Create {
                parent,
                sizes: tag / 16 % 3,
                kind: tag / 16 / 3,
            }),
            1..=3 => r
                .sel()
                .and_then(|ctx| r.size().map(|size| Op::Alloc { ctx, size })),
            4 => r
                .sel()
                .and_then(|ctx| r.size().map(|size| Op::AllocZero { ctx, size })),
            5 => r.size().map(|size| Op::Palloc { size }),
            6 => r.sel().and_then(|ctx| {
                r.size().map(|size| Op::AllocAligned {
                    ctx,
                    size,
                    shift: tag / 16 % (MAX_ALIGN_SHIFT + 1),
                })
            }),
            7 | 8 => r
                .sel()
                .and_then(|chunk| r.size().map(|size| Op::Realloc { chunk, size })),
            9..=11 => r.sel().map(|chunk| Op::Free { chunk }),
            12 => r.sel().map(|ctx| Op::Reset { ctx }),
            13 => r.sel().map(|ctx| Op::Delete { ctx }),
            14 => r.sel().map(|ctx| Op::Switch { ctx }),
            _ => r
                .sel()
                .and_then(|ctx| r.sel().map(|parent| Op::SetParent { ctx, parent })),
        };
        match op {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    ops
}

/// A cursor over fuzzer bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn sel(&mut self) -> Option<u16> {
        self.byte().map(u16::from)
    }

    fn u16(&mut self) -> Option<u32> {
        Some(u32::from(self.byte()?) | u32::from(self.byte()?) << 8)
    }

    /// A size: one class byte, then one or two bytes of value.
    fn size(&mut self) -> Option<u32> {
        let class = self.byte()?;
        Some(match class % 8 {
            0..=4 => u32::from(self.byte()?),  // 0 ..= 255
            5 | 6 => 256 + self.u16()? % 7937, // 256 ..= 8192
            _ => 8193 + self.u16()?,           // a block of its own, up to 72 KiB
        })
    }
}

/// What the model knows of a context.
#[derive(Clone, Debug)]
pub struct CtxModel {
    /// The real context.
    pub handle: MemoryContext,
    /// Its kind.
    pub kind: Kind,
    /// Its one chunk size, if its kind has one (`Kind::fixed_size`).
    pub fixed: Option<usize>,
    /// The chunk (id) allocated last in it, while it is the one the safe API's `deallocate` of a
    /// Bump context would take back; `None` when unknown.
    pub last: Option<u64>,
    /// Model id of the parent (`None` for ModelRoot, whose parent is Top).
    pub parent: Option<u32>,
    /// Something was allocated in it since its creation or last reset (`!is_empty()` if it has no
    /// children).
    pub touched: bool,
}

/// What the model knows of a live chunk.
#[derive(Clone, Debug)]
pub struct ChunkModel {
    /// Unique id in the sequence (seeds the byte pattern).
    pub id: u64,
    /// The data pointer.
    pub ptr: *mut u8,
    /// Model id of the owning context.
    pub ctx: u32,
    /// The bytes it must hold.
    pub data: Vec<u8>,
    /// Alignment it was allocated with (16 for ordinary chunks).
    pub align: usize,
}

/// The byte at `i` of chunk `id`'s pattern: different per chunk and per position.
pub fn pattern_byte(id: u64, i: usize) -> u8 {
    let seed = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
    seed.wrapping_add((i as u8).wrapping_mul(13))
        .wrapping_add((i >> 8) as u8)
}

/// Largest capacity a Bump chunk of any block-size preset is sure to be carved from its context's
/// active block with (the smallest chunk limit, `BlockSizes::SMALL`'s): such a chunk, allocated
/// last, is the one the safe API's `deallocate` takes back. A larger one may have a block of its
/// own.
pub const SHARED_BLOCK_CAP: usize = 512;

/// Whether a chunk of `size` bytes aligned to `align` is, once allocated, the last allocation of
/// its Bump context, the one the safe API's `deallocate` takes back (an over-aligned chunk's
/// pointer is not where its allocation starts).
fn in_active_block(size: usize, align: usize) -> bool {
    align == 16 && size.max(1).next_multiple_of(16) <= SHARED_BLOCK_CAP
}

/// `ptr` as the safe API takes it.
fn nonnull(ptr: *mut u8) -> NonNull<u8> {
    NonNull::new(ptr).expect("a chunk pointer is not null")
}

/// The layout of a chunk of `size` bytes aligned to `align`.
fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("a power-of-two alignment")
}

/// A real context tree and its model.
pub struct Runner {
    /// Live contexts by model id; id 0 is ModelRoot.
    pub ctxs: BTreeMap<u32, CtxModel>,
    /// Live chunks, in allocation order.
    pub chunks: Vec<ChunkModel>,
    /// Model id of CurrentMemoryContext.
    pub current: u32,
    /// Handles of deleted contexts (each must stay stale).
    pub dead: Vec<MemoryContext>,
    /// CurrentMemoryContext before the runner started, restored at the end.
    saved: MemoryContext,
    next_ctx: u32,
    next_chunk: u64,
    /// Ops applied so far.
    pub steps: usize,
}

/// Model id of ModelRoot.
pub const ROOT: u32 = 0;

impl Runner {
    /// Creates ModelRoot under this thread's Top and makes it current.
    pub fn new() -> Runner {
        let root = MemoryContext::top().new_child("ModelRoot", BlockSizes::DEFAULT);
        let saved = memctx::switch_to(root);
        let mut ctxs = BTreeMap::new();
        ctxs.insert(
            ROOT,
            CtxModel {
                handle: root,
                kind: Kind::AllocSet,
                fixed: None,
                last: None,
                parent: None,
                touched: false,
            },
        );
        Runner {
            ctxs,
            chunks: Vec::new(),
            current: ROOT,
            dead: Vec::new(),
            saved,
            next_ctx: 1,
            next_chunk: 1,
            steps: 0,
        }
    }

    /// ModelRoot's handle.
    pub fn root(&self) -> MemoryContext {
        self.ctxs[&ROOT].handle
    }

    /// The model id of the `sel`-th live context.
    pub fn pick_ctx(&self, sel: u16) -> u32 {
        let n = self.ctxs.len();
        *self
            .ctxs
            .keys()
            .nth(usize::from(sel) % n)
            .expect("ModelRoot always lives")
    }

    /// The model id of the `sel`-th live context other than ModelRoot, if there is one.
    pub fn pick_non_root(&self, sel: u16) -> Option<u32> {
        let n = self.ctxs.len() - 1;
        (n > 0).then(|| {
            *self
                .ctxs
                .keys()
                .filter(|&&id| id != ROOT)
                .nth(usize::from(sel) % n)
                .expect("n > 0")
        })
    }

    /// The index of the `sel`-th live chunk, if there is one.
    pub fn pick_chunk(&self, sel: u16) -> Option<usize> {
        (!self.chunks.is_empty()).then(|| usize::from(sel) % self.chunks.len())
    }

    /// Whether `inner` is `outer` or one of its descendants in the model.
    pub fn within(&self, mut inner: u32, outer: u32) -> bool {
        loop {
            if inner == outer {
                return true;
            }
            match self.ctxs[&inner].parent {
                Some(p) => inner = p,
                None => return false,
            }
        }
    }

    /// Model ids of the strict descendants of `id`.
    pub fn descendants(&self, id: u32) -> Vec<u32> {
        self.ctxs
            .keys()
            .copied()
            .filter(|&c| c != id && self.within(c, id))
            .collect()
    }

    fn handle(&self, id: u32) -> MemoryContext {
        self.ctxs[&id].handle
    }

    /// Records a new chunk at `ptr` in `ctx`, filling it with its pattern (after checking it is
    /// zeroed when `zeroed`). Returns its index.
    pub fn adopt(
        &mut self,
        ptr: *mut u8,
        ctx: u32,
        size: usize,
        zeroed: bool,
        align: usize,
    ) -> usize {
        assert!(!ptr.is_null(), "allocation of {size} bytes returned null");
        assert_eq!(
            ptr as usize % align,
            0,
            "chunk {ptr:p} not aligned to {align}"
        );
        if zeroed && size > 0 {
            // SAFETY: a live chunk of `size` bytes.
            let got = unsafe { std::slice::from_raw_parts(ptr, size) };
            assert!(
                got.iter().all(|&b| b == 0),
                "zeroed allocation of {size} bytes at {ptr:p} is not zeroed"
            );
        }
        let id = self.next_chunk;
        self.next_chunk += 1;
        let data: Vec<u8> = (0..size).map(|i| pattern_byte(id, i)).collect();
        // SAFETY: a live chunk of `size` bytes, not aliased by anything else.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, size) };
        let m = self.ctxs.get_mut(&ctx).expect("live context");
        m.touched = true;
        m.last = in_active_block(size, align).then_some(id);
        self.chunks.push(ChunkModel {
            id,
            ptr,
            ctx,
            data,
            align,
        });
        self.chunks.len() - 1
    }

    /// The size a request of `size` bytes in context `ctx` (model id) becomes: the context's one
    /// chunk size if its kind has one (Slab), else `size`.
    pub fn size_in(&self, ctx: u32, size: usize) -> usize {
        self.ctxs[&ctx].fixed.unwrap_or(size)
    }

    /// Allocates `size` bytes in context `ctx` (model id) — its one chunk size in a context of
    /// one size ([`Runner::size_in`]) — and records the chunk.
    pub fn alloc_in(&mut self, ctx: u32, size: usize) -> usize {
        let size = self.size_in(ctx, size);
        let p = self.handle(ctx).alloc(size).as_ptr();
        self.adopt(p, ctx, size, false, 16)
    }

    /// The kind of the context owning the chunk at `idx`.
    pub fn kind_of(&self, idx: usize) -> Kind {
        self.ctxs[&self.chunks[idx].ctx].kind
    }

    /// Frees the chunk at `idx` as its kind frees a chunk — `pfree`, or the safe API's
    /// `deallocate` where `pfree` does not apply ([`Runner::take_back`]) — removing it from the
    /// model; returns it.
    pub fn free_index(&mut self, idx: usize) -> ChunkModel {
        if !self.kind_of(idx).frees_chunks() {
            return self.take_back(idx);
        }
        let c = self.chunks.swap_remove(idx);
        // SAFETY: a live chunk of this thread's tree.
        unsafe { memctx::pfree(c.ptr) };
        c
    }

    /// The safe API's `deallocate` of the chunk at `idx`, of a kind that frees no chunk by
    /// pointer (Bump), removing it from the model. In a release build the context's last
    /// allocation gives its whole capacity back to the context's free bytes, any other chunk
    /// nothing until the reset; the debug build keeps even the last one as a freed chunk (so a use
    /// after the free is found), so nothing comes back. The model knows which chunk is last while
    /// [`CtxModel::last`] names one; when it does not, either outcome is accepted.
    pub fn take_back(&mut self, idx: usize) -> ChunkModel {
        let c = self.chunks.swap_remove(idx);
        let m = self.ctxs.get_mut(&c.ctx).expect("live context");
        let (h, last) = (m.handle, m.last.take());
        let size = c.data.len();
        let cap = size.max(1).next_multiple_of(16) as u64;
        let expected = match last {
            _ if cfg!(feature = "debug-contexts") || size == 0 => Some(0),
            Some(id) => Some(if id == c.id { cap } else { 0 }),
            None => None,
        };
        let free_before = h.counters().free_bytes;
        let pinned = h.pin();
        // SAFETY: a live chunk of `h` of `size` bytes with alignment `c.align`: the layout the
        // safe API takes a Bump chunk back by.
        unsafe { pinned.deallocate(nonnull(c.ptr), layout(size, c.align)) };
        drop(pinned);
        let given = h.counters().free_bytes - free_before;
        assert!(
            expected.map_or(given == 0 || given == cap, |e| given == e),
            "step {}: deallocate of chunk #{} ({size} bytes; last {last:?}, expected {expected:?}) \
             gave back {given} bytes in {h:?}",
            self.steps,
            c.id
        );
        c
    }

    /// Removes `ids` (and their chunks) from the model after the tree deleted them.
    fn forget_contexts(&mut self, ids: &[u32]) {
        for id in ids {
            let c = self.ctxs.remove(id).expect("live context");
            self.dead.push(c.handle);
        }
        self.chunks.retain(|c| !ids.contains(&c.ctx));
    }

    /// `try_reset` of `id`, checked against the model's prediction; updates the model.
    pub fn reset_ctx(&mut self, id: u32) -> Result<(), ContextError> {
        let h = self.handle(id);
        let expected = if self.current != id && self.within(self.current, id) {
            Err(ContextError::ContainsCurrent {
                context: h.name(),
                current: self.handle(self.current).name(),
            })
        } else {
            Ok(())
        };
        let got = h.try_reset();
        assert_eq!(got, expected, "reset of {h:?}");
        if got.is_ok() {
            let gone = self.descendants(id);
            self.forget_contexts(&gone);
            self.chunks.retain(|c| c.ctx != id);
            let m = self.ctxs.get_mut(&id).expect("live");
            (m.touched, m.last) = (false, None);
        }
        got
    }

    /// Resizes the chunk at `idx` to `size` bytes as its kind resizes a chunk — `repalloc`, or
    /// where that does not apply (Bump) [`Runner::resize_in_place_or_copy`] — and checks that the
    /// preserved prefix survived; the grown part gets the chunk's pattern.
    pub fn realloc_index(&mut self, idx: usize, size: usize) {
        let (kind, step) = (self.kind_of(idx), self.steps);
        let q = if kind.frees_chunks() {
            // SAFETY: a live chunk of this thread's tree.
            unsafe { memctx::repalloc(self.chunks[idx].ptr, size) }
        } else {
            self.resize_in_place_or_copy(idx, size)
        };
        let c = &mut self.chunks[idx];
        assert!(!q.is_null(), "step {step}: resize to {size} returned null");
        assert_eq!(
            q as usize % c.align,
            0,
            "step {step}: resize lost the alignment"
        );
        let (old, id, align, moved) = (c.data.len(), c.id, c.align, c.ptr != q);
        c.data
            .extend((old..size.max(old)).map(|i| pattern_byte(id, i)));
        c.data.truncate(size);
        c.ptr = q;
        // Only the preserved prefix is checked by verify; write the grown part.
        if size > old {
            // SAFETY: `q` has `size` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(c.data[old..].as_ptr(), q.add(old), size - old)
            };
        }
        // The preserved prefix must have survived the move.
        // SAFETY: `q` has `size` bytes.
        let got = unsafe { std::slice::from_raw_parts(q, size.min(old)) };
        assert!(
            got == &c.data[..size.min(old)],
            "step {step}: resize({old} -> {size}) lost contents of chunk #{id}"
        );
        let m = self.ctxs.get_mut(&c.ctx).expect("live");
        m.touched = true;
        // A grow in place (only the last allocation grows in place) or a fresh allocation: either
        // way the last one now. A "grow" to the same size allocates nothing and moves nothing, so
        // whichever chunk was last stays last.
        if !kind.frees_chunks() && (moved || size != old) {
            m.last = in_active_block(size, align).then_some(id);
        }
    }

    /// A resize of the chunk at `idx`, of a kind whose chunks `repalloc` does not apply to: a grow
    /// is the safe API's `grow` (in place when the chunk is its context's last allocation), a
    /// shrink — or a resize to zero bytes, which the safe API would answer with a dangling
    /// pointer — a copy into a new chunk of the same context; the old chunk's memory waits for
    /// the reset. Returns the chunk's new pointer.
    fn resize_in_place_or_copy(&self, idx: usize, size: usize) -> *mut u8 {
        let c = &self.chunks[idx];
        let (h, old) = (self.handle(c.ctx), c.data.len());
        if size < old || size == 0 {
            let q = h
                .alloc_aligned(size, c.align, memctx::AllocFlags::NONE)
                .expect("an allocation without NO_OOM never returns None")
                .as_ptr();
            // SAFETY: `c.ptr` has `old` > `size` bytes, `q` a fresh chunk of `size`.
            unsafe { std::ptr::copy_nonoverlapping(c.ptr, q, size) };
            return q;
        }
        let pinned = h.pin();
        // SAFETY: a live chunk of `h` with `old` bytes and alignment `c.align`, grown to `size`
        // bytes with the same alignment.
        let grown =
            unsafe { pinned.grow(nonnull(c.ptr), layout(old, c.align), layout(size, c.align)) };
        grown.expect("grow within the limits").as_ptr() as *mut u8
    }

    /// Applies one op to the tree and the model.
    pub fn apply(&mut self, op: &Op) {
        self.steps += 1;
        let clamp = |size: u32| size.min(MAX_SIZE) as usize;
        match *op {
            Op::Create {
                parent,
                sizes,
                kind,
            } => {
                let parent = self.pick_ctx(parent);
                let sizes = match sizes % 3 {
                    0 => BlockSizes::DEFAULT,
                    1 => BlockSizes::SMALL,
                    _ => BlockSizes::START_SMALL,
                };
                let id = self.next_ctx;
                self.next_ctx += 1;
                let name = NAMES[id as usize % NAMES.len()];
                let kind = Kind::pick(kind);
                let handle = kind.create(self.handle(parent), name, sizes);
                assert!(handle.is_empty(), "a new context is empty");
                assert_eq!(handle.stats().kind, kind.name(), "kind of {handle:?}");
                self.ctxs.insert(
                    id,
                    CtxModel {
                        handle,
                        kind,
                        fixed: kind.fixed_size(sizes),
                        last: None,
                        parent: Some(parent),
                        touched: false,
                    },
                );
            }
            Op::Alloc { ctx, size } => {
                let ctx = self.pick_ctx(ctx);
                self.alloc_in(ctx, clamp(size));
            }
            Op::AllocZero { ctx, size } => {
                let ctx = self.pick_ctx(ctx);
                let size = self.size_in(ctx, clamp(size));
                let p = self.handle(ctx).alloc_zeroed(size).as_ptr();
                self.adopt(p, ctx, size, true, 16);
            }
            Op::Palloc { size } => {
                let size = self.size_in(self.current, clamp(size));
                let p = memctx::palloc(size);
                self.adopt(p, self.current, size, false, 16);
            }
            // An over-aligned request in a context of one chunk size would be a request of
            // another size: a plain allocation of its size instead.
            Op::AllocAligned { ctx, size, .. }
                if self.ctxs[&self.pick_ctx(ctx)].fixed.is_some() =>
            {
                self.alloc_in(self.pick_ctx(ctx), clamp(size));
            }
            Op::AllocAligned { ctx, size, shift } => {
                let ctx = self.pick_ctx(ctx);
                let size = clamp(size);
                let align = 32usize << (shift % (MAX_ALIGN_SHIFT + 1));
                let p = self
                    .handle(ctx)
                    .alloc_aligned(size, align, memctx::AllocFlags::NONE)
                    .expect("aligned allocation without NO_OOM never returns None")
                    .as_ptr();
                self.adopt(p, ctx, size, false, align);
            }
            Op::Realloc { chunk, size } => {
                // A chunk of a context of one chunk size keeps it: `repalloc` to that size, the
                // one resize such a context allows (it returns the chunk as it is).
                if let Some(i) = self.pick_chunk(chunk) {
                    let fixed = self.ctxs[&self.chunks[i].ctx].fixed;
                    self.realloc_index(i, fixed.unwrap_or(clamp(size)));
                }
            }
            Op::Free { chunk } => {
                if let Some(i) = self.pick_chunk(chunk) {
                    self.free_index(i);
                }
            }
            Op::Reset { ctx } => {
                let ctx = self.pick_ctx(ctx);
                let _ = self.reset_ctx(ctx);
            }
            Op::Delete { ctx } => {
                let Some(id) = self.pick_non_root(ctx) else {
                    return;
                };
                let h = self.handle(id);
                let expected = if self.within(self.current, id) {
                    Err(ContextError::ContainsCurrent {
                        context: h.name(),
                        current: self.handle(self.current).name(),
                    })
                } else {
                    Ok(())
                };
                let got = h.try_delete();
                assert_eq!(got, expected, "delete of {h:?}");
                if got.is_ok() {
                    let mut gone = self.descendants(id);
                    gone.push(id);
                    self.forget_contexts(&gone);
                }
            }
            Op::Switch { ctx } => {
                let ctx = self.pick_ctx(ctx);
                let prev = memctx::switch_to(self.handle(ctx));
                assert_eq!(
                    prev,
                    self.handle(self.current),
                    "switch_to returned the wrong previous context"
                );
                self.current = ctx;
            }
            Op::SetParent { ctx, parent } => {
                let Some(id) = self.pick_non_root(ctx) else {
                    return;
                };
                let np = self.pick_ctx(parent);
                let h = self.handle(id);
                let expected = if self.within(np, id) {
                    Err(ContextError::WouldCycle {
                        context: h.name(),
                        new_parent: self.handle(np).name(),
                    })
                } else {
                    Ok(())
                };
                let got = h.try_set_parent(self.handle(np));
                assert_eq!(got, expected, "set_parent of {h:?}");
                if got.is_ok() {
                    self.ctxs.get_mut(&id).expect("live").parent = Some(np);
                }
            }
        }
    }

    /// Checks that every live chunk holds its bytes (and is aligned).
    pub fn verify_contents(&self) {
        for c in &self.chunks {
            // SAFETY: a live chunk of `c.data.len()` bytes.
            let got = unsafe { std::slice::from_raw_parts(c.ptr, c.data.len()) };
            if got != c.data.as_slice() {
                let at = got
                    .iter()
                    .zip(&c.data)
                    .position(|(a, b)| a != b)
                    .expect("a difference");
                panic!(
                    "step {}: chunk #{} at {:p} ({} bytes in {:?}) changed at byte {at}: \
                     expected {:#04x}, found {:#04x}",
                    self.steps,
                    c.id,
                    c.ptr,
                    c.data.len(),
                    self.ctxs[&c.ctx].handle,
                    c.data[at],
                    got[at]
                );
            }
        }
    }

    /// Everything: contents, chunk owners, the tree's shape and the stats invariants.
    pub fn verify(&self) {
        self.verify_contents();
        self.verify_tree(true);
    }

    /// The tree's shape, the current context, stale handles and the stats invariants; with
    /// `owners`, also each live chunk's owner ([`memctx::chunk_context`]) and its space, for the
    /// kinds those apply to. The owner check validates each pointer, which in the debug build
    /// also checks its redzones.
    pub fn verify_tree(&self, owners: bool) {
        let step = self.steps;
        assert_eq!(
            MemoryContext::current(),
            self.handle(self.current),
            "step {step}: CurrentMemoryContext"
        );
        for d in &self.dead {
            assert!(!d.is_alive(), "step {step}: deleted {d:?} is alive");
        }
        // Chunk owners, and the space each context's chunks occupy.
        let mut space: BTreeMap<u32, u64> = BTreeMap::new();
        for c in &self.chunks {
            // A Bump chunk's owner and space cannot be asked (its kind's rules).
            if !owners || !self.ctxs[&c.ctx].kind.frees_chunks() {
                *space.entry(c.ctx).or_default() += c.data.len() as u64;
                continue;
            }
            // SAFETY: a live chunk.
            let owner = unsafe { memctx::chunk_context(c.ptr) };
            assert_eq!(
                owner,
                self.handle(c.ctx),
                "step {step}: owner of chunk #{} at {:p}",
                c.id,
                c.ptr
            );
            // SAFETY: a live chunk.
            let s = unsafe { memctx::chunk_space(c.ptr) } as u64;
            assert!(
                s as usize >= c.data.len(),
                "step {step}: chunk_space {s} < size {}",
                c.data.len()
            );
            *space.entry(c.ctx).or_default() += s;
        }
        // Each context: links, counters. The model's children and the stable ids are gathered
        // once, so a step costs O(contexts), not O(contexts²).
        let mut model_kids: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut by_id: BTreeMap<u64, (MemoryContext, Counters)> = BTreeMap::new();
        for m in self.ctxs.values() {
            if let Some(p) = m.parent {
                model_kids.entry(p).or_default().push(m.handle.id());
            }
        }
        let mut sum = 0u64;
        for (&id, m) in &self.ctxs {
            let h = m.handle;
            assert!(h.is_alive(), "step {step}: {h:?} should be alive");
            let parent = h
                .parent()
                .expect("ModelRoot and its descendants have parents");
            let want_parent = match m.parent {
                Some(p) => self.handle(p),
                None => MemoryContext::top(),
            };
            assert_eq!(parent, want_parent, "step {step}: parent of {h:?}");
            let mut kids: Vec<u64> = h.children().iter().map(|c| c.id()).collect();
            kids.sort_unstable();
            let mut want = model_kids.remove(&id).unwrap_or_default();
            want.sort_unstable();
            assert_eq!(kids, want, "step {step}: children of {h:?}");
            assert_eq!(
                h.is_empty(),
                want.is_empty() && !m.touched,
                "step {step}: is_empty of {h:?}"
            );
            let c = h.counters();
            check_counters(&c, h, Some(m.kind), step);
            assert_eq!(
                c.total_bytes,
                h.mem_allocated(false) as u64,
                "step {step}: total_bytes != mem_allocated of {h:?}"
            );
            let used = space.get(&id).copied().unwrap_or(0);
            assert!(
                c.used_bytes() >= used,
                "step {step}: {h:?} reports {} used bytes, its live chunks occupy {used}: {c}",
                c.used_bytes()
            );
            sum += c.total_bytes;
            by_id.insert(h.id(), (h, c));
        }
        // The whole tree.
        let root = self.root();
        let stats = root.stats();
        let total = stats.total();
        assert_eq!(
            total.total_bytes, sum,
            "step {step}: tree total != sum of contexts"
        );
        assert_eq!(
            root.mem_allocated(true) as u64,
            sum,
            "step {step}: mem_allocated(recurse) != sum of contexts"
        );
        check_counters(&total, root, None, step);
        let mut nodes = 0;
        let mut stack: Vec<&StatsNode> = vec![&stats];
        while let Some(n) = stack.pop() {
            nodes += 1;
            let (h, c) = by_id
                .get(&n.id)
                .unwrap_or_else(|| panic!("step {step}: stats node {} not in the model", n.id));
            assert_eq!(n.name, h.name());
            assert_eq!(n.counters, *c, "step {step}: stats of {h:?}");
            stack.extend(n.children.iter());
        }
        assert_eq!(nodes, self.ctxs.len(), "step {step}: stats tree size");
    }

    /// Switches back to the context that was current before, deletes ModelRoot and checks that
    /// every handle of the sequence is stale.
    pub fn finish(mut self) {
        memctx::switch_to(self.saved);
        let root = self.root();
        root.delete();
        for c in std::mem::take(&mut self.ctxs).into_values() {
            assert!(!c.handle.is_alive());
        }
        for d in &self.dead {
            assert!(!d.is_alive());
        }
    }
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

impl Drop for Runner {
    /// After a failure (a panic in the middle of a sequence), leave the thread usable for the next
    /// case: switch back and delete what is left.
    fn drop(&mut self) {
        if let Some(root) = self.ctxs.get(&ROOT).map(|c| c.handle) {
            memctx::switch_to(self.saved);
            if root.is_alive() {
                let _ = root.try_delete();
            }
        }
    }
}

/// The counters' own invariants: free within total (so used + free == total), blocks present;
/// for a context of a kind whose free chunks are free bytes, free chunks only with free bytes
/// (`kind` is `None` for a sum over a tree of several kinds).
pub fn check_counters(c: &Counters, h: MemoryContext, kind: Option<Kind>, step: usize) {
    assert!(
        c.free_bytes <= c.total_bytes,
        "step {step}: {h:?}: free exceeds total: {c}"
    );
    assert_eq!(
        c.used_bytes() + c.free_bytes,
        c.total_bytes,
        "step {step}: {h:?}: {c}"
    );
    assert!(
        c.total_nblocks >= 1,
        "step {step}: {h:?} has no keeper block: {c}"
    );
    let free_chunks_are_free_bytes = kind.is_some_and(Kind::free_chunks_are_free_bytes);
    assert!(
        c.free_chunks == 0 || c.free_bytes > 0 || !free_chunks_are_free_bytes,
        "step {step}: {h:?}: free chunks without free bytes: {c}"
    );
}

/// Runs `ops` on a fresh runner, checking the contents of every live chunk after every step and
/// everything else ([`Runner::verify`]: owners, tree, stats) after every tree operation, every
/// [`FULL_CHECK_EVERY`] steps and at the end. The fuzz target's runner: the full check after
/// every step costs about ten times the rest, and a broken invariant of the tree or the stats
/// persists until the next full check, so the fuzzer misses little. A crash input it finds fails
/// [`run_checked`] too (a superset of these checks).
pub fn run_sampled(ops: &[Op]) {
    let mut r = Runner::new();
    for (i, op) in ops.iter().enumerate() {
        r.apply(op);
        r.verify_contents();
        let tree_op = matches!(
            op,
            Op::Create { .. }
                | Op::Reset { .. }
                | Op::Delete { .. }
                | Op::Switch { .. }
                | Op::SetParent { .. }
        );
        if tree_op || i % FULL_CHECK_EVERY == 0 {
            r.verify_tree(true);
        }
    }
    r.verify();
    r.finish();
}

/// How often [`run_sampled`] runs the full check between tree operations.
pub const FULL_CHECK_EVERY: usize = 8;

/// Runs `ops` on a fresh runner, verifying everything after every step, and cleans up.
pub fn run_checked(ops: &[Op]) {
    let mut r = Runner::new();
    r.verify();
    for op in ops {
        r.apply(op);
        r.verify();
    }
    r.finish();
}
