//! The Lua scripts that keep the shared pool state in Redis, each one round trip.
//!
//! A key's state is one hash (`t0`, `t1`, `t2`: when each bucket — requests, input tokens,
//! output tokens — is full again, as GCRA's theoretical arrival time in microseconds of the
//! store's clock; `cool`: until when the key is benched), next to a sorted set of the
//! reservations in flight on it (member `reservation-id|requests|input|output`, scored by the
//! moment its lease runs out). A bucket of limit L spans the window W: a unit costs W / L, the
//! debt at `now` is `t - now`, and `n` units fit when `max(t, now) + n·W/L - now <= W`; the same
//! arithmetic as the local pool's (`pool/bucket.rs`), on the store's clock (`TIME`), so relays
//! whose clocks disagree still agree on every balance.
//!
//! Every key a script touches is passed in `KEYS` and all of one pool's keys share a hash tag,
//! so the scripts run on Redis Cluster too. redis-rs calls them by SHA and loads them again by
//! itself when the store answers NOSCRIPT (a restart, a failover, `SCRIPT FLUSH`).

use once_cell::sync::Lazy;
use redis::Script;

/// What every script starts with: the store's clock in µs (`now`) and `int`, which writes a
/// number as the whole number it is (Lua would write a large one in exponent form).
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function int(x) return string.format('%.0f', math.floor(x)) end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// One round trip for everything a relay thread has for one pool: first the reservations that
/// ended, then the admissions waiting, in order. Each key's hash is read at most once and
/// written at most once per call, whatever the number of requests in it: a call from the script
/// costs more than the arithmetic around it, and the call itself (its socket reads and writes)
/// more than both.
///
/// `KEYS`: per key its hash and its in-flight set. `ARGV`: window (µs), lease (ms), delivery
/// allowance (µs, `DELIVERY_ALLOWANCE_US`: added to a balance a `remaining` of 0 sets), then per key
/// seven numbers: its three limits (0 = unknown), the three debts (µs) the relay itself knows
/// for it, used only when the store has no state for the key (never seen, or lost in a restart
/// without persistence) and an admission needs it, and the cap on requests in flight (0: none);
/// then the settlement count, and per settlement eleven values: its key (1-based), its member,
/// `release` (1: nothing used), the real input and output tokens, what the admission charged
/// (three), and the response's three `remaining` figures (-1: not reported); then per admission:
/// its member, the candidate count, and per candidate its key and its three demands.
///
/// Settlements are idempotent: a reservation's member is removed from the in-flight set first,
/// and only the call that removed it corrects the buckets (to the real usage, or all given
/// back), so a batch retried after a lost reply is not applied twice, and a lease that already
/// ran out is not refunded (its reservation came back through refill). A `remaining` figure
/// only ever lowers a balance (authoritative, but older than reservations made since), and
/// applies either way. An admission reserves on its first candidate that can take it now.
///
/// Returns seven numbers per admission: `{index (0-based), debt0, debt1, debt2, charged0,
/// charged1, charged2}`, or `{-1, wait_us, 0, 0, 0, 0, 0}` when no candidate can take it now.
pub static EXCHANGE: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local W = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local D = tonumber(ARGV[3])
local now_ms = math.floor(now / 1000)
local keys = {}
local a = 4
for j = 1, #KEYS / 2 do
  keys[j] = {h = KEYS[2 * j - 1], f = KEYS[2 * j], at = a,
             L = {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])},
             cap = tonumber(ARGV[a + 6])}
  a = a + 7
end
-- A key's state, read once: `t` stays nil when the store has none.
local function load(j)
  local k = keys[j]
  if not k.read then
    k.read = true
    local st = redis.call('HMGET', k.h, 't0', 't1', 't2', 'cool')
    if st[1] then k.t = {tonumber(st[1]), tonumber(st[2]), tonumber(st[3])} end
    k.cool = tonumber(st[4] or '0')
  end
  return k
end

local settlements = tonumber(ARGV[a])
a = a + 1
for _ = 1, settlements do
  local k = load(tonumber(ARGV[a]))
  local removed = redis.call('ZREM', k.f, ARGV[a + 1]) == 1
  if k.t then
    local used = {0, 0, 0}
    if ARGV[a + 2] ~= '1' then
      used = {tonumber(ARGV[a + 5]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])}
    end
    for d = 1, 3 do
      local L = k.L[d]
      if L > 0 then
        if removed then
          local charged = tonumber(ARGV[a + 4 + d])
          local u = math.min(used[d], charged + L)
          if u ~= charged then
            if u < charged then
              k.t[d] = k.t[d] - (charged - u) * W / L
            else
              k.t[d] = math.max(k.t[d], now) + (u - charged) * W / L
            end
            k.dirty = true
          end
        end
        local r = tonumber(ARGV[a + 7 + d])
        if r >= 0 then
          if r > L then r = L end
          local floor = now + (L - r) * W / L
          -- Empty: what comes next are refills, which reach the upstream's bucket later.
          if r == 0 then floor = floor + D end
          if floor > k.t[d] then
            k.t[d] = floor
            k.dirty = true
          end
        end
      end
    end
  end
  a = a + 11
end

