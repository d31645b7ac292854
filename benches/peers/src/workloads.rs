//! What a child process does: one step of the benchmark on one store (or one baseline), printing
//! its figures as `name=value` lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::engines::{self, Engine};

const VALUE_LEN: usize = 100;
const BATCH: u64 = 1000;

/// SplitMix64: spreads `i` over 64 bits.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th key: 16 bytes that look random, so loads arrive out of order.
fn key(i: u64) -> Vec<u8> {
    let mut k = mix(i).to_be_bytes().to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64) -> Vec<u8> {
    (0..VALUE_LEN as u64)
        .map(|j| (mix(i ^ j) & 0x3F) as u8 + b' ')
        .collect()
}

fn say(name: &str, value: f64) {
    println!("{name}={value}");
    let _ = std::io::stdout().flush();
}

/// Peak resident memory of this process so far, in bytes (VmHWM).
fn peak_rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Bytes allocated on disk under `dir` (what `du` counts; preallocated space included).
fn disk_bytes(dir: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total as f64
}

pub fn child(args: &[String]) {
    let arg = |i: usize| args.get(i).map(String::as_str).expect("argument");
    let number = |i: usize| -> u64 { arg(i).parse().expect("number") };
    match arg(0) {
        "load" => load(arg(1), Path::new(arg(2)), number(3)),
        "read" => read(arg(1), Path::new(arg(2)), number(3), number(4)),
        "settle" => settle(arg(1), Path::new(arg(2))),
        "reopen" => reopen(arg(1), Path::new(arg(2)), number(3)),
        "durable" => durable(arg(1), Path::new(arg(2)), number(3), number(4)),
        "count-puts" => {
            let engine = engines::open(arg(1), Path::new(arg(2)));
            for i in 0..number(3) {
                engine.put(&key(i), &value(i));
            }
        }
        "raw-append" => raw_sync_loop(Path::new(arg(1)), false, number(3)),
        "raw-overwrite" => raw_sync_loop(Path::new(arg(1)), true, number(3)),
        "raw-log-bulk" => raw_log_bulk(Path::new(arg(1)), number(2)),
        "btreemap-get" => btreemap_get(number(2), number(3)),
        other => panic!("unknown step {other}"),
    }
}

/// Bulk load: `keys` keys in durable batches of 1,000.
fn load(name: &str, dir: &Path, keys: u64) {
    let engine = engines::open(name, dir);
    let started = Instant::now();
    let mut i = 0;
    while i < keys {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (i..(i + BATCH).min(keys))
            .map(|j| (key(j), value(j)))
            .collect();
        engine.write_batch(&batch);
        i += BATCH;
    }
    let took = started.elapsed().as_secs_f64();
    // Closing may finish work the load left (sturdykv compacts, others flush): shown apart.
    let closing = Instant::now();
    drop(engine);
    say("close_after_load_s", closing.elapsed().as_secs_f64());
    say("bulk_load_keys_per_s", keys as f64 / took);
    say("peak_rss_load_bytes", peak_rss());
    say("disk_bytes_after_load", disk_bytes(dir));
}

/// Reopen time, a full scan, random gets (1 and 2 threads).
fn read(name: &str, dir: &Path, keys: u64, seconds: u64) {
    let started = Instant::now();
    let engine = engines::open(name, dir);
    assert!(
        engine.get(&key(keys / 2)),
        "{name}: the loaded key is there"
    );
    say("reopen_s", started.elapsed().as_secs_f64());
    // The first full scan after opening. It also brings the store into the page cache, so the
    // random gets below measure a warm store, as the peers' published figures do.
    let started = Instant::now();
    let n = engine.scan();
    assert_eq!(n, keys, "{name}: the scan saw every key");
    say(
        "scan_keys_per_s",
        n as f64 / started.elapsed().as_secs_f64(),
    );
    for threads in [1u64, 2] {
        let done = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let run = Duration::from_secs(seconds);
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (engine, done, count) = (&engine, &done, &count);
                s.spawn(move || {
                    let mut n = 0u64;
                    let mut r = t << 40;
                    while !done.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            r += 1;
                            assert!(engine.get(&key(mix(r) % keys)), "a loaded key is missing");
                        }
                        n += 256;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                });
            }
            std::thread::sleep(run);
            done.store(true, Ordering::Relaxed);
        });
        let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        say(&format!("random_get_{threads}t_per_s"), rate);
    }
}

