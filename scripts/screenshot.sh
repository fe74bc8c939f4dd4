#!/usr/bin/env bash
# Makes the README's pictures of the operator's view: the mock upstream (30 requests, 40,000
# input and 8,000 output tokens per minute per key) behind the relay with two providers (three
# keys, and a backup whose host refuses connections), SECONDS_OF_TRAFFIC (60) s of requests at
# ~3/s with a few 404s, then headless Chromium's screenshot of /ui (docs/img/status-page.png)
# and `cc-relay status` (docs/img/status-table.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
SECONDS_OF_TRAFFIC=${SECONDS_OF_TRAFFIC:-60}
BIN=./target/release
CHROMIUM=${CHROMIUM:-chromium}
cargo build --release --workspace --bins
DIR=$(mktemp -d)
PIDS=()
trap 'stop_pids "${PIDS[@]}"; rm -rf "$DIR"' EXIT
read -r MOCK RELAY DEAD < <(free_ports 3)

"$BIN/cc-relay-mock" --listen "127.0.0.1:$MOCK" --rpm 30 --itpm 40000 --otpm 8000 \
  --output-tokens 400 >"$DIR/mock.log" 2>&1 &
PIDS+=($!)
cat >"$DIR/relay.yaml" <<YAML
server:
  listen: "127.0.0.1:$RELAY"
  pid_file: "$DIR/relay.pid"
  upgrade_sock: "$DIR/upgrade.sock"
routing:
  strategy: failover
providers:
  - name: anthropic
    type: anthropic
    base_url: "http://127.0.0.1:$MOCK"
    keys:
      - name: team-a
        key: "sk-demo-a"
      - name: team-b
        key: "sk-demo-b"
      - name: batch
        key: "sk-demo-c"
        priority: 0
  - name: backup
    type: anthropic
    base_url: "http://127.0.0.1:$DEAD"
    priority: 0
    keys:
      - name: backup-1
        key: "sk-demo-d"
logging:
  level: warn
YAML
"$BIN/cc-relay" serve --config "$DIR/relay.yaml" >"$DIR/relay.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK" && wait_port "$RELAY" || { cat "$DIR/relay.log"; exit 1; }

body='{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Hello there, how are you today?"}]}'
end=$((SECONDS + SECONDS_OF_TRAFFIC))
i=0
while ((SECONDS < end)); do
  i=$((i + 1))
  curl -s -o /dev/null "http://127.0.0.1:$RELAY/v1/messages" -H 'content-type: application/json' \
    -d "$body" &
  ((i % 25 == 0)) && curl -s -o /dev/null "http://127.0.0.1:$RELAY/v1/complete" &
  sleep 0.33
done
wait_jobs() { local j; for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }
wait_jobs

"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1200 \
  --virtual-time-budget=5000 --screenshot="$PWD/docs/img/status-page.png" \
  "http://127.0.0.1:$RELAY/ui" >/dev/null 2>&1
"$BIN/cc-relay" status --url "http://127.0.0.1:$RELAY" >docs/img/status-table.txt
cat docs/img/status-table.txt
echo "wrote docs/img/status-page.png and docs/img/status-table.txt"
