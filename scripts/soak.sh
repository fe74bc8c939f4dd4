#!/usr/bin/env bash
# `make soak`: does the relay's memory stay flat under constant load? The relay and the bare
# Pingora proxy (examples/bare_pingora.rs, the floor) side by side, each under its own wrk with
# CONNS keep-alive connections of the same request against one mock, for SOAK_DURATION seconds;
# every INTERVAL seconds a row: elapsed time, requests so far and VmRSS of each. At the end, the
# growth after the first minute (RSS at the end minus RSS at 60 s) in MB and in bytes per request.
#
# One wrk per target for the whole run, so the connections stay open as a client's would; each
# wrk writes how many responses it had (and how many were not 2xx) to a file as it goes.
#
# usage: SOAK_DURATION=1800 SCENARIO=sse bash scripts/soak.sh   (`make soak`: 30 min, sse then json)
# Env: SOAK_DURATION (300 s), INTERVAL (10 s), SCENARIO (sse | json: streamed or not),
#      BODY (claude-code: a Claude Code-shaped ~76 KB request | small: ~2 KB), CONNS (64),
#      THREADS (relay = bare Pingora threads, 2), ACCESS_LOG (0; 1 = the relay writes its
#      access log to a file), PROFILE (dist, as `make build`; release builds quicker),
#      RELAY_BIN (default target/$PROFILE/cc-relay), SKIP_BUILD (1 = run the binaries as they
#      are), OUT (results: soak-<scenario>-<ts>.csv per run). Other settings pass through the
#      environment (e.g. MALLOC_ARENA_MAX).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SOAK_DURATION=${SOAK_DURATION:-300}
INTERVAL=${INTERVAL:-10}
SCENARIO=${SCENARIO:-sse}
BODY=${BODY:-claude-code}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ACCESS_LOG=${ACCESS_LOG:-0}
PROFILE=${PROFILE:-dist}
OUT=${OUT:-results}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
RELAY_BIN=${RELAY_BIN:-$BIN/cc-relay}
case $SCENARIO in
  sse) STREAM=--stream ;;
  json) STREAM= ;;
  *) echo "soak: SCENARIO must be sse or json" >&2; exit 2 ;;
esac
for tool in wrk python3; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A stale binary would measure old code: through cargo (a no-op when up to date).
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --profile "$PROFILE" --workspace --bins --example bare_pingora >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

DIR=$(mktemp -d /tmp/cc-relay-soak.XXXXXX)
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The ports are free when picked and taken a moment later: another process may take one in
# between (it happened twice beside a test run), so the mock tries new ones a few times.
for attempt in 1 2 3 4 5; do
  read -r MOCK_PORT RELAY_PORT PINGORA_PORT < <(free_ports 3)
  "$BIN/cc-relay-mock" --listen "127.0.0.1:$MOCK_PORT" --threads 1 >"$DIR/mock.log" 2>&1 &
  MOCK_PID=$!
  # Up, and the one answering is ours (a mock that could not bind has exited).
  wait_port "$MOCK_PORT" && sleep 0.2 && kill -0 "$MOCK_PID" 2>/dev/null && break
  kill "$MOCK_PID" 2>/dev/null || true
  [ "$attempt" = 5 ] && { cat "$DIR/mock.log" >&2; exit 1; }
  log "the mock could not take port $MOCK_PORT; trying others"
done
PIDS+=("$MOCK_PID")

ACCESS_FILE=
[ "$ACCESS_LOG" = 1 ] && ACCESS_FILE=$DIR/access.log
write_relay_config "$DIR/relay.yaml" "$RELAY_PORT" "$MOCK_PORT" "$THREADS" "$DIR" $ACCESS_FILE
env -u RUST_LOG "$RELAY_BIN" serve --config "$DIR/relay.yaml" >"$DIR/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
env -u RUST_LOG "$BIN/examples/bare_pingora" "127.0.0.1:$PINGORA_PORT" "127.0.0.1:$MOCK_PORT" \
  "$THREADS" >"$DIR/pingora.log" 2>&1 &
PINGORA_PID=$!
PIDS+=("$PINGORA_PID")
wait_port "$RELAY_PORT" || { cat "$DIR/relay.log" >&2; exit 1; }
wait_port "$PINGORA_PORT" || { cat "$DIR/pingora.log" >&2; exit 1; }

