//! Group commit within a handle: concurrent writers queue their batches, and the first to find
//! no commit appending leads the group: it appends every queued batch as one write (step 1 of the
//! commit), then makes them durable together (`durability`). A transaction takes the same turn to
//! append, holding it while its closure runs.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, OnceLock};
use std::time::Instant;

use crate::batch::Batch;
use crate::engine::Store;
use crate::engine::applied::OwnRecord;
use crate::error::{Error, Result};
use crate::format::encode_record;
use crate::locking::LockGuard;
use crate::sync::{lock, yield_then_lock};
use crate::wal::LogWriter;

use super::Queue;
use super::durability::Appended;

/// The outcome of one group, shared by its members.
#[derive(Default)]
pub(super) struct Group {
    outcome: OnceLock<Option<Error>>,
}

/// The right to append next. Dropping it (an error or a panic) lets the next commit append.
pub(crate) struct Turn<'a> {
    store: &'a Store,
    appending: bool,
}

impl Turn<'_> {
    /// Lets the next commit append (this one's sync may still be running).
    fn stop_appending(&mut self) {
        if std::mem::take(&mut self.appending) {
            lock(&self.store.commit.queue).appending = false;
            self.store.commit.queue_changed.notify_all();
        }
    }

    /// Records `outcome` for the members of `group`.
    fn finish(&mut self, group: &Group, outcome: Option<Error>) {
        self.stop_appending();
        let queue = lock(&self.store.commit.queue);
        let _ = group.outcome.set(outcome);
        drop(queue);
        self.store.commit.queue_changed.notify_all();
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.stop_appending();
    }
}

