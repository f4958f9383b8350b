//! `memctx`: read memory-context dumps (memctx snapshots and PostgreSQL's own), compare them over
//! time to find the context that keeps growing, and draw them as flame graphs.
//!
//! Exit status: 0 on success, 1 on an error (a missing or malformed file: the message names it),
//! 2 on a usage error.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use memctx::leak::{self, render, Dump, ReportOptions};
use memctx::stats::PrintOptions;

const FORMATS_HELP: &str = "\
Inputs are recognised by their content:
  memctx snapshot JSON (memctx-snapshot) and stats JSON (memctx-stats)
  PostgreSQL server logs with pg_log_backend_memory_contexts() output
    (`level: N; NAME: T total in B blocks; ...`, any log_line_prefix, csvlog, jsonlog)
  MemoryContextStats() output (indented `NAME: T total in ...`, `Grand total: ...`)
  the gdb script's output (`NAME: BYTES`, indented)
  pg_backend_memory_contexts exported as CSV with a header (PostgreSQL 14-16 or 17+)
A log with several dumps, or several JSON documents in one file, is a series.";

#[derive(Parser)]
#[command(
    name = "memctx",
    version,
    about = "Find the memory context that keeps growing, in memctx snapshots or PostgreSQL dumps",
    after_help = FORMATS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a dump in PostgreSQL's MemoryContextStats format
    #[command(after_help = FORMATS_HELP)]
    Stats {
        /// The dump file
        file: PathBuf,
        /// Which dump of a file holding several (1 = first; default: the last)
        #[arg(long, value_name = "N", conflicts_with = "all")]
        index: Option<usize>,
        /// Print every dump of the file
        #[arg(long)]
        all: bool,
        /// Children printed per context before the rest are summarised (inputs PostgreSQL did not summarise already)
        #[arg(long, value_name = "N", default_value_t = 100)]
        max_children: usize,
        /// Levels printed below the top before deeper contexts are summarised (inputs PostgreSQL did not summarise already)
        #[arg(long, value_name = "N", default_value_t = 100)]
        max_level: usize,
    },
    /// Compare two dumps or a series and name the contexts that keep growing
    #[command(after_help = "\
PATHS: `OLD NEW` (two files), `DIR` (its files in natural name order), or one file holding a
series (a server log with several pg_log_backend_memory_contexts() dumps). Contexts are matched by
their path of names and identifiers; same-named siblings are summed; `N more child contexts` lines
are kept as `PARENT/(more child contexts)`. Verdicts: growing, plateau, noisy, shrinking, stable.")]
    Diff {
        /// Dump files or directories, oldest first
        #[arg(required = true, value_name = "PATHS")]
        paths: Vec<PathBuf>,
        /// Keep only the dumps of this process (a log holding several backends' dumps)
        #[arg(long)]
        pid: Option<u32>,
        /// Rows of the ranked table and verdict lines
        #[arg(long, value_name = "N", default_value_t = 20)]
        top: usize,
        /// Allocation sites to show (memctx debug-build snapshots)
        #[arg(long, value_name = "N", default_value_t = 10)]
        sites: usize,
        /// Print exact byte counts instead of kB/MB
        #[arg(long)]
        bytes: bool,
    },
    /// Draw a dump's context tree as a flame graph (SVG)
    Flame {
        /// The dump file
        file: PathBuf,
        /// Where to write the SVG (`-` for standard output)
        #[arg(short, long, value_name = "SVG")]
        output: PathBuf,
        /// Which dump of a file holding several (1 = first; default: the last)
        #[arg(long, value_name = "N")]
        index: Option<usize>,
        /// Width by used bytes instead of total bytes
        #[arg(long)]
        used: bool,
        /// One frame per identifier instead of merging same-named siblings
        #[arg(long)]
        idents: bool,
        /// Title of the graph (default: the file name)
        #[arg(long)]
        title: Option<String>,
    },
}

