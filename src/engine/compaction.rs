//! Compaction: merging the runs into the key-range partitions, one partition at a time, so that
//! reads look past few runs and the extra disk a compaction needs stays about one partition.
//!
//! The protocol (DESIGN.md, "Flush and compaction"), each step crash-safe by the recovery rule:
//! 1. Take the runs `R` of the newest manifest, newest first.
//! 2. For each partition in key order whose range `R` overlaps: merge `R`'s entries in that
//!    range over the partition's (the newest entry of a key wins; tombstones are dropped, since
//!    nothing lies below a partition), writing new `part-<id>` files durably, split at
//!    `Options::partition_bytes`. Install a manifest that names them in the old one's place
//!    (the runs stay: they hold the same or newer entries, and readers take runs first, so no
//!    answer changes), then remove the old partition.
//! 3. Install a manifest without `R` (runs flushed meanwhile stay), and remove `R`'s files.
//!
//! One compaction runs at a time across processes (`LOCK.compaction`); flushes go on meanwhile,
//! each install building on the newest manifest (`tables::Store::install`).

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::layout::{list_store, part_name};
use crate::locking::CompactionLock;
use crate::sorted::{Cursor, SortedFile, SortedWriter, Stream};
use crate::sync::lock;
use crate::view::Tables;

use super::Store;
use super::compactor::Compactor;
use super::tables::OpenFiles;

/// One compaction at a time, and what runs and stops them.
pub(crate) struct CompactionState {
    /// Held for the whole of a compaction: one at a time in this handle (the compaction lock
    /// file does the same across handles).
    pub(crate) one_at_a_time: Mutex<()>,
    /// `LOCK.compaction`.
    pub(crate) lock: CompactionLock,
    /// Asks a running compaction to give up (the handle is closing).
    pub(crate) cancel: AtomicBool,
    /// The background flush and compaction thread.
    pub(crate) compactor: Mutex<Compactor>,
}

impl CompactionState {
    /// `background`: whether a thread may flush and compact when the triggers fire.
    pub(crate) fn new(lock: CompactionLock, background: bool) -> Self {
        CompactionState {
            one_at_a_time: Mutex::new(()),
            lock,
            cancel: AtomicBool::new(false),
            compactor: Mutex::new(Compactor::new(background)),
        }
    }
}

/// New partition files, by id, once durable.
type Written = Vec<(u64, Arc<SortedFile>)>;

/// How often (in entries) the merge reports progress and checks for cancellation.
const PROGRESS_EVERY: u64 = 4096;

impl Store {
    /// Whether the runs this handle reads should be merged into the partitions: more than
    /// `max_runs` of them, or together over `compaction_ratio` × the partitions.
    pub(crate) fn compaction_due(&self) -> bool {
        let tables = Arc::clone(&self.applied.read().tables);
        let (runs, parts) = tables.bytes();
        !tables.runs.is_empty()
            && (tables.runs.len() > self.options.max_runs
                || runs as f64 > self.options.compaction_ratio * parts as f64)
    }

    /// Compacts if the trigger still holds once this thread has the compaction to itself, and no
    /// other process is compacting.
    pub(crate) fn compact_if_due(&self) -> Result<()> {
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(false)? else {
            return Ok(());
        };
        self.refresh()?;
        if self.compaction_due() {
            self.compact_locked(|_, _| {})?;
        }
        Ok(())
    }

    /// Flushes the memtable, then merges every run into the partitions (waiting for a running
    /// flush or compaction, here or in another process, to finish first).
    pub(crate) fn compact(&self, progress: impl FnMut(u64, u64)) -> Result<()> {
        self.flush_memtable()?;
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(true)? else {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        };
        // Start from the newest manifest: another process may have compacted since this handle
        // last looked, and removed files its view is built on.
        self.refresh()?;
        self.compact_locked(progress)
    }

