//! Following the log as other handles append to it: where a handle's view has read up to, and
//! reading the committed records after that point, from one log into the next.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::bytes::Bytes;
use crate::db::{Inner, lock};
use crate::error::{Error, Result};
use crate::format::{OpRef, Record, WAL_HEADER_LEN};
use crate::io::{OpenMode, Vfs, VfsFile};
use crate::layout::wal_name;
use crate::locking::{COMMITTED_SEQ, SNAPSHOT_GENERATION};
use crate::recovery;
use crate::wal::{self, Stop};

/// How far a view has applied the log.
#[derive(Clone, Debug)]
pub struct Position {
    /// The generation of the log being read.
    pub generation: u64,
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
    /// The start of a new log of `generation` whose first record is `next_seq`.
    pub fn start_of(generation: u64, path: PathBuf, file: Arc<dyn VfsFile>, next_seq: u64) -> Self {
        Position {
            generation,
            path,
            file,
            offset: WAL_HEADER_LEN as u64,
            next_seq,
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
    mut apply: impl FnMut(&Record<'_>),
) -> Result<Followed> {
    while position.next_seq < target {
        let scan = wal::scan(
            position.file.as_ref(),
            &position.path,
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
            return Err(Error::corruption(&position.path, offset, reason));
        }
        // The log ends cleanly before the target: the rest was written to the next one.
        let generation = position.generation + 1;
        let path = dir.join(wal_name(generation));
        let (file, header) = match wal::open(vfs, &path, OpenMode::Read) {
            Ok(opened) => opened,
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(Followed::Gone);
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
        *position = Position::start_of(generation, path, file, header.first_seq);
    }
    Ok(Followed::Reached)
}

impl Inner {
    /// Before an operation: if another handle committed or compacted since this one last looked
    /// (the shared hint moved: two atomic loads), applies what changed. A read therefore sees
    /// every write acknowledged anywhere before it started.
    pub(crate) fn refresh(&self) -> Result<()> {
        if !self.store_lock.is_shared() {
            return Ok(());
        }
        let seq = self.store_lock.hint(COMMITTED_SEQ);
        let snapshot = self.store_lock.hint(SNAPSHOT_GENERATION);
        if seq == self.seen_seq.load(Ordering::Acquire)
            && snapshot == self.seen_snapshot.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let ours = self
            .read_state()
            .snapshot
            .as_ref()
            .map_or(0, |s| s.generation());
        if snapshot > ours {
            // Another process compacted: start from its snapshot rather than keep the logs it
            // replaced in memory.
            let mut position = lock(&self.position);
            let target = seq.max(position.next_seq);
            self.reload(&mut position, target)?;
        } else {
            self.catch_up(seq)?;
        }
        self.seen_seq.store(seq, Ordering::Release);
        self.seen_snapshot.store(snapshot, Ordering::Release);
        Ok(())
    }

    /// Applies the committed log up to (not including) sequence number `target` to the view.
    pub(crate) fn catch_up(&self, target: u64) -> Result<()> {
        let mut position = lock(&self.position);
        if position.next_seq >= target {
            return Ok(());
        }
        let mut moved = position.clone();
        let mut ops: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut own = lock(&self.own_records);
        while moved.next_seq < target {
            // This handle's own records are applied from memory, when they are where the log
            // position says the next record is.
            if let Some(record) = own.remove(&moved.next_seq)
                && record.generation == moved.generation
                && record.offset == moved.offset
            {
                if ops.is_empty() {
                    ops = record.ops; // the usual case: one record of ours, taken as it is
                } else {
                    ops.extend(record.ops);
                }
                moved.offset += record.len;
                moved.next_seq += 1;
                continue;
            }
            // Others' records (and any of ours not where expected) come from the log, up to
            // the next record of ours.
            let next_own = own
                .range(moved.next_seq + 1..)
                .next()
                .map_or(target, |(&seq, _)| seq.min(target));
            let stop = next_own.max(moved.next_seq + 1);
            let followed = read_until(
                self.options.vfs.as_ref(),
                &self.dir,
                &mut moved,
                stop,
                |record| {
                    ops.extend(record.ops().map(|op| match op {
                        OpRef::Put(key, value) => {
                            let (key, value) = Bytes::pair(key, value);
                            (key, Some(value))
                        }
                        OpRef::Delete(key) => (Bytes::from(key), None),
                    }));
                },
            )?;
            if followed == Followed::Gone {
                own.retain(|&seq, _| seq >= target);
                drop(own);
                return self.reload(&mut position, target);
            }
        }
        // Anything older is applied (or superseded by a reload).
        own.retain(|&seq, _| seq >= moved.next_seq);
        drop(own);
        // Whether a key exists below the memtable can take a disk read: find out under the read
        // lock, not while readers wait for the write lock. Nothing but this (under `position`)
        // changes the lower layers' answers.
        let in_base: Vec<bool> = {
            let state = self.read_state();
            ops.iter()
                .map(|(key, _)| state.base_contains(key))
                .collect::<Result<_>>()?
        };
        let mut state = self.write_state();
        for ((key, value), known) in ops.into_iter().zip(in_base) {
            state.apply(key, value, known);
        }
        *position = moved;
        Ok(())
    }

    /// Rebuilds the view from the newest snapshot and the logs after it, up to `target`: when a
    /// log this handle needs was compacted away, or another process installed a new snapshot.
    pub(crate) fn reload(&self, position: &mut Position, target: u64) -> Result<()> {
        let loaded = recovery::load(
            self.options.vfs.as_ref(),
            &self.dir,
            target,
            false,
            None,
            None,
        )?;
        *self.write_state() = loaded.view;
        *position = loaded.position;
        Ok(())
    }
}
