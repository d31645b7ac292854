//! `Bytes`: the immutable, cheaply cloned byte string that reads hand out.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use crate::io::Mapping;

/// An immutable byte string returned by reads: keys and values.
///
/// Cloning is cheap (a reference count). Values read from a snapshot point straight into the
/// memory-mapped file, with no copy; the mapping stays alive as long as any `Bytes` from it does,
/// even after a compaction has replaced and deleted that snapshot. It dereferences to `[u8]`.
#[derive(Clone)]
pub struct Bytes(Repr);

#[derive(Clone)]
enum Repr {
    /// `len` bytes at `start` of a shared allocation (a memtable entry holds its key and its
    /// value in one allocation).
    Heap {
        bytes: Arc<[u8]>,
        start: usize,
        len: usize,
    },
    Mapped {
        map: Arc<dyn Mapping>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    /// Copies `bytes` into a new `Bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        Bytes::from_arc(Arc::from(bytes))
    }

    /// A key and a value copied into one allocation (one `malloc` instead of two), the key first:
    /// the shape [`Bytes::key_and_value`] recognises.
    pub(crate) fn pair(key: &[u8], value: &[u8]) -> (Bytes, Bytes) {
        let both = joined(key, value);
        let value = Bytes::shared(&both, key.len(), value.len());
        (Bytes::shared(&both, 0, key.len()), value)
    }

    /// `len` bytes at `start` of `bytes`; the caller checked the bounds.
    pub(crate) fn shared(bytes: &Arc<[u8]>, start: usize, len: usize) -> Self {
        debug_assert!(start + len <= bytes.len());
        Bytes(Repr::Heap {
            bytes: Arc::clone(bytes),
            start,
            len,
        })
    }

    /// If `key` and `value` are the two halves of one allocation made by [`Bytes::pair`] (or
    /// `key` alone is a whole allocation and `value` is `None`), that allocation.
    pub(crate) fn key_and_value(key: &Bytes, value: Option<&Bytes>) -> Option<Arc<[u8]>> {
        let Repr::Heap {
            bytes,
            start: 0,
            len: key_len,
            ..
        } = &key.0
        else {
            return None;
        };
        match value.map(|v| &v.0) {
            None => (*key_len == bytes.len()).then(|| Arc::clone(bytes)),
            Some(Repr::Heap {
                bytes: value_bytes,
                start,
                len,
            }) => {
                (Arc::ptr_eq(bytes, value_bytes) && start == key_len && start + len == bytes.len())
                    .then(|| Arc::clone(bytes))
            }
            Some(Repr::Mapped { .. }) => None,
        }
    }

    /// A view of `len` bytes at `start` of a mapping; the caller checked the bounds.
    pub(crate) fn mapped(map: &Arc<dyn Mapping>, start: usize, len: usize) -> Self {
        debug_assert!(start + len <= map.bytes().len());
        Bytes(Repr::Mapped {
            map: Arc::clone(map),
            start,
            len,
        })
    }

    /// Wraps shared heap bytes without copying.
    pub(crate) fn from_arc(bytes: Arc<[u8]>) -> Self {
        let len = bytes.len();
        Bytes(Repr::Heap {
            bytes,
            start: 0,
            len,
        })
    }

    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Heap { bytes, start, len } => &bytes[*start..*start + *len],
            Repr::Mapped { map, start, len } => &map.bytes()[*start..*start + *len],
        }
    }

    /// Copies the bytes into a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }
}

/// `key` then `value` in one new allocation.
pub(crate) fn joined(key: &[u8], value: &[u8]) -> Arc<[u8]> {
    const ON_STACK: usize = 512;
    let len = key.len() + value.len();
    if len <= ON_STACK {
        // Joined on the stack, then copied into the allocation: two `memcpy`s. (Collecting the
        // chained slices into the `Arc` copied byte by byte, at three times the cost.)
        let mut both = [0u8; ON_STACK];
        both[..key.len()].copy_from_slice(key);
        both[key.len()..len].copy_from_slice(value);
        Arc::from(&both[..len])
    } else {
        // Copying dominates here: a second allocation is cheap beside it.
        Arc::from([key, value].concat())
    }
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::copy_from_slice(&[])
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from_arc(Arc::from(v))
    }
}

/// A copy of the bytes (they may be shared with other `Bytes`, or mapped from a file).
impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.to_vec()
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes::copy_from_slice(v)
    }
}

impl From<&str> for Bytes {
    fn from(v: &str) -> Self {
        Bytes::copy_from_slice(v.as_bytes())
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Bytes {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_slice() == &other[..]
    }
}

impl fmt::Debug for Bytes {
    /// Shows the bytes as an escaped byte string, e.g. `b"key\x00"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.as_slice().escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_prints_as_bytes() {
        let b = Bytes::from(&b"a\x00b"[..]);
        assert_eq!(b, b"a\x00b");
        assert_eq!(format!("{b:?}"), "b\"a\\x00b\"");
        assert!(Bytes::from("a") < Bytes::from("b"));
        assert!(Bytes::from("a") < Bytes::from("aa"));
    }

    #[test]
    fn a_pair_shares_one_allocation_that_only_its_own_halves_reveal() {
        for value_len in [0, 100, 511, 512, 4000] {
            let value = vec![7u8; value_len];
            let (k, v) = Bytes::pair(b"key", &value);
            assert_eq!((k.as_slice(), v.as_slice()), (&b"key"[..], &value[..]));
            let both = Bytes::key_and_value(&k, Some(&v)).expect("a pair");
            assert_eq!(&both[..3], b"key");
            assert_eq!(&both[3..], &value[..]);

            let (other_k, other_v) = Bytes::pair(b"key", &value);
            assert!(
                Bytes::key_and_value(&k, Some(&other_v)).is_none(),
                "two allocations"
            );
            assert!(
                Bytes::key_and_value(&other_v, Some(&other_k)).is_none(),
                "swapped"
            );
            assert_eq!(
                Bytes::key_and_value(&k, None).is_some(),
                value_len == 0,
                "a tombstone takes the allocation only if it is all key"
            );
        }
        let whole = Bytes::from("key");
        assert!(
            Bytes::key_and_value(&whole, None).is_some(),
            "a tombstone's key"
        );
        assert!(Bytes::key_and_value(&whole, Some(&Bytes::from("v"))).is_none());
    }
}