local out = {}
while a <= #ARGV do
  local member = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local chosen, best = -1, -1
  for i = 0, n - 1 do
    if chosen < 0 then
      local k = load(tonumber(ARGV[a]))
      if not k.t then
        -- No state: the relay's own view (the last it knew), never a full bucket by default.
        k.t = {now + tonumber(ARGV[k.at + 3]), now + tonumber(ARGV[k.at + 4]),
               now + tonumber(ARGV[k.at + 5])}
        k.dirty = true
      end
      local wait = 0
      if k.cool > now then wait = k.cool - now end
      local next, charged = {}, {}
      for d = 1, 3 do
        local L = k.L[d]
        local units = tonumber(ARGV[a + d])
        if L > 0 then
          if units > L then units = L end
          next[d] = math.max(k.t[d], now) + units * W / L
          if next[d] - now > W then wait = math.max(wait, next[d] - now - W) end
          charged[d] = units
        else
          next[d] = k.t[d]
          charged[d] = 0
        end
      end
      if wait == 0 and k.cap > 0 then
        if not k.in_flight then
          -- Leases run out here: a dead relay's reservations stop counting as in flight.
          redis.call('ZREMRANGEBYSCORE', k.f, '-inf', now_ms)
          k.pruned = true
          k.in_flight = redis.call('ZCARD', k.f)
        end
        if k.in_flight >= k.cap then wait = 1000 end
      end
      if wait == 0 then
        k.t = next
        k.dirty = true
        if k.in_flight then k.in_flight = k.in_flight + 1 end
        -- Added to the in-flight set at the end, all of the key's in one call.
        k.added = k.added or {}
        k.added[#k.added + 1] = now_ms + lease
        k.added[#k.added + 1] = member
        chosen = i
        out[#out + 1] = i
        for d = 1, 3 do out[#out + 1] = math.floor(next[d] - now) end
        for d = 1, 3 do out[#out + 1] = charged[d] end
      elseif best < 0 or wait < best then
        best = wait
      end
    end
    a = a + 4
  end
  if chosen < 0 then
    out[#out + 1] = -1
    out[#out + 1] = math.floor(best)
    for _ = 1, 5 do out[#out + 1] = 0 end
  end
end

for _, k in ipairs(keys) do
  if k.dirty then
    redis.call('HSET', k.h, 't0', int(k.t[1]), 't1', int(k.t[2]), 't2', int(k.t[3]))
    -- The hash outlives a full refill twice over (and any cooldown), so expiry never brings
    -- a bucket back fuller than it would be anyway.
    local horizon = math.max(k.cool - now, k.t[1] - now, k.t[2] - now, k.t[3] - now)
    local ttl = math.floor(horizon / 1000) + math.floor(2 * W / 1000)
    redis.call('PEXPIRE', k.h, ttl)
    if k.added then
      if not k.pruned then redis.call('ZREMRANGEBYSCORE', k.f, '-inf', now_ms) end
      redis.call('ZADD', k.f, unpack(k.added))
      redis.call('PEXPIRE', k.f, math.max(ttl, lease))
    end
  end
end
return out
"#,
    )
});

/// A cooldown for every relay, sent at once (a 429 or a 403 benches the key everywhere), with
/// the response's `remaining` figures, which may only lower a balance (authoritative, but older
/// than reservations made since). Other responses' figures travel with their settlement.
/// `KEYS`: hash. `ARGV`: window (µs), delivery allowance (µs, as `EXCHANGE`'s), the three
/// limits, the three remaining figures (-1: not reported), the cooldown from now (µs, 0: none).
pub static LEARN: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local W = tonumber(ARGV[1])
local D = tonumber(ARGV[2])
local horizon = 0
for d = 0, 2 do
  local L = tonumber(ARGV[3 + d])
  local r = tonumber(ARGV[6 + d])
  local field = 't' .. d
  local tat = tonumber(redis.call('HGET', KEYS[1], field) or now)
  if L > 0 and r >= 0 then
    if r > L then r = L end
    local floor = now + (L - r) * W / L
    if r == 0 then floor = floor + D end
    tat = math.max(tat, floor)
    redis.call('HSET', KEYS[1], field, int(tat))
  end
  horizon = math.max(horizon, tat - now)
end
local cool = tonumber(ARGV[9])
if cool > 0 then
  local until_ = now + cool
  local current = tonumber(redis.call('HGET', KEYS[1], 'cool') or '0')
  if until_ > current then redis.call('HSET', KEYS[1], 'cool', int(until_)) end
  horizon = math.max(horizon, cool)
end
redis.call('PEXPIRE', KEYS[1], math.floor(horizon / 1000) + math.floor(2 * W / 1000))
return 1
"#,
    )
});

/// After the store was unreachable: push what this relay knows of each key (its debt per
/// dimension, µs, from the share it kept to meanwhile) into the store, lowering balances only,
/// so closing the breaker brings no burst. `KEYS`: the pool's hashes. `ARGV`: window (µs), then
/// three debts per key.
pub static SEED: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local W = tonumber(ARGV[1])
for i = 1, #KEYS do
  local horizon = 0
  for d = 0, 2 do
    local field = 't' .. d
    local debt = tonumber(ARGV[1 + (i - 1) * 3 + d + 1])
    local tat = tonumber(redis.call('HGET', KEYS[i], field) or '0')
    tat = math.max(tat, now + debt)
    redis.call('HSET', KEYS[i], field, int(tat))
    horizon = math.max(horizon, tat - now)
  end
  redis.call('PEXPIRE', KEYS[i], math.floor(horizon / 1000) + math.floor(2 * W / 1000))
end
return #KEYS
"#,
    )
});

/// The relays alive: each one stamps itself in a sorted set every heartbeat; those silent for
/// longer than the expiry drop out. `KEYS`: the set. `ARGV`: this relay's id, expiry (ms).
/// Returns how many relays are alive.
pub static HEARTBEAT: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - expiry)
redis.call('PEXPIRE', KEYS[1], expiry * 2)
return redis.call('ZCARD', KEYS[1])
"#,
    )
});
