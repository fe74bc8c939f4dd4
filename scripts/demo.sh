#!/usr/bin/env bash
# `make demo`: the mock Anthropic upstream on :9999 and cc-relay on :8787 in front of it with a
# two-key pool. Try:
#   curl -s localhost:8787/v1/messages -H 'content-type: application/json' \
#     -d '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
#   curl -s localhost:8787/status
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

"$BIN/cc-relay-mock" --listen 127.0.0.1:9999 --rpm 30 --itpm 40000 --otpm 8000 --event-interval-ms 40 &
cat > "$DIR/demo.yaml" <<YAML
server:
  listen: "127.0.0.1:8787"
  pid_file: "$DIR/cc-relay.pid"
  upgrade_sock: "$DIR/upgrade.sock"
providers:
  - name: mock
    type: anthropic
    base_url: "http://127.0.0.1:9999"
    keys:
      - name: demo-a
        key: "sk-demo-a"
      - name: demo-b
        key: "sk-demo-b"
logging:
  level: info
YAML
echo "cc-relay demo: relay on http://127.0.0.1:8787 -> mock on http://127.0.0.1:9999 (two keys)"
"$BIN/cc-relay" serve --config "$DIR/demo.yaml"
