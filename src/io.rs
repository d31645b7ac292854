//! The I/O layer: every file operation the engine makes goes through [`Vfs`] and [`VfsFile`].
//!
//! Keeping the surface this small is what lets a simulated disk (which keeps "page cache" and
//! "disk" apart, and can crash or fail at any operation) run the real engine unchanged. The real
//! implementation, [`StdVfs`], is a thin layer over `std::fs`.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write, creating the file if it is missing.
    ReadWriteCreate,
    /// Read and write a new, empty file; fails if the name exists.
    CreateNew,
}

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (or anything that is not a directory).
    File,
    /// A directory.
    Dir,
}

/// A file system: the directory-level operations.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>>;
    /// What `path` is, or `None` if nothing is there.
    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>>;
    /// Creates `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names in directory `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Atomically replaces `to` with `from`; durable only after [`Vfs::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; durable only after [`Vfs::sync_dir`].
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Writes are positional: the engine always knows where its log ends, and "append"
/// is a write at that offset.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data, and the metadata needed to read it (its size), durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Takes an exclusive advisory lock without waiting; `Ok(false)` if another holder has it.
    fn try_lock_exclusive(&self) -> io::Result<bool>;
    /// Maps the whole file read-only. Only for files that are never modified again (snapshots).
    fn map(&self) -> io::Result<Arc<dyn Mapping>>;

    /// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` if the file is
    /// shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A read-only view of a whole file, kept alive by reference counting so that values can be
/// served straight from it.
pub trait Mapping: Send + Sync + fmt::Debug {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
}

#[derive(Debug)]
struct StdMapping(memmap2::Mmap);

impl Mapping for StdMapping {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

impl Vfs for StdVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::ReadWriteCreate => {
                options.write(true).create(true);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
        }
        // std opens with O_CLOEXEC, so a child process never inherits a descriptor (or its lock).
        Ok(Arc::new(StdFile(options.open(path)?)))
    }

    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(EntryKind::Dir)),
            Ok(_) => Ok(Some(EntryKind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct StdFile(File);

impl VfsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        match self.0.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    #[expect(
        unsafe_code,
        reason = "memmap2::Mmap::map is unsafe: see the SAFETY note"
    )]
    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        // SAFETY: a mapping is undefined behaviour if the file changes underneath it. sturdykv maps
        // only snapshots, which are written once under a temporary name, synced and renamed, and
        // never written, truncated or reused afterwards (a new generation gets a new file; the old
        // one is unlinked, which keeps its pages alive for existing mappings). Only another
        // program tampering with the store's files could break this.
        let map = unsafe { memmap2::Mmap::map(&self.0)? };
        // Point reads touch a page here and there: without this hint the kernel maps (and counts
        // as resident) the 64 KiB around every touched page, which on a random workload soon
        // means the whole file.
        map.advise(memmap2::Advice::Random)?;
        Ok(Arc::new(StdMapping(map)))
    }
}

/// Writes `bytes` as the complete contents of `dir/name`, atomically and durably: a temporary file,
/// `fdatasync`, `rename`, then a sync of the directory. A crash leaves either no file or the whole
/// file (plus, possibly, a `.tmp` that recovery deletes).
pub fn write_file_atomically(
    vfs: &dyn Vfs,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = match vfs.open(&tmp, OpenMode::CreateNew) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            vfs.remove_file(&tmp)?;
            vfs.open(&tmp, OpenMode::CreateNew)?
        }
        other => other?,
    };
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    vfs.rename(&tmp, &dir.join(name))?;
    vfs.sync_dir(dir)
}

#[cfg(test)]
pub(crate) mod faulty {
    //! A [`Vfs`] wrapper for unit tests that makes chosen operations fail, so that the engine's
    //! handling of a full disk and of a failed `fdatasync` can be tested on the real file system.
    //! (The full power-loss simulator is a separate, larger piece.)

    use super::*;
    use std::sync::Mutex;

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
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            faults(&self.faults).note(format!("sync_dir {}", name(dir)))?;
            StdVfs.sync_dir(dir)
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
        fn try_lock_exclusive(&self) -> io::Result<bool> {
            self.inner.try_lock_exclusive()
        }
        fn map(&self) -> io::Result<Arc<dyn Mapping>> {
            self.inner.map()
        }
    }
}
