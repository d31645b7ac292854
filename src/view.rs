//! The view readers see: the live memtable over the frozen memtable (during a flush) over the
//! memory-mapped sorted files (runs, newest first, over the partitions). Point reads try them in
//! that order; scans merge them, the upper layer winning for a key found in several.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::bytes::Bytes;
use crate::error::Result;
use crate::format::ManifestData;
use crate::memtable::{Below, Memtable};
use crate::sorted::SortedFile;
use crate::sync::lock;

/// Operations read from the log during recovery, oldest first, for [`View::replay`].
#[derive(Debug)]
pub struct ReplayedOps {
    ops: Vec<ReplayedOp>,
    /// Where the next operation comes in the log.
    next_position: u64,
    /// Beyond this many operations, the ones overwritten are dropped as they come, so that a log
    /// of many writes to few keys is not held whole.
    squeeze_at: usize,
}

#[derive(Debug)]
struct ReplayedOp {
    /// The key's first eight bytes as an integer, so that sorting seldom follows a pointer.
    prefix: u64,
    position: u64,
    key: Bytes,
    value: Option<Bytes>,
}

impl Default for ReplayedOps {
    fn default() -> Self {
        ReplayedOps {
            ops: Vec::new(),
            next_position: 0,
            squeeze_at: 1 << 20,
        }
    }
}

impl ReplayedOps {
    pub fn push(&mut self, key: Bytes, value: Option<Bytes>) {
        if self.ops.len() >= self.squeeze_at {
            self.keep_newest();
            // Squeeze again only once as many more have come, so that squeezing stays linear.
            self.squeeze_at = self.squeeze_at.max(2 * self.ops.len());
        }
        self.ops.push(ReplayedOp {
            prefix: crate::format::key_prefix(&key),
            position: self.next_position,
            key,
            value,
        });
        self.next_position += 1;
    }

    /// Sorts by key and keeps only the newest operation on each, in place. Keys are compared
    /// whole only when their prefixes tie; equal keys sort newest first, and the first of each
    /// run is kept.
    fn keep_newest(&mut self) {
        self.ops.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| a.key.cmp(&b.key))
                .then(b.position.cmp(&a.position))
        });
        self.ops
            .dedup_by(|later, kept| later.prefix == kept.prefix && later.key == kept.key);
    }
}

/// `upper` and `lower`, each sorted by `order` with no key twice, merged into one such run; where
/// both hold a key, `upper`'s entry wins.
fn merge_over(
    upper: Vec<(Bytes, Option<Bytes>)>,
    lower: Vec<(Bytes, Option<Bytes>)>,
    order: impl Fn(&[u8], &[u8]) -> Ordering,
) -> Vec<(Bytes, Option<Bytes>)> {
    if upper.is_empty() {
        return lower;
    }
    if lower.is_empty() {
        return upper;
    }
    let mut out = Vec::with_capacity(upper.len() + lower.len());
    let mut upper = upper.into_iter().peekable();
    let mut lower = lower.into_iter().peekable();
    while let (Some((u, _)), Some((l, _))) = (upper.peek(), lower.peek()) {
        match order(u, l) {
            Ordering::Less => out.extend(upper.next()),
            Ordering::Greater => out.extend(lower.next()),
            Ordering::Equal => {
                lower.next();
                out.extend(upper.next());
            }
        }
    }
    out.extend(upper);
    out.extend(lower);
    out
}

/// The sorted files of one manifest, opened: the runs over the partitions.
#[derive(Debug, Default)]
pub struct Tables {
    /// The manifest they were opened from (number 0: a store of format 1, read as it is).
    pub manifest: ManifestData,
    /// Flushed memtables, newest first; their entries may be tombstones.
    pub runs: Vec<Arc<SortedFile>>,
    /// Key-range partitions in key order; their ranges are disjoint.
    pub parts: Vec<Arc<SortedFile>>,
    /// Each partition's first key: a key belongs to the last partition whose first key is at
    /// or below it (to the first partition if none is). Copied to the heap: one key per file.
    part_firsts: Vec<Bytes>,
    /// Bytes of the runs, and of the partitions.
    run_bytes: u64,
    part_bytes: u64,
}

