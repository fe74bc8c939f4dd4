//! Signals the relay handles outside Pingora: SIGHUP must not kill it before the reload task
//! listens, and SIGINT must end it even when Pingora's fast shutdown hangs.

use std::path::PathBuf;

use super::pidfile::remove_pid_file_if_ours;

pub(super) fn ignore_sighup() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; nothing else in the process relies on the
    // previous disposition at this point of start-up.
    // SIGUSR1 (reopen the log files) likewise: its default action ends the process.
    unsafe {
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = signal(Signal::SIGUSR1, SigHandler::SigIgn);
    }
}

/// SIGINT means "exit now", and Pingora's fast shutdown does not always manage it: with
/// `work_stealing: false` it joins one thread per runtime, and a listener whose I/O driver has
/// already been shut down on another thread spins on "Accept() failed ... being shutdown" without
/// yielding, so that join can wait for ever while the log fills the disk (seen under load in
/// valgrind). A thread of our own, outside Pingora's runtimes, ends the process instead.
pub(super) fn exit_on_interrupt(pid_file: PathBuf) {
    let wait_for_interrupt = || -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            signal(SignalKind::interrupt())?.recv().await;
            Ok(())
        })
    };
    let watcher = std::thread::Builder::new()
        .name("cc-relay-sigint".into())
        .spawn(move || match wait_for_interrupt() {
            Ok(()) => {
                log::info!("SIGINT: exiting now");
                remove_pid_file_if_ours(&pid_file);
                crate::admin::access_log::flush();
                crate::clients::store::flush();
                std::process::exit(0);
            }
            Err(e) => log::warn!("SIGINT is left to Pingora: {e}"),
        });
    if let Err(e) = watcher {
        log::warn!("SIGINT is left to Pingora: {e}");
    }
}
