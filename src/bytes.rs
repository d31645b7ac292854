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
    Heap(Arc<[u8]>),
    Mapped {
        map: Arc<dyn Mapping>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    /// Copies `bytes` into a new `Bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        Bytes(Repr::Heap(Arc::from(bytes)))
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
        Bytes(Repr::Heap(bytes))
    }

    /// The bytes as shared heap bytes (copied only if they point into a mapping).
    pub(crate) fn into_arc(self) -> Arc<[u8]> {
        match self.0 {
            Repr::Heap(bytes) => bytes,
            Repr::Mapped { .. } => Arc::from(self.as_slice()),
        }
    }

    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Heap(bytes) => bytes,
            Repr::Mapped { map, start, len } => &map.bytes()[*start..*start + *len],
        }
    }

    /// Copies the bytes into a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
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
        Bytes(Repr::Heap(Arc::from(v)))
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
}
