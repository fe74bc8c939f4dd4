# Shared by scripts/load.sh, heap_profile.sh and flamegraph.sh (sourced, not run): free
# loopback ports, waiting for a port, and the relay config those scripts run the relay with.

# free_ports N: N loopback ports free at this moment, on one line.
free_ports() {
  python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' "$1"
}

# wait_port PORT [TRIES]: until something accepts on 127.0.0.1:PORT (TRIES x 50 ms, default 200).
wait_port() {
  local i
  for i in $(seq 1 "${2:-200}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# write_relay_config FILE RELAY_PORT MOCK_PORT THREADS DIR [ACCESS_LOG_FILE]: one key to the
# mock, no rate limit of its own, warn logging (with ACCESS_LOG_FILE: info, so the access log is
# on, as JSON lines to that file), pid file and upgrade socket in DIR, 1 s grace periods (a stop
# is quick).
write_relay_config() {
  local logging="  level: warn"
  [ -n "${6:-}" ] && logging="  level: info
  format: json
  output: \"$6\""
  cat >"$1" <<YAML
server:
  listen: "127.0.0.1:$2"
  threads: $4
  pid_file: "$5/relay.pid"
  upgrade_sock: "$5/relay-upgrade.sock"
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
providers:
  - name: mock
    type: anthropic
    base_url: "http://127.0.0.1:$3"
    keys:
      - name: bench-1
        key: "sk-bench-1"
        rpm_limit: 0
logging:
$logging
YAML
}

# stop_pids PID...: SIGTERM each, up to 5 s to exit, then SIGKILL; reaped quietly.
stop_pids() {
  local p i
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# write_wrk_post_script LUA BODY: a wrk script that POSTs the JSON file BODY as a Messages request.
write_wrk_post_script() {
  cat >"$1" <<LUA
local f = assert(io.open("$2", "rb"))
wrk.method = "POST"; wrk.body = f:read("*a"); f:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
LUA
}
