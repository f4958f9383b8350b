//! memctx against its peers: glibc malloc (`std::alloc::System`), mimalloc (`mimalloc::MiMalloc`,
//! called through its `GlobalAlloc` methods, *not* installed as the global allocator) and bumpalo.
//!
//! Run with `cargo bench --bench peers` (about 40 s of CPU time; longer on a busy machine) or
//! `cargo bench --bench peers -- --quick` (about 10 s). `ci/bench` runs this binary, the same
//! binary built with `--features debug-contexts`, and one built with AddressSanitizer.
//!
//! Arguments (after `--`): `--quick` (fewer rounds); `--only <workload>` (one timed workload, no
//! reset table or memory probes: for profiling, e.g. under `perf record`); `--mode <name>` (the
//! name printed as `mode <name>`; the debug build selects its mode with it: `patterns` or
//! `backtraces`); `--asan` (the binary is an AddressSanitizer build: glibc's side of churn,
//! per-row, grow and slab-churn only, in smaller batches). Setting the
//! environment variable `PEERS_DECILES` prints each contender's round-time deciles to stderr.
//! `--memory-probe <workload> <allocator>` is internal (see "Memory" below).
//!
//! # Method
//!
//! Every workload is a set of *contenders* (one per allocator) that each run the identical
//! operation sequence (precomputed with one xorshift generator, so every allocator sees the same
//! sizes in the same order). After warm-up rounds, each measured round runs every contender once,
//! in an order that rotates from round to round, so that drift of the machine (frequency, other
//! processes on this 2-core box) hits all contenders alike. A round is a short batch (well under a
//! millisecond in the release build) timed with `Instant` and divided by its operation count:
//! short, so that most rounds fit between two preemptions even when the machine is busy and the
//! median stays the undisturbed time; many (thousands), so that the median is stable. We report
//! the median and the minimum over the rounds, and ratios of medians.
//!
//! Workloads:
//! - `churn`: 4096 live chunks; each step frees a random one and allocates a random size 8..=512
//!   in its place (a byte is written into each new chunk). Time per step. memctx: `palloc`/`pfree`
//!   in a child AllocSet context made current with `switch_to`.
//! - `per-row`: rows of 16 allocations of 8..=128 bytes (a byte written into each), then the end
//!   of the row: memctx resets its context, glibc/mimalloc free all 16, bumpalo resets its `Bump`.
//!   Time per allocation (the end of the row amortised over the row's 16 allocations).
//! - `grow`: allocate 16 bytes, then realloc doubling up to 64 KiB (12 reallocs, the first and
//!   last byte written at every size), then free. Time per realloc. Before each sequence one of 16
//!   small background chunks is replaced, so that sequences start at varying addresses (see
//!   [`Grow`] for why).
//! - `hashmap`: a hashbrown map from 1000 short string keys to `u64`, built and dropped; each side
//!   allocates its key strings *and* its table in its own allocator. Time per insert (the drop, and
//!   for the arenas the reset, amortised over the inserts).
//! - `per-row-bump`: `per-row`'s rows with memctx in a Bump context, against bumpalo (module
//!   `per_row_bump`).
//! - `slab-churn`: 4096 live 64-byte objects, each step frees a random one and allocates one in
//!   its place; memctx in a Slab context (module `slab_churn`).
//! - `fifo`: a queue of 4096 live chunks; each step frees the oldest and allocates 16..=512 bytes.
//!   memctx: `palloc`/`pfree` in a Generation context (module `fifo`).
//! - `reset`: a table of reset times for contexts of different numbers of chunks and blocks.
//! - `backtrace-capture`: the cost of one backtrace capture (debug build only).
//! - bounds (churn and per-row, release build): stand-ins — memctx's release build plus only the
//!   memory work the debug build must do — each run beside memctx (module `bounds`).
//! - `report-cost` (debug build, mode `backtraces`): the time to produce a report, symbolised.
//!
//! # Output
//!
//! Human tables, then machine-readable lines, each alone on its line (the README's Benchmarks
//! section lists what `ci/bench` makes of them): `mode <name>`, `median <workload> <allocator>
//! <ns>` (the stand-ins as allocator `bound:<duty>`), `ratio <workload> <peer> <X>` (peer median /
//! memctx median: above 1 memctx is faster), `memory <workload> <allocator> <X>`,
//! `chunk-header <bytes>`, `chunk-prefix <bytes>`, `reset chunks=N blocks=B ns=X`,
//! `bound <workload> <duty> <X>` (the least `overhead` the required work allows, see `bounds`),
//! and in the debug build `backtrace-capture <frames> <ns>` and `report-cost first|later <ms>`.
//!
//! # The debug build
//!
//! Built with `--features debug-contexts`, the same binary runs only the memctx contenders of the
//! same workloads (the peers do not change between the builds), prints `mode <name>` and the
//! `median` lines, and skips ratios, memory, the reset table and the bounds. `ci/bench` compares
//! the two binaries' `median ... memctx` lines, and the debug build's with the ASan build's
//! `median ... glibc`.

#[path = "peers/bounds.rs"]
mod bounds;
#[path = "peers/fifo.rs"]
mod fifo;
#[path = "peers/per_row_bump.rs"]
mod per_row_bump;
#[path = "peers/slab_churn.rs"]
mod slab_churn;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::Command;
use std::ptr::NonNull;
use std::time::Instant;

use allocator_api2::alloc::{AllocError, Allocator};
use bumpalo::Bump;
use memctx::{BlockSizes, MemoryContext, PString};
use mimalloc::MiMalloc;

/// Whether this binary is the debug build.
const DEBUG_BUILD: bool = cfg!(feature = "debug-contexts");

// ------------------------------------------------------------------------------------------------
// Configuration and timing
// ------------------------------------------------------------------------------------------------

/// Run parameters, from the command line.
struct Config {
    quick: bool,
    /// Unmeasured rounds per contender before measuring.
    warmup: usize,
    /// Measured rounds per contender.
    rounds: usize,
    /// Name printed as `mode <name>`.
    mode: String,
    /// `--only <workload>`: run just that timed workload (for profiling); no memory probes.
    only: Option<String>,
    /// `--asan`: this binary is built with AddressSanitizer; run glibc's side of churn, per-row
    /// and grow only (ASan's allocator stands in for glibc's), in smaller batches.
    asan: bool,
}

