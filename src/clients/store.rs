//! The clients' budgets on disk (`server.state_file`), so they survive restarts, reloads and
//! upgrades.
//!
//! A thread of its own, never a request, writes the file: every [`SAVE_EVERY`] when some usage
//! was counted, and once more when the process exits ([`flush`]). Each save holds an exclusive
//! lock on `<state_file>.lock`, reads the file, *adds* what this process counted since its last
//! save, writes a temporary file beside it and renames it over the old one (a crash leaves the
//! old file or the new one, never half of one), then takes the file's totals as its own. So an
//! upgrade's old and new processes — or relays on one machine sharing the file — add up their
//! usage instead of overwriting each other's, and each sees the others' within a save.
//!
//! The lock is waited for a bounded time (`file_lock.rs`), never with the store's mutex held: a
//! save gives up after [`SAVE_LOCK_WAIT`] and the usage stays in memory for the next one; the
//! first read (start-up, or the reload that brings the first budget) and the save at exit give
//! up after [`LOCK_WAIT`], the exit saying what it could not write. Another process holding the
//! lock cannot keep this one from reloading or exiting.
//!
//! A count this process has seen never goes down because the file changed under it: a file
//! deleted, or replaced by one that is not a state file (moved aside to `<state_file>.unreadable`),
//! is written again with what this process knows — for each client and period, the larger of
//! the file's figure (plus what this process adds) and what this process has seen — and its
//! counts in memory only rise. Taking the larger, never the sum, is what keeps several
//! processes from counting each other's usage twice when one of them restores the file; what
//! another process added since this one last read the file may then be lost from it.
//!
//! The file is JSON, by client name:
//! `{"version":1,"clients":{"alice":{"day":"2026-11-30","day_tokens":1234,"month":"2026-11",
//! "month_tokens":56789}}}`. A client removed from the config keeps its line (it may come back).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};

use super::budget::{day_label, month_label, parse_day, parse_month, Budget, Period};
use super::file_lock::{lock_within, SaveError};

/// How often counted usage is written (what a crash may lose).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The longest a periodic save waits for the file lock (another relay's save holds it for
/// milliseconds); then it gives up and the next one tries again.
const SAVE_LOCK_WAIT: Duration = Duration::from_millis(500);

/// The longest the first read and the save at exit wait for the file lock: what another
/// process holding it can add to a start-up, a reload or an exit.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    clients: BTreeMap<String, Entry>,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Entry {
    #[serde(default)]
    day: String,
    #[serde(default)]
    day_tokens: u64,
    #[serde(default)]
    month: String,
    #[serde(default)]
    month_tokens: u64,
}

impl Entry {
    /// The period's number and tokens (`(0, 0)` when the entry has none).
    fn get(&self, period: Period) -> (u64, u64) {
        let (label, tokens) = match period {
            Period::Day => (parse_day(&self.day), self.day_tokens),
            Period::Month => (parse_month(&self.month), self.month_tokens),
        };
        label.map_or((0, 0), |n| (n, tokens))
    }

    fn set(&mut self, period: Period, number: u64, tokens: u64) {
        match period {
            Period::Day => (self.day, self.day_tokens) = (day_label(number), tokens),
            Period::Month => (self.month, self.month_tokens) = (month_label(number), tokens),
        }
    }

    /// Add `delta` tokens of period `number`: to the period's figure, or as a new period's
    /// first (nothing when the entry is already in a later period).
    fn add(&mut self, period: Period, number: u64, delta: u64) {
        match self.get(period) {
            (n, tokens) if n == number => self.set(period, n, tokens.saturating_add(delta)),
            (n, _) if n < number => self.set(period, number, delta),
            _ => {}
        }
    }

    /// Hold at least `tokens` in period `number` (nothing when it already does, or is in a
    /// later period).
    fn raise(&mut self, period: Period, number: u64, tokens: u64) {
        match self.get(period) {
            (n, held) if n == number && held < tokens => self.set(period, n, tokens),
            (n, _) if n < number && tokens > 0 => self.set(period, number, tokens),
            _ => {}
        }
    }

    /// Hold at least what `other` holds, period by period.
    fn raise_to(&mut self, other: &Entry) {
        for period in Period::BOTH {
            let (number, tokens) = other.get(period);
            self.raise(period, number, tokens);
        }
    }
}

#[derive(Clone, Default)]
struct Inner {
    /// Fixed by the first config with a budget (`server.state_file` needs an upgrade to change).
    path: Option<PathBuf>,
    budgets: HashMap<String, Arc<Budget>>,
    /// The file as last read, for a client that appears in a later config.
    last_read: BTreeMap<String, Entry>,
    writer: bool,
    /// The last save failed (and said so): the next failure is not logged again.
    failing: bool,
}

static STORE: Lazy<Mutex<Inner>> = Lazy::new(Default::default);

/// One save at a time (the writer thread's and the one at exit): held across the file lock's
/// wait instead of [`STORE`], which a reload's build takes.
static SAVING: Mutex<()> = Mutex::new(());

