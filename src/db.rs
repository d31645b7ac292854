//! The database handle: options, reads, and the commit path (group commit over the log).

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::batch::{Batch, check_key, check_value};
use crate::bytes::Bytes;
use crate::commit::{OwnRecord, Queue, Signal, Syncs};
use crate::error::{Error, Result};
use crate::follow::Position;
use crate::format::WAL_HEADER_LEN;
use crate::io::{StdVfs, Vfs};
use crate::locking::{Access, COMMITTED_SEQ, CompactionLock, SNAPSHOT_GENERATION, StoreLock};
use crate::recovery::{self, RecoveryReport};
use crate::view::{Chunk, View};
use crate::wal::LogWriter;

/// When a write is considered done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// A write returns only once it is on stable storage (`fdatasync`): it survives power loss.
    /// Concurrent writers share one sync.
    #[default]
    Immediate,
    /// A write returns once it is in the operating system's page cache: it survives the process
    /// being killed, but not a power loss or kernel crash. [`Db::flush`] makes it durable.
    Buffered,
}

/// Default for [`Options::compaction_min_wal_bytes`]: 16 MiB.
pub const DEFAULT_COMPACTION_MIN_WAL_BYTES: u64 = 16 << 20;
/// Default for [`Options::compaction_ratio`].
pub const DEFAULT_COMPACTION_RATIO: f64 = 0.25;
/// Default for [`Options::spin_wait`]: 500 µs, a little over two `fdatasync`s of a fast SSD.
pub const DEFAULT_SPIN_WAIT: Duration = Duration::from_micros(500);
/// Closing compacts only stores whose snapshot is at most this large (256 MiB): a compaction
/// rewrites the whole snapshot, about 1 s per 100 MB here, and beyond that a close would keep its
/// caller waiting much longer than the replay it saves the next open.
const CLOSE_COMPACTION_MAX_SNAPSHOT: u64 = 256 << 20;
/// The most [`Options::spin_wait`] takes (a deadline that far off cannot overflow an `Instant`).
const MAX_SPIN_WAIT: Duration = Duration::from_secs(1);

