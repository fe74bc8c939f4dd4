"""A normal client's latency through a running relay, for the scripts that load it with
hostile clients."""

import json
import time
import urllib.request

BODY = json.dumps({"model": "m", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def latency(port, n=20):
    """Median and max of `n` sequential requests, in ms."""
    times = []
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=BODY,
                                     headers={"content-type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[-1]
