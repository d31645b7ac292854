//! Sorted files: immutable, sorted runs of entries (a flushed memtable, `run-<id>`, or one
//! key-range partition of the compacted state, `part-<id>`; the version 1 `snap-<generation>` is
//! the same format without tombstones). An entry is a value or, in version 2, a tombstone that
//! hides the key in the files below.
//!
//! A sorted file is read through a memory map: opening checks only the header, the footer and the
//! (small) block index, so it costs the same for ten keys and for ten million. Each data block's
//! CRC is checked the first time the block is touched, and [`SortedFile::verify`] checks every byte.
//! Keys and values are served straight from the map.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::{
    self, BLOCK_COUNT_LEN, BLOCK_CRC_LEN, BlockBuilder, EntryPos, FILTER_BLOCK_LEN, FilterBuilder,
    HeaderError, INDEX_ENTRY_LEN, IndexEntry, META_PAGE_LEN, PREFIX_LEN, SNAP_FOOTER_LEN,
    SNAP_HEADER_LEN, SnapFooter, SnapHeader, TARGET_BLOCK_LEN,
};
use crate::io::{Mapping, OpenMode, Vfs, VfsFile};

/// An open, memory-mapped snapshot.
#[derive(Debug)]
pub struct SortedFile {
    path: PathBuf,
    /// The id (version 2) or generation (version 1) in the header.
    generation: u64,
    /// The file's format version: 1 (a snapshot of store format 1) or 2.
    version: u32,
    map: Arc<dyn Mapping>,
    /// The open file, for reads that should not go through the map.
    file: Arc<dyn VfsFile>,
    /// Where the meta region (index, index keys, filter) starts, and its length.
    meta_offset: usize,
    meta_len: usize,
    /// Where the page crc array starts.
    page_crcs_offset: usize,
    block_count: usize,
    entry_count: u64,
    /// Offsets within the meta region.
    index_at: usize,
    keys_at: usize,
    filter_at: usize,
    filter_blocks: usize,
    /// One bit per meta page: its CRC has been checked.
    meta_verified: Box<[AtomicU64]>,
    /// One bit per data block: its CRC has been checked.
    verified: Box<[AtomicU64]>,
}

fn header_error(path: &Path, e: HeaderError, base: u64) -> Error {
    Error::from_header(path, "sorted file", base, e)
}

