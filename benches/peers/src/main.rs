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
//! `PEERS_ROUNDS` of the durable puts and of the loads and reads (default 3),
//! `PEERS_DIR` for the data (default `target/peers-data`: put it on the disk you care about),
//! `PEERS_ONLY=a,b` to run some stores only.

mod engines;
mod report;
mod workloads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use engines::ENGINES;

/// Reopens of each compacted store, each in a process of its own; the figure is their median.
const REOPENS: usize = 5;

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
    let rounds_wanted = env_number("PEERS_ROUNDS", 3).max(1);
    let only: Option<Vec<String>> = std::env::var("PEERS_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    std::fs::create_dir_all(&out).expect("create the output directory");

    let engines: Vec<&str> = ENGINES
        .iter()
        .copied()
        .filter(|e| only.as_ref().is_none_or(|o| o.iter().any(|x| x == e)))
        .collect();
    let mut results: BTreeMap<String, Figures> = BTreeMap::new();
    let secs = seconds.to_string();

    // The machine's speed drifts over minutes on shared machines (the disk's sync latency most
    // of all), so measuring each store once, at a different time, compares moments more than
    // stores: every store and the baselines take turns, round after round, and each figure is
    // the median of its rounds.
    let mut rounds: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    // Phase 1, durable puts into fresh stores.
    for round in 1..=rounds_wanted {
        eprintln!("durable puts, round {round} of {rounds_wanted}");
        let base_dir = fresh(&data, "baseline");
        let b = base_dir.display().to_string();
        for what in ["raw-append", "raw-overwrite"] {
            collect(&mut rounds, "baseline", run_child(&[what, &b, "0", &secs]));
        }
        for &engine in &engines {
            for threads in ["1", "4"] {
                let dir = fresh(&data, engine);
                let d = dir.display().to_string();
                collect(
                    &mut rounds,
                    engine,
                    run_child(&["durable", engine, &d, threads, &secs]),
                );
            }
            // sturdykv again, kept to one process as the single-process peers are: what the
            // cross-process protocol costs a commit.
            if engine == "sturdykv" {
                let dir = fresh(&data, engine);
                let d = dir.display().to_string();
                let figures = run_child(&["durable", "sturdykv-exclusive", &d, "1", &secs]);
                let renamed = figures
                    .into_iter()
                    .map(|(k, v)| (format!("exclusive_{k}"), v));
                collect(&mut rounds, engine, renamed.collect());
            }
        }
    }
    // Phase 2, the loaded store: a load, then (a new process) reopen, scan and random gets.
    let n = keys.to_string();
    for round in 1..=rounds_wanted {
        eprintln!("loads and reads, round {round} of {rounds_wanted}");
        let base_dir = fresh(&data, "baseline");
        let b = base_dir.display().to_string();
        for what in ["raw-log-bulk", "btreemap-get"] {
            collect(&mut rounds, "baseline", run_child(&[what, &b, &n, &secs]));
        }
        for &engine in &engines {
            let dir = fresh(&data, engine);
            let d = dir.display().to_string();
            for step in ["load", "read"] {
                collect(
                    &mut rounds,
                    engine,
                    run_child(&[step, engine, &d, &n, &secs]),
                );
            }
        }
    }
    for (who, figures) in rounds {
        let entry = results.entry(who).or_default();
        for (name, mut values) in figures {
            values.sort_by(f64::total_cmp);
            if values.len() > 1 {
                entry.insert(format!("min_{name}"), values[0]);
                entry.insert(format!("max_{name}"), values[values.len() - 1]);
            }
            entry.insert(name, values[values.len() / 2]);
        }
    }

    // Phase 3, on the store the last round loaded: the store's own compaction, then reopens.
    for &engine in &engines {
        eprintln!("{engine}: compaction and reopens");
        let dir = data.join(engine);
        let d = dir.display().to_string();
        let mut figures = run_child(&["settle", engine, &d, &n]);
        // One timed open is at the mercy of the machine's noise (it takes well under a
        // millisecond for some stores): the median of several, each in a new process.
        let mut reopens: Vec<f64> = (0..REOPENS)
            .filter_map(|_| run_child(&["reopen", engine, &d, &n]).remove("reopen_settled_s"))
            .collect();
        reopens.sort_by(f64::total_cmp);
        if let (Some(&min), Some(&max)) = (reopens.first(), reopens.last()) {
            figures.insert("reopen_settled_s".into(), reopens[reopens.len() / 2]);
            figures.insert("reopen_settled_min_s".into(), min);
            figures.insert("reopen_settled_max_s".into(), max);
        }
        if let Some(syncs) = syncs_per_put(engine, &fresh(&data, engine)) {
            figures.extend(syncs);
        }
        let _ = std::fs::remove_dir_all(&dir);
        results.entry(engine.into()).or_default().extend(figures);
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

fn collect(rounds: &mut BTreeMap<String, BTreeMap<String, Vec<f64>>>, who: &str, figures: Figures) {
    for (name, value) in figures {
        rounds
            .entry(who.into())
            .or_default()
            .entry(name)
            .or_default()
            .push(value);
    }
}

/// Runs this binary as a child doing one step; returns the figures it printed (`name=value`).
/// Everything earlier steps left dirty is written back first, so that it does not slow this one.
fn run_child(args: &[&str]) -> Figures {
    rustix::fs::sync();
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
