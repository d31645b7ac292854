//! Opening a store: check that the directory is ours before writing anything, take the lock, then
//! rebuild the in-memory state from the files (the newest manifest's sorted files, then replay of
//! the log segments from its log start) and repair a damaged log tail so that new appends never
//! sit behind garbage. A writable open converts a store of format 1 (no manifest) first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::format::ManifestData;
use crate::format::{LOG_FORMAT_VERSION, OpRef, WAL_HEADER_LEN, WalHeader};
use crate::io::{EntryKind, OpenMode, Vfs};
use crate::layout::{
    COMPACTION_LOCK_NAME, FLUSH_LOCK_NAME, HANDLES_LOCK_NAME, Listing, directory_fingerprint,
    list_store, part_name, run_name, snapshot_name, wal_name,
};
use crate::locking::{
    APPENDED_SEQ, Access, COMMITTED_SEQ, CompactionLock, DIRECTORY_SYNCED, LOG_GENERATION,
    LOG_START, MANIFEST_NUMBER, SYNCED_SEQ, StoreLock,
};
use crate::manifest;
use crate::sorted::SortedFile;
use crate::stats::RecoveryReport;
use crate::view::{ReplayedOps, Tables, View};
use crate::wal::{self, LogWriter, Position, Stop};

use super::tables::{OpenFiles, open_tables};

/// Everything an open handle starts from.
pub struct Recovered {
    pub store_lock: StoreLock,
    pub compaction_lock: CompactionLock,
    pub flush_lock: CompactionLock,
    pub writer: LogWriter,
    pub position: Position,
    pub view: View,
    pub report: RecoveryReport,
}

