# memctx_gdb.py -- walk memctx context trees from gdb, the way the PostgreSQL article's gdb script
# walks TopMemoryContext, and print them in PostgreSQL's MemoryContextStats format.
#
# Load it and run it against a live process or a core file:
#
#   gdb -p PID -batch -x valgrind/memctx_gdb.py -ex memctx-stats
#   gdb -batch PROGRAM CORE -x valgrind/memctx_gdb.py -ex memctx-stats
#
# Commands:
#
#   memctx-stats [--thread TID|NAME]... [--max-level N] [--max-children N]
#                [--max-contexts N] [--max-chunks N] [--registry ADDR]
#       Prints every thread's context tree (or only the selected threads'), oldest thread first:
#       a header line per thread, then the tree exactly as memctx::format_stats (and PostgreSQL's
#       MemoryContextStats) prints it, ending with its "Grand total" line.
#   memctx-threads [--registry ADDR]
#       Lists the threads in the registry: tid, state, TopMemoryContext address, name.
#
# How it works: memctx keeps a `#[no_mangle]` static, MEMCTX_REGISTRY (src/registry.rs), heading a
# list of one entry per thread with the thread's TopMemoryContext. The registry also publishes the
# field offsets of the context and block headers. This script reads raw memory only, through those
# offsets, so it needs no debug info: it works on release builds as long as the MEMCTX_REGISTRY
# symbol is there (when the symbol table is stripped too, it looks for the registry's magic in the
# program's .data sections). It never calls into the process, so it is safe on a core file and on a
# process stopped anywhere, even inside the allocator; a tree caught in the middle of an update, or
# corrupted memory, gives warnings (printed after the thread's tree), never a hang: every list walk
# has a cycle check and a limit.
#
# Per context, as memctx's own stats do (each kind's `counters` in src/kinds/): total = sum over
# the block list of (end_ptr - block), blocks = length of the block list, free = the blocks'
# unused tails (end_ptr - free_ptr), used = total - free; then what the context's kind adds, from
# the table `kinds` below (by the kind ids the registry publishes):
#   AllocSet   -- every chunk on the eleven freelists: its footprint (chunk prefix + size class,
#                 rounded up to 16; class = 8 << list index) is free, and it is a free chunk;
#   Generation -- each block's count of freed chunks (at the offset the registry publishes):
#                 free chunks whose bytes stay used until the block empties;
#   Bump       -- nothing: its chunks are freed only by the reset;
#   Slab       -- each block's count of free slots (at the offset the registry publishes): free
#                 chunks; those past the unused tail, on the block's free list, are free bytes
#                 too, a slot's footprint (published in the context's Slab state) each.
# Each kind's line has PostgreSQL's shape for it, as memctx's stats print it (stats::KindDetail):
# a Generation's adds its blocks' chunk counts, a Slab's its empty blocks, a Bump's has no free
# chunks.

import bisect
import re
import struct

import gdb

REGISTRY_SYMBOL = "MEMCTX_REGISTRY"
REGISTRY_MAGIC = b"MCTXREG1"
CONTEXT_MAGIC = b"MEMCTXHD"
DEAD_CONTEXT_MAGIC = b"MEMCTXDD"
# Layout versions this script knows (memctx::LAYOUT_VERSION).
KNOWN_LAYOUT_VERSIONS = (5,)
THREAD_STATES = {1: "live", 2: "exited"}

# Facts of layout version 5 that the registry does not publish (the kind ids it does publish).
NUM_FREELISTS = 11
MIN_CLASS = 8
CHUNK_ALIGN = 16
KIND_MASK = 0xF
EXTERNAL_BIT = 0x10
VALUE_SHIFT = 5
VALUE_MASK = (1 << 29) - 1
BLOCK_CONTEXT_OFFSET = 0  # the block header's first word names the owning context
# Bytes after the block header that belong to the block's kind (memctx's chunk::BLOCK_KIND_BYTES).
BLOCK_KIND_BYTES = 8
# A Generation block's count of chunks carved lies just before its published count of freed ones;
# a Slab context's count of empty blocks, 56 bytes past its published slot footprint (both
# checked at compile time in src/kinds/generation.rs and src/kinds/slab.rs).
GENERATION_NCHUNKS_BEFORE_NFREE = 4
SLAB_NEMPTY_PAST_FOOTPRINT = 56

