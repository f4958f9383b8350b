//! Memory bugs committed on purpose, one per run, for the sanitizer proof tests
//! (`tests/memcheck_proof.rs`, `tests/asan_proof.rs`): `cargo run --example bugs -- NAME`.
//!
//! Each bug is a function of its own, never inlined, so that the tool's report names it. The
//! debug build's own checks are set to log instead of panicking: the point of these runs is what
//! Valgrind memcheck or AddressSanitizer says at the faulting instruction.
//!
//! | name | bug |
//! |---|---|
//! | `overrun` | writes the byte right after a 10-byte chunk |
//! | `overrun-slack` | writes the last byte of a 20-byte chunk's size class (64 bytes) |
//! | `underrun` | writes the byte before a chunk |
//! | `large-overrun` | writes 4 bytes past a 10,000-byte chunk, which has a block of its own |
//! | `read-after-pfree` | reads a chunk after `pfree` |
//! | `read-after-reset` | reads a chunk after its context was reset |
//! | `slab-overrun` | writes the byte right after a 40-byte Slab object |
//! | `slab-read-after-pfree` | reads a Slab object after `pfree` |
//! | `slab-read-after-reset` | reads a Slab object after its context was reset |
//! | `read-after-delete` | reads a chunk of a deleted context (its block in the quarantine) |
//! | `generation-overrun` | writes the byte right after a 10-byte chunk of a Generation context |
//! | `generation-read-after-pfree` | reads a Generation chunk after `pfree` (its block still holds a live chunk) |
//! | `generation-write-after-spare` | writes a Generation chunk after the `pfree` that emptied its block, which the context keeps as its spare |
//! | `generation-read-after-give-back` | reads a Generation chunk after the `pfree` that emptied its block, which went back (to the quarantine of released blocks) |
//! | `generation-read-after-reset` | reads a Generation chunk after its context was reset |
//! | `bump-overrun` | writes the byte right after a 10-byte chunk of a Bump context |
//! | `bump-read-after-reset` | reads a Bump chunk after its context was reset |
//! | `uninit` | branches on a fresh chunk's unwritten bytes |
//! | `leak` | loses the only pointer to a chunk of a long-lived context, while a list spread over many blocks (and a block with no live chunk between them) stays referenced from a static, on a thread that exits with its context alive and deleted headers on its recycle lists |
//! | `clean` | a small correct workload (no report expected) |
//! | `quarantine-overflow` | a correct workload whose resets and delete release more than the quarantine holds (no report expected) |

use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use memctx::{pfree, BlockSizes, MemoryContext};

/// A context of its own for each bug, as a long-lived cache would have.
fn context(name: &'static str) -> MemoryContext {
    MemoryContext::top().new_child(name, BlockSizes::DEFAULT)
}

#[inline(never)]
fn overrun(ctx: MemoryContext) {
    let p = ctx.alloc(10).as_ptr();
    // SAFETY: none — one byte past the request is the bug.
    unsafe { ptr::write_volatile(p.add(10), b'!') };
}

#[inline(never)]
fn overrun_slack(ctx: MemoryContext) {
    let p = ctx.alloc(20).as_ptr();
    // SAFETY: none — byte 63 is inside the chunk's 64-byte size class but past the request.
    unsafe { ptr::write_volatile(p.add(63), b'!') };
}

#[inline(never)]
fn large_overrun(ctx: MemoryContext) {
    let p = ctx.alloc(10_000).as_ptr();
    // SAFETY: none — a byte in the tail between the request and the end of the chunk's own block
    // (natively the guard page follows that tail) is the bug.
    unsafe { ptr::write_volatile(p.add(10_004), b'!') };
}

#[inline(never)]
fn underrun(ctx: MemoryContext) {
    let p = ctx.alloc(10).as_ptr();
    // SAFETY: none — the byte before the chunk is the bug.
    unsafe { ptr::write_volatile(p.sub(1), b'!') };
}

