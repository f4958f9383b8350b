//! A context's name and its ancestors', remembered as they were when it released memory.
//!
//! A report about memory a deleted context released names that context by its path from Top
//! ([`crate::debug::Report::context_path`]). Copying the path for every context a delete or reset
//! releases would make deleting a tree `depth` times dearer than the tree: a chain of 10,000
//! nested contexts would copy 50 million names. So a path is a shared list — each node a name and
//! its parent's node — and the nodes of live ancestors are kept per thread, keyed by the context
//! and its generation, so that naming a context reuses its parent's node: a delete names each
//! context of its subtree with one new node. Context names are `&'static str`, and a context's
//! parent changes only by `set_parent`, which forgets every kept node ([`context_moved`]).

use core::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::context::ContextHeader;

/// A context's name, and its parent's lineage (none for Top).
pub(crate) struct Lineage {
    name: &'static str,
    parent: Option<Rc<Lineage>>,
}

impl Lineage {
    /// The context's own name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Names from Top down to the context.
    pub(crate) fn path(&self) -> Vec<String> {
        let mut path = Vec::new();
        let mut node = Some(self);
        while let Some(n) = node {
            path.push(n.name.to_owned());
            node = n.parent.as_deref();
        }
        path.reverse();
        path
    }
}

impl Drop for Lineage {
    /// Drops the chain above iteratively: a recursive drop of a 10,000-deep chain could overflow
    /// the stack.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(rc) = next {
            next = match Rc::try_unwrap(rc) {
                Ok(mut node) => node.parent.take(),
                Err(_) => None,
            };
        }
    }
}

thread_local! {
    /// Nodes of contexts named so far (ancestors of the ones that released memory), by address,
    /// with the generation they had.
    static KEPT: RefCell<HashMap<usize, (u64, Rc<Lineage>)>> = RefCell::new(HashMap::new());
}

/// The lineage of `ctx` as it is now. `dying`: `ctx` is being deleted, so its node is not kept.
///
/// # Safety
/// `ctx` must be a live context (and so its ancestors).
pub(crate) unsafe fn of(ctx: *mut ContextHeader, dying: bool) -> Rc<Lineage> {
    KEPT.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        // SAFETY: `ctx` is live (caller), and so are its ancestors, which `node_of` walks.
        let node = unsafe { node_of(&mut kept, ctx) };
        if dying {
            kept.remove(&(ctx as usize));
        }
        node
    })
    // SAFETY: as above; at thread exit the kept nodes are gone, so the walk starts afresh.
    .unwrap_or_else(|_| unsafe { node_of(&mut HashMap::new(), ctx) })
}

/// A context moved to another parent: the paths of its subtree changed.
pub(crate) fn context_moved() {
    let _ = KEPT.try_with(|kept| kept.borrow_mut().clear());
}

/// The kept node of `c`, if it is the same context (its generation unchanged).
///
/// # Safety
/// `c` must be a live context.
unsafe fn kept_node(
    kept: &HashMap<usize, (u64, Rc<Lineage>)>,
    c: *mut ContextHeader,
) -> Option<Rc<Lineage>> {
    let (generation, node) = kept.get(&(c as usize))?;
    // SAFETY: `c` is live (caller): headers are never freed, so its generation is readable.
    (*generation == unsafe { (*c).generation }).then(|| node.clone())
}

/// The node of `ctx`: its ancestors up to the nearest kept one get nodes (and are kept).
///
/// # Safety
/// `ctx` must be a live context.
unsafe fn node_of(
    kept: &mut HashMap<usize, (u64, Rc<Lineage>)>,
    ctx: *mut ContextHeader,
) -> Rc<Lineage> {
    // SAFETY: the ancestors of a live context are live, and Top's parent is null.
    unsafe {
        let mut missing = Vec::new();
        let mut c = ctx;
        let mut above = None;
        while !c.is_null() {
            if let Some(node) = kept_node(kept, c) {
                above = Some(node);
                break;
            }
            missing.push(c);
            c = (*c).parent;
        }
        for &c in missing.iter().rev() {
            let node = Rc::new(Lineage {
                name: (*c).name(),
                parent: above.take(),
            });
            kept.insert(c as usize, ((*c).generation, node.clone()));
            above = Some(node);
        }
        above.expect("a context has a lineage")
    }
}
