//! Guard pages: chunks with a block of their own end at an inaccessible page.
//!
//! A request above the chunk limit gets a block of its own (see `kinds/aset.rs`). Natively (not under
//! memcheck or ASan, which watch those bytes themselves) the debug build takes that block from a
//! *guarded mapping* of its own instead of `malloc`:
//!
//! ```text
//!  mapping start (page)                                              guard page (PROT_NONE)
//!  | slack | block header | pad | chunk prefix | data ........ |tail|#########|
//!                                              ^ data           ^ request end
//! ```
//!
//! The block is placed so that the chunk's capacity (the request plus the rear redzone, 16
//! bytes by default, rounded up to 16) ends exactly at the guard page: the bytes between the
//! request's end and the page are the rear redzone, checked at `pfree` as every redzone is, and
//! a write past them faults at the writing instruction. A freed mapping is made `PROT_NONE` whole and kept in a bounded quarantine (FIFO,
//! [`settings::guard_quarantine`] bytes), so a use after free faults too; when it leaves the
//! quarantine it goes, still inaccessible, to a per-size cache from which the next block of the
//! same page count is taken (one `mprotect` instead of `mmap` + `mprotect` + `munmap`).
//!
//! The kernel limits a process's mappings (`vm.max_map_count`, 65,530 by default) and every
//! guarded mapping costs two (the data pages and the guard). Mappings in use — live, quarantined
//! and cached — are capped at [`settings::guard_max`] (at most [`TABLE_SIZE`]); beyond it a cached
//! mapping is unmapped to make room, and when none is left the chunk gets an ordinary block:
//! counted in [`GuardStats::fallbacks`], never a failed allocation.
//!
//! Each mapping has an entry in [`TABLE`], a fixed array of atomics that the fault handler
//! (`debug::fault`) scans without a lock or an allocation. The pool's lists live behind a mutex
//! that only normal code takes.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::chunk::Block;
use crate::chunk::CHUNK_PREFIX;

use super::settings;

/// Entries of the fault table: the most guarded mappings a process holds at once.
pub(crate) const TABLE_SIZE: usize = 16384;

/// Entry state: no mapping.
const EMPTY: u8 = 0;
/// Entry state: the mapping holds a live chunk.
pub(crate) const LIVE: u8 = 1;
/// Entry state: the chunk was freed; the mapping is `PROT_NONE` (quarantined or cached).
pub(crate) const FREED: u8 = 2;
/// Entry state: the chunk was freed and the mapping is accessible again (cached with the
/// quarantine off).
const OPEN: u8 = 3;

/// What the fault handler knows of one guarded mapping.
pub(crate) struct Entry {
    /// First byte of the mapping (0 while the entry is unused).
    pub(crate) base: AtomicUsize,
    /// Bytes of the mapping, guard page included.
    pub(crate) len: AtomicUsize,
    /// The chunk's data address.
    pub(crate) data: AtomicUsize,
    /// The chunk's requested size, recorded when it was freed (a live chunk's is in its record).
    pub(crate) requested: AtomicUsize,
    /// Allocation stack id (low half) and free stack id (high half), recorded at the free.
    pub(crate) stacks: AtomicU64,
    /// [`LIVE`], [`FREED`], or another state the handler ignores.
    pub(crate) state: AtomicU8,
}

impl Entry {
    // A template for the table's initialiser, never used as a value of its own.
    #[allow(clippy::declare_interior_mutable_const)]
    const UNUSED: Entry = Entry {
        base: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        data: AtomicUsize::new(0),
        requested: AtomicUsize::new(0),
        stacks: AtomicU64::new(0),
        state: AtomicU8::new(EMPTY),
    };

    /// Whether `addr` lies in this entry's mapping.
    pub(crate) fn covers(&self, addr: usize) -> bool {
        let base = self.base.load(Ordering::Acquire);
        base != 0 && addr >= base && addr - base < self.len.load(Ordering::Relaxed)
    }
}

