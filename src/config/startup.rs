//! Settings bound when the process starts: the listener, the worker threads, the files the
//! server opened, Pingora's shutdown timings. A reload cannot change them in a running process;
//! they take effect through a binary upgrade. This one list is what both the reload (which keeps
//! the running values) and the change summary (which says "needs upgrade") go by.

use super::types::Config;

/// One start-up setting: its name in the file, how to show it, how to keep the running value.
pub struct StartupSetting {
    pub field: &'static str,
    pub show: fn(&Config) -> String,
    pin: fn(&mut Config, &Config),
}

pub const STARTUP_SETTINGS: &[StartupSetting] = &[
    StartupSetting {
        // The connection to the store lives as long as the process; the URL is a secret and is
        // never shown, the rest is.
        field: "shared_state",
        show: |c| match &c.shared_state {
            None => "off".to_owned(),
            Some(s) => format!(
                "namespace {}, timeout {} ms, min_relays {}, lease {} s",
                s.namespace,
                s.timeout.as_millis(),
                s.min_relays,
                s.lease.as_secs()
            ),
        },
        pin: |new, running| new.shared_state = running.shared_state.clone(),
    },
    StartupSetting {
        field: "server.listen",
        show: |c| c.server.listen.to_string(),
        pin: |new, running| new.server.listen = running.server.listen,
    },
    StartupSetting {
        field: "server.admin_listen",
        show: |c| {
            c.server
                .admin_listen
                .map_or_else(|| "none".to_owned(), |a| a.to_string())
        },
        pin: |new, running| new.server.admin_listen = running.server.admin_listen,
    },
    StartupSetting {
        field: "metrics.prometheus_listen",
        show: |c| {
            c.metrics
                .listen
                .map_or_else(|| "none".to_owned(), |a| a.to_string())
        },
        pin: |new, running| new.metrics.listen = running.metrics.listen,
    },
    StartupSetting {
        field: "server.tls",
        show: |c| if c.server.tls.is_some() { "on" } else { "off" }.to_owned(),
        // Its files may change on a reload (the certificate is reloaded); on or off is the
        // listener's.
        pin: |new, running| {
            if new.server.tls.is_some() != running.server.tls.is_some() {
                new.server.tls = running.server.tls.clone();
            }
        },
    },
    StartupSetting {
        field: "server.enable_http2",
        show: |c| c.server.enable_http2.to_string(),
        pin: |new, running| new.server.enable_http2 = running.server.enable_http2,
    },
    StartupSetting {
        field: "server.threads",
        show: |c| c.server.threads.to_string(),
        pin: |new, running| new.server.threads = running.server.threads,
    },
    StartupSetting {
        field: "server.pid_file",
        show: |c| c.server.pid_file.display().to_string(),
        pin: |new, running| new.server.pid_file = running.server.pid_file.clone(),
    },
    StartupSetting {
        field: "server.state_file",
        show: |c| c.server.state_file.display().to_string(),
        pin: |new, running| new.server.state_file = running.server.state_file.clone(),
    },
    StartupSetting {
        field: "server.upgrade_sock",
        show: |c| c.server.upgrade_sock.display().to_string(),
        pin: |new, running| new.server.upgrade_sock = running.server.upgrade_sock.clone(),
    },
    StartupSetting {
        field: "server.grace_period_seconds",
        show: |c| c.server.grace_period.as_secs().to_string(),
        pin: |new, running| new.server.grace_period = running.server.grace_period,
    },
    StartupSetting {
        field: "server.graceful_shutdown_timeout_seconds",
        show: |c| c.server.graceful_shutdown_timeout.as_secs().to_string(),
        pin: |new, running| {
            new.server.graceful_shutdown_timeout = running.server.graceful_shutdown_timeout
        },
    },
];

/// Give `new` the running process's values of every start-up setting, so what the process
/// reports (e.g. in `/status`) is what it does.
pub fn keep_running_startup_settings(new: &mut Config, running: &Config) {
    for setting in STARTUP_SETTINGS {
        (setting.pin)(new, running);
    }
}
