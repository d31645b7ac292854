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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

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

/// Which advisory lock to take on a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once (`flock(LOCK_SH)`).
    Shared,
    /// One holder (`flock(LOCK_EX)`).
    Exclusive,
}

/// A few 64-bit words of memory shared by every handle (in any process) that maps the same file.
/// The engine keeps its cross-process "something changed" hint here.
pub trait SharedWords: Send + Sync + fmt::Debug {
    /// Reads word `index` (acquire).
    fn load(&self, index: usize) -> u64;
    /// Raises word `index` to `value` if it is lower (release).
    fn fetch_max(&self, index: usize, value: u64);
    /// Sets word `index` (release).
    fn store(&self, index: usize, value: u64);
    /// Sets word `index` to `new` if it holds `current`; whether it did (acquire and release).
    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> bool;
    /// The counter in the first four bytes of word `index` (acquire).
    fn counter(&self, index: usize) -> u32;
    /// Adds one to that counter and wakes every [`SharedWords::wait_counter`] on it.
    fn bump_counter(&self, index: usize);
    /// Waits, for at most `timeout`, while that counter still reads `seen`. May return early
    /// (callers check what they wait for again).
    fn wait_counter(&self, index: usize, seen: u32, timeout: Duration);
}

/// How many bytes of a file [`VfsFile::map_shared`] maps: one page.
pub const SHARED_BYTES: u64 = 4096;
/// How many words that is.
pub const SHARED_WORDS: usize = (SHARED_BYTES / 8) as usize;

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
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The name of the network file system `dir` is on (NFS, SMB, ...), where `flock` and shared
    /// memory do not coordinate processes on different machines; `None` for a local one.
    fn network_filesystem(&self, dir: &Path) -> io::Result<Option<&'static str>>;
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
    /// Whether the file has been removed from its directory (it stays readable while open).
    fn is_unlinked(&self) -> io::Result<bool>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data, and the metadata needed to read it (its size), durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Takes an advisory lock (`flock`), waiting for it if `wait`; `Ok(false)` if it is busy and
    /// `!wait`. Locks belong to the open file, so two opens of one file conflict even within one
    /// process, and closing another descriptor of the file never drops this one's lock.
    fn lock(&self, kind: LockKind, wait: bool) -> io::Result<bool>;
    /// Releases the lock taken by [`VfsFile::lock`].
    fn unlock(&self) -> io::Result<()>;
    /// Maps the whole file read-only, given its size (from [`VfsFile::size`]: the mapping saves
    /// asking again). Only for files that are never modified again (snapshots).
    fn map(&self, size: u64) -> io::Result<Arc<dyn Mapping>>;
    /// Maps the file's first [`SHARED_BYTES`] as shared memory: stores through one mapping are
    /// seen by every other mapping of the file at once. The file must be at least that long.
    /// With `writable == false` the stores are refused (a read-only handle never writes).
    fn map_shared(&self, writable: bool) -> io::Result<Arc<dyn SharedWords>>;

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
        Ok(Arc::new(StdFile(open_noatime(&mut options, path)?)))
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

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn network_filesystem(&self, dir: &Path) -> io::Result<Option<&'static str>> {
        network_filesystem(dir)
    }
}

/// Opens with `O_NOATIME` where allowed (files we own): reading the log, as every handle does to
/// follow the others, would otherwise update its access time, and on ext4 a dirty inode makes
/// the writer's next `fdatasync` write the inode table block too — one more device write per
/// commit.
#[cfg(target_os = "linux")]
fn open_noatime(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match options.clone().custom_flags(noatime).open(path) {
        // Only the owner (or a privileged process) may ask for it.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => options.open(path),
        other => other,
    }
}

#[cfg(not(target_os = "linux"))]
fn open_noatime(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    options.open(path)
}

#[cfg(target_os = "linux")]
fn network_filesystem(dir: &Path) -> io::Result<Option<&'static str>> {
    // Magic numbers from statfs(2).
    const NETWORK: [(i64, &str); 7] = [
        (0x6969, "NFS"),
        (0xFF53_4D42, "CIFS"),
        (0xFE53_4D42, "SMB2"),
        (0x517B, "SMB"),
        (0x564C, "NCP"),
        (0x0102_1997, "9P"),
        (0x6B41_4653, "AFS"),
    ];
    let stat = rustix::fs::statfs(dir)?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between targets"
    )]
    let kind = stat.f_type as i64;
    Ok(NETWORK
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| *name))
}

