//! The applied view: what this handle's readers see, how far it has applied the log, and how it
//! catches up on commits (its own, from memory; other processes', from the log) and on flushes
//! and compactions made elsewhere (by switching to the newest manifest's files, and replaying
//! from its log start if a flush moved that).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::{OpRef, Record};
use crate::locking::{APPENDED_SEQ, COMMITTED_SEQ, MANIFEST_NUMBER, SYNCED_SEQ};
use crate::memtable::Below;
use crate::sync::lock;
use crate::view::{Layers, ReadPoint, View};
use crate::wal::{Followed, Position, read_to_end, read_until};

use super::{Store, recovery};

/// The view readers see and where it stands in the log. Lock order: the commit's `writer`, then
/// `LOCK`, then `position`, then `view`.
pub(crate) struct Applied {
    /// What readers see: only committed (durable) writes, in log order. A reader locks only its
    /// thread's shard, so readers on different cores share no lock word (DECISIONS 47).
    pub(crate) view: ShardedLock<View>,
    /// How far `view` has applied the log.
    pub(crate) position: Mutex<Position>,
    /// The hint words as of the last time this handle caught up: while the shared page still
    /// holds these, no other process has committed or compacted since.
    pub(crate) seen: Seen,
    /// Records this handle appended and has not applied to its view yet, by sequence number.
    pub(crate) own_records: Mutex<BTreeMap<u64, OwnRecord>>,
    /// The read snapshots taken through this handle, for [`Stats`](crate::Stats) (some may be
    /// gone: swept out as more are taken).
    pub(crate) points: Mutex<Vec<Weak<ReadPoint>>>,
    /// The hint page was found unreconcilable once (and said so in the log).
    pub(crate) hint_doubted: std::sync::atomic::AtomicBool,
}

impl Applied {
    /// The view as recovered, at `position`, with the hint words it reflects.
    pub(crate) fn new(view: View, position: Position, seen: Seen) -> Self {
        Applied {
            view: ShardedLock::new(view),
            position: Mutex::new(position),
            seen,
            own_records: Mutex::default(),
            points: Mutex::default(),
            hint_doubted: Default::default(),
        }
    }

    /// The view, for reading.
    pub(crate) fn read(&self) -> ShardedLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The view, for changing (once per applied commit, compaction or reload).
    pub(crate) fn write(&self) -> ShardedLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A record's operations, as the view applies them.
fn record_ops<'r>(record: &'r Record<'_>) -> impl Iterator<Item = (Bytes, Option<Bytes>)> + 'r {
    record.ops().map(|op| match op {
        OpRef::Put(key, value) => {
            let (key, value) = Bytes::pair(key, value);
            (key, Some(value))
        }
        OpRef::Delete(key) => (Bytes::from(key), None),
    })
}

/// Hint words as a handle last acted on them.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) committed: AtomicU64,
    pub(crate) synced: AtomicU64,
    pub(crate) manifest: AtomicU64,
}

impl Seen {
    /// What a handle whose view holds every record below `next_seq` and the files of manifest
    /// `manifest` has seen, given the words as they are now: a word above what the view holds
    /// (a commit made since the view was read) is taken as unseen, so that the first operation
    /// catches up on it.
    pub(crate) fn at(next_seq: u64, manifest: u64, committed: u64, synced: u64) -> Self {
        Seen {
            committed: AtomicU64::new(committed.min(next_seq)),
            synced: AtomicU64::new(synced.min(next_seq)),
            manifest: AtomicU64::new(manifest),
        }
    }
}

/// A record this handle appended, kept so that publishing it needs no read of the log.
pub(crate) struct OwnRecord {
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) ops: Vec<(Bytes, Option<Bytes>)>,
}