/// The budget of client `name`, shared by every config that has it. The first call reads
/// `path` (blocking: from start-up or a reload's build, never a request) and starts the writer.
pub fn budget(name: &str, path: &Path) -> Arc<Budget> {
    let mut inner = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if inner.path.is_none() {
        inner.path = Some(path.to_owned());
        // Under the mutex, but nothing else uses the store yet (no budget, no writer thread).
        if let Err(e) = sync(&mut inner, LOCK_WAIT) {
            inner.failing = true;
            log::error!(
                "client budgets: cannot read or write {}: {e}; usage is counted in memory, \
                 saved and raised to the file's counts when it can be",
                path.display()
            );
        }
    }
    if let Some(b) = inner.budgets.get(name) {
        return b.clone();
    }
    let budget = Arc::new(Budget::default());
    if let Some(entry) = inner.last_read.get(name) {
        for period in Period::BOTH {
            let (number, tokens) = entry.get(period);
            budget.set_saved(period, number, tokens);
        }
    }
    inner.budgets.insert(name.to_owned(), budget.clone());
    if !inner.writer {
        inner.writer = true;
        let spawned = std::thread::Builder::new()
            .name("cc-relay-state".into())
            .spawn(|| loop {
                std::thread::sleep(SAVE_EVERY);
                save(false);
            });
        if let Err(e) = spawned {
            log::error!("client budgets: cannot start the writer thread: {e}");
        }
    }
    budget
}

/// Write what was counted and not saved yet (before the process exits).
pub fn flush() {
    if Lazy::get(&STORE).is_some() {
        save(true);
    }
}

/// `last`: the process is exiting, a failure is said whether or not it was already, with
/// what it leaves unwritten.
fn save(last: bool) {
    let _one_save = SAVING.lock().unwrap_or_else(|e| e.into_inner());
    // A copy (the budgets are shared `Arc`s): the file lock is waited for without the mutex.
    let mut copy = STORE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(path) = copy.path.clone() else {
        return;
    };
    let result = sync(&mut copy, if last { LOCK_WAIT } else { SAVE_LOCK_WAIT });
    let mut inner = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if result.is_ok() {
        inner.last_read = copy.last_read;
    }
    match result {
        Err(e) if last => {
            inner.failing = true;
            log::error!(
                "client budgets: not saved at exit: {e}; usage counted since the last save is \
                 not written to {}: {}",
                path.display(),
                unsaved(&copy.budgets)
            );
        }
        // Once per outage, not every second.
        Err(e) if !inner.failing => {
            inner.failing = true;
            log::error!(
                "client budgets: cannot save {}: {e} (tried again every {} s; the usage is kept \
                 in memory meanwhile)",
                path.display(),
                SAVE_EVERY.as_secs()
            );
        }
        Err(_) => {}
        Ok(()) if inner.failing => {
            inner.failing = false;
            log::info!("client budgets: {} saved again", path.display());
        }
        Ok(()) => {}
    }
}

/// What `budgets` counted and no save took: `alice 120 tokens, bob 7 tokens` (names only).
fn unsaved(budgets: &HashMap<String, Arc<Budget>>) -> String {
    let mut left: Vec<_> = budgets
        .iter()
        .map(|(name, b)| (name.as_str(), b.unsaved()))
        .filter(|&(_, tokens)| tokens > 0)
        .collect();
    if left.is_empty() {
        return "none".into();
    }
    left.sort_unstable();
    let left: Vec<_> = left
        .iter()
        .map(|(name, tokens)| format!("{name} {tokens} tokens"))
        .collect();
    left.join(", ")
}

/// Under the file lock (waited for at most `wait`): read the file, add this process's unsaved
/// usage and raise it to what this process knows, write it back if that changed it, and take
/// its totals. Nothing is taken from the budgets before the lock is held, and what was taken
/// is given back when the write fails: a failed save loses nothing.
fn sync(inner: &mut Inner, wait: Duration) -> Result<(), SaveError> {
    let path = inner.path.clone().unwrap_or_default();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let _lock = lock_within(&lock_path(&path), wait)?;
    let read = read(&path)?.clients;
    let mut clients = read.clone();
    // Clients this process does not run (or not yet): what it last read of them.
    for (name, seen) in &inner.last_read {
        clients.entry(name.clone()).or_default().raise_to(seen);
    }
    let mut taken = Vec::new();
    for (name, budget) in &inner.budgets {
        let mut entry = clients.get(name).cloned().unwrap_or_default();
        for period in Period::BOTH {
            let (number, delta) = budget.take_unsaved(period);
            if delta > 0 {
                taken.push((budget.clone(), period, number, delta));
                entry.add(period, number, delta);
            }
            // After the take: what it has seen, the taken tokens included.
            let (number, known) = budget.known(period);
            entry.raise(period, number, known);
        }
        if entry != Entry::default() {
            clients.insert(name.clone(), entry);
        }
    }
    if clients != read {
        let file = StateFile {
            version: 1,
            clients,
        };
        if let Err(e) = write(&path, &file) {
            // Counted again at the next save.
            for (budget, period, number, delta) in taken {
                budget.return_unsaved(period, number, delta);
            }
            return Err(e.into());
        }
        clients = file.clients;
    }
    for (name, budget) in &inner.budgets {
        if let Some(entry) = clients.get(name) {
            for period in Period::BOTH {
                let (number, tokens) = entry.get(period);
                budget.set_saved(period, number, tokens);
            }
        }
    }
    inner.last_read = clients;
    Ok(())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The file, or an empty one when there is none yet. A file that is not ours to read is moved
/// aside (kept for the operator) rather than overwritten.
fn read(path: &Path) -> std::io::Result<StateFile> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<StateFile>(&text) {
        Ok(file) => Ok(file),
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".unreadable");
            std::fs::rename(path, &aside)?;
            log::error!(
                "client budgets: {} is not a state file ({e}); moved to {} and written again \
                 with what this process has counted",
                path.display(),
                Path::new(&aside).display()
            );
            Ok(StateFile::default())
        }
    }
}

