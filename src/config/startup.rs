//! Settings bound when the process starts: the listener, the worker threads, the files the
//! server opened, Pingora's shutdown timings. A reload cannot change them in a running process;
//! they take effect through a binary upgrade. This one list is what both the reload (which keeps
//! the running values) and the change summary (which says "needs upgrade") go by.

use super::types::ServerSettings;

/// One start-up setting: its name in the file, how to show it, how to keep the running value.
pub struct StartupSetting {
    pub field: &'static str,
    pub show: fn(&ServerSettings) -> String,
    pin: fn(&mut ServerSettings, &ServerSettings),
}

pub const STARTUP_SETTINGS: &[StartupSetting] = &[
    StartupSetting {
        field: "server.listen",
        show: |s| s.listen.to_string(),
        pin: |new, running| new.listen = running.listen,
    },
    StartupSetting {
        field: "server.admin_listen",
        show: |s| {
            s.admin_listen
                .map_or_else(|| "none".to_owned(), |a| a.to_string())
        },
        pin: |new, running| new.admin_listen = running.admin_listen,
    },
    StartupSetting {
        field: "server.threads",
        show: |s| s.threads.to_string(),
        pin: |new, running| new.threads = running.threads,
    },
    StartupSetting {
        field: "server.pid_file",
        show: |s| s.pid_file.display().to_string(),
        pin: |new, running| new.pid_file = running.pid_file.clone(),
    },
    StartupSetting {
        field: "server.upgrade_sock",
        show: |s| s.upgrade_sock.display().to_string(),
        pin: |new, running| new.upgrade_sock = running.upgrade_sock.clone(),
    },
    StartupSetting {
        field: "server.grace_period_seconds",
        show: |s| s.grace_period.as_secs().to_string(),
        pin: |new, running| new.grace_period = running.grace_period,
    },
    StartupSetting {
        field: "server.graceful_shutdown_timeout_seconds",
        show: |s| s.graceful_shutdown_timeout.as_secs().to_string(),
        pin: |new, running| new.graceful_shutdown_timeout = running.graceful_shutdown_timeout,
    },
];

/// Give `new` the running process's values of every start-up setting, so what the process
/// reports (e.g. in `/status`) is what it does.
pub fn keep_running_startup_settings(new: &mut ServerSettings, running: &ServerSettings) {
    for setting in STARTUP_SETTINGS {
        (setting.pin)(new, running);
    }
}
