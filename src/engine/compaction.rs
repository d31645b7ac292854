//! Compaction: folding the log into a new snapshot, so that the log, the time to reopen and the
//! memory held stay bounded.
//!
//! The protocol (DESIGN.md, "Compaction"), each step crash-safe by the recovery rule:
//! 1. **Cut**, holding the writer and `LOCK`: catch up on the whole log, sync `wal-g`, create
//!    `wal-(g+1)` durably (every process's appends go there from now on), and freeze the
//!    memtable of generation `g`. Writers wait only for this.
//! 2. **Merge**, holding no lock readers or writers need: stream `snap-g` and the frozen memtable
//!    into `snap-(g+1).tmp`, sync, rename, sync the directory.
//! 3. **Install**: readers switch to the new snapshot (a pointer swap under the view's lock), and
//!    the shared hint tells other processes, which reload from it.
//! 4. **Clean up**, holding `LOCK`: delete `wal-g`, `snap-g` and anything older, sync the
//!    directory. Readers that still hold values from `snap-g` keep its mapping alive, and other
//!    processes still reading `wal-g` keep it open.
//!
//! One compaction runs at a time across processes (`LOCK.compaction`).

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::format::{LOG_FORMAT_VERSION, WAL_HEADER_LEN, WalHeader};
use crate::io::OpenMode;
use crate::layout::{StoreFile, classify, directory_fingerprint, list_store, wal_name};
use crate::locking::{CompactionLock, DIRECTORY_SYNCED, SNAPSHOT_GENERATION};
use crate::memtable::Memtable;
use crate::snapshot::{Snapshot, SnapshotWriter};
use crate::sync::lock;
use crate::wal::{self, LogWriter, Position};

use super::Store;
use super::compactor::Compactor;

/// One compaction at a time, and what runs and stops them.
pub(crate) struct CompactionState {
    /// Held for the whole of a compaction: one at a time in this handle (the compaction lock
    /// file does the same across handles).
    pub(crate) one_at_a_time: Mutex<()>,
    /// `LOCK.compaction`.
    pub(crate) lock: CompactionLock,
    /// Asks a running compaction to give up (the handle is closing).
    pub(crate) cancel: AtomicBool,
    /// The background compaction thread.
    pub(crate) compactor: Mutex<Compactor>,
}

impl CompactionState {
    /// `background`: whether a thread may compact when the triggers fire.
    pub(crate) fn new(lock: CompactionLock, background: bool) -> Self {
        CompactionState {
            one_at_a_time: Mutex::new(()),
            lock,
            cancel: AtomicBool::new(false),
            compactor: Mutex::new(Compactor::new(background)),
        }
    }
}

/// What a cut hands to the merge.
struct Cut {
    /// The memtable of the generation being folded in.
    frozen: Arc<Memtable>,
    /// The snapshot it goes on top of.
    base: Option<Arc<Snapshot>>,
    /// The generation of the snapshot to write.
    generation: u64,
}

/// How often (in entries) the merge reports progress and checks for cancellation.
const PROGRESS_EVERY: u64 = 4096;

impl Store {
    /// Whether the log this handle has applied should be compacted: it is over the trigger.
    pub(crate) fn compaction_due(&self) -> bool {
        let wal_bytes = lock(&self.applied.position).offset;
        wal_bytes > self.trigger_bytes(self.snapshot_bytes())
    }

    /// The log size past which a compaction is due: `max(min_wal_bytes, ratio × snapshot)`.
    fn trigger_bytes(&self, snapshot_bytes: u64) -> u64 {
        let threshold = (self.options.compaction_ratio * snapshot_bytes as f64) as u64;
        self.options.compaction_min_wal_bytes.max(threshold)
    }

    /// The size of the snapshot this handle reads (0 without one).
    fn snapshot_bytes(&self) -> u64 {
        self.applied
            .read()
            .snapshot
            .as_ref()
            .map_or(0, |s| s.file_bytes())
    }

    /// Compacts if the trigger still holds once this thread has the compaction to itself, and no
    /// other process is compacting.
    pub(crate) fn compact_if_due(&self) -> Result<()> {
        self.compact_if(Store::compaction_due)
    }

