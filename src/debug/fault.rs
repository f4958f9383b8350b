//! The fault handler for guard pages (see `guard`): says which chunk a `SIGSEGV` hit, then lets
//! the process die of it.
//!
//! Installed once, when the first guarded mapping is made, with `SA_SIGINFO | SA_ONSTACK`; the
//! action it replaces (std's stack-overflow handler, or the host's) is kept. On a fault:
//!
//! * the address is looked up in the guard table (`guard::TABLE`: atomics, scanned without a
//!   lock). Not a guard page or a quarantined mapping: the fault is handed to the previous action
//!   (called directly if it is a handler; if it is the default, it is restored and the handler
//!   returns, so the fault repeats and the default ends the process);
//! * a guard fault is printed to stderr with `write(2)` from a buffer on the handler's stack: the
//!   class (`overrun` past a live chunk, `write-after-free` into a freed one), the chunk, the raw
//!   return addresses of the faulting stack (walked by frame pointers from the signal context's
//!   registers, `stack::walk_interrupted`; when the fault is in a C library leaf such as
//!   `memset`, which sets up no frame, its return address at the top of the stack first, see
//!   `leaf_caller`) and the chunk's recorded stack ids — all of it
//!   async-signal-safe. Then, *only when it is safe*, the same stacks symbolised: symbolising
//!   allocates and takes the C library's and the dynamic loader's locks, so it is skipped when
//!   a caller frame of the faulting instruction lies in the C library, the dynamic loader or
//!   libgcc (whose locks the interrupted code may hold) with user code above it — a callback run
//!   under the library's lock. The thread's entry at the bottom of the stack (`start_thread`,
//!   `__libc_start_call_main`) holds none, and the faulting instruction itself may be in the C
//!   library (a `memcpy` or `memset` past the end), as those hold no lock;
//! * then the previous action is restored and the handler returns: the instruction faults again
//!   and the process ends as it would have without memctx (by `SIGSEGV`, or however the previous
//!   handler ends it). A fault ends the process whatever the report policy.
//!
//! Every thread that takes a guarded block gets an alternate signal stack of [`ALT_STACK`] bytes
//! (with a guard page below it), sized for symbolisation — std's is a few pages, enough for its
//! own message only — and given back when the thread ends.

use core::cell::RefCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

use super::guard::{self, Entry, FREED, LIVE};
use super::layout::{record_ptr, DebugRecord};
use super::stack::{self, StackId};

/// Bytes of the alternate signal stack memctx gives each thread (a guard page comes on top).
pub(crate) const ALT_STACK: usize = 1 << 20;

/// The action the handler replaced.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Set while a guard fault is being reported (a second faulting thread waits for the process
/// to end instead of interleaving its report).
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Most code ranges of libraries whose locks rule out symbolising.
const MAX_RANGES: usize = 16;
/// `[start, end)` pairs of the executable segments of the C library, the loader and libgcc.
static LOCKED_CODE: [AtomicUsize; 2 * MAX_RANGES] = [const { AtomicUsize::new(0) }; 2 * MAX_RANGES];
/// Most code ranges of all objects loaded when the handler was installed.
const MAX_CODE_RANGES: usize = 64;
/// `[start, end)` pairs of the executable segments of every object loaded at installation.
static CODE: [AtomicUsize; 2 * MAX_CODE_RANGES] =
    [const { AtomicUsize::new(0) }; 2 * MAX_CODE_RANGES];

/// Installs the handler (once per process) and this thread's alternate stack (once per thread).
pub(crate) fn ensure_ready() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(install);
    let _ = ALT.try_with(|a| {
        if let Ok(mut a) = a.try_borrow_mut() {
            a.get_or_insert_with(AltStack::new);
        }
    });
}

fn install() {
    stack::cache_stack_bounds();
    record_code_ranges();
    // SAFETY: a zeroed sigaction is a valid out-parameter; the new action's handler is an
    // `extern "C"` function of the signature SA_SIGINFO asks for, and its mask is initialised.
    unsafe {
        let mut old: libc::sigaction = core::mem::zeroed();
        let mut new: libc::sigaction = core::mem::zeroed();
        new.sa_sigaction = on_fault as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        // Read the previous action first, so the handler finds it from its first run.
        if libc::sigaction(libc::SIGSEGV, core::ptr::null(), &mut old) != 0 {
            return;
        }
        let _ = PREVIOUS.set(old);
        libc::sigaction(libc::SIGSEGV, &new, core::ptr::null_mut());
    }
}

