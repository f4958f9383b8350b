//! memctx demo: the memory of a toy database backend, PostgreSQL style — with a leak to find.
//!
//! ```text
//! cargo run --release --example demo [-- [DIR] [--queries N] [--interval-ms MS]]
//! ```
//!
//! (`bash ci/demo` runs the first form.) It builds the context tree a PostgreSQL backend has while
//! it executes queries,
//!
//! ```text
//! TopMemoryContext
//!   CacheMemoryContext        long-lived: the relation cache and a plan cache (never reset)
//!     relation info: <name>   one small child per cached relation, named by its identifier
//!   TopTransactionContext     lives as long as the transaction: reset at commit
//!   MessageContext            the query string of the current message: reset per message
//!   ReorderBuffer             the changes of recent queries, kept for a while (decoding)
//!     Tuples                  a Generation context: changes queued in order, oldest freed first
//!   PortalContext             the running query: deleted when it ends
//!     ExecutorState           executor state for the query
//!       TupleSort main        the ORDER BY's sort state
//!         Caller tuples       a Bump context: the tuples being sorted, freed all at once
//!       ExprContext           per-row memory, reset after every row
//! ```
//!
//! Three context kinds, each where PostgreSQL 17 uses it: AllocSets for most contexts, a Bump
//! context for the sort's tuples (as `tuplesort.c` does: sort tuples are never freed one by one),
//! and a Generation context for the queue of changes (as the reorder buffer's `Tuples`: freed in
//! about the order they were allocated, so its blocks empty and are reused). The demo prints which
//! context is of which kind after the first tree.
//!
//! and runs a session of `N` queries (default 200) of 1,000 rows each. It prints the tree in
//! PostgreSQL's `MemoryContextStats` format at the end of the first query and after the last one.
//!
//! **The planted leak.** After each query the backend keeps the query's plan in
//! CacheMemoryContext for reuse ([`PlanCache::remember`]) and forgets to free the plan it replaces:
//! about 1 KiB per query stays behind in a context that is never reset — the article's first bug
//! class, "not freeing in a long-lived context".
//!
//! **Finding it.** A [`memctx::dump::Dumper`] writes a snapshot of every thread's tree into `DIR`
//! (default `./memctx-snapshots`) every 20 queries — or every `MS` milliseconds of wall-clock time
//! with `--interval-ms`, as a server would run it — and on `SIGUSR1` (`kill -USR1 PID` while a
//! long session runs). The snapshots are taken by the backend thread itself at its safe points
//! (here, every row's reset). Then `memctx diff DIR` names the growing context; in the debug build
//! (`--features debug-contexts`) the snapshots carry per-site attribution, and the demo prints the
//! sites of CacheMemoryContext at the end: the file and line of the leak. See the README's
//! walkthrough.

use core::ffi::CStr;
use core::fmt::Write as _;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use allocator_api2::vec::Vec as PVec;
use hashbrown::HashMap;
use memctx::dump::{Dumper, DumperConfig};
use memctx::stats::PrintOptions;
use memctx::{BlockSizes, MemoryContext, PString, PinnedContext};

/// Rows each query produces.
const ROWS_PER_QUERY: u64 = 1_000;
/// Queries in the session unless `--queries` says otherwise.
const DEFAULT_QUERIES: u64 = 200;
/// Without `--interval-ms`, a snapshot every this many queries.
const SNAPSHOT_EVERY: u64 = 20;
/// Bytes of a cached plan (the plan tree; the query text is stored after it).
const PLAN_SIZE: usize = 896;

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

/// The aggregate's groups: a hashbrown map in ExecutorState from customer to sum(amount).
type Groups<'a> =
    HashMap<PString<&'a PinnedContext>, i64, hashbrown::DefaultHashBuilder, &'a PinnedContext>;

/// The command line.
struct Args {
    dir: PathBuf,
    queries: u64,
    interval: Option<Duration>,
}

fn parse_args() -> Args {
    let usage = "usage: demo [DIR] [--queries N] [--interval-ms MS]\n\
                 \x20 DIR             where snapshots go (default ./memctx-snapshots)\n\
                 \x20 --queries N     queries in the session (default 200)\n\
                 \x20 --interval-ms MS  a snapshot every MS ms instead of every 20 queries";
    let fail = |msg: &str| -> ! {
        eprintln!("demo: {msg}\n{usage}");
        std::process::exit(2)
    };
    let mut args = Args {
        dir: PathBuf::from("memctx-snapshots"),
        queries: DEFAULT_QUERIES,
        interval: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |flag: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| fail(&format!("{flag} needs a positive number")))
        };
        match a.as_str() {
            "--queries" => args.queries = number("--queries"),
            "--interval-ms" => {
                args.interval = Some(Duration::from_millis(number("--interval-ms")));
            }
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => fail(&format!("unknown option {s}")),
            s => args.dir = PathBuf::from(s),
        }
    }
    args
}

