//! The in-memory view of the writes since the last flush: an ordered map from key to value, or
//! to a tombstone where a delete must hide an older value underneath; and, while read snapshots
//! are open on the table, what each write replaced, so that they still read what they saw.
#![allow(
    clippy::mutable_key_type,
    reason = "an entry's `below` is an atomic, but its order, equality and hash read only its key"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::bytes::Bytes;

/// Bytes of bookkeeping charged per entry on top of key and value, for `approximate_bytes`: the
/// tree's share, the hash index's and the allocation's header.
const ENTRY_OVERHEAD: usize = 112;

/// One write: the key and the value in a single shared allocation, the key first (a bulk load
/// spent a fifth of its time in `malloc` and `free` when they were two); the key's first eight
/// bytes again as an integer, kept in the tree's node, so that most comparisons while searching
/// the tree read no memory but the node's (a tree of bare shared keys spent a fifth of a bulk
/// load in comparisons, each a cache miss somewhere on the heap); and whether it is a tombstone.
/// Ordered, compared and hashed as its key's bytes, so both the tree and the hash index look it
/// up by a bare `&[u8]`.
///
/// `below` says whether the layers below this table hold the key live: [`Below::Unknown`] until
/// it is looked up (by a commit, or later by [`Memtable::resolve`]). The tree's entry and the
/// index's copy each carry it, kept equal.
struct Entry {
    prefix: u64,
    bytes: Arc<[u8]>,
    key_len: u32,
    live: bool,
    below: AtomicU8,
    /// The table's history holds what this key held before (see [`Memtable::preserve`]).
    kept: bool,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            prefix: self.prefix,
            bytes: Arc::clone(&self.bytes),
            key_len: self.key_len,
            live: self.live,
            below: AtomicU8::new(self.below.load(Ordering::Relaxed)),
            kept: self.kept,
        }
    }
}

/// Whether the layers below a memtable hold a key live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Below {
    /// Not looked up yet.
    Unknown = 0,
    /// No lower layer holds the key, or the newest one that does holds a tombstone.
    Absent = 1,
    /// A lower layer holds a value for the key.
    Present = 2,
}

impl Below {
    fn from_u8(b: u8) -> Below {
        match b {
            1 => Below::Absent,
            2 => Below::Present,
            _ => Below::Unknown,
        }
    }

    /// `Present` if `live`, else `Absent`.
    pub fn from_live(live: bool) -> Below {
        if live { Below::Present } else { Below::Absent }
    }
}

// The tree and the index each hold 32 bytes per entry, and share its allocation.
const _: () = assert!(std::mem::size_of::<Entry>() == 32);
// Keys fit `key_len`.
const _: () = assert!(crate::limits::MAX_KEY_LEN <= u32::MAX as usize);

impl Entry {
    /// Takes over the allocation of a key and value made by [`Bytes::pair`] (every batch's
    /// puts, and replayed records, are), or copies them into one.
    fn new(key: Bytes, value: Option<Bytes>, below: Below) -> Entry {
        let bytes = Bytes::key_and_value(&key, value.as_ref())
            .unwrap_or_else(|| crate::bytes::joined(&key, value.as_deref().unwrap_or_default()));
        Entry {
            prefix: crate::format::key_prefix(&key),
            bytes,
            key_len: key.len() as u32,
            live: value.is_some(),
            below: AtomicU8::new(below as u8),
            kept: false,
        }
    }

    fn below(&self) -> Below {
        Below::from_u8(self.below.load(Ordering::Relaxed))
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn key_bytes(&self) -> Bytes {
        Bytes::shared(&self.bytes, 0, self.key_len as usize)
    }

    /// The value, or `None` for a tombstone.
    fn value(&self) -> Option<Bytes> {
        let key_len = self.key_len as usize;
        self.live
            .then(|| Bytes::shared(&self.bytes, key_len, self.bytes.len() - key_len))
    }

    /// What the entry counts for in [`Memtable::approximate_bytes`].
    fn footprint(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

impl std::borrow::Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Prefixes order as the keys do wherever they differ (see `key_prefix`).
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.key().cmp(other.key()))
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so the index finds an entry by a bare key.
        self.key().hash(state);
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} = {:?}", self.key_bytes(), self.value())
    }
}

/// What a table held of a key before a write that read snapshots taken earlier must not see.
#[derive(Debug)]
struct Superseded {
    /// The write's sequence number is at least this: a reader as of `at` or earlier (one that
    /// sees the commits below it) reads `before` instead.
    at: u64,
    /// The entry the write replaced: `None` if the table had none (the reader looks below),
    /// `Some(None)` a tombstone.
    before: Option<Option<Bytes>>,
}

