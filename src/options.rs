//! How to open a store: [`Options`], and when a write counts as done: [`Durability`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::io::{StdVfs, Vfs};

/// When a write is considered done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// A write returns only once it is on stable storage (`fdatasync`): it survives power loss.
    /// Concurrent writers share one sync.
    #[default]
    Immediate,
    /// A write returns once it is in the operating system's page cache: it survives the process
    /// being killed, but not a power loss or kernel crash. [`Db::flush`](crate::Db::flush) makes it durable.
    Buffered,
}

/// Default for [`Options::memtable_bytes`]: 64 MiB.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 64 << 20;
/// Default for [`Options::partition_bytes`]: 64 MiB.
pub const DEFAULT_PARTITION_BYTES: u64 = 64 << 20;
/// Default for [`Options::compaction_ratio`].
pub const DEFAULT_COMPACTION_RATIO: f64 = 0.5;
/// Default for [`Options::max_runs`].
pub const DEFAULT_MAX_RUNS: usize = 12;
/// Default for [`Options::spin_wait`]: 500 µs, a few `fdatasync`s of a fast SSD (DECISIONS 39).
pub const DEFAULT_SPIN_WAIT: Duration = Duration::from_micros(500);
/// The most [`Options::spin_wait`] takes (a deadline that far off cannot overflow an `Instant`).
const MAX_SPIN_WAIT: Duration = Duration::from_secs(1);

/// How to open a store. Start from [`Options::new`], finish with [`Options::open`].
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) create_if_missing: bool,
    pub(crate) memtable_bytes: u64,
    pub(crate) partition_bytes: u64,
    pub(crate) compaction_ratio: f64,
    pub(crate) max_runs: usize,
    pub(crate) background_compaction: bool,
    pub(crate) compact_on_close: bool,
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
            .field("memtable_bytes", &self.memtable_bytes)
            .field("partition_bytes", &self.partition_bytes)
            .field("compaction_ratio", &self.compaction_ratio)
            .field("max_runs", &self.max_runs)
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
    /// The defaults: [`Durability::Immediate`], create the store if it is missing, flush the
    /// memtable at 64 MiB, and compact in the background once the runs outgrow half the
    /// partitions or number more than 12.
    pub fn new() -> Self {
        Options {
            durability: Durability::Immediate,
            create_if_missing: true,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            partition_bytes: DEFAULT_PARTITION_BYTES,
            compaction_ratio: DEFAULT_COMPACTION_RATIO,
            max_runs: DEFAULT_MAX_RUNS,
            background_compaction: true,
            compact_on_close: true,
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

    /// The memtable (the writes not yet in a sorted file, held in memory and replayed from the
    /// log after a crash) is flushed to a new run once it holds this many bytes (default
    /// [`DEFAULT_MEMTABLE_BYTES`]). It bounds the heap memory of every handle, at most about
    /// twice over while a flush runs, and the replay of an open after a crash, whatever the
    /// store's size. At least 64 KiB.
    pub fn memtable_bytes(mut self, bytes: u64) -> Self {
        self.memtable_bytes = bytes.max(64 << 10);
        self
    }

    /// A compaction splits a partition it writes once the partition reaches this many bytes
    /// (default [`DEFAULT_PARTITION_BYTES`]): the extra disk a compaction needs beside the store
    /// is about one partition plus the runs it merges. At least 1 KiB.
    pub fn partition_bytes(mut self, bytes: u64) -> Self {
        self.partition_bytes = bytes.max(1 << 10);
        self
    }

    /// Compaction starts once the runs together are larger than this fraction of the
    /// partitions (default 0.5), or more than [`max_runs`](Options::max_runs) of them. Each
    /// compaction rewrites the partitions the runs overlap, so a higher ratio writes less (about
    /// `1 / ratio` bytes per byte of new data) but leaves more runs for a read to look past.
    pub fn compaction_ratio(mut self, ratio: f64) -> Self {
        self.compaction_ratio = ratio.max(0.0);
        self
    }

    /// Compaction starts once there are more runs than this (default [`DEFAULT_MAX_RUNS`]): a
    /// point read looks at every run its filters do not rule out, and a scan merges them all.
    pub fn max_runs(mut self, runs: usize) -> Self {
        self.max_runs = runs;
        self
    }

    /// Whether a background thread compacts when the triggers fire (default `true`). With
    /// `false`, only [`Db::compact`](crate::Db::compact) compacts (not even closing, whatever
    /// [`compact_on_close`](Options::compact_on_close) says).
    pub fn background_compaction(mut self, enabled: bool) -> Self {
        self.background_compaction = enabled;
        self
    }

    /// Whether closing the handle flushes the memtable (default `true`), so that the next open,
    /// in any process, replays nothing.
    ///
    /// When the last clone of a writable handle is dropped, a flush or compaction running in the
    /// background is finished rather than abandoned; then, if the log holds writes not yet in a
    /// run (this handle's or another's), the drop flushes them before it returns: at most
    /// [`memtable_bytes`](Options::memtable_bytes) to write. A failure is logged and loses
    /// nothing: the log still holds every write. With `false`, closing abandons a running
    /// compaction at its next check and never flushes.
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

    /// Runs on another file system (the simulated disk in tests and fuzzing).
    #[cfg(any(test, feature = "__testing"))]
    pub(crate) fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = vfs;
        self
    }
}
