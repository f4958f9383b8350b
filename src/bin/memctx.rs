//! `memctx`: read memory-context dumps (memctx snapshots and PostgreSQL's own), compare them over
//! time to find the context that keeps growing, and draw them as flame graphs.
//!
//! Exit status: 0 on success, 1 on an error (a missing or malformed file: the message names it),
//! 2 on a usage error, 3 when `diff --fail-on growing` finds a context growing.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use memctx::leak::{self, render, watch, DiffOptions, DiffStream, Dump, Metric, ReportOptions};
use memctx::stats::PrintOptions;

const FORMATS_HELP: &str = "\
Inputs are recognised by their content:
  memctx snapshot JSON (memctx-snapshot) and stats JSON (memctx-stats)
  PostgreSQL server logs with pg_log_backend_memory_contexts() output
    (`level: N; NAME: T total in B blocks; ...`, any log_line_prefix, csvlog, jsonlog)
  MemoryContextStats() output (indented `NAME: T total in ...`, `Grand total: ...`)
  the gdb script's output (`NAME: BYTES`, indented)
  memctx's gdb walker output (gdb -p PID -batch -x memctx_gdb.py -ex memctx-stats), one
    snapshot with a tree per thread
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
    Stats(StatsArgs),
    /// Compare two dumps or a series and name the contexts that keep growing
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// Draw a dump's context tree as a flame graph (SVG)
    Flame(FlameArgs),
    /// Dump a running process every interval and rank its growing contexts live
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
    /// Write one self-contained HTML page about a series: charts, growth rates, flame graph
    Report(ReportArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Dump files or directories, oldest first (as for diff)
    #[arg(required = true, value_name = "SERIES")]
    paths: Vec<PathBuf>,
    /// Where to write the page (`-` for standard output)
    #[arg(short, long, value_name = "HTML")]
    output: PathBuf,
    /// Keep only the dumps of this process
    #[arg(long)]
    pid: Option<u32>,
    /// The bytes of verdicts, ranking, fits and the flame graph: total or used
    #[arg(long, value_name = "METRIC", default_value_t = Metric::Total)]
    metric: Metric,
    /// Contexts charted
    #[arg(long, value_name = "N", default_value_t = 6)]
    top: usize,
    /// Allocation sites listed (memctx debug-build snapshots)
    #[arg(long, value_name = "N", default_value_t = 10)]
    sites: usize,
    /// Project when each charted context reaches this size (512MB, 2GB)
    #[arg(long, value_name = "SIZE", value_parser = leak::html::parse_size)]
    limit: Option<u64>,
    /// The page title
    #[arg(long)]
    title: Option<String>,
}

const WATCH_HELP: &str = "\
A memctx program is dumped by its dumper's signal when its registry shows a dumper with a signal
that the process catches (the process is not stopped), otherwise through gdb and the walker (the
process is stopped while they read). A PostgreSQL backend (--pg) is dumped with
pg_log_backend_memory_contexts() and read back from the server log. The series stays in --out for
`memctx diff` and `memctx report`. Stops on Ctrl-C, --count or --duration.";

#[derive(Args)]
struct WatchArgs {
    /// The process to watch
    pid: u32,
    /// Time between dumps (500ms, 10s, 2m, 1h)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = watch::parse_duration)]
    every: std::time::Duration,
    /// The series directory (must be empty or absent; default memctx-watch-PID)
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Stop after N dumps
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this long
    #[arg(long, value_name = "DURATION", value_parser = watch::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Rows of the ranking
    #[arg(long, value_name = "N", default_value_t = 15)]
    top: usize,
    /// The bytes that decide verdicts, ranking and sparklines: total or used
    #[arg(long, value_name = "METRIC", default_value_t = Metric::Total)]
    metric: Metric,
    /// Watch a PostgreSQL backend: psql's connection string for its server
    #[arg(long, value_name = "CONNINFO")]
    pg: Option<String>,
    /// The server log to read the dumps from (default: pg_current_logfile())
    #[arg(long, value_name = "FILE", requires = "pg")]
    log: Option<PathBuf>,
    /// Dump a memctx program through gdb even when its dumper has a signal
    #[arg(long, conflicts_with = "pg")]
    gdb: bool,
}

const DIFF_HELP: &str = "\
PATHS: `OLD NEW` (two files), `DIR` (its files in natural name order; files that are no dump are
skipped with a warning), or one file holding a series (a server log with several
pg_log_backend_memory_contexts() dumps). Contexts are matched by their path of names and
identifiers; same-named siblings are summed; `N more child contexts` lines are kept as
`PARENT/(more child contexts)`. Verdicts: growing, plateau, noisy, shrinking, stable; one metric
(--metric, total bytes by default) decides verdicts, ranking and the +/- column.

