//! A worker thread's line to the store. The thread's admissions and the reservations that ended
//! on it go to one task on the same thread, which sends whatever piled up while its calls were
//! out as one script call per pool (`scripts::EXCHANGE`) on a connection of its own, with at
//! most `CALLS_IN_FLIGHT` calls out at once.
//!
//! Why per thread: a request hands its admission to a task its own thread runs, and the answer
//! comes back the same way, so no request wakes another thread (each one-request round trip
//! through a shared connection did, twice). Why batched: the store's cost is mostly per call
//! (its socket reads and writes and the script's start), not per admission, and under load a
//! call carries several; at a light load a call carries one and costs one round trip, as before.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::stats::Event;
use super::{error_kind, scripts, KeyNames, Store, DELIVERY_ALLOWANCE_US, WINDOW_US};
use crate::pool::Settlement;

/// Work waiting for one thread's link: above this it is refused (admissions fail over to the
/// local share, ended reservations are dropped and come back through refill).
const QUEUE: usize = 16_384;
/// Admissions and settlements in one script call at most.
const BATCH: usize = 64;
/// Tries per settlement (each is idempotent).
const SETTLE_TRIES: u32 = 3;
/// Script calls a link has out at once (the connection pipelines them): a second call lets
/// what arrived meanwhile go before the first is answered, so under load a request waits for
/// about one round trip rather than up to two.
const CALLS_IN_FLIGHT: usize = 2;
/// Pause before a failed settlement is tried again (unless other work goes out sooner).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A key the store may admit on, with what the relay knows of it.
pub struct Candidate {
    pub names: Arc<KeyNames>,
    pub limits: [u64; 3],
    pub demand: [u64; 3],
    /// Requests in flight at most (0: no cap).
    pub cap: u64,
    /// The relay's own debts (µs), used when the store has no state for the key.
    pub debts_us: [u64; 3],
}

/// How the store answered one admission.
pub enum Answer {
    /// Admitted on candidate `candidate`, whose balances are now `debts_us` (µs of debt per
    /// dimension) after charging `charged`.
    Chosen {
        candidate: usize,
        debts_us: [u64; 3],
        charged: [u64; 3],
    },
    /// No candidate can take the request for `wait_us`.
    Refused { wait_us: u64 },
}

