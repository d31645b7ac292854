//! Coordination between processes: the `LOCK` file, the hint page shared through it, and the
//! flush and compaction locks.
//!
//! - `LOCK` is `flock`ed exclusively by whoever appends to the log, cuts a segment, installs a
//!   manifest or removes old files, for just that long (or for the handle's whole life with
//!   [`Options::exclusive`](crate::Options::exclusive)). Recovery and reloads take it shared.
//! - Its first page is mapped shared by every handle: word [`COMMITTED_SEQ`] is the sequence number
//!   after the last record committed (visible), word [`MANIFEST_NUMBER`] the newest installed
//!   manifest, word [`SYNCED_SEQ`] the sequence number after the last record known durable. A
//!   handle compares them with what it has applied before every operation (two atomic loads) and
//!   reads the log only when they moved. The hint is never trusted over the files: it only says
//!   where to look, and every writer corrects it under the lock.
//! - Further words let processes share `fdatasync`s ([`SYNC_RUNNING`] and its neighbours; see
//!   `engine/commit/shared_sync.rs`): they decide who syncs, never what is acknowledged.
//! - `LOCK.compaction` and `LOCK.flush` are held (exclusively, without waiting in the
//!   background) for the whole of a compaction or a flush, so that one of each runs at a time and
//!   nobody deletes the files they are writing.
//! - `LOCK.handles` is held for a handle's whole life: shared by ordinary and read-only handles,
//!   exclusively by an [`Options::exclusive`](crate::Options::exclusive) one, which therefore
//!   gets (or causes) a clear [`Error::Locked`] at open instead of waiting forever for `LOCK`.
//!
//! `flock` locks belong to an open file description and die with the process, so a killed process
//! never leaves a stale lock, and closing some other descriptor of the file never drops ours (as
//! it would with POSIX `fcntl` locks). Descriptors are opened close-on-exec.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::io::{LockKind, OpenMode, SHARED_BYTES, SHARED_WORDS, SharedWords, Vfs, VfsFile};
use crate::layout::{HANDLES_LOCK_NAME, LOCK_NAME};
use crate::sync::lock;

/// Hint word: the sequence number after the last committed record: durable, or written by a
/// [`Durability::Buffered`](crate::Durability::Buffered) handle.
pub const COMMITTED_SEQ: usize = 0;
/// Hint word: the number of the newest installed manifest (0: none yet). Raised after each
/// install; a handle that has applied an older one reloads its sorted files.
pub const MANIFEST_NUMBER: usize = 1;
/// Hint word: the sequence number after the last record an `fdatasync` covered. Differs from
/// [`COMMITTED_SEQ`] when a [`Durability::Buffered`](crate::Durability::Buffered) handle publishes
/// records without syncing them: only this word may let a writer skip its own sync.
pub const SYNCED_SEQ: usize = 2;
/// Hint word: a fingerprint of the store's log and snapshot names when an open last `fsync`ed
/// the directory (0: unknown). An open that finds the same names need not sync it again.
pub const DIRECTORY_SYNCED: usize = 3;
/// Hint word: the log start of the newest installed manifest: every log segment below it may be
/// removed (its records are in runs).
pub const LOG_START: usize = 4;
/// Hint word: which layout of the page this is ([`PAGE_LAYOUT`]; 0 in a page written by a build
/// from before the word, whose layout is the same). A page of another layout is never read.
pub const PAGE_VERSION: usize = 5;
/// The value of [`PAGE_VERSION`] for the layout this build reads and writes: `skvhint` and a
/// layout number, so that neither zeros nor a small number of flipped bits look like it.
pub const PAGE_LAYOUT: u64 = u64::from_be_bytes(*b"skvhint\x01");
// Words 8 to 12 share `fdatasync`s between processes. They change several times per commit, so
// they sit on their own cache line, away from the words readers load at every operation.

