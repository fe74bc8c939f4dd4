#!/usr/bin/env bash
# `make load`: side-by-side load test on loopback — the mock upstream directly (the floor),
# through a bare Pingora proxy (examples/bare_pingora.rs: Pingora tuned like the relay, with no
# relay logic; the floor of any Pingora proxy), through cc-relay, and through nginx as a plain
# reverse proxy — in one run, targets alternated (direct pingora relay nginx direct pingora ...),
# medians of REPS repetitions. The bare proxy is built (cargo, release) if its binary is missing.
#
# Scenarios (wrk, HTTP/1.1 keep-alive, POST /v1/messages):
#   json-2k@C   non-streaming, ~2 KB body, C connections (CONNS, default "32 256")
#   sse-2k@C    "stream": true, same body
#   sse-76k@32  "stream": true, a ~76 KB Claude Code-shaped body
#   paced-json / paced-sse   ~RATE req/s (default 1000) to read added latency at a fixed load
#   mem-sse     MEM_STREAMS (1000) concurrent long SSE streams: the relay's peak RSS (then the
#               bare Pingora proxy's and nginx's); the relay and the bare proxy are restarted first
#   soak        SOAK=1: SOAK_DURATION (60) s of sse-2k at 256 connections through the relay
#               (its peak RSS; whether memory stays flat over a long run: scripts/soak.sh)
#   relay-log   ACCESS_LOG=1: one more target, a second relay process with its access log on
#               (JSON lines to a file), so the log's cost is read against the relay without it
#               in the same run
#
# Fixed rate: oha is not packaged by Debian 12, so the paced runs use wrk with a Lua delay():
# PACE_CONNS connections each wait a random 0.5..1.5 x (PACE_CONNS*1000/RATE) ms between
# requests. Latency is timed from send to last byte and excludes the wait; at this load the
# service time (<1 ms) is far below the interval, so coordinated omission does not arise.
#
# Per run: req/s, p50/p99/p99.9, errors (connect/read/write/timeout + non-2xx), CPU seconds per
# 1,000 requests of the proxy (relay, bare Pingora, nginx) and the mock (utime+stime from
# /proc/PID/stat), peak RSS (VmHWM, reset through /proc/PID/clear_refs before each run).
# Results: $OUT/load-<ts>.{json,md,png}.
#
# Env: DURATION (8 s per run), REPS (3), CONNS ("32 256"), RATE (1000), PACE_CONNS (10),
#      THREADS (relay threads = bare Pingora threads = nginx worker_processes; default nproc),
#      MOCK_THREADS (1), WRK_THREADS (1), LATENCY_MS (mock latency before headers, 0),
#      EVENTS (SSE deltas, 5),
#      SCENARIOS (subset of: json-2k sse-2k sse-76k paced-json paced-sse),
#      MEM (1 = run mem-sse), MEM_STREAMS (1000), MEM_DURATION (15), MEM_INTERVAL_MS (100),
#      SOAK (0), SOAK_DURATION (60), ACCESS_LOG (0), TARGET_ORDER (the targets, reordered), OUT (results), PLOT (extra copy of the plot, e.g. docs/x.png),
#      PROFILE (the cargo profile of every binary; default dist, as `make build`),
#      RELAY_BIN (the relay binary to test; default target/$PROFILE/cc-relay: A/B two builds)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# The settings given in the environment, to record how this run was made.
OVERRIDES=""
for v in DURATION REPS CONNS RATE PACE_CONNS THREADS MOCK_THREADS WRK_THREADS LATENCY_MS EVENTS \
  SCENARIOS MEM MEM_STREAMS MEM_DURATION MEM_INTERVAL_MS SOAK SOAK_DURATION RELAY_BIN ACCESS_LOG \
  TARGET_ORDER PROFILE; do
  [ -n "${!v+x}" ] && OVERRIDES+="$v='${!v}' "
done

