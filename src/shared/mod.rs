//! Key budgets and cooldowns shared by many relays through Redis or Valkey (`shared_state`).
//!
//! Each relay keeps its local pool (`crate::pool`) as a mirror and as its fallback. With the
//! store reachable, an admission is one scripted round trip (`scripts::EXCHANGE`): the local
//! pool proposes its preferred key and the others that look able to take the request, the store
//! reserves on the first that really can (every relay's use counted, on the store's clock) and
//! answers its balances, which the local mirror takes. Each worker thread has its own line to
//! the store (`link`), which sends the admissions and the ended reservations (settlements, with
//! the upstream's rate-limit figures) that piled up while its calls were out in one call.
//! Cooldowns reach the store at once, off the request path (`worker`).
//!
//! When the store is slow or down, the breaker (`breaker`) opens and each relay keeps to its
//! share of every key, 1/N of each limit with N the relays last seen alive (never fewer than
//! `min_relays`), starting empty: never unchecked. When the store answers again, each relay
//! marks every key empty in it (balances only go down) before the breaker closes, so there is
//! no burst.
//!
//! A relay starting joins the others at no cost to them: its requests wait (bounded) for the
//! store's first answer instead of spending or refusing from a local share, and joining pushes
//! into the store only what the relay itself admitted before (nothing, when the store answered
//! in time).

mod breaker;
mod keys;
mod lease;
mod link;
mod scripts;
mod stats;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use redis::aio::ConnectionManagerConfig;

use crate::config::SharedStateConfig;
use crate::pool::{Demand, Exhausted, KeyPool, Reservation, FULL_SHARE};
use crate::proxy::RuntimeState;

pub use keys::{pool_names, KeyNames};
pub use stats::StoreStatus;
pub use worker::StoreTask;

use breaker::Breaker;
use lease::{Op, SharedLease};
use link::{Answer, Candidate, Item};
use stats::{Event, Stats};

/// The window of every bucket, in the store's unit (µs).
const WINDOW_US: u64 = 60_000_000;
/// How much later (or earlier) than the store's clock says a request may reach the upstream:
/// the store's answer, the relay's scheduling and the upstream connection all take a variable
/// time. The upstream counts a request when it arrives, so a request admitted the instant a
/// token refills in the store can arrive before that token refills at the upstream, which
/// answers 429. When a response says a key is empty (`remaining: 0`), the tokens the store
/// counts next are refills, and the store counts each this much later than the figure alone
/// says: a lag once per time a key runs dry, never a lower rate, and nothing while the key
/// still holds whole tokens (those are already in the upstream's bucket, whatever the timing).
const DELIVERY_ALLOWANCE_US: u64 = 250_000;
/// Candidate keys offered to the store per admission: the preferred one and the next best.
const MAX_CANDIDATES: usize = 8;
/// Lessons (and ends of reservations made off a worker thread) waiting for the store; beyond
/// this they are dropped (counted), and the reservations come back through refill when their
/// lease runs out.
const QUEUE: usize = 16_384;

static STORE: OnceCell<Arc<Store>> = OnceCell::new();

/// The process's store, when `shared_state` is configured.
pub fn installed() -> Option<&'static Arc<Store>> {
    STORE.get()
}

/// Set up the store for `config` (once per process: the connection lives as long as it). The
/// connection itself is made by [`StoreTask`] inside Pingora's runtime.
pub fn install(config: &SharedStateConfig) -> Arc<Store> {
    STORE
        .get_or_init(|| Arc::new(Store::new(config.clone())))
        .clone()
}

/// How the store answered an admission.
pub enum Admission {
    /// Admitted on this key (the reservation carries the store's lease), or the store is not
    /// asked while its breaker is open and the local reservation, made at this relay's share,
    /// stands.
    Granted(Reservation),
    /// No candidate can take the request now, every relay's use counted.
    Refused(Exhausted),
    /// The store failed this admission: its breaker is now open and the pools keep to their
    /// share; the caller reserves again locally.
    Failed,
}

/// What each connection to the store is made from.
struct Connect {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The longest a settlement, lesson or heartbeat waits for its answer.
    op_timeout: Duration,
}

pub struct Store {
    config: SharedStateConfig,
    /// This process among the relays of the namespace (random per start).
    relay_id: String,
    relays_key: String,
    /// How to reach the store, once the background task has checked the URL.
    connect: OnceCell<Connect>,
    breaker: Breaker,
    /// Relays alive at the last heartbeat (0 before the first).
    relays_alive: AtomicU32,
    /// The store's first verdict (its first heartbeat and reseed, answered or not) is in: until
    /// then requests wait for it (`joined`), up to `join_wait`.
    started: AtomicBool,
    started_notify: tokio::sync::Notify,
    seq: AtomicU64,
    ops: tokio::sync::mpsc::Sender<Op>,
    ops_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Op>>>,
    stats: Stats,
}

