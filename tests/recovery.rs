//! Recovery from damaged logs: torn tails at every offset, zeroed and garbage tails, a flipped bit
//! or a zeroed sector in the middle (corruption, nothing cut; in a version 1 log, quarantined),
//! absurd lengths, an empty file, a future version.
//!
//! These tests damage `wal-0000000000000000` as docs/FORMAT.md describes it (a 40-byte header, then
//! records) and reopen through the public API only.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sturdykv::{Db, Error, Options};

const WAL: &str = "wal-0000000000000000";
const HEADER_LEN: u64 = 40;

/// A store with keys `k00`, `k01`, … (value `v<i>`), and the log offset after each record, as a
/// process killed after its last put leaves it: without the record a clean close appends to vouch
/// for the last records (zeroed again here), so that the last record can be torn as a crash tears
/// it.
fn store_with(dir: &Path, n: usize) -> Vec<u64> {
    let db = Db::open(dir).expect("open");
    let mut ends = vec![db.stats().expect("stats").wal_bytes];
    for i in 0..n {
        db.put(format!("k{i:02}"), format!("v{i}")).expect("put");
        ends.push(db.stats().expect("stats").wal_bytes);
    }
    drop(db);
    let wal = wal_path(dir);
    let len = std::fs::metadata(&wal).expect("metadata").len();
    let end = ends[n];
    write_at(&wal, end, &vec![0u8; (len - end) as usize]);
    ends
}

fn wal_path(dir: &Path) -> PathBuf {
    dir.join(WAL)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).expect("open wal");
    file.write_all_at(bytes, offset).expect("damage");
}

fn present(db: &Db, n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let v = db.get(format!("k{i:02}")).expect("get");
            if let Some(v) = &v {
                assert_eq!(
                    v.as_ref(),
                    format!("v{i}").as_bytes(),
                    "wrong value for k{i:02}"
                );
            }
            v.is_some()
        })
        .collect()
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    let original = tempfile::tempdir().expect("tempdir");
    let ends = store_with(original.path(), 3);
    let (last_start, last_end) = (ends[2], ends[3]);
    assert_eq!(ends[0], HEADER_LEN);

    for cut in last_start..last_end {
        for zero_fill in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_store(original.path(), dir.path());
            let wal = wal_path(dir.path());
            if zero_fill {
                // Power loss inside a preallocated file: the unsynced bytes read back as zeros.
                write_at(&wal, cut, &vec![0u8; (last_end - cut) as usize]);
            } else {
                // Power loss while appending: the file simply ends early.
                let file = OpenOptions::new().write(true).open(&wal).expect("open");
                file.set_len(cut).expect("truncate");
            }

            let db = Db::open(dir.path()).expect("a torn tail always reopens");
            assert_eq!(
                present(&db, 3),
                [true, true, false],
                "cut at {cut}, zeros {zero_fill}"
            );
            let stats = db.stats().expect("stats");
            assert_eq!(stats.wal_bytes, last_start);
            assert!(
                stats.recovery.quarantine_files.is_empty(),
                "a torn tail is not quarantined"
            );

            // The next writer appends after the last good record, not behind the garbage.
            db.put("after", "crash").expect("put");
            drop(db);
            let db = Db::open(dir.path()).expect("reopen");
            assert_eq!(present(&db, 3), [true, true, false]);
            assert_eq!(
                db.get("after").expect("get").as_deref(),
                Some(&b"crash"[..])
            );
            assert_eq!(
                db.stats().expect("stats").recovery.truncated_bytes,
                0,
                "already repaired"
            );
        }
    }
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = store_with(dir.path(), 3);
    write_at(
        &wal_path(dir.path()),
        ends[3],
        b"\x13\x37garbage that is not a record\xff\xfe",
    );
    let db = Db::open(dir.path()).expect("open");
    assert_eq!(present(&db, 3), [true, true, true]);
    let stats = db.stats().expect("stats");
    assert!(stats.recovery.truncated_bytes > 0);
    assert!(stats.recovery.quarantine_files.is_empty());
    db.put("k03", "v3").expect("put");
    drop(db);
    assert_eq!(
        present(&Db::open(dir.path()).expect("reopen"), 4),
        [true; 4]
    );
}

/// Every file of the store and its bytes.
fn snapshot_of_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

fn flip_bit(path: &Path, at: u64) {
    let mut byte = [0u8];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x04], at).expect("flip");
}