impl Config {
    fn from_args(args: &[String]) -> Config {
        let quick = args.iter().any(|a| a == "--quick");
        let asan = args.iter().any(|a| a == "--asan");
        let mode = args
            .iter()
            .position(|a| a == "--mode")
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| {
                match (DEBUG_BUILD, asan) {
                    (true, _) => "debug",
                    (false, true) => "asan",
                    (false, false) => "release",
                }
                .to_owned()
            });
        Config {
            quick,
            warmup: if quick { 20 } else { 100 },
            rounds: if quick { 801 } else { 3001 },
            mode,
            only: args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1).cloned()),
            asan,
        }
    }

    /// Whether to run `workload`.
    fn wants(&self, workload: &str) -> bool {
        self.only.as_deref().map_or(true, |o| o == workload)
            && !(self.asan && (workload == "hashmap" || workload == "per-row-bump"))
    }

    /// Whether memctx runs in this binary (not in the ASan build, which measures glibc's side).
    fn runs_memctx(&self) -> bool {
        !self.asan
    }

    /// Whether the peer `name` runs: all of them in the release build, none in the debug build,
    /// glibc only in the ASan build.
    fn runs_peer(&self, name: &str) -> bool {
        !DEBUG_BUILD && (!self.asan || name == "glibc")
    }

    /// Scales a batch size for the build, so that every build's rounds take about as long (well
    /// under a millisecond, see the module docs): the debug build's operations cost ten to twenty
    /// times the release build's, so its rounds are an eighth of the size; ASan's, on churn and
    /// per-row, a hundred times, so its rounds are a sixty-fourth.
    fn batch(&self, full: usize) -> usize {
        if self.asan {
            (full / 64).max(1)
        } else if DEBUG_BUILD {
            (full / 8).max(1)
        } else {
            full
        }
    }
}

/// One allocator's side of a workload. `round` runs one batch and returns its operation count.
trait Contender {
    fn name(&self) -> &'static str;
    fn round(&mut self) -> u64;
}

/// A workload's results: `(allocator, timing)` per contender.
type Results = Vec<(&'static str, Timing)>;

/// A timed workload: its name and the function that measures it.
type Workload = (&'static str, fn(&Config) -> Results);

/// Median and minimum ns per operation of one contender.
#[derive(Clone, Copy)]
struct Timing {
    median: f64,
    min: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the contenders interleaved (see the module docs) and returns each one's samples (ns per
/// operation, one per round), in order.
fn measure(cfg: &Config, contenders: &mut [Box<dyn Contender + '_>]) -> Vec<Vec<f64>> {
    let n = contenders.len();
    for _ in 0..cfg.warmup {
        for c in contenders.iter_mut() {
            black_box(c.round());
        }
    }
    let mut samples = vec![Vec::with_capacity(cfg.rounds); n];
    for r in 0..cfg.rounds {
        for k in 0..n {
            let i = (r + k) % n;
            let t0 = Instant::now();
            let ops = contenders[i].round();
            let dt = t0.elapsed();
            samples[i].push(dt.as_nanos() as f64 / ops as f64);
        }
    }
    samples
}

fn summarize(samples: &mut [f64]) -> Timing {
    let min = samples.iter().cloned().fold(f64::INFINITY, f64::min);
    Timing {
        median: median(samples),
        min,
    }
}

/// Measures a workload, prints its human table and returns `(allocator, timing)` pairs.
fn run_workload(
    cfg: &Config,
    workload: &str,
    unit: &str,
    mut contenders: Vec<Box<dyn Contender + '_>>,
) -> Results {
    let mut samples = measure(cfg, &mut contenders);
    let names: Vec<&'static str> = contenders.iter().map(|c| c.name()).collect();
    if std::env::var_os("PEERS_DECILES").is_some() {
        // Diagnosis aid: the distribution of the rounds, to stderr.
        for (name, s) in names.iter().zip(&mut samples) {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let d: Vec<String> = (0..=10)
                .map(|i| format!("{:.1}", s[(s.len() - 1) * i / 10]))
                .collect();
            eprintln!("deciles {workload} {name}: {}", d.join(" "));
        }
    }
    let timings: Vec<Timing> = samples.iter_mut().map(|s| summarize(s)).collect();
    drop(contenders); // frees every contender's memory before the next workload
    println!();
    println!("{workload} ({unit}; {} rounds)", cfg.rounds);
    println!("  {:<16} {:>12} {:>12}", "allocator", "median ns", "min ns");
    for (name, t) in names.iter().zip(&timings) {
        println!("  {:<16} {:>12.2} {:>12.2}", name, t.median, t.min);
    }
    names.into_iter().zip(timings).collect()
}

// ------------------------------------------------------------------------------------------------
// Random sequences
// ------------------------------------------------------------------------------------------------

/// xorshift64: the one generator behind every workload's sequence.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

// ------------------------------------------------------------------------------------------------
// The allocators behind one small trait, so churn, per-row and grow run the same loop for all
// ------------------------------------------------------------------------------------------------

/// Raw allocation as the workloads use it. Sizes are at least 8; alignment 8 everywhere.
trait RawAlloc {
    /// # Safety
    /// `size >= 8`.
    unsafe fn alloc(&self, size: usize) -> *mut u8;
    /// # Safety
    /// `p` live from this allocator with `size`.
    unsafe fn free(&self, p: *mut u8, size: usize);
    /// # Safety
    /// `p` live from this allocator with `old`.
    unsafe fn realloc(&self, p: *mut u8, old: usize, new: usize) -> *mut u8;
}

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: align 8 is a power of two and the sizes here are tiny.
    unsafe { Layout::from_size_align_unchecked(size, 8) }
}

/// memctx's raw API in CurrentMemoryContext (the caller switches to the workload's context).
struct Palloc;

impl RawAlloc for Palloc {
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> *mut u8 {
        memctx::palloc(size)
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        unsafe { memctx::pfree(p) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, _old: usize, new: usize) -> *mut u8 {
        unsafe { memctx::repalloc(p, new) }
    }
}

/// glibc malloc through `std::alloc::System`.
struct Glibc;

impl RawAlloc for Glibc {
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> *mut u8 {
        unsafe { System.alloc(layout(size)) }
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        unsafe { System.dealloc(p, layout(size)) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, old: usize, new: usize) -> *mut u8 {
        unsafe { System.realloc(p, layout(old), new) }
    }
}

/// mimalloc through its `GlobalAlloc` methods.
struct Mi;

impl RawAlloc for Mi {
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> *mut u8 {
        unsafe { MiMalloc.alloc(layout(size)) }
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        unsafe { MiMalloc.dealloc(p, layout(size)) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, old: usize, new: usize) -> *mut u8 {
        unsafe { MiMalloc.realloc(p, layout(old), new) }
    }
}

/// allocator-api2 wrapper around mimalloc, for the hashmap workload.
#[derive(Clone, Copy)]
struct MiA;

// SAFETY: mimalloc's memory stays valid until freed; MiA is a ZST, so moving it changes nothing.
unsafe impl Allocator for MiA {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            // SAFETY: an alignment is never zero.
            let p = unsafe { NonNull::new_unchecked(layout.align() as *mut u8) };
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        // SAFETY: non-zero size.
        let p = unsafe { MiMalloc.alloc(layout) };
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, layout.size()))
            .ok_or(AllocError)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: allocated by `allocate` with this layout.
            unsafe { MiMalloc.dealloc(ptr.as_ptr(), layout) }
        }
    }

    #[inline]
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 || old.align() != new.align() {
            let p = self.allocate(new)?;
            // SAFETY: distinct live regions; `old` bytes are readable.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr.as_ptr(), p.as_ptr() as *mut u8, old.size());
                self.deallocate(ptr, old);
            }
            return Ok(p);
        }
        // SAFETY: `ptr` is live with layout `old` (the trait's contract).
        let p = unsafe { MiMalloc.realloc(ptr.as_ptr(), old, new.size()) };
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, new.size()))
            .ok_or(AllocError)
    }
}

