#!/usr/bin/env bash
# How many upstream connections the relay opens under a closed-loop load (issue 15, lever 3:
# is Pingora's keep-alive pool large enough?). The relay in front of the mock; after a 2 s
# warm-up, wrk at CONNS connections for 8 s each; the kernel's TCP ActiveOpens counter
# (/proc/net/snmp, system-wide: keep the machine otherwise quiet) over each run, minus wrk's
# own connections, is what the relay opened towards the mock.
#
# usage: bash scripts/upstream_opens.sh [RELAY_BIN]   (env: CONNS, default "32 256")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
RELAY_BIN=${1:-target/release/cc-relay}
CONNS=${CONNS:-"32 256"}
cargo build --release --workspace --bins >&2
DIR=$(mktemp -d /tmp/cc-relay-opens.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
read -r MOCK_PORT RELAY_PORT < <(free_ports 2)
target/release/cc-relay-mock --listen "127.0.0.1:$MOCK_PORT" --threads 1 >"$DIR/mock.log" 2>&1 &
PIDS+=($!)
write_relay_config "$DIR/relay.yaml" "$RELAY_PORT" "$MOCK_PORT" 2 "$DIR"
env -u RUST_LOG -u ANTHROPIC_API_KEY "$RELAY_BIN" serve --config "$DIR/relay.yaml" \
  >"$DIR/relay.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK_PORT" && wait_port "$RELAY_PORT"
python3 scripts/load_body.py small >"$DIR/body.json"
write_wrk_post_script "$DIR/post.lua" "$DIR/body.json"
active_opens() { awk '/^Tcp:/ { n++; if (n == 2) print $6 }' /proc/net/snmp; }
URL="http://127.0.0.1:$RELAY_PORT/v1/messages"
max_conns=$(tr ' ' '\n' <<<"$CONNS" | sort -n | tail -1)
wrk -t1 -c"$max_conns" -d2s -s "$DIR/post.lua" "$URL" >/dev/null
for c in $CONNS; do
  before=$(active_opens)
  out=$(wrk -t1 -c"$c" -d8s -s "$DIR/post.lua" "$URL")
  after=$(active_opens)
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  echo "connections $c: $requests requests, TCP connections opened $((after - before)) (wrk's own: $c, so the relay opened $((after - before - c)) to the upstream)"
done
