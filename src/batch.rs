//! `Batch`: writes that commit together or not at all.

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::OpRef;
use crate::limits::{MAX_BATCH_BYTES, MAX_KEY_LEN, MAX_VALUE_LEN};

/// A group of puts and deletes applied atomically by [`Db::write`](crate::Db::write): after a
/// crash either all of them are visible or none. Later operations on the same key win.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let db = sturdykv::Db::open(dir.path())?;
/// let mut batch = sturdykv::Batch::new();
/// batch.put("apples", "3").put("pears", "5").delete("plums");
/// db.write(batch)?;
/// assert_eq!(db.get("pears")?.as_deref(), Some(&b"5"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<(Bytes, Option<Bytes>)>,
    encoded_len: u64,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds `key = value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.encoded_len += OpRef::Put(key, value).encoded_len() as u64;
        let (key, value) = Bytes::pair(key, value);
        self.ops.push((key, Some(value)));
        self
    }

    /// Adds a deletion of `key` (deleting an absent key is not an error).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let key = key.as_ref();
        self.encoded_len += OpRef::Delete(key).encoded_len() as u64;
        self.ops.push((Bytes::from(key), None));
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Removes every operation.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.encoded_len = 0;
    }

    /// Checks every key and value, and the whole batch, against the limits.
    pub(crate) fn check_limits(&self) -> Result<()> {
        for (key, value) in &self.ops {
            check_key(key)?;
            if let Some(value) = value {
                check_value(value)?;
            }
        }
        if self.encoded_len > MAX_BATCH_BYTES {
            return Err(Error::LimitExceeded {
                what: "batch",
                len: self.encoded_len,
                max: MAX_BATCH_BYTES,
            });
        }
        Ok(())
    }

    /// Bytes the operations take in a log record.
    pub(crate) fn encoded_len(&self) -> usize {
        usize::try_from(self.encoded_len).unwrap_or(usize::MAX)
    }

    /// The operations as the log format sees them.
    pub(crate) fn op_refs(&self) -> impl ExactSizeIterator<Item = OpRef<'_>> {
        self.ops.iter().map(|(key, value)| match value {
            Some(value) => OpRef::Put(key, value),
            None => OpRef::Delete(key),
        })
    }
}

impl Batch {
    /// The operations, for applying to the in-memory view.
    pub(crate) fn into_ops(self) -> Vec<(Bytes, Option<Bytes>)> {
        self.ops
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::LimitExceeded {
            what: "key",
            len: key.len() as u64,
            max: MAX_KEY_LEN as u64,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::LimitExceeded {
            what: "value",
            len: value.len() as u64,
            max: MAX_VALUE_LEN as u64,
        });
    }
    Ok(())
}