/// The fault table (see the module docs). Zero-initialised, so it costs only the pages touched.
pub(crate) static TABLE: [Entry; TABLE_SIZE] = [const { Entry::UNUSED }; TABLE_SIZE];
/// Entries ever used: the handler scans `TABLE[..HIGH]`.
pub(crate) static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Set once the first guarded mapping exists: until then no block can be guarded.
static IN_USE: AtomicBool = AtomicBool::new(false);

static MAPS: AtomicU64 = AtomicU64::new(0);
static UNMAPS: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// One guarded mapping, as the pool's lists hold it.
#[derive(Clone, Copy)]
struct Mapping {
    /// Its entry in [`TABLE`].
    entry: usize,
    /// First byte.
    base: usize,
    /// Pages before the guard page.
    pages: usize,
    /// Whether it holds a sampled small chunk (which holds a slot, see `sample`).
    sampled: bool,
}

impl Mapping {
    fn guard(&self) -> usize {
        self.base + self.pages * page()
    }
    fn data_bytes(&self) -> usize {
        self.pages * page()
    }
}

/// The pool's lists.
struct Pool {
    /// Live mappings by the address of their guard page (a block's `end_ptr`).
    live: BTreeMap<usize, Mapping>,
    /// Freed mappings, oldest first, and their bytes.
    quarantine: VecDeque<Mapping>,
    quarantine_bytes: usize,
    /// Freed mappings out of quarantine, by page count.
    cache: BTreeMap<usize, Vec<Mapping>>,
    cache_bytes: usize,
    /// Unused table entries below [`HIGH`].
    free_entries: Vec<usize>,
    /// Mappings in use (live, quarantined, cached).
    mapped: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    live: BTreeMap::new(),
    quarantine: VecDeque::new(),
    quarantine_bytes: 0,
    cache: BTreeMap::new(),
    cache_bytes: 0,
    free_entries: Vec::new(),
    mapped: 0,
});

thread_local! {
    /// Set while this thread holds the pool: the pool's own allocations (its lists grow) may come
    /// back here when memctx is the global allocator, and get ordinary blocks.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on the pool, or returns `None` when this thread is already inside it.
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    if BUSY.try_with(|b| b.replace(true)).unwrap_or(true) {
        return None;
    }
    let r = f(&mut POOL.lock().unwrap_or_else(|e| e.into_inner()));
    let _ = BUSY.try_with(|b| b.set(false));
    Some(r)
}

/// The system's page size.
pub(crate) fn page() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf only reads a system parameter.
            let p = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                .ok()
                .filter(|p| p.is_power_of_two())
                .unwrap_or(4096);
            PAGE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// Counters of the guarded mappings, for tests and the curious.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Mappings holding a live chunk.
    pub live: usize,
    /// Freed mappings in the quarantine.
    pub quarantined: usize,
    /// Freed mappings out of quarantine, kept for reuse.
    pub cached: usize,
    /// `mmap` calls made for guarded mappings.
    pub maps: u64,
    /// `munmap` calls made (cache over its bound, or room made under the cap).
    pub unmaps: u64,
    /// Chunks that got an ordinary block because the cap was reached or `mmap` failed.
    pub fallbacks: u64,
    /// Live small chunks that sampling placed in guarded mappings (`MEMCTX_GUARD_SAMPLE`).
    pub sampled: usize,
}

/// The counters of the process's guarded mappings.
///
/// # Examples
/// ```
/// let before = memctx::debug::guard_stats();
/// assert!(before.live <= before.maps as usize);
/// ```
pub fn guard_stats() -> GuardStats {
    let mut s = GuardStats {
        maps: MAPS.load(Ordering::Relaxed),
        unmaps: UNMAPS.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        sampled: super::sample::LIVE.load(Ordering::Relaxed),
        ..GuardStats::default()
    };
    let _ = with_pool(|p| {
        s.live = p.live.len();
        s.quarantined = p.quarantine.len();
        s.cached = p.cache.values().map(Vec::len).sum();
    });
    s
}

