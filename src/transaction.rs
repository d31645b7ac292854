//! Transactions: read-modify-write that is serializable across threads and processes.

use std::collections::BTreeMap;
use std::fmt;

use crate::batch::{Batch, check_key, check_value};
use crate::bytes::Bytes;
use crate::db::Db;
use crate::engine::Store;
use crate::error::{Error, Result};

/// The reads and writes of one [`Db::transaction`]. Reads see the whole committed state (every
/// process's) plus this transaction's own writes; the writes commit as one atomic log record
/// when the closure returns `Ok`.
pub struct Transaction<'a> {
    store: &'a Store,
    /// The writes so far, last one per key winning (`None`: delete).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl Transaction<'_> {
    /// The value of `key`, including this transaction's own writes.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        match self.writes.get(key) {
            Some(value) => Ok(value.as_deref().map(Bytes::from)),
            None => self.store.applied.read().get(key),
        }
    }

    /// Whether `key` is present, including this transaction's own writes.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Sets `key` to `value` when the transaction commits.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check_key(key)?;
        check_value(value)?;
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Removes `key` when the transaction commits.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        check_key(key)?;
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn into_batch(self) -> Batch {
        let mut batch = Batch::new();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        batch
    }
}

/// The current value did not match the expected one in [`Db::compare_and_swap`]; nothing was
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareAndSwapError {
    /// The value found.
    pub current: Option<Bytes>,
    /// The value that was to be written.
    pub proposed: Option<Bytes>,
}

impl fmt::Display for CompareAndSwapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compare-and-swap failed: the current value is not the expected one"
        )
    }
}

impl std::error::Error for CompareAndSwapError {}

impl Db {
    /// Runs `body` on the current state and commits its writes as one atomic batch:
    /// serializable with every other write, in every thread and process.
    ///
    /// `body` runs exactly once, holding the store's write lock: it sees every write committed
    /// anywhere before it started, and no other write can happen until its own commits. Keep it
    /// short (it blocks every writer in every process) and free of side effects outside the
    /// transaction. If it returns `Err` or panics, nothing is written and the error (or panic)
    /// is passed on. Durable on return, like [`Db::write`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let db = sturdykv::Db::open(dir.path())?;
    /// let visits = db.transaction(|tx| {
    ///     let n = match tx.get("visits")? {
    ///         Some(v) => u64::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
    ///         None => 0,
    ///     };
    ///     tx.put("visits", (n + 1).to_le_bytes())?;
    ///     Ok::<_, sturdykv::Error>(n + 1)
    /// })?;
    /// assert_eq!(visits, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction<T, E: From<Error>>(
        &self,
        body: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.store.check_writable()?;
        let store: &Store = &self.store;
        store.exclusively(|| {
            let mut tx = Transaction {
                store,
                writes: BTreeMap::new(),
            };
            let value = body(&mut tx)?;
            Ok((value, tx.into_batch()))
        })
    }

    /// Sets `key` to `new` (`None`: deletes it) if its current value is `expected` (`None`:
    /// absent), atomically across threads and processes. Returns `Ok(Err(..))` with the current
    /// value if it was not, writing nothing.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<std::result::Result<(), CompareAndSwapError>> {
        let key = key.as_ref();
        self.transaction(|tx| {
            let current = tx.get(key)?;
            if current.as_deref() != expected {
                return Ok(Err(CompareAndSwapError {
                    current,
                    proposed: new.map(Bytes::from),
                }));
            }
            match new {
                Some(value) => tx.put(key, value)?,
                None => tx.delete(key)?,
            }
            Ok(Ok(()))
        })
    }
}
