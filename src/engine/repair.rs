//! Salvage on request (`Db::repair`, `kvctl repair`): a store whose log has damaged records that
//! were acknowledged does not open, because serving the records around them would be a state that
//! may never have existed. A repair keeps every record that is intact, skips the damaged ones
//! (naming their sequence numbers and whatever keys still parse in their bytes), keeps each
//! damaged file whole in a quarantine file, and writes the result as new partitions of everything
//! kept, an empty log segment after them and a manifest naming both, so that the store opens
//! again. (It holds what it keeps in memory: a repair needs memory for the whole store.)
//!
//! Crash safety is a compaction's: the new log segment is created first, then the partitions
//! (temporary file, sync, rename, directory sync each), then the manifest, and only then are the
//! older files removed. A crash before the manifest is renamed leaves the store as it was (plus
//! files no manifest names, which the next open removes); after it, the store opens from the new
//! partitions.

use std::path::Path;
use std::sync::Arc;

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::ManifestData;
use crate::format::{LOG_FORMAT_VERSION, OpRef, WAL_HEADER_LEN, WalHeader, keys_in_damaged_record};
use crate::io::{EntryKind, OpenMode, Vfs, write_file_atomically};
use crate::layout::{
    COMPACTION_LOCK_NAME, FLUSH_LOCK_NAME, StoreFile, classify, list_store, part_name,
    quarantine_name, run_name, snapshot_name, wal_name,
};
use crate::locking::{
    APPENDED_SEQ, Access, COMMITTED_SEQ, CompactionLock, DIRECTORY_SYNCED, LOG_GENERATION,
    LOG_START, MANIFEST_NUMBER, SYNCED_SEQ, StoreLock,
};
use crate::memtable::Memtable;
use crate::sorted::{SortedFile, SortedWriter};
use crate::stats::{LostKeys, LostRecords, RepairReport};
use crate::wal::{self, Stop, repair::look_beyond};

use std::ops::Bound;

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
    if listing.wals.is_empty() && listing.snapshots.is_empty() && !listing.has_manifest() {
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
    let compaction_lock = CompactionLock::open(vfs, dir, COMPACTION_LOCK_NAME, access)?;
    let _no_compaction = compaction_lock.acquire(true)?;
    let flush_lock = CompactionLock::open(vfs, dir, FLUSH_LOCK_NAME, access)?;
    let _no_flush = flush_lock.acquire(true)?;
    let guard = if write {
        store_lock.exclusive()?
    } else {
        store_lock.shared()?
    };
    // Listed again under the locks: nothing changes the names while they are held.
    let listing = list_store(vfs, dir)?;

    let mut report = RepairReport::default();
    let mut kept = Memtable::default();
    // The sorted files, oldest layer first (the partitions, then the runs from oldest to
    // newest), each loaded into `kept` over the ones before. An intact file is read whole; of a
    // damaged one, the intact blocks are kept and each damaged block's key range named. A file
    // whose header, footer or index is damaged cannot be salvaged.
    let (files, start) = match crate::manifest::read_newest(vfs, dir, &listing)? {
        Some(live) => {
            let parts = live.parts.iter().map(|&id| part_name(id));
            let runs = live.runs.iter().rev().map(|&id| run_name(id));
            (parts.chain(runs).collect::<Vec<_>>(), live.log_start)
        }
        None => match listing.snapshots.last() {
            Some(&generation) => (vec![snapshot_name(generation)], generation),
            None => (Vec::new(), 0),
        },
    };
    for name in files {
        let path = dir.join(&name);
        let file = Arc::new(SortedFile::open(vfs, &path)?);
        match file.verify(|_| {}) {
            Ok(()) => {
                let mut stream = file.stream();
                while let Some((key, value)) = stream.next_entry()? {
                    kept.insert(Bytes::from(key), value.map(Bytes::from));
                }
            }
            Err(Error::Corruption { .. }) => {
                let salvaged = file.salvage()?;
                for (key, value) in salvaged.entries {
                    kept.insert(key, value);
                }
                if write && !salvaged.lost.is_empty() {
                    copy_to_quarantine(vfs, dir, &path, file.generation(), salvaged.lost[0].offset)
                        .map(|q| report.quarantine_files.push(q))?;
                }
                report
                    .lost_keys
                    .extend(salvaged.lost.into_iter().map(|block| LostKeys {
                        file: path.clone(),
                        offset: block.offset,
                        from: block.first_key,
                        below: block.next_key,
                    }));
            }
            Err(other) => return Err(other),
        }
    }
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
    // The new state: its log segment first (empty, continuing the sequence), then the
    // partitions, then the manifest that names them; only then are the older files removed.
    let generation = listing
        .wals
        .iter()
        .chain(&listing.snapshots)
        .chain(&listing.runs)
        .chain(&listing.parts)
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
    let mut parts = Vec::new();
    let mut out: Option<SortedWriter> = None;
    let mut next_id = generation;
    for (key, value) in kept.range(Bound::Unbounded, Bound::Unbounded) {
        let Some(value) = value else { continue };
        if out
            .as_ref()
            .is_some_and(|w| w.bytes_written() >= crate::options::DEFAULT_PARTITION_BYTES)
            && let Some(full) = out.take()
        {
            full.finish()?;
        }
        if out.is_none() {
            parts.push(next_id);
            out = Some(SortedWriter::create(
                vfs,
                dir,
                part_name(next_id),
                next_id,
                kept.len() as u64,
            )?);
            next_id += 1;
        }
        if let Some(w) = out.as_mut() {
            w.add(&key, Some(&value))?;
            report.keys += 1;
        }
    }
    if let Some(last) = out.take() {
        last.finish()?;
    }
    let number = listing.manifests.last().map_or(1, |n| n + 1);
    let installed = ManifestData {
        number,
        log_start: generation,
        live_keys: report.keys,
        next_part_id: next_id,
        runs: Vec::new(),
        parts,
    };
    crate::manifest::install(vfs, dir, &installed)?;
    for name in vfs
        .list(dir)
        .map_err(|e| Error::io("list the store directory", dir, e))?
    {
        let old = match classify(&name) {
            StoreFile::Wal(g) => g < generation,
            StoreFile::Snapshot(_) | StoreFile::Run(_) => true,
            StoreFile::Part(id) => !installed.parts.contains(&id),
            StoreFile::Manifest(n) => n < number,
            _ => false,
        };
        if old {
            let path = dir.join(&name);
            vfs.remove_file(&path)
                .map_err(|e| Error::io("remove old file", &path, e))?;
        }
    }
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync the directory", dir, e))?;
    // The files are the truth; the hint page must claim no more than they hold.
    for (word, value) in [
        (LOG_GENERATION, generation),
        (APPENDED_SEQ, first_seq),
        (COMMITTED_SEQ, first_seq),
        (SYNCED_SEQ, first_seq),
        (MANIFEST_NUMBER, number),
        (LOG_START, generation),
        (DIRECTORY_SYNCED, 0),
    ] {
        store_lock.correct_hint(&guard, word, value);
    }
    report.generation = generation;
    report.manifest = dir.join(crate::layout::manifest_name(number));
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