/// How to open a store. Start from [`Options::new`], finish with [`Options::open`].
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    create_if_missing: bool,
    pub(crate) compaction_min_wal_bytes: u64,
    pub(crate) compaction_ratio: f64,
    pub(crate) background_compaction: bool,
    pub(crate) compact_on_close: bool,
    /// Closing compacts only stores whose snapshot is at most this large.
    pub(crate) close_compaction_max_snapshot: u64,
    pub(crate) spin_wait: Duration,
    exclusive: bool,
    pub(crate) read_only: bool,
    pub(crate) vfs: Arc<dyn Vfs>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("create_if_missing", &self.create_if_missing)
            .field("compaction_min_wal_bytes", &self.compaction_min_wal_bytes)
            .field("compaction_ratio", &self.compaction_ratio)
            .field("background_compaction", &self.background_compaction)
            .field("compact_on_close", &self.compact_on_close)
            .field("spin_wait", &self.spin_wait)
            .field("exclusive", &self.exclusive)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// The defaults: [`Durability::Immediate`], create the store if it is missing, compact in the
    /// background once the log outgrows both 16 MiB and a quarter of the snapshot.
    pub fn new() -> Self {
        Options {
            durability: Durability::Immediate,
            create_if_missing: true,
            compaction_min_wal_bytes: DEFAULT_COMPACTION_MIN_WAL_BYTES,
            compaction_ratio: DEFAULT_COMPACTION_RATIO,
            background_compaction: true,
            compact_on_close: true,
            close_compaction_max_snapshot: CLOSE_COMPACTION_MAX_SNAPSHOT,
            spin_wait: DEFAULT_SPIN_WAIT,
            exclusive: false,
            read_only: false,
            vfs: Arc::new(StdVfs),
        }
    }

    /// When writes are considered done (default [`Durability::Immediate`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether [`Options::open`] creates a missing directory (default `true`). With `false`, a
    /// missing directory is a [`Error::NotAStore`].
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Compaction starts once the log is larger than this many bytes *and* larger than
    /// [`compaction_ratio`](Options::compaction_ratio) times the snapshot (default 16 MiB).
    /// The heap held is about 1.5 bytes per log byte, up to twice over while a compaction
    /// merges the previous generation.
    pub fn compaction_min_wal_bytes(mut self, bytes: u64) -> Self {
        self.compaction_min_wal_bytes = bytes;
        self
    }

    /// Compaction starts once the log is larger than this fraction of the snapshot (and than
    /// [`compaction_min_wal_bytes`](Options::compaction_min_wal_bytes)). The default, 0.25, keeps
    /// the files under 1.25× the live data between compactions; a higher ratio rewrites the
    /// snapshot less often but holds more log in memory.
    pub fn compaction_ratio(mut self, ratio: f64) -> Self {
        self.compaction_ratio = ratio.max(0.0);
        self
    }

    /// Whether a background thread compacts when the triggers fire (default `true`). With
    /// `false`, only [`Db::compact`] compacts (not even closing, whatever
    /// [`compact_on_close`](Options::compact_on_close) says).
    pub fn background_compaction(mut self, enabled: bool) -> Self {
        self.background_compaction = enabled;
        self
    }

    /// Whether closing the handle may compact (default `true`), so that the next open maps a
    /// snapshot instead of replaying the log: the next open of a store loaded with 1,000,000
    /// keys took 0.2 ms instead of 0.3–0.4 s.
    ///
    /// When the last clone of the handle is dropped, a compaction running in the background is
    /// finished rather than abandoned; then, if this handle itself appended at least a quarter
    /// of the compaction trigger to the live log (`max(compaction_min_wal_bytes / 4,
    /// compaction_ratio / 4 × snapshot)`, 4 MiB by default), the drop compacts before it returns.
    /// That takes about as long as [`Db::compact`], a second or so per 100 MB of store on an
    /// SSD, so it is done only while the snapshot is at most 256 MiB: a larger store's next open
    /// replays its log instead. A handle that only read, or wrote little, closes at once. A
    /// failure is logged and loses nothing: the log still holds every write. With `false`,
    /// closing abandons a running compaction at its next check and never starts one.
    pub fn compact_on_close(mut self, enabled: bool) -> Self {
        self.compact_on_close = enabled;
        self
    }

    /// How long a writer thread that waits for another thread's commit or `fdatasync` keeps
    /// yielding the CPU and looking again before it sleeps (default [`DEFAULT_SPIN_WAIT`]).
    ///
    /// A sleeping thread takes 20–40 µs to wake on a virtual machine, and after each shared sync
    /// every writer it covered wakes in turn; looking instead of sleeping cut that gap, and
    /// durable puts from 4 threads rose by a fifth to a half, from 8 threads by a third or more.
    /// The price is CPU: with 4 writer threads about 1.7× the CPU time per put, with 2 threads
    /// (where spinning gains nothing) about 2× (DECISIONS 39). A single writer never waits, so
    /// it never spins. `Duration::ZERO` sleeps at once; more than a second counts as a second.
    pub fn spin_wait(mut self, spin: Duration) -> Self {
        self.spin_wait = spin.min(MAX_SPIN_WAIT);
        self
    }

    /// With `true`, this handle keeps the store to itself: it holds `LOCK` from open to close, and
    /// any other open (in this or another process) fails with [`Error::Locked`] naming the lock
    /// file, as this one does if the store is open elsewhere. Needed on file systems where
    /// processes cannot share a store (NFS, SMB, no `flock`), where a default open fails with
    /// [`Error::LockingUnsupported`]. Saves the check for other processes' commits at every
    /// read (two atomic loads), and the system calls with which every commit follows other
    /// processes' appends (`flock` twice, a 4-byte `pread`, an `openat`): about 5 % of a
    /// single-thread durable put on a disk that syncs in 0.2 ms (DECISIONS 46).
    /// Default `false`: any number of processes may open the store and read and write it.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// With `true`, the handle never writes to the store's files (no repair, no compaction, no
    /// new files): writes fail with [`Error::ReadOnly`], and the store must exist. It still sees
    /// every commit other processes make. Default `false`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Lowers the snapshot size up to which closing compacts (tests).
    #[cfg(test)]
    pub(crate) fn close_compaction_max_snapshot(mut self, bytes: u64) -> Self {
        self.close_compaction_max_snapshot = bytes;
        self
    }

    /// Runs on another file system (the simulated disk in tests and fuzzing).
    #[cfg(any(test, feature = "__testing"))]
    pub(crate) fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = vfs;
        self
    }

    /// Opens the store in directory `path`, recovering from any crash.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Db> {
        let dir = path.as_ref().to_owned();
        let access = match (self.read_only, self.exclusive) {
            (true, _) => Access::ReadOnly,
            (false, true) => Access::Exclusive,
            (false, false) => Access::Shared,
        };
        let recovered = recovery::open(self.vfs.as_ref(), &dir, self.create_if_missing, access)?;
        let seen_seq = recovered.store_lock.hint(COMMITTED_SEQ);
        let seen_snapshot = recovered.store_lock.hint(SNAPSHOT_GENERATION);
        let background = self.background_compaction && access != Access::ReadOnly;
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            dir,
            state: ShardedLock::new(recovered.view),
            position: Mutex::new(recovered.position),
            seen_seq: AtomicU64::new(seen_seq),
            seen_snapshot: AtomicU64::new(seen_snapshot),
            queue: Mutex::new(Queue::default()),
            queue_changed: Signal::default(),
            own_records: Mutex::default(),
            sync_state: Mutex::new(Syncs::default()),
            sync_done: Signal::default(),
            more_appended: Condvar::new(),
            writer: Mutex::new(recovered.writer),
            compaction: Mutex::new(()),
            poison: Mutex::new(None),
            commits: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            torn_tails_repaired: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            compactor: Mutex::new(Compactor {
                wake: None,
                thread: None,
                allowed: background,
            }),
            report: recovered.report,
            store_lock: recovered.store_lock,
            compaction_lock: recovered.compaction_lock,
            options: self,
        });
        Ok(Db {
            _owner: Arc::new(Owner {
                inner: Arc::clone(&inner),
            }),
            inner,
        })
    }
}

