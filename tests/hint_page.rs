//! The hint page in `LOCK` is advice: a co-tenant (a buggy program, another build, a flipped bit)
//! writing its words can slow a handle down, but never make it skip the `fdatasync` of a record
//! it acknowledges, read a value older than one already acknowledged, or wait for ever.
//!
//! The co-tenant here is a thread writing the words through its own descriptor of `LOCK` (the
//! page cache makes its writes visible to every mapping), at the offsets `docs/FORMAT.md` gives.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sturdykv::{Db, Error};

const COMMITTED: u64 = 0;
const SYNCED: u64 = 16;
const PAGE_VERSION: u64 = 40;
const APPENDED: u64 = 64;
const SYNC_CLAIM: u64 = 80;

fn lock_file(dir: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("LOCK"))
        .expect("open LOCK")
}

fn read_word(file: &File, offset: u64) -> u64 {
    let mut word = [0; 8];
    file.read_exact_at(&mut word, offset).expect("read");
    u64::from_le_bytes(word)
}

fn write_word(file: &File, offset: u64, value: u64) {
    file.write_all_at(&value.to_le_bytes(), offset)
        .expect("write");
}

/// A thread that writes `value(i)` into the word at `offset`, over and over, until dropped.
struct CoTenant {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl CoTenant {
    fn writing(dir: &Path, offset: u64, value: impl Fn(u64) -> u64 + Send + 'static) -> Self {
        let file = lock_file(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut writes = 0;
            while !stopping.load(Ordering::Relaxed) {
                write_word(&file, offset, value(writes));
                writes += 1;
                if writes % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            writes
        });
        CoTenant {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CoTenant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let writes = thread.join().expect("co-tenant");
            assert!(writes > 0, "the co-tenant never wrote");
        }
    }
}

/// Runs `work` on a thread and waits up to a minute for it: a hang is a failure, not a test
/// that never ends. (Not a speed limit: the work takes milliseconds when it works.)
fn within_a_minute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(work()));
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the work finished (it hung)")
}

/// The synced word pinned at 2^64−1, rewritten in a loop: every put still syncs its record,
/// in a long-lived handle and in handles opened for one put each.
#[test]
fn a_synced_word_pinned_high_never_spares_a_put_its_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let _pinner = CoTenant::writing(dir.path(), SYNCED, |_| u64::MAX);
    let before = db.stats().expect("stats").syncs;
    for i in 0..50 {
        db.put(format!("k{i}"), "v").expect("put");
    }
    let syncs = db.stats().expect("stats").syncs - before;
    assert!(
        syncs >= 50,
        "50 puts, one after the other, made only {syncs} fdatasyncs"
    );
    drop(db);
    for i in 0..20 {
        let db = Db::open(dir.path()).expect("open");
        let before = db.stats().expect("stats").syncs;
        db.put(format!("fresh{i}"), "v").expect("put");
        assert!(
            db.stats().expect("stats").syncs > before,
            "put {i} in a fresh handle returned without a sync"
        );
    }
}

/// The committed word pinned where it stood (or at 2^64−1) while another handle writes: a
/// long-lived reader still sees each put once it returned.
#[test]
fn a_pinned_committed_word_does_not_hide_acknowledged_puts_from_a_reader() {
    for pinned_high in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = Db::open(dir.path()).expect("open");
        let reader = Db::open(dir.path()).expect("open");
        writer.put("k", "0").expect("put");
        assert_eq!(reader.get("k").expect("get").as_deref(), Some(&b"0"[..]));
        let at = read_word(&lock_file(dir.path()), COMMITTED);
        let pin = if pinned_high { u64::MAX } else { at };
        let _pinner = CoTenant::writing(dir.path(), COMMITTED, move |_| pin);
        for i in 1..=50 {
            let value = i.to_string();
            writer.put("k", &value).expect("put");
            assert_eq!(
                reader.get("k").expect("get").as_deref(),
                Some(value.as_bytes()),
                "the reader missed put {i} (committed word pinned at {pin})"
            );
        }
    }
}

/// Words claiming records the log does not hold (committed and appended at 2^64−1): readers
/// still see every acknowledged put, and writers go on.
#[test]
fn words_beyond_the_logs_end_are_not_believed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Db::open(dir.path()).expect("open");
    let reader = Db::open(dir.path()).expect("open");
    writer.put("k", "0").expect("put");
    reader.get("k").expect("get");
    let lock = lock_file(dir.path());
    for i in 1..=20 {
        for offset in [COMMITTED, SYNCED, APPENDED] {
            write_word(&lock, offset, u64::MAX);
        }
        let value = i.to_string();
        writer.put("k", &value).expect("put");
        for offset in [COMMITTED, SYNCED, APPENDED] {
            write_word(&lock, offset, u64::MAX - 1);
        }
        assert_eq!(
            reader.get("k").expect("get").as_deref(),
            Some(value.as_bytes()),
            "round {i}"
        );
    }
    assert_eq!(writer.len().expect("len"), 1);
}

/// A sync claim that keeps changing (never 0, never the same twice) holds a writer up for a
/// bounded time, after which it syncs by itself.
#[test]
fn a_sync_claim_that_keeps_changing_holds_a_writer_up_only_for_a_while() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    db.put("before", "v").expect("put");
    let own = u64::from(std::process::id());
    let _claimer = CoTenant::writing(dir.path(), SYNC_CLAIM, move |i| {
        (1 << 63) | (own << 32) | (i & 0xffff_ffff)
    });
    let writer = db.clone();
    within_a_minute(move || {
        for i in 0..3 {
            writer.put(format!("k{i}"), "v").expect("put");
        }
    });
    drop(_claimer);
    drop(db);
    let db = Db::open(dir.path()).expect("reopen");
    assert_eq!(db.len().expect("len"), 4);
}

/// A page of another layout (another build's, or a damaged layout word) is never read: with no
/// handle open it is reset, and the store opens; with one open, the next open fails clearly.
#[test]
fn a_page_of_another_layout_is_reset_when_alone_and_refused_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    db.put("k", "v").expect("put");
    let lock = lock_file(dir.path());
    let ours = read_word(&lock, PAGE_VERSION);
    assert_eq!(ours.to_be_bytes(), *b"skvhint\x01");
    let foreign = u64::from_be_bytes(*b"skvhint\x02");
    write_word(&lock, PAGE_VERSION, foreign);
    write_word(&lock, SYNCED, u64::MAX);
    for read_only in [false, true] {
        let err = sturdykv::Options::new()
            .read_only(read_only)
            .open(dir.path())
            .expect_err("another layout, with a handle open");
        assert!(
            matches!(&err, Error::NotAStore { reason, .. } if reason.contains("layout")),
            "{err}"
        );
    }
    drop(db);

    let err = sturdykv::Options::new()
        .read_only(true)
        .open(dir.path())
        .expect_err("a read-only handle cannot reset it");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    let db = Db::open(dir.path()).expect("alone, the page is reset");
    assert_eq!(read_word(&lock, PAGE_VERSION), ours);
    assert!(read_word(&lock, SYNCED) < u64::MAX, "the words were reset");
    assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    let before = db.stats().expect("stats").syncs;
    db.put("k2", "v").expect("put");
    assert!(db.stats().expect("stats").syncs > before);
    let other = Db::open(dir.path()).expect("a second handle of this build");
    assert_eq!(other.get("k2").expect("get").as_deref(), Some(&b"v"[..]));
}