    fn compact_locked(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let tables = Arc::clone(&self.applied.read().tables);
        if tables.runs.is_empty() {
            return Ok(());
        }
        let run_ids = tables.manifest.runs.clone();
        let total: u64 = tables
            .runs
            .iter()
            .chain(&tables.parts)
            .map(|f| f.len())
            .sum();
        let vfs = self.options.vfs.as_ref();
        // Ids only grow: past every partition the manifest names and any a crashed compaction
        // left behind.
        let listing = list_store(vfs, &self.dir)?;
        let mut next_id = listing
            .parts
            .iter()
            .map(|id| id + 1)
            .fold(tables.manifest.next_part_id, u64::max);
        let mut done = 0u64;
        let slots = tables.parts.len().max(1);
        for slot in 0..slots {
            if self.compaction.cancel.load(Ordering::Relaxed) {
                return Ok(()); // the handle is closing: the runs still hold everything
            }
            self.flush_meanwhile();
            let (lo, hi) = slot_range(&tables, slot);
            let old = tables.parts.get(slot);
            if !runs_overlap(&tables.runs, lo.as_ref(), hi.as_ref())? {
                done += old.map_or(0, |p| p.len());
                continue;
            }
            let Some(written) = self.merge_slot(
                &tables.runs,
                old,
                lo.as_ref(),
                hi.as_ref(),
                &mut next_id,
                |n| progress(done + n, total),
            )?
            else {
                return Ok(()); // cancelled
            };
            done += old.map_or(0, |p| p.len());
            let old_id = tables.manifest.parts.get(slot).copied();
            let new_ids: Vec<u64> = written.iter().map(|(id, _)| *id).collect();
            let new_files: OpenFiles = written
                .into_iter()
                .map(|(id, file)| ((false, id), file))
                .collect();
            let installed = self.install(
                &new_files,
                |m| {
                    let at = match old_id {
                        Some(old_id) => {
                            m.parts.iter().position(|&p| p == old_id).ok_or_else(|| {
                                Error::corruption(
                                    &self.dir,
                                    0,
                                    format!("partition {old_id} left the manifest mid-compaction"),
                                )
                            })?
                        }
                        None => 0,
                    };
                    m.parts
                        .splice(at..at + usize::from(old_id.is_some()), new_ids);
                    m.next_part_id = m.next_part_id.max(next_id);
                    Ok(())
                },
                |_| {},
            )?;
            self.remove_unnamed(&installed)?;
        }
        let installed = self.install(
            &OpenFiles::new(),
            |m| {
                m.runs.retain(|id| !run_ids.contains(id));
                m.next_part_id = m.next_part_id.max(next_id);
                Ok(())
            },
            |_| {},
        )?;
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.remove_unnamed(&installed)?;
        progress(total, total);
        Ok(())
    }

