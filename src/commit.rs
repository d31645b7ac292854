//! The commit path: group commit within a handle, `LOCK` across processes, and the order in
//! which commits are acknowledged.
//!
//! A commit (a group of batches from concurrent threads, or a transaction) goes through:
//! 1. **Append**, holding the handle's writer and `LOCK`: bring the log writer up to date with
//!    what other processes appended (repairing a torn tail a killed one left), then append.
//! 2. **Sync**, holding nothing: `fdatasync`. Meanwhile the next group (of this or another
//!    process) appends and waits; the next sync covers all of them. A commit's sync is claimed
//!    for the whole store in the hint page, so that writers of other processes wait for it
//!    rather than queue their own behind it (`Inner::sync_for_store`).
//! 3. **Publish**: whoever ran the sync raises the shared committed-sequence hint and applies the
//!    log up to the end of what it covered to the handle's view; every commit it covered is then
//!    acknowledged. A sync covers every earlier record of the file, so a commit is never
//!    acknowledged while an earlier one's fate is unknown; after a failed sync the handle is
//!    poisoned and no later sync runs (the kernel may have dropped that data, and a record
//!    behind the hole would be lost too).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::db::{Durability, Inner, lock};
use crate::error::{Error, Result};
use crate::format::{WAL_HEADER_LEN, encode_record};
use crate::io::{OpenMode, VfsFile};
use crate::layout::{StoreFile, classify, wal_name};
use crate::locking::{
    APPENDED_SEQ, COMMITTED_SEQ, LAST_SYNC_OTHERS, LOG_GENERATION, LockGuard, SNAPSHOT_GENERATION,
    SYNC_RUNNING, SYNCED_SEQ,
};
use crate::wal::{self, LogWriter, Stop};

/// How long a store-wide sync may run before others give it up for dead (its process killed),
/// at the least; more if syncs here are slow.
const DEAD_SYNC_PATIENCE: Duration = Duration::from_millis(100);

/// The longest a would-be leader waits for the commits it expects to join its group.
const MAX_LEAD_GATHER: Duration = Duration::from_micros(50);

/// The longest [`Inner::gather_others`] waits for other processes' appends.
const MAX_GATHER: Duration = Duration::from_micros(200);

/// A token naming one store-wide sync: the process `own_pid` and a count, never 0.
fn sync_token(own_pid: u32) -> u64 {
    static SYNCS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = SYNCS.fetch_add(1, Ordering::Relaxed);
    (u64::from(own_pid) << 32) | u64::from(count) | 1 << 63
}

/// Whether the process that claimed a sync with `token` is certainly gone: no process has its
/// id. (A reused id, or one from another PID namespace, only makes writers wait longer.)
fn claimer_is_gone(token: u64, own_pid: u32) -> bool {
    let pid = (token >> 32) & 0x7fff_ffff;
    if pid == u64::from(own_pid) {
        return false; // another handle of this process
    }
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH))
}

/// Lets go of `guard`, gives the CPU to another thread, and takes the mutex again: a look that
/// spins instead of sleeping.
fn yield_then_lock<'a, T>(mutex: &'a Mutex<T>, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    drop(guard);
    std::thread::yield_now();
    lock(mutex)
}

/// A condition variable that makes no system call when no thread sleeps on it. std's
/// `notify_all` always makes one (a futex wake), and a lone writer's commit notified three times:
/// the turn to append, the group's outcome, the sync's end. Both sides must hold the mutex that
/// guards the state: a sleeper counts itself under it before it sleeps, and a notifier changes the
/// state under it, so either the sleeper sees the change or the notifier sees the sleeper.
#[derive(Default)]
pub(crate) struct Signal {
    condvar: Condvar,
    sleepers: AtomicUsize,
}