/// Records the executable segments of every loaded object ([`CODE`]), and among them those of
/// the C library, the dynamic loader and libgcc ([`LOCKED_CODE`]).
fn record_code_ranges() {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        counts: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the duration of the call, and `counts` is
        // the `[usize; 2]` that `record_code_ranges` passed.
        unsafe {
            let info = &*info;
            let name = if info.dlpi_name.is_null() {
                &b""[..]
            } else {
                core::ffi::CStr::from_ptr(info.dlpi_name).to_bytes()
            };
            let locked = [&b"libc.so"[..], b"ld-linux", b"libgcc_s", b"libpthread"]
                .iter()
                .any(|l| name.windows(l.len()).any(|w| w == *l));
            let [code, locked_count] = &mut *(counts as *mut [usize; 2]);
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_X == 0 {
                    continue;
                }
                let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                let range = (start, start + ph.p_memsz as usize);
                record_range(&CODE, code, range);
                if locked {
                    record_range(&LOCKED_CODE, locked_count, range);
                }
            }
        }
        0
    }
    let mut counts = [0usize; 2];
    // SAFETY: `each` matches the callback type and only reads what the loader passes it.
    unsafe { libc::dl_iterate_phdr(Some(each), counts.as_mut_ptr() as *mut libc::c_void) };
}

/// Stores `[start, end)` as the `count`-th pair of `table`, if there is room.
fn record_range(table: &[AtomicUsize], count: &mut usize, (start, end): (usize, usize)) {
    if 2 * *count + 1 < table.len() {
        table[2 * *count].store(start, Ordering::Relaxed);
        table[2 * *count + 1].store(end, Ordering::Relaxed);
        *count += 1;
    }
}

/// Whether `ip` lies in one of the `[start, end)` pairs of `table`.
fn in_ranges(table: &[AtomicUsize], ip: usize) -> bool {
    table.chunks(2).any(|r| {
        let (s, e) = (r[0].load(Ordering::Relaxed), r[1].load(Ordering::Relaxed));
        s <= ip && ip < e
    })
}

fn in_locked_code(ip: usize) -> bool {
    in_ranges(&LOCKED_CODE, ip)
}

/// The return address into the caller of a C library function that faulted, when that function
/// set up no frame pointer: the C library's `memset`, `memcpy` and `memmove` (what
/// `ptr::write_bytes`, `copy_from_slice` and `ptr::copy` call) are such leaves, so the frame
/// pointer still holds their caller's frame and a walk from it starts at the caller's caller,
/// leaving out the very line that overran. A leaf that pushed nothing has its return address at
/// the top of the stack; the word there is taken as one only if it points into loaded code just
/// after a call instruction.
fn leaf_caller(pc: usize, sp: usize) -> Option<usize> {
    if !in_locked_code(pc) {
        return None;
    }
    let ret = stack::interrupted_top(sp)?;
    (in_ranges(&CODE, ret) && in_ranges(&CODE, ret.wrapping_sub(6)) && follows_call(ret))
        .then_some(ret)
}

/// Whether the bytes before `ret` end in an x86-64 call: `call rel32` (`E8`), `call [rip+disp32]`
/// (`FF 15`), `call reg` (`FF D0+r`) or `call [reg+disp8]` (`FF 50+r`).
///
/// `[ret - 6, ret)` must lie in loaded code (the caller checks it against [`CODE`]).
fn follows_call(ret: usize) -> bool {
    // SAFETY: the six bytes lie in an executable segment of a loaded object (caller), which is
    // mapped and readable.
    let b = |back: usize| unsafe { core::ptr::read_volatile((ret - back) as *const u8) };
    b(5) == 0xE8
        || (b(6) == 0xFF && b(5) == 0x15)
        || (b(2) == 0xFF && b(1) & 0xF8 == 0xD0)
        || (b(3) == 0xFF && b(2) & 0xF8 == 0x50)
}