impl Tables {
    /// The tables of `manifest`, with its files opened in its order.
    pub fn new(
        manifest: ManifestData,
        runs: Vec<Arc<SortedFile>>,
        parts: Vec<Arc<SortedFile>>,
    ) -> Result<Tables> {
        let part_firsts = parts
            .iter()
            .map(|p| Ok(p.first_key_in_file()?.map(Bytes::from).unwrap_or_default()))
            .collect::<Result<_>>()?;
        let sum = |files: &[Arc<SortedFile>]| files.iter().map(|f| f.file_bytes()).sum();
        Ok(Tables {
            run_bytes: sum(&runs),
            part_bytes: sum(&parts),
            manifest,
            runs,
            parts,
            part_firsts,
        })
    }

    /// The index of the partition whose range holds `key` (0 if there is none at all).
    pub fn part_index(&self, key: &[u8]) -> usize {
        self.part_firsts
            .partition_point(|first| &first[..] <= key)
            .saturating_sub(1)
    }

    /// The entry for `key` in the runs, newest first, then its partition: `None` if no file has
    /// one, `Some(None)` for a tombstone.
    pub fn get(&self, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        for run in &self.runs {
            if let Some(entry) = run.get(key)? {
                return Ok(Some(entry));
            }
        }
        match self.parts.get(self.part_index(key)) {
            Some(part) => part.get(key),
            None => Ok(None),
        }
    }

    /// Whether the files hold a live `key`, reading data blocks with `pread` (see
    /// [`SortedFile::knows`]).
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        for run in &self.runs {
            if let Some(live) = run.knows(key)? {
                return Ok(live);
            }
        }
        match self.parts.get(self.part_index(key)) {
            Some(part) => Ok(part.knows(key)?.unwrap_or(false)),
            None => Ok(false),
        }
    }

    /// Bytes of the runs, and of the partitions.
    pub fn bytes(&self) -> (u64, u64) {
        (self.run_bytes, self.part_bytes)
    }

    /// The open file of each id this set shares with `manifest`, for reuse by the next set.
    pub fn reusable(&self) -> std::collections::HashMap<(bool, u64), Arc<SortedFile>> {
        let runs = self.manifest.runs.iter().zip(&self.runs);
        let parts = self.manifest.parts.iter().zip(&self.parts);
        runs.map(|(&id, f)| ((true, id), Arc::clone(f)))
            .chain(parts.map(|(&id, f)| ((false, id), Arc::clone(f))))
            .collect()
    }
}

/// Readers' view of the store, behind the handle's `RwLock`.
#[derive(Debug, Default)]
pub struct View {
    /// Writes since the newest flush this handle knows of. Replaced only through
    /// [`View::retire_memtable`] or [`View::replace`], which hand it to the snapshots reading it.
    pub memtable: Memtable,
    /// The read snapshots of the live memtable.
    pub readers: Arc<MemtableReaders>,
    /// The writes being flushed into a run (by this handle).
    pub frozen: Option<Arc<Memtable>>,
    /// The sorted files, as the newest manifest this handle applied names them.
    pub tables: Arc<Tables>,
    /// Every commit below this sequence number is applied, and none at or above it.
    pub next_seq: u64,
}

/// The read snapshots of one memtable while it is live, and the table once the view has
/// replaced it (frozen it for a flush, or rebuilt from the log): they go on reading it there.
#[derive(Debug, Default)]
pub struct MemtableReaders {
    retired: OnceLock<Arc<Memtable>>,
    /// How many open snapshots are as of each sequence number.
    open: Mutex<BTreeMap<u64, usize>>,
    /// A snapshot closed since the live table last dropped the history no one needs.
    closed: AtomicBool,
}

