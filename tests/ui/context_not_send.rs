// A MemoryContext belongs to its thread's tree: it cannot be moved to another thread.
use memctx::{BlockSizes, MemoryContext};

fn main() {
    let ctx = MemoryContext::top().new_child("c", BlockSizes::DEFAULT);
    std::thread::spawn(move || {
        ctx.reset();
    })
    .join()
    .unwrap();
}
