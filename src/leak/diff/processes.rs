//! Keeping one process's dumps when the inputs hold several processes'.

use std::collections::HashMap;

use super::DiffError;
use crate::leak::parse::Dump;

/// Keeps the dumps of one process when a file holds several processes' dumps.
///
/// With `pid`, keeps the dumps of that process. Without, checks that no single file (dumps whose
/// [`Dump::source`] share a file name) mixes processes: a server log may hold
/// `pg_log_backend_memory_contexts` output of several backends, and comparing one backend's dump
/// with another's says nothing.
///
/// # Errors
///
/// No dump of `pid`; or, without `pid`, a file holding dumps of several processes (the message
/// lists them, to choose one).
pub fn select_pid(dumps: Vec<Dump>, pid: Option<u32>) -> Result<Vec<Dump>, DiffError> {
    if let Some(pid) = pid {
        let kept: Vec<Dump> = dumps.into_iter().filter(|d| d.pid == Some(pid)).collect();
        if kept.is_empty() {
            return Err(DiffError(format!("no dump of PID {pid} found")));
        }
        return Ok(kept);
    }
    let mut by_file: HashMap<&str, Vec<(u32, usize)>> = HashMap::new();
    for d in &dumps {
        let file = d
            .source
            .rsplit_once('#')
            .map_or(d.source.as_str(), |(f, _)| f);
        if let Some(p) = d.pid {
            let v = by_file.entry(file).or_default();
            match v.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 += 1,
                None => v.push((p, 1)),
            }
        }
    }
    let mut files: Vec<_> = by_file.into_iter().filter(|(_, v)| v.len() > 1).collect();
    files.sort();
    if let Some((file, pids)) = files.first() {
        let list: Vec<String> = pids
            .iter()
            .map(|(p, n)| format!("PID {p} ({n} dump{})", if *n == 1 { "" } else { "s" }))
            .collect();
        return Err(DiffError(format!(
            "{file} holds dumps of several processes: {}; choose one with --pid",
            list.join(", ")
        )));
    }
    Ok(dumps)
}