/// What a write keeps for the read snapshots open on the live memtable (see
/// [`Memtable::preserve`]): the write's sequence number is at least `at`, and the newest
/// snapshot is as of `newest_reader`.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    at: u64,
    newest_reader: u64,
}

impl View {
    /// The layers as they are now, for reading.
    fn layers(&self) -> Layers<'_> {
        Layers {
            live: &self.memtable,
            frozen: self.frozen.as_deref(),
            tables: &self.tables,
            at: None,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.layers().get(key)
    }

    /// Opens a read snapshot of the view as it is: O(1), a few reference counts. The snapshot
    /// keeps what it reads (the memtables and the open files) until it is dropped.
    pub fn read_point(&self) -> ReadPoint {
        let readers = Arc::clone(&self.readers);
        *lock(&readers.open).entry(self.next_seq).or_default() += 1;
        ReadPoint {
            at: self.next_seq,
            live: readers,
            frozen: self.frozen.clone(),
            tables: Arc::clone(&self.tables),
        }
    }

    /// Takes the live memtable out for `next`, handing it to the snapshots reading it.
    pub fn retire_memtable(&mut self, next: Memtable) -> Arc<Memtable> {
        let old = Arc::new(std::mem::replace(&mut self.memtable, next));
        let readers = std::mem::take(&mut self.readers);
        if Arc::strong_count(&readers) > 1 {
            // Open snapshots read it: set before the view lock is released, so that a snapshot
            // that finds no retired table under the lock reads the live one.
            let _ = readers.retired.set(Arc::clone(&old));
        }
        old
    }

    /// Replaces the whole view (a reload from the files and the log), handing the live
    /// memtable to the snapshots reading it.
    pub fn replace(&mut self, next: View) {
        self.retire_memtable(Memtable::default());
        *self = next;
    }

    /// Before applying commits at sequence number `next_seq` and on: what the writes must keep
    /// for the snapshots open on the live memtable (`None` if there are none), having dropped
    /// what the snapshots closed since no longer need.
    pub fn keep_for_readers(&mut self) -> Option<Keep> {
        let open = lock(&self.readers.open);
        if self.memtable.history_bytes() > 0
            && (open.is_empty()
                || self.readers.closed.load(AtomicOrdering::Acquire)
                    && self.memtable.history_grew())
        {
            // A snapshot closing now has left `open` already (it is locked): its flag, set
            // after this, only asks for a pruning that finds nothing more.
            self.readers.closed.store(false, AtomicOrdering::Release);
            self.memtable.forget_unread_history(&open);
        }
        open.keys().next_back().map(|&newest_reader| Keep {
            at: self.next_seq,
            newest_reader,
        })
    }

    /// What the layers below the live memtable hold of `key`, looked up in the frozen memtable
    /// and then the files (with `pread`, so that a write of a new key the filter lets through
    /// does not fault in the map around its block); `None` if the live memtable holds the key,
    /// which then knows.
    pub fn below(&self, key: &[u8]) -> Result<Option<Below>> {
        if self.memtable.knows(key).is_some() {
            return Ok(None);
        }
        let live = match self.frozen.as_ref().and_then(|f| f.knows(key)) {
            Some(live) => live,
            None => self.tables.contains(key)?,
        };
        Ok(Some(Below::from_live(live)))
    }

    /// Applies one committed operation. `below` is what [`View::below`] said of the key (looked
    /// up beforehand, under the read lock rather than this write lock), or `None` to leave it
    /// unknown until [`View::len`] or the flush resolves it. A delete leaves a tombstone unless
    /// nothing is known to lie below. `keep`: what [`View::keep_for_readers`] said.
    pub fn apply(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        below: Option<Below>,
        keep: Option<Keep>,
    ) {
        if let Some(keep) = keep {
            self.memtable.preserve(&key, keep.at, keep.newest_reader);
        }
        let known = self
            .memtable
            .below(&key)
            .or(below)
            .unwrap_or(Below::Unknown);
        match value {
            Some(value) => {
                self.memtable.insert_over(key, Some(value), known);
            }
            // With snapshots open, a delete leaves an entry to hang what it replaced on.
            None if known == Below::Absent && keep.is_none() => {
                self.memtable.remove(&key);
            }
            None => {
                self.memtable.insert_over(key, None, known);
            }
        }
    }

