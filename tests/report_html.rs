//! `memctx report`: the page's numbers (growth rate, R², projection) on a series whose answer is
//! known, and the page in a real browser — headless Chromium loads it, and the rendered DOM must
//! show that every chart drew (the page rasterises each chart into a canvas and counts its
//! non-background pixels) and that the flame graph is there with its root label and metric.
//!
//! Without Chromium the browser half prints why and passes, unless `MEMCTX_REQUIRE_CHROMIUM=1`
//! (ci/test sets it and installs Debian's `chromium`).
#![cfg(feature = "cli")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server log with four dumps of backend 42, `step` seconds apart:
/// CacheMemoryContext grows by exactly 1 MiB a step (1, 2, 3, 4 MiB), MessageContext holds 8 kB.
fn growing_log(step: u64) -> String {
    growing_log_ms(step * 1000)
}

/// [`growing_log`] with the dumps `step_ms` milliseconds apart.
fn growing_log_ms(step_ms: u64) -> String {
    let mut log = String::new();
    for h in 0..4u64 {
        let cache = (h + 1) << 20;
        let (t, ms) = (h * step_ms / 1000, h * step_ms % 1000);
        let (hh, mm, ss) = (t / 3600, t / 60 % 60, t % 60);
        let p = format!("2026-12-03 {hh:02}:{mm:02}:{ss:02}.{ms:03} UTC [42] LOG:  ");
        let _ = write!(
            log,
            "{p}logging memory contexts of PID 42\n\
             {p}level: 0; TopMemoryContext: 65536 total in 4 blocks; 1000 free (2 chunks); 64536 used\n\
             {p}level: 1; CacheMemoryContext: {cache} total in 8 blocks; 4096 free (1 chunks); {} used\n\
             {p}level: 1; MessageContext: 8192 total in 1 blocks; 2000 free (0 chunks); 6192 used\n\
             {p}Grand total: {} bytes in 13 blocks; 7096 free (3 chunks); {} used\n",
            cache - 4096,
            cache + 65536 + 8192,
            cache + 65536 + 8192 - 7096
        );
    }
    log
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memctx-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report(log: &Path, out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_memctx"))
        .arg("report")
        .arg(log)
        .arg("-o")
        .arg(out)
        .args(["--limit", "10MB"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn the_page_states_the_growth_rate_fit_and_projection() {
    let dir = temp_dir("numbers");
    let log = dir.join("server.log");
    std::fs::write(&log, growing_log(3600)).unwrap();
    let page = report(&log, &dir.join("report.html"));
    assert!(
        page.contains(
            "growth +1.0 MB per hour (least-squares fit, R² = 1.000); reaches 10.0 MB in 6.0 \
             hours after the last dump"
        ),
        "{page}"
    );
    assert!(page.contains("growth +0 bytes per hour") && page.contains("never reaches 10.0 MB"));
    // Self-contained: no external resource.
    for outside in ["src=\"http", "href=\"http", "src=\"//", "<link"] {
        assert!(!page.contains(outside), "the page loads {outside}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A short series (a watch of half a minute) is drawn in seconds, and its rate is still per hour.
/// The flame graph's frame is as tall as the graph it shows (which its page draws without
/// margins), and its title names the dumps by file, not by the path that the page's heading gives.
#[test]
fn the_flame_graph_frame_fits_its_graph_and_its_title_names_the_dumps() {
    let dir = temp_dir("flame");
    let log = dir.join("server.log");
    std::fs::write(&log, growing_log(3600)).unwrap();
    let page = report(&log, &dir.join("report.html"));
    let svg = &page[page.find("srcdoc=").unwrap()..];
    let root = &svg[svg.find("&lt;svg ").unwrap()..];
    let root = &root[..root.find("&gt;").unwrap()];
    let at = root.find(" height=&quot;").unwrap() + " height=&quot;".len();
    let height: u32 = root[at..].split('&').next().unwrap().parse().unwrap();
    assert!(
        (100..400).contains(&height),
        "three levels of frames: {height}"
    );
    let frame = format!(
        "<iframe id=\"flame\" title=\"differential flame graph\" style=\"height:{height}px\" \
         srcdoc=\"&lt;style&gt;body{{margin:0}}svg{{display:block}}&lt;/style&gt;"
    );
    assert!(page.contains(&frame), "{frame} in {page}");
    assert!(
        page.contains("Growth by total bytes: server.log#4 against server.log#1"),
        "{page}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_series_is_drawn_in_seconds_with_its_rate_per_hour() {
    let dir = temp_dir("short");
    let log = dir.join("server.log");
    std::fs::write(&log, growing_log(10)).unwrap();
    let page = report(&log, &dir.join("report.html"));
    assert!(page.contains(" over 30 s; "), "{page}");
    assert!(
        page.contains(
            "growth +360.0 MB per hour (least-squares fit, R² = 1.000); reaches 10.0 MB in 60 s \
             after the last dump"
        ),
        "{page}"
    );
    assert!(page.contains(">30 s<"), "the x axis ends at 30 s: {page}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A series shorter than a second (a demo's dumps) gives its span in milliseconds, and only a
/// growing context's verdict is marked as an alarm.
#[test]
fn a_sub_second_series_gives_its_span_in_ms_and_marks_only_growth() {
    let dir = temp_dir("subsecond");
    let log = dir.join("server.log");
    std::fs::write(&log, growing_log_ms(10)).unwrap();
    let page = report(&log, &dir.join("report.html"));
    assert!(page.contains(" over 30 ms; "), "{page}");
    assert!(
        page.contains("<span class=\"verdict growing\">growing</span>"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"verdict stable\">stable</span>"),
        "{page}"
    );
    assert!(page.contains(".verdict.growing{color:#a00}"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chromium, if installed.
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            !std::env::var_os("MEMCTX_REQUIRE_CHROMIUM").is_some_and(|v| v != "0"),
            "the browser test cannot run: no chromium on PATH"
        );
        eprintln!("skipping the browser check: no chromium on PATH");
    }
    found
}

/// Headless Chromium's flags: as root it needs --no-sandbox; no network of its own.
fn headless(browser: &str, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        // Lets the page's load handler and image decoding finish before the DOM is dumped.
        "--virtual-time-budget=10000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn the_charts_draw_in_a_real_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = temp_dir("browser");
    let log = dir.join("server.log");
    std::fs::write(&log, growing_log(3600)).unwrap();
    let html = dir.join("report.html");
    let page = report(&log, &html);
    let charts = page.matches("<svg class=\"chart\"").count();
    assert_eq!(
        charts, 3,
        "TopMemoryContext, CacheMemoryContext, MessageContext"
    );
    let o = headless(browser, &dir.join("profile"))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        dom.contains(&format!("charts drawn: {charts} of {charts}")),
        "the page's own check did not pass: {dom}"
    );
    let inked: Vec<u64> = dom
        .split("data-inked=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(inked.len(), charts);
    // A chart's axes and lines are hundreds of pixels; its white background is not counted.
    assert!(inked.iter().all(|&n| n > 500), "{inked:?}");
    assert!(dom.contains("total bytes, last dump against the first"));
    assert!(dom.contains("Growth by total bytes"));
    let _ = std::fs::remove_dir_all(&dir);
}