python3 scripts/load_body.py "$BODY" $STREAM >"$DIR/body.json"
write_wrk_post_script "$DIR/post.lua" "$DIR/body.json"
cat >>"$DIR/post.lua" <<'LUA'
wrk.headers["x-api-key"] = "sk-soak-client"
local count, n, bad = os.getenv("SOAK_COUNT"), 0, 0
function response(status, headers, body)
  n = n + 1
  if status >= 300 then bad = bad + 1 end
  if n % 500 == 0 then
    local f = io.open(count .. ".tmp", "w"); f:write(n, " ", bad, "\n"); f:close()
    os.rename(count .. ".tmp", count)
  end
end
LUA

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# load NAME PORT: wrk on the target for the whole run, in the background.
load() {
  echo "0 0" >"$DIR/$1.count"
  SOAK_COUNT="$DIR/$1.count" wrk -t1 -c"$CONNS" -d"$((SOAK_DURATION + 5))s" --timeout 30s \
    -s "$DIR/post.lua" "http://127.0.0.1:$2/v1/messages" >"$DIR/$1.wrk" 2>&1 &
  PIDS+=($!)
}

mkdir -p "$OUT"
CSV=$OUT/soak-$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ).csv
echo "elapsed_s,relay_requests,relay_errors,relay_rss_kb,pingora_requests,pingora_errors,pingora_rss_kb" >"$CSV"
log "$SCENARIO ($BODY body), $CONNS connections each, ${SOAK_DURATION}s, RSS every ${INTERVAL}s; relay pid $RELAY_PID ($RELAY_BIN), bare pingora pid $PINGORA_PID; access log $([ "$ACCESS_LOG" = 1 ] && echo on || echo off)"
printf '%8s  %12s %8s %10s  %12s %8s %10s\n' elapsed relay_req errors relay_MB pingora_req errors pingora_MB >&2
load relay "$RELAY_PORT"
load pingora "$PINGORA_PORT"
start=$(date +%s)
for ((elapsed = INTERVAL; elapsed <= SOAK_DURATION; elapsed += INTERVAL)); do
  wait_s=$((start + elapsed - $(date +%s)))
  if ((wait_s > 0)); then sleep "$wait_s"; fi
  kill -0 "$RELAY_PID" 2>/dev/null || { log "the relay died: $(tail -5 "$DIR/relay.log")"; exit 1; }
  r=$(rss_kb "$RELAY_PID") p=$(rss_kb "$PINGORA_PID")
  read -r rr re <"$DIR/relay.count"
  read -r pr pe <"$DIR/pingora.count"
  echo "$elapsed,$rr,$re,$r,$pr,$pe,$p" >>"$CSV"
  printf '%8s  %12s %8s %10.1f  %12s %8s %10.1f\n' "$elapsed" "$rr" "$re" "$(echo "$r/1024" | bc -l)" \
    "$pr" "$pe" "$(echo "$p/1024" | bc -l)" >&2
  # The access log grows on disk, not in the relay: emptied at each sample so a long soak does
  # not fill /tmp (the writer appends: it goes on at the file's new end).
  if [ -n "$ACCESS_FILE" ]; then : >"$ACCESS_FILE"; fi
done

python3 - "$CSV" <<'PY'
import csv, sys
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(sys.argv[1]))]
base = next((r for r in rows if r["elapsed_s"] >= 60), rows[0])
end = rows[-1]
print(f"results: {sys.argv[1]}")
marks = [r for r in rows if r["elapsed_s"] == 60 or r["elapsed_s"] % 300 == 0 or r is rows[-1]]
print("elapsed_s  relay_requests  relay_MB  pingora_requests  pingora_MB")
for r in marks:
    print(f"{r['elapsed_s']:9}  {r['relay_requests']:14,}  {r['relay_rss_kb']/1024:8.1f}  "
          f"{r['pingora_requests']:16,}  {r['pingora_rss_kb']/1024:10.1f}")
for who in ("relay", "pingora"):
    grow = (end[f"{who}_rss_kb"] - base[f"{who}_rss_kb"]) * 1024
    reqs = end[f"{who}_requests"] - base[f"{who}_requests"]
    print(f"{who:8} RSS {base[f'{who}_rss_kb']/1024:6.1f} MB at {base['elapsed_s']} s -> "
          f"{end[f'{who}_rss_kb']/1024:6.1f} MB at {end['elapsed_s']} s: {grow/1e6:+.1f} MB over "
          f"{reqs:,} requests ({grow/max(reqs,1):+.2f} B/request), "
          f"{end[f'{who}_errors']} errors")
PY
