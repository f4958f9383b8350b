//! The quarantine: blocks a reset or delete released, kept back from the system and watched.
//!
//! A stale pointer into a context that was reset or deleted writes into memory the context no
//! longer owns. Given back to `malloc` at once, that memory is the system heap's, where nothing
//! can tell the write from the heap's own use. So in the debug build a block a reset releases
//! (any but the keeper) and every block of a deleted context stay memctx's for a while: filled with
//! the freed pattern, closed to Valgrind and ASan (a stale access is their error at the faulting
//! instruction), remembered with their chunks' ghosts (allocation and free stacks) and the context
//! they belonged to, name and path as they were. A quarantined block is verified when it leaves
//! the quarantine (the oldest go first once the thread holds more than the quarantine's size, see
//! [`super::set_quarantine`]), at [`crate::MemoryContext::check`], and at thread and process
//! exit. A finding when a block leaves is raised with the operation that evicted it; one at check
//! is raised by the check; one at exit is printed and ends the process with status
//! [`EXIT_STATUS`], since the test harness has decided its verdict by then.
//!
//! A deleted context's keeper block that goes onto a recycle list with its header (see
//! `context::delete_one`) cannot be quarantined: the next context of the same size takes it. It
//! is filled and remembered the same way, verified at check and exit while it waits, and — as a
//! keeper's released space — verified when the new context carves it, where a finding is
//! attributed to the deleted context, not to the innocent new one.
//!
//! The quarantine is per thread, as the block registry is.

use core::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Once;

use crate::chunk::Block;
use crate::context::ContextHeader;

use super::blocks::Ghost;
use super::layout::FREED_BYTE;
use super::lineage::{self, Lineage};
use super::report::{BugClass, Report};
use super::sanitizer;
use super::settings;
use super::verify;

/// Exit status of a process whose quarantine held damage at exit.
pub(crate) const EXIT_STATUS: i32 = 86;

/// Most reports one block gives (the rest of its damage is restored unreported).
const MAX_REPORTS_PER_BLOCK: usize = 8;

/// The context a released block belonged to, as it was.
pub(crate) struct Former {
    /// Its name and its ancestors'.
    lineage: Rc<Lineage>,
    /// What released the memory: `reset` or `delete`.
    pub(crate) op: &'static str,
}

impl Former {
    /// `ctx` as it is now, about to release memory by `op`.
    ///
    /// # Safety
    /// `ctx` must be a live context.
    pub(crate) unsafe fn of(ctx: *mut ContextHeader, op: &'static str) -> Rc<Former> {
        // SAFETY: `ctx` is live (caller), as `lineage::of` requires.
        let lineage = unsafe { lineage::of(ctx, op == "delete") };
        Rc::new(Former { lineage, op })
    }

    /// Its name.
    pub(crate) fn name(&self) -> &'static str {
        self.lineage.name()
    }

    /// Makes `r` name the context, and its path, as it was.
    pub(crate) fn name_in(&self, r: &mut Report) {
        r.context = self.name().to_owned();
        r.context_path = self.lineage.path();
    }
}

/// Released memory: a quarantined block, or a deleted context's recycled keeper.
struct Released {
    /// The block's first byte.
    start: usize,
    /// The first byte that holds the freed pattern: the block's first for a quarantined block,
    /// its first chunk's for a recycled keeper (whose header its context still uses).
    from: usize,
    /// One past its last byte.
    end: usize,
    /// Chunks it held when released.
    ghosts: Vec<Ghost>,
    /// Whose it was.
    former: Rc<Former>,
}

impl Released {
    fn len(&self) -> usize {
        self.end - self.start
    }

    /// The bytes that hold the freed pattern.
    fn pattern(&self) -> (*mut u8, usize) {
        (self.from as *mut u8, self.end - self.from)
    }
}

/// What the reset or delete under way releases: the ghosts of its blocks, read by the walk that
/// verified them, and its context (named lazily: a per-row reset usually quarantines nothing).
struct Stage {
    ctx: *mut ContextHeader,
    op: &'static str,
    ghosts: Vec<Ghost>,
    former: Option<Rc<Former>>,
}

/// A recycled keeper: verified as a whole only while no new context has taken it.
struct Recycled {
    memory: Released,
    taken: bool,
}

#[derive(Default)]
struct Quarantine {
    blocks: VecDeque<Released>,
    bytes: usize,
    stage: Option<Stage>,
    recycled: Vec<Recycled>,
    /// Blocks (start, size) the staged reset or delete gives back to the system once it is done.
    leaving: Vec<(usize, usize)>,
}

thread_local! {
    static QUARANTINE: RefCell<Quarantine> = RefCell::new(Quarantine::default());
}

