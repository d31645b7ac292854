//! The live set of sorted files: opening the files a manifest names, installing a new manifest
//! (a read-modify-write of the newest one, under `LOCK`), and removing what no manifest names.
//!
//! Invariants: a manifest names only durable files; installs are one at a time (under `LOCK`)
//! and each changes the newest manifest on disk, so a flush and a compaction running at once
//! never undo each other's changes; a file is removed only once a durable manifest no longer
//! names it (other processes that still map it keep reading it: Unix unlink semantics).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::ManifestData;
use crate::io::Vfs;
use crate::layout::{StoreFile, classify, directory_fingerprint, list_store, part_name, run_name};
use crate::locking::{DIRECTORY_SYNCED, LOG_START, MANIFEST_NUMBER};
use crate::manifest;
use crate::sorted::SortedFile;
use crate::sync::lock;
use crate::view::Tables;

use super::Store;

/// Open files to reuse, by (is a run, id).
pub(crate) type OpenFiles = HashMap<(bool, u64), Arc<SortedFile>>;

/// Opens the files `manifest` names (reusing those in `open`), checking that each one's header
/// carries the id in its name.
pub(crate) fn open_tables(
    vfs: &dyn Vfs,
    dir: &Path,
    manifest: ManifestData,
    open: &OpenFiles,
) -> Result<Tables> {
    let get = |run: bool, id: u64| -> Result<Arc<SortedFile>> {
        if let Some(file) = open.get(&(run, id)) {
            return Ok(Arc::clone(file));
        }
        let name = if run { run_name(id) } else { part_name(id) };
        let path = dir.join(&name);
        let file = SortedFile::open(vfs, &path)?;
        // A partition may be a version 1 snapshot that a conversion adopted; runs are newer.
        if file.generation() != id || (run && file.version() < 2) {
            return Err(Error::corruption(
                &path,
                16,
                format!(
                    "header says id {} (version {}), the manifest names {name}",
                    file.generation(),
                    file.version()
                ),
            ));
        }
        Ok(Arc::new(file))
    };
    let runs = manifest
        .runs
        .iter()
        .map(|&id| get(true, id))
        .collect::<Result<_>>()?;
    let parts = manifest
        .parts
        .iter()
        .map(|&id| get(false, id))
        .collect::<Result<_>>()?;
    Tables::new(manifest, runs, parts)
}

impl Store {
    /// Installs the next manifest: `change` edits a copy of the newest one on disk (which may be
    /// newer than this handle's, if another process flushed or compacted meanwhile), and the
    /// view switches to its files, `new_files` among them. Holding `LOCK` throughout, so that
    /// installs are one at a time. Returns the installed manifest.
    pub(crate) fn install(
        &self,
        new_files: &OpenFiles,
        change: impl FnOnce(&mut ManifestData) -> Result<()>,
        after: impl FnOnce(&mut crate::view::View),
    ) -> Result<ManifestData> {
        let vfs = self.options.vfs.as_ref();
        let guard = self.store_lock.exclusive()?;
        let listing = list_store(vfs, &self.dir)?;
        let newest = manifest::read_newest(vfs, &self.dir, &listing)?
            .ok_or_else(|| Error::corruption(&self.dir, 0, "the store has no manifest"))?;
        let mut next = newest.clone();
        change(&mut next)?;
        next.number = newest.number + 1;
        manifest::install(vfs, &self.dir, &next)?;
        // Another process flushed since this handle last switched files (possible during a
        // compaction, which does not hold `LOCK.flush`): its run holds writes this handle's
        // memtable may hold older values of, and the memtable would shadow them. The view is
        // rebuilt from the installed files and the log instead, as a reload after another
        // process's flush does.
        if newest.log_start != self.applied.read().tables.manifest.log_start {
            let mut position = lock(&self.applied.position);
            let target = position.next_seq;
            self.reload(&mut position, target)?;
            drop(position);
            self.store_lock.raise_hint(LOG_START, next.log_start);
            self.store_lock.raise_hint(MANIFEST_NUMBER, next.number);
            self.applied
                .seen
                .manifest
                .store(next.number, std::sync::atomic::Ordering::Release);
            drop(guard);
            return Ok(next);
        }
        // Readers switch to the new files (a pointer swap under the view's lock).
        let mut open = self.applied.read().tables.reusable();
        open.extend(new_files.iter().map(|(k, f)| (*k, Arc::clone(f))));
        let tables = Arc::new(open_tables(vfs, &self.dir, next.clone(), &open)?);
        {
            let mut state = self.applied.write();
            state.tables = tables;
            after(&mut state);
        }
        self.store_lock.raise_hint(LOG_START, next.log_start);
        self.store_lock.raise_hint(MANIFEST_NUMBER, next.number);
        // Others installed nothing meanwhile (we hold LOCK): what this handle has applied is
        // the newest.
        self.applied
            .seen
            .manifest
            .store(next.number, std::sync::atomic::Ordering::Release);
        drop(guard);
        Ok(next)
    }

    /// Removes every log segment, sorted file and manifest the newest manifest no longer needs
    /// (and any snapshot of format 1), then syncs the directory. Under `LOCK`, so that a
    /// process opening the store never finds a file gone between listing and opening it.
    pub(crate) fn remove_unnamed(&self, installed: &ManifestData) -> Result<()> {
        let guard = self.store_lock.exclusive()?;
        let vfs = self.options.vfs.as_ref();
        let names = vfs
            .list(&self.dir)
            .map_err(|e| Error::io("list the store directory", &self.dir, e))?;
        let mut removed = false;
        for name in names {
            let unnamed = match classify(&name) {
                StoreFile::Wal(g) => g < installed.log_start,
                StoreFile::Snapshot(_) => true,
                StoreFile::Manifest(n) => n < installed.number,
                StoreFile::Run(id) => !installed.runs.contains(&id) && id < installed.log_start,
                StoreFile::Part(id) => {
                    !installed.parts.contains(&id) && id < installed.next_part_id
                }
                _ => false,
            };
            if unnamed {
                let path = self.dir.join(&name);
                vfs.remove_file(&path)
                    .map_err(|e| Error::io("remove old file", &path, e))?;
                removed = true;
            }
        }
        if removed {
            vfs.sync_dir(&self.dir)
                .map_err(|e| Error::io("sync the directory", &self.dir, e))?;
            // Every name is durable now (and nobody can change one while we hold LOCK): the
            // next open need not sync the directory again.
            let listing = list_store(vfs, &self.dir)?;
            self.store_lock
                .correct_hint(&guard, DIRECTORY_SYNCED, directory_fingerprint(&listing));
        }
        Ok(())
    }
}