DURATION=${DURATION:-8}
REPS=${REPS:-3}
CONNS=${CONNS:-"32 256"}
RATE=${RATE:-1000}
PACE_CONNS=${PACE_CONNS:-10}
THREADS=${THREADS:-$(nproc)}
MOCK_THREADS=${MOCK_THREADS:-1}
WRK_THREADS=${WRK_THREADS:-1}
LATENCY_MS=${LATENCY_MS:-0}
EVENTS=${EVENTS:-5}
SCENARIOS=${SCENARIOS-"json-2k sse-2k sse-76k paced-json paced-sse"}
MEM=${MEM:-1}
MEM_STREAMS=${MEM_STREAMS:-1000}
MEM_DURATION=${MEM_DURATION:-15}
MEM_INTERVAL_MS=${MEM_INTERVAL_MS:-100}
SOAK=${SOAK:-0}
SOAK_DURATION=${SOAK_DURATION:-60}
OUT=${OUT:-results}
PLOT=${PLOT:-}
ACCESS_LOG=${ACCESS_LOG:-0}
TARGETS="direct pingora relay nginx"
[ "$ACCESS_LOG" = 1 ] && TARGETS="direct pingora relay relay-log nginx"
# TARGET_ORDER: the same targets in another order (to see whether a position favours one).
TARGETS=${TARGET_ORDER:-$TARGETS}

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Dependencies: wrk, nginx, python3 (report), matplotlib (plot; optional), the release binaries.
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib (pip) for the plot"
  python3 -m pip install -q matplotlib 2>/dev/null ||
    python3 -m pip install -q --break-system-packages matplotlib 2>/dev/null ||
    log "matplotlib unavailable: the report will have no plot"
fi
PROFILE=${PROFILE:-dist}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
RELAY_BIN=${RELAY_BIN:-$BIN/cc-relay}
# Always through cargo (a no-op when up to date): a stale binary would measure old code. The
# bare Pingora proxy and the mock are built with the same profile as the relay.
log "building the $PROFILE binaries and the bare Pingora proxy (examples/bare_pingora.rs)"
cargo build --profile "$PROFILE" --workspace --bins --example bare_pingora
PINGORA_BIN=$BIN/examples/bare_pingora

# 1,000 streams need ~2,000 descriptors in the relay and as many in wrk and the mock.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 4096 ] || die "open-file limit $(ulimit -n) is too low for the memory scenario"

