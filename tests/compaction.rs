//! Snapshot compaction through the public API: generations, deletes over a snapshot, background
//! triggers, readers across a compaction, zero-copy values outliving their file, damaged snapshots.

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
fn compaction_moves_the_log_into_a_snapshot_and_reopen_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..5000, "v1");
    let before = dump(&db);
    db.compact().expect("compact");
    let stats = db.stats().expect("stats");
    assert_eq!((stats.generation, stats.compactions), (1, 1));
    assert_eq!(stats.snapshot_keys, 5000);
    assert!(stats.snapshot_bytes > 5000 * 20);
    assert_eq!(stats.wal_bytes, 40, "the new log holds only its header");
    assert_eq!(
        files(dir.path()),
        [
            "LOCK",
            "LOCK.compaction",
            "LOCK.handles",
            "snap-0000000000000001",
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
        db.stats().expect("stats").snapshot_keys,
        expected.len() as u64,
        "no tombstones in a snapshot"
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
            "LOCK.handles",
            "snap-0000000000000002",
            "wal-0000000000000002"
        ]
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
    assert_eq!(db.stats().expect("stats").generation, 1);
}

#[test]
fn the_background_compactor_keeps_the_log_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .compaction_min_wal_bytes(64 << 10)
        .compaction_ratio(0.5)
        .open(dir.path())
        .expect("open");
    for round in 0..150u32 {
        fill(&db, round * 100..round * 100 + 100, "bg");
    }
    // The trigger is checked after each commit; give the thread a moment to finish.
    let mut stats = db.stats().expect("stats");
    for _ in 0..200 {
        if stats.compactions > 0 && stats.generation == stats.compactions {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = db.stats().expect("stats");
    }
    assert!(stats.compactions >= 2, "{stats:?}");
    // The trigger, plus slack for batches committed while the compactor was starting.
    let bound = (64 << 10).max(stats.snapshot_bytes / 2) + 32 * 1024;
    assert!(
        stats.wal_bytes <= bound,
        "log {} over the trigger {bound}",
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
        .expect("compact replaces snap-1 and deletes it");
    assert!(!dir.path().join("snap-0000000000000001").exists());
    assert_eq!(value.as_ref(), b"kept-42", "the mapping stays alive");
    assert_eq!(
        db.get("key000042").expect("get").as_deref(),
        Some(&b"replaced-42"[..])
    );
}

#[test]
fn a_damaged_snapshot_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..2000, "v");
    db.compact().expect("compact");
    drop(db);
    let snap = dir.path().join("snap-0000000000000001");
    let mut bytes = std::fs::read(&snap).expect("read");

    // A damaged footer: refused at open.
    let last = bytes.len() - 6;
    bytes[last] ^= 0x20;
    std::fs::write(&snap, &bytes).expect("write");
    let err = Db::open(dir.path()).expect_err("damaged footer");
    match &err {
        Error::Corruption { file, .. } => assert!(file.ends_with("snap-0000000000000001"), "{err}"),
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
fn a_truncated_snapshot_is_corruption_not_an_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    fill(&db, 0..100, "v");
    db.compact().expect("compact");
    drop(db);
    let snap = dir.path().join("snap-0000000000000001");
    let bytes = std::fs::read(&snap).expect("read");
    std::fs::write(&snap, &bytes[..bytes.len() / 2]).expect("write");
    assert!(matches!(
        Db::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
}
