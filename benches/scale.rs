//! Scale figures for the snapshot design, on 1,000,000 keys (16-byte keys, 100-byte values), each
//! next to its baseline measured in the same run:
//!
//! - peak resident memory of this process while loading them in batches of 1,000 with default
//!   options (raw data: 116 MB);
//! - bytes on disk after compaction, against the raw data;
//! - open + first `get` of the compacted 1,000,000-key store, against a 1,000-key store;
//! - random `get` on one thread, against an in-memory `BTreeMap` of the same data;
//! - a full ordered scan.
//!
//! Run: `cargo bench --bench scale` (`SCALE_KEYS=100000` for a quicker run; `SCALE_REUSE=1` to
//! measure the reads again on the store the previous run left).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sturdykv::{Batch, Db};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;

fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    // Spread keys over the key space so that inserts are not sequential.
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k[..8].copy_from_slice(&mixed.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [b'v'; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn fresh(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load(dir: &Path, n: u64) -> Duration {
    let db = Db::open(dir).expect("open");
    let start = Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let mut batch = Batch::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            batch.put(key(i), value(i));
        }
        db.write(batch).expect("write");
    }
    let took = start.elapsed();
    db.compact().expect("compact");
    took
}

/// Median time of `runs` opens followed by one `get`.
fn open_and_get(dir: &Path, runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let db = Db::open(dir).expect("open");
            black_box(db.get(key(7)).expect("get"));
            let took = start.elapsed();
            drop(db);
            took
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n: u64 = std::env::var("SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let raw_mb = (n as f64) * (KEY_LEN + VALUE_LEN) as f64 / 1e6;

    // SCALE_REUSE=1 measures reads on the store a previous run left (for profiling them).
    let reuse = std::env::var_os("SCALE_REUSE").is_some();
    let big = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-big");
    let load_time = if reuse {
        Duration::ZERO
    } else {
        load(&fresh("scale-big"), n)
    };
    let peak = peak_rss_mb();
    let disk = dir_bytes(&big) as f64 / 1e6;

    let small = fresh("scale-small");
    load(&small, 1000);
    let open_small = open_and_get(&small, 21);
    let open_big = open_and_get(&big, 21);

    let db = Db::open(&big).expect("open");
    // Interleaved rounds, best of three each, so that both see the same machine.
    let lookups = 1_000_000u64;
    let (mut get_rate, mut btree_rate) = (0f64, 0f64);
    let mut x = 1u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        key((x >> 20) % n)
    };
    // SCALE_SKIP_GETS=1 leaves the scan alone in a profile.
    let rounds = if std::env::var_os("SCALE_SKIP_GETS").is_some() {
        0
    } else {
        3
    };
    let model: BTreeMap<Vec<u8>, Vec<u8>> = (0..n * (rounds > 0) as u64)
        .map(|i| (key(i).to_vec(), value(i).to_vec()))
        .collect();
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..lookups {
            black_box(db.get(next()).expect("get"));
        }
        get_rate = get_rate.max(lookups as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..lookups {
            black_box(model.get(next().as_slice()));
        }
        btree_rate = btree_rate.max(lookups as f64 / start.elapsed().as_secs_f64());
    }
    drop(model);

    let start = Instant::now();
    let mut scanned = 0u64;
    for kv in db.range::<&[u8], _>(..) {
        black_box(kv.expect("scan"));
        scanned += 1;
    }
    let scan_rate = scanned as f64 / start.elapsed().as_secs_f64();
    assert_eq!(scanned, n);
    drop(db);

    println!("| figure ({n} keys, 16 B keys, 100 B values) | sturdykv | baseline | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| bulk load, batches of 1,000 (keys/s) | {:.0} | | |",
        n as f64 / load_time.as_secs_f64()
    );
    println!(
        "| peak RSS while loading (MB) | {peak:.1} | raw data {raw_mb:.1} | {:.2}× |",
        peak / raw_mb
    );
    println!(
        "| bytes on disk after compaction (MB) | {disk:.1} | raw data {raw_mb:.1} | {:.3}× |",
        disk / raw_mb
    );
    println!(
        "| open + first get (µs) | {:.0} | 1,000-key store {:.0} | {:.2}× |",
        open_big.as_secs_f64() * 1e6,
        open_small.as_secs_f64() * 1e6,
        open_big.as_secs_f64() / open_small.as_secs_f64()
    );
    println!(
        "| random get, 1 thread (lookups/s) | {get_rate:.0} | BTreeMap<Vec<u8>, Vec<u8>> {btree_rate:.0} | {:.2}× |",
        get_rate / btree_rate
    );
    println!("| full ordered scan (keys/s) | {scan_rate:.0} | | |");
}