impl Superseded {
    fn footprint(&self, key: &[u8]) -> usize {
        let value = match &self.before {
            Some(Some(v)) => v.len(),
            _ => 0,
        };
        key.len() + value + ENTRY_OVERHEAD
    }
}

/// Ordered writes, each a put or a tombstone.
///
/// Point lookups go through a hash index of the same entries: a miss in the tree costs a dozen
/// key comparisons, each chasing a pointer to the key's bytes, and most point reads miss here
/// (their key lies in the snapshot) — with a quarter of a million entries that halved the rate
/// of random gets. The index hashes with foldhash, seeded at random per process (DECISIONS 31).
#[derive(Debug, Default)]
pub struct Memtable {
    map: BTreeSet<Entry>,
    index: HashSet<Entry, foldhash::fast::RandomState>,
    approximate_bytes: usize,
    /// Entries that hold a value.
    live: usize,
    /// Entries whose key the layers below hold live, and entries not looked up yet.
    present: AtomicUsize,
    unknown: AtomicUsize,
    /// For each key written while read snapshots were open on the table, what it held before,
    /// oldest first (see [`Memtable::preserve`]). Empty while no snapshot is open. Every key in
    /// it has an entry in the table, marked `kept`, so that a read through a snapshot costs a
    /// plain read's probe of the index unless the key was written since.
    history: HashMap<Bytes, Vec<Superseded>, foldhash::fast::RandomState>,
    history_bytes: usize,
    /// `history_bytes` after the last pruning.
    history_bytes_kept: usize,
}

impl Memtable {
    /// The entry for `key`: `None` if this table knows nothing of it, `Some(None)` for a tombstone.
    pub fn get(&self, key: &[u8]) -> Option<Option<Bytes>> {
        self.index.get(key).map(Entry::value)
    }

    /// Whether this table has `key`: `Some(true)` live, `Some(false)` a tombstone, `None` unknown.
    pub fn knows(&self, key: &[u8]) -> Option<bool> {
        self.index.get(key).map(|entry| entry.live)
    }

    /// An empty table whose index has room for `entries` without growing.
    pub fn with_capacity(entries: usize) -> Memtable {
        Memtable {
            index: HashSet::with_capacity_and_hasher(entries, Default::default()),
            ..Memtable::default()
        }
    }

    /// Records `key = value` (or a tombstone). Returns what the table held for the key before:
    /// `Some(true)` a value, `Some(false)` a tombstone, `None` nothing. What the layers below
    /// hold of the key is carried over from the entry replaced, or else unknown.
    pub fn insert(&mut self, key: Bytes, value: Option<Bytes>) -> Option<bool> {
        self.insert_entry(Entry::new(key, value, Below::Unknown))
    }

    /// [`Memtable::insert`], with what the layers below hold of the key if the table has no
    /// entry for it yet (an entry replaced passes on what it knew).
    pub fn insert_over(&mut self, key: Bytes, value: Option<Bytes>, below: Below) -> Option<bool> {
        self.insert_entry(Entry::new(key, value, below))
    }

    /// What the layers below hold of `key`, if the table has an entry for it.
    pub fn below(&self, key: &[u8]) -> Option<Below> {
        self.index.get(key).map(Entry::below)
    }

    fn count(&mut self, entry: &Entry, sign: isize) {
        let add = |n: usize| n.wrapping_add_signed(sign);
        if entry.live {
            self.live = add(self.live);
        }
        match entry.below() {
            Below::Present => *self.present.get_mut() = add(*self.present.get_mut()),
            Below::Unknown => *self.unknown.get_mut() = add(*self.unknown.get_mut()),
            Below::Absent => {}
        }
    }

