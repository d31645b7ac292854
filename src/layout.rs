//! The store directory: which file names exist and what they mean, the listing of a directory
//! sorted into those kinds, and its fingerprint. Which of the files make up the store is said by
//! the newest manifest (`MANIFEST-<n>`); a store of format 1 has none, and its names say it.

use std::ffi::OsStr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::Vfs;

/// The lock file: `flock`ed by the process that appends to the log; its first page is the
/// shared hint (see `locking`).
pub const LOCK_NAME: &str = "LOCK";
/// Held for the whole of a compaction.
pub const COMPACTION_LOCK_NAME: &str = "LOCK.compaction";
/// Held for the whole of a flush (a memtable written as a run).
pub const FLUSH_LOCK_NAME: &str = "LOCK.flush";
/// Held by every open handle: shared, or exclusively by an exclusive one.
pub const HANDLES_LOCK_NAME: &str = "LOCK.handles";

/// What a directory entry is to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFile {
    /// `LOCK`, `LOCK.compaction` or `LOCK.handles`.
    Lock,
    /// `wal-<generation>`.
    Wal(u64),
    /// `snap-<generation>`: a snapshot of store format 1.
    Snapshot(u64),
    /// `run-<id>`: a flushed memtable.
    Run(u64),
    /// `part-<id>`: one key-range partition of the compacted state.
    Part(u64),
    /// `MANIFEST-<number>`: the live set.
    Manifest(u64),
    /// `*.tmp`: an unfinished atomic write, garbage after a crash.
    Temporary,
    /// `quarantine-<generation>-<offset>`: log bytes set aside by recovery.
    Quarantine,
    /// Not one of ours.
    Foreign,
}

/// `wal-<generation>`, the generation as 16 hex digits so that names sort in generation order.
pub fn wal_name(generation: u64) -> String {
    format!("wal-{generation:016x}")
}

/// `snap-<generation>`, the generation as 16 hex digits.
pub fn snapshot_name(generation: u64) -> String {
    format!("snap-{generation:016x}")
}

/// `run-<id>`, the id as 16 hex digits.
pub fn run_name(id: u64) -> String {
    format!("run-{id:016x}")
}

/// `part-<id>`, the id as 16 hex digits.
pub fn part_name(id: u64) -> String {
    format!("part-{id:016x}")
}

/// `MANIFEST-<number>`, the number as 16 hex digits.
pub fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:016x}")
}

/// The prefixes of the names of files that are created by an atomic rename from `<name>.tmp`.
const RENAMED_KINDS: [&str; 5] = ["wal-", "snap-", "run-", "part-", "MANIFEST-"];

/// The file that keeps log bytes found beyond a damaged record at `offset` of `wal-<generation>`.
pub fn quarantine_name(generation: u64, offset: u64) -> String {
    format!("quarantine-{generation:016x}-{offset:016x}")
}

/// Classifies a directory entry by its name alone.
pub fn classify(name: &OsStr) -> StoreFile {
    let Some(name) = name.to_str() else {
        return StoreFile::Foreign;
    };
    if [
        LOCK_NAME,
        COMPACTION_LOCK_NAME,
        FLUSH_LOCK_NAME,
        HANDLES_LOCK_NAME,
    ]
    .contains(&name)
    {
        return StoreFile::Lock;
    }
    if name.ends_with(".tmp") && RENAMED_KINDS.iter().any(|kind| name.starts_with(kind)) {
        return StoreFile::Temporary;
    }
    if name.starts_with("quarantine-") {
        return StoreFile::Quarantine;
    }
    if let Some(generation) = name.strip_prefix("wal-").and_then(parse_generation) {
        return StoreFile::Wal(generation);
    }
    if let Some(generation) = name.strip_prefix("snap-").and_then(parse_generation) {
        return StoreFile::Snapshot(generation);
    }
    if let Some(id) = name.strip_prefix("run-").and_then(parse_generation) {
        return StoreFile::Run(id);
    }
    if let Some(id) = name.strip_prefix("part-").and_then(parse_generation) {
        return StoreFile::Part(id);
    }
    if let Some(number) = name.strip_prefix("MANIFEST-").and_then(parse_generation) {
        return StoreFile::Manifest(number);
    }
    StoreFile::Foreign
}

