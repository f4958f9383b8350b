//! The block walk: the chunks of one block, decoded by their kind. The debug build's verification
//! (`debug/verify.rs`), site attribution (`debug/sites.rs`) and pointer classification
//! (`debug/hooks.rs`) walk blocks through it alone; a release build has no use for it.
#![cfg_attr(not(feature = "debug-contexts"), allow(dead_code))]

use core::ops::ControlFlow;

use super::aset::AllocSet;
use super::{ContextKind, KindId};
use crate::chunk::{self, Block, ChunkHeader, ChunkKind, CHUNK_ALIGN, CHUNK_PREFIX};

/// A chunk as a block walk decodes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walked {
    /// The chunk's start (its header word).
    pub(crate) start: *mut u8,
    /// Its data.
    pub(crate) data: *mut u8,
    /// Data bytes it can hold.
    pub(crate) cap: usize,
    /// Bytes from its start to the next chunk's start.
    pub(crate) footprint: usize,
}

/// What is wrong with a chunk header a walk could not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Its offset does not lead back to its block.
    Offset,
    /// Its kind id is not the block's kind.
    Kind,
    /// Its kind-specific value is out of range.
    Value,
    /// Its footprint runs past the block's end.
    Extent,
}

/// A chunk header a walk could not decode: where, what it read, and why it refused it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BadChunk {
    /// The data pointer of the chunk the header would belong to.
    pub(crate) data: *mut u8,
    /// The header word read.
    pub(crate) hdr: ChunkHeader,
    /// Why it does not decode.
    pub(crate) why: Damage,
}

impl Walked {
    /// The chunk, unless its footprint runs past `end` (its block's end): then `hdr` is refused
    /// as [`Damage::Extent`].
    pub(crate) fn within(self, end: usize, hdr: ChunkHeader) -> Result<Walked, BadChunk> {
        if self.start as usize + self.footprint > end {
            return Err(BadChunk {
                data: self.data,
                hdr,
                why: Damage::Extent,
            });
        }
        Ok(self)
    }
}

impl BadChunk {
    /// The checks every kind's `decode_chunk` starts with: `hdr`, read at `start` in `block`, has
    /// an offset that leads back to the block and the id of `kind`; `data` names the chunk in a
    /// refusal.
    pub(crate) fn unless_owned(
        block: *mut Block,
        start: *mut u8,
        data: *mut u8,
        hdr: ChunkHeader,
        kind: ChunkKind,
    ) -> Result<(), BadChunk> {
        let why = if hdr.offset() != start as usize - block as usize {
            Damage::Offset
        } else if ChunkKind::from_id(hdr.kind_id()) != Some(kind) {
            Damage::Kind
        } else {
            return Ok(());
        };
        Err(BadChunk { data, hdr, why })
    }
}

/// Decodes a chunk of a kind whose header value is the chunk's footprint in 16-byte units
/// (Generation, Slab): `hdr`, read at `start` in `block`, must be `kind`'s and lead back to the
/// block, and the footprint hold the prefix and some data. An external chunk — `external` says
/// whether the kind has them — fills the rest of its block.
pub(crate) fn decode_by_footprint(
    block: *mut Block,
    start: *mut u8,
    hdr: ChunkHeader,
    kind: ChunkKind,
    external: bool,
) -> Result<Walked, BadChunk> {
    // SAFETY: only the block header's end pointer is read; the caller passes a live block.
    let end = unsafe { (*block).end_ptr } as usize;
    let data = chunk::data_of(start);
    BadChunk::unless_owned(block, start, data, hdr, kind)?;
    let footprint = match (hdr.is_external(), external) {
        (true, true) => CHUNK_PREFIX + end.saturating_sub(data as usize),
        (false, _) if hdr.value() as usize * CHUNK_ALIGN > CHUNK_PREFIX => {
            hdr.value() as usize * CHUNK_ALIGN
        }
        _ => {
            return Err(BadChunk {
                data,
                hdr,
                why: Damage::Value,
            })
        }
    };
    Walked {
        start,
        data,
        cap: footprint - CHUNK_PREFIX,
        footprint,
    }
    .within(end, hdr)
}

/// Decodes the chunk of `block` (of kind `kind`) starting at `start`, whose header reads `hdr`.
pub(crate) fn decode_chunk(
    kind: KindId,
    block: *mut Block,
    start: *mut u8,
    hdr: ChunkHeader,
) -> Result<Walked, BadChunk> {
    match kind {
        KindId::AllocSet => AllocSet::decode_chunk(block, start, hdr),
        KindId::Generation => super::generation::Generation::decode_chunk(block, start, hdr),
        KindId::Bump => super::bump::Bump::decode_chunk(block, start, hdr),
        KindId::Slab => super::slab::Slab::decode_chunk(block, start, hdr),
    }
}

/// Walks the chunks of `block`, a block of a context of kind `kind`, from its first chunk (the
/// kind's `first_chunk`) to its
/// free pointer, calling `visit` on each until it breaks. A header that does not decode ends the
/// walk with `Err` (nothing past it can be trusted).
///
/// Header words are read through `hooks::header_peek`, which leaves what Valgrind and ASan think
/// of the bytes as it was: a walk may pass over damage, and must not disturb it.
///
/// # Safety
/// `block` must be a block of a live context of kind `kind` whose end pointer is its own (the
/// walk stops at the end pointer if the free pointer lies past it).
pub(crate) unsafe fn walk_block<F>(
    kind: KindId,
    block: *mut Block,
    mut visit: F,
) -> Result<(), BadChunk>
where
    F: FnMut(&Walked) -> ControlFlow<()>,
{
    // SAFETY: the caller promises a block of a live context whose end pointer is right. Every
    // chunk start below both the free and the end pointer lies in the block, and a header is read
    // there only once the previous chunk decoded with a footprint inside the block.
    unsafe {
        let limit = (*block).free_ptr.min((*block).end_ptr);
        let mut c = super::first_chunk(block);
        while c < limit {
            let hdr = crate::hooks::header_peek(c);
            let w = decode_chunk(kind, block, c, hdr)?;
            if visit(&w).is_break() {
                break;
            }
            c = c.add(w.footprint);
        }
    }
    Ok(())
}
