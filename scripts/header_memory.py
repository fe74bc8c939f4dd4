#!/usr/bin/env python3
"""How much memory clients can pin with large unfinished request headers: N clients each send
SIZE bytes of a request header that never ends, at once, and hold their connections; a normal
client measures its latency meanwhile. Prints what the slow clients got back (431 or a closed
connection), the normal requests' latency before and during, and the relay's RSS before and at
its peak (VmHWM) from /proc.
Usage: header_memory.py RELAY_PORT RELAY_PID [N] [SIZE] [HOLD_S]

Run it against a fresh relay (VmHWM is the process's peak) with the default
server.max_header_bytes (64 KiB), and against one with max_header_bytes: 1048575 (Pingora's own
limit: what the relay held before the guard cut headers), to compare."""

import socket
import sys
import threading
import time

from proc_memory import rss_kb
from normal_latency import latency

port, pid = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000_000
hold = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0

answers = []
lock = threading.Lock()
sent_all = threading.Barrier(n + 1)


def client():
    s = socket.create_connection(("127.0.0.1", port))
    head = b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-padding: " + b"x" * size
    try:
        s.sendall(head)
    except OSError:
        pass
    try:
        sent_all.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    s.settimeout(hold)
    answer = b""
    try:
        while True:
            got = s.recv(65536)
            if not got:
                break
            answer += got
    except OSError:
        pass
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(no answer)"
    with lock:
        answers.append(status)
    s.close()


rss_before = rss_kb(pid, "VmRSS:")
normal = {}
before = latency(port, statuses=normal)
threads = [threading.Thread(target=client) for _ in range(n)]
for t in threads:
    t.start()
try:
    sent_all.wait(timeout=60)
except threading.BrokenBarrierError:
    pass
during = latency(port, statuses=normal)
for t in threads:
    t.join()
counts = {}
for a in answers:
    counts[a] = counts.get(a, 0) + 1
print(f"{n} clients x {size} bytes of unfinished header: {counts}; normal requests median/max "
      f"ms before {before[0]:.2f}/{before[1]:.2f}, during {during[0]:.2f}/{during[1]:.2f} "
      f"(statuses {normal}); "
      f"RSS before {rss_before // 1024} MiB, peak {rss_kb(pid, 'VmHWM:') // 1024} MiB")
