// Dropping the pin while a collection still borrows it is refused.
use allocator_api2::vec::Vec;
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let ctx = MemoryContext::top().new_child("c", BlockSizes::DEFAULT);
    let pinned = ctx.pin();
    let mut v: Vec<u64, _> = Vec::new_in(&pinned);
    v.push(1);
    drop(pinned);
    ctx.reset();
    assert_eq!(v[0], 1);
}
