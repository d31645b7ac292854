//! Repairing a damaged log tail: a process killed in the middle of an append leaves a partial
//! record, which must be cut off before anyone appends behind it (or those appends would be
//! thrown away with it at the next recovery). Bytes beyond the damage that still decode are
//! copied to a quarantine file first: they may be history, not a torn write.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, Frame, MIN_RECORD_LEN, RECORD_PREFIX_LEN, WalHeader};
use crate::io::{Vfs, VfsFile, write_file_atomically};
use crate::layout::quarantine_name;

use super::reader::{ChunkReader, READ_CHUNK};

/// What a repair did to a damaged tail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut off the end of the log.
    pub truncated_bytes: u64,
    /// Where bytes that still held decodable records were kept, if anywhere.
    pub quarantined_to: Option<PathBuf>,
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
