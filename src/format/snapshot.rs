//! The sorted file's byte layout (docs/FORMAT.md, "Sorted file"): runs, partitions and the
//! version 1 snapshots.
//!
//! ```text
//! header (32 bytes)
//!   0  magic           8  "SKVSNP\r\n"
//!   8  format version  4  u32 = 1
//!  12  flags           4  u32 = 0
//!  16  generation      8  u64
//!  24  header crc      4  CRC-32 of bytes 0..24
//!  28  reserved        4  zero
//! data blocks, from offset 32, sorted by key, back to back
//!   entry count u32, entry offsets (u32 each, from the block's start), entries, block crc u32
//!   (CRC-32 of everything before it); entry: key length u32, value length u32, key, value
//! meta region, at `meta offset`:
//!   key prefixes: per block, the first 8 bytes of its first key, zero-padded
//!   index: one 32-byte entry per block: block offset u64, first-key offset u64 (into the index
//!          keys), block length u32 (crc included), entry count u32, first-key length u32, zero u32
//!   index keys: each block's first key, back to back
//!   filter: `filter blocks` x 64-byte blocked Bloom filter (see below)
//! page crcs: CRC-32 of each 4096-byte page of the meta region (the last one may be shorter)
//! footer (56 bytes, the end of the file)
//!   0  meta offset     8
//!   8  block count     8
//!  16  entry count     8
//!  24  index keys len  8
//!  32  filter blocks   4  number of 64-byte filter blocks (0: no filter)
//!  36  page crcs crc   4  CRC-32 of the page crc array
//!  40  end magic       8  "SKVEND\r\n"
//!  48  footer crc      4  CRC-32 of footer bytes 0..48
//!  52  reserved        4  zero
//! ```
//!
//! Opening checks the header, the footer and the small page-crc array; each meta page and each
//! data block is checked the first time it is read.
//!
//! The filter: `h = fmix64(fnv1a64(key))`; the key's block is `(low 32 bits of h × blocks) >> 32`;
//! with `a` = the high 32 bits of `h` and `d = rotl32(a, 15) | 1`, bits `(a + i·d) mod 512` for
//! `i` in 0..8 are set, bit `b` being bit `b mod 8` of byte `b / 8` of the block.

use super::{HeaderError, SNAPSHOT_FORMAT_VERSION, read_u32, read_u64};

/// First eight bytes of every snapshot file.
pub const SNAP_MAGIC: [u8; 8] = *b"SKVSNP\r\n";
/// Eight bytes near the end of every complete snapshot file.
pub const SNAP_END_MAGIC: [u8; 8] = *b"SKVEND\r\n";

const S_MAGIC_AT: usize = 0;
const S_VERSION_AT: usize = S_MAGIC_AT + 8;
const S_FLAGS_AT: usize = S_VERSION_AT + 4;
const S_GENERATION_AT: usize = S_FLAGS_AT + 4;
const S_CRC_AT: usize = S_GENERATION_AT + 8;
const S_RESERVED_AT: usize = S_CRC_AT + 4;
/// Length of the snapshot header; the first block starts here.
pub const SNAP_HEADER_LEN: usize = S_RESERVED_AT + 4;

const F_META_OFFSET_AT: usize = 0;
const F_BLOCK_COUNT_AT: usize = F_META_OFFSET_AT + 8;
const F_ENTRY_COUNT_AT: usize = F_BLOCK_COUNT_AT + 8;
const F_KEYS_LEN_AT: usize = F_ENTRY_COUNT_AT + 8;
const F_FILTER_BLOCKS_AT: usize = F_KEYS_LEN_AT + 8;
const F_PAGE_CRCS_CRC_AT: usize = F_FILTER_BLOCKS_AT + 4;
const F_MAGIC_AT: usize = F_PAGE_CRCS_CRC_AT + 4;
const F_CRC_AT: usize = F_MAGIC_AT + 8;
const F_RESERVED_AT: usize = F_CRC_AT + 4;
/// Length of the footer at the end of a snapshot.
pub const SNAP_FOOTER_LEN: usize = F_RESERVED_AT + 4;

/// The meta region is checksummed in pages of this many bytes.
pub const META_PAGE_LEN: usize = 4096;

