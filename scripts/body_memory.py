#!/usr/bin/env python3
"""How much memory clients can pin with large request bodies: N clients each send a body of
SIZE bytes to a running relay at once (all but the last KB, then hold), and the relay's peak
RSS (VmHWM) is read from /proc. Usage: body_memory.py RELAY_PORT RELAY_PID [N] [SIZE]

Run it against a fresh relay (VmHWM is the process's peak) with the default
server.max_buffered_body_bytes (256 MiB), and against one with a cap above N*SIZE (what the
relay did before the cap), to compare. Needs a relay whose max_body_bytes admits SIZE."""

import socket
import sys
import threading
import time

from proc_memory import rss_kb

port, pid = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
size = int(sys.argv[4]) if len(sys.argv) > 4 else 32 * 1024 * 1024



statuses = []
lock = threading.Lock()


def client():
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n"
            f"content-length: {size}\r\n\r\n").encode()
    s.sendall(head)
    chunk = b"x" * 65536
    sent = 0
    s.settimeout(0.001)
    answer = b""
    try:
        while sent < size - 1024:
            try:
                sent += s.send(chunk[: min(len(chunk), size - 1024 - sent)])
            except socket.timeout:
                pass
            try:
                got = s.recv(4096)
                if got:
                    answer += got
                    break
            except (socket.timeout, BlockingIOError):
                pass
    except OSError:
        pass
    s.settimeout(5)
    try:
        answer += s.recv(4096)
    except OSError:
        pass
    with lock:
        statuses.append(answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(held)")
    time.sleep(3)
    s.close()


before = rss_kb(pid, "VmRSS:")
threads = [threading.Thread(target=client) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
peak = rss_kb(pid, "VmHWM:")
after = rss_kb(pid, "VmRSS:")
summary = {}
for st in statuses:
    summary[st] = summary.get(st, 0) + 1
print(f"{n} bodies of {size} bytes: RSS before {before // 1024} MiB, peak {peak // 1024} MiB, "
      f"after {after // 1024} MiB; answers {summary}")
