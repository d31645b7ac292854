//! The public handle: [`Db`], a thin layer over the engine core ([`Store`]) that checks its
//! arguments and forwards. Dropping the last clone closes the store.
//!
//! Features over the handle live in their own modules, each adding its methods to `Db`: ordered
//! iteration (`iter`), transactions (`transaction`), watching (`watch`), backups (`backup`) and
//! typed values (`typed`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::batch::{Batch, check_key, check_value};
use crate::bytes::Bytes;
use crate::engine::Store;
use crate::error::Result;
use crate::options::Options;
use crate::stats::{RepairReport, Stats, VerifyReport};

/// An open store. Cheap to clone; clones share everything. `Send + Sync`.
///
/// Readers never wait for a writer's `fdatasync`: a write becomes visible only once it is durable
/// (as [`Durability`](crate::Durability) defines it), and then at once to every clone.
///
/// Dropping the last clone closes the store. A handle that wrote much of the log compacts it
/// first, which takes as long as a [`Db::compact`] ([`Options::compact_on_close`]).
#[derive(Clone)]
pub struct Db {
    pub(crate) store: Arc<Store>,
    /// Shared by the user's clones only (not by the compaction thread): when the last one goes,
    /// the compaction thread is stopped and joined, and the log may be compacted
    /// ([`Options::compact_on_close`]), so the store is closed when `drop` returns.
    _owner: Arc<Owner>,
}

/// The close-on-last-drop guard.
struct Owner {
    store: Arc<Store>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.store.close();
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.store.dir)
            .field("durability", &self.store.options.durability)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// [`Db::repair`] on this file system.
    pub fn repair(self, path: impl AsRef<Path>) -> Result<RepairReport> {
        crate::engine::repair::repair(self.vfs.as_ref(), path.as_ref())
    }

    /// Opens the store in directory `path`, recovering from any crash.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Db> {
        let store = Store::open(self, path.as_ref().to_owned())?;
        Ok(Db {
            _owner: Arc::new(Owner {
                store: Arc::clone(&store),
            }),
            store,
        })
    }
}

impl Db {
    /// Opens (creating if missing) the store in directory `path` with default [`Options`].
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Options::new().open(path)
    }

    /// Salvages a store whose log has damaged records that were acknowledged (an open then fails
    /// with [`Error::Corruption`](crate::Error::Corruption)): keeps every intact record, skips
    /// the damaged ones, keeps each damaged log whole in a `quarantine-*` file, and leaves a store
    /// that opens. The result may be a state that never existed (the skipped records are
    /// missing from it), so the report names their sequence numbers and the keys that still
    /// parse in their bytes. Holds the store exclusively: it fails with
    /// [`Error::Locked`](crate::Error::Locked) while another handle has it open. Prefer restoring
    /// a backup when there is one.
    pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
        Options::new().repair(path)
    }

    /// What [`Db::repair`] would keep and lose, writing nothing: every damaged log record and
    /// sorted-file block of the store, with what they held. `kvctl check` lists them from this.
    pub fn inspect_damage(path: impl AsRef<Path>) -> Result<RepairReport> {
        crate::engine::repair::inspect(Options::new().vfs.as_ref(), path.as_ref())
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.store.dir
    }

    /// The value of `key`, if present. Values read from a sorted file are not copied.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.store.get(key.as_ref())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Sets `key` to `value`. Durable when it returns (with [`Durability::Immediate`](crate::Durability::Immediate)).
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
        self.store.check_writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        self.store.commit(batch)
    }

    /// Makes every write so far durable: a no-op cost for [`Durability::Immediate`](crate::Durability::Immediate), an
    /// `fdatasync` for [`Durability::Buffered`](crate::Durability::Buffered).
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Writes the memtable out as a run now (cutting a new log segment), so that an open after a
    /// crash replays nothing written before. Returns once the run is installed and the old
    /// segments are gone; `false` if the log held nothing to flush. Writers keep going
    /// meanwhile. (The background thread flushes by itself at
    /// [`Options::memtable_bytes`](crate::Options::memtable_bytes).)
    pub fn flush_memtable(&self) -> Result<bool> {
        self.store.check_writable()?;
        self.store.flush_memtable()
    }

    /// Compacts now: flushes the memtable, then merges every run into the partitions, one
    /// partition at a time. Returns once the new partitions are installed and the old files are
    /// gone. Writers keep going meanwhile.
    pub fn compact(&self) -> Result<()> {
        self.compact_with_progress(|_, _| {})
    }

    /// [`Db::compact`], calling `progress(entries_done, entries_total)` as the merge advances.
    pub fn compact_with_progress(&self, progress: impl FnMut(u64, u64)) -> Result<()> {
        self.store.check_writable()?;
        self.store.compact(progress)
    }

    /// Reads back and checks every byte of the sorted files (every block's checksum and
    /// structure, key order, counts), the manifest, and the log segments it replays (every
    /// record's checksum and sequence number, and zeros after the live one's end). Calls `progress(bytes_done, bytes_total)`. Writers wait while the log is
    /// checked; compactions wait for the whole check. Writes nothing.
    ///
    /// Damage is an `Err(Error::Corruption)` naming the file and offset. A torn tail of the live
    /// log (bytes a crash left after the last durable record, which the next writer cuts off) is
    /// not damage: it is reported in [`VerifyReport::torn_tail`].
    pub fn verify(&self, progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        self.store.verify(progress)
    }

    /// Number of keys in the store.
    pub fn len(&self) -> Result<u64> {
        self.store.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Figures about the store and this handle.
    pub fn stats(&self) -> Result<Stats> {
        self.store.stats()
    }
}