impl Store {
    /// Takes the turn to append; the caller has made sure no commit is appending.
    fn take_turn<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> Turn<'a> {
        queue.appending = true;
        Turn {
            store: self,
            appending: true,
        }
    }

    /// Queues `batch` and returns once the group that carries it is acknowledged. The first
    /// waiting writer to find no commit appending leads: it commits everything queued.
    pub(crate) fn commit(&self, batch: Batch) -> Result<()> {
        if !batch.is_empty() {
            self.wait_for_memtable_room()?;
        }
        let mut queue = lock(&self.commit.queue);
        queue.pending.push(batch);
        let group = Arc::clone(&queue.forming);
        let mut spin_until = None;
        let arrived = Instant::now();
        loop {
            if let Some(outcome) = group.outcome.get() {
                return outcome
                    .as_ref()
                    .map_or(Ok(()), |e| Err(e.for_group_member()));
            }
            if !queue.appending && Arc::ptr_eq(&queue.forming, &group) {
                // Fewer commits queued than the last syncs covered: give the rest a moment to
                // join, so that one append carries them all. Yielding, never sleeping: a queued
                // commit wakes nobody, and neither does the end of this wait.
                if (queue.pending.len() as u64) < queue.expected
                    && arrived.elapsed() < queue.lead_gather
                {
                    queue = yield_then_lock(&self.commit.queue, queue);
                    continue;
                }
                let batches = std::mem::take(&mut queue.pending);
                queue.forming = Arc::default();
                let turn = self.take_turn(queue);
                return self.lead(turn, &group, batches);
            }
            queue = self.wait_for_change(
                &self.commit.queue,
                queue,
                &self.commit.queue_changed,
                &mut spin_until,
            );
        }
    }

    /// Commits a group: append, sync, publish, acknowledge.
    fn lead(&self, mut turn: Turn<'_>, group: &Group, batches: Vec<Batch>) -> Result<()> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let appended = self.append(batches)?;
            turn.stop_appending();
            self.make_durable(&appended)
        }))
        .unwrap_or_else(|_| {
            let cause = "a panic during a commit".to_string();
            self.poison.set(cause.clone());
            Err(Error::Poisoned { cause })
        });
        let shared = result.as_ref().err().map(Error::for_group_member);
        turn.finish(group, shared);
        result
    }

    /// Step 1 of a group commit: appends one record per batch.
    pub(super) fn append(&self, batches: Vec<Batch>) -> Result<Appended> {
        self.poison.check()?;
        let mut writer = lock(&self.commit.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        self.append_records(&mut writer, &guard, batches)?;
        Ok(self.appended(&writer))
    }

    /// Appends one record per batch, and keeps the batches for [`Store::catch_up`], which then
    /// applies them without reading them back from the log.
    fn append_records(
        &self,
        writer: &mut LogWriter,
        guard: &LockGuard<'_>,
        batches: Vec<Batch>,
    ) -> Result<()> {
        let (first_seq, start) = (writer.next_seq(), writer.end());
        // The durable horizon these records carry, so that recovery can tell damage to them, or
        // to any record below it, from a torn tail (DECISIONS 49). Every record below the synced
        // sequence is durable: it is raised only after an `fdatasync` covered them. (The log
        // ends at `first_seq`: a synced word above that is not believed, and vouches for nothing.)
        let durable_below = self.store_lock.synced_below(first_seq);
        let version = writer.version();
        let mut lens = Vec::with_capacity(batches.len());
        let appended = writer.append(|buf, first_seq| {
            for (seq, batch) in (first_seq..).zip(&batches) {
                let before = buf.len();
                encode_record(
                    buf,
                    version,
                    seq,
                    durable_below,
                    batch.op_refs(),
                    batch.encoded_len(),
                );
                lens.push((buf.len() - before) as u64);
            }
            batches.len() as u64
        });
        if let Err(e) = appended {
            if let Error::Poisoned { cause } = &e {
                self.poison.set(cause.clone());
            }
            return Err(e);
        }
        self.store_lock
            .note_append(guard, writer.generation(), writer.next_seq());
        self.counters
            .commits
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        let mut own = lock(&self.applied.own_records);
        let mut offset = start;
        for ((seq, batch), len) in (first_seq..).zip(batches).zip(lens) {
            own.insert(
                seq,
                OwnRecord {
                    generation: writer.generation(),
                    offset,
                    len,
                    ops: batch.into_ops(),
                },
            );
            offset += len;
        }
        Ok(())
    }

    /// Notes the newest append (holding the writer, so appends are noted in order).
    fn appended(&self, writer: &LogWriter) -> Appended {
        let appended = Appended {
            path: writer.path().to_owned(),
            file: writer.file_arc(),
            generation: writer.generation(),
            end_seq: writer.next_seq(),
        };
        let mut syncs = lock(&self.commit.syncs);
        syncs.latest = Some(appended.clone());
        syncs.appended += 1;
        // Only a sync about to start waits for more appends (see `make_durable`), and it sleeps
        // only when writers do not spin.
        let gathering = syncs.running && self.options.spin_wait.is_zero();
        drop(syncs);
        if gathering {
            self.commit.more_appended.notify_one();
        }
        appended
    }

    /// Runs `body` holding the writer and `LOCK`, on the whole committed state, then commits the
    /// batch it returns (if any) in its turn: the core of [`Db::transaction`](crate::Db::transaction).
    pub(crate) fn exclusively<T, E: From<Error>>(
        &self,
        body: impl FnOnce() -> std::result::Result<(T, Batch), E>,
    ) -> std::result::Result<T, E> {
        self.poison.check()?;
        let queue = {
            let mut queue = lock(&self.commit.queue);
            let mut spin_until = None;
            while queue.appending {
                queue = self.wait_for_change(
                    &self.commit.queue,
                    queue,
                    &self.commit.queue_changed,
                    &mut spin_until,
                );
            }
            queue
        };
        let mut turn = self.take_turn(queue);
        let mut writer = lock(&self.commit.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        self.settle(&writer)?;
        let (value, batch) = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(result) => result?,
            Err(panic) => {
                drop((guard, writer, turn));
                resume_unwind(panic);
            }
        };
        if batch.is_empty() {
            return Ok(value);
        }
        batch.check_limits()?;
        self.append_records(&mut writer, &guard, vec![batch])?;
        let appended = self.appended(&writer);
        drop((guard, writer));
        turn.stop_appending();
        self.make_durable(&appended)?;
        Ok(value)
    }
}
