//! Compaction: merging the runs into the key-range partitions, one partition at a time, so that
//! reads look past few runs and the extra disk a compaction needs stays about one partition.
//!
//! The protocol (DESIGN.md, "Flush and compaction"), each step crash-safe by the recovery rule:
//! 1. Take the runs `R` of the newest manifest, newest first.
//! 2. For each partition in key order whose range `R` overlaps: merge `R`'s entries in that
//!    range over the partition's (the newest entry of a key wins; tombstones are dropped, since
//!    nothing lies below a partition), writing new `part-<id>` files durably, split at
//!    `Options::partition_bytes`. Install a manifest that names them in the old one's place
//!    (the runs stay: they hold the same or newer entries, and readers take runs first, so no
//!    answer changes), then remove the old partition.
//! 3. Install a manifest without `R` (runs flushed meanwhile stay), and remove `R`'s files.
//!
//! One compaction runs at a time across processes (`LOCK.compaction`); flushes go on meanwhile,
//! each install building on the newest manifest (`tables::Store::install`).

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::layout::{list_store, part_name};
use crate::locking::CompactionLock;
use crate::sorted::{Cursor, SortedFile, SortedWriter, Stream};
use crate::sync::lock;
use crate::view::Tables;

use super::Store;
use super::compactor::Compactor;
use super::tables::OpenFiles;

/// One compaction at a time, and what runs and stops them.
pub(crate) struct CompactionState {
    /// Held for the whole of a compaction: one at a time in this handle (the compaction lock
    /// file does the same across handles).
    pub(crate) one_at_a_time: Mutex<()>,
    /// `LOCK.compaction`.
    pub(crate) lock: CompactionLock,
    /// Asks a running compaction to give up (the handle is closing).
    pub(crate) cancel: AtomicBool,
    /// The background flush and compaction thread.
    pub(crate) compactor: Mutex<Compactor>,
}

impl CompactionState {
    /// `background`: whether a thread may flush and compact when the triggers fire.
    pub(crate) fn new(lock: CompactionLock, background: bool) -> Self {
        CompactionState {
            one_at_a_time: Mutex::new(()),
            lock,
            cancel: AtomicBool::new(false),
            compactor: Mutex::new(Compactor::new(background)),
        }
    }
}

/// How often (in entries) the merge reports progress and checks for cancellation.
const PROGRESS_EVERY: u64 = 4096;

impl Store {
    /// Whether the runs this handle reads should be merged into the partitions: more than
    /// `max_runs` of them, or together over `compaction_ratio` × the partitions.
    pub(crate) fn compaction_due(&self) -> bool {
        let tables = Arc::clone(&self.applied.read().tables);
        let (runs, parts) = tables.bytes();
        !tables.runs.is_empty()
            && (tables.runs.len() > self.options.max_runs
                || runs as f64 > self.options.compaction_ratio * parts as f64)
    }

    /// Compacts if the trigger still holds once this thread has the compaction to itself, and no
    /// other process is compacting.
    pub(crate) fn compact_if_due(&self) -> Result<()> {
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(false)? else {
            return Ok(());
        };
        self.refresh()?;
        if self.compaction_due() {
            self.compact_locked(|_, _| {})?;
        }
        Ok(())
    }

    /// Flushes the memtable, then merges every run into the partitions (waiting for a running
    /// flush or compaction, here or in another process, to finish first).
    pub(crate) fn compact(&self, progress: impl FnMut(u64, u64)) -> Result<()> {
        self.flush_memtable()?;
        let _one_at_a_time = lock(&self.compaction.one_at_a_time);
        let Some(_across_processes) = self.compaction.lock.acquire(true)? else {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        };
        // Start from the newest manifest: another process may have compacted since this handle
        // last looked, and removed files its view is built on.
        self.refresh()?;
        self.compact_locked(progress)
    }

