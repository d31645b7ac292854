//! Steps 2 and 3 of a commit: make the appended records durable (`fdatasync`, shared by every
//! commit it covers), then publish them (raise the shared committed-sequence hint and apply them to
//! the view) and acknowledge. A sync covers every earlier record of the file, so a commit is never
//! acknowledged while an earlier one's fate is unknown; after a failed sync the handle is poisoned
//! and no later sync runs (the kernel may have dropped that data, and a record behind the hole
//! would be lost too).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::Store;
use crate::error::{Error, Result};
use crate::io::VfsFile;
use crate::locking::{COMMITTED_SEQ, SYNCED_SEQ};
use crate::options::Durability;
use crate::sync::{lock, yield_then_lock};
use crate::wal::LogWriter;

/// The longest a would-be leader waits for the commits it expects to join its group.
pub(super) const MAX_LEAD_GATHER: Duration = Duration::from_micros(50);

/// Whose `fdatasync` covers what, within a handle: a sync covers every record appended before it
/// started, so a writer whose record is already covered, or will be by a sync that started after
/// it, waits for that one instead of queueing another behind it.
#[derive(Default)]
pub(crate) struct Syncs {
    /// A sync is running.
    pub(super) running: bool,
    /// The newest append of this handle.
    pub(super) latest: Option<Appended>,
    /// Every record below this sequence number is durable and applied to the view.
    pub(super) published_below: u64,
    /// Commits this handle appended, and how many of them syncs had covered when they started.
    pub(super) appended: u64,
    pub(super) covered_so_far: u64,
    /// How many of this handle's commits each of the last two syncs covered, and how long the
    /// last one took.
    pub(super) covered: [u64; 2],
    pub(super) last_took: Duration,
}

impl Syncs {
    /// This handle's commits appended but not covered by a sync yet.
    pub(super) fn uncovered(&self) -> u64 {
        self.appended - self.covered_so_far
    }
}

/// What an append left to do.
#[derive(Clone)]
pub(crate) struct Appended {
    pub(super) path: PathBuf,
    pub(super) file: Arc<dyn VfsFile>,
    pub(super) generation: u64,
    /// The sequence number after the last record appended.
    pub(super) end_seq: u64,
}

impl Store {
    /// Before the last handle closes: if it appended to the live log, appends one empty record
    /// whose durable horizon covers every record before it, and syncs it. A record's horizon can
    /// only vouch for the records before it, so without this the last records before a clean
    /// close could not be told from a torn tail if they were damaged later (DECISIONS 49). A
    /// failure is logged and loses nothing.
    pub(crate) fn vouch_before_closing(&self) {
        if self.options.read_only
            || self.poison.check().is_err()
            || lock(&self.commit.writer).appended_here() == 0
        {
            return;
        }
        let buffered = self.options.durability == Durability::Buffered;
        let vouched = (if buffered { self.flush() } else { Ok(()) })
            .and_then(|()| self.commit(crate::batch::Batch::new()))
            .and_then(|()| if buffered { self.flush() } else { Ok(()) });
        if let Err(e) = vouched {
            log::warn!(
                "closing {}: the record vouching for the last writes failed (they stay in the \
                 log): {e}",
                self.dir.display()
            );
        }
    }