pub struct Admit {
    /// The reservation's number among this relay's (its member in the in-flight set).
    pub seq: u64,
    pub candidates: Vec<Candidate>,
    /// `Err`: the kind of failure, for the log.
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

/// A reservation the store admitted has ended.
pub struct Settle {
    pub names: Arc<KeyNames>,
    pub seq: u64,
    pub limits: [u64; 3],
    pub charged: [u64; 3],
    /// The real usage; `None` gives everything back.
    pub used: Option<Settlement>,
    /// What the response's rate-limit headers said the key has left, as the script takes it
    /// ([`figure`]; -1: not reported).
    pub remaining: [i64; 3],
}

pub enum Item {
    Admit(Admit),
    Settle(Settle),
}

impl Item {
    fn tag(&self) -> &Arc<str> {
        match self {
            Item::Admit(a) => &a.candidates[0].names.tag,
            Item::Settle(s) => &s.names.tag,
        }
    }
}

thread_local! {
    static LINK: RefCell<Option<mpsc::Sender<Item>>> = const { RefCell::new(None) };
}

/// Hand `item` to this thread's link, starting one (on the thread's runtime) if it has none.
/// Never waits. `Err` gives the item back: the queue is full, or this thread has no runtime,
/// or the store no connection yet.
pub fn submit(store: &Arc<Store>, item: Item) -> Result<(), Item> {
    LINK.with(|link| {
        let mut link = link.borrow_mut();
        let mut item = item;
        if let Some(tx) = link.as_ref() {
            match tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => return Err(back),
                // The link's task ended with its runtime (a service shutting down): start
                // another.
                Err(mpsc::error::TrySendError::Closed(back)) => item = back,
            }
        }
        let (Ok(runtime), Some(_)) = (tokio::runtime::Handle::try_current(), store.connect.get())
        else {
            return Err(item);
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        runtime.spawn(drive(store.clone(), rx));
        let sent = tx.try_send(item).map_err(|e| e.into_inner());
        *link = Some(tx);
        sent
    })
}

/// The link's task: one call per pool for whatever is waiting, up to `CALLS_IN_FLIGHT` calls
/// out at once; what arrives meanwhile waits for the next.
async fn drive(store: Arc<Store>, mut rx: mpsc::Receiver<Item>) {
    let Some(connect) = store.connect.get() else {
        return;
    };
    let op_timeout = connect.op_timeout;
    // The connection, and the breaker's closings when it was made.
    let mut line: Option<(ConnectionManager, u64)> = None;
    let mut items: Vec<Item> = Vec::with_capacity(BATCH);
    let mut retry: Vec<(Settle, u32)> = Vec::new();
    let mut calls = FuturesUnordered::new();
    loop {
        let room = calls.len() < CALLS_IN_FLIGHT;
        tokio::select! {
            got = rx.recv_many(&mut items, BATCH), if room => {
                if got == 0 {
                    break;
                }
            }
            _ = tokio::time::sleep(RETRY_PAUSE), if room && !retry.is_empty() => {}
            Some((ok, mut failed)) = calls.next(), if !calls.is_empty() => {
                let ok: bool = ok;
                retry.append(&mut failed);
                if !ok {
                    line = None;
                }
                continue;
            }
        }
        // Made here, so the connection (and any reconnection) is driven by this thread; made
        // again after a failed call or an outage of the store (the breaker closed again since),
        // so that once the store answers again the first call does not meet the broken one
        // (the manager reconnects only when used after a failure).
        let closings = store.breaker.closings();
        let conn = match &line {
            Some((conn, made_at)) if *made_at == closings => conn.clone(),
            _ => match ConnectionManager::new_lazy_with_config(
                connect.client.clone(),
                connect.config.clone(),
            ) {
                Ok(made) => line.insert((made, closings)).0.clone(),
                Err(e) => {
                    log::error!("shared_state: {}; budgets stay local", error_kind(&e));
                    return;
                }
            },
        };
        for mut g in group(items.drain(..), retry.drain(..)) {
            let (store, conn) = (store.clone(), conn.clone());
            calls.push(async move {
                let ok = exchange(&store, &conn, &mut g, op_timeout, &mut String::new()).await;
                (ok, g.failed)
            });
        }
    }
}

/// One pool's share of a call.
#[derive(Default)]
struct Group {
    settles: Vec<(Settle, u32)>,
    admits: Vec<Admit>,
    /// Settlements to try again.
    failed: Vec<(Settle, u32)>,
}

/// Sort work by pool (hash tag: one script call may only touch one).
fn group(
    items: impl Iterator<Item = Item>,
    retry: impl Iterator<Item = (Settle, u32)>,
) -> Vec<Group> {
    fn slot<'g>(groups: &'g mut Vec<(Arc<str>, Group)>, tag: &Arc<str>) -> &'g mut Group {
        let at = match groups.iter().position(|(t, _)| t == tag) {
            Some(at) => at,
            None => {
                groups.push((tag.clone(), Group::default()));
                groups.len() - 1
            }
        };
        &mut groups[at].1
    }
    let mut groups: Vec<(Arc<str>, Group)> = Vec::with_capacity(1);
    for (settle, tries) in retry {
        slot(&mut groups, &settle.names.tag)
            .settles
            .push((settle, tries));
    }
    for item in items {
        let group = slot(&mut groups, item.tag());
        match item {
            Item::Admit(a) => group.admits.push(a),
            Item::Settle(s) => group.settles.push((s, 0)),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One script call for `group`; its admissions are answered, and the settlements that failed
/// (under their tries) are left in `group.failed`. `false`: the call failed.
async fn exchange(
    store: &Store,
    conn: &ConnectionManager,
    group: &mut Group,
    op_timeout: Duration,
    member: &mut String,
) -> bool {
    let cmd = command(store, group, member);
    store.stats.count(Event::Call);
    let mut conn = conn.clone();
    let result = tokio::time::timeout(op_timeout, query(&mut conn, &cmd)).await;
    let failure = match result {
        Ok(Ok(values)) if values.len() == 7 * group.admits.len() => {
            for (admit, answer) in group.admits.drain(..).zip(values.chunks_exact(7)) {
                answer_one(store, admit, answer, &mut group.failed);
            }
            group.settles.clear();
            return true;
        }
        Ok(Ok(_)) => "an answer of the wrong shape".to_owned(),
        Ok(Err(e)) => error_kind(&e),
        Err(_) => format!("no answer within {op_timeout:?}"),
    };
    for admit in group.admits.drain(..) {
        let _ = admit.reply.send(Err(failure.clone()));
    }
    for (settle, tries) in group.settles.drain(..) {
        if tries + 1 < SETTLE_TRIES {
            group.failed.push((settle, tries + 1));
        } else {
            store.stats.count(Event::OpFailed);
        }
    }
    false
}

/// Give one admission its answer. One whose request stopped waiting (it timed out and went on
/// at the local share) is given back at once rather than left to its lease.
fn answer_one(store: &Store, admit: Admit, answer: &[i64], failed: &mut Vec<(Settle, u32)>) {
    let reply = match *answer {
        [index, d0, d1, d2, c0, c1, c2]
            if index >= 0 && (index as usize) < admit.candidates.len() =>
        {
            Answer::Chosen {
                candidate: index as usize,
                debts_us: [d0, d1, d2].map(|d| d.max(0) as u64),
                charged: [c0, c1, c2].map(|c| c.max(0) as u64),
            }
        }
        [-1, wait, ..] => Answer::Refused {
            wait_us: wait.max(0) as u64,
        },
        _ => {
            let _ = admit
                .reply
                .send(Err("an answer of the wrong shape".to_owned()));
            return;
        }
    };
    if let Err(Ok(Answer::Chosen {
        candidate, charged, ..
    })) = admit.reply.send(Ok(reply))
    {
        let chosen = &admit.candidates[candidate];
        store.stats.count(Event::GivenBack);
        failed.push((
            Settle {
                names: chosen.names.clone(),
                seq: admit.seq,
                limits: chosen.limits,
                charged,
                used: None,
                remaining: [-1; 3],
            },
            0,
        ));
    }
}

/// The EXCHANGE call for `group` (see the script for the layout). Keys appear once, whatever
/// the number of requests on them.
fn command(store: &Store, group: &Group, member: &mut String) -> redis::Cmd {
    /// A key of the call: its names, limits, the relay's debts (µs) and in-flight cap.
    type Key<'k> = (&'k Arc<KeyNames>, [u64; 3], [u64; 3], u64);
    /// The key's place (1-based) among the call's keys, added if new.
    fn key_of<'k>(
        keys: &mut Vec<Key<'k>>,
        names: &'k Arc<KeyNames>,
        limits: [u64; 3],
        seed: Option<([u64; 3], u64)>,
    ) -> usize {
        let at = match keys
            .iter()
            .position(|(n, ..)| Arc::ptr_eq(n, names) || n.hash == names.hash)
        {
            Some(at) => at,
            None => {
                keys.push((names, limits, [0; 3], 0));
                keys.len() - 1
            }
        };
        if let Some((debts, cap)) = seed {
            keys[at].2 = debts;
            keys[at].3 = cap;
        }
        at + 1
    }
    let mut keys: Vec<Key> = Vec::with_capacity(2);
    let settle_keys: Vec<usize> = group
        .settles
        .iter()
        .map(|(s, _)| key_of(&mut keys, &s.names, s.limits, None))
        .collect();
    let admit_keys: Vec<usize> = group
        .admits
        .iter()
        .flat_map(|a| &a.candidates)
        .map(|c| key_of(&mut keys, &c.names, c.limits, Some((c.debts_us, c.cap))))
        .collect();

    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(scripts::EXCHANGE.get_hash()).arg(keys.len() * 2);
    for (names, ..) in &keys {
        cmd.arg(&*names.hash).arg(&*names.flight);
    }
    cmd.arg(WINDOW_US)
        .arg(store.config.lease.as_millis() as u64)
        .arg(DELIVERY_ALLOWANCE_US);
    for (_, limits, debts, cap) in &keys {
        cmd.arg(limits[0]).arg(limits[1]).arg(limits[2]);
        cmd.arg(debts[0]).arg(debts[1]).arg(debts[2]).arg(*cap);
    }
    cmd.arg(group.settles.len());
    for ((s, _), key) in group.settles.iter().zip(settle_keys) {
        cmd.arg(key).arg(store.member(s.seq, member));
        match s.used {
            None => cmd.arg(1u8).arg(0u64).arg(0u64),
            Some(u) => cmd.arg(0u8).arg(u.input_tokens).arg(u.output_tokens),
        };
        cmd.arg(s.charged[0]).arg(s.charged[1]).arg(s.charged[2]);
        cmd.arg(s.remaining[0])
            .arg(s.remaining[1])
            .arg(s.remaining[2]);
    }
    let mut admit_keys = admit_keys.into_iter();
    for a in &group.admits {
        cmd.arg(store.member(a.seq, member)).arg(a.candidates.len());
        for c in &a.candidates {
            cmd.arg(admit_keys.next().unwrap_or(1));
            cmd.arg(c.demand[0]).arg(c.demand[1]).arg(c.demand[2]);
        }
    }
    cmd
}