/// Figures about a store, from [`Db::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The current generation (the live log is `wal-<generation>`).
    pub generation: u64,
    /// Number of keys in the store.
    pub keys: u64,
    /// Size of the current snapshot file in bytes (0 if there is none yet).
    pub snapshot_bytes: u64,
    /// Keys in the current snapshot.
    pub snapshot_keys: u64,
    /// Length of the live log in bytes (its logical end; preallocated space not included).
    pub wal_bytes: u64,
    /// Approximate heap bytes held by the in-memory view of the log (and of the previous log
    /// while a compaction merges it).
    pub memtable_bytes: u64,
    /// The sequence number the next committed batch will carry.
    pub next_sequence: u64,
    /// Batches committed through this handle (and its clones) since it was opened.
    pub commits: u64,
    /// `fdatasync` calls made for those commits and flushes; fewer than `commits` when concurrent
    /// writers shared a sync.
    pub syncs: u64,
    /// Compactions completed by this handle since it was opened.
    pub compactions: u64,
    /// Torn records that writers killed in the middle of an append left at the end of the log,
    /// cut off by this handle before it appended (since it was opened).
    pub torn_tails_repaired: u64,
    /// When writes are considered done.
    pub durability: Durability,
    /// What recovery found and did when the store was opened.
    pub recovery: RecoveryReport,
}

/// What [`Db::verify`] checked, all of it found intact.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The snapshot checked, if the store has one.
    pub snapshot: Option<PathBuf>,
    /// Entries in it.
    pub snapshot_entries: u64,
    /// Its size in bytes.
    pub snapshot_bytes: u64,
    /// The live log checked.
    pub wal: PathBuf,
    /// Records in it.
    pub wal_records: u64,
    /// Its logical length in bytes.
    pub wal_bytes: u64,
    /// Quarantine files in the store (left by an earlier recovery; inspect them).
    pub quarantine_files: Vec<PathBuf>,
}

/// An open store. Cheap to clone; clones share everything. `Send + Sync`.
///
/// Readers never wait for a writer's `fdatasync`: a write becomes visible only once it is durable
/// (as [`Durability`] defines it), and then at once to every clone.
///
/// Dropping the last clone closes the store. A handle that wrote much of the log compacts it
/// first, which can take a second or so per 100 MB of store ([`Options::compact_on_close`]).
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
    /// Shared by the user's clones only (not by the compaction thread): when the last one goes,
    /// the compaction thread is stopped and joined, and the log may be compacted
    /// ([`Options::compact_on_close`]), so the store is closed when `drop` returns.
    _owner: Arc<Owner>,
}

struct Owner {
    inner: Arc<Inner>,
}

