//! The context tree: creation, names and order, reset / reset-children / delete /
//! delete-children, set-parent, switch-to guards, callbacks, stale handles, recycling, threads
//! and deep trees.
//!
//! Each `#[test]` runs on its own thread, so each sees a fresh TopMemoryContext; the tests only
//! ever look at contexts they created themselves (plus their own thread's Top).

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use memctx::{BlockSizes, ContextError, MemoryContext};

/// Size of a DEFAULT context's keeper block (the initial block size, as in PostgreSQL).
const DEFAULT_KEEPER: usize = 8192;

#[path = "common/panics.rs"]
mod panics;
use panics::expect_panic;

/// Log of events recorded by callbacks.
type Log = Rc<RefCell<Vec<String>>>;

fn log_to(log: &Log, what: &str) -> impl FnOnce() + 'static {
    let log = log.clone();
    let what = what.to_owned();
    move || log.borrow_mut().push(what)
}

fn alloc_some(ctx: MemoryContext, n: usize, size: usize) {
    for i in 0..n {
        let p = ctx.alloc(size);
        unsafe { p.as_ptr().write_bytes(i as u8, size) };
    }
}

#[test]
fn children_have_names_idents_paths_and_newest_first_order() {
    let top = MemoryContext::top();
    assert_eq!(top.name(), "TopMemoryContext");
    assert_eq!(top.parent(), None);
    assert_eq!(top.path(), vec!["TopMemoryContext"]);

    let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
    let a = portal.new_child("ExecutorState", BlockSizes::DEFAULT);
    let b = portal.new_child("ExprContext", BlockSizes::SMALL);
    let c = portal.new_child("ExprContext", BlockSizes::START_SMALL);

    assert_eq!(portal.name(), "PortalContext");
    assert_eq!(portal.parent(), Some(top));
    assert_eq!(a.parent(), Some(portal));
    assert_eq!(
        c.path(),
        vec!["TopMemoryContext", "PortalContext", "ExprContext"]
    );
    // PostgreSQL's order: the newest child first.
    assert_eq!(portal.children(), vec![c, b, a]);
    assert!(top.children().contains(&portal));
    // Two contexts with the same name are still different contexts.
    assert_ne!(b, c);
    assert_ne!(b.id(), c.id());
    assert!(a.id() < b.id() && b.id() < c.id());

    assert_eq!(a.ident(), None);
    a.set_ident("SELECT * FROM pg_class");
    assert_eq!(a.ident().as_deref(), Some("SELECT * FROM pg_class"));
    a.set_ident("replaced");
    assert_eq!(a.ident().as_deref(), Some("replaced"));

    // A fresh context is empty and holds exactly its keeper block.
    assert!(a.is_empty());
    assert_eq!(a.mem_allocated(false), DEFAULT_KEEPER);
    assert!(!portal.is_empty(), "a context with children is not empty");
    assert_eq!(
        portal.mem_allocated(true),
        portal.mem_allocated(false)
            + a.mem_allocated(false)
            + b.mem_allocated(false)
            + c.mem_allocated(false)
    );

    portal.delete();
    assert!(!portal.is_alive() && !a.is_alive() && !b.is_alive() && !c.is_alive());
    assert!(!top.children().contains(&portal));
}

#[test]
fn reset_deletes_children_frees_chunks_and_keeps_the_keeper() {
    let top = MemoryContext::top();
    let ctx = top.new_child("ResetMe", BlockSizes::DEFAULT);
    let kid = ctx.new_child("kid", BlockSizes::DEFAULT);
    let grandkid = kid.new_child("grandkid", BlockSizes::DEFAULT);
    alloc_some(ctx, 100, 1000); // several blocks
    alloc_some(ctx, 3, 50_000); // blocks of their own
    alloc_some(kid, 10, 100);
    assert!(ctx.mem_allocated(false) > 150_000);
    assert!(!ctx.is_empty());

    ctx.reset();

    assert!(ctx.is_alive());
    assert!(!kid.is_alive() && !grandkid.is_alive());
    assert!(ctx.children().is_empty());
    assert!(ctx.is_empty());
    assert_eq!(ctx.mem_allocated(false), DEFAULT_KEEPER);
    assert_eq!(ctx.mem_allocated(true), DEFAULT_KEEPER);
    let c = ctx.counters();
    assert_eq!(c.total_nblocks, 1);
    assert_eq!(c.total_bytes, DEFAULT_KEEPER as u64);
    assert_eq!(c.free_chunks, 0);

    // Allocating again makes it non-empty; a second reset empties it again.
    let _ = ctx.alloc(10);
    assert!(!ctx.is_empty());
    ctx.reset();
    assert!(ctx.is_empty());
    ctx.delete();
}

