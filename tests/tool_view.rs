//! What the debug build tells Valgrind memcheck and AddressSanitizer, asked of the running tool
//! itself (`memctx::debug::tool_view`). For every kind, through carve, pfree, reuse of a freed
//! chunk, a leftover carved at a block's end, repalloc in place (growing and shrinking), an
//! over-aligned allocation, reset and delete, every byte of the chunks involved and of their
//! neighbours is what the tool must believe:
//!
//! - a chunk's prefix (header word, debug record, front redzone) not addressable;
//! - its requested bytes addressable, and under memcheck undefined until written;
//! - its rear redzone, up to the end of its capacity, not addressable;
//! - freed chunks, memory a reset released and unused block space not addressable;
//! - the next chunk's bytes as they were: an `open` or `close` too long shows there.
//!
//! A `check()` that finds damage planted past the tool (`debug::write_unseen`) and writes the
//! patterns back leaves the same boundaries; under memcheck, where every block is a mapping of its
//! own, a block given back is unmapped.
//!
//! Only a tool can answer, so the boundaries are asserted under the memcheck and ASan legs of
//! `ci/sanitizers` and the memcheck and asan passes of `ci/mutants`; a native run walks the same
//! operations, checks the layout the assertions rely on (where each chunk lands) and says that
//! it asserted no boundary. Under memcheck a wrong pool operation — the redirect bookkeeping of an
//! over-aligned chunk — is an error memcheck reports itself, which fails the binary
//! (`valgrind/memcheck` exits with 99).
//!
//! The request sizes are odd on purpose: a request that ends inside an 8-byte ASan granule checks
//! the granule's "first k bytes addressable" state. Chunk data starts on a 16-byte boundary and a
//! chunk's capacity is a multiple of 8, so every boundary asserted here is exact under ASan too.
#![cfg(feature = "debug-contexts")]

use memctx::debug::{self, BugClass, ByteView, Tool};
use memctx::{chunk_prefix_size, chunk_space, AllocFlags, BlockSizes, MemoryContext};

#[path = "common/kinds.rs"]
mod kinds;

use kinds::Kind;

/// Bytes in front of a chunk's data: header word, debug record, front redzone.
const PREFIX: usize = chunk_prefix_size();
/// The header word, the first bytes of the prefix.
const HEADER: usize = memctx::CHUNK_HEADER_SIZE;
/// The request of the chunks of the walk (a Slab's is its fixed size).
const SIZE: usize = 77;
/// An over-aligned request: its size and alignment.
const ALIGNED: (usize, usize) = (40, 64);

/// What a range must be to the tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    NoAccess,
    /// Addressable, never written (ASan: addressable).
    Undefined,
    /// Addressable and written (ASan: addressable).
    Defined,
}

impl Want {
    fn accepts(self, got: ByteView) -> bool {
        matches!(
            (self, got),
            (Want::NoAccess, ByteView::NoAccess)
                | (Want::Undefined, ByteView::Undefined)
                | (Want::Defined, ByteView::Defined)
                | (Want::Undefined | Want::Defined, ByteView::Addressable)
        )
    }
}

/// Asserts that the running tool sees every byte of `[start, start + len)` as `want`; `what`
/// names the range. Nothing to assert when no tool watches.
fn expect(start: *const u8, len: usize, want: Want, what: &str) {
    // SAFETY: every range the walk asks about lies in a context's block or just after one (the
    // process's memory, live or given back); only the tool's record of it is read.
    let Some(view) = (unsafe { debug::tool_view(start, len) }) else {
        return;
    };
    if let Some(i) = view.iter().position(|&b| !want.accepts(b)) {
        let got = view[i];
        let run = view[i..].iter().take_while(|&&b| b == got).count();
        panic!(
            "{what}: bytes [{i}, {}) of [{start:p}, +{len}) are {got:?} to {:?}, expected {want:?}",
            i + run,
            debug::tool().expect("a tool answered")
        );
    }
}