/// Run `cmd` (an EVALSHA of EXCHANGE), loading the script first when the store does not have
/// it (a restart, a failover, `SCRIPT FLUSH`).
async fn query(conn: &mut ConnectionManager, cmd: &redis::Cmd) -> redis::RedisResult<Vec<i64>> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            scripts::EXCHANGE.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

/// A `remaining` figure as the scripts take it (-1: not reported).
pub fn figure(remaining: Option<u64>) -> i64 {
    remaining.map_or(-1, |r| r.min(i64::MAX as u64) as i64)
}

impl Store {
    /// The member of reservation `seq` in an in-flight set, written into `buf`.
    fn member<'b>(&self, seq: u64, buf: &'b mut String) -> &'b str {
        buf.clear();
        let _ = write!(buf, "{}:{seq}", self.relay_id);
        buf
    }
}

/// Settlements that reached the background task (reservations that ended off a worker thread):
/// one call per pool, each settlement tried up to `SETTLE_TRIES` times.
pub async fn settle_from_background(
    store: &Store,
    conn: &ConnectionManager,
    settles: Vec<Settle>,
    op_timeout: Duration,
) {
    let mut pending: Vec<(Settle, u32)> = settles.into_iter().map(|s| (s, 0)).collect();
    let mut member = String::new();
    while !pending.is_empty() {
        for mut g in group(std::iter::empty(), pending.drain(..)) {
            exchange(store, conn, &mut g, op_timeout, &mut member).await;
            pending.append(&mut g.failed);
        }
        if !pending.is_empty() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