/// `check()` over a sound tree finds nothing, in both builds: live chunks of every size class,
/// freed chunks on the freelists, chunks of their own, a reset child and a deleted one. (The
/// debug build's findings on damaged trees are counted in debug_reports.rs and
/// released_memory.rs.)
#[test]
fn check_of_a_sound_tree_finds_nothing() {
    let top = MemoryContext::top();
    let root = top.new_child("sound", BlockSizes::DEFAULT);
    let kid = root.new_child("kid", BlockSizes::SMALL);
    let gone = kid.new_child("gone", BlockSizes::DEFAULT);
    alloc_some(root, 40, 300);
    alloc_some(kid, 20, 5000);
    alloc_some(gone, 3, 20_000);
    let freed = root.alloc(100);
    unsafe { memctx::pfree(freed.as_ptr()) };
    gone.delete();
    assert_eq!(root.check(), 0);
    kid.reset();
    assert_eq!(kid.check(), 0);
    assert_eq!(root.check(), 0);
    root.delete();
}

#[test]
fn reset_children_keeps_every_context_but_empties_them() {
    let top = MemoryContext::top();
    let parent = top.new_child("parent", BlockSizes::DEFAULT);
    let a = parent.new_child("a", BlockSizes::DEFAULT);
    let b = parent.new_child("b", BlockSizes::DEFAULT);
    let a1 = a.new_child("a1", BlockSizes::DEFAULT);
    alloc_some(parent, 5, 100);
    alloc_some(a, 50, 1000);
    alloc_some(b, 2, 20_000);
    alloc_some(a1, 30, 2000);
    let parent_own = parent.counters();

    let log: Log = Default::default();
    a.register_reset_callback(log_to(&log, "a"));
    a1.register_reset_callback(log_to(&log, "a1"));
    parent.register_reset_callback(log_to(&log, "parent"));

    parent.reset_children();

    // Every context survives, with its place in the tree.
    assert!(a.is_alive() && b.is_alive() && a1.is_alive());
    assert_eq!(parent.children(), vec![b, a]);
    assert_eq!(a.children(), vec![a1]);
    // The children are reset down to their keepers...
    for ctx in [a, b, a1] {
        assert_eq!(ctx.mem_allocated(false), DEFAULT_KEEPER, "{}", ctx.name());
        assert_eq!(ctx.counters().total_nblocks, 1);
    }
    assert!(b.is_empty() && a1.is_empty());
    assert!(!a.is_empty(), "a still has its child a1");
    // ...the parent's own chunks stay, and its callbacks did not run.
    assert_eq!(parent.counters(), parent_own);
    assert!(!parent.is_empty());
    // Descendants' callbacks ran (deepest first).
    assert_eq!(*log.borrow(), vec!["a1", "a"]);

    parent.delete();
    assert_eq!(*log.borrow(), vec!["a1", "a", "parent"]);
}

#[test]
fn delete_runs_callbacks_children_first_lifo_per_context() {
    let top = MemoryContext::top();
    let p = top.new_child("P", BlockSizes::DEFAULT);
    let a = p.new_child("A", BlockSizes::DEFAULT);
    let a1 = a.new_child("A1", BlockSizes::DEFAULT);
    let b = p.new_child("B", BlockSizes::DEFAULT);
    let log: Log = Default::default();
    p.register_reset_callback(log_to(&log, "P.1"));
    p.register_reset_callback(log_to(&log, "P.2"));
    a.register_reset_callback(log_to(&log, "A.1"));
    a.register_reset_callback(log_to(&log, "A.2"));
    a1.register_reset_callback(log_to(&log, "A1.1"));
    b.register_reset_callback(log_to(&log, "B.1"));
    b.register_reset_callback(log_to(&log, "B.2"));
    alloc_some(a1, 10, 500);

    p.delete();

    // Children before their parent; children in list order (newest first); LIFO per context.
    assert_eq!(
        *log.borrow(),
        vec!["B.2", "B.1", "A1.1", "A.2", "A.1", "P.2", "P.1"]
    );
    for ctx in [p, a, a1, b] {
        assert!(!ctx.is_alive());
    }
}

#[test]
fn reset_callbacks_run_once_lifo_before_the_memory_goes() {
    let top = MemoryContext::top();
    let ctx = top.new_child("cb", BlockSizes::DEFAULT);
    let chunk = ctx.alloc(8).as_ptr() as *mut u64;
    unsafe { chunk.write(0xDEAD_BEEF) };
    let seen = Rc::new(RefCell::new(Vec::new()));
    for i in 0..3u64 {
        let seen = seen.clone();
        // The chunk is still readable inside the callback: the memory goes after the callbacks.
        ctx.register_reset_callback(move || seen.borrow_mut().push((i, unsafe { chunk.read() })));
    }
    ctx.reset();
    assert_eq!(
        *seen.borrow(),
        vec![(2, 0xDEAD_BEEF), (1, 0xDEAD_BEEF), (0, 0xDEAD_BEEF)]
    );
    // Callbacks run once: a second reset runs nothing.
    ctx.reset();
    assert_eq!(seen.borrow().len(), 3);
    ctx.delete();
    assert_eq!(seen.borrow().len(), 3);
}

#[test]
fn delete_children_keeps_own_chunks() {
    let top = MemoryContext::top();
    let p = top.new_child("P", BlockSizes::DEFAULT);
    let a = p.new_child("A", BlockSizes::DEFAULT);
    let b = a.new_child("B", BlockSizes::DEFAULT);
    let mine = p.alloc(64).as_ptr();
    unsafe { mine.write_bytes(0x5A, 64) };
    alloc_some(a, 20, 4000);
    let before = p.counters();
    let total_before = p.mem_allocated(true);

    p.delete_children();

    assert!(!a.is_alive() && !b.is_alive());
    assert!(p.children().is_empty());
    assert_eq!(p.counters(), before);
    assert_eq!(p.mem_allocated(true), p.mem_allocated(false));
    assert!(total_before > p.mem_allocated(true));
    assert!(!p.is_empty(), "own chunks stay");
    assert!((0..64).all(|i| unsafe { *mine.add(i) } == 0x5A));
    unsafe { memctx::pfree(mine) };
    p.delete();
}

