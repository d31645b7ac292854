//! How to open a store: [`Options`], and when a write counts as done: [`Durability`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::io::{StdVfs, Vfs};

/// When a write is considered done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// A write returns only once it is on stable storage (`fdatasync`): it survives power loss.
    /// Concurrent writers share one sync.
    #[default]
    Immediate,
    /// A write returns once it is in the operating system's page cache: it survives the process
    /// being killed, but not a power loss or kernel crash. [`Db::flush`](crate::Db::flush) makes it durable.
    Buffered,
}

/// Default for [`Options::compaction_min_wal_bytes`]: 16 MiB.
pub const DEFAULT_COMPACTION_MIN_WAL_BYTES: u64 = 16 << 20;
/// Default for [`Options::compaction_ratio`].
pub const DEFAULT_COMPACTION_RATIO: f64 = 0.25;
/// Default for [`Options::spin_wait`]: 500 µs, a few `fdatasync`s of a fast SSD (DECISIONS 39).
pub const DEFAULT_SPIN_WAIT: Duration = Duration::from_micros(500);
/// Closing compacts only stores whose snapshot is at most this large (256 MiB): a compaction
/// rewrites the whole snapshot, and beyond that a close would keep its caller waiting much longer
/// than the replay it saves the next open (DECISIONS 41).
const CLOSE_COMPACTION_MAX_SNAPSHOT: u64 = 256 << 20;
/// The most [`Options::spin_wait`] takes (a deadline that far off cannot overflow an `Instant`).
const MAX_SPIN_WAIT: Duration = Duration::from_secs(1);

/// How to open a store. Start from [`Options::new`], finish with [`Options::open`].
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) create_if_missing: bool,
    pub(crate) compaction_min_wal_bytes: u64,
    pub(crate) compaction_ratio: f64,
    pub(crate) background_compaction: bool,
    pub(crate) compact_on_close: bool,
    /// Closing compacts only stores whose snapshot is at most this large.
    pub(crate) close_compaction_max_snapshot: u64,
    pub(crate) spin_wait: Duration,
    pub(crate) exclusive: bool,
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
    /// missing directory is a [`Error::NotAStore`](crate::Error::NotAStore).
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Compaction starts once the log is larger than this many bytes *and* larger than
    /// [`compaction_ratio`](Options::compaction_ratio) times the snapshot (default 16 MiB).
    /// Until then the log's entries are held in memory, and up to twice over while a
    /// compaction merges the previous generation.
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
    /// `false`, only [`Db::compact`](crate::Db::compact) compacts (not even closing, whatever
    /// [`compact_on_close`](Options::compact_on_close) says).
    pub fn background_compaction(mut self, enabled: bool) -> Self {
        self.background_compaction = enabled;
        self
    }

    /// Whether closing the handle may compact (default `true`), so that the next open maps a
    /// snapshot instead of replaying the log.
    ///
    /// When the last clone of the handle is dropped, a compaction running in the background is
    /// finished rather than abandoned; then, if this handle itself appended at least a quarter
    /// of the compaction trigger to the live log (`max(compaction_min_wal_bytes / 4,
    /// compaction_ratio / 4 × snapshot)`, 4 MiB by default), the drop compacts before it returns.
    /// That takes as long as [`Db::compact`](crate::Db::compact), which rewrites the whole snapshot, so it is done only
    /// while the snapshot is at most 256 MiB: a larger store's next open replays its log instead. A handle that only read, or wrote little, closes at once. A
    /// failure is logged and loses nothing: the log still holds every write. With `false`,
    /// closing abandons a running compaction at its next check and never starts one.
    pub fn compact_on_close(mut self, enabled: bool) -> Self {
        self.compact_on_close = enabled;
        self
    }

    /// How long a writer thread that waits for another thread's commit or `fdatasync` keeps
    /// yielding the CPU and looking again before it sleeps (default [`DEFAULT_SPIN_WAIT`]).
    ///
    /// Waking a sleeping thread takes tens of microseconds, and after each shared sync every
    /// writer it covered would wake in turn, so that the gap between syncs grows; looking
    /// instead of sleeping keeps several writer threads in one group. The price is CPU time per
    /// put while writers wait (DECISIONS 39 has the measurements). A single writer never waits,
    /// so it never spins. `Duration::ZERO` sleeps at once; more than a second counts as a second.
    pub fn spin_wait(mut self, spin: Duration) -> Self {
        self.spin_wait = spin.min(MAX_SPIN_WAIT);
        self
    }

    /// With `true`, this handle keeps the store to itself: it holds `LOCK` from open to close, and
    /// any other open (in this or another process) fails with [`Error::Locked`](crate::Error::Locked) naming the lock
    /// file, as this one does if the store is open elsewhere. Needed on file systems where
    /// processes cannot share a store (NFS, SMB, no `flock`), where a default open fails with
    /// [`Error::LockingUnsupported`](crate::Error::LockingUnsupported). Saves the check for other processes' commits at every
    /// read (two atomic loads), and the system calls with which every commit follows other
    /// processes' appends (`flock` twice, a 4-byte `pread`, an `openat`; their cost is measured in
    /// DECISIONS 46).
    /// Default `false`: any number of processes may open the store and read and write it.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// With `true`, the handle never writes to the store's files (no repair, no compaction, no
    /// new files): writes fail with [`Error::ReadOnly`](crate::Error::ReadOnly), and the store must exist. It still sees
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
}