    /// Applies a replayed log's operations, in log order, to a view whose memtable is empty:
    /// the same end state as [`View::apply`] on each in turn, built in one go — the newest
    /// operation on each key picked out by a sort, then the tree built from sorted entries
    /// (replaying a loaded store's log one insert at a time spent most of an open comparing keys).
    /// Nothing is looked up below.
    pub fn replay(&mut self, mut ops: ReplayedOps) {
        debug_assert_eq!(self.memtable.len(), 0);
        ops.keep_newest();
        let count = ops.ops.len();
        let entries = ops.ops.into_iter().map(|op| (op.key, op.value));
        self.memtable = Memtable::from_sorted(entries, count);
    }

    /// Number of live keys: the manifest's count for the files, corrected by each memtable for
    /// the keys it holds, once what lies below each of them is looked up (through the maps).
    pub fn len(&self) -> Result<u64> {
        let tables = &self.tables;
        let mut below = tables.manifest.live_keys;
        if let Some(frozen) = &self.frozen {
            frozen.resolve(|key| Ok(tables.get(key)?.flatten().is_some()))?;
            below = frozen.count_over(below);
        }
        self.memtable.resolve(
            |key| match self.frozen.as_ref().and_then(|f| f.knows(key)) {
                Some(live) => Ok(live),
                None => Ok(tables.get(key)?.flatten().is_some()),
            },
        )?;
        Ok(self.memtable.count_over(below))
    }
}

/// A read snapshot of a view: every commit below `at`, and none after. Holds the frozen
/// memtable and the files it read from, and is counted among the live memtable's readers (which
/// keeps what later writes replace) until dropped.
#[derive(Debug)]
pub struct ReadPoint {
    /// Every commit below this sequence number, and none other.
    pub at: u64,
    /// The readers of the memtable that was live, where it goes once replaced.
    live: Arc<MemtableReaders>,
    /// The frozen memtable and the files, as they were.
    pub frozen: Option<Arc<Memtable>>,
    pub tables: Arc<Tables>,
}

impl ReadPoint {
    /// The memtable that was live when the snapshot was taken, if the view has replaced it
    /// since; while it has not, it is the view's live one (read under the view's lock).
    pub fn retired(&self) -> Option<&Arc<Memtable>> {
        self.live.retired.get()
    }

    /// Whether `view`'s live memtable is the one this snapshot was taken over.
    pub fn reads(&self, view: &View) -> bool {
        Arc::ptr_eq(&self.live, &view.readers)
    }

    /// The layers as of the snapshot, `live` being its memtable (the retired one, or the
    /// view's).
    pub fn layers<'a>(&'a self, live: &'a Memtable) -> Layers<'a> {
        Layers {
            live,
            frozen: self.frozen.as_deref(),
            tables: &self.tables,
            at: Some(self.at),
        }
    }
}

impl Drop for ReadPoint {
    fn drop(&mut self) {
        let mut open = lock(&self.live.open);
        if let Some(count) = open.get_mut(&self.at) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.at);
            }
        }
        drop(open);
        self.live.closed.store(true, AtomicOrdering::Release);
    }
}

/// The layers a read goes through, newest first: the live memtable, the frozen one, the runs
/// and the partitions; as they are now, or as a snapshot sees them.
pub struct Layers<'a> {
    live: &'a Memtable,
    frozen: Option<&'a Memtable>,
    tables: &'a Tables,
    /// The snapshot's sequence number: the memtables are read as of it.
    at: Option<u64>,
}