#[test]
fn set_parent_moves_the_subtree() {
    let top = MemoryContext::top();
    let x = top.new_child("X", BlockSizes::DEFAULT);
    let y = top.new_child("Y", BlockSizes::DEFAULT);
    let a = x.new_child("A", BlockSizes::DEFAULT);
    let a1 = a.new_child("A1", BlockSizes::DEFAULT);
    let older = y.new_child("older", BlockSizes::DEFAULT);

    a.set_parent(y);
    assert_eq!(a.parent(), Some(y));
    assert_eq!(a1.path(), vec!["TopMemoryContext", "Y", "A", "A1"]);
    assert!(x.children().is_empty());
    // The moved context becomes the first (newest) child, as in MemoryContextSetParent.
    assert_eq!(y.children(), vec![a, older]);
    // Moving under the same parent is a no-op.
    a.set_parent(y);
    assert_eq!(y.children(), vec![a, older]);

    // Deleting the old parent does not touch the moved subtree; deleting the new one does.
    x.delete();
    assert!(a.is_alive() && a1.is_alive());
    y.delete();
    assert!(!a.is_alive() && !a1.is_alive() && !older.is_alive());
}

#[test]
fn set_parent_refuses_cycles_and_top() {
    let top = MemoryContext::top();
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = a.new_child("B", BlockSizes::DEFAULT);
    let c = b.new_child("C", BlockSizes::DEFAULT);

    assert_eq!(
        a.try_set_parent(c),
        Err(ContextError::WouldCycle {
            context: "A",
            new_parent: "C"
        })
    );
    assert_eq!(
        a.try_set_parent(a),
        Err(ContextError::WouldCycle {
            context: "A",
            new_parent: "A"
        })
    );
    // Refusals leave the tree as it was.
    assert_eq!(c.path(), vec!["TopMemoryContext", "A", "B", "C"]);
    assert_eq!(a.parent(), Some(top));

    assert_eq!(top.try_set_parent(a), Err(ContextError::IsTop));
    assert_eq!(top.try_delete(), Err(ContextError::IsTop));
    assert!(top.is_alive());
    let msg = expect_panic(|| top.delete());
    assert_eq!(msg, "TopMemoryContext cannot be deleted or moved");
    let msg = expect_panic(|| a.set_parent(c));
    assert_eq!(
        msg,
        "cannot move memory context \"A\" under \"C\", which is inside its own subtree"
    );
    a.delete();
}

#[test]
fn switch_guard_restores_the_previous_context() {
    let top = MemoryContext::top();
    assert_eq!(MemoryContext::current(), top);
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = top.new_child("B", BlockSizes::DEFAULT);
    {
        let ga = a.switch_to();
        assert_eq!(ga.previous(), top);
        assert_eq!(MemoryContext::current(), a);
        let p = memctx::palloc(100);
        assert_eq!(unsafe { memctx::chunk_context(p) }, a);
        {
            let gb = b.switch_to();
            assert_eq!(gb.previous(), a);
            assert_eq!(MemoryContext::current(), b);
            let q = memctx::palloc(100);
            assert_eq!(unsafe { memctx::chunk_context(q) }, b);
        }
        assert_eq!(MemoryContext::current(), a);
    }
    assert_eq!(MemoryContext::current(), top);

    // The guard-less form returns the previous context.
    let prev = memctx::switch_to(b);
    assert_eq!(prev, top);
    assert_eq!(memctx::switch_to(prev), b);
    assert_eq!(MemoryContext::current(), top);
    a.delete();
    b.delete();
}

#[test]
fn switch_guard_restores_the_previous_context_when_a_panic_unwinds() {
    let top = MemoryContext::top();
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = top.new_child("B", BlockSizes::DEFAULT);
    let _outer = a.switch_to();
    let msg = expect_panic(|| {
        let _g = b.switch_to();
        assert_eq!(MemoryContext::current(), b);
        panic!("error in the middle of a query");
    });
    assert_eq!(msg, "error in the middle of a query");
    assert_eq!(MemoryContext::current(), a);
    drop(_outer);
    assert_eq!(MemoryContext::current(), top);
    a.delete();
    b.delete();
}

#[test]
fn switch_guard_falls_back_to_top_when_the_previous_context_was_deleted() {
    let top = MemoryContext::top();
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = top.new_child("B", BlockSizes::DEFAULT);
    let ga = a.switch_to();
    let gb = b.switch_to(); // previous: A
    drop(ga); // out of order: current is Top now
    a.delete();
    drop(gb); // its previous context is gone
    assert_eq!(MemoryContext::current(), top);
    b.delete();
}

