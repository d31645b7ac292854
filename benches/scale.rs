//! The scale run: does sturdykv stay bounded as the store grows? One store of `SCALE_KEYS` keys
//! (16-byte keys spread over the key space, 100-byte values; default 1,000,000), each phase in a
//! process of its own, as an application would run:
//!
//! 1. **write**: load the keys in durable batches of 1,000, then overwrite `SCALE_KEYS / 2`
//!    random keys the same way. Per tenth of the run: throughput, heap (anonymous resident)
//!    memory, disk, bytes written. Then the slowest batches (p50, p99.9, max), peak heap, peak
//!    disk ÷ disk at the end, and bytes written ÷ bytes of data. The process then dies without
//!    closing (`abort`), as a crash would leave it.
//! 2. **after the crash**: open + first get; random gets for `SCALE_SECONDS` (default 3); a full
//!    scan; then a clean close.
//! 3. **after the clean close**: open + first get.
//!
//! Run: `cargo bench --bench scale` (`SCALE_KEYS=16000000 cargo bench --bench scale` by hand for
//! the large sizes; `SCALE_DIR` puts the store elsewhere than `target/`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sturdykv::{Batch, Db};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
const BATCH: u64 = 1000;

fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    // Spread keys over the key space so that inserts are not sequential.
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k[..8].copy_from_slice(&mixed.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64, round: u64) -> [u8; VALUE_LEN] {
    let mut v = [b'v'; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..16].copy_from_slice(&round.to_le_bytes());
    v
}

/// A field of `/proc/self/status`, in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes the store's files take on disk (allocated blocks: the log's preallocation counts).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small PRNG (xorshift), the same in every process.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Phase 1, in a child process: load, overwrite, report, die.
fn write_phase(dir: &Path, n: u64) -> ! {
    let db = Db::open(dir).expect("open");
    // Peak heap and disk, sampled every 20 ms by a thread of their own.
    let done = Arc::new(AtomicBool::new(false));
    let peak_heap = Arc::new(AtomicU64::new(0));
    let peak_disk = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak_heap, peak_disk) = (done.clone(), peak_heap.clone(), peak_disk.clone());
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let heap = (status_mb("RssAnon:") * 1e6) as u64;
                peak_heap.fetch_max(heap, Ordering::Relaxed);
                peak_disk.fetch_max(disk_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let total_batches = n.div_ceil(BATCH) + (n / 2).div_ceil(BATCH);
    let tenth = total_batches.div_ceil(10);
    let mut latencies = Vec::with_capacity(total_batches as usize);
    let written_before = write_bytes();
    let started = Instant::now();
    let mut tenth_started = Instant::now();
    let mut in_tenth = 0u64;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    println!(
        "| tenth | phase | keys/s | heap MB | disk MB | written MB |\n|---:|---|---:|---:|---:|---:|"
    );
    for b in 0..total_batches {
        let load = b < n.div_ceil(BATCH);
        let mut batch = Batch::new();
        if load {
            for i in b * BATCH..((b + 1) * BATCH).min(n) {
                batch.put(key(i), value(i, 0));
            }
        } else {
            for _ in 0..BATCH {
                let i = rng.below(n);
                batch.put(key(i), value(i, 1));
            }
        }
        let t = Instant::now();
        db.write(batch).expect("write");
        latencies.push(t.elapsed());
        in_tenth += 1;
        if (b + 1) % tenth == 0 || b + 1 == total_batches {
            let keys = std::mem::take(&mut in_tenth) * BATCH;
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                (b + 1).div_ceil(tenth),
                if load { "load" } else { "overwrite" },
                keys as f64 / tenth_started.elapsed().as_secs_f64(),
                status_mb("RssAnon:"),
                mb(disk_bytes(dir)),
                mb(write_bytes() - written_before),
            );
            tenth_started = Instant::now();
        }
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let data = (n + n / 2) * (KEY_LEN + VALUE_LEN) as u64;
    let end_disk = disk_bytes(dir);
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = db.stats().expect("stats");
    println!();
    println!("| figure | value |\n|---|---:|");
    println!(
        "| load + overwrite, keys/s | {:.0} |",
        (n + n / 2) as f64 / took.as_secs_f64()
    );
    println!(
        "| durable batch p50 / p99.9 / max (ms) | {:.1} / {:.1} / {:.1} |",
        ms(at(0.5)),
        ms(at(0.999)),
        ms(*latencies.last().expect("batches"))
    );
    println!(
        "| peak heap (RssAnon), MB | {:.0} |",
        mb(peak_heap.load(Ordering::Relaxed))
    );
    println!(
        "| peak disk ÷ disk at the end | {:.2} ({:.0} MB ÷ {:.0} MB) |",
        peak_disk.load(Ordering::Relaxed) as f64 / end_disk as f64,
        mb(peak_disk.load(Ordering::Relaxed)),
        mb(end_disk)
    );
    println!(
        "| bytes written ÷ bytes of data | {:.2} |",
        (write_bytes() - written_before) as f64 / data as f64
    );
    println!(
        "| files at the crash | {} runs, {} partitions, {} flushes, {} compactions |",
        stats.runs.len(),
        stats.partitions.len(),
        stats.flushes,
        stats.compactions
    );
    use std::io::Write;
    std::io::stdout().flush().expect("flush stdout");
    std::process::abort();
}

