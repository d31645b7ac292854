//! What a store reports about itself: [`Stats`], and what [`Db::verify`](crate::Db::verify) and
//! recovery found.

use std::path::PathBuf;

use crate::options::Durability;

/// Figures about a store, from [`Db::stats`](crate::Db::stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The live log segment (`wal-<generation>`).
    pub generation: u64,
    /// The manifest this handle reads the sorted files of (`MANIFEST-<manifest>`; 0 for a store
    /// of format 1 opened read-only, which has none).
    pub manifest: u64,
    /// The first log segment the manifest replays.
    pub log_start: u64,
    /// Number of keys in the store.
    pub keys: u64,
    /// The runs (flushed memtables), newest first.
    pub runs: Vec<FileStats>,
    /// The partitions (the compacted state), in key order.
    pub partitions: Vec<FileStats>,
    /// Length of the live log segment in bytes (its logical end; preallocated space not
    /// included).
    pub wal_bytes: u64,
    /// Approximate heap bytes held by the memtable (and by the frozen one a flush writes).
    pub memtable_bytes: u64,
    /// The sequence number the next committed batch will carry.
    pub next_sequence: u64,
    /// Batches committed through this handle (and its clones) since it was opened.
    pub commits: u64,
    /// `fdatasync` calls made for those commits and flushes; fewer than `commits` when concurrent
    /// writers shared a sync.
    pub syncs: u64,
    /// Flushes (memtables written as runs) completed by this handle since it was opened.
    pub flushes: u64,
    /// Compactions (runs merged into the partitions) completed by this handle since it was
    /// opened.
    pub compactions: u64,
    /// Torn records that writers killed in the middle of an append left at the end of the log,
    /// cut off by this handle before it appended (since it was opened).
    pub torn_tails_repaired: u64,
    /// When writes are considered done.
    pub durability: Durability,
    /// What recovery found and did when the store was opened.
    pub recovery: RecoveryReport,
    /// The read snapshots open on this handle (iterators' included), and what they hold.
    pub snapshots: SnapshotStats,
}

/// What the open read snapshots of a handle hold, in [`Stats`]: what they keep that the store
/// itself no longer needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotStats {
    /// Open snapshots ([`Db::snapshot`](crate::Db::snapshot)'s clones count once; each live
    /// iterator holds one).
    pub open: u64,
    /// The sequence number of the oldest of them ([`Snapshot::sequence`](crate::Snapshot::sequence)).
    pub oldest_sequence: Option<u64>,
    /// Heap bytes held only for them: memtables flushed or replaced since they were taken, and
    /// the values later writes replaced in the live memtable.
    pub memory_bytes: u64,
    /// Disk bytes held only for them: sorted files that flushes and compactions (in any process)
    /// have replaced since, kept open (and so on disk, though perhaps no longer named in the
    /// directory) until the snapshots that read them are dropped.
    pub disk_bytes: u64,
}

/// One sorted file, in [`Stats`] and [`VerifyReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStats {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Entries in it (tombstones included).
    pub entries: u64,
}

impl Stats {
    /// Bytes of the runs and partitions together.
    pub fn sorted_bytes(&self) -> u64 {
        self.runs
            .iter()
            .chain(&self.partitions)
            .map(|f| f.bytes)
            .sum()
    }

    /// Entries of the partitions (every key in them is live).
    pub fn partition_entries(&self) -> u64 {
        self.partitions.iter().map(|f| f.entries).sum()
    }
}

/// What [`Db::verify`](crate::Db::verify) checked, all of it found intact.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The sorted files checked (runs, then partitions; a format 1 store's snapshot).
    pub files: Vec<FileStats>,
    /// The manifest that names them, if the store has one (format 2).
    pub manifest: Option<PathBuf>,
    /// The log segments checked before the live one, with their records.
    pub older_wals: Vec<(PathBuf, u64)>,
    /// The live log checked.
    pub wal: PathBuf,
    /// Records in it.
    pub wal_records: u64,
    /// Its logical length in bytes.
    pub wal_bytes: u64,
    /// The format version of the live log. In a version 1 log (written by an older build, and
    /// kept until the next compaction starts a new log) damage to acknowledged records cannot be
    /// told from a torn tail; from version 2 on it can, and is never cut away.
    pub log_format_version: u32,
    /// Quarantine files in the store (left by an earlier recovery; inspect them).
    pub quarantine_files: Vec<PathBuf>,
    /// Where the live log has a torn tail, if it has one: bytes a crash left after the last
    /// durable record, which no later record vouches for. Normal after a crash; the next handle
    /// that writes cuts it off. (Damage to records that were durable is an error instead.)
    pub torn_tail: Option<u64>,
}

/// What recovery found and did, reported by [`Db::stats`](crate::Db::stats) and `kvctl stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Log records replayed at open.
    pub replayed_records: u64,
    /// Whether the open converted a store of format 1 (one snapshot and its logs) to format 2
    /// (a manifest, runs and partitions).
    pub converted_from_format_1: bool,
    /// Bytes of a damaged or torn log tail cut off at open.
    pub truncated_bytes: u64,
    /// Leftover files removed at open: unfinished temporaries, and the segments, sorted files and
    /// manifests that a finished flush or compaction had replaced.
    pub removed_temporaries: u64,
    /// The format version of the live log (see [`VerifyReport::log_format_version`]).
    pub log_format_version: u32,
    /// Quarantine files in the store: log bytes found beyond a damaged record that still held
    /// decodable records. Inspect them; sturdykv never deletes them.
    pub quarantine_files: Vec<PathBuf>,
}

/// What [`Db::repair`](crate::Db::repair) salvaged and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// The log segment the repaired store starts at (its partitions and empty log; 0 from an
    /// inspection, which writes nothing).
    pub generation: u64,
    /// The manifest naming the partitions that hold everything kept (empty from an
    /// inspection).
    pub manifest: PathBuf,
    /// Keys in the repaired store (0 from an inspection).
    pub keys: u64,
    /// Log records replayed into it.
    pub records_kept: u64,
    /// The damaged records skipped: a state that may never have existed, so each is named.
    pub lost: Vec<LostRecords>,
    /// The damaged blocks of sorted files left out, by the keys they held.
    pub lost_keys: Vec<LostKeys>,
    /// Bytes of a torn tail left out (writes a crash interrupted, never acknowledged).
    pub torn_tail_bytes: u64,
    /// Where each damaged log was kept whole before it was replaced.
    pub quarantine_files: Vec<PathBuf>,
}

/// A damaged sorted-file block a repair left out: every key in `[from, below)` that was not
/// written again later may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostKeys {
    /// The sorted file.
    pub file: PathBuf,
    /// Where the block starts.
    pub offset: u64,
    /// The block's first key (`None`: the index could not say).
    pub from: Option<Vec<u8>>,
    /// The next block's first key (`None`: the end of the key space, or the index could not say).
    pub below: Option<Vec<u8>>,
}

/// Records a repair could not read, and had to leave out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostRecords {
    /// The log they were in.
    pub file: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// Their sequence numbers, `first_seq..=last_seq`.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// The keys that still parse in the damaged bytes (written or deleted by the lost records;
    /// may be incomplete).
    pub keys: Vec<Vec<u8>>,
}
