//! A simulated disk for crash testing: it keeps what the "page cache" holds apart from what the
//! "disk" holds, so that a test can cut the power at any moment and see only what was synced,
//! plus any subset, prefix or torn part of what was not.
//!
//! Per file: the live bytes, the durable bytes, and the writes and size changes since the last
//! `sync_data`. Per directory: the live entries, the durable entries, and the creates, renames
//! and removals since the last `sync_dir`. [`SimVfs::crash`] builds the post-power-loss image
//! from one seed. [`SimVfs::freeze_after`] makes every mutating operation from the N-th on fail
//! (the moment the power goes), so the engine is interrupted exactly there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::rng::Rng;
use crate::io::{
    EntryKind, LockKind, Mapping, OpenMode, SHARED_BYTES, SHARED_WORDS, SharedWords, Vfs, VfsFile,
};

/// A fault to inject at one mutating operation.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "only the crate's own crash tests inject faults")
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with EIO and changes nothing.
    Eio,
    /// The operation fails with ENOSPC; a write may have stored a prefix of its bytes first.
    NoSpace,
    /// If the operation is an `fdatasync`, it fails and, as Linux may, drops the file's unsynced
    /// data (its page cache reverts to what is on disk). As with Linux's per-file error
    /// sequence, every other descriptor of the file that was open then reports the error at its
    /// next `fdatasync`, once; the failing descriptor's next `fdatasync` "succeeds" with nothing
    /// to write. Other operations succeed.
    LostSync,
    /// If the operation is a write, it stores only part of its bytes, then fails with EIO (a
    /// device error in the middle of a write). Other operations fail with EIO.
    ShortWrite(Kept),
}

/// How much of a [`Fault::ShortWrite`] reaches the file.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "only the crate's own crash tests inject faults")
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Its first byte.
    FirstByte,
    /// All but its last byte.
    AllButLast,
}

/// How unsynced operations survive a power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashModel {
    /// The first k pending operations of each file (and of the directory) persist.
    Prefix,
    /// Any subset of them persists.
    Subset,
    /// A prefix persists, and the next write is torn at a 512-byte or 4 KiB boundary, the rest
    /// of it reading as the old bytes, zeros or garbage.
    Torn,
    /// A prefix persists; of the rest, only the size changes do: a file that grew reads zeros
    /// where the lost writes went (the inode's size reached the disk, its data did not).
    SizeOnly,
}

impl CrashModel {
    /// Every model.
    pub const ALL: [CrashModel; 4] = [
        CrashModel::Prefix,
        CrashModel::Subset,
        CrashModel::Torn,
        CrashModel::SizeOnly,
    ];
}

/// What becomes of the pending operations an image loses.
#[derive(Clone, Copy)]
enum Lost<'a> {
    /// Nothing of them.
    Nothing,
    /// The first lost write of each file is torn, as drawn from the generator.
    TornWrite(&'a std::cell::RefCell<Rng>),
    /// Their size changes survive.
    SizeChanges,
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
    /// Holders of the advisory lock: readers, or one writer.
    shared_holders: u32,
    exclusive_held: bool,
    /// The shared-memory page, while anyone maps it (memory, so a power cut clears it).
    shared: Option<Arc<SimShared>>,
    /// Writeback errors so far (Linux's `errseq_t`): an open file reports those it has not seen
    /// at its next `fdatasync`.
    write_errors: u64,
}

/// The simulated shared-memory page of a file.
#[derive(Debug)]
struct SimShared {
    words: Vec<AtomicU64>,
    /// Wakes [`SharedWords::wait_counter`]s (the futex of the real page).
    bumped: (Mutex<()>, Condvar),
    /// How many threads are in [`SharedWords::wait_counter`].
    waiting: std::sync::atomic::AtomicUsize,
}

impl SimShared {
    fn new() -> SimShared {
        SimShared {
            words: (0..SHARED_WORDS).map(|_| Default::default()).collect(),
            bumped: Default::default(),
            waiting: Default::default(),
        }
    }
}