#[inline(never)]
fn read_after_pfree(ctx: MemoryContext) -> u8 {
    let p = ctx.alloc(10).as_ptr();
    // SAFETY: `p` is a live 10-byte chunk until the pfree; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 10);
        pfree(p);
        ptr::read_volatile(p)
    }
}

/// A Slab of 40-byte objects under `ctx`, as a pool of equal-sized nodes.
fn slab(ctx: MemoryContext) -> MemoryContext {
    ctx.new_slab_child("Nodes", 8192, 40)
}

#[inline(never)]
fn slab_overrun(ctx: MemoryContext) {
    let p = slab(ctx).alloc(40).as_ptr();
    // SAFETY: none — the byte after the 40-byte slot's object is the bug.
    unsafe { ptr::write_volatile(p.add(40), b'!') };
}

#[inline(never)]
fn slab_read_after_pfree(ctx: MemoryContext) -> u8 {
    let p = slab(ctx).alloc(40).as_ptr();
    // SAFETY: `p` is a live 40-byte chunk until the pfree; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 40);
        pfree(p);
        ptr::read_volatile(p)
    }
}

#[inline(never)]
fn slab_read_after_reset(ctx: MemoryContext) -> u8 {
    let nodes = slab(ctx);
    let p = nodes.alloc(40).as_ptr();
    // SAFETY: `p` is a live 40-byte chunk until the reset; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 40);
        nodes.reset();
        ptr::read_volatile(p)
    }
}

/// A Generation context under `ctx`, as a queue of messages would have.
fn generation(ctx: MemoryContext, sizes: BlockSizes) -> MemoryContext {
    ctx.new_generation_child("Queue", sizes)
}

/// A Bump context under `ctx`, as a sort's tuples would have.
fn bump(ctx: MemoryContext) -> MemoryContext {
    ctx.new_bump_child("Tuples", BlockSizes::DEFAULT)
}

#[inline(never)]
fn generation_overrun(ctx: MemoryContext) {
    let p = generation(ctx, BlockSizes::DEFAULT).alloc(10).as_ptr();
    // SAFETY: none — the byte after the 10-byte request is the bug.
    unsafe { ptr::write_volatile(p.add(10), b'!') };
}

#[inline(never)]
fn generation_read_after_pfree(ctx: MemoryContext) -> u8 {
    let queue = generation(ctx, BlockSizes::DEFAULT);
    let p = queue.alloc(10).as_ptr();
    // A live chunk after it keeps the block from emptying: the freed chunk is alone in its state.
    black_box(queue.alloc(10));
    // SAFETY: `p` is a live 10-byte chunk until the pfree; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 10);
        pfree(p);
        ptr::read_volatile(p)
    }
}

/// Blocks of one size (8 KiB) for a Generation context, so an emptied block is never larger than
/// the spare: the first block to empty becomes the spare, the next goes back.
const FIXED_8K: BlockSizes = BlockSizes {
    min_context_size: 0,
    init_block_size: 8192,
    max_block_size: 8192,
};

/// Fills `queue` with 200-byte chunks past its keeper, through two whole blocks into a fourth (the
/// current one), and returns every chunk of the two whole blocks, each written.
fn fill_two_blocks(queue: MemoryContext) -> (Vec<*mut u8>, Vec<*mut u8>) {
    let blocks = || queue.counters().total_nblocks;
    let mut lists = [Vec::new(), Vec::new()];
    let mut p = queue.alloc(200).as_ptr();
    while blocks() == 1 {
        p = queue.alloc(200).as_ptr();
    }
    // `p` opened the second block: the first chunk of the first list.
    for list in &mut lists {
        let start = blocks();
        while blocks() == start {
            list.push(p);
            p = queue.alloc(200).as_ptr();
        }
    }
    // `p` opened the fourth block; it stays live, as do the keeper's chunks.
    assert_eq!(blocks(), 4);
    for p in lists.iter().flatten() {
        // SAFETY: each is a live 200-byte chunk.
        unsafe { p.write_bytes(7, 200) };
    }
    let [second, third] = lists;
    (second, third)
}

