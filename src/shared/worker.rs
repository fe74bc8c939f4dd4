//! The store's background task, inside Pingora's runtime: the connection, the heartbeat that
//! counts the relays and moves the breaker, and the queue of settlements and lessons.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::lease::Op;
use super::{error_kind, scripts, Store, WINDOW_US};
use crate::proxy::SharedState;

/// How often each relay stamps itself alive and probes the store.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// A relay silent this long no longer counts among the relays sharing the keys.
const RELAY_EXPIRY_MS: u64 = 3_000;
/// The breaker stays open at least this long, so a flapping store does not flip every relay
/// between its share and the store on every heartbeat.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Script calls in flight to the store at once (the connection pipelines them).
const OP_CONCURRENCY: usize = 64;
/// Settlements of one pool sent in one script call at most.
const BATCH: usize = 64;
/// Tries per settlement or lesson (each is idempotent, or only ever lowers a balance).
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
        let op_timeout = (store.config.timeout * 4).max(Duration::from_millis(100));
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = match ConnectionManager::new_lazy_with_config(client, manager) {
            Ok(conn) => conn,
            Err(e) => {
                log::error!("shared_state: {}; budgets stay local", error_kind(&e));
                return;
            }
        };
        store.conn.store(Some(Arc::new(conn.clone())));

        let consumer = tokio::spawn(consume(store.clone(), ops, conn.clone(), op_timeout));

        let mut conn = conn;
        let mut shared_once = false;
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
                Ok(Ok(relays)) => {
                    store.relays_alive.store(relays.max(1), Relaxed);
                    if !store.breaker.is_closed()
                        && (!shared_once || store.breaker.open_for() >= REOPEN_AFTER)
                    {
                        match reseed(&self.state, &mut conn, op_timeout, relays, shared_once).await
                        {
                            Ok(keys) => {
                                store.breaker.close();
                                store.apply_share(&self.state.current.load());
                                log::info!(
                                    "shared_state: the store answers; {keys} key budget(s) shared \
                                     by {relays} relay(s)"
                                );
                                shared_once = true;
                            }
                            Err(why) => log::debug!("shared_state: reseeding failed: {why}"),
                        }
                    }
                }
                Ok(Err(e)) => store.trip(&self.state.current.load(), &error_kind(&e)),
                Err(_) => store.trip(
                    &self.state.current.load(),
                    &format!("heartbeat unanswered within {op_timeout:?}"),
                ),
            }
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

/// Push this relay's view of every key into the store (balances only go down), before the
/// breaker closes: what it used at its share while the store was away is then counted.
///
/// After an outage (`outage`), every key is pushed to empty: each relay kept to its share
/// meanwhile, so together they took at most what the keys refilled, and the first relay back
/// cannot know what the others took (its own share may be untouched while theirs are spent).
/// At start-up, what this relay knows is pushed (nothing was shared yet). Either way the other
/// relays may still be on their share for up to one heartbeat after this one closes, taking
/// what the store does not see yet: each key's debt is pushed (N-1)/N of a heartbeat further.
async fn reseed(
    state: &SharedState,
    conn: &mut ConnectionManager,
    op_timeout: Duration,
    relays: u32,
    outage: bool,
) -> Result<usize, String> {
    let state = state.current.load_full();
    let now = Instant::now();
    let others = u64::from(relays.max(1) - 1);
    let lag_us = HEARTBEAT.as_micros() as u64 * others / (others + 1);
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
                let debt = if outage { WINDOW_US } else { debt / 1_000 };
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
        let mut groups: Vec<(Option<Arc<str>>, Vec<Op>)> = Vec::new();
        for op in batch.drain(..) {
            let tag = match &op {
                Op::Settle { names, .. } => Some(names.tag.clone()),
                Op::Learn { .. } => None,
            };
            match groups.iter_mut().find(|(t, _)| tag.is_some() && *t == tag) {
                Some((_, group)) => group.push(op),
                None => groups.push((tag, vec![op])),
            }
        }
        for (_, group) in groups {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (store, conn) = (store.clone(), conn.clone());
            tokio::spawn(async move {
                run(&store, conn, &group, op_timeout).await;
                drop(slot);
            });
        }
    }
}

/// One script call for `group` (settlements of one pool, or one cooldown), tried `OP_TRIES`
/// times: each is idempotent, or only ever lowers a balance.
async fn run(store: &Store, mut conn: ConnectionManager, group: &[Op], op_timeout: Duration) {
    for attempt in 1..=OP_TRIES {
        let call = match &group[0] {
            Op::Learn {
                names,
                limits,
                remaining,
                bench,
            } => {
                let mut call = scripts::LEARN.prepare_invoke();
                call.key(&*names.hash).arg(WINDOW_US);
                call.arg(limits[0]).arg(limits[1]).arg(limits[2]);
                for r in remaining {
                    call.arg(figure(*r));
                }
                call.arg(bench.as_micros() as u64);
                call
            }
            Op::Settle { .. } => {
                let mut call = scripts::SETTLE.prepare_invoke();
                call.arg(WINDOW_US);
                for op in group {
                    let Op::Settle {
                        names,
                        member,
                        limits,
                        used,
                        remaining,
                    } = op
                    else {
                        continue;
                    };
                    call.key(&*names.hash).key(&*names.flight);
                    call.arg(member.as_str());
                    call.arg(limits[0]).arg(limits[1]).arg(limits[2]);
                    match used {
                        None => call.arg(1u8).arg(0u64).arg(0u64),
                        Some(u) => call.arg(0u8).arg(u.input_tokens).arg(u.output_tokens),
                    };
                    for r in remaining {
                        call.arg(figure(*r));
                    }
                }
                call
            }
        };
        let result = tokio::time::timeout(op_timeout, call.invoke_async::<i64>(&mut conn)).await;
        if matches!(result, Ok(Ok(_))) {
            return;
        }
        if attempt < OP_TRIES {
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }
    for _ in group {
        store.stats.op_failed();
    }
}

/// A `remaining` figure as the scripts take it (-1: not reported).
fn figure(remaining: Option<u64>) -> i64 {
    remaining.map_or(-1, |r| r.min(i64::MAX as u64) as i64)
}