    fn insert_entry(&mut self, mut entry: Entry) -> Option<bool> {
        entry.kept = !self.history.is_empty() && self.history.contains_key(entry.key());
        // An entry replacing another of the same key keeps what that one knew of the layers
        // below (the index's copy is kept up to date, so this costs a hash probe, not a search
        // of the tree).
        if let Some(old) = self.index.get(entry.key()) {
            entry
                .below
                .store(old.below.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let added = entry.footprint();
        self.count(&entry, 1);
        self.index.replace(entry.clone());
        let previous = self.map.replace(entry);
        if let Some(old) = &previous {
            // Replacing an entry: take the old one off.
            self.approximate_bytes -= old.footprint();
            self.count(old, -1);
        }
        self.approximate_bytes += added;
        previous.map(|old| old.live)
    }

    /// Looks up, with `below`, what the layers below hold of every key not looked up yet
    /// (`below(key)` says whether they hold it live). Shared access: the answers are kept in
    /// atomics, so readers may resolve while others read.
    pub fn resolve(
        &self,
        below: impl Fn(&[u8]) -> crate::error::Result<bool>,
    ) -> crate::error::Result<()> {
        if self.unknown.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        for entry in &self.map {
            if entry.below() != Below::Unknown {
                continue;
            }
            let found = Below::from_live(below(entry.key())?);
            if entry
                .below
                .compare_exchange(
                    Below::Unknown as u8,
                    found as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                if let Some(copy) = self.index.get(entry.key()) {
                    copy.below.store(found as u8, Ordering::Relaxed);
                }
                if found == Below::Present {
                    self.present.fetch_add(1, Ordering::Relaxed);
                }
                self.unknown.fetch_sub(1, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Live keys in this table over layers that hold `below` live keys. Exact once
    /// [`Memtable::resolve`] has run since the last change (entries not looked up count as
    /// absent below).
    pub fn count_over(&self, below: u64) -> u64 {
        debug_assert_eq!(self.unknown.load(Ordering::Acquire), 0, "resolve first");
        (below + self.live as u64).saturating_sub(self.present.load(Ordering::Relaxed) as u64)
    }

    /// A table of `entries`, which must be sorted by key with no key twice (`capacity`: about
    /// how many there are). Building the tree from sorted entries is linear, where inserting
    /// them one by one costs a search each.
    pub fn from_sorted(
        entries: impl IntoIterator<Item = (Bytes, Option<Bytes>)>,
        capacity: usize,
    ) -> Memtable {
        let mut index = HashSet::with_capacity_and_hasher(capacity, Default::default());
        let (mut approximate_bytes, mut live) = (0, 0);
        let map: BTreeSet<Entry> = entries
            .into_iter()
            .map(|(key, value)| {
                let entry = Entry::new(key, value, Below::Unknown);
                approximate_bytes += entry.footprint();
                live += usize::from(entry.live);
                index.insert(entry.clone());
                entry
            })
            .collect();
        Memtable {
            unknown: AtomicUsize::new(map.len()),
            map,
            index,
            approximate_bytes,
            live,
            present: AtomicUsize::new(0),
            history: HashMap::default(),
            history_bytes: 0,
            history_bytes_kept: 0,
        }
    }

    /// A copy of this table with every entry of `upper` written over it (the entries are
    /// shared, not copied).
    pub fn overlaid_with(&self, upper: &Memtable) -> Memtable {
        let mut merged = Memtable {
            map: self.map.clone(),
            index: self.index.clone(),
            approximate_bytes: self.approximate_bytes,
            live: self.live,
            present: AtomicUsize::new(self.present.load(Ordering::Relaxed)),
            unknown: AtomicUsize::new(self.unknown.load(Ordering::Relaxed)),
            history: HashMap::default(),
            history_bytes: 0,
            history_bytes_kept: 0,
        };
        // An upper entry over one of this table's keys takes over what that one knew of the
        // layers below both; for other keys, what it knew of them is the same.
        for entry in &upper.map {
            merged.insert_entry(entry.clone());
        }
        merged
    }

    /// Forgets `key` entirely (used when no older value needs hiding). Returns what the table
    /// held for it, as [`Memtable::insert`] does.
    pub fn remove(&mut self, key: &[u8]) -> Option<bool> {
        self.index.remove(key);
        let old = self.map.take(key)?;
        self.approximate_bytes -= old.footprint();
        self.count(&old, -1);
        Some(old.live)
    }

    /// Entries with keys within the bounds, in order; empty if the bounds are inverted.
    pub fn range<'a>(
        &'a self,
        lo: Bound<&'a [u8]>,
        hi: Bound<&'a [u8]>,
    ) -> impl DoubleEndedIterator<Item = (Bytes, Option<Bytes>)> + 'a {
        self.map_range(lo, hi)
            .map(|entry| (entry.key_bytes(), entry.value()))
    }

    fn map_range<'a>(
        &'a self,
        lo: Bound<&'a [u8]>,
        hi: Bound<&'a [u8]>,
    ) -> impl DoubleEndedIterator<Item = &'a Entry> + 'a {
        let valid = bounds_nonempty(lo, hi);
        valid
            .then(|| self.map.range::<[u8], _>((lo, hi)))
            .into_iter()
            .flatten()
    }

    /// Before a write to `key` that readers as of `at` or earlier must not see: keeps what the
    /// table holds of the key now, for them. `newest_reader` is the latest sequence number a
    /// reader of this table is as of: if the key's last kept state already serves every reader
    /// up to that one (it was kept for a write at or after it), there is nothing new to keep.
    /// The write that follows must leave an entry for the key (a tombstone rather than
    /// [`Memtable::remove`]), which is then marked as kept.
    pub fn preserve(&mut self, key: &Bytes, at: u64, newest_reader: u64) {
        let before = self.index.get(&key[..]).map(Entry::value);
        let kept = self.history.entry(key.clone()).or_default();
        if kept.last().is_some_and(|last| last.at >= newest_reader) {
            return;
        }
        let record = Superseded { at, before };
        self.history_bytes += record.footprint(key);
        kept.push(record);
    }

    /// Drops the kept states no open reader needs: a reader as of `s` reads the first state
    /// kept at or after `s`, so a state is needed only if some reader lies between the one kept
    /// before it (exclusive) and it (inclusive). `readers`: the sequence numbers readers are as
    /// of (with how many at each); empty drops everything.
    pub fn forget_unread_history(&mut self, readers: &BTreeMap<u64, usize>) {
        if readers.is_empty() {
            self.history.clear();
            self.history_bytes = 0;
            self.history_bytes_kept = 0;
            return;
        }
        let mut freed = 0;
        self.history.retain(|key, kept| {
            let mut after = None;
            kept.retain(|record| {
                let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                after = Some(record.at);
                let keep = readers
                    .range((from, Bound::Included(record.at)))
                    .next()
                    .is_some();
                if !keep {
                    freed += record.footprint(key);
                }
                keep
            });
            !kept.is_empty()
        });
        self.history_bytes -= freed;
        self.history_bytes_kept = self.history_bytes;
    }

    /// Whether the history has doubled since it was last pruned (so that pruning it whenever
    /// a snapshot closes costs O(1) amortised per state kept).
    pub fn history_grew(&self) -> bool {
        self.history_bytes > 2 * self.history_bytes_kept + 4096
    }

    /// [`Memtable::approximate_bytes`] and [`Memtable::history_bytes`] together: what a flush
    /// frees (for the bound on memory: a flush hands the history to the snapshots that need it).
    pub fn heap_bytes(&self) -> usize {
        self.approximate_bytes + self.history_bytes
    }

    /// Heap bytes held only for read snapshots: the states kept by [`Memtable::preserve`].
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// The entry for `key` as a reader as of `at` sees it (every commit below `at`, none
    /// after): as [`Memtable::get`], or `None` if the table had no entry for it then.
    pub fn get_at(&self, key: &[u8], at: u64) -> Option<Option<Bytes>> {
        let entry = self.index.get(key)?;
        if entry.kept {
            return self.state_at(entry, at);
        }
        Some(entry.value())
    }

    /// What a reader as of `at` sees of a kept entry's key.
    fn state_at(&self, entry: &Entry, at: u64) -> Option<Option<Bytes>> {
        match self
            .history
            .get(entry.key())
            .and_then(|kept| kept.iter().find(|record| record.at >= at))
        {
            Some(record) => record.before.clone(),
            None => Some(entry.value()),
        }
    }

    /// Up to `limit` entries (tombstones included) with keys within the bounds, nearest first
    /// (ascending if `forward`), as a reader as of `at` sees them (`None`: as they are now).
    pub fn entries_at(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        forward: bool,
        limit: usize,
        at: Option<u64>,
    ) -> Vec<(Bytes, Option<Bytes>)> {
        let mut out = Vec::with_capacity(limit.min(self.len()));
        let at = at.filter(|_| !self.history.is_empty());
        let states = self.map_range(lo, hi).filter_map(|entry| match at {
            Some(at) if entry.kept => self
                .state_at(entry, at)
                .map(|state| (entry.key_bytes(), state)),
            _ => Some((entry.key_bytes(), entry.value())),
        });
        if forward {
            out.extend(states.take(limit));
        } else {
            // `filter_map` keeps the tree's iterator double-ended.
            out.extend(states.rev().take(limit));
        }
        out
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Approximate heap bytes held: keys, values and per-entry overhead.
    pub fn approximate_bytes(&self) -> usize {
        self.approximate_bytes
    }
}

/// Whether some key can lie within `lo..hi` (`BTreeMap::range` panics on inverted bounds).
pub fn bounds_nonempty(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a), Bound::Excluded(b)) | (Bound::Excluded(a), Bound::Included(b)) => {
            a < b
        }
        (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng::Rng;

    #[test]
    fn tracks_size_across_overwrites_and_removals() {
        let mut m = Memtable::default();
        m.insert(Bytes::from("key"), Some(Bytes::from("value")));
        assert_eq!(m.approximate_bytes(), 3 + 5 + ENTRY_OVERHEAD);
        m.insert(Bytes::from("key"), Some(Bytes::from("v")));
        assert_eq!(m.approximate_bytes(), 3 + 1 + ENTRY_OVERHEAD);
        m.insert(Bytes::from("key"), None);
        assert_eq!(m.approximate_bytes(), 3 + ENTRY_OVERHEAD);
        assert_eq!(m.remove(b"key"), Some(false));
        assert_eq!(m.approximate_bytes(), 0);
    }

    #[test]
    fn from_sorted_equals_inserting_one_by_one() {
        let entries: Vec<(Bytes, Option<Bytes>)> = (0..500u32)
            .map(|i| {
                let value = (i % 7 != 0).then(|| Bytes::from(vec![i as u8; (i % 40) as usize]));
                (Bytes::from(i.to_be_bytes().to_vec()), value)
            })
            .collect();
        let mut one_by_one = Memtable::default();
        for (k, v) in entries.iter().rev() {
            one_by_one.insert(k.clone(), v.clone());
        }
        let built = Memtable::from_sorted(entries, 0);
        assert_eq!(built.len(), one_by_one.len());
        assert_eq!(built.approximate_bytes(), one_by_one.approximate_bytes());
        let all = |m: &Memtable| {
            m.range(Bound::Unbounded, Bound::Unbounded)
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&built), all(&one_by_one));
        for i in 0..510u32 {
            let k = i.to_be_bytes();
            assert_eq!(built.get(&k), one_by_one.get(&k), "{i}");
        }
    }

    #[test]
    fn keys_order_and_look_up_as_their_bytes() {
        let mut m = Memtable::default();
        // Keys that share their first eight bytes, keys shorter than that, and short keys over
        // a small alphabet (so that prefixes tie, and differ at every position).
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut keys: Vec<Vec<u8>> = (0..=12)
            .flat_map(|n| [vec![b'k'; n], [vec![b'k'; n], vec![0]].concat()])
            .collect();
        for _ in 0..200 {
            let x = rng.next_u64();
            let key: Vec<u8> = (0..x % 12)
                .map(|i| [0, 1, 0xFF][(x >> (4 + 2 * i)) as usize % 3])
                .collect();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for (i, k) in keys.iter().enumerate().rev() {
            m.insert(
                Bytes::from(k.as_slice()),
                Some(Bytes::from((i as u32).to_be_bytes().to_vec())),
            );
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        let seen: Vec<Vec<u8>> = m
            .range(Bound::Unbounded, Bound::Unbounded)
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(seen, sorted);
        for (i, k) in keys.iter().enumerate() {
            let first = keys.iter().position(|x| x == k).expect("there");
            let value = Bytes::from((first as u32).to_be_bytes().to_vec());
            assert_eq!(m.get(k), Some(Some(value)), "{i}");
        }
        let lo = [b'k'; 7];
        let hi = [b'k'; 9];
        let between: Vec<Vec<u8>> = m
            .range(Bound::Excluded(&lo[..]), Bound::Included(&hi[..]))
            .map(|(k, _)| k.to_vec())
            .collect();
        let expected: Vec<Vec<u8>> = sorted
            .iter()
            .filter(|k| k.as_slice() > &lo[..] && k.as_slice() <= &hi[..])
            .cloned()
            .collect();
        assert_eq!(between, expected);
        assert!(m.remove(&hi).is_some());
        assert_eq!(m.get(&hi), None);
    }

    #[test]
    fn inverted_bounds_are_empty_not_a_panic() {
        let mut m = Memtable::default();
        m.insert(Bytes::from("b"), Some(Bytes::from("1")));
        let range = |lo, hi| m.range(lo, hi).count();
        assert_eq!(
            range(Bound::Included(&b"c"[..]), Bound::Excluded(&b"a"[..])),
            0
        );
        assert_eq!(
            range(Bound::Excluded(&b"b"[..]), Bound::Excluded(&b"b"[..])),
            0
        );
        assert_eq!(
            range(Bound::Included(&b"b"[..]), Bound::Included(&b"b"[..])),
            1
        );
    }
}