// ------------------------------------------------------------------------------------------------
// (a) churn
// ------------------------------------------------------------------------------------------------

/// Live chunks in the churn workload.
const CHURN_LIVE: usize = 4096;

/// The churn sequence: initial sizes of the live set, then (slot, new size) per step.
struct ChurnSeq {
    init: Vec<u16>,
    steps: Vec<(u16, u16)>,
}

impl ChurnSeq {
    fn new(steps: usize) -> ChurnSeq {
        let mut rng = XorShift::new(0x5eed_c4ab_c0de);
        let init = (0..CHURN_LIVE).map(|_| rng.range(8, 512) as u16).collect();
        let steps = (0..steps)
            .map(|_| {
                (
                    rng.range(0, CHURN_LIVE - 1) as u16,
                    rng.range(8, 512) as u16,
                )
            })
            .collect();
        ChurnSeq { init, steps }
    }
}

/// The churn state of one allocator: its live chunks and their sizes.
struct Churn<'s, A: RawAlloc> {
    name: &'static str,
    alloc: A,
    seq: &'s ChurnSeq,
    /// For memctx: the context made current around every batch.
    ctx: Option<MemoryContext>,
    ptrs: Vec<*mut u8>,
    sizes: Vec<u16>,
}

impl<'s, A: RawAlloc> Churn<'s, A> {
    fn new(
        name: &'static str,
        alloc: A,
        seq: &'s ChurnSeq,
        ctx: Option<MemoryContext>,
    ) -> Churn<'s, A> {
        let mut c = Churn {
            name,
            alloc,
            seq,
            ctx,
            ptrs: Vec::with_capacity(CHURN_LIVE),
            sizes: seq.init.clone(),
        };
        let _g = c.ctx.map(|x| x.switch_to());
        for &s in &seq.init {
            // SAFETY: s >= 8.
            let p = unsafe { c.alloc.alloc(s as usize) };
            // SAFETY: `p` has `s` bytes.
            unsafe { p.write(s as u8) };
            c.ptrs.push(p);
        }
        drop(_g);
        c
    }

    /// Runs the whole step sequence once.
    #[inline(never)]
    fn run_steps(&mut self) -> u64 {
        let _g = self.ctx.map(|x| x.switch_to());
        let ptrs = &mut self.ptrs[..];
        let sizes = &mut self.sizes[..];
        for &(slot, size) in &self.seq.steps {
            let slot = slot as usize;
            // SAFETY: every slot holds a live chunk of the recorded size; size >= 8.
            unsafe {
                self.alloc.free(ptrs[slot], sizes[slot] as usize);
                let p = self.alloc.alloc(size as usize);
                p.write(size as u8);
                ptrs[slot] = p;
            }
            sizes[slot] = size;
        }
        self.seq.steps.len() as u64
    }

    /// Requested bytes of the live set.
    fn live_bytes(&self) -> usize {
        self.sizes.iter().map(|&s| s as usize).sum()
    }
}

impl<A: RawAlloc> Contender for Churn<'_, A> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn round(&mut self) -> u64 {
        self.run_steps()
    }
}

impl<A: RawAlloc> Drop for Churn<'_, A> {
    fn drop(&mut self) {
        let _g = self.ctx.map(|x| x.switch_to());
        for (&p, &s) in self.ptrs.iter().zip(&self.sizes) {
            // SAFETY: live chunks of this allocator.
            unsafe { self.alloc.free(p, s as usize) };
        }
        drop(_g);
        if let Some(ctx) = self.ctx {
            ctx.delete();
        }
    }
}

fn bench_churn(cfg: &Config) -> Results {
    let seq = ChurnSeq::new(cfg.batch(1 << 15));
    let top = MemoryContext::top();
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    if cfg.runs_memctx() {
        let ctx = top.new_child("churn", BlockSizes::DEFAULT);
        cs.push(Box::new(Churn::new("memctx", Palloc, &seq, Some(ctx))));
    }
    if cfg.runs_peer("glibc") {
        cs.push(Box::new(Churn::new("glibc", Glibc, &seq, None)));
    }
    if cfg.runs_peer("mimalloc") {
        cs.push(Box::new(Churn::new("mimalloc", Mi, &seq, None)));
    }
    run_workload(cfg, "churn", "ns per free+alloc step", cs)
}

// ------------------------------------------------------------------------------------------------
// (b) per-row
// ------------------------------------------------------------------------------------------------

/// Allocations per row.
const ROW_LEN: usize = 16;

/// Row sizes, 8..=128, `ROW_LEN` per row.
fn row_sizes(rows: usize) -> Vec<u8> {
    let mut rng = XorShift::new(0x0007_0e55_1234);
    (0..rows * ROW_LEN)
        .map(|_| rng.range(8, 128) as u8)
        .collect()
}

