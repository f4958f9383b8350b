//! What a debug-build report costs: `cargo run --profile bench --features debug-contexts
//! --example report_cost` prints `report-cost first <ms>` and `report-cost later <ms>` (the
//! process's first report, symbolisation's debug-info loading included, then a later one), as
//! `ci/bench` does; under `valgrind/memcheck` it gives the first report's cost under memcheck.

fn main() {
    #[cfg(feature = "debug-contexts")]
    {
        let (first, later) = memctx::debug::__bench_report_cost();
        println!("report-cost first {first:.1}");
        println!("report-cost later {later:.1}");
    }
    #[cfg(not(feature = "debug-contexts"))]
    eprintln!("report_cost: build with --features debug-contexts");
}