/// Memory for a block of `size` bytes (a multiple of 16; `sampled`: for a small chunk that
/// sampling chose) ending at a guard page, or `None`: the
/// caller takes an ordinary block. `None` is counted as a fallback when the cap or the system
/// refused a mapping.
pub(crate) fn take(size: usize, sampled: bool) -> Option<*mut u8> {
    let pages = size.div_ceil(page());
    let m = with_pool(|p| p.take(pages, sampled)).flatten()?;
    let block = m.guard() - size;
    let e = &TABLE[m.entry];
    let data = Block::first_chunk(block as *mut Block) as usize + CHUNK_PREFIX;
    e.data.store(data, Ordering::Relaxed);
    e.state.store(LIVE, Ordering::Release);
    super::fault::ensure_ready();
    Some(block as *mut u8)
}

/// Whether any guarded mapping was ever made (never under memcheck or ASan).
#[inline]
pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

/// Whether the block ending at `end` (its `end_ptr`) lies in a live guarded mapping.
pub(crate) fn is_guarded(end: usize) -> bool {
    IN_USE.load(Ordering::Relaxed)
        && end % page() == 0
        && with_pool(|p| p.live.contains_key(&end)).unwrap_or(false)
}

/// The block ending at `end`, whose chunk at `data` was `requested` bytes with stacks `alloc` and
/// `free`, goes back: if it is guarded, its mapping goes to the quarantine (inaccessible) and
/// true is returned; false means it is an ordinary block.
pub(crate) fn release(end: usize, data: usize, requested: usize, alloc: u32, free: u32) -> bool {
    if !IN_USE.load(Ordering::Relaxed) || end % page() != 0 {
        return false;
    }
    with_pool(|p| {
        let Some(m) = p.live.remove(&end) else {
            return false;
        };
        if m.sampled {
            super::sample::slot_returned();
        }
        let e = &TABLE[m.entry];
        e.data.store(data, Ordering::Relaxed);
        e.requested.store(requested, Ordering::Relaxed);
        e.stacks.store(
            u64::from(alloc) | (u64::from(free) << 32),
            Ordering::Relaxed,
        );
        p.retire(m);
        true
    })
    .unwrap_or(false)
}

impl Pool {
    /// A mapping of `pages` accessible pages and a guard, for a new live chunk.
    fn take(&mut self, pages: usize, sampled: bool) -> Option<Mapping> {
        let mut m = match self.cache.get_mut(&pages).and_then(Vec::pop) {
            Some(m) => {
                self.cache_bytes -= m.data_bytes();
                if TABLE[m.entry].state.load(Ordering::Relaxed) == FREED
                    && !protect(m.base, m.data_bytes(), true)
                {
                    self.unmap(m);
                    return self.fallback();
                }
                m
            }
            None => self.map(pages)?,
        };
        m.sampled = sampled;
        self.live.insert(m.guard(), m);
        Some(m)
    }

    /// Maps a new guarded mapping, making room under the cap first; `None` (counted) when the cap
    /// is reached with nothing to give back, or the system refuses.
    fn map(&mut self, pages: usize) -> Option<Mapping> {
        let cap = settings::guard_max().min(TABLE_SIZE);
        while self.mapped >= cap {
            if !self.evict_one() {
                return self.fallback();
            }
        }
        let entry = match self.free_entries.pop() {
            Some(i) => i,
            None => {
                let i = HIGH.load(Ordering::Relaxed);
                if i == TABLE_SIZE {
                    return self.fallback();
                }
                i
            }
        };
        let len = (pages + 1) * page();
        let Some(base) = map_guarded(len) else {
            if entry < HIGH.load(Ordering::Relaxed) {
                self.free_entries.push(entry);
            }
            return self.fallback();
        };
        MAPS.fetch_add(1, Ordering::Relaxed);
        let e = &TABLE[entry];
        e.len.store(len, Ordering::Relaxed);
        e.base.store(base, Ordering::Release);
        HIGH.fetch_max(entry + 1, Ordering::Release);
        IN_USE.store(true, Ordering::Relaxed);
        self.mapped += 1;
        Some(Mapping {
            entry,
            base,
            pages,
            sampled: false,
        })
    }

