//! The manifest: which sorted files make up the store, and the first log segment to replay.
//! Each change of the live set (a flush, a step of a compaction) installs a whole new
//! `MANIFEST-<n+1>`: written to a temporary file, synced, renamed, the directory synced. The
//! highest-numbered manifest is the live set; older ones are garbage.
//!
//! Invariant: a manifest never names a file before that file is durable, and a file is removed
//! only after a durable manifest no longer names it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{HeaderError, ManifestData};
use crate::io::{OpenMode, Vfs};
use crate::layout::{Listing, manifest_name};

/// Reads `MANIFEST-<number>`. A manifest that fails its checks is an error, never skipped: an
/// older one may name files that are gone, and falling back to it would hide the damage.
pub fn read(vfs: &dyn Vfs, dir: &Path, number: u64) -> Result<ManifestData> {
    let path = dir.join(manifest_name(number));
    let file = vfs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open", &path, e))?;
    let size = file
        .size()
        .map_err(|e| Error::io("read the size of", &path, e))?;
    let limit =
        (crate::format::MANIFEST_HEADER_LEN + 8 * crate::format::MANIFEST_MAX_FILES + 4) as u64;
    if size > limit {
        return Err(Error::corruption(
            &path,
            limit,
            "manifest longer than any can be",
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    let data = ManifestData::decode(&bytes).map_err(|e| match e {
        HeaderError::NotOurs => Error::corruption(&path, 0, "not a manifest (wrong magic)"),
        other => Error::from_header(&path, "manifest", 0, other),
    })?;
    if data.number != number {
        return Err(Error::corruption(
            &path,
            16,
            format!("manifest says it is number {}", data.number),
        ));
    }
    Ok(data)
}

/// The newest manifest in `listing`, if the store has one (format 2).
pub fn read_newest(vfs: &dyn Vfs, dir: &Path, listing: &Listing) -> Result<Option<ManifestData>> {
    match listing.manifests.last() {
        Some(&number) => read(vfs, dir, number).map(Some),
        None => Ok(None),
    }
}

/// Makes `data` the live set: `MANIFEST-<number>.tmp`, `fdatasync`, rename, directory sync.
/// The caller holds `LOCK` exclusively, so that installs are one at a time and each builds on
/// the one before.
pub fn install(vfs: &dyn Vfs, dir: &Path, data: &ManifestData) -> Result<()> {
    let name = manifest_name(data.number);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = vfs.remove_file(&tmp);
    let written = (|| {
        let file = vfs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all_at(&data.encode(), 0)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_data().map_err(|e| Error::io("sync", &tmp, e))?;
        vfs.rename(&tmp, &path)
            .map_err(|e| Error::io("rename into place", &tmp, e))
    })();
    if let Err(e) = written {
        let _ = vfs.remove_file(&tmp);
        return Err(e);
    }
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync the directory", dir, e))
}
