//! Flush: writing the memtable out as a run, so that memory, the log and the time to reopen stay
//! bounded by `Options::memtable_bytes` whatever the store's size.
//!
//! The protocol (DESIGN.md, "Flush and compaction"), each step crash-safe by the recovery rule:
//! 1. **Cut**, holding the writer and `LOCK`: catch up on the whole log, sync `wal-n`, create
//!    `wal-(n+1)` durably (every process's appends go there from now on), and freeze the
//!    memtable, which holds segments up to `n`. Writers wait only for this.
//! 2. **Write** `run-<n>` from the frozen memtable, tombstones kept (they hide older values in
//!    the files below): `.tmp`, sync, rename, directory sync. Holding no lock readers or writers
//!    need.
//! 3. **Install** `MANIFEST-<m+1>`: the run on top, replay from `wal-(n+1)`; readers switch to
//!    it, and the shared hint tells other processes, which reload.
//! 4. **Clean up**, holding `LOCK`: remove `wal-n` and older, and the older manifests.
//!
//! One flush runs at a time across processes (`LOCK.flush`).

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::format::{LOG_FORMAT_VERSION, WAL_HEADER_LEN, WalHeader};
use crate::io::OpenMode;
use crate::layout::{run_name, wal_name};
use crate::locking::CompactionLock;
use crate::memtable::Memtable;
use crate::sorted::{SortedFile, SortedWriter};
use crate::sync::lock;
use crate::view::Tables;
use crate::wal::{self, LogWriter, Position};

use super::Store;
use super::tables::OpenFiles;

/// The longest a commit waits for a flush to make room in the memtable.
const MAX_WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// One flush at a time.
pub(crate) struct FlushState {
    /// Held for the whole of a flush in this handle (`lock` does the same across handles).
    pub(crate) one_at_a_time: Mutex<()>,
    /// `LOCK.flush`.
    pub(crate) lock: CompactionLock,
}

impl FlushState {
    pub(crate) fn new(lock: CompactionLock) -> Self {
        FlushState {
            one_at_a_time: Mutex::new(()),
            lock,
        }
    }
}

/// What a cut hands to the write.
struct Cut {
    /// The writes of the segments being flushed.
    frozen: Arc<Memtable>,
    /// The last of those segments: the run's id.
    segment: u64,
    /// The sorted files below the frozen memtable as of the cut.
    below: Arc<Tables>,
}

impl Store {
    /// Whether the memtable has reached `Options::memtable_bytes`.
    pub(crate) fn flush_due(&self) -> bool {
        let state = self.applied.read();
        state.memtable.heap_bytes() as u64 >= self.options.memtable_bytes
    }

    /// Before a commit: holds the writer back while the memtable (with the one being flushed) is
    /// at twice `memtable_bytes`, until a flush, here or in another process, makes room. This is
    /// what bounds memory when writers outpace the flush. Only while a background thread can
    /// flush (otherwise nothing would make room), and for at most [`MAX_WRITE_STALL`]: a flush
    /// that keeps failing (a full disk) must not stop every write.
    pub(crate) fn wait_for_memtable_room(&self) -> Result<()> {
        let bound = 2 * self.options.memtable_bytes;
        let started = std::time::Instant::now();
        loop {
            let held = {
                let state = self.applied.read();
                state.memtable.heap_bytes() + state.frozen.as_ref().map_or(0, |f| f.heap_bytes())
            };
            if (held as u64) < bound
                || !self.background_flush_allowed()
                || started.elapsed() >= MAX_WRITE_STALL
            {
                return Ok(());
            }
            self.wake_compactor();
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.refresh()?;
        }
    }

    /// Flushes if the memtable is still over its bound once this thread has the flush to itself
    /// and has caught up; not at all if another process is flushing.
    pub(crate) fn flush_if_due(&self) -> Result<()> {
        let _one_at_a_time = lock(&self.flush.one_at_a_time);
        let Some(_across_processes) = self.flush.lock.acquire(false)? else {
            return Ok(());
        };
        self.refresh()?;
        if self.flush_due() {
            self.flush_locked()?;
        }
        Ok(())
    }

    /// Flushes whatever the log holds now (waiting for a running flush, here or in another
    /// process, to finish first). Returns whether there was anything to flush.
    pub(crate) fn flush_memtable(&self) -> Result<bool> {
        let _one_at_a_time = lock(&self.flush.one_at_a_time);
        let Some(_across_processes) = self.flush.lock.acquire(true)? else {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        };
        self.refresh()?;
        self.flush_locked()
    }

