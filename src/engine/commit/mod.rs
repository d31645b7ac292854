//! The commit path: group commit within a handle, `LOCK` across processes, and the order in
//! which commits are acknowledged.
//!
//! A commit (a group of batches from concurrent threads, or a transaction) goes through:
//! 1. **Append**, holding the handle's writer and `LOCK`: bring the log writer up to date with
//!    what other processes appended (repairing a torn tail a killed one left), then append.
//! 2. **Sync**, holding nothing: `fdatasync`. Meanwhile the next group (of this or another
//!    process) appends and waits; the next sync covers all of them. A commit's sync is claimed
//!    for the whole store in the hint page, so that writers of other processes wait for it
//!    rather than queue their own behind it (`Store::sync_for_store`).
//! 3. **Publish**: whoever ran the sync raises the shared committed-sequence hint and applies the
//!    log up to the end of what it covered to the handle's view; every commit it covered is then
//!    acknowledged. A sync covers every earlier record of the file, so a commit is never
//!    acknowledged while an earlier one's fate is unknown; after a failed sync the handle is
//!    poisoned and no later sync runs (the kernel may have dropped that data, and a record
//!    behind the hole would be lost too).
//!
//! Its parts: [`group`] (the queue, the leader, step 1, and transactions' turn to append),
//! [`durability`] (steps 2 and 3 within a handle) and [`shared_sync`] (sharing step 2 with other
//! processes). This file holds their shared state and the writer's catch-up with the log's end.

mod durability;
mod group;
mod shared_sync;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::engine::Store;
use crate::error::Result;
use crate::locking::{APPENDED_SEQ, COMMITTED_SEQ, LOG_GENERATION, LockGuard, SYNCED_SEQ};
use crate::sync::{Signal, yield_then_lock};
use crate::wal::{self, LogWriter};

use durability::Syncs;
use group::Group;

/// Threads waiting to commit, and the order commits finish in.
#[derive(Default)]
pub(crate) struct Queue {
    /// Batches waiting for a leader.
    pending: Vec<Batch>,
    /// The group those batches will commit in.
    forming: Arc<Group>,
    /// A leader is appending (syncs of earlier commits may still run).
    appending: bool,
    /// How many commits the recent syncs covered, and for how long a would-be leader that finds
    /// fewer queued waits for the rest, so that they are appended together (DECISIONS 45).
    expected: u64,
    lead_gather: Duration,
}

/// The commit path's state: the queue of writers, the syncs, and the log's appending end.
pub(crate) struct GroupCommit {
    /// Writers waiting to be committed by a group leader.
    pub(crate) queue: Mutex<Queue>,
    pub(crate) queue_changed: Signal,
    /// Which records are durable, and whether a sync is running.
    pub(crate) syncs: Mutex<Syncs>,
    pub(crate) sync_done: Signal,
    /// A record was appended (wakes a sync that waits to cover more writers).
    pub(crate) more_appended: Condvar,
    /// The appending end of the log, held by a group leader while it appends.
    pub(crate) writer: Mutex<LogWriter>,
}

impl GroupCommit {
    /// Ready to append at `writer`, the end of the log as recovered.
    pub(crate) fn new(writer: LogWriter) -> Self {
        GroupCommit {
            queue: Mutex::default(),
            queue_changed: Signal::default(),
            syncs: Mutex::default(),
            sync_done: Signal::default(),
            more_appended: Condvar::new(),
            writer: Mutex::new(writer),
        }
    }
}

impl Store {
    /// Waits for a change to what `guard` holds, which another thread signals on `changed`: first
    /// (for up to [`Options::spin_wait`](crate::Options::spin_wait) from the first call with this
    /// `spin_until`) by yielding the CPU and returning to look again, then by sleeping.
    fn wait_for_change<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
        changed: &Signal,
        spin_until: &mut Option<Instant>,
    ) -> MutexGuard<'a, T> {
        let now = Instant::now();
        if now < *spin_until.get_or_insert(now + self.options.spin_wait) {
            return yield_then_lock(mutex, guard);
        }
        changed.wait(guard)
    }

    /// Holding `LOCK`: brings the log writer to the true end of the log, past whatever other
    /// processes appended, into a newer generation if one was cut, and cuts off a torn record a
    /// killed process left, so that nothing is appended behind garbage.
    pub(crate) fn follow_the_log(
        &self,
        writer: &mut LogWriter,
        guard: &LockGuard<'_>,
    ) -> Result<()> {
        if !self.store_lock.is_shared() {
            return Ok(()); // nobody else appends
        }
        let repaired = wal::follow_to_end(
            self.options.vfs.as_ref(),
            &self.dir,
            writer,
            &self.store_lock,
            &self.poison,
        )?;
        self.counters
            .torn_tails_repaired
            .fetch_add(repaired, Ordering::Relaxed);
        // The files are the truth: a hint ahead of the log (a damaged page, a lost tail) would
        // send readers looking for records that are not there.
        for word in [COMMITTED_SEQ, SYNCED_SEQ, APPENDED_SEQ] {
            if self.store_lock.hint(word) > writer.next_seq() {
                self.store_lock.correct_hint(guard, word, writer.next_seq());
            }
        }
        if self.store_lock.hint(LOG_GENERATION) > writer.generation() {
            self.store_lock
                .correct_hint(guard, LOG_GENERATION, writer.generation());
        }
        Ok(())
    }
}
