//! Online backup: a consistent copy of a live store as of one commit, taken without stopping
//! other threads or processes.
//!
//! The copy is the newest manifest, the sorted files it names and the log segments it replays,
//! each segment cut at the end of the last record before the commit point. Files are opened
//! before the commit point is read: a flush or compaction that deletes them afterwards does not
//! matter (open files stay readable), and a flush that cut a newer segment in between is noticed
//! (the last segment ends before the commit point) and the copy starts over. The copy is written into a staging directory beside the destination,
//! synced, and renamed into place: a backup interrupted by a crash leaves no destination, only
//! a directory whose name says it is incomplete.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::format::WAL_HEADER_LEN;
use crate::io::{EntryKind, OpenMode, SHARED_BYTES, Vfs, VfsFile};
use crate::layout::{
    COMPACTION_LOCK_NAME, FLUSH_LOCK_NAME, HANDLES_LOCK_NAME, LOCK_NAME, list_store, manifest_name,
    part_name, run_name, snapshot_name, wal_name,
};
use crate::locking::COMMITTED_SEQ;
use crate::wal::{self, Stop};

/// What [`Db::backup_to`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The copy holds every commit with a sequence number below this one, and nothing later:
    /// every write acknowledged (in any process) before `backup_to` was called.
    pub sequence: u64,
    /// The files written into the backup directory.
    pub files: Vec<PathBuf>,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Attempts before giving up when compactions keep replacing files under the backup.
const ATTEMPTS: u32 = 100;
/// Bytes copied per read.
const CHUNK: u64 = 1 << 20;

/// Names staging directories uniquely within a process.
static STAGING: AtomicU64 = AtomicU64::new(0);

/// A file to copy: where it is, the open file, and how many of its bytes to take.
struct Part {
    name: String,
    file: Arc<dyn VfsFile>,
    len: u64,
}

impl Db {
    /// Writes a consistent copy of the store, as of one commit, into `dest`, while other
    /// threads and processes go on reading and writing. `dest` must not exist (or be an empty
    /// directory); its parent must. The copy is a store: open it to restore.
    ///
    /// The copy appears at `dest` only once it is complete and durable. If the backup fails,
    /// `dest` does not exist and the partial copy is removed; if the process or the machine dies
    /// part way, a directory named `.<dest name>.incomplete-…` beside `dest` holds the partial
    /// copy and can be deleted. The source store is only read.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = sturdykv::Db::open(dir.path().join("live"))?;
    /// db.put("k", "v")?;
    /// db.backup_to(dir.path().join("copy"))?;
    /// let copy = sturdykv::Db::open(dir.path().join("copy"))?;
    /// assert_eq!(copy.get("k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), sturdykv::Error>(())
    /// ```
    pub fn backup_to(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        let store = &self.store;
        let vfs = store.options.vfs.as_ref();
        let dest = dest.as_ref();
        let refuse = |why: &str| Error::Io {
            op: "back up to",
            path: dest.to_owned(),
            source: std::io::Error::new(ErrorKind::AlreadyExists, why.to_owned()),
        };
        match vfs
            .entry_kind(dest)
            .map_err(|e| Error::io("look at", dest, e))?
        {
            None => {}
            Some(EntryKind::Dir) => {
                let names = vfs.list(dest).map_err(|e| Error::io("list", dest, e))?;
                if !names.is_empty() {
                    return Err(refuse("the backup directory exists and is not empty"));
                }
            }
            Some(EntryKind::File) => return Err(refuse("a file is in the way")),
        }
        let (parent, name) = match (dest.parent(), dest.file_name()) {
            (Some(parent), Some(name)) => (
                if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                },
                name.to_string_lossy(),
            ),
            _ => return Err(refuse("the backup needs a directory name")),
        };
        if vfs
            .entry_kind(parent)
            .map_err(|e| Error::io("look at", parent, e))?
            != Some(EntryKind::Dir)
        {
            return Err(Error::io(
                "back up into",
                parent,
                std::io::Error::new(ErrorKind::NotFound, "no such directory"),
            ));
        }
        let (sequence, parts) =
            consistent_parts(vfs, &store.dir, || store.store_lock.hint(COMMITTED_SEQ))?;
        let staging = parent.join(format!(
            ".{name}.incomplete-{}-{}",
            std::process::id(),
            STAGING.fetch_add(1, Ordering::Relaxed)
        ));
        vfs.create_dir_all(&staging)
            .map_err(|e| Error::io("create", &staging, e))?;
        let mut report = BackupReport {
            sequence,
            files: Vec::new(),
            bytes: 0,
        };
        let written = (|| {
            for part in &parts {
                let to = staging.join(&part.name);
                copy(vfs, part, &store.dir.join(&part.name), &to)?;
                report.files.push(dest.join(&part.name));
                report.bytes += part.len;
            }
            // The lock files, so that the copy opens read-only too (`kvctl scan` of a backup);
            // a zero hint page claims nothing.
            for (lock, len) in [
                (LOCK_NAME, SHARED_BYTES),
                (COMPACTION_LOCK_NAME, 0),
                (FLUSH_LOCK_NAME, 0),
                (HANDLES_LOCK_NAME, 0),
            ] {
                let path = staging.join(lock);
                vfs.open(&path, OpenMode::ReadWriteCreate)
                    .and_then(|file| file.set_len(len))
                    .map_err(|e| Error::io("create", &path, e))?;
            }
            vfs.sync_dir(&staging)
                .map_err(|e| Error::io("sync the directory", &staging, e))?;
            vfs.rename(&staging, dest)
                .map_err(|e| Error::io("rename the finished backup to", dest, e))
        })();
        if let Err(e) = written {
            // Best effort: what is left says it is incomplete anyway.
            let names = parts.iter().map(|part| part.name.as_str());
            for name in names.chain([
                LOCK_NAME,
                COMPACTION_LOCK_NAME,
                FLUSH_LOCK_NAME,
                HANDLES_LOCK_NAME,
            ]) {
                let _ = vfs.remove_file(&staging.join(name));
            }
            let _ = vfs.remove_dir(&staging);
            return Err(e);
        }
        vfs.sync_dir(parent)
            .map_err(|e| Error::io("sync the directory", parent, e))?;
        Ok(report)
    }
}

