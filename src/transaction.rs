//! Transactions: read-modify-write that is serializable across threads and processes.

use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::OnceLock;

use crate::batch::{Batch, check_key, check_value};
use crate::bytes::Bytes;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::iter::{Iter, owned_bounds, prefix_bounds};
use crate::snapshot::Snapshot;

/// The reads and writes of one [`Db::transaction`]. Reads (and scans) see the whole committed
/// state (every process's) plus this transaction's own writes; the writes commit as one atomic
/// log record when the closure returns `Ok`.
pub struct Transaction<'a> {
    db: &'a Db,
    /// The writes so far, last one per key winning (`None`: delete).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What scans read below the writes, taken at the first scan. Nothing else commits while
    /// the transaction runs, so it is the state the transaction started from.
    snapshot: OnceLock<Snapshot>,
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
            None => self.db.store.applied.read().get(key),
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

    /// The entries with keys in `range`, in key order (`.rev()` for descending): the committed
    /// state with this transaction's writes so far over it.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> TransactionIter<'_> {
        let (lo, hi) = owned_bounds(&range);
        self.scan(lo, hi)
    }

    /// The entries whose keys start with `prefix`, including this transaction's writes.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> TransactionIter<'_> {
        let (lo, hi) = prefix_bounds(prefix.as_ref());
        self.scan(lo, hi)
    }

    /// Every entry, including this transaction's writes.
    pub fn iter(&self) -> TransactionIter<'_> {
        self.scan(Bound::Unbounded, Bound::Unbounded)
    }

    fn scan(&self, lo: Bound<Bytes>, hi: Bound<Bytes>) -> TransactionIter<'_> {
        let snapshot = self.snapshot.get_or_init(|| Snapshot {
            db: self.db.clone(),
            point: self.db.store.read_point_as_applied(),
        });
        let as_vec = |b: &Bound<Bytes>| match b {
            Bound::Included(k) => Bound::Included(k.to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (wlo, whi) = (as_vec(&lo), as_vec(&hi));
        let writes = if crate::memtable::bounds_nonempty(as_slice(&wlo), as_slice(&whi)) {
            Some(self.writes.range((wlo, whi)))
        } else {
            None
        };
        TransactionIter {
            below: Iter::new(Ok(snapshot.clone()), lo, hi),
            writes,
            below_front: None,
            below_back: None,
            write_front: None,
            write_back: None,
        }
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

fn as_slice(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

type Write<'t> = (&'t Vec<u8>, &'t Option<Vec<u8>>);

/// A scan inside a transaction, from [`Transaction::range`], [`Transaction::prefix`] or
/// [`Transaction::iter`]: the committed entries merged with the transaction's own writes (a
/// write wins over the committed entry of its key; a delete hides it).
pub struct TransactionIter<'t> {
    below: Iter,
    /// `None` for an empty range.
    writes: Option<btree_map::Range<'t, Vec<u8>, Option<Vec<u8>>>>,
    /// Taken from each source's ends and not yielded yet. When a source is used up from one
    /// end, what is left of it is the item taken from its other end.
    below_front: Option<(Bytes, Bytes)>,
    below_back: Option<(Bytes, Bytes)>,
    write_front: Option<Write<'t>>,
    write_back: Option<Write<'t>>,
}

impl fmt::Debug for TransactionIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionIter")
            .field("below", &self.below)
            .finish_non_exhaustive()
    }
}

impl TransactionIter<'_> {
    fn step(&mut self, forward: bool) -> Option<Result<(Bytes, Bytes)>> {
        loop {
            let (near, far) = if forward {
                (&mut self.below_front, &mut self.below_back)
            } else {
                (&mut self.below_back, &mut self.below_front)
            };
            if near.is_none() {
                let next = if forward {
                    self.below.next()
                } else {
                    self.below.next_back()
                };
                *near = match next {
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(entry)) => Some(entry),
                    None => far.take(),
                };
            }
            let (wnear, wfar) = if forward {
                (&mut self.write_front, &mut self.write_back)
            } else {
                (&mut self.write_back, &mut self.write_front)
            };
            if wnear.is_none() {
                let next = self
                    .writes
                    .as_mut()
                    .and_then(|w| if forward { w.next() } else { w.next_back() });
                *wnear = next.or_else(|| wfar.take());
            }
            let take_write = match (&*near, &*wnear) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((below, _)), Some((write, _))) => {
                    let order = below[..].cmp(&write[..]);
                    let below_first = if forward {
                        order.is_lt()
                    } else {
                        order.is_gt()
                    };
                    if !below_first && order.is_eq() {
                        *near = None; // the write wins over the committed entry
                    }
                    !below_first
                }
            };
            if !take_write {
                return near.take().map(Ok);
            }
            if let Some((key, Some(value))) = wnear.take() {
                return Some(Ok((Bytes::from(&key[..]), Bytes::from(&value[..]))));
            }
            // A delete: nothing to yield for its key.
        }
    }
}

impl Iterator for TransactionIter<'_> {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for TransactionIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

/// The current value did not match the expected one in [`Db::compare_and_swap`]; nothing was
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
        self.store.exclusively(|| {
            let mut tx = Transaction {
                db: self,
                writes: BTreeMap::new(),
                snapshot: OnceLock::new(),
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