#[test]
fn deleting_the_current_context_or_an_ancestor_is_refused() {
    let top = MemoryContext::top();
    let a = top.new_child("A", BlockSizes::DEFAULT);
    let b = a.new_child("B", BlockSizes::DEFAULT);
    let c = b.new_child("C", BlockSizes::DEFAULT);
    let sibling = a.new_child("sibling", BlockSizes::DEFAULT);
    {
        let _g = c.switch_to();
        let cur = |context| ContextError::ContainsCurrent {
            context,
            current: "C",
        };
        assert_eq!(c.try_delete(), Err(cur("C")));
        assert_eq!(b.try_delete(), Err(cur("B")));
        assert_eq!(a.try_delete(), Err(cur("A")));
        assert_eq!(b.try_delete_children(), Err(cur("B")));
        assert_eq!(a.try_reset(), Err(cur("A")));
        let msg = expect_panic(|| a.delete());
        assert_eq!(
            msg,
            "cannot free memory context \"A\": CurrentMemoryContext \"C\" would be deleted \
             (switch away from it first)"
        );
        // Nothing was freed.
        assert!(a.is_alive() && b.is_alive() && c.is_alive() && sibling.is_alive());
        // Operations that keep C alive are fine.
        a.reset_children();
        c.delete_children();
        sibling.delete();
    }
    assert_eq!(MemoryContext::current(), top);
    a.delete();
    assert!(!c.is_alive());
}

/// PostgreSQL resets CurrentMemoryContext routinely (a reset keeps the context), and
/// `try_reset`'s documentation only refuses when CurrentMemoryContext is a *descendant*.
#[test]
fn resetting_the_current_context_itself_is_allowed() {
    let top = MemoryContext::top();
    let ctx = top.new_child("per-tuple", BlockSizes::DEFAULT);
    let _g = ctx.switch_to();
    let _ = memctx::palloc(100);
    assert_eq!(ctx.try_reset(), Ok(()));
    assert!(ctx.is_empty());
    assert_eq!(MemoryContext::current(), ctx);
    drop(_g);
    ctx.delete();
}

#[test]
fn stale_handle_panics_naming_the_context() {
    let top = MemoryContext::top();
    let ctx = top.new_child("QueryContext", BlockSizes::DEFAULT);
    let copy = ctx;
    ctx.delete();
    assert!(!copy.is_alive());
    // The name stays readable from the handle itself.
    assert_eq!(copy.name(), "QueryContext");
    assert!(format!("{copy:?}").contains("deleted"));

    type Op = Box<dyn Fn()>;
    let ops: Vec<(&str, Op)> = vec![
        ("reset", Box::new(move || copy.reset())),
        ("delete", Box::new(move || copy.delete())),
        (
            "new_child",
            Box::new(move || {
                copy.new_child("x", BlockSizes::DEFAULT);
            }),
        ),
        (
            "alloc",
            Box::new(move || {
                copy.alloc(8);
            }),
        ),
        (
            "switch_to",
            Box::new(move || {
                let _g = copy.switch_to();
            }),
        ),
        (
            "mem_allocated",
            Box::new(move || {
                copy.mem_allocated(true);
            }),
        ),
        (
            "children",
            Box::new(move || {
                copy.children();
            }),
        ),
        (
            "pin",
            Box::new(move || {
                copy.pin();
            }),
        ),
        (
            "register_reset_callback",
            Box::new(move || copy.register_reset_callback(|| ())),
        ),
    ];
    for (op, f) in ops {
        let msg = expect_panic(f);
        assert!(
            msg.starts_with("memory context \"QueryContext\" used after it was deleted"),
            "{op}: {msg}"
        );
    }
    // A failed use changed nothing: Top is still current and intact.
    assert_eq!(MemoryContext::current(), top);
}

#[test]
fn recycled_headers_get_new_ids_and_old_handles_stay_stale() {
    let top = MemoryContext::top();
    let old = top.new_child("first", BlockSizes::DEFAULT);
    let old_id = old.id();
    let old_addr = address_of(old);
    old.delete();

    let new = top.new_child("second", BlockSizes::DEFAULT);
    // The header is recycled (PostgreSQL keeps deleted contexts for reuse)...
    assert_eq!(
        address_of(new),
        old_addr,
        "expected the header to be recycled"
    );
    // ...but it is a different context: new id, the old handle is stale and unequal.
    assert_ne!(new.id(), old_id);
    assert!(new.id() > old_id);
    assert!(!old.is_alive());
    assert!(new.is_alive());
    assert_ne!(old, new);
    let msg = expect_panic(|| old.reset());
    assert!(
        msg.starts_with("memory context \"first\" used after it was deleted"),
        "{msg}"
    );
    // The recycled context is clean: no ident, no children, only its keeper.
    assert_eq!(new.ident(), None);
    assert!(new.is_empty());
    assert_eq!(new.mem_allocated(false), DEFAULT_KEEPER);
    assert_eq!(new.name(), "second");
    assert_eq!(new.path(), vec!["TopMemoryContext", "second"]);
    new.delete();
}

