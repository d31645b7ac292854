//! Typed keys and values over the byte store (feature `serde`, on by default).
//!
//! Keys are encoded so that their bytes sort the way the keys compare ([`Key`]): a range scan
//! over a [`Typed`] view comes out in the keys' `Ord` order. Values are any `serde` type,
//! encoded as one version byte followed by the value in the postcard 1 wire format (a
//! documented, stable, compact format: see `docs/DECISIONS.md` 26).

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::Batch;
use crate::bytes::Bytes;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::iter::Iter;
use crate::snapshot::Snapshot;
use crate::transaction::Transaction;

/// The first byte of every typed value: which encoding follows. A value starting with another
/// byte was written by a newer sturdykv (or is not a typed value) and is refused, not guessed.
pub const VALUE_ENCODING_POSTCARD_1: u8 = 1;

/// A key type whose encoding sorts like its `Ord`.
///
/// Implemented for:
/// - unsigned integers (`u8` … `u128`): big-endian, fixed width;
/// - signed integers (`i8` … `i128`): big-endian with the sign bit flipped, so negatives sort
///   first;
/// - `bool` (`false` first) and `char` (as its `u32` code point);
/// - `String` / `str` and `Vec<u8>` / `[u8]`: their bytes as they are when the key ends there
///   (a `String` key is readable with `kvctl get`); inside a tuple, with every `00` byte written
///   `00 FF` and a `00 00` terminator, so that `("a", 2) < ("ab", 1)` as tuples compare;
/// - tuples of two or three of these, compared element by element.
///
/// Floating-point numbers are not keys: they have no total order (`NaN`).
pub trait KeyEncode {
    /// Appends the encoding of `self` to `out`; `last` when nothing follows it in the key.
    fn write_key(&self, out: &mut Vec<u8>, last: bool);
}

/// A [`KeyEncode`] type that can also be read back from its encoding.
pub trait Key: KeyEncode + Sized {
    /// Reads a key from the front of `bytes` (all of it if `last`); returns it and the rest.
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String>;
}

fn take<'a, const N: usize>(
    bytes: &'a [u8],
    what: &str,
) -> std::result::Result<([u8; N], &'a [u8]), String> {
    if bytes.len() < N {
        return Err(format!("{what} needs {N} bytes, {} are left", bytes.len()));
    }
    let (head, rest) = bytes.split_at(N);
    Ok((head.try_into().expect("N bytes"), rest))
}

macro_rules! unsigned_keys {
    ($($t:ty),*) => {$(
        impl KeyEncode for $t {
            fn write_key(&self, out: &mut Vec<u8>, _last: bool) {
                out.extend_from_slice(&self.to_be_bytes());
            }
        }
        impl Key for $t {
            fn read_key(bytes: &[u8], _last: bool) -> std::result::Result<(Self, &[u8]), String> {
                let (head, rest) = take(bytes, stringify!($t))?;
                Ok((<$t>::from_be_bytes(head), rest))
            }
        }
    )*};
}
unsigned_keys!(u8, u16, u32, u64, u128);

macro_rules! signed_keys {
    ($($t:ty => $u:ty),*) => {$(
        impl KeyEncode for $t {
            fn write_key(&self, out: &mut Vec<u8>, last: bool) {
                // Flipping the sign bit maps MIN..=MAX onto 0..=MAX of the unsigned type, in order.
                ((*self as $u) ^ (1 << (<$u>::BITS - 1))).write_key(out, last);
            }
        }
        impl Key for $t {
            fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
                let (flipped, rest) = <$u>::read_key(bytes, last)?;
                Ok(((flipped ^ (1 << (<$u>::BITS - 1))) as $t, rest))
            }
        }
    )*};
}
signed_keys!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

impl KeyEncode for bool {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        u8::from(*self).write_key(out, last);
    }
}

impl Key for bool {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        match u8::read_key(bytes, last)? {
            (0, rest) => Ok((false, rest)),
            (1, rest) => Ok((true, rest)),
            (other, _) => Err(format!("{other} is not a bool")),
        }
    }
}

impl KeyEncode for char {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        u32::from(*self).write_key(out, last);
    }
}

impl Key for char {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        let (n, rest) = u32::read_key(bytes, last)?;
        let c = char::from_u32(n).ok_or_else(|| format!("{n:#x} is not a char"))?;
        Ok((c, rest))
    }
}

impl KeyEncode for [u8] {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        if last {
            out.extend_from_slice(self);
            return;
        }
        for &b in self {
            out.push(b);
            if b == 0 {
                out.push(0xFF);
            }
        }
        out.extend_from_slice(&[0, 0]);
    }
}

impl KeyEncode for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        self.as_slice().write_key(out, last);
    }
}

