//! Read snapshots: what reading through one costs. Random gets through a snapshot against plain
//! gets, and full scans (which read from a snapshot taken when they start), on a store of
//! `SNAP_KEYS` keys (default 1,000,000; 16-byte keys, 100-byte values) in three states: all in
//! the partitions; with 100,000 overwrites in the memtable; and with the snapshot taken before
//! those overwrites, so that its reads go through the values they replaced. Each pair is
//! measured side by side, alternating, `ROUNDS` times; the median is reported.
//!
//! Run: `cargo bench --bench snapshots` (`BENCH_SECONDS` sets each measurement's length,
//! default 2). The scan figures can be compared with a build from before snapshots: the lines
//! between the `snapshot-only` markers are all that needs the snapshot API (see
//! docs/BENCHMARKS.md, "Read snapshots", for the command).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sturdykv::{Batch, Db, Durability, Options};

const ROUNDS: usize = 3;

fn seconds() -> Duration {
    let s: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

fn keys() -> u64 {
    std::env::var("SNAP_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn key(i: u64) -> [u8; 16] {
    // Spread over the key space, so that neighbours in insertion order are not neighbours in
    // key order.
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Operations per second of `op` run for `seconds()`.
fn rate(mut op: impl FnMut() -> u64) -> f64 {
    let limit = seconds();
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < limit {
        done += op();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `a` and `b` measured alternately, `ROUNDS` times each: their medians.
fn side_by_side(mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ra.push(a());
        rb.push(b());
    }
    (median(ra), median(rb))
}

fn gets(n: u64, get: impl Fn(&[u8]) -> bool) -> impl FnMut() -> u64 {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    move || {
        let mut found = 0;
        for _ in 0..1000 {
            found += u64::from(get(&key(rng.next() % n)));
        }
        assert_eq!(found, 1000, "every key is there");
        1000
    }
}

fn scan(db: &Db) -> u64 {
    let mut n = 0;
    for entry in db.range::<&[u8], _>(..) {
        entry.expect("scan");
        n += 1;
    }
    n
}

fn overwrite(db: &Db, n: u64, count: u64, seed: u64) {
    let mut rng = Rng(seed);
    let value = [b'w'; 100];
    for _ in 0..count / 1000 {
        let mut batch = Batch::new();
        for _ in 0..1000 {
            batch.put(key(rng.next() % n), value);
        }
        db.write(batch).expect("overwrite");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches: there is nothing to list
    }
    let n = keys();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("snapshots-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let db = Options::new()
        .durability(Durability::Buffered)
        .open(&dir)
        .expect("open");
    let value = [b'v'; 100];
    for chunk in 0..n.div_ceil(1000) {
        let mut batch = Batch::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            batch.put(key(i), value);
        }
        db.write(batch).expect("load");
    }
    db.flush().expect("flush");
    db.compact().expect("compact");
    println!(
        "{n} keys; each figure the median of {ROUNDS} runs of {:?}",
        seconds()
    );
    println!("| state | reads | plain | through a snapshot | ratio |");
    println!("|---|---|---:|---:|---:|");
    let row = |state: &str, what: &str, (plain, snap): (f64, f64)| {
        println!(
            "| {state} | {what} | {:.0}k/s | {:.0}k/s | {:.3} |",
            plain / 1e3,
            snap / 1e3,
            plain / snap
        );
    };
    let scan_rate = |db: &Db| rate(|| scan(db)) / 1e6;

    for state in ["compacted", "100k overwrites in the memtable"] {
        if state != "compacted" {
            overwrite(&db, n, 100_000, 7);
        }
        // snapshot-only: begin
        let snapshot = db.snapshot().expect("snapshot");
        row(
            state,
            "random gets",
            side_by_side(
                {
                    let mut plain = gets(n, |k| db.get(k).expect("get").is_some());
                    move || rate(&mut plain)
                },
                {
                    let mut through = gets(n, |k| snapshot.get(k).expect("get").is_some());
                    move || rate(&mut through)
                },
            ),
        );
        drop(snapshot);
        // snapshot-only: end
        println!(
            "| {state} | full scan | {:.2}M keys/s | | |",
            scan_rate(&db)
        );
    }

    // snapshot-only: begin
    let old = db.snapshot().expect("snapshot");
    overwrite(&db, n, 100_000, 11);
    row(
        "snapshot taken before 100k more overwrites",
        "random gets",
        side_by_side(
            {
                let mut plain = gets(n, |k| db.get(k).expect("get").is_some());
                move || rate(&mut plain)
            },
            {
                let mut through = gets(n, |k| old.get(k).expect("get").is_some());
                move || rate(&mut through)
            },
        ),
    );
    let old_scan = rate(|| old.iter().map(|e| e.map(|_| 1).expect("scan")).sum()) / 1e6;
    println!(
        "| snapshot taken before 100k more overwrites | full scan | {:.2}M keys/s (now) | {old_scan:.2}M keys/s (as of the snapshot) | |",
        scan_rate(&db)
    );
    drop(old);
    // snapshot-only: end

    // Scans while another thread overwrites keys as fast as it can (Buffered): a point-in-time
    // scan keeps, for the scan's length, the values those writes replace.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seed = 13;
            while !stop.load(Ordering::Relaxed) {
                overwrite(&db, n, 10_000, seed);
                seed += 1;
            }
        })
    };
    let busy = median((0..ROUNDS).map(|_| scan_rate(&db)).collect());
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    println!("| another thread overwriting | full scan | {busy:.2}M keys/s | | |");
}