impl Layers<'_> {
    fn memtable_get(&self, table: &Memtable, key: &[u8]) -> Option<Option<Bytes>> {
        match self.at {
            Some(at) => table.get_at(key, at),
            None => table.get(key),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if let Some(entry) = self.memtable_get(self.live, key) {
            return Ok(entry);
        }
        if let Some(entry) = self.frozen.and_then(|f| self.memtable_get(f, key)) {
            return Ok(entry);
        }
        Ok(self.tables.get(key)?.flatten())
    }

    /// Up to about `limit` live entries within `lo..hi` from the near end (ascending if
    /// `forward`), merged across the layers. Also returns the key up to which every layer was
    /// read (`None` if the range is exhausted): the caller continues past it.
    pub fn fetch(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        forward: bool,
        limit: usize,
    ) -> Result<Chunk> {
        let far = if forward { hi } else { lo };
        let tables = self.tables;
        // The partitions first: up to `limit` of their entries. If they have more, only keys up
        // to their last one can be complete, so the other layers are read no further than that
        // — reading them to their own `limit` would mostly fetch keys the next chunk reads
        // again. Sized up front (a chunk is at most a thousand or so): growing these vectors by
        // doubling cost about 5 % of a first scan's instructions.
        let mut from_parts = Vec::with_capacity(if tables.parts.is_empty() { 0 } else { limit });
        if !tables.parts.is_empty() {
            let mut cursor = PartsCursor::new(tables, lo, hi, forward)?;
            while from_parts.len() < limit {
                match cursor.next_entry()? {
                    Some((k, v)) if within(&k, far, forward) => from_parts.push((k, v)),
                    _ => break,
                }
            }
        }
        let parts_stop = (from_parts.len() >= limit)
            .then(|| from_parts.last().map(|(k, _)| k.clone()))
            .flatten();
        let (upper_lo, upper_hi) = match (&parts_stop, forward) {
            (Some(stop), true) => (lo, Bound::Included(&stop[..])),
            (Some(stop), false) => (Bound::Included(&stop[..]), hi),
            (None, _) => (lo, hi),
        };
        let upper_far = if forward { upper_hi } else { upper_lo };
        // Up to `limit` entries (tombstones included) from each upper layer, newest first.
        let mut layers: Vec<Vec<(Bytes, Option<Bytes>)>> =
            Vec::with_capacity(3 + tables.runs.len());
        let from_memtable =
            |m: &Memtable| m.entries_at(upper_lo, upper_hi, forward, limit, self.at);
        layers.push(from_memtable(self.live));
        if let Some(frozen) = self.frozen {
            layers.push(from_memtable(frozen));
        }
        for run in &tables.runs {
            let mut cursor = run.cursor(upper_lo, upper_hi, forward)?;
            let mut out = Vec::new();
            while out.len() < limit {
                match cursor.next_entry()? {
                    Some((k, v)) if within(&k, upper_far, forward) => out.push((k, v)),
                    _ => break,
                }
            }
            layers.push(out);
        }
        if !tables.parts.is_empty() {
            if layers.iter().all(Vec::is_empty) {
                // Nothing above overlaps this stretch (e.g. a scan of a compacted store): the
                // partitions' entries are the answer, with nothing to merge.
                return Ok(Chunk {
                    entries: from_parts
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, v?)))
                        .collect(),
                    horizon: parts_stop,
                });
            }
            layers.push(from_parts);
        }

        // Every layer that may hold more stopped at its last key: only keys up to the nearest of
        // those stops are known to be complete.
        let order = |a: &[u8], b: &[u8]| if forward { a.cmp(b) } else { b.cmp(a) };
        let horizon = layers
            .iter()
            .filter(|l| l.len() >= limit)
            .filter_map(|l| l.last().map(|(k, _)| k.clone()))
            .min_by(|a, b| order(a, b));

        // Only keys up to the horizon are complete in every layer: cut each layer there, then
        // merge pairwise from the top, the upper layer winning a key found in both, and drop the
        // tombstones last (until then they hide the keys below them).
        let mut merged = Vec::new();
        for mut layer in layers {
            if let Some(h) = &horizon {
                let keep = layer.partition_point(|(k, _)| order(k, h) != Ordering::Greater);
                layer.truncate(keep);
            }
            merged = merge_over(merged, layer, order);
        }
        let out: Vec<(Bytes, Bytes)> = merged
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        Ok(Chunk {
            entries: out,
            horizon,
        })
    }
}

