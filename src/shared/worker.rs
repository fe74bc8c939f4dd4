//! The store's background task, inside Pingora's runtime: its own connection, the heartbeat
//! that counts the relays and moves the breaker, and the queue of cooldowns (and of the rare
//! settlement made off a worker thread; the others go through each thread's `link`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::lease::Op;
use super::link::{self, figure};
use super::stats::Event;
use super::{error_kind, scripts, Connect, KeyNames, Store, DELIVERY_ALLOWANCE_US, WINDOW_US};
use crate::proxy::SharedState;

/// How often each relay stamps itself alive and probes the store.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(500);
/// A relay silent this long no longer counts among the relays sharing the keys.
const RELAY_EXPIRY_MS: u64 = 3_000;
/// The breaker stays open at least this long, so a flapping store does not flip every relay
/// between its share and the store on every heartbeat.
pub(super) const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Script calls in flight to the store at once (the connection pipelines them).
const OP_CONCURRENCY: usize = 64;
/// Operations taken from the queue at once.
const BATCH: usize = 64;
/// Tries per lesson (each only ever lowers a balance).
const OP_TRIES: u32 = 3;

/// Runs the store's connection for the process (`shared_state`).
pub struct StoreTask {
    pub store: Arc<Store>,
    pub state: SharedState,
}

#[async_trait]
impl BackgroundService for StoreTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.store;
        let Some(ops) = store.ops_rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        // Whatever happens below, requests waiting for the store's first verdict stop waiting
        // once this task has given it or given up.
        let _started = Started(store);
        let client = match redis::Client::open(store.config.redis_url.expose()) {
            Ok(client) => client,
            Err(e) => {
                // Validated with the config; the URL may hold a password, so only the kind.
                log::error!(
                    "shared_state: cannot use redis_url ({}); budgets stay local",
                    error_kind(&e)
                );
                return;
            }
        };
        let op_timeout = store.op_timeout();
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = match ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()) {
            Ok(conn) => conn,
            Err(e) => {
                log::error!("shared_state: {}; budgets stay local", error_kind(&e));
                return;
            }
        };
        // From now on each worker thread opens its own line to the store (`link`).
        let _ = store.connect.set(Connect {
            client,
            config: manager,
            op_timeout,
        });

        let consumer = tokio::spawn(consume(store.clone(), ops, conn.clone(), op_timeout));

        let mut conn = conn;
        let mut shared_once = false;
        // The store failed this relay before it first shared: the others may be on their
        // share too (see `reseed`).
        let mut failed_before = false;
        // Since when the store has answered without a break (set when the breaker closes).
        let mut answering_since: Option<Instant> = None;
        loop {
            let beat = Instant::now();
            let alive = tokio::time::timeout(
                op_timeout,
                scripts::HEARTBEAT
                    .key(&store.relays_key)
                    .arg(&store.relay_id)
                    .arg(RELAY_EXPIRY_MS)
                    .invoke_async::<u32>(&mut conn),
            )
            .await;
            match alive {
                Ok(Ok(counted)) => {
                    // A store that lost its state (restarted empty) counts only the relays that
                    // stamped since: the count may only fall once every live relay has had
                    // time to stamp again, or a relay tripping meanwhile would keep to too
                    // large a share.
                    if !store.breaker.is_closed() {
                        answering_since = None;
                    }
                    let known = store.relays_alive.load(Relaxed);
                    let settled = answering_since.is_some_and(|t: Instant| {
                        t.elapsed().as_millis() as u64 >= RELAY_EXPIRY_MS
                    });
                    let relays = if settled { counted } else { counted.max(known) }.max(1);
                    store.relays_alive.store(relays, Relaxed);
                    if !store.breaker.is_closed()
                        && (!shared_once || store.breaker.open_for() >= REOPEN_AFTER)
                    {
                        let seed = if shared_once {
                            Seed::AfterOutage
                        } else if failed_before {
                            Seed::LateJoin
                        } else {
                            Seed::Join
                        };
                        match reseed(&self.state, &mut conn, op_timeout, relays, seed).await {
                            Ok(keys) => {
                                answering_since = Some(Instant::now());
                                store.breaker.close();
                                store.apply_share(&self.state.current.load());
                                log::info!(
                                    "shared_state: the store answers; {keys} key budget(s) shared \
                                     by {relays} relay(s)"
                                );
                                shared_once = true;
                            }
                            Err(why) => {
                                failed_before = true;
                                log::debug!("shared_state: reseeding failed: {why}")
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    answering_since = None;
                    failed_before = true;
                    store.trip(&self.state.current.load(), &error_kind(&e))
                }
                Err(_) => {
                    answering_since = None;
                    failed_before = true;
                    store.trip(
                        &self.state.current.load(),
                        &format!("heartbeat unanswered within {op_timeout:?}"),
                    )
                }
            }
            // The first verdict is in: closed, or open and the pools at their share.
            store.set_started();
            let next = HEARTBEAT.saturating_sub(beat.elapsed());
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(next) => {}
            }
        }
        // Leave the relay count at once rather than after the expiry.
        let _ = tokio::time::timeout(
            op_timeout,
            redis::cmd("ZREM")
                .arg(&store.relays_key)
                .arg(&store.relay_id)
                .exec_async(&mut conn),
        )
        .await;
        consumer.abort();
    }
}