/// A bad record with acknowledged records after it is damage, not a torn tail: every later
/// record proves, by its durable horizon, that the bad one had been synced. Opening fails with
/// `Corruption` naming the file, the record's offset and the sequence numbers, and nothing is cut
/// or moved (the directory is byte for byte the same), in a writable and a read-only open alike.
#[test]
fn a_flipped_bit_mid_log_is_corruption_and_nothing_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = store_with(dir.path(), 10);
    let wal = wal_path(dir.path());
    // Flip one bit in the value of record 5 (k04 = v4, sequence number 5).
    flip_bit(&wal, ends[5] - 1);
    let before = snapshot_of_dir(dir.path());

    for read_only in [false, true] {
        let err = Options::new()
            .read_only(read_only)
            .open(dir.path())
            .expect_err("damage to acknowledged records");
        match &err {
            Error::Corruption {
                file,
                offset,
                reason,
            } => {
                assert!(file.ends_with(WAL), "{err}");
                assert_eq!(*offset, ends[4], "the damaged record's offset: {err}");
                assert!(
                    reason.contains("sequence number 5"),
                    "names the record: {err}"
                );
            }
            other => panic!("expected corruption, got {other}"),
        }
        assert_eq!(
            snapshot_of_dir(dir.path()),
            before,
            "the store is untouched (read-only: {read_only})"
        );
    }
}

/// A clean close appends an empty record that vouches for the records before it, so damage to
/// the last writes of a closed store is told from a torn tail too.
#[test]
fn damage_to_the_last_write_before_a_clean_close_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    db.put("first", "1").expect("put");
    db.put("last", "2").expect("put");
    let end = db.stats().expect("stats").wal_bytes;
    drop(db);
    flip_bit(&wal_path(dir.path()), end - 1);
    let before = snapshot_of_dir(dir.path());
    let err = Db::open(dir.path()).expect_err("the last write was acknowledged");
    assert!(
        matches!(&err, Error::Corruption { reason, .. } if reason.contains("sequence number 2")),
        "{err}"
    );
    assert_eq!(snapshot_of_dir(dir.path()), before);
}

/// The same with a whole zeroed sector in the middle of the log (a zero length reads as "end of
/// log", with records after it).
#[test]
fn a_zeroed_sector_mid_log_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = store_with(dir.path(), 40);
    let wal = wal_path(dir.path());
    let sector = (ends[20] / 512) * 512;
    assert!(
        sector > ends[0] && sector + 512 < ends[40],
        "a sector inside the records"
    );
    write_at(&wal, sector, &[0u8; 512]);
    let before = snapshot_of_dir(dir.path());
    let err = Db::open(dir.path()).expect_err("damage to acknowledged records");
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert_eq!(snapshot_of_dir(dir.path()), before);
}

/// A log of format version 1 (no durable horizon) of `n` records `k00 = v0`, …, written as an
/// older build wrote it; returns the offset after each record.
fn version_1_store(dir: &Path, n: usize) -> Vec<u64> {
    let mut log = Vec::new();
    log.extend_from_slice(b"SKVLOG\r\n");
    log.extend_from_slice(&1u32.to_le_bytes()); // version 1
    log.extend_from_slice(&0u32.to_le_bytes()); // flags
    log.extend_from_slice(&0u64.to_le_bytes()); // generation
    log.extend_from_slice(&1u64.to_le_bytes()); // first sequence
    let crc = crc32fast::hash(&log);
    log.extend_from_slice(&crc.to_le_bytes());
    log.extend_from_slice(&0u32.to_le_bytes());
    let mut ends = vec![log.len() as u64];
    for i in 0..n {
        let (key, value) = (format!("k{i:02}"), format!("v{i}"));
        let mut body = Vec::new();
        body.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(1);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value.as_bytes());
        log.extend_from_slice(&(body.len() as u32).to_le_bytes());
        log.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        log.extend_from_slice(&body);
        ends.push(log.len() as u64);
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(WAL), &log).expect("write log");
    ends
}