/// Opens (creating if allowed) the store in `dir`.
pub fn open(
    vfs: &dyn Vfs,
    dir: &Path,
    create_if_missing: bool,
    access: Access,
) -> Result<Recovered> {
    // `LOCK.handles` is created only by an open that passed the checks below, and never removed
    // (unlike `LOCK`, the name is ours alone: LevelDB and RocksDB directories hold a `LOCK`).
    // Where it exists, the directory is a store and the checks, a dozen system calls, are
    // skipped. A newer format is still refused before anything is removed (`remove_garbage`)
    // or written (the load reads the log's header before the hints are corrected).
    if vfs.entry_kind(&dir.join(HANDLES_LOCK_NAME)).ok().flatten() != Some(EntryKind::File) {
        check_before_locking(vfs, dir, create_if_missing, access)?;
    }

    let store_lock = StoreLock::open(vfs, dir, access)?;
    let compaction_lock = CompactionLock::open(vfs, dir, COMPACTION_LOCK_NAME, access)?;
    let flush_lock = CompactionLock::open(vfs, dir, FLUSH_LOCK_NAME, access)?;
    let writable = access != Access::ReadOnly;
    // Recovery holds the lock for its whole run: no writer appends, cuts a generation or removes
    // files meanwhile (a read-only open only waits for writers to finish).
    let guard = if writable {
        store_lock.exclusive()?
    } else {
        store_lock.shared()?
    };

    let mut report = RecoveryReport::default();
    // Taken under the lock, a listing stays true while the lock is held: logs and snapshots are
    // created and removed only under it. One listing serves the clean-up and the load.
    let mut listing = None;
    if writable {
        // With no flush or compaction running, nothing unfinished can be in progress:
        // leftovers are garbage. (A running one cleans up after itself.)
        let compacting = compaction_lock.acquire(false)?;
        let flushing = flush_lock.acquire(false)?;
        let now = match (compacting, flushing) {
            (Some(_compacting), Some(_flushing)) => {
                let (removed, left) = remove_garbage(vfs, dir)?;
                report.removed_temporaries = removed;
                left
            }
            _ => list_store(vfs, dir)?,
        };
        if now.wals.is_empty() && now.snapshots.is_empty() && !now.has_manifest() {
            // A new store: its first log segment, then the manifest that names it.
            let header = WalHeader {
                version: LOG_FORMAT_VERSION,
                generation: 0,
                first_seq: 1,
            };
            wal::create(vfs, dir, header)?;
            manifest::install(
                vfs,
                dir,
                &ManifestData {
                    number: 1,
                    ..ManifestData::default()
                },
            )?;
        } else {
            listing = Some(now);
        }
    }

    if !writable {
        let now = list_store(vfs, dir)?;
        if now.wals.is_empty() && now.snapshots.is_empty() && !now.has_manifest() {
            // A power cut while the store was being created, before its first log was durable:
            // only a writable open can finish creating it.
            return Err(Error::NotAStore {
                path: dir.to_owned(),
                reason: "its creation did not finish (it has no log yet); open it once without \
                         read_only to finish it"
                    .into(),
            });
        }
        listing = Some(now);
    }

    let durable = AlreadyDurable {
        synced_seq: store_lock.hint(SYNCED_SEQ),
        directory: store_lock.hint(DIRECTORY_SYNCED),
    };
    let mut loaded = load(
        vfs,
        dir,
        u64::MAX,
        writable,
        Some(durable),
        listing,
        &OpenFiles::new(),
    )?;
    report.replayed_records = loaded.replayed_records;
    report.quarantine_files = loaded.quarantine_files.clone();
    report.log_format_version = loaded.position.version;
    let last = loaded.position.clone();
    let mut allocated = Some(loaded.log_size);
    if let Some((offset, reason)) = loaded.damage {
        if writable {
            let header = WalHeader {
                version: last.version,
                generation: last.generation,
                first_seq: loaded.first_seq_of_last,
            };
            let repair = wal::repair_tail(
                vfs,
                dir,
                last.file.as_ref(),
                &last.path,
                &header,
                wal::Damage {
                    offset,
                    seq: last.next_seq,
                    reason,
                },
            )?;
            log::info!(
                "{}: cut {} bytes off the log tail at offset {offset} ({reason})",
                last.path.display(),
                repair.truncated_bytes
            );
            report.truncated_bytes += repair.truncated_bytes;
            allocated = None; // the repair changed the file's size
            report.quarantine_files.extend(repair.quarantined_to);
        } else {
            // A read-only open reads up to a torn tail, but damage to acknowledged records is an
            // error for it too.
            wal::examine(
                last.file.as_ref(),
                &last.path,
                last.version,
                wal::Damage {
                    offset,
                    seq: last.next_seq,
                    reason,
                },
            )?;
            log::warn!(
                "{}: the log has a torn tail at offset {offset} ({reason}); opened read-only up to \
                 there",
                last.path.display()
            );
        }
    }
    let allocated = match allocated {
        Some(size) => size,
        None => last
            .file
            .size()
            .map_err(|e| Error::io("read the size of", &last.path, e))?,
    };
    let mut writer = LogWriter::new(
        last.path.clone(),
        Arc::clone(&last.file),
        last.version,
        last.generation,
        last.offset,
        last.next_seq,
        allocated,
    );
    let mut position = last;
    let mut view = std::mem::take(&mut loaded.view);
    if writable && view.tables.manifest.number == 0 {
        // A store of format 1 (or one whose creation or conversion a crash interrupted).
        let converted = convert(vfs, dir, &position, &view)?;
        report.converted_from_format_1 = true;
        writer = LogWriter::new(
            converted.position.path.clone(),
            Arc::clone(&converted.position.file),
            converted.position.version,
            converted.position.generation,
            converted.position.offset,
            converted.position.next_seq,
            WAL_HEADER_LEN as u64,
        );
        position = converted.position;
        view.tables = Arc::new(converted.tables);
        loaded.directory = 0;
    }
    if writable {
        // Everything read was synced first.
        // The appended word first: readers take committed or synced words above it for damage.
        store_lock.correct_hint(&guard, LOG_GENERATION, position.generation);
        store_lock.correct_hint(&guard, APPENDED_SEQ, position.next_seq);
        store_lock.correct_hint(&guard, COMMITTED_SEQ, position.next_seq);
        store_lock.correct_hint(&guard, SYNCED_SEQ, position.next_seq);
        store_lock.correct_hint(&guard, DIRECTORY_SYNCED, loaded.directory);
        // Raised, never lowered: a flush or compaction elsewhere may have installed a newer
        // manifest since this open listed the directory.
        store_lock.raise_hint(MANIFEST_NUMBER, view.tables.manifest.number);
        store_lock.raise_hint(LOG_START, view.tables.manifest.log_start);
    }
    drop(guard);
    Ok(Recovered {
        store_lock,
        compaction_lock,
        flush_lock,
        writer,
        position,
        view,
        report,
    })
}