/// The prefix of a live chunk at `p`: header word, record and front redzone closed.
fn prefix(p: *mut u8, what: &str) {
    let chunk = p.wrapping_sub(PREFIX);
    expect(
        chunk,
        HEADER,
        Want::NoAccess,
        &format!("{what}: header word"),
    );
    let rest = PREFIX - HEADER;
    let record = chunk.wrapping_add(HEADER);
    expect(
        record,
        rest,
        Want::NoAccess,
        &format!("{what}: record and front redzone"),
    );
}

/// A live chunk at `p` with `size` requested bytes (`data` for them) and capacity `cap`.
fn live(p: *mut u8, size: usize, cap: usize, data: Want, what: &str) {
    prefix(p, what);
    expect(p, size, data, &format!("{what}: requested bytes"));
    let rear = p.wrapping_add(size);
    expect(
        rear,
        cap - size,
        Want::NoAccess,
        &format!("{what}: rear redzone"),
    );
}

/// A chunk at `p` of capacity `cap` that is freed or released: none of it addressable.
fn gone(p: *mut u8, cap: usize, what: &str) {
    let chunk = p.wrapping_sub(PREFIX);
    expect(
        chunk,
        PREFIX + cap,
        Want::NoAccess,
        &format!("{what}: the whole chunk"),
    );
}

/// Writes every requested byte (memcheck: they become defined).
fn write(p: *mut u8, size: usize, byte: u8) {
    // SAFETY: `p` is a live chunk of at least `size` requested bytes.
    unsafe { p.write_bytes(byte, size) };
}

/// Says, in a native run, that the walk asserted no boundary.
fn say_if_skipped(test: &str) {
    if debug::tool().is_none() {
        eprintln!(
            "{test}: skipped the boundaries (no tool watches: run it under valgrind/memcheck or \
             in an ASan build); the walk and its layout checks ran"
        );
    }
}

/// The chunks the walk keeps track of: three carved one after another, their capacity.
struct Trio {
    kind: Kind,
    a: *mut u8,
    b: *mut u8,
    c: *mut u8,
    size: usize,
    cap: usize,
}

impl Trio {
    /// Carves three chunks in a fresh context of `kind`, checks they lie one after another, and
    /// the tool's view of them and of the unused space after them; then writes them.
    fn carve(kind: Kind, ctx: MemoryContext) -> Trio {
        let size = kind.fixed_size(BlockSizes::DEFAULT).unwrap_or(SIZE);
        let [a, b, c] = [0; 3].map(|_| ctx.alloc(size).as_ptr());
        let cap = b as usize - a as usize - PREFIX;
        assert_eq!(
            c as usize - b as usize,
            PREFIX + cap,
            "{kind:?}: carved in a row"
        );
        if kind.frees_chunks() {
            // SAFETY: `a` is a live chunk of a kind that answers GetMemoryChunkSpace.
            assert_eq!(
                unsafe { chunk_space(a) },
                PREFIX + cap,
                "{kind:?}: capacity"
            );
        }
        let t = Trio {
            kind,
            a,
            b,
            c,
            size,
            cap,
        };
        for (p, name) in [(a, "a"), (b, "b"), (c, "c")] {
            live(
                p,
                size,
                cap,
                Want::Undefined,
                &format!("{kind:?} carve: chunk {name}"),
            );
        }
        t.unused_after_c("carve");
        for (p, byte) in [(a, 0x11), (b, 0x22), (c, 0x33)] {
            write(p, size, byte);
        }
        t
    }

    /// The unused block space after `c` (the next chunk's prefix and more) is closed.
    fn unused_after_c(&self, op: &str) {
        let next = self.c.wrapping_add(self.cap);
        let what = format!("{:?} {op}: unused space after chunk c", self.kind);
        expect(next, PREFIX + 16, Want::NoAccess, &what);
    }