# ---------------------------------------------------------------------------------------------
# Processes: everything this script starts is stopped on exit.
DIR=$(mktemp -d /tmp/cc-relay-load.XXXXXX)
PIDS=()
# Wait for a child to exit, at most 10 s, then kill it.
reap() {
  local pid=$1 watchdog
  (sleep 10 && kill -9 "$pid" 2>/dev/null) &
  watchdog=$!
  wait "$pid" 2>/dev/null || true
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do reap "$p"; done
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r MOCK_PORT RELAY_PORT NGINX_PORT PINGORA_PORT RELAYLOG_PORT < <(free_ports 5)

"$BIN/cc-relay-mock" --listen "127.0.0.1:$MOCK_PORT" --threads "$MOCK_THREADS" \
  --latency-ms "$LATENCY_MS" --events "$EVENTS" >"$DIR/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" || die "mock did not start: $(cat "$DIR/mock.log")"

write_relay_config "$DIR/relay.yaml" "$RELAY_PORT" "$MOCK_PORT" "$THREADS" "$DIR"
start_relay() {
  env -u RUST_LOG -u ANTHROPIC_API_KEY "$RELAY_BIN" serve --config "$DIR/relay.yaml" \
    >>"$DIR/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  wait_port "$RELAY_PORT" || die "relay did not start: $(cat "$DIR/relay.log")"
}
stop_relay() {
  kill -TERM "$RELAY_PID" 2>/dev/null || true
  reap "$RELAY_PID"
}
start_relay

# ACCESS_LOG=1: the same binary with its access log on, as a target of its own.
RELAYLOG_PID=0
if [ "$ACCESS_LOG" = 1 ]; then
  mkdir -p "$DIR/relay-log"
  write_relay_config "$DIR/relay-log/relay.yaml" "$RELAYLOG_PORT" "$MOCK_PORT" "$THREADS" \
    "$DIR/relay-log" "$DIR/relay-log/access.log"
  env -u RUST_LOG -u ANTHROPIC_API_KEY "$RELAY_BIN" serve --config "$DIR/relay-log/relay.yaml" \
    >>"$DIR/relay-log/relay.log" 2>&1 &
  RELAYLOG_PID=$!
  PIDS+=("$RELAYLOG_PID")
  wait_port "$RELAYLOG_PORT" || die "relay-log did not start: $(cat "$DIR/relay-log/relay.log")"
fi

# The bare Pingora proxy: the relay's server settings, none of its logic.
start_pingora() {
  env -u RUST_LOG "$PINGORA_BIN" "127.0.0.1:$PINGORA_PORT" "127.0.0.1:$MOCK_PORT" "$THREADS" \
    >>"$DIR/pingora.log" 2>&1 &
  PINGORA_PID=$!
  PIDS+=("$PINGORA_PID")
  wait_port "$PINGORA_PORT" || die "bare pingora did not start: $(cat "$DIR/pingora.log")"
}
stop_pingora() {
  kill -TERM "$PINGORA_PID" 2>/dev/null || true
  reap "$PINGORA_PID"
}
start_pingora

mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<NGINX
# A plain reverse proxy, tuned as one would for this job: as many workers as the relay has
# threads, keep-alive both sides, no response buffering (SSE), request bodies kept in memory.
user root;
worker_processes $THREADS;
worker_rlimit_nofile 65536;
daemon off;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx/body;
  proxy_temp_path $DIR/nginx/proxy;
  fastcgi_temp_path $DIR/nginx/fastcgi;
  uwsgi_temp_path $DIR/nginx/uwsgi;
  scgi_temp_path $DIR/nginx/scgi;
  keepalive_timeout 75s;
  keepalive_requests 10000000;
  client_max_body_size 32m;
  client_body_buffer_size 1m;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 1024;
    keepalive_requests 10000000;
    keepalive_timeout 90s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }
  }
}
NGINX
"$NGINX" -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e "$DIR/nginx/error.log" \
  >"$DIR/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT" || die "nginx did not start: $(cat "$DIR/nginx/error.log")"

# ---------------------------------------------------------------------------------------------
# Request bodies and the wrk script.
python3 scripts/load_body.py small >"$DIR/json-2k.json"
python3 scripts/load_body.py small --stream >"$DIR/sse-2k.json"
python3 scripts/load_body.py claude-code --stream >"$DIR/sse-76k.json"

cat >"$DIR/load.lua" <<'LUA'
local f = assert(io.open(os.getenv("LOAD_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "sk-load-client"
local interval = tonumber(os.getenv("LOAD_EVENT_INTERVAL_MS") or "")
if interval then
  wrk.headers["x-mock-event-interval-ms"] = tostring(interval)
  wrk.headers["x-mock-events"] = os.getenv("LOAD_EVENTS")
end
local pace = tonumber(os.getenv("LOAD_PACE_MS") or "0")
if pace > 0 then
  local lo, hi = math.floor(pace / 2), math.ceil(pace * 3 / 2)
  function setup(thread) thread:set("seed", math.random(1, 1e9)) end
  function init(args) math.randomseed(seed or os.time()) end
  function delay() return math.random(lo, hi) end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
LUA

# ---------------------------------------------------------------------------------------------
# Measurement helpers.
CLK_TCK=$(getconf CLK_TCK)
nginx_pids() { echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true); }
# utime+stime (ticks) summed over the given pids.
cpu_ticks() { stat_sum "14 15" "$@"; }
# Fields of /proc/PID/stat (numbered as in proc(5)) summed over the given pids.
stat_sum() {
  local fields=$1 t=0 p stat f
  local -a v
  shift
  for p in "$@"; do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -ra v <<<"${stat##*) }" # fields from 3 on: after "(comm) "
    for f in $fields; do t=$((t + v[f - 3])); done
  done
  echo "$t"
}
# VmHWM (kB) summed over the given pids.
hwm_kb() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# Minor page faults summed over the given pids.
minflt() { stat_sum 10 "$@"; }
reset_hwm() { local p; for p in "$@"; do { echo 5 >"/proc/$p/clear_refs"; } 2>/dev/null || true; done; }
url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$MOCK_PORT/v1/messages" ;;
    pingora) echo "http://127.0.0.1:$PINGORA_PORT/v1/messages" ;;
    relay) echo "http://127.0.0.1:$RELAY_PORT/v1/messages" ;;
    relay-log) echo "http://127.0.0.1:$RELAYLOG_PORT/v1/messages" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/messages" ;;
  esac
}