Exit status: 0 no context growing (or no --fail-on), 1 an error (a missing or malformed input,
several processes without --pid), 2 a usage error, 3 a context growing by more than --min-growth
with --fail-on growing.";

/// Which dump of a file, and of which process.
#[derive(Args)]
struct DumpChoice {
    /// Keep only the dumps of this process (an input holding several processes' dumps is refused
    /// without it)
    #[arg(long)]
    pid: Option<u32>,
    /// Which dump (1 = first, counting the chosen process's dumps; default: the last, named on
    /// standard error when the file holds several)
    #[arg(long, value_name = "N")]
    index: Option<usize>,
}

#[derive(Args)]
struct StatsArgs {
    /// The dump file
    file: PathBuf,
    #[command(flatten)]
    choice: DumpChoice,
    /// Print every dump of the file
    #[arg(long, conflicts_with = "index")]
    all: bool,
    /// Children printed per context before the rest are summarised (inputs PostgreSQL did not summarise already)
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_children: usize,
    /// Levels printed below the top before deeper contexts are summarised (inputs PostgreSQL did not summarise already)
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_level: usize,
}

#[derive(Args)]
struct DiffArgs {
    /// Dump files or directories, oldest first
    #[arg(required = true, value_name = "PATHS")]
    paths: Vec<PathBuf>,
    /// Keep only the dumps of this process (inputs holding several processes' dumps are refused
    /// without it; inputs that record no PID are then skipped, with a warning naming them)
    #[arg(long)]
    pid: Option<u32>,
    /// The bytes that decide verdicts, ranking and the +/- column: total or used
    #[arg(long, value_name = "METRIC", default_value_t = Metric::Total)]
    metric: Metric,
    /// Print the report as JSON: the verdicts and each context's series
    #[arg(long)]
    json: bool,
    /// Exit with status 3 when a context is growing (steadily, by more than --min-growth)
    #[arg(long, value_enum, value_name = "VERDICT")]
    fail_on: Option<FailOn>,
    /// With --fail-on: growth (last minus first, in bytes of the metric) that is let pass
    #[arg(long, value_name = "BYTES", default_value_t = 0, requires = "fail_on")]
    min_growth: u64,
    /// Rows of the ranked table and verdict lines
    #[arg(long, value_name = "N", default_value_t = 20)]
    top: usize,
    /// Allocation sites to show (memctx debug-build snapshots)
    #[arg(long, value_name = "N", default_value_t = 10)]
    sites: usize,
    /// Print exact byte counts instead of kB/MB
    #[arg(long)]
    bytes: bool,
}

/// The verdicts `--fail-on` can fail on.
#[derive(Clone, Copy, ValueEnum)]
enum FailOn {
    /// A context judged growing
    Growing,
}

#[derive(Args)]
struct FlameArgs {
    /// The dump file
    file: PathBuf,
    /// Where to write the SVG (`-` for standard output)
    #[arg(short, long, value_name = "SVG")]
    output: PathBuf,
    #[command(flatten)]
    choice: DumpChoice,
    /// The bytes that give a frame its width: total or used
    #[arg(long, value_name = "METRIC", default_value_t = Metric::Total, conflicts_with = "used")]
    metric: Metric,
    /// Width by used bytes (the same as --metric used)
    #[arg(long)]
    used: bool,
    /// One frame per identifier instead of merging same-named siblings
    #[arg(long)]
    idents: bool,
    /// Title of the graph (default: the file name)
    #[arg(long)]
    title: Option<String>,
}

/// How a command ended, when it did not fail.
enum Outcome {
    Done,
    /// `diff --fail-on growing` found growth.
    Growth,
}

fn main() -> ExitCode {
    // The debug build's reports go to `log` (target `memctx`); RUST_LOG filters them.
    env_logger::init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Growth) => ExitCode::from(3),
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

fn warn_all(lines: &[String]) {
    for w in lines {
        eprintln!("memctx: warning: {w}");
    }
}

/// The dumps of one process in a file, by the rule every command follows.
fn read_process(file: &Path, pid: Option<u32>) -> Result<Vec<Dump>, String> {
    let dumps = leak::parse_file(file).map_err(|e| e.to_string())?;
    let selection = leak::select_pid(dumps, pid).map_err(|e| e.to_string())?;
    warn_all(&selection.skipped);
    warn(&selection.dumps);
    Ok(selection.dumps)
}

