#!/usr/bin/env bash
# Issue 26's acceptance run for connections that say nothing: the dist relay on a TLS listener
# with HTTP/2 on (client_header_timeout_ms 2000, idle_timeout_ms 2000), then
# scripts/silent_clients.py: N_SILENT connections (half plain TCP, half half a ClientHello) and
# N_H2 idle h2 connections, a normal client served meanwhile, the relay's RSS.
# Usage: N_SILENT=4096 N_H2=2000 WAIT=10 bash scripts/silent_clients.sh
#        (RELAY_BIN=target/release/cc-relay to use another build than `dist`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N_SILENT=${N_SILENT:-4096}
N_H2=${N_H2:-2000}
WAIT=${WAIT:-10}
BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-target}/dist/cc-relay}
[ -x "$BIN" ] || cargo build --profile dist --bin cc-relay
ulimit -n $(( (N_SILENT + N_H2) * 2 + 1024 ))

dir=$(mktemp -d)
relay_pid=
trap '[ -n "$relay_pid" ] && stop_pids "$relay_pid"; rm -rf "$dir"' EXIT
(
  cd "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=silent test CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >relay.ext
  openssl req -newkey rsa:2048 -nodes -subj /CN=relay -keyout relay.key -out relay.csr 2>/dev/null
  openssl x509 -req -in relay.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile relay.ext -out relay.pem 2>/dev/null
)
read -r port upstream < <(free_ports 2)
write_relay_config "$dir/relay.yaml" "$port" "$upstream" 2 "$dir"
python3 - "$dir/relay.yaml" "$dir" "$N_SILENT" "$N_H2" <<'PY'
import sys
path, d, n_silent, n_h2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read().replace("server:\n", f"""server:
  enable_http2: true
  client_header_timeout_ms: 2000
  idle_timeout_ms: 2000
  max_connections: {n_silent + n_h2 + 100}
  tls:
    cert_file: "{d}/relay.pem"
    key_file: "{d}/relay.key"
""", 1)
open(path, "w").write(text)
PY
"$BIN" serve --config "$dir/relay.yaml" >"$dir/relay.log" 2>&1 &
relay_pid=$!
wait_port "$port" || { cat "$dir/relay.log"; exit 1; }
echo "relay RSS at rest: $(awk '/VmRSS/ {print int($2/1024)}' /proc/$relay_pid/status) MiB"
python3 scripts/silent_clients.py "$port" "$relay_pid" "$dir/ca.pem" "$N_SILENT" "$N_H2" "$WAIT"
echo "relay log lines: $(wc -l <"$dir/relay.log") (of which about handshakes: $(grep -c -i handshake "$dir/relay.log" || true))"
