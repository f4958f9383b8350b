// Nor can the reference be stored outside the closure.
use memctx::{BlockSizes, MemoryContext, PinnedContext};

fn main() {
    let ctx = MemoryContext::top().new_child("ExprContext", BlockSizes::DEFAULT);
    let mut kept: Option<&PinnedContext> = None;
    ctx.scope(|mem| {
        kept = Some(mem);
    });
    let _ = kept;
}