impl Store {
    /// Before an operation: if another handle committed, flushed or compacted since this one
    /// last looked (the shared hint moved: three atomic loads), applies what changed. A read
    /// therefore sees every write acknowledged anywhere before it started.
    ///
    /// The words are advice, checked before they are followed (DECISIONS 58): the committed
    /// and synced words (the higher counts: a durable record is as good as committed, and one
    /// word stuck low then holds nobody back) may never pass the appended word, never fall
    /// below what this handle saw, and must lead to intact records in the log. Words that fail
    /// these are not believed: this operation reads the log's true end instead, under `LOCK`.
    pub(crate) fn refresh(&self) -> Result<()> {
        if !self.store_lock.is_shared() {
            return Ok(());
        }
        let committed = self.store_lock.hint(COMMITTED_SEQ);
        let synced = self.store_lock.hint(SYNCED_SEQ);
        let manifest = self.store_lock.hint(MANIFEST_NUMBER);
        let seen = &self.applied.seen;
        let (seen_committed, seen_synced) = (
            seen.committed.load(Ordering::Acquire),
            seen.synced.load(Ordering::Acquire),
        );
        if committed == seen_committed
            && synced == seen_synced
            && manifest == seen.manifest.load(Ordering::Acquire)
        {
            return Ok(());
        }
        // Loaded after the others: in an honest page it is at least as high as they were.
        let appended = self.store_lock.hint(APPENDED_SEQ);
        let seq = committed.max(synced);
        let believed = seq <= appended
            && committed >= seen_committed
            && synced >= seen_synced
            && match self.follow_the_words(seq, manifest) {
                Ok(reached) => reached,
                // What the words named is damaged or missing: the files decide below.
                Err(Error::Corruption { .. }) => false,
                Err(e) => return Err(e),
            };
        if !believed {
            // Not stored as seen: words that stay as they are would otherwise pass for "nothing
            // new" from now on. Until they are reconciled (a writer corrects them under `LOCK`),
            // every operation reads the log's end.
            self.warn_of_hint(committed, synced, appended);
            return self.read_to_the_end();
        }
        seen.committed.store(committed, Ordering::Release);
        seen.synced.store(synced, Ordering::Release);
        seen.manifest.store(manifest, Ordering::Release);
        Ok(())
    }

    /// Applies the log up to `seq` and switches to manifest `manifest`'s files if newer;
    /// whether the log held every record the words named.
    fn follow_the_words(&self, seq: u64, manifest: u64) -> Result<bool> {
        let ours = self.applied.read().tables.manifest.number;
        if manifest > ours {
            self.switch_tables(seq)?;
        } else {
            self.catch_up(seq)?;
        }
        Ok(lock(&self.applied.position).next_seq >= seq)
    }

    /// Logs, once per handle, that the hint page was found unreconcilable.
    fn warn_of_hint(&self, committed: u64, synced: u64, appended: u64) {
        if !self.applied.hint_doubted.swap(true, Ordering::Relaxed) {
            let position = lock(&self.applied.position).next_seq;
            log::warn!(
                "{}: the hint page cannot be reconciled with the log (committed {committed}, \
                 synced {synced}, appended {appended}; this handle has applied the log up to \
                 {position}): reading the log instead; a damaged page, another build of \
                 sturdykv, or another program may be writing it",
                self.dir.display()
            );
        }
    }

