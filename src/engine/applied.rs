//! The applied view: what this handle's readers see, how far it has applied the log, and how it
//! catches up on commits (its own, from memory; other processes', from the log) and on
//! compactions made elsewhere (by reloading from the newest snapshot).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::bytes::Bytes;
use crate::error::Result;
use crate::format::OpRef;
use crate::locking::{COMMITTED_SEQ, SNAPSHOT_GENERATION};
use crate::sync::lock;
use crate::view::View;
use crate::wal::{Followed, Position, read_until};

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
    pub(crate) seen_seq: AtomicU64,
    pub(crate) seen_snapshot: AtomicU64,
    /// Records this handle appended and has not applied to its view yet, by sequence number.
    pub(crate) own_records: Mutex<BTreeMap<u64, OwnRecord>>,
}

impl Applied {
    /// The view as recovered, at `position`, with the hint words as they were read at open.
    pub(crate) fn new(view: View, position: Position, seen_seq: u64, seen_snapshot: u64) -> Self {
        Applied {
            view: ShardedLock::new(view),
            position: Mutex::new(position),
            seen_seq: AtomicU64::new(seen_seq),
            seen_snapshot: AtomicU64::new(seen_snapshot),
            own_records: Mutex::default(),
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

/// A record this handle appended, kept so that publishing it needs no read of the log.
pub(crate) struct OwnRecord {
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) ops: Vec<(Bytes, Option<Bytes>)>,
}

impl Store {
    /// Before an operation: if another handle committed or compacted since this one last looked
    /// (the shared hint moved: two atomic loads), applies what changed. A read therefore sees
    /// every write acknowledged anywhere before it started.
    pub(crate) fn refresh(&self) -> Result<()> {
        if !self.store_lock.is_shared() {
            return Ok(());
        }
        let seq = self.store_lock.hint(COMMITTED_SEQ);
        let snapshot = self.store_lock.hint(SNAPSHOT_GENERATION);
        if seq == self.applied.seen_seq.load(Ordering::Acquire)
            && snapshot == self.applied.seen_snapshot.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let ours = self
            .applied
            .read()
            .snapshot
            .as_ref()
            .map_or(0, |s| s.generation());
        if snapshot > ours {
            // Another process compacted: start from its snapshot rather than keep the logs it
            // replaced in memory.
            let mut position = lock(&self.applied.position);
            let target = seq.max(position.next_seq);
            self.reload(&mut position, target)?;
        } else {
            self.catch_up(seq)?;
        }
        self.applied.seen_seq.store(seq, Ordering::Release);
        self.applied
            .seen_snapshot
            .store(snapshot, Ordering::Release);
        Ok(())
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
                |record| {
                    ops.extend(record.ops().map(|op| match op {
                        OpRef::Put(key, value) => {
                            let (key, value) = Bytes::pair(key, value);
                            (key, Some(value))
                        }
                        OpRef::Delete(key) => (Bytes::from(key), None),
                    }));
                },
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
        // Whether a key exists below the memtable can take a disk read: find out under the read
        // lock, not while readers wait for the write lock. Nothing but this (under `position`)
        // changes the lower layers' answers.
        let in_base: Vec<bool> = {
            let state = self.applied.read();
            ops.iter()
                .map(|(key, _)| state.base_contains(key))
                .collect::<Result<_>>()?
        };
        let mut state = self.applied.write();
        for ((key, value), known) in ops.into_iter().zip(in_base) {
            state.apply(key, value, known);
        }
        *position = moved;
        Ok(())
    }

    /// Rebuilds the view from the newest snapshot and the logs after it, up to `target`: when a
    /// log this handle needs was compacted away, or another process installed a new snapshot.
    pub(crate) fn reload(&self, position: &mut Position, target: u64) -> Result<()> {
        let loaded = recovery::load(
            self.options.vfs.as_ref(),
            &self.dir,
            target,
            false,
            None,
            None,
        )?;
        *self.applied.write() = loaded.view;
        *position = loaded.position;
        Ok(())
    }
}
