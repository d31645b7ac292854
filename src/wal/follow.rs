//! Following the log as other handles append to it:
//! - for readers, where a view has applied the log up to ([`Position`]) and reading the committed
//!   records after that point, from one log into the next ([`read_until`]);
//! - for a writer, holding `LOCK`, the true end of the log past whatever other processes appended
//!   or a killed one left half-written ([`follow_to_end`]).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{Record, WAL_HEADER_LEN, WalHeader};
use crate::io::{OpenMode, Vfs, VfsFile};
use crate::layout::{StoreFile, classify, wal_name};
use crate::locking::{LOG_START, StoreLock};
use crate::poison::Poison;

use super::{Damage, LogWriter, Stop, open, read_header, repair_tail, scan};

/// How far a view has applied the log.
#[derive(Clone, Debug)]
pub struct Position {
    /// The generation of the log being read.
    pub generation: u64,
    /// Its log format.
    pub version: u32,
    /// Its path.
    pub path: PathBuf,
    /// The open log (still readable after a compaction unlinks it).
    pub file: Arc<dyn VfsFile>,
    /// Offset just past the last record applied.
    pub offset: u64,
    /// The sequence number of the next record to apply.
    pub next_seq: u64,
}

impl Position {
    /// The start of the log whose header is `header`.
    pub fn start_of(header: &WalHeader, path: PathBuf, file: Arc<dyn VfsFile>) -> Self {
        Position {
            generation: header.generation,
            version: header.version,
            path,
            file,
            offset: WAL_HEADER_LEN as u64,
            next_seq: header.first_seq,
        }
    }
}

/// How reading ahead ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// Every record before the target was read.
    Reached,
    /// A log the position needs next is gone (a compaction removed it): the view must be rebuilt
    /// from the newest snapshot.
    Gone,
}

