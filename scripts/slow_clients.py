#!/usr/bin/env python3
"""Slow clients against a running relay: N_HEADER connections that drip a request header and
N_BODY that stall a request body, while a normal client measures its latency. Prints the
normal requests' latency before and during, how many slow connections the relay closed by
their deadline, and its RSS (VmRSS now, VmHWM peak) from /proc.
Usage: slow_clients.py RELAY_PORT RELAY_PID [N_HEADER] [N_BODY] [WAIT_S]"""

import socket
import sys
import time

from normal_latency import latency
from proc_memory import rss_kb

port, pid = int(sys.argv[1]), int(sys.argv[2])
n_header = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
n_body = int(sys.argv[4]) if len(sys.argv) > 4 else 100
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 8.0


before = latency(port)
slow = []
for _ in range(n_header):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n")
    slow.append(s)
for _ in range(n_body):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n"
              b"content-length: 1000\r\n\r\n{\"model\":")
    slow.append(s)
time.sleep(0.5)
rss_during = rss_kb(pid, "VmRSS:")
during = latency(port)
deadline = time.time() + wait
closed = 0
for s in slow:
    s.settimeout(max(0.01, deadline - time.time()))
    try:
        while True:
            if not s.recv(65536):
                closed += 1
                break
    except ConnectionResetError:
        closed += 1
    except OSError:
        pass
print(f"{n_header} dripping headers + {n_body} stalled bodies: closed by the relay within "
      f"{wait:.0f} s: {closed}/{len(slow)}; normal requests median/max ms before "
      f"{before[0]:.2f}/{before[1]:.2f}, during {during[0]:.2f}/{during[1]:.2f}; RSS during "
      f"{rss_during // 1024} MiB, peak {rss_kb(pid, 'VmHWM:') // 1024} MiB")