/// Frees every chunk of `chunks` (all of one block, which then empties).
fn free_all(chunks: &[*mut u8]) {
    for &p in chunks {
        // SAFETY: each is a live chunk, freed once.
        unsafe { pfree(p) };
    }
}

#[inline(never)]
fn generation_write_after_spare(ctx: MemoryContext) {
    let queue = generation(ctx, FIXED_8K);
    let (second, _third) = fill_two_blocks(queue);
    free_all(&second);
    // The second block emptied and stayed, as the spare.
    assert_eq!(queue.counters().total_nblocks, 4);
    // SAFETY: none — the write into the freed chunk of the spare block is the bug.
    unsafe { ptr::write_volatile(second[0], b'!') };
}

#[inline(never)]
fn generation_read_after_give_back(ctx: MemoryContext) -> u8 {
    let queue = generation(ctx, FIXED_8K);
    let (second, third) = fill_two_blocks(queue);
    free_all(&second); // the spare
    free_all(&third);
    // The third block emptied too and, no larger than the spare, went back.
    assert_eq!(queue.counters().total_nblocks, 3);
    // SAFETY: none — the read from the freed chunk of the block given back is the bug.
    unsafe { ptr::read_volatile(third[0]) }
}

#[inline(never)]
fn generation_read_after_reset(ctx: MemoryContext) -> u8 {
    let queue = generation(ctx, BlockSizes::DEFAULT);
    let p = queue.alloc(10).as_ptr();
    // SAFETY: `p` is a live 10-byte chunk until the reset; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 10);
        queue.reset();
        ptr::read_volatile(p)
    }
}

#[inline(never)]
fn bump_overrun(ctx: MemoryContext) {
    let p = bump(ctx).alloc(10).as_ptr();
    // SAFETY: none — the byte after the 10-byte request is the bug.
    unsafe { ptr::write_volatile(p.add(10), b'!') };
}

#[inline(never)]
fn bump_read_after_reset(ctx: MemoryContext) -> u8 {
    let tuples = bump(ctx);
    let p = tuples.alloc(10).as_ptr();
    // SAFETY: `p` is a live 10-byte chunk until the reset; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 10);
        tuples.reset();
        ptr::read_volatile(p)
    }
}

#[inline(never)]
fn read_after_reset(ctx: MemoryContext) -> u8 {
    let p = ctx.alloc(10).as_ptr();
    // SAFETY: `p` is a live 10-byte chunk until the reset; the read after it is the bug.
    unsafe {
        p.write_bytes(7, 10);
        ctx.reset();
        ptr::read_volatile(p)
    }
}

/// A read through a pointer into a deleted context: the chunk lies in a block after the keeper,
/// which the debug build keeps in its quarantine of released blocks, closed to the tools.
#[inline(never)]
fn read_after_delete(ctx: MemoryContext) -> u8 {
    // Five 2000-byte chunks do not fit the 8 KiB keeper: the last lies in the next block.
    let mut p = ptr::null_mut();
    for _ in 0..5 {
        p = ctx.alloc(2000).as_ptr();
        // SAFETY: a live 2000-byte chunk.
        unsafe { p.write_bytes(7, 2000) };
    }
    ctx.delete();
    // SAFETY: none — the read after the delete is the bug.
    unsafe { ptr::read_volatile(p) }
}

#[inline(never)]
fn uninit(ctx: MemoryContext) -> bool {
    let p = ctx.alloc(16).as_ptr();
    // SAFETY: the chunk has 16 readable bytes; none was written, which is the bug.
    let byte = unsafe { ptr::read_volatile(p.add(3)) };
    if black_box(byte) == 0xA5 {
        println!("a fresh chunk holds the fresh pattern");
        true
    } else {
        false
    }
}

/// A node of the list `leak` keeps: the previous node and a payload.
#[repr(C)]
struct Node {
    prev: *mut Node,
    payload: [u64; 12],
}