/// The header address of a context, from its Debug output (`MemoryContext("name" @ 0x...)`).
fn address_of(ctx: MemoryContext) -> String {
    let dbg = format!("{ctx:?}");
    let at = dbg.find("@ ").expect("Debug shows the address") + 2;
    dbg[at..]
        .trim_end_matches(')')
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn recycling_does_not_leak_callbacks_or_pins() {
    let top = MemoryContext::top();
    let log: Log = Default::default();
    let a = top.new_child("a", BlockSizes::DEFAULT);
    a.register_reset_callback(log_to(&log, "a"));
    a.delete();
    assert_eq!(*log.borrow(), vec!["a"]);
    let b = top.new_child("b", BlockSizes::DEFAULT);
    assert_eq!(b.pin_count(), 0);
    b.delete();
    assert_eq!(*log.borrow(), vec!["a"], "a's callback must not run again");
}

#[test]
fn callbacks_resetting_or_deleting_their_own_context_get_busy() {
    let top = MemoryContext::top();
    let results: Rc<RefCell<Vec<Result<(), ContextError>>>> = Default::default();

    // From a reset callback.
    let ctx = top.new_child("busy", BlockSizes::DEFAULT);
    let kid = ctx.new_child("kid", BlockSizes::DEFAULT);
    {
        let results = results.clone();
        ctx.register_reset_callback(move || {
            results.borrow_mut().push(ctx.try_reset());
            results.borrow_mut().push(ctx.try_delete());
        });
    }
    ctx.reset();
    let busy = Err(ContextError::Busy { context: "busy" });
    assert_eq!(*results.borrow(), vec![busy.clone(), busy.clone()]);
    assert!(ctx.is_alive() && !kid.is_alive() && ctx.is_empty());

    // From a delete callback; also the parent's delete from the callback.
    results.borrow_mut().clear();
    let parent = top.new_child("parent", BlockSizes::DEFAULT);
    let child = parent.new_child("child", BlockSizes::DEFAULT);
    {
        let results = results.clone();
        child.register_reset_callback(move || {
            results.borrow_mut().push(child.try_reset());
            results.borrow_mut().push(parent.try_delete());
        });
    }
    child.delete();
    assert_eq!(
        *results.borrow(),
        vec![
            Err(ContextError::Busy { context: "child" }),
            Err(ContextError::Busy { context: "child" })
        ]
    );
    assert!(parent.is_alive() && !child.is_alive());
    let msg = expect_panic(|| {
        let c = parent.new_child("c2", BlockSizes::DEFAULT);
        c.register_reset_callback(move || c.reset());
        c.delete();
    });
    assert_eq!(
        msg,
        "memory context \"c2\" is being reset or deleted (called from its callback)"
    );
    parent.delete();
}

/// During an ancestor's delete, a descendant's callback deletes the descendant itself. The
/// descendant must not be deleted twice (its recycled header would be put on the recycle list
/// twice and handed out to two contexts at once).
#[test]
fn child_callback_deleting_its_own_context_during_parent_delete() {
    let top = MemoryContext::top();
    let parent = top.new_child("parent", BlockSizes::DEFAULT);
    let older = parent.new_child("older", BlockSizes::DEFAULT);
    let child = parent.new_child("child", BlockSizes::DEFAULT);
    let result: Rc<RefCell<Option<Result<(), ContextError>>>> = Default::default();
    {
        let result = result.clone();
        child.register_reset_callback(move || {
            *result.borrow_mut() = Some(child.try_delete());
        });
    }
    parent.delete();
    assert!(!parent.is_alive() && !older.is_alive() && !child.is_alive());

    // Every new context must get a header of its own.
    let fresh: Vec<MemoryContext> = (0..6)
        .map(|_| top.new_child("fresh", BlockSizes::DEFAULT))
        .collect();
    for (i, a) in fresh.iter().enumerate() {
        for b in &fresh[i + 1..] {
            assert_ne!(
                address_of(*a),
                address_of(*b),
                "two live contexts share one header"
            );
        }
    }
    for c in &fresh {
        c.delete();
    }
    assert!(
        matches!(*result.borrow(), Some(Err(ContextError::Busy { .. }))),
        "deleting a context from its own callback during its parent's delete: {:?}",
        result.borrow()
    );
}

/// During `reset_children`, a grandchild's callback deletes the grandchild. Its siblings must
/// still be reset.
#[test]
fn reset_children_with_a_grandchild_deleting_itself_resets_its_siblings() {
    let top = MemoryContext::top();
    let p = top.new_child("P", BlockSizes::DEFAULT);
    let b = p.new_child("B", BlockSizes::DEFAULT);
    let g2 = b.new_child("G2", BlockSizes::DEFAULT);
    let g1 = b.new_child("G1", BlockSizes::DEFAULT); // newest: visited first
    alloc_some(g2, 10, 100);
    g1.register_reset_callback(move || {
        let _ = g1.try_delete();
    });
    p.reset_children();
    assert!(g2.is_alive());
    assert!(
        g2.is_empty(),
        "G2 was not reset: reset_children followed G1's stale sibling link"
    );
    p.delete();
}

#[test]
fn callbacks_creating_children_during_delete_do_not_leak() {
    let top = MemoryContext::top();
    let before = top.mem_allocated(true);
    let created: Rc<RefCell<Vec<MemoryContext>>> = Default::default();
    let log: Log = Default::default();

    let p = top.new_child("P", BlockSizes::DEFAULT);
    let a = p.new_child("A", BlockSizes::DEFAULT);
    {
        // A's callback creates a child of A, whose own callback creates a child of P.
        let created = created.clone();
        let log = log.clone();
        a.register_reset_callback(move || {
            let late = a.new_child("late child of A", BlockSizes::DEFAULT);
            alloc_some(late, 5, 3000);
            let log2 = log.clone();
            let created2 = created.clone();
            late.register_reset_callback(move || {
                log2.borrow_mut().push("late".to_owned());
                let later = p.new_child("late child of P", BlockSizes::DEFAULT);
                created2.borrow_mut().push(later);
            });
            created.borrow_mut().push(late);
        });
    }
    {
        // P's own callback creates a child of P too.
        let created = created.clone();
        p.register_reset_callback(move || {
            let c = p.new_child("child from P's callback", BlockSizes::DEFAULT);
            alloc_some(c, 3, 20_000);
            created.borrow_mut().push(c);
        });
    }
    p.delete();

    assert_eq!(created.borrow().len(), 3);
    for c in created.borrow().iter() {
        assert!(!c.is_alive(), "{} survived its parent's delete", c.name());
    }
    assert_eq!(*log.borrow(), vec!["late"]);
    assert!(!p.is_alive() && !a.is_alive());
    assert_eq!(top.mem_allocated(true), before);
    assert!(top.children().iter().all(|c| c.name() != "P"));
}

#[test]
fn callbacks_creating_children_during_reset_do_not_leak() {
    let top = MemoryContext::top();
    let ctx = top.new_child("R", BlockSizes::DEFAULT);
    let made: Rc<RefCell<Option<MemoryContext>>> = Default::default();
    {
        let made = made.clone();
        ctx.register_reset_callback(move || {
            *made.borrow_mut() = Some(ctx.new_child("made during reset", BlockSizes::DEFAULT));
        });
    }
    ctx.reset();
    let made = made.borrow().expect("callback ran");
    // Either the child is deleted by the reset or it survives as an ordinary child; it must
    // never be lost from the tree.
    if made.is_alive() {
        assert_eq!(ctx.children(), vec![made]);
    }
    let before = top.mem_allocated(true);
    let had_child = made.is_alive();
    ctx.delete();
    assert!(!made.is_alive());
    assert_eq!(
        top.mem_allocated(true),
        before - DEFAULT_KEEPER * if had_child { 2 } else { 1 }
    );
}

#[test]
fn each_thread_has_its_own_top() {
    let main_top = MemoryContext::top();
    let main_id = main_top.id();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let top = MemoryContext::top();
                assert_eq!(top.name(), "TopMemoryContext");
                assert_eq!(MemoryContext::current(), top);
                assert_eq!(top.parent(), None);
                let c = top.new_child("per-thread", BlockSizes::DEFAULT);
                alloc_some(c, 100, 64 + i);
                let p = memctx::palloc(10);
                let owner = unsafe { memctx::chunk_context(p) };
                assert_eq!(owner, top);
                // SAFETY: a live chunk of this thread's Top, freed once.
                unsafe { memctx::pfree(p) };
                let id = top.id();
                // Calling top() again on the same thread gives the same context.
                assert_eq!(MemoryContext::top().id(), id);
                c.delete();
                id
            })
        })
        .collect();
    let mut ids: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ids.push(main_id);
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "every thread has a distinct Top");
    assert_eq!(MemoryContext::top().id(), main_id);
}

