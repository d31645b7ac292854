//! Durable single-thread `put` next to its physical baselines, measured in the same run on the same
//! disk: a raw `write` + `fdatasync` append loop, and a raw overwrite of a preallocated file +
//! `fdatasync` loop. Each appends exactly the bytes one sturdykv put record takes (16-byte key,
//! 100-byte value), so the ratios compare like with like.
//!
//! Run: `cargo bench --bench durable_put`

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
/// Bytes of one put record in the log: framing 8, sequence 8, durable horizon 8, op count 4, op
/// header 9, key, value.
const RECORD_LEN: usize = 8 + 8 + 8 + 4 + 9 + KEY_LEN + VALUE_LEN;

fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(b"user0000");
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn durable_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_put_1_thread");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));

    let dir = bench_dir("sturdykv");
    let db = sturdykv::Db::open(&dir).expect("open");
    let value = [7u8; VALUE_LEN];
    let mut i = 0u64;
    group.bench_function("sturdykv_put", |b| {
        b.iter(|| {
            i += 1;
            db.put(key(i), value).expect("put");
        })
    });
    drop(db);

    let dir = bench_dir("raw_append");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("open");
    let record = [7u8; RECORD_LEN];
    group.bench_function("raw_append_fdatasync", |b| {
        b.iter(|| {
            file.write_all(&record).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });

    let dir = bench_dir("raw_overwrite");
    let file = preallocated(&dir, 256 << 20);
    let mut offset = 0u64;
    group.bench_function("raw_overwrite_preallocated_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&record, offset).expect("write");
            file.sync_data().expect("fdatasync");
            offset = (offset + RECORD_LEN as u64) % (255 << 20);
        })
    });
    group.finish();
}

/// A file of `len` zero bytes, written (not sparse) and synced, so overwrites need no allocation.
fn preallocated(dir: &std::path::Path, len: usize) -> File {
    let file = File::create(dir.join("log")).expect("create");
    let zeros = vec![0u8; 1 << 20];
    for chunk in 0..len / zeros.len() {
        file.write_all_at(&zeros, (chunk * zeros.len()) as u64)
            .expect("write zeros");
    }
    file.sync_all().expect("fsync");
    file
}

criterion_group!(benches, durable_put);
criterion_main!(benches);