/// Phase 2 or 3, in a child process: open + first get, then (after the crash) reads and a
/// clean close.
fn read_phase(dir: &Path, n: u64, after_crash: bool) {
    let started = Instant::now();
    let db = Db::open(dir).expect("open");
    black_box(db.get(key(7)).expect("get"));
    let open = started.elapsed();
    let what = if after_crash {
        "after the crash"
    } else {
        "after a clean close"
    };
    println!(
        "| open + first get {what} (ms) | {:.1} (replayed {} records) |",
        open.as_secs_f64() * 1e3,
        db.stats().expect("stats").recovery.replayed_records
    );
    if !after_crash {
        return;
    }
    let seconds = env_number("SCALE_SECONDS", 3);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut gets = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..1000 {
            black_box(db.get(key(rng.below(n))).expect("get"));
        }
        gets += 1000;
    }
    println!(
        "| random gets after the reopen, /s | {:.0} |",
        gets as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut scanned = 0u64;
    for kv in db.range::<&[u8], _>(..) {
        black_box(kv.expect("scan"));
        scanned += 1;
    }
    assert_eq!(scanned, n, "every key once");
    println!(
        "| full scan, keys/s | {:.0} |",
        scanned as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "| heap after the reads (RssAnon), MB | {:.0} |",
        status_mb("RssAnon:")
    );
    let started = Instant::now();
    drop(db);
    println!(
        "| clean close (ms) | {:.1} |",
        started.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = env_number("SCALE_KEYS", 1_000_000);
    if let Some(at) = args.iter().position(|a| a == "--phase") {
        let dir = PathBuf::from(&args[at + 2]);
        match args[at + 1].as_str() {
            "write" => write_phase(&dir, n),
            "crash" => read_phase(&dir, n, true),
            "clean" => read_phase(&dir, n, false),
            other => panic!("unknown phase {other}"),
        }
        return;
    }
    let base = std::env::var_os("SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join("scale-store");
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "## sturdykv scale run: {n} keys of {KEY_LEN} B, values of {VALUE_LEN} B \
         (raw data {:.0} MB), then {} random overwrites\n",
        mb(n * (KEY_LEN + VALUE_LEN) as u64),
        n / 2
    );
    let me = std::env::current_exe().expect("this benchmark's path");
    for phase in ["write", "crash", "clean"] {
        let status = Command::new(&me)
            .args(["--phase", phase])
            .arg(&dir)
            .status()
            .expect("run a phase");
        if phase == "write" {
            assert!(!status.success(), "the write phase ends by dying");
        } else {
            assert!(status.success(), "phase {phase} failed");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
