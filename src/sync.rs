//! Small synchronisation primitives the engine is built from, each named for what it guarantees.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: every lock in the engine guards state that a panicking
/// holder leaves consistent (a panic inside a commit poisons the handle instead; see
/// [`Poison`](crate::poison::Poison)).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets go of `guard`, gives the CPU to another thread, and takes the mutex again: a look that
/// spins instead of sleeping.
pub(crate) fn yield_then_lock<'a, T>(
    mutex: &'a Mutex<T>,
    guard: MutexGuard<'a, T>,
) -> MutexGuard<'a, T> {
    drop(guard);
    std::thread::yield_now();
    lock(mutex)
}

/// A condition variable that makes no system call when no thread sleeps on it. std's
/// `notify_all` always makes one (a futex wake), and a lone writer's commit notified three times:
/// the turn to append, the group's outcome, the sync's end. Both sides must hold the mutex that
/// guards the state: a sleeper counts itself under it before it sleeps, and a notifier changes the
/// state under it, so either the sleeper sees the change or the notifier sees the sleeper.
#[derive(Default)]
pub(crate) struct Signal {
    condvar: Condvar,
    sleepers: AtomicUsize,
}

impl Signal {
    /// Sleeps until notified (or spuriously woken), releasing `guard`'s mutex meanwhile.
    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        // Relaxed: the mutex orders this against the notifier's look.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let guard = self.condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Wakes every sleeper, if there is one. Call after changing the state under its mutex.
    pub(crate) fn notify_all(&self) {
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.condvar.notify_all();
        }
    }
}