impl Store {
    fn new(config: SharedStateConfig) -> Store {
        let (ops, rx) = tokio::sync::mpsc::channel(QUEUE);
        Store {
            relay_id: format!(
                "{:08x}{:04x}",
                fastrand::u32(..),
                std::process::id() & 0xffff
            ),
            relays_key: keys::relays_set(&config.namespace),
            config,
            connect: OnceCell::new(),
            breaker: Breaker::new_open(),
            relays_alive: AtomicU32::new(0),
            started: AtomicBool::new(false),
            started_notify: tokio::sync::Notify::new(),
            seq: AtomicU64::new(0),
            ops,
            ops_rx: std::sync::Mutex::new(Some(rx)),
            stats: Stats::new(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// The longest a settlement, lesson, heartbeat or reseed waits for the store's answer.
    fn op_timeout(&self) -> Duration {
        (self.config.timeout * 4).max(Duration::from_millis(100))
    }

    /// The longest a request waits for the store's first verdict: its first heartbeat and
    /// reseed, each bounded by `op_timeout`, and a heartbeat's time for the background service
    /// to start after the listeners.
    fn join_wait(&self) -> Duration {
        2 * self.op_timeout() + worker::HEARTBEAT
    }

    /// Wait until the store has given its first verdict (at most `join_wait`); at once
    /// afterwards. A relay that has not asked the store yet knows nothing of what the others
    /// took: granting from its local share would overdraw the key (a full share) or refuse
    /// what the key still has (a share of 1/`min_relays`). After the verdict the breaker says
    /// which rule holds: the store's, or the local share when it did not answer.
    pub async fn joined(&self) {
        if self.started.load(Relaxed) {
            return;
        }
        let notified = self.started_notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read again, so a verdict landing in between wakes it.
        notified.as_mut().enable();
        if self.started.load(Relaxed) {
            return;
        }
        if tokio::time::timeout(self.join_wait(), notified)
            .await
            .is_err()
        {
            log::debug!(
                "shared_state: no verdict from the store within {:?}; admitting at the local share",
                self.join_wait()
            );
        }
    }

    /// The store's first verdict is in (or will never come): requests stop waiting for it.
    fn set_started(&self) {
        if !self.started.swap(true, Relaxed) {
            self.started_notify.notify_waiters();
        }
    }

    /// The part of each key's limits this relay may use now, in millionths.
    fn share_ppm(&self) -> u64 {
        if self.breaker.is_closed() {
            FULL_SHARE
        } else {
            let n = self
                .relays_alive
                .load(Relaxed)
                .max(self.config.min_relays)
                .max(1);
            FULL_SHARE / u64::from(n)
        }
    }

    /// Whether this relay keeps to its share of every key now (the breaker is open): what an
    /// upstream says is left of a key is then the others' as much as this relay's.
    pub fn keeps_to_share(&self) -> bool {
        !self.breaker.is_closed()
    }

    /// Make every pool of `state` keep to the share the breaker calls for (after the breaker
    /// moved, and for the pools of a reloaded config).
    pub fn apply_share(&self, state: &RuntimeState) {
        let ppm = self.share_ppm();
        for pool in state.providers.iter().filter_map(|p| p.pool.as_ref()) {
            pool.set_share(ppm);
        }
    }

    /// The store failed: open the breaker (if this is the failure that does) and keep to the
    /// share.
    fn trip(&self, state: &RuntimeState, why: &str) {
        if self.breaker.open() {
            log::warn!(
                "shared_state: the store failed ({why}); each key's budget is now kept locally \
                 at 1/{} of its limits until the store answers again",
                FULL_SHARE / self.share_ppm()
            );
            self.stats.count(Event::BreakerOpened);
            // What this relay's mirror says of a key may be stale by whatever the others took
            // since its last admission there: each share starts empty and refills at 1/N of
            // the key's rate, so together the relays never take more than the key grants.
            // And a failure here does not mean the others lost the store too (one slow answer
            // under load opens only this relay's breaker): while they admit through it, all
            // this relay takes at its share is more than the key grants. So the share starts
            // refilling only once the breaker has been open as long as it stays open anyway:
            // a hiccup costs this relay's requests a wait, never an upstream 429, and in a
            // real outage every relay keeps to its share from then on.
            let now = Instant::now();
            let hold = worker::REOPEN_AFTER.as_nanos() as u64;
            let full = [WINDOW_US * 1_000 + hold; 3];
            for pool in state.providers.iter().filter_map(|p| p.pool.as_ref()) {
                for key in pool.keys() {
                    key.sync_debts_at(full, now);
                }
            }
        }
        self.apply_share(state);
    }

    /// Ask the store to admit `demand` on `first`'s key or, failing that, on the next best
    /// key of `pool` outside `tried`. `first` was reserved locally and is given back unless the
    /// store picks its key.
    pub async fn admit(
        self: &Arc<Self>,
        state: &RuntimeState,
        pool: &KeyPool,
        names: &[Arc<KeyNames>],
        demand: &Demand,
        first: Reservation,
        tried: &[usize],
    ) -> Admission {
        if self.connect.get().is_none() || !self.breaker.is_closed() {
            // Open: `first` was reserved at this relay's share, which is the rule now.
            self.stats.count(Event::Local);
            return Admission::Granted(first);
        }
        let mut indices = [0usize; MAX_CANDIDATES];
        indices[0] = first.index();
        let n = 1 + pool.alternatives(first.index(), tried, &mut indices[1..]);
        let now = Instant::now();
        let candidates = indices[..n]
            .iter()
            .map(|&i| {
                let key = &pool.keys()[i];
                Candidate {
                    names: names[i].clone(),
                    limits: key.whole_limits(),
                    demand: [
                        1,
                        demand.input_tokens,
                        key.output_reservation(demand.max_tokens),
                    ],
                    cap: key.max_in_flight(),
                    debts_us: key.debts_at(now).map(|d| d / 1_000),
                }
            })
            .collect();
        let seq = self.seq.fetch_add(1, Relaxed);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let item = Item::Admit(link::Admit {
            seq,
            candidates,
            reply,
        });
        if link::submit(self, item).is_err() {
            return self.failed(state, first, Event::Error, "the line to the store is full");
        }
        let answer = tokio::time::timeout(self.config.timeout, answer).await;
        self.stats.observe(now.elapsed());
        let answer = match answer {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(why))) => return self.failed(state, first, Event::Error, &why),
            Ok(Err(_)) => {
                return self.failed(state, first, Event::Error, "the line to the store closed")
            }
            Err(_) => {
                let why = format!("no answer within {:?}", self.config.timeout);
                return self.failed(state, first, Event::Timeout, &why);
            }
        };
        match answer {
            Answer::Chosen {
                candidate,
                debts_us,
                charged,
            } => {
                let chosen = indices[candidate];
                let mut reservation = if chosen == first.index() {
                    first
                } else {
                    drop(first);
                    pool.reserve_admitted(chosen, demand)
                };
                let key = &pool.keys()[chosen];
                // The admission stands (the store counted it), but once the breaker has opened
                // (another request's answer was late) the mirror holds this relay's share,
                // which the store's balances must not refill.
                if self.breaker.is_closed() {
                    key.sync_debts_at(debts_us.map(|d| d.saturating_mul(1_000)), Instant::now());
                }
                reservation.attach_lease(Box::new(SharedLease::new(
                    self.clone(),
                    names[chosen].clone(),
                    seq,
                    charged,
                    key.whole_limits(),
                )));
                self.stats.count(Event::Admitted);
                Admission::Granted(reservation)
            }
            Answer::Refused { wait_us } => {
                drop(first);
                self.stats.count(Event::Refused);
                Admission::Refused(Exhausted {
                    retry_after: Duration::from_micros(wait_us.max(1_000)),
                    all_disabled: false,
                })
            }
        }
    }

    /// The store failed an admission (`event` says how): `first` is given back, the breaker
    /// opens, and the caller reserves again at the local share.
    fn failed(
        &self,
        state: &RuntimeState,
        first: Reservation,
        event: Event,
        why: &str,
    ) -> Admission {
        drop(first);
        self.stats.count(event);
        self.trip(state, why);
        Admission::Failed
    }

    /// A reservation the store admitted has ended: to this thread's line to the store, or
    /// (off a worker thread) to the background task. Never waits; a full queue drops it
    /// (counted) and the reservation comes back through refill when its lease runs out.
    fn settle(self: &Arc<Self>, settle: link::Settle) {
        if let Err(Item::Settle(settle)) = link::submit(self, Item::Settle(settle)) {
            self.send(Op::Settle(settle));
        }
    }

    /// Queue an operation for the store; never waits. A full queue drops it (counted).
    fn send(&self, op: Op) {
        if self.ops.try_send(op).is_err() {
            self.stats.count(Event::Dropped);
        }
    }

    /// A key the upstream benched (429, 403) for `bench`, with the response's `remaining` per
    /// dimension (`None`: not reported): queued at once, off the request path, so every relay
    /// stops using it. Figures without a bench travel with the settlement (`Lease`).
    pub fn learn(
        &self,
        names: &Arc<KeyNames>,
        limits: [u64; 3],
        remaining: [Option<u64>; 3],
        bench: Duration,
    ) {
        self.send(Op::Learn {
            names: names.clone(),
            limits,
            remaining,
            bench,
        });
    }

    /// The store's state for `/status` and the metrics.
    pub fn status(&self) -> StoreStatus {
        self.stats.status(
            self.connect.get().is_some(),
            self.breaker.is_closed(),
            self.breaker.open_for(),
            self.relays_alive.load(Relaxed),
            FULL_SHARE as f64 / self.share_ppm() as f64,
            &self.config,
        )
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// What kind of error the store returned, for the log (its text may quote the URL).
fn error_kind(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() {
        "connection lost".to_owned()
    } else {
        format!("{:?} error", e.kind())
    }
}