/// A thread's alternate signal stack, given back when the thread ends.
struct AltStack {
    /// The mapping (guard page first), or 0 when the thread keeps the stack it had.
    base: usize,
}

thread_local! {
    static ALT: RefCell<Option<AltStack>> = const { RefCell::new(None) };
}

impl AltStack {
    /// Installs a stack of [`ALT_STACK`] bytes unless the thread has one at least that large.
    fn new() -> AltStack {
        stack::cache_stack_bounds();
        let len = ALT_STACK + guard::page();
        // SAFETY: a query of this thread's alternate stack into a zeroed out-parameter; then an
        // anonymous mapping of the kernel's choosing, whose first page becomes the guard.
        unsafe {
            let mut old: libc::stack_t = core::mem::zeroed();
            if libc::sigaltstack(core::ptr::null(), &mut old) == 0
                && old.ss_flags & libc::SS_DISABLE == 0
                && old.ss_size >= ALT_STACK
            {
                return AltStack { base: 0 };
            }
            let base = libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return AltStack { base: 0 };
            }
            libc::mprotect(base, guard::page(), libc::PROT_NONE);
            let st = libc::stack_t {
                ss_sp: (base as *mut u8).add(guard::page()) as *mut libc::c_void,
                ss_flags: 0,
                ss_size: ALT_STACK,
            };
            if libc::sigaltstack(&st, core::ptr::null_mut()) != 0 {
                libc::munmap(base, len);
                return AltStack { base: 0 };
            }
            AltStack {
                base: base as usize,
            }
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        if self.base == 0 {
            return;
        }
        let sp = self.base + guard::page();
        // SAFETY: the stack is ours; it is disabled first if it is still the thread's (a signal
        // handler cannot be running on it: this is the thread's own exit path), then unmapped.
        unsafe {
            let mut cur: libc::stack_t = core::mem::zeroed();
            if libc::sigaltstack(core::ptr::null(), &mut cur) == 0 && cur.ss_sp as usize == sp {
                let off = libc::stack_t {
                    ss_sp: core::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&off, core::ptr::null_mut());
            }
            libc::munmap(self.base as *mut libc::c_void, ALT_STACK + guard::page());
        }
    }
}

/// The registers of the interrupted code: (instruction, frame, stack pointer, write?).
///
/// # Safety
/// `uctx` must be the `ucontext_t` the kernel passed to a `SA_SIGINFO` handler.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn registers(uctx: *mut libc::c_void) -> (usize, usize, usize, Option<bool>) {
    // SAFETY: `uctx` is the `ucontext_t` the kernel passed to this SA_SIGINFO handler (caller),
    // valid and aligned for the handler's duration; only its register array is read.
    let g = unsafe { &(*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs };
    let reg = |r: libc::c_int| g[r as usize] as usize;
    // Bit 1 of the page-fault error code: the access was a write.
    let write = reg(libc::REG_ERR) & 2 != 0;
    (
        reg(libc::REG_RIP),
        reg(libc::REG_RBP),
        reg(libc::REG_RSP),
        Some(write),
    )
}

/// Elsewhere the registers are not read: no faulting stack.
///
/// # Safety
/// None beyond the x86-64 version's signature: `_uctx` is never read here.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
unsafe fn registers(_uctx: *mut libc::c_void) -> (usize, usize, usize, Option<bool>) {
    (0, 0, 0, None)
}

/// The `SIGSEGV` handler.
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let high = guard::HIGH.load(Ordering::Acquire);
    let hit = guard::TABLE[..high].iter().find(|e| e.covers(addr));
    let Some(entry) = hit else {
        // SAFETY: forwarding the kernel's own arguments to the action it would have run.
        unsafe { chain(sig, info, uctx) };
        return;
    };
    if !REPORTING.swap(true, Ordering::AcqRel) {
        // SAFETY: `uctx` is the kernel's context for this signal.
        let regs = unsafe { registers(uctx) };
        report(entry, addr, regs);
    }
    restore_previous();
}