/// The background compaction thread, started the first time a compaction is due (an open that
/// only reads never pays for a thread).
pub(crate) struct Compactor {
    /// Wakes the thread; `None` until it starts, and again once the handle closes.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Whether a thread may (still) be started: background compaction is on and the handle is
    /// open.
    allowed: bool,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let options = &self.inner.options;
        let compacts = options.compact_on_close && options.background_compaction;
        if !compacts {
            // A running merge abandons its work at its next check.
            self.inner.cancel.store(true, Ordering::Relaxed);
        }
        let thread = {
            let mut compactor = lock(&self.inner.compactor);
            compactor.allowed = false;
            // Closing the channel ends the compaction thread's wait.
            compactor.wake = None;
            compactor.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if compacts {
            self.inner.compact_before_closing();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    /// What readers see: only committed (durable) writes, in log order. A reader locks only its
    /// thread's shard, so readers on different cores share no lock word (DECISIONS 47).
    pub(crate) state: ShardedLock<View>,
    /// How far `state` has applied the log. Lock order: `writer`, then `LOCK`, then `position`,
    /// then `state`.
    pub(crate) position: Mutex<Position>,
    /// The hint words as of the last time this handle caught up: while the shared page still
    /// holds these, no other process has committed or compacted since.
    pub(crate) seen_seq: AtomicU64,
    pub(crate) seen_snapshot: AtomicU64,
    /// Writers waiting to be committed by a group leader.
    pub(crate) queue: Mutex<Queue>,
    pub(crate) queue_changed: Signal,
    /// Records this handle appended and has not applied to its view yet, by sequence number.
    pub(crate) own_records: Mutex<std::collections::BTreeMap<u64, OwnRecord>>,
    /// Which records are durable, and whether a sync is running.
    pub(crate) sync_state: Mutex<Syncs>,
    pub(crate) sync_done: Signal,
    /// A record was appended (wakes a sync that waits to cover more writers).
    pub(crate) more_appended: Condvar,
    /// The appending end of the log, held by a group leader while it appends.
    pub(crate) writer: Mutex<LogWriter>,
    /// Held for the whole of a compaction: one at a time in this handle (the compaction lock
    /// file does the same across handles).
    pub(crate) compaction: Mutex<()>,
    /// Set after a failed sync: the handle refuses writes from then on.
    poison: Mutex<Option<String>>,
    pub(crate) commits: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) torn_tails_repaired: AtomicU64,
    /// Asks a running compaction to give up (the handle is closing).
    pub(crate) cancel: AtomicBool,
    /// The background compaction thread.
    compactor: Mutex<Compactor>,
    /// This handle's own `Arc`, for the compaction thread it starts.
    me: Weak<Inner>,
    report: RecoveryReport,
    /// `LOCK` and the hint page.
    pub(crate) store_lock: StoreLock,
    pub(crate) compaction_lock: CompactionLock,
}

/// Starts the compaction thread; returns what wakes it.
fn spawn_compactor(weak: Weak<Inner>) -> std::io::Result<(SyncSender<()>, JoinHandle<()>)> {
    let (wake, woken): (SyncSender<()>, Receiver<()>) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("sturdykv-compaction".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = inner.compact_if_due() {
                    log::error!(
                        "background compaction of {} failed: {e}",
                        inner.dir.display()
                    );
                }
            }
        })?;
    Ok((wake, thread))
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.options.durability)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if missing) the store in directory `path` with default [`Options`].
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Options::new().open(path)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The value of `key`, if present. Values read from the snapshot are not copied.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.refresh()?;
        self.inner.read_state().get(key.as_ref())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Sets `key` to `value`. Durable when it returns (with [`Durability::Immediate`]).
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check_key(key)?;
        check_value(value)?;
        let mut batch = Batch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Removes `key`; removing an absent key is not an error.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        check_key(key.as_ref())?;
        let mut batch = Batch::new();
        batch.delete(key);
        self.write(batch)
    }

    /// Applies every operation of `batch` atomically, as one log record.
    pub fn write(&self, batch: Batch) -> Result<()> {
        batch.check_limits()?;
        self.inner.check_writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.commit(batch)
    }

    /// Makes every write so far durable: a no-op cost for [`Durability::Immediate`], an
    /// `fdatasync` for [`Durability::Buffered`].
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        let writer = lock(&self.inner.writer);
        self.inner.sync_file(writer.path(), writer.file())?;
        self.inner
            .store_lock
            .raise_hint(crate::locking::SYNCED_SEQ, writer.next_seq());
        Ok(())
    }

    /// Compacts now: cuts a new generation and merges the log into a new snapshot. Returns once
    /// the new snapshot is durable and the old files are gone. Writers keep going meanwhile.
    pub fn compact(&self) -> Result<()> {
        self.compact_with_progress(|_, _| {})
    }

    /// [`Db::compact`], calling `progress(entries_done, entries_total)` as the merge advances.
    pub fn compact_with_progress(&self, progress: impl FnMut(u64, u64)) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.compact(progress)
    }

    /// Reads back and checks every byte of the snapshot (every block's checksum and structure, key
    /// order, counts) and of the live log (every record's checksum and sequence number, and zeros
    /// after its end). Calls `progress(bytes_done, bytes_total)`. Writers wait while the log is
    /// checked; compactions wait for the whole check.
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        let _no_compaction = lock(&self.inner.compaction);
        self.inner.refresh()?;
        let snapshot = self.inner.read_state().snapshot.clone();
        let snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.file_bytes());
        // No writer, in any process, appends while the log is checked.
        let _no_appends = self.inner.store_lock.shared()?;
        let (path, file) = self.inner.newest_log()?;
        let (path, file) = (path.as_path(), file.as_ref());
        let wal_bytes = file
            .size()
            .map_err(|e| Error::io("read the size of", path, e))?;
        let total = snapshot_bytes + wal_bytes;
        if let Some(s) = &snapshot {
            s.verify(|done| progress(done, total))?;
        }
        let header = crate::wal::read_header(file, path)?;
        let mut wal_records = 0;
        let scan = crate::wal::scan(
            file,
            path,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            u64::MAX,
            |_| wal_records += 1,
        )?;
        if let crate::wal::Stop::Damaged { offset, reason } = scan.stop {
            return Err(Error::corruption(path, offset, reason));
        }
        if let Some(at) = crate::wal::first_nonzero(file, path, scan.end, scan.size)? {
            return Err(Error::corruption(
                path,
                at,
                "non-zero bytes after the end of the log",
            ));
        }
        progress(total, total);
        Ok(VerifyReport {
            snapshot: snapshot.as_ref().map(|s| s.path().to_owned()),
            snapshot_entries: snapshot.as_ref().map_or(0, |s| s.len()),
            snapshot_bytes,
            wal: path.to_owned(),
            wal_records,
            wal_bytes: scan.end,
            quarantine_files: self.inner.report.quarantine_files.clone(),
        })
    }

    /// The entries with keys in `range`, in key order (`.rev()` for descending).
    ///
    /// The iterator does not hold a lock between items: it reads the store a chunk of entries at a
    /// time, so it never blocks writers. Each key in the range is returned at most once, in order;
    /// writes made while it runs may or may not be seen.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let owned = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(Bytes::from(k.as_ref())),
            Bound::Excluded(k) => Bound::Excluded(Bytes::from(k.as_ref())),
            Bound::Unbounded => Bound::Unbounded,
        };
        Iter::new(
            self.clone(),
            owned(range.start_bound()),
            owned(range.end_bound()),
        )
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        let hi = match prefix_successor(prefix) {
            Some(next) => Bound::Excluded(Bytes::from(next)),
            None => Bound::Unbounded,
        };
        Iter::new(self.clone(), Bound::Included(Bytes::from(prefix)), hi)
    }

    /// Number of keys in the store.
    pub fn len(&self) -> Result<u64> {
        self.inner.refresh()?;
        Ok(self.inner.read_state().live_keys)
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Figures about the store and this handle.
    pub fn stats(&self) -> Result<Stats> {
        self.inner.refresh()?;
        let position = lock(&self.inner.position);
        let state = self.inner.read_state();
        let frozen_bytes = state.frozen.as_ref().map_or(0, |f| f.approximate_bytes());
        Ok(Stats {
            generation: position.generation,
            keys: state.live_keys,
            snapshot_bytes: state.snapshot.as_ref().map_or(0, |s| s.file_bytes()),
            snapshot_keys: state.snapshot.as_ref().map_or(0, |s| s.len()),
            wal_bytes: position.offset,
            memtable_bytes: (state.memtable.approximate_bytes() + frozen_bytes) as u64,
            next_sequence: position.next_seq,
            commits: self.inner.commits.load(Ordering::Relaxed),
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            torn_tails_repaired: self.inner.torn_tails_repaired.load(Ordering::Relaxed),
            durability: self.inner.options.durability,
            recovery: self.inner.report.clone(),
        })
    }
}

