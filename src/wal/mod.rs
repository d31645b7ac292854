//! The write-ahead log: the source of truth.
//!
//! A log file (`wal-<generation>`) is a header followed by one record per committed batch (see
//! `format`). Its parts:
//! - [`reader`]: reads a log back, stopping at the first record that is incomplete or fails its
//!   checks;
//! - [`writer`]: appends new records, into preallocated zeros;
//! - [`repair`]: cuts a damaged tail off before anyone appends behind it, quarantining what
//!   still decodes beyond it;
//! - [`follow`]: where a reader has applied the log up to, reading on from there into later logs,
//!   and bringing a writer to the true end of the log past other processes' appends.
//!
//! Appends go into a zero-filled, preallocated region when one is available: overwriting allocated
//! blocks lets `fdatasync` skip the file-size update that an append to the end of the file needs.
//! A zero length field therefore means "end of log", and the logical end is found by reading, never
//! from the file's size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{WAL_HEADER_LEN, WalHeader};
use crate::io::{OpenMode, Vfs, VfsFile, write_file_atomically};
use crate::layout::wal_name;

pub mod follow;
pub mod reader;
pub mod repair;
pub mod writer;

pub use follow::{Followed, Position, follow_to_end, read_to_end, read_until};
pub use reader::{Stop, first_nonzero, scan};
pub use repair::{Damage, examine, repair_tail};
pub use writer::LogWriter;

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
