//! Appending to a log: records go into a zero-filled, preallocated region when one is available,
//! and a failed append is cut off again so that it can never reappear at recovery.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::VfsFile;

/// Preallocation grows the log by an eighth of its size, within these bounds.
const MIN_PREALLOC: u64 = 256 << 10;
const MAX_PREALLOC: u64 = 8 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The appending end of a log file, owned by the one writer of the handle.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    /// The file's log format, which every record appended to it keeps.
    version: u32,
    generation: u64,
    /// Offset just past the last record.
    end: u64,
    /// The sequence number of the next record.
    next_seq: u64,
    /// Bytes `end..allocated` are known to be zeros already in the file.
    allocated: u64,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
    /// Bytes this writer appended itself (other processes' appends not included).
    appended_here: u64,
}

impl LogWriter {
    /// A writer for a log whose last good record ends at `end`, and whose bytes from `end` to
    /// `allocated` are zeros.
    pub fn new(
        path: PathBuf,
        file: Arc<dyn VfsFile>,
        version: u32,
        generation: u64,
        end: u64,
        next_seq: u64,
        allocated: u64,
    ) -> Self {
        LogWriter {
            path,
            file,
            version,
            generation,
            end,
            next_seq,
            allocated: allocated.max(end),
            scratch: Vec::new(),
            appended_here: 0,
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open log file.
    pub fn file(&self) -> &dyn VfsFile {
        self.file.as_ref()
    }

    /// The open log file, shared.
    pub fn file_arc(&self) -> Arc<dyn VfsFile> {
        Arc::clone(&self.file)
    }

    /// Records that others appended up to `end` (the next record being `next_seq`), and that the
    /// file is now `allocated` bytes long with zeros after `end`.
    pub fn moved_to(&mut self, end: u64, next_seq: u64, allocated: u64) {
        self.end = end;
        self.next_seq = next_seq;
        self.allocated = allocated.max(end);
    }

    /// Bytes of this log that this writer appended itself.
    pub fn appended_here(&self) -> u64 {
        self.appended_here
    }

    /// The log format of the file, in which records must be encoded.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The generation of the log.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Offset just past the last record: the log's logical length.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The sequence number the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Encodes records with `encode` (given the buffer and the first sequence number, returning how
    /// many records it wrote) and writes them at the end of the log. Not durable until the file
    /// is synced (the commit path's `sync_file`). On failure nothing is appended: any partial
    /// write is cut off again.
    pub fn append(&mut self, encode: impl FnOnce(&mut Vec<u8>, u64) -> u64) -> Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let count = encode(&mut buf, self.next_seq);
        let result = self.write_records(&buf);
        let written = buf.len() as u64;
        // Keep the buffer for the next commit unless a huge batch blew it up.
        if buf.capacity() <= 16 << 20 {
            self.scratch = buf;
        }
        result?;
        self.end += written;
        self.appended_here += written;
        self.next_seq += count;
        Ok(())
    }

    fn write_records(&mut self, records: &[u8]) -> Result<()> {
        let new_end = self.end + records.len() as u64;
        let mut result = self.file.write_all_at(records, self.end);
        if result.is_ok() && new_end > self.allocated {
            // Past the preallocated region: extend it, so that the next appends are overwrites.
            let grow = (new_end / 8).clamp(MIN_PREALLOC, MAX_PREALLOC);
            let target = new_end + grow;
            result = self.fill_zeros(new_end, target);
            if result.is_ok() {
                self.allocated = target;
            }
        }
        let Err(e) = result else {
            return Ok(());
        };
        // Cut off whatever part of the records (or of the zeros) reached the file, so that a batch
        // that failed can never reappear at recovery. If even that fails, the handle is poisoned.
        let undo = self
            .file
            .set_len(self.end)
            .and_then(|()| self.file.sync_data());
        self.allocated = self.end;
        let err = Error::io("append to", &self.path, e);
        match undo {
            Ok(()) => Err(err),
            Err(undo_err) => Err(Error::Poisoned {
                cause: format!("{err}; then cutting off the partial write failed: {undo_err}"),
            }),
        }
    }

    fn fill_zeros(&self, from: u64, to: u64) -> std::io::Result<()> {
        let mut at = from;
        while at < to {
            let n = (ZEROS.len() as u64).min(to - at);
            self.file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }
}