/// Depth of the deep-tree tests: deep enough that a recursive walk would overflow a thread's
/// stack natively; under Valgrind (`valgrind/memcheck` sets `MEMCTX_UNDER_VALGRIND`), where each
/// context's block is a mapping of its own and every step runs about 30 times slower, 2,000.
fn deep() -> usize {
    if std::env::var_os("MEMCTX_UNDER_VALGRIND").is_some() {
        2_000
    } else {
        10_000
    }
}

fn deep_chain(depth: usize) -> (MemoryContext, MemoryContext) {
    let root = MemoryContext::top().new_child("deep root", BlockSizes::SMALL);
    let mut leaf = root;
    for _ in 0..depth {
        leaf = leaf.new_child("deep", BlockSizes::SMALL);
    }
    (root, leaf)
}

#[test]
fn a_deep_tree_deletes_without_overflowing_the_stack() {
    let top = MemoryContext::top();
    let before = top.mem_allocated(false);
    let (root, leaf) = deep_chain(deep());
    assert_eq!(leaf.path().len(), deep() + 2);
    let _ = leaf.alloc(100);
    root.delete();
    assert!(!leaf.is_alive() && !root.is_alive());
    assert_eq!(top.mem_allocated(false), before);
    assert!(top.children().is_empty());

    // reset and delete_children of a deep tree too.
    let (root, leaf) = deep_chain(deep());
    root.delete_children();
    assert!(!leaf.is_alive() && root.children().is_empty());
    let (root2, leaf) = deep_chain(deep());
    root2.reset();
    assert!(!leaf.is_alive() && root2.is_empty());
    root.delete();
    root2.delete();
}