# Registry (repr(C), 64-bit): magic u64, layout_version u32, nthreads u32, head ptr, LayoutInfo.
REG_VERSION = 8
REG_NTHREADS = 12
REG_HEAD = 16
REG_LAYOUT = 24
LAYOUT_FIELDS = (
    "context_size",
    "magic",
    "id",
    "name",
    "ident",
    "parent",
    "first_child",
    "next_sibling",
    "mem_allocated",
    "blocks",
    "freelist",
    "block_size",
    "block_next",
    "block_free_ptr",
    "block_end_ptr",
    "chunk_prefix",
    "kind",
    "alloc_set_id",
    "redirect_id",
    "bump_id",
    "generation_id",
    "generation_nfree",
    "slab_id",
    "slab_nfree",
    "slab_footprint",
)
REG_SIZE = REG_LAYOUT + 4 * len(LAYOUT_FIELDS)
# ThreadEntry (repr(C), 64-bit): next ptr, top ptr, state u32, os_tid u32, name [u8; 64], then
# memctx's own `tree` pointer at 88 (the thread's recycle lists of deleted headers, which the entry
# keeps reachable after the thread exits; nothing a walker needs, so not read here).
ENTRY_NEXT = 0
ENTRY_TOP = 8
ENTRY_STATE = 16
ENTRY_TID = 20
ENTRY_NAME = 24
ENTRY_SIZE = 88  # the bytes read per entry: the fields above (the entry itself is 96 bytes)

# Defaults of the guards and of the printing limits (PostgreSQL's MemoryContextStats: 100/100).
DEFAULT_MAX_LEVEL = 100
DEFAULT_MAX_CHILDREN = 100
DEFAULT_MAX_CONTEXTS = 100000
DEFAULT_MAX_CHUNKS = 10000000
MAX_THREADS = 1000000
MAX_BLOCKS = 10000000
MAX_NAME_LEN = 4096
MAX_IDENT_LEN = 1 << 20
MAX_BLOCK_SIZE = 1 << 40
IDENT_DISPLAY_MAX = 100
CHUNK_WINDOW = 64 * 1024


class WalkError(Exception):
    """Memory that cannot be read or does not look like what it should be."""


def align_up(n, a):
    return (n + a - 1) & ~(a - 1)


class Memory:
    """Raw reads from the inferior, decoded with the registry's byte order."""

    def __init__(self, inferior, endian):
        self.inferior = inferior
        self.endian = endian

    def read(self, addr, n):
        if addr <= 0 or n < 0 or addr + n > (1 << 64):
            raise WalkError("bad address 0x%x" % addr)
        try:
            return bytes(self.inferior.read_memory(addr, n))
        except gdb.MemoryError:
            raise WalkError("cannot read %d bytes at 0x%x" % (n, addr))

    def u32(self, buf, off):
        return struct.unpack_from(self.endian + "I", buf, off)[0]

    def u64(self, buf, off):
        return struct.unpack_from(self.endian + "Q", buf, off)[0]


class Layout:
    """The LayoutInfo the registry publishes, checked for plausibility."""

    def __init__(self, mem, buf):
        for i, field in enumerate(LAYOUT_FIELDS):
            setattr(self, field, mem.u32(buf, REG_LAYOUT + 4 * i))
        cs, bs = self.context_size, self.block_size
        words = [
            self.magic,
            self.id,
            self.name + 8,
            self.ident + 8,
            self.parent,
            self.first_child,
            self.next_sibling,
            self.mem_allocated,
            self.blocks,
        ]
        bad = [w for w in words if w + 8 > cs]
        if self.kind + 4 > cs:
            bad.append(self.kind)
        ids = (
            self.alloc_set_id,
            self.redirect_id,
            self.bump_id,
            self.generation_id,
            self.slab_id,
        )
        if len(set(ids)) != len(ids) or not all(0 < i <= KIND_MASK for i in ids):
            bad.append(ids)
        if self.freelist + 8 * NUM_FREELISTS > cs:
            bad.append(self.freelist)
        for w in (self.block_next, self.block_free_ptr, self.block_end_ptr):
            if w + 8 > bs:
                bad.append(w)
        if not bs <= self.generation_nfree <= bs + 4:
            bad.append(self.generation_nfree)
        # A Slab block's own fields follow its header (a count, a free-list head, two links).
        if not bs <= self.slab_nfree <= bs + 28:
            bad.append(self.slab_nfree)
        if self.slab_footprint + 8 > cs:
            bad.append(self.slab_footprint)
        if (
            bad
            or not 0 < cs <= 65536
            or not 0 < bs <= 4096
            or bs % CHUNK_ALIGN
            or not 8 <= self.chunk_prefix <= 4096
            or self.chunk_prefix % 8
        ):
            raise WalkError("the registry's layout table is implausible: %r" % vars(self))

    def footprint(self, idx):
        return align_up(self.chunk_prefix + (MIN_CLASS << idx), CHUNK_ALIGN)