/// Bytes per index entry.
pub const INDEX_ENTRY_LEN: usize = 32;
/// Bytes per block in the key-prefix array.
pub const PREFIX_LEN: usize = 8;
/// Bytes of a block's entry count and of its trailing CRC.
pub const BLOCK_COUNT_LEN: usize = 4;
/// Bytes of a block's trailing CRC.
pub const BLOCK_CRC_LEN: usize = 4;
/// Bytes of an entry before its key: key length and value length.
pub const ENTRY_HEADER_LEN: usize = 8;
/// A block is closed once it holds at least this many bytes.
pub const TARGET_BLOCK_LEN: usize = 4096;

/// The sorted file's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapHeader {
    /// 1: a version 1 snapshot (`snap-<generation>`, no tombstones); 2: a run or partition
    /// (`run-<id>`, `part-<id>`), whose entries may be tombstones.
    pub version: u32,
    /// Version 1: the generation (the state as of the start of that generation). Version 2: the
    /// file's id, as in its name.
    pub generation: u64,
}

impl SnapHeader {
    /// The header's exact bytes.
    pub fn encode(&self) -> [u8; SNAP_HEADER_LEN] {
        let mut out = [0u8; SNAP_HEADER_LEN];
        out[S_MAGIC_AT..S_VERSION_AT].copy_from_slice(&SNAP_MAGIC);
        out[S_VERSION_AT..S_FLAGS_AT].copy_from_slice(&self.version.to_le_bytes());
        out[S_GENERATION_AT..S_CRC_AT].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&out[..S_CRC_AT]);
        out[S_CRC_AT..S_RESERVED_AT].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header: magic, then version, then checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < SNAP_HEADER_LEN || bytes[S_MAGIC_AT..S_VERSION_AT] != SNAP_MAGIC {
            return Err(HeaderError::NotOurs);
        }
        let version = read_u32(bytes, S_VERSION_AT);
        if version > SNAPSHOT_FORMAT_VERSION {
            return Err(HeaderError::FutureVersion {
                found: version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        if crc32fast::hash(&bytes[..S_CRC_AT]) != read_u32(bytes, S_CRC_AT) {
            return Err(HeaderError::Corrupt {
                offset: S_CRC_AT as u64,
                reason: "snapshot header checksum mismatch",
            });
        }
        if version == 0 || read_u32(bytes, S_FLAGS_AT) != 0 || read_u32(bytes, S_RESERVED_AT) != 0 {
            return Err(HeaderError::Corrupt {
                offset: S_VERSION_AT as u64,
                reason: "invalid version, flags or reserved bytes",
            });
        }
        Ok(SnapHeader {
            version,
            generation: read_u64(bytes, S_GENERATION_AT),
        })
    }
}

/// The snapshot footer: where the meta region is, and counts to check it against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapFooter {
    /// Offset of the meta region (the index).
    pub meta_offset: u64,
    /// Number of data blocks (and index entries).
    pub block_count: u64,
    /// Number of key-value entries.
    pub entry_count: u64,
    /// Bytes of index keys after the index entries.
    pub index_keys_len: u64,
    /// Number of 64-byte filter blocks after the index keys (0: no filter).
    pub filter_blocks: u32,
    /// CRC-32 of the page crc array.
    pub page_crcs_crc: u32,
}

impl SnapFooter {
    /// Bytes of the meta region: key prefixes, index entries, index keys, filter.
    pub fn meta_len(&self) -> Option<u64> {
        self.block_count
            .checked_mul((PREFIX_LEN + INDEX_ENTRY_LEN) as u64)?
            .checked_add(self.index_keys_len)?
            .checked_add(u64::from(self.filter_blocks) * FILTER_BLOCK_LEN as u64)
    }

