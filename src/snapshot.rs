//! Read snapshots: [`Db::snapshot`] and the [`Snapshot`] it returns, a consistent view of the
//! store as of one commit while writers (in this process and others) go on.

use std::fmt;
use std::sync::Arc;

use crate::bytes::Bytes;
use crate::db::Db;
use crate::error::Result;
use crate::view::{Chunk, ReadPoint};

/// The store as of one commit: every write acknowledged (in any process) before
/// [`Db::snapshot`] was called, and nothing written after. Cheap to take and to clone (clones
/// share it); `Send + Sync`, so threads may read one snapshot together.
///
/// A snapshot keeps what it reads until the last clone is dropped: the sorted files it was taken
/// over stay open (a flush or compaction in any process that replaces them frees their disk space
/// only once the snapshot is gone), and so do the memtables it reads, with the values that later
/// writes to their keys replaced. [`Stats::snapshots`](crate::Stats::snapshots) reports what open
/// snapshots hold. Hold one for as long as a report or export takes. A snapshot held for hours
/// under heavy writes keeps the memtables that were in memory when it was taken (up to about
/// twice [`Options::memtable_bytes`](crate::Options::memtable_bytes), with one old value per key
/// written to them before they were flushed), and the disk of every sorted file flushed or
/// compacted away since — up to the whole store's size again, if every partition is rewritten.
/// A process that dies holding one leaves nothing behind: snapshots are not written anywhere.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let db = sturdykv::Db::open(dir.path())?;
/// db.put("balance/alice", "10")?;
/// let before = db.snapshot()?;
/// db.put("balance/alice", "0")?;
/// assert_eq!(before.get("balance/alice")?.as_deref(), Some(&b"10"[..]));
/// assert_eq!(db.get("balance/alice")?.as_deref(), Some(&b"0"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) db: Db,
    pub(crate) point: Arc<ReadPoint>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.db.store.dir)
            .field("sequence", &self.point.at)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// A read snapshot of the store as it is now: see [`Snapshot`]. Takes O(1) time (a few
    /// reference counts), after catching up with other processes' commits as any read does.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            db: self.clone(),
            point: self.store.read_point()?,
        })
    }
}

impl Snapshot {
    /// The snapshot holds every commit with a sequence number below this one, and none other
    /// (the sequence numbers of [`Commit`](crate::Commit) and
    /// [`BackupReport`](crate::BackupReport)).
    pub fn sequence(&self) -> u64 {
        self.point.at
    }

    /// The value of `key` as of the snapshot.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        self.db.store.read_at(&self.point, |layers| layers.get(key))
    }

    /// Whether `key` was present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Up to about `limit` entries of `lo..hi` from one end, for [`Iter`](crate::Iter).
    pub(crate) fn fetch(
        &self,
        lo: std::ops::Bound<&[u8]>,
        hi: std::ops::Bound<&[u8]>,
        forward: bool,
        limit: usize,
    ) -> Result<Chunk> {
        self.db
            .store
            .read_at(&self.point, |layers| layers.fetch(lo, hi, forward, limit))
    }
}
