//! sturdykv next to its peers: the same workloads on each store, each run in its own process,
//! with the physical baselines measured in the same run. Writes `report.md` (the table) and
//! `ratios.svg` (the chart) into the output directory.
//!
//! ```sh
//! cd benches/peers && cargo run --release                       # all stores but RocksDB
//! cargo run --release --features rocksdb -- --out ../../docs/bench  # with RocksDB (long build)
//! ```
//!
//! Environment: `PEERS_KEYS` (default 1,000,000), `PEERS_SECONDS` per timed run (default 3),
//! `PEERS_DIR` for the data (default `target/peers-data`: put it on the disk you care about),
//! `PEERS_ONLY=a,b` to run some stores only.

mod engines;
mod report;
mod workloads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use engines::ENGINES;

/// Figures one child process measured: name → value.
pub type Figures = BTreeMap<String, f64>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        workloads::child(&args[1..]);
        return;
    }
    let mut out = PathBuf::from("target/peers-report");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(it.next().expect("--out DIR")),
            other => panic!("unknown argument {other} (see the comment at the top of main.rs)"),
        }
    }
    let data = PathBuf::from(std::env::var("PEERS_DIR").unwrap_or("target/peers-data".into()));
    let keys: u64 = env_number("PEERS_KEYS", 1_000_000);
    let seconds: u64 = env_number("PEERS_SECONDS", 3);
    let only: Option<Vec<String>> = std::env::var("PEERS_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    std::fs::create_dir_all(&out).expect("create the output directory");

    let mut results: BTreeMap<String, Figures> = BTreeMap::new();
    eprintln!("baselines");
    let base_dir = fresh(&data, "baseline");
    let mut baseline = Figures::new();
    for what in [
        "raw-append",
        "raw-overwrite",
        "raw-log-bulk",
        "btreemap-get",
    ] {
        baseline.extend(run_child(&[
            what,
            &base_dir.display().to_string(),
            &keys.to_string(),
            &seconds.to_string(),
        ]));
    }
    results.insert("baseline".into(), baseline);

    for &engine in ENGINES {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|e| e == engine))
        {
            continue;
        }
        eprintln!("{engine}");
        let mut figures = Figures::new();
        let dir = fresh(&data, engine);
        let d = dir.display().to_string();
        for step in ["load", "read", "settle-reopen"] {
            figures.extend(run_child(&[
                step,
                engine,
                &d,
                &keys.to_string(),
                &seconds.to_string(),
            ]));
        }
        let dir = fresh(&data, engine);
        let d = dir.display().to_string();
        for threads in ["1", "4"] {
            figures.extend(run_child(&[
                "durable",
                engine,
                &d,
                threads,
                &seconds.to_string(),
            ]));
        }
        if let Some(syncs) = syncs_per_put(engine, &fresh(&data, engine)) {
            figures.extend(syncs);
        }
        let _ = std::fs::remove_dir_all(&dir);
        results.insert(engine.into(), figures);
    }
    let _ = std::fs::remove_dir_all(&data);
    let machine = report::machine();
    let table = report::markdown(&results, keys, seconds, &machine);
    std::fs::write(out.join("report.md"), &table).expect("write report.md");
    std::fs::write(out.join("ratios.svg"), report::svg(&results)).expect("write ratios.svg");
    std::fs::write(out.join("figures.txt"), report::raw(&results)).expect("write figures");
    println!("{table}");
    eprintln!("wrote {}/report.md, ratios.svg, figures.txt", out.display());
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

/// An empty directory for `name` under `data`.
fn fresh(data: &Path, name: &str) -> PathBuf {
    let dir = data.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(data).expect("create the data directory");
    dir
}

/// Runs this binary as a child doing one step; returns the figures it printed (`name=value`).
fn run_child(args: &[&str]) -> Figures {
    let output = Command::new(std::env::current_exe().expect("own path"))
        .arg("child")
        .args(args)
        .output()
        .expect("run a child");
    parse_figures(&output, args)
}

fn parse_figures(output: &std::process::Output, args: &[&str]) -> Figures {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().parse().expect("a number")))
        .collect()
}

/// Under `strace -c`: how many fsync-family calls one durable put makes (1,000 puts).
fn syncs_per_put(engine: &str, dir: &Path) -> Option<Figures> {
    let summary = dir.with_extension("strace");
    let puts = 1000;
    let status = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&summary)
        .args([
            "-e",
            "trace=fsync,fdatasync,sync_file_range,msync,syncfs,sync",
        ])
        .arg(std::env::current_exe().ok()?)
        .args(["child", "count-puts", engine])
        .arg(dir)
        .arg(puts.to_string())
        .output()
        .ok()?;
    if !status.status.success() {
        eprintln!("strace failed: {}", String::from_utf8_lossy(&status.stderr));
        return None;
    }
    let text = std::fs::read_to_string(&summary).ok()?;
    let _ = std::fs::remove_file(&summary);
    let mut figures = Figures::new();
    for call in ["fsync", "fdatasync", "sync_file_range", "msync"] {
        // strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall
        let calls = text
            .lines()
            .filter(|l| l.split_whitespace().last() == Some(call))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
            .sum::<f64>();
        figures.insert(format!("{call}_per_put"), calls / f64::from(puts));
    }
    Some(figures)
}
