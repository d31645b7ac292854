//! The write-ahead log: the source of truth.
//!
//! A log file is a header followed by one record per committed batch (see `format`). This module
//! reads a log back (stopping at the first record that is incomplete or fails its checks), repairs a
//! damaged tail before anyone appends behind it, and appends new records.
//!
//! Appends go into a zero-filled, preallocated region when one is available: overwriting allocated
//! blocks lets `fdatasync` skip the file-size update that an append to the end of the file needs.
//! A zero length field therefore means "end of log", and the logical end is found by reading, never
//! from the file's size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{
    self, Frame, MIN_RECORD_LEN, RECORD_PREFIX_LEN, Record, WAL_HEADER_LEN, WalHeader,
};
use crate::io::{OpenMode, Vfs, VfsFile, write_file_atomically};
use crate::layout::{quarantine_name, wal_name};

/// How much a read of the log fetches at once.
const READ_CHUNK: usize = 1 << 20;
/// Preallocation grows the log by an eighth of its size, within these bounds.
const MIN_PREALLOC: u64 = 256 << 10;
const MAX_PREALLOC: u64 = 8 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Why reading a log stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the file or at the zero-filled region: the log is clean.
    Clean,
    /// At a record that is incomplete, fails its checksum, or is out of sequence.
    Damaged {
        /// Where the bad record starts.
        offset: u64,
        /// What was wrong with it.
        reason: &'static str,
    },
}

/// The result of reading a log from some offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Offset just past the last good record.
    pub end: u64,
    /// The sequence number the next record must carry.
    pub next_seq: u64,
    /// Why reading stopped.
    pub stop: Stop,
    /// The file's size when reading began.
    pub size: u64,
}

/// What a repair did to a damaged tail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut off the end of the log.
    pub truncated_bytes: u64,
    /// Where bytes that still held decodable records were kept, if anywhere.
    pub quarantined_to: Option<PathBuf>,
}

/// Opens and checks the header of the log at `path`.
pub fn open(vfs: &dyn Vfs, path: &Path, mode: OpenMode) -> Result<(Arc<dyn VfsFile>, WalHeader)> {
    let file = vfs
        .open(path, mode)
        .map_err(|e| Error::io("open", path, e))?;
    let header = read_header(file.as_ref(), path)?;
    Ok((file, header))
}

/// Where a log header keeps its first sequence number (docs/FORMAT.md), for error reports.
pub const FIRST_SEQ_OFFSET: u64 = 24;

/// Checks that a log's first record follows on from the previous log, which ended before
/// `next_seq`.
pub fn check_continues(path: &Path, header: &WalHeader, next_seq: u64) -> Result<()> {
    if header.first_seq == next_seq {
        return Ok(());
    }
    Err(Error::corruption(
        path,
        FIRST_SEQ_OFFSET,
        format!(
            "log starts at sequence {} but the previous log ends at {next_seq}",
            header.first_seq
        ),
    ))
}

/// Reads and validates a log header, naming `path` in any error.
pub fn read_header(file: &dyn VfsFile, path: &Path) -> Result<WalHeader> {
    let mut bytes = [0u8; WAL_HEADER_LEN];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(Error::io("read the header of", path, e)),
        }
    }
    if bytes[..filled].iter().all(|&b| b == 0) {
        // We create logs atomically, header included, so this is damage, not a foreign file.
        return Err(Error::corruption(
            path,
            0,
            "the log header is missing (empty or zeroed file)",
        ));
    }
    WalHeader::decode(&bytes[..filled]).map_err(|e| Error::from_header(path, "log", 0, e))
}

/// Creates `dir/wal-<generation>` atomically with just its header, and makes it durable.
pub fn create(vfs: &dyn Vfs, dir: &Path, header: WalHeader) -> Result<PathBuf> {
    let name = wal_name(header.generation);
    write_file_atomically(vfs, dir, &name, &header.encode())
        .map_err(|e| Error::io("create", dir.join(&name), e))?;
    Ok(dir.join(name))
}