    /// `a` and `c`, live and written, `b` as `b_live` says, and the space after `c`.
    fn neighbours(&self, op: &str, b_live: bool) {
        let what = format!("{:?} {op}: chunk a", self.kind);
        live(self.a, self.size, self.cap, Want::Defined, &what);
        self.after_a(&format!("{:?} {op}", self.kind), b_live);
        self.unused_after_c(op);
    }

    /// `b` (live and written, or freed, as `b_live` says) and `c` after something was done to
    /// `a`: an `open` or `close` of `a`'s too long shows there.
    fn after_a(&self, what: &str, b_live: bool) {
        if b_live {
            let b = format!("{what}: chunk b");
            live(self.b, self.size, self.cap, Want::Defined, &b);
        } else {
            gone(self.b, self.cap, &format!("{what}: freed chunk b"));
        }
        let c = format!("{what}: chunk c");
        live(self.c, self.size, self.cap, Want::Defined, &c);
    }
}

/// pfree of the middle chunk, then (for a kind with freelists) its reuse.
fn free_and_reuse(t: &Trio, ctx: MemoryContext) -> bool {
    let kind = t.kind;
    // SAFETY: `b` is a live chunk of `ctx`.
    unsafe { memctx::pfree(t.b) };
    t.neighbours("pfree", false);
    if kind == Kind::Generation {
        return false; // a Generation chunk's space comes back only with its whole block
    }
    let again = ctx.alloc(t.size).as_ptr();
    assert_eq!(
        again, t.b,
        "{kind:?}: the freed chunk serves the next request of its size"
    );
    live(
        again,
        t.size,
        t.cap,
        Want::Undefined,
        &format!("{kind:?} reuse: chunk b"),
    );
    write(again, t.size, 0x22);
    t.neighbours("reuse", true);
    true
}

/// repalloc of `a` in place: grown to the largest request its capacity holds with a redzone, then
/// shrunk; a Slab chunk only to its own size.
fn resize_in_place(t: &Trio, b_live: bool) {
    let kind = t.kind;
    let resize = |size: usize| {
        // SAFETY: `a` is a live chunk; the size fits its capacity, so it stays in place.
        let p = unsafe { memctx::repalloc(t.a, size) };
        assert_eq!(p, t.a, "{kind:?}: repalloc to {size} stays in place");
    };
    if kind == Kind::Slab {
        resize(t.size);
        t.neighbours("repalloc to the same size", b_live);
        return;
    }
    let grown = t.cap - 16; // the default rear redzone is 16 bytes
    resize(grown);
    let what = format!("{kind:?} repalloc {} -> {grown}", t.size);
    prefix(t.a, &what);
    expect(
        t.a,
        t.size,
        Want::Defined,
        &format!("{what}: bytes written before"),
    );
    let tail = t.a.wrapping_add(t.size);
    expect(
        tail,
        grown - t.size,
        Want::Undefined,
        &format!("{what}: grown bytes"),
    );
    expect(
        t.a.wrapping_add(grown),
        t.cap - grown,
        Want::NoAccess,
        &format!("{what}: redzone"),
    );
    let b = if b_live { "" } else { " (b freed)" };
    t.after_a(&format!("{what}{b}"), b_live);
    let shrunk = 41;
    resize(shrunk);
    live(
        t.a,
        shrunk,
        t.cap,
        Want::Defined,
        &format!("{kind:?} repalloc -> {shrunk}"),
    );
    t.after_a(&format!("{kind:?} repalloc -> {shrunk}"), b_live);
    resize(t.size);
    write(t.a, t.size, 0x11);
}

