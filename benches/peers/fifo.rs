//! The `fifo` workload: a queue, the pattern PostgreSQL's Generation context exists for (its
//! reorder buffer's changes). 4096 chunks live; each step frees the oldest and allocates a new one
//! of a random size in 16..=512 bytes (a byte is written into it). Time per step (one free and one
//! allocation). memctx: `palloc`/`pfree` in a Generation context made current with `switch_to`
//! (as churn does for its AllocSet); glibc and mimalloc through `malloc`/`free`.

use memctx::{BlockSizes, MemoryContext};

use crate::{run_workload, Config, Contender, Glibc, Mi, Palloc, RawAlloc, Results, XorShift};

/// Live chunks in the queue.
const LIVE: usize = 4096;

/// The Generation context's block sizes: blocks grow from 8 KiB to 64 KiB. A queue cycles through
/// its blocks — each is carved while the oldest drains, and an emptied block is carved again —
/// so the memory it touches is its live set (about 1 MiB here) plus a block or two. With
/// `BlockSizes::DEFAULT` blocks grow to 8 MiB (a 2 and a 4 MiB block once this queue is full),
/// and cycling through them leaves the second-level cache on every step; the table shows that
/// contender too, as `memctx(default sizes)`.
const SIZES: BlockSizes = BlockSizes {
    min_context_size: 0,
    init_block_size: 8 * 1024,
    max_block_size: 64 * 1024,
};

/// The sizes of the chunks, in allocation order: the first `LIVE` fill the queue, each later one
/// is one step.
fn sizes(steps: usize) -> Vec<u16> {
    let mut rng = XorShift::new(0x00f1_f0f1_f0f1);
    (0..LIVE + steps)
        .map(|_| rng.range(16, 512) as u16)
        .collect()
}

/// One allocator's queue: the live chunks in a ring, oldest at `head`.
struct Fifo<'s, A: RawAlloc> {
    name: &'static str,
    alloc: A,
    /// For memctx: the context made current around every batch.
    ctx: Option<MemoryContext>,
    sizes: &'s [u16],
    ring: Vec<(*mut u8, u16)>,
    head: usize,
}

impl<'s, A: RawAlloc> Fifo<'s, A> {
    fn new(
        name: &'static str,
        alloc: A,
        ctx: Option<MemoryContext>,
        sizes: &'s [u16],
    ) -> Fifo<'s, A> {
        let _g = ctx.map(|c| c.switch_to());
        let ring = sizes[..LIVE]
            .iter()
            .map(|&s| {
                // SAFETY: s >= 16; the chunk has `s` bytes.
                let p = unsafe { alloc.alloc(s as usize) };
                unsafe { p.write(s as u8) };
                (p, s)
            })
            .collect();
        Fifo {
            name,
            alloc,
            ctx,
            sizes,
            ring,
            head: 0,
        }
    }
}

impl<A: RawAlloc> Contender for Fifo<'_, A> {
    fn name(&self) -> &'static str {
        self.name
    }

    #[inline(never)]
    fn round(&mut self) -> u64 {
        let _g = self.ctx.map(|c| c.switch_to());
        let steps = &self.sizes[LIVE..];
        let mut head = self.head;
        for &size in steps {
            let slot = &mut self.ring[head];
            // SAFETY: every slot holds a live chunk of its recorded size; size >= 16.
            unsafe {
                self.alloc.free(slot.0, slot.1 as usize);
                let p = self.alloc.alloc(size as usize);
                p.write(size as u8);
                *slot = (p, size);
            }
            head = if head + 1 == LIVE { 0 } else { head + 1 };
        }
        self.head = head;
        steps.len() as u64
    }
}

impl<A: RawAlloc> Drop for Fifo<'_, A> {
    fn drop(&mut self) {
        let _g = self.ctx.map(|c| c.switch_to());
        for &(p, s) in &self.ring {
            // SAFETY: live chunks of this allocator.
            unsafe { self.alloc.free(p, s as usize) };
        }
    }
}

pub(crate) fn bench_fifo(cfg: &Config) -> Results {
    let sizes = sizes(cfg.batch(1 << 14));
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    let top = MemoryContext::top();
    let contexts = [
        top.new_generation_child("fifo", SIZES),
        top.new_generation_child("fifo, default sizes", BlockSizes::DEFAULT),
    ];
    if cfg.runs_memctx() {
        cs.push(Box::new(Fifo::new(
            "memctx",
            Palloc,
            Some(contexts[0]),
            &sizes,
        )));
        let name = "memctx(default sizes)";
        cs.push(Box::new(Fifo::new(name, Palloc, Some(contexts[1]), &sizes)));
    }
    if cfg.runs_peer("glibc") {
        cs.push(Box::new(Fifo::new("glibc", Glibc, None, &sizes)));
    }
    if cfg.runs_peer("mimalloc") {
        cs.push(Box::new(Fifo::new("mimalloc", Mi, None, &sizes)));
    }
    let results = run_workload(cfg, "fifo", "ns per free+alloc step", cs);
    for ctx in contexts {
        ctx.delete();
    }
    results
}
