//! Opening a store: check that the directory is ours before writing anything, take the lock, then
//! rebuild the in-memory state from the files (replay the logs) and repair a damaged log tail so
//! that new appends never sit behind garbage.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{OpRef, WAL_HEADER_LEN, WalHeader};
use crate::io::{EntryKind, OpenMode, Vfs, VfsFile};
use crate::layout::{LOCK_NAME, StoreFile, classify, snapshot_name, wal_name};
use crate::snapshot::Snapshot;
use crate::view::View;
use crate::wal::{self, LogWriter, Stop};

/// What recovery found and did, reported by [`Db::stats`](crate::Db::stats) and `kvctl stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Log records replayed at open.
    pub replayed_records: u64,
    /// Bytes of a damaged or torn log tail cut off at open.
    pub truncated_bytes: u64,
    /// Leftover files removed at open: unfinished temporaries, and logs and snapshots of
    /// generations a finished compaction had replaced.
    pub removed_temporaries: u64,
    /// Quarantine files in the store: log bytes found beyond a damaged record that still held
    /// decodable records. Inspect them; sturdykv never deletes them.
    pub quarantine_files: Vec<PathBuf>,
}

/// Everything an open handle starts from.
pub struct Recovered {
    pub lock: Arc<dyn VfsFile>,
    pub writer: LogWriter,
    pub view: View,
    pub report: RecoveryReport,
}

