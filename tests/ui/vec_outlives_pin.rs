// A collection built on `&PinnedContext` borrows the pin: it cannot outlive it, so the context
// cannot be unpinned (and then reset) while the collection lives.
use allocator_api2::vec::Vec;
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let ctx = MemoryContext::top().new_child("c", BlockSizes::DEFAULT);
    let v;
    {
        let pinned = ctx.pin();
        let mut w: Vec<u64, _> = Vec::new_in(&pinned);
        w.push(1);
        v = w;
    }
    ctx.reset();
    assert_eq!(v[0], 1);
}