class Node:
    """One context: its own counters and its children, as memctx's StatsNode."""

    __slots__ = (
        "addr", "name", "ident", "kind", "total", "nblocks", "free", "fchunks", "chunks",
        "empty_blocks", "children",
    )

    def __init__(self, addr):
        self.addr = addr
        self.name = b""
        self.ident = None
        self.kind = "unknown"
        self.total = self.nblocks = self.free = self.fchunks = self.chunks = 0
        self.empty_blocks = 0
        self.children = []


class Registry:
    """MEMCTX_REGISTRY, found and validated."""

    def __init__(self, addr=None):
        self.inferior = gdb.selected_inferior()
        if self.inferior.pid == 0 and not self.inferior.threads():
            raise gdb.GdbError(
                "memctx: no process: attach to one (gdb -p PID) or load a core file "
                "(gdb PROGRAM CORE) first"
            )
        if gdb.lookup_type("void").pointer().sizeof != 8:
            raise gdb.GdbError("memctx: only 64-bit programs are supported (layout version 5)")
        self.how = "given"
        if addr is None:
            addr, self.how = find_registry(self.inferior)
        self.addr = addr
        try:
            raw = bytes(self.inferior.read_memory(addr, REG_SIZE))
        except gdb.MemoryError:
            raise gdb.GdbError("memctx: cannot read the registry at 0x%x" % addr)
        magic = raw[:8]
        if magic == REGISTRY_MAGIC:
            endian = "<"
        elif magic == REGISTRY_MAGIC[::-1]:
            endian = ">"
        else:
            raise gdb.GdbError(
                "memctx: %s at 0x%x has magic %r, expected %r: not a memctx registry this script "
                "knows (or the memory is garbage); refusing to walk it"
                % (REGISTRY_SYMBOL, addr, magic, REGISTRY_MAGIC)
            )
        self.mem = Memory(self.inferior, endian)
        self.version = self.mem.u32(raw, REG_VERSION)
        if self.version not in KNOWN_LAYOUT_VERSIONS:
            raise gdb.GdbError(
                "memctx: the registry at 0x%x has layout version %d; this script knows version%s "
                "%s. Use the memctx_gdb.py of the memctx release the program was built with."
                % (
                    addr,
                    self.version,
                    "s" if len(KNOWN_LAYOUT_VERSIONS) > 1 else "",
                    ", ".join(str(v) for v in KNOWN_LAYOUT_VERSIONS),
                )
            )
        self.nthreads = self.mem.u32(raw, REG_NTHREADS)
        self.head = self.mem.u64(raw, REG_HEAD)
        try:
            self.layout = Layout(self.mem, raw)
        except WalkError as e:
            raise gdb.GdbError("memctx: %s; refusing to walk it" % e)

    def threads(self):
        """The thread entries, oldest first, and warnings about the list."""
        entries, warnings, seen = [], [], set()
        p = self.head
        while p:
            if p in seen:
                warnings.append("the thread list loops back to 0x%x" % p)
                break
            if len(seen) >= MAX_THREADS:
                warnings.append("more than %d thread entries; stopped" % MAX_THREADS)
                break
            seen.add(p)
            try:
                buf = self.mem.read(p, ENTRY_SIZE)
            except WalkError as e:
                warnings.append("thread entry 0x%x: %s" % (p, e))
                break
            name = buf[ENTRY_NAME : ENTRY_NAME + 64].split(b"\0", 1)[0]
            entries.append(
                {
                    "addr": p,
                    "top": self.mem.u64(buf, ENTRY_TOP),
                    "state": self.mem.u32(buf, ENTRY_STATE),
                    "tid": self.mem.u32(buf, ENTRY_TID),
                    "name": name.decode("utf-8", "replace"),
                }
            )
            p = self.mem.u64(buf, ENTRY_NEXT)
        entries.reverse()
        return entries, warnings