/// A cursor across the partitions in key order (or its reverse), as if they were one file.
struct PartsCursor<'a> {
    tables: &'a Tables,
    forward: bool,
    /// The partition being read, and its cursor.
    at: usize,
    cursor: crate::sorted::Cursor,
}

impl<'a> PartsCursor<'a> {
    fn new(tables: &'a Tables, lo: Bound<&[u8]>, hi: Bound<&[u8]>, forward: bool) -> Result<Self> {
        let at = match if forward { lo } else { hi } {
            Bound::Included(k) | Bound::Excluded(k) => tables.part_index(k),
            Bound::Unbounded if forward => 0,
            Bound::Unbounded => tables.parts.len() - 1,
        };
        let cursor = tables.parts[at].cursor(lo, hi, forward)?;
        Ok(PartsCursor {
            tables,
            forward,
            at,
            cursor,
        })
    }

    fn next_entry(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        loop {
            if let Some(entry) = self.cursor.next_entry()? {
                return Ok(Some(entry));
            }
            let next = if self.forward {
                Some(self.at + 1).filter(|&i| i < self.tables.parts.len())
            } else {
                self.at.checked_sub(1)
            };
            let Some(next) = next else { return Ok(None) };
            self.at = next;
            // The partitions' ranges are disjoint and in order: the next one lies wholly beyond
            // the near bound; the far bound is the caller's to check.
            self.cursor =
                self.tables.parts[next].cursor(Bound::Unbounded, Bound::Unbounded, self.forward)?;
        }
    }
}

/// A run of merged entries from [`Layers::fetch`].
pub struct Chunk {
    /// Live entries, nearest first.
    pub entries: Vec<(Bytes, Bytes)>,
    /// Every key up to this one has been seen; `None` if the range is exhausted.
    pub horizon: Option<Bytes>,
}