/// Reads the records from `position` up to (not including) sequence number `target`, handing
/// each to `apply`, and moves `position` past them, into later logs as needed. Every record
/// before `target` must be committed (complete and durable); a damaged one is corruption.
pub fn read_until(
    vfs: &dyn Vfs,
    dir: &Path,
    position: &mut Position,
    target: u64,
    apply: impl FnMut(&Record<'_>),
) -> Result<Followed> {
    read_ahead(vfs, dir, position, target, apply)
}

/// Holding `LOCK` (shared: no append is under way), reads every record from `position` to the
/// end of the log, handing each to `apply`, as [`read_until`] does: for a reader that does not
/// know where the log ends. A torn tail ends it (a killed writer's; the next writer cuts it).
pub fn read_to_end(
    vfs: &dyn Vfs,
    dir: &Path,
    position: &mut Position,
    apply: impl FnMut(&Record<'_>),
) -> Result<Followed> {
    read_ahead(vfs, dir, position, u64::MAX, apply)
}

fn read_ahead(
    vfs: &dyn Vfs,
    dir: &Path,
    position: &mut Position,
    target: u64,
    mut apply: impl FnMut(&Record<'_>),
) -> Result<Followed> {
    let to_end = target == u64::MAX;
    while position.next_seq < target {
        let scan = scan(
            position.file.as_ref(),
            &position.path,
            position.version,
            position.offset,
            position.next_seq,
            target,
            &mut apply,
        )?;
        position.offset = scan.end;
        position.next_seq = scan.next_seq;
        if position.next_seq >= target {
            break;
        }
        if let Stop::Damaged { offset, reason } = scan.stop {
            let newer = dir.join(wal_name(position.generation + 1));
            if to_end && vfs.entry_kind(&newer).ok().flatten().is_none() {
                return Ok(Followed::Reached);
            }
            return Err(Error::corruption(&position.path, offset, reason));
        }
        // The log ends cleanly before the target: the rest was written to the next one.
        let generation = position.generation + 1;
        let path = dir.join(wal_name(generation));
        let (file, header) = match open(vfs, &path, OpenMode::Read) {
            Ok(opened) => opened,
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                let live = !position
                    .file
                    .is_unlinked()
                    .map_err(|e| Error::io("look up", &position.path, e))?;
                return Ok(if to_end && live {
                    Followed::Reached
                } else {
                    Followed::Gone
                });
            }
            Err(e) => return Err(e),
        };
        if header.generation != generation || header.first_seq != position.next_seq {
            return Err(Error::corruption(
                &path,
                16,
                format!(
                    "log header says generation {} from sequence {}, expected generation \
                     {generation} from sequence {}",
                    header.generation, header.first_seq, position.next_seq
                ),
            ));
        }
        *position = Position::start_of(&header, path, file);
    }
    Ok(Followed::Reached)
}

/// Holding `LOCK`: brings `writer` to the true end of the log, past whatever other processes
/// appended, into a newer generation if one was cut, and cuts off a torn record a killed process
/// left, so that nothing is appended behind garbage. Returns how many torn records it cut off.
/// A failure to make a log's name durable poisons the handle (see [`make_name_durable`]).
pub fn follow_to_end(
    vfs: &dyn Vfs,
    dir: &Path,
    writer: &mut LogWriter,
    store_lock: &StoreLock,
    poison: &Poison,
) -> Result<u64> {
    let mut repaired = 0;
    loop {
        if appended_since(writer)? {
            let scan = scan(
                writer.file(),
                writer.path(),
                writer.version(),
                writer.end(),
                writer.next_seq(),
                u64::MAX,
                |_| {},
            )?;
            // The file's size, as the scan read it, unless a repair changes it.
            let mut allocated = scan.size;
            if let Stop::Damaged { offset, reason } = scan.stop {
                let header = read_header(writer.file(), writer.path())?;
                let repair = repair_tail(
                    vfs,
                    dir,
                    writer.file(),
                    writer.path(),
                    &header,
                    Damage {
                        offset,
                        seq: scan.next_seq,
                        reason,
                    },
                )?;
                repaired += 1;
                log::warn!(
                    "{}: cut off {} bytes at offset {offset} ({reason}), left by a writer \
                     that died in the middle of an append",
                    writer.path().display(),
                    repair.truncated_bytes
                );
                allocated = writer
                    .file()
                    .size()
                    .map_err(|e| Error::io("read the size of", writer.path(), e))?;
            }
            writer.moved_to(scan.end, scan.next_seq, allocated);
        }

        let generation = writer.generation() + 1;
        let path = dir.join(wal_name(generation));
        let (file, header) = match open(vfs, &path, OpenMode::ReadWrite) {
            Ok(opened) => opened,
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                // A segment is removed only after a manifest that starts replay later is installed,
                // which the hint announces first: without one, ours is still the newest.
                let removable = store_lock.hint(LOG_START) > writer.generation();
                let unlinked = removable
                    && writer
                        .file()
                        .is_unlinked()
                        .map_err(|e| Error::io("look at", writer.path(), e))?;
                if !unlinked {
                    return Ok(repaired); // this is the newest log
                }
                // Compactions elsewhere went past the next log too and removed it: every
                // record before the newest log is in a snapshot, so go straight there.
                *writer = open_newest_log(vfs, dir)?;
                make_name_durable(vfs, dir, writer.path(), poison)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if header.generation != generation || header.first_seq != writer.next_seq() {
            return Err(Error::corruption(
                &path,
                16,
                format!(
                    "log header says generation {} from sequence {}, but {} ends at \
                     sequence {}",
                    header.generation,
                    header.first_seq,
                    writer.path().display(),
                    writer.next_seq()
                ),
            ));
        }
        make_name_durable(vfs, dir, &path, poison)?;
        *writer = LogWriter::new(
            path,
            file,
            header.version,
            generation,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            WAL_HEADER_LEN as u64,
        );
    }
}

/// Before appending to a log another process created: syncs the directory, since that process
/// may have died between renaming the log into place and syncing the directory, and a power cut
/// would then take the log, and whatever we acknowledged in it, away. A failure poisons the
/// handle, as a failed `fdatasync` does: a retry could report success with the name still not
/// durable.
fn make_name_durable(vfs: &dyn Vfs, dir: &Path, log: &Path, poison: &Poison) -> Result<()> {
    vfs.sync_dir(dir).map_err(|e| {
        let e = Error::io("sync the directory of", log, e);
        poison.set(e.to_string());
        e
    })
}

/// Whether anything lies at the writer's end of the log (another process appended, or left a
/// torn record). Reads only the next record's length field: a zero means nothing, since a write
/// cut short by a kill leaves a prefix of its record, length first. (Asking for the file's size
/// instead would make the kernel give the next write a fine-grained timestamp, and so an inode
/// write at every `fdatasync`.)
fn appended_since(writer: &LogWriter) -> Result<bool> {
    let mut length = [0u8; 4];
    let mut filled = 0;
    while filled < length.len() {
        match writer
            .file()
            .read_at(&mut length[filled..], writer.end() + filled as u64)
        {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(Error::io("read", writer.path(), e)),
        }
    }
    Ok(length[..filled].iter().any(|&b| b != 0))
}

/// Holding `LOCK`: a writer at the start of the newest log (the caller scans it to its end).
fn open_newest_log(vfs: &dyn Vfs, dir: &Path) -> Result<LogWriter> {
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list the store directory", dir, e))?;
    let newest = names
        .iter()
        .filter_map(|name| match classify(name) {
            StoreFile::Wal(generation) => Some(generation),
            _ => None,
        })
        .max()
        .ok_or_else(|| Error::corruption(dir, 0, "the store has no log"))?;
    let path = dir.join(wal_name(newest));
    let (file, header) = open(vfs, &path, OpenMode::ReadWrite)?;
    Ok(LogWriter::new(
        path,
        file,
        header.version,
        header.generation,
        WAL_HEADER_LEN as u64,
        header.first_seq,
        WAL_HEADER_LEN as u64,
    ))
}
