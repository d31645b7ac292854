//! Reading back and checking every byte of a store: `Db::verify` and `kvctl check`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::WAL_HEADER_LEN;
use crate::layout::{list_store, manifest_name, wal_name};
use crate::sorted::SortedFile;
use crate::stats::{FileStats, VerifyReport};
use crate::sync::lock;
use crate::wal;

use super::Store;

impl Store {
    /// Reads back and checks every byte of the sorted files (every block's checksum and
    /// structure, key order, counts), of the manifest, and of the log segments it replays
    /// (every record's checksum and sequence number, and zeros after the live one's end).
    /// Calls `progress(bytes_done, bytes_total)`. Writers wait while the log is checked;
    /// compactions in this handle wait for the whole check.
    pub(crate) fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        let _no_compaction = lock(&self.compaction.one_at_a_time);
        self.refresh()?;
        let tables = Arc::clone(&self.applied.read().tables);
        let files: Vec<&Arc<SortedFile>> = tables.runs.iter().chain(&tables.parts).collect();
        let files_bytes: u64 = files.iter().map(|f| f.file_bytes()).sum();
        let mut done = 0;
        for file in &files {
            file.verify(|n| progress(done + n, files_bytes))?;
            done += file.file_bytes();
        }
        let vfs = self.options.vfs.as_ref();
        // No writer, in any process, appends, flushes or removes a file while the log is checked.
        let _no_appends = self.store_lock.shared()?;
        let listing = list_store(vfs, &self.dir)?;
        let manifest = crate::manifest::read_newest(vfs, &self.dir, &listing)?;
        let log_start = manifest
            .as_ref()
            .map_or(tables.manifest.log_start, |m| m.log_start);
        let mut older_wals = Vec::new();
        let segments: Vec<u64> = listing
            .wals
            .iter()
            .copied()
            .filter(|&g| g >= log_start)
            .collect();
        let Some((&live, older)) = segments.split_last() else {
            return Err(Error::corruption(
                self.dir.join(wal_name(log_start)),
                0,
                "this log is missing: the manifest replays from it",
            ));
        };
        for &g in older {
            let path = self.dir.join(wal_name(g));
            let (file, header) = wal::open(vfs, &path, crate::io::OpenMode::Read)?;
            let mut records = 0;
            let scan = wal::scan(
                file.as_ref(),
                &path,
                header.version,
                WAL_HEADER_LEN as u64,
                header.first_seq,
                u64::MAX,
                |_| records += 1,
            )?;
            // A segment before the live one was synced whole before the next was cut.
            if let wal::Stop::Damaged { offset, reason } = scan.stop {
                return Err(Error::corruption(&path, offset, reason));
            }
            if let Some(offset) = wal::first_nonzero(file.as_ref(), &path, scan.end, scan.size)? {
                return Err(Error::corruption(
                    &path,
                    offset,
                    "non-zero bytes after the end of the log",
                ));
            }
            older_wals.push((path, records));
        }
        let path = self.dir.join(wal_name(live));
        let (file, _) = wal::open(vfs, &path, crate::io::OpenMode::Read)?;
        let (path, file) = (path.as_path(), file.as_ref());
        let wal_bytes = file
            .size()
            .map_err(|e| Error::io("read the size of", path, e))?;
        let total = files_bytes + wal_bytes;
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
            files: files
                .iter()
                .map(|f| FileStats {
                    path: f.path().to_owned(),
                    bytes: f.file_bytes(),
                    entries: f.len(),
                })
                .collect(),
            manifest: manifest.map(|m| self.dir.join(manifest_name(m.number))),
            older_wals,
            wal: path.to_owned(),
            wal_records,
            wal_bytes: scan.end,
            quarantine_files: self.report.quarantine_files.clone(),
            log_format_version: header.version,
            torn_tail,
        })
    }
}