/// The newest manifest, its files and the log segments after them, open, with the commit point
/// they all reach:
/// every record below it, read after the files were opened from `committed`.
fn consistent_parts(
    vfs: &dyn Vfs,
    dir: &Path,
    committed: impl Fn() -> u64,
) -> Result<(u64, Vec<Part>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_parts(vfs, dir, &committed) {
            Ok(Some(found)) => return Ok(found),
            // A compaction replaced a file between the listing and the open, or cut a new log.
            Ok(None) if attempt < ATTEMPTS => {}
            Err(Error::Io { source, .. })
                if source.kind() == ErrorKind::NotFound && attempt < ATTEMPTS => {}
            Ok(None) => {
                return Err(Error::Io {
                    op: "back up",
                    path: dir.to_owned(),
                    source: std::io::Error::other(
                        "compactions kept replacing the store's files during the backup",
                    ),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

fn try_parts(
    vfs: &dyn Vfs,
    dir: &Path,
    committed: &impl Fn() -> u64,
) -> Result<Option<(u64, Vec<Part>)>> {
    let listing = list_store(vfs, dir)?;
    let mut parts = Vec::new();
    let whole = |name: String| -> Result<Part> {
        let path = dir.join(&name);
        let file = vfs
            .open(&path, OpenMode::Read)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file
            .size()
            .map_err(|e| Error::io("read the size of", &path, e))?;
        Ok(Part { name, file, len })
    };
    let start = match crate::manifest::read_newest(vfs, dir, &listing)? {
        // Format 2: the manifest and every file it names, then the segments it replays.
        Some(live) => {
            parts.push(whole(manifest_name(live.number))?);
            for &id in &live.runs {
                parts.push(whole(run_name(id))?);
            }
            for &id in &live.parts {
                parts.push(whole(part_name(id))?);
            }
            live.log_start
        }
        None => match listing.snapshots.last() {
            Some(&generation) => {
                parts.push(whole(snapshot_name(generation))?);
                generation
            }
            None => 0,
        },
    };
    let mut logs = Vec::new();
    for &generation in listing.wals.iter().filter(|&&g| g >= start) {
        let name = wal_name(generation);
        let (file, header) = wal::open(vfs, &dir.join(&name), OpenMode::Read)?;
        logs.push((name, file, header));
    }
    // Only now: every record below it lies in the files just opened, unless a compaction cut a
    // newer log in the meantime (then the last log ends before it, and we start over).
    let target = committed();
    let Some(last) = logs.len().checked_sub(1) else {
        return Ok(None);
    };
    let mut next_seq = logs[0].2.first_seq;
    for (i, (name, file, header)) in logs.into_iter().enumerate() {
        let path = dir.join(&name);
        wal::check_continues(&path, &header, next_seq)?;
        let scan = wal::scan(
            file.as_ref(),
            &path,
            header.version,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            target,
            |_| {},
        )?;
        if let Stop::Damaged { offset, reason } = scan.stop
            && scan.next_seq < target
        {
            return Err(Error::corruption(&path, offset, reason));
        }
        next_seq = scan.next_seq;
        if i == last && next_seq < target {
            return Ok(None);
        }
        parts.push(Part {
            name,
            file,
            len: scan.end,
        });
    }
    Ok(Some((target, parts)))
}

/// Copies the first `part.len` bytes of `part` to a new file `to`, and syncs it.
fn copy(vfs: &dyn Vfs, part: &Part, from: &Path, to: &Path) -> Result<()> {
    let out = vfs
        .open(to, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", to, e))?;
    let mut buf = vec![0u8; CHUNK.min(part.len) as usize];
    let mut offset = 0;
    while offset < part.len {
        let n = CHUNK.min(part.len - offset) as usize;
        part.file
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| Error::io("read", from, e))?;
        out.write_all_at(&buf[..n], offset)
            .map_err(|e| Error::io("write", to, e))?;
        offset += n as u64;
    }
    out.sync_data().map_err(|e| Error::io("sync", to, e))
}