    /// Holding the flush locks: cut, write, install, clean up.
    fn flush_locked(&self) -> Result<bool> {
        let Some(cut) = self.cut()? else {
            return Ok(false);
        };
        // What the files hold of each key the frozen memtable does not know yet, for the live
        // count the manifest records (read through the maps; writers do not wait for it).
        let tables = &cut.below;
        cut.frozen
            .resolve(|key| Ok(tables.get(key)?.flatten().is_some()))?;
        let live_keys = cut.frozen.count_over(tables.manifest.live_keys);
        let vfs = self.options.vfs.as_ref();
        if cut.frozen.len() == 0 {
            // Only empty records (a close's vouching record, say): nothing for a run to hold,
            // but replay can start after them.
            let installed = self.install(
                &OpenFiles::new(),
                |m| {
                    m.log_start = m.log_start.max(cut.segment + 1);
                    m.live_keys = live_keys;
                    Ok(())
                },
                |view| view.frozen = None,
            )?;
            self.remove_unnamed(&installed)?;
            return Ok(true);
        }
        let mut out = SortedWriter::create(
            vfs,
            &self.dir,
            run_name(cut.segment),
            cut.segment,
            cut.frozen.len() as u64,
        )?;
        let written = (|| {
            // Every tombstone is written, even one over nothing the cut's files hold: a flush
            // whose install failed after its manifest became durable left a run below this
            // one that the cut's files do not show, and this run (which holds all of that one's
            // writes too) must hide it whole.
            for (key, value) in cut.frozen.range(Bound::Unbounded, Bound::Unbounded) {
                out.add(&key, value.as_deref())?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            out.abandon();
            return Err(e);
        }
        let path = out.finish()?;
        let run = Arc::new(SortedFile::open(vfs, &path)?);
        let new_files: OpenFiles = [((true, cut.segment), run)].into_iter().collect();
        let installed = self.install(
            &new_files,
            |m| {
                if m.log_start > cut.segment {
                    return Err(Error::corruption(
                        &self.dir,
                        0,
                        format!(
                            "another flush installed segments up to {} while this one flushed \
                             up to {}",
                            m.log_start, cut.segment
                        ),
                    ));
                }
                m.runs.insert(0, cut.segment);
                m.log_start = cut.segment + 1;
                m.live_keys = live_keys;
                Ok(())
            },
            |view| view.frozen = None,
        )?;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.remove_unnamed(&installed)?;
        Ok(true)
    }

    /// Step 1: starts segment `n + 1` and freezes everything before it. `None` if the log holds
    /// nothing to flush.
    fn cut(&self) -> Result<Option<Cut>> {
        let mut writer = lock(&self.commit.writer);
        let guard = self.store_lock.exclusive()?;
        self.follow_the_log(&mut writer, &guard)?;
        self.settle(&writer)?;
        let (unfinished, log_start) = {
            let state = self.applied.read();
            (state.frozen.is_some(), state.tables.manifest.log_start)
        };
        if writer.end() == WAL_HEADER_LEN as u64 && writer.generation() == log_start && !unfinished
        {
            return Ok(None); // the runs already hold everything
        }
        // With Buffered durability the old log's tail may still be in the page cache only; it
        // must be durable before any record of the new log can be, or a crash could leave a gap
        // in the sequence between the two.
        self.sync_file(writer.path(), writer.file())?;
        let segment = writer.generation();
        let header = WalHeader {
            version: LOG_FORMAT_VERSION,
            generation: segment + 1,
            first_seq: writer.next_seq(),
        };
        let vfs = self.options.vfs.as_ref();
        let path = self.dir.join(wal_name(header.generation));
        let created = wal::create(vfs, &self.dir, header).and_then(|_| {
            vfs.open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open", &path, e))
        });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // The new log may exist even though the cut failed. Appends go on into the old
                // log, so a stale new one would later claim an earlier sequence number and stop
                // the store from opening: take it away for certain, or stop appending.
                let tmp = self
                    .dir
                    .join(format!("{}.tmp", wal_name(header.generation)));
                let _ = vfs.remove_file(&tmp);
                let removed = match vfs.remove_file(&path) {
                    Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
                .and_then(|()| vfs.sync_dir(&self.dir));
                if let Err(undo) = removed {
                    self.poison.set(format!(
                        "a failed flush ({e}) left {} behind and removing it failed: {undo}",
                        path.display()
                    ));
                }
                return Err(e);
            }
        };
        *writer = LogWriter::new(
            path.clone(),
            Arc::clone(&file),
            header.version,
            header.generation,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            WAL_HEADER_LEN as u64,
        );
        let mut position = lock(&self.applied.position);
        let mut state = self.applied.write();
        // The next memtable's index starts at this one's size: a steady load fills it alike,
        // and each time a hash index grows it reads every key again (7 % of a bulk load's
        // instructions went to that).
        let expected = state.memtable.len();
        let memtable = state.retire_memtable(Memtable::with_capacity(expected));
        // A flush that failed after its cut left its frozen memtable behind: fold it in, since
        // the segments cut since then are in the live memtable.
        let frozen = match state.frozen.take() {
            Some(older) => Arc::new(older.overlaid_with(&memtable)),
            None => memtable,
        };
        state.frozen = Some(Arc::clone(&frozen));
        *position = Position::start_of(&header, path, file);
        state.next_seq = position.next_seq;
        let below = Arc::clone(&state.tables);
        drop(guard);
        Ok(Some(Cut {
            frozen,
            segment,
            below,
        }))
    }
}
