//! Recovery from damaged logs: torn tails at every offset, zeroed and garbage tails, a flipped bit
//! in the middle (quarantined, never trusted), absurd lengths, an empty file, a future version.
//!
//! These tests damage `wal-0000000000000000` as docs/FORMAT.md describes it (a 40-byte header, then
//! records) and reopen through the public API only.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sturdykv::{Db, Error};

const WAL: &str = "wal-0000000000000000";
const HEADER_LEN: u64 = 40;

/// A store with keys `k00`, `k01`, … (value `v<i>`), and the log offset after each record.
fn store_with(dir: &Path, n: usize) -> Vec<u64> {
    let db = Db::open(dir).expect("open");
    let mut ends = vec![db.stats().expect("stats").wal_bytes];
    for i in 0..n {
        db.put(format!("k{i:02}"), format!("v{i}")).expect("put");
        ends.push(db.stats().expect("stats").wal_bytes);
    }
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

#[test]
fn a_flipped_bit_mid_log_stops_replay_there_and_quarantines_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = store_with(dir.path(), 10);
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
    write_at(&wal_path(dir.path()), 8, &2u32.to_le_bytes());
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
                found: 2,
                supported: 1,
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