/// memctx per-row: `ctx.alloc` (MemoryContextAlloc) for each allocation, `ctx.reset()` per row.
struct RowMemctx<'s> {
    ctx: MemoryContext,
    sizes: &'s [u8],
}

impl Contender for RowMemctx<'_> {
    fn name(&self) -> &'static str {
        "memctx"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        let ctx = self.ctx;
        for row in self.sizes.chunks_exact(ROW_LEN) {
            let mut seen = 0;
            for &s in row {
                let p = ctx.alloc(s as usize).as_ptr();
                // SAFETY: `p` has `s` >= 8 bytes.
                unsafe { p.write(s) };
                seen ^= p as usize;
            }
            black_box(seen);
            ctx.reset();
        }
        self.sizes.len() as u64
    }
}

impl Drop for RowMemctx<'_> {
    fn drop(&mut self) {
        self.ctx.delete();
    }
}

/// memctx per-row through the raw API: switch to the row context, `palloc`, switch back, reset
/// (an executor's per-tuple ExprContext). Reported in the table only; not used for ratios.
struct RowPalloc<'s> {
    ctx: MemoryContext,
    sizes: &'s [u8],
}

impl Contender for RowPalloc<'_> {
    fn name(&self) -> &'static str {
        "memctx(palloc)"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        let ctx = self.ctx;
        for row in self.sizes.chunks_exact(ROW_LEN) {
            let g = ctx.switch_to();
            let mut seen = 0;
            for &s in row {
                let p = memctx::palloc(s as usize);
                // SAFETY: `p` has `s` >= 8 bytes.
                unsafe { p.write(s) };
                seen ^= p as usize;
            }
            black_box(seen);
            drop(g);
            ctx.reset();
        }
        self.sizes.len() as u64
    }
}

impl Drop for RowPalloc<'_> {
    fn drop(&mut self) {
        self.ctx.delete();
    }
}

/// glibc or mimalloc per-row: allocate 16, free 16.
struct RowMalloc<'s, A: RawAlloc> {
    name: &'static str,
    alloc: A,
    sizes: &'s [u8],
}

impl<A: RawAlloc> Contender for RowMalloc<'_, A> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        let mut ptrs = [std::ptr::null_mut::<u8>(); ROW_LEN];
        for row in self.sizes.chunks_exact(ROW_LEN) {
            let mut seen = 0;
            for (slot, &s) in ptrs.iter_mut().zip(row) {
                // SAFETY: s >= 8; the chunk has `s` bytes.
                unsafe {
                    let p = self.alloc.alloc(s as usize);
                    p.write(s);
                    seen ^= p as usize;
                    *slot = p;
                }
            }
            black_box(seen);
            for (&p, &s) in ptrs.iter().zip(row) {
                // SAFETY: allocated just above with size `s`.
                unsafe { self.alloc.free(p, s as usize) };
            }
        }
        self.sizes.len() as u64
    }
}

/// bumpalo per-row: `alloc_layout` 16 times, `Bump::reset` per row.
struct RowBump<'s> {
    bump: Bump,
    sizes: &'s [u8],
}

impl Contender for RowBump<'_> {
    fn name(&self) -> &'static str {
        "bumpalo"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        for row in self.sizes.chunks_exact(ROW_LEN) {
            let mut seen = 0;
            for &s in row {
                let p = self.bump.alloc_layout(layout(s as usize)).as_ptr();
                // SAFETY: `p` has `s` >= 8 bytes.
                unsafe { p.write(s) };
                seen ^= p as usize;
            }
            black_box(seen);
            self.bump.reset();
        }
        self.sizes.len() as u64
    }
}

fn bench_per_row(cfg: &Config) -> Results {
    let sizes = row_sizes(cfg.batch(1 << 11));
    let top = MemoryContext::top();
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    if cfg.runs_memctx() {
        cs.push(Box::new(RowMemctx {
            ctx: top.new_child("per-row", BlockSizes::DEFAULT),
            sizes: &sizes,
        }));
    }
    if cfg.runs_peer("memctx(palloc)") {
        cs.push(Box::new(RowPalloc {
            ctx: top.new_child("per-row palloc", BlockSizes::DEFAULT),
            sizes: &sizes,
        }));
    }
    row_peers(cfg, &sizes, &mut cs);
    run_workload(cfg, "per-row", "ns per allocation, row end amortised", cs)
}

/// The peers of a per-row workload on the rows `sizes`: glibc and mimalloc (allocate 16, free 16)
/// and bumpalo (allocate 16, reset), those `cfg` runs.
fn row_peers<'s>(cfg: &Config, sizes: &'s [u8], cs: &mut Vec<Box<dyn Contender + 's>>) {
    if cfg.runs_peer("glibc") {
        cs.push(Box::new(RowMalloc {
            name: "glibc",
            alloc: Glibc,
            sizes,
        }));
    }
    if cfg.runs_peer("mimalloc") {
        cs.push(Box::new(RowMalloc {
            name: "mimalloc",
            alloc: Mi,
            sizes,
        }));
    }
    if cfg.runs_peer("bumpalo") {
        cs.push(Box::new(RowBump {
            bump: Bump::new(),
            sizes,
        }));
    }
}

// ------------------------------------------------------------------------------------------------
// (c) grow
// ------------------------------------------------------------------------------------------------

/// First and last size of the grow workload; reallocs per sequence.
const GROW_FROM: usize = 16;
const GROW_TO: usize = 64 * 1024;
const GROW_STEPS: u64 = (GROW_TO / GROW_FROM).trailing_zeros() as u64;

/// Live background chunks in the grow workload (see [`Grow`]).
const GROW_RING: usize = 16;

/// One allocator's grow state.
///
/// A lone buffer growing in an otherwise idle heap is a lottery on this machine: glibc extends it
/// in place when it sits at the top of the heap (no copy at all), and otherwise copies, and on
/// this CPU (AMD Zen 3, glibc 2.36) a `memcpy` of a few KiB whose destination lies 1..31 bytes
/// after its source modulo 4096 takes ~30x longer (its `rep movsb` path). Which case a run hits
/// depends on the heap's history, so medians swung from 20 to 900 ns between runs. So every
/// sequence is preceded by the replacement of one of `GROW_RING` small background chunks (sizes
/// 8..=512 from the shared random sequence; the oldest is freed, a new one allocated, not timed
/// separately): the buffer then starts at a different place in every sequence, and the result
/// averages over heap layouts instead of sampling one.
struct Grow<'s, A: RawAlloc> {
    name: &'static str,
    alloc: A,
    ctx: Option<MemoryContext>,
    /// Background chunk sizes, one per sequence.
    spacers: &'s [u16],
    ring: [(*mut u8, usize); GROW_RING],
    next: usize,
}

