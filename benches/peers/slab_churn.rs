//! `slab-churn`: the Slab kind's workload. 4096 live 64-byte objects; each step frees a random one
//! and allocates a new one in its place (a byte is written into it), as a program keeps a pool of
//! equal-sized nodes (PostgreSQL's reorder buffer keeps its changes in a Slab). Time per step.
//! memctx: `palloc`/`pfree` in a Slab context of 8 KiB blocks made current with `switch_to`, the
//! calls a user makes; glibc and mimalloc through their `GlobalAlloc` methods, as in `churn`.

use memctx::{BlockSizes, MemoryContext};

use super::{
    run_workload, Churn, ChurnSeq, Config, Contender, Glibc, Mi, Palloc, Results, XorShift,
    CHURN_LIVE,
};

/// The one object size.
const OBJECT: u16 = 64;

/// The step sequence: every slot starts with an object, each step replaces a random one.
fn sequence(steps: usize) -> ChurnSeq {
    let mut rng = XorShift::new(0x51ab_c4ab_0064);
    ChurnSeq {
        init: vec![OBJECT; CHURN_LIVE],
        steps: (0..steps)
            .map(|_| (rng.range(0, CHURN_LIVE - 1) as u16, OBJECT))
            .collect(),
    }
}

pub(super) fn bench_slab_churn(cfg: &Config) -> Results {
    let seq = sequence(cfg.batch(1 << 15));
    let mut cs: Vec<Box<dyn Contender>> = Vec::new();
    if cfg.runs_memctx() {
        let ctx = MemoryContext::top().new_slab_child("slab-churn", 8192, OBJECT as usize);
        cs.push(Box::new(Churn::new("memctx", Palloc, &seq, Some(ctx))));
        // For information (no machine line): the same calls in an AllocSet.
        let aset = MemoryContext::top().new_child("slab-churn (AllocSet)", BlockSizes::DEFAULT);
        cs.push(Box::new(Churn::new(
            "memctx(AllocSet)",
            Palloc,
            &seq,
            Some(aset),
        )));
    }
    if cfg.runs_peer("glibc") {
        cs.push(Box::new(Churn::new("glibc", Glibc, &seq, None)));
    }
    if cfg.runs_peer("mimalloc") {
        cs.push(Box::new(Churn::new("mimalloc", Mi, &seq, None)));
    }
    run_workload(cfg, "slab-churn", "ns per free+alloc step", cs)
}
