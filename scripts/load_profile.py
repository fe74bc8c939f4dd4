#!/usr/bin/env python3
"""Where the relay's CPU goes, per request: instructions counted by callgrind (repeatable
whatever else the machine does), for the relay and, as floors, for a bare Pingora proxy
(examples/bare_pingora.rs: Pingora tuned like the relay, no relay logic; what any Pingora proxy
costs) and for nginx, proxying the same request to the same mock.

usage: python3 scripts/load_profile.py [--target relay|pingora|nginx] [--relay-bin PATH]
                                       [--body small|claude-code] [--stream] [--seconds 15]
                                       [--top 25]

The target runs under `valgrind --tool=callgrind` with one worker thread (relay: server.threads
1; bare Pingora: THREADS 1, both built by the script;
nginx: one worker, master_process off); wrk drives it with 4 keep-alive connections; counters
are zeroed after a 3 s warm-up and dumped at the end, then divided by the requests wrk
completed. Prints instructions/request, the functions with the most instructions (self), the
inclusive cost of each cc-relay phase, and malloc calls/request. Only loopback; every process
it starts is stopped on exit.
"""
import argparse
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LUA = r'''
local f = assert(io.open(os.getenv("LOAD_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "sk-load-client"
function done(summary, latency, requests)
  io.write(string.format("WRK_REQUESTS %d\n", summary.requests))
end
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def ensure_tools():
    missing = [p for p, b in (("valgrind", "callgrind_control"), ("wrk", "wrk"),
                              ("nginx", "nginx")) if not (shutil.which(b) or
                                                          os.path.exists("/usr/sbin/" + b))]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                       stdout=subprocess.DEVNULL)


def wrk(port, body, seconds, lua):
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", "-s", lua, f"http://127.0.0.1:{port}/v1/messages"],
        env=dict(os.environ, LOAD_BODY=body), capture_output=True, text=True, check=True).stdout
    m = re.search(r"WRK_REQUESTS (\d+)", out)
    if not m:
        raise RuntimeError("no result from wrk:\n" + out)
    return int(m.group(1))


def parse_callgrind(path):
    """Self cost and call edges (caller, callee) -> (inclusive cost, calls) per function."""
    names = {}

    def name(tok):
        m = re.match(r"\((\d+)\)(?: (.*))?", tok)
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    self_cost = collections.Counter()
    edges = collections.defaultdict(lambda: [0, 0])
    cur = cfn = None
    pending_calls = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                cur = name(line[3:])
            elif line.startswith("cfn="):
                cfn = name(line[4:])
            elif line.startswith("calls="):
                pending_calls = int(line[6:].split()[0])
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if pending_calls is not None:
                    e = edges[(cur, cfn)]
                    e[0] += cost
                    e[1] += pending_calls
                    pending_calls = None
                else:
                    self_cost[cur] += cost
    return self_cost, edges


def report(path, requests, top, label):
    self_cost, edges = parse_callgrind(path)
    total = sum(self_cost.values())
    print(f"\n== {label}: {requests} requests, {total:,} instructions = "
          f"{total / requests:,.0f} instructions/request")
    print(f"\n-- top {top} functions by own instructions (per request)")
    for fn, c in self_cost.most_common(top):
        print(f"{c / requests:10,.0f}  {c / total * 100:5.1f}%  {fn[:150]}")
    incl = collections.Counter()
    for (caller, callee), (cost, _) in edges.items():
        if caller != callee:
            incl[caller] += cost
    for fn, c in self_cost.items():
        incl[fn] += c
    phases = [(fn, c) for fn, c in incl.items()
              if re.search(r"cc_relay::proxy::Relay as pingora_proxy::proxy_trait::ProxyHttp>::"
                           r"\w+::\{\{closure\}\}$|RequestFacts::parse$|UsageScanner::finish$|"
                           r"SseUsageParser::feed$|BodyReplaySession::(install|restore)$", fn)]
    if phases:
        print("\n-- cc-relay phases, inclusive (per request)")
        for fn, c in sorted(phases, key=lambda x: -x[1]):
            print(f"{c / requests:10,.0f}  {c / total * 100:5.1f}%  {fn[:150]}")
    mallocs = sum(calls for (caller, callee), (_, calls) in edges.items()
                  if callee in ("malloc", "realloc", "calloc") and caller not in
                  ("malloc", "realloc", "calloc"))
    memcpy = sum(c for fn, c in self_cost.items() if fn.startswith("__memcpy"))
    print(f"\nmalloc/realloc/calloc calls per request: {mallocs / requests:.1f}; "
          f"memcpy instructions per request: {memcpy / requests:,.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["relay", "pingora", "nginx"], default="relay")
    ap.add_argument("--relay-bin", default=os.path.join(ROOT, "target/release/cc-relay"))
    ap.add_argument("--body", choices=["small", "claude-code"], default="small")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    ensure_tools()
    # Always through cargo (a no-op when up to date), as scripts/load.sh: a stale binary would
    # profile old code.
    subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--example", "bare_pingora"],
                   cwd=ROOT, check=True)
    mock_bin = os.path.join(ROOT, "target/release/cc-relay-mock")
    pingora_bin = os.path.join(ROOT, "target/release/examples/bare_pingora")
    if not os.access(a.relay_bin, os.X_OK):
        sys.exit(f"{a.relay_bin} is not an executable")

    d = tempfile.mkdtemp(prefix="cc-relay-profile.")
    procs = []
    try:
        body = os.path.join(d, "body.json")
        with open(body, "w") as f:
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts/load_body.py"), a.body]
                           + (["--stream"] if a.stream else []), stdout=f, check=True)
        lua = os.path.join(d, "load.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        mock_port, port = free_port(), free_port()
        procs.append(subprocess.Popen([mock_bin, "--listen", f"127.0.0.1:{mock_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not wait_port(mock_port, 10):
            sys.exit("the mock did not start")
        out = os.path.join(d, "callgrind.out")
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
        if a.target == "relay":
            cfg = os.path.join(d, "relay.yaml")
            with open(cfg, "w") as f:
                f.write(f"""server:
  listen: "127.0.0.1:{port}"
  threads: 1
  pid_file: "{d}/relay.pid"
  upgrade_sock: "{d}/relay-upgrade.sock"
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
providers:
  - name: mock
    type: anthropic
    base_url: "http://127.0.0.1:{mock_port}"
    keys:
      - name: load-1
        key: "sk-load-1"
logging:
  level: warn
""")
            cmd = vg + [a.relay_bin, "serve", "--config", cfg]
            env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
            label = f"cc-relay ({a.relay_bin})"
        elif a.target == "pingora":
            cmd = vg + [pingora_bin, f"127.0.0.1:{port}", f"127.0.0.1:{mock_port}", "1"]
            env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
            label = "bare Pingora proxy (examples/bare_pingora.rs, 1 thread)"
        else:
            os.makedirs(os.path.join(d, "nginx"))
            conf = os.path.join(d, "nginx", "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"""user root;
worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/nginx/body; proxy_temp_path {d}/nginx/proxy;
  fastcgi_temp_path {d}/nginx/f; uwsgi_temp_path {d}/nginx/u; scgi_temp_path {d}/nginx/s;
  keepalive_requests 10000000; client_max_body_size 32m; client_body_buffer_size 1m;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://mock; proxy_http_version 1.1;
                 proxy_set_header Connection ""; proxy_buffering off; }}
  }}
}}
""")
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = vg + [nginx, "-p", os.path.join(d, "nginx"), "-c", conf,
                        "-e", os.path.join(d, "nginx", "error.log")]
            env = dict(os.environ)
            label = "nginx (1 worker)"
        target = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(d, "target.log"), "w"))
        procs.append(target)
        if not wait_port(port, 120):
            sys.exit("the target did not start under valgrind:\n"
                     + open(os.path.join(d, "target.log")).read()[-2000:])
        wrk(port, body, 3, lua)
        subprocess.run(["callgrind_control", "-z", str(target.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        requests = wrk(port, body, a.seconds, lua)
        subprocess.run(["callgrind_control", "-d", str(target.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        dumps = sorted(p for p in os.listdir(d) if p.startswith("callgrind.out."))
        if not dumps:
            sys.exit("callgrind wrote no dump")
        report(os.path.join(d, dumps[0]), requests, a.top,
               f"{label}, {a.body}{' stream' if a.stream else ''} body")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
