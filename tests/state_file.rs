//! The client budgets' state file (`server.state_file`) when it cannot be written: its lock
//! held by another process (issue 26: SIGTERM waited ~22 s; a reload behind it), or the file
//! unwritable (said once per outage, not every second).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cc_relay::clients::store::LOCK_WAIT;
use common::*;
use nix::sys::signal::Signal;

fn config(mock: &MockUpstream, extra_clients: &str) -> String {
    format!(
        "{}clients:\n  - name: alice\n    key: alice-key\n    daily_token_budget: 1000000\n    \
         admin: true\n{extra_clients}",
        pool_config(mock, &[("k1", "sk-1", "")], "")
    )
}

fn server(state_file: &Path) -> String {
    // A grace period far past the lock's bound: on its own Pingora would end the process only
    // after 35 s, so an exit within the bound is the relay's doing.
    format!(
        "  state_file: \"{}\"\n  grace_period_seconds: 30\n  graceful_shutdown_timeout_seconds: 5\n",
        state_file.display()
    )
}

/// A request as `key`, served; then wait until the relay settled it. The client's day count.
async fn spend(relay: &RelayProcess, key: &str, index: usize) -> u64 {
    let body = message_body("claude-sonnet-4-5", false);
    let resp = post_messages(relay, &body, &[("x-api-key", key)]).await;
    assert_eq!(resp.status(), 200);
    relay.wait_settled(Some("alice-key")).await;
    day_used(relay, "alice-key", index).await
}

/// `<state_file>.lock` locked by this (test) process: `flock(LOCK_EX)`, the kind the relay
/// takes (`File::lock`), held until dropped.
fn hold_lock(state_file: &Path) -> File {
    let mut path = state_file.as_os_str().to_owned();
    path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(path))
        .unwrap();
    file.lock().unwrap();
    file
}

/// The relay's ERROR lines that speak of the client budgets' file.
fn state_file_errors(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains(" ERROR ") && l.contains("client budgets"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_within_the_bound_while_another_process_holds_the_state_file_lock() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("budgets.json");
    let mut relay = RelayProcess::start(&server(&state_file), &config(&mock, ""));
    let saved = spend(&relay, "alice-key", 0).await;
    wait_saved(&state_file, &[("alice", saved)], &relay).await;

    // Another process takes the lock; alice spends more, which no save can write now.
    let lock = hold_lock(&state_file);
    let used = spend(&relay, "alice-key", 0).await;
    assert!(used > saved);
    // Past a save period: the writer thread has met the held lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    relay.signal(Signal::SIGTERM);
    let sent = Instant::now();
    let code = relay.wait_exit(Duration::from_secs(15));
    let took = sent.elapsed();
    let logs = relay.logs();
    assert!(
        code.is_some(),
        "the relay did not exit within 15 s of SIGTERM while another process held the state \
         file's lock; logs:\n{logs}"
    );
    assert_eq!(code, Some(0), "{logs}");
    // The bound, the drain's 200 ms, a periodic save's 500 ms in progress, and slack.
    assert!(
        took < LOCK_WAIT + Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    let line = format!(
        "client budgets: not saved at exit: {}.lock is locked by another process (gave up after \
         {:.1} s); usage counted since the last save is not written to {}: alice {} tokens",
        state_file.display(),
        LOCK_WAIT.as_secs_f64(),
        state_file.display(),
        used - saved
    );
    assert!(logs.contains(&line), "no line {line:?} in:\n{logs}");
    // Before it, the periodic saves gave up, and said so once.
    let errors = state_file_errors(&logs);
    assert_eq!(errors.len(), 2, "{logs}");
    assert!(
        errors[0].contains("cannot save") && errors[0].contains("is locked by another process"),
        "{logs}"
    );
    assert!(!logs.contains("alice-key"));
    // The lock was respected: the file holds what was saved before it.
    assert_eq!(saved_day_tokens(&state_file, "alice"), Some(saved));

    // Released, nothing else is broken: the next relay reads the file, serves and saves.
    drop(lock);
    let relay = RelayProcess::start(&server(&state_file), &config(&mock, ""));
    assert_eq!(day_used(&relay, "alice-key", 0).await, saved);
    let after = spend(&relay, "alice-key", 0).await;
    assert!(after > saved);
    wait_saved(&state_file, &[("alice", after)], &relay).await;
    assert!(
        state_file_errors(&relay.logs()).is_empty(),
        "{}",
        relay.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_completes_while_another_process_holds_the_state_file_lock() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("budgets.json");
    let server = server(&state_file);
    let relay = RelayProcess::start(&server, &config(&mock, ""));
    let saved = spend(&relay, "alice-key", 0).await;
    wait_saved(&state_file, &[("alice", saved)], &relay).await;

    let lock = hold_lock(&state_file);
    let used = spend(&relay, "alice-key", 0).await;
    // Past a save period: the writer thread has met the held lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The reload builds the clients' budgets (the store), one of them new.
    let bob = "  - name: bob\n    key: bob-key\n    daily_token_budget: 1000000\n";
    relay.rewrite_config(&server, &config(&mock, bob));
    relay.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&relay, "/health").await["config_generation"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the reload did not land within 10 s while the state file's lock was held; \
             logs:\n{}",
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(day_used(&relay, "alice-key", 0).await, used);
    let bob_used = spend(&relay, "bob-key", 1).await;
    assert!(bob_used > 0);
    // Said once, however many saves gave up (the writer logs it on its own schedule: wait for
    // it before counting).
    assert!(
        relay.wait_for_log("is locked by another process", Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
    let logs = relay.logs();
    let errors = state_file_errors(&logs);
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(errors[0].contains("is locked by another process"), "{logs}");

    // Released: both counts are saved, and the relay says so.
    drop(lock);
    wait_saved(&state_file, &[("alice", used), ("bob", bob_used)], &relay).await;
    assert!(
        relay.wait_for_log("saved again", Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_state_file_is_said_once_per_outage_and_saved_once_it_can_be() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    // Its directory becomes a regular file: creating and writing in it fail, for root too
    // (a chmod 0555 directory would not stop root).
    let dir = state_dir.path().join("state");
    let state_file = dir.join("budgets.json");
    let relay = RelayProcess::start(&server(&state_file), &config(&mock, ""));
    let saved = spend(&relay, "alice-key", 0).await;
    wait_saved(&state_file, &[("alice", saved)], &relay).await;

    let away = state_dir.path().join("state.away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    // Alice keeps spending over several save periods, each save failing.
    let mut used = saved;
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        used = spend(&relay, "alice-key", 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(used > saved);
    let logs = relay.logs();
    let errors = state_file_errors(&logs);
    assert_eq!(errors.len(), 1, "one ERROR per outage:\n{logs}");
    assert!(
        errors[0].contains(&format!("cannot save {}", state_file.display())),
        "{logs}"
    );

    // Writable again: saved, said once at INFO, with everything counted meanwhile.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&away, &dir).unwrap();
    wait_saved(&state_file, &[("alice", used)], &relay).await;
    let line = format!("client budgets: {} saved again", state_file.display());
    assert!(
        relay.wait_for_log(&line, Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
    let logs = relay.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(&line) && l.contains(" INFO ")),
        "{logs}"
    );
    assert_eq!(state_file_errors(&logs).len(), 1, "{logs}");
}
