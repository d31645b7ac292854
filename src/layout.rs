//! The store directory: which file names exist and what they mean. The names are the manifest:
//! there is no other record of which files make up the store.

use std::ffi::OsStr;

/// The lock file: `flock`ed by the process that appends to the log; its first page is the
/// shared hint (see `locking`).
pub const LOCK_NAME: &str = "LOCK";
/// Held for the whole of a compaction.
pub const COMPACTION_LOCK_NAME: &str = "LOCK.compaction";
/// Held by every open handle: shared, or exclusively by an exclusive one.
pub const HANDLES_LOCK_NAME: &str = "LOCK.handles";

/// What a directory entry is to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFile {
    /// `LOCK`, `LOCK.compaction` or `LOCK.handles`.
    Lock,
    /// `wal-<generation>`.
    Wal(u64),
    /// `snap-<generation>`.
    Snapshot(u64),
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

/// The file that keeps log bytes found beyond a damaged record at `offset` of `wal-<generation>`.
pub fn quarantine_name(generation: u64, offset: u64) -> String {
    format!("quarantine-{generation:016x}-{offset:016x}")
}

/// Classifies a directory entry by its name alone.
pub fn classify(name: &OsStr) -> StoreFile {
    let Some(name) = name.to_str() else {
        return StoreFile::Foreign;
    };
    if [LOCK_NAME, COMPACTION_LOCK_NAME, HANDLES_LOCK_NAME].contains(&name) {
        return StoreFile::Lock;
    }
    if name.ends_with(".tmp") && (name.starts_with("wal-") || name.starts_with("snap-")) {
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
    StoreFile::Foreign
}

fn parse_generation(digits: &str) -> Option<u64> {
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
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