/// Hint word: the sequence number after the last record appended (its write returned), raised
/// under `LOCK` after [`LOG_GENERATION`]. An `fdatasync` of that log started later covers it.
pub const APPENDED_SEQ: usize = 8;
/// Hint word: the generation of the log the last append went to.
pub const LOG_GENERATION: usize = 9;
/// Hint word: nonzero while a process runs an `fdatasync` of the log for every writer (a token
/// naming that sync). Others wait for it instead of queueing syncs of their own behind it.
pub const SYNC_RUNNING: usize = 10;
/// Hint word: its first four bytes count finished store-wide syncs (a futex: waiters sleep on it).
pub const SYNCS_FINISHED: usize = 11;
/// Hint word: how many other processes' records the last store-wide sync covered.
pub const LAST_SYNC_OTHERS: usize = 12;

/// How a handle uses the lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes, sharing the store with other processes.
    Shared,
    /// The only handle: other openers get [`Error::Locked`], and `LOCK` is never contended.
    Exclusive,
    /// Never writes.
    ReadOnly,
}

/// The store's `LOCK` file and its hint page.
#[derive(Debug)]
pub struct StoreLock {
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    hint: Arc<dyn SharedWords>,
    access: Access,
    /// `LOCK.handles`, locked for the handle's life (`None` if the file system has no locks and
    /// the caller chose exclusive access).
    _handles: Option<Arc<dyn VfsFile>>,
    /// `flock` is per open file, and converting a lock on one open file converts it for every
    /// thread: the threads of a handle take turns with the file.
    local: Mutex<()>,
    /// This process's id, which names its store-wide syncs: asked once, since `getpid` is a
    /// system call and a commit's path is short of them. (A handle does not survive a `fork`:
    /// its locks would be the parent's.)
    pid: u32,
}

/// Holds `LOCK` until dropped.
pub struct LockGuard<'a> {
    owner: &'a StoreLock,
    _local: MutexGuard<'a, ()>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.owner.access != Access::Exclusive
            && let Err(e) = self.owner.file.unlock()
        {
            log::error!("unlocking {}: {e}", self.owner.path.display());
        }
    }
}

impl StoreLock {
    /// Opens (creating, unless read-only) `dir/LOCK` and maps its hint page, and registers the
    /// handle in `LOCK.handles`, failing with [`Error::Locked`] if an exclusive handle has the
    /// store, or if this one asks to be exclusive and any other handle is open.
    pub fn open(vfs: &dyn Vfs, dir: &Path, access: Access) -> Result<StoreLock> {
        let path = dir.join(LOCK_NAME);
        if access != Access::Exclusive
            && let Some(fs) = vfs
                .network_filesystem(dir)
                .map_err(|e| Error::io("find the file system of", dir, e))?
        {
            return Err(Error::LockingUnsupported {
                path,
                reason: format!(
                    "{dir} is on {fs}, where file locks and shared memory do not coordinate \
                     processes on different machines; open it with Options::exclusive(true) from \
                     one process at a time",
                    dir = dir.display()
                ),
            });
        }
        let mode = match access {
            Access::ReadOnly => OpenMode::Read,
            Access::Shared | Access::Exclusive => OpenMode::ReadWriteCreate,
        };
        let (handles, alone) = register_handle(vfs, dir, access, mode)?;
        let file = vfs
            .open(&path, mode)
            .map_err(|e| Error::io("open the lock file", &path, e))?;
        let size = file
            .size()
            .map_err(|e| Error::io("read the size of", &path, e))?;
        if size < SHARED_BYTES {
            if access == Access::ReadOnly {
                return Err(Error::NotAStore {
                    path: dir.to_owned(),
                    reason: format!(
                        "{} has no hint page: open the store once read-write",
                        path.display()
                    ),
                });
            }
            // Zeros mean "no hint yet". The file only ever grows, so a concurrent opener doing
            // the same is harmless.
            file.set_len(SHARED_BYTES)
                .map_err(|e| Error::io("extend the lock file", &path, e))?;
        }
        let hint = file
            .map_shared(access != Access::ReadOnly)
            .map_err(|e| Error::io("map the hint page of", &path, e))?;
        check_layout(hint.as_ref(), &path, access, alone)?;
        Ok(StoreLock {
            path,
            file,
            hint,
            access,
            _handles: handles,
            local: Mutex::new(()),
            pid: std::process::id(),
        })
    }