    /// Compacts if `due` says so once this thread has the compaction to itself and has caught
    /// up; not at all if another process is compacting.
    fn compact_if(&self, due: impl Fn(&Store) -> bool) -> Result<()> {
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(false)? else {
            return Ok(());
        };
        self.refresh()?;
        if due(self) {
            self.compact_locked(|_, _| {})?;
        }
        Ok(())
    }

    /// Compacts if this handle wrote much of the live log itself, before it closes
    /// ([`Options::compact_on_close`](crate::Options::compact_on_close), DECISIONS 41). Another
    /// process's running compaction is not waited for. Failures are logged: the log still
    /// holds everything.
    pub(crate) fn compact_before_closing(&self) {
        if self.options.read_only || self.poison.check().is_err() {
            return;
        }
        if let Err(e) = self.compact_if(Store::wrote_much_of_the_log) {
            log::warn!(
                "compacting {} before closing failed (the log keeps every write): {e}",
                self.dir.display()
            );
        }
    }

    /// Whether this handle appended at least a quarter of the compaction trigger to the live
    /// log (not counting an older log another process has compacted since), and the snapshot is
    /// small enough to rewrite while the caller waits.
    fn wrote_much_of_the_log(&self) -> bool {
        let writer = lock(&self.commit.writer);
        let live = lock(&self.applied.position).generation;
        let snapshot_bytes = self.snapshot_bytes();
        writer.generation() == live
            && snapshot_bytes <= self.options.close_compaction_max_snapshot
            && writer.appended_here() > 0
            && writer.appended_here() >= self.trigger_bytes(snapshot_bytes) / 4
    }

    /// Compacts now (waiting for a running compaction, here or in another process, to finish
    /// first).
    pub(crate) fn compact(&self, progress: impl FnMut(u64, u64)) -> Result<()> {
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(true)? else {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        };
        // Start from the newest snapshot: another process may have compacted since this handle
        // last looked, and removed the snapshot its view is built on.
        self.refresh()?;
        self.compact_locked(progress)
    }

    fn compact_locked(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let Some(Cut {
            frozen,
            base,
            generation,
        }) = self.cut()?
        else {
            return Ok(());
        };
        let total = base.as_ref().map_or(0, |s| s.len()) + frozen.len() as u64;
        let Some(path) = self.merge(&frozen, base.as_ref(), generation, |done| {
            progress(done, total)
        })?
        else {
            return Ok(()); // cancelled: the handle is closing; recovery replays the logs
        };
        let snapshot = Arc::new(Snapshot::open(self.options.vfs.as_ref(), &path)?);
        {
            let mut state = self.applied.write();
            state.snapshot = Some(snapshot);
            state.frozen = None;
        }
        self.store_lock.raise_hint(SNAPSHOT_GENERATION, generation);
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.remove_older_than(generation)?;
        progress(total, total);
        Ok(())
    }

    /// Step 1: starts generation `g + 1` and freezes everything before it. Returns what to merge
    /// and the new generation, or `None` if there is nothing to compact.
    fn cut(&self) -> Result<Option<Cut>> {
        let mut writer = lock(&self.commit.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        self.settle(&writer)?;
        let unfinished = self.applied.read().frozen.is_some();
        if writer.end() == WAL_HEADER_LEN as u64 && !unfinished {
            return Ok(None); // the snapshot already holds everything
        }
        // With Buffered durability the old log's tail may still be in the page cache only; it
        // must be durable before any record of the new log can be, or a crash could leave a gap
        // in the sequence between the two.
        self.sync_file(writer.path(), writer.file())?;
        let generation = writer.generation() + 1;
        let header = WalHeader {
            version: LOG_FORMAT_VERSION,
            generation,
            first_seq: writer.next_seq(),
        };
        let vfs = self.options.vfs.as_ref();
        let path = self.dir.join(wal_name(generation));
        let created = wal::create(vfs, &self.dir, header).and_then(|_| {
            vfs.open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open", &path, e))
        });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // The new log may exist even though the cut failed. Appends go on into the old
                // log, so a stale new one would later claim an earlier sequence number and stop
                // the store from opening: take it away for certain, or stop appending.
                let _ = vfs.remove_file(&self.dir.join(format!("{}.tmp", wal_name(generation))));
                let removed = match vfs.remove_file(&path) {
                    Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
                .and_then(|()| vfs.sync_dir(&self.dir));
                if let Err(undo) = removed {
                    self.poison.set(format!(
                        "a failed compaction ({e}) left {} behind and removing it failed: {undo}",
                        path.display()
                    ));
                }
                return Err(e);
            }
        };
        *writer = LogWriter::new(
            path.clone(),
            Arc::clone(&file),
            header.version,
            generation,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            WAL_HEADER_LEN as u64,
        );
        let mut position = lock(&self.applied.position);
        let mut state = self.applied.write();
        // The next generation's index starts at this one's size: a steady load fills it alike,
        // and each time a hash index grows it reads every key again (7 % of a bulk load's
        // instructions went to that).
        let expected = state.memtable.len();
        let memtable = std::mem::replace(&mut state.memtable, Memtable::with_capacity(expected));
        // A compaction that failed after its cut left its frozen memtable behind: fold it in,
        // since the generations cut since then are in the live memtable.
        let frozen = Arc::new(match state.frozen.take() {
            Some(older) => older.overlaid_with(memtable),
            None => memtable,
        });
        state.frozen = Some(Arc::clone(&frozen));
        *position = Position::start_of(&header, path, file);
        drop(guard);
        Ok(Some(Cut {
            frozen,
            base: state.snapshot.clone(),
            generation,
        }))
    }