    /// The footer's exact bytes.
    pub fn encode(&self) -> [u8; SNAP_FOOTER_LEN] {
        let mut out = [0u8; SNAP_FOOTER_LEN];
        out[F_META_OFFSET_AT..F_BLOCK_COUNT_AT].copy_from_slice(&self.meta_offset.to_le_bytes());
        out[F_BLOCK_COUNT_AT..F_ENTRY_COUNT_AT].copy_from_slice(&self.block_count.to_le_bytes());
        out[F_ENTRY_COUNT_AT..F_KEYS_LEN_AT].copy_from_slice(&self.entry_count.to_le_bytes());
        out[F_KEYS_LEN_AT..F_FILTER_BLOCKS_AT].copy_from_slice(&self.index_keys_len.to_le_bytes());
        out[F_FILTER_BLOCKS_AT..F_PAGE_CRCS_CRC_AT]
            .copy_from_slice(&self.filter_blocks.to_le_bytes());
        out[F_PAGE_CRCS_CRC_AT..F_MAGIC_AT].copy_from_slice(&self.page_crcs_crc.to_le_bytes());
        out[F_MAGIC_AT..F_CRC_AT].copy_from_slice(&SNAP_END_MAGIC);
        let crc = crc32fast::hash(&out[..F_CRC_AT]);
        out[F_CRC_AT..F_RESERVED_AT].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the last `SNAP_FOOTER_LEN` bytes of a file; the offset in an error is relative to
    /// the footer's start.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() != SNAP_FOOTER_LEN || bytes[F_MAGIC_AT..F_CRC_AT] != SNAP_END_MAGIC {
            return Err(HeaderError::Corrupt {
                offset: F_MAGIC_AT as u64,
                reason: "snapshot footer missing (incomplete file)",
            });
        }
        if crc32fast::hash(&bytes[..F_CRC_AT]) != read_u32(bytes, F_CRC_AT) {
            return Err(HeaderError::Corrupt {
                offset: F_CRC_AT as u64,
                reason: "snapshot footer checksum mismatch",
            });
        }
        if read_u32(bytes, F_RESERVED_AT) != 0 {
            return Err(HeaderError::Corrupt {
                offset: F_RESERVED_AT as u64,
                reason: "invalid reserved bytes in snapshot footer",
            });
        }
        Ok(SnapFooter {
            meta_offset: read_u64(bytes, F_META_OFFSET_AT),
            block_count: read_u64(bytes, F_BLOCK_COUNT_AT),
            entry_count: read_u64(bytes, F_ENTRY_COUNT_AT),
            index_keys_len: read_u64(bytes, F_KEYS_LEN_AT),
            filter_blocks: read_u32(bytes, F_FILTER_BLOCKS_AT),
            page_crcs_crc: read_u32(bytes, F_PAGE_CRCS_CRC_AT),
        })
    }
}

/// CRC-32 of each `META_PAGE_LEN` page of `meta`, as the page crc array's bytes.
pub fn page_crcs(meta: &[u8]) -> Vec<u8> {
    meta.chunks(META_PAGE_LEN)
        .flat_map(|page| crc32fast::hash(page).to_le_bytes())
        .collect()
}

/// Bits of filter per key.
pub const FILTER_BITS_PER_KEY: usize = 14;
/// Bytes per filter block (one cache line).
pub const FILTER_BLOCK_LEN: usize = 64;
/// Bits set per key.
const FILTER_PROBES: u32 = 8;

/// The filter hash of a key: FNV-1a (64-bit) finished with MurmurHash3's `fmix64`.
pub fn filter_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The filter block of `hash` and the bits to test or set in it.
fn filter_bits(hash: u64, blocks: usize) -> (usize, impl Iterator<Item = usize>) {
    let block = ((hash & 0xffff_ffff) * blocks as u64) >> 32;
    let a = (hash >> 32) as u32;
    let d = a.rotate_left(15) | 1;
    let bits = (0..FILTER_PROBES).map(move |i| (a.wrapping_add(i.wrapping_mul(d)) % 512) as usize);
    (block as usize, bits)
}

/// Builds a filter as keys stream by, sized up front for at most `expected` keys.
#[derive(Debug)]
pub struct FilterBuilder {
    filter: Vec<u8>,
    blocks: usize,
    keys: u64,
}

impl FilterBuilder {
    /// A filter for up to `expected` keys (more still work, with more false positives).
    pub fn new(expected: u64) -> Self {
        let bits = usize::try_from(expected)
            .unwrap_or(usize::MAX)
            .saturating_mul(FILTER_BITS_PER_KEY);
        let blocks = bits.div_ceil(FILTER_BLOCK_LEN * 8).max(1);
        FilterBuilder {
            filter: vec![0u8; blocks * FILTER_BLOCK_LEN],
            blocks,
            keys: 0,
        }
    }