/// The store's own compaction, then its size.
fn settle(name: &str, dir: &Path) {
    {
        let mut engine = engines::open(name, dir);
        engine.settle();
    }
    say("disk_bytes_settled", disk_bytes(dir));
}

/// The time to open the (compacted) store and read one key.
fn reopen(name: &str, dir: &Path, keys: u64) {
    let started = Instant::now();
    let engine = engines::open(name, dir);
    assert!(engine.get(&key(keys / 3)));
    say("reopen_settled_s", started.elapsed().as_secs_f64());
}

/// Durable single puts from `threads` threads for `seconds`.
fn durable(name: &str, dir: &Path, threads: u64, seconds: u64) {
    let engine = engines::open(name, dir);
    let done = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (engine, done, count): (&dyn Engine, _, _) = (engine.as_ref(), &done, &count);
            s.spawn(move || {
                let mut i = t << 40;
                while !done.load(Ordering::Relaxed) {
                    engine.put(&key(i), &value(i));
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        done.store(true, Ordering::Relaxed);
    });
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    say(&format!("durable_put_{threads}t_per_s"), rate);
}

/// One 128-byte record (a 16-byte key and a 100-byte value with a little framing) written and
/// `fdatasync`ed per iteration: appending to a new file, or overwriting a preallocated one.
fn raw_sync_loop(dir: &Path, preallocate: bool, seconds: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join(if preallocate { "overwrite" } else { "append" });
    let file = std::fs::File::create(&path).expect("create");
    let record = [0x5Au8; 128];
    if preallocate {
        file.write_all_at(&vec![0u8; 64 << 20], 0)
            .expect("preallocate");
        file.sync_all().expect("sync");
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        file.write_all_at(&record, n * 128).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    say(
        if preallocate {
            "raw_overwrite_fdatasync_per_s"
        } else {
            "raw_append_fdatasync_per_s"
        },
        rate,
    );
    let _ = std::fs::remove_file(&path);
}

/// The physical floor of a bulk load: the same bytes appended in batches of 1,000 records, one
/// `fdatasync` per batch.
fn raw_log_bulk(dir: &Path, keys: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join("log");
    let file = std::fs::File::create(&path).expect("create");
    let started = Instant::now();
    let mut offset = 0u64;
    let mut i = 0;
    while i < keys {
        let mut buf = Vec::with_capacity(BATCH as usize * 128);
        for j in i..(i + BATCH).min(keys) {
            buf.extend_from_slice(&(VALUE_LEN as u32).to_le_bytes());
            buf.extend_from_slice(&key(j));
            buf.extend_from_slice(&value(j));
        }
        file.write_all_at(&buf, offset).expect("write");
        file.sync_data().expect("fdatasync");
        offset += buf.len() as u64;
        i += BATCH;
    }
    say(
        "raw_log_bulk_keys_per_s",
        keys as f64 / started.elapsed().as_secs_f64(),
    );
    let _ = std::fs::remove_file(&path);
}

/// An in-memory `BTreeMap<Vec<u8>, Vec<u8>>` of the same data: random gets on one thread.
fn btreemap_get(keys: u64, seconds: u64) {
    let map: BTreeMap<Vec<u8>, Vec<u8>> = (0..keys).map(|i| (key(i), value(i))).collect();
    let started = Instant::now();
    let mut n = 0u64;
    let mut r = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..256 {
            r += 1;
            let v = map.get(&key(mix(r) % keys)).expect("present");
            std::hint::black_box(v.len());
        }
        n += 256;
    }
    say(
        "btreemap_get_per_s",
        n as f64 / started.elapsed().as_secs_f64(),
    );
}
