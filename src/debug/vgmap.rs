//! Under memcheck, blocks are mapped with `mmap`, not taken from `malloc`.
//!
//! The reason is how memcheck describes an address in an error. Its order (`describe_addr` in
//! Valgrind's `memcheck/mc_errors.c`) is: a block named with `VALGRIND_CREATE_BLOCK`, a live
//! chunk of a mempool, a live `malloc`'d block around the address, and only then the queue of
//! recently freed blocks — where a freed pool chunk waits with its allocation and free stacks. A
//! context's block from `malloc` is such a live block around every chunk in it, so a read or
//! write through a pointer kept past `pfree` or a reset would be described as "N bytes inside a
//! block of size 8,192 alloc'd" at `kinds::aset::new_block`: the context's block, not the chunk. With
//! the block mapped, memcheck knows no block around the chunk and names the freed chunk itself:
//! "0 bytes inside a block of size 10 free'd", with the `pfree`'s (or the reset's) stack and the
//! chunk's allocation stack.
//!
//! The leak search is unaffected where it matters: a mapped block's bytes are scanned as roots,
//! but only bytes memcheck holds addressable and defined — live chunks' contents and block
//! headers; freed chunks and unused space are NOACCESS and skipped. A chunk nothing points to is
//! still "definitely lost"; what changes is that the chunks a lost chunk points to count as
//! reachable (the search scans the lost chunk's bytes as a root), not "indirectly lost".
//!
//! A block starts [`LEAD`] bytes into its mapping. Its header is a pool chunk, and memcheck marks
//! a pool chunk's redzones NOACCESS whenever the chunk is allocated or freed
//! (`MC_(mempool_alloc)` and `die_and_free_mem` in `memcheck/mc_malloc_wrappers.c`), the front one
//! too: a header at the mapping's first byte would put that redzone in whatever memory lies just
//! below the mapping — another program's `malloc`'d bytes, as likely as not.

use super::guard::page;

/// Bytes of the mapping before the block: the header's pool redzone (see the module docs),
/// rounded up to the block alignment.
const LEAD: usize = crate::chunk::CHUNK_ALIGN;

const _: () = assert!(LEAD >= super::sanitizer::POOL_REDZONE);

/// Bytes a block of `size` bytes maps.
fn mapped_len(size: usize) -> usize {
    (LEAD + size).next_multiple_of(page())
}

/// Maps memory for a block of `size` bytes; null when the system refuses (the allocation fails,
/// as it would have with `malloc`).
pub(crate) fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing changes no
    // existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            mapped_len(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        core::ptr::null_mut()
    } else {
        (p as *mut u8).wrapping_add(LEAD)
    }
}

/// Gives back a block of `size` bytes that [`map`] made.
///
/// # Safety
/// `block` must come from [`map`] with this `size`, and nothing may use its memory any more.
pub(crate) unsafe fn unmap(block: *mut u8, size: usize) {
    let mapping = block.wrapping_sub(LEAD);
    // SAFETY: `block` came from `map` with this `size` (caller), so `LEAD` bytes before it starts
    // a mapping of `mapped_len(size)` bytes that is ours, and nothing uses it any more.
    unsafe { libc::munmap(mapping as *mut libc::c_void, mapped_len(size)) };
}