/// What a conversion leaves: the live segment it started, and the tables of its manifest.
struct Converted {
    position: Position,
    tables: Tables,
}

/// Converts a store of format 1 to format 2, holding `LOCK` (and with the log's tail repaired):
/// 1. start a new log segment of the current log version after the last one (durably), so that
///    older builds, which refuse that version, can no longer open the store;
/// 2. rename the snapshot `snap-<g>`, if there is one, to the partition `part-<g>` (the sorted
///    format is the same; version 1 files hold no tombstones), and sync the directory;
/// 3. install `MANIFEST-1`: that partition, replay from `wal-<g>`.
///
/// A crash at any step leaves a store that loads as before (a store with no manifest is read as
/// format 1, a lone `part-<g>` taken as its snapshot) and is converted again at the next writable
/// open.
fn convert(vfs: &dyn Vfs, dir: &Path, last: &Position, view: &View) -> Result<Converted> {
    last.file
        .sync_data()
        .map_err(|e| Error::io("sync", &last.path, e))?;
    let header = WalHeader {
        version: LOG_FORMAT_VERSION,
        generation: last.generation + 1,
        first_seq: last.next_seq,
    };
    let path = wal::create(vfs, dir, header)?;
    let file = vfs
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open", &path, e))?;
    let base = view.tables.parts.first();
    let mut open = OpenFiles::new();
    let parts = match base {
        Some(base) => {
            let id = base.generation();
            let from = dir.join(snapshot_name(id));
            let to = dir.join(part_name(id));
            if base.path() == from {
                vfs.rename(&from, &to)
                    .map_err(|e| Error::io("rename into place", &from, e))?;
                vfs.sync_dir(dir)
                    .map_err(|e| Error::io("sync the directory", dir, e))?;
            }
            open.insert((false, id), Arc::clone(base));
            vec![id]
        }
        None => Vec::new(),
    };
    let data = ManifestData {
        number: 1,
        log_start: view.tables.manifest.log_start,
        live_keys: view.tables.manifest.live_keys,
        next_part_id: parts.first().map_or(0, |id| id + 1),
        runs: Vec::new(),
        parts,
    };
    manifest::install(vfs, dir, &data)?;
    log::info!(
        "{}: converted the store to format 2 (a manifest, runs and partitions)",
        dir.display()
    );
    // The base keeps its open file: a version 1 file, taken as a partition.
    let tables = Tables::new(data, Vec::new(), open.into_values().collect())?;
    Ok(Converted {
        position: Position::start_of(&header, path, file),
        tables,
    })
}

