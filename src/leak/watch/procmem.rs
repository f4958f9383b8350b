//! Reading another process's memctx registry: the `MEMCTX_REGISTRY` symbol's address from the
//! executable's ELF symbol table (`/proc/PID/exe`), the load address from `/proc/PID/maps`, and
//! the bytes from `/proc/PID/mem` — the same access gdb needs (ptrace permission), without
//! stopping the process.

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::os::unix::fs::FileExt as _;

use crate::registry::{DumperInfo, Registry, DUMPER_ON, REGISTRY_MAGIC};

const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const PT_LOAD: u32 = 1;
const ET_DYN: u16 = 3;

/// The dumper a process's registry publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumperEntry {
    /// The dump signal (0: none).
    pub signal: i32,
    /// The snapshot directory (`None` when its path did not fit the registry).
    pub dir: Option<std::path::PathBuf>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn usize_at(b: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64_at(b, off)?).ok()
}

/// The value of symbol `name` in a 64-bit little-endian ELF image, from `.symtab` or `.dynsym`.
pub fn elf_symbol(elf: &[u8], name: &str) -> Option<u64> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum) = (
        usize_at(elf, 0x28)?,
        usize::from(u16_at(elf, 0x3A)?),
        usize::from(u16_at(elf, 0x3C)?),
    );
    let section = |i: usize| elf.get(shoff + i * shentsize..shoff + (i + 1) * shentsize);
    for i in 0..shnum {
        let sh = section(i)?;
        let kind = u32_at(sh, 4)?;
        if kind != SHT_SYMTAB && kind != SHT_DYNSYM {
            continue;
        }
        let strtab = section(usize::try_from(u32_at(sh, 0x28)?).ok()?)?;
        let strings = elf.get(usize_at(strtab, 0x18)?..)?;
        let syms = elf.get(usize_at(sh, 0x18)?..usize_at(sh, 0x18)? + usize_at(sh, 0x20)?)?;
        for sym in syms.chunks_exact(24) {
            let at = strings.get(usize::try_from(u32_at(sym, 0)?).ok()?..)?;
            let end = at.iter().position(|&b| b == 0)?;
            if &at[..end] == name.as_bytes() {
                return u64_at(sym, 8);
            }
        }
    }
    None
}

/// How far a position-independent executable was moved: where its first mapping (file offset 0)
/// starts, less the virtual address its first loadable segment asks for.
fn load_bias(elf: &[u8], pid: u32) -> io::Result<u64> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed ELF header");
    if u16_at(elf, 0x10).ok_or_else(bad)? != ET_DYN {
        return Ok(0);
    }
    let (phoff, phentsize, phnum) = (
        usize_at(elf, 0x20).ok_or_else(bad)?,
        usize::from(u16_at(elf, 0x36).ok_or_else(bad)?),
        usize::from(u16_at(elf, 0x38).ok_or_else(bad)?),
    );
    let first_vaddr = (0..phnum)
        .filter_map(|i| elf.get(phoff + i * phentsize..phoff + (i + 1) * phentsize))
        .find(|ph| u32_at(ph, 0) == Some(PT_LOAD) && u64_at(ph, 8) == Some(0))
        .and_then(|ph| u64_at(ph, 0x10))
        .ok_or_else(bad)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    for line in maps.lines() {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        let path = fields.get(5).map_or("", |p| p.trim_start());
        if path == exe
            && fields
                .get(2)
                .is_some_and(|o| u64::from_str_radix(o, 16) == Ok(0))
        {
            let start = fields[0].split('-').next().unwrap_or("");
            let start = u64::from_str_radix(start, 16).map_err(|_| bad())?;
            return Ok(start.wrapping_sub(first_vaddr & !0xfff));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("/proc/{pid}/maps has no mapping of {exe}"),
    ))
}

/// The registry's bytes in process `pid`, or `None` when its executable has no
/// `MEMCTX_REGISTRY` symbol (stripped, or not a memctx program).
///
/// # Errors
/// An I/O error reading `/proc/PID/...` (no such process, no permission to read its memory).
pub fn read_registry(pid: u32) -> io::Result<Option<Vec<u8>>> {
    let elf = std::fs::read(format!("/proc/{pid}/exe"))?;
    let Some(symbol) = elf_symbol(&elf, "MEMCTX_REGISTRY") else {
        return Ok(None);
    };
    let addr = symbol.wrapping_add(load_bias(&elf, pid)?);
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; size_of::<Registry>()];
    mem.read_exact_at(&mut buf, addr)?;
    if u64_at(&buf, 0) != Some(REGISTRY_MAGIC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("process {pid}: MEMCTX_REGISTRY does not start with memctx's magic"),
        ));
    }
    Ok(Some(buf))
}

/// The running dumper in a registry's bytes (as read by [`read_registry`]), if one is on.
pub fn dumper_entry(registry: &[u8]) -> Option<DumperEntry> {
    let base = offset_of!(Registry, dumper);
    let state = u32_at(registry, base + offset_of!(DumperInfo, state))?;
    if state != DUMPER_ON {
        return None;
    }
    let signal = i32::from_le_bytes(
        registry
            .get(base + offset_of!(DumperInfo, signal)..)?
            .get(..4)?
            .try_into()
            .ok()?,
    );
    let len = usize::try_from(u32_at(registry, base + offset_of!(DumperInfo, dir_len))?).ok()?;
    let dir_at = base + offset_of!(DumperInfo, dir);
    let dir = (len > 0).then(|| {
        use std::os::unix::ffi::OsStrExt as _;
        let bytes = registry.get(dir_at..dir_at + len).unwrap_or_default();
        std::ffi::OsStr::from_bytes(bytes).into()
    });
    Some(DumperEntry { signal, dir })
}

/// Whether process `pid` catches signal `sig`: its bit in `SigCgt` of `/proc/PID/status`.
///
/// # Errors
/// An I/O error reading the status file, or a status without a readable `SigCgt` line.
pub fn catches_signal(pid: u32, sig: i32) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no SigCgt in the status"))?;
    Ok((1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_publishes_no_dumper_and_catches_no_sigusr2() {
        let me = std::process::id();
        crate::MemoryContext::top();
        let reg = read_registry(me)
            .unwrap()
            .expect("the test binary has the symbol");
        assert_eq!(dumper_entry(&reg), None);
        assert!(!catches_signal(me, libc::SIGUSR2).unwrap());
    }
}
