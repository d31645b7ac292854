//! The poison latch: after a failure that leaves the handle unsure what reached the disk (a failed
//! `fdatasync`, a directory sync that failed, a panic in the middle of a commit), the handle
//! refuses every later write until it is reopened, and reopening re-derives the truth from the
//! files. After a failed `fdatasync` the kernel may have dropped the dirty pages, so a retry could
//! "succeed" without the data (PostgreSQL's "fsyncgate", 2018).

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::sync::lock;

/// Set once, by the first failure; never cleared.
#[derive(Debug, Default)]
pub(crate) struct Poison(Mutex<Option<String>>);

impl Poison {
    /// `Err(Error::Poisoned)` naming the first failure, once one happened.
    pub(crate) fn check(&self) -> Result<()> {
        match &*lock(&self.0) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Latches `cause`, unless an earlier failure already did.
    pub(crate) fn set(&self, cause: String) {
        lock(&self.0).get_or_insert(cause);
    }
}
