//! Dumps of a memctx program: by its dumper's signal when that is safe, else through gdb with the
//! walker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::procmem::{catches_signal, dumper_entry, read_registry, DumperEntry};
use super::{Source, Taken, WatchError};
use crate::snapshot::Trigger;
use crate::snapshot::{list_snapshots, read_snapshot, snapshot_file_name};

/// The gdb walker, carried inside the binary: an installed `memctx` has no `valgrind/` folder.
pub const WALKER: &str = include_str!("../../../valgrind/memctx_gdb.py");

/// How long a signalled dump may take to appear before the watch gives up.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Picks how to dump memctx program `pid`: its dumper's signal when the registry publishes one
/// and the process catches it, gdb otherwise (always with `force_gdb`). The string says why.
///
/// # Errors
/// Neither way is open (no signal, and no gdb on PATH).
pub fn open(pid: u32, force_gdb: bool) -> Result<Box<dyn Source>, WatchError> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(WatchError(format!("no process {pid}")));
    }
    let why_not = if force_gdb {
        "--gdb was given".to_owned()
    } else {
        match signal_route(pid) {
            Ok(source) => return Ok(Box::new(source)),
            Err(why) => why,
        }
    };
    GdbSource::new(pid, why_not).map(|s| Box::new(s) as Box<dyn Source>)
}

/// The dumper's signal route, or why it is closed.
fn signal_route(pid: u32) -> Result<SignalSource, String> {
    let registry = match read_registry(pid) {
        Ok(Some(r)) => r,
        Ok(None) => return Err("its executable has no MEMCTX_REGISTRY symbol".into()),
        Err(e) => return Err(format!("its registry cannot be read ({e})")),
    };
    let Some(DumperEntry { signal, dir }) = dumper_entry(&registry) else {
        return Err("its registry shows no running dumper".into());
    };
    if signal == 0 {
        return Err("its dumper has no signal".into());
    }
    let Some(dir) = dir else {
        return Err("its dumper's directory path is too long for the registry".into());
    };
    match catches_signal(pid, signal) {
        Ok(true) => Ok(SignalSource { pid, signal, dir }),
        Ok(false) => Err(format!(
            "its dumper is on with signal {signal}, but the process does not catch it (SigCgt)"
        )),
        Err(e) => Err(format!("its signal mask cannot be read ({e})")),
    }
}

/// Dumps by the dumper's signal; copies each signalled snapshot into the series.
#[derive(Debug)]
pub struct SignalSource {
    pid: u32,
    signal: i32,
    /// The dumper's own directory.
    dir: PathBuf,
}

impl SignalSource {
    fn newest_seq(&self) -> Result<u64, WatchError> {
        let files = list_snapshots(&self.dir)
            .map_err(|e| format!("{}: cannot list: {e}", self.dir.display()))?;
        Ok(files.last().map_or(0, |(seq, _)| *seq))
    }

    /// Waits for a snapshot newer than `after` that the signal asked for.
    fn wait_for_signalled(&self, after: u64) -> Result<PathBuf, WatchError> {
        let end = Instant::now() + SIGNAL_TIMEOUT;
        let mut seen = after;
        while Instant::now() < end {
            let files = list_snapshots(&self.dir).unwrap_or_default();
            let floor = seen;
            for (seq, path) in files.into_iter().filter(|(s, _)| *s > floor) {
                seen = seq;
                if read_snapshot(&path).is_ok_and(|s| s.trigger == Some(Trigger::Signal)) {
                    return Ok(path);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(WatchError(format!(
            "process {}: no snapshot for signal {} appeared in {} within {} s (are its threads \
             reaching safe points? is it still alive?)",
            self.pid,
            self.signal,
            self.dir.display(),
            SIGNAL_TIMEOUT.as_secs()
        )))
    }
}

impl Source for SignalSource {
    fn describe(&self) -> String {
        format!(
            "watching memctx process {} by signal {} (its dumper writes to {}; the process is \
             not stopped)",
            self.pid,
            self.signal,
            self.dir.display()
        )
    }

    fn take(&mut self, n: u64, out: &Path) -> Result<Taken, WatchError> {
        let after = self.newest_seq()?;
        let begun = Instant::now();
        // SAFETY: kill has no memory preconditions; the registry said the dumper is on with this
        // signal and /proc/PID/status showed it caught, so the signal does not end the process.
        if unsafe { libc::kill(self.pid as libc::pid_t, self.signal) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(WatchError(format!("process {}: kill: {e}", self.pid)));
        }
        let found = self.wait_for_signalled(after)?;
        let took = begun.elapsed();
        let path = out.join(snapshot_file_name(n));
        std::fs::copy(&found, &path)
            .map_err(|e| format!("copying {} to {}: {e}", found.display(), path.display()))?;
        Ok(Taken {
            path,
            took,
            stopped: false,
        })
    }
}

/// Dumps through gdb and the walker.
#[derive(Debug)]
pub struct GdbSource {
    pid: u32,
    why: String,
    walker: PathBuf,
}

impl GdbSource {
    fn new(pid: u32, why: String) -> Result<GdbSource, WatchError> {
        if Command::new("gdb").arg("--version").output().is_err() {
            return Err(WatchError(format!(
                "process {pid}: cannot dump it: no dump signal ({why}) and no gdb on PATH"
            )));
        }
        let walker =
            std::env::temp_dir().join(format!("memctx-gdb-{}-{pid}.py", std::process::id()));
        std::fs::write(&walker, WALKER)
            .map_err(|e| format!("{}: cannot write the walker: {e}", walker.display()))?;
        Ok(GdbSource { pid, why, walker })
    }
}

impl Drop for GdbSource {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.walker);
    }
}

impl Source for GdbSource {
    fn describe(&self) -> String {
        format!(
            "watching memctx process {} through gdb and the walker, which stop it while they \
             read ({})",
            self.pid, self.why
        )
    }

    fn take(&mut self, n: u64, out: &Path) -> Result<Taken, WatchError> {
        let begun = Instant::now();
        let o = Command::new("gdb")
            .args(["-nx", "-q", "-batch", "-p", &self.pid.to_string(), "-x"])
            .arg(&self.walker)
            .args(["-ex", "memctx-stats"])
            .output()
            .map_err(|e| format!("running gdb: {e}"))?;
        let took = begun.elapsed();
        let text = String::from_utf8_lossy(&o.stdout);
        // gdb's own lines ([New LWP ...], the frame it stopped in) come before the walker's.
        let walker_output = text
            .find("memctx registry at ")
            .filter(|_| o.status.success());
        let Some(at) = walker_output else {
            return Err(WatchError(format!(
                "process {}: gdb could not walk it: {}",
                self.pid,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        };
        let path = out.join(format!("gdb-{n:06}.txt"));
        std::fs::write(&path, &text.as_bytes()[at..])
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        Ok(Taken {
            path,
            took,
            stopped: true,
        })
    }
}
