//! Chunk and block layout shared by every context kind.
//!
//! A context takes memory from the system allocator in *blocks* and hands it out in *chunks*. Every
//! chunk is preceded by one 64-bit header word, as PostgreSQL's `MemoryChunk` is, so that `pfree`,
//! `repalloc` and "which context owns this pointer" need nothing but the pointer:
//!
//! ```text
//!  bit 63 ............................ 34 33 ....................... 5   4     3..0
//!  | offset from the block start (30)   | kind-specific value (29)    | ext | kind id |
//! ```
//!
//! * the **kind id** says which context kind carved the chunk, so the free functions dispatch on it
//!   without knowing the context (see `crate::kinds`). The ids are chosen off every bit pattern a
//!   pointer memctx never handed out is likely to show there (see [`RESERVED_IDS`]), so that such a
//!   pointer decodes as no kind and is a clean panic instead of a wild free;
//! * the **external** bit marks a chunk that has a block of its own (a request above the chunk
//!   limit); such a block is returned to the system when the chunk is freed;
//! * the **value** is the kind's own: AllocSet keeps the freelist index (the size class) there,
//!   Slab the chunk's footprint in 16-byte units;
//! * the **offset** leads back to the block header, whose first word names the owning context.
//!
//! Unlike PostgreSQL, whose chunks are aligned to MAXALIGN (8), every chunk's data here starts on a
//! 16-byte boundary: hashbrown asks for 16 on every table and `u128` needs it, and the safe API must
//! serve them on the fast path. The price is that a chunk's footprint is its size class plus its
//! prefix rounded up to 16 — eight bytes of padding per chunk above the smallest class. We accept it:
//! the alternative, separate freelists per alignment, would cost a branch and a cache line on every
//! allocation.
//!
//! In the debug build (`debug-contexts`) the *prefix* in front of the data grows from the header
//! word alone to header, debug record and a redzone; the header word itself keeps its place at the
//! start of the chunk and its encoding, so the allocator's code is the same in both builds and only
//! [`CHUNK_PREFIX`] changes. The debug modules own everything between the header and the data.

use core::mem::size_of;

/// Every chunk's data is aligned to this; larger alignments take the slower redirect path.
pub(crate) const CHUNK_ALIGN: usize = 16;

/// Size of the header word in front of every chunk.
pub(crate) const CHUNK_HEADER_SIZE: usize = size_of::<u64>();

/// Bytes between the start of a chunk (its header word) and its data: the hook side decides
/// (`crate::hooks::CHUNK_PREFIX`) — the header word alone in a release build; header word, the
/// chunk's debug record and the redzone that guards them in the debug build.
pub(crate) const CHUNK_PREFIX: usize = crate::hooks::CHUNK_PREFIX;

/// Number of bits of the kind id.
const KIND_BITS: u32 = 4;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
const EXTERNAL_BIT: u64 = 1 << KIND_BITS;
const VALUE_SHIFT: u32 = KIND_BITS + 1;
const VALUE_BITS: u32 = 29;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const OFFSET_SHIFT: u32 = VALUE_SHIFT + VALUE_BITS;

/// Largest offset of a chunk inside its block the header can encode (1 GiB − 1); block sizes are
/// capped below it.
pub(crate) const MAX_BLOCK_OFFSET: usize = (1 << (64 - OFFSET_SHIFT)) - 1;

/// Kind ids no chunk header carries, because memory memctx did not carve shows them in the word
/// in front of a pointer:
///
/// * 0: zeroed or never-written memory;
/// * 1 to 7: glibc's `malloc` size word, whose low three bits are its flags (PREV_INUSE = 1,
///   IS_MMAPPED = 2, NON_MAIN_ARENA = 4 — the last set on every chunk of a thread other than
///   main) and whose bit 3 is clear, because glibc's chunk sizes are multiples of 16 on 64-bit
///   targets;
/// * 14 and 15: the low nibbles of the debug build's fill patterns 0x7E and 0x7F (0xA5's, 5, is
///   among glibc's), so freed or unused memory taken for a chunk decodes as no kind.
///
/// PostgreSQL reserves 0, 1, 2 and 15 for the same reasons (`memutils_internal.h`); a thread's
/// arena makes glibc's 4 and 5 appear here as well.
pub(crate) const RESERVED_IDS: [u64; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 14, 15];

const _: () = {
    let mut i = 0;
    while i < RESERVED_IDS.len() {
        let id = RESERVED_IDS[i];
        assert!(
            id != ChunkKind::AllocSet as u64
                && id != ChunkKind::AlignedRedirect as u64
                && id != ChunkKind::Generation as u64
                && id != ChunkKind::Bump as u64
                && id != ChunkKind::Slab as u64
        );
        i += 1;
    }
};