    fn compact_locked(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let tables = Arc::clone(&self.applied.read().tables);
        if tables.runs.is_empty() {
            return Ok(());
        }
        let run_ids = tables.manifest.runs.clone();
        let total: u64 = tables
            .runs
            .iter()
            .chain(&tables.parts)
            .map(|f| f.len())
            .sum();
        let vfs = self.options.vfs.as_ref();
        // Ids only grow: past every partition the manifest names and any a crashed compaction
        // left behind.
        let listing = list_store(vfs, &self.dir)?;
        let mut next_id = listing
            .parts
            .iter()
            .map(|id| id + 1)
            .fold(tables.manifest.next_part_id, u64::max);
        let mut done = 0u64;
        let slots = tables.parts.len().max(1);
        for slot in 0..slots {
            if self.compaction.cancel.load(Ordering::Relaxed) {
                return Ok(()); // the handle is closing: the runs still hold everything
            }
            let (lo, hi) = slot_range(&tables, slot);
            let old = tables.parts.get(slot);
            if !runs_overlap(&tables.runs, lo.as_ref(), hi.as_ref())? {
                done += old.map_or(0, |p| p.len());
                continue;
            }
            let Some(written) = self.merge_slot(
                &tables.runs,
                old,
                lo.as_ref(),
                hi.as_ref(),
                &mut next_id,
                |n| progress(done + n, total),
            )?
            else {
                return Ok(()); // cancelled
            };
            done += old.map_or(0, |p| p.len());
            let old_id = tables.manifest.parts.get(slot).copied();
            let new_ids: Vec<u64> = written.iter().map(|(id, _)| *id).collect();
            let new_files: OpenFiles = written
                .into_iter()
                .map(|(id, file)| ((false, id), file))
                .collect();
            let installed = self.install(
                &new_files,
                |m| {
                    let at = match old_id {
                        Some(old_id) => m.parts.iter().position(|&p| p == old_id).ok_or_else(
                            || {
                                Error::corruption(
                                    &self.dir,
                                    0,
                                    format!("partition {old_id} left the manifest mid-compaction"),
                                )
                            },
                        )?,
                        None => 0,
                    };
                    m.parts.splice(at..at + usize::from(old_id.is_some()), new_ids);
                    m.next_part_id = m.next_part_id.max(next_id);
                    Ok(())
                },
                |_| {},
            )?;
            self.remove_unnamed(&installed)?;
        }
        let installed = self.install(
            &OpenFiles::new(),
            |m| {
                m.runs.retain(|id| !run_ids.contains(id));
                m.next_part_id = m.next_part_id.max(next_id);
                Ok(())
            },
            |_| {},
        )?;
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.remove_unnamed(&installed)?;
        progress(total, total);
        Ok(())
    }

