//! Sharing `fdatasync`s across processes: a commit's sync is claimed for the whole store in the
//! hint page, so that writers of other processes wait for it rather than queue their own behind it
//! (the disk would run them one after the other anyway), and the next sync covers every record
//! appended meanwhile, by anyone. Nothing here is trusted for correctness but [`SYNCED_SEQ`],
//! which is raised only after a successful sync, to what it covered.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::Store;
use crate::error::Result;
use crate::locking::{LAST_SYNC_OTHERS, SYNC_RUNNING, SYNCED_SEQ};

use super::durability::Appended;

/// How long a store-wide sync may run before others give it up for dead (its process killed),
/// at the least; more if syncs here are slow.
const DEAD_SYNC_PATIENCE: Duration = Duration::from_millis(100);

/// The most that patience grows to with slow syncs: a writer never waits for others' claims
/// much longer than twice this (a claim given up early costs one extra sync, nothing more).
const MAX_SYNC_PATIENCE: Duration = Duration::from_secs(1);

/// The longest [`Store::gather_others`] waits for other processes' appends.
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

impl Store {
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
    pub(super) fn sync_for_store(
        &self,
        target: &Appended,
        own: u64,
        last_took: Duration,
    ) -> Result<()> {
        let store = &self.store_lock;
        if !store.is_shared() {
            self.sync_file(&target.path, target.file.as_ref())?;
            store.raise_hint(SYNCED_SEQ, target.end_seq);
            return Ok(());
        }
        let patience = DEAD_SYNC_PATIENCE.max(last_took * 8).min(MAX_SYNC_PATIENCE);
        // Since when this writer waits for claims, whichever: a claim that keeps changing (a
        // co-tenant writing the word, a damaged page) must not hold it up for ever.
        let mut waiting_since: Option<Instant> = None;
        let mut waiting_for: Option<(u64, Instant)> = None;
        loop {
            if store.synced_through(target.end_seq) {
                return Ok(()); // another process's sync covered it
            }
            self.poison.check()?;
            // The count first: a sync that ends after this read wakes the wait below.
            let finished = store.syncs_finished();
            let running = store.hint(SYNC_RUNNING);
            if running != 0 {
                let since = match waiting_for {
                    Some((token, since)) if token == running => since,
                    _ => waiting_for.insert((running, Instant::now())).1,
                };
                let all_along = *waiting_since.get_or_insert(since);
                if all_along.elapsed() >= patience * 2 {
                    log::warn!(
                        "{}: the store-wide sync claim has not settled in {:?}; syncing here \
                         without it",
                        target.path.display(),
                        patience * 2
                    );
                    return self.sync_covering(target, own, None);
                }
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
            let others = store.hint(LAST_SYNC_OTHERS);
            if others > 0 {
                let synced_before = store.hint(SYNCED_SEQ);
                self.gather_others(target.generation, synced_before + own + others, last_took);
            }
            return self.sync_covering(target, own, Some(token));
        }
    }

    /// Syncs the log of `target` and raises the synced word over everything appended to it so
    /// far, by anyone; ends the claim `token` if this sync runs under one.
    fn sync_covering(&self, target: &Appended, own: u64, token: Option<u64>) -> Result<()> {
        let store = &self.store_lock;
        let synced_before = store.hint(SYNCED_SEQ);
        // Everything appended to this log so far is written: the sync covers it all.
        let covers = store.appended_in(target.generation).max(target.end_seq);
        let synced = self.sync_file(&target.path, target.file.as_ref());
        if synced.is_ok() {
            store.raise_hint(SYNCED_SEQ, covers);
            let others = (covers - synced_before.min(covers)).saturating_sub(own);
            store.set_hint(LAST_SYNC_OTHERS, others);
        }
        if let Some(token) = token {
            store.end_sync(token);
        }
        synced
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::batch::Batch;
    use crate::sync::lock;
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
        let mine = a.store.append(one_put("a")).expect("append");
        let theirs = b.store.append(one_put("b")).expect("append");
        assert!(theirs.end_seq > mine.end_seq);
        a.store
            .sync_for_store(&mine, 1, Duration::ZERO)
            .expect("sync");
        assert_eq!(a.store.store_lock.hint(SYNCED_SEQ), theirs.end_seq);
        let image = vfs.crash_keeping(0);
        let keys: Vec<_> = dump(&open(&image).expect("reopen")).into_keys().collect();
        assert_eq!(keys, [b"0".to_vec(), b"a".to_vec(), b"b".to_vec()]);

        // Now the other process cuts a new log and appends to it between this process's append
        // and its sync. (The cut makes the old log durable and says so; the sync below runs as
        // if it had looked before that.)
        let mine = a.store.append(one_put("c")).expect("append");
        b.compact().expect("compact");
        let theirs = b.store.append(one_put("d")).expect("append");
        assert!(theirs.generation > mine.generation);
        let synced = mine.end_seq - 1;
        {
            let guard = a.store.store_lock.exclusive().expect("lock");
            a.store.store_lock.correct_hint(&guard, SYNCED_SEQ, synced);
        }
        a.store
            .sync_for_store(&mine, 1, Duration::ZERO)
            .expect("sync");
        assert!(
            a.store.store_lock.hint(SYNCED_SEQ) < theirs.end_seq,
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
        let token = sync_token(other.store.store_lock.pid());
        assert!(other.store.store_lock.claim_sync(0, token));
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
            let log = lock(&other.store.commit.writer);
            other.store.sync_file(log.path(), log.file()).expect("sync");
            let end = other.store.store_lock.appended_in(log.generation());
            other.store.store_lock.raise_hint(SYNCED_SEQ, end);
        }
        other.store.store_lock.end_sync(token);
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
        assert_eq!(db.store.store_lock.pid(), own, "a handle knows its process");
    }

    /// A claim that never ends (its process died, or, as here, it names a process that cannot be
    /// checked: this one) holds writers up only for a while: then one takes it over and syncs.
    #[test]
    fn a_sync_claimed_by_a_dead_process_is_taken_over() {
        let vfs = SimVfs::new();
        let db = open(&vfs).expect("open");
        db.put("0", "v").expect("put");
        assert!(
            db.store
                .store_lock
                .claim_sync(0, sync_token(db.store.store_lock.pid()))
        );
        let (done, finished) = mpsc::channel();
        let writer = db.clone();
        std::thread::spawn(move || done.send(writer.put("k", "v")));
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the put returned despite the dead claim")
            .expect("put");
        assert_eq!(db.store.store_lock.hint(SYNC_RUNNING), 0);
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
