//! Watching a key prefix: the commits of every process, read from the log as they become
//! committed. A watcher is a reader of its own with a position in the log, like a handle
//! following other processes (`wal::follow`); it learns of new commits from the shared hint page.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::bytes::Bytes;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::format::OpRef;
use crate::io::OpenMode;
use crate::layout::list_store;
use crate::layout::wal_name;
use crate::locking::COMMITTED_SEQ;
use crate::sync::lock;
use crate::wal;
use crate::wal::{Followed, Position, read_until};

/// One change to a watched key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// `key` was set to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// `key` was deleted (whether or not it existed).
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &Bytes {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// One committed batch (a `put`, `delete`, [`Batch`](crate::Batch) or transaction), as seen by a
/// [`Watcher`]: its changes under the watched prefix, in the order they were written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Commit {
    /// The batch's sequence number in the store's log: commits arrive in increasing order.
    pub sequence: u64,
    /// Its changes under the prefix (never empty: batches that touch nothing under it are
    /// skipped).
    pub changes: Vec<Change>,
}

/// The changes under a key prefix, made by any handle in any process after
/// [`Db::watch_prefix`] returned, in commit order. A commit is delivered once it is committed
/// (durable, under the default durability), never before.
///
/// As an [`Iterator`], `next` blocks until a commit arrives; [`Watcher::try_next`] never blocks
/// and [`Watcher::next_timeout`] waits at most a given time. A watcher that falls behind by more
/// than one compaction (the logs it still needed were deleted) gets [`Error::WatchGap`] once,
/// saying which commits it missed, then continues with the oldest log that remains.
pub struct Watcher {
    db: Db,
    prefix: Vec<u8>,
    position: Position,
    /// Read and not yet delivered (and a gap, in its place).
    ready: VecDeque<Result<Commit>>,
}

/// The longest pause between two looks at the hint page while waiting.
const MAX_POLL: Duration = Duration::from_millis(5);

impl Db {
    /// Watches the keys that start with `prefix` (all keys for an empty prefix): see [`Watcher`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = sturdykv::Db::open(dir.path())?;
    /// let mut watcher = db.watch_prefix("user/")?;
    /// db.put("user/1", "ada")?;
    /// db.put("other", "ignored")?;
    /// let commit = watcher.next().unwrap()?;
    /// assert_eq!(commit.changes[0].key().as_ref(), b"user/1");
    /// # Ok::<(), sturdykv::Error>(())
    /// ```
    pub fn watch_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Watcher> {
        self.store.refresh()?;
        let position = lock(&self.store.applied.position).clone();
        Ok(Watcher {
            db: self.clone(),
            prefix: prefix.as_ref().to_vec(),
            position,
            ready: VecDeque::new(),
        })
    }
}

impl Watcher {
    /// The next commit under the prefix if one is already committed; never blocks.
    pub fn try_next(&mut self) -> Result<Option<Commit>> {
        if self.ready.is_empty() {
            self.read_committed()?;
        }
        self.ready.pop_front().transpose()
    }

    /// The next commit under the prefix, waiting at most `timeout` for one.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Commit>> {
        self.next_before(Some(Instant::now() + timeout))
    }

    /// The sequence number of the next commit this watcher will look at.
    pub fn next_sequence(&self) -> u64 {
        self.position.next_seq
    }

    fn next_before(&mut self, deadline: Option<Instant>) -> Result<Option<Commit>> {
        // Commits are noticed by polling one word of the shared hint page (an atomic load, no
        // system call), every 50 µs at first, backing off to every 5 ms while nothing happens.
        let mut pause = Duration::from_micros(50);
        loop {
            if let Some(commit) = self.try_next()? {
                return Ok(Some(commit));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            while self.db.store.store_lock.hint(COMMITTED_SEQ) <= self.position.next_seq {
                let now = Instant::now();
                let sleep = match deadline {
                    Some(d) if now >= d => return Ok(None),
                    Some(d) => pause.min(d - now),
                    None => pause,
                };
                std::thread::sleep(sleep);
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }

    /// Reads every record committed since the last look, keeping the commits under the prefix.
    fn read_committed(&mut self) -> Result<()> {
        let store = &self.db.store;
        let target = store.store_lock.hint(COMMITTED_SEQ);
        if target <= self.position.next_seq {
            return Ok(());
        }
        let prefix = &self.prefix;
        let ready = &mut self.ready;
        let followed = read_until(
            store.options.vfs.as_ref(),
            &store.dir,
            &mut self.position,
            target,
            |record| {
                let changes: Vec<Change> = record
                    .ops()
                    .filter_map(|op| match op {
                        OpRef::Put(key, value) if key.starts_with(prefix) => Some(Change::Put {
                            key: Bytes::from(key),
                            value: Bytes::from(value),
                        }),
                        OpRef::Delete(key) if key.starts_with(prefix) => Some(Change::Delete {
                            key: Bytes::from(key),
                        }),
                        _ => None,
                    })
                    .collect();
                if !changes.is_empty() {
                    ready.push_back(Ok(Commit {
                        sequence: record.seq,
                        changes,
                    }));
                }
            },
        )?;
        match followed {
            Followed::Reached => Ok(()),
            Followed::Gone => self.skip_gap(),
        }
    }

    /// The next log this watcher needs is gone: queues [`Error::WatchGap`] after what was read
    /// before the gap, and resumes at the oldest log that remains.
    fn skip_gap(&mut self) -> Result<()> {
        let store = &self.db.store;
        let vfs = store.options.vfs.as_ref();
        // Logs are listed in generation order.
        let oldest = list_store(vfs, &store.dir)?
            .wals
            .into_iter()
            .find(|&generation| generation > self.position.generation);
        let Some(generation) = oldest else {
            // Compactions only ever add a newer log before deleting older ones.
            return Err(Error::NotAStore {
                path: store.dir.clone(),
                reason: format!("no log after generation {}", self.position.generation),
            });
        };
        let path = store.dir.join(wal_name(generation));
        let (file, header) = wal::open(vfs, &path, OpenMode::Read)?;
        let missed_from = self.position.next_seq;
        if header.first_seq < missed_from {
            return Err(Error::corruption(
                &path,
                wal::FIRST_SEQ_OFFSET,
                format!(
                    "log starts at sequence {}, before the end of generation {}",
                    header.first_seq, self.position.generation
                ),
            ));
        }
        self.ready.push_back(Err(Error::WatchGap {
            missed_from,
            resumed_at: header.first_seq,
        }));
        self.position = Position::start_of(&header, path, file);
        Ok(())
    }
}

impl Iterator for Watcher {
    type Item = Result<Commit>;

    /// Blocks until the next commit under the prefix; `None` never comes.
    fn next(&mut self) -> Option<Result<Commit>> {
        self.next_before(None).transpose()
    }
}