    /// Writes `old` (or nothing) overlaid with the runs' entries in `[lo, hi)` as new partition
    /// files, tombstones dropped, each at most about `partition_bytes`. Returns their ids and
    /// open files once durable (none if every key in the range is deleted), or `None` if
    /// cancelled.
    fn merge_slot(
        &self,
        runs: &[Arc<SortedFile>],
        old: Option<&Arc<SortedFile>>,
        lo: Option<&Bytes>,
        hi: Option<&Bytes>,
        next_id: &mut u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Option<Written>> {
        let vfs = self.options.vfs.as_ref();
        let lower = lo.map_or(Bound::Unbounded, |k| Bound::Included(&k[..]));
        let upper = hi.map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
        let mut sources: Vec<Source> = runs
            .iter()
            .map(|run| {
                Ok(Source::Run {
                    cursor: run.cursor(lower, upper, true)?,
                    head: None,
                })
            })
            .collect::<Result<_>>()?;
        if let Some(old) = old {
            sources.push(Source::Part {
                stream: old.stream(),
                head: None,
            });
        }
        for source in &mut sources {
            source.advance(hi)?;
        }
        // The filter of each file is sized for the entries a partition of `partition_bytes`
        // holds at the inputs' average entry size (or fewer, if the inputs hold fewer).
        let inputs = || runs.iter().chain(old);
        let expected: u64 = inputs().map(|f| f.len()).sum();
        let input_bytes: u64 = inputs().map(|f| f.file_bytes()).sum();
        let average = (input_bytes / expected.max(1)).max(1);
        let per_file = expected.min(self.options.partition_bytes / average * 9 / 8 + 16);
        let mut written = Vec::new();
        let mut out: Option<SortedWriter> = None;
        let mut count = 0u64;
        let result = (|| -> Result<bool> {
            loop {
                // The smallest key among the heads; the first source holding it (the newest)
                // wins, and every other source's entry for it is skipped.
                let Some(key) = sources
                    .iter()
                    .filter_map(|s| s.head().map(|(k, _)| k))
                    .min()
                    .cloned()
                else {
                    return Ok(true);
                };
                let mut winner: Option<Option<Bytes>> = None;
                for source in &mut sources {
                    if source.head().is_some_and(|(k, _)| *k == key) {
                        let value = source.take();
                        if winner.is_none() {
                            winner = Some(value);
                        }
                        source.advance(hi)?;
                    }
                }
                count += 1;
                if count.is_multiple_of(PROGRESS_EVERY) {
                    if self.compaction.cancel.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    progress(count);
                    self.flush_meanwhile();
                }
                let Some(Some(value)) = winner else {
                    continue; // a tombstone: nothing below a partition to hide
                };
                if out
                    .as_ref()
                    .is_some_and(|w| w.bytes_written() >= self.options.partition_bytes)
                    && let Some(full) = out.take()
                {
                    let id = *next_id - 1;
                    written.push((id, Arc::new(SortedFile::open(vfs, &full.finish()?)?)));
                }
                if out.is_none() {
                    let id = *next_id;
                    *next_id += 1;
                    out = Some(SortedWriter::create(
                        vfs,
                        &self.dir,
                        part_name(id),
                        id,
                        per_file,
                    )?);
                }
                if let Some(w) = out.as_mut() {
                    w.add(&key, Some(&value))?;
                }
            }
        })();
        match result {
            Ok(true) => {
                if let Some(last) = out.take() {
                    let id = *next_id - 1;
                    written.push((id, Arc::new(SortedFile::open(vfs, &last.finish()?)?)));
                }
                Ok(Some(written))
            }
            Ok(false) | Err(_) => {
                if let Some(w) = out.take() {
                    w.abandon();
                }
                // Files already finished are named by no manifest: the next clean-up removes
                // them.
                result.map(|_| None)
            }
        }
    }
}

impl Store {
    /// Flushes, if the memtable is due, from within a compaction: the thread that compacts is the
    /// one that flushes, and writers must not wait for a merge to end. (The flush installs on
    /// top of the newest manifest; the compaction merges only the runs it started with.)
    fn flush_meanwhile(&self) {
        if self.flush_due()
            && let Err(e) = self.flush_if_due()
        {
            log::error!(
                "flush during a compaction of {} failed: {e}",
                self.dir.display()
            );
        }
    }
}

/// The key range of partition `slot`: from its first key (unbounded for the first) up to the
/// next partition's first key (unbounded for the last).
fn slot_range(tables: &Tables, slot: usize) -> (Option<Bytes>, Option<Bytes>) {
    let first_key = |i: usize| {
        tables
            .parts
            .get(i)
            .and_then(|p| p.first_key_in_file().ok().flatten().map(Bytes::from))
    };
    let lo = if slot == 0 { None } else { first_key(slot) };
    let hi = first_key(slot + 1);
    (lo, hi)
}

/// Whether any run holds an entry in `[lo, hi)`.
fn runs_overlap(runs: &[Arc<SortedFile>], lo: Option<&Bytes>, hi: Option<&Bytes>) -> Result<bool> {
    let lower = lo.map_or(Bound::Unbounded, |k| Bound::Included(&k[..]));
    let upper = hi.map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
    for run in runs {
        if let Some((key, _)) = run.cursor(lower, upper, true)?.next_entry()?
            && hi.is_none_or(|h| key < *h)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One input of a partition's merge, with its next entry (in the range) ready.
enum Source {
    /// A run, read through its map within the range.
    Run {
        cursor: Cursor,
        head: Option<(Bytes, Option<Bytes>)>,
    },
    /// The old partition, read whole with `pread` (see [`SortedFile::stream`]).
    Part {
        stream: Stream,
        head: Option<(Bytes, Option<Bytes>)>,
    },
}

impl Source {
    fn head(&self) -> Option<&(Bytes, Option<Bytes>)> {
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => head.as_ref(),
        }
    }

    /// Takes the head's value (the caller advances next).
    fn take(&mut self) -> Option<Bytes> {
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => head.take().and_then(|h| h.1),
        }
    }

    /// Reads the next entry below `hi` into the head.
    fn advance(&mut self, hi: Option<&Bytes>) -> Result<()> {
        let next = match self {
            Source::Run { cursor, .. } => cursor.next_entry()?,
            Source::Part { stream, .. } => stream
                .next_entry()?
                .map(|(k, v)| (Bytes::from(k), v.map(Bytes::from))),
        };
        let next = next.filter(|(k, _)| hi.is_none_or(|h| k < h));
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => *head = next,
        }
        Ok(())
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

        // Log appends are small; the run is written in 1 MiB pieces, which now fail.
        lock(&faults).enospc_after = Some(256 << 10);
        let err = db.compact().expect_err("the flush cannot write");
        assert!(matches!(err, Error::StorageFull { .. }), "{err}");
        assert!(
            !dir.path().join("run-0000000000000000.tmp").exists(),
            "the partial run is removed"
        );
        db.put("during", "the outage").expect("writes go on");
        assert_eq!(
            db.get("k000007").expect("get").as_deref(),
            Some(&b"a value long enough to fill a megabyte quickly"[..])
        );

        lock(&faults).enospc_after = None;
        db.compact()
            .expect("the retry cuts again and flushes both segments");
        let stats = db.stats().expect("stats");
        assert_eq!(
            (
                stats.generation,
                stats.flushes,
                stats.compactions,
                stats.partition_entries()
            ),
            (2, 1, 1, 20_001)
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
        // The flush: sync of the old log; the new log's tmp write, sync, rename, directory sync;
        // the run's writes, sync, rename, directory sync; the manifest's; the removals. Then the
        // compaction: the partition's writes, sync, rename, directory sync; two manifests; the
        // removals.
        assert!(steps >= 30, "only {steps} crash points were exercised");
    }

    /// Options under which closing flushes a memtable of 256 KiB or more, and the background
    /// thread (at 1 MiB) never starts.
    fn closing_flushes() -> Options {
        Options::new().memtable_bytes(1 << 20)
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

    fn replayed_at_open(dir: &Path) -> u64 {
        let db = Options::new().read_only(true).open(dir).expect("open");
        db.stats().expect("stats").recovery.replayed_records
    }

    /// Closing a writable handle flushes what the log holds, whichever handle wrote it: the
    /// next open replays nothing.
    #[test]
    fn closing_a_writable_handle_flushes_so_the_next_open_replays_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = closing_flushes()
            .compact_on_close(false)
            .open(dir.path())
            .expect("open");
        let expected = write_a_third_of_a_megabyte(&writer);
        drop(writer);
        assert!(
            replayed_at_open(dir.path()) >= 30,
            "compact_on_close(false) left the log"
        );
        // A handle that only reads closes, and flushes what another handle wrote.
        let reader = closing_flushes().open(dir.path()).expect("open");
        assert_eq!(dump(&reader), expected);
        let clone = reader.clone();
        drop(reader);
        assert!(
            replayed_at_open(dir.path()) >= 30,
            "a clone keeps the handle open"
        );
        drop(clone);
        assert_eq!(replayed_at_open(dir.path()), 0);
        let db = closing_flushes().open(dir.path()).expect("reopen");
        let stats = db.stats().expect("stats");
        assert_eq!(stats.wal_bytes, crate::format::WAL_HEADER_LEN as u64);
        assert_eq!(stats.runs.len(), 1);
        assert_eq!(dump(&db), expected);
        drop(db);
        // Closing with little or nothing in the log writes no run.
        let files = crate::testing::file_names;
        let before = files(dir.path());
        drop(closing_flushes().open(dir.path()).expect("open"));
        assert_eq!(files(dir.path()), before);
        let db = closing_flushes().open(dir.path()).expect("open");
        db.put("one", "more").expect("put");
        drop(db);
        // The put woke the background thread, which merged the one run into a partition; the
        // close wrote no new run.
        let after = files(dir.path());
        assert!(
            after.iter().any(|n| n.starts_with("part-"))
                && !after.iter().any(|n| n.starts_with("run-")),
            "{after:?}"
        );
        assert_eq!(
            replayed_at_open(dir.path()),
            2,
            "the put and the close's record"
        );
    }

    /// A closing flush that finds the disk full gives up, and loses nothing.
    #[test]
    fn a_closing_flush_on_a_full_disk_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, faults) = on_a_faulty_disk(dir.path(), closing_flushes());
        let expected = write_a_third_of_a_megabyte(&db);
        lock(&faults).enospc_after = Some(4 << 10);
        drop(db);
        let journal = std::mem::take(&mut lock(&faults).journal);
        assert!(
            journal.iter().any(|op| op.starts_with("write run-")),
            "the close tried to flush: {journal:?}"
        );
        assert!(
            !dir.path().join("run-0000000000000000.tmp").exists(),
            "the partial run is removed"
        );
        let db = closing_flushes().open(dir.path()).expect("reopen");
        assert!(db.stats().expect("stats").runs.is_empty());
        assert_eq!(dump(&db), expected);
    }

    /// Kills a closing flush (the disk freezes) after each of its file operations in turn.
    #[test]
    fn a_crash_at_every_step_of_a_closing_flush_recovers_the_acknowledged_state() {
        let mut steps = 0;
        for crash_at in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let (db, faults) = on_a_faulty_disk(dir.path(), closing_flushes());
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
