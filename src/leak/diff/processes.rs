//! One rule for inputs that hold several processes' dumps, for every command: refuse and list
//! the processes, or keep the one `--pid` names.

use super::DiffError;
use crate::leak::parse::{Dump, Format};

/// The dumps [`select_pid`] kept, and the inputs it left out for having no PID to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The dumps of one process, in order.
    pub dumps: Vec<Dump>,
    /// One line per dump left out because it records no PID (`--pid` given), naming it.
    pub skipped: Vec<String>,
}

/// Keeps the dumps of one process.
///
/// With `pid`, keeps the dumps of that process; dumps that record no PID (CSV exports, stats
/// JSON, `MemoryContextStats` output, gdb output) cannot be matched and are left out, each named
/// in [`Selection::skipped`]. Without `pid`, the inputs must be one process: dumps of several
/// PIDs are refused (a server log may hold several backends' dumps, a directory several runs'
/// snapshots), and so are memctx dumps mixed with PostgreSQL ones; dumps without a PID are taken
/// to be the process the others name.
///
/// # Errors
///
/// No dump of `pid` (the message lists the PIDs there are); or, without `pid`, dumps of several
/// processes (the message lists them, to choose one with `--pid`).
pub fn select_pid(dumps: Vec<Dump>, pid: Option<u32>) -> Result<Selection, DiffError> {
    let pids = pid_counts(&dumps);
    let Some(pid) = pid else {
        check_one_process(&dumps, &pids)?;
        return Ok(Selection {
            dumps,
            skipped: Vec::new(),
        });
    };
    if !pids.iter().any(|&(p, _)| p == pid) {
        let there = if pids.is_empty() {
            "the inputs record no PID".to_string()
        } else {
            format!("the inputs hold {}", pid_list(&pids))
        };
        return Err(DiffError(format!("no dump of PID {pid} found: {there}")));
    }
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for d in dumps {
        match d.pid {
            Some(p) if p == pid => kept.push(d),
            Some(_) => {}
            None => skipped.push(format!(
                "{}: skipped by --pid {pid}: a {} records no PID",
                d.source,
                d.format.description()
            )),
        }
    }
    Ok(Selection {
        dumps: kept,
        skipped,
    })
}

/// Each PID of the dumps with its number of dumps, in order of first appearance.
fn pid_counts(dumps: &[Dump]) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = Vec::new();
    for p in dumps.iter().filter_map(|d| d.pid) {
        match out.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 += 1,
            None => out.push((p, 1)),
        }
    }
    out
}

fn pid_list(pids: &[(u32, usize)]) -> String {
    let list: Vec<String> = pids
        .iter()
        .map(|(p, n)| format!("PID {p} ({n} dump{})", if *n == 1 { "" } else { "s" }))
        .collect();
    format!("dumps of several processes: {}", list.join(", "))
}

fn check_one_process(dumps: &[Dump], pids: &[(u32, usize)]) -> Result<(), DiffError> {
    if pids.len() > 1 {
        return Err(DiffError(format!(
            "the inputs hold {}; choose one with --pid",
            pid_list(pids)
        )));
    }
    let is_memctx = |d: &&Dump| {
        matches!(
            d.format,
            Format::MemctxSnapshot | Format::MemctxStats | Format::MemctxWalker
        )
    };
    let memctx = dumps.iter().find(is_memctx);
    let postgres = dumps.iter().find(|d| !is_memctx(d));
    if let (Some(m), Some(p)) = (memctx, postgres) {
        return Err(DiffError(format!(
            "the inputs mix a memctx dump ({}) and a PostgreSQL dump ({}): they are not one \
             process; compare each apart",
            m.source, p.source
        )));
    }
    Ok(())
}
