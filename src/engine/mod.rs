//! The engine core below the public handle: one [`Store`] per open handle (shared by its clones),
//! made of components that each own their state and lock.
//!
//! - [`applied`]: the view readers see and how far it has applied the log; catching up on
//!   commits and compactions made elsewhere.
//! - [`commit`]: group commit, durability, and sharing syncs across processes.
//! - [`flush`]: writing the memtable out as a run, so that memory and replay stay bounded.
//! - [`compaction`] and [`compactor`]: merging the runs into the partitions, and the background
//!   thread (and the close) that flushes and compacts.
//! - [`tables`]: the live set of sorted files: opening them, installing a manifest, removing
//!   what no manifest names.
//! - [`recovery`]: opening a store: the directory checks, the lock, the replay, the repair of a
//!   torn tail.
//! - [`repair`]: salvage on request of a store whose log has damaged acknowledged records.
//! - [`verify`]: reading back and checking every byte of the store.
//!
//! Below the engine: the log (`wal`), the sorted files (`sorted`), the manifest, the memtable and
//! the view over them, locking and the hint page, the file layout, the format, and the I/O layer.
//! Nothing here imports the public handle (`db`).

pub(crate) mod applied;
pub(crate) mod commit;
pub(crate) mod compaction;
pub(crate) mod compactor;
pub(crate) mod flush;
pub(crate) mod recovery;
pub(crate) mod repair;
pub(crate) mod tables;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::locking::{Access, COMMITTED_SEQ, SYNCED_SEQ, StoreLock};
use crate::options::Options;
use crate::poison::Poison;
use crate::stats::{FileStats, RecoveryReport, Stats};
use crate::sync::lock;

use applied::Applied;
use commit::GroupCommit;
use compaction::CompactionState;
use flush::FlushState;

/// Counts of what this handle (all its clones) did since it was opened, for [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) torn_tails_repaired: AtomicU64,
}

/// An open store: the engine behind a [`Db`](crate::Db) and its clones.
pub(crate) struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    /// The view readers see, and where it stands in the log.
    pub(crate) applied: Applied,
    /// The writers' queue, the syncs, and the log's appending end.
    pub(crate) commit: GroupCommit,
    /// One flush at a time.
    pub(crate) flush: FlushState,
    /// One compaction at a time, and the thread that flushes and compacts in the background.
    pub(crate) compaction: CompactionState,
    pub(crate) counters: Counters,
    /// Set after a failed sync: the handle refuses writes from then on.
    pub(crate) poison: Poison,
    /// `LOCK` and the hint page.
    pub(crate) store_lock: StoreLock,
    /// What recovery found and did at open.
    pub(crate) report: RecoveryReport,
    /// This store's own `Arc`, for the compaction thread it starts.
    me: Weak<Store>,
}

impl Store {
    /// Opens the store in `dir`, recovering from any crash.
    pub(crate) fn open(options: Options, dir: PathBuf) -> Result<Arc<Store>> {
        let access = match (options.read_only, options.exclusive) {
            (true, _) => Access::ReadOnly,
            (false, true) => Access::Exclusive,
            (false, false) => Access::Shared,
        };
        let recovered = recovery::open(
            options.vfs.as_ref(),
            &dir,
            options.create_if_missing,
            access,
        )?;
        // What the view holds, not the hint as it stands now: commits and installs made
        // elsewhere since recovery let go of `LOCK` are not in the view, and the first
        // operation must see the words differ from these to catch up on them.
        let seen = applied::Seen::at(
            recovered.position.next_seq,
            recovered.view.tables.manifest.number,
            recovered.store_lock.hint(COMMITTED_SEQ),
            recovered.store_lock.hint(SYNCED_SEQ),
        );
        let background = options.background_compaction && access != Access::ReadOnly;
        Ok(Arc::new_cyclic(|me| Store {
            me: me.clone(),
            dir,
            applied: Applied::new(recovered.view, recovered.position, seen),
            commit: GroupCommit::new(recovered.writer),
            flush: FlushState::new(recovered.flush_lock),
            compaction: CompactionState::new(recovered.compaction_lock, background),
            counters: Counters::default(),
            poison: Poison::default(),
            report: recovered.report,
            store_lock: recovered.store_lock,
            options,
        }))
    }

    /// The value of `key`, as of every commit acknowledged anywhere before the call.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.refresh()?;
        self.applied.read().get(key)
    }

    /// Number of keys, as [`Store::get`] sees the store.
    pub(crate) fn len(&self) -> Result<u64> {
        self.refresh()?;
        self.applied.read().len()
    }

    /// Refuses writes through a read-only or poisoned handle.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        self.poison.check()
    }

    /// Makes every record appended so far durable (for [`Durability::Buffered`](crate::Durability)).
    pub(crate) fn flush(&self) -> Result<()> {
        self.check_writable()?;
        let writer = lock(&self.commit.writer);
        self.sync_file(writer.path(), writer.file())?;
        self.store_lock.raise_hint(SYNCED_SEQ, writer.next_seq());
        Ok(())
    }

    /// Figures about the store and this handle.
    pub(crate) fn stats(&self) -> Result<Stats> {
        self.refresh()?;
        let position = lock(&self.applied.position);
        let state = self.applied.read();
        let frozen_bytes = state.frozen.as_ref().map_or(0, |f| f.approximate_bytes());
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let figures = |files: &[Arc<crate::sorted::SortedFile>]| {
            files
                .iter()
                .map(|f| FileStats {
                    path: f.path().to_owned(),
                    bytes: f.file_bytes(),
                    entries: f.len(),
                })
                .collect()
        };
        Ok(Stats {
            generation: position.generation,
            manifest: state.tables.manifest.number,
            log_start: state.tables.manifest.log_start,
            keys: state.len()?,
            runs: figures(&state.tables.runs),
            partitions: figures(&state.tables.parts),
            wal_bytes: position.offset,
            memtable_bytes: (state.memtable.approximate_bytes() + frozen_bytes) as u64,
            next_sequence: position.next_seq,
            commits: count(&self.counters.commits),
            syncs: count(&self.counters.syncs),
            flushes: count(&self.counters.flushes),
            compactions: count(&self.counters.compactions),
            torn_tails_repaired: count(&self.counters.torn_tails_repaired),
            durability: self.options.durability,
            recovery: self.report.clone(),
            snapshots: self.snapshot_stats(&state),
        })
    }
}