    /// Step 2: writes `snap-<generation>` from `base` overlaid with `frozen` (tombstones
    /// dropped). Returns its path once durable, or `None` if cancelled.
    fn merge(
        &self,
        frozen: &Memtable,
        base: Option<&Arc<Snapshot>>,
        generation: u64,
        progress: impl FnMut(u64),
    ) -> Result<Option<std::path::PathBuf>> {
        let cancelled = || self.compaction.cancel.load(Ordering::Relaxed);
        let vfs = self.options.vfs.as_ref();
        write_merged(
            vfs, &self.dir, frozen, base, generation, cancelled, progress,
        )
    }

    /// Step 4: deletes logs and snapshots of generations before `generation`. Under `LOCK`, so
    /// that a process opening the store never finds a file gone between listing and opening it.
    fn remove_older_than(&self, generation: u64) -> Result<()> {
        let guard = self.store_lock.exclusive()?;
        let vfs = self.options.vfs.as_ref();
        let names = vfs
            .list(&self.dir)
            .map_err(|e| Error::io("list the store directory", &self.dir, e))?;
        let mut removed = false;
        for name in names {
            if let StoreFile::Wal(g) | StoreFile::Snapshot(g) = classify(&name)
                && g < generation
            {
                let path = self.dir.join(&name);
                vfs.remove_file(&path)
                    .map_err(|e| Error::io("remove old file", &path, e))?;
                removed = true;
            }
        }
        if removed {
            vfs.sync_dir(&self.dir)
                .map_err(|e| Error::io("sync the directory", &self.dir, e))?;
            // Every name is durable now (and nobody can change one while we hold LOCK): the
            // next open need not sync the directory again.
            let listing = list_store(vfs, &self.dir)?;
            self.store_lock
                .correct_hint(&guard, DIRECTORY_SYNCED, directory_fingerprint(&listing));
        }
        Ok(())
    }
}