/// An over-aligned chunk carved right after `c`, and a chunk after it: the base chunk's bytes
/// before the aligned region (the redirect header among them) and after it closed. Returns the
/// aligned pointer, its base and the base's capacity.
fn aligned_after(t: &Trio, ctx: MemoryContext) -> (*mut u8, *mut u8, usize) {
    let kind = t.kind;
    let (size, align) = ALIGNED;
    let p = ctx
        .alloc_aligned(size, align, AllocFlags::NONE)
        .expect("memory")
        .as_ptr();
    let base = t.c.wrapping_add(t.cap + PREFIX);
    let lead = p as usize - base as usize;
    assert!(
        p as usize % align == 0 && (PREFIX..PREFIX + align).contains(&lead),
        "{kind:?}"
    );
    let n = ctx.alloc(t.size).as_ptr();
    let base_cap = n as usize - base as usize - PREFIX;
    let what = format!("{kind:?} palloc_aligned({size}, {align})");
    expect(
        base.wrapping_sub(PREFIX),
        PREFIX,
        Want::NoAccess,
        &format!("{what}: base prefix"),
    );
    aligned_in_base(base, base_cap, p, size, &what);
    live(
        n,
        t.size,
        t.cap,
        Want::Undefined,
        &format!("{what}: the chunk after it"),
    );
    write(p, size, 0x44);
    write(n, t.size, 0x55);
    (p, base, base_cap)
}

/// The tool's view of an over-aligned chunk `p` of `size` bytes inside its base chunk `base`
/// (capacity `base_cap`): the base's bytes before the aligned region (the redirect header among
/// them) closed, the region open and undefined, the base's bytes after it closed.
fn aligned_in_base(base: *mut u8, base_cap: usize, p: *mut u8, size: usize, what: &str) {
    let lead = p as usize - base as usize;
    expect(
        base,
        lead,
        Want::NoAccess,
        &format!("{what}: base bytes before the aligned region"),
    );
    expect(
        p,
        size,
        Want::Undefined,
        &format!("{what}: the aligned region"),
    );
    expect(
        p.wrapping_add(size),
        base_cap - lead - size,
        Want::NoAccess,
        &format!("{what}: base bytes after the aligned region"),
    );
}

/// Frees the aligned chunk `p` (base `base`, capacity `cap`) after moving it with repalloc: the
/// pool chunk memcheck has for it is the aligned region, which each pfree gives back.
fn aligned_moved_and_freed(kind: Kind, p: *mut u8, base: *mut u8, cap: usize) {
    let (size, align) = ALIGNED;
    // SAFETY: `p` is a live over-aligned chunk.
    let q = unsafe { memctx::repalloc(p, size + 16) };
    assert!(
        q != p && q as usize % align == 0,
        "{kind:?}: an aligned chunk moves"
    );
    gone(
        base,
        cap,
        &format!("{kind:?} repalloc of an aligned chunk: its old base"),
    );
    let what = format!("{kind:?} repalloc of an aligned chunk to {}", size + 16);
    expect(
        q.wrapping_sub(HEADER),
        HEADER,
        Want::NoAccess,
        &format!("{what}: redirect header"),
    );
    expect(q, size, Want::Defined, &format!("{what}: copied bytes"));
    expect(
        q.wrapping_add(size),
        16,
        Want::Undefined,
        &format!("{what}: new bytes"),
    );
    expect(
        q.wrapping_add(size + 16),
        16,
        Want::NoAccess,
        &format!("{what}: redzone"),
    );
    // SAFETY: `q` is a live over-aligned chunk.
    unsafe { memctx::pfree(q) };
    expect(
        q.wrapping_sub(HEADER),
        HEADER + size + 32,
        Want::NoAccess,
        &format!("{what}, freed"),
    );
}