impl SharedWords for SimShared {
    fn load(&self, index: usize) -> u64 {
        self.words[index].load(Ordering::Acquire)
    }
    fn fetch_max(&self, index: usize, value: u64) {
        self.words[index].fetch_max(value, Ordering::AcqRel);
    }
    fn store(&self, index: usize, value: u64) {
        self.words[index].store(value, Ordering::Release);
    }
    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> bool {
        self.words[index]
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    fn counter(&self, index: usize) -> u32 {
        // The low half of the word: the first four bytes of the little-endian page.
        self.words[index].load(Ordering::Acquire) as u32
    }
    fn bump_counter(&self, index: usize) {
        let _guard = self.bumped.0.lock().unwrap_or_else(|e| e.into_inner());
        self.words[index].fetch_add(1, Ordering::AcqRel);
        self.bumped.1.notify_all();
    }
    fn wait_counter(&self, index: usize, seen: u32, timeout: Duration) {
        let guard = self.bumped.0.lock().unwrap_or_else(|e| e.into_inner());
        if self.counter(index) == seen {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = self.bumped.1.wait_timeout(guard, timeout);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A read-only mapping of a shared page: the same words, refusing stores.
#[derive(Debug)]
struct ReadOnlyShared(Arc<SimShared>);

impl SharedWords for ReadOnlyShared {
    fn load(&self, index: usize) -> u64 {
        self.0.load(index)
    }
    fn fetch_max(&self, _: usize, _: u64) {
        panic!("store through a read-only shared mapping");
    }
    fn store(&self, _: usize, _: u64) {
        panic!("store through a read-only shared mapping");
    }
    fn compare_exchange(&self, _: usize, _: u64, _: u64) -> bool {
        panic!("store through a read-only shared mapping");
    }
    fn counter(&self, index: usize) -> u32 {
        self.0.counter(index)
    }
    fn bump_counter(&self, _: usize) {
        panic!("store through a read-only shared mapping");
    }
    fn wait_counter(&self, index: usize, seen: u32, timeout: Duration) {
        self.0.wait_counter(index, seen, timeout);
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link {
        path: PathBuf,
        ino: u64,
    },
    Unlink {
        path: PathBuf,
    },
    /// A file renamed within its directory: `from` gone and `to` naming its inode, in one step
    /// (journaling file systems commit a rename as one transaction, and every store that
    /// installs a file by renaming it relies on that; DECISIONS 52).
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
    /// A directory renamed: everything under `from` is now under `to`, in one step.
    MoveDir {
        from: PathBuf,
        to: PathBuf,
    },
}

impl DirOp {
    /// The directory whose sync makes this operation durable.
    fn parent(&self) -> Option<&Path> {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path.parent(),
            DirOp::Rename { to, .. } | DirOp::MoveDir { to, .. } => to.parent(),
        }
    }

    /// Applies the operation to a namespace.
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to, ino } => {
                names.remove(from);
                names.insert(to.clone(), *ino);
            }
            DirOp::MoveDir { from, to } => {
                let moved: Vec<PathBuf> = names
                    .keys()
                    .filter(|p| p.starts_with(from))
                    .cloned()
                    .collect();
                for path in moved {
                    let ino = names.remove(&path).expect("listed");
                    let rest = path.strip_prefix(from).expect("under from");
                    names.insert(to.join(rest), ino);
                }
            }
        }
    }
}

/// `path` with its leading `from` replaced by `to`, if it lies under `from`.
fn moved(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    path.strip_prefix(from).ok().map(|rest| to.join(rest))
}

#[derive(Clone, Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    next_ino: u64,
    /// Mutating operations so far, and the count at which the power goes.
    ops: u64,
    freeze_at: Option<u64>,
    /// Test switches: syncs that report success but persist nothing.
    fsync_lies: bool,
    dir_sync_lies: bool,
    /// A fault at one operation number, and whether it persists for every later operation.
    fault: Option<(u64, Fault, bool)>,
    /// Reads (and mappings) so far, and a read number that fails with EIO (every later one
    /// too if the flag says so).
    reads: u64,
    read_fault: Option<(u64, bool)>,
}

/// What a mutating operation should do, given the fault plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Proceed,
    Fail(Fault),
}

impl State {
    /// Counts a read; fails it if an injected read error hits it.
    fn read(&mut self) -> io::Result<()> {
        let n = self.reads;
        self.reads += 1;
        match self.read_fault {
            Some((at, persistent)) if n == at || (persistent && n > at) => {
                Err(io::Error::other("injected EIO on read"))
            }
            _ => Ok(()),
        }
    }

    /// Counts a mutating operation; fails it once the power is gone.
    fn mutate(&mut self) -> io::Result<()> {
        match self.plan()? {
            Outcome::Proceed | Outcome::Fail(Fault::LostSync) => Ok(()),
            Outcome::Fail(fault) => Err(fault_error(fault)),
        }
    }

