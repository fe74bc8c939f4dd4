#!/usr/bin/env bash
# Where the relay's memory goes with many open SSE streams: the relay runs under valgrind's
# massif (2 threads, like `make load`) while wrk holds STREAMS streams open through it; prints
# the peak heap and its largest allocation sites (Pingora's and the relay's), from ms_print.
#
# usage: bash scripts/heap_profile.sh          env: STREAMS (1000), SECONDS_UNDER_LOAD (12),
#                                                   RELAY_BIN (target/release/cc-relay)
# Needs valgrind and wrk (apt-get install valgrind wrk). Loopback only; everything it starts is
# stopped on exit. Heap bytes, not RSS: pages of a buffer never written are never resident.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
STREAMS=${STREAMS:-1000}
SECONDS_UNDER_LOAD=${SECONDS_UNDER_LOAD:-12}
RELAY_BIN=${RELAY_BIN:-target/release/cc-relay}
for tool in valgrind ms_print wrk python3; do
  command -v "$tool" >/dev/null || { echo "heap_profile: $tool is missing" >&2; exit 1; }
done
cargo build --release --workspace --bins >&2
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

DIR=$(mktemp -d /tmp/cc-relay-heap.XXXXXX)
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
valgrind --tool=massif --massif-out-file="$DIR/massif.out" --depth=40 \
  "$RELAY_BIN" serve --config "$DIR/relay.yaml" >"$DIR/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT" 600 || { cat "$DIR/relay.log" >&2; exit 1; }

python3 scripts/load_body.py small --stream >"$DIR/body.json"
cat >"$DIR/streams.lua" <<LUA
local f = assert(io.open("$DIR/body.json", "rb"))
wrk.method = "POST"; wrk.body = f:read("*a"); f:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-mock-events"] = "$((SECONDS_UNDER_LOAD * 10))"
wrk.headers["x-mock-event-interval-ms"] = "100"
LUA
echo "heap_profile: $STREAMS streams through the relay under massif for ${SECONDS_UNDER_LOAD}s" >&2
wrk -t2 -c"$STREAMS" -d"${SECONDS_UNDER_LOAD}s" --timeout 60s -s "$DIR/streams.lua" \
  "http://127.0.0.1:$RELAY_PORT/v1/messages" >/dev/null
# SIGINT: the relay exits at once and massif writes its profile.
kill -INT "$(cat "$DIR/relay.pid")"
wait "$RELAY_PID" 2>/dev/null || true

python3 - "$DIR/massif.out" "$STREAMS" <<'PY'
import re, subprocess, sys
out = subprocess.run(["ms_print", "--threshold=1", sys.argv[1]], capture_output=True,
                     text=True, check=True).stdout
streams = int(sys.argv[2])
# The detailed snapshot marked (peak) is the tree that follows its table row.
peak_no = re.search(r"Detailed snapshots: \[.*?(\d+) \(peak\)", out).group(1)
row = re.search(rf"^ +{peak_no} +[\d,]+ +([\d,]+) ", out, re.M)
tree = out[row.end():]
tree = tree[tree.index("(heap allocation functions)"):]
tree = tree[:tree.find("\n-----")]
print(f"peak heap: {int(row.group(1).replace(',', '')) / 1e6:.1f} MB, {streams} streams")
print("largest allocation sites at the peak (first Pingora / tokio / cc-relay frame):")
nodes = []
for line in tree.splitlines():
    m = re.match(r"^->[\d.]+% \(([\d,]+)B\)(.*)", line)
    if m:
        nodes.append([int(m.group(1).replace(",", "")), m.group(2).strip(), None])
        continue
    if nodes and nodes[-1][2] is None:
        frame = re.sub(r"^[ |]*->[\d.]+% \([\d,]+B\) 0x[0-9A-F]+: ", "", line)
        if re.search(r"pingora|cc_relay|tokio::runtime::task|tokio::sync", frame):
            nodes[-1][2] = frame[:120]
for size, rest, frame in nodes:
    print(f"  {size / 1e6:7.1f} MB  {size / streams / 1024:6.1f} KiB/stream  {frame or rest[:120]}")
PY