/// Makes the main thread's quarantine verified at process exit too (a thread-local's destructor
/// is not guaranteed to run for the thread that calls `exit`).
static AT_EXIT: Once = Once::new();

extern "C" fn verify_at_process_exit() {
    let found = QUARANTINE
        .try_with(|q| q.borrow_mut().drain("process exit"))
        .unwrap_or_default();
    end_if_found(found);
}

/// A reset or delete of `ctx` starts releasing memory; `ghosts` are the chunks of all its blocks.
pub(crate) fn stage(ctx: *mut ContextHeader, op: &'static str, ghosts: Vec<Ghost>) {
    stage_named(ctx, op, ghosts, None);
}

/// [`stage`] with the context already named (a delete names it while it is still linked).
pub(crate) fn stage_named(
    ctx: *mut ContextHeader,
    op: &'static str,
    ghosts: Vec<Ghost>,
    former: Option<Rc<Former>>,
) {
    let _ = QUARANTINE.try_with(|q| {
        q.borrow_mut().stage = Some(Stage {
            ctx,
            op,
            ghosts,
            former,
        })
    });
}

/// The reset or delete under way is done releasing, and its context's pool no longer holds
/// chunks in the memory it released (trimmed or destroyed): the blocks that leave go now.
pub(crate) fn unstage() {
    let leave = QUARANTINE
        .try_with(|q| {
            let mut q = q.borrow_mut();
            q.stage = None;
            q.leave()
        })
        .unwrap_or_default();
    leave.go();
}

/// [`unstage`] once the staged context has no block left (a delete released its last).
pub(crate) fn unstage_if_done() {
    let done = QUARANTINE
        .try_with(|q| {
            q.borrow().stage.as_ref().is_some_and(|s| {
                // SAFETY: context headers are never freed (deleted ones are recycled), so the
                // staged one is readable; its block list is consistent between two releases.
                unsafe { (*s.ctx).blocks.is_null() }
            })
        })
        .unwrap_or(false);
    if done {
        unstage();
    }
}

/// What leaves when a stage ends: the oldest quarantined blocks past the quarantine's size, and
/// the blocks the stage gave back.
#[derive(Default)]
struct Leave {
    evicted: Vec<Released>,
    to_system: Vec<(usize, usize)>,
}

impl Quarantine {
    /// Takes out what leaves now the stage is over.
    fn leave(&mut self) -> Leave {
        let limit = settings::quarantine();
        let mut evicted = Vec::new();
        while self.bytes > limit {
            let old = self.blocks.pop_front().expect("bytes count blocks");
            self.bytes -= old.len();
            evicted.push(old);
        }
        Leave {
            evicted,
            to_system: core::mem::take(&mut self.leaving),
        }
    }
}

impl Leave {
    /// Verifies the evicted blocks (their findings are queued) and gives everything back.
    fn go(self) {
        let mut found = Vec::new();
        for old in self.evicted {
            verify(&old, "eviction from quarantine", &mut found);
            free(&old);
        }
        for (start, size) in self.to_system {
            super::hooks::release_to_system(start as *mut Block, size);
        }
        super::report::defer_all(found);
    }
}

/// Under memcheck, gives a block the quarantine did not take back to the system: at once, or when
/// a reset or delete under way is done. Memcheck keeps the context's pool chunks in a released
/// block until the pool is trimmed (at the reset's end) or destroyed (with its last block), and
/// trimming or destroying marks each one NOACCESS (`MC_(mempool_trim)` in memcheck's sources):
/// unmapped before that, the range could be mapped again — by `malloc` — and the program's live
/// memory there would be closed behind its back.
pub(crate) fn give_back(block: *mut Block, size: usize) -> bool {
    let now = QUARANTINE
        .try_with(|q| {
            let mut q = q.borrow_mut();
            if q.stage.is_none() {
                return true;
            }
            q.leaving.push((block as usize, size));
            false
        })
        .unwrap_or(true);
    if now {
        super::hooks::release_to_system(block, size);
    }
    true
}

/// Takes the staged ghosts of `[start, end)` out of the stage, with the staged context's name.
fn take_staged(q: &mut Quarantine, start: usize, end: usize) -> Option<(Vec<Ghost>, Rc<Former>)> {
    let s = q.stage.as_mut()?;
    let (mine, rest): (Vec<Ghost>, Vec<Ghost>) = core::mem::take(&mut s.ghosts)
        .into_iter()
        .partition(|g| start <= g.start && g.start < end);
    s.ghosts = rest;
    // SAFETY: the staged context is live until its reset or delete unstages.
    let former = s
        .former
        .get_or_insert_with(|| unsafe { Former::of(s.ctx, s.op) })
        .clone();
    Some((mine, former))
}