    fn try_flock(&self, kind: LockKind, wait: bool) -> Result<bool> {
        self.file
            .lock(kind, wait)
            .map_err(|e| lock_error(&self.path, e))
    }

    /// Waits for `LOCK` exclusively: the right to append, create or remove store files.
    pub fn exclusive(&self) -> Result<LockGuard<'_>> {
        self.acquire(LockKind::Exclusive)
    }

    /// Waits for `LOCK` shared: no writer is in the middle of changing the files.
    pub fn shared(&self) -> Result<LockGuard<'_>> {
        self.acquire(LockKind::Shared)
    }

    fn acquire(&self, kind: LockKind) -> Result<LockGuard<'_>> {
        let local = lock(&self.local);
        if self.access != Access::Exclusive {
            self.try_flock(kind, true)?;
        }
        Ok(LockGuard {
            owner: self,
            _local: local,
        })
    }

    /// The id of the process that opened the handle.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether other processes may be using the store (so the hint must be checked).
    pub fn is_shared(&self) -> bool {
        self.access != Access::Exclusive
    }

    /// The hint word `index`.
    pub fn hint(&self, index: usize) -> u64 {
        self.hint.load(index)
    }

    /// Raises hint word `index` to `value`.
    pub fn raise_hint(&self, index: usize, value: u64) {
        if self.access != Access::ReadOnly {
            self.hint.fetch_max(index, value);
        }
    }

    /// Sets hint word `index`, a statistic that needs no lock.
    pub fn set_hint(&self, index: usize, value: u64) {
        if self.access != Access::ReadOnly {
            self.hint.store(index, value);
        }
    }

    /// Notes, holding `LOCK`, that the log of `generation` now ends at sequence `end_seq`: the
    /// truth, which replaces whatever the words held.
    pub fn note_append(&self, _guard: &LockGuard<'_>, generation: u64, end_seq: u64) {
        if self.access == Access::Shared {
            // The generation first: whoever reads the sequence then finds its generation.
            self.hint.store(LOG_GENERATION, generation);
            self.hint.store(APPENDED_SEQ, end_seq);
        }
    }

    /// Whether the page says that an `fdatasync` (another process's, or another handle's)
    /// covered every record below `end_seq`, and says it consistently: the synced word is never
    /// above the appended word in an honest page (a record is appended, under `LOCK`, before any
    /// sync covers it, and both words are loaded in that order), so a synced word above it — a
    /// damaged page, a stale or foreign build, a co-tenant's write — is ignored and the caller
    /// syncs itself. Only a shared handle asks: an exclusive one syncs its own records.
    pub fn synced_through(&self, end_seq: u64) -> bool {
        if self.access != Access::Shared {
            return false;
        }
        let synced = self.hint.load(SYNCED_SEQ);
        synced >= end_seq && synced <= self.hint.load(APPENDED_SEQ)
    }

    /// The synced word, if it is consistent with a log that ends at `log_end` (known from the
    /// files, holding `LOCK`): else 0, which claims nothing.
    pub fn synced_below(&self, log_end: u64) -> u64 {
        let synced = self.hint.load(SYNCED_SEQ);
        if synced <= log_end { synced } else { 0 }
    }

    /// Where the log of `generation` is known to end (records appended by anyone), or 0 if the
    /// last append went to another log.
    pub fn appended_in(&self, generation: u64) -> u64 {
        // The sequence first: its generation was raised before it.
        let end_seq = self.hint.load(APPENDED_SEQ);
        if self.hint.load(LOG_GENERATION) == generation {
            end_seq
        } else {
            0
        }
    }

    /// Claims the store-wide sync, if it still holds `current` (0, or a sync given up for dead).
    pub fn claim_sync(&self, current: u64, token: u64) -> bool {
        self.hint.compare_exchange(SYNC_RUNNING, current, token)
    }

    /// Ends the store-wide sync claimed with `token`, and wakes those waiting for it.
    pub fn end_sync(&self, token: u64) {
        // If another process took it over meanwhile, the claim is theirs to end.
        self.hint.compare_exchange(SYNC_RUNNING, token, 0);
        self.hint.bump_counter(SYNCS_FINISHED);
    }

    /// How many store-wide syncs have finished (wrapping), to wait on with [`Self::wait_for_sync`].
    pub fn syncs_finished(&self) -> u32 {
        self.hint.counter(SYNCS_FINISHED)
    }

    /// Waits for at most `timeout` while no store-wide sync finishes after the count `seen`.
    pub fn wait_for_sync(&self, seen: u32, timeout: std::time::Duration) {
        self.hint.wait_counter(SYNCS_FINISHED, seen, timeout);
    }

    /// Sets hint word `index` to the truth, found under the exclusive lock.
    pub fn correct_hint(&self, _guard: &LockGuard<'_>, index: usize, value: u64) {
        if self.access != Access::ReadOnly && self.hint.load(index) != value {
            self.hint.store(index, value);
        }
    }
}

