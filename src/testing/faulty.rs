//! A [`Vfs`] wrapper for unit tests that makes chosen operations fail, so that the engine's
//! handling of a full disk and of a failed `fdatasync` can be tested on the real file system.
//! (The full power-loss simulator is a separate, larger piece.)

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::io::{EntryKind, LockKind, Mapping, OpenMode, SharedWords, StdVfs, Vfs, VfsFile};

/// Which operations fail, and how.
#[derive(Debug, Default)]
pub struct Faults {
    /// `Some(n)`: every write longer than `n` bytes writes its first `n` bytes, then fails
    /// with ENOSPC.
    pub enospc_after: Option<usize>,
    /// The next `fdatasync`s fail with EIO.
    pub fail_sync: bool,
    /// `Some(n)`: once the journal holds `n` entries, every further write, sync, truncate,
    /// rename, removal and directory sync fails with EIO and changes nothing, as if the
    /// process had died there.
    pub freeze_after: Option<usize>,
    /// Every write, sync, truncate, rename and directory sync, in order, e.g.
    /// `write wal-0000000000000000 40+71`, `sync wal-0000000000000000`, `sync_dir store`.
    pub journal: Vec<String>,
    /// Things to run at chosen points of the engine's work, to make another handle act at an
    /// exact point between two steps of this one: the first runs (once) when its point is
    /// reached, then the next one waits for its point, and so on.
    pub hooks: std::collections::VecDeque<(At, Hook)>,
}

/// Where a [`Hook`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// Right after an `unlock` of the file of this name.
    Unlock(String),
}

impl Faults {
    /// The first hook, taken out, if it is for `point`.
    fn hook_at(&mut self, point: impl Fn(&At) -> bool) -> Option<Hook> {
        if self.hooks.front().is_some_and(|(at, _)| point(at)) {
            self.hooks.pop_front().map(|(_, hook)| hook)
        } else {
            None
        }
    }
}

/// Something a test runs at a chosen point of the engine's work.
pub struct Hook(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Faults {
    /// Records an operation; fails it if the disk is frozen.
    fn note(&mut self, entry: String) -> io::Result<()> {
        if self.freeze_after.is_some_and(|n| self.journal.len() >= n) {
            return Err(io::Error::other("injected crash: the disk is frozen"));
        }
        self.journal.push(entry);
        Ok(())
    }
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn faults(faults: &Mutex<Faults>) -> std::sync::MutexGuard<'_, Faults> {
    faults.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
pub struct FaultyVfs {
    pub faults: Arc<Mutex<Faults>>,
}

impl Vfs for FaultyVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(FaultyFile {
            inner: StdVfs.open(path, mode)?,
            name: name(path),
            faults: Arc::clone(&self.faults),
        }))
    }
    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        StdVfs.entry_kind(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdVfs.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        StdVfs.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        faults(&self.faults).note(format!("rename {} {}", name(from), name(to)))?;
        StdVfs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        faults(&self.faults).note(format!("remove {}", name(path)))?;
        StdVfs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        faults(&self.faults).note(format!("remove directory {}", name(path)))?;
        StdVfs.remove_dir(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        faults(&self.faults).note(format!("sync_dir {}", name(dir)))?;
        StdVfs.sync_dir(dir)
    }
    fn network_filesystem(&self, dir: &Path) -> io::Result<Option<&'static str>> {
        StdVfs.network_filesystem(dir)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn VfsFile>,
    name: String,
    faults: Arc<Mutex<Faults>>,
}

impl VfsFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut faults = faults(&self.faults);
        faults.note(format!("write {} {offset}+{}", self.name, buf.len()))?;
        match faults.enospc_after {
            Some(n) if n < buf.len() => {
                self.inner.write_all_at(&buf[..n], offset)?;
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            _ => self.inner.write_all_at(buf, offset),
        }
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn is_unlinked(&self) -> io::Result<bool> {
        self.inner.is_unlinked()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        faults(&self.faults).note(format!("set_len {} {len}", self.name))?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut faults = faults(&self.faults);
        faults.note(format!("sync {}", self.name))?;
        if faults.fail_sync {
            return Err(io::Error::other("injected fdatasync failure (EIO)"));
        }
        self.inner.sync_data()
    }
    fn lock(&self, kind: LockKind, wait: bool) -> io::Result<bool> {
        self.inner.lock(kind, wait)
    }
    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()?;
        let hook = faults(&self.faults).hook_at(|at| *at == At::Unlock(self.name.clone()));
        if let Some(Hook(run)) = hook {
            run();
        }
        Ok(())
    }
    fn map(&self, size: u64) -> io::Result<Arc<dyn Mapping>> {
        self.inner.map(size)
    }
    fn map_shared(&self, writable: bool) -> io::Result<Arc<dyn SharedWords>> {
        self.inner.map_shared(writable)
    }
}
