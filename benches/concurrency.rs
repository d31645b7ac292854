//! Many writers: durable `put` throughput with 1, 4 and 8 threads (and with 4 threads whose waits
//! sleep at once instead of spinning first), with the CPU time each put cost; one writer process
//! against two; random `get`s from one thread and from two, and their cost while another process
//! writes. Every figure is a ratio against a baseline measured in the same run, on the same disk
//! (16-byte keys, 100-byte values).
//!
//! Run: `cargo bench --bench concurrency` (`BENCH_SECONDS` sets each measurement's length,
//! default 3; each is taken 3 times, alternating, and the median is reported).
//!
//! Throughput over a fixed time does not fit criterion's per-iteration model, so this bench has
//! its own small loop; it re-executes itself for the writer processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sturdykv::{Db, Options};

const VALUE_LEN: usize = 100;
const ROLE_ENV: &str = "STURDYKV_BENCH_ROLE";
const ROUNDS: usize = 3;

fn seconds() -> Duration {
    let s: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("concurrency-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

fn key(writer: u64, i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&writer.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// CPU time this process has used so far (all threads, user and kernel), in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Durable puts from `threads` threads of one handle for `time`; returns puts per second and
/// the CPU time per put in microseconds.
fn put_rate(db: &Db, threads: u64, time: Duration, writer_base: u64) -> (f64, f64) {
    let cpu_before = cpu_seconds();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (db, stop, done) = (db.clone(), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let value = [7u8; VALUE_LEN];
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    db.put(key(writer_base + t, i), value).expect("put");
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("writer");
    }
    let puts = done.load(Ordering::Relaxed) as f64;
    let cpu_per_put = (cpu_seconds() - cpu_before) * 1e6 / puts.max(1.0);
    (puts / start.elapsed().as_secs_f64(), cpu_per_put)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A child process: `writer DIR ID SECONDS` puts for that long (one thread) and prints its count.
fn child(role: &str) {
    let args: Vec<&str> = role.split_whitespace().collect();
    let db = Db::open(args[1]).expect("open");
    let id: u64 = args[2].parse().expect("id");
    let time = Duration::from_secs_f64(args[3].parse().expect("seconds"));
    // Start together: wait for the go file.
    let go = Path::new(args[1]).join("go");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let value = [7u8; VALUE_LEN];
    let syncs_before = db.stats().expect("stats").syncs;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < time {
        db.put(key(1000 + id, i), value).expect("put");
        i += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let syncs = db.stats().expect("stats").syncs - syncs_before;
    println!("{i} {secs} {syncs}");
}

fn spawn_writer(dir: &Path, id: u64, time: Duration) -> Child {
    Command::new(std::env::current_exe().expect("bench binary"))
        .env(
            ROLE_ENV,
            format!("writer {} {id} {}", dir.display(), time.as_secs_f64()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer process")
}

/// Puts per second from `processes` single-threaded writer processes together, and how many
/// puts each `fdatasync` (of any of them) covered.
fn process_rate(dir: &Path, processes: u64, time: Duration) -> (f64, f64) {
    let _ = std::fs::remove_file(dir.join("go"));
    let children: Vec<Child> = (0..processes).map(|p| spawn_writer(dir, p, time)).collect();
    std::thread::sleep(Duration::from_millis(300)); // let them open
    std::fs::write(dir.join("go"), b"").expect("go");
    let (mut rate, mut puts, mut syncs) = (0.0, 0.0, 0.0);
    for c in children {
        let (n, secs, synced) = writer_output(c);
        rate += n / secs;
        puts += n;
        syncs += synced;
    }
    (rate, puts / syncs.max(1.0))
}

/// A writer process's puts, seconds and `fdatasync`s.
fn writer_output(child: Child) -> (f64, f64, f64) {
    let out = child.wait_with_output().expect("writer");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<f64>().expect("a number"));
    let mut next = || parts.next().expect("writer output");
    (next(), next(), next())
}

/// Writes keys `0..keys` (of writer 0) in batches of 1,000.
fn load(db: &Db, keys: u64) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut batch = sturdykv::Batch::new();
        for &i in chunk {
            batch.put(key(0, i), [7u8; VALUE_LEN]);
        }
        db.write(batch).expect("load");
    }
}

/// Random gets per second on `db` over `keys` keys for `time`, from `threads` threads together.
fn get_rate(db: &Db, keys: u64, threads: u64, time: Duration) -> f64 {
    std::thread::scope(|s| {
        let each: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || gets_from_one_thread(db, keys, t, time)))
            .collect();
        each.into_iter()
            .map(|h| h.join().expect("reader thread"))
            .sum()
    })
}

fn gets_from_one_thread(db: &Db, keys: u64, seed: u64, time: Duration) -> f64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seed << 32);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let got = db.get(key(0, x % keys)).expect("get");
            assert!(got.is_some());
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child(&role);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this with no flag.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let time = seconds();
    println!("each figure: median of {ROUNDS} runs of {time:?}\n");

    // Threads of one process: writers that spin while they wait for each other (the default),
    // and, for comparison, writers that sleep at once (`Options::spin_wait(ZERO)`).
    let spinning = Db::open(bench_dir("threads")).expect("open");
    let sleeping = Options::new()
        .spin_wait(Duration::ZERO)
        .open(bench_dir("threads-sleeping"))
        .expect("open");
    let slots = [
        ("1 thread", &spinning, 1u64),
        ("4 threads", &spinning, 4),
        ("8 threads", &spinning, 8),
        ("4 threads, sleeping waiters", &sleeping, 4),
    ];
    let mut rates = vec![Vec::new(); slots.len()];
    let mut per_sync = vec![0.0; slots.len()];
    let mut cpu = vec![0.0; slots.len()];
    for round in 0..ROUNDS {
        for (slot, &(_, db, threads)) in slots.iter().enumerate() {
            let before = db.stats().expect("stats");
            let (rate, cpu_per_put) = put_rate(db, threads, time, (round * 100 + slot * 10) as u64);
            rates[slot].push(rate);
            cpu[slot] += cpu_per_put / ROUNDS as f64;
            let after = db.stats().expect("stats");
            per_sync[slot] += (after.commits - before.commits) as f64
                / (after.syncs - before.syncs).max(1) as f64
                / ROUNDS as f64;
        }
    }
    let rates: Vec<f64> = rates.into_iter().map(median).collect();
    println!("durable put, threads of one process (commits per fdatasync, CPU time per put)");
    for (slot, &(name, _, _)) in slots.iter().enumerate() {
        let ratio = if slot == 0 {
            String::new()
        } else {
            format!("{:.2}x", rates[slot] / rates[0])
        };
        println!(
            "  {name:<28} {:>9.0}/s  {ratio:>6}  ({:.1}, {:.0} µs)",
            rates[slot], per_sync[slot], cpu[slot]
        );
    }
    println!();
    drop((spinning, sleeping));

    // Processes.
    let dir = bench_dir("processes");
    Db::open(&dir).expect("create");
    let (mut single, mut double) = (Vec::new(), Vec::new());
    let mut per_sync = [0.0; 2];
    for _ in 0..ROUNDS {
        for (processes, rates) in [(1, &mut single), (2, &mut double)] {
            let (rate, puts_per_sync) = process_rate(&dir, processes, time);
            rates.push(rate);
            per_sync[processes as usize - 1] += puts_per_sync / ROUNDS as f64;
        }
    }
    let (single, double) = (median(single), median(double));
    println!("durable put, single-threaded writer processes (puts per fdatasync)");
    println!(
        "  1 process   {single:>9.0}/s           ({:.1})",
        per_sync[0]
    );
    println!(
        "  2 processes {double:>9.0}/s   {:.2}x   ({:.1})\n",
        double / single,
        per_sync[1]
    );

    // Reads while another process writes.
    let dir = bench_dir("reads");
    let db = Db::open(&dir).expect("open");
    let keys = 100_000u64;
    load(&db, keys);
    // A small store, all in the memtable and the CPU's caches: gets from there are quick
    // enough that anything threads share per get (a lock word, a reference count) shows.
    let hot_keys = 10_000u64;
    let hot = Db::open(bench_dir("reads-hot")).expect("open");
    load(&hot, hot_keys);
    let mut alone = Vec::new();
    let mut one_thread = Vec::new();
    let mut two_threads = Vec::new();
    let mut beside = Vec::new();
    let mut writer_rate = Vec::new();
    for _ in 0..ROUNDS {
        alone.push(get_rate(&db, keys, 1, time));
        one_thread.push(get_rate(&hot, hot_keys, 1, time));
        two_threads.push(get_rate(&hot, hot_keys, 2, time));
        let _ = std::fs::remove_file(dir.join("go"));
        let writer = spawn_writer(&dir, 0, time + Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.join("go"), b"").expect("go");
        std::thread::sleep(Duration::from_millis(100));
        beside.push(get_rate(&db, keys, 1, time));
        let (n, secs, _) = writer_output(writer);
        writer_rate.push(n / secs);
    }
    let (one_thread, two_threads) = (median(one_thread), median(two_threads));
    println!("random get over {hot_keys} keys in the memtable (all in the CPU's caches)");
    println!("  one thread                   {one_thread:>10.0}/s");
    println!(
        "  two threads of one process   {two_threads:>10.0}/s   {:.2}x\n",
        two_threads / one_thread
    );
    let (alone, beside) = (median(alone), median(beside));
    println!("random get over {keys} keys (in the page cache), one thread");
    println!("  alone                        {alone:>10.0}/s");
    println!(
        "  another process writing      {beside:>10.0}/s   cost {:.2}x (it wrote {:.0}/s)",
        alone / beside,
        median(writer_rate)
    );
}