/// What a chunk header's kind id names. Ids are stable: external tools read them (the registry
/// publishes them, see `crate::registry`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkKind {
    /// Not a real chunk: a header written in front of an over-aligned pointer, whose offset leads
    /// back to the data of the real chunk that holds it (PostgreSQL's "aligned redirect").
    AlignedRedirect = 9,
    /// Carved by an AllocSet context.
    AllocSet = 10,
    /// Carved by a Generation context.
    Generation = 11,
    /// Carved by a Slab context.
    Slab = 12,
    /// Carved by a Bump context (only the debug build writes Bump chunk headers).
    Bump = 13,
}

impl ChunkKind {
    /// Decodes a kind id, `None` for ids no kind uses (a corrupt or foreign header).
    #[inline(always)]
    pub(crate) fn from_id(id: u64) -> Option<ChunkKind> {
        match id {
            9 => Some(ChunkKind::AlignedRedirect),
            10 => Some(ChunkKind::AllocSet),
            11 => Some(ChunkKind::Generation),
            12 => Some(ChunkKind::Slab),
            13 => Some(ChunkKind::Bump),
            _ => None,
        }
    }
}

/// A decoded chunk header word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkHeader(pub(crate) u64);

impl ChunkHeader {
    /// Encodes a header. `offset` is the distance from the block start to the chunk start.
    #[inline(always)]
    pub(crate) fn new(kind: ChunkKind, external: bool, value: u32, offset: usize) -> ChunkHeader {
        debug_assert!(
            (value as u64) <= VALUE_MASK,
            "chunk value {value} too large"
        );
        debug_assert!(
            offset <= MAX_BLOCK_OFFSET,
            "chunk offset {offset} too large"
        );
        ChunkHeader(
            kind as u64
                | if external { EXTERNAL_BIT } else { 0 }
                | (value as u64) << VALUE_SHIFT
                | (offset as u64) << OFFSET_SHIFT,
        )
    }

    /// The raw kind id (not yet validated).
    #[inline(always)]
    pub(crate) fn kind_id(self) -> u64 {
        self.0 & KIND_MASK
    }

    /// Whether the chunk has a block of its own.
    #[inline(always)]
    pub(crate) fn is_external(self) -> bool {
        self.0 & EXTERNAL_BIT != 0
    }

    /// The kind-specific value (AllocSet: the freelist index).
    #[inline(always)]
    pub(crate) fn value(self) -> u32 {
        ((self.0 >> VALUE_SHIFT) & VALUE_MASK) as u32
    }

    /// Distance from the block start to the chunk start.
    #[inline(always)]
    pub(crate) fn offset(self) -> usize {
        (self.0 >> OFFSET_SHIFT) as usize
    }
}

/// Pointer to the chunk start (its header word) from a data pointer.
#[inline(always)]
pub(crate) fn chunk_of(data: *mut u8) -> *mut u8 {
    data.wrapping_sub(CHUNK_PREFIX)
}

/// Data pointer of a chunk start.
#[inline(always)]
pub(crate) fn data_of(chunk: *mut u8) -> *mut u8 {
    chunk.wrapping_add(CHUNK_PREFIX)
}

/// Reads the header word of the chunk whose data starts at `data`.
///
/// # Safety
/// `data` must be the data pointer of a chunk carved by this crate (or of an aligned redirect):
/// the `CHUNK_PREFIX` bytes before it must be readable.
#[inline(always)]
pub(crate) unsafe fn read_header(data: *mut u8) -> ChunkHeader {
    let chunk = chunk_of(data);
    crate::hooks::header_open(chunk);
    // SAFETY: the caller guarantees the chunk prefix is readable; the header word is 8-aligned
    // because chunk data is 16-aligned and CHUNK_PREFIX is a multiple of 8.
    let header = ChunkHeader(unsafe { (chunk as *const u64).read() });
    crate::hooks::header_close(chunk);
    header
}

/// Writes the header word of the chunk starting at `chunk`.
///
/// # Safety
/// `chunk` must be the 8-aligned start of a chunk inside a block this crate owns.
#[inline(always)]
pub(crate) unsafe fn write_header(chunk: *mut u8, header: ChunkHeader) {
    crate::hooks::header_open(chunk);
    // SAFETY: the caller guarantees `chunk` is an aligned, writable chunk start.
    unsafe { (chunk as *mut u64).write(header.0) }
    crate::hooks::header_close(chunk);
}

/// Rounds `n` up to a multiple of `align` (a power of two). The caller ensures no overflow.
#[inline(always)]
pub(crate) const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Bytes right after the block header that belong to the block's kind, for fields it keeps per
/// block (Generation: its counts of chunks and of freed chunks). Every kind's first chunk starts
/// after them, so the block walk, the debug build and the gdb walker find the first chunk at the
/// same place whatever the kind.
pub(crate) const BLOCK_KIND_BYTES: usize = 8;

/// Bytes at the start of every block that are its bookkeeping, not chunk space: the block header
/// and the kind's per-block bytes.
pub(crate) const BLOCK_META_SIZE: usize = BLOCK_HEADER_SIZE + BLOCK_KIND_BYTES;