/// Puts the replaced action back (the default if there was none recorded).
fn restore_previous() {
    // SAFETY: sigaction with a valid action (the one the kernel gave us, or a zeroed one: the
    // default, with an empty mask).
    unsafe {
        match PREVIOUS.get() {
            Some(prev) => libc::sigaction(libc::SIGSEGV, prev, core::ptr::null_mut()),
            None => {
                let dfl: libc::sigaction = core::mem::zeroed();
                libc::sigaction(libc::SIGSEGV, &dfl, core::ptr::null_mut())
            }
        };
    }
}

/// Hands a fault that is not ours to the replaced action.
///
/// # Safety
/// The arguments must be the kernel's, for this `SIGSEGV`.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    let Some(prev) = PREVIOUS.get() else {
        restore_previous();
        return;
    };
    match prev.sa_sigaction {
        // The default ends the process when the instruction faults again; an ignored SIGSEGV
        // would fault forever, so it ends the process too.
        libc::SIG_DFL | libc::SIG_IGN => {
            // SAFETY: a zeroed action is the default with an empty mask.
            unsafe {
                let dfl: libc::sigaction = core::mem::zeroed();
                libc::sigaction(libc::SIGSEGV, &dfl, core::ptr::null_mut());
            }
        }
        h if prev.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous action declared SA_SIGINFO, so `h` has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { core::mem::transmute(h) };
            f(sig, info, uctx);
        }
        h => {
            // SAFETY: without SA_SIGINFO the handler takes the signal number only.
            let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(h) };
            f(sig);
        }
    }
}

/// A fixed buffer on the handler's stack, written out with `write(2)`.
struct Out {
    buf: [u8; 2048],
    len: usize,
}

impl Out {
    fn str(&mut self, s: &str) -> &mut Out {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    fn dec(&mut self, mut n: usize) -> &mut Out {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // ASCII digits are UTF-8, so `from_utf8` cannot fail.
        self.str(core::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    fn hex(&mut self, n: usize) -> &mut Out {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut len = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let d = (n >> (shift * 4)) & 0xf;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[len] = b"0123456789abcdef"[d];
                len += 1;
            }
        }
        self.str(core::str::from_utf8(&digits[..len]).unwrap_or("?"))
    }

    fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: writes initialised bytes of our own buffer to stderr.
            let n = unsafe {
                libc::write(
                    2,
                    self.buf[off..].as_ptr() as *const libc::c_void,
                    self.len - off,
                )
            };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        self.len = 0;
    }
}

/// What the handler says about one guard fault.
struct Fault {
    class: &'static str,
    chunk: usize,
    requested: usize,
    alloc: u32,
    free: u32,
}

/// Classifies a fault in the mapping of `e`: past a live chunk, or anywhere in a freed one.
fn classify(e: &Entry) -> Fault {
    let chunk = e.data.load(Ordering::Relaxed);
    match e.state.load(Ordering::Acquire) {
        LIVE => {
            // The mapping is accessible but for its guard page: the record can be read (its
            // values are checked, not trusted: the program may have overwritten them).
            // SAFETY: a live guarded mapping's data pages are readable, the record among them.
            let rec: DebugRecord = unsafe { record_ptr(chunk as *mut u8).read() };
            let cap = e.len.load(Ordering::Relaxed) - guard::page();
            let cap = e.base.load(Ordering::Relaxed) + cap - chunk;
            let requested = if rec.is_valid() {
                (rec.requested as usize).min(cap)
            } else {
                cap
            };
            Fault {
                class: "overrun",
                chunk,
                requested,
                alloc: rec.alloc_stack,
                free: 0,
            }
        }
        _ => {
            let stacks = e.stacks.load(Ordering::Relaxed);
            Fault {
                class: "write-after-free",
                chunk,
                requested: e.requested.load(Ordering::Relaxed),
                alloc: stacks as u32,
                free: (stacks >> 32) as u32,
            }
        }
    }
}