impl Signal {
    /// Sleeps until notified (or spuriously woken), releasing `guard`'s mutex meanwhile.
    fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        // Relaxed: the mutex orders this against the notifier's look.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let guard = self.condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Wakes every sleeper, if there is one. Call after changing the state under its mutex.
    pub(crate) fn notify_all(&self) {
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.condvar.notify_all();
        }
    }
}

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

/// The outcome of one group, shared by its members.
#[derive(Default)]
struct Group {
    outcome: OnceLock<Option<Error>>,
}

/// Whose `fdatasync` covers what, within a handle: a sync covers every record appended before it
/// started, so a writer whose record is already covered, or will be by a sync that started after
/// it, waits for that one instead of queueing another behind it.
#[derive(Default)]
pub(crate) struct Syncs {
    /// A sync is running.
    running: bool,
    /// The newest append of this handle.
    latest: Option<Appended>,
    /// Every record below this sequence number is durable and applied to the view.
    published_below: u64,
    /// Commits this handle appended, and how many of them syncs had covered when they started.
    appended: u64,
    covered_so_far: u64,
    /// How many of this handle's commits each of the last two syncs covered, and how long the
    /// last one took.
    covered: [u64; 2],
    last_took: Duration,
}

impl Syncs {
    /// This handle's commits appended but not covered by a sync yet.
    fn uncovered(&self) -> u64 {
        self.appended - self.covered_so_far
    }
}

/// A record this handle appended, kept so that publishing it needs no read of the log.
pub(crate) struct OwnRecord {
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) ops: Vec<(crate::bytes::Bytes, Option<crate::bytes::Bytes>)>,
}

/// What an append left to do.
#[derive(Clone)]
pub(crate) struct Appended {
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    generation: u64,
    /// The sequence number after the last record appended.
    end_seq: u64,
}

/// The right to append next. Dropping it (an error or a panic) lets the next commit append.
pub(crate) struct Turn<'a> {
    inner: &'a Inner,
    appending: bool,
}

impl Turn<'_> {
    /// Lets the next commit append (this one's sync may still be running).
    fn stop_appending(&mut self) {
        if std::mem::take(&mut self.appending) {
            lock(&self.inner.queue).appending = false;
            self.inner.queue_changed.notify_all();
        }
    }

    /// Records `outcome` for the members of `group`.
    fn finish(&mut self, group: &Group, outcome: Option<Error>) {
        self.stop_appending();
        let queue = lock(&self.inner.queue);
        let _ = group.outcome.set(outcome);
        drop(queue);
        self.inner.queue_changed.notify_all();
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.stop_appending();
    }
}

