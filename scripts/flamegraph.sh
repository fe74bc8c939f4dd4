#!/usr/bin/env bash
# A CPU flame graph of the relay under load: the relay (2 threads, like `make load`) in front of
# the mock, wrk at CONNS connections, `perf record` (cpu-clock: this VM has no hardware counters)
# with DWARF call graphs, folded and drawn by inferno. Kernel time is included: under load on
# two shared cores, wake-ups are a large part of what a proxy costs.
#
# usage: bash scripts/flamegraph.sh            writes $OUT (default results/flamegraph-<mode>.svg)
# env:   MODE (json | sse), CONNS (32), SECONDS_UNDER_LOAD (10), FREQ (499 Hz), OUT
# Installs what is missing: perf (apt: linux-perf), wrk (apt), inferno (cargo install).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
MODE=${MODE:-json}
CONNS=${CONNS:-32}
SECONDS_UNDER_LOAD=${SECONDS_UNDER_LOAD:-10}
FREQ=${FREQ:-499}
OUT=${OUT:-results/flamegraph-$MODE.svg}
case $MODE in json | sse) ;; *) echo "MODE must be json or sse" >&2; exit 2 ;; esac

SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
missing=()
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --locked inferno
cargo build --release --workspace --bins >&2

DIR=$(mktemp -d /tmp/cc-relay-flame.XXXXXX)
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  rm -rf "$DIR"
}
trap cleanup EXIT

read -r MOCK_PORT RELAY_PORT < <(free_ports 2)

target/release/cc-relay-mock --listen "127.0.0.1:$MOCK_PORT" --threads 1 >"$DIR/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK_PORT"
write_relay_config "$DIR/relay.yaml" "$RELAY_PORT" "$MOCK_PORT" 2 "$DIR"
target/release/cc-relay serve --config "$DIR/relay.yaml" >"$DIR/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT"

if [ "$MODE" = sse ]; then
  python3 scripts/load_body.py small --stream >"$DIR/body.json"
else
  python3 scripts/load_body.py small >"$DIR/body.json"
fi
write_wrk_post_script "$DIR/load.lua" "$DIR/body.json"
URL="http://127.0.0.1:$RELAY_PORT/v1/messages"
wrk -t1 -c"$CONNS" -d2s -s "$DIR/load.lua" "$URL" >/dev/null # warm-up
wrk -t1 -c"$CONNS" -d"$((SECONDS_UNDER_LOAD + 2))s" -s "$DIR/load.lua" "$URL" >"$DIR/wrk.txt" &
WRK_PID=$!
sleep 1
perf record -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$RELAY_PID" \
  -o "$DIR/perf.data" -- sleep "$SECONDS_UNDER_LOAD" 2>"$DIR/perf.log"
wait "$WRK_PID"
grep -E "Requests/sec" "$DIR/wrk.txt" >&2
mkdir -p "$(dirname "$OUT")"
perf script -i "$DIR/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$DIR/folded.txt"
inferno-flamegraph --minwidth 0.3 --title "cc-relay, $MODE, $CONNS connections (perf cpu-clock)" \
  <"$DIR/folded.txt" >"$OUT"
# Where the samples end up, for the text that cites the graph: kernel (by the leaf frame), else
# by the innermost frame that belongs to cc-relay or to Pingora (so serde_json called by the
# relay counts as the relay's, and Pingora's I/O through the relay's session wrapper as
# Pingora's), else the runtime (tokio, std, libc).
python3 - "$DIR/folded.txt" <<'PY'
import collections, sys
total = 0
parts = collections.Counter()
leaves = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    frames = stack.split(";")
    leaves[frames[-1]] += n
    if frames[-1].endswith("_[k]"):
        parts["kernel (syscalls, wake-ups, TCP/IP)"] += n
        continue
    owner = "tokio, std, libc (runtime, allocator)"
    for f in reversed(frames):
        if "cc_relay" in f:
            owner = "cc-relay (its filters and what they call)"
            break
        if "pingora" in f:
            owner = "Pingora"
            break
    parts[owner] += n
for k, v in parts.most_common():
    print(f"  {v / total:6.1%}  {k}")
print("functions with the most samples of their own:")
for f, v in leaves.most_common(12):
    print(f"  {v / total:6.1%}  {f[:100]}")
PY
echo "flame graph: $OUT" >&2