/// Prints the report of a guard fault (see the module docs).
fn report(e: &Entry, addr: usize, (pc, fp, sp, write): (usize, usize, usize, Option<bool>)) {
    let f = classify(e);
    let mut out = Out {
        buf: [0; 2048],
        len: 0,
    };
    headline(
        &mut out,
        &f,
        addr,
        write,
        e.state.load(Ordering::Relaxed) == FREED,
    );
    let (frames, n) = fault_frames(pc, fp, sp);
    for (i, &ip) in frames[..n].iter().enumerate() {
        out.str("    #").dec(i).str(" ").hex(ip).str("\n");
    }
    let safe = safe_to_symbolise(&frames[1..n]);
    if !safe {
        out.str("  (not symbolised: the fault interrupted the C library or the loader)\n");
    }
    out.flush();
    if safe {
        // Symbolising allocates; a panic in it must not unwind out of the handler.
        let _ = std::panic::catch_unwind(|| symbolised(&frames[..n], &f));
    }
}

/// The report's first lines: the class, where the access lies against the chunk, the chunk.
fn headline(out: &mut Out, f: &Fault, addr: usize, write: Option<bool>, freed: bool) {
    let access = match write {
        Some(true) => "write",
        Some(false) => "read",
        None => "access",
    };
    out.str("memctx: ")
        .str(f.class)
        .str(": ")
        .str(access)
        .str(" at ")
        .hex(addr)
        .str(", ");
    let end = f.chunk + f.requested;
    if addr >= end {
        out.dec(addr - end).str(" bytes past the end of the ");
    } else if addr >= f.chunk {
        out.dec(addr - f.chunk).str(" bytes into the ");
    } else {
        out.dec(f.chunk - addr).str(" bytes before the ");
    }
    out.dec(f.requested).str("-byte chunk at ").hex(f.chunk);
    out.str(if freed {
        ", which was freed (its pages are inaccessible in quarantine)\n"
    } else {
        " (the guard page after it)\n"
    });
    out.str("  chunk: ")
        .hex(f.chunk)
        .str(", ")
        .dec(f.requested)
        .str(" bytes, a block of its own; allocation stack id ")
        .dec(f.alloc as usize)
        .str(", free stack id ")
        .dec(f.free as usize)
        .str("\n  fault stack (raw):\n");
}

/// The faulting instruction and the return addresses above it, and how many there are.
fn fault_frames(pc: usize, fp: usize, sp: usize) -> ([usize; stack::MAX_DEPTH], usize) {
    let mut frames = [MaybeUninit::<usize>::uninit(); stack::MAX_DEPTH];
    frames[0].write(pc);
    let mut n = 1;
    if let Some(ret) = leaf_caller(pc, sp) {
        frames[1].write(ret);
        n = 2;
    }
    n += stack::walk_interrupted(fp, sp, &mut frames[n..]);
    let frames = core::array::from_fn(|i| {
        if i < n {
            // SAFETY: the first `n` entries were written: the pc above, the rest by the walk.
            unsafe { frames[i].assume_init() }
        } else {
            0
        }
    });
    (frames, n)
}

/// Whether the faulting code's callers hold none of the locks symbolising takes. The outermost
/// frames are the thread's entry in the C library (`start_thread`, `__libc_start_call_main`),
/// which holds no lock while user code runs: only a library frame with user code above it (a
/// callback run under the library's lock) rules symbolising out.
fn safe_to_symbolise(callers: &[usize]) -> bool {
    let entry = callers
        .iter()
        .rev()
        .take_while(|&&ip| in_locked_code(ip))
        .count();
    !callers[..callers.len() - entry]
        .iter()
        .any(|&ip| in_locked_code(ip))
}

/// The symbolised part of the report: the fault's stack, the allocation and the free stacks.
fn symbolised(frames: &[usize], f: &Fault) {
    // The faulting instruction is no return address: resolve it as one just after it.
    let mut ips = frames.to_vec();
    ips[0] += 1;
    let mut fault = stack::resolve_ips(&ips);
    if let Some(first) = fault.first_mut() {
        first.ip -= 1;
    }
    let mut s = String::from("  fault:\n");
    s += &stack::format_frames(&stack::shown_frames(fault));
    for (what, id) in [("allocated at", f.alloc), ("freed at", f.free)] {
        if id != 0 {
            s += &format!("  {what}:\n");
            s += &stack::format_frames(&stack::shown(StackId::from_raw(id)));
        }
    }
    let mut out = Out {
        buf: [0; 2048],
        len: 0,
    };
    out.str(&s).flush();
}