/// The walk of one kind: carve, pfree and reuse, repalloc in place, an aligned chunk, reset (every
/// chunk released), carving again over released space, delete.
fn walk(kind: Kind) {
    let ctx = kind.create(MemoryContext::top(), "tool view", BlockSizes::DEFAULT);
    let t = Trio::carve(kind, ctx);
    let b_live = !kind.frees_chunks() || free_and_reuse(&t, ctx);
    if kind.frees_chunks() {
        resize_in_place(&t, b_live);
    }
    let mut released = vec![(t.a, t.cap), (t.c, t.cap)];
    if b_live {
        released.push((t.b, t.cap));
    }
    if kind != Kind::Slab {
        let _g = ctx.switch_to();
        let (p, base, base_cap) = aligned_after(&t, ctx);
        if kind.frees_chunks() {
            aligned_moved_and_freed(kind, p, base, base_cap);
        } else {
            released.push((base, base_cap));
        }
    }
    ctx.reset();
    for &(p, cap) in &released {
        gone(p, cap, &format!("{kind:?} reset: a released chunk"));
    }
    let again = ctx.alloc(t.size).as_ptr();
    assert_eq!(again, t.a, "{kind:?}: the reset rewound the keeper");
    live(
        again,
        t.size,
        t.cap,
        Want::Undefined,
        &format!("{kind:?} carve after reset"),
    );
    gone(
        t.b,
        t.cap,
        &format!("{kind:?} carve after reset: released space after it"),
    );
    ctx.delete();
    for &(p, cap) in &released {
        gone(
            p,
            cap,
            &format!("{kind:?} delete: a chunk of the deleted context"),
        );
    }
}

#[test]
fn allocset_chunks_as_the_tool_sees_them() {
    walk(Kind::AllocSet);
    say_if_skipped("allocset_chunks_as_the_tool_sees_them");
}

#[test]
fn generation_chunks_as_the_tool_sees_them() {
    walk(Kind::Generation);
    say_if_skipped("generation_chunks_as_the_tool_sees_them");
}

#[test]
fn bump_chunks_as_the_tool_sees_them() {
    walk(Kind::Bump);
    say_if_skipped("bump_chunks_as_the_tool_sees_them");
}

#[test]
fn slab_chunks_as_the_tool_sees_them() {
    walk(Kind::Slab);
    say_if_skipped("slab_chunks_as_the_tool_sees_them");
}

/// `check()` over a context's chunks, clean and then damaged: the walk opens each chunk's record
/// and redzones (a freed chunk's bytes) only around its checks, and the patterns it writes back
/// after reporting damage are closed again. An overrun of `a` and, for a kind that frees chunks,
/// a write into freed `b` are planted past the tool (`debug::write_unseen`); the check finds both
/// at their bytes, and every boundary stays as it was — `d`, carved after `c` and never written,
/// still undefined to memcheck; a second check finds nothing left.
fn check_and_restore(kind: Kind) {
    let ctx = kind.create(MemoryContext::top(), "tool check", BlockSizes::DEFAULT);
    let t = Trio::carve(kind, ctx);
    let d = ctx.alloc(t.size).as_ptr();
    assert_eq!(d, t.c.wrapping_add(PREFIX + t.cap), "{kind:?}: d after c");
    let b_live = !kind.frees_chunks();
    if !b_live {
        // SAFETY: `b` is a live chunk of `ctx`.
        unsafe { memctx::pfree(t.b) };
    }
    let boundaries = |op: &str| {
        let what = format!("{kind:?} {op}");
        live(
            t.a,
            t.size,
            t.cap,
            Want::Defined,
            &format!("{what}: chunk a"),
        );
        t.after_a(&what, b_live);
        live(
            d,
            t.size,
            t.cap,
            Want::Undefined,
            &format!("{what}: chunk d"),
        );
        let next = d.wrapping_add(t.cap);
        expect(
            next,
            PREFIX + 16,
            Want::NoAccess,
            &format!("{what}: after d"),
        );
    };
    assert_eq!(ctx.check(), 0, "{kind:?}: a clean context");
    boundaries("check");

    let (over, in_b) = (t.size + 3, t.size / 2);
    // SAFETY: both bytes lie in `ctx`'s block: `over` in `a`'s rear redzone (its capacity holds
    // at least a 16-byte redzone), `in_b` among freed `b`'s bytes past its freelist link.
    unsafe {
        debug::write_unseen(t.a.wrapping_add(over), &[0xab]);
        if !b_live {
            debug::write_unseen(t.b.wrapping_add(in_b), &[0xcd]);
        }
    }
    debug::set_thread_policy(Some(debug::Policy::Log));
    let n = ctx.check();
    let reports = debug::take_reports();
    debug::set_thread_policy(None);
    let got: Vec<_> = reports
        .iter()
        .map(|r| (r.class, r.chunk, r.range, r.found_at.as_str()))
        .collect();
    let mut want = vec![(
        BugClass::Overrun,
        Some(t.a as usize),
        Some((over as isize, over as isize + 1)),
        "check",
    )];
    if !b_live {
        let range = Some((in_b as isize, in_b as isize + 1));
        want.push((BugClass::WriteAfterFree, Some(t.b as usize), range, "check"));
    }
    want.sort_by_key(|w| w.1);
    assert_eq!((n, got), (want.len(), want), "{kind:?}: the planted damage");
    boundaries("check that restored the patterns");
    assert_eq!(ctx.check(), 0, "{kind:?}: every pattern restored");
    boundaries("a second check");
    ctx.delete();
}