    fn fallback(&mut self) -> Option<Mapping> {
        FALLBACKS.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A freed mapping: inaccessible into the quarantine (or, with the quarantine off, straight
    /// to the cache as it is); the quarantine's oldest move on to the cache, and the cache's
    /// surplus is unmapped.
    fn retire(&mut self, m: Mapping) {
        let limit = settings::guard_quarantine();
        let e = &TABLE[m.entry];
        if limit == 0 || !protect(m.base, m.data_bytes(), false) {
            e.state.store(OPEN, Ordering::Release);
            self.cache_or_unmap(m);
            return;
        }
        e.state.store(FREED, Ordering::Release);
        self.quarantine.push_back(m);
        self.quarantine_bytes += m.data_bytes();
        while self.quarantine_bytes > limit {
            let Some(old) = self.quarantine.pop_front() else {
                break;
            };
            self.quarantine_bytes -= old.data_bytes();
            self.cache_or_unmap(old);
        }
    }

    fn cache_or_unmap(&mut self, m: Mapping) {
        if self.cache_bytes + m.data_bytes() > settings::guard_quarantine().max(CACHE_MIN) {
            self.unmap(m);
            return;
        }
        self.cache_bytes += m.data_bytes();
        self.cache.entry(m.pages).or_default().push(m);
    }

    /// Unmaps one cached mapping (any size), else the oldest quarantined one. False: none left.
    fn evict_one(&mut self) -> bool {
        let cached = self.cache.iter_mut().find_map(|(_, v)| v.pop());
        if let Some(m) = cached {
            self.cache_bytes -= m.data_bytes();
            self.unmap(m);
            return true;
        }
        match self.quarantine.pop_front() {
            Some(m) => {
                self.quarantine_bytes -= m.data_bytes();
                self.unmap(m);
                true
            }
            None => false,
        }
    }

    fn unmap(&mut self, m: Mapping) {
        let e = &TABLE[m.entry];
        // The handler must stop matching addresses in the range before it can be mapped again.
        e.state.store(EMPTY, Ordering::Release);
        e.base.store(0, Ordering::Release);
        // SAFETY: `[base, base + len)` is a mapping this module made, and nothing references it:
        // it held a freed chunk (the block left its context) or none.
        unsafe { libc::munmap(m.base as *mut libc::c_void, (m.pages + 1) * page()) };
        UNMAPS.fetch_add(1, Ordering::Relaxed);
        self.free_entries.push(m.entry);
        self.mapped -= 1;
    }
}

/// The cache holds at least this many bytes of freed mappings, even with the quarantine off, so
/// steady large alloc/free needs no system call.
const CACHE_MIN: usize = 8 << 20;

/// Maps `len` bytes read-write with the last page inaccessible; the mapping's start.
fn map_guarded(len: usize) -> Option<usize> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing changes no
    // existing memory.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let guard = base as usize + len - page();
    // SAFETY: the guard page is the last page of the mapping just made, which nothing uses yet.
    if unsafe { libc::mprotect(guard as *mut libc::c_void, page(), libc::PROT_NONE) } != 0 {
        // SAFETY: as above; the mapping is given back whole.
        unsafe { libc::munmap(base, len) };
        return None;
    }
    Some(base as usize)
}

/// Makes `[base, base + len)` of a guarded mapping read-write (`open`) or inaccessible.
fn protect(base: usize, len: usize, open: bool) -> bool {
    let prot = if open {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: the range is the data pages of a guarded mapping this module made; when closed it
    // holds a freed chunk nobody may touch, when opened it is about to become a new block.
    unsafe { libc::mprotect(base as *mut libc::c_void, len, prot) == 0 }
}
