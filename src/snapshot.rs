//! Snapshots: the JSON a running program writes of its context trees, and the leak-hunting tools
//! read back.
//!
//! One snapshot file holds one moment of one process: every thread that has a tree, each with the
//! rows of its contexts (pg_backend_memory_contexts' columns plus stable ids, see
//! [`crate::stats::ContextRow`]) and, in the debug build, the live chunks grouped by allocation
//! site. A thread that did not answer a dump request in time is listed with `missing: true` and no
//! rows, rather than waited for. A thread that has exited keeps its tree (it still holds memory):
//! it is listed with `exited: true` and its rows once its OS thread is gone, and as `exiting`
//! (and missing) while its thread-local destructors may still run.
//!
//! The format is versioned (`format: "memctx-snapshot"`, `version`), and readers refuse what they do
//! not know.

use core::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stats::ContextRow;
use crate::MemoryContext;

/// The `format` tag of a snapshot file.
pub const SNAPSHOT_FORMAT: &str = "memctx-snapshot";
/// The version of the snapshot format this crate writes.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One moment of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Milliseconds since the Unix epoch when the snapshot was taken.
    pub timestamp_ms: u64,
    /// The process id.
    pub pid: u32,
    /// Sequence number of the snapshot in a series (0 when taken alone).
    pub seq: u64,
    /// One entry per thread with a tree.
    pub threads: Vec<ThreadSnapshot>,
    /// What asked for the snapshot (absent in files that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

/// What asked a [`crate::dump::Dumper`] for a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The dumper's interval elapsed.
    Periodic,
    /// The dump signal arrived (each signal's dump is a file of its own).
    Signal,
    /// The API asked ([`crate::dump::Dumper::request`], [`crate::dump::Dumper::dump_now`],
    /// [`crate::dump::request_dump`]).
    Request,
    /// [`crate::dump::snapshot`]: the calling thread alone, at once.
    Direct,
}

/// One thread's tree in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSnapshot {
    /// The thread's name, if it has one.
    pub name: Option<String>,
    /// The OS thread id.
    pub os_tid: u32,
    /// True when the thread's tree is not in the snapshot: the thread did not reach a safe point
    /// in time to answer the dump, or it is exiting (see `exiting`).
    pub missing: bool,
    /// True when the thread has exited and its OS thread is gone: its tree, which still holds
    /// memory, was read by the dumper and is here.
    #[serde(default)]
    pub exited: bool,
    /// True when the thread has begun to exit but its OS thread still runs (other thread-local
    /// destructors may still use its tree): the tree is not read yet, and `missing` is set.
    #[serde(default)]
    pub exiting: bool,
    /// The thread's contexts, breadth-first from its TopMemoryContext.
    pub contexts: Vec<ContextRow>,
    /// Live chunks grouped by allocation site (debug build only; empty otherwise).
    pub sites: Vec<SiteRow>,
}

/// Live chunks of one context (optionally with its subtree) allocated from one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRow {
    /// The context's stable id (see [`ContextRow::id`]).
    pub context_id: u64,
    /// Number of live chunks.
    pub count: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// The allocation backtrace, user frames first, one line per frame
    /// (`function at file:line`).
    pub frames: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Sites: the live chunks of a context by allocation site (what a snapshot's `sites` hold).

/// One frame of an allocation site's backtrace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SiteFrame {
    /// The function, demangled without its hash, if the symbol was found.
    pub function: Option<String>,
    /// The source file, if debug info has it.
    pub file: Option<String>,
    /// The line, if debug info has it.
    pub line: Option<u32>,
}

impl fmt::Display for SiteFrame {
    /// `function at file:line`, with `??` for an unknown function; a file under the current
    /// directory is shown relative to it (as the debug build's reports show it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function.as_deref().unwrap_or("??"))?;
        if let Some(file) = &self.file {
            let cwd = std::env::current_dir().ok();
            let shown = cwd
                .as_deref()
                .and_then(|d| Path::new(file).strip_prefix(d).ok())
                .map_or_else(|| file.clone(), |p| p.display().to_string());
            write!(f, " at {shown}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        Ok(())
    }
}

/// Live chunks allocated from one site (one allocation backtrace): LeakSanitizer's
/// "N bytes in M objects allocated from".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Number of live chunks.
    pub count: u64,
    /// Their requested bytes (not the size classes' slack, nor the chunk headers).
    pub bytes: u64,
    /// The allocation backtrace, the allocator's own frames trimmed: the frame that called the
    /// allocator first. Empty when no backtrace was captured (backtraces turned off).
    pub frames: Vec<SiteFrame>,
    /// The stack depot's id of the backtrace (0: none captured). Equal ids, equal sites — within
    /// one process.
    pub stack_id: u32,
}

impl fmt::Display for Site {
    /// LeakSanitizer's form: `N bytes in M objects allocated from:` and one `#i frame` line per
    /// frame, each line ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} bytes in {} objects allocated from:",
            self.bytes, self.count
        )?;
        if self.frames.is_empty() {
            writeln!(f, "    (no backtrace captured)")?;
        }
        for (i, frame) in self.frames.iter().enumerate() {
            writeln!(f, "    #{i} {frame}")?;
        }
        Ok(())
    }
}