impl<'s, A: RawAlloc> Grow<'s, A> {
    fn new(
        name: &'static str,
        alloc: A,
        ctx: Option<MemoryContext>,
        spacers: &'s [u16],
    ) -> Grow<'s, A> {
        let _g = ctx.map(|x| x.switch_to());
        let mut ring = [(std::ptr::null_mut(), 0); GROW_RING];
        for (i, r) in ring.iter_mut().enumerate() {
            let s = spacers[i] as usize;
            // SAFETY: s >= 8.
            *r = (unsafe { alloc.alloc(s) }, s);
        }
        drop(_g);
        Grow {
            name,
            alloc,
            ctx,
            spacers,
            ring,
            next: 0,
        }
    }
}

impl<A: RawAlloc> Contender for Grow<'_, A> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        let _g = self.ctx.map(|x| x.switch_to());
        for &spacer in self.spacers {
            // SAFETY: sizes >= 8; each pointer is live with the size it was last given.
            unsafe {
                let slot = &mut self.ring[self.next % GROW_RING];
                self.next += 1;
                self.alloc.free(slot.0, slot.1);
                *slot = (self.alloc.alloc(spacer as usize), spacer as usize);
                slot.0.write(0);

                let mut p = self.alloc.alloc(GROW_FROM);
                p.write(1);
                let mut size = GROW_FROM;
                while size < GROW_TO {
                    p = self.alloc.realloc(black_box(p), size, size * 2);
                    size *= 2;
                    p.write(2);
                    p.add(size - 1).write(3);
                }
                self.alloc.free(black_box(p), size);
            }
        }
        self.spacers.len() as u64 * GROW_STEPS
    }
}

impl<A: RawAlloc> Drop for Grow<'_, A> {
    fn drop(&mut self) {
        let _g = self.ctx.map(|x| x.switch_to());
        for &(p, s) in &self.ring {
            // SAFETY: live background chunks.
            unsafe { self.alloc.free(p, s) };
        }
        drop(_g);
        if let Some(ctx) = self.ctx {
            ctx.delete();
        }
    }
}

fn bench_grow(cfg: &Config) -> Results {
    let mut rng = XorShift::new(0x6120_77aa);
    let spacers: Vec<u16> = (0..cfg.batch(256).max(GROW_RING))
        .map(|_| rng.range(8, 512) as u16)
        .collect();
    let top = MemoryContext::top();
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    if cfg.runs_memctx() {
        let ctx = top.new_child("grow", BlockSizes::DEFAULT);
        cs.push(Box::new(Grow::new("memctx", Palloc, Some(ctx), &spacers)));
    }
    if cfg.runs_peer("glibc") {
        cs.push(Box::new(Grow::new("glibc", Glibc, None, &spacers)));
    }
    if cfg.runs_peer("mimalloc") {
        cs.push(Box::new(Grow::new("mimalloc", Mi, None, &spacers)));
    }
    run_workload(cfg, "grow", "ns per realloc, 16 B -> 64 KiB doubling", cs)
}

// ------------------------------------------------------------------------------------------------
// (d) hashmap
// ------------------------------------------------------------------------------------------------

/// Keys per map.
const MAP_KEYS: usize = 1000;

/// The key texts, formatted once into one buffer (so formatting is not timed): `k<i>:<hex>`, 6 to
/// 21 bytes.
struct Keys {
    buf: String,
    ends: Vec<usize>,
}

impl Keys {
    fn new() -> Keys {
        use std::fmt::Write;
        let mut rng = XorShift::new(0x4a54_7e11);
        let mut buf = String::with_capacity(MAP_KEYS * 24);
        let mut ends = Vec::with_capacity(MAP_KEYS);
        for i in 0..MAP_KEYS {
            let bits = rng.range(0, 48) as u32;
            write!(buf, "k{i}:{:x}", rng.next() >> (63 - bits)).unwrap();
            ends.push(buf.len());
        }
        Keys { buf, ends }
    }

    fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.buf[s..e])
    }
}

/// memctx: the table and the `PString` keys in a pinned context, dropped, then the context reset.
struct MapMemctx<'k> {
    ctx: MemoryContext,
    keys: &'k Keys,
    builds: usize,
}

/// Builds one map in `ctx` and returns (requested bytes live at the end, map length).
fn build_map_memctx(ctx: MemoryContext, keys: &Keys) -> (usize, usize) {
    let pinned = ctx.pin();
    let mut m = hashbrown::HashMap::new_in(&pinned);
    let mut live = 0;
    for (i, k) in keys.iter().enumerate() {
        live += k.len();
        m.insert(PString::from_str_in(k, &pinned), i as u64);
    }
    let out = (live + m.allocation_size(), m.len());
    black_box(&m);
    drop(m);
    drop(pinned);
    out
}

impl Contender for MapMemctx<'_> {
    fn name(&self) -> &'static str {
        "memctx"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        for _ in 0..self.builds {
            black_box(build_map_memctx(self.ctx, self.keys));
            self.ctx.reset();
        }
        (self.builds * MAP_KEYS) as u64
    }
}

/// glibc: std `String` keys and `hashbrown::HashMap::new()`, all through the global allocator
/// (which this bench leaves at `System`, i.e. glibc).
struct MapGlibc<'k> {
    keys: &'k Keys,
    builds: usize,
}

fn build_map_glibc(keys: &Keys) -> hashbrown::HashMap<String, u64> {
    let mut m = hashbrown::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        m.insert(String::from(k), i as u64);
    }
    m
}

impl Contender for MapGlibc<'_> {
    fn name(&self) -> &'static str {
        "glibc"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        for _ in 0..self.builds {
            black_box(build_map_glibc(self.keys));
        }
        (self.builds * MAP_KEYS) as u64
    }
}

/// mimalloc: `PString<MiA>` keys (the same string code as memctx's side) and `new_in(MiA)`.
struct MapMi<'k> {
    keys: &'k Keys,
    builds: usize,
}

type MiMap = hashbrown::HashMap<PString<MiA>, u64, hashbrown::DefaultHashBuilder, MiA>;

