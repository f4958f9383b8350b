//! A chunk header word damaged as host code could damage it (included with `#[path]` by the debug
//! build's report tests of the kinds whose header value is the chunk's footprint, Generation and
//! Slab; the including file declares `mod reports`). The word's fields are laid out as
//! `src/chunk.rs` says: kind id (bits 0–3), external bit (4), the kind's value (5–33), the offset
//! from the block's start (34–63).
#![allow(dead_code)]

use memctx::debug::BugClass;
use memctx::{chunk_prefix_size, pfree, MemoryContext};

use crate::reports::{collect, one};

const VALUE_SHIFT: u32 = 5;
const VALUE_MASK: u64 = (1 << 29) - 1;
const OFFSET_SHIFT: u32 = 34;
/// The unit of a footprint in the header value.
const UNIT: usize = 16;

/// The header word of the chunk whose data is at `data`.
fn header_word(data: *mut u8) -> *mut u64 {
    data.wrapping_sub(chunk_prefix_size()) as *mut u64
}

/// `word` with its value field replaced by `value`, its kind, external bit and offset kept.
fn with_value(word: u64, value: u64) -> u64 {
    assert!(value <= VALUE_MASK);
    (word & !(VALUE_MASK << VALUE_SHIFT)) | (value << VALUE_SHIFT)
}

/// One past the last byte of the block holding the live chunk whose header word is `word`, read
/// at `start`: the block begins the header's offset before the chunk, and the fifth word of its
/// header is its end (`chunk::Block`'s `end_ptr`).
fn block_end(start: usize, word: u64) -> usize {
    let block = (start - (word >> OFFSET_SHIFT) as usize) as *const usize;
    // SAFETY: `block` is the live block of a live chunk; its header is five words and more.
    unsafe { block.add(4).read() }
}

/// Overwrites the footprint in the header word of `victim`, a live `size`-byte chunk of `ctx`
/// named `name` followed by another live chunk, with values the block walk must refuse (kind and
/// offset intact): no footprint at all, exactly the chunk prefix (a chunk with no data), and one
/// that runs 16 bytes past the end of its block. For each, `check()` and `pfree` report a
/// corrupt header of `victim` — not a chunk the walk reaches by trusting the footprint, nor an
/// overrun into what lies past it — and `pfree` leaves the chunk allocated: with the word
/// restored, `check()` finds nothing and the chunk frees.
pub fn assert_overwritten_footprint_is_reported(
    ctx: MemoryContext,
    name: &str,
    victim: *mut u8,
    size: usize,
) {
    // Zeroed data: a walk that took the prefix-only footprint would read its next header here
    // and refuse that one instead.
    unsafe { victim.write_bytes(0, size) };
    let (word, prefix) = (header_word(victim), chunk_prefix_size());
    let kept = unsafe { word.read() };
    let start = word as usize;
    let past_end = (block_end(start, kept) - start) / UNIT + 1;
    let prefix_only = prefix / UNIT;
    assert_eq!(prefix_only * UNIT, prefix);
    for value in [0, prefix_only, past_end] {
        unsafe { word.write(with_value(kept, value as u64)) };
        let found = one(collect(|| assert_eq!(ctx.check(), 1)));
        let freed = one(collect(|| unsafe { pfree(victim) }));
        unsafe { word.write(kept) };
        for (r, at) in [(&found, "check"), (&freed, "pfree")] {
            assert_eq!(r.class, BugClass::CorruptHeader, "value {value}: {r}");
            assert_eq!(r.context, name, "value {value}: {r}");
            assert_eq!(r.chunk, Some(victim as usize), "value {value}: {r}");
            assert_eq!(r.range, Some((-(prefix as isize), 8 - prefix as isize)));
            assert_eq!(r.found_at, at, "value {value}: {r}");
            assert_eq!(r.detail, "the chunk's header word was overwritten");
        }
        assert!(collect(|| assert_eq!(ctx.check(), 0)).is_empty());
    }
    unsafe { pfree(victim) };
}
