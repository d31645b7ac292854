//! Reading back and checking every byte of a store: `Db::verify` and `kvctl check`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::WAL_HEADER_LEN;
use crate::stats::VerifyReport;
use crate::sync::lock;
use crate::wal;

use super::Store;

impl Store {
    /// Reads back and checks every byte of the snapshot (every block's checksum and structure, key
    /// order, counts) and of the live log (every record's checksum and sequence number, and zeros
    /// after its end). Calls `progress(bytes_done, bytes_total)`. Writers wait while the log is
    /// checked; compactions wait for the whole check.
    pub(crate) fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        let _no_compaction = lock(&self.compaction.one_at_a_time);
        self.refresh()?;
        let snapshot = self.applied.read().snapshot.clone();
        let snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.file_bytes());
        // No writer, in any process, appends while the log is checked.
        let _no_appends = self.store_lock.shared()?;
        let (path, file) = {
            let position = lock(&self.applied.position);
            (position.path.clone(), Arc::clone(&position.file))
        };
        let (path, file) = wal::newest_log(self.options.vfs.as_ref(), &self.dir, path, file)?;
        let (path, file) = (path.as_path(), file.as_ref());
        let wal_bytes = file
            .size()
            .map_err(|e| Error::io("read the size of", path, e))?;
        let total = snapshot_bytes + wal_bytes;
        if let Some(s) = &snapshot {
            s.verify(|done| progress(done, total))?;
        }
        let header = wal::read_header(file, path)?;
        let mut wal_records = 0;
        let scan = wal::scan(
            file,
            path,
            header.version,
            WAL_HEADER_LEN as u64,
            header.first_seq,
            u64::MAX,
            |_| wal_records += 1,
        )?;
        // A bad record, or bytes after a clean end, is a torn tail unless a later record proves
        // it durable: then `examine` fails with the corruption error.
        let damage = match scan.stop {
            wal::Stop::Damaged { offset, reason } => Some((offset, reason)),
            wal::Stop::Clean => wal::first_nonzero(file, path, scan.end, scan.size)?
                .map(|_| (scan.end, "non-zero bytes after the end of the log")),
        };
        let torn_tail = match damage {
            Some((offset, reason)) => {
                let damage = wal::Damage {
                    offset,
                    seq: scan.next_seq,
                    reason,
                };
                wal::examine(file, path, header.version, damage)?;
                Some(offset)
            }
            None => None,
        };
        progress(total, total);
        Ok(VerifyReport {
            snapshot: snapshot.as_ref().map(|s| s.path().to_owned()),
            snapshot_entries: snapshot.as_ref().map_or(0, |s| s.len()),
            snapshot_bytes,
            wal: path.to_owned(),
            wal_records,
            wal_bytes: scan.end,
            quarantine_files: self.report.quarantine_files.clone(),
            log_format_version: header.version,
            torn_tail,
        })
    }
}