#[cfg(not(target_os = "linux"))]
fn network_filesystem(_dir: &Path) -> io::Result<Option<&'static str>> {
    Ok(None)
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
        // `lseek`, not `fstat`: every handle asks for the log's size as it follows the others,
        // and a stat before a write was measured to cost an inode write at the next
        // `fdatasync` (DECISIONS 25). All reads and writes are positional, so the file offset
        // this moves is never used.
        io::Seek::seek(&mut &self.0, io::SeekFrom::End(0))
    }

    fn is_unlinked(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.0.metadata()?.nlink() == 0)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn lock(&self, kind: LockKind, wait: bool) -> io::Result<bool> {
        let attempt = match (kind, wait) {
            (LockKind::Exclusive, true) => return self.0.lock().map(|()| true),
            (LockKind::Shared, true) => return self.0.lock_shared().map(|()| true),
            (LockKind::Exclusive, false) => self.0.try_lock(),
            (LockKind::Shared, false) => self.0.try_lock_shared(),
        };
        match attempt {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn unlock(&self) -> io::Result<()> {
        self.0.unlock()
    }

    #[expect(
        unsafe_code,
        reason = "memmap2's map_mut is unsafe: see the SAFETY note"
    )]
    fn map_shared(&self, writable: bool) -> io::Result<Arc<dyn SharedWords>> {
        if self.0.metadata()?.len() < SHARED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than the shared page",
            ));
        }
        let mut options = memmap2::MmapOptions::new();
        options.len(SHARED_BYTES as usize);
        // SAFETY: the mapping covers bytes that exist (checked above; the lock file only ever
        // grows) and is only accessed as atomic words (StdSharedWords), so concurrent stores by
        // other processes are data-race free. Another program truncating the lock file could
        // make accesses fault; that is tampering with the store.
        let map = if writable {
            SharedMap::ReadWrite(unsafe { options.map_mut(&self.0)? })
        } else {
            SharedMap::ReadOnly(unsafe { options.map(&self.0)? })
        };
        Ok(Arc::new(StdSharedWords(map)))
    }

    #[expect(
        unsafe_code,
        reason = "memmap2::Mmap::map is unsafe: see the SAFETY note"
    )]
    fn map(&self, size: u64) -> io::Result<Arc<dyn Mapping>> {
        let len = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        // SAFETY: a mapping is undefined behaviour if the file changes underneath it. sturdykv maps
        // only snapshots, which are written once under a temporary name, synced and renamed, and
        // never written, truncated or reused afterwards (a new generation gets a new file; the old
        // one is unlinked, which keeps its pages alive for existing mappings), so `size`, read
        // from the open file, stays true. Only another program tampering with the store's files
        // could break this.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&self.0)? };
        // Point reads touch a page here and there: without this hint the kernel maps (and counts
        // as resident) the 64 KiB around every touched page, which on a random workload soon
        // means the whole file.
        map.advise(memmap2::Advice::Random)?;
        Ok(Arc::new(StdMapping(map)))
    }
}

#[derive(Debug)]
enum SharedMap {
    ReadWrite(memmap2::MmapMut),
    ReadOnly(memmap2::Mmap),
}

#[derive(Debug)]
struct StdSharedWords(SharedMap);

impl StdSharedWords {
    #[expect(
        unsafe_code,
        reason = "views mapped memory as atomics: see the SAFETY note"
    )]
    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < SHARED_WORDS, "shared word {index} out of range");
        let base = match &self.0 {
            SharedMap::ReadWrite(m) => m.as_ptr(),
            SharedMap::ReadOnly(m) => m.as_ptr(),
        };
        // SAFETY: the mapping is page-aligned and SHARED_BYTES long, so the word is in bounds
        // and 8-byte aligned; it lives as long as `self`. Every access, in every process, is
        // atomic. Stores happen only through a writable mapping (see `store` and `fetch_max`);
        // an atomic load from a read-only mapping is a plain aligned read.
        unsafe { AtomicU64::from_ptr(base.add(index * 8).cast_mut().cast::<u64>()) }
    }

    /// The counter of word `index`: its first four bytes.
    fn counter_word(&self, index: usize) -> &AtomicU32 {
        self.half_word(index, 0)
    }

    /// How many threads (of any process) wait on the counter of word `index`: its last four bytes.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn waiters_word(&self, index: usize) -> &AtomicU32 {
        self.half_word(index, 1)
    }

    #[expect(
        unsafe_code,
        reason = "views mapped memory as atomics: see the SAFETY note"
    )]
    fn half_word(&self, index: usize, half: usize) -> &AtomicU32 {
        let word = self.word(index);
        // SAFETY: four bytes at offset 0 or 4 of an in-bounds, 8-byte aligned word of the
        // mapping, which lives as long as `self`; words used as counters are only ever accessed
        // as two AtomicU32 halves.
        unsafe { AtomicU32::from_ptr(word.as_ptr().cast::<u32>().add(half)) }
    }

    fn writable(&self) -> bool {
        matches!(self.0, SharedMap::ReadWrite(_))
    }
}

impl SharedWords for StdSharedWords {
    fn load(&self, index: usize) -> u64 {
        self.word(index).load(Ordering::Acquire)
    }