def find_registry(inferior):
    """The registry's address: from the symbol, else by scanning .data for its magic."""
    lang = gdb.parameter("language")
    try:
        gdb.execute("set language c", to_string=True)
        try:
            return int(gdb.parse_and_eval("(unsigned long)&%s" % REGISTRY_SYMBOL)), "symbol"
        except gdb.error:
            pass
    finally:
        gdb.execute("set language %s" % lang, to_string=True)
    found = scan_for_registry(inferior)
    if found:
        return found, "found by scanning .data: no %s symbol" % REGISTRY_SYMBOL
    raise gdb.GdbError(
        "memctx: no %s symbol in this program, and no registry in its .data sections. Is it a "
        "memctx program, and did it create a context yet? (If the symbol table was stripped, "
        "pass --registry ADDR.)" % REGISTRY_SYMBOL
    )


def scan_for_registry(inferior):
    """Looks for the registry's magic, followed by a known layout version, in .data sections."""
    try:
        files = gdb.execute("info files", to_string=True)
    except gdb.error:
        return None
    sections = re.findall(r"(0x[0-9a-f]+) - (0x[0-9a-f]+) is \.data\b", files)
    for start, end in sections:
        start, end = int(start, 16), int(end, 16)
        pos = start
        while pos < end:
            try:
                hit = inferior.search_memory(pos, end - pos, REGISTRY_MAGIC)
            except gdb.error:
                break
            if hit is None:
                break
            if hit % 8 == 0:
                try:
                    raw = bytes(inferior.read_memory(hit + REG_VERSION, 4))
                    if struct.unpack("<I", raw)[0] in KNOWN_LAYOUT_VERSIONS:
                        return hit
                except gdb.MemoryError:
                    pass
            pos = hit + 1
    return None


def read_context(reg, addr, max_chunks, warnings):
    """Reads one context header and computes its counters through its kind's entry of `kinds`.
    Returns (node, first_child, next_sibling, parent), or raises WalkError when the header is not
    a live context."""
    mem, lay = reg.mem, reg.layout
    if addr % 8:
        raise WalkError("misaligned context pointer 0x%x" % addr)
    buf = mem.read(addr, lay.context_size)
    magic = buf[lay.magic : lay.magic + 8]
    want = CONTEXT_MAGIC if mem.endian == "<" else CONTEXT_MAGIC[::-1]
    if magic != want:
        dead = DEAD_CONTEXT_MAGIC if mem.endian == "<" else DEAD_CONTEXT_MAGIC[::-1]
        what = "a deleted context" if magic == dead else "magic %r" % magic
        raise WalkError("0x%x is not a live context (%s)" % (addr, what))
    node = Node(addr)
    name_ptr, name_len = mem.u64(buf, lay.name), mem.u64(buf, lay.name + 8)
    if name_len > MAX_NAME_LEN:
        raise WalkError("context 0x%x: name length %d is implausible" % (addr, name_len))
    node.name = mem.read(name_ptr, name_len) if name_len else b""
    ident_ptr, ident_len = mem.u64(buf, lay.ident), mem.u64(buf, lay.ident + 8)
    if ident_ptr:
        if ident_len > MAX_IDENT_LEN:
            raise WalkError("context 0x%x: ident length %d is implausible" % (addr, ident_len))
        node.ident = mem.read(ident_ptr, ident_len) if ident_len else b""
    label = "context 0x%x (%s)" % (addr, node.name.decode("utf-8", "replace"))
    kind_id = mem.u32(buf, lay.kind)
    kind = kinds(lay).get(kind_id)
    if kind is None:
        warnings.append(
            "%s: kind id %d is not one this script walks; free chunks not counted"
            % (label, kind_id)
        )
        kind = Kind("unknown")
    node.kind = kind.name
    blocks = walk_blocks(reg, node, buf, kind, label, warnings)
    if kind.name == "Slab":
        node.empty_blocks = mem.u64(buf, lay.slab_footprint + SLAB_NEMPTY_PAST_FOOTPRINT)
    if kind.context_free is not None:
        kind.context_free(reg, node, buf, blocks, label, max_chunks, warnings)
    return (
        node,
        mem.u64(buf, lay.first_child),
        mem.u64(buf, lay.next_sibling),
        mem.u64(buf, lay.parent),
    )


