//! Salvage on request (`Db::repair`, `kvctl repair`): a store whose log has damaged records that
//! were acknowledged does not open, because serving the records around them would be a state that
//! may never have existed. A repair keeps every record that is intact, skips the damaged ones
//! (naming their sequence numbers and whatever keys still parse in their bytes), keeps each
//! damaged log whole in a quarantine file, and writes the result as a new generation: a snapshot
//! of everything kept and an empty log after it, so that the store opens again.
//!
//! Crash safety is the compaction's: the new log is created first, then the new snapshot
//! (temporary file, sync, rename, directory sync), and only then are the older files removed. A
//! crash before the snapshot is renamed leaves the store as it was (plus an empty newer log that
//! the next repair goes past); after it, the store opens from the new snapshot.

use std::path::Path;
use std::sync::Arc;

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::{LOG_FORMAT_VERSION, OpRef, WAL_HEADER_LEN, WalHeader, keys_in_damaged_record};
use crate::io::{EntryKind, OpenMode, Vfs, write_file_atomically};
use crate::layout::{StoreFile, classify, list_store, quarantine_name, snapshot_name, wal_name};
use crate::locking::{
    APPENDED_SEQ, Access, COMMITTED_SEQ, CompactionLock, DIRECTORY_SYNCED, LOG_GENERATION,
    SNAPSHOT_GENERATION, SYNCED_SEQ, StoreLock,
};
use crate::memtable::Memtable;
use crate::snapshot::Snapshot;
use crate::stats::{LostKeys, LostRecords, RepairReport};
use crate::wal::{self, Stop, repair::look_beyond};

use super::compaction::write_merged;

/// Salvages the store in `dir`, holding it exclusively (every other open fails with
/// `Error::Locked` meanwhile, and the repair fails so if another handle has the store open).
pub(crate) fn repair(vfs: &dyn Vfs, dir: &Path) -> Result<RepairReport> {
    salvage(vfs, dir, true)
}

/// What [`repair`] would keep and lose, writing nothing (`kvctl check` lists every damaged
/// record and block with it). Holds `LOCK` shared, as a read-only open does.
pub(crate) fn inspect(vfs: &dyn Vfs, dir: &Path) -> Result<RepairReport> {
    salvage(vfs, dir, false)
}

