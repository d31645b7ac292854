//! sturdykv: an embedded, ordered key-value store that does not lose acknowledged writes.
//!
//! Byte-string keys map to byte-string values in a directory. Every write that returned `Ok` is on
//! stable storage (with the default [`Durability::Immediate`]) and survives `kill -9` and power
//! loss; a [`Batch`] is all-or-nothing. The design follows Birrell, Jones & Wobber, *A Simple and
//! Efficient Implementation for Small Databases* (SOSP 1987): a write-ahead log is the source of
//! truth, and opening the store replays it.
//!
//! ```
//! use sturdykv::{Batch, Db};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Db::open(dir.path())?;
//! db.put("fruit/apple", "red")?;
//! db.put("fruit/banana", "yellow")?;
//!
//! let mut batch = Batch::new();
//! batch.put("fruit/cherry", "dark red").delete("fruit/apple");
//! db.write(batch)?; // atomic: both or neither
//!
//! assert_eq!(db.get("fruit/banana")?.as_deref(), Some(&b"yellow"[..]));
//! let keys: Vec<_> = db.prefix("fruit/").map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
//! assert_eq!(keys, [&b"fruit/banana"[..], &b"fruit/cherry"[..]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Several processes may open the same store at once and read and write it, coordinated only by
//! `flock` on files in the store and a shared memory page: a read sees every write acknowledged
//! in any process before it started, and [`Db::transaction`] is serializable across processes.
//! [`Options::exclusive`] keeps a store to one handle (and is needed on network file systems);
//! [`Options::read_only`] never writes.
//!
//! [`Db::snapshot`] gives a read-only view of the store as of one commit while writers go on;
//! every iterator ([`Db::range`], [`Db::prefix`], [`Db::iter`]) reads from one, so a scan sees
//! one state however long it runs. Transactions scan too ([`Transaction::range`]), over their own
//! writes.
//!
//! Three more: [`Db::watch_prefix`] delivers the commits of every process under a prefix, in
//! order; [`Db::backup_to`] copies a live store as of one commit; and, with the default `serde`
//! feature, [`Db::typed`] stores typed values under keys whose byte order matches their `Ord`.
//!
//! The on-disk format is specified byte by byte in `docs/FORMAT.md`.

// The public handle and the features over it.
mod backup;
mod db;
mod iter;
mod snapshot;
mod transaction;
#[cfg(feature = "serde")]
mod typed;
mod watch;

// The engine core below the handle.
mod engine;

// What the handle and the engine share: how a store is opened, and what it reports.
mod options;
mod stats;

// What the engine is built from: the log, the sorted files and the manifest, the memtable and the view over
// both, locking and the shared hint page.
mod locking;
mod manifest;
mod memtable;
mod sorted;
mod view;
mod wal;

// At the bottom: values, the file layout and format, the I/O layer, small primitives.
mod batch;
mod bytes;
mod error;
mod format;
mod io;
mod layout;
mod limits;
mod poison;
mod sync;

// The simulated disk, the crash campaigns and the fuzz entry points: tests only.
#[cfg(any(test, feature = "__testing"))]
mod testing;

pub use backup::BackupReport;
pub use batch::Batch;
pub use bytes::Bytes;
pub use db::Db;
pub use error::{Error, Result};
pub use iter::Iter;
pub use limits::{MAX_BATCH_BYTES, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use options::{
    DEFAULT_COMPACTION_RATIO, DEFAULT_MAX_RUNS, DEFAULT_MEMTABLE_BYTES, DEFAULT_PARTITION_BYTES,
    DEFAULT_SPIN_WAIT, Durability, Options,
};
pub use snapshot::Snapshot;
pub use stats::{
    FileStats, LostKeys, LostRecords, RecoveryReport, RepairReport, SnapshotStats, Stats,
    VerifyReport,
};
pub use transaction::{CompareAndSwapError, Transaction, TransactionIter};
#[cfg(feature = "serde")]
pub use typed::{
    Key, KeyEncode, Typed, TypedTransaction, VALUE_ENCODING_POSTCARD_1, decode_key, decode_value,
    encode_key, encode_value,
};
pub use watch::{Change, Commit, Watcher};

/// The simulated power-loss campaign behind `kvctl crash-test --simulate`; not part of the
/// supported API.
#[cfg(feature = "__testing")]
#[doc(hidden)]
pub mod harness {
    /// Runs the campaign for one seed: a random workload, the power cut at a random operation,
    /// one crash image per crash model. Returns the number of images checked, or a description
    /// of the first violation.
    pub fn simulate(seed: u64) -> Result<u64, String> {
        crate::testing::campaign::check_seed(seed, |_| {})
    }
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the supported API.
#[cfg(feature = "__testing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `data` as a run of log records, as recovery would, and checks that every record
    /// that decodes re-encodes to exactly the same bytes. Panics on any violation.
    pub fn log_records(data: &[u8]) {
        crate::testing::fuzz::check_decode_roundtrip(data);
    }

    /// Opens `data` as a snapshot file on the simulated disk and reads it every way there is:
    /// whatever the bytes, the reader returns values or errors and never panics.
    pub fn snapshot(data: &[u8]) {
        crate::testing::fuzz::snapshot(data);
    }

    /// Interprets `data` as a sequence of operations (puts, deletes, batches, compactions,
    /// reopens, power cuts) on the simulated disk and checks the store against a model after
    /// every step. Panics on any divergence.
    pub fn operations(data: &[u8]) {
        crate::testing::fuzz::operations(data);
    }
}