/// Opens (creating if allowed) the store in `dir`.
pub fn open(vfs: &dyn Vfs, dir: &Path, create_if_missing: bool) -> Result<Recovered> {
    match vfs
        .entry_kind(dir)
        .map_err(|e| Error::io("look at", dir, e))?
    {
        Some(EntryKind::Dir) => {}
        Some(EntryKind::File) => {
            return Err(Error::NotAStore {
                path: dir.to_owned(),
                reason: "it is a file; a store is a directory".into(),
            });
        }
        None if create_if_missing => {
            vfs.create_dir_all(dir)
                .map_err(|e| Error::io("create the store directory", dir, e))?;
            // The new directory's own entry must be durable too, or a power loss could take the
            // whole store (and every acknowledged write in it) away.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            vfs.sync_dir(parent)
                .map_err(|e| Error::io("sync the directory", parent, e))?;
        }
        None => {
            return Err(Error::NotAStore {
                path: dir.to_owned(),
                reason: "no such directory".into(),
            });
        }
    }

    // Look before writing anything: a directory that holds something else is left untouched.
    let listing = list_store(vfs, dir)?;
    if listing.foreign > 0 && !listing.has_store_files() {
        return Err(Error::NotAStore {
            path: dir.to_owned(),
            reason: "the directory is not empty and holds no sturdykv files".into(),
        });
    }

    // The newest snapshot is the base; a damaged one is an error, never silently skipped (the
    // logs it replaced may already be gone).
    let base = match listing.snapshots.last() {
        Some(&generation) => {
            let path = dir.join(snapshot_name(generation));
            let snapshot = Snapshot::open(vfs, &path)?;
            if snapshot.generation() != generation {
                return Err(Error::corruption(
                    &path,
                    16,
                    format!("header says generation {}", snapshot.generation()),
                ));
            }
            Some(Arc::new(snapshot))
        }
        None => None,
    };
    let start = base.as_ref().map_or(0, |s| s.generation());
    // Replay wal-<start>, wal-<start+1>, ... with no gap.
    let replay: Vec<u64> = listing
        .wals
        .iter()
        .copied()
        .filter(|&g| g >= start)
        .collect();
    for (expected, &found) in (start..).zip(&replay) {
        if found != expected {
            return Err(Error::corruption(
                dir.join(wal_name(expected)),
                0,
                "this log is missing: the logs of the store do not form a sequence",
            ));
        }
    }
    if replay.is_empty() && (base.is_some() || !listing.wals.is_empty()) {
        return Err(Error::corruption(
            dir.join(wal_name(start)),
            0,
            "this log is missing: a snapshot must be followed by the log of its generation",
        ));
    }
    let mut logs = Vec::new();
    for &generation in &replay {
        let path = dir.join(wal_name(generation));
        let (file, header) = wal::open(vfs, &path, OpenMode::ReadWrite)?;
        if header.generation != generation {
            return Err(Error::corruption(
                &path,
                16,
                format!("header says generation {}", header.generation),
            ));
        }
        logs.push((path, file, header));
    }

    let lock_path = dir.join(LOCK_NAME);
    let lock = vfs
        .open(&lock_path, OpenMode::ReadWriteCreate)
        .map_err(|e| Error::io("open the lock file", &lock_path, e))?;
    match lock.try_lock_exclusive() {
        Ok(true) => {}
        Ok(false) => return Err(Error::Locked { path: lock_path }),
        Err(e) => return Err(Error::io("lock (flock) the lock file", &lock_path, e)),
    }

    // What we are about to read may be only in the page cache: a process that died after a
    // failed fdatasync can leave unsynced records behind. Make the directory and the logs
    // durable first, so that replay never shows a write that a power cut could still take away.
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync the directory", dir, e))?;
    for (path, file, _) in &logs {
        file.sync_data()
            .map_err(|e| Error::io("sync", path.as_path(), e))?;
    }

    let mut report = RecoveryReport {
        quarantine_files: listing.quarantine.iter().map(|n| dir.join(n)).collect(),
        ..RecoveryReport::default()
    };
    // Garbage: unfinished atomic writes, and generations older than the base (a crash during a
    // compaction's clean-up leaves them).
    let stale = listing
        .wals
        .iter()
        .filter(|&&g| g < start)
        .map(|&g| wal_name(g))
        .chain(
            listing
                .snapshots
                .iter()
                .filter(|&&g| g < start)
                .map(|&g| snapshot_name(g)),
        );
    let garbage: Vec<String> = listing.temporaries.iter().cloned().chain(stale).collect();
    for name in &garbage {
        vfs.remove_file(&dir.join(name))
            .map_err(|e| Error::io("remove leftover file", dir.join(name), e))?;
    }
    report.removed_temporaries = garbage.len() as u64;
    if !garbage.is_empty() {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("sync the directory", dir, e))?;
    }

    if logs.is_empty() {
        let header = WalHeader {
            generation: 0,
            first_seq: 1,
        };
        let path = wal::create(vfs, dir, header)?;
        let file = vfs
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| Error::io("open", &path, e))?;
        logs.push((path, file, header));
    }

    let mut view = View {
        live_keys: base.as_ref().map_or(0, |s| s.len()),
        snapshot: base,
        ..View::default()
    };
    let mut next_seq = logs[0].2.first_seq;
    let last = logs.len() - 1;
    let mut writer = None;
    for (i, (path, file, header)) in logs.into_iter().enumerate() {
        if header.first_seq != next_seq {
            return Err(Error::corruption(
                &path,
                24,
                format!(
                    "log starts at sequence {} but the previous log ends at {next_seq}",
                    header.first_seq
                ),
            ));
        }
        let mut failed = None;
        let scan = wal::scan(
            file.as_ref(),
            &path,
            WAL_HEADER_LEN as u64,
            next_seq,
            |record| {
                report.replayed_records += 1;
                for op in record.ops() {
                    let applied = match op {
                        OpRef::Put(key, value) => view.apply(key.into(), Some(value.into())),
                        OpRef::Delete(key) => view.apply(key.into(), None),
                    };
                    if let Err(e) = applied {
                        failed.get_or_insert(e);
                    }
                }
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        next_seq = scan.next_seq;
        // A clean stop must be followed by nothing but the preallocated zeros.
        let damage = match scan.stop {
            Stop::Damaged { offset, reason } => Some((offset, reason)),
            Stop::Clean => wal::first_nonzero(file.as_ref(), &path, scan.end)?
                .map(|_| (scan.end, "non-zero bytes after the end of the log")),
        };
        if let Some((offset, reason)) = damage {
            if i != last {
                return Err(Error::corruption(&path, offset, reason));
            }
            let repair =
                wal::repair_tail(vfs, dir, file.as_ref(), &path, &header, offset, next_seq)?;
            log::info!(
                "{}: cut {} bytes off the log tail at offset {offset} ({reason})",
                path.display(),
                repair.truncated_bytes
            );
            report.truncated_bytes += repair.truncated_bytes;
            report.quarantine_files.extend(repair.quarantined_to);
        }
        if i == last {
            let allocated = file
                .size()
                .map_err(|e| Error::io("read the size of", &path, e))?;
            writer = Some(LogWriter::new(
                path,
                file,
                header.generation,
                scan.end,
                next_seq,
                allocated,
            ));
        }
    }
    let writer = writer.ok_or_else(|| Error::corruption(dir, 0, "no log to append to"))?;
    Ok(Recovered {
        lock,
        writer,
        view,
        report,
    })
}

/// The directory's entries, sorted into kinds.
#[derive(Default)]
struct Listing {
    wals: Vec<u64>,
    snapshots: Vec<u64>,
    temporaries: Vec<String>,
    quarantine: Vec<String>,
    lock: bool,
    foreign: usize,
}

impl Listing {
    fn has_store_files(&self) -> bool {
        self.lock || !self.wals.is_empty() || !self.snapshots.is_empty()
    }
}

fn list_store(vfs: &dyn Vfs, dir: &Path) -> Result<Listing> {
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list the store directory", dir, e))?;
    let mut listing = Listing::default();
    for name in names {
        match classify(&name) {
            StoreFile::Lock => listing.lock = true,
            StoreFile::Wal(g) => listing.wals.push(g),
            StoreFile::Snapshot(g) => listing.snapshots.push(g),
            StoreFile::Temporary => listing
                .temporaries
                .push(name.to_string_lossy().into_owned()),
            StoreFile::Quarantine => listing.quarantine.push(name.to_string_lossy().into_owned()),
            StoreFile::Foreign => listing.foreign += 1,
        }
    }
    listing.wals.sort_unstable();
    listing.snapshots.sort_unstable();
    listing.quarantine.sort_unstable();
    Ok(listing)
}