fn main() {
    // In the debug build, memctx's reports go to `log` (target `memctx`, error level), shown
    // unless RUST_LOG filters them out (`RUST_LOG=memctx=off`).
    env_logger::init();
    let args = parse_args();
    let top = MemoryContext::top();

    // Long-lived memory: the relation cache. A pinned context is the safe API's allocator; while
    // `cache_mem` lives, CacheMemoryContext (and its ancestors) cannot be reset or deleted.
    let cache = top.new_child("CacheMemoryContext", BlockSizes::DEFAULT);
    let cache_mem = cache.pin();
    let relcache = build_relcache(cache, &cache_mem);
    let orders = &relcache["orders"];
    let columns: Vec<&str> = orders.columns.iter().map(|c| c.as_str()).collect();
    println!("relation orders: oid {}, columns {columns:?}", orders.oid);

    // Snapshots of the running backend, into a directory of their own.
    let dumper = start_dumper(&args);
    println!(
        "pid {}: snapshots go to {} ({}; `kill -USR1 {}` asks for one more)\n",
        std::process::id(),
        args.dir.display(),
        match args.interval {
            Some(d) => format!("every {} ms", d.as_millis()),
            None => format!("every {SNAPSHOT_EVERY} queries"),
        },
        std::process::id()
    );

    // Per-transaction and per-message memory, as a backend sets them up.
    let transaction = top.new_child("TopTransactionContext", BlockSizes::DEFAULT);
    let message = top.new_child("MessageContext", BlockSizes::DEFAULT);
    let mut changes = ChangeQueue::new(top);
    let mut plans = PlanCache {
        cache,
        last_plan: core::ptr::null_mut(),
    };

    let mut rows = 0;
    for q in 0..args.queries {
        // The client's message: the query string, copied into MessageContext by C-style code
        // that allocates in CurrentMemoryContext (pstrdup); the guard switches back on drop.
        let threshold = (q * 37) % 900;
        let query = {
            let _guard = message.switch_to();
            memctx::pstrdup(&format!(
                "SELECT customer, sum(amount) FROM orders WHERE amount > {threshold} \
                 GROUP BY customer ORDER BY 2 DESC"
            ))
        };
        // SAFETY: `query` is a NUL-terminated string in MessageContext, alive until its reset.
        let query_text = unsafe { CStr::from_ptr(query.cast()) };

        // The transaction's state lives in TopTransactionContext until commit.
        let xact = transaction.alloc(512);
        // SAFETY: 512 fresh bytes of TopTransactionContext.
        unsafe { xact.as_ptr().write_bytes(0, 512) };

        // The portal running the query, its executor state and the per-row expression context.
        let portal = top.new_child("PortalContext", BlockSizes::DEFAULT);
        let executor = portal.new_child("ExecutorState", BlockSizes::DEFAULT);
        let per_row = executor.new_child("ExprContext", BlockSizes::DEFAULT);
        let (n, ngroups, total, first) = run_query(executor, per_row, &relcache, threshold as i64);
        rows += n;
        changes.push_query(q, total);
        if q == 0 {
            println!("query: {}", query_text.to_string_lossy());
            println!("{n} rows in {ngroups} groups, sum(amount) = {total}, first: {first}\n");
            print_tree("at the end of the first query (portal still open)", top);
            print_kinds(top);
        }

        // Keep the plan for reuse (this is where the leak is).
        plans.remember(query_text);

        // End of query: one delete frees PortalContext, ExecutorState and ExprContext together;
        // commit resets TopTransactionContext; the next message resets MessageContext (`query`
        // dangles after that, like any raw pointer into a reset context).
        portal.delete();
        transaction.reset();
        message.reset();

        if args.interval.is_none() && (q + 1) % SNAPSHOT_EVERY == 0 {
            if let Err(e) = dumper.dump_now() {
                eprintln!("demo: snapshot failed: {e}");
            }
        }
    }
    if args.interval.is_some() || args.queries % SNAPSHOT_EVERY != 0 {
        // One last snapshot, of the end of the session.
        if let Err(e) = dumper.dump_now() {
            eprintln!("demo: snapshot failed: {e}");
        }
    }
    println!("{} queries, {rows} rows\n", args.queries);
    print_tree(&format!("after {} queries", args.queries), top);

    // The debug build records every chunk's allocation site: ask CacheMemoryContext who holds its
    // memory.
    let sites = cache.sites(true, 3);
    if sites.is_empty() {
        println!(
            "(per-site attribution needs the debug build: \
             cargo run --features debug-contexts --example demo)"
        );
    } else {
        println!("CacheMemoryContext by allocation site (largest first, 3 frames each):");
        for site in &sites {
            let mut site = site.clone();
            site.frames.truncate(3);
            print!("{site}");
        }
    }

    let written = dumper.written();
    dumper.stop();
    println!(
        "\n{written} snapshot{} in {}; compare them with\n  \
         cargo run --features cli --bin memctx -- diff {}",
        if written == 1 { "" } else { "s" },
        args.dir.display(),
        args.dir.display()
    );

    // The caches outlive the session. Dropping the map and then the pin makes the context
    // freeable again (locals drop in reverse order, so this happens at the end of `main` anyway).
    drop(relcache);
    drop(cache_mem);
}

