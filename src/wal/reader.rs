//! Reading a log back: record by record from a known boundary, checking each record's framing,
//! checksum and sequence number, and stopping at the first that fails.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, Frame, RECORD_PREFIX_LEN, Record};
use crate::io::VfsFile;

/// How much a read of the log fetches at once.
const READ_CHUNK: usize = 1 << 20;

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

/// Reads records of the log format `version` from `from` (which must be a record boundary),
/// checking that sequence numbers run on from `next_seq`, and hands each good one to `apply`.
/// Stops cleanly before the record with sequence number `until` (pass `u64::MAX` to read to the
/// end).
pub fn scan(
    file: &dyn VfsFile,
    path: &Path,
    version: u32,
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
            match format::decode_frame(buf, version) {
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

/// The first read of a [`ChunkReader`]: small, because catching up on another process's commit
/// usually means reading one short record; each further read doubles, up to [`READ_CHUNK`].
const FIRST_READ: usize = 4096;

/// Reads a file through a buffer of recent bytes, so that a scan costs one read per chunk.
pub(super) struct ChunkReader<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    size: u64,
    buf: Vec<u8>,
    buf_start: u64,
    next_read: usize,
}

impl<'a> ChunkReader<'a> {
    pub(super) fn new(file: &'a dyn VfsFile, path: &'a Path, size: u64) -> Self {
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
    pub(super) fn bytes_at(&mut self, offset: u64, len: u64) -> Result<&[u8]> {
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