    /// Adds a key by its hash.
    pub fn add(&mut self, hash: u64) {
        let (block, bits) = filter_bits(hash, self.blocks);
        let block = &mut self.filter[block * FILTER_BLOCK_LEN..(block + 1) * FILTER_BLOCK_LEN];
        for bit in bits {
            block[bit / 8] |= 1 << (bit % 8);
        }
        self.keys += 1;
    }

    /// The filter's bytes; empty if no key was added.
    pub fn finish(self) -> Vec<u8> {
        if self.keys == 0 {
            Vec::new()
        } else {
            self.filter
        }
    }
}

/// Builds the filter for keys with these hashes.
#[cfg(test)]
pub fn build_filter(hashes: &[u64]) -> Vec<u8> {
    let mut filter = FilterBuilder::new(hashes.len() as u64);
    hashes.iter().for_each(|&h| filter.add(h));
    filter.finish()
}

/// Which of a filter's `blocks` the key with this hash lives in.
pub fn filter_block_of(hash: u64, blocks: usize) -> usize {
    filter_bits(hash, blocks).0
}

/// Whether a key with this hash may be in the set that built this filter block (`false`: surely
/// not).
pub fn filter_block_may_contain(block: &[u8], hash: u64, blocks: usize) -> bool {
    let (_, mut bits) = filter_bits(hash, blocks);
    bits.all(|bit| block[bit / 8] & (1 << (bit % 8)) != 0)
}

/// Whether a key with this hash may be in the set the filter was built from (`false`: surely
/// not). An empty filter says "maybe" to everything.
#[cfg(test)]
pub fn filter_may_contain(filter: &[u8], hash: u64) -> bool {
    let blocks = filter.len() / FILTER_BLOCK_LEN;
    if blocks == 0 {
        return true;
    }
    let at = filter_block_of(hash, blocks) * FILTER_BLOCK_LEN;
    filter_block_may_contain(&filter[at..at + FILTER_BLOCK_LEN], hash, blocks)
}

/// One index entry: where a block is, and where its first key is among the index keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the block in the file.
    pub offset: u64,
    /// Length of the block, CRC included.
    pub len: u32,
    /// Entries in the block.
    pub entries: u32,
    /// Offset of the block's first key within the index keys.
    pub key_offset: u64,
    /// Length of that key.
    pub key_len: u32,
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian number: comparing two keys'
/// prefixes orders the keys correctly whenever the prefixes differ.
pub fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; PREFIX_LEN];
    let n = key.len().min(PREFIX_LEN);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

impl IndexEntry {
    /// Appends the entry's 32 bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.key_offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&self.key_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }

    /// Decodes an entry from its 32 bytes.
    pub fn decode(bytes: &[u8]) -> Self {
        IndexEntry {
            offset: read_u64(bytes, 0),
            key_offset: read_u64(bytes, 8),
            len: read_u32(bytes, 16),
            entries: read_u32(bytes, 20),
            key_len: read_u32(bytes, 24),
        }
    }
}

/// Builds one data block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    /// The entries, back to back.
    entries: Vec<u8>,
    /// Where each entry starts within `entries`.
    offsets: Vec<u32>,
    /// The finished block.
    out: Vec<u8>,
}

impl BlockBuilder {
    /// Adds an entry (`None`: a tombstone); keys must come in strictly increasing order.
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.offsets.push(self.entries.len() as u32);
        self.entries
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        let value_len = value.map_or(TOMBSTONE_LEN, |v| v.len() as u32);
        self.entries.extend_from_slice(&value_len.to_le_bytes());
        self.entries.extend_from_slice(key);
        self.entries.extend_from_slice(value.unwrap_or_default());
    }

    /// Bytes the block will take.
    pub fn len(&self) -> usize {
        BLOCK_COUNT_LEN + 4 * self.offsets.len() + self.entries.len() + BLOCK_CRC_LEN
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Entries so far.
    pub fn entries(&self) -> u32 {
        self.offsets.len() as u32
    }

    /// Finishes the block (count, offsets, entries, CRC) and returns its bytes; call `reset`
    /// before adding to the next block.
    pub fn finish(&mut self) -> &[u8] {
        let count = self.offsets.len();
        let start = (BLOCK_COUNT_LEN + 4 * count) as u32;
        self.out.clear();
        self.out.extend_from_slice(&(count as u32).to_le_bytes());
        for offset in &self.offsets {
            self.out.extend_from_slice(&(start + offset).to_le_bytes());
        }
        self.out.extend_from_slice(&self.entries);
        let crc = crc32fast::hash(&self.out);
        self.out.extend_from_slice(&crc.to_le_bytes());
        &self.out
    }

    /// Empties the builder after `finish`.
    pub fn reset(&mut self) {
        self.entries.clear();
        self.offsets.clear();
    }
}

