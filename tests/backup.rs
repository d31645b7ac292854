//! Online backup through the public API: a copy taken while others write is a store, consistent
//! as of one commit, holding everything acknowledged before the backup began. (A power cut at
//! each step of a backup is in the library's crash tests, on the simulated disk.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

mod common;

use common::{dump, files};
use sturdykv::{Batch, Db, Error, Options};

#[test]
fn a_backup_of_a_store_with_history_opens_and_equals_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path().join("live")).expect("open");
    for i in 0..500 {
        db.put(format!("k{i:04}"), format!("first {i}"))
            .expect("put");
    }
    db.compact().expect("compact");
    for i in (0..500).step_by(3) {
        db.delete(format!("k{i:04}")).expect("delete");
    }
    db.put("k0001", "second").expect("put");
    let report = db.backup_to(dir.path().join("copy")).expect("backup");
    assert_eq!(report.sequence, db.stats().expect("stats").next_sequence);
    assert!(report.files.iter().all(|f| f.exists()), "{report:?}");
    let copy = Db::open(dir.path().join("copy")).expect("open the copy");
    assert_eq!(dump(&copy), dump(&db));
    copy.verify(|_, _| {}).expect("the copy verifies");
    // The copy is a store of its own: writing to it leaves the source alone.
    copy.put("only in the copy", "1").expect("put");
    assert_eq!(db.get("only in the copy").expect("get"), None);
    // Nothing is left beside it.
    let names = files(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_backup_of_an_empty_store_and_into_an_empty_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path().join("live")).expect("open");
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    db.backup_to(dir.path().join("empty")).expect("backup");
    let copy = Db::open(dir.path().join("empty")).expect("open the copy");
    assert!(copy.is_empty().expect("is_empty"));
}

#[test]
fn a_backup_refuses_a_destination_that_holds_something() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path().join("live")).expect("open");
    db.put("k", "v").expect("put");
    let dest = dir.path().join("taken");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::write(dest.join("precious"), "mine").expect("write");
    let e = db.backup_to(&dest).expect_err("refused");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(std::fs::read(dest.join("precious")).expect("read"), b"mine");
    let file = dir.path().join("a file");
    std::fs::write(&file, "x").expect("write");
    assert!(db.backup_to(&file).is_err());
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
    let e = db
        .backup_to(dir.path().join("no such parent").join("copy"))
        .expect_err("refused");
    assert!(e.to_string().contains("no such parent"), "{e}");
}

#[test]
fn a_read_only_handle_can_take_a_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path().join("live")).expect("open");
    db.put("k", "v").expect("put");
    let reader = Options::new()
        .read_only(true)
        .open(dir.path().join("live"))
        .expect("open read-only");
    reader.backup_to(dir.path().join("copy")).expect("backup");
    let copy = Db::open(dir.path().join("copy")).expect("open the copy");
    assert_eq!(copy.get("k").expect("get").as_deref(), Some(&b"v"[..]));
}

/// Writer `w`'s `i`-th batch: its key `w/i` and its counter `count/w = i`, together.
fn write_batch(db: &Db, w: u64, i: u64) {
    let mut batch = Batch::new();
    batch.put(format!("{w}/{i:06}"), format!("value {w} {i}"));
    batch.put(format!("count/{w}"), i.to_string());
    db.write(batch).expect("write");
}

/// Checks a copy: for each writer, keys `0..n` and a counter saying `n - 1` (its batches are
/// whole and in order), with `n` at least what it had acknowledged when the backup began.
fn check_copy(copy: &Db, writers: u64, acked_before: &[u64], path: &Path) {
    for w in 0..writers {
        let keys: Vec<Vec<u8>> = copy
            .prefix(format!("{w}/"))
            .map(|kv| kv.expect("scan").0.to_vec())
            .collect();
        let n = keys.len() as u64;
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(key, format!("{w}/{i:06}").as_bytes(), "{}", path.display());
        }
        let count = copy.get(format!("count/{w}")).expect("get");
        if n == 0 {
            assert_eq!(count, None);
        } else {
            assert_eq!(count.as_deref(), Some((n - 1).to_string().as_bytes()));
        }
        assert!(
            n >= acked_before[w as usize],
            "writer {w}: {n} batches in the copy, {} acknowledged before the backup",
            acked_before[w as usize]
        );
    }
}

#[test]
fn backups_taken_under_concurrent_writers_and_compactions_are_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let db = Db::open(&live).expect("open");
    let writers = 3u64;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            // Each writer has its own handle, as a separate process would; the last compacts.
            let db = Db::open(&live).expect("open");
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    write_batch(&db, w, i);
                    i += 1;
                    acked[w as usize].store(i, Ordering::Release);
                    if w == writers - 1 && i % 40 == 0 {
                        db.compact().expect("compact");
                    }
                }
            })
        })
        .collect();
    let mut sequences = Vec::new();
    // At least eight backups, and on until compactions ran among them (a slow machine writes
    // fewer batches per backup).
    for b in 0.. {
        if b >= 8 && db.stats().expect("stats").generation >= 2 {
            break;
        }
        assert!(b < 2000, "no two compactions while {b} backups were taken");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let acked_before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
        let path = dir.path().join(format!("copy{b}"));
        let report = db.backup_to(&path).expect("backup");
        sequences.push(report.sequence);
        let copy = Db::open(&path).expect("open the copy");
        check_copy(&copy, writers, &acked_before, &path);
        // The commit point is exact: the copy's next commit is the one the report names.
        assert_eq!(copy.stats().expect("stats").next_sequence, report.sequence);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert!(
        db.stats().expect("stats").generation >= 2,
        "compactions ran"
    );
}
