#!/usr/bin/env python3
"""Connections that say nothing, against a running relay on a TLS listener with HTTP/2 on
(issue 26's acceptance): N_SILENT connections, half plain TCP that never send a byte and half
that send half a TLS ClientHello, and N_H2 HTTP/2 connections over TLS that send the preface and
SETTINGS and then idle. Meanwhile a normal client is served. Prints how many the relay closed
within WAIT_S, the normal requests' latency before and during, and the relay's RSS (VmRSS while
they are open, VmHWM peak) from /proc.
Usage: silent_clients.py RELAY_PORT RELAY_PID CA_FILE [N_SILENT] [N_H2] [WAIT_S]
(run under `ulimit -n` above N_SILENT + N_H2; `make silent-clients` does it all)."""

import socket
import ssl
import sys
import time

from proc_memory import rss_kb

port, pid, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
n_silent = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
n_h2 = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
wait = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0

H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def context(alpn):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(alpn)
    return ctx


def client_hello():
    """A real ClientHello's bytes, from an in-memory handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context(["h2", "http/1.1"]).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def health_ms():
    """One GET /health over a new TLS connection: milliseconds, or None when it failed."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context(["http/1.1"]).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
                answer = s.recv(65536)
        if not answer.startswith(b"HTTP/1.1 200"):
            return None
    except OSError:
        return None
    return (time.perf_counter() - start) * 1000


def latency(n=20):
    times = sorted(t for t in (health_ms() for _ in range(n)) if t is not None)
    if not times:
        return (float("nan"), float("nan"), n)
    return (times[len(times) // 2], times[-1], n - len(times))


before = latency()
hello = client_hello()
conns = []
for i in range(n_silent):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2:
        s.sendall(hello[: len(hello) // 2])
    conns.append(s)
h2 = []
for _ in range(n_h2):
    raw = socket.create_connection(("127.0.0.1", port))
    s = context(["h2"]).wrap_socket(raw, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    s.sendall(H2_HELLO)
    h2.append(s)
opened = time.time()
rss_during = rss_kb(pid, "VmRSS:")
during = latency()
deadline = opened + wait
closed = 0
for s in conns + h2:
    s.settimeout(max(0.01, deadline - time.time()))
    try:
        while True:
            if not s.recv(65536):
                closed += 1
                break
    except (ConnectionResetError, ssl.SSLError):
        closed += 1
    except OSError:
        pass
print(f"{n_silent} silent (half plain TCP, half half a ClientHello) + {n_h2} idle h2 over TLS: "
      f"closed by the relay within {wait:.0f} s: {closed}/{len(conns) + len(h2)}; "
      f"GET /health median/max ms before {before[0]:.2f}/{before[1]:.2f} ({before[2]} failed), "
      f"during {during[0]:.2f}/{during[1]:.2f} ({during[2]} failed); "
      f"RSS while open {rss_during // 1024} MiB, peak {rss_kb(pid, 'VmHWM:') // 1024} MiB")
sys.exit(0 if closed == len(conns) + len(h2) and during[2] == 0 else 1)