    /// Applies every committed record, found from the files rather than the hint page: holding
    /// `LOCK`, a writable handle brings its log writer to the log's end, makes everything up to
    /// there durable and applies it (as a transaction's start does) and corrects the words; a
    /// read-only one rereads the store's files, up to the end of the log.
    fn read_to_the_end(&self) -> Result<()> {
        if self.options.read_only {
            let _no_appends = self.store_lock.shared()?;
            let mut position = lock(&self.applied.position);
            let mut moved = position.clone();
            let mut ops = Vec::new();
            let vfs = self.options.vfs.as_ref();
            return match read_to_end(vfs, &self.dir, &mut moved, |record| {
                ops.extend(record_ops(record));
            })? {
                Followed::Reached => self.apply_read(&mut position, moved, ops),
                Followed::Gone => self.reload(&mut position, u64::MAX),
            };
        }
        let mut writer = lock(&self.commit.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        let manifest = self.store_lock.hint(MANIFEST_NUMBER);
        if manifest > self.applied.read().tables.manifest.number {
            self.switch_tables(writer.next_seq())?;
        }
        self.settle(&writer)?;
        // The truth, found holding `LOCK` (words above it were lowered by `follow_the_log`).
        // Everything up to there is applied, hence committed; the synced word is raised only by
        // a sync, and `settle` ran one if anything was left to make durable.
        self.store_lock
            .correct_hint(&guard, APPENDED_SEQ, writer.next_seq());
        self.store_lock.raise_hint(COMMITTED_SEQ, writer.next_seq());
        Ok(())
    }

    /// Another process installed a manifest: switch to its files. If only a compaction changed
    /// them, the memtable stays as it is; if a flush moved the log start, the memtable's older
    /// segments are in a run now, and the view is rebuilt from the files plus the segments from
    /// the new start (about one memtable), rather than holding both.
    fn switch_tables(&self, seq: u64) -> Result<()> {
        let mut position = lock(&self.applied.position);
        let vfs = self.options.vfs.as_ref();
        let (log_start, open) = {
            let state = self.applied.read();
            (state.tables.manifest.log_start, state.tables.reusable())
        };
        let listing = crate::layout::list_store(vfs, &self.dir)?;
        let newest = crate::manifest::read_newest(vfs, &self.dir, &listing);
        match newest {
            Ok(Some(m)) if m.log_start == log_start => {
                match super::tables::open_tables(vfs, &self.dir, m, &open) {
                    Ok(tables) => {
                        let mut state = self.applied.write();
                        // This handle's own install may have overtaken this one's read.
                        if tables.manifest.number > state.tables.manifest.number {
                            state.tables = std::sync::Arc::new(tables);
                        }
                        drop(state);
                        drop(position);
                        return self.catch_up(seq);
                    }
                    // A later install removed a file meanwhile: rebuild below.
                    Err(crate::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {}
            Err(crate::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let target = seq.max(position.next_seq);
        self.reload(&mut position, target)
    }

    /// A read snapshot of the store as of now: every commit acknowledged anywhere before the
    /// call (it catches up first), and nothing later.
    pub(crate) fn read_point(&self) -> Result<Arc<ReadPoint>> {
        self.refresh()?;
        Ok(self.read_point_as_applied())
    }

    /// A read snapshot of what this handle has applied, without catching up: inside a
    /// transaction, which has.
    pub(crate) fn read_point_as_applied(&self) -> Arc<ReadPoint> {
        let point = Arc::new(self.applied.read().read_point());
        let mut points = lock(&self.applied.points);
        // Swept when the list would grow: O(1) amortised however many are open.
        if points.len() == points.capacity() {
            points.retain(|p| p.strong_count() > 0);
        }
        points.push(Arc::downgrade(&point));
        point
    }

    /// What the open snapshots hold that the view itself does not.
    pub(crate) fn snapshot_stats(&self, view: &View) -> crate::stats::SnapshotStats {
        let points: Vec<Arc<ReadPoint>> = {
            let mut points = lock(&self.applied.points);
            points.retain(|p| p.strong_count() > 0);
            points.iter().filter_map(Weak::upgrade).collect()
        };
        let mut stats = crate::stats::SnapshotStats {
            open: points.len() as u64,
            oldest_sequence: points.iter().map(|p| p.at).min(),
            ..Default::default()
        };
        let live_files: std::collections::HashSet<&std::path::Path> = view
            .tables
            .runs
            .iter()
            .chain(&view.tables.parts)
            .map(|f| f.path())
            .collect();
        let mut tables_seen = std::collections::HashSet::new();
        let mut files_seen = std::collections::HashSet::new();
        let mut memtables_seen = std::collections::HashSet::new();
        let view_frozen = view.frozen.as_ref().map(Arc::as_ptr);
        let mut live_history = false;
        for point in &points {
            let held = point.retired().into_iter().chain(point.frozen.as_ref());
            for table in held {
                let ptr = Arc::as_ptr(table);
                if Some(ptr) != view_frozen && memtables_seen.insert(ptr) {
                    stats.memory_bytes +=
                        (table.approximate_bytes() + table.history_bytes()) as u64;
                }
            }
            live_history |= point.retired().is_none();
            if tables_seen.insert(Arc::as_ptr(&point.tables)) {
                for file in point.tables.runs.iter().chain(&point.tables.parts) {
                    if !live_files.contains(file.path()) && files_seen.insert(file.path()) {
                        stats.disk_bytes += file.file_bytes();
                    }
                }
            }
        }
        if live_history {
            stats.memory_bytes += view.memtable.history_bytes() as u64;
        }
        stats
    }

    /// Runs `read` on the layers as `point` sees them: its own memtable if the view has
    /// replaced that since, else the view's live one, under the view's read lock.
    pub(crate) fn read_at<R>(
        &self,
        point: &ReadPoint,
        read: impl FnOnce(&Layers<'_>) -> Result<R>,
    ) -> Result<R> {
        if let Some(retired) = point.retired() {
            return read(&point.layers(retired));
        }
        let view = self.applied.read();
        // Replacing the live memtable retires it under the write lock: found here unretired,
        // it is still the view's.
        match point.retired() {
            Some(retired) => read(&point.layers(retired)),
            None => {
                debug_assert!(point.reads(&view));
                read(&point.layers(&view.memtable))
            }
        }
    }

    /// Applies the committed log up to (not including) sequence number `target` to the view.
    pub(crate) fn catch_up(&self, target: u64) -> Result<()> {
        let mut position = lock(&self.applied.position);
        if position.next_seq >= target {
            return Ok(());
        }
        let mut moved = position.clone();
        let mut ops: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut own = lock(&self.applied.own_records);
        while moved.next_seq < target {
            // This handle's own records are applied from memory, when they are where the log
            // position says the next record is.
            if let Some(record) = own.remove(&moved.next_seq)
                && record.generation == moved.generation
                && record.offset == moved.offset
            {
                if ops.is_empty() {
                    ops = record.ops; // the usual case: one record of ours, taken as it is
                } else {
                    ops.extend(record.ops);
                }
                moved.offset += record.len;
                moved.next_seq += 1;
                continue;
            }
            // Others' records (and any of ours not where expected) come from the log, up to
            // the next record of ours.
            let next_own = own
                .range(moved.next_seq + 1..)
                .next()
                .map_or(target, |(&seq, _)| seq.min(target));
            let stop = next_own.max(moved.next_seq + 1);
            let followed = read_until(
                self.options.vfs.as_ref(),
                &self.dir,
                &mut moved,
                stop,
                |record| ops.extend(record_ops(record)),
            )?;
            if followed == Followed::Gone {
                own.retain(|&seq, _| seq >= target);
                drop(own);
                return self.reload(&mut position, target);
            }
        }
        // Anything older is applied (or superseded by a reload).
        own.retain(|&seq, _| seq >= moved.next_seq);
        drop(own);
        self.apply_read(&mut position, moved, ops)
    }

    /// Applies `ops`, read from the log from `position` to `moved`, to the view.
    fn apply_read(
        &self,
        position: &mut Position,
        moved: Position,
        ops: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<()> {
        // What lies below each key the memtable does not hold can take a disk read: found out
        // under the read lock, not while readers wait for the write lock. Nothing but this
        // (under `position`) changes what the lower layers hold. Looking it up here, on the
        // commit path, keeps the flush from having to (D 54).
        let below: Vec<Option<Below>> = {
            let state = self.applied.read();
            ops.iter()
                .map(|(key, _)| state.below(key))
                .collect::<Result<_>>()?
        };
        let mut state = self.applied.write();
        let keep = state.keep_for_readers();
        for ((key, value), below) in ops.into_iter().zip(below) {
            state.apply(key, value, below, keep);
        }
        *position = moved;
        state.next_seq = position.next_seq;
        Ok(())
    }

    /// Rebuilds the view from the newest manifest's files and the log segments after them, up
    /// to `target`: when a segment this handle needs was flushed away, or another process moved
    /// the log start.
    pub(crate) fn reload(&self, position: &mut Position, target: u64) -> Result<()> {
        let open = self.applied.read().tables.reusable();
        let loaded = recovery::load(
            self.options.vfs.as_ref(),
            &self.dir,
            target,
            false,
            None,
            None,
            &open,
        )?;
        self.applied.write().replace(loaded.view);
        *position = loaded.position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::sync::lock;
    use crate::testing::faulty::{At, FaultyVfs, Hook};
    use crate::{Db, Options};

    /// A commit acknowledged by another handle between the end of an open's recovery (which
    /// releases `LOCK`) and the open's return is seen by the new handle's first read: the handle
    /// starts from what its view holds, not from the hint as it stood after the open.
    #[test]
    fn a_commit_acknowledged_while_a_handle_opens_is_seen_by_its_first_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = Db::open(dir.path()).expect("open");
        writer.put("k", "old").expect("put");
        let vfs = FaultyVfs::default();
        let faults = Arc::clone(&vfs.faults);
        let other = writer.clone();
        lock(&faults).hooks.push_back((
            At::Unlock("LOCK".into()),
            Hook(Box::new(move || other.put("k", "new").expect("put"))),
        ));
        let opened = Options::new()
            .vfs(Arc::new(vfs))
            .open(dir.path())
            .expect("open");
        assert!(
            lock(&faults).hooks.is_empty(),
            "the put ran inside the open"
        );
        assert_eq!(
            opened.get("k").expect("get").as_deref(),
            Some(&b"new"[..]),
            "the put returned before the open did"
        );
    }
}
