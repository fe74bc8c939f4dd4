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

/// Reserve one request on the first of several candidate keys that can take it, in the
/// caller's order. `KEYS`: per candidate its hash and its in-flight set. `ARGV`: reservation id,
/// lease (ms), window (µs), candidate count, then per candidate ten numbers: the three limits
/// (0 = unknown), the three demands, the cap on requests in flight (0 = none), and the three
/// debts (µs) the relay itself knows for the key, used only when the store has no state for it
/// (never seen, or lost in a restart without persistence). Returns `{index (0-based), debt0,
/// debt1, debt2, charged0, charged1, charged2}`, or `{-1, wait_us}` when no candidate can take
/// it now.
pub static ADMIT: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local now_ms = math.floor(now / 1000)
local rid = ARGV[1]
local lease = tonumber(ARGV[2])
local W = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local best = -1
for i = 0, n - 1 do
  local h = KEYS[2 * i + 1]
  local f = KEYS[2 * i + 2]
  local a = 5 + i * 10
  local st = redis.call('HMGET', h, 't0', 't1', 't2', 'cool')
  local tat = {}
  for d = 0, 2 do
    if st[d + 1] then
      tat[d] = tonumber(st[d + 1])
    else
      -- No state: the relay's own view (the last it knew), never a full bucket by default.
      tat[d] = now + tonumber(ARGV[a + 7 + d])
    end
  end
  local cool = tonumber(st[4] or '0')
  local wait = 0
  if cool > now then wait = cool - now end
  local next, charged = {}, {}
  local horizon = cool - now
  for d = 0, 2 do
    local L = tonumber(ARGV[a + d])
    local units = tonumber(ARGV[a + 3 + d])
    if L > 0 then
      if units > L then units = L end
      local nt = math.max(tat[d], now) + units * W / L
      if nt - now > W then wait = math.max(wait, nt - now - W) end
      next[d] = nt
      charged[d] = units
    else
      next[d] = tat[d]
      charged[d] = 0
    end
    horizon = math.max(horizon, next[d] - now)
  end
  local cap = tonumber(ARGV[a + 6])
  if wait == 0 then
    -- Leases run out here: a dead relay's reservations stop counting as in flight.
    redis.call('ZREMRANGEBYSCORE', f, '-inf', now_ms)
    if cap > 0 and redis.call('ZCARD', f) >= cap then wait = 1000 end
  end
  -- The hash outlives a full refill twice over (and any cooldown), so expiry never brings a
  -- bucket back fuller than it would be anyway.
  local ttl = math.floor(horizon / 1000) + math.floor(2 * W / 1000)
  if wait == 0 then
    redis.call('HSET', h, 't0', int(next[0]), 't1', int(next[1]), 't2', int(next[2]))
    redis.call('PEXPIRE', h, ttl)
    local member = rid .. '|' .. int(charged[0]) .. '|' .. int(charged[1]) .. '|' .. int(charged[2])
    redis.call('ZADD', f, now_ms + lease, member)
    redis.call('PEXPIRE', f, math.max(ttl, lease))
    return {i, math.floor(next[0] - now), math.floor(next[1] - now), math.floor(next[2] - now),
            charged[0], charged[1], charged[2]}
  end
  if not st[1] then
    -- Keep the seeded state even though this candidate could not take the request.
    redis.call('HSET', h, 't0', int(tat[0]), 't1', int(tat[1]), 't2', int(tat[2]))
    redis.call('PEXPIRE', h, ttl)
  end
  if best < 0 or wait < best then best = wait end
end
return {-1, math.floor(best)}
"#,
    )
});

/// End reservations, several per call (one pool's, so one hash tag): correct each to the real
/// usage or give it all back, then apply what its response's rate-limit headers said (a
/// `remaining` only ever lowers a balance: it is authoritative, but older than reservations made
/// since). Idempotent: a reservation's member is removed from the in-flight set first, and only
/// a call that removed it changes the buckets, so a batch retried after a lost reply is not
/// applied twice, and a lease that already ran out is not refunded (its reservation came back
/// through refill). The headers' figures apply either way. `KEYS`: per reservation its key's
/// hash and in-flight set. `ARGV`: window (µs), then per reservation ten values: its member, the
/// three limits, `release` (1: nothing used), the real input and output tokens, the three
/// `remaining` figures (-1: not reported). Returns how many were applied.
pub static SETTLE: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local W = tonumber(ARGV[1])
local applied = 0
for i = 0, #KEYS / 2 - 1 do
  local h, f = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = 2 + i * 10
  local member = ARGV[a]
  local removed = redis.call('ZREM', f, member) == 1
  -- One read and one write of the hash per reservation: each call from the script costs more
  -- than the arithmetic around it.
  local st = redis.call('HMGET', h, 't0', 't1', 't2')
  if st[1] then
    local tat = {tonumber(st[1]), tonumber(st[2]), tonumber(st[3])}
    local c = {}
    if removed then
      applied = applied + 1
      for v in string.gmatch(member, '|(%d+)') do c[#c + 1] = tonumber(v) end
    end
    local used = {0, 0, 0}
    if ARGV[a + 4] ~= '1' then
      used = {c[1] or 0, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])}
    end
    local changed = false
    for d = 1, 3 do
      local L = tonumber(ARGV[a + d])
      if L > 0 then
        if removed then
          local charged = c[d] or 0
          local u = math.min(used[d], charged + L)
          if u < charged then
            tat[d] = tat[d] - (charged - u) * W / L
            changed = true
          elseif u > charged then
            tat[d] = math.max(tat[d], now) + (u - charged) * W / L
            changed = true
          end
        end
        local r = tonumber(ARGV[a + 6 + d])
        if r >= 0 then
          if r > L then r = L end
          local floor = now + (L - r) * W / L
          if floor > tat[d] then
            tat[d] = floor
            changed = true
          end
        end
      end
    end
    if changed then
      redis.call('HSET', h, 't0', int(tat[1]), 't1', int(tat[2]), 't2', int(tat[3]))
    end
  end
end
return applied
"#,
    )
});

/// A cooldown for every relay, sent at once (a 429 or a 403 benches the key everywhere), with
/// the response's `remaining` figures, which may only lower a balance (authoritative, but older
/// than reservations made since). Other responses' figures travel with their settlement.
/// `KEYS`: hash. `ARGV`: window (µs), the three limits, the three remaining figures (-1: not
/// reported), the cooldown from now (µs, 0: none).
pub static LEARN: Lazy<Script> = Lazy::new(|| {
    script(
        r#"
local W = tonumber(ARGV[1])
local horizon = 0
for d = 0, 2 do
  local L = tonumber(ARGV[2 + d])
  local r = tonumber(ARGV[5 + d])
  local field = 't' .. d
  local tat = tonumber(redis.call('HGET', KEYS[1], field) or now)
  if L > 0 and r >= 0 then
    if r > L then r = L end
    tat = math.max(tat, now + (L - r) * W / L)
    redis.call('HSET', KEYS[1], field, int(tat))
  end
  horizon = math.max(horizon, tat - now)
end
local cool = tonumber(ARGV[8])
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