/// Why this relay pushes its view into the store before its breaker closes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seed {
    /// Its first time, the store answering from the start: the others share through the
    /// store, which already counts everything they took.
    Join,
    /// Its first time, after the store failed it: the others may be on their share too.
    LateJoin,
    /// Back after an outage, during which it kept to its share.
    AfterOutage,
}

/// Push this relay's view of every key into the store (balances only go down), before the
/// breaker closes: what it used at its share while the store was away is then counted.
///
/// After an outage, every key is pushed to empty: each relay kept to its share meanwhile, so
/// together they took at most what the keys refilled, and the first relay back cannot know
/// what the others took (its own share may be untouched while theirs are spent). The first
/// time, what this relay knows is pushed: what it admitted on its own before (nothing when the
/// store answered its first heartbeat, as requests wait for that). When the store has failed
/// (an outage, or a late join), the other relays may still be on their share after this one
/// closes, taking what the store does not see yet: each finds the store back at its next
/// heartbeat (within one heartbeat) once that heartbeat's and its reseed's answers are in
/// (each within `op_timeout`), so each key's debt is pushed (N-1)/N of that span further (a
/// heartbeat alone left a relay whose heartbeat had just timed out, or was scheduled late, a
/// few milliseconds on its share that nobody counted: an upstream 429 now and then). A clean
/// join pushes no such lag: the others
/// admit through the store, and any debt pushed beyond what was really taken would cost the
/// pool a request in the next burst (a bucket of 6 a minute with a third of a heartbeat of
/// debt holds 5).
async fn reseed(
    state: &SharedState,
    conn: &mut ConnectionManager,
    op_timeout: Duration,
    relays: u32,
    seed: Seed,
) -> Result<usize, String> {
    let state = state.current.load_full();
    let now = Instant::now();
    let others = u64::from(relays.max(1) - 1);
    let lag_us = match seed {
        Seed::Join => 0,
        Seed::LateJoin | Seed::AfterOutage => {
            (HEARTBEAT + 2 * op_timeout).as_micros() as u64 * others / (others + 1)
        }
    };
    let mut keys = 0;
    for provider in &state.providers {
        let Some(pool) = &provider.pool else { continue };
        let names = &provider.shared_keys;
        if names.len() != pool.len() {
            continue;
        }
        let mut call = scripts::SEED.prepare_invoke();
        call.arg(WINDOW_US);
        for (key, names) in pool.keys().iter().zip(names) {
            call.key(&*names.hash);
            for debt in key.debts_at(now) {
                let debt = if seed == Seed::AfterOutage {
                    WINDOW_US
                } else {
                    debt / 1_000
                };
                call.arg(debt + lag_us);
            }
        }
        match tokio::time::timeout(op_timeout, call.invoke_async::<usize>(conn)).await {
            Ok(Ok(n)) => keys += n,
            Ok(Err(e)) => return Err(error_kind(&e)),
            Err(_) => return Err("timed out".to_owned()),
        }
    }
    Ok(keys)
}

/// Drain the queue: whatever has piled up (up to `BATCH`) goes out together, settlements one
/// script call per pool, cooldowns one each; up to `OP_CONCURRENCY` calls at once (the
/// connection pipelines them).
async fn consume(
    store: Arc<Store>,
    mut ops: tokio::sync::mpsc::Receiver<Op>,
    conn: ConnectionManager,
    op_timeout: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(OP_CONCURRENCY));
    let mut batch = Vec::with_capacity(BATCH);
    while ops.recv_many(&mut batch, BATCH).await > 0 {
        let mut settles = Vec::new();
        for op in batch.drain(..) {
            let (names, limits, remaining, bench) = match op {
                Op::Settle(settle) => {
                    settles.push(settle);
                    continue;
                }
                Op::Learn {
                    names,
                    limits,
                    remaining,
                    bench,
                } => (names, limits, remaining, bench),
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (store, conn) = (store.clone(), conn.clone());
            tokio::spawn(async move {
                learn(&store, conn, &names, limits, remaining, bench, op_timeout).await;
                drop(slot);
            });
        }
        if !settles.is_empty() {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (store, conn) = (store.clone(), conn.clone());
            tokio::spawn(async move {
                link::settle_from_background(&store, &conn, settles, op_timeout).await;
                drop(slot);
            });
        }
    }
}

/// A cooldown for every relay, tried `OP_TRIES` times (it only ever lowers a balance).
async fn learn(
    store: &Store,
    mut conn: ConnectionManager,
    names: &KeyNames,
    limits: [u64; 3],
    remaining: [Option<u64>; 3],
    bench: Duration,
    op_timeout: Duration,
) {
    for attempt in 1..=OP_TRIES {
        let mut call = scripts::LEARN.prepare_invoke();
        call.key(&*names.hash)
            .arg(WINDOW_US)
            .arg(DELIVERY_ALLOWANCE_US);
        call.arg(limits[0]).arg(limits[1]).arg(limits[2]);
        for r in remaining {
            call.arg(figure(r));
        }
        call.arg(bench.as_micros() as u64);
        let result = tokio::time::timeout(op_timeout, call.invoke_async::<i64>(&mut conn)).await;
        if matches!(result, Ok(Ok(_))) {
            return;
        }
        if attempt < OP_TRIES {
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }
    store.stats.count(Event::OpFailed);
}

/// Marks the store's first verdict as given when the task leaves (or gives up at start), so no
/// request keeps waiting for a store this relay will never ask.
struct Started<'a>(&'a Store);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.0.set_started();
    }
}