fn build_map_mi(keys: &Keys) -> MiMap {
    let mut m = hashbrown::HashMap::new_in(MiA);
    for (i, k) in keys.iter().enumerate() {
        m.insert(PString::from_str_in(k, MiA), i as u64);
    }
    m
}

impl Contender for MapMi<'_> {
    fn name(&self) -> &'static str {
        "mimalloc"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        for _ in 0..self.builds {
            black_box(build_map_mi(self.keys));
        }
        (self.builds * MAP_KEYS) as u64
    }
}

/// bumpalo: bumpalo `String` keys and `new_in(&bump)`, dropped, then `Bump::reset`.
struct MapBump<'k> {
    bump: Bump,
    keys: &'k Keys,
    builds: usize,
}

fn build_map_bump(bump: &Bump, keys: &Keys) -> usize {
    let mut m = hashbrown::HashMap::new_in(bump);
    for (i, k) in keys.iter().enumerate() {
        m.insert(bumpalo::collections::String::from_str_in(k, bump), i as u64);
    }
    black_box(&m);
    m.len()
}

impl Contender for MapBump<'_> {
    fn name(&self) -> &'static str {
        "bumpalo"
    }
    #[inline(never)]
    fn round(&mut self) -> u64 {
        for _ in 0..self.builds {
            black_box(build_map_bump(&self.bump, self.keys));
            self.bump.reset();
        }
        (self.builds * MAP_KEYS) as u64
    }
}

fn bench_hashmap(cfg: &Config) -> Results {
    let keys = Keys::new();
    let builds = cfg.batch(8);
    let ctx = MemoryContext::top().new_child("hashmap", BlockSizes::DEFAULT);
    let mut cs: Vec<Box<dyn Contender>> = vec![Box::new(MapMemctx {
        ctx,
        keys: &keys,
        builds,
    })];
    if !DEBUG_BUILD {
        cs.push(Box::new(MapGlibc {
            keys: &keys,
            builds,
        }));
        cs.push(Box::new(MapMi {
            keys: &keys,
            builds,
        }));
        cs.push(Box::new(MapBump {
            bump: Bump::new(),
            keys: &keys,
            builds,
        }));
    }
    let out = run_workload(cfg, "hashmap", "ns per insert, 1000 keys, build+drop", cs);
    ctx.delete();
    out
}

// ------------------------------------------------------------------------------------------------
// (e) reset cost: blocks, not chunks
// ------------------------------------------------------------------------------------------------

// AllocSet's reset walks the block list: every block but the keeper goes back to the system with
// one `free`, the keeper's free pointer is rewound and the eleven freelist heads are cleared. No
// chunk is visited. So the table should show:
// 1. the same time for 100 and for 100 000 chunks held in one (keeper) block;
// 2. a time growing linearly with the block count when every chunk has a block of its own (100
//    vs 1000 chunks above the chunk limit);
// 3. for the same 100 000 small chunks spread over ~400 8 KiB blocks, the time of ~400 blocks:
//    far above case 1 with the same chunk count, and in line with case 2 per block.
// Together: the cost follows blocks, not chunks; a block costs about one glibc `free` (15-25 ns
// here). The one-block case with 100 000 chunks may read a few hundred ns rather than ~50: the
// 3 MiB fill just evicted the context and keeper headers from the cache, a constant, not a
// per-chunk cost.

/// One row of the reset table: fill (untimed), then time one reset; median over samples.
fn reset_row(cfg: &Config, sizes: BlockSizes, chunks: usize, chunk_size: usize) -> (usize, f64) {
    let ctx = MemoryContext::top().new_child("reset bench", sizes);
    let samples = if cfg.quick { 15 } else { 41 };
    let mut ns = Vec::with_capacity(samples);
    let mut blocks = 0;
    for _ in 0..samples + 2 {
        for _ in 0..chunks {
            let p = ctx.alloc(chunk_size).as_ptr();
            // SAFETY: at least one byte.
            unsafe { p.write(1) };
            black_box(p);
        }
        blocks = ctx.counters().total_nblocks as usize;
        let t0 = Instant::now();
        ctx.reset();
        ns.push(t0.elapsed().as_nanos() as f64);
    }
    ctx.delete();
    ns.drain(..2); // warm-up samples
    (blocks, median(&mut ns))
}

fn bench_reset(cfg: &Config) {
    // One big keeper block that holds 100 000 32-byte chunks (16 data + header, rounded).
    let one_block = BlockSizes {
        min_context_size: 4 << 20,
        init_block_size: 8 << 10,
        max_block_size: 8 << 10,
    };
    // 8 KiB blocks that never grow: many blocks for many small chunks; with this maximum the
    // chunk limit is low, so 4 KiB chunks get blocks of their own.
    let small_blocks = BlockSizes {
        min_context_size: 0,
        init_block_size: 8 << 10,
        max_block_size: 8 << 10,
    };
    let rows = [
        (one_block, 100, 16),
        (one_block, 100_000, 16),
        (small_blocks, 100, 4096),
        (small_blocks, 1000, 4096),
        (small_blocks, 100_000, 16),
    ];
    println!();
    println!("reset (ns per reset, median; chunks filled before each timed reset)");
    let mut lines = Vec::new();
    for (sizes, chunks, size) in rows {
        let (blocks, ns) = reset_row(cfg, sizes, chunks, size);
        println!("  chunks {chunks:>7} of {size:>4} B  blocks {blocks:>5}  {ns:>10.0} ns");
        lines.push(format!("reset chunks={chunks} blocks={blocks} ns={ns:.0}"));
    }
    for l in lines {
        println!("{l}");
    }
}

// ------------------------------------------------------------------------------------------------
// (f) backtrace-capture
// ------------------------------------------------------------------------------------------------

/// (f) The median cost of one allocation-backtrace capture at a few stack depths, including the
/// stack-depot look-up of an already known stack (the common case: allocation sites recur),
/// printed as `backtrace-capture <frames> <ns>`. Debug build only.
fn bench_backtrace_capture(cfg: &Config) {
    #[cfg(feature = "debug-contexts")]
    {
        let iters = if cfg.quick { 20_000 } else { 100_000 };
        for frames in [8, 16, 32] {
            let ns = memctx::debug::__bench_capture(frames, iters);
            println!("backtrace-capture {frames} {ns:.1}");
        }
    }
    #[cfg(not(feature = "debug-contexts"))]
    let _ = cfg;
}