/// Writes `dir/snap-<generation>` from `base` overlaid with `frozen` (tombstones dropped).
/// Returns its path once durable, or `None` if `cancelled` said so.
pub(crate) fn write_merged(
    vfs: &dyn crate::io::Vfs,
    dir: &std::path::Path,
    frozen: &Memtable,
    base: Option<&Arc<Snapshot>>,
    generation: u64,
    cancelled: impl Fn() -> bool,
    mut progress: impl FnMut(u64),
) -> Result<Option<std::path::PathBuf>> {
    let expected = base.map_or(0, |s| s.len()) + frozen.len() as u64;
    let mut out = SnapshotWriter::create(vfs, dir, generation, expected)?;
    let result = (|| -> Result<bool> {
        let mut old = base.map(Snapshot::stream);
        let mut new = frozen.range(Bound::Unbounded, Bound::Unbounded).peekable();
        let mut done = 0u64;
        loop {
            done += 1;
            if done.is_multiple_of(PROGRESS_EVERY) {
                if cancelled() {
                    return Ok(false);
                }
                progress(done);
            }
            let old_key = match old.as_mut() {
                Some(cursor) => cursor.peek_key()?.map(<[u8]>::to_vec),
                None => None,
            };
            let take_new = match (&old_key, new.peek()) {
                (None, None) => return Ok(true),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(o), Some((n, _))) => n.as_ref() <= o.as_slice(),
            };
            if take_new {
                let Some((key, value)) = new.next() else {
                    return Ok(true);
                };
                if old_key.as_deref() == Some(key.as_ref()) {
                    // The newer write replaces (or deletes) the snapshot's entry.
                    old.as_mut().map(|c| c.next_entry()).transpose()?;
                }
                if let Some(value) = value {
                    out.add(&key, &value)?;
                }
            } else if let Some((key, value)) =
                old.as_mut().map(|c| c.next_entry()).transpose()?.flatten()
            {
                out.add(key, value)?;
            }
        }
    })();
    match result {
        Ok(true) => out.finish().map(Some),
        Ok(false) => {
            out.abandon();
            Ok(None)
        }
        Err(e) => {
            out.abandon();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::sync::lock;
    use crate::testing::campaign::dump;
    use crate::testing::faulty::{Faults, FaultyVfs};
    use crate::{Batch, Error};
    use crate::{Db, Options};

    /// A store with a snapshot (generation 1) and more writes and deletes in its log.
    fn prepare(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let db = Options::new()
            .background_compaction(false)
            .open(dir)
            .expect("open");
        let mut batch = Batch::new();
        for i in 0..300u32 {
            batch.put(format!("k{i:04}"), format!("a{i}"));
        }
        db.write(batch).expect("write");
        db.compact().expect("compact");
        for i in (0..300u32).step_by(3) {
            db.put(format!("k{i:04}"), format!("b{i}")).expect("put");
        }
        for i in (0..300u32).step_by(5) {
            db.delete(format!("k{i:04}")).expect("delete");
        }
        dump(&db)
    }

    /// A merge that hits a full disk fails cleanly: writes and reads go on, the frozen generation
    /// stays readable, and the next compaction finishes the job.
    #[test]
    fn a_compaction_that_fills_the_disk_fails_cleanly_and_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) =
            on_a_faulty_disk(dir.path(), Options::new().background_compaction(false));
        let mut batch = Batch::new();
        for i in 0..20_000u32 {
            batch.put(
                format!("k{i:06}"),
                "a value long enough to fill a megabyte quickly",
            );
        }
        db.write(batch).expect("write");
        let expected = dump(&db);

        // Log appends are small; the snapshot is written in 1 MiB pieces, which now fail.
        lock(&faults).enospc_after = Some(256 << 10);
        let err = db.compact().expect_err("the merge cannot write");
        assert!(matches!(err, Error::StorageFull { .. }), "{err}");
        assert!(
            !dir.path().join("snap-0000000000000001.tmp").exists(),
            "the partial snapshot is removed"
        );
        db.put("during", "the outage").expect("writes go on");
        assert_eq!(
            db.get("k000007").expect("get").as_deref(),
            Some(&b"a value long enough to fill a megabyte quickly"[..])
        );

        lock(&faults).enospc_after = None;
        db.compact()
            .expect("the retry cuts again and folds both generations in");
        let stats = db.stats().expect("stats");
        assert_eq!(
            (stats.generation, stats.compactions, stats.snapshot_keys),
            (2, 1, 20_001)
        );
        drop(db);
        let db = Options::new()
            .background_compaction(false)
            .open(dir.path())
            .expect("reopen");
        let mut after = expected;
        after.insert(b"during".to_vec(), b"the outage".to_vec());
        assert_eq!(dump(&db), after);
    }

    /// Opens `dir` with `options` on a disk whose faults the test sets.
    fn on_a_faulty_disk(
        dir: &Path,
        options: Options,
    ) -> (Db, std::sync::Arc<std::sync::Mutex<Faults>>) {
        let vfs = FaultyVfs::default();
        let faults = std::sync::Arc::clone(&vfs.faults);
        let db = options
            .vfs(std::sync::Arc::new(vfs))
            .open(dir)
            .expect("open");
        (db, faults)
    }

    /// Makes the disk freeze (as if the process died) after `crash_at` more file operations,
    /// and starts a fresh journal of them.
    fn freeze_after(faults: &std::sync::Mutex<Faults>, crash_at: usize) {
        let mut f = lock(faults);
        f.journal.clear();
        f.freeze_after = Some(crash_at);
    }

    /// Reopens `dir` (compaction off) after a crash that followed `journal`, and checks that it
    /// holds `expected`.
    fn reopen_after_crash(
        dir: &Path,
        expected: &BTreeMap<Vec<u8>, Vec<u8>>,
        journal: &[String],
    ) -> Db {
        let db = Options::new()
            .background_compaction(false)
            .open(dir)
            .unwrap_or_else(|e| panic!("crash after {journal:?}: the store must reopen, got {e}"));
        assert_eq!(&dump(&db), expected, "crash after {journal:?}");
        db
    }

    /// Kills the compaction (the disk freezes) after each of its file operations in turn, then
    /// reopens: every acknowledged write is there, whatever step the crash interrupted.
    #[test]
    fn a_crash_at_every_step_of_a_compaction_recovers_the_acknowledged_state() {
        let mut steps = 0;
        for crash_at in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let expected = prepare(dir.path());
            let (db, faults) =
                on_a_faulty_disk(dir.path(), Options::new().background_compaction(false));
            freeze_after(&faults, crash_at);
            let result = db.compact();
            let journal = std::mem::take(&mut lock(&faults).journal);
            drop(db);

            let db = reopen_after_crash(dir.path(), &expected, &journal);
            assert_eq!(db.len().expect("len"), expected.len() as u64);
            // A later compaction completes from whatever the crash left behind.
            db.compact().expect("compact after recovery");
            assert_eq!(dump(&db), expected);
            drop(db);

            match result {
                Ok(()) if journal.len() < crash_at => break,
                Ok(()) | Err(Error::Io { .. }) => steps += 1,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        // Sync of the old log; the new log's tmp write, sync, rename, directory sync; the
        // snapshot's writes, sync, rename, directory sync; the removals and their directory sync.
        assert!(steps >= 12, "only {steps} crash points were exercised");
    }

    /// Options under which closing compacts a log of 256 KiB or more that the handle wrote, and
    /// the background thread (at 1 MiB) never starts.
    fn closing_compacts() -> Options {
        Options::new().compaction_min_wal_bytes(1 << 20)
    }

    /// Writes about 330 KiB of log through `db` in batches; returns what the store holds.
    fn write_a_third_of_a_megabyte(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
        for b in 0..30u32 {
            let mut batch = Batch::new();
            for i in 0..100u32 {
                let value = format!(
                    "{b}-{i} and some padding to make the value about a hundred bytes long, like the benchmark's"
                );
                batch.put(format!("k{:06}", (i * 7919 + b) % 2500), value);
            }
            db.write(batch).expect("write");
        }
        dump(db)
    }

    fn log_bytes(dir: &Path) -> u64 {
        let db = Options::new().read_only(true).open(dir).expect("open");
        db.stats().expect("stats").wal_bytes
    }

    #[test]
    fn closing_a_handle_that_wrote_much_of_the_log_compacts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = closing_compacts().open(dir.path()).expect("open");
        let expected = write_a_third_of_a_megabyte(&db);
        assert_eq!(
            db.stats().expect("stats").compactions,
            0,
            "no background compaction"
        );
        let clone = db.clone();
        drop(db);
        assert!(
            log_bytes(dir.path()) > 256 << 10,
            "a clone keeps the handle open"
        );
        drop(clone);

        let db = closing_compacts().open(dir.path()).expect("reopen");
        let stats = db.stats().expect("stats");
        assert_eq!(
            stats.wal_bytes,
            crate::format::WAL_HEADER_LEN as u64,
            "the log is empty"
        );
        assert_eq!(stats.snapshot_keys, expected.len() as u64);
        assert_eq!(stats.recovery.replayed_records, 0);
        assert_eq!(dump(&db), expected);
    }

    #[test]
    fn closing_a_handle_that_read_or_wrote_little_leaves_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = closing_compacts()
            .compact_on_close(false)
            .open(dir.path())
            .expect("open");
        let mut expected = write_a_third_of_a_megabyte(&db);
        drop(db);
        let logged = log_bytes(dir.path());
        assert!(logged > 256 << 10, "compact_on_close(false) left the log");

        // A handle that only reads, then one that writes a little, close at once.
        let reader = closing_compacts().open(dir.path()).expect("open");
        assert_eq!(dump(&reader), expected);
        drop(reader);
        assert_eq!(log_bytes(dir.path()), logged);
        let writer = closing_compacts().open(dir.path()).expect("open");
        writer.put("one", "more").expect("put");
        drop(writer);
        expected.insert(b"one".to_vec(), b"more".to_vec());
        assert!(log_bytes(dir.path()) > logged);

        let db = closing_compacts().open(dir.path()).expect("reopen");
        assert_eq!(db.stats().expect("stats").snapshot_keys, 0);
        assert_eq!(dump(&db), expected);
    }

    /// A store whose snapshot is over the size limit is not compacted at close.
    #[test]
    fn closing_leaves_the_log_of_a_store_too_large_to_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = closing_compacts().open(dir.path()).expect("open");
        db.put("first", "into the snapshot").expect("put");
        db.compact().expect("compact");
        let snapshot = db.stats().expect("stats").snapshot_bytes;
        drop(db);
        let db = closing_compacts()
            .close_compaction_max_snapshot(snapshot - 1)
            .open(dir.path())
            .expect("open");
        let expected = write_a_third_of_a_megabyte(&db);
        drop(db);
        assert!(log_bytes(dir.path()) > 256 << 10, "the log was left");
        // At the limit, it does.
        let db = closing_compacts()
            .close_compaction_max_snapshot(snapshot)
            .open(dir.path())
            .expect("open");
        assert_eq!(write_a_third_of_a_megabyte(&db), expected);
        drop(db);
        assert_eq!(log_bytes(dir.path()), crate::format::WAL_HEADER_LEN as u64);
    }

    /// A compaction the background thread was woken for when the handle closes is finished,
    /// not abandoned.
    #[test]
    fn closing_right_after_a_compaction_is_due_completes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Options::new()
            .compaction_min_wal_bytes(128 << 10)
            .compaction_ratio(0.0)
            .open(dir.path())
            .expect("open");
        let mut batch = Batch::new();
        let mut expected = BTreeMap::new();
        for i in 0..10_000u32 {
            let (key, value) = (
                format!("k{i:06}"),
                "a value of a hundred bytes or so, the same size as the benchmark's values are",
            );
            batch.put(&key, value);
            expected.insert(key.into_bytes(), value.as_bytes().to_vec());
        }
        db.write(batch).expect("write");
        drop(db);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("wal-") || n.starts_with("snap-"))
            .collect();
        names.sort();
        assert_eq!(names, ["snap-0000000000000001", "wal-0000000000000001"]);
        let db = Options::new().open(dir.path()).expect("reopen");
        assert_eq!(
            db.stats().expect("stats").wal_bytes,
            crate::format::WAL_HEADER_LEN as u64
        );
        assert_eq!(dump(&db), expected);
    }

    /// A closing compaction that finds the disk full gives up, and loses nothing.
    #[test]
    fn a_closing_compaction_on_a_full_disk_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = on_a_faulty_disk(dir.path(), closing_compacts());
        let expected = write_a_third_of_a_megabyte(&db);
        lock(&faults).enospc_after = Some(4 << 10);
        drop(db);
        let journal = std::mem::take(&mut lock(&faults).journal);
        assert!(
            journal.iter().any(|op| op.starts_with("write snap-")),
            "the close tried to compact: {journal:?}"
        );
        assert!(
            !dir.path().join("snap-0000000000000001.tmp").exists(),
            "the partial snapshot is removed"
        );
        let db = closing_compacts().open(dir.path()).expect("reopen");
        assert_eq!(db.stats().expect("stats").snapshot_keys, 0);
        assert_eq!(dump(&db), expected);
    }

    /// Kills a closing compaction (the disk freezes) after each of its file operations in turn.
    #[test]
    fn a_crash_at_every_step_of_a_closing_compaction_recovers_the_acknowledged_state() {
        let mut steps = 0;
        for crash_at in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let (db, faults) = on_a_faulty_disk(dir.path(), closing_compacts());
            let expected = write_a_third_of_a_megabyte(&db);
            freeze_after(&faults, crash_at);
            drop(db);
            let journal = std::mem::take(&mut lock(&faults).journal);

            drop(reopen_after_crash(dir.path(), &expected, &journal));
            if journal.len() < crash_at {
                break;
            }
            steps += 1;
        }
        assert!(steps >= 10, "only {steps} crash points were exercised");
    }
}
