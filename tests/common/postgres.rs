//! A throwaway PostgreSQL cluster for tests: initdb in a temporary directory, Unix socket only (no
//! TCP), stopped and removed on drop (also when a test panics). It needs PostgreSQL 14 or later
//! (`pg_config --bindir`, or `/usr/lib/postgresql/*/bin`; override with `MEMCTX_PG_BINDIR`). As
//! root, the server runs as the `postgres` user through `runuser`. Without PostgreSQL a test
//! prints why and passes, unless `MEMCTX_REQUIRE_POSTGRES=1`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn skip(reason: &str) {
    if std::env::var_os("MEMCTX_REQUIRE_POSTGRES").is_some_and(|v| v != "0") {
        panic!("the PostgreSQL test cannot run: {reason}");
    }
    eprintln!("skipping the PostgreSQL test: {reason}");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MEMCTX_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        if o.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if dir.join("initdb").exists() {
                return Some(dir);
            }
        }
    }
    // Debian installs the server binaries outside PATH.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Runs PostgreSQL's programs: as the `postgres` user when we are root (the server refuses root).
pub struct Runner {
    pub as_postgres: bool,
}

impl Runner {
    pub fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

/// The throwaway cluster; stopped and removed on drop, also when the test panics.
pub struct Cluster {
    pub dir: PathBuf,
    pub bindir: PathBuf,
    pub runner: Runner,
    pub port: u16,
    started: bool,
}

impl Cluster {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = self
                .runner
                .command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
        if std::env::var_os("MEMCTX_KEEP_PG_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Starts a throwaway cluster; `extra_conf` is appended to its postgresql.conf (later lines win).
pub fn start_cluster(extra_conf: &str) -> Option<Cluster> {
    let Some(bindir) = find_bindir() else {
        skip("PostgreSQL not found (no pg_config --bindir, nothing in /usr/lib/postgresql)");
        return None;
    };
    let version = run(Command::new(bindir.join("postgres")).arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let major: u32 = version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
        .unwrap_or(0);
    if major < 14 {
        skip(&format!(
            "{} is older than 14 (no pg_log_backend_memory_contexts)",
            version.trim()
        ));
        return None;
    }
    let root = is_root();
    if root {
        let ok = Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            skip("running as root and there is no `postgres` user to run the server as");
            return None;
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // As root the server runs as `postgres`, which must be able to reach the directory: use /tmp
    // rather than a TMPDIR that may sit under root's home.
    let base = if root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("memctx-pg-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster {
        dir,
        bindir,
        runner: Runner { as_postgres: root },
        // Any port will do: the socket lives in our own directory.
        port: 50000 + (std::process::id() % 10000) as u16,
        started: false,
    };
    if root {
        let o = run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(&cluster.dir));
        assert!(o.status.success(), "chown: {o:?}");
    }
    eprintln!("{} in {}", version.trim(), cluster.dir.display());

    let o = run(cluster
        .runner
        .command(&cluster.bindir.join("initdb"))
        .arg("-D")
        .arg(cluster.data())
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]));
    assert!(
        o.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let conf = format!(
        "\n# memctx test cluster\n\
         listen_addresses = ''\n\
         unix_socket_directories = '{dir}'\n\
         port = {port}\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         shared_buffers = 16MB\n\
         max_connections = 10\n\
         logging_collector = off\n\
         lc_messages = 'C'\n\
         log_line_prefix = '%m [%p] %q%u@%d/%a '\n{extra_conf}\n",
        dir = cluster.dir.display(),
        port = cluster.port
    );
    let conf_path = cluster.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf_path).unwrap();
    text.push_str(&conf);
    std::fs::write(&conf_path, text).unwrap();

    cluster.started = true; // from here on, stop it on drop
    let o = run(cluster
        .runner
        .command(&cluster.bindir.join("pg_ctl"))
        .arg("-D")
        .arg(cluster.data())
        .arg("-l")
        .arg(cluster.log())
        .args(["-w", "-t", "60", "start"]));
    assert!(
        o.status.success(),
        "pg_ctl start failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        std::fs::read_to_string(cluster.log()).unwrap_or_default()
    );
    Some(cluster)
}