/// `report-cost first|later <ms>`: the time from the `pfree` that finds a one-byte overrun to the
/// report's text, symbolised — the process's first report (the debug information is loaded then)
/// and a later one from another allocation site — measured by memctx's hidden hook (the report is
/// raised under `Policy::Log` and told to no one). Debug build in mode `backtraces` running every
/// workload only; it must come before any other report of the process, and the workloads make none.
fn bench_report_cost(cfg: &Config) -> Vec<(&'static str, f64)> {
    #[cfg(feature = "debug-contexts")]
    if cfg.mode == "backtraces" && cfg.only.is_none() {
        let (first, later) = memctx::debug::__bench_report_cost();
        return vec![("first", first), ("later", later)];
    }
    let _ = cfg;
    Vec::new()
}

// ------------------------------------------------------------------------------------------------
// Memory: bytes held per live requested byte
// ------------------------------------------------------------------------------------------------

// Method. Each (workload, allocator) pair runs in a fresh child process (this binary re-executed
// with `--memory-probe <workload> <allocator>`), so no earlier workload's freed-but-kept memory
// hides or inflates what the allocator takes. The child prepares everything that is not the
// workload's live set (the random sequence, the pointer arrays), reads its resident set size from
// /proc/self/statm, builds the live set exactly as the timed workload does, reads RSS again, and
// reports `held` and `live` (requested bytes still live at the end):
// - memctx: held = `ctx.mem_allocated(true)`, its own accounting of the blocks it took (RSS growth
//   is shown beside it as a cross-check);
// - bumpalo: held = `Bump::allocated_bytes()`, its own accounting of its chunks;
// - glibc, mimalloc: held = RSS growth (pages touched), which includes their headers, free lists
//   and fragmentation, at page granularity.
// Workloads: `churn` (the 4096-chunk live set after 4 x 2^18 steps: ~1 MiB live); `hashmap` (32
// maps of 1000 keys all live at once, 2.5-3 MB: one map alone is too small for page-granular RSS;
// `live` counts key bytes plus `allocation_size()` of each table, which depends on the key type:
// std `String` and `PString<MiA>` are 24 bytes, `PString<&PinnedContext>` and bumpalo's `String`
// 32, so the arenas' tables are larger); `per-row` for memctx and
// bumpalo only (the end of the last row: 16 chunks live, so the figure is the context's or
// arena's fixed block against ~1 KiB; glibc/mimalloc hold a few pages for it, which RSS cannot
// resolve, so they are not reported).

/// Resident set size in bytes.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(1) as usize
}

/// Maps alive at once in the hashmap memory probe.
const PROBE_MAPS: usize = 32;

/// The child side: runs one probe and prints `probe <held> <live> <rss-growth>`.
fn memory_probe(workload: &str, allocator: &str) {
    let top = MemoryContext::top();
    let (held, live, grown) = match (workload, allocator) {
        ("churn", _) => {
            let seq = ChurnSeq::new(1 << 18);
            let ctx = (allocator == "memctx").then(|| top.new_child("churn", BlockSizes::DEFAULT));
            fn go<A: RawAlloc>(a: A, seq: &ChurnSeq, ctx: Option<MemoryContext>) -> (usize, usize) {
                let before = rss();
                let mut c = Churn::new("probe", a, seq, ctx);
                for _ in 0..4 {
                    c.run_steps();
                }
                let grown = rss().saturating_sub(before);
                let live = c.live_bytes();
                std::mem::forget(c); // keep the live set; the process ends
                (live, grown)
            }
            let (live, grown) = match allocator {
                "memctx" => go(Palloc, &seq, ctx),
                "glibc" => go(Glibc, &seq, None),
                "mimalloc" => go(Mi, &seq, None),
                _ => return,
            };
            let held = ctx.map_or(grown, |c| c.mem_allocated(true));
            (held, live, grown)
        }
        ("hashmap", _) => {
            let keys = Keys::new();
            let key_bytes: usize = keys.iter().map(str::len).sum();
            let before = rss();
            match allocator {
                "memctx" => {
                    let ctx = top.new_child("hashmap", BlockSizes::DEFAULT);
                    let pinned = ctx.pin();
                    let mut maps = Vec::new();
                    let mut live = 0;
                    for _ in 0..PROBE_MAPS {
                        let mut m = hashbrown::HashMap::new_in(&pinned);
                        for (i, k) in keys.iter().enumerate() {
                            m.insert(PString::from_str_in(k, &pinned), i as u64);
                        }
                        live += key_bytes + m.allocation_size();
                        maps.push(m);
                    }
                    let grown = rss().saturating_sub(before);
                    let held = ctx.mem_allocated(true);
                    std::mem::forget(maps);
                    std::mem::forget(pinned);
                    (held, live, grown)
                }
                "glibc" => {
                    let mut maps = Vec::with_capacity(PROBE_MAPS);
                    let mut live = 0;
                    for _ in 0..PROBE_MAPS {
                        let m = build_map_glibc(&keys);
                        live += key_bytes + m.allocation_size();
                        maps.push(m);
                    }
                    let grown = rss().saturating_sub(before);
                    std::mem::forget(maps);
                    (grown, live, grown)
                }
                "mimalloc" => {
                    let mut maps = Vec::with_capacity(PROBE_MAPS);
                    let mut live = 0;
                    for _ in 0..PROBE_MAPS {
                        let m = build_map_mi(&keys);
                        live += key_bytes + m.allocation_size();
                        maps.push(m);
                    }
                    let grown = rss().saturating_sub(before);
                    std::mem::forget(maps);
                    (grown, live, grown)
                }
                "bumpalo" => {
                    let bump = Bump::new();
                    let mut maps = Vec::with_capacity(PROBE_MAPS);
                    let mut live = 0;
                    for _ in 0..PROBE_MAPS {
                        let mut m = hashbrown::HashMap::new_in(&bump);
                        for (i, k) in keys.iter().enumerate() {
                            m.insert(
                                bumpalo::collections::String::from_str_in(k, &bump),
                                i as u64,
                            );
                        }
                        live += key_bytes + m.allocation_size();
                        maps.push(m);
                    }
                    let grown = rss().saturating_sub(before);
                    let held = bump.allocated_bytes();
                    std::mem::forget(maps);
                    std::mem::forget(bump);
                    (held, live, grown)
                }
                _ => return,
            }
        }
        ("per-row", _) => {
            let sizes = row_sizes(1 << 12);
            let before = rss();
            let last = sizes.len() - ROW_LEN;
            let live: usize = sizes[last..].iter().map(|&s| s as usize).sum();
            match allocator {
                "memctx" => {
                    let ctx = top.new_child("per-row", BlockSizes::DEFAULT);
                    for (r, row) in sizes.chunks_exact(ROW_LEN).enumerate() {
                        for &s in row {
                            black_box(ctx.alloc(s as usize));
                        }
                        if r * ROW_LEN != last {
                            ctx.reset();
                        }
                    }
                    let grown = rss().saturating_sub(before);
                    (ctx.mem_allocated(true), live, grown)
                }
                "bumpalo" => {
                    let mut bump = Bump::new();
                    for (r, row) in sizes.chunks_exact(ROW_LEN).enumerate() {
                        for &s in row {
                            black_box(bump.alloc_layout(layout(s as usize)));
                        }
                        if r * ROW_LEN != last {
                            bump.reset();
                        }
                    }
                    let grown = rss().saturating_sub(before);
                    let held = bump.allocated_bytes();
                    std::mem::forget(bump);
                    (held, live, grown)
                }
                _ => return,
            }
        }
        _ => return,
    };
    println!("probe {held} {live} {grown}");
}