/// The newest node of the list; the only reference to the list outside the context.
static LIST_HEAD: AtomicPtr<Node> = AtomicPtr::new(ptr::null_mut());

/// Allocates `n` nodes in `ctx`, each pointing at the one before, and publishes the newest.
#[inline(never)]
fn build_list(ctx: MemoryContext, n: usize) {
    for i in 0..n {
        let node = ctx.alloc(core::mem::size_of::<Node>()).as_ptr() as *mut Node;
        // SAFETY: a fresh chunk large enough and aligned for a `Node`.
        unsafe {
            node.write(Node {
                prev: LIST_HEAD.load(Ordering::Relaxed),
                payload: [i as u64; 12],
            })
        };
        LIST_HEAD.store(node, Ordering::Relaxed);
    }
}

/// Leaves a block with no live chunk in the middle of the context's block list: fills the rest
/// of the active block and one whole new block with chunks, starts the block after it, and frees
/// every one of those chunks (the middle block's first, so that no freelist head points into it).
#[inline(never)]
fn fill_and_free(ctx: MemoryContext) {
    let blocks = || ctx.counters().total_nblocks;
    let mut before = Vec::new(); // the rest of the block the list is in
    let mut middle = Vec::new(); // a block of its own
    let start = blocks();
    let mut p = ctx.alloc(1000).as_ptr();
    while blocks() == start {
        before.push(p);
        p = ctx.alloc(1000).as_ptr();
    }
    let mid = blocks();
    while blocks() == mid {
        middle.push(p);
        p = ctx.alloc(1000).as_ptr();
    }
    // `p` is the first chunk of the newest block, which the second half of the list fills.
    for q in middle.into_iter().chain(before).chain([p]) {
        // SAFETY: each is a live chunk of `ctx`, freed once.
        unsafe { pfree(q) };
    }
}

/// Allocates a chunk and forgets the pointer: the leak.
#[inline(never)]
fn leak_one(ctx: MemoryContext) {
    let p = ctx.alloc(48).as_ptr();
    // SAFETY: 48 writable bytes.
    unsafe { p.write_bytes(1, 48) };
    black_box(p);
}

/// Overwrites the stack below the caller, so no dead frame still holds the leaked pointer.
#[inline(never)]
fn clobber_stack() {
    let junk = [0u8; 16 * 1024];
    black_box(&junk);
}

/// Runs on a thread of its own, which ends before the process does: the tree outlives it
/// (reachable from the debugger registry), but the thread's own bookkeeping (the debug build's
/// registry of blocks) is gone, so only the context and block headers lead memcheck's leak
/// search to the blocks — as for any thread that exits with its contexts alive.
///
/// The chunk is lost for one reason only: its pointer is dropped while its context lives. The
/// thread's exit takes nothing else with it: the context, its blocks, and the headers of the
/// contexts it deleted (waiting on its recycle and spare lists) all stay reachable from the
/// registry, so memcheck reports exactly one loss.
#[inline(never)]
fn leak() {
    std::thread::spawn(|| {
        // Blocks of one size, which 16 chunks of 1000 bytes fill exactly (1072 bytes each with
        // the debug build's prefix and redzone), so that `fill_and_free` can leave a whole block
        // with no live chunk and no leftover chunk that a later allocation could reuse.
        let exact = 48 + 16 * 1072;
        let sizes = BlockSizes {
            min_context_size: 0,
            init_block_size: exact,
            max_block_size: exact,
        };
        let ctx = MemoryContext::top().new_child("CacheMemoryContext", sizes);
        // Two deleted contexts: a DEFAULT one goes to the recycle list with its keeper block, one
        // of an unusual size gives its blocks back and goes to the spare list. Both headers stay
        // there after the thread exits; neither may be reported lost.
        let recycled = MemoryContext::top().new_child("Recycled", BlockSizes::DEFAULT);
        // SAFETY: 16 writable bytes, freed by the delete.
        unsafe { recycled.alloc(16).as_ptr().write_bytes(2, 16) };
        recycled.delete();
        MemoryContext::top().new_child("Spare", sizes).delete();
        build_list(ctx, 400);
        fill_and_free(ctx);
        build_list(ctx, 400);
        leak_one(ctx);
        clobber_stack();
    })
    .join()
    .expect("the leaking thread");
}