#[test]
fn a_check_and_its_restore_leave_every_boundary_as_it_was() {
    for kind in kinds::ALL {
        check_and_restore(*kind);
    }
    say_if_skipped("a_check_and_its_restore_leave_every_boundary_as_it_was");
}

/// An AllocSet keeper filled until a request needs a new block: the space left at its end is
/// carved into free chunks, every byte of it closed (ASan: and not one byte past the block), and
/// the largest serves the next request of its class.
#[test]
fn a_leftover_at_a_blocks_end_as_the_tool_sees_it() {
    let ctx = Kind::AllocSet.create(MemoryContext::top(), "leftover", BlockSizes::DEFAULT);
    let size = 1000;
    let mut last = ctx.alloc(size).as_ptr();
    // SAFETY: a live AllocSet chunk.
    let cap = unsafe { chunk_space(last) } - PREFIX;
    while ctx.counters().free_bytes as usize >= PREFIX + cap {
        last = ctx.alloc(size).as_ptr();
    }
    let start = last.wrapping_add(cap);
    let left = ctx.counters().free_bytes as usize;
    let end = start.wrapping_add(left);
    expect(
        start,
        left,
        Want::NoAccess,
        "unused space at the keeper's end",
    );
    let _ = ctx.alloc(size);
    assert_eq!(
        ctx.counters().total_nblocks,
        2,
        "the request took a new block"
    );
    expect(
        start,
        left,
        Want::NoAccess,
        "the keeper's leftover, carved into free chunks",
    );
    if debug::tool() == Some(Tool::Asan) {
        // The block is malloc'd: ASan's redzone of the allocation follows it. (Under memcheck
        // the block is a mapping, and the rest of its last page is addressable.)
        expect(end, 16, Want::NoAccess, "ASan's redzone after the keeper");
    }
    let l = ctx.alloc(400).as_ptr();
    assert_eq!(
        l,
        start.wrapping_add(PREFIX),
        "the largest leftover serves the next request"
    );
    // SAFETY: a live AllocSet chunk.
    let l_cap = unsafe { chunk_space(l) } - PREFIX;
    live(l, 400, l_cap, Want::Undefined, "a leftover chunk reused");
    let after = l.wrapping_add(l_cap);
    let rest = end as usize - after as usize;
    expect(after, rest, Want::NoAccess, "the smaller leftover after it");
    ctx.delete();
    say_if_skipped("a_leftover_at_a_blocks_end_as_the_tool_sees_it");
}

