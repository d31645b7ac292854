//! The on-disk byte layouts, and nothing else: magic numbers, versions, offsets, encoders and
//! decoders.
//!
//! This module is the code side of `docs/FORMAT.md`; the two must change together, and the golden
//! tests pin every byte. All integers are fixed-width little-endian.

mod manifest;
mod snapshot;
mod wal;

pub use manifest::*;
pub use snapshot::*;
pub use wal::*;

/// Version of the sorted files (runs and partitions) this build writes; files with a higher
/// version are refused. Version 1 files (the snapshots of store format 1) are still read.
/// (Logs and manifests have their own versions.)
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

/// Why a file header (or footer) could not be decoded; the caller attaches the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header, or the wrong magic: this is not one of our files.
    NotOurs,
    /// Written by a newer build.
    FutureVersion {
        /// The version in the file.
        found: u32,
        /// The newest version of that kind of file this build reads.
        supported: u32,
    },
    /// Ours and of a known version, but damaged at this offset.
    Corrupt {
        /// Offset of the damaged field.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads a little-endian u32 at `at`; the caller guarantees the bytes exist.
pub fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at`; the caller guarantees the bytes exist.
pub fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}