fn main() -> ExitCode {
    // The debug build's reports go to `log` (target `memctx`); RUST_LOG filters them.
    env_logger::init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("memctx: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn warn(dumps: &[Dump]) {
    for d in dumps {
        for w in &d.warnings {
            eprintln!("memctx: warning: {}: {w}", d.source);
        }
    }
}

fn pick(dumps: Vec<Dump>, index: Option<usize>, file: &Path) -> Result<Dump, String> {
    let n = dumps.len();
    match index {
        None => Ok(dumps
            .into_iter()
            .last()
            .expect("parse returns at least one dump")),
        Some(i) if (1..=n).contains(&i) => Ok(dumps.into_iter().nth(i - 1).expect("in range")),
        Some(i) => Err(format!(
            "{}: --index {i}: the file holds {n} dump{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        )),
    }
}

fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Stats {
            file,
            index,
            all,
            max_children,
            max_level,
        } => {
            let opts = PrintOptions {
                max_level,
                max_children,
            };
            stats(&file, index, all, &opts)
        }
        Command::Diff {
            paths,
            pid,
            top,
            sites,
            bytes,
        } => {
            let opts = ReportOptions {
                top,
                sites,
                exact: bytes,
            };
            diff(&paths, pid, &opts)
        }
        Command::Flame {
            file,
            output,
            index,
            used,
            idents,
            title,
        } => flame(
            &file,
            &output,
            index,
            &render::FlameOptions { used, idents },
            title,
        ),
    }
}

fn stats(file: &Path, index: Option<usize>, all: bool, opts: &PrintOptions) -> Result<(), String> {
    let dumps = leak::parse_file(file).map_err(|e| e.to_string())?;
    warn(&dumps);
    let mut out = String::new();
    if all {
        for d in &dumps {
            out.push_str(&format!("== {} ({}", d.source, d.format.description()));
            if let Some(p) = d.pid {
                out.push_str(&format!(", PID {p}"));
            }
            out.push_str(") ==\n");
            out.push_str(&render::stats_text(d, opts));
        }
    } else {
        let d = pick(dumps, index, file)?;
        out.push_str(&render::stats_text(&d, opts));
    }
    print_out(&out)
}

fn diff(paths: &[PathBuf], pid: Option<u32>, opts: &ReportOptions) -> Result<(), String> {
    let dumps = leak::load_series(paths).map_err(|e| e.to_string())?;
    let dumps = leak::diff::select_pid(dumps, pid).map_err(|e| e.to_string())?;
    if dumps.len() < 2 {
        let what = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "{what}: holds {} dump; diff needs two snapshots (memctx diff OLD NEW), a \
             directory of snapshots, or a log holding several dumps",
            dumps.len()
        ));
    }
    warn(&dumps);
    let report = leak::diff(&dumps).map_err(|e| e.to_string())?;
    print_out(&report.format(opts))
}

fn flame(
    file: &Path,
    output: &Path,
    index: Option<usize>,
    flame: &render::FlameOptions,
    title: Option<String>,
) -> Result<(), String> {
    let dumps = leak::parse_file(file).map_err(|e| e.to_string())?;
    warn(&dumps);
    let dump = pick(dumps, index, file)?;
    let lines = render::folded_stacks(&dump, flame);
    if lines.is_empty() {
        return Err(format!(
            "{}: nothing to draw: every context holds 0 bytes",
            dump.source
        ));
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.unwrap_or_else(|| format!("memctx: {}", dump.source));
    opts.subtitle = Some(format!(
        "{}: {} in {} contexts, width = {} bytes",
        dump.format.description(),
        leak::diff::human_bytes(dump.total().total_bytes),
        dump.trees.iter().map(|t| t.contexts.len()).sum::<usize>(),
        if flame.used { "used" } else { "total" }
    ));
    opts.count_name = "bytes".to_string();
    opts.name_type = "Context:".to_string();
    let draw = |w: &mut dyn std::io::Write| {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
    };
    write_output(output, "the flame graph", draw)
}

/// Writes through `draw` to the file `output`, or to standard output for `-`.
fn write_output(
    output: &Path,
    what: &str,
    mut draw: impl FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), String> {
    if output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        return draw(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| format!("writing {what}: {e}"));
    }
    let f = std::fs::File::create(output)
        .map_err(|e| format!("{}: cannot create: {e}", output.display()))?;
    let mut w = BufWriter::new(f);
    draw(&mut w)
        .and_then(|()| w.flush())
        .map_err(|e| format!("{}: writing {what}: {e}", output.display()))
}

fn print_out(s: &str) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match w.write_all(s.as_bytes()).and_then(|()| w.flush()) {
        Ok(()) => Ok(()),
        // `memctx ... | head` closing the pipe is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to standard output: {e}")),
    }
}