/// Bytes between the block header and the first chunk: the kind's per-block bytes, then padding so
/// that chunk data lands on [`CHUNK_ALIGN`] (the chunk start must sit `CHUNK_PREFIX` bytes before
/// an aligned address). 8 in a release build, where the kind's bytes take what was alignment
/// padding anyway; 16 in the debug build.
pub(crate) const FIRST_CHUNK_PAD: usize =
    align_up(BLOCK_META_SIZE + CHUNK_PREFIX, CHUNK_ALIGN) - CHUNK_PREFIX - BLOCK_HEADER_SIZE;

/// Footprint of a chunk whose data area is `class` bytes: prefix plus data, rounded so that the
/// next chunk's data is aligned too.
#[inline(always)]
pub(crate) const fn footprint(class: usize) -> usize {
    align_up(CHUNK_PREFIX + class, CHUNK_ALIGN)
}

/// The block header every kind's block starts with (a kind that needs more per block puts its
/// fields after it): the kind-neutral description of a block that the hooks, the debug build and
/// the gdb walker read.
///
/// `#[repr(C)]` and stable: the gdb walker and the debug build read it. `context` comes first so a
/// chunk's owner is one load away from its block.
#[repr(C, align(16))]
pub(crate) struct Block {
    /// The owning context.
    pub(crate) context: *mut crate::context::ContextHeader,
    /// Previous block in the context's list (null for the head).
    pub(crate) prev: *mut Block,
    /// Next block in the context's list.
    pub(crate) next: *mut Block,
    /// Start of the unused space at the block's end.
    pub(crate) free_ptr: *mut u8,
    /// One past the block's last byte; `end_ptr - block` is the size given to the system allocator.
    pub(crate) end_ptr: *mut u8,
    /// The debug build's mark: space below it was handed out before and released by a reset, so
    /// carving it again verifies it (the release build leaves it null). It lies in what was the
    /// header's alignment padding, so the header's size and the other fields' offsets are the same.
    pub(crate) released: *mut u8,
}

/// Size of the block header.
pub(crate) const BLOCK_HEADER_SIZE: usize = core::mem::size_of::<Block>();
const _: () = assert!(BLOCK_HEADER_SIZE == 48);

impl Block {
    /// Size of the block as allocated from the system.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.end_ptr as usize - self as *const Block as usize
    }

    /// First chunk start in a block.
    #[inline]
    pub(crate) fn first_chunk(block: *mut Block) -> *mut u8 {
        (block as *mut u8).wrapping_add(BLOCK_HEADER_SIZE + FIRST_CHUNK_PAD)
    }
}

/// The block of a chunk whose data starts at `data`, through the header's offset.
#[inline(always)]
pub(crate) fn block_of(data: *mut u8, hdr: ChunkHeader) -> *mut Block {
    chunk_of(data).wrapping_sub(hdr.offset()) as *mut Block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = ChunkHeader::new(ChunkKind::AllocSet, true, 10, MAX_BLOCK_OFFSET);
        assert_eq!(h.kind_id(), ChunkKind::AllocSet as u64);
        assert!(h.is_external());
        assert_eq!(h.value(), 10);
        assert_eq!(h.offset(), MAX_BLOCK_OFFSET);
        let h = ChunkHeader::new(ChunkKind::AlignedRedirect, false, VALUE_MASK as u32, 64);
        assert_eq!(
            ChunkKind::from_id(h.kind_id()),
            Some(ChunkKind::AlignedRedirect)
        );
        assert!(!h.is_external());
        assert_eq!(h.value() as u64, VALUE_MASK);
        assert_eq!(h.offset(), 64);
        assert_eq!(ChunkKind::from_id(0), None);
    }

    #[test]
    fn kind_ids_avoid_reserved_patterns() {
        for id in 0..16u64 {
            let reserved = RESERVED_IDS.contains(&id);
            if let Some(kind) = ChunkKind::from_id(id) {
                assert!(!reserved, "{kind:?} uses reserved id {id}");
                assert_eq!(kind as u64, id);
                // Bit 3 set: never a glibc size word's low nibble on a 64-bit target.
                assert_ne!(id & 8, 0, "{kind:?}");
            }
        }
        for pattern in [0xA5u64, 0x7E, 0x7F, 0x00] {
            assert_eq!(
                ChunkKind::from_id(pattern & KIND_MASK),
                None,
                "{pattern:#x}"
            );
        }
    }

    #[test]
    fn footprints_keep_data_aligned() {
        for class in [8usize, 16, 32, 64, 8192] {
            assert_eq!(footprint(class) % CHUNK_ALIGN, 0);
            assert!(footprint(class) >= CHUNK_PREFIX + class);
        }
        assert_eq!((FIRST_CHUNK_PAD + CHUNK_PREFIX) % CHUNK_ALIGN, 0);
    }
}
