//! Locking that goes on after a panic: the library's mutexes guard data
//! that stays consistent whatever a holder was doing when it panicked
//! (every critical section is a single insert, remove, read or swap), so a
//! poisoned lock is taken as it is instead of spreading the panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking over the data of a holder that panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