impl Key for Vec<u8> {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        if last {
            return Ok((bytes.to_vec(), &[]));
        }
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (bytes.get(i), bytes.get(i + 1)) {
                (Some(0), Some(0)) => return Ok((out, &bytes[i + 2..])),
                (Some(0), Some(0xFF)) => {
                    out.push(0);
                    i += 2;
                }
                (Some(0), _) => return Err("a bad escape in a byte-string key".into()),
                (Some(&b), _) => {
                    out.push(b);
                    i += 1;
                }
                (None, _) => return Err("a byte-string key has no terminator".into()),
            }
        }
    }
}

impl KeyEncode for str {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        self.as_bytes().write_key(out, last);
    }
}

impl KeyEncode for String {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        self.as_bytes().write_key(out, last);
    }
}

impl Key for String {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        let (raw, rest) = Vec::<u8>::read_key(bytes, last)?;
        let s = String::from_utf8(raw).map_err(|_| "a string key is not UTF-8".to_owned())?;
        Ok((s, rest))
    }
}

impl<A: KeyEncode, B: KeyEncode> KeyEncode for (A, B) {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        self.0.write_key(out, false);
        self.1.write_key(out, last);
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        let (a, rest) = A::read_key(bytes, false)?;
        let (b, rest) = B::read_key(rest, last)?;
        Ok(((a, b), rest))
    }
}

impl<A: KeyEncode, B: KeyEncode, C: KeyEncode> KeyEncode for (A, B, C) {
    fn write_key(&self, out: &mut Vec<u8>, last: bool) {
        self.0.write_key(out, false);
        self.1.write_key(out, false);
        self.2.write_key(out, last);
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn read_key(bytes: &[u8], last: bool) -> std::result::Result<(Self, &[u8]), String> {
        let (a, rest) = A::read_key(bytes, false)?;
        let (b, rest) = B::read_key(rest, false)?;
        let (c, rest) = C::read_key(rest, last)?;
        Ok(((a, b, c), rest))
    }
}

/// The encoding of `key`, as stored.
pub fn encode_key<K: KeyEncode + ?Sized>(key: &K) -> Vec<u8> {
    let mut out = Vec::new();
    key.write_key(&mut out, true);
    out
}

/// Reads a whole encoded key.
pub fn decode_key<K: Key>(bytes: &[u8]) -> std::result::Result<K, String> {
    let (key, rest) = K::read_key(bytes, true)?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the key", rest.len()));
    }
    Ok(key)
}

/// The stored form of `value`: the encoding byte, then postcard.
pub fn encode_value<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![VALUE_ENCODING_POSTCARD_1]).map_err(|e| Error::Encode {
        type_name: std::any::type_name::<V>(),
        reason: e.to_string(),
    })
}

/// Reads a stored value; the whole of it must be one `V`.
pub fn decode_value<V: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<V, String> {
    match bytes.split_first() {
        Some((&VALUE_ENCODING_POSTCARD_1, body)) => {
            let (value, rest) = postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(format!(
                    "{} bytes left over after the value (was it written as another type?)",
                    rest.len()
                ))
            }
        }
        Some((other, _)) => Err(format!(
            "unknown value encoding {other} (written by a newer sturdykv, or not a typed value)"
        )),
        None => Err("the value is empty".into()),
    }
}

/// A typed view of the keys under a prefix: keys of type `K` (see [`Key`]) to values of any
/// `serde` type `V`. Made by [`Db::typed`]; cheap to clone. Values that do not decode as `V`
/// are [`Error::Decode`], never a panic.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { name: String, age: u32 }
///
/// let db = sturdykv::Db::open(dir.path())?;
/// let users = db.typed::<u64, User>("users/");
/// users.put(&7, &User { name: "ada".into(), age: 36 })?;
/// users.put(&1000, &User { name: "grace".into(), age: 85 })?;
/// assert_eq!(users.get(&7)?.unwrap().name, "ada");
/// // Numeric order, not text order:
/// let ids: Vec<u64> = users.iter().map(|e| e.map(|(id, _)| id)).collect::<Result<_, _>>()?;
/// assert_eq!(ids, [7, 1000]);
/// # Ok::<(), sturdykv::Error>(())
/// ```
pub struct Typed<K, V, S = Db> {
    source: S,
    codec: Codec<K, V>,
}

/// Where a [`Typed`] view reads: the store as it is ([`Db`]), or as of a [`Snapshot`].
mod source {
    use super::*;

    pub trait Source {
        fn get_bytes(&self, key: &[u8]) -> Result<Option<Bytes>>;
        fn range_bytes(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter;
    }

    impl Source for Db {
        fn get_bytes(&self, key: &[u8]) -> Result<Option<Bytes>> {
            self.get(key)
        }
        fn range_bytes(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter {
            self.range::<Vec<u8>, _>((lo, hi))
        }
    }