/// Whether `key` is inside the far `bound` of a scan going `forward` (or backward).
fn within(key: &[u8], bound: Bound<&[u8]>, forward: bool) -> bool {
    match bound {
        Bound::Unbounded => true,
        Bound::Included(b) if forward => key <= b,
        Bound::Excluded(b) if forward => key < b,
        Bound::Included(b) => key >= b,
        Bound::Excluded(b) => key > b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng::Rng;

    /// Replaying in one go (squeezing every few dozen operations) ends where applying the
    /// operations one by one does: same entries, same tombstones, same live count.
    #[test]
    fn replay_equals_applying_one_by_one() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for squeeze_at in [usize::MAX, 1, 37] {
            let mut replayed = ReplayedOps {
                squeeze_at,
                ..ReplayedOps::default()
            };
            let mut one_by_one = View::default();
            for _ in 0..3000 {
                let r = next();
                // Keys of 0 to 11 bytes, many sharing their first eight.
                let key =
                    Bytes::from(format!("{:0w$}", r % 61, w = (r >> 8) as usize % 12).as_str());
                let value = (r % 5 != 0).then(|| Bytes::from(r.to_le_bytes().to_vec()));
                replayed.push(key.clone(), value.clone());
                one_by_one.apply(key, value, None, None);
            }
            let mut at_once = View::default();
            at_once.replay(replayed);
            let all = |v: &View| {
                v.memtable
                    .range(Bound::Unbounded, Bound::Unbounded)
                    .collect::<Vec<_>>()
            };
            assert_eq!(all(&at_once), all(&one_by_one), "squeeze at {squeeze_at}");
            assert_eq!(at_once.len().expect("len"), one_by_one.len().expect("len"));
            assert_eq!(
                at_once.memtable.approximate_bytes(),
                one_by_one.memtable.approximate_bytes()
            );
        }
    }

    /// Applying operations over a lower layer keeps the live count and the tombstones right: a
    /// put over a tombstone adds a key, and every key below that was deleted keeps a tombstone.
    #[test]
    fn applying_over_a_lower_layer_keeps_the_live_count() {
        let mut below = Memtable::default();
        for k in 0..20u8 {
            below.insert(Bytes::from(vec![k]), Some(Bytes::from(vec![k])));
        }
        let mut view = View {
            frozen: Some(Arc::new(below)),
            ..View::default()
        };
        let mut model: std::collections::BTreeSet<u8> = (0..20).collect();
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let x = rng.next_u64();
            let k = (x % 40) as u8;
            let key = Bytes::from(vec![k]);
            let value = !(x >> 32).is_multiple_of(3);
            let below = if x.is_multiple_of(2) {
                view.below(&key).expect("look below")
            } else {
                None // left for `len` to resolve
            };
            view.apply(key, value.then(|| Bytes::from(vec![0])), below, None);
            if value {
                model.insert(k);
            } else {
                model.remove(&k);
            }
            // Counted now and then, so that entries are resolved at different times.
            if x.is_multiple_of(7) {
                assert_eq!(view.len().expect("len"), model.len() as u64);
            }
        }
        assert_eq!(view.len().expect("len"), model.len() as u64);
        for k in 0..40u8 {
            let entry = view.memtable.get(&[k]);
            match (model.contains(&k), k < 20) {
                (true, _) => assert!(matches!(entry, Some(Some(_))), "{k}"),
                (false, true) => {
                    assert_eq!(entry, Some(None), "{k}: a tombstone over the key below")
                }
                // A delete of a key nothing was known of leaves a tombstone until it is known
                // to hide nothing (then a later delete, or the flush, drops it).
                (false, false) => assert!(matches!(entry, None | Some(None)), "{k}"),
            }
        }
    }

    /// Every entry of `lo..hi` through `layers`, chunk by chunk as an iterator reads them.
    fn scan_all(layers: &Layers<'_>, forward: bool, limit: usize) -> Vec<(Bytes, Bytes)> {
        let (mut lo, mut hi) = (Bound::Unbounded, Bound::Unbounded);
        let mut out = Vec::new();
        loop {
            let chunk = layers
                .fetch(
                    lo.as_ref().map(|k: &Bytes| &k[..]),
                    hi.as_ref().map(|k: &Bytes| &k[..]),
                    forward,
                    limit,
                )
                .expect("fetch");
            out.extend(chunk.entries);
            match chunk.horizon {
                None => return out,
                Some(h) if forward => lo = Bound::Excluded(h),
                Some(h) => hi = Bound::Excluded(h),
            }
        }
    }

    /// Read snapshots taken between commits read, however many writes, removals and memtable
    /// replacements follow, exactly what the view held when each was taken; and once they are
    /// dropped, the history kept for them goes.
    #[test]
    fn snapshots_read_the_view_as_it_was_when_taken() {
        use std::collections::BTreeMap;
        let mut rng = Rng::new(0xD1B5_4A32_D192_ED03);
        let mut view = View::default();
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut open: Vec<(ReadPoint, BTreeMap<Bytes, Bytes>)> = Vec::new();
        let read = |view: &View, point: &ReadPoint, key: &[u8]| match point.retired() {
            Some(retired) => point.layers(retired).get(key).expect("get"),
            None => point.layers(&view.memtable).get(key).expect("get"),
        };
        for step in 0..4000u32 {
            let x = rng.next_u64();
            match x % 100 {
                0..=7 if open.len() < 6 => open.push((view.read_point(), model.clone())),
                0..=11 if !open.is_empty() => {
                    let i = (x >> 8) as usize % open.len();
                    open.swap_remove(i);
                }
                12 => {
                    // A flush's cut: the live table becomes (part of) the frozen one.
                    let live = view.retire_memtable(Memtable::default());
                    view.frozen = Some(match view.frozen.take() {
                        Some(older) => Arc::new(older.overlaid_with(&live)),
                        None => live,
                    });
                }
                _ => {
                    // One commit of one to three operations on keys of 0..40.
                    let keep = view.keep_for_readers();
                    for i in 0..1 + (x >> 40) % 3 {
                        let k = (x >> (8 + 6 * i)) % 40;
                        let key = Bytes::from(format!("k{k:02}").as_str());
                        let value = (!(x >> (30 + i)).is_multiple_of(4))
                            .then(|| Bytes::from(format!("{step}.{i}").as_str()));
                        let below = view.below(&key).expect("below");
                        match &value {
                            Some(v) => model.insert(key.clone(), v.clone()),
                            None => model.remove(&key),
                        };
                        view.apply(key, value, below, keep);
                    }
                    view.next_seq += 1;
                }
            }
            if step % 97 == 0 || x % 100 < 12 {
                for (point, seen) in &open {
                    for k in 0..40 {
                        let key = format!("k{k:02}");
                        assert_eq!(
                            read(&view, point, key.as_bytes()).as_ref(),
                            seen.get(key.as_bytes()),
                            "step {step}: {key} as of {}",
                            point.at
                        );
                    }
                    let expected: Vec<(Bytes, Bytes)> =
                        seen.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let layers = match point.retired() {
                        Some(retired) => point.layers(retired),
                        None => point.layers(&view.memtable),
                    };
                    let limit = 1 + (x >> 50) as usize % 7;
                    assert_eq!(scan_all(&layers, true, limit), expected, "step {step}");
                    let mut descending = expected.clone();
                    descending.reverse();
                    assert_eq!(scan_all(&layers, false, limit), descending, "step {step}");
                }
            }
        }
        assert!(view.memtable.history_bytes() > 0 || open.is_empty());
        open.clear();
        view.keep_for_readers();
        assert_eq!(view.memtable.history_bytes(), 0, "nothing kept for no one");
    }

    /// A snapshot held while one key is written over and over, with short-lived snapshots
    /// coming and going between the writes (an iterator per request, say), keeps what it read,
    /// and the history kept for it stays about one state, not one per write.
    #[test]
    fn history_no_open_snapshot_needs_is_dropped() {
        let mut view = View::default();
        let write = |view: &mut View, value: &str| {
            let keep = view.keep_for_readers();
            let key = Bytes::from("hot");
            let below = view.below(&key).expect("below");
            view.apply(key, Some(Bytes::from(value)), below, keep);
            view.next_seq += 1;
        };
        write(&mut view, "first");
        let long = view.read_point();
        let mut most = 0;
        for i in 0..10_000 {
            let short = view.read_point();
            write(&mut view, &i.to_string());
            drop(short);
            most = most.max(view.memtable.history_bytes());
        }
        assert!(most < 16 << 10, "{most} bytes kept for two snapshots");
        let seen = long.layers(&view.memtable).get(b"hot").expect("get");
        assert_eq!(seen.as_deref(), Some(&b"first"[..]));
        drop(long);
        write(&mut view, "last");
        assert_eq!(view.memtable.history_bytes(), 0);
    }

    #[test]
    fn key_prefix_orders_as_the_keys_do() {
        use crate::format::key_prefix;
        let keys: [&[u8]; 8] = [
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"a\0\x01",
            b"abcdefgh",
            b"abcdefgh\0",
            b"b",
        ];
        for a in keys {
            for b in keys {
                if key_prefix(a) != key_prefix(b) {
                    assert_eq!(key_prefix(a) < key_prefix(b), a < b, "{a:?} {b:?}");
                }
            }
        }
    }
}
