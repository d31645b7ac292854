//! The manifest's byte layout (docs/FORMAT.md, "Manifest file").
//!
//! ```text
//!  0  magic           8  "SKVMAN\r\n"
//!  8  format version  4  u32 = 1
//! 12  flags           4  u32 = 0
//! 16  number          8  u64, as in the name `MANIFEST-<number>`
//! 24  log start       8  u64: the first log segment to replay (`wal-<log start>`)
//! 32  live keys       8  u64: live keys in the runs and partitions together
//! 40  next part id    8  u64: every partition id in the store is below this
//! 48  run count       4  u32
//! 52  part count      4  u32
//! 56  run ids         8 × run count, newest first
//!     part ids        8 × part count, in key order
//!     crc             4  CRC-32 of every byte before it
//! ```
//!
//! A manifest is written whole to a temporary file, synced and renamed: one that is short or
//! fails its CRC was damaged afterwards.

use super::{HeaderError, read_u32, read_u64};

/// First eight bytes of every manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"SKVMAN\r\n";
/// Version of the manifests this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Bytes before the id lists.
pub const MANIFEST_HEADER_LEN: usize = 56;
/// Most runs plus partitions one manifest may name: far beyond any store's need, and a bound on
/// what a damaged count can make a reader allocate.
pub const MANIFEST_MAX_FILES: usize = 1 << 20;

/// The live set of a store: which sorted files make up its state, and where replay starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestData {
    /// As in the name `MANIFEST-<number>`; each install takes the next one.
    pub number: u64,
    /// The first log segment to replay: every earlier segment's records are in the runs.
    pub log_start: u64,
    /// Live keys in the runs and partitions together (tombstones in runs hide keys below).
    pub live_keys: u64,
    /// Every partition id in the store is below this one.
    pub next_part_id: u64,
    /// `run-<id>` files, newest first.
    pub runs: Vec<u64>,
    /// `part-<id>` files, in key order (their key ranges are disjoint).
    pub parts: Vec<u64>,
}

impl ManifestData {
    /// The manifest's exact bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + 8 * self.files() + 4);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for word in [
            self.number,
            self.log_start,
            self.live_keys,
            self.next_part_id,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        for id in self.runs.iter().chain(&self.parts) {
            out.extend_from_slice(&id.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a whole manifest file: magic, then version, then length and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < 12 || bytes[..8] != MANIFEST_MAGIC {
            return Err(HeaderError::NotOurs);
        }
        let version = read_u32(bytes, 8);
        if version > MANIFEST_FORMAT_VERSION {
            return Err(HeaderError::FutureVersion {
                found: version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        if bytes.len() < MANIFEST_HEADER_LEN + 4 {
            return Err(HeaderError::Corrupt {
                offset: bytes.len() as u64,
                reason: "manifest shorter than its header",
            });
        }
        let runs = read_u32(bytes, 48) as usize;
        let parts = read_u32(bytes, 52) as usize;
        let expected = (runs + parts)
            .checked_mul(8)
            .and_then(|ids| ids.checked_add(MANIFEST_HEADER_LEN + 4));
        if runs + parts > MANIFEST_MAX_FILES || expected != Some(bytes.len()) {
            return Err(HeaderError::Corrupt {
                offset: 48,
                reason: "manifest length disagrees with its file counts",
            });
        }
        let crc_at = bytes.len() - 4;
        if crc32fast::hash(&bytes[..crc_at]) != read_u32(bytes, crc_at) {
            return Err(HeaderError::Corrupt {
                offset: crc_at as u64,
                reason: "manifest checksum mismatch",
            });
        }
        if version == 0 || read_u32(bytes, 12) != 0 {
            return Err(HeaderError::Corrupt {
                offset: 8,
                reason: "invalid manifest version or flags",
            });
        }
        let id = |i: usize| read_u64(bytes, MANIFEST_HEADER_LEN + 8 * i);
        Ok(ManifestData {
            number: read_u64(bytes, 16),
            log_start: read_u64(bytes, 24),
            live_keys: read_u64(bytes, 32),
            next_part_id: read_u64(bytes, 40),
            runs: (0..runs).map(id).collect(),
            parts: (runs..runs + parts).map(id).collect(),
        })
    }

    /// Runs and partitions together.
    pub fn files(&self) -> usize {
        self.runs.len() + self.parts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins a manifest byte for byte (docs/FORMAT.md); the CRC was computed independently
    /// (Python's `zlib.crc32`).
    #[test]
    fn golden_manifest() {
        let manifest = ManifestData {
            number: 7,
            log_start: 5,
            live_keys: 1000,
            next_part_id: 3,
            runs: vec![4],
            parts: vec![1, 2],
        };
        let bytes = manifest.encode();
        let expected_hex = concat!(
            "534b564d414e0d0a",
            "01000000",
            "00000000",
            "0700000000000000",
            "0500000000000000",
            "e803000000000000",
            "0300000000000000",
            "01000000",
            "02000000",
            "0400000000000000",
            "0100000000000000",
            "0200000000000000",
            "c79a5382",
        );
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected_hex);
        assert_eq!(ManifestData::decode(&bytes), Ok(manifest));
    }

    /// Every flipped bit, and every cut short, is refused (the future-version case aside).
    #[test]
    fn damage_anywhere_is_refused() {
        let bytes = ManifestData {
            number: 2,
            log_start: 1,
            live_keys: 10,
            next_part_id: 1,
            runs: vec![1, 0],
            parts: vec![],
        }
        .encode();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(ManifestData::decode(&damaged).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(ManifestData::decode(&bytes[..len]).is_err(), "length {len}");
        }
        let mut future = bytes.clone();
        future[8] = 2;
        assert_eq!(
            ManifestData::decode(&future),
            Err(HeaderError::FutureVersion {
                found: 2,
                supported: 1
            })
        );
    }
}