/// A block of `size` bytes was released (unlinked and unregistered). Returns whether the
/// quarantine took it (a reset or delete released it); otherwise the caller gives it back.
/// The blocks it pushes past the quarantine's size leave when the reset or delete is done
/// ([`unstage`]), after the context's pool let go of their chunks (see [`give_back`]).
pub(crate) fn admit(block: *mut Block, size: usize) -> bool {
    // Not from the header: to the tools it is no pool chunk any more.
    let (start, end) = (block as usize, block as usize + size);
    let limit = settings::quarantine();
    if end - start > limit {
        return false;
    }
    let taken = QUARANTINE
        .try_with(|q| {
            let mut q = q.borrow_mut();
            let Some((ghosts, former)) = take_staged(&mut q, start, end) else {
                return false;
            };
            let memory = Released {
                start,
                from: start,
                end,
                ghosts,
                former,
            };
            clobber(&memory);
            q.bytes += memory.len();
            q.blocks.push_back(memory);
            true
        })
        .unwrap_or(false);
    if taken {
        AT_EXIT.call_once(|| {
            // SAFETY: registering a plain `extern "C" fn` with no arguments.
            unsafe { libc::atexit(verify_at_process_exit) };
        });
    }
    taken
}

/// A deleted context's keeper goes onto a recycle list: remember it (and its chunks, taken from
/// the stage) until a new context takes it.
pub(crate) fn recycle_keeper(keeper: *mut Block) {
    // SAFETY: the keeper is a live block of the dead context.
    let (start, end) = (keeper as usize, unsafe { (*keeper).end_ptr } as usize);
    let _ = QUARANTINE.try_with(|q| {
        let mut q = q.borrow_mut();
        if let Some((ghosts, former)) = take_staged(&mut q, start, end) {
            q.recycled.retain(|r| r.memory.start != start);
            let memory = Released {
                start,
                from: Block::first_chunk(keeper) as usize,
                end,
                ghosts,
                former,
            };
            q.recycled.push(Recycled {
                memory,
                taken: false,
            });
        }
    });
}

/// A new context took the keeper starting at `keeper` from a recycle list: its space is the new
/// context's now, verified when carved; the deleted context's ghosts stay for the reports.
pub(crate) fn keeper_taken(keeper: *mut Block) {
    let _ = QUARANTINE.try_with(|q| {
        for r in q.borrow_mut().recycled.iter_mut() {
            if r.memory.start == keeper as usize {
                r.taken = true;
            }
        }
    });
}

/// A block went back to the system or into the quarantine: it is no recycled keeper any more.
pub(crate) fn forget_keeper(block: *mut Block) {
    let _ = QUARANTINE.try_with(|q| {
        q.borrow_mut()
            .recycled
            .retain(|r| r.memory.start != block as usize)
    });
}

/// The chunk a deleted context had at `addr` in a recycled keeper, with that context's name.
pub(crate) fn former_ghost(block: *mut Block, addr: usize) -> Option<(Ghost, Rc<Former>)> {
    QUARANTINE
        .try_with(|q| {
            let q = q.borrow();
            let r = q
                .recycled
                .iter()
                .find(|r| r.memory.start == block as usize)?;
            let g = r.memory.ghosts.iter().find(|g| g.covers(addr))?;
            Some((*g, r.memory.former.clone()))
        })
        .ok()
        .flatten()
}

/// A pointer no live block holds, passed to `op` (`pfree`, `repalloc`): when it is a chunk of a
/// quarantined block, a `double-free` naming the context that released it, as it was, with the
/// chunk's allocation stack and the reset's or delete's.
pub(crate) fn freed_again(addr: usize, op: &str) -> Option<Report> {
    QUARANTINE
        .try_with(|q| {
            let q = q.borrow();
            let m = q.blocks.iter().find(|m| m.start <= addr && addr < m.end)?;
            let g = m.ghosts.iter().find(|g| g.data() == addr)?;
            let mut r = Report::at(BugClass::DoubleFree, op)
                .chunk(g.data(), Some(g.requested as usize))
                .stacks(g.alloc_stack, g.free_stack)
                .detail(format!(
                    "{op} of a chunk the {} of \"{}\" already released",
                    m.former.op,
                    m.former.name()
                ));
            m.former.name_in(&mut r);
            Some(r)
        })
        .ok()
        .flatten()
}

/// Verifies every quarantined block and waiting recycled keeper (for `check`); damaged ones are
/// filled again, so each damage is reported once. Under Valgrind or ASan it leaves them alone:
/// the memory is closed to the program, so the tool reported any access to it at the instruction,
/// and re-reading megabytes at every check would only slow their runs down.
pub(crate) fn check() -> Vec<Report> {
    if sanitizer::active() {
        return Vec::new();
    }
    QUARANTINE
        .try_with(|q| {
            let q = q.borrow();
            let mut found = Vec::new();
            let waiting = q.recycled.iter().filter(|r| !r.taken).map(|r| &r.memory);
            for m in q.blocks.iter().chain(waiting) {
                let before = found.len();
                verify(m, "check", &mut found);
                if found.len() > before {
                    clobber(m);
                }
            }
            found
        })
        .unwrap_or_default()
}