    fn fetch_max(&self, index: usize, value: u64) {
        assert!(self.writable(), "store through a read-only shared mapping");
        let word = self.word(index);
        // Most raises find the value there already (every open raises the snapshot generation,
        // every commit the log generation). An atomic read-modify-write writes even then: to a
        // page the process has not written yet, that is a write fault, and it dirties the lock
        // file's page for writeback.
        if word.load(Ordering::Acquire) < value {
            word.fetch_max(value, Ordering::AcqRel);
        }
    }

    fn store(&self, index: usize, value: u64) {
        assert!(self.writable(), "store through a read-only shared mapping");
        self.word(index).store(value, Ordering::Release);
    }

    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> bool {
        assert!(self.writable(), "store through a read-only shared mapping");
        self.word(index)
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn counter(&self, index: usize) -> u32 {
        self.counter_word(index).load(Ordering::Acquire)
    }

    fn bump_counter(&self, index: usize) {
        assert!(self.writable(), "store through a read-only shared mapping");
        let counter = self.counter_word(index);
        // Sequentially consistent with the waiters' count in `wait_counter`: either this load
        // sees a waiter, or that waiter's futex wait sees the new count and does not sleep. So
        // the wake-up system call is made only when someone waits (a sync nobody waits for,
        // the usual case, makes none).
        counter.fetch_add(1, Ordering::SeqCst);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if self.waiters_word(index).load(Ordering::SeqCst) != 0 {
            // Not FUTEX_PRIVATE_FLAG: the waiters are in other processes.
            let _ = rustix::thread::futex::wake(
                counter,
                rustix::thread::futex::Flags::empty(),
                u32::MAX,
            );
        }
    }

    fn wait_counter(&self, index: usize, seen: u32, timeout: Duration) {
        let counter = self.counter_word(index);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::thread::futex;
            let timeout = futex::Timespec {
                tv_sec: futex::Secs::try_from(timeout.as_secs()).unwrap_or(futex::Secs::MAX),
                // Below 10^9, so it fits a 32-bit `long` too.
                tv_nsec: timeout.subsec_nanos() as futex::Nsecs,
            };
            // Returns on a wake-up, a change of the counter (EAGAIN), a signal or the timeout,
            // all of which the caller handles by looking again. A waiter killed meanwhile leaves
            // the count raised, which only costs wake-ups that find no one.
            let waiters = self.waiters_word(index);
            let writable = self.writable();
            if writable {
                waiters.fetch_add(1, Ordering::SeqCst);
            }
            let _ = futex::wait(counter, futex::Flags::empty(), seen, Some(&timeout));
            if writable {
                waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        if counter.load(Ordering::Acquire) == seen {
            // No portable cross-process wait: poll.
            std::thread::sleep(timeout.min(Duration::from_micros(50)));
        }
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

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod shared_words_tests {
    use super::*;
    use std::sync::mpsc;

    /// A bump wakes a thread sleeping on the counter, though bumps skip the wake-up system call
    /// when nobody waits: the waiter's count must be seen. (Without the wake-up the waiter would
    /// sleep out its hour, and the test would fail after a minute.)
    #[test]
    fn a_bump_wakes_a_waiter_and_the_waiters_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StdVfs
            .open(&dir.path().join("page"), OpenMode::ReadWriteCreate)
            .expect("open");
        file.set_len(SHARED_BYTES).expect("size");
        let words = file.map_shared(true).expect("map");
        // The word read whole: on this little-endian page, the waiters are its high half.
        let waiters = || words.load(3) >> 32;
        let seen = words.counter(3);
        let (done, woken) = mpsc::channel();
        let (tell_tid, tid) = mpsc::channel();
        let waiter = Arc::clone(&words);
        std::thread::spawn(move || {
            tell_tid
                .send(rustix::thread::gettid().as_raw_nonzero())
                .expect("send");
            waiter.wait_counter(3, seen, Duration::from_secs(3600));
            done.send(()).expect("send");
        });
        // Bump only once the waiter is counted and asleep in the kernel (state S), so that the
        // bump's wake-up, not a changed counter, is what ends its wait.
        let stat = format!("/proc/self/task/{}/stat", tid.recv().expect("tid"));
        let asleep = || {
            let text = std::fs::read_to_string(&stat).expect("read the waiter's stat");
            text.rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('S'))
        };
        while waiters() == 0 || !asleep() {
            std::thread::yield_now();
        }
        words.bump_counter(3);
        woken
            .recv_timeout(Duration::from_secs(60))
            .expect("the bump woke the waiter");
        assert_eq!(words.counter(3), seen.wrapping_add(1));
        assert_eq!(waiters(), 0);
        // No one waits now: a bump still counts.
        words.bump_counter(3);
        assert_eq!(words.counter(3), seen.wrapping_add(2));
    }
}
