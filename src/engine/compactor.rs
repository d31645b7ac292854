//! The background thread that flushes and compacts, and closing: the thread starts the first time
//! a flush or compaction is due (an open that only reads never pays for a thread), and the last
//! handle's drop stops it and flushes before it returns
//! ([`Options::compact_on_close`](crate::Options::compact_on_close)).

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use crate::sync::lock;

use super::Store;

/// Closing flushes only a memtable of at least this many bytes (or a quarter of
/// `memtable_bytes`, if less): a smaller one replays in a few milliseconds, and a flush at every
/// close of a handle that wrote a little (every `kvctl put`) would leave a run file each time.
const CLOSE_FLUSH_MIN_BYTES: u64 = 1 << 20;

/// The background compaction thread.
pub(crate) struct Compactor {
    /// Wakes the thread; `None` until it starts, and again once the handle closes.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Whether a thread may (still) be started: background compaction is on and the handle is
    /// open.
    allowed: bool,
}

impl Compactor {
    /// No thread yet; one may start if `allowed` (background compaction is on and the handle
    /// writes).
    pub(crate) fn new(allowed: bool) -> Self {
        Compactor {
            wake: None,
            thread: None,
            allowed,
        }
    }
}

/// Starts the compaction thread; returns what wakes it.
fn spawn_compactor(weak: Weak<Store>) -> std::io::Result<(SyncSender<()>, JoinHandle<()>)> {
    let (wake, woken): (SyncSender<()>, Receiver<()>) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("sturdykv-compaction".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.flush_if_due() {
                    log::error!("background flush of {} failed: {e}", store.dir.display());
                }
                if let Err(e) = store.compact_if_due() {
                    log::error!(
                        "background compaction of {} failed: {e}",
                        store.dir.display()
                    );
                }
            }
        })?;
    Ok((wake, thread))
}

impl Store {
    /// Whether the background thread runs or may still start (the handle is open and background
    /// flushing and compaction are on).
    pub(crate) fn background_flush_allowed(&self) -> bool {
        lock(&self.compaction.compactor).allowed
    }

    /// Wakes the background compaction thread, starting it the first time (if it is already
    /// awake, it will look again).
    pub(crate) fn wake_compactor(&self) {
        let mut compactor = lock(&self.compaction.compactor);
        if compactor.wake.is_none() && compactor.allowed {
            match spawn_compactor(self.me.clone()) {
                Ok((wake, thread)) => {
                    compactor.wake = Some(wake);
                    compactor.thread = Some(thread);
                }
                Err(e) => {
                    // Compaction still happens through `compact()`; the log grows until then.
                    log::error!(
                        "starting the compaction thread for {}: {e}",
                        self.dir.display()
                    );
                    compactor.allowed = false;
                }
            }
        }
        if let Some(wake) = compactor.wake.as_ref() {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }

    /// Closes the store when the last handle goes: stops the background thread (finishing a
    /// compaction it runs, unless closing may not compact), then flushes what the log holds, so
    /// that the next open replays nothing; failing that, vouches for this handle's last records.
    pub(crate) fn close(&self) {
        let options = &self.options;
        let compacts = options.compact_on_close && options.background_compaction;
        if !compacts {
            // A running merge abandons its work at its next check.
            self.compaction.cancel.store(true, Ordering::Relaxed);
        }
        let thread = {
            let mut compactor = lock(&self.compaction.compactor);
            compactor.allowed = false;
            // Closing the channel ends the compaction thread's wait.
            compactor.wake = None;
            compactor.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if compacts {
            self.flush_before_closing();
        }
        // After a flush this handle has appended nothing to the live log: nothing to vouch for.
        self.vouch_before_closing();
    }

    /// Flushes before closing if the memtable holds enough that replaying it would show in the
    /// next open (see [`CLOSE_FLUSH_MIN_BYTES`]). Failures are logged: the log still holds
    /// everything.
    fn flush_before_closing(&self) {
        if self.options.read_only || self.poison.check().is_err() {
            return;
        }
        let least = CLOSE_FLUSH_MIN_BYTES.min(self.options.memtable_bytes / 4);
        if (self.applied.read().memtable.approximate_bytes() as u64) < least {
            return; // a few milliseconds of replay: not worth a run file per close
        }
        if let Err(e) = self.flush_memtable() {
            log::warn!(
                "flushing {} before closing failed (the log keeps every write): {e}",
                self.dir.display()
            );
        }
    }
}