/// The checks an open makes before it creates or locks anything in `dir`: it is a directory (or
/// is created, if allowed), holds a store or nothing, and its newest log is not of a newer format.
fn check_before_locking(
    vfs: &dyn Vfs,
    dir: &Path,
    create_if_missing: bool,
    access: Access,
) -> Result<()> {
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
        None if create_if_missing && access != Access::ReadOnly => {
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
    if access == Access::ReadOnly && !listing.has_store_files() {
        return Err(Error::NotAStore {
            path: dir.to_owned(),
            reason: "it holds no sturdykv files (a read-only open does not create a store)".into(),
        });
    }
    // Any damage the open finds later must be in the files themselves: refuse a newer format
    // before taking locks or writing anything.
    if let Some(&generation) = listing.wals.last() {
        wal::open(vfs, &dir.join(wal_name(generation)), OpenMode::Read)?;
    }
    Ok(())
}

/// Removes unfinished temporaries and every file the newest manifest does not name (a crash
/// during a flush, a compaction or their clean-up leaves some); in a store of format 1, the files
/// of generations older than the newest snapshot. Only with the flush and compaction locks held,
/// and `LOCK`. Returns how many it removed, and the store's files that are left.
fn remove_garbage(vfs: &dyn Vfs, dir: &Path) -> Result<(u64, Listing)> {
    let mut listing = list_store(vfs, dir)?;
    if let Some(&generation) = listing.wals.last() {
        // Not the files of a newer sturdykv, whose names may mean something else.
        wal::open(vfs, &dir.join(wal_name(generation)), OpenMode::Read)?;
    }
    let mut garbage: Vec<String> = listing.temporaries.clone();
    match manifest::read_newest(vfs, dir, &listing)? {
        Some(live) => {
            garbage.extend(
                listing
                    .wals
                    .iter()
                    .filter(|&&g| g < live.log_start)
                    .map(|&g| wal_name(g)),
            );
            garbage.extend(listing.snapshots.iter().map(|&g| snapshot_name(g)));
            garbage.extend(
                listing
                    .runs
                    .iter()
                    .filter(|id| !live.runs.contains(id))
                    .map(|&id| run_name(id)),
            );
            garbage.extend(
                listing
                    .parts
                    .iter()
                    .filter(|id| !live.parts.contains(id))
                    .map(|&id| part_name(id)),
            );
            garbage.extend(
                listing
                    .manifests
                    .iter()
                    .filter(|&&n| n < live.number)
                    .map(|&n| crate::layout::manifest_name(n)),
            );
            listing.wals.retain(|&g| g >= live.log_start);
            listing.snapshots.clear();
            listing.runs.retain(|id| live.runs.contains(id));
            listing.parts.retain(|id| live.parts.contains(id));
            listing.manifests.retain(|&n| n == live.number);
        }
        None => {
            let start = listing.snapshots.last().copied().unwrap_or(0);
            garbage.extend(
                listing
                    .wals
                    .iter()
                    .filter(|&&g| g < start)
                    .map(|&g| wal_name(g)),
            );
            garbage.extend(
                listing
                    .snapshots
                    .iter()
                    .filter(|&&g| g < start)
                    .map(|&g| snapshot_name(g)),
            );
            listing.wals.retain(|&g| g >= start);
            listing.snapshots.retain(|&g| g >= start);
        }
    }
    for name in &garbage {
        vfs.remove_file(&dir.join(name))
            .map_err(|e| Error::io("remove leftover file", dir.join(name), e))?;
    }
    if !garbage.is_empty() {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("sync the directory", dir, e))?;
    }
    listing.temporaries.clear();
    Ok((garbage.len() as u64, listing))
}

/// A store's state as read from its files.
pub struct Loaded {
    pub view: View,
    /// Just past the last record read, in the newest log.
    pub position: Position,
    /// The first sequence number of the newest log.
    pub first_seq_of_last: u64,
    /// Where reading the newest log stopped early, if it did (a torn or damaged tail).
    pub damage: Option<(u64, &'static str)>,
    /// The newest log's size in bytes, preallocated zeros included, as it was read.
    pub log_size: u64,
    pub replayed_records: u64,
    pub quarantine_files: Vec<PathBuf>,
    /// The fingerprint of the store's file names as read (see [`directory_fingerprint`]).
    pub directory: u64,
}

/// What the hint page says is already durable, so that recovery need not sync it again.
#[derive(Clone, Copy, Debug)]
pub struct AlreadyDurable {
    /// Every record below this sequence number was covered by an `fdatasync`.
    pub synced_seq: u64,
    /// The store's file names when the directory was last `fsync`ed at an open.
    pub directory: u64,
}

/// How many times [`load`] starts over when a compaction removes files under it.
const LOAD_ATTEMPTS: usize = 100;

/// Reads the store: the newest snapshot, then every later log, up to (not including) sequence
/// number `upto`. With `sync_first`, makes the directory and the logs durable before reading
/// them. Starts over if a compaction in another process removes a file it was about to open.
/// `listing`, if the caller has one taken under `LOCK` (still held), saves listing again.
pub fn load(
    vfs: &dyn Vfs,
    dir: &Path,
    upto: u64,
    writable: bool,
    sync_first: Option<AlreadyDurable>,
    mut listing: Option<Listing>,
    open: &OpenFiles,
) -> Result<Loaded> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listing = match listing.take() {
            Some(listing) => listing,
            None => list_store(vfs, dir)?,
        };
        match load_once(vfs, dir, upto, writable, sync_first, listing, open) {
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempt < LOAD_ATTEMPTS => {}
            other => return other,
        }
    }
}