/// The dump `--index` names in a file (or the last, named on standard error when there are
/// several), of one process by the rule every command follows. The file is read as a stream: only
/// the dumps' headers and the chosen dump are kept.
fn read_one(file: &Path, choice: &DumpChoice) -> Result<Dump, String> {
    let (mut heads, mut chosen, mut n) = (Vec::new(), None, 0);
    leak::parse::visit_file(file, &mut |d| {
        heads.push(d.header());
        if choice.pid.map_or(true, |p| d.pid == Some(p)) {
            n += 1;
            if choice.index.map_or(true, |i| i == n) {
                chosen = Some(d);
            }
        }
    })
    .map_err(|e| e.to_string())?;
    let selection = leak::select_pid(heads, choice.pid).map_err(|e| e.to_string())?;
    warn_all(&selection.skipped);
    warn(&selection.dumps);
    let n = selection.dumps.len();
    let Some(dump) = chosen.filter(|_| choice.index.map_or(true, |i| (1..=n).contains(&i))) else {
        let i = choice
            .index
            .expect("without --index the last dump is chosen");
        return Err(format!(
            "{}: --index {i}: the file holds {n} dump{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        ));
    };
    if choice.index.is_none() && n > 1 {
        eprintln!(
            "memctx: note: {} holds {n} dumps; showing the last, {}{} (--index N for another)",
            file.display(),
            dump.source,
            dump.line
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default()
        );
    }
    Ok(dump)
}

fn run(cmd: Command) -> Result<Outcome, String> {
    match cmd {
        Command::Stats(args) => stats(&args),
        Command::Diff(args) => diff(&args),
        Command::Flame(args) => flame(&args),
        Command::Report(args) => report(&args),
        Command::Watch(args) => run_watch(&args)
            .map(|()| Outcome::Done)
            .map_err(|e| e.to_string()),
    }
}

/// The paths, for a message.
fn joined(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn report(args: &ReportArgs) -> Result<Outcome, String> {
    let series = stream_series(&args.paths, args.pid, true)?;
    let what = joined(&args.paths);
    let opts = leak::html::HtmlOptions {
        metric: args.metric,
        top: args.top,
        sites: args.sites,
        limit: args.limit,
        title: args
            .title
            .clone()
            .unwrap_or_else(|| format!("memctx report: {what}")),
    };
    let diff = DiffOptions {
        metric: args.metric,
    };
    let report = series
        .stream
        .finish(&diff)
        .map_err(|e| format!("{what}: {e}"))?;
    let (Some(first), Some(last)) = (&series.first, &series.last) else {
        unreachable!("a series of two dumps or more was compared");
    };
    let input = leak::html::PageInput {
        report: &report,
        dumps: &series.dumps,
        first,
        last,
    };
    let page = leak::html::page_of(&input, &opts).map_err(|e| format!("{what}: {e}"))?;
    write_output(&args.output, "the report", |w| w.write_all(page.as_bytes()))?;
    Ok(Outcome::Done)
}

fn run_watch(args: &WatchArgs) -> Result<(), watch::WatchError> {
    let mut source: Box<dyn watch::Source> = match &args.pg {
        Some(conninfo) => Box::new(watch::pg::open(args.pid, conninfo, args.log.as_deref())?),
        None => watch::host::open(args.pid, args.gdb)?,
    };
    let opts = watch::WatchOptions {
        every: args.every,
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("memctx-watch-{}", args.pid))),
        count: args.count,
        duration: args.duration,
        top: args.top,
        metric: args.metric,
        live: std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    watch::prepare_out(&opts.out)?;
    watch::stop_on_ctrl_c().map_err(|e| watch::WatchError(format!("SIGINT handler: {e}")))?;
    let stdout = std::io::stdout();
    watch::watch(source.as_mut(), &opts, &mut stdout.lock()).map(drop)
}

fn stats(args: &StatsArgs) -> Result<Outcome, String> {
    let opts = PrintOptions {
        max_level: args.max_level,
        max_children: args.max_children,
    };
    let mut out = String::new();
    if args.all {
        for d in &read_process(&args.file, args.choice.pid)? {
            out.push_str(&format!("== {} ({}", d.source, d.format.description()));
            if let Some(p) = d.pid {
                out.push_str(&format!(", PID {p}"));
            }
            out.push_str(") ==\n");
            out.push_str(&render::stats_text(d, &opts));
        }
    } else {
        let d = read_one(&args.file, &args.choice)?;
        out.push_str(&render::stats_text(&d, &opts));
    }
    print_out(&out)?;
    Ok(Outcome::Done)
}

/// A series of one process read as a stream.
struct Streamed {
    /// Every dump of the process, folded in as it was read.
    stream: DiffStream,
    /// Their headers.
    dumps: Vec<Dump>,
    /// The first and the last dump in full, when asked for (and there are two).
    first: Option<Dump>,
    last: Option<Dump>,
}

/// The dumps of one process in files and directories (files there that hold no dump are skipped
/// with a warning), by the rule every command follows, each folded into a [`DiffStream`] as soon
/// as its file is read: only the dumps' headers are kept, and with `keep_ends` the first and the
/// last dump.
fn stream_series(paths: &[PathBuf], pid: Option<u32>, keep_ends: bool) -> Result<Streamed, String> {
    let mut stream = DiffStream::default();
    let (mut heads, mut first, mut last) = (Vec::new(), None, None);
    let skipped = leak::visit_series(paths, &mut |d| {
        heads.push(d.header());
        if pid.map_or(true, |p| d.pid == Some(p)) {
            stream.push(&d);
            match &first {
                None if keep_ends => first = Some(d),
                Some(_) => last = Some(d),
                None => {}
            }
        }
    })
    .map_err(|e| e.to_string())?;
    warn_all(&skipped);
    let selection = leak::select_pid(heads, pid).map_err(|e| e.to_string())?;
    warn_all(&selection.skipped);
    warn(&selection.dumps);
    Ok(Streamed {
        stream,
        dumps: selection.dumps,
        first,
        last,
    })
}

fn diff(args: &DiffArgs) -> Result<Outcome, String> {
    let series = stream_series(&args.paths, args.pid, false)?;
    if series.dumps.len() < 2 {
        return Err(format!(
            "{}: holds {} dump; diff needs two snapshots (memctx diff OLD NEW), a \
             directory of snapshots, or a log holding several dumps",
            joined(&args.paths),
            series.dumps.len()
        ));
    }
    let opts = DiffOptions {
        metric: args.metric,
    };
    let report = series.stream.finish(&opts).map_err(|e| e.to_string())?;
    if args.json {
        print_with(|w| report.write_json(w).and_then(|()| w.write_all(b"\n")))?;
    } else {
        let opts = ReportOptions {
            top: args.top,
            sites: args.sites,
            exact: args.bytes,
        };
        print_out(&report.format(&opts))?;
    }
    match args.fail_on {
        Some(FailOn::Growing) if !report.growing_beyond(args.min_growth).is_empty() => {
            Ok(Outcome::Growth)
        }
        _ => Ok(Outcome::Done),
    }
}

fn flame(args: &FlameArgs) -> Result<Outcome, String> {
    let metric = if args.used { Metric::Used } else { args.metric };
    let dump = read_one(&args.file, &args.choice)?;
    if metric == Metric::Used && !dump.has_detail {
        return Err(format!(
            "{}: {} records no used bytes: draw by total bytes (--metric total)",
            dump.source,
            dump.format.description()
        ));
    }
    let flame = render::FlameOptions {
        metric,
        idents: args.idents,
    };
    let lines = render::folded_stacks(&dump, &flame);
    let lines = render::under_root(&lines, &format!("{} ({metric} bytes)", dump.source));
    if lines.is_empty() {
        return Err(format!(
            "{}: nothing to draw: every context holds 0 bytes",
            dump.source
        ));
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("memctx: {} ({metric} bytes)", dump.source));
    opts.subtitle = Some(format!(
        "{}: {} in {} contexts, width = {metric} bytes",
        dump.format.description(),
        leak::diff::human_bytes(dump.total().total_bytes),
        dump.trees.iter().map(|t| t.contexts.len()).sum::<usize>(),
    ));
    opts.count_name = "bytes".to_string();
    opts.name_type = "Context:".to_string();
    let draw = |w: &mut dyn std::io::Write| {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
    };
    write_output(&args.output, "the flame graph", draw)?;
    Ok(Outcome::Done)
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
    print_with(|w| w.write_all(s.as_bytes()))
}

/// Writes through `draw` to standard output.
fn print_with(
    draw: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    match draw(&mut w).and_then(|()| w.flush()) {
        Ok(()) => Ok(()),
        // `memctx ... | head` closing the pipe is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to standard output: {e}")),
    }
}
