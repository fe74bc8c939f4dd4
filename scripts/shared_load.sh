#!/usr/bin/env bash
# What `shared_state` costs (issue 16): throughput with and without it in the same run, and the
# admission round trip through a redis-server on loopback.
#
# Two relays with the same config except `shared_state`, in front of one mock whose keys have
# limits far above the load (so every response carries `anthropic-ratelimit-*` headers and the
# shared relay sends them to the store: admission, lesson and settlement, three scripts per
# request), and a redis-server of its own (no persistence) on a free port.
#   saturated  wrk at CONNS (32) connections, DURATION (8) s, REPS (3) repetitions alternating
#              between the two relays: req/s, relay CPU per 1,000 requests.
#   paced      ~1,000 req/s (10 connections, ~10 ms between requests each): the admission
#              latency the relay records (`cc_relay_shared_admission_seconds`), p50 and p99, and
#              the added latency seen by the client, with vs without.
# Prints a Markdown table; writes it to results/shared-<timestamp>.md.
#
# usage: bash scripts/shared_load.sh    (env: CONNS, DURATION, REPS, THREADS (2), PROFILE (dist))
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
CONNS=${CONNS:-32}
DURATION=${DURATION:-8}
REPS=${REPS:-3}
THREADS=${THREADS:-2}
PROFILE=${PROFILE:-dist}
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"
for tool in wrk redis-server python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (make deps / apt install)" >&2; exit 1; }
done
cargo build --profile "$PROFILE" --workspace --bins >&2
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
DIR=$(mktemp -d /tmp/cc-relay-shared.XXXXXX)
PIDS=()
trap 'stop_pids "${PIDS[@]}"; rm -rf "$DIR"' EXIT
read -r REDIS_PORT MOCK_PORT PLAIN_PORT SHARED_PORT < <(free_ports 4)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --maxmemory-policy noeviction >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
"$BIN/cc-relay-mock" --listen "127.0.0.1:$MOCK_PORT" --threads 1 \
  --rpm 1000000000 --itpm 1000000000000 --otpm 1000000000000 >"$DIR/mock.log" 2>&1 &
PIDS+=($!)
mkdir -p "$DIR/plain" "$DIR/shared"
write_relay_config "$DIR/plain.yaml" "$PLAIN_PORT" "$MOCK_PORT" "$THREADS" "$DIR/plain"
write_relay_config "$DIR/shared.yaml" "$SHARED_PORT" "$MOCK_PORT" "$THREADS" "$DIR/shared"
cat >>"$DIR/shared.yaml" <<YAML
shared_state:
  redis_url: "redis://127.0.0.1:$REDIS_PORT"
  namespace: bench
YAML
for which in plain shared; do
  env -u RUST_LOG -u ANTHROPIC_API_KEY "$BIN/cc-relay" serve --config "$DIR/$which.yaml" \
    >"$DIR/$which.log" 2>&1 &
  PIDS+=($!)
  eval "${which^^}_PID=$!"
done
wait_port "$REDIS_PORT" && wait_port "$MOCK_PORT" && wait_port "$PLAIN_PORT" && wait_port "$SHARED_PORT"
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$SHARED_PORT/status" | grep -q '"breaker":"closed"' && break
  sleep 0.1
done
python3 scripts/load_body.py small >"$DIR/body.json"
write_wrk_post_script "$DIR/post.lua" "$DIR/body.json"
cat >>"$DIR/post.lua" <<'LUA'
local pace = tonumber(os.getenv("PACE_MS") or "0")
if pace > 0 then
  function delay() return math.random(math.floor(pace / 2), math.ceil(pace * 3 / 2)) end