fn parse_generation(digits: &str) -> Option<u64> {
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The directory's entries, sorted into kinds.
#[derive(Default)]
pub(crate) struct Listing {
    pub(crate) wals: Vec<u64>,
    pub(crate) snapshots: Vec<u64>,
    pub(crate) runs: Vec<u64>,
    pub(crate) parts: Vec<u64>,
    pub(crate) manifests: Vec<u64>,
    pub(crate) temporaries: Vec<String>,
    pub(crate) quarantine: Vec<String>,
    pub(crate) lock: bool,
    pub(crate) foreign: usize,
}

impl Listing {
    pub(crate) fn has_store_files(&self) -> bool {
        self.lock || !self.wals.is_empty() || !self.snapshots.is_empty() || self.has_manifest()
    }

    /// Whether the store is of format 2 (a manifest names its live set).
    pub(crate) fn has_manifest(&self) -> bool {
        !self.manifests.is_empty()
    }
}

/// Lists the store directory and sorts its entries into kinds.
pub(crate) fn list_store(vfs: &dyn Vfs, dir: &Path) -> Result<Listing> {
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list the store directory", dir, e))?;
    let mut listing = Listing::default();
    for name in names {
        match classify(&name) {
            StoreFile::Lock => listing.lock = true,
            StoreFile::Wal(g) => listing.wals.push(g),
            StoreFile::Snapshot(g) => listing.snapshots.push(g),
            StoreFile::Run(id) => listing.runs.push(id),
            StoreFile::Part(id) => listing.parts.push(id),
            StoreFile::Manifest(n) => listing.manifests.push(n),
            StoreFile::Temporary => listing
                .temporaries
                .push(name.to_string_lossy().into_owned()),
            StoreFile::Quarantine => listing.quarantine.push(name.to_string_lossy().into_owned()),
            StoreFile::Foreign => listing.foreign += 1,
        }
    }
    listing.wals.sort_unstable();
    listing.snapshots.sort_unstable();
    listing.runs.sort_unstable();
    listing.parts.sort_unstable();
    listing.manifests.sort_unstable();
    listing.quarantine.sort_unstable();
    Ok(listing)
}

/// A fingerprint of the store's logs, sorted files and manifests (the names whose durability
/// matters): equal fingerprints mean the same set of names. Never 0 (0 in the hint page means
/// "unknown").
pub(crate) fn directory_fingerprint(listing: &Listing) -> u64 {
    let mut hasher = crc32fast::Hasher::new();
    let kinds: [(&[u8], &Vec<u64>); 5] = [
        (b"w", &listing.wals),
        (b"s", &listing.snapshots),
        (b"r", &listing.runs),
        (b"p", &listing.parts),
        (b"m", &listing.manifests),
    ];
    let mut count = 0u64;
    for (tag, numbers) in kinds {
        for n in numbers {
            hasher.update(tag);
            hasher.update(&n.to_le_bytes());
        }
        count += numbers.len() as u64;
    }
    (u64::from(hasher.finalize()) << 32) | ((count + 1) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_foreign() {
        assert_eq!(classify(OsStr::new(&wal_name(42))), StoreFile::Wal(42));
        assert_eq!(
            classify(OsStr::new("snap-000000000000002a")),
            StoreFile::Snapshot(42)
        );
        assert_eq!(
            classify(OsStr::new("wal-000000000000002a.tmp")),
            StoreFile::Temporary
        );
        assert_eq!(
            classify(OsStr::new(&quarantine_name(1, 2))),
            StoreFile::Quarantine
        );
        assert_eq!(classify(OsStr::new(&run_name(7))), StoreFile::Run(7));
        assert_eq!(classify(OsStr::new(&part_name(8))), StoreFile::Part(8));
        assert_eq!(
            classify(OsStr::new("MANIFEST-0000000000000009")),
            StoreFile::Manifest(9)
        );
        assert_eq!(
            classify(OsStr::new("part-0000000000000008.tmp")),
            StoreFile::Temporary
        );
        assert_eq!(classify(OsStr::new("LOCK")), StoreFile::Lock);
        assert_eq!(classify(OsStr::new("LOCK.compaction")), StoreFile::Lock);
        for stranger in [
            "wal-1",
            "wal-00000000000000zz",
            "notes.txt",
            "lock",
            "wal-000000000000002a ",
        ] {
            assert_eq!(
                classify(OsStr::new(stranger)),
                StoreFile::Foreign,
                "{stranger}"
            );
        }
    }
}