mkdir -p "$OUT"
TS=$(date -u +%Y%m%dT%H%M%SZ)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUNS=$DIR/runs.jsonl
: >"$RUNS"

# run_one SCENARIO TARGET REP BODY CONNS DURATION PACE_MS [EVENT_INTERVAL_MS EVENTS]
run_one() {
  local scenario=$1 target=$2 rep=$3 body=$4 conns=$5 dur=$6 pace=$7
  local interval=${8:-} events=${9:-}
  local threads=$WRK_THREADS
  ((conns >= 512 && threads < 2)) && threads=2
  local np; np=$(nginx_pids)
  # shellcheck disable=SC2086
  reset_hwm "$RELAY_PID" "$PINGORA_PID" "$MOCK_PID" "$RELAYLOG_PID" $np
  local l0 l1; l0=$(cpu_ticks "$RELAYLOG_PID")
  local r0 g0 n0 m0; r0=$(cpu_ticks "$RELAY_PID"); g0=$(cpu_ticks "$PINGORA_PID")
  n0=$(cpu_ticks $np); m0=$(cpu_ticks "$MOCK_PID")
  local fr0 fg0 fn0 fl0; fr0=$(minflt "$RELAY_PID"); fg0=$(minflt "$PINGORA_PID")
  fn0=$(minflt $np); fl0=$(minflt "$RELAYLOG_PID")
  local out
  out=$(LOAD_BODY="$DIR/$body.json" LOAD_PACE_MS="$pace" LOAD_EVENT_INTERVAL_MS="$interval" \
    LOAD_EVENTS="$events" wrk -t"$threads" -c"$conns" -d"${dur}s" --timeout 30s \
    -s "$DIR/load.lua" "$(url_of "$target")" 2>&1) || die "wrk failed: $out"
  l1=$(cpu_ticks "$RELAYLOG_PID")
  local r1 g1 n1 m1; r1=$(cpu_ticks "$RELAY_PID"); g1=$(cpu_ticks "$PINGORA_PID")
  n1=$(cpu_ticks $np); m1=$(cpu_ticks "$MOCK_PID")
  local fr1 fg1 fn1 fl1; fr1=$(minflt "$RELAY_PID"); fg1=$(minflt "$PINGORA_PID")
  fn1=$(minflt $np); fl1=$(minflt "$RELAYLOG_PID")
  local wrk_json; wrk_json=$(sed -n 's/^WRK_JSON //p' <<<"$out")
  [ -n "$wrk_json" ] || die "no result from wrk: $out"
  printf '{"scenario":"%s","target":"%s","rep":%d,"body":"%s","conns":%d,"duration_s":%s,"pace_ms":%d,"wrk":%s,"cpu_ticks":{"relay":%d,"relay-log":%d,"pingora":%d,"nginx":%d,"mock":%d},"minflt":{"relay":%d,"relay-log":%d,"pingora":%d,"nginx":%d},"hwm_kb":{"relay":%d,"relay-log":%d,"pingora":%d,"nginx":%d,"mock":%d}}\n' \
    "$scenario" "$target" "$rep" "$body" "$conns" "$dur" "$pace" "$wrk_json" \
    $((r1 - r0)) $((l1 - l0)) $((g1 - g0)) $((n1 - n0)) $((m1 - m0)) \
    $((fr1 - fr0)) $((fl1 - fl0)) $((fg1 - fg0)) $((fn1 - fn0)) \
    "$(hwm_kb "$RELAY_PID")" "$(hwm_kb "$RELAYLOG_PID")" "$(hwm_kb "$PINGORA_PID")" "$(hwm_kb $np)" "$(hwm_kb "$MOCK_PID")" >>"$RUNS"
  python3 - "$RUNS" <<'PY' >&2
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1]); w = r["wrk"]
err = w["connect"] + w["read"] + w["write"] + w["timeout"] + w["status"]
print(f'  {r["scenario"]:<12} {r["target"]:<7} rep {r["rep"]}: {w["requests"]/w["duration_us"]*1e6:9.0f} req/s'
      f'  p50 {w["p50_us"]:>6} us  p99 {w["p99_us"]:>6} us  p99.9 {w["p999_us"]:>6} us  errors {err}')