end
LUA
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# CPU ticks of each worker thread ("cc-relay N") of relay PID, comma-separated.
thread_ticks() {
  local t out=""
  for t in /proc/"$1"/task/*; do
    grep -qE '^cc-relay [0-9]+$' "$t/comm" && out+="$(awk '{ print $14 + $15 }' "$t/stat"),"
  done
  echo "${out%,}"
}
# run PORT PID CONNS PACE_MS: "req/s p50_us p99_us relay_cpu_s_per_1k redis_cpu_s_per_1k
# busiest_thread_share" (the last: the busiest worker thread's part of the worker threads' CPU;
# the kernel hands wrk's connections to the per-thread services unevenly, see "Lever 1")
run() {
  local before after out rbefore rafter tbefore tafter
  before=$(ticks "$2")
  rbefore=$(ticks "$REDIS_PID")
  tbefore=$(thread_ticks "$2")
  out=$(PACE_MS="$4" wrk -t1 -c"$3" -d"${DURATION}s" --latency -s "$DIR/post.lua" \
    "http://127.0.0.1:$1/v1/messages")
  after=$(ticks "$2")
  rafter=$(ticks "$REDIS_PID")
  tafter=$(thread_ticks "$2")
  python3 - "$before" "$after" "$(getconf CLK_TCK)" "$rbefore" "$rafter" "$tbefore" "$tafter" <<PY
import re, sys
out = """$out"""
before, after, hz, rbefore, rafter = map(int, sys.argv[1:6])
threads = [b - a for a, b in zip(map(int, sys.argv[6].split(",")), map(int, sys.argv[7].split(",")))]
busiest = max(threads) / max(sum(threads), 1)
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
def lat(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)\b" % p, out)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors or "Socket errors" in out:
    print("errors in run:", out, file=sys.stderr)
print(f"{rps:.0f} {lat(50):.0f} {lat(99):.0f} {(after - before) / hz / reqs * 1000:.4f} "
      f"{(rafter - rbefore) / hz / reqs * 1000:.4f} {busiest:.2f}")
PY
}
wrk -t1 -c"$CONNS" -d2s -s "$DIR/post.lua" "http://127.0.0.1:$PLAIN_PORT/v1/messages" >/dev/null
# Paced first, so the admission histogram (cumulative) holds the paced run alone when read.
PACED_PLAIN=$(run "$PLAIN_PORT" "$PLAIN_PID" 10 10)
PACED_SHARED=$(run "$SHARED_PORT" "$SHARED_PID" 10 10)
paced_status=$(curl -sf "http://127.0.0.1:$SHARED_PORT/status")
wrk -t1 -c"$CONNS" -d2s -s "$DIR/post.lua" "http://127.0.0.1:$SHARED_PORT/v1/messages" >/dev/null
declare -a PLAIN_RUNS SHARED_RUNS
for rep in $(seq 1 "$REPS"); do
  PLAIN_RUNS+=("$(run "$PLAIN_PORT" "$PLAIN_PID" "$CONNS" 0)")
  SHARED_RUNS+=("$(run "$SHARED_PORT" "$SHARED_PID" "$CONNS" 0)")
  echo "rep $rep: without ${PLAIN_RUNS[-1]} | with ${SHARED_RUNS[-1]}" >&2
done
final_status=$(curl -sf "http://127.0.0.1:$SHARED_PORT/status")
mkdir -p results
python3 - "$STAMP" "$CONNS" "$DURATION" "$REPS" "$THREADS" \
  "${PLAIN_RUNS[*]}" "${SHARED_RUNS[*]}" "$PACED_PLAIN" "$PACED_SHARED" \
  "$paced_status" "$final_status" <<'PY' | tee "results/shared-$STAMP.md"
import json, statistics, sys
stamp, conns, dur, reps, threads = sys.argv[1:6]
def runs(s):
    vals = list(map(float, s.split()))
    return [vals[i:i + 6] for i in range(0, len(vals), 6)]
plain, shared = runs(sys.argv[6]), runs(sys.argv[7])
paced_plain, paced_shared = runs(sys.argv[8])[0], runs(sys.argv[9])[0]
paced, final = json.loads(sys.argv[10])["shared_state"], json.loads(sys.argv[11])["shared_state"]
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(f"# shared_state cost, run {stamp}\n")
print(f"Command: `bash scripts/shared_load.sh` — wrk -c{conns}, {dur} s x {reps} repetitions "
      f"alternating, relay threads {threads}, redis-server on loopback, one key.\n")
print("| | req/s (median) | p50 µs | p99 µs | relay CPU s/1k req | redis-server CPU s/1k req |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| without shared_state | {med(plain,0):,.0f} | {med(plain,1):.0f} | {med(plain,2):.0f} | {med(plain,3):.3f} | – |")
print(f"| with shared_state | {med(shared,0):,.0f} | {med(shared,1):.0f} | {med(shared,2):.0f} | {med(shared,3):.3f} | {med(shared,4):.3f} |")
print(f"| ratio with/without | {med(shared,0)/med(plain,0):.2f} | | | {med(shared,3)/med(plain,3):.2f} | |\n")
print(f"Per repetition req/s (busiest worker thread's share of the relay's worker CPU): "
      f"without {[(round(r[0]), r[5]) for r in plain]}, with {[(round(r[0]), r[5]) for r in shared]}.\n")
one = lambda rows: [r[0] for r in rows if r[5] >= 0.9]
both = lambda rows: [r[0] for r in rows if r[5] < 0.9]
for label, pick in (("on one worker thread (busiest >= 90 %)", one), ("spread over the threads", both)):
    p, s = pick(plain), pick(shared)
    if p and s:
        print(f"- repetitions {label}: without {statistics.median(p):,.0f}, with {statistics.median(s):,.0f} req/s "
              f"(ratio {statistics.median(s) / statistics.median(p):.2f}; {len(p)} and {len(s)} repetitions)")
    else:
        print(f"- repetitions {label}: {len(p)} without, {len(s)} with")
print()
print("Paced, ~1,000 req/s (10 connections):\n")
print("| | p50 µs | p99 µs |")
print("|---|---:|---:|")
print(f"| without shared_state | {paced_plain[1]:.0f} | {paced_plain[2]:.0f} |")
print(f"| with shared_state | {paced_shared[1]:.0f} | {paced_shared[2]:.0f} |\n")
print("Admission round trip as the relay recorded it (`/status` `shared_state`, upper bounds of "
      "histogram buckets, all requests of the run):\n")
print(f"- paced run (~1,000 req/s): p50 ≤ {paced['latency_p50_us']} µs, p99 ≤ {paced['latency_p99_us']} µs "
      f"({paced['admitted']:,} admitted, {paced['errors']} errors, {paced['timeouts']} timeouts)")
print(f"- paced and saturated runs together: p50 ≤ {final['latency_p50_us']} µs, p99 ≤ {final['latency_p99_us']} µs "
      f"({final['admitted']:,} admitted, {final['errors']} errors, {final['timeouts']} timeouts, "
      f"{final['dropped']} settlements dropped, breaker opened {final['breaker_opened']} times)")
print(f"- script calls to the store: {final['calls']:,} for {final['admitted']:,} admissions and as many "
      f"settlements ({final['admitted'] / max(final['calls'], 1):.1f} admissions per call; "
      f"paced run alone: {paced['admitted'] / max(paced['calls'], 1):.1f})")
PY