/// An over-aligned chunk alive at a reset: the reset forgets its redirect, so a plain chunk
/// carved later at its base is freed as a plain chunk. Under memcheck a stale redirect makes that
/// pfree move a pool chunk that is not there, an error memcheck reports.
#[test]
fn a_reset_forgets_an_aligned_chunks_redirect() {
    for kind in [Kind::AllocSet, Kind::Generation] {
        let ctx = kind.create(MemoryContext::top(), "redirects", BlockSizes::DEFAULT);
        let first = ctx.alloc(SIZE).as_ptr();
        let (size, align) = ALIGNED;
        let p = ctx
            .alloc_aligned(size, align, AllocFlags::NONE)
            .expect("memory");
        // SAFETY: a live chunk of a kind that answers GetMemoryChunkSpace.
        let cap = unsafe { chunk_space(first) } - PREFIX;
        let base = first.wrapping_add(cap + PREFIX);
        assert!(
            (p.as_ptr() as usize) > base as usize,
            "{kind:?}: the aligned chunk's base"
        );
        ctx.reset();
        gone(
            p.as_ptr(),
            size,
            &format!("{kind:?}: the aligned region after the reset"),
        );
        assert_eq!(
            ctx.alloc(SIZE).as_ptr(),
            first,
            "{kind:?}: the keeper rewound"
        );
        // A plain request of the base chunk's size lands where the base was.
        let plain = ctx.alloc(size + align + PREFIX).as_ptr();
        assert_eq!(plain, base, "{kind:?}: a plain chunk at the old base");
        write(plain, size + align + PREFIX, 0x66);
        // SAFETY: a live chunk of `ctx`.
        unsafe { memctx::pfree(plain) };
        // Its capacity holds at least the request and the 16-byte redzone.
        gone(
            plain,
            size + align + PREFIX + 16,
            &format!("{kind:?}: the plain chunk freed"),
        );
        ctx.delete();
    }
    say_if_skipped("a_reset_forgets_an_aligned_chunks_redirect");
}

/// An over-aligned chunk whose base is a freed chunk taken from its freelist, with a live chunk
/// right after it: moving the base's rear redzone behind the aligned region, and freeing it,
/// leaves that neighbour as it was.
#[test]
fn an_aligned_chunk_in_a_reused_slot_leaves_its_neighbour_alone() {
    let ctx = Kind::AllocSet.create(MemoryContext::top(), "aligned reuse", BlockSizes::DEFAULT);
    let (size, align) = ALIGNED;
    // What palloc_aligned asks its context for: the request, the alignment and a chunk prefix.
    let x = ctx.alloc(size + align + PREFIX).as_ptr();
    let y = ctx.alloc(SIZE).as_ptr();
    write(y, SIZE, 0x77);
    // SAFETY: live AllocSet chunks.
    let (cap, y_cap) = unsafe { (chunk_space(x) - PREFIX, chunk_space(y) - PREFIX) };
    assert_eq!(y, x.wrapping_add(cap + PREFIX), "carved in a row");
    // SAFETY: a live chunk of `ctx`.
    unsafe { memctx::pfree(x) };
    let p = ctx
        .alloc_aligned(size, align, AllocFlags::NONE)
        .expect("memory")
        .as_ptr();
    let lead = p as usize - x as usize;
    assert!(
        (PREFIX..PREFIX + align).contains(&lead),
        "the freed chunk is the base"
    );
    let what = format!("palloc_aligned({size}, {align}) in a reused chunk");
    aligned_in_base(x, cap, p, size, &what);
    live(
        y,
        SIZE,
        y_cap,
        Want::Defined,
        &format!("{what}: the chunk after the base"),
    );
    // SAFETY: a live over-aligned chunk.
    unsafe { memctx::pfree(p) };
    gone(x, cap, &format!("{what}, freed: its base"));
    live(
        y,
        SIZE,
        y_cap,
        Want::Defined,
        &format!("{what}, freed: the chunk after the base"),
    );
    ctx.delete();
    say_if_skipped("an_aligned_chunk_in_a_reused_slot_leaves_its_neighbour_alone");
}