fn salvage(vfs: &dyn Vfs, dir: &Path, write: bool) -> Result<RepairReport> {
    if vfs
        .entry_kind(dir)
        .map_err(|e| Error::io("look at", dir, e))?
        != Some(EntryKind::Dir)
    {
        return Err(Error::NotAStore {
            path: dir.to_owned(),
            reason: "no such directory".into(),
        });
    }
    let listing = list_store(vfs, dir)?;
    if listing.wals.is_empty() && listing.snapshots.is_empty() {
        return Err(Error::NotAStore {
            path: dir.to_owned(),
            reason: "it holds no sturdykv log or snapshot".into(),
        });
    }
    let access = if write {
        Access::Exclusive
    } else {
        Access::ReadOnly
    };
    let store_lock = StoreLock::open(vfs, dir, access)?;
    let compaction_lock = CompactionLock::open(vfs, dir, access)?;
    let _no_compaction = compaction_lock.acquire(true)?;
    let guard = if write {
        store_lock.exclusive()?
    } else {
        store_lock.shared()?
    };
    // Listed again under the locks: nothing changes the names while they are held.
    let listing = list_store(vfs, dir)?;

    let mut report = RepairReport::default();
    let mut kept = Memtable::default();
    // The newest snapshot is the base if it is intact. If some of its blocks are damaged, the
    // entries of the others are kept (and the damaged blocks' key ranges named); a snapshot
    // whose header, footer or index is damaged cannot be salvaged.
    let (base, start) = match listing.snapshots.last() {
        Some(&generation) => {
            let path = dir.join(snapshot_name(generation));
            let snapshot = Snapshot::open(vfs, &path)?;
            match snapshot.verify(|_| {}) {
                Ok(()) => (Some(Arc::new(snapshot)), generation),
                Err(Error::Corruption { .. }) => {
                    let salvaged = snapshot.salvage()?;
                    for (key, value) in salvaged.entries {
                        kept.insert(key, Some(value));
                    }
                    if write && !salvaged.lost.is_empty() {
                        copy_to_quarantine(vfs, dir, &path, generation, salvaged.lost[0].offset)
                            .map(|q| report.quarantine_files.push(q))?;
                    }
                    report.lost_keys = salvaged
                        .lost
                        .into_iter()
                        .map(|block| LostKeys {
                            file: path.clone(),
                            offset: block.offset,
                            from: block.first_key,
                            below: block.next_key,
                        })
                        .collect();
                    (None, generation)
                }
                Err(other) => return Err(other),
            }
        }
        None => (None, 0),
    };
    let mut next_seq = None;
    for &generation in listing.wals.iter().filter(|&&g| g >= start) {
        let path = dir.join(wal_name(generation));
        let (file, header) = wal::open(vfs, &path, OpenMode::Read)?;
        let mut seq = header.first_seq;
        if let Some(expected) = next_seq
            && seq > expected
        {
            report.lost.push(LostRecords {
                file: path.clone(),
                offset: 0,
                first_seq: expected,
                last_seq: seq - 1,
                keys: Vec::new(),
            });
        }
        let mut from = WAL_HEADER_LEN as u64;
        let mut quarantined = false;
        loop {
            let scan = wal::scan(
                file.as_ref(),
                &path,
                header.version,
                from,
                seq,
                u64::MAX,
                |record| {
                    report.records_kept += 1;
                    for op in record.ops() {
                        match op {
                            OpRef::Put(key, value) => {
                                let (key, value) = Bytes::pair(key, value);
                                kept.insert(key, Some(value));
                            }
                            OpRef::Delete(key) => {
                                kept.insert(Bytes::from(key), None);
                            }
                        }
                    }
                },
            )?;
            seq = scan.next_seq;
            let damage = match scan.stop {
                Stop::Damaged { offset, .. } => Some(offset),
                Stop::Clean => {
                    wal::first_nonzero(file.as_ref(), &path, scan.end, scan.size)?.map(|_| scan.end)
                }
            };
            let Some(offset) = damage else { break };
            let beyond = look_beyond(file.as_ref(), &path, header.version, offset, seq)?;
            let Some(resume) = beyond.first else {
                // Nothing decodes after it: a torn tail, writes never acknowledged.
                report.torn_tail_bytes += scan.size - offset;
                break;
            };
            if write && !quarantined {
                let kept_in = copy_to_quarantine(vfs, dir, &path, generation, offset)?;
                report.quarantine_files.push(kept_in);
                quarantined = true;
            }
            let mut damaged = vec![0u8; usize::try_from(resume.offset - offset).unwrap_or(0)];
            file.read_exact_at(&mut damaged, offset)
                .map_err(|e| Error::io("read", &path, e))?;
            report.lost.push(LostRecords {
                file: path.clone(),
                offset,
                first_seq: seq,
                last_seq: resume.seq - 1,
                keys: keys_in_damaged_record(&damaged, header.version)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect(),
            });
            from = resume.offset;
            seq = resume.seq;
        }
        next_seq = Some(seq);
    }

    if !write {
        return Ok(report);
    }
    // The new generation: its log first (empty, continuing the sequence), then the snapshot.
    let generation = listing
        .wals
        .iter()
        .chain(&listing.snapshots)
        .max()
        .map_or(0, |g| g + 1);
    let first_seq = next_seq.unwrap_or(1);
    wal::create(
        vfs,
        dir,
        WalHeader {
            version: LOG_FORMAT_VERSION,
            generation,
            first_seq,
        },
    )?;
    let snapshot = write_merged(vfs, dir, &kept, base.as_ref(), generation, || false, |_| {})?
        .ok_or_else(|| Error::corruption(dir, 0, "the salvage was cancelled"))?;
    report.keys = Snapshot::open(vfs, &snapshot)?.len();
    for name in vfs
        .list(dir)
        .map_err(|e| Error::io("list the store directory", dir, e))?
    {
        if let StoreFile::Wal(g) | StoreFile::Snapshot(g) = classify(&name)
            && g < generation
        {
            let path = dir.join(&name);
            vfs.remove_file(&path)
                .map_err(|e| Error::io("remove old file", &path, e))?;
        }
    }
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync the directory", dir, e))?;
    // The files are the truth; the hint page must claim no more than they hold.
    for (word, value) in [
        (COMMITTED_SEQ, first_seq),
        (SYNCED_SEQ, first_seq),
        (APPENDED_SEQ, first_seq),
        (LOG_GENERATION, generation),
        (SNAPSHOT_GENERATION, generation),
        (DIRECTORY_SYNCED, 0),
    ] {
        store_lock.correct_hint(&guard, word, value);
    }
    report.generation = generation;
    report.snapshot = snapshot;
    Ok(report)
}

/// Copies the damaged file at `path` whole to `quarantine-<generation>-<offset>`, durably.
fn copy_to_quarantine(
    vfs: &dyn Vfs,
    dir: &Path,
    path: &Path,
    generation: u64,
    offset: u64,
) -> Result<std::path::PathBuf> {
    let file = vfs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))?;
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", path, e))?;
    let name = quarantine_name(generation, offset);
    write_file_atomically(vfs, dir, &name, &bytes)
        .map_err(|e| Error::io("write quarantine file", dir.join(&name), e))?;
    Ok(dir.join(name))
}