/// Takes `LOCK.handles` for the handle's life: shared, or exclusive for [`Access::Exclusive`].
/// Also says whether no other handle has the store open (a shared handle first tries the lock
/// exclusively, then converts it; `flock` lets an exclusive opener win in between, which then
/// fails this open with [`Error::Locked`] as it would have anyway).
fn register_handle(
    vfs: &dyn Vfs,
    dir: &Path,
    access: Access,
    mode: OpenMode,
) -> Result<(Option<Arc<dyn VfsFile>>, bool)> {
    let path = dir.join(HANDLES_LOCK_NAME);
    let file = vfs
        .open(&path, mode)
        .map_err(|e| Error::io("open the lock file", &path, e))?;
    let locked = match access {
        Access::Exclusive => file.lock(LockKind::Exclusive, false).map(|l| (l, l)),
        Access::Shared | Access::ReadOnly => match file.lock(LockKind::Exclusive, false) {
            Ok(true) => file.lock(LockKind::Shared, false).map(|l| (l, true)),
            Ok(false) => file.lock(LockKind::Shared, false).map(|l| (l, false)),
            Err(e) => Err(e),
        },
    };
    match locked {
        Ok((true, alone)) => Ok((Some(file), alone)),
        Ok((false, _)) => Err(Error::Locked { path }),
        Err(e) => match lock_error(&path, e) {
            Error::LockingUnsupported { .. } if access == Access::Exclusive => {
                log::warn!(
                    "{}: this file system has no file locks; opening anyway, as exclusive access \
                     was asked for: make sure no other process opens the store",
                    path.display()
                );
                Ok((None, true))
            }
            e => Err(e),
        },
    }
}

/// Checks that the hint page is of the layout this build reads ([`PAGE_LAYOUT`]), marking an
/// unmarked one (zeros: a new page, or one from a build before the mark) as ours. A page of
/// another layout — a newer or older build has the store open, or the word is damaged — is
/// never read: with no other handle open it is reset to zeros (which claim nothing; the opener
/// corrects the words from the files), otherwise the open fails.
fn check_layout(hint: &dyn SharedWords, path: &Path, access: Access, alone: bool) -> Result<()> {
    let writable = access != Access::ReadOnly;
    if writable {
        hint.compare_exchange(PAGE_VERSION, 0, PAGE_LAYOUT);
    }
    let found = hint.load(PAGE_VERSION);
    if found == PAGE_LAYOUT || (found == 0 && !writable) {
        return Ok(());
    }
    if writable && alone {
        log::warn!(
            "{}: the hint page has layout word {found:#018x}, not this build's; no other handle \
             has the store open, so it is reset",
            path.display()
        );
        for word in (0..SHARED_WORDS).filter(|&w| w != PAGE_VERSION) {
            hint.store(word, 0);
        }
        hint.store(PAGE_VERSION, PAGE_LAYOUT);
        return Ok(());
    }
    Err(Error::NotAStore {
        path: path.to_owned(),
        reason: format!(
            "its hint page has layout word {found:#018x}, which this build does not read (it \
             writes {PAGE_LAYOUT:#018x}): a different build of sturdykv has the store open, or \
             the page is damaged; close the other handles{}",
            if writable {
                ", and open it again"
            } else {
                ", or open it once read-write"
            }
        ),
    })
}

