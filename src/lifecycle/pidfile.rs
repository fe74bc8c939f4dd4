//! The pid file: written once the relay serves, removed only while it still names us.

use std::path::Path;

use super::LifecycleError;

pub(super) fn write_pid_file(path: &Path) -> Result<(), LifecycleError> {
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
        LifecycleError::PidFile {
            path: path.to_owned(),
            source,
        }
    })
}

/// After an upgrade the new process owns the pid file: only remove it if it still names us.
pub(super) fn remove_pid_file_if_ours(path: &Path) {
    if read_pid(path).ok() == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

pub(super) fn read_pid(path: &Path) -> Result<i32, LifecycleError> {
    let text = std::fs::read_to_string(path).map_err(|source| LifecycleError::PidFile {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| LifecycleError::PidFile {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a pid"),
    })
}