/// Whether the page holding `p` is mapped, as the kernel says (`mincore` fails with ENOMEM on an
/// address no mapping holds).
fn mapped(p: *mut u8) -> bool {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let start = (p as usize & !(page - 1)) as *mut libc::c_void;
    let mut resident = [0u8; 1];
    // SAFETY: `resident` has room for the one page asked about; mincore only reads the kernel's
    // page tables and writes `resident`.
    unsafe { libc::mincore(start, 1, resident.as_mut_ptr()) == 0 }
}

/// Under memcheck every block is a mapping of its own (`src/debug/vgmap.rs`), and a block given
/// back is unmapped, not kept: a large chunk's block at its pfree, and at a delete a block larger
/// than the quarantine of released memory (8 MiB by default), which takes smaller ones. Natively
/// and under ASan blocks come from the system allocator, whose pages are its own business.
#[test]
fn blocks_given_back_under_memcheck_are_unmapped() {
    if debug::tool() != Some(Tool::Memcheck) {
        eprintln!("blocks_given_back_under_memcheck_are_unmapped: blocks are mappings under memcheck only; skipped");
        return;
    }
    let ctx = Kind::AllocSet.create(MemoryContext::top(), "given back", BlockSizes::DEFAULT);
    let large = ctx.alloc(1 << 20).as_ptr();
    let last = large.wrapping_add((1 << 20) - 1);
    assert!(
        mapped(large) && mapped(last),
        "a large chunk's block is mapped"
    );
    // SAFETY: a live chunk of `ctx`.
    unsafe { memctx::pfree(large) };
    assert!(
        !mapped(large) && !mapped(last),
        "the block of a large chunk, freed, is unmapped"
    );
    let huge = ctx.alloc(9 << 20).as_ptr();
    let small = ctx.alloc(SIZE).as_ptr();
    assert!(mapped(huge) && mapped(small));
    ctx.delete();
    assert!(
        !mapped(huge),
        "a block larger than the quarantine is unmapped at the delete"
    );
    assert!(mapped(small), "the keeper, in the quarantine, stays mapped");
}

/// The view itself, on memory memctx does not manage: a 13-byte heap buffer is addressable to the
/// tool and the 3 bytes after it are not (the tool's redzone after a `malloc`'d block; ASan's
/// granule holds "the first 5 bytes addressable"); memcheck sees the buffer undefined until
/// written, then defined. With no tool there is no view.
#[test]
fn the_view_of_a_heap_buffer() {
    let mut buf: Vec<u8> = Vec::with_capacity(13);
    let p = buf.as_mut_ptr();
    // SAFETY: the buffer and the bytes right after it are heap memory the process holds.
    let fresh = unsafe { debug::tool_view(p, 16) };
    let Some(tool) = debug::tool() else {
        assert_eq!(fresh, None);
        say_if_skipped("the_view_of_a_heap_buffer");
        return;
    };
    let fresh = fresh.expect("a tool answers");
    let (unwritten, written) = match tool {
        Tool::Memcheck => (ByteView::Undefined, ByteView::Defined),
        Tool::Asan => (ByteView::Addressable, ByteView::Addressable),
    };
    assert_eq!(fresh[..13], [unwritten; 13], "{tool:?}: a fresh buffer");
    assert_eq!(
        fresh[13..],
        [ByteView::NoAccess; 3],
        "{tool:?}: past its end"
    );
    buf.extend_from_slice(&[7; 13]);
    // SAFETY: as above.
    let view = unsafe { debug::tool_view(p, 16) }.expect("a tool answers");
    assert_eq!(view[..13], [written; 13], "{tool:?}: the buffer written");
    assert_eq!(
        view[13..],
        [ByteView::NoAccess; 3],
        "{tool:?}: past its end"
    );
}
