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
//! The file is JSON, by client name:
//! `{"version":1,"clients":{"alice":{"day":"2026-11-30","day_tokens":1234,"month":"2026-11",
//! "month_tokens":56789}}}`. A client removed from the config keeps its line (it may come back).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};

use super::budget::{day_label, month_label, parse_day, parse_month, Budget, Period};

/// How often counted usage is written (what a crash may lose).
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    clients: BTreeMap<String, Entry>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
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
}

#[derive(Default)]
struct Inner {
    /// Fixed by the first config with a budget (`server.state_file` needs an upgrade to change).
    path: Option<PathBuf>,
    budgets: HashMap<String, Arc<Budget>>,
    /// The file as last read, for a client that appears in a later config.
    last_read: BTreeMap<String, Entry>,
    writer: bool,
}

static STORE: Lazy<Mutex<Inner>> = Lazy::new(Default::default);

/// The budget of client `name`, shared by every config that has it. The first call reads
/// `path` (blocking: from start-up or a reload's build, never a request) and starts the writer.
pub fn budget(name: &str, path: &Path) -> Arc<Budget> {
    let mut inner = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if inner.path.is_none() {
        inner.path = Some(path.to_owned());
        if let Err(e) = sync(&mut inner) {
            log::error!(
                "client budgets: cannot read or write {}: {e}; usage is counted in memory and \
                 saved when it can be",
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
                save();
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
        save();
    }
}

fn save() {
    let mut inner = STORE.lock().unwrap_or_else(|e| e.into_inner());
    if inner.path.is_none() {
        return;
    }
    if let Err(e) = sync(&mut inner) {
        log::error!(
            "client budgets: cannot save {}: {e} (tried again in {} s)",
            inner.path.as_deref().unwrap_or(Path::new("")).display(),
            SAVE_EVERY.as_secs()
        );
    }
}

/// Under the file lock: read the file, add this process's unsaved usage, write it back if that
/// changed it, and take its totals.
fn sync(inner: &mut Inner) -> std::io::Result<()> {
    let path = inner.path.clone().unwrap_or_default();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(&path))?;
    lock.lock()?;
    let mut file = read(&path)?;
    let mut taken = Vec::new();
    for (name, budget) in &inner.budgets {
        let entry = file.clients.entry(name.clone()).or_default();
        for period in Period::BOTH {
            let (number, delta) = budget.take_unsaved(period);
            if delta == 0 {
                continue;
            }
            taken.push((budget.clone(), period, number, delta));
            match entry.get(period) {
                (n, tokens) if n == number => entry.set(period, n, tokens.saturating_add(delta)),
                (n, _) if n < number => entry.set(period, number, delta),
                _ => {} // the file is already in a later period
            }
        }
    }
    if !taken.is_empty() {
        file.version = 1;
        if let Err(e) = write(&path, &file) {
            // Counted again at the next save.
            for (budget, period, number, delta) in taken {
                budget.return_unsaved(period, number, delta);
            }
            return Err(e);
        }
    }
    for (name, budget) in &inner.budgets {
        if let Some(entry) = file.clients.get(name) {
            for period in Period::BOTH {
                let (number, tokens) = entry.get(period);
                budget.set_saved(period, number, tokens);
            }
        }
    }
    inner.last_read = file.clients;
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
                "client budgets: {} is not a state file ({e}); moved to {} and started afresh",
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