fn bitset(bits: usize) -> Box<[AtomicU64]> {
    (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

/// Tests bit `i`; if it is clear, runs `check` and sets it on success.
fn check_once(set: &[AtomicU64], i: usize, check: impl FnOnce() -> Result<()>) -> Result<()> {
    let (word, bit) = (i / 64, 1u64 << (i % 64));
    if set[word].load(Ordering::Relaxed) & bit == 0 {
        check()?;
        set[word].fetch_or(bit, Ordering::Relaxed);
    }
    Ok(())
}

impl SortedFile {
    /// Opens and checks the snapshot at `path`: its header, its footer and the small array of
    /// page checksums. Nothing else is read until it is needed.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<SortedFile> {
        let file = vfs
            .open(path, OpenMode::Read)
            .map_err(|e| Error::io("open", path, e))?;
        let size = file
            .size()
            .map_err(|e| Error::io("read the size of", path, e))?;
        if size < (SNAP_HEADER_LEN + SNAP_FOOTER_LEN) as u64 {
            let mut head = vec![0u8; usize::try_from(size).unwrap_or(0).min(SNAP_HEADER_LEN)];
            file.read_exact_at(&mut head, 0)
                .map_err(|e| Error::io("read", path, e))?;
            // Snapshots appear only by an atomic rename, so a short one was damaged afterwards.
            if let Err(e @ HeaderError::FutureVersion { .. }) = SnapHeader::decode(&head) {
                return Err(header_error(path, e, 0));
            }
            return Err(Error::corruption(
                path,
                size,
                "snapshot shorter than header and footer",
            ));
        }
        let map = file
            .map(size)
            .map_err(|e| Error::io("memory-map", path, e))?;
        let bytes = map.bytes();
        let header = SnapHeader::decode(bytes).map_err(|e| header_error(path, e, 0))?;
        let footer_at = bytes.len() - SNAP_FOOTER_LEN;
        let footer = SnapFooter::decode(&bytes[footer_at..])
            .map_err(|e| header_error(path, e, footer_at as u64))?;
        let misplaced = || {
            Error::corruption(
                path,
                footer_at as u64,
                "footer's layout does not fit the file",
            )
        };
        let meta_len = footer.meta_len().ok_or_else(misplaced)?;
        let pages = meta_len.div_ceil(META_PAGE_LEN as u64);
        let page_crcs_offset = footer
            .meta_offset
            .checked_add(meta_len)
            .ok_or_else(misplaced)?;
        if footer.meta_offset < SNAP_HEADER_LEN as u64
            || page_crcs_offset.checked_add(pages * 4) != Some(footer_at as u64)
        {
            return Err(misplaced());
        }
        let page_crcs_offset = page_crcs_offset as usize;
        if crc32fast::hash(&bytes[page_crcs_offset..footer_at]) != footer.page_crcs_crc {
            return Err(Error::corruption(
                path,
                page_crcs_offset as u64,
                "snapshot page checksums damaged",
            ));
        }
        let block_count = footer.block_count as usize;
        let index_at = block_count * PREFIX_LEN;
        let keys_at = index_at + block_count * INDEX_ENTRY_LEN;
        Ok(SortedFile {
            path: path.to_owned(),
            generation: header.generation,
            version: header.version,
            meta_offset: footer.meta_offset as usize,
            meta_len: meta_len as usize,
            page_crcs_offset,
            index_at,
            keys_at,
            filter_at: keys_at + footer.index_keys_len as usize,
            filter_blocks: footer.filter_blocks as usize,
            meta_verified: bitset(pages as usize),
            verified: bitset(block_count),
            map,
            file,
            block_count,
            entry_count: footer.entry_count,
        })
    }

    /// The file's id (version 2) or generation (version 1), from its header.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The file's format version, from its header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The smallest key in the file (`None` if it is empty), from the index.
    pub fn first_key_in_file(&self) -> Result<Option<&[u8]>> {
        if self.block_count == 0 {
            return Ok(None);
        }
        self.first_key(0).map(Some)
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entry_count
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` bytes at offset `at` of the meta region, checking the CRC of each page they touch
    /// the first time it is read.
    fn meta(&self, at: usize, len: usize) -> Result<&[u8]> {
        let bytes = self.map.bytes();
        let end = at
            .checked_add(len)
            .filter(|&end| end <= self.meta_len)
            .ok_or_else(|| {
                Error::corruption(
                    &self.path,
                    (self.meta_offset + at) as u64,
                    "index points outside the meta region",
                )
            })?;
        if len > 0 {
            for page in at / META_PAGE_LEN..=(end - 1) / META_PAGE_LEN {
                check_once(&self.meta_verified, page, || {
                    let start = self.meta_offset + page * META_PAGE_LEN;
                    let stop = (start + META_PAGE_LEN).min(self.meta_offset + self.meta_len);
                    let stored = format::read_u32(bytes, self.page_crcs_offset + page * 4);
                    if crc32fast::hash(&bytes[start..stop]) == stored {
                        Ok(())
                    } else {
                        Err(Error::corruption(
                            &self.path,
                            start as u64,
                            "snapshot index or filter page damaged",
                        ))
                    }
                })?;
            }
        }
        Ok(&bytes[self.meta_offset + at..self.meta_offset + end])
    }

    fn index_entry(&self, i: usize) -> Result<IndexEntry> {
        let at = self.index_at + i * INDEX_ENTRY_LEN;
        Ok(IndexEntry::decode(self.meta(at, INDEX_ENTRY_LEN)?))
    }

    /// The 8-byte prefix of block `i`'s first key, as a number. The binary search of every
    /// lookup calls this a dozen times or more, so the common case is a bit test and a load:
    /// the meta region's length is computed from the block count (so the array always fits it,
    /// and the region was found to fit the file at open), and an 8-byte prefix never straddles
    /// two meta pages. `bytes` is the mapping's, looked up once per search.
    fn prefix(&self, bytes: &[u8], i: usize) -> Result<u64> {
        let at = i * PREFIX_LEN;
        let page = at / META_PAGE_LEN;
        if self.meta_verified[page / 64].load(Ordering::Relaxed) & (1 << (page % 64)) == 0 {
            self.meta(at, PREFIX_LEN)?;
        }
        let start = self.meta_offset + at;
        let mut b = [0u8; PREFIX_LEN];
        b.copy_from_slice(&bytes[start..start + PREFIX_LEN]);
        Ok(u64::from_be_bytes(b))
    }

    /// Block `i`'s index entry and body (without its CRC), checking the CRC on first use.
    fn block(&self, i: usize) -> Result<(IndexEntry, &[u8])> {
        let entry = self.index_entry(i)?;
        let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(entry.len as usize);
        if start < SNAP_HEADER_LEN
            || end > self.meta_offset
            || end - start < BLOCK_COUNT_LEN + BLOCK_CRC_LEN
        {
            return Err(Error::corruption(
                &self.path,
                (self.meta_offset + self.index_at + i * INDEX_ENTRY_LEN) as u64,
                "index entry points outside the data blocks",
            ));
        }
        let block = &self.map.bytes()[start..end];
        check_once(&self.verified, i, || {
            format::check_block(block, entry.entries)
                .map_err(|reason| Error::corruption(&self.path, entry.offset, reason))
        })?;
        Ok((entry, &block[..block.len() - BLOCK_CRC_LEN]))
    }

    /// The first key of block `i`, from the index.
    fn first_key(&self, i: usize) -> Result<&[u8]> {
        let entry = self.index_entry(i)?;
        let at = usize::try_from(entry.key_offset).unwrap_or(usize::MAX);
        if at.saturating_add(entry.key_len as usize) > self.filter_at - self.keys_at {
            return Err(Error::corruption(
                &self.path,
                (self.meta_offset + self.index_at + i * INDEX_ENTRY_LEN) as u64,
                "index key points outside the index keys",
            ));
        }
        self.meta(self.keys_at + at, entry.key_len as usize)
    }

    /// The last block whose first key is `<= key` (block 0 if none is). The search runs over
    /// the dense prefix array; full keys are compared only among blocks sharing the prefix.
    fn block_for(&self, key: &[u8]) -> Result<usize> {
        let prefix = format::key_prefix(key);
        let bytes = self.map.bytes();
        let prefix_of = |i| self.prefix(bytes, i);
        // Blocks [0, below) have a smaller prefix, [below, upto) the same one.
        let below = self.partition(0, self.block_count, |i| Ok(prefix_of(i)? < prefix))?;
        // Usually no block shares the prefix: one look settles it without a second search.
        let upto = if below == self.block_count || prefix_of(below)? != prefix {
            below
        } else {
            self.partition(below + 1, self.block_count, |i| Ok(prefix_of(i)? == prefix))?
        };
        let at_or_below = self.partition(below, upto, |i| Ok(self.first_key(i)? <= key))?;
        Ok(at_or_below.saturating_sub(1))
    }

    /// The first `i` in `lo..hi` for which `pred` is false (`pred` true then false over the range).
    fn partition(
        &self,
        mut lo: usize,
        mut hi: usize,
        pred: impl Fn(usize) -> Result<bool>,
    ) -> Result<usize> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(mid)? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Entry positions of block `i`, offset to the whole file.
    fn entries(&self, i: usize) -> Result<Vec<EntryPos>> {
        let (entry, block) = self.block(i)?;
        let base = entry.offset as usize;
        let mut out = Vec::with_capacity(entry.entries as usize);
        // `block` passed `check_block`: its entries parse back to back to its end.
        let mut at = format::entries_start(block).unwrap_or(block.len());
        while let Some(e) = format::entry_at(block, at) {
            at = e.next;
            out.push(EntryPos {
                key: base + e.key,
                value: base + e.value,
                next: base + e.next,
                ..e
            });
        }
        Ok(out)
    }

    fn key_of(&self, e: &EntryPos) -> &[u8] {
        &self.map.bytes()[e.key..e.key + e.key_len]
    }

    /// The entry for `key`: `None` if the file has none, `Some(None)` for a tombstone.
    pub fn get(&self, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        if self.block_count == 0 || !self.may_contain(key)? {
            return Ok(None);
        }
        let i = self.block_for(key)?;
        let (entry, block) = self.block(i)?;
        let base = entry.offset as usize;
        // `block` passed `check_block`: its offsets and entries are consistent.
        Ok(Self::search_block(block, key)
            .map(|e| (!e.tombstone).then(|| Bytes::mapped(&self.map, base + e.value, e.value_len))))
    }

    /// Whether the snapshot holds `key`, for the write path. The data block is read with `pread`
    /// rather than through the map: a write of a new key that the filter lets through (about
    /// 0.3 % of them) would otherwise fault in, and keep resident, the 64 KiB around the block.
    ///
    /// `None` if the file has no entry for `key`; `Some(live)` if it has one, `false` for a
    /// tombstone.
    pub fn knows(&self, key: &[u8]) -> Result<Option<bool>> {
        if self.block_count == 0 || !self.may_contain(key)? {
            return Ok(None);
        }
        let i = self.block_for(key)?;
        if self.verified[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0 {
            // Read through the map before, so already resident: no need for a system call.
            return Ok(Self::search_block(self.block(i)?.1, key).map(|e| !e.tombstone));
        }
        let entry = self.index_entry(i)?;
        let mut block = vec![0u8; entry.len as usize];
        self.file
            .read_exact_at(&mut block, entry.offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        format::check_block(&block, entry.entries)
            .map_err(|reason| Error::corruption(&self.path, entry.offset, reason))?;
        let body = &block[..block.len() - BLOCK_CRC_LEN];
        Ok(Self::search_block(body, key).map(|e| !e.tombstone))
    }

    /// Binary-searches a checked block body for `key`.
    fn search_block(block: &[u8], key: &[u8]) -> Option<EntryPos> {
        let count = format::read_u32(block, 0) as usize;
        let prefix = format::key_prefix(key);
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = format::entry_at(block, format::entry_offset(block, mid))?;
            let entry_key = &block[e.key..e.key + e.key_len];
            // Integer comparison of 8-byte prefixes first; whole keys only when they tie.
            let order = format::key_prefix(entry_key)
                .cmp(&prefix)
                .then_with(|| entry_key.cmp(key));
            match order {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(e),
            }
        }
        None
    }

    /// Whether the snapshot may hold `key`: `false` means surely not, without touching a block.
    fn may_contain(&self, key: &[u8]) -> Result<bool> {
        if self.filter_blocks == 0 {
            return Ok(true);
        }
        let hash = format::filter_hash(key);
        let block = format::filter_block_of(hash, self.filter_blocks);
        let bits = self.meta(self.filter_at + block * FILTER_BLOCK_LEN, FILTER_BLOCK_LEN)?;
        Ok(format::filter_block_may_contain(
            bits,
            hash,
            self.filter_blocks,
        ))
    }

    /// A cursor over the entries within the bounds, ascending (`forward`) or descending.
    pub fn cursor(
        self: &Arc<Self>,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        forward: bool,
    ) -> Result<Cursor> {
        let mut cursor = Cursor {
            snapshot: Arc::clone(self),
            forward,
            block: None,
            at: 0,
            end: 0,
            pending: Vec::new(),
        };
        if self.block_count == 0 {
            return Ok(cursor);
        }
        // Start in the block that could hold the near bound, and skip what lies before it.
        let start = match if forward { lo } else { hi } {
            Bound::Included(k) | Bound::Excluded(k) => self.block_for(k)?,
            Bound::Unbounded if forward => 0,
            Bound::Unbounded => self.block_count - 1,
        };
        cursor.load(start)?;
        let near = if forward { lo } else { hi };
        let before_start = |key: &[u8]| match near {
            Bound::Included(k) if forward => key < k,
            Bound::Excluded(k) if forward => key <= k,
            Bound::Included(k) => key > k,
            Bound::Excluded(k) => key >= k,
            Bound::Unbounded => false,
        };
        while let Some(e) = cursor.current()? {
            if !before_start(self.key_of(&e)) {
                break;
            }
            if forward {
                cursor.at = e.next;
            } else {
                cursor.pending.pop();
            }
        }
        Ok(cursor)
    }

    /// Checks every byte: the meta region's pages, each block's CRC and structure, that the
    /// index's first keys match the blocks, keys strictly increasing across the whole file, that
    /// the filter admits every key, and the footer's entry count. Calls `progress` with bytes
    /// checked so far.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<()> {
        self.meta(0, self.meta_len)?;
        let mut previous: Option<&[u8]> = None;
        let mut entries = 0u64;
        let mut expected_offset = SNAP_HEADER_LEN as u64;
        for i in 0..self.block_count {
            let entry = self.index_entry(i)?;
            if entry.offset != expected_offset {
                return Err(Error::corruption(
                    &self.path,
                    entry.offset,
                    "blocks are not contiguous",
                ));
            }
            expected_offset = entry.offset + u64::from(entry.len);
            for (n, e) in self.entries(i)?.into_iter().enumerate() {
                let key = self.key_of(&e);
                if n == 0 && self.first_key(i)? != key {
                    return Err(Error::corruption(
                        &self.path,
                        e.key as u64,
                        "index key differs from the block's",
                    ));
                }
                if previous.is_some_and(|p| p >= key) {
                    return Err(Error::corruption(
                        &self.path,
                        e.key as u64,
                        "keys out of order",
                    ));
                }
                if !self.may_contain(key)? {
                    return Err(Error::corruption(
                        &self.path,
                        (self.meta_offset + self.filter_at) as u64,
                        "filter misses a key",
                    ));
                }
                previous = Some(key);
                entries += 1;
            }
            progress(expected_offset);
        }
        if expected_offset != self.meta_offset as u64 {
            return Err(Error::corruption(
                &self.path,
                expected_offset,
                "bytes between the last block and the index",
            ));
        }
        if entries != self.entry_count {
            return Err(Error::corruption(
                &self.path,
                self.file_bytes() - SNAP_FOOTER_LEN as u64,
                format!(
                    "footer says {} entries, blocks hold {entries}",
                    self.entry_count
                ),
            ));
        }
        progress(self.file_bytes());
        Ok(())
    }

    /// Every entry of the blocks that are intact, in order, and for each damaged block the
    /// range of keys it held: `[its first key, the next block's first key)`, from the index
    /// (`None` for an end the index cannot give). For a repair: fails only if the index
    /// itself is damaged.
    pub fn salvage(&self) -> Result<Salvaged> {
        let mut salvaged = Salvaged::default();
        for i in 0..self.block_count {
            match self.block(i) {
                Ok((_, body)) => {
                    let mut at = format::entries_start(body).unwrap_or(body.len());
                    while let Some(e) = format::entry_at(body, at) {
                        salvaged.entries.push((
                            Bytes::from(&body[e.key..e.key + e.key_len]),
                            (!e.tombstone).then(|| Bytes::from(&body[e.value..e.next])),
                        ));
                        at = e.next;
                    }
                }
                Err(Error::Corruption { offset, .. }) => {
                    let first = self.first_key(i).ok().map(<[u8]>::to_vec);
                    let next = (i + 1 < self.block_count)
                        .then(|| self.first_key(i + 1).ok().map(<[u8]>::to_vec))
                        .flatten();
                    salvaged.lost.push(LostBlock {
                        offset,
                        first_key: first,
                        next_key: next,
                    });
                }
                Err(other) => return Err(other),
            }
        }
        Ok(salvaged)
    }

    /// Reads the entries in order with `pread` rather than through the map, checking every
    /// block, so that a compaction streaming through a large snapshot does not make all of it
    /// resident in this process. It reads through the descriptor opened with the snapshot, which
    /// stays readable after another process's compaction has removed the file.
    pub fn stream(self: &Arc<Self>) -> Stream {
        Stream {
            snapshot: Arc::clone(self),
            file: Arc::clone(&self.file),
            next_block: 0,
            buf: Vec::new(),
            buf_start: 0,
            block: 0..0,
            at: 0,
        }
    }
}

/// A key and its value (`None`: a tombstone), borrowed from a [`Stream`]'s buffer.
pub type RawEntry<'a> = (&'a [u8], Option<&'a [u8]>);

/// What [`SortedFile::salvage`] could read.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// The entries of the intact blocks, in key order.
    pub entries: Vec<(Bytes, Option<Bytes>)>,
    /// The damaged blocks.
    pub lost: Vec<LostBlock>,
}

/// A damaged block, and the keys it held as far as the index says.
#[derive(Debug)]
pub struct LostBlock {
    /// Where the block starts.
    pub offset: u64,
    /// Its first key, and the first key of the block after it.
    pub first_key: Option<Vec<u8>>,
    /// See `first_key`.
    pub next_key: Option<Vec<u8>>,
}

/// The entries of a snapshot in order, read with `pread` (see [`SortedFile::stream`]).
pub struct Stream {
    snapshot: Arc<SortedFile>,
    file: Arc<dyn VfsFile>,
    next_block: usize,
    /// Bytes read ahead, starting at file offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// The current block's body within `buf`, and the next entry's position in it.
    block: std::ops::Range<usize>,
    at: usize,
}

/// How much a stream reads at once.
const STREAM_CHUNK: usize = 1 << 20;

impl Stream {
    /// The next entry's position in `buf`, loading blocks as needed.
    fn current(&mut self) -> Result<Option<EntryPos>> {
        loop {
            if self.at < self.block.end {
                let body = &self.buf[self.block.start..self.block.end];
                let e = format::entry_at(body, self.at - self.block.start).ok_or_else(|| {
                    Error::corruption(
                        &self.snapshot.path,
                        self.buf_start + self.at as u64,
                        "malformed entry",
                    )
                })?;
                let base = self.block.start;
                return Ok(Some(EntryPos {
                    key: base + e.key,
                    value: base + e.value,
                    next: base + e.next,
                    ..e
                }));
            }
            if self.next_block >= self.snapshot.block_count {
                return Ok(None);
            }
            let entry = self.snapshot.index_entry(self.next_block)?;
            let (start, len) = (entry.offset, entry.len as usize);
            let buf_end = self.buf_start + self.buf.len() as u64;
            if start < self.buf_start || start + len as u64 > buf_end {
                let data_end = self.snapshot.meta_offset as u64;
                let fetch = len
                    .max(STREAM_CHUNK)
                    .min(data_end.saturating_sub(start) as usize);
                if fetch < len {
                    return Err(Error::corruption(
                        &self.snapshot.path,
                        start,
                        "block runs into the index",
                    ));
                }
                self.buf.resize(fetch, 0);
                self.file
                    .read_exact_at(&mut self.buf, start)
                    .map_err(|e| Error::io("read", &self.snapshot.path, e))?;
                self.buf_start = start;
            }
            let from = (start - self.buf_start) as usize;
            format::check_block(&self.buf[from..from + len], entry.entries)
                .map_err(|reason| Error::corruption(&self.snapshot.path, start, reason))?;
            let body = &self.buf[from..from + len - BLOCK_CRC_LEN];
            let start = format::entries_start(body).unwrap_or(body.len());
            self.block = from..from + body.len();
            self.at = from + start;
            self.next_block += 1;
        }
    }

    /// The next entry, then moves past it.
    pub fn next_entry(&mut self) -> Result<Option<RawEntry<'_>>> {
        let Some(e) = self.current()? else {
            return Ok(None);
        };
        self.at = e.next;
        Ok(Some((
            &self.buf[e.key..e.key + e.key_len],
            (!e.tombstone).then(|| &self.buf[e.value..e.value + e.value_len]),
        )))
    }
}

/// Walks a snapshot's entries in one direction, a block at a time.
#[derive(Debug)]
pub struct Cursor {
    snapshot: Arc<SortedFile>,
    forward: bool,
    /// The block being walked.
    block: Option<usize>,
    /// Forward: the next entry's offset in the file, and where the block's entries end.
    at: usize,
    end: usize,
    /// Backward: entries of the current block not yet returned, the next one last.
    pending: Vec<EntryPos>,
}

impl Cursor {
    fn load(&mut self, i: usize) -> Result<()> {
        if self.forward {
            let (entry, body) = self.snapshot.block(i)?;
            let base = entry.offset as usize;
            self.at = base + format::entries_start(body).unwrap_or(body.len());
            self.end = base + body.len();
        } else {
            self.pending = self.snapshot.entries(i)?;
        }
        self.block = Some(i);
        Ok(())
    }

    fn exhausted_block(&self) -> bool {
        if self.forward {
            self.at >= self.end
        } else {
            self.pending.is_empty()
        }
    }

    /// The next entry's position, moving to the next block as needed.
    fn current(&mut self) -> Result<Option<EntryPos>> {
        while self.exhausted_block() {
            let Some(block) = self.block else {
                return Ok(None);
            };
            let next = if self.forward {
                Some(block + 1).filter(|&b| b < self.snapshot.block_count)
            } else {
                block.checked_sub(1)
            };
            match next {
                Some(b) => self.load(b)?,
                None => {
                    self.block = None;
                    return Ok(None);
                }
            }
        }
        if !self.forward {
            return Ok(self.pending.last().copied());
        }
        // The block passed `check_block`, so its entries parse up to `end`.
        let bytes = &self.snapshot.map.bytes()[..self.end];
        Ok(format::entry_at(bytes, self.at))
    }

    /// Takes the next entry.
    pub fn next_entry(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        let Some(e) = self.current()? else {
            return Ok(None);
        };
        if self.forward {
            self.at = e.next;
        } else {
            self.pending.pop();
        }
        let map = &self.snapshot.map;
        Ok(Some((
            Bytes::mapped(map, e.key, e.key_len),
            (!e.tombstone).then(|| Bytes::mapped(map, e.value, e.value_len)),
        )))
    }
}

/// Writes a sorted file as a stream of sorted entries: `<name>.tmp`, then `fdatasync`,
/// `rename` to `<name>`, and a directory sync in [`SortedWriter::finish`].
pub struct SortedWriter<'a> {
    vfs: &'a dyn Vfs,
    dir: PathBuf,
    name: String,
    tmp_path: PathBuf,
    file: Arc<dyn VfsFile>,
    /// Bytes written to the file so far.
    written: u64,
    out: Vec<u8>,
    block: BlockBuilder,
    index: Vec<u8>,
    index_keys: Vec<u8>,
    prefixes: Vec<u8>,
    /// Length of the current block's first key (the last one in `index_keys`).
    first_key_len: usize,
    entries: u64,
    filter: FilterBuilder,
}

