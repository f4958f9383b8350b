// The reference `scope` hands its closure cannot escape: a Vec built on it cannot be returned,
// since the context is reset when the closure returns.
use allocator_api2::vec::Vec;
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let ctx = MemoryContext::top().new_child("ExprContext", BlockSizes::DEFAULT);
    let v = ctx.scope(|mem| {
        let mut v: Vec<u64, _> = Vec::new_in(mem);
        v.push(1);
        v
    });
    assert_eq!(v[0], 1);
}