class Kind:
    """What the walker knows of a context kind, beyond the block list every kind shares (whose
    blocks' unused tails are free bytes for every kind):

    name          -- the kind's name, as memctx's stats print it in `type`;
    block_free    -- None, or f(mem, layout, context header bytes, block header bytes, tail) ->
                     (free bytes, free chunks, chunks carved) the block holds besides its unused
                     tail of `tail` bytes (chunks carved: a Generation's, for its stats line);
    context_free  -- None, or f(reg, node, context header bytes, blocks, label, max_chunks,
                     warnings), adding to node.free / node.fchunks what the context keeps outside
                     its blocks' tails (freelists)."""

    def __init__(self, name, block_free=None, context_free=None):
        self.name = name
        self.block_free = block_free
        self.context_free = context_free


def kinds(lay):
    """The kinds this script walks, by the ids the registry publishes."""
    return {
        # Freelists of freed chunks, their footprints free bytes.
        lay.alloc_set_id: Kind("AllocSet", context_free=walk_freelists),
        # A block's freed chunks wait for the block to empty: free chunks whose bytes stay used
        # (PostgreSQL's GenerationStats).
        lay.generation_id: Kind(
            "Generation",
            block_free=lambda mem, l, ctx, hdr, tail: (
                0,
                mem.u32(hdr, l.generation_nfree),
                mem.u32(hdr, l.generation_nfree - GENERATION_NCHUNKS_BEFORE_NFREE),
            ),
        ),
        # Nothing is freed before the reset: the blocks' tails are all.
        lay.bump_id: Kind("Bump"),
        lay.slab_id: Kind("Slab", block_free=slab_block_free),
    }