/// Bytes buffered before each write to the file.
const WRITE_BUFFER: usize = 1 << 20;
/// A file being written is synced each time this many more bytes are written.
const SYNC_EVERY: u64 = 4 << 20;

impl<'a> SortedWriter<'a> {
    /// Starts `dir/<name>.tmp` (a version 2 file whose header holds `id`), replacing any leftover
    /// one, for at most `expected_keys` entries (this sizes the filter).
    pub fn create(
        vfs: &'a dyn Vfs,
        dir: &Path,
        name: String,
        id: u64,
        expected_keys: u64,
    ) -> Result<Self> {
        let tmp_path = dir.join(format!("{name}.tmp"));
        let _ = vfs.remove_file(&tmp_path);
        let file = vfs
            .open(&tmp_path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", &tmp_path, e))?;
        let mut out = Vec::with_capacity(WRITE_BUFFER + TARGET_BLOCK_LEN);
        let header = SnapHeader {
            version: format::SNAPSHOT_FORMAT_VERSION,
            generation: id,
        };
        out.extend_from_slice(&header.encode());
        Ok(SortedWriter {
            vfs,
            dir: dir.to_owned(),
            name,
            tmp_path,
            file,
            written: 0,
            out,
            block: BlockBuilder::default(),
            index: Vec::new(),
            index_keys: Vec::new(),
            prefixes: Vec::new(),
            first_key_len: 0,
            entries: 0,
            filter: FilterBuilder::new(expected_keys),
        })
    }

    /// Writes a version 1 file (a snapshot of store format 1) instead, for tests of reading and
    /// converting old stores. Before the first `add`.
    #[cfg(test)]
    pub fn into_version_1(mut self) -> Self {
        debug_assert_eq!(self.entries, 0);
        let header = SnapHeader {
            version: 1,
            generation: format::read_u64(&self.out, 16),
        };
        self.out[..SNAP_HEADER_LEN].copy_from_slice(&header.encode());
        self
    }

    /// Adds an entry (`None`: a tombstone); keys must come in strictly increasing order.
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if self.block.is_empty() {
            // The block's first key goes into the index; its entry is written with the block.
            self.index_keys.extend_from_slice(key);
            self.first_key_len = key.len();
        }
        self.block.add(key, value);
        self.filter.add(format::filter_hash(key));
        self.entries += 1;
        if self.block.len() >= TARGET_BLOCK_LEN {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Bytes produced so far.
    pub fn bytes_written(&self) -> u64 {
        self.written + self.out.len() as u64
    }

    fn finish_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let offset = self.bytes_written();
        let entries = self.block.entries();
        let bytes = self.block.finish();
        let len = bytes.len() as u32;
        self.out.extend_from_slice(bytes);
        self.block.reset();
        IndexEntry {
            offset,
            len,
            entries,
            key_offset: (self.index_keys.len() - self.first_key_len) as u64,
            key_len: self.first_key_len as u32,
        }
        .encode_into(&mut self.index);
        let first_key = &self.index_keys[self.index_keys.len() - self.first_key_len..];
        self.prefixes
            .extend_from_slice(&format::key_prefix(first_key).to_be_bytes());
        if self.out.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.out, self.written)
            .map_err(|e| Error::io("write", &self.tmp_path, e))?;
        let before = self.written;
        self.written += self.out.len() as u64;
        self.out.clear();
        // Written back in steps rather than all at the final sync: a commit's `fdatasync` of the
        // log queued behind tens of megabytes of dirty pages would wait for all of them.
        if before / SYNC_EVERY != self.written / SYNC_EVERY {
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.tmp_path, e))?;
        }
        Ok(())
    }

    /// Writes the index and footer, syncs, renames into place and syncs the directory. When this
    /// returns, the snapshot is durable under its final name.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.finish_block()?;
        let meta_offset = self.bytes_written();
        let block_count = (self.index.len() / INDEX_ENTRY_LEN) as u64;
        let filter = std::mem::replace(&mut self.filter, FilterBuilder::new(0)).finish();
        let mut meta = std::mem::take(&mut self.prefixes);
        meta.extend_from_slice(&self.index);
        meta.extend_from_slice(&self.index_keys);
        meta.extend_from_slice(&filter);
        let crcs = format::page_crcs(&meta);
        let footer = SnapFooter {
            meta_offset,
            block_count,
            entry_count: self.entries,
            index_keys_len: self.index_keys.len() as u64,
            filter_blocks: (filter.len() / FILTER_BLOCK_LEN) as u32,
            page_crcs_crc: crc32fast::hash(&crcs),
        };
        self.out.extend_from_slice(&meta);
        self.out.extend_from_slice(&crcs);
        self.out.extend_from_slice(&footer.encode());
        let path = self.dir.join(&self.name);
        let written = self.flush().and_then(|()| {
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.tmp_path, e))?;
            self.vfs
                .rename(&self.tmp_path, &path)
                .map_err(|e| Error::io("rename into place", &self.tmp_path, e))
        });
        if let Err(e) = written {
            // A full disk must not keep the partial file until the next open.
            let _ = self.vfs.remove_file(&self.tmp_path);
            return Err(e);
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("sync the directory", &self.dir, e))?;
        Ok(path)
    }

    /// Gives up: removes the temporary file.
    pub fn abandon(self) {
        let _ = self.vfs.remove_file(&self.tmp_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdVfs;

    fn write(dir: &Path, entries: &[(Vec<u8>, Vec<u8>)]) -> Arc<SortedFile> {
        let mut w = SortedWriter::create(&StdVfs, dir, "part-1".into(), 1, entries.len() as u64)
            .expect("create");
        for (k, v) in entries {
            w.add(k, Some(v)).expect("add");
        }
        let path = w.finish().expect("finish");
        Arc::new(SortedFile::open(&StdVfs, &path).expect("open"))
    }

    fn entries(n: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    (i * 2).to_be_bytes().to_vec(),
                    vec![i as u8; (i % 50) as usize],
                )
            })
            .collect()
    }

    fn collect(
        s: &Arc<SortedFile>,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        forward: bool,
    ) -> Vec<Vec<u8>> {
        let mut c = s.cursor(lo, hi, forward).expect("cursor");
        let mut out = Vec::new();
        while let Some((k, _)) = c.next_entry().expect("next") {
            let inside = match if forward { hi } else { lo } {
                Bound::Included(b) if forward => &k[..] <= b,
                Bound::Excluded(b) if forward => &k[..] < b,
                Bound::Included(b) => &k[..] >= b,
                Bound::Excluded(b) => &k[..] > b,
                Bound::Unbounded => true,
            };
            if !inside {
                break;
            }
            out.push(k.to_vec());
        }
        out
    }

    #[test]
    fn gets_and_scans_across_many_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries(3000);
        let s = write(dir.path(), &all);
        assert_eq!(s.len(), 3000);
        assert!(s.block_count > 10);
        s.verify(|_| {}).expect("verify");
        for (k, v) in &all {
            assert_eq!(
                s.get(k).expect("get").flatten().as_deref(),
                Some(v.as_slice())
            );
            let mut absent = k.clone();
            absent.push(0);
            assert_eq!(s.get(&absent).expect("get"), None);
        }
        assert_eq!(s.get(b"").expect("get"), None);
        let keys: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(collect(&s, Bound::Unbounded, Bound::Unbounded, true), keys);
        let mut rev = keys.clone();
        rev.reverse();
        assert_eq!(collect(&s, Bound::Unbounded, Bound::Unbounded, false), rev);

        let (lo, hi) = (101u32.to_be_bytes(), 2000u32.to_be_bytes());
        let expected: Vec<_> = keys
            .iter()
            .filter(|k| k.as_slice() > &lo[..] && k.as_slice() <= &hi[..])
            .cloned()
            .collect();
        assert_eq!(
            collect(&s, Bound::Excluded(&lo), Bound::Included(&hi), true),
            expected
        );
        let mut expected_rev = expected.clone();
        expected_rev.reverse();
        assert_eq!(
            collect(&s, Bound::Excluded(&lo), Bound::Included(&hi), false),
            expected_rev
        );
    }

    #[test]
    fn keys_sharing_long_prefixes_across_blocks_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every block's first key starts with the same 8 bytes, and some keys are shorter than 8.
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = (0..4000u32)
            .map(|i| (format!("user/000/{i:08}").into_bytes(), vec![b'x'; 40]))
            .collect();
        all.extend([
            (b"user".to_vec(), b"short".to_vec()),
            (b"user/000".to_vec(), b"exact".to_vec()),
        ]);
        all.sort();
        let s = write(dir.path(), &all);
        assert!(s.block_count > 20);
        s.verify(|_| {}).expect("verify");
        for (k, v) in &all {
            assert_eq!(
                s.get(k).expect("get").flatten().as_deref(),
                Some(v.as_slice()),
                "{k:?}"
            );
        }
        for absent in [
            &b"use"[..],
            b"user/",
            b"user/000/",
            b"user/000/00001000x",
            b"user/001",
            b"zzz",
            b"",
        ] {
            assert_eq!(s.get(absent).expect("get"), None, "{absent:?}");
        }
    }

    #[test]
    fn contains_agrees_with_get_by_read_and_by_map_and_reports_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries(3000);
        let s = write(dir.path(), &all);
        let absent = |k: &Vec<u8>| [k.as_slice(), &[1]].concat();
        // First through `pread` (blocks untouched), then through the map (after `get`s).
        for _ in 0..2 {
            for (k, _) in &all {
                assert_eq!(s.knows(k).expect("knows"), Some(true));
                assert_eq!(s.knows(&absent(k)).expect("knows"), None);
            }
            for (k, _) in &all {
                s.get(k).expect("get");
            }
        }
        let path = s.path().to_owned();
        drop(s);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[SNAP_HEADER_LEN + 200] ^= 0x40;
        std::fs::write(&path, bytes).expect("write");
        let s = SortedFile::open(&StdVfs, &path).expect("open");
        let err = s.knows(&all[0].0).expect_err("damaged block");
        assert!(matches!(err, Error::Corruption { offset: 32, .. }), "{err}");
    }

    /// Tombstones read back as tombstones by every path (get, knows, both cursors, the stream),
    /// and a version 1 file (no tombstones) still reads.
    #[test]
    fn tombstones_read_back_by_every_path_and_version_1_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w =
            SortedWriter::create(&StdVfs, dir.path(), "run-7".into(), 7, 3000).expect("create");
        for i in 0..3000u32 {
            let value = (!i.is_multiple_of(3)).then(|| i.to_le_bytes());
            w.add(&i.to_be_bytes(), value.as_ref().map(|v| &v[..]))
                .expect("add");
        }
        let s = Arc::new(SortedFile::open(&StdVfs, &w.finish().expect("finish")).expect("open"));
        assert_eq!((s.version(), s.generation(), s.len()), (2, 7, 3000));
        s.verify(|_| {}).expect("verify");
        let expect = |i: u32| (!i.is_multiple_of(3)).then(|| i.to_le_bytes().to_vec());
        for i in 0..3000u32 {
            let key = i.to_be_bytes();
            let got = s.get(&key).expect("get").expect("an entry");
            assert_eq!(got.map(|v| v.to_vec()), expect(i));
            assert_eq!(s.knows(&key).expect("knows"), Some(!i.is_multiple_of(3)));
        }
        for forward in [true, false] {
            let mut c = s
                .cursor(Bound::Unbounded, Bound::Unbounded, forward)
                .expect("cursor");
            let mut n = 0;
            while let Some((k, v)) = c.next_entry().expect("next") {
                let i = u32::from_be_bytes(k[..].try_into().expect("4 bytes"));
                assert_eq!(v.map(|v| v.to_vec()), expect(i));
                n += 1;
            }
            assert_eq!(n, 3000);
        }
        let mut stream = s.stream();
        let mut n = 0u32;
        while let Some((k, v)) = stream.next_entry().expect("next") {
            assert_eq!(k, n.to_be_bytes());
            assert_eq!(v.map(<[u8]>::to_vec), expect(n));
            n += 1;
        }
        assert_eq!(n, 3000);

        let mut w = SortedWriter::create(&StdVfs, dir.path(), "snap-0000000000000002".into(), 2, 1)
            .expect("create")
            .into_version_1();
        w.add(b"k", Some(b"v")).expect("add");
        let old = SortedFile::open(&StdVfs, &w.finish().expect("finish")).expect("open");
        assert_eq!((old.version(), old.generation()), (1, 2));
        assert_eq!(
            old.get(b"k").expect("get"),
            Some(Some(Bytes::from(&b"v"[..])))
        );
    }

    #[test]
    fn an_empty_snapshot_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = write(dir.path(), &[]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.get(b"x").expect("get"), None);
        assert!(collect(&s, Bound::Unbounded, Bound::Unbounded, true).is_empty());
        s.verify(|_| {}).expect("verify");
    }

    #[test]
    fn a_damaged_block_is_corruption_at_its_offset_never_a_wrong_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries(500);
        let path = write(dir.path(), &all).path().to_owned();
        let mut bytes = std::fs::read(&path).expect("read");
        let at = SNAP_HEADER_LEN + 4 + 8 + 2; // inside the first entry's value area
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let s = SortedFile::open(&StdVfs, &path).expect("open checks only header, footer, index");
        let err = s.get(&all[0].0).expect_err("damaged block");
        assert!(matches!(err, Error::Corruption { offset: 32, .. }), "{err}");
        assert!(s.verify(|_| {}).is_err());
    }

    #[test]
    fn a_damaged_index_or_filter_page_is_corruption_never_a_wrong_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries(3000);
        let snapshot = write(dir.path(), &all);
        let (path, meta_offset, meta_len) = (
            snapshot.path().to_owned(),
            snapshot.meta_offset,
            snapshot.meta_len,
        );
        drop(snapshot);
        let clean = std::fs::read(&path).expect("read");
        for at in [
            meta_offset,
            meta_offset + meta_len / 2,
            meta_offset + meta_len - 1,
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).expect("write");
            let s = SortedFile::open(&StdVfs, &path).expect("open reads no meta page");
            let mut corruption = 0;
            for (k, v) in &all {
                match s.get(k) {
                    Ok(found) => assert_eq!(
                        found.flatten().as_deref(),
                        Some(v.as_slice()),
                        "wrong answer"
                    ),
                    Err(Error::Corruption { .. }) => corruption += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(corruption > 0, "damage at {at} went unnoticed");
            assert!(s.verify(|_| {}).is_err());
        }
    }

    #[test]
    fn a_truncated_snapshot_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), &entries(100)).path().to_owned();
        let bytes = std::fs::read(&path).expect("read");
        for keep in [bytes.len() - 1, bytes.len() / 2, 40, 10] {
            std::fs::write(&path, &bytes[..keep]).expect("write");
            let err = SortedFile::open(&StdVfs, &path).expect_err("truncated");
            assert!(matches!(err, Error::Corruption { .. }), "{keep}: {err}");
        }
    }
}