    /// Writes `old` (or nothing) overlaid with the runs' entries in `[lo, hi)` as new partition
    /// files, tombstones dropped, each at most about `partition_bytes`. Returns their ids and
    /// open files once durable (none if every key in the range is deleted), or `None` if
    /// cancelled.
    fn merge_slot(
        &self,
        runs: &[Arc<SortedFile>],
        old: Option<&Arc<SortedFile>>,
        lo: Option<&Bytes>,
        hi: Option<&Bytes>,
        next_id: &mut u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Option<Vec<(u64, Arc<SortedFile>)>>> {
        let vfs = self.options.vfs.as_ref();
        let lower = lo.map_or(Bound::Unbounded, |k| Bound::Included(&k[..]));
        let upper = hi.map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
        let mut sources: Vec<Source> = runs
            .iter()
            .map(|run| {
                Ok(Source::Run {
                    cursor: run.cursor(lower, upper, true)?,
                    head: None,
                })
            })
            .collect::<Result<_>>()?;
        if let Some(old) = old {
            sources.push(Source::Part {
                stream: old.stream(),
                head: None,
            });
        }
        for source in &mut sources {
            source.advance(hi)?;
        }
        // The filter of each file is sized for the entries a partition of `partition_bytes`
        // holds at the inputs' average entry size (or fewer, if the inputs hold fewer).
        let inputs = || runs.iter().chain(old);
        let expected: u64 = inputs().map(|f| f.len()).sum();
        let input_bytes: u64 = inputs().map(|f| f.file_bytes()).sum();
        let average = (input_bytes / expected.max(1)).max(1);
        let per_file = expected.min(self.options.partition_bytes / average * 9 / 8 + 16);
        let mut written = Vec::new();
        let mut out: Option<SortedWriter> = None;
        let mut count = 0u64;
        let result = (|| -> Result<bool> {
            loop {
                // The smallest key among the heads; the first source holding it (the newest)
                // wins, and every other source's entry for it is skipped.
                let Some(key) = sources
                    .iter()
                    .filter_map(|s| s.head().map(|(k, _)| k))
                    .min()
                    .cloned()
                else {
                    return Ok(true);
                };
                let mut winner: Option<Option<Bytes>> = None;
                for source in &mut sources {
                    if source.head().is_some_and(|(k, _)| *k == key) {
                        let value = source.take();
                        if winner.is_none() {
                            winner = Some(value);
                        }
                        source.advance(hi)?;
                    }
                }
                count += 1;
                if count.is_multiple_of(PROGRESS_EVERY) {
                    if self.compaction.cancel.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    progress(count);
                }
                let Some(Some(value)) = winner else {
                    continue; // a tombstone: nothing below a partition to hide
                };
                if out
                    .as_ref()
                    .is_some_and(|w| w.bytes_written() >= self.options.partition_bytes)
                    && let Some(full) = out.take()
                {
                    let id = *next_id - 1;
                    written.push((id, Arc::new(SortedFile::open(vfs, &full.finish()?)?)));
                }
                if out.is_none() {
                    let id = *next_id;
                    *next_id += 1;
                    out = Some(SortedWriter::create(
                        vfs,
                        &self.dir,
                        part_name(id),
                        id,
                        per_file,
                    )?);
                }
                if let Some(w) = out.as_mut() {
                    w.add(&key, Some(&value))?;
                }
            }
        })();
        match result {
            Ok(true) => {
                if let Some(last) = out.take() {
                    let id = *next_id - 1;
                    written.push((id, Arc::new(SortedFile::open(vfs, &last.finish()?)?)));
                }
                Ok(Some(written))
            }
            Ok(false) | Err(_) => {
                if let Some(w) = out.take() {
                    w.abandon();
                }
                // Files already finished are named by no manifest: the next clean-up removes
                // them.
                result.map(|_| None)
            }
        }
    }
}

/// The key range of partition `slot`: from its first key (unbounded for the first) up to the
/// next partition's first key (unbounded for the last).
fn slot_range(tables: &Tables, slot: usize) -> (Option<Bytes>, Option<Bytes>) {
    let first_key = |i: usize| {
        tables.parts.get(i).and_then(|p| {
            p.first_key_in_file()
                .ok()
                .flatten()
                .map(Bytes::from)
        })
    };
    let lo = if slot == 0 { None } else { first_key(slot) };
    let hi = first_key(slot + 1);
    (lo, hi)
}

/// Whether any run holds an entry in `[lo, hi)`.
fn runs_overlap(runs: &[Arc<SortedFile>], lo: Option<&Bytes>, hi: Option<&Bytes>) -> Result<bool> {
    let lower = lo.map_or(Bound::Unbounded, |k| Bound::Included(&k[..]));
    let upper = hi.map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
    for run in runs {
        if let Some((key, _)) = run.cursor(lower, upper, true)?.next_entry()?
            && hi.is_none_or(|h| key < *h)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One input of a partition's merge, with its next entry (in the range) ready.
enum Source {
    /// A run, read through its map within the range.
    Run {
        cursor: Cursor,
        head: Option<(Bytes, Option<Bytes>)>,
    },
    /// The old partition, read whole with `pread` (see [`SortedFile::stream`]).
    Part {
        stream: Stream,
        head: Option<(Bytes, Option<Bytes>)>,
    },
}

impl Source {
    fn head(&self) -> Option<&(Bytes, Option<Bytes>)> {
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => head.as_ref(),
        }
    }

    /// Takes the head's value (the caller advances next).
    fn take(&mut self) -> Option<Bytes> {
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => head.take().and_then(|h| h.1),
        }
    }

    /// Reads the next entry below `hi` into the head.
    fn advance(&mut self, hi: Option<&Bytes>) -> Result<()> {
        let next = match self {
            Source::Run { cursor, .. } => cursor.next_entry()?,
            Source::Part { stream, .. } => stream
                .next_entry()?
                .map(|(k, v)| (Bytes::from(k), v.map(Bytes::from))),
        };
        let next = next.filter(|(k, _)| hi.is_none_or(|h| k < h));
        match self {
            Source::Run { head, .. } | Source::Part { head, .. } => *head = next,
        }
        Ok(())
    }
}