/// Checks a block's CRC and structure: `count` entries, at the offsets its offset array says,
/// that fill it exactly.
pub fn check_block(block: &[u8], expected_entries: u32) -> Result<(), &'static str> {
    if block.len() < BLOCK_COUNT_LEN + BLOCK_CRC_LEN {
        return Err("block too short");
    }
    let body = &block[..block.len() - BLOCK_CRC_LEN];
    if crc32fast::hash(body) != read_u32(block, body.len()) {
        return Err("block checksum mismatch");
    }
    let count = read_u32(body, 0);
    if count != expected_entries || count == 0 {
        return Err("block entry count disagrees with the index");
    }
    let Some(mut at) = entries_start(body) else {
        return Err("block too short for its entry offsets");
    };
    for i in 0..count as usize {
        if entry_offset(body, i) != at {
            return Err("entry offset disagrees with the entries");
        }
        match entry_at(body, at) {
            Some(e) => at = e.next,
            None => return Err("malformed entry in block"),
        }
    }
    if at != body.len() {
        return Err("trailing bytes in block");
    }
    Ok(())
}

/// Where the entries of a block body start, after its count and offset array.
pub fn entries_start(body: &[u8]) -> Option<usize> {
    let count = read_u32(body, 0) as usize;
    count
        .checked_mul(4)?
        .checked_add(BLOCK_COUNT_LEN)
        .filter(|&start| start <= body.len())
}

/// Where entry `i` of a block body starts (from the offset array).
pub fn entry_offset(body: &[u8], i: usize) -> usize {
    read_u32(body, BLOCK_COUNT_LEN + 4 * i) as usize
}

/// Where an entry's key and value lie within a block body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPos {
    /// Start of the key.
    pub key: usize,
    /// Key length.
    pub key_len: usize,
    /// Start of the value.
    pub value: usize,
    /// Value length.
    pub value_len: usize,
    /// Start of the next entry.
    pub next: usize,
    /// The entry is a tombstone (its value length field is [`TOMBSTONE_LEN`]; `value_len` is 0).
    pub tombstone: bool,
}

/// The value length that marks a tombstone (version 2 files): a delete that must hide an older
/// value in a lower file. No value is this long (`MAX_VALUE_LEN` is far below).
pub const TOMBSTONE_LEN: u32 = u32::MAX;
const _: () = assert!((crate::limits::MAX_VALUE_LEN as u64) < TOMBSTONE_LEN as u64);

