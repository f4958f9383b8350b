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

use serde::{Deserialize, Serialize};

use crate::stats::ContextRow;

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
