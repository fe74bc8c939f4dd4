"""A normal client's latency through a running relay, for the scripts that load it with
hostile clients."""

import json
import time
import urllib.error
import urllib.request

BODY = json.dumps({"model": "m", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def latency(port, n=20, statuses=None):
    """Median and max of `n` sequential requests, in ms; their statuses are counted in
    `statuses` (a dict) when given, else any answer but 200 is an error."""
    times = []
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=BODY,
                                     headers={"content-type": "application/json"})
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            if statuses is None:
                raise
            status = e.code
        times.append((time.perf_counter() - t) * 1000)
        if statuses is not None:
            statuses[status] = statuses.get(status, 0) + 1
    times.sort()
    return times[len(times) // 2], times[-1]