/// A `flock` failure: "not supported here" gets its own error, saying what to do.
fn lock_error(path: &Path, e: std::io::Error) -> Error {
    use rustix::io::Errno;
    let unsupported = [Errno::NOLCK, Errno::OPNOTSUPP, Errno::NOSYS];
    if e.raw_os_error()
        .is_some_and(|code| unsupported.contains(&Errno::from_raw_os_error(code)))
    {
        Error::LockingUnsupported {
            path: path.to_owned(),
            reason: format!(
                "flock failed ({e}); open the store with Options::exclusive(true) from one \
                 process at a time"
            ),
        }
    } else {
        Error::io("lock (flock) the lock file", path, e)
    }
}

/// A lock file held for a whole compaction (`LOCK.compaction`) or flush (`LOCK.flush`): one at
/// a time across processes.
#[derive(Debug)]
pub struct CompactionLock {
    path: PathBuf,
    file: Option<Arc<dyn VfsFile>>,
}

/// Holds the compaction lock until dropped.
pub struct CompactionGuard<'a>(&'a CompactionLock);

impl Drop for CompactionGuard<'_> {
    fn drop(&mut self) {
        if let Some(file) = &self.0.file
            && let Err(e) = file.unlock()
        {
            log::error!("unlocking {}: {e}", self.0.path.display());
        }
    }
}

impl CompactionLock {
    /// Opens (creating) `dir/<name>` (`LOCK.compaction` or `LOCK.flush`); a read-only handle has
    /// none and never compacts or flushes.
    pub fn open(vfs: &dyn Vfs, dir: &Path, name: &str, access: Access) -> Result<CompactionLock> {
        let path = dir.join(name);
        let file = match access {
            Access::ReadOnly => None,
            Access::Shared | Access::Exclusive => Some(
                vfs.open(&path, OpenMode::ReadWriteCreate)
                    .map_err(|e| Error::io("open the lock file", &path, e))?,
            ),
        };
        Ok(CompactionLock { path, file })
    }

    /// Takes the lock, waiting for it if `wait`; `None` if it is busy (or this handle is
    /// read-only).
    pub fn acquire(&self, wait: bool) -> Result<Option<CompactionGuard<'_>>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let taken = file
            .lock(LockKind::Exclusive, wait)
            .map_err(|e| Error::io("lock (flock) the lock file", &self.path, e))?;
        Ok(taken.then_some(CompactionGuard(self)))
    }
}

#[cfg(test)]
mod tests {
    use rustix::io::Errno;

    use super::*;

    /// `flock` refused as unsupported (NFS, SMB, a kernel without it) says what to do instead;
    /// any other failure stays an I/O error.
    #[test]
    fn flock_unsupported_is_told_apart_from_other_failures() {
        let path = Path::new("store/LOCK");
        let failure = |errno: Errno| lock_error(path, std::io::Error::from(errno));
        for errno in [Errno::NOLCK, Errno::OPNOTSUPP, Errno::NOSYS] {
            let err = failure(errno);
            assert!(
                matches!(&err, Error::LockingUnsupported { reason, .. }
                    if reason.contains("Options::exclusive(true)")),
                "{errno:?}: {err}"
            );
        }
        for errno in [Errno::IO, Errno::ACCESS, Errno::AGAIN] {
            assert!(
                matches!(failure(errno), Error::Io { .. }),
                "{errno:?} is not about locking support"
            );
        }
    }
}