/// A version 1 log (a store of format 1) opens, and the open converts the store: appends go to
/// a new segment of the current log format.
#[test]
fn a_version_1_log_opens_and_the_store_is_converted() {
    let dir = tempfile::tempdir().expect("tempdir");
    version_1_store(dir.path(), 5);
    let db = Db::open(dir.path()).expect("open");
    assert_eq!(present(&db, 5), [true; 5]);
    let report = db.stats().expect("stats").recovery;
    assert_eq!(report.log_format_version, 1, "the log the open read");
    assert!(report.converted_from_format_1);
    db.put("k05", "v5").expect("put");
    drop(db);
    assert!(dir.path().join("MANIFEST-0000000000000001").exists());
    let db = Db::open(dir.path()).expect("reopen");
    assert_eq!(present(&db, 6), [true; 6]);
    let report = db.stats().expect("stats").recovery;
    assert_eq!(
        report.log_format_version, 3,
        "a segment of the current format"
    );
    assert!(!report.converted_from_format_1);
    db.compact().expect("compact");
    drop(db);
    let db = Db::open(dir.path()).expect("reopen");
    assert_eq!(present(&db, 6), [true; 6]);
}

/// In a version 1 log, whose records do not say what was durable, damage cannot be told from a
/// torn tail: replay stops there and the rest is quarantined, as that format always did.
#[test]
fn a_flipped_bit_mid_log_of_version_1_stops_replay_there_and_quarantines_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = version_1_store(dir.path(), 10);
    let wal = wal_path(dir.path());
    // Flip one bit in the value of record 5 (k04 = v4).
    let at = ends[5] - 1;
    let mut byte = [0u8];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .expect("open");
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x04], at).expect("flip");
    let tail_after_damage =
        std::fs::read(&wal).expect("read")[ends[4] as usize..ends[10] as usize].to_vec();

    let db = Db::open(dir.path()).expect("open recovers");
    let mut expected = [false; 10];
    expected[..4].fill(true);
    assert_eq!(
        present(&db, 10),
        expected,
        "nothing past the damage is trusted"
    );
    let stats = db.stats().expect("stats");
    assert_eq!(stats.recovery.quarantine_files.len(), 1, "{stats:?}");
    let quarantine = &stats.recovery.quarantine_files[0];
    let kept = std::fs::read(quarantine).expect("read quarantine");
    assert_eq!(
        &kept[..tail_after_damage.len()],
        tail_after_damage.as_slice(),
        "kept byte for byte"
    );

    db.put("new", "value").expect("writes continue");
    drop(db);
    let db = Db::open(dir.path()).expect("reopen");
    assert_eq!(present(&db, 10), expected);
    assert_eq!(db.get("new").expect("get").as_deref(), Some(&b"value"[..]));
    let stats = db.stats().expect("stats");
    assert_eq!(
        stats.recovery.quarantine_files.len(),
        1,
        "still reported, never deleted"
    );
    assert_eq!(stats.recovery.truncated_bytes, 0);
}

#[test]
fn a_record_claiming_a_huge_length_is_a_torn_tail_not_an_allocation() {
    // An impossible length (over the batch limit), and a possible one that runs past the file.
    for claimed in [0xFFFF_FFF0u32, 100 << 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = store_with(dir.path(), 3);
        write_at(&wal_path(dir.path()), ends[2], &claimed.to_le_bytes());
        let db = Db::open(dir.path()).expect("open");
        assert_eq!(
            present(&db, 3),
            [true, true, false],
            "claimed length {claimed}"
        );
        assert_eq!(db.stats().expect("stats").wal_bytes, ends[2]);
    }
}

#[test]
fn an_empty_log_file_is_reported_as_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 1);
    OpenOptions::new()
        .write(true)
        .open(wal_path(dir.path()))
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let err = Db::open(dir.path()).expect_err("empty log");
    match &err {
        Error::Corruption { file, offset, .. } => {
            assert!(file.ends_with(WAL), "{err}");
            assert_eq!(*offset, 0);
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert!(
        err.to_string().contains(WAL),
        "the message names the file: {err}"
    );
}

#[test]
fn a_damaged_header_is_corruption_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 1);
    write_at(&wal_path(dir.path()), 17, &[0xAB]);
    let err = Db::open(dir.path()).expect_err("bad header");
    assert!(matches!(err, Error::Corruption { offset: 32, .. }), "{err}");
}

#[test]
fn a_log_from_a_future_version_is_refused_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 1);
    let before = std::fs::read(wal_path(dir.path())).expect("read");
    write_at(&wal_path(dir.path()), 8, &4u32.to_le_bytes());
    // What would be garbage to this version may not be to the newer one.
    let leftover = dir.path().join("snap-0000000000000009.tmp");
    std::fs::write(&leftover, b"the newer version's").expect("write");
    let hints = std::fs::read(dir.path().join("LOCK")).expect("read");
    let err = Db::open(dir.path()).expect_err("future version");
    assert!(leftover.exists(), "nothing was removed");
    assert_eq!(
        std::fs::read(dir.path().join("LOCK")).expect("read"),
        hints,
        "no hint was written"
    );
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                found: 4,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
    let after = std::fs::read(wal_path(dir.path())).expect("read");
    assert_eq!(
        before.len(),
        after.len(),
        "nothing was repaired or truncated"
    );
}

