//! Telling a torn tail from damage, and repairing a torn tail.
//!
//! A process killed in the middle of an append, or a power cut, leaves bad bytes only after the
//! last durable record: a record is acknowledged only once an `fdatasync` covered it and every
//! record before it. Each record of a version 2 log carries the durable horizon when it was
//! appended, so a record that decodes beyond a bad one can prove the bad one durable: then it is
//! damage to acknowledged data, and nothing is cut ([`examine`]). Otherwise it is a torn tail,
//! which must be cut off before anyone appends behind it (or those appends would be thrown away
//! with it at the next recovery); bytes beyond it that still decode are copied to a quarantine
//! file first.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, Frame, MIN_RECORD_LEN, RECORD_PREFIX_LEN, WalHeader};
use crate::io::{Vfs, VfsFile, write_file_atomically};
use crate::layout::quarantine_name;

use super::reader::ChunkReader;

/// What a repair did to a damaged tail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut off the end of the log.
    pub truncated_bytes: u64,
    /// Where bytes that still held decodable records were kept, if anywhere.
    pub quarantined_to: Option<PathBuf>,
}

/// Where reading a log stopped at a bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Where the bad record starts.
    pub offset: u64,
    /// The sequence number it should carry.
    pub seq: u64,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// A record found beyond a damaged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where it starts.
    pub offset: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its durable horizon (0 in a version 1 log).
    pub durable_below: u64,
}

/// What lies beyond a damaged record, as far as records that still decode can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Beyond {
    /// The first record that decodes: the damage is not a torn write alone, and the bytes are
    /// worth keeping.
    pub first: Option<Found>,
    /// The record with the highest durable horizon.
    pub highest_horizon: Option<Found>,
}

impl Beyond {
    /// The record that proves the one with sequence number `damaged_seq` was durable, so could
    /// have been acknowledged: one appended once every record below a higher sequence number was.
    pub fn vouching_for(&self, damaged_seq: u64) -> Option<Found> {
        self.highest_horizon
            .filter(|found| found.durable_below > damaged_seq)
    }
}

/// Finds the records that decode and verify after `from` (where a damaged record starts), with
/// sequence numbers of at least `min_seq`. Every offset is tried, since the damage may have
/// destroyed a length; after a record that decodes, the search goes on right behind it.
pub fn look_beyond(
    file: &dyn VfsFile,
    path: &Path,
    version: u32,
    from: u64,
    min_seq: u64,
) -> Result<Beyond> {
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut reader = ChunkReader::new(file, path, size);
    let header_len = (RECORD_PREFIX_LEN + 8) as u64;
    // A sequence number further on than one record per smallest record is impossible.
    let max_seq = min_seq.saturating_add(size.saturating_sub(from) / MIN_RECORD_LEN + 1);
    let mut beyond = Beyond::default();
    let mut at = from + 1;
    while at + MIN_RECORD_LEN <= size {
        let head = reader.bytes_at(at, header_len)?;
        // Cheap filters first: a plausible length that fits, and a plausible sequence number.
        let body_len = u64::from(format::read_u32(head, 0));
        let seq = format::read_u64(head, RECORD_PREFIX_LEN);
        let total = RECORD_PREFIX_LEN as u64 + body_len;
        if body_len == 0 || at + total > size || seq < min_seq || seq > max_seq {
            at += 1;
            continue;
        }
        let Frame::Record(record) = format::decode_frame(reader.bytes_at(at, total)?, version)
        else {
            at += 1;
            continue;
        };
        let found = Found {
            offset: at,
            seq: record.seq,
            durable_below: record.durable_below,
        };
        beyond.first.get_or_insert(found);
        if beyond
            .highest_horizon
            .is_none_or(|best| found.durable_below > best.durable_below)
        {
            beyond.highest_horizon = Some(found);
        }
        at += record.len;
    }
    Ok(beyond)
}

/// Decides what `damage` to the log at `path` is. If a record beyond it proves that record durable, it is
/// damage to acknowledged data: `Err(Error::Corruption)` naming the records lost, and nothing may
/// be cut. Otherwise it is a torn tail (a crash leaves bad bytes only after the last durable
/// record), and what decodes beyond it is returned.
pub fn examine(file: &dyn VfsFile, path: &Path, version: u32, damage: Damage) -> Result<Beyond> {
    let Damage {
        offset,
        seq: damaged_seq,
        reason,
    } = damage;
    let beyond = look_beyond(file, path, version, offset, damaged_seq)?;
    let Some(proof) = beyond.vouching_for(damaged_seq) else {
        return Ok(beyond);
    };
    // The records between the damage and the first one that decodes are the ones lost.
    let lost_below = beyond.first.map_or(proof.seq, |first| first.seq);
    let lost = if lost_below > damaged_seq + 1 {
        format!(
            "the records with sequence numbers {damaged_seq} to {}",
            lost_below - 1
        )
    } else {
        format!("the record with sequence number {damaged_seq}")
    };
    Err(Error::corruption(
        path,
        offset,
        format!(
            "{lost} cannot be read ({reason}), yet the record at offset {} (sequence number {}) \
             was appended once every record below sequence number {} was durable: they were \
             acknowledged writes, not a torn tail, so nothing was cut",
            proof.offset, proof.seq, proof.durable_below
        ),
    ))
}

/// Cuts a torn tail, everything from `offset` on, off the log, first copying it to a quarantine
/// file if any decodable record lies in it. Refuses (see [`examine`]) if the damage is to records
/// that were durable. Only a process holding the store's lock may call this.
pub fn repair_tail(
    vfs: &dyn Vfs,
    dir: &Path,
    file: &dyn VfsFile,
    path: &Path,
    header: &WalHeader,
    damage: Damage,
) -> Result<Repair> {
    let beyond = examine(file, path, header.version, damage)?;
    let offset = damage.offset;
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", path, e))?;
    let mut repair = Repair {
        truncated_bytes: size.saturating_sub(offset),
        quarantined_to: None,
    };
    if let Some(Found { offset: found, .. }) = beyond.first {
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