    /// Counts a mutating operation and says whether an injected fault hits it.
    fn plan(&mut self) -> io::Result<Outcome> {
        if self.freeze_at.is_some_and(|at| self.ops >= at) {
            return Err(io::Error::other("simulated power loss"));
        }
        let n = self.ops;
        self.ops += 1;
        Ok(match self.fault {
            Some((at, fault, persistent)) if n == at || (persistent && n > at) => {
                Outcome::Fail(fault)
            }
            _ => Outcome::Proceed,
        })
    }
}

fn fault_error(fault: Fault) -> io::Error {
    match fault {
        Fault::NoSpace => io::Error::from(io::ErrorKind::StorageFull),
        Fault::Eio | Fault::LostSync | Fault::ShortWrite(_) => io::Error::other("injected EIO"),
    }
}

/// The simulated file system. Clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

fn apply(bytes: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

impl SimVfs {
    /// An empty disk.
    pub fn new() -> Self {
        SimVfs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// From the `n`-th mutating operation on (counting from 0 at the disk's creation), every
    /// write, sync, truncate, create, rename and removal fails: the power is gone.
    pub fn freeze_after(&self, n: u64) {
        self.lock().freeze_at = Some(n);
    }
}

/// Fault injection, damage and inspection: for the crate's crash tests only (the campaign behind
/// `kvctl crash-test --simulate` and the fuzz targets cut the power, nothing more).
#[cfg(test)]
impl SimVfs {
    /// Makes mutating operation number `at` fail with `fault` (and every later one too if
    /// `persistent`).
    pub fn inject(&self, at: u64, fault: Fault, persistent: bool) {
        self.lock().fault = Some((at, fault, persistent));
    }

    /// How many threads wait on a counter of the shared page of some file.
    pub fn shared_waiters(&self) -> usize {
        let state = self.lock();
        state
            .inodes
            .values()
            .filter_map(|inode| inode.shared.as_ref())
            .map(|shared| shared.waiting.load(Ordering::SeqCst))
            .sum()
    }

    /// The files in the disk's namespace with their live bytes, in path order.
    pub fn contents(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let state = self.lock();
        let mut files: Vec<_> = state
            .live
            .iter()
            .map(|(p, ino)| (p.clone(), state.inodes[ino].live.clone()))
            .collect();
        files.sort();
        files
    }

    /// The files in the disk's namespace, with their sizes.
    pub fn files(&self) -> Vec<(PathBuf, usize)> {
        let state = self.lock();
        state
            .live
            .iter()
            .map(|(p, ino)| (p.clone(), state.inodes[ino].live.len()))
            .collect()
    }

    /// Changes the bytes of `path`, on the platters and in the cache alike (bit rot, a bad
    /// sector).
    pub fn damage(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.lock();
        if let Some(&ino) = state.live.get(path)
            && let Some(inode) = state.inodes.get_mut(&ino)
        {
            f(&mut inode.durable);
            inode.live = inode.durable.clone();
            inode.pending.clear();
        }
    }

    /// Reads (and mappings) performed so far.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Makes read number `at` (counting every `read_at` and `map` since the disk was created)
    /// fail with EIO, and every later one too if `persistent`: an unreadable sector.
    pub fn inject_read_error(&self, at: u64, persistent: bool) {
        self.lock().read_fault = Some((at, persistent));
    }

    /// Stops injecting faults (the disk "recovers").
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.fault = None;
        state.read_fault = None;
    }

    /// From now on `sync_data` reports success but persists nothing (a lying disk).
    pub fn lie_about_fsync(&self) {
        self.lock().fsync_lies = true;
    }

    /// From now on `sync_dir` reports success but persists nothing.
    pub fn lie_about_dir_sync(&self) {
        self.lock().dir_sync_lies = true;
    }

    /// Operations written but not yet synced (file writes and size changes, directory changes).
    pub fn pending(&self) -> usize {
        let state = self.lock();
        state
            .inodes
            .values()
            .map(|i| i.pending.len())
            .sum::<usize>()
            + state.pending.len()
    }

    /// The disk after a power cut that keeps exactly the pending operations whose bit is set in
    /// `mask` (numbered as files by inode number, then the directory changes; see
    /// [`SimVfs::pending`]). For an exhaustive pass over small workloads.
    pub fn crash_keeping(&self, mask: u64) -> SimVfs {
        let mut bit = 0u32;
        let mut next = || {
            let keep = mask >> bit & 1 == 1;
            bit += 1;
            keep
        };
        self.image(|n| (0..n).map(|_| next()).collect(), Lost::Nothing)
    }
}

impl SimVfs {
    /// The disk as it would be found after a power cut now: what was synced, plus what
    /// `model` lets survive of the rest, chosen by `seed`. Locks and open files are gone.
    pub fn crash(&self, seed: u64, model: CrashModel) -> SimVfs {
        let rng = std::cell::RefCell::new(Rng::new(seed));
        let keep = |n: usize| -> Vec<bool> {
            let mut rng = rng.borrow_mut();
            match model {
                CrashModel::Subset => (0..n).map(|_| rng.below(2) == 0).collect(),
                CrashModel::Prefix | CrashModel::Torn | CrashModel::SizeOnly => {
                    let k = rng.below(n as u64 + 1) as usize;
                    (0..n).map(|i| i < k).collect()
                }
            }
        };
        let lost = match model {
            CrashModel::Prefix | CrashModel::Subset => Lost::Nothing,
            CrashModel::Torn => Lost::TornWrite(&rng),
            CrashModel::SizeOnly => Lost::SizeChanges,
        };
        self.image(keep, lost)
    }

    /// Builds a crash image: `keep(n)` says which of a file's (or the directory's) `n` pending
    /// operations persist; `lost` what remains of the others.
    fn image(&self, mut keep: impl FnMut(usize) -> Vec<bool>, lost: Lost<'_>) -> SimVfs {
        let state = self.lock();
        let mut inodes = HashMap::new();
        let mut order: Vec<&u64> = state.inodes.keys().collect();
        order.sort();
        for &ino in order {
            let inode = &state.inodes[&ino];
            let mut bytes = inode.durable.clone();
            let kept = keep(inode.pending.len());
            let mut lost = lost;
            for (op, kept) in inode.pending.iter().zip(kept) {
                if kept {
                    apply(&mut bytes, op);
                    continue;
                }
                match (lost, op) {
                    (Lost::TornWrite(rng), FileOp::Write { offset, data }) => {
                        // The first lost write is torn: some sectors made it, the rest reads as
                        // what was there before, zeros or garbage.
                        lost = Lost::Nothing;
                        let mut rng = rng.borrow_mut();
                        let sector = if rng.below(2) == 0 { 512 } else { 4096 };
                        let sectors = data.len().div_ceil(sector).max(1) as u64;
                        let cut = ((rng.below(sectors) as usize) * sector).min(data.len());
                        let mut part = data[..cut].to_vec();
                        match rng.below(3) {
                            0 => {
                                let old = bytes.get(*offset as usize + cut..).unwrap_or(&[]);
                                let n = old.len().min(data.len() - cut);
                                part.extend_from_slice(&old[..n]);
                            }
                            1 => part.resize(data.len(), 0),
                            _ => part.extend((cut..data.len()).map(|_| rng.next_u64() as u8)),
                        }
                        apply(
                            &mut bytes,
                            &FileOp::Write {
                                offset: *offset,
                                data: part,
                            },
                        );
                    }
                    (Lost::SizeChanges, FileOp::Write { offset, data }) => {
                        let end = *offset as usize + data.len();
                        if bytes.len() < end {
                            bytes.resize(end, 0);
                        }
                    }
                    (Lost::SizeChanges, FileOp::SetLen(len)) => bytes.resize(*len as usize, 0),
                    _ => {}
                }
            }
            let inode = Inode {
                live: bytes.clone(),
                durable: bytes,
                ..Inode::default()
            };
            inodes.insert(ino, inode);
        }
        let mut names = state.durable.clone();
        let mut dirs = state.dirs.clone();
        let kept = keep(state.pending.len());
        for (op, kept) in state.pending.iter().zip(kept) {
            if kept {
                op.apply(&mut names);
            } else if let DirOp::MoveDir { from, to } = op {
                // Directories exist at once in this model; a lost move puts them back.
                dirs = dirs
                    .into_iter()
                    .map(|d| moved(&d, to, from).unwrap_or(d))
                    .collect();
            }
        }
        let reachable: BTreeSet<u64> = names.values().copied().collect();
        inodes.retain(|ino, _| reachable.contains(ino));
        SimVfs {
            state: Arc::new(Mutex::new(State {
                inodes,
                live: names.clone(),
                durable: names,
                pending: Vec::new(),
                dirs,
                next_ino: state.next_ino,
                ops: 0,
                freeze_at: None,
                fsync_lies: false,
                dir_sync_lies: false,
                fault: None,
                reads: 0,
                read_fault: None,
            })),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut state = self.lock();
        let existing = state.live.get(path).copied();
        let ino = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ));
            }
            (Some(ino), _) => ino,
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(not_found(path)),
            (None, OpenMode::ReadWriteCreate | OpenMode::CreateNew) => {
                state.mutate()?;
                let ino = state.next_ino;
                state.next_ino += 1;
                state.inodes.insert(ino, Inode::default());
                state.live.insert(path.to_owned(), ino);
                state.pending.push(DirOp::Link {
                    path: path.to_owned(),
                    ino,
                });
                ino
            }
        };
        let seen_errors = state.inodes[&ino].write_errors;
        Ok(Arc::new(SimFile {
            vfs: self.clone(),
            ino,
            held: Mutex::new(None),
            seen_errors: AtomicU64::new(seen_errors),
        }))
    }

    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        let state = self.lock();
        Ok(if state.dirs.contains(path) {
            Some(EntryKind::Dir)
        } else if state.live.contains_key(path) {
            Some(EntryKind::File)
        } else {
            None
        })
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Directories are durable at once: the engine syncs a new store's parent anyway, and
        // the interesting losses are of files and renames.
        let mut state = self.lock();
        state.mutate()?;
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.lock();
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.dirs.contains(from) {
            return rename_dir(&mut state, from, to);
        }
        state.mutate()?;
        let ino = state.live.remove(from).ok_or_else(|| not_found(from))?;
        state.live.insert(to.to_owned(), ino);
        // Atomic, but durable only after a directory sync: both halves in one step.
        state.pending.push(DirOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            ino,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.mutate()?;
        state.live.remove(path).ok_or_else(|| not_found(path))?;
        state.pending.push(DirOp::Unlink {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.mutate()?;
        if state.dir_sync_lies {
            return Ok(());
        }
        let (done, rest): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut state.pending)
            .into_iter()
            .partition(|op| op.parent() == Some(dir));
        for op in done {
            op.apply(&mut state.durable);
        }
        state.pending = rest;
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        if state.live.keys().any(|p| p.starts_with(path))
            || state.dirs.iter().any(|d| d.parent() == Some(path))
        {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                path.display().to_string(),
            ));
        }
        state.mutate()?;
        state.dirs.remove(path);
        Ok(())
    }

    fn network_filesystem(&self, _dir: &Path) -> io::Result<Option<&'static str>> {
        Ok(None)
    }
}

