//! memctx demo: the memory of a toy database backend, PostgreSQL style.
//!
//! Run it with `cargo run --example demo` (or `bash ci/demo`). It builds the context tree a
//! PostgreSQL backend has while it executes a query,
//!
//! ```text
//! TopMemoryContext
//!   CacheMemoryContext        long-lived: the relation cache (never reset; leaks accumulate here)
//!     relation info: <name>   one small child per cached relation, named by its identifier
//!   TopTransactionContext     lives as long as the transaction
//!   MessageContext            the query string of the current message
//!   PortalContext             the running query
//!     ExecutorState           executor state for the query
//!       ExprContext           per-row memory, reset after every row
//! ```
//!
//! runs rows through the per-row ExprContext, prints the tree in PostgreSQL's
//! `MemoryContextStats` format, then drops the portal (one delete frees the whole subtree) and
//! prints the tree again.

use core::fmt::Write as _;

use allocator_api2::vec::Vec as PVec;
use hashbrown::HashMap;
use memctx::stats::PrintOptions;
use memctx::{BlockSizes, MemoryContext, PString, PinnedContext};

/// Rows the query produces.
const ROWS: u64 = 10_000;

/// The relations the backend has in its relation cache: name and column names.
const RELATIONS: &[(&str, &[&str])] = &[
    ("pg_class", &["oid", "relname", "relnamespace", "relkind"]),
    (
        "pg_attribute",
        &["attrelid", "attname", "atttypid", "attnum"],
    ),
    ("orders", &["order_id", "customer", "amount", "placed_at"]),
    ("customers", &["customer_id", "name", "country"]),
];

/// A relation cache entry. Its column names live in a context of its own, a child of
/// CacheMemoryContext (as PostgreSQL keeps a relation's index info or rules): deleting that
/// context drops the entry's memory in one go. The entry owns a pin on its context (inside the
/// `PinnedContext` allocator), so nothing can reset the context while the entry exists.
struct Relation {
    oid: u32,
    columns: PVec<PString<PinnedContext>, PinnedContext>,
}

/// The relation cache: a hashbrown map whose table and keys live in CacheMemoryContext.
type RelCache<'a> =
    HashMap<PString<&'a PinnedContext>, Relation, hashbrown::DefaultHashBuilder, &'a PinnedContext>;

fn main() {
    let top = MemoryContext::top();

    // Long-lived memory: the relation cache. A pinned context is the safe API's allocator; while
    // `cache_mem` lives, CacheMemoryContext (and its ancestors) cannot be reset or deleted.
    let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let cache_mem = cache.pin();
    let relcache = build_relcache(cache, &cache_mem);
    let orders = &relcache["orders"];
    let columns: Vec<&str> = orders.columns.iter().map(|c| c.as_str()).collect();
    println!("relation orders: oid {}, columns {columns:?}", orders.oid);

    // Per-transaction and per-message memory, as a backend sets them up for each query.
    let _transaction = top.new_child("TopTransactionContext", BlockSizes::DEFAULT);
    let message = top.new_child("MessageContext", BlockSizes::DEFAULT);
    let query = {
        // C-style code allocates in CurrentMemoryContext: switch to MessageContext, copy the
        // query string with pstrdup; the guard switches back when it drops.
        let _guard = message.switch_to();
        memctx::pstrdup("SELECT customer, sum(amount) FROM orders GROUP BY customer")
    };

    // The portal running the query, its executor state and the per-row expression context.
    let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
    let executor = portal.new_child("ExecutorState", BlockSizes::DEFAULT);
    let per_row = executor.new_child("ExprContext", BlockSizes::DEFAULT);

    // SAFETY: `query` is a NUL-terminated string in MessageContext, which is still alive.
    let query_text = unsafe { core::ffi::CStr::from_ptr(query.cast()) };
    println!("query: {}\n", query_text.to_string_lossy());

    let (rows, ngroups, total) = run_query(executor, per_row, &relcache);
    println!("{rows} rows in {ngroups} groups, sum(amount) = {total}\n");

    // End of query: one delete frees PortalContext, ExecutorState and ExprContext together.
    portal.delete();
    // A backend resets MessageContext before reading the next message; `query` dangles after
    // this, like any raw pointer into a reset context: it must not be read again.
    message.reset();
    print_tree("after the portal was deleted", top);

    // The cache outlives the query. Dropping the map and then the pin makes the context
    // freeable again (locals drop in reverse order, so this happens at the end of `main` anyway).
    drop(relcache);
    drop(cache_mem);
}