PY
}

# Pacing interval per connection for RATE req/s in total.
PACE_MS=$(((PACE_CONNS * 1000 + RATE / 2) / RATE))
((PACE_MS >= 2)) || die "RATE too high for PACE_CONNS=$PACE_CONNS (interval under 2 ms)"

log "mock :$MOCK_PORT (threads $MOCK_THREADS, latency ${LATENCY_MS} ms), bare pingora :$PINGORA_PORT (pid $PINGORA_PID, threads $THREADS), relay :$RELAY_PORT (pid $RELAY_PID, threads $THREADS), nginx :$NGINX_PORT (workers $THREADS)"
log "warm-up"
for t in $TARGETS; do
  LOAD_BODY="$DIR/json-2k.json" wrk -t1 -c32 -d2s -s "$DIR/load.lua" "$(url_of "$t")" >/dev/null
  LOAD_BODY="$DIR/sse-2k.json" wrk -t1 -c32 -d1s -s "$DIR/load.lua" "$(url_of "$t")" >/dev/null
done

# Scenario list: name body conns pace
PLAN=()
for s in $SCENARIOS; do
  case $s in
    json-2k | sse-2k) for c in $CONNS; do PLAN+=("$s@$c $s $c 0"); done ;;
    sse-76k) PLAN+=("sse-76k@32 sse-76k 32 0") ;;
    paced-json) PLAN+=("paced-json json-2k $PACE_CONNS $PACE_MS") ;;
    paced-sse) PLAN+=("paced-sse sse-2k $PACE_CONNS $PACE_MS") ;;
    *) die "unknown scenario $s" ;;
  esac
done

for entry in "${PLAN[@]}"; do
  read -r name body conns pace <<<"$entry"
  log "$name: ${REPS} x ($TARGETS), ${DURATION}s each"
  for rep in $(seq 1 "$REPS"); do
    for t in $TARGETS; do
      run_one "$name" "$t" "$rep" "$body" "$conns" "$DURATION" "$pace"
      sleep 0.5
    done
  done
done

if [ "$MEM" = 1 ]; then
  # Fresh relay and bare Pingora processes: their peak RSS is then what these streams cost, not
  # what earlier scenarios left in the allocator.
  kill -0 "$RELAY_PID" 2>/dev/null || die "the relay died during the run: $(tail -20 "$DIR/relay.log")"
  kill -0 "$PINGORA_PID" 2>/dev/null ||
    die "bare pingora died during the run: $(tail -20 "$DIR/pingora.log")"
  stop_relay
  start_relay
  stop_pingora
  start_pingora
  RELAY_IDLE_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$RELAY_PID/status")
  PINGORA_IDLE_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$PINGORA_PID/status")
  # Streams of MEM_DURATION x 2/3 s (events x interval), so every connection holds one open
  # stream for most of the run.
  mem_events=$((MEM_DURATION * 1000 * 2 / 3 / MEM_INTERVAL_MS))
  log "mem-sse: $MEM_STREAMS concurrent SSE streams (${mem_events} events every ${MEM_INTERVAL_MS} ms), ${MEM_DURATION}s, relay, bare pingora, nginx"
  for t in relay pingora nginx; do
    run_one "mem-sse" "$t" 1 sse-2k "$MEM_STREAMS" "$MEM_DURATION" 0 "$MEM_INTERVAL_MS" "$mem_events"
    sleep 1
  done