#[test]
fn a_deep_tree_resets_children_and_sets_parent() {
    let (root, leaf) = deep_chain(deep());
    let _ = leaf.alloc(100);
    root.reset_children();
    assert!(leaf.is_alive() && leaf.is_empty());
    let other = MemoryContext::top().new_child("other", BlockSizes::SMALL);
    // Cycle check walks every ancestor of the deep chain.
    assert!(matches!(
        root.try_set_parent(leaf),
        Err(ContextError::WouldCycle { .. })
    ));
    root.set_parent(other);
    assert_eq!(leaf.path().len(), deep() + 3);
    other.delete();
    assert!(!leaf.is_alive());
}

/// Runs `body` in a child process (this test binary, filtered to `test_name`): for tests whose
/// failure mode is a stack overflow or a corrupted tree, which must not take the other tests down.
fn isolated(test_name: &str, body: impl FnOnce()) {
    if std::env::var("MEMCTX_ISOLATED").as_deref() == Ok(test_name) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--test-threads=1", "--nocapture"])
        .env("MEMCTX_ISOLATED", test_name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child process failed ({}):\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

/// `mem_allocated(true)` and `stats()` walk the subtree: at the depth of `deep()` they must not overflow
/// the stack of an ordinary (2 MiB) test thread.
#[test]
fn a_deep_tree_reports_memory_and_stats() {
    isolated("a_deep_tree_reports_memory_and_stats", || {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let (root, leaf) = deep_chain(deep());
                let _ = leaf.alloc(100);
                let keeper = root.mem_allocated(false);
                assert_eq!(root.mem_allocated(true), keeper * (deep() + 1));
                let stats = root.stats();
                let total = stats.total();
                assert_eq!(total.total_nblocks, deep() as u64 + 1);
                let text = memctx::format_stats(&stats, &Default::default());
                assert!(text.ends_with(&format!(
                    "Grand total: {} bytes in {} blocks; {} free ({} chunks); {} used\n",
                    total.total_bytes,
                    deep() + 1,
                    total.free_bytes,
                    total.free_chunks,
                    total.used_bytes()
                )));
                drop(stats);
                root.delete();
            })
            .unwrap()
            .join()
            .unwrap();
    });
}

/// A reset callback that runs a nested tree operation on its own context (delete-children,
/// reset-children) must leave the context marked busy: pinning it afterwards, still inside the
/// callback, must be refused — otherwise the pinned memory is freed by the reset that follows.
#[test]
fn nested_tree_operations_in_a_callback_keep_the_context_busy() {
    let top = MemoryContext::top();
    let ctx = top.new_child("busy", BlockSizes::DEFAULT);
    let pin_refused: Rc<RefCell<Vec<bool>>> = Default::default();
    {
        let pin_refused = pin_refused.clone();
        ctx.register_reset_callback(move || {
            let _ = ctx.try_delete_children();
            let _ = ctx.try_reset_children();
            let pinned = catch_unwind(AssertUnwindSafe(|| ctx.pin()));
            // Drop a pin that should not exist before the reset frees the memory.
            pin_refused.borrow_mut().push(pinned.is_err());
        });
    }
    let _ = ctx.alloc(100);
    ctx.reset();
    assert_eq!(
        *pin_refused.borrow(),
        vec![true],
        "pin() succeeded during a reset"
    );
    assert!(ctx.is_empty());
    ctx.delete();
}

/// During an ancestor's delete, a descendant's callback moves the descendant out of the subtree
/// being deleted. The delete must neither wander into the rest of the tree (deleting unrelated
/// contexts, even Top) nor delete anything twice.
#[test]
fn set_parent_from_a_callback_during_an_ancestors_delete() {
    isolated(
        "set_parent_from_a_callback_during_an_ancestors_delete",
        || {
            let top = MemoryContext::top();
            let bystander = top.new_child("bystander", BlockSizes::DEFAULT);
            let p = top.new_child("P", BlockSizes::DEFAULT);
            let a = p.new_child("A", BlockSizes::DEFAULT);
            let result: Rc<RefCell<Option<Result<(), ContextError>>>> = Default::default();
            {
                let result = result.clone();
                a.register_reset_callback(move || {
                    *result.borrow_mut() = Some(a.try_set_parent(MemoryContext::top()));
                });
            }
            p.delete();
            assert!(top.is_alive(), "TopMemoryContext was deleted");
            assert!(bystander.is_alive(), "an unrelated context was deleted");
            assert!(!p.is_alive());
            assert!(
                matches!(*result.borrow(), Some(Err(ContextError::Busy { .. }))),
                "set_parent out of a subtree being deleted: {:?}",
                result.borrow()
            );
            bystander.delete();
        },
    );
}

