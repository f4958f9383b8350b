//! The debug build's chunk layout: what lies between a chunk's header word and its data, and the
//! byte patterns that mark every byte's state.
//!
//! ```text
//!  chunk start                                                    data (16-aligned)
//!  | header word (8) | debug record (24) | front redzone (16)     | requested bytes | rear redzone
//!  |<------------------------- DEBUG_CHUNK_PREFIX (48) ---------->|                 | (to capacity)
//! ```
//!
//! The header word keeps the release build's place and encoding, so the allocator's code is the
//! same in both builds. The record holds what PostgreSQL's checking build keeps (the requested
//! size) plus the chunk's state and the ids of its allocation and free backtraces. The front redzone
//! sits between the record and the data, so a small underrun lands in sentinel bytes — reported
//! with the exact range — before it reaches the metadata. The rear redzone runs from the first byte
//! past the request to the end of the size class: the debug build picks the class for the request
//! rounded up to 8 plus at least [`DEFAULT_REDZONE`] bytes, so, unlike PostgreSQL, there is a
//! sentinel even when a request fills its size class exactly, and the redzone ends on an 8-byte
//! boundary, where ASan can poison it exactly (its first granule may be "first k bytes
//! addressable").
//!
//! Patterns (chosen to be unlikely as real data and distinct from each other):
//! - `FRESH_BYTE` (0xA5) in newly allocated, not yet written memory (palloc0 zeroes over it):
//!   branching on it is an uninitialised read that Valgrind sees and a human recognises;
//! - `REDZONE_BYTE` (0x7E, PostgreSQL's sentinel) in both redzones;
//! - `FREED_BYTE` (0x7F, PostgreSQL's CLOBBER_FREED_MEMORY) in freed chunks, in memory a reset
//!   released, and in unused block space.

use core::mem::size_of;

use crate::chunk::CHUNK_HEADER_SIZE;

/// Fill of fresh, unwritten chunk memory.
pub(crate) const FRESH_BYTE: u8 = 0xA5;
/// Fill of redzones.
pub(crate) const REDZONE_BYTE: u8 = 0x7E;
/// Fill of freed chunks, released and unused memory.
pub(crate) const FREED_BYTE: u8 = 0x7F;

/// Size of the front redzone.
pub(crate) const FRONT_REDZONE: usize = 16;
/// Default (and minimum) size of the rear redzone; configurable upwards in multiples of 8.
pub(crate) const DEFAULT_REDZONE: usize = 16;

/// Chunk state: handed out.
pub(crate) const STATE_LIVE: u32 = u32::from_le_bytes(*b"LIVE");
/// Chunk state: on a freelist.
pub(crate) const STATE_FREE: u32 = u32::from_le_bytes(*b"FREE");

/// The per-chunk debug record, right after the header word.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct DebugRecord {
    /// [`STATE_LIVE`] or [`STATE_FREE`]; anything else means the record was overwritten.
    pub(crate) state: u32,
    /// Stack id of the allocation (0 if none was captured).
    pub(crate) alloc_stack: u32,
    /// Stack id of the free (0 while live).
    pub(crate) free_stack: u32,
    /// Check word: the low 32 bits of the requested size xor'ed with a constant, so that an
    /// overwritten size is recognised instead of trusted.
    pub(crate) check: u32,
    /// The requested size.
    pub(crate) requested: u64,
}

/// Size of the debug record.
pub(crate) const RECORD_SIZE: usize = size_of::<DebugRecord>();

/// Bytes from the chunk start to its data in the debug build.
pub(crate) const DEBUG_CHUNK_PREFIX: usize = CHUNK_HEADER_SIZE + RECORD_SIZE + FRONT_REDZONE;

const CHECK_SALT: u32 = 0x5EED_C0DE;

impl DebugRecord {
    /// A record for a chunk in `state` with `requested` bytes.
    pub(crate) fn new(state: u32, requested: usize, alloc_stack: u32, free_stack: u32) -> Self {
        DebugRecord {
            state,
            alloc_stack,
            free_stack,
            check: (requested as u32) ^ CHECK_SALT,
            requested: requested as u64,
        }
    }

    /// Reads the record at `p` as three words.
    ///
    /// A plain copy of the struct compiles to a 16-byte vector load and a round trip through the
    /// stack, which the reset walk paid for on every chunk (a store-forwarding stall: tens of
    /// cycles each); three word loads split in registers cost a few.
    ///
    /// # Safety
    /// `p` must be readable for [`RECORD_SIZE`] bytes and 8-aligned.
    #[inline(always)]
    pub(crate) unsafe fn load(p: *const DebugRecord) -> DebugRecord {
        let w = p as *const u64;
        // SAFETY: `p` is readable for `RECORD_SIZE` (three words) and 8-aligned (caller), so each
        // of the three word loads is in bounds and aligned.
        let (a, b, requested) = unsafe { (w.read(), w.add(1).read(), w.add(2).read()) };
        DebugRecord {
            state: a as u32,
            alloc_stack: (a >> 32) as u32,
            free_stack: b as u32,
            check: (b >> 32) as u32,
            requested,
        }
    }

    /// Whether the record looks intact.
    pub(crate) fn is_valid(&self) -> bool {
        (self.state == STATE_LIVE || self.state == STATE_FREE)
            && self.check == (self.requested as u32) ^ CHECK_SALT
    }
}

/// The record of the chunk whose data starts at `data`.
#[inline(always)]
pub(crate) fn record_ptr(data: *mut u8) -> *mut DebugRecord {
    data.wrapping_sub(FRONT_REDZONE + RECORD_SIZE) as *mut DebugRecord
}

/// Start of the front redzone of the chunk whose data starts at `data`.
#[inline(always)]
pub(crate) fn front_redzone(data: *mut u8) -> *mut u8 {
    data.wrapping_sub(FRONT_REDZONE)
}

const _: () = assert!(DEBUG_CHUNK_PREFIX % 16 == 0 && RECORD_SIZE == 24);
