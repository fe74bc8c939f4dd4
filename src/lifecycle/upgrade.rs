//! In-place binary upgrade (SIGUSR2): start the binary now installed at our path with
//! `serve --upgrade`, wait until it waits for the listeners, then SIGQUIT ourselves so Pingora
//! hands them over and this process drains.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an in-place upgrade waits for the new process to be ready for the listeners.
pub(super) const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// The path this process was started from. Not `/proc/self/exe`: after the binary is replaced
/// on disk that names the deleted old file, and an upgrade must start the new one.
pub(super) fn own_executable() -> PathBuf {
    let arg0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
    if arg0.components().count() > 1 {
        std::path::absolute(&arg0).unwrap_or(arg0)
    } else {
        // Started through $PATH: the running image's path is the best we know.
        std::env::current_exe().unwrap_or(arg0)
    }
}

/// Start the binary at `exe` with `serve --upgrade`; once it waits on the upgrade socket,
/// SIGQUIT ourselves so Pingora hands it the listeners and we drain.
pub(super) async fn hand_over(exe: &Path, config_path: Option<&Path>, upgrade_sock: &Path) {
    // A socket file left by an earlier upgrade would look like the new process waiting.
    let _ = std::fs::remove_file(upgrade_sock);
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("serve").arg("--upgrade");
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::error!("upgrade: cannot start {}: {e}", exe.display());
            return;
        }
    };
    log::info!(
        "upgrade: started {} (pid {}), waiting for it to take the listeners",
        exe.display(),
        child.id().unwrap_or(0)
    );
    let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
    while !upgrade_sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            log::error!(
                "upgrade: the new process exited ({status}) before taking over; still serving"
            );
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            log::error!("upgrade: the new process did not get ready in {UPGRADE_WAIT:?}; stopping it, still serving");
            let _ = child.kill().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new process outlives us: let it go rather than reap it.
    drop(child);
    use nix::sys::signal::{raise, Signal};
    if let Err(e) = raise(Signal::SIGQUIT) {
        log::error!("upgrade: cannot hand over the listeners: {e}");
    }
}