    impl Source for Snapshot {
        fn get_bytes(&self, key: &[u8]) -> Result<Option<Bytes>> {
            self.get(key)
        }
        fn range_bytes(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter {
            self.range::<Vec<u8>, _>((lo, hi))
        }
    }
}
use source::Source;

impl<K, V, S: Clone> Clone for Typed<K, V, S> {
    fn clone(&self) -> Self {
        Typed {
            source: self.source.clone(),
            codec: self.codec.clone(),
        }
    }
}

impl Db {
    /// A typed view of the keys under `prefix` (the whole store if empty): see [`Typed`].
    pub fn typed<K: Key, V: Serialize + DeserializeOwned>(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> Typed<K, V> {
        Typed {
            source: self.clone(),
            codec: Codec::new(prefix.as_ref()),
        }
    }
}

impl Snapshot {
    /// A typed view of the keys under `prefix` as of the snapshot (read-only): see [`Typed`].
    pub fn typed<K: Key, V: Serialize + DeserializeOwned>(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> Typed<K, V, Snapshot> {
        Typed {
            source: self.clone(),
            codec: Codec::new(prefix.as_ref()),
        }
    }
}

impl<'a> Transaction<'a> {
    /// A typed view of the keys under `prefix` inside this transaction: its reads and scans see
    /// the transaction's own writes, and its writes commit with the transaction.
    pub fn typed<K: Key, V: Serialize + DeserializeOwned>(
        &mut self,
        prefix: impl AsRef<[u8]>,
    ) -> TypedTransaction<'_, 'a, K, V> {
        TypedTransaction {
            tx: self,
            codec: Codec::new(prefix.as_ref()),
        }
    }
}

/// How a typed view turns keys and values into the store's bytes and back.
struct Codec<K, V> {
    prefix: Vec<u8>,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Codec<K, V> {
    fn clone(&self) -> Self {
        Codec {
            prefix: self.prefix.clone(),
            types: PhantomData,
        }
    }
}

impl<K: Key, V: Serialize + DeserializeOwned> Codec<K, V> {
    fn new(prefix: &[u8]) -> Self {
        Codec {
            prefix: prefix.to_vec(),
            types: PhantomData,
        }
    }

    fn stored_key<Q: KeyEncode + ?Sized>(&self, key: &Q) -> Vec<u8> {
        let mut out = self.prefix.clone();
        key.write_key(&mut out, true);
        out
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<(K, V)> {
        let fail = |type_name, reason| Error::Decode {
            key: key.to_vec(),
            type_name,
            reason,
        };
        let k = decode_key(&key[self.prefix.len()..])
            .map_err(|reason| fail(std::any::type_name::<K>(), reason))?;
        let v = decode_value(value).map_err(|reason| fail(std::any::type_name::<V>(), reason))?;
        Ok((k, v))
    }

    /// The value stored under `stored`, decoded.
    fn value(&self, stored: Vec<u8>, value: Option<Bytes>) -> Result<Option<V>> {
        match value {
            Some(value) => decode_value(&value)
                .map(Some)
                .map_err(|reason| Error::Decode {
                    key: stored,
                    type_name: std::any::type_name::<V>(),
                    reason,
                }),
            None => Ok(None),
        }
    }

    /// The stored keys' bounds for `range` of typed keys, within the prefix.
    fn bounds<Q, R>(&self, range: R) -> (Bound<Vec<u8>>, Bound<Vec<u8>>)
    where
        Q: KeyEncode + ?Sized,
        R: RangeBounds<Q>,
    {
        let start = match range.start_bound() {
            Bound::Included(k) => Bound::Included(self.stored_key(k)),
            Bound::Excluded(k) => Bound::Excluded(self.stored_key(k)),
            Bound::Unbounded => Bound::Included(self.prefix.clone()),
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Bound::Included(self.stored_key(k)),
            Bound::Excluded(k) => Bound::Excluded(self.stored_key(k)),
            Bound::Unbounded => prefix_end(&self.prefix).map_or(Bound::Unbounded, Bound::Excluded),
        };
        (start, end)
    }
}

impl<K: Key, V: Serialize + DeserializeOwned, S: Source> Typed<K, V, S> {
    /// The value of `key`, if there is one.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        let stored = self.codec.stored_key(key);
        let value = self.source.get_bytes(&stored)?;
        self.codec.value(stored, value)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        Ok(self
            .source
            .get_bytes(&self.codec.stored_key(key))?
            .is_some())
    }

    /// Every entry, in key order (reversible with `.rev()`); from the store, as of the call.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Result<(K, V)>> + use<K, V, S> {
        self.range::<K, _>(..)
    }

