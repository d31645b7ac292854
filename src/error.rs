//! The error type: each variant says what happened and what the caller can do about it.

use std::io;
use std::path::{Path, PathBuf};

use crate::format::HeaderError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in sturdykv.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed. Nothing acknowledged was lost; the operation that
    /// returned this did not take effect unless it says so.
    #[error("I/O error while trying to {op} {}: {source}", path.display())]
    Io {
        /// What sturdykv was doing ("append to", "open", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The disk is full. The write that returned this did not happen; the store keeps working
    /// once space is freed.
    #[error("no space left on the device holding {}: the write was not applied; free some space and retry", path.display())]
    StorageFull {
        /// The file being written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A store file failed a checksum or structural check.
    #[error("{} is corrupt at byte offset {offset}: {reason}; the store's files were left as they are: restore the store from a backup, or salvage what is intact with `kvctl repair` (Db::repair)", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage was found.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// The path exists but is not a sturdykv store (or a file in it is not one of ours). Nothing
    /// was written.
    #[error("{} is not a sturdykv store: {reason}", path.display())]
    NotAStore {
        /// The path given, or the offending file.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },

    /// A file was written by a newer sturdykv with a format this build does not know.
    #[error("{} uses format version {found}, but this build reads versions up to {supported}; upgrade sturdykv", file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in it.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },

    /// A key, value or batch is larger than sturdykv accepts. Nothing was written.
    #[error("{what} is {len} bytes, over the limit of {max} bytes; nothing was written")]
    LimitExceeded {
        /// "key", "value" or "batch".
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A sync to stable storage failed earlier, so this handle can no longer tell what is on
    /// disk. Drop every clone of it and reopen the store: recovery re-derives the truth from disk.
    #[error(
        "this handle is poisoned by an earlier failed write ({cause}); drop it and reopen the store"
    )]
    Poisoned {
        /// What failed first.
        cause: String,
    },

    /// Another handle (in this or another process) holds the store's lock for good: it was opened
    /// with [`Options::exclusive`](crate::Options::exclusive), or this open asked for that and
    /// someone else has the store open.
    #[error("the store is locked by another handle or process ({}); close it first", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The store's file system cannot coordinate several processes (a network file system, or
    /// `flock` unsupported). Nothing was written.
    #[error("cannot share {} between processes: {reason}", path.display())]
    LockingUnsupported {
        /// The lock file.
        path: PathBuf,
        /// What is missing, and what to do.
        reason: String,
    },

    /// A [`Watcher`](crate::Watcher) fell behind by more than one compaction: the log holding
    /// the commits from `missed_from` up to (not including) `resumed_at` was deleted before it
    /// read them. It continues from `resumed_at`; re-read the watched keys to catch up.
    #[error(
        "the watcher missed commits {missed_from}..{resumed_at}: the log holding them was compacted away before it read them; re-read the watched keys"
    )]
    WatchGap {
        /// The first commit missed.
        missed_from: u64,
        /// The commit the watcher continues with.
        resumed_at: u64,
    },

    /// A stored key or value did not decode as the type a [`Typed`](crate::Typed) view asked
    /// for (it was written as another type, or by a newer sturdykv). Nothing was changed.
    #[error(
        "the entry under key {} does not decode as {type_name}: {reason}",
        crate::error::shown(key)
    )]
    Decode {
        /// The stored key.
        key: Vec<u8>,
        /// The type it was read as.
        type_name: &'static str,
        /// What did not fit.
        reason: String,
    },

    /// A value could not be encoded (its `Serialize` implementation failed). Nothing was written.
    #[error("a {type_name} could not be encoded: {reason}")]
    Encode {
        /// The value's type.
        type_name: &'static str,
        /// Why.
        reason: String,
    },

    /// The handle was opened with [`Options::read_only`](crate::Options::read_only); nothing was written.
    #[error("the store at {} was opened read-only", path.display())]
    ReadOnly {
        /// The store's directory.
        path: PathBuf,
    },
}

/// A key for a message: as text if it is printable UTF-8, else as hex.
pub(crate) fn shown(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect::<String>() + " (hex)",
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            Error::StorageFull { path, source }
        } else {
            Error::Io { op, path, source }
        }
    }

    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The error for a file header or footer that failed to decode: `kind` names the file kind
    /// ("log", "snapshot"), `base` is the offset of the decoded bytes within the file.
    pub(crate) fn from_header(path: &Path, kind: &str, base: u64, e: HeaderError) -> Self {
        match e {
            HeaderError::NotOurs => Error::NotAStore {
                path: path.to_owned(),
                reason: format!("the file does not start with the sturdykv {kind} magic"),
            },
            HeaderError::FutureVersion { found, supported } => Error::UnsupportedVersion {
                file: path.to_owned(),
                found,
                supported,
            },
            HeaderError::Corrupt { offset, reason } => {
                Error::corruption(path, base + offset, reason)
            }
        }
    }

    /// A copy of this error for the other writers of a commit group that failed as a whole.
    pub(crate) fn for_group_member(&self) -> Self {
        let copy_io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: copy_io(source),
            },
            Error::StorageFull { path, source } => Error::StorageFull {
                path: path.clone(),
                source: copy_io(source),
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::NotAStore { path, reason } => Error::NotAStore {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::UnsupportedVersion {
                file,
                found,
                supported,
            } => Error::UnsupportedVersion {
                file: file.clone(),
                found: *found,
                supported: *supported,
            },
            Error::LimitExceeded { what, len, max } => Error::LimitExceeded {
                what,
                len: *len,
                max: *max,
            },
            Error::Poisoned { cause } => Error::Poisoned {
                cause: cause.clone(),
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::LockingUnsupported { path, reason } => Error::LockingUnsupported {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::ReadOnly { path } => Error::ReadOnly { path: path.clone() },
            Error::Decode {
                key,
                type_name,
                reason,
            } => Error::Decode {
                key: key.clone(),
                type_name,
                reason: reason.clone(),
            },
            Error::Encode { type_name, reason } => Error::Encode {
                type_name,
                reason: reason.clone(),
            },
            Error::WatchGap {
                missed_from,
                resumed_at,
            } => Error::WatchGap {
                missed_from: *missed_from,
                resumed_at: *resumed_at,
            },
        }
    }
}