def slab_block_free(mem, lay, ctx, hdr, tail):
    """A Slab block's free slots: those never used are its unused tail, already counted; the
    others are on its free list, a slot's footprint each (PostgreSQL's SlabStats counts both as
    free chunks)."""
    nfree = mem.u32(hdr, lay.slab_nfree)
    footprint = mem.u64(ctx, lay.slab_footprint)
    listed = max(0, nfree - tail // footprint) if footprint else 0
    return listed * footprint, nfree, 0


def walk_blocks(reg, node, buf, kind, label, warnings):
    """Walks the context's block list, adding every block to node's counters. Returns the blocks
    as (start, end) pairs."""
    mem, lay = reg.mem, reg.layout
    addr = node.addr
    blocks, seen = [], set()
    b = mem.u64(buf, lay.blocks)
    while b:
        if b in seen:
            warnings.append("%s: the block list loops back to 0x%x" % (label, b))
            break
        if len(seen) >= MAX_BLOCKS:
            warnings.append("%s: more than %d blocks; stopped" % (label, MAX_BLOCKS))
            break
        seen.add(b)
        try:
            if b % CHUNK_ALIGN:
                raise WalkError("misaligned block 0x%x" % b)
            # The block header and the kind's bytes after it (a Generation block's counts, a Slab
            # block's count of free slots).
            hdr = mem.read(b, max(lay.block_size + BLOCK_KIND_BYTES, lay.slab_nfree + 4))
        except WalkError as e:
            warnings.append("%s: %s" % (label, e))
            break
        owner = mem.u64(hdr, BLOCK_CONTEXT_OFFSET)
        end = mem.u64(hdr, lay.block_end_ptr)
        free_ptr = mem.u64(hdr, lay.block_free_ptr)
        if not (b + lay.block_size <= end and end - b <= MAX_BLOCK_SIZE):
            warnings.append("%s: block 0x%x has a bad end pointer 0x%x" % (label, b, end))
            break
        if not b + lay.block_size <= free_ptr <= end:
            warnings.append("%s: block 0x%x has a bad free pointer 0x%x" % (label, b, free_ptr))
            break
        if owner != addr:
            warnings.append("%s: block 0x%x names context 0x%x as owner" % (label, b, owner))
        blocks.append((b, end))
        node.nblocks += 1
        node.total += end - b
        node.free += end - free_ptr
        if kind.block_free is not None:
            free, fchunks, chunks = kind.block_free(mem, lay, buf, hdr, end - free_ptr)
            node.free += free
            node.fchunks += fchunks
            node.chunks += chunks
        b = mem.u64(hdr, lay.block_next)
    return blocks


class ChunkReader:
    """Reads chunk bytes inside a context's blocks through a cache of small windows, so that
    chunks close to each other cost one read."""

    def __init__(self, mem, blocks):
        self.mem = mem
        self.blocks = sorted(blocks)
        self.starts = [s for s, _ in self.blocks]
        self.windows = {}

    def read(self, start, n):
        i = bisect.bisect_right(self.starts, start) - 1
        if i < 0 or start + n > self.blocks[i][1]:
            raise WalkError("not inside any of the context's blocks")
        bstart, bend = self.blocks[i]
        w = max(bstart, start - start % CHUNK_WINDOW)
        if start + n > w + CHUNK_WINDOW:
            return self.mem.read(start, n)
        data = self.windows.get(w)
        if data is None:
            data = self.mem.read(w, min(CHUNK_WINDOW, bend - w))
            self.windows[w] = data
        return data[start - w : start - w + n]


def walk_freelists(reg, node, buf, blocks, label, max_chunks, warnings):
    """An AllocSet's eleven freelists: every chunk on them is a free chunk, its footprint free
    bytes. A list that leaves the context's blocks, loops, or holds a chunk whose header is not a
    free chunk of its class ends with a warning."""
    mem, lay = reg.mem, reg.layout
    chunks = ChunkReader(mem, blocks)
    prefix = lay.chunk_prefix
    counted = 0
    for idx in range(NUM_FREELISTS):
        p = mem.u64(buf, lay.freelist + 8 * idx)
        fp = lay.footprint(idx)
        seen = set()
        while p:
            problem = None
            if p in seen:
                problem = "loops back to 0x%x" % p
            elif counted >= max_chunks:
                problem = "more than %d free chunks; stopped (--max-chunks)" % max_chunks
            elif p % CHUNK_ALIGN:
                problem = "misaligned chunk 0x%x" % p
            else:
                try:
                    raw = chunks.read(p - prefix, prefix + 8)
                    problem = freelist_header_problem(lay, p, mem.u64(raw, 0), idx)
                except WalkError as e:
                    problem = "chunk 0x%x: %s" % (p, e)
            if problem:
                warnings.append(
                    "%s: freelist %d (%d bytes): %s" % (label, idx, MIN_CLASS << idx, problem)
                )
                break
            seen.add(p)
            counted += 1
            node.fchunks += 1
            node.free += fp
            p = mem.u64(raw, prefix)


def freelist_header_problem(lay, p, header, idx):
    """None if `header` is that of a free AllocSet chunk of class `idx`, else what is wrong."""
    if (
        header & KIND_MASK != lay.alloc_set_id
        or header & EXTERNAL_BIT
        or (header >> VALUE_SHIFT) & VALUE_MASK != idx
    ):
        return "chunk 0x%x has header 0x%016x, not a free chunk of class %d" % (
            p,
            header,
            MIN_CLASS << idx,
        )
    return None


def walk_tree(reg, top, max_contexts, max_chunks):
    """Reads the tree under `top`. Returns (root node or None, warnings)."""
    warnings = []
    seen = set()
    try:
        root, child, _, _ = read_context(reg, top, max_chunks, warnings)
    except WalkError as e:
        return None, ["TopMemoryContext: %s" % e]
    seen.add(top)
    # Depth-first; each stack entry is (node, address of the next child to read).
    stack = [(root, child)]
    while stack:
        parent, c = stack[-1]
        if not c:
            stack.pop()
            continue
        if c in seen:
            warnings.append("context 0x%x reached twice (a loop in the tree); skipped" % c)
            stack[-1] = (parent, 0)
            continue
        if len(seen) >= max_contexts:
            warnings.append(
                "more than %d contexts; the rest are not shown (--max-contexts)" % max_contexts
            )
            break
        seen.add(c)
        try:
            node, first, sibling, back = read_context(reg, c, max_chunks, warnings)
        except WalkError as e:
            warnings.append(
                "child of context 0x%x: %s; its subtree and later siblings are skipped"
                % (parent.addr, e)
            )
            stack[-1] = (parent, 0)
            continue
        if back != parent.addr:
            warnings.append(
                "context 0x%x names 0x%x as its parent, but is a child of 0x%x"
                % (c, back, parent.addr)
            )
        parent.children.append(node)
        stack[-1] = (parent, sibling)
        stack.append((node, first))
    return root, warnings


def counters_text(total, nblocks, free, fchunks):
    return "%d total in %d blocks; %d free (%d chunks); %d used" % (
        total,
        nblocks,
        free,
        fchunks,
        max(total - free, 0),
    )


def kind_counters_text(node):
    """A context's counters in its kind's shape of the stats line (memctx's KindDetail::line)."""
    total, nblocks, free, fchunks = node.total, node.nblocks, node.free, node.fchunks
    used = max(total - free, 0)
    if node.kind == "Generation":
        return "%d total in %d blocks (%d chunks); %d free (%d chunks); %d used" % (
            total, nblocks, node.chunks, free, fchunks, used,
        )
    if node.kind == "Slab":
        return "%d total in %d blocks; %d empty blocks; %d free (%d chunks); %d used" % (
            total, nblocks, node.empty_blocks, free, fchunks, used,
        )
    if node.kind == "Bump":
        return "%d total in %d blocks; %d free; %d used" % (total, nblocks, free, used)
    return counters_text(total, nblocks, free, fchunks)


def context_line(node):
    """NAME: STATS[: IDENT], as memctx's stats.rs (and PostgreSQL) print one context."""
    name, ident = node.name, node.ident
    if ident is not None and name == b"dynahash":
        name, ident = ident, None
    line = "%s: %s" % (
        name.decode("utf-8", "replace"),
        kind_counters_text(node),
    )
    if ident is not None:
        cut = len(ident)
        truncated = cut > IDENT_DISPLAY_MAX
        if truncated:
            cut = IDENT_DISPLAY_MAX
            while cut > 0 and (ident[cut] & 0xC0) == 0x80:
                cut -= 1
        text = ident[:cut].decode("utf-8", "replace")
        line += ": " + "".join(" " if ord(ch) < 0x20 else ch for ch in text)
        if truncated:
            line += "..."
    return line


def format_tree(root, max_level, max_children):
    """The tree in MemoryContextStats format (memctx::format_stats), as a list of lines."""
    out = []
    grand = [0, 0, 0, 0]

    def add(sums, node):
        sums[0] += node.total
        sums[1] += node.nblocks
        sums[2] += node.free
        sums[3] += node.fchunks

    work = [("context", root, 0)]
    while work:
        kind, item, level = work.pop()
        if kind == "context":
            out.append("  " * level + context_line(item))
            add(grand, item)
            shown = min(len(item.children), max_children) if level < max_level else 0
            printed, omitted = item.children[:shown], item.children[shown:]
            if omitted:
                work.append(("summary", omitted, level + 1))
            for child in reversed(printed):
                work.append(("context", child, level + 1))
        else:
            count, sums = 0, [0, 0, 0, 0]
            stack = list(item)
            while stack:
                n = stack.pop()
                count += 1
                add(sums, n)
                stack.extend(n.children)
            out.append(
                "  " * level
                + "%d more child contexts containing %s" % (count, counters_text(*sums))
            )
            for i in range(4):
                grand[i] += sums[i]
    out.append(
        "Grand total: %d bytes in %d blocks; %d free (%d chunks); %d used"
        % (grand[0], grand[1], grand[2], grand[3], max(grand[0] - grand[2], 0))
    )
    return out


def thread_header(entry):
    state = THREAD_STATES.get(entry["state"], "state %d" % entry["state"])
    name = '"%s"' % entry["name"] if entry["name"] else "<unnamed>"
    return "Thread %s tid %d (%s), TopMemoryContext at 0x%x:" % (
        name,
        entry["tid"],
        state,
        entry["top"],
    )


def parse_int(text, what):
    try:
        v = int(text, 0)
    except ValueError:
        raise gdb.GdbError("memctx: %s must be a number, not %r" % (what, text))
    if v < 0:
        raise gdb.GdbError("memctx: %s must not be negative" % what)
    return v


def parse_args(arg, allowed):
    """Parses `--option VALUE` pairs; returns a dict of lists."""
    argv = gdb.string_to_argv(arg)
    opts = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" in a:
            a, v = a.split("=", 1)
            argv[i + 1 : i + 1] = [v]
        if a not in allowed:
            raise gdb.GdbError(
                "memctx: unknown argument %r (options: %s)" % (a, ", ".join(sorted(allowed)))
            )
        if i + 1 >= len(argv):
            raise gdb.GdbError("memctx: %s needs a value" % a)
        opts.setdefault(a, []).append(argv[i + 1])
        i += 2
    return opts


def last_int(opts, key, default):
    if key in opts:
        return parse_int(opts[key][-1], key)
    return default


def registry_from(opts):
    addr = None
    if "--registry" in opts:
        addr = int(gdb.parse_and_eval(opts["--registry"][-1]))
    return Registry(addr)


class MemctxStats(gdb.Command):
    """Print every thread's memctx context tree in PostgreSQL's MemoryContextStats format.

Usage: memctx-stats [--thread TID|NAME]... [--max-level N] [--max-children N]
                    [--max-contexts N] [--max-chunks N] [--registry ADDR]

Walks MEMCTX_REGISTRY with raw memory reads (no debug info needed), on a live process or a core
file. A first line names the registry, its layout version, the number of threads and the process
id; then one section per thread, oldest first: a header line
  Thread "NAME" tid TID (live|exited), TopMemoryContext at 0xADDR:
then one line per context, two spaces of indent per level,
  NAME: T total in B blocks; F free (C chunks); U used[: IDENT]
and a last line
  Grand total: T bytes in B blocks; F free (C chunks); U used
Problems found on the way (a loop, unreadable or corrupt memory) are printed after the thread's
tree as lines starting with "memctx: warning:".

--max-level and --max-children (default 100 and 100) limit the lines printed, as in PostgreSQL;
--max-contexts (default 100000) and --max-chunks (default 10000000, per context) bound the walk."""

    OPTIONS = (
        "--thread",
        "--max-level",
        "--max-children",
        "--max-contexts",
        "--max-chunks",
        "--registry",
    )

    def __init__(self):
        super().__init__("memctx-stats", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        opts = parse_args(arg, self.OPTIONS)
        max_level = last_int(opts, "--max-level", DEFAULT_MAX_LEVEL)
        max_children = last_int(opts, "--max-children", DEFAULT_MAX_CHILDREN)
        max_contexts = last_int(opts, "--max-contexts", DEFAULT_MAX_CONTEXTS)
        max_chunks = last_int(opts, "--max-chunks", DEFAULT_MAX_CHUNKS)
        wanted = opts.get("--thread", [])
        reg = registry_from(opts)
        entries, list_warnings = reg.threads()
        out = [
            "memctx registry at 0x%x (%s): layout version %d, %d thread%s, PID %d"
            % (
                reg.addr,
                reg.how,
                reg.version,
                len(entries),
                "" if len(entries) == 1 else "s",
                # A core file's inferior carries the PID it was taken from.
                reg.inferior.pid,
            )
        ]
        out += ["memctx: warning: %s" % w for w in list_warnings]
        if wanted:
            entries = [e for e in entries if str(e["tid"]) in wanted or e["name"] in wanted]
            if not entries:
                raise gdb.GdbError("memctx: no thread matches %s" % ", ".join(wanted))
        for entry in entries:
            out.append("")
            out.append(thread_header(entry))
            if not entry["top"]:
                out.append("memctx: warning: the thread has no TopMemoryContext")
                continue
            root, warnings = walk_tree(reg, entry["top"], max_contexts, max_chunks)
            if root is not None:
                out += format_tree(root, max_level, max_children)
            out += ["memctx: warning: %s" % w for w in warnings]
        gdb.write("\n".join(out) + "\n")


class MemctxThreads(gdb.Command):
    """List the threads in memctx's registry: tid, state, TopMemoryContext address, name.

Usage: memctx-threads [--registry ADDR]"""

    def __init__(self):
        super().__init__("memctx-threads", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        reg = registry_from(parse_args(arg, ("--registry",)))
        entries, warnings = reg.threads()
        out = ["%-10s %-8s %-18s %s" % ("tid", "state", "TopMemoryContext", "name")]
        for e in entries:
            out.append(
                "%-10d %-8s 0x%-16x %s"
                % (
                    e["tid"],
                    THREAD_STATES.get(e["state"], "?%d" % e["state"]),
                    e["top"],
                    e["name"],
                )
            )
        out += ["memctx: warning: %s" % w for w in warnings]
        gdb.write("\n".join(out) + "\n")


MemctxStats()
MemctxThreads()