impl Inner {
    /// Takes the turn to append; the caller has made sure no commit is appending.
    fn take_turn<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> Turn<'a> {
        queue.appending = true;
        Turn {
            inner: self,
            appending: true,
        }
    }

    /// Queues `batch` and returns once the group that carries it is acknowledged. The first
    /// waiting writer to find no commit appending leads: it commits everything queued.
    pub(crate) fn commit(&self, batch: Batch) -> Result<()> {
        let mut queue = lock(&self.queue);
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
                    queue = yield_then_lock(&self.queue, queue);
                    continue;
                }
                let batches = std::mem::take(&mut queue.pending);
                queue.forming = Arc::default();
                let turn = self.take_turn(queue);
                return self.lead(turn, &group, batches);
            }
            queue = self.wait_for_change(&self.queue, queue, &self.queue_changed, &mut spin_until);
        }
    }

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

    /// Commits a group: append, sync, publish, acknowledge.
    fn lead(&self, mut turn: Turn<'_>, group: &Group, batches: Vec<Batch>) -> Result<()> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let appended = self.append(batches)?;
            turn.stop_appending();
            self.make_durable(&appended)
        }))
        .unwrap_or_else(|_| {
            let cause = "a panic during a commit".to_string();
            self.set_poison(cause.clone());
            Err(Error::Poisoned { cause })
        });
        let shared = result.as_ref().err().map(Error::for_group_member);
        turn.finish(group, shared);
        result
    }

    /// Step 1 of a group commit: appends one record per batch.
    fn append(&self, batches: Vec<Batch>) -> Result<Appended> {
        self.check_poison()?;
        let mut writer = lock(&self.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        self.append_records(&mut writer, &guard, batches)?;
        Ok(self.appended(&writer))
    }

    /// Appends one record per batch, and keeps the batches for [`Inner::catch_up`], which then
    /// applies them without reading them back from the log.
    fn append_records(
        &self,
        writer: &mut LogWriter,
        guard: &LockGuard<'_>,
        batches: Vec<Batch>,
    ) -> Result<()> {
        let (first_seq, start) = (writer.next_seq(), writer.end());
        let mut lens = Vec::with_capacity(batches.len());
        let appended = writer.append(|buf, first_seq| {
            for (seq, batch) in (first_seq..).zip(&batches) {
                let before = buf.len();
                encode_record(buf, seq, batch.op_refs(), batch.encoded_len());
                lens.push((buf.len() - before) as u64);
            }
            batches.len() as u64
        });
        if let Err(e) = appended {
            if let Error::Poisoned { cause } = &e {
                self.set_poison(cause.clone());
            }
            return Err(e);
        }
        self.store_lock
            .note_append(guard, writer.generation(), writer.next_seq());
        self.commits
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        let mut own = lock(&self.own_records);
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
        let mut syncs = lock(&self.sync_state);
        syncs.latest = Some(appended.clone());
        syncs.appended += 1;
        // Only a sync about to start waits for more appends (see `make_durable`), and it sleeps
        // only when writers do not spin.
        let gathering = syncs.running && self.options.spin_wait.is_zero();
        drop(syncs);
        if gathering {
            self.more_appended.notify_one();
        }
        appended
    }

    /// Steps 2 and 3: makes the append durable and visible. Returns once a sync that started after
    /// it (whoever ran it; in another process too) finished and the view holds the record. With
    /// [`Durability::Buffered`] there is no sync.
    fn make_durable(&self, appended: &Appended) -> Result<()> {
        if self.options.durability == Durability::Buffered {
            return self.publish(appended.end_seq);
        }
        let mut syncs = lock(&self.sync_state);
        let mut spin_until = None;
        loop {
            if syncs.published_below >= appended.end_seq {
                return Ok(());
            }
            self.check_poison()?;
            // Another process's sync after our append covered our record too.
            if self.store_lock.hint(SYNCED_SEQ) >= appended.end_seq {
                drop(syncs);
                return self.publish(appended.end_seq);
            }
            if syncs.running {
                syncs =
                    self.wait_for_change(&self.sync_state, syncs, &self.sync_done, &mut spin_until);
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
                            .more_appended
                            .wait_timeout(syncs, deadline - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    } else {
                        syncs = yield_then_lock(&self.sync_state, syncs);
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
            syncs = lock(&self.sync_state);
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
            let mut queue = lock(&self.queue);
            (queue.expected, queue.lead_gather) = (expected, lead_gather);
            drop(queue);
            // The next sync may start while this one's commits are published.
            let result = synced.and_then(|()| self.publish(target.end_seq));
            syncs = lock(&self.sync_state);
            if result.is_ok() {
                syncs.published_below = syncs.published_below.max(target.end_seq);
            }
            self.sync_done.notify_all();
            result?;
        }
    }

    /// Step 3: tells every handle the log is committed up to `end_seq`, and applies it here.
    fn publish(&self, end_seq: u64) -> Result<()> {
        self.check_poison()?;
        self.store_lock.raise_hint(COMMITTED_SEQ, end_seq);
        self.catch_up(end_seq)?;
        if self.compaction_due() {
            self.wake_compactor();
        }
        Ok(())
    }

    /// `fdatasync`s a log; a failure poisons the handle, because after a failed `fdatasync` the
    /// kernel may have dropped the dirty pages and a retry could "succeed" without the data.
    pub(crate) fn sync_file(&self, path: &std::path::Path, file: &dyn VfsFile) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data().map_err(|e| {
            let e = Error::io("sync", path, e);
            self.set_poison(e.to_string());
            e
        })
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
        let vfs = self.options.vfs.as_ref();
        loop {
            if self.appended_since(writer)? {
                let scan = wal::scan(
                    writer.file(),
                    writer.path(),
                    writer.end(),
                    writer.next_seq(),
                    u64::MAX,
                    |_| {},
                )?;
                // The file's size, as the scan read it, unless a repair changes it.
                let mut allocated = scan.size;
                if let Stop::Damaged { offset, reason } = scan.stop {
                    let header = wal::read_header(writer.file(), writer.path())?;
                    let repair = wal::repair_tail(
                        vfs,
                        &self.dir,
                        writer.file(),
                        writer.path(),
                        &header,
                        offset,
                        scan.next_seq,
                    )?;
                    self.torn_tails_repaired.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: cut off {} bytes at offset {offset} ({reason}), left by a writer \
                         that died in the middle of an append",
                        writer.path().display(),
                        repair.truncated_bytes
                    );
                    allocated = writer
                        .file()
                        .size()
                        .map_err(|e| Error::io("read the size of", writer.path(), e))?;
                }
                writer.moved_to(scan.end, scan.next_seq, allocated);
            }

            let generation = writer.generation() + 1;
            let path = self.dir.join(wal_name(generation));
            let (file, header) = match wal::open(vfs, &path, OpenMode::ReadWrite) {
                Ok(opened) => opened,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    // A log is removed only after a snapshot of a later generation is installed,
                    // which the hint announces first: without one, ours is still the newest.
                    let removable = self.store_lock.hint(SNAPSHOT_GENERATION) > writer.generation();
                    let unlinked = removable
                        && writer
                            .file()
                            .is_unlinked()
                            .map_err(|e| Error::io("look at", writer.path(), e))?;
                    if !unlinked {
                        break; // this is the newest log
                    }
                    // Compactions elsewhere went past the next log too and removed it: every
                    // record before the newest log is in a snapshot, so go straight there.
                    *writer = self.open_newest_log()?;
                    self.make_name_durable(writer.path())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if header.generation != generation || header.first_seq != writer.next_seq() {
                return Err(Error::corruption(
                    &path,
                    16,
                    format!(
                        "log header says generation {} from sequence {}, but {} ends at \
                         sequence {}",
                        header.generation,
                        header.first_seq,
                        writer.path().display(),
                        writer.next_seq()
                    ),
                ));
            }
            self.make_name_durable(&path)?;
            *writer = LogWriter::new(
                path,
                file,
                generation,
                WAL_HEADER_LEN as u64,
                header.first_seq,
                WAL_HEADER_LEN as u64,
            );
        }
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

    /// About to sync for the store, when the last such sync covered other processes' records
    /// too: gives them a moment to append their next ones (until the log of `generation`
    /// reaches sequence `enough`), so that this sync covers them as well rather than leave them
    /// a sync of their own. Otherwise processes fall into turns, each waiting out the other's
    /// sync. The wait is short (a third of a sync, at most [`MAX_GATHER`]), and yields the CPU
    /// rather than sleep: waking a sleeper would take about as long.
    fn gather_others(&self, generation: u64, enough: u64, last_took: Duration) {
        let deadline = Instant::now() + (last_took / 3).min(MAX_GATHER);
        while self.store_lock.appended_in(generation) < enough && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// Makes `target` durable, sharing `fdatasync`s with writers in other processes: while one
    /// runs, others wait for it rather than queue their own behind it (the disk would run them
    /// one after the other anyway), and the next one covers every record appended meanwhile, by
    /// anyone. Nothing here is trusted for correctness but [`SYNCED_SEQ`], which is raised only
    /// after a successful sync, to what it covered; a sync claimed by a process that died is
    /// given up for dead after a while, and the waiter syncs itself.
    fn sync_for_store(&self, target: &Appended, own: u64, last_took: Duration) -> Result<()> {
        let store = &self.store_lock;
        if !store.is_shared() {
            self.sync_file(&target.path, target.file.as_ref())?;
            store.raise_hint(SYNCED_SEQ, target.end_seq);
            return Ok(());
        }
        let patience = DEAD_SYNC_PATIENCE.max(last_took * 8);
        let mut waiting_for: Option<(u64, Instant)> = None;
        loop {
            if store.hint(SYNCED_SEQ) >= target.end_seq {
                return Ok(()); // another process's sync covered it
            }
            self.check_poison()?;
            // The count first: a sync that ends after this read wakes the wait below.
            let finished = store.syncs_finished();
            let running = store.hint(SYNC_RUNNING);
            if running != 0 {
                let since = match waiting_for {
                    Some((token, since)) if token == running => since,
                    _ => waiting_for.insert((running, Instant::now())).1,
                };
                // Past a normal sync's time, ask whether its process still exists: a killed
                // one would otherwise hold every writer up for the whole patience.
                let waited = since.elapsed();
                let overdue = waited >= last_took * 2;
                if overdue && claimer_is_gone(running, store.pid()) {
                    log::warn!(
                        "{}: the process that claimed the running sync is gone; syncing here",
                        target.path.display()
                    );
                } else if waited < patience {
                    let slice = if overdue { patience } else { last_took * 2 };
                    store.wait_for_sync(finished, (patience - waited).min(slice));
                    continue;
                } else {
                    log::warn!(
                        "{}: a sync by another process has not finished in {patience:?}; \
                         syncing here",
                        target.path.display()
                    );
                }
            }
            let token = sync_token(store.pid());
            if !store.claim_sync(running, token) {
                continue;
            }
            let synced_before = store.hint(SYNCED_SEQ);
            let others = store.hint(LAST_SYNC_OTHERS);
            if others > 0 {
                self.gather_others(target.generation, synced_before + own + others, last_took);
            }
            // Everything appended to this log so far is written: the sync covers it all.
            let covers = store.appended_in(target.generation).max(target.end_seq);
            let synced = self.sync_file(&target.path, target.file.as_ref());
            if synced.is_ok() {
                store.raise_hint(SYNCED_SEQ, covers);
                let others = (covers - synced_before.min(covers)).saturating_sub(own);
                store.set_hint(LAST_SYNC_OTHERS, others);
            }
            store.end_sync(token);
            return synced;
        }
    }

    /// Before appending to a log another process created: syncs the directory, since that
    /// process may have died between renaming the log into place and syncing the directory, and a
    /// power cut would then take the log, and whatever we acknowledged in it, away. A failure
    /// poisons the handle, as a failed `fdatasync` does: a retry could report success with the
    /// name still not durable.
    fn make_name_durable(&self, log: &std::path::Path) -> Result<()> {
        self.options.vfs.sync_dir(&self.dir).map_err(|e| {
            let e = Error::io("sync the directory of", log, e);
            self.set_poison(e.to_string());
            e
        })
    }

    /// Whether anything lies at the writer's end of the log (another process appended, or left a
    /// torn record). Reads only the next record's length field: a zero means nothing, since a
    /// write cut short by a kill leaves a prefix of its record, length first. (Asking
    /// for the file's size instead would make the kernel give the next write a fine-grained
    /// timestamp, and so an inode write at every `fdatasync`.)
    fn appended_since(&self, writer: &LogWriter) -> Result<bool> {
        let mut length = [0u8; 4];
        let mut filled = 0;
        while filled < length.len() {
            match writer
                .file()
                .read_at(&mut length[filled..], writer.end() + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Err(Error::io("read", writer.path(), e)),
            }
        }
        Ok(length[..filled].iter().any(|&b| b != 0))
    }

    /// Holding `LOCK`: a writer at the start of the newest log (the caller scans it to its end).
    fn open_newest_log(&self) -> Result<LogWriter> {
        let vfs = self.options.vfs.as_ref();
        let names = vfs
            .list(&self.dir)
            .map_err(|e| Error::io("list the store directory", &self.dir, e))?;
        let newest = names
            .iter()
            .filter_map(|name| match classify(name) {
                StoreFile::Wal(generation) => Some(generation),
                _ => None,
            })
            .max()
            .ok_or_else(|| Error::corruption(&self.dir, 0, "the store has no log"))?;
        let path = self.dir.join(wal_name(newest));
        let (file, header) = wal::open(vfs, &path, OpenMode::ReadWrite)?;
        Ok(LogWriter::new(
            path,
            file,
            header.generation,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            WAL_HEADER_LEN as u64,
        ))
    }

    /// Holding the writer and `LOCK`, after [`Inner::follow_the_log`]: makes every record in the
    /// log durable and applies it to the view, so that the view is the whole committed state.
    /// (Records appended by commits still syncing, here or elsewhere, are covered by this sync.)
    pub(crate) fn settle(&self, writer: &LogWriter) -> Result<()> {
        if lock(&self.position).next_seq < writer.next_seq() {
            self.sync_file(writer.path(), writer.file())?;
            self.store_lock.raise_hint(SYNCED_SEQ, writer.next_seq());
            self.store_lock.raise_hint(COMMITTED_SEQ, writer.next_seq());
            self.catch_up(writer.next_seq())?;
        }
        Ok(())
    }

    /// Runs `body` holding the writer and `LOCK`, on the whole committed state, then commits the
    /// batch it returns (if any) in its turn: the core of [`Db::transaction`](crate::Db::transaction).
    pub(crate) fn exclusively<T, E: From<Error>>(
        &self,
        body: impl FnOnce() -> std::result::Result<(T, Batch), E>,
    ) -> std::result::Result<T, E> {
        self.check_poison()?;
        let queue = {
            let mut queue = lock(&self.queue);
            let mut spin_until = None;
            while queue.appending {
                queue =
                    self.wait_for_change(&self.queue, queue, &self.queue_changed, &mut spin_until);
            }
            queue
        };
        let mut turn = self.take_turn(queue);
        let mut writer = lock(&self.writer);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::testing::campaign::{dump, open};
    use crate::testing::sim::SimVfs;

    fn one_put(key: &str) -> Vec<Batch> {
        let mut batch = Batch::new();
        batch.put(key, "v");
        vec![batch]
    }

    /// A store-wide sync covers what other processes appended to the same log before it started
    /// (raising the synced sequence over their records, which a power cut then keeps), but never
    /// records in a newer log, which the file it syncs does not hold.
    #[test]
    fn a_store_wide_sync_covers_other_processes_appends_to_its_log_and_no_newer_one() {
        let vfs = SimVfs::new();
        let (a, b) = (open(&vfs).expect("open"), open(&vfs).expect("open"));
        a.put("0", "v").expect("put");
        let mine = a.inner.append(one_put("a")).expect("append");
        let theirs = b.inner.append(one_put("b")).expect("append");
        assert!(theirs.end_seq > mine.end_seq);
        a.inner
            .sync_for_store(&mine, 1, Duration::ZERO)
            .expect("sync");
        assert_eq!(a.inner.store_lock.hint(SYNCED_SEQ), theirs.end_seq);
        let image = vfs.crash_keeping(0);
        let keys: Vec<_> = dump(&open(&image).expect("reopen")).into_keys().collect();
        assert_eq!(keys, [b"0".to_vec(), b"a".to_vec(), b"b".to_vec()]);

        // Now the other process cuts a new log and appends to it between this process's append
        // and its sync. (The cut makes the old log durable and says so; the sync below runs as
        // if it had looked before that.)
        let mine = a.inner.append(one_put("c")).expect("append");
        b.compact().expect("compact");
        let theirs = b.inner.append(one_put("d")).expect("append");
        assert!(theirs.generation > mine.generation);
        let synced = mine.end_seq - 1;
        {
            let guard = a.inner.store_lock.exclusive().expect("lock");
            a.inner.store_lock.correct_hint(&guard, SYNCED_SEQ, synced);
        }
        a.inner
            .sync_for_store(&mine, 1, Duration::ZERO)
            .expect("sync");
        assert!(
            a.inner.store_lock.hint(SYNCED_SEQ) < theirs.end_seq,
            "a sync of generation {} claimed a record of generation {} (synced sequence {synced} \
             before)",
            mine.generation,
            theirs.generation
        );
    }

    /// A writer that finds another process's sync running waits for it, and when that sync
    /// covers its record, acknowledges without a sync of its own.
    #[test]
    fn a_writer_waits_for_another_processs_sync_and_shares_it() {
        let vfs = SimVfs::new();
        let (waiter, other) = (open(&vfs).expect("open"), open(&vfs).expect("open"));
        waiter.put("0", "v").expect("put");
        let token = sync_token(other.inner.store_lock.pid());
        assert!(other.inner.store_lock.claim_sync(0, token));
        let syncs_before = waiter.stats().expect("stats").syncs;
        let (done, finished) = mpsc::channel();
        let writer = waiter.clone();
        std::thread::spawn(move || done.send(writer.put("k", "v")));
        // Once the waiter waits (its record is in the log), the other process syncs the log and
        // ends its sync.
        while vfs.shared_waiters() == 0 {
            std::thread::yield_now();
        }
        {
            let log = lock(&other.inner.writer);
            other.inner.sync_file(log.path(), log.file()).expect("sync");
            let end = other.inner.store_lock.appended_in(log.generation());
            other.inner.store_lock.raise_hint(SYNCED_SEQ, end);
        }
        other.inner.store_lock.end_sync(token);
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the put returned")
            .expect("put");
        assert_eq!(
            waiter.stats().expect("stats").syncs,
            syncs_before,
            "the waiter synced itself instead of sharing the other process's sync"
        );
        assert_eq!(waiter.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    /// A claim names its process, so that writers can take over at once from a killed one.
    #[test]
    fn a_claim_names_its_process_and_a_gone_process_is_recognised() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let gone = u64::from(child.id());
        child.wait().expect("wait");
        let with_pid = |pid: u64| (1 << 63) | (pid << 32) | 7;
        let own = std::process::id();
        assert!(claimer_is_gone(with_pid(gone), own));
        assert!(!claimer_is_gone(with_pid(1), own), "init is never gone");
        assert!(
            !claimer_is_gone(sync_token(own), own),
            "nor is this process"
        );
        assert_eq!(sync_token(own) >> 32 & 0x7fff_ffff, u64::from(own));
        let db = open(&SimVfs::new()).expect("open");
        assert_eq!(db.inner.store_lock.pid(), own, "a handle knows its process");
    }

    /// A claim that never ends (its process died, or, as here, it names a process that cannot be
    /// checked: this one) holds writers up only for a while: then one takes it over and syncs.
    #[test]
    fn a_sync_claimed_by_a_dead_process_is_taken_over() {
        let vfs = SimVfs::new();
        let db = open(&vfs).expect("open");
        db.put("0", "v").expect("put");
        assert!(
            db.inner
                .store_lock
                .claim_sync(0, sync_token(db.inner.store_lock.pid()))
        );
        let (done, finished) = mpsc::channel();
        let writer = db.clone();
        std::thread::spawn(move || done.send(writer.put("k", "v")));
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the put returned despite the dead claim")
            .expect("put");
        assert_eq!(db.inner.store_lock.hint(SYNC_RUNNING), 0);
        let image = vfs.crash_keeping(0);
        assert_eq!(
            open(&image)
                .expect("reopen")
                .get("k")
                .expect("get")
                .as_deref(),
            Some(&b"v"[..])
        );
    }
}