    /// Steps 2 and 3: makes the append durable and visible. Returns once a sync that started after
    /// it (whoever ran it; in another process too) finished and the view holds the record. With
    /// [`Durability::Buffered`] there is no sync.
    pub(super) fn make_durable(&self, appended: &Appended) -> Result<()> {
        if self.options.durability == Durability::Buffered {
            return self.publish(appended.end_seq);
        }
        let mut syncs = lock(&self.commit.syncs);
        let mut spin_until = None;
        loop {
            if syncs.published_below >= appended.end_seq {
                return Ok(());
            }
            self.poison.check()?;
            // Another process's sync after our append covered our record too.
            if self.store_lock.synced_through(appended.end_seq) {
                drop(syncs);
                return self.publish(appended.end_seq);
            }
            if syncs.running {
                syncs = self.wait_for_change(
                    &self.commit.syncs,
                    syncs,
                    &self.commit.sync_done,
                    &mut spin_until,
                );
                continue;
            }
            syncs.running = true;
            // With several writers about (recent syncs covered more than one record), give the
            // others a moment to append, so that this sync covers them too: otherwise writers
            // split into groups that take turns, each waiting for the other's sync.
            let expected = syncs.covered[0].max(syncs.covered[1]);
            if expected > 1 {
                let deadline = Instant::now() + syncs.last_took / 3;
                while syncs.uncovered() < expected {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // The writers it waits for are awake when they spin (see `wait_for_change`):
                    // look again after they had the CPU. Asleep, they are woken by `appended`.
                    if self.options.spin_wait.is_zero() {
                        syncs = self
                            .commit
                            .more_appended
                            .wait_timeout(syncs, deadline - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    } else {
                        syncs = yield_then_lock(&self.commit.syncs, syncs);
                    }
                }
            }
            // Sync the newest log up to its newest record: older logs were synced when the
            // generation was cut.
            let Some(target) = syncs.latest.clone() else {
                syncs.running = false;
                return Ok(());
            };
            let covered = syncs.uncovered();
            syncs.covered_so_far = syncs.appended;
            let last_took = syncs.last_took;
            drop(syncs);
            let started = Instant::now();
            let synced = self.sync_for_store(&target, covered, last_took);
            let took = started.elapsed();
            syncs = lock(&self.commit.syncs);
            syncs.running = false;
            if synced.is_ok() {
                syncs.covered = [covered, syncs.covered[0]];
                syncs.last_took = took;
            }
            let expected = syncs.covered[0].max(syncs.covered[1]);
            // Writers that sleep at once (`spin_wait` zero) would not be awake to join.
            let lead_gather = if self.options.spin_wait.is_zero() {
                Duration::ZERO
            } else {
                (syncs.last_took / 4).min(MAX_LEAD_GATHER)
            };
            drop(syncs);
            let mut queue = lock(&self.commit.queue);
            (queue.expected, queue.lead_gather) = (expected, lead_gather);
            drop(queue);
            // The next sync may start while this one's commits are published.
            let result = synced.and_then(|()| self.publish(target.end_seq));
            syncs = lock(&self.commit.syncs);
            if result.is_ok() {
                syncs.published_below = syncs.published_below.max(target.end_seq);
            }
            self.commit.sync_done.notify_all();
            result?;
        }
    }

    /// Step 3: tells every handle the log is committed up to `end_seq`, and applies it here.
    pub(super) fn publish(&self, end_seq: u64) -> Result<()> {
        self.poison.check()?;
        self.store_lock.raise_hint(COMMITTED_SEQ, end_seq);
        self.catch_up(end_seq)?;
        if self.flush_due() || self.compaction_due() {
            self.wake_compactor();
        }
        Ok(())
    }

    /// `fdatasync`s a log; a failure poisons the handle, because after a failed `fdatasync` the
    /// kernel may have dropped the dirty pages and a retry could "succeed" without the data.
    pub(crate) fn sync_file(&self, path: &std::path::Path, file: &dyn VfsFile) -> Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data().map_err(|e| {
            let e = Error::io("sync", path, e);
            self.poison.set(e.to_string());
            e
        })
    }

    /// Holding the writer and `LOCK`, after [`Store::follow_the_log`]: makes every record in the
    /// log durable and applies it to the view, so that the view is the whole committed state.
    /// (Records appended by commits still syncing, here or elsewhere, are covered by this sync.)
    pub(crate) fn settle(&self, writer: &LogWriter) -> Result<()> {
        if lock(&self.applied.position).next_seq < writer.next_seq() {
            self.sync_file(writer.path(), writer.file())?;
            self.store_lock.raise_hint(SYNCED_SEQ, writer.next_seq());
            self.store_lock.raise_hint(COMMITTED_SEQ, writer.next_seq());
            self.catch_up(writer.next_seq())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use crate::io::Vfs;
    use crate::sync::lock;
    use crate::testing::faulty::{Faults, FaultyVfs};
    use crate::{Db, Durability, Error, Options};

    fn faulty_db(dir: &Path) -> (Db, Arc<Mutex<Faults>>) {
        let vfs = FaultyVfs::default();
        let faults = Arc::clone(&vfs.faults);
        let db = Options::new().vfs(Arc::new(vfs)).open(dir).expect("open");
        (db, faults)
    }

    fn journal(faults: &Mutex<Faults>) -> Vec<String> {
        std::mem::take(&mut lock(faults).journal)
    }

    const WAL: &str = "wal-0000000000000000";
    const MANIFEST: &str = "MANIFEST-0000000000000001";

    #[test]
    fn creating_a_log_syncs_the_file_before_the_rename_and_the_directory_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, faults) = faulty_db(&dir.path().join("new-store"));
        let tmp = format!("{WAL}.tmp");
        assert_eq!(
            journal(&faults),
            [
                // The parent, for the new store directory's own entry.
                format!(
                    "sync_dir {}",
                    dir.path().file_name().expect("name").to_string_lossy()
                ),
                // The lock file gets its shared hint page.
                "set_len LOCK 4096".to_string(),
                format!("write {tmp} 0+40"),
                format!("sync {tmp}"),
                format!("rename {tmp} {WAL}"),
                "sync_dir new-store".to_string(),
                // Then the manifest that names it, the same way.
                format!("remove {MANIFEST}.tmp"),
                format!("write {MANIFEST}.tmp 0+60"),
                format!("sync {MANIFEST}.tmp"),
                format!("rename {MANIFEST}.tmp {MANIFEST}"),
                "sync_dir new-store".to_string(),
                // Recovery makes what it is about to read durable.
                "sync_dir new-store".to_string(),
                format!("sync {WAL}"),
            ]
        );
    }

    #[test]
    fn an_immediate_put_is_synced_before_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = faulty_db(dir.path());
        journal(&faults);
        db.put("k", "v").expect("put");
        let first = journal(&faults);
        // The record, the preallocated zeros behind it, then one fdatasync.
        assert_eq!(first[0], format!("write {WAL} 40+39"));
        assert_eq!(first.last(), Some(&format!("sync {WAL}")), "{first:?}");
        assert!(
            first[1..first.len() - 1]
                .iter()
                .all(|e| e.starts_with("write "))
        );