/// During a delete, a callback moves a *pinned* context into the subtree being deleted. The pin
/// must protect it (the move refused), or the delete frees memory safe code still borrows.
#[test]
fn set_parent_of_a_pinned_context_into_a_subtree_being_deleted() {
    isolated(
        "set_parent_of_a_pinned_context_into_a_subtree_being_deleted",
        || {
            let top = MemoryContext::top();
            let q = top.new_child("Q", BlockSizes::DEFAULT);
            let pinned = q.pin();
            let mut v: allocator_api2::vec::Vec<u64, _> = allocator_api2::vec::Vec::new_in(&pinned);
            v.extend(0..1000u64);
            let p = top.new_child("P", BlockSizes::DEFAULT);
            let a = p.new_child("A", BlockSizes::DEFAULT);
            let result: Rc<RefCell<Option<Result<(), ContextError>>>> = Default::default();
            {
                let result = result.clone();
                a.register_reset_callback(move || {
                    *result.borrow_mut() = Some(q.try_set_parent(p));
                });
            }
            let deleted = p.try_delete();
            if !q.is_alive() {
                // The bug: Q's memory is gone under `v`. Do not touch it.
                std::mem::forget(v);
                std::mem::forget(pinned);
                panic!(
                    "a pinned context was deleted (set_parent from a callback: {:?}, delete: \
                     {deleted:?})",
                    result.borrow()
                );
            }
            assert!(v.iter().copied().eq(0..1000u64));
            drop(v);
            drop(pinned);
            if q.parent() == Some(top) {
                assert!(!p.is_alive());
            } else {
                // The move happened and the delete was refused because of the pin.
                assert!(matches!(deleted, Err(ContextError::Pinned { .. })));
                p.delete();
            }
            if q.is_alive() {
                q.delete();
            }
        },
    );
}

/// A callback of a context being deleted switches CurrentMemoryContext into that context (and
/// leaves it there). After the delete, CurrentMemoryContext must not be the deleted context:
/// `current()` would hand out a live-looking handle to a recycled header, and palloc would
/// allocate into memory that belongs to whichever context reuses the header next.
#[test]
fn switching_into_a_context_from_its_delete_callback() {
    let top = MemoryContext::top();
    let p = top.new_child("P", BlockSizes::DEFAULT);
    let a = p.new_child("A", BlockSizes::DEFAULT);
    a.register_reset_callback(move || {
        memctx::switch_to(a);
    });
    let r = p.try_delete();
    let cur = MemoryContext::current();
    let path = cur.path();
    // Put things back before asserting, so a failure leaves the thread usable.
    memctx::switch_to(top);
    assert_eq!(
        path.first(),
        Some(&"TopMemoryContext"),
        "CurrentMemoryContext is a deleted context ({:?}, delete returned {r:?})",
        path
    );
    assert!(!a.is_alive());
    if p.is_alive() {
        p.delete();
    }
}

/// SMALL and START_SMALL share a keeper size, so they share a recycle list: a recycled header
/// must take the chunk limit of the sizes it is recreated with.
#[test]
fn recycled_contexts_take_their_new_block_sizes() {
    let top = MemoryContext::top();
    // START_SMALL's chunk limit is 8 KiB: a 2 KiB chunk is a freelist chunk, kept on pfree.
    // SMALL's is 1 KiB: a 2 KiB chunk has a block of its own, returned on pfree.
    let keeps_2k_block = |ctx: MemoryContext| {
        let p = ctx.alloc(2048).as_ptr();
        let with = ctx.mem_allocated(false);
        unsafe { memctx::pfree(p) };
        ctx.mem_allocated(false) == with
    };
    let a = top.new_child("start small", BlockSizes::START_SMALL);
    assert!(keeps_2k_block(a));
    let addr = address_of(a);
    a.delete();
    let b = top.new_child("small", BlockSizes::SMALL);
    assert_eq!(address_of(b), addr, "expected the header to be recycled");
    assert!(!keeps_2k_block(b), "SMALL took START_SMALL's chunk limit");
    b.delete();
    let c = top.new_child("start small again", BlockSizes::START_SMALL);
    assert_eq!(address_of(c), addr);
    assert!(keeps_2k_block(c), "START_SMALL took SMALL's chunk limit");
    c.delete();
}

/// A thread's tree is not freed at thread exit: another thread-local's destructor that runs
/// later may still read and free context memory, and allocate.
#[test]
fn thread_local_destructors_may_use_context_memory_after_the_thread_ends() {
    isolated(
        "thread_local_destructors_may_use_context_memory_after_the_thread_ends",
        || {
            struct Late(Option<(MemoryContext, *mut u8)>);
            impl Drop for Late {
                fn drop(&mut self) {
                    let Some((ctx, p)) = self.0.take() else {
                        return;
                    };
                    let ok = unsafe { std::slice::from_raw_parts(p, 64) }
                        .iter()
                        .all(|&b| b == 42);
                    if !ok {
                        eprintln!("context memory was freed before a thread-local destructor");
                        std::process::abort();
                    }
                    let q = memctx::palloc(100);
                    unsafe {
                        q.write_bytes(1, 100);
                        memctx::pfree(q);
                        memctx::pfree(p);
                    }
                    let _ = ctx.alloc(10);
                    ctx.reset();
                }
            }
            thread_local! {
                static LATE: RefCell<Late> = const { RefCell::new(Late(None)) };
            }
            std::thread::spawn(|| {
                // Registered before memctx's own thread-locals, so destroyed after them.
                LATE.with(|_| ());
                let ctx = MemoryContext::top().new_child("held by a TLS", BlockSizes::DEFAULT);
                let p = ctx.alloc(64).as_ptr();
                unsafe { p.write_bytes(42, 64) };
                LATE.with(|l| l.borrow_mut().0 = Some((ctx, p)));
            })
            .join()
            .unwrap();
        },
    );
}
