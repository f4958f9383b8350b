// A PinnedContext cannot be shared with another thread either: `&PinnedContext` is not Send.
use allocator_api2::vec::Vec;
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let pinned = MemoryContext::top()
        .new_child("c", BlockSizes::DEFAULT)
        .pin();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut v: Vec<u8, _> = Vec::new_in(&pinned);
            v.push(1);
        });
    });
}