#[inline(never)]
fn clean(ctx: MemoryContext) {
    let per_row = ctx.new_child("ExprContext", BlockSizes::DEFAULT);
    for row in 0..100 {
        let p = per_row.alloc(8 + row).as_ptr();
        // SAFETY: `8 + row` writable bytes.
        unsafe { p.write_bytes(0, 8 + row) };
        per_row.reset();
    }
    let p = ctx.alloc_zeroed(100).as_ptr();
    // SAFETY: a live 100-byte chunk, grown then freed once.
    unsafe {
        let q = memctx::repalloc(p, 20_000);
        pfree(q);
    }
    ctx.delete();
}

/// Resets and a delete that each release more blocks than a small quarantine holds, so blocks
/// leave it while the context's pool still holds their chunks.
#[inline(never)]
fn quarantine_overflow(ctx: MemoryContext) {
    #[cfg(feature = "debug-contexts")]
    memctx::debug::set_quarantine(1 << 20);
    // About 6 MB a round, in blocks of up to 1 MiB.
    for round in 0..2 {
        for i in 0..10_000 {
            let p = ctx.alloc(200 + i % 800).as_ptr();
            // SAFETY: at least 200 writable bytes.
            unsafe { p.write_bytes(1, 200) };
        }
        if round == 0 {
            ctx.reset();
        }
    }
    ctx.delete();
}

fn main() {
    #[cfg(feature = "debug-contexts")]
    memctx::debug::set_default_policy(memctx::debug::Policy::Log);
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "leak" {
        leak();
        return;
    }
    let ctx = context("BugContext");
    match name.as_str() {
        "overrun" => overrun(ctx),
        "overrun-slack" => overrun_slack(ctx),
        "underrun" => underrun(ctx),
        "large-overrun" => large_overrun(ctx),
        "read-after-pfree" => {
            black_box(read_after_pfree(ctx));
        }
        "read-after-reset" => {
            black_box(read_after_reset(ctx));
        }
        "read-after-delete" => {
            black_box(read_after_delete(ctx));
        }
        "uninit" => {
            black_box(uninit(ctx));
        }
        "slab-overrun" => slab_overrun(ctx),
        "slab-read-after-pfree" => {
            black_box(slab_read_after_pfree(ctx));
        }
        "slab-read-after-reset" => {
            black_box(slab_read_after_reset(ctx));
        }
        "generation-overrun" => generation_overrun(ctx),
        "generation-read-after-pfree" => {
            black_box(generation_read_after_pfree(ctx));
        }
        "generation-write-after-spare" => generation_write_after_spare(ctx),
        "generation-read-after-give-back" => {
            black_box(generation_read_after_give_back(ctx));
        }
        "generation-read-after-reset" => {
            black_box(generation_read_after_reset(ctx));
        }
        "bump-overrun" => bump_overrun(ctx),
        "bump-read-after-reset" => {
            black_box(bump_read_after_reset(ctx));
        }
        "clean" => clean(ctx),
        "quarantine-overflow" => quarantine_overflow(ctx),
        _ => {
            eprintln!(
                "usage: bugs overrun|overrun-slack|underrun|large-overrun|read-after-pfree|\
                 read-after-reset|read-after-delete|uninit|slab-overrun|slab-read-after-pfree|\
                 slab-read-after-reset|generation-overrun|generation-read-after-pfree|\
                 generation-write-after-spare|generation-read-after-give-back|generation-read-after-reset|\
                 bump-overrun|bump-read-after-reset|leak|clean|quarantine-overflow"
            );
            std::process::exit(2);
        }
    }
}