impl MemoryContext {
    /// The live chunks of this context (and of its descendants when `recursive`) grouped by
    /// allocation site, largest first (by requested bytes, then count), at most `top_n` of them,
    /// with their backtraces resolved — as LeakSanitizer reports leaks, but for memory that is
    /// still reachable: the question it answers is "which line of code holds this context's
    /// memory?".
    ///
    /// Debug build (`debug-contexts`) only: the sites come from the allocation backtrace recorded
    /// in every chunk. **A release build records nothing and returns an empty list.** The walk costs
    /// time proportional to the live chunks, plus a symbolisation the first time a backtrace is
    /// seen. Backtraces that differ only inside the allocator are one site: sites are keyed by
    /// their user frames.
    ///
    /// # Panics
    /// If the context was deleted.
    ///
    /// # Examples
    /// ```
    /// use memctx::{BlockSizes, MemoryContext};
    /// let cache = MemoryContext::top().new_child("cache", BlockSizes::DEFAULT);
    /// for _ in 0..3 {
    ///     cache.alloc(40);
    /// }
    /// let sites = cache.sites(false, 10);
    /// if cfg!(feature = "debug-contexts") {
    ///     assert_eq!((sites[0].count, sites[0].bytes), (3, 120));
    /// } else {
    ///     assert!(sites.is_empty());
    /// }
    /// cache.delete();
    /// ```
    pub fn sites(self, recursive: bool, top_n: usize) -> Vec<Site> {
        self.raw(); // a stale handle panics in both builds
        #[cfg(feature = "debug-contexts")]
        {
            use crate::debug::sites;
            // SAFETY: a live context of this thread, outside any allocator operation.
            let acc = unsafe { sites::raw_sites(self, recursive) };
            let mut all = sites::merge(&acc);
            all.truncate(top_n);
            all
        }
        #[cfg(not(feature = "debug-contexts"))]
        {
            let _ = (recursive, top_n);
            Vec::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot files.

/// The snapshot as pretty-printed JSON (the file format of [`crate::snapshot`]).
///
/// # Panics
/// Never in practice: the document is plain data with string keys.
pub fn to_json(snapshot: &Snapshot) -> String {
    serde_json::to_string_pretty(snapshot).expect("serialising a snapshot cannot fail")
}

/// Reads a snapshot written by [`to_json`].
///
/// # Errors
/// A JSON syntax or shape error, or a `format`/`version` this build does not read.
pub fn from_json(s: &str) -> Result<Snapshot, serde_json::Error> {
    use serde::de::Error as _;
    let snap: Snapshot = serde_json::from_str(s)?;
    if snap.format != SNAPSHOT_FORMAT {
        return Err(serde_json::Error::custom(format!(
            "not a memctx snapshot: format is {:?}, expected {SNAPSHOT_FORMAT:?}",
            snap.format
        )));
    }
    if snap.version != SNAPSHOT_VERSION {
        return Err(serde_json::Error::custom(format!(
            "unsupported memctx snapshot version {} (this build reads version {SNAPSHOT_VERSION})",
            snap.version
        )));
    }
    Ok(snap)
}

/// Writes `snapshot` as JSON to `path`, through a temporary file in the same directory renamed
/// into place, so a reader never sees a partial file.
///
/// # Errors
/// Any I/O error creating, writing or renaming the file.
pub fn write_snapshot(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "snapshot path has no name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, to_json(snapshot))?;
    fs::rename(&tmp, path)
}

/// Reads a snapshot file.
///
/// # Errors
/// An I/O error, or what [`from_json`] refuses (as `InvalidData`, naming the file).
pub fn read_snapshot(path: &Path) -> io::Result<Snapshot> {
    let text = fs::read_to_string(path)?;
    from_json(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// The file name of snapshot number `seq` in a dumper's directory: `snapshot-000042.json`.
pub fn snapshot_file_name(seq: u64) -> String {
    format!("snapshot-{seq:06}.json")
}

/// The sequence number in a snapshot file name, if it is one.
fn seq_of_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The numbered snapshot files in `dir`, in sequence order.
///
/// # Errors
/// An I/O error listing the directory.
pub fn list_snapshots(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(seq_of_file_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(snapshot_file_name(42), "snapshot-000042.json");
        assert_eq!(seq_of_file_name("snapshot-000042.json"), Some(42));
        assert_eq!(seq_of_file_name("snapshot-1234567.json"), Some(1234567));
        assert_eq!(seq_of_file_name("snapshot-.json"), None);
        assert_eq!(seq_of_file_name(".snapshot-000001.json.tmp"), None);
        assert_eq!(seq_of_file_name("snapshot-00a.json"), None);
    }

    #[test]
    fn site_display_is_lsan_style() {
        let s = Site {
            count: 3,
            bytes: 120,
            frames: vec![SiteFrame {
                function: Some("app::cache_insert".into()),
                file: Some("src/cache.rs".into()),
                line: Some(42),
            }],
            stack_id: 7,
        };
        assert_eq!(
            s.to_string(),
            "120 bytes in 3 objects allocated from:\n    #0 app::cache_insert at src/cache.rs:42\n"
        );
    }
}