fn write(path: &Path, file: &StateFile) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut tmp, file)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::budget::Calendar;

    /// One relay process's store on `path` (the real one is a process-wide static).
    fn process(path: &Path) -> Inner {
        Inner {
            path: Some(path.to_owned()),
            ..Default::default()
        }
    }

    fn client(process: &mut Inner, name: &str) -> Arc<Budget> {
        let budget = Arc::new(Budget::default());
        process.budgets.insert(name.into(), budget.clone());
        budget
    }

    fn saved(path: &Path, name: &str) -> u64 {
        read(path).unwrap().clients[name].get(Period::Day).1
    }

    #[test]
    fn processes_sharing_a_file_add_up_and_restore_it_without_counting_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let now = Calendar::at(1_796_068_443);
        let (mut a, mut b) = (process(&path), process(&path));
        let (in_a, in_b) = (client(&mut a, "alice"), client(&mut b, "alice"));
        let bob = client(&mut a, "bob");
        let day = |budget: &Budget| budget.used(Period::Day, &now);

        in_a.add(100, &now);
        bob.add(7, &now);
        sync(&mut a, LOCK_WAIT).unwrap();
        in_b.add(50, &now);
        sync(&mut b, LOCK_WAIT).unwrap();
        sync(&mut a, LOCK_WAIT).unwrap();
        assert_eq!(
            (day(&in_a), day(&in_b), saved(&path, "alice")),
            (150, 150, 150)
        );

        // Deleted: the first to save writes what it knows, the other adds nothing twice.
        std::fs::remove_file(&path).unwrap();
        sync(&mut b, LOCK_WAIT).unwrap();
        sync(&mut a, LOCK_WAIT).unwrap();
        assert_eq!((saved(&path, "alice"), saved(&path, "bob")), (150, 7));
        // B never ran bob: it restores him from what it read.
        std::fs::remove_file(&path).unwrap();
        sync(&mut b, LOCK_WAIT).unwrap();
        assert_eq!(saved(&path, "bob"), 7);

        // Deleted with usage not saved yet on both sides.
        in_a.add(10, &now);
        in_b.add(5, &now);
        std::fs::remove_file(&path).unwrap();
        sync(&mut a, LOCK_WAIT).unwrap();
        assert_eq!(saved(&path, "alice"), 160);
        sync(&mut b, LOCK_WAIT).unwrap();
        sync(&mut a, LOCK_WAIT).unwrap();
        assert_eq!(
            (day(&in_a), day(&in_b), saved(&path, "alice")),
            (165, 165, 165)
        );

        // Garbage: moved aside, written again, nothing lowered.
        std::fs::write(&path, "{ not json").unwrap();
        sync(&mut a, LOCK_WAIT).unwrap();
        assert_eq!(saved(&path, "alice"), 165);
        assert!(dir.path().join("budgets.json.unreadable").exists());
        // A valid file that says less (an old copy put back): raised again.
        let mut old = read(&path).unwrap();
        old.clients.get_mut("alice").unwrap().day_tokens = 3;
        write(&path, &old).unwrap();
        sync(&mut b, LOCK_WAIT).unwrap();
        assert_eq!((day(&in_b), saved(&path, "alice")), (165, 165));

        // An untouched file is not written again.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        sync(&mut a, LOCK_WAIT).unwrap();
        sync(&mut b, LOCK_WAIT).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn a_save_that_cannot_get_the_lock_keeps_the_usage_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let now = Calendar::at(1_796_068_443);
        let mut a = process(&path);
        let alice = client(&mut a, "alice");
        alice.add(100, &now);
        sync(&mut a, LOCK_WAIT).unwrap();
        alice.add(20, &now);

        let held = lock_within(&lock_path(&path), Duration::ZERO).unwrap();
        let err = sync(&mut a, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, SaveError::Locked { .. }), "{err}");
        assert_eq!((saved(&path, "alice"), alice.unsaved()), (100, 20));
        assert_eq!(unsaved(&a.budgets), "alice 20 tokens");
        drop(held);
        sync(&mut a, Duration::ZERO).unwrap();
        assert_eq!((saved(&path, "alice"), alice.unsaved()), (120, 0));
        assert_eq!(alice.used(Period::Day, &now), 120);
    }
}