        // Inside the preallocated region: exactly one write and one sync per put.
        db.put("k2", "v").expect("put");
        assert_eq!(
            journal(&faults),
            [format!("write {WAL} 79+40"), format!("sync {WAL}")]
        );
    }

    #[test]
    fn a_buffered_put_does_not_sync_until_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vfs = FaultyVfs::default();
        let faults = Arc::clone(&vfs.faults);
        let db = Options::new()
            .vfs(Arc::new(vfs))
            .durability(Durability::Buffered)
            .open(dir.path())
            .expect("open");
        journal(&faults);
        db.put("k", "v").expect("put");
        assert!(journal(&faults).iter().all(|e| !e.starts_with("sync")));
        db.flush().expect("flush");
        assert_eq!(journal(&faults), [format!("sync {WAL}")]);
    }

    #[test]
    fn a_buffered_handles_writes_are_visible_to_others_and_an_immediate_put_still_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vfs = Arc::new(FaultyVfs::default());
        let faults = Arc::clone(&vfs.faults);
        let buffered = Options::new()
            .vfs(Arc::clone(&vfs) as Arc<dyn Vfs>)
            .durability(Durability::Buffered)
            .open(dir.path())
            .expect("open");
        let immediate = Options::new()
            .vfs(vfs as Arc<dyn Vfs>)
            .open(dir.path())
            .expect("open");
        journal(&faults);
        buffered.put("b", "1").expect("put");
        assert!(journal(&faults).iter().all(|e| !e.starts_with("sync")));
        // The buffered record is visible to the other handle, but not durable: an immediate
        // commit behind it must still sync.
        assert_eq!(immediate.get("b").expect("get").as_deref(), Some(&b"1"[..]));
        immediate.put("i", "2").expect("put");
        assert_eq!(
            journal(&faults).last(),
            Some(&format!("sync {WAL}")),
            "the immediate put synced"
        );
    }

    #[test]
    fn a_full_disk_fails_the_batch_cleanly_and_the_store_keeps_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = faulty_db(dir.path());
        db.put("before", "1").expect("put");
        let wal_before = db.stats().expect("stats").wal_bytes;

        lock(&faults).enospc_after = Some(10);
        let err = db.put("during", "x".repeat(100)).expect_err("disk is full");
        assert!(matches!(err, Error::StorageFull { .. }), "{err}");
        assert_eq!(db.get("during").expect("get"), None);
        assert_eq!(db.stats().expect("stats").wal_bytes, wal_before);

        lock(&faults).enospc_after = None;
        db.put("after", "2").expect("put once space is back");
        drop(db);

        let db = Db::open(dir.path()).expect("reopen");
        assert_eq!(db.get("before").expect("get").as_deref(), Some(&b"1"[..]));
        assert_eq!(
            db.get("during").expect("get"),
            None,
            "a failed batch must not reappear"
        );
        assert_eq!(db.get("after").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(db.stats().expect("stats").recovery.truncated_bytes, 0);
    }

    #[test]
    fn enospc_while_preallocating_cuts_the_records_off_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = faulty_db(dir.path());
        // The first append also preallocates: fail only the zero-fill (64 KiB writes).
        lock(&faults).enospc_after = Some(1000);
        let err = db
            .put("k", "v")
            .expect_err("preallocation hits a full disk");
        assert!(matches!(err, Error::StorageFull { .. }), "{err}");
        lock(&faults).enospc_after = None;
        drop(db);
        let db = Db::open(dir.path()).expect("reopen");
        assert_eq!(db.get("k").expect("get"), None);
    }

    #[test]
    fn a_failed_fdatasync_poisons_the_handle_until_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = faulty_db(dir.path());
        db.put("a", "1").expect("put");
        lock(&faults).fail_sync = true;
        let err = db.put("b", "2").expect_err("sync fails");
        assert!(matches!(err, Error::Io { op: "sync", .. }), "{err}");
        assert_eq!(
            db.get("b").expect("get"),
            None,
            "unsynced writes are never published"
        );

        // Even once the disk "recovers", this handle refuses writes: it cannot know what the
        // kernel dropped.
        lock(&faults).fail_sync = false;
        let err = db.put("c", "3").expect_err("poisoned");
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        assert!(matches!(db.flush(), Err(Error::Poisoned { .. })));
        assert_eq!(
            db.get("a").expect("reads still work").as_deref(),
            Some(&b"1"[..])
        );
        drop(db);

        let db = Db::open(dir.path()).expect("reopen re-derives the truth");
        assert_eq!(db.get("a").expect("get").as_deref(), Some(&b"1"[..]));
        db.put("c", "3").expect("a fresh handle writes again");
    }

    #[test]
    fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        db.put(format!("{t}-{i}"), "v").expect("put");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let stats = db.stats().expect("stats");
        assert_eq!(stats.commits, 400);
        assert_eq!(stats.keys, 400);
        assert!(stats.syncs <= stats.commits);
    }
}