fi

if [ "$SOAK" = 1 ]; then
  log "soak: sse-2k at 256 connections through the relay for ${SOAK_DURATION}s"
  run_one "soak-sse@256" relay 1 sse-2k 256 "$SOAK_DURATION" 0
fi

kill -0 "$RELAY_PID" 2>/dev/null || die "the relay died during the run: $(tail -20 "$DIR/relay.log")"
kill -0 "$PINGORA_PID" 2>/dev/null ||
  die "bare pingora died during the run: $(tail -20 "$DIR/pingora.log")"
# wrk cuts the responses in flight when a run ends: Pingora logs each at ERROR as "Fail to
# proxy: Downstream ConnectionClosed / ReadError / WriteError". Anything else is worth a look
# (kept in $OUT/load-<ts>.relay-log.txt).
RELAY_LOG_ERRORS=$(grep -c ' ERROR ' "$DIR/relay.log" || true)
RELAY_LOG_OTHER=$(grep -E ' (ERROR|WARN) |panic' "$DIR/relay.log" | grep -vc 'Fail to proxy: Downstream' || true)
log "relay log: $RELAY_LOG_ERRORS ERROR lines, $RELAY_LOG_OTHER not from clients closing at the end of a run"
PINGORA_LOG_OTHER=$(grep -E ' (ERROR|WARN) |panic' "$DIR/pingora.log" | grep -vc 'Fail to proxy: Downstream' || true)
log "bare pingora log: $PINGORA_LOG_OTHER ERROR/WARN lines not from clients closing at the end of a run"
mkdir -p "$OUT"
grep -v 'Fail to proxy: Downstream' "$DIR/relay.log" | head -200 >"$OUT/load-$TS.relay-log.txt" || true
if [ "$RELAY_LOG_OTHER" != 0 ]; then
  grep -E ' (ERROR|WARN) |panic' "$DIR/relay.log" | grep -v 'Fail to proxy: Downstream' | tail -5 >&2
fi

cat >"$DIR/meta.json" <<JSON
{"timestamp":"$TS","command":"${OVERRIDES}bash scripts/load.sh","duration_s":$DURATION,"reps":$REPS,
 "rate":$RATE,"pace_conns":$PACE_CONNS,"pace_ms":$PACE_MS,"threads":$THREADS,
 "mock_threads":$MOCK_THREADS,"wrk_threads":$WRK_THREADS,"latency_ms":$LATENCY_MS,"events":$EVENTS,
 "mem_streams":$MEM_STREAMS,"profile":"$PROFILE","clk_tck":$CLK_TCK,"nproc":$(nproc),
 "relay_bin":"$RELAY_BIN","relay_idle_rss_kb":${RELAY_IDLE_KB:-null},
 "pingora_bin":"$PINGORA_BIN","pingora_idle_rss_kb":${PINGORA_IDLE_KB:-null},
 "loadavg_start":"$LOADAVG_START","loadavg_end":"$(cut -d' ' -f1-3 /proc/loadavg)","relay_log_errors":$RELAY_LOG_ERRORS,"relay_log_other":$RELAY_LOG_OTHER,
 "cpu_model":"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
 "kernel":"$(uname -r)","wrk":"$(wrk --version 2>&1 | head -1 | cut -d' ' -f2)",
 "nginx":"$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')",
 "git":"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)"}
JSON
python3 scripts/load_report.py --meta "$DIR/meta.json" --runs "$RUNS" \
  --out "$OUT/load-$TS" ${PLOT:+--plot-copy "$PLOT"}