/// The parent side: runs every probe in a child and prints the table and the `memory` lines.
fn bench_memory() {
    let probes: &[(&str, &[&str])] = &[
        ("churn", &["memctx", "glibc", "mimalloc"]),
        ("per-row", &["memctx", "bumpalo"]),
        ("hashmap", &["memctx", "glibc", "mimalloc", "bumpalo"]),
    ];
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            println!("memory probes skipped: cannot find this executable: {e}");
            return;
        }
    };
    println!();
    println!("memory (bytes held per live requested byte at the end of the workload)");
    println!(
        "  {:<9} {:<10} {:>11} {:>11} {:>11} {:>7}",
        "workload", "allocator", "held B", "live B", "RSS grew B", "ratio"
    );
    let mut lines = Vec::new();
    for &(workload, allocators) in probes {
        for &allocator in allocators {
            let out = Command::new(&exe)
                .args(["--memory-probe", workload, allocator])
                .output();
            let text = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let nums: Vec<usize> = text
                .lines()
                .find_map(|l| l.strip_prefix("probe "))
                .map(|l| {
                    l.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let [held, live, grown] = nums[..] else {
                println!("  {workload:<9} {allocator:<10} probe failed");
                continue;
            };
            let x = held as f64 / live.max(1) as f64;
            println!("  {workload:<9} {allocator:<10} {held:>11} {live:>11} {grown:>11} {x:>7.2}");
            lines.push(format!("memory {workload} {allocator} {x:.2}"));
        }
    }
    for l in lines {
        println!("{l}");
    }
}

// ------------------------------------------------------------------------------------------------
// main
// ------------------------------------------------------------------------------------------------

/// Applies `--mode` to the debug build: `patterns` (redzones, sentinels and fill patterns, with
/// backtraces off) or `backtraces` (everything on, the default).
fn apply_mode(cfg: &Config) {
    #[cfg(feature = "debug-contexts")]
    match cfg.mode.as_str() {
        "patterns" => memctx::debug::set_backtraces(false),
        "backtraces" | "debug" => memctx::debug::set_backtraces(true),
        other => panic!("unknown --mode {other:?} (patterns or backtraces)"),
    }
    #[cfg(not(feature = "debug-contexts"))]
    let _ = cfg;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-probe") {
        if let (Some(w), Some(a)) = (args.get(i + 1), args.get(i + 2)) {
            memory_probe(w, a);
        }
        return;
    }
    let cfg = Config::from_args(&args);
    apply_mode(&cfg);
    let started = Instant::now();
    println!(
        "memctx peers benchmark: {} build, mode {}{}",
        if DEBUG_BUILD {
            "debug (debug-contexts)"
        } else if cfg.asan {
            "AddressSanitizer (glibc's side only)"
        } else {
            "release"
        },
        cfg.mode,
        if cfg.quick { ", quick" } else { "" }
    );

    let workloads: [Workload; 7] = [
        ("churn", bench_churn),
        ("per-row", bench_per_row),
        ("per-row-bump", per_row_bump::bench_per_row_bump),
        ("grow", bench_grow),
        ("hashmap", bench_hashmap),
        ("slab-churn", slab_churn::bench_slab_churn),
        ("fifo", fifo::bench_fifo),
    ];
    let results: Vec<_> = workloads
        .iter()
        .filter(|(w, _)| cfg.wants(w))
        .map(|&(w, f)| (w, f(&cfg)))
        .collect();
    let bounds = if DEBUG_BUILD || cfg.asan {
        Vec::new()
    } else {
        bounds::bench_bounds(&cfg)
    };
    if !DEBUG_BUILD && !cfg.asan && cfg.only.is_none() {
        bench_reset(&cfg);
        bench_memory();
    }
    bench_backtrace_capture(&cfg);
    let report_cost = bench_report_cost(&cfg);

    println!();
    println!(
        "# machine-readable ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("mode {}", cfg.mode);
    for (workload, timings) in &results {
        for (name, t) in timings {
            // `memctx(palloc)` is a variant shown for information; it has no machine line.
            if !name.contains('(') {
                println!("median {workload} {name} {:.2}", t.median);
            }
        }
    }
    if !DEBUG_BUILD && !cfg.asan {
        for (workload, timings) in &results {
            let base = timings
                .iter()
                .find(|(n, _)| *n == "memctx")
                .map(|(_, t)| t.median);
            for (name, t) in timings {
                if let (Some(base), false) = (base, name.starts_with("memctx")) {
                    println!("ratio {workload} {name} {:.2}", t.median / base);
                }
            }
        }
    }
    for b in &bounds {
        // The stand-ins' own medians, for ci/bench's `waste` lines.
        println!(
            "median {} bound:{} {:.2}",
            b.workload, b.duty, b.standin.median
        );
    }
    for b in &bounds {
        let x = b.standin.median / b.release;
        println!("bound {} {} {x:.2}", b.workload, b.duty);
    }
    for (which, ms) in report_cost {
        println!("report-cost {which} {ms:.1}");
    }
    println!("chunk-header {}", memctx::CHUNK_HEADER_SIZE);
    println!("chunk-prefix {}", memctx::chunk_prefix_size());
}