#[test]
fn leftover_temporary_files_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 1);
    std::fs::write(dir.path().join("wal-0000000000000001.tmp"), b"half").expect("write");
    let db = Db::open(dir.path()).expect("open");
    assert_eq!(db.stats().expect("stats").recovery.removed_temporaries, 1);
    assert!(!dir.path().join("wal-0000000000000001.tmp").exists());
    assert_eq!(present(&db, 1), [true]);
}

/// `Db::repair` keeps every intact record, names the damaged one and its key, keeps the damaged
/// log in a quarantine file, and leaves a store that opens and takes writes. It refuses while
/// another handle has the store open, and on an intact store it keeps everything.
#[test]
fn repair_salvages_around_a_damaged_record_and_names_what_it_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = store_with(dir.path(), 10);
    flip_bit(&wal_path(dir.path()), ends[5] - 1);
    Db::open(dir.path()).expect_err("damaged");

    let report = Db::repair(dir.path()).expect("repair");
    assert_eq!(report.lost.len(), 1, "{report:?}");
    let lost = &report.lost[0];
    assert_eq!(
        (lost.first_seq, lost.last_seq, lost.offset),
        (5, 5, ends[4])
    );
    assert_eq!(lost.keys, [b"k04".to_vec()]);
    assert_eq!(report.records_kept, 9);
    assert_eq!(report.keys, 9);
    assert_eq!(report.quarantine_files.len(), 1);
    assert!(report.quarantine_files[0].exists());

    let db = Db::open(dir.path()).expect("the repaired store opens");
    let mut expected = [true; 10];
    expected[4] = false;
    assert_eq!(present(&db, 10), expected);
    db.put("k10", "v10").expect("writes continue");
    assert!(db.verify(|_, _| {}).is_ok());
    let err = Db::repair(dir.path()).expect_err("the store is open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(db);

    let report = Db::repair(dir.path()).expect("repair of an intact store");
    assert!(report.lost.is_empty(), "{report:?}");
    let db = Db::open(dir.path()).expect("open");
    assert_eq!(present(&db, 11), {
        let mut kept = [true; 11];
        kept[4] = false;
        kept
    });
}

/// A damaged snapshot block: repair keeps the other blocks' entries and the log's, names the
/// damaged block's key range, and leaves a store that opens.
#[test]
fn repair_salvages_the_intact_blocks_of_a_damaged_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .background_compaction(false)
        .open(dir.path())
        .expect("open");
    for i in 0..2000u32 {
        db.put(format!("key{i:05}"), format!("value {i}"))
            .expect("put");
    }
    db.compact().expect("compact");
    db.put("key00000", "rewritten after the snapshot")
        .expect("put");
    drop(db);
    let snap = dir.path().join("part-0000000000000000");
    let mut bytes = std::fs::read(&snap).expect("read");
    bytes[3000] ^= 0xff;
    std::fs::write(&snap, bytes).expect("damage");

    let report = Db::repair(dir.path()).expect("repair");
    assert_eq!(report.lost_keys.len(), 1, "{report:?}");
    let lost = &report.lost_keys[0];
    let (from, below) = (
        lost.from.clone().expect("first key"),
        lost.below.clone().expect("next block's key"),
    );
    assert!(from < below);
    let db = Db::open(dir.path()).expect("the repaired store opens");
    assert!(db.verify(|_, _| {}).is_ok());
    for i in 0..2000u32 {
        let key = format!("key{i:05}");
        let lost_here = key.as_bytes() >= from.as_slice() && key.as_bytes() < below.as_slice();
        let value = db.get(&key).expect("get");
        match (i, lost_here) {
            (0, _) => assert_eq!(value.as_deref(), Some(&b"rewritten after the snapshot"[..])),
            (_, true) => assert_eq!(value, None, "{key} was in the damaged block"),
            (_, false) => assert_eq!(
                value.as_deref(),
                Some(format!("value {i}").as_bytes()),
                "{key} was intact"
            ),
        }
    }
}
