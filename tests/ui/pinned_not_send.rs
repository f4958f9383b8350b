// Nor can a PinnedContext (or a collection that owns one).
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let pinned = MemoryContext::top()
        .new_child("c", BlockSizes::DEFAULT)
        .pin();
    std::thread::spawn(move || {
        drop(pinned);
    })
    .join()
    .unwrap();
}