    /// The entries with keys in `range`, in key order (reversible with `.rev()`); from the
    /// store, as of the call.
    pub fn range<Q, R>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Result<(K, V)>> + use<K, V, Q, R, S>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
        R: RangeBounds<Q>,
    {
        let (start, end) = self.codec.bounds(range);
        let codec = self.codec.clone();
        self.source
            .range_bytes(start, end)
            .map(move |entry| entry.and_then(|(k, v)| codec.decode(&k, &v)))
    }
}

impl<K: Key, V: Serialize + DeserializeOwned> Typed<K, V, Db> {
    /// Sets `key` to `value`, durably (as [`Db::put`]).
    pub fn put<Q>(&self, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.source
            .put(self.codec.stored_key(key), encode_value(value)?)
    }

    /// Removes `key` (as [`Db::delete`]).
    pub fn delete<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.source.delete(self.codec.stored_key(key))
    }

    /// Adds setting `key` to `value` to `batch`, to commit with [`Db::write`] together with
    /// other writes.
    pub fn put_in<Q>(&self, batch: &mut Batch, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        batch.put(self.codec.stored_key(key), encode_value(value)?);
        Ok(())
    }

    /// Adds removing `key` to `batch`.
    pub fn delete_in<Q>(&self, batch: &mut Batch, key: &Q)
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        batch.delete(self.codec.stored_key(key));
    }

    /// This view as of `snapshot` (which must be of the same store): read-only.
    pub fn at(&self, snapshot: &Snapshot) -> Typed<K, V, Snapshot> {
        Typed {
            source: snapshot.clone(),
            codec: self.codec.clone(),
        }
    }
}

/// A typed view inside a [`Db::transaction`], from [`Transaction::typed`]: reads and scans see
/// the transaction's own writes; writes commit with it.
pub struct TypedTransaction<'t, 'a, K, V> {
    tx: &'t mut Transaction<'a>,
    codec: Codec<K, V>,
}

impl<K: Key, V: Serialize + DeserializeOwned> TypedTransaction<'_, '_, K, V> {
    /// The value of `key`, including the transaction's own writes.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        let stored = self.codec.stored_key(key);
        let value = self.tx.get(&stored)?;
        self.codec.value(stored, value)
    }

    /// Whether `key` has a value, including the transaction's own writes.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.tx.contains_key(self.codec.stored_key(key))
    }

    /// Sets `key` to `value` when the transaction commits.
    pub fn put<Q>(&mut self, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.tx
            .put(self.codec.stored_key(key), encode_value(value)?)
    }

    /// Removes `key` when the transaction commits.
    pub fn delete<Q>(&mut self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.tx.delete(self.codec.stored_key(key))
    }

    /// Every entry, in key order, including the transaction's own writes.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Result<(K, V)>> + '_ {
        self.range::<K, _>(..)
    }

    /// The entries with keys in `range`, in key order, including the transaction's own writes.
    pub fn range<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = Result<(K, V)>> + '_
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
        R: RangeBounds<Q>,
    {
        let (start, end) = self.codec.bounds(range);
        let codec = &self.codec;
        self.tx
            .range::<Vec<u8>, _>((start, end))
            .map(move |entry| entry.and_then(|(k, v)| codec.decode(&k, &v)))
    }
}

/// The first key after every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encodings_are_pinned() {
        assert_eq!(encode_key(&0x0102u16), [1, 2]);
        assert_eq!(encode_key(&-1i8), [0x7F]);
        assert_eq!(encode_key(&0i32), [0x80, 0, 0, 0]);
        assert_eq!(encode_key("ab"), b"ab");
        assert_eq!(
            encode_key(&("a\0".to_owned(), 7u8)),
            [b'a', 0, 0xFF, 0, 0, 7]
        );
        assert_eq!(
            encode_value(&(1u8, "hi")).expect("encode"),
            [1, 1, 2, b'h', b'i']
        );
        assert_eq!(prefix_end(b"ab\xff"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(decode_key::<u32>(&[1, 2]).is_err());
        assert!(decode_key::<u8>(&[1, 2]).is_err(), "trailing bytes");
        assert!(decode_key::<bool>(&[2]).is_err());
        assert!(decode_key::<char>(&[0, 0, 0xD8, 0]).is_err(), "a surrogate");
        assert!(decode_key::<(String, u8)>(b"abc").is_err(), "no terminator");
        assert!(
            decode_key::<(String, u8)>(&[0, 1, 0, 0, 1]).is_err(),
            "bad escape"
        );
        assert!(decode_key::<String>(&[0xC0]).is_err(), "not UTF-8");
        assert!(decode_value::<u32>(&[]).is_err());
        assert!(decode_value::<u32>(&[2, 1]).is_err(), "unknown encoding");
        assert!(decode_value::<u8>(&[1, 1, 1]).is_err(), "left over");
        assert!(decode_value::<String>(&[1, 5, b'a']).is_err(), "too short");
    }
}
