//! Flush and compaction through the public API: runs and partitions, deletes over them,
//! background triggers, bounded memory and replay, readers across a compaction, zero-copy values
//! outliving their file, damaged sorted files.

use std::collections::BTreeMap;

mod common;

use common::{dump, files, keys_descending, open_manual};
use sturdykv::{Batch, Db, Error, Options};

fn fill(db: &Db, range: std::ops::Range<u32>, tag: &str) {
    let mut batch = Batch::new();
    for i in range {
        batch.put(format!("key{i:06}"), format!("{tag}-{i}"));
    }
    db.write(batch).expect("write");
}

#[test]
fn compaction_moves_the_log_into_a_partition_and_reopen_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..5000, "v1");
    let before = dump(&db);
    db.compact().expect("compact");
    let stats = db.stats().expect("stats");
    assert_eq!(
        (stats.generation, stats.flushes, stats.compactions),
        (1, 1, 1)
    );
    assert!(stats.runs.is_empty(), "{stats:?}");
    assert_eq!(stats.partition_entries(), 5000);
    assert!(stats.sorted_bytes() > 5000 * 20);
    assert_eq!(stats.wal_bytes, 40, "the new log holds only its header");
    // Manifests 1 (the new store), 2 (the flush's run), 3 (the partition), 4 (the run gone).
    assert_eq!(
        files(dir.path()),
        [
            "LOCK",
            "LOCK.compaction",
            "LOCK.flush",
            "LOCK.handles",
            "MANIFEST-0000000000000004",
            "part-0000000000000000",
            "wal-0000000000000001"
        ]
    );
    assert_eq!(dump(&db), before);
    drop(db);

    let db = open_manual(dir.path());
    assert_eq!(dump(&db), before);
    assert_eq!(db.len().expect("len"), 5000);
    assert_eq!(db.stats().expect("stats").recovery.replayed_records, 0);
}

#[test]
fn writes_and_deletes_over_a_snapshot_win_and_survive_the_next_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..1000, "old");
    db.compact().expect("compact");
    fill(&db, 500..1500, "new");
    for i in (0..1500u32).step_by(7) {
        db.delete(format!("key{i:06}")).expect("delete");
    }
    let mut expected = BTreeMap::new();
    for i in 0..1500u32 {
        if i % 7 != 0 {
            let tag = if i < 500 { "old" } else { "new" };
            expected.insert(
                format!("key{i:06}").into_bytes(),
                format!("{tag}-{i}").into_bytes(),
            );
        }
    }
    assert_eq!(dump(&db), expected);
    assert_eq!(db.len().expect("len"), expected.len() as u64);
    assert_eq!(
        db.get("key000007").expect("get"),
        None,
        "tombstone hides the snapshot"
    );
    let reversed = keys_descending(&db);
    assert!(reversed.iter().rev().eq(expected.keys()));

    db.compact().expect("compact again");
    assert_eq!(dump(&db), expected);
    assert_eq!(
        db.stats().expect("stats").partition_entries(),
        expected.len() as u64,
        "no tombstones in a partition"
    );
    drop(db);
    let db = open_manual(dir.path());
    assert_eq!(dump(&db), expected);
    assert_eq!(db.len().expect("len"), expected.len() as u64);
    assert_eq!(
        files(dir.path()),
        [
            "LOCK",
            "LOCK.compaction",
            "LOCK.flush",
            "LOCK.handles",
            "MANIFEST-0000000000000007",
            "part-0000000000000001",
            "wal-0000000000000002"
        ]
    );
}

/// Deletes flushed into a run hide the keys in the partitions below until a compaction drops
/// both; a reopen in between counts the live keys right.
#[test]
fn tombstones_in_a_run_hide_the_partitions_below_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..1000, "old");
    db.compact().expect("compact");
    for i in (0..1000u32).step_by(2) {
        db.delete(format!("key{i:06}")).expect("delete");
    }
    fill(&db, 1000..1100, "new");
    db.flush_memtable().expect("flush");
    let stats = db.stats().expect("stats");
    assert_eq!((stats.runs.len(), stats.partitions.len()), (1, 1));
    assert_eq!(stats.runs[0].entries, 600, "500 tombstones and 100 puts");
    drop(db);
    let db = open_manual(dir.path());
    assert_eq!(db.stats().expect("stats").recovery.replayed_records, 0);
    assert_eq!(db.len().expect("len"), 600);
    assert_eq!(db.get("key000002").expect("get"), None);
    assert_eq!(
        db.get("key000003").expect("get").as_deref(),
        Some(&b"old-3"[..])
    );
    assert_eq!(dump(&db).len(), 600);
    assert_eq!(keys_descending(&db).len(), 600);
    db.compact().expect("compact");
    let stats = db.stats().expect("stats");
    assert!(stats.runs.is_empty());
    assert_eq!(stats.partition_entries(), 600);
}

/// Partitions are split at `partition_bytes`, and a compaction rewrites only those the runs
/// overlap: a run of keys at the top of the key space leaves the lower partitions' files alone.
#[test]
fn a_compaction_rewrites_only_the_partitions_the_runs_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .background_compaction(false)
        .partition_bytes(64 << 10)
        .open(dir.path())
        .expect("open");
    let mut batch = Batch::new();
    for i in 0..20_000u32 {
        batch.put(
            format!("key{i:06}"),
            format!("a value of about forty bytes: {i:08}"),
        );
    }
    db.write(batch).expect("write");
    db.compact().expect("compact");
    let before = db.stats().expect("stats").partitions;
    assert!(before.len() >= 10, "{} partitions", before.len());
    for part in &before {
        assert!(part.bytes < 80 << 10, "{part:?}");
    }
    // Keys in the last partition's range only.
    for i in 19_990..20_010u32 {
        db.put(format!("key{i:06}"), "newer").expect("put");
    }
    db.compact().expect("compact");
    let after = db.stats().expect("stats").partitions;
    let paths = |files: &[sturdykv::FileStats]| -> Vec<std::path::PathBuf> {
        files.iter().map(|f| f.path.clone()).collect()
    };
    assert_eq!(
        paths(&after[..before.len() - 1]),
        paths(&before[..before.len() - 1]),
        "the untouched partitions keep their files"
    );
    assert_ne!(after.last(), before.last());
    assert_eq!(db.len().expect("len"), 20_010);
    assert_eq!(
        db.get("key019995").expect("get").as_deref(),
        Some(&b"newer"[..])
    );
    assert_eq!(
        db.get("key000005").expect("get").as_deref(),
        Some(&b"a value of about forty bytes: 00000005"[..])
    );
}