fn load_once(
    vfs: &dyn Vfs,
    dir: &Path,
    upto: u64,
    writable: bool,
    sync_first: Option<AlreadyDurable>,
    listing: Listing,
    open: &OpenFiles,
) -> Result<Loaded> {
    // The newest manifest's files are the base; a damaged one is an error, never silently
    // skipped (the logs they replaced may already be gone).
    let tables = match manifest::read_newest(vfs, dir, &listing)? {
        Some(live) => open_tables(vfs, dir, live, open)?,
        None => legacy_tables(vfs, dir, &listing)?,
    };
    let start = tables.manifest.log_start;
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
    if replay.is_empty() {
        return Err(Error::corruption(
            dir.join(wal_name(start)),
            0,
            "this log is missing: the sorted files must be followed by the log the manifest \
             replays from",
        ));
    }
    let mut logs = Vec::new();
    for (i, &generation) in replay.iter().enumerate() {
        let path = dir.join(wal_name(generation));
        let mode = if writable && i == replay.len() - 1 {
            OpenMode::ReadWrite
        } else {
            OpenMode::Read
        };
        let (file, header) = wal::open(vfs, &path, mode)?;
        if header.generation != generation {
            return Err(Error::corruption(
                &path,
                16,
                format!("header says generation {}", header.generation),
            ));
        }
        logs.push((path, file, header));
    }

    // What we read may be only in the page cache: a process that died after a failed
    // fdatasync can leave unsynced records behind, or one that died in a compaction an unsynced
    // file name. With `sync_first`, the directory and the logs are made durable before what was
    // read is returned, so that nobody is shown a write a power cut could still take away —
    // unless the hint page says they already are (DECISIONS 30).
    let directory = directory_fingerprint(&listing);
    if let Some(durable) = sync_first
        && durable.directory != directory
    {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("sync the directory", dir, e))?;
    }
    let log_files: Vec<(PathBuf, Arc<dyn crate::io::VfsFile>)> = logs
        .iter()
        .map(|(path, file, _)| (path.clone(), Arc::clone(file)))
        .collect();

    let mut view = View {
        tables: Arc::new(tables),
        ..View::default()
    };
    let mut replayed = ReplayedOps::default();
    let mut replayed_records = 0;
    let mut next_seq = logs[0].2.first_seq;
    let last = logs.len() - 1;
    let mut end = None;
    for (i, (path, file, header)) in logs.into_iter().enumerate() {
        wal::check_continues(&path, &header, next_seq)?;
        let scan = wal::scan(
            file.as_ref(),
            &path,
            header.version,
            WAL_HEADER_LEN as u64,
            next_seq,
            upto,
            |record| {
                replayed_records += 1;
                for op in record.ops() {
                    match op {
                        OpRef::Put(key, value) => {
                            let (key, value) = Bytes::pair(key, value);
                            replayed.push(key, Some(value));
                        }
                        OpRef::Delete(key) => replayed.push(key.into(), None),
                    }
                }
            },
        )?;
        next_seq = scan.next_seq;
        let stopped_early = next_seq >= upto && upto != u64::MAX;
        // A clean stop must be followed by nothing but the preallocated zeros.
        let damage = match scan.stop {
            _ if stopped_early => None,
            Stop::Damaged { offset, reason } => Some((offset, reason)),
            Stop::Clean => wal::first_nonzero(file.as_ref(), &path, scan.end, scan.size)?
                .map(|_| (scan.end, "non-zero bytes after the end of the log")),
        };
        // Reading stops at `upto`, in whichever log holds it: the later ones are not read.
        if i != last && !stopped_early {
            if let Some((offset, reason)) = damage {
                return Err(Error::corruption(&path, offset, reason));
            }
            continue;
        }
        end = Some(Loaded {
            view: View::default(),
            position: Position {
                generation: header.generation,
                version: header.version,
                path,
                file,
                offset: scan.end,
                next_seq,
            },
            first_seq_of_last: header.first_seq,
            damage,
            log_size: scan.size,
            replayed_records: 0,
            quarantine_files: listing.quarantine.iter().map(|n| dir.join(n)).collect(),
            directory: 0,
        });
        if stopped_early {
            break;
        }
    }
    let mut loaded = end.ok_or_else(|| Error::corruption(dir, 0, "no log to read"))?;
    // Only a synced word that names the log's very end is believed: one below it leaves
    // records to sync, one above it claims records the log does not hold (a damaged or foreign
    // page), and says nothing true about those it does.
    if let Some(durable) = sync_first
        && durable.synced_seq != loaded.position.next_seq
    {
        for (path, file) in &log_files {
            file.sync_data()
                .map_err(|e| Error::io("sync", path.as_path(), e))?;
        }
    }
    view.replay(replayed);
    view.next_seq = loaded.position.next_seq;
    loaded.view = view;
    loaded.replayed_records = replayed_records;
    loaded.directory = directory;
    Ok(loaded)
}