/// Fills the relation cache: one map entry per relation, each with a child context whose
/// identifier is the relation's name (printed after its stats line, as PostgreSQL prints it).
fn build_relcache<'a>(cache: MemoryContext, cache_mem: &'a PinnedContext) -> RelCache<'a> {
    let mut relcache = HashMap::new_in(cache_mem);
    for (oid, &(name, columns)) in (16384..).zip(RELATIONS) {
        let info = cache.new_child("relation info", BlockSizes::SMALL);
        info.set_ident(name);
        let info_mem = info.pin();
        let mut cols = PVec::with_capacity_in(columns.len(), info_mem.clone());
        for column in columns.iter() {
            cols.push(PString::from_str_in(column, info_mem.clone()));
        }
        let key = PString::from_str_in(name, cache_mem);
        relcache.insert(key, Relation { oid, columns: cols });
    }
    relcache
}

/// Runs the toy query `SELECT customer, sum(amount) FROM orders GROUP BY customer` over `ROWS`
/// generated rows, evaluating each row in the per-row context and aggregating in ExecutorState.
/// Prints the tree at the end of the query, while the portal is still open. Returns the number of
/// rows, the number of groups and the sum of `amount`.
fn run_query(
    executor: MemoryContext,
    per_row: MemoryContext,
    relcache: &RelCache,
) -> (u64, usize, i64) {
    let orders = &relcache["orders"];
    let ncolumns = orders.columns.len();
    assert_eq!(orders.columns[2].as_str(), "amount");

    // The aggregate's state lives as long as the query: a map in ExecutorState.
    let exec_mem = executor.pin();
    let mut groups = HashMap::new_in(&exec_mem);

    let mut total = 0i64;
    for row in 0..ROWS {
        // `scope` makes ExprContext current and pinned for the closure, then resets it: whatever
        // the row allocated is gone before the next row, however it was allocated.
        per_row.scope(|mem| {
            // The row's tuple: a Vec of values in ExprContext (safe API).
            let mut tuple: PVec<i64, _> = PVec::with_capacity_in(ncolumns, mem);
            tuple.extend([row as i64, (row % 97) as i64, (row % 1000) as i64 + 1, 0]);
            let amount = tuple[2];

            // The group key, built for the row as a string in ExprContext.
            let mut customer = PString::new_in(mem);
            write!(customer, "customer-{:03}", tuple[1]).unwrap();

            // Code written against the raw API (or C called through FFI) pallocs into
            // CurrentMemoryContext, which the scope made ExprContext. It is never pfree'd: the
            // reset at the end of the scope frees it, as in PostgreSQL.
            let detoasted = memctx::palloc(customer.len() + 64);
            // SAFETY: `detoasted` has room for the customer name and more.
            unsafe { detoasted.copy_from_nonoverlapping(customer.as_ptr(), customer.len()) };

            // Aggregate. A new group's key must outlive the row, so it is copied into
            // ExecutorState; the borrow checker would refuse to keep `customer` itself.
            match groups.get_mut(customer.as_str()) {
                Some(sum) => *sum += amount,
                None => {
                    groups.insert(PString::from_str_in(&customer, &exec_mem), amount);
                }
            }
            total += amount;
        });
    }

    print_tree(
        "at the end of the query (portal still open)",
        MemoryContext::top(),
    );
    (ROWS, groups.len(), total)
}

/// Prints the stats tree of `top` to stdout in PostgreSQL's `MemoryContextStats` format.
fn print_tree(when: &str, top: MemoryContext) {
    println!("Memory contexts {when}:");
    print!(
        "{}",
        memctx::format_stats(&top.stats(), &PrintOptions::default())
    );
    println!();
}