/// Renames directory `from` to `to` (which must not exist, or be an empty directory), as one
/// step that is durable after a sync of `to`'s parent.
fn rename_dir(state: &mut State, from: &Path, to: &Path) -> io::Result<()> {
    if state.live.keys().any(|p| p.starts_with(to)) || state.live.contains_key(to) {
        return Err(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            to.display().to_string(),
        ));
    }
    state.mutate()?;
    let op = DirOp::MoveDir {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    op.apply(&mut state.live);
    state.dirs = std::mem::take(&mut state.dirs)
        .into_iter()
        .map(|d| moved(&d, from, to).unwrap_or(d))
        .collect();
    state.pending.push(op);
    Ok(())
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    ino: u64,
    /// The lock this open file holds, if any.
    held: Mutex<Option<LockKind>>,
    /// The inode's writeback errors this open file has reported (or that predate its opening).
    seen_errors: AtomicU64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.vfs.lock();
        f(&mut state, self.ino)
    }
}

impl SimFile {
    fn release(&self, held: &mut Option<LockKind>) {
        if let Some(kind) = held.take()
            && let Some(inode) = self.vfs.lock().inodes.get_mut(&self.ino)
        {
            match kind {
                LockKind::Shared => inode.shared_holders -= 1,
                LockKind::Exclusive => inode.exclusive_held = false,
            }
        }
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.release(&mut held);
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|state, ino| {
            state.read()?;
            let live = &state.inodes[&ino].live;
            let start = (offset as usize).min(live.len());
            let n = buf.len().min(live.len() - start);
            buf[..n].copy_from_slice(&live[start..start + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|state, ino| {
            let mut data = buf.to_vec();
            let mut result = Ok(());
            match state.plan()? {
                Outcome::Proceed | Outcome::Fail(Fault::LostSync) => {}
                Outcome::Fail(Fault::Eio) => return Err(fault_error(Fault::Eio)),
                Outcome::Fail(Fault::NoSpace) => {
                    // A full disk may take part of the write before refusing the rest.
                    data.truncate(buf.len() / 2);
                    result = Err(fault_error(Fault::NoSpace));
                }
                Outcome::Fail(fault @ Fault::ShortWrite(kept)) => {
                    data.truncate(match kept {
                        Kept::FirstByte => 1,
                        Kept::AllButLast => buf.len().saturating_sub(1),
                    });
                    result = Err(fault_error(fault));
                }
            }
            let op = FileOp::Write { offset, data };
            let inode = state
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| io::Error::other("stale file"))?;
            apply(&mut inode.live, &op);
            inode.pending.push(op);
            result
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|state, ino| Ok(state.inodes[&ino].live.len() as u64))
    }

    fn is_unlinked(&self) -> io::Result<bool> {
        self.with(|state, ino| Ok(!state.live.values().any(|&i| i == ino)))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|state, ino| {
            state.mutate()?;
            let inode = state
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| io::Error::other("stale file"))?;
            apply(&mut inode.live, &FileOp::SetLen(len));
            inode.pending.push(FileOp::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, ino| {
            let outcome = state.plan()?;
            let lies = state.fsync_lies;
            let inode = state
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| io::Error::other("stale file"))?;
            // Errors of writeback started through other descriptors, not yet reported here.
            let unseen = inode.write_errors > self.seen_errors.load(Ordering::Relaxed);
            match outcome {
                Outcome::Fail(Fault::LostSync) => {
                    // Linux may drop dirty pages after a writeback error: the unsynced data is
                    // gone from the cache too, and this descriptor's next fdatasync has nothing
                    // to report.
                    inode.live = inode.durable.clone();
                    inode.pending.clear();
                    inode.write_errors += 1;
                    self.seen_errors
                        .store(inode.write_errors, Ordering::Relaxed);
                    Err(fault_error(Fault::LostSync))
                }
                Outcome::Fail(fault) => Err(fault_error(fault)),
                Outcome::Proceed if lies => Ok(()),
                Outcome::Proceed => {
                    inode.durable = inode.live.clone();
                    inode.pending.clear();
                    self.seen_errors
                        .store(inode.write_errors, Ordering::Relaxed);
                    if unseen {
                        Err(io::Error::other(
                            "EIO: an earlier writeback of this file failed",
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        })
    }

    fn lock(&self, kind: LockKind, wait: bool) -> io::Result<bool> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Like flock: taking a lock on an open file that holds one converts it.
        self.release(&mut held);
        loop {
            let taken = self.with(|state, ino| {
                let inode = state
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| io::Error::other("stale file"))?;
                let free = match kind {
                    LockKind::Shared => !inode.exclusive_held,
                    LockKind::Exclusive => !inode.exclusive_held && inode.shared_holders == 0,
                };
                if free {
                    match kind {
                        LockKind::Shared => inode.shared_holders += 1,
                        LockKind::Exclusive => inode.exclusive_held = true,
                    }
                }
                Ok(free)
            })?;
            if taken {
                *held = Some(kind);
                return Ok(true);
            }
            if !wait {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn unlock(&self) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.release(&mut held);
        Ok(())
    }

    fn map_shared(&self, writable: bool) -> io::Result<Arc<dyn SharedWords>> {
        self.with(|state, ino| {
            let inode = state
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| io::Error::other("stale file"))?;
            if (inode.live.len() as u64) < SHARED_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than the shared page",
                ));
            }
            let shared = inode
                .shared
                .get_or_insert_with(|| Arc::new(SimShared::new()));
            Ok(if writable {
                Arc::clone(shared) as Arc<dyn SharedWords>
            } else {
                Arc::new(ReadOnlyShared(Arc::clone(shared))) as Arc<dyn SharedWords>
            })
        })
    }

    fn map(&self, size: u64) -> io::Result<Arc<dyn Mapping>> {
        // Mapped files (snapshots) are immutable, so a copy is as good as a mapping.
        self.with(|state, ino| {
            state.read()?;
            let live = &state.inodes[&ino].live;
            if live.len() as u64 != size {
                return Err(io::Error::other("mapping a file whose size changed"));
            }
            Ok(Arc::new(SimMapping(live.clone())) as Arc<dyn Mapping>)
        })
    }
}

#[derive(Debug)]
struct SimMapping(Vec<u8>);

impl Mapping for SimMapping {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}