/// Decodes the entry at `at` of a block body, if it fits.
pub fn entry_at(body: &[u8], at: usize) -> Option<EntryPos> {
    let header = body.get(at..at + ENTRY_HEADER_LEN)?;
    let key_len = read_u32(header, 0) as usize;
    let raw_value_len = read_u32(header, 4);
    let tombstone = raw_value_len == TOMBSTONE_LEN;
    let value_len = if tombstone { 0 } else { raw_value_len as usize };
    let key = at + ENTRY_HEADER_LEN;
    let value = key.checked_add(key_len)?;
    let next = value.checked_add(value_len)?;
    (next <= body.len()).then_some(EntryPos {
        key,
        key_len,
        value,
        value_len,
        next,
        tombstone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins a one-block snapshot byte for byte (see docs/FORMAT.md); the expected bytes were
    /// computed independently (Python's `zlib.crc32`).
    #[test]
    fn golden_snapshot() {
        let header = SnapHeader {
            version: 1,
            generation: 3,
        };
        let mut file = header.encode().to_vec();
        let mut block = BlockBuilder::default();
        block.add(b"a", Some(b"1"));
        block.add(b"bc", Some(b""));
        let block_offset = file.len() as u64;
        let bytes = block.finish().to_vec();
        file.extend_from_slice(&bytes);
        let meta_offset = file.len() as u64;
        let mut meta = key_prefix(b"a").to_be_bytes().to_vec();
        IndexEntry {
            offset: block_offset,
            len: bytes.len() as u32,
            entries: 2,
            key_offset: 0,
            key_len: 1,
        }
        .encode_into(&mut meta);
        meta.extend_from_slice(b"a");
        let filter = build_filter(&[filter_hash(b"a"), filter_hash(b"bc")]);
        assert_eq!(filter.len(), FILTER_BLOCK_LEN);
        meta.extend_from_slice(&filter);
        let crcs = page_crcs(&meta);
        file.extend_from_slice(&meta);
        file.extend_from_slice(&crcs);
        file.extend_from_slice(
            &SnapFooter {
                meta_offset,
                block_count: 1,
                entry_count: 2,
                index_keys_len: 1,
                filter_blocks: 1,
                page_crcs_crc: crc32fast::hash(&crcs),
            }
            .encode(),
        );
        let expected_hex = concat!(
            // header
            "534b56534e500d0a01000000000000000300000000000000c0d1879700000000",
            // block: 2 entries, entry offsets 12 and 22, a=1, bc="", crc
            "02000000",
            "0c00000016000000",
            "010000000100000061310200000000000000",
            "6263",
            "df9e78f3",
            // meta: key prefix "a", index entry (offset 32, key offset 0, len 36, 2 entries,
            // key len 1), then the index key "a"
            "6100000000000000",
            "2000000000000000",
            "0000000000000000",
            "24000000",
            "02000000",
            "01000000",
            "00000000",
            "61",
            // meta: the filter's one block
            "10000000000008000000000004000000008002100002000001000000008000000000004000000040",
            "002800010000000000000000000000000000000000200004",
            // page crc of the meta region
            "9f042cfd",
            // footer
            "4400000000000000",
            "0100000000000000",
            "0200000000000000",
            "0100000000000000",
            "01000000",
            "3d635339",
            "534b56454e440d0a",
            "6d9042cd",
            "00000000",
        );
        let hex: String = file.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected_hex);
        assert_eq!(SnapHeader::decode(&file), Ok(header));
        let footer = SnapFooter::decode(&file[file.len() - SNAP_FOOTER_LEN..]).expect("footer");
        assert_eq!(footer.entry_count, 2);
        assert_eq!(footer.meta_len(), Some(40 + 1 + 64));
        assert_eq!(check_block(&bytes, 2), Ok(()));
    }

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        let keys: Vec<Vec<u8>> = (0..10_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| filter_hash(k)).collect();
        let filter = build_filter(&hashes);
        assert!(hashes.iter().all(|&h| filter_may_contain(&filter, h)));
        let false_positives = (10_000..110_000u32)
            .filter(|i| filter_may_contain(&filter, filter_hash(&i.to_be_bytes())))
            .count();
        assert!(false_positives < 3_000, "{false_positives} in 100,000");
        assert!(filter_may_contain(&[], 42), "no filter: maybe");
    }

    #[test]
    fn every_flipped_bit_in_a_block_is_detected() {
        let mut block = BlockBuilder::default();
        block.add(b"key", Some(b"value"));
        block.add(b"key2", None);
        let bytes = block.finish().to_vec();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(check_block(&damaged, 2).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn a_truncated_footer_is_corrupt_not_foreign() {
        let footer = SnapFooter {
            meta_offset: 32,
            block_count: 0,
            entry_count: 0,
            index_keys_len: 0,
            filter_blocks: 0,
            page_crcs_crc: 0,
        }
        .encode();
        assert!(matches!(
            SnapFooter::decode(&footer[1..]),
            Err(HeaderError::Corrupt { .. })
        ));
        let mut flipped = footer;
        flipped[9] ^= 1;
        assert!(matches!(
            SnapFooter::decode(&flipped),
            Err(HeaderError::Corrupt { .. })
        ));
    }
}