impl Inner {
    pub(crate) fn read_state(&self) -> ShardedLockReadGuard<'_, View> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_state(&self) -> ShardedLockWriteGuard<'_, View> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest log: the one this handle reads, or a later one another process cut.
    fn newest_log(&self) -> Result<(PathBuf, Arc<dyn crate::io::VfsFile>)> {
        let position = lock(&self.position);
        let (mut path, mut file) = (position.path.clone(), Arc::clone(&position.file));
        drop(position);
        let vfs = self.options.vfs.as_ref();
        loop {
            let header = crate::wal::read_header(file.as_ref(), &path)?;
            let next = self
                .dir
                .join(crate::layout::wal_name(header.generation + 1));
            match crate::wal::open(vfs, &next, crate::io::OpenMode::Read) {
                Ok((next_file, _)) => (path, file) = (next, next_file),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok((path, file));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Refuses writes through a read-only handle.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        self.check_poison()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*lock(&self.poison) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn set_poison(&self, cause: String) {
        lock(&self.poison).get_or_insert(cause);
    }

    /// Wakes the background compaction thread, starting it the first time (if it is already
    /// awake, it will look again).
    pub(crate) fn wake_compactor(&self) {
        let mut compactor = lock(&self.compactor);
        if compactor.wake.is_none() && compactor.allowed {
            match spawn_compactor(self.me.clone()) {
                Ok((wake, thread)) => {
                    compactor.wake = Some(wake);
                    compactor.thread = Some(thread);
                }
                Err(e) => {
                    // Compaction still happens through `compact()`; the log grows until then.
                    log::error!(
                        "starting the compaction thread for {}: {e}",
                        self.dir.display()
                    );
                    compactor.allowed = false;
                }
            }
        }
        if let Some(wake) = compactor.wake.as_ref() {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The smallest key greater than every key that starts with `prefix`, if there is one.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

/// How many entries an iterator fetches per visit to the store, at first and at most.
const FIRST_CHUNK: usize = 16;
const MAX_CHUNK: usize = 1024;

/// An ordered iterator over a range of the store, from [`Db::range`] or [`Db::prefix`]. Yields
/// `Result<(key, value)>`; iterate backwards with `.rev()` or `next_back`.
pub struct Iter {
    db: Db,
    /// The part of the range not fetched yet.
    lo: Bound<Bytes>,
    hi: Bound<Bytes>,
    /// Fetched from the low end, ascending.
    front: std::vec::IntoIter<(Bytes, Bytes)>,
    /// Fetched from the high end, descending.
    back: std::vec::IntoIter<(Bytes, Bytes)>,
    /// Nothing is left between `lo` and `hi`.
    drained: bool,
    chunk: usize,
}

impl fmt::Debug for Iter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("lo", &self.lo)
            .field("hi", &self.hi)
            .finish_non_exhaustive()
    }
}

impl Iter {
    fn new(db: Db, lo: Bound<Bytes>, hi: Bound<Bytes>) -> Self {
        Iter {
            db,
            lo,
            hi,
            front: Vec::new().into_iter(),
            back: Vec::new().into_iter(),
            drained: false,
            chunk: FIRST_CHUNK,
        }
    }

    /// Fetches the next chunk from one end of the unfetched range.
    fn refill(&mut self, from_front: bool) -> Result<()> {
        self.db.inner.refresh()?;
        let Chunk { entries, horizon } = self.db.inner.read_state().fetch(
            as_slice_bound(&self.lo),
            as_slice_bound(&self.hi),
            from_front,
            self.chunk,
        )?;
        // Only called once that end's buffer is empty.
        if from_front {
            self.front = entries.into_iter();
        } else {
            self.back = entries.into_iter();
        }
        match horizon {
            None => self.drained = true,
            Some(key) if from_front => self.lo = Bound::Excluded(key),
            Some(key) => self.hi = Bound::Excluded(key),
        }
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        Ok(())
    }
}

fn as_slice_bound(bound: &Bound<Bytes>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Iterator for Iter {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.front.len() == 0 && !self.drained {
            if let Err(e) = self.refill(true) {
                self.drained = true;
                return Some(Err(e));
            }
        }
        // Once the middle is drained, what is left of the back chunk comes last.
        self.front.next().or_else(|| self.back.next_back()).map(Ok)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        while self.back.len() == 0 && !self.drained {
            if let Err(e) = self.refill(false) {
                self.drained = true;
                return Some(Err(e));
            }
        }
        self.back.next().or_else(|| self.front.next_back()).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::faulty::{Faults, FaultyVfs};

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
        assert_eq!(first[0], format!("write {WAL} 40+31"));
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
            [format!("write {WAL} 71+32"), format!("sync {WAL}")]
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
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
        assert_eq!(prefix_successor(b""), None);
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
