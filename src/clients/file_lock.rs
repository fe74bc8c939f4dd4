//! The state file's lock (`<state_file>.lock`), waited for a bounded time.
//!
//! Another process may hold it for as long as it likes (a relay stopped in a debugger, an
//! operator's `flock`): a blocking `lock()` would then keep this process from saving, from
//! reloading behind the store's mutex, and from exiting on SIGTERM. So the lock is tried every
//! [`POLL`] and given up after the caller's bound; the usage stays counted in memory until a
//! later save gets the lock.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a held lock is tried again.
const POLL: Duration = Duration::from_millis(10);

/// Why a save did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "{} is locked by another process (gave up after {:.1} s)",
        path.display(),
        waited.as_secs_f64()
    )]
    Locked { path: PathBuf, waited: Duration },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An exclusive lock (`flock(LOCK_EX)`, as `File::lock`) on `path`, created if need be, held
/// until the returned file is dropped; [`SaveError::Locked`] when another process still holds
/// it after `wait`.
pub fn lock_within(path: &Path, wait: Duration) -> Result<File, SaveError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => std::thread::sleep(POLL),
            Err(TryLockError::WouldBlock) => {
                return Err(SaveError::Locked {
                    path: path.to_owned(),
                    waited: started.elapsed(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_elsewhere_is_given_up_after_the_bound_and_taken_once_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        let held = lock_within(&path, Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = lock_within(&path, Duration::from_millis(100)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(
            matches!(err, SaveError::Locked { .. }) && err.to_string().contains("locked by"),
            "{err}"
        );
        drop(held);
        lock_within(&path, Duration::ZERO).unwrap();
    }
}