impl Quarantine {
    /// Verifies everything and gives the quarantined blocks back (thread or process exit).
    fn drain(&mut self, at: &str) -> Vec<Report> {
        let mut found = Vec::new();
        for r in self.recycled.drain(..).filter(|r| !r.taken) {
            verify(&r.memory, at, &mut found);
        }
        for m in self.blocks.drain(..) {
            verify(&m, at, &mut found);
            free(&m);
        }
        self.bytes = 0;
        found
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        end_if_found(self.drain("thread exit"));
    }
}

/// Prints findings made at exit and ends the process: nothing is left to fail but the status.
fn end_if_found(found: Vec<Report>) {
    if found.is_empty() {
        return;
    }
    for r in &found {
        log::error!(target: "memctx", "{r}");
        eprintln!("{r}");
    }
    eprintln!(
        "memctx: {} finding(s) in released memory at exit; ending the process with status {}",
        found.len(),
        EXIT_STATUS
    );
    // `_exit`, not `exit`: this may run inside `exit` (the atexit handler, the main thread's
    // thread-local destructors), where calling it again is undefined.
    // SAFETY: ends the process; no Rust state is used afterwards.
    unsafe { libc::_exit(EXIT_STATUS) }
}

/// Fills released memory with the freed pattern and closes it to the tools.
fn clobber(m: &Released) {
    let (p, len) = m.pattern();
    sanitizer::open(p, len);
    // SAFETY: the memory is ours (quarantined, or a recycled keeper's space no context uses yet).
    unsafe { verify::fill(p, len, FREED_BYTE) };
    sanitizer::close(p, len);
}

/// Gives a quarantined block back to the system.
fn free(m: &Released) {
    super::hooks::release_to_system(m.start as *mut Block, m.len());
}

/// Verifies that released memory still holds the freed pattern, one report per damaged chunk.
fn verify(m: &Released, at: &str, out: &mut Vec<Report>) {
    let (p, len) = m.pattern();
    sanitizer::open(p, len);
    let mut from = m.from;
    for _ in 0..MAX_REPORTS_PER_BLOCK {
        // SAFETY: `[from, end)` lies in the released memory, open to the tools.
        let Some((a, b)) =
            (unsafe { verify::damaged(from as *const u8, m.end - from, FREED_BYTE) })
        else {
            break;
        };
        let (first, last) = (from + a, from + b);
        // SAFETY: the damaged bytes lie in the released memory, open.
        let (r, upto) = unsafe { released_report(m, first, last, at) };
        out.push(r);
        from = upto;
        if from >= m.end {
            break;
        }
    }
    sanitizer::close(p, len);
}

/// The report for damage from `first` to at most `last` in released memory, and where the next
/// search starts.
///
/// # Safety
/// `[first, last]` must lie in `m` and be readable.
unsafe fn released_report(m: &Released, first: usize, last: usize, at: &str) -> (Report, usize) {
    let how = format!(
        "memory released by the {} of \"{}\" was written through a pointer kept past it",
        m.former.op,
        m.former.name()
    );
    let r = Report::at(BugClass::WriteAfterFree, at);
    // SAFETY: `[first, last]` lies in `m` and is readable (caller); the damage read below stays
    // within it (`last` is clipped to the ghost's end).
    let (mut r, upto) = unsafe {
        match m.ghosts.iter().find(|g| g.covers(first)) {
            Some(g) => {
                let last = last.min(g.end() - 1);
                let range = (
                    first as isize - g.data() as isize,
                    last as isize + 1 - g.data() as isize,
                );
                let r = r
                    .chunk(g.data(), Some(g.requested as usize))
                    .stacks(g.alloc_stack, g.free_stack)
                    .damage(first as *const u8, range, FREED_BYTE)
                    .detail(how);
                (r, last + 1)
            }
            None => {
                let range = ((first - m.start) as isize, (last + 1 - m.start) as isize);
                let near = verify::nearest_ghost(&m.ghosts, first);
                let r = r.damage(first as *const u8, range, FREED_BYTE);
                let r = match near {
                    Some(g) => r.stacks(g.alloc_stack, g.free_stack).detail(format!(
                        "{how}: {}",
                        verify::after_chunk(first, g.data(), g.requested as usize)
                    )),
                    None => r.detail(how),
                };
                (r, last + 1)
            }
        }
    };
    m.former.name_in(&mut r);
    (r, upto)
}