#[test]
fn compacting_an_empty_log_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    db.compact().expect("compact");
    assert_eq!(db.stats().expect("stats").generation, 0);
    fill(&db, 0..10, "v");
    db.compact().expect("compact");
    db.compact().expect("nothing new");
    let stats = db.stats().expect("stats");
    assert_eq!(
        (stats.generation, stats.flushes, stats.compactions),
        (1, 1, 1)
    );
}

#[test]
fn the_background_flusher_keeps_the_memtable_and_the_log_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .memtable_bytes(64 << 10)
        .open(dir.path())
        .expect("open");
    let mut most = 0;
    for round in 0..150u32 {
        fill(&db, round * 100..round * 100 + 100, "bg");
        most = most.max(db.stats().expect("stats").memtable_bytes);
    }
    // The trigger is checked after each commit; give the thread a moment to finish.
    let mut stats = db.stats().expect("stats");
    for _ in 0..200 {
        if stats.flushes > 0 && stats.compactions > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = db.stats().expect("stats");
    }
    assert!(stats.flushes >= 5, "{stats:?}");
    assert!(stats.compactions >= 1, "{stats:?}");
    // The bound, twice over while a flush runs, plus slack for batches committed while the
    // flusher was starting.
    assert!(most <= 3 * (64 << 10), "memtable reached {most} bytes");
    assert!(
        stats.wal_bytes <= 3 * (64 << 10),
        "log {} bytes",
        stats.wal_bytes
    );
    assert_eq!(db.len().expect("len"), 15000);
    drop(db);
    let db = open_manual(dir.path());
    assert_eq!(db.len().expect("len"), 15000);
    assert_eq!(
        db.get("key014999").expect("get").as_deref(),
        Some(&b"bg-14999"[..])
    );
}

#[test]
fn a_reader_iterating_across_a_compaction_sees_every_key_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..3000, "a");
    db.compact().expect("compact");
    fill(&db, 3000..6000, "b");
    let mut iter = db.range::<&[u8], _>(..);
    let mut seen = Vec::new();
    for _ in 0..1000 {
        seen.push(iter.next().expect("entry").expect("ok"));
    }
    db.compact().expect("compact while iterating");
    seen.extend(iter.map(|kv| kv.expect("ok")));
    assert_eq!(seen.len(), 6000);
    for (i, (k, v)) in seen.iter().enumerate() {
        assert_eq!(k.as_ref(), format!("key{i:06}").as_bytes());
        let tag = if i < 3000 { "a" } else { "b" };
        assert_eq!(v.as_ref(), format!("{tag}-{i}").as_bytes());
    }
}

#[test]
fn values_from_a_snapshot_outlive_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..100, "kept");
    db.compact().expect("compact");
    let value = db.get("key000042").expect("get").expect("present");
    fill(&db, 0..100, "replaced");
    db.compact()
        .expect("compact replaces part-0 and deletes it");
    assert!(!dir.path().join("part-0000000000000000").exists());
    assert_eq!(value.as_ref(), b"kept-42", "the mapping stays alive");
    assert_eq!(
        db.get("key000042").expect("get").as_deref(),
        Some(&b"replaced-42"[..])
    );
}

#[test]
fn a_damaged_partition_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..2000, "v");
    db.compact().expect("compact");
    drop(db);
    let snap = dir.path().join("part-0000000000000000");
    let mut bytes = std::fs::read(&snap).expect("read");

    // A damaged footer: refused at open.
    let last = bytes.len() - 6;
    bytes[last] ^= 0x20;
    std::fs::write(&snap, &bytes).expect("write");
    let err = Db::open(dir.path()).expect_err("damaged footer");
    match &err {
        Error::Corruption { file, .. } => assert!(file.ends_with("part-0000000000000000"), "{err}"),
        other => panic!("expected corruption, got {other}"),
    }
    bytes[last] ^= 0x20;

    // A damaged data block: open is cheap and succeeds, the read that touches it fails.
    bytes[5000] ^= 0x01;
    std::fs::write(&snap, &bytes).expect("write");
    let db = open_manual(dir.path());
    let mut errors = 0;
    for i in 0..2000u32 {
        match db.get(format!("key{i:06}")) {
            Ok(Some(v)) => assert_eq!(
                v.as_ref(),
                format!("v-{i}").as_bytes(),
                "never a wrong value"
            ),
            Ok(None) => panic!("key{i:06} vanished"),
            Err(Error::Corruption { offset, .. }) => {
                assert!(offset <= 5000);
                errors += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(errors > 0);
}

#[test]
fn a_truncated_partition_is_corruption_not_an_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..100, "v");
    db.compact().expect("compact");
    drop(db);
    let snap = dir.path().join("part-0000000000000000");
    let bytes = std::fs::read(&snap).expect("read");
    std::fs::write(&snap, &bytes[..bytes.len() / 2]).expect("write");
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
}
