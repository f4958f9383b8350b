//! Dumps of a PostgreSQL backend: `pg_log_backend_memory_contexts(PID)` through psql, read back
//! from the server log.
//!
//! The function only asks the backend to log its contexts at its next interrupt check; the lines
//! land in the server log, so the watch must be able to read that log: the file
//! `pg_current_logfile()` names (relative to `data_directory`) when the logging collector runs,
//! or the file given with `--log`.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Source, Taken, WatchError};

/// How long a dump may take to appear in the log before the watch gives up.
const LOG_TIMEOUT: Duration = Duration::from_secs(30);
/// Separates the fields of psql's unaligned output.
const FIELD_SEP: &str = "\x1f";

/// What the server says about its log, from `server_settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `data_directory`.
    pub data_directory: String,
    /// `pg_current_logfile()`, empty when NULL.
    pub current_logfile: String,
    /// `logging_collector` (`on`/`off`).
    pub logging_collector: String,
    /// `inet_server_addr()`, empty over a Unix socket.
    pub server_addr: String,
}

/// Runs one SQL statement through psql and returns its unaligned, tuples-only output.
fn psql(conninfo: &str, sql: &str) -> Result<String, WatchError> {
    let o = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            FIELD_SEP,
        ])
        .args(["-d", conninfo, "-c", sql])
        .output()
        .map_err(|e| format!("running psql: {e} (is the PostgreSQL client installed?)"))?;
    if !o.status.success() {
        return Err(WatchError(format!(
            "psql -d {conninfo:?} -c {sql:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Asks the server where its log is.
fn server_settings(conninfo: &str) -> Result<LogSettings, WatchError> {
    let row = psql(
        conninfo,
        "select current_setting('data_directory'), coalesce(pg_current_logfile(), ''), \
         current_setting('logging_collector'), coalesce(host(inet_server_addr()), '')",
    )?;
    let f: Vec<&str> = row.split(FIELD_SEP).collect();
    if f.len() != 4 {
        return Err(WatchError(format!(
            "unexpected answer from the server: {row:?}"
        )));
    }
    Ok(LogSettings {
        data_directory: f[0].to_owned(),
        current_logfile: f[1].to_owned(),
        logging_collector: f[2].to_owned(),
        server_addr: f[3].to_owned(),
    })
}

/// The server log's path on this machine, or a refusal saying why it cannot be found (and to
/// give `--log`).
///
/// # Errors
/// No logging collector, no file log destination, or a server on another machine.
pub fn resolve_log(s: &LogSettings) -> Result<PathBuf, String> {
    let give = "give the log with --log FILE";
    if !s.server_addr.is_empty() && s.server_addr != "127.0.0.1" && s.server_addr != "::1" {
        return Err(format!(
            "the server is remote (connected to {} over TCP): its log is on that machine; {give} \
             (a copy that grows as the server writes)",
            s.server_addr
        ));
    }
    if s.current_logfile.is_empty() {
        return Err(if s.logging_collector == "off" {
            format!(
                "the server has no logging collector (logging_collector = off): its log goes to \
                 wherever its standard error was sent, which the server cannot tell; {give}"
            )
        } else {
            format!("pg_current_logfile() is NULL (log_destination writes no file); {give}")
        });
    }
    Ok(Path::new(&s.data_directory).join(&s.current_logfile))
}

/// Checks that the log can be read here, naming the likely cause when not.
fn check_readable(log: &Path, given: bool) -> Result<(), WatchError> {
    match std::fs::File::open(log) {
        Ok(_) => Ok(()),
        Err(e) => {
            let hint = match (given, e.kind()) {
                (true, _) => String::new(),
                (false, std::io::ErrorKind::NotFound) => {
                    "; a server on another machine or in a container? give the log with --log FILE"
                        .into()
                }
                (false, std::io::ErrorKind::PermissionDenied) => {
                    "; run as the server's OS user (or one that may read its log), or give --log FILE"
                        .into()
                }
                (false, _) => "; give the log with --log FILE".into(),
            };
            Err(WatchError(format!(
                "cannot read the server log {}: {e}{hint}",
                log.display()
            )))
        }
    }
}

/// Dumps a backend through `pg_log_backend_memory_contexts`.
#[derive(Debug)]
pub struct PgSource {
    pid: u32,
    conninfo: String,
    log: PathBuf,
}

/// Opens the watch of backend `pid` of the server `conninfo` reaches, its log at `log` or
/// wherever the server says.
///
/// # Errors
/// psql fails, `pid` is no backend of that server, or the log cannot be read.
pub fn open(pid: u32, conninfo: &str, log: Option<&Path>) -> Result<PgSource, WatchError> {
    let found = psql(
        conninfo,
        &format!("select count(*) from pg_stat_activity where pid = {pid}"),
    )?;
    if found != "1" {
        return Err(WatchError(format!(
            "{pid} is not a process of the server psql -d {conninfo:?} reaches \
             (not in pg_stat_activity)"
        )));
    }
    let log = match log {
        Some(l) => l.to_path_buf(),
        None => resolve_log(&server_settings(conninfo)?).map_err(WatchError)?,
    };
    check_readable(&log, false)?;
    Ok(PgSource {
        pid,
        conninfo: conninfo.to_owned(),
        log,
    })
}

/// The log's bytes from `offset` (all of it when it shrank: a new file after truncation).
fn read_from(log: &Path, offset: u64) -> Result<(u64, String), WatchError> {
    let mut f =
        std::fs::File::open(log).map_err(|e| format!("{}: cannot read: {e}", log.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_to_end(&mut buf))
        .map_err(|e| format!("{}: cannot read: {e}", log.display()))?;
    Ok((start, String::from_utf8_lossy(&buf).into_owned()))
}

/// The lines of backend `pid`'s dump in `text`: from its `logging memory contexts of PID` line
/// to the first complete `Grand total` line after it.
pub fn dump_lines(text: &str, pid: u32) -> Option<&str> {
    let marker = format!("logging memory contexts of PID {pid}");
    let at = text.find(&marker)?;
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let total = start + text[start..].find("Grand total: ")?;
    let end = total + text[total..].find('\n')? + 1;
    Some(&text[start..end])
}

impl Source for PgSource {
    fn describe(&self) -> String {
        format!(
            "watching PostgreSQL backend {} by pg_log_backend_memory_contexts, reading {} (the \
             backend logs at its next interrupt check; it is not stopped)",
            self.pid,
            self.log.display()
        )
    }

    fn take(&mut self, n: u64, out: &Path) -> Result<Taken, WatchError> {
        let offset = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let begun = Instant::now();
        let sql = format!("select pg_log_backend_memory_contexts({})", self.pid);
        if psql(&self.conninfo, &sql)? != "t" {
            return Err(WatchError(format!(
                "backend {} did not accept the request (it has exited?)",
                self.pid
            )));
        }
        while begun.elapsed() < LOG_TIMEOUT {
            let (_, text) = read_from(&self.log, offset)?;
            if let Some(lines) = dump_lines(&text, self.pid) {
                let took = begun.elapsed();
                let path = out.join(format!("pg-{n:06}.log"));
                std::fs::write(&path, lines)
                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
                return Ok(Taken {
                    path,
                    took,
                    stopped: false,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(WatchError(format!(
            "backend {}: no dump appeared in {} within {} s (is that the log this server writes? \
             log_min_messages must let LOG through)",
            self.pid,
            self.log.display(),
            LOG_TIMEOUT.as_secs()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(file: &str, collector: &str, addr: &str) -> LogSettings {
        LogSettings {
            data_directory: "/var/lib/postgresql/15/main".into(),
            current_logfile: file.into(),
            logging_collector: collector.into(),
            server_addr: addr.into(),
        }
    }

    #[test]
    fn the_log_resolves_against_the_data_directory() {
        let s = settings("log/postgresql-Thu.log", "on", "");
        assert_eq!(
            resolve_log(&s).unwrap(),
            Path::new("/var/lib/postgresql/15/main/log/postgresql-Thu.log")
        );
        let s = settings("/var/log/pg.log", "on", "127.0.0.1");
        assert_eq!(resolve_log(&s).unwrap(), Path::new("/var/log/pg.log"));
    }

    #[test]
    fn an_unreadable_log_is_refused_with_the_reason() {
        let e = resolve_log(&settings("", "off", "")).unwrap_err();
        assert!(
            e.contains("no logging collector") && e.contains("--log"),
            "{e}"
        );
        let e = resolve_log(&settings("log/x.log", "on", "10.1.2.3")).unwrap_err();
        assert!(e.contains("remote") && e.contains("10.1.2.3"), "{e}");
        let e = check_readable(Path::new("/nonexistent/pg.log"), false).unwrap_err();
        assert!(e.0.contains("another machine"), "{e}");
    }

    #[test]
    fn dump_lines_cut_one_backends_dump() {
        let text = "x [7] LOG:  statement: select 1\n\
                    x [9] LOG:  logging memory contexts of PID 9\n\
                    x [9] LOG:  level: 0; TopMemoryContext: 100 total in 1 blocks; 0 free (0 chunks); 100 used\n\
                    x [9] LOG:  Grand total: 100 bytes in 1 blocks; 0 free (0 chunks); 100 used\n\
                    x [7] LOG:  statement: select 2\n";
        let got = dump_lines(text, 9).unwrap();
        assert!(got.starts_with("x [9] LOG:  logging memory"));
        assert!(got.ends_with("100 used\n") && got.lines().count() == 3);
        assert_eq!(dump_lines(text, 7), None);
        // A Grand total line still being written is not the end of the dump yet.
        let cut = text.find("100 used\nx [7]").unwrap() + 4;
        assert_eq!(dump_lines(&text[..cut], 9), None);
    }
}