/// Starts the dumper: into `args.dir` (emptied of an earlier run's snapshots, so the directory
/// holds one series), on SIGUSR1, and every `args.interval` if one was given.
fn start_dumper(args: &Args) -> Dumper {
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("demo: {what} {}: {e}", args.dir.display());
        std::process::exit(1)
    };
    if args.dir.is_dir() {
        let old =
            memctx::snapshot::list_snapshots(&args.dir).unwrap_or_else(|e| fail("listing", e));
        for (_, path) in &old {
            std::fs::remove_file(path).unwrap_or_else(|e| fail("cleaning", e));
        }
        if !old.is_empty() {
            println!("removed {} snapshots of an earlier run", old.len());
        }
    }
    let mut config = DumperConfig::new(&args.dir)
        .with_signal()
        .deadline(Duration::from_secs(5));
    if let Some(interval) = args.interval {
        config = config.interval(interval);
    }
    Dumper::start(config).unwrap_or_else(|e| fail("cannot write snapshots to", e))
}

/// Plans of executed queries, kept in CacheMemoryContext so that the next execution of the same
/// query could skip planning.
struct PlanCache {
    cache: MemoryContext,
    /// The plan of the last query.
    last_plan: *mut u8,
}

impl PlanCache {
    /// Keeps the plan of `query` (a plan tree of `PLAN_SIZE` bytes followed by the query text) in
    /// CacheMemoryContext, replacing the previous plan.
    ///
    /// THE PLANTED LEAK: the plan being replaced should be given back with
    /// `unsafe { memctx::pfree(self.last_plan) }` first. Without it every query leaves its plan
    /// behind in a context that is never reset.
    fn remember(&mut self, query: &CStr) {
        let text = query.to_bytes_with_nul();
        let plan = self.cache.alloc(PLAN_SIZE + text.len()).as_ptr();
        // SAFETY: `plan` has room for the plan tree and the text.
        unsafe {
            plan.write_bytes(0, PLAN_SIZE);
            plan.add(PLAN_SIZE)
                .copy_from_nonoverlapping(text.as_ptr(), text.len());
        }
        self.last_plan = plan; // the old plan is lost here
    }
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

/// Runs the toy query `SELECT customer, sum(amount) FROM orders WHERE amount > threshold GROUP BY
/// customer ORDER BY 2 DESC` over `ROWS_PER_QUERY` generated rows, evaluating each row in the
/// per-row context, aggregating in ExecutorState and sorting the groups ([`sort_groups`]). Returns
/// the number of rows, the number of groups, the sum of `amount` and the first customer.
fn run_query(
    executor: MemoryContext,
    per_row: MemoryContext,
    relcache: &RelCache,
    threshold: i64,
) -> (u64, usize, i64, String) {
    let orders = &relcache["orders"];
    let ncolumns = orders.columns.len();
    assert_eq!(orders.columns[2].as_str(), "amount");

    // The aggregate's state lives as long as the query: a map in ExecutorState.
    let exec_mem = executor.pin();
    let mut groups: Groups = HashMap::new_in(&exec_mem);

    let mut total = 0i64;
    for row in 0..ROWS_PER_QUERY {
        // `scope` makes ExprContext current and pinned for the closure, then resets it: whatever
        // the row allocated is gone before the next row, however it was allocated.
        per_row.scope(|mem| {
            // The row's tuple: a Vec of values in ExprContext (safe API).
            let mut tuple: PVec<i64, _> = PVec::with_capacity_in(ncolumns, mem);
            tuple.extend([row as i64, (row % 97) as i64, (row % 1000) as i64 + 1, 0]);
            let amount = tuple[2];
            if amount <= threshold {
                return;
            }

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
    let first = sort_groups(executor, &groups);
    (ROWS_PER_QUERY, groups.len(), total, first)
}

/// A sort tuple: a group's sum and its key, copied into the sort's Bump context.
#[repr(C)]
struct SortTuple {
    sum: i64,
    key_len: usize,
    // The key's bytes follow.
}

/// `ORDER BY sum DESC` over the groups, as PostgreSQL 17's tuplesort does it: the sort state in
/// "TupleSort main", each group copied into a tuple of "Caller tuples", a Bump context (tuples are
/// never freed one by one, so a pointer bump is all an allocation costs), and the array of tuple
/// pointers sorted. The sort's contexts go with ExecutorState. Returns the first tuple's key.
fn sort_groups(executor: MemoryContext, groups: &Groups) -> String {
    let sort = executor.new_child("TupleSort main", BlockSizes::DEFAULT);
    let tuples = sort.new_bump_child("Caller tuples", BlockSizes::DEFAULT);
    let sort_mem = sort.pin();
    let mut array: PVec<*const SortTuple, _> = PVec::with_capacity_in(groups.len(), &sort_mem);
    for (key, &sum) in groups {
        let t = tuples.alloc(size_of::<SortTuple>() + key.len()).as_ptr() as *mut SortTuple;
        // SAFETY: `t` has room for the tuple and its key, and is 16-aligned.
        unsafe {
            t.write(SortTuple {
                sum,
                key_len: key.len(),
            });
            (t.add(1) as *mut u8).copy_from_nonoverlapping(key.as_ptr(), key.len());
        }
        array.push(t);
    }
    // SAFETY: every pointer is a tuple written above, alive until ExecutorState goes.
    array.sort_by_key(|&t| core::cmp::Reverse(unsafe { (*t).sum }));
    let first = array.first().map(|&t| {
        // SAFETY: as above; the key's bytes follow the tuple.
        let key = unsafe { core::slice::from_raw_parts(t.add(1) as *const u8, (*t).key_len) };
        String::from_utf8_lossy(key).into_owned()
    });
    first.unwrap_or_default()
}

/// Changes a query made, kept in order until they are old enough to go — the shape of
/// PostgreSQL's reorder buffer, whose `Tuples` context is a Generation context: chunks allocated
/// in order and freed oldest first, so a block whose chunks are all freed is reused whole.
struct ChangeQueue {
    tuples: MemoryContext,
    queue: VecDeque<*mut u8>,
}

/// Changes a query queues: one per group it produced.
const CHANGES_PER_QUERY: u64 = 32;
/// Changes the queue holds before it frees the oldest: those of the last four queries.
const CHANGES_KEPT: usize = 4 * CHANGES_PER_QUERY as usize;

impl ChangeQueue {
    /// "ReorderBuffer" under `top`, with its Generation context "Tuples".
    fn new(top: MemoryContext) -> ChangeQueue {
        let buffer = top.new_child("ReorderBuffer", BlockSizes::DEFAULT);
        ChangeQueue {
            tuples: buffer.new_generation_child("Tuples", BlockSizes::DEFAULT),
            queue: VecDeque::new(),
        }
    }

    /// Queues the changes of query `q` (records whose sizes vary) and frees the oldest changes
    /// beyond [`CHANGES_KEPT`].
    fn push_query(&mut self, q: u64, total: i64) {
        for i in 0..CHANGES_PER_QUERY {
            self.push(q * CHANGES_PER_QUERY + i, total);
        }
    }

    /// Queues change number `n` and frees the oldest change beyond [`CHANGES_KEPT`].
    fn push(&mut self, n: u64, total: i64) {
        let size = 64 + (n as usize * 53) % 400;
        let change = self.tuples.alloc(size).as_ptr();
        // SAFETY: `change` has `size` bytes, room for the record's two words.
        unsafe {
            change.write_bytes(0, size);
            (change as *mut [u64; 2]).write([n, total as u64]);
        }
        self.queue.push_back(change);
        if self.queue.len() > CHANGES_KEPT {
            let oldest = self.queue.pop_front().expect("more than CHANGES_KEPT");
            // SAFETY: a live chunk of `tuples`, freed once.
            unsafe { memctx::pfree(oldest) };
        }
    }
}

/// Prints which context of the tree under `top` is of which kind, as `pg_backend_memory_contexts`
/// shows it in its `type` column: the contexts that are not AllocSets by name, the AllocSets
/// counted.
fn print_kinds(top: MemoryContext) {
    let mut others = Vec::new();
    let mut allocsets = 0;
    let tree = top.stats();
    let mut stack = vec![&tree];
    while let Some(node) = stack.pop() {
        if node.kind == "AllocSet" {
            allocsets += 1;
        } else {
            others.push(format!("{} ({})", node.name, node.kind));
        }
        stack.extend(&node.children);
    }
    others.sort();
    println!(
        "Context kinds: {}, and {allocsets} AllocSets\n",
        others.join(", ")
    );
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