/// The tables of a store of format 1 (no manifest): its newest snapshot `snap-<g>` as the one
/// partition, or the `part-<g>` an interrupted conversion renamed it to, replaying from `wal-<g>`
/// (from `wal-0` without either). Read as number 0, which a writable open converts.
fn legacy_tables(vfs: &dyn Vfs, dir: &Path, listing: &Listing) -> Result<Tables> {
    let newest_snapshot = listing.snapshots.last().map(|&g| (g, snapshot_name(g)));
    let renamed = listing.parts.last().map(|&g| (g, part_name(g)));
    let base = match (newest_snapshot, renamed) {
        (Some(s), Some(p)) if p.0 > s.0 => Some(p),
        (Some(s), _) => Some(s),
        (None, p) => p,
    };
    let Some((generation, name)) = base else {
        return Tables::new(ManifestData::default(), Vec::new(), Vec::new());
    };
    let path = dir.join(name);
    let snapshot = SortedFile::open(vfs, &path)?;
    if snapshot.generation() != generation {
        return Err(Error::corruption(
            &path,
            16,
            format!("header says generation {}", snapshot.generation()),
        ));
    }
    let data = ManifestData {
        number: 0,
        log_start: generation,
        live_keys: snapshot.len(),
        next_part_id: generation + 1,
        runs: Vec::new(),
        parts: vec![generation],
    };
    Tables::new(data, Vec::new(), vec![Arc::new(snapshot)])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use crate::format::{LOG_FORMAT_V2, OpRef, WalHeader, encode_record};
    use crate::io::{OpenMode, StdVfs, Vfs};
    use crate::layout::{snapshot_name, wal_name};
    use crate::sorted::SortedWriter;
    use crate::sync::lock;
    use crate::testing::campaign::dump;
    use crate::testing::faulty::FaultyVfs;
    use crate::testing::sim::SimVfs;
    use crate::{Db, Options};

    /// A store of format 1, as the previous build left it: `snap-2` (keys `k000`..`k099` =
    /// `old-<i>`), a stale `wal-1`, and `wal-2` (version 2 records: `k050` = `new`, `k010`
    /// deleted, `k100` = `added`). Returns what it holds.
    fn format_1_store(vfs: &dyn Vfs, dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut expected = BTreeMap::new();
        vfs.create_dir_all(dir).expect("mkdir");
        let mut snap = SortedWriter::create(vfs, dir, snapshot_name(2), 2, 100)
            .expect("create")
            .into_version_1();
        for i in 0..100u32 {
            let (k, v) = (format!("k{i:03}"), format!("old-{i}"));
            snap.add(k.as_bytes(), Some(v.as_bytes())).expect("add");
            expected.insert(k.into_bytes(), v.into_bytes());
        }
        snap.finish().expect("finish");
        let header = |generation| WalHeader {
            version: LOG_FORMAT_V2,
            generation,
            first_seq: 7,
        };
        let write = |name: String, bytes: &[u8]| {
            let file = vfs
                .open(&dir.join(name), OpenMode::CreateNew)
                .expect("create");
            file.write_all_at(bytes, 0).expect("write");
            file.sync_data().expect("sync");
        };
        write(wal_name(1), &header(1).encode());
        let mut log = header(2).encode().to_vec();
        let records: [&[OpRef]; 3] = [
            &[OpRef::Put(b"k050", b"new")],
            &[OpRef::Delete(b"k010")],
            &[OpRef::Put(b"k100", b"added")],
        ];
        for (i, ops) in records.iter().enumerate() {
            let len = ops.iter().map(OpRef::encoded_len).sum();
            let seq = 7 + i as u64;
            encode_record(&mut log, LOG_FORMAT_V2, seq, seq, ops.iter().copied(), len);
        }
        write(wal_name(2), &log);
        vfs.sync_dir(dir).expect("sync the directory");
        expected.insert(b"k050".to_vec(), b"new".to_vec());
        expected.remove(&b"k010"[..]);
        expected.insert(b"k100".to_vec(), b"added".to_vec());
        expected
    }

    use crate::testing::file_names as names;

    /// A writable open converts a store of format 1: a new segment, the snapshot renamed to a
    /// partition, the first manifest. A crash (the disk freezes) after any file operation of the
    /// open leaves a store that opens with everything, and converts at the next open.
    #[test]
    fn a_crash_at_every_step_of_the_conversion_loses_nothing() {
        let mut steps = 0;
        for crash_at in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let expected = format_1_store(&StdVfs, dir.path());
            let vfs = FaultyVfs::default();
            let faults = Arc::clone(&vfs.faults);
            lock(&faults).freeze_after = Some(crash_at);
            let opened = Options::new()
                .background_compaction(false)
                .vfs(Arc::new(vfs))
                .open(dir.path());
            let journal = std::mem::take(&mut lock(&faults).journal);
            let finished = opened.is_ok();
            drop(opened);

            let db = Options::new()
                .background_compaction(false)
                .open(dir.path())
                .unwrap_or_else(|e| panic!("crash after {journal:?}: {e}"));
            assert_eq!(dump(&db), expected, "crash after {journal:?}");
            assert_eq!(db.len().expect("len"), expected.len() as u64);
            db.put("k200", "after").expect("put");
            drop(db);
            let listed = names(dir.path());
            assert!(
                listed.contains(&"MANIFEST-0000000000000001".to_string())
                    && listed.contains(&"part-0000000000000002".to_string())
                    && !listed.iter().any(|n| n.starts_with("snap-")),
                "crash after {journal:?}: not converted: {listed:?}"
            );
            let db = Db::open(dir.path()).expect("reopen");
            let mut with = expected.clone();
            with.insert(b"k200".to_vec(), b"after".to_vec());
            assert_eq!(dump(&db), with);
            db.compact().expect("compact");
            assert_eq!(dump(&db), with);
            drop(db);
            if finished && journal.len() < crash_at {
                break;
            }
            steps += 1;
        }
        // The new segment's write, sync, rename, directory sync; the rename of the snapshot and
        // the directory sync; the manifest's removal of a leftover, write, sync, rename and
        // directory sync.
        assert!(steps >= 10, "only {steps} crash points were exercised");
    }

    /// The same on the simulated disk, where a power cut loses what was not synced: at every
    /// operation of the conversion, and with every subset of the operations not yet synced kept.
    #[test]
    fn a_power_cut_at_every_step_of_the_conversion_loses_nothing() {
        let store = Path::new("/store");
        let built = SimVfs::new();
        let expected = format_1_store(&built, store);
        let base = built.crash_keeping(0);
        let open = |vfs: &SimVfs| {
            Options::new()
                .background_compaction(false)
                .vfs(Arc::new(vfs.clone()))
                .open(store)
        };
        let dry = base.crash_keeping(0);
        let start = dry.ops();
        drop(open(&dry).expect("the conversion"));
        let total = dry.ops() - start;
        let mut images = 0;
        for cut in 0..=total {
            let vfs = base.crash_keeping(0);
            vfs.freeze_after(vfs.ops() + cut);
            drop(open(&vfs));
            let pending = vfs.pending();
            let masks = if pending <= 10 { 1u64 << pending } else { 1024 };
            for mask in 0..masks {
                let image = vfs.crash_keeping(mask);
                let what = format!("power cut at operation {cut} of {total}, kept-mask {mask:#b}");
                let listed: Vec<String> = image
                    .files()
                    .into_iter()
                    .map(|(p, n)| format!("{} {n}", p.display()))
                    .collect();
                let db = open(&image).unwrap_or_else(|e| panic!("{what}: {e} {listed:?}"));
                assert_eq!(dump(&db), expected, "{what}");
                drop(db);
                let db = open(&image).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                assert_eq!(dump(&db), expected, "{what}: reopen");
                images += 1;
            }
        }
        assert!(
            total >= 8 && images > total,
            "{total} operations, {images} images"
        );
    }
}
