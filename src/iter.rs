//! Ordered iteration: [`Db::range`], [`Db::prefix`], the same over a [`Snapshot`], and the
//! [`Iter`] they return, which reads from a snapshot (one taken when it is made, for `Db`'s).

use std::fmt;
use std::ops::{Bound, RangeBounds};

use crate::bytes::Bytes;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::snapshot::Snapshot;
use crate::view::Chunk;

impl Db {
    /// The entries with keys in `range`, in key order (`.rev()` for descending), as of the
    /// moment of the call: the iterator reads from a [`Snapshot`] taken then, so it sees one
    /// state of the store however long it runs and whatever is written meanwhile (by this
    /// process or others). Each key in the range is returned once, in order.
    ///
    /// The iterator holds no lock between items (it reads a chunk of entries at a time), so it
    /// never blocks writers; what holding its snapshot costs is said at [`Snapshot`].
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let (lo, hi) = owned_bounds(&range);
        Iter::new(self.snapshot(), lo, hi)
    }

    /// The entries whose keys start with `prefix`, in key order, as of the call (as
    /// [`Db::range`]).
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let (lo, hi) = prefix_bounds(prefix.as_ref());
        Iter::new(self.snapshot(), lo, hi)
    }

    /// Every entry, in key order, as of the call (as [`Db::range`]). The same as `db.range(..)`,
    /// which needs its key type spelled out (`db.range::<&[u8], _>(..)`: `..` names none).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let db = sturdykv::Db::open(dir.path())?;
    /// db.put("b", "2")?;
    /// db.put("a", "1")?;
    /// let keys: Vec<Vec<u8>> = db.iter().map(|e| e.map(|(k, _)| k.into())).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    /// assert_eq!(db.range::<&[u8], _>(..).count(), 2);
    /// assert_eq!(db.first()?.map(|(k, _)| Vec::from(k)), Some(b"a".to_vec()));
    /// assert_eq!(db.last()?.map(|(k, _)| Vec::from(k)), Some(b"b".to_vec()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The entry with the smallest key, if any.
    pub fn first(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.snapshot()?.first()
    }

    /// The entry with the largest key, if any.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.snapshot()?.last()
    }
}

impl Snapshot {
    /// The entries with keys in `range`, in key order (`.rev()` for descending).
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let (lo, hi) = owned_bounds(&range);
        Iter::new(Ok(self.clone()), lo, hi)
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let (lo, hi) = prefix_bounds(prefix.as_ref());
        Iter::new(Ok(self.clone()), lo, hi)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The entry with the smallest key, if any.
    pub fn first(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.iter().next().transpose()
    }

    /// The entry with the largest key, if any.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.iter().next_back().transpose()
    }
}

/// `range`'s bounds, owned.
pub(crate) fn owned_bounds<K: AsRef<[u8]>, R: RangeBounds<K>>(
    range: &R,
) -> (Bound<Bytes>, Bound<Bytes>) {
    let owned = |b: Bound<&K>| match b {
        Bound::Included(k) => Bound::Included(Bytes::from(k.as_ref())),
        Bound::Excluded(k) => Bound::Excluded(Bytes::from(k.as_ref())),
        Bound::Unbounded => Bound::Unbounded,
    };
    (owned(range.start_bound()), owned(range.end_bound()))
}

/// The bounds of the keys that start with `prefix`.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> (Bound<Bytes>, Bound<Bytes>) {
    let hi = match prefix_successor(prefix) {
        Some(next) => Bound::Excluded(Bytes::from(next)),
        None => Bound::Unbounded,
    };
    (Bound::Included(Bytes::from(prefix)), hi)
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

/// An ordered iterator over a range of the store as of one commit, from [`Db::range`],
/// [`Db::prefix`] or a [`Snapshot`]'s. Yields `Result<(key, value)>`; iterate backwards with
/// `.rev()` or `next_back`.
pub struct Iter {
    /// What it reads from: `None` if taking the snapshot failed, with the error in `failed`
    /// until it is yielded (once, as the only item).
    snapshot: Option<Snapshot>,
    failed: Option<Error>,
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
    pub(crate) fn new(snapshot: Result<Snapshot>, lo: Bound<Bytes>, hi: Bound<Bytes>) -> Self {
        let (snapshot, failed) = match snapshot {
            Ok(snapshot) => (Some(snapshot), None),
            Err(e) => (None, Some(e)),
        };
        Iter {
            snapshot,
            failed,
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
        let Some(snapshot) = &self.snapshot else {
            self.drained = true;
            return self.failed.take().map_or(Ok(()), Err);
        };
        let Chunk { entries, horizon } = snapshot.fetch(
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

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