/// Reads records from `from` (which must be a record boundary), checking that sequence numbers run
/// on from `next_seq`, and hands each good one to `apply`. Stops cleanly before the record with
/// sequence number `until` (pass `u64::MAX` to read to the end).
pub fn scan(
    file: &dyn VfsFile,
    path: &Path,
    from: u64,
    next_seq: u64,
    until: u64,
    mut apply: impl FnMut(&Record<'_>),
) -> Result<Scan> {
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut reader = ChunkReader::new(file, path, size);
    let mut offset = from;
    let mut seq = next_seq;
    let stop = loop {
        if offset >= size || seq >= until {
            break Stop::Clean;
        }
        let mut want = (RECORD_PREFIX_LEN as u64).min(size - offset);
        let frame = loop {
            let buf = reader.bytes_at(offset, want)?;
            match format::decode_frame(buf) {
                Frame::Incomplete { needed } if offset + needed <= size && needed > want => {
                    want = needed;
                }
                frame => break frame,
            }
        };
        match frame {
            Frame::Record(record) if record.seq == seq => {
                apply(&record);
                offset += record.len;
                seq += 1;
            }
            Frame::Record(_) => {
                break Stop::Damaged {
                    offset,
                    reason: "record out of sequence",
                };
            }
            Frame::End => break Stop::Clean,
            Frame::Incomplete { .. } => {
                break Stop::Damaged {
                    offset,
                    reason: "record extends past the end of the file (torn write)",
                };
            }
            Frame::Invalid(reason) => break Stop::Damaged { offset, reason },
        }
    };
    Ok(Scan {
        end: offset,
        next_seq: seq,
        stop,
        size,
    })
}

/// Returns the offset of the first non-zero byte at or after `from` and before `size` (the
/// file's size, as a [`Scan`] saw it), if any.
pub fn first_nonzero(file: &dyn VfsFile, path: &Path, from: u64, size: u64) -> Result<Option<u64>> {
    let mut reader = ChunkReader::new(file, path, size);
    let mut offset = from;
    while offset < size {
        let n = (READ_CHUNK as u64).min(size - offset);
        let buf = reader.bytes_at(offset, n)?;
        if let Some(i) = buf.iter().position(|&b| b != 0) {
            return Ok(Some(offset + i as u64));
        }
        offset += n;
    }
    Ok(None)
}

/// Looks for any record that decodes and verifies at or after `from`, with a sequence number of at
/// least `min_seq`: evidence that the damage at `from` is not a torn tail but lost history.
pub fn find_decodable_after(
    file: &dyn VfsFile,
    path: &Path,
    from: u64,
    min_seq: u64,
) -> Result<Option<u64>> {
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut reader = ChunkReader::new(file, path, size);
    let header_len = (RECORD_PREFIX_LEN + 8) as u64;
    let mut offset = from + 1;
    while offset + MIN_RECORD_LEN <= size {
        let chunk = (READ_CHUNK as u64).min(size - offset);
        let window = reader.bytes_at(offset, chunk)?.to_vec();
        for i in 0..window.len() {
            let at = offset + i as u64;
            if at + MIN_RECORD_LEN > size {
                break;
            }
            let head = if i + header_len as usize <= window.len() {
                window[i..i + header_len as usize].to_vec()
            } else {
                reader.bytes_at(at, header_len)?.to_vec()
            };
            // Cheap filters first: a plausible length that fits, and a plausible sequence number.
            let body_len = u64::from(format::read_u32(&head, 0));
            let seq = format::read_u64(&head, RECORD_PREFIX_LEN);
            let max_seq = min_seq + (size - from) / MIN_RECORD_LEN + 1;
            if body_len == 0 || at + RECORD_PREFIX_LEN as u64 + body_len > size {
                continue;
            }
            if seq < min_seq || seq > max_seq {
                continue;
            }
            let total = RECORD_PREFIX_LEN as u64 + body_len;
            if let Frame::Record(_) = format::decode_frame(reader.bytes_at(at, total)?) {
                return Ok(Some(at));
            }
        }
        offset += window.len() as u64;
    }
    Ok(None)
}

/// Cuts everything from `offset` on off the log, first copying it to a quarantine file if any
/// decodable record lies in it. Only a process holding the store's lock may call this.
pub fn repair_tail(
    vfs: &dyn Vfs,
    dir: &Path,
    file: &dyn VfsFile,
    path: &Path,
    header: &WalHeader,
    offset: u64,
    next_seq: u64,
) -> Result<Repair> {
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut repair = Repair {
        truncated_bytes: size.saturating_sub(offset),
        quarantined_to: None,
    };
    if let Some(found) = find_decodable_after(file, path, offset, next_seq)? {
        let name = quarantine_name(header.generation, offset);
        let mut kept = vec![0u8; usize::try_from(size - offset).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut kept, offset)
            .map_err(|e| Error::io("read the damaged tail of", path, e))?;
        write_file_atomically(vfs, dir, &name, &kept)
            .map_err(|e| Error::io("write quarantine file", dir.join(&name), e))?;
        log::warn!(
            "{}: damaged record at offset {offset}, but a valid record follows at offset {found}; \
             kept the {} bytes from {offset} on in {name} and recovered up to {offset}",
            path.display(),
            size - offset,
        );
        repair.quarantined_to = Some(dir.join(name));
    }
    file.set_len(offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("truncate the damaged tail of", path, e))?;
    Ok(repair)
}

/// The appending end of a log file, owned by the one writer of the handle.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: Arc<dyn VfsFile>,
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
        generation: u64,
        end: u64,
        next_seq: u64,
        allocated: u64,
    ) -> Self {
        LogWriter {
            path,
            file,
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

/// The first read of a [`ChunkReader`]: small, because catching up on another process's commit
/// usually means reading one short record; each further read doubles, up to [`READ_CHUNK`].
const FIRST_READ: usize = 4096;

/// Reads a file through a buffer of recent bytes, so that a scan costs one read per chunk.
struct ChunkReader<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    size: u64,
    buf: Vec<u8>,
    buf_start: u64,
    next_read: usize,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn VfsFile, path: &'a Path, size: u64) -> Self {
        ChunkReader {
            file,
            path,
            size,
            buf: Vec::new(),
            buf_start: 0,
            next_read: FIRST_READ,
        }
    }

    /// The bytes `offset..offset + len` (fewer if the file ends first).
    fn bytes_at(&mut self, offset: u64, len: u64) -> Result<&[u8]> {
        let len = len.min(self.size.saturating_sub(offset));
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || offset + len > buf_end {
            let fetch = len.max(self.next_read as u64).min(self.size - offset);
            self.next_read = (self.next_read * 2).min(READ_CHUNK);
            self.buf
                .resize(usize::try_from(fetch).unwrap_or(usize::MAX), 0);
            self.file
                .read_exact_at(&mut self.buf, offset)
                .map_err(|e| Error::io("read", self.path, e))?;
            self.buf_start = offset;
        }
        let start = (offset - self.buf_start) as usize;
        Ok(&self.buf[start..start + len as usize])
    }
}
