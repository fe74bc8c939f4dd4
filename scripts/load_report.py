#!/usr/bin/env python3
"""Report of scripts/load.sh: medians over repetitions, ratios against the baselines measured in
the same run (relay vs direct, relay vs the bare Pingora proxy, relay and bare Pingora vs nginx),
the issue's targets, and a plot.

usage: load_report.py --meta meta.json --runs runs.jsonl --out results/load-TS [--plot-copy F]
writes OUT.json (meta, every run, medians, targets), OUT.md (tables) and OUT.png (if matplotlib).
"""
import argparse
import json
import os
import shutil
import statistics
import sys

# relay-log: the relay with its access log on, written to a file (ACCESS_LOG=1).
TARGETS = ["direct", "pingora", "relay", "relay-log", "nginx"]
# Targets that are proxies: their CPU and peak RSS are recorded.
PROXIES = ("pingora", "relay", "relay-log", "nginx")


def derive(run, clk_tck):
    w = run["wrk"]
    secs = w["duration_us"] / 1e6
    n = max(w["requests"], 1)
    proxy = run["target"] if run["target"] in PROXIES else None
    ticks = run["cpu_ticks"].get(proxy, 0) if proxy else 0
    return {
        "rps": w["requests"] / secs,
        "p50_us": w["p50_us"],
        "p99_us": w["p99_us"],
        "p999_us": w["p999_us"],
        "errors": w["connect"] + w["read"] + w["write"] + w["timeout"] + w["status"],
        "requests": w["requests"],
        # CPU seconds of the proxy (relay, bare Pingora, or all nginx processes) per 1,000
        # requests.
        "proxy_cpu_s_per_1k": (ticks / clk_tck) / n * 1000 if proxy else None,
        "mock_cpu_s_per_1k": (run["cpu_ticks"]["mock"] / clk_tck) / n * 1000,
        "proxy_peak_rss_mb": run["hwm_kb"].get(proxy, 0) / 1024 if proxy else None,
        # Minor page faults of the proxy per request (runs recorded before they were counted
        # have none).
        "proxy_minflt_per_req": run["minflt"].get(proxy, 0) / n
        if proxy and "minflt" in run else None,
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, clk_tck):
    """{scenario: {target: {metric: median}}} in first-seen scenario order."""
    out = {}
    for r in runs:
        d = derive(r, clk_tck)
        cell = out.setdefault(r["scenario"], {}).setdefault(r["target"], {"reps": []})
        cell["reps"].append(d)
    for scen in out.values():
        for cell in scen.values():
            reps = cell.pop("reps")
            for k in reps[0]:
                cell[k] = median([x[k] for x in reps]) if k != "errors" else sum(
                    x[k] for x in reps)
            cell["n_reps"] = len(reps)
            cell["rps_all"] = [round(x["rps"]) for x in reps]
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec, none="–"):
    return none if x is None else format(x, spec)


def targets_check(summary):
    """Issue 15's targets, each from one scenario of this run."""
    checks = []
    for scen, cells in summary.items():
        relay, nginx, bare = cells.get("relay"), cells.get("nginx"), cells.get("pingora")
        if scen.startswith(("json", "sse")) and relay and nginx:
            r = ratio(relay["rps"], nginx["rps"])
            checks.append({"target": f"throughput relay/nginx >= 0.6 ({scen})",
                           "value": round(r, 3), "met": r >= 0.6})
            c = ratio(relay["proxy_cpu_s_per_1k"], nginx["proxy_cpu_s_per_1k"])
            if c is not None:
                checks.append({"target": f"CPU per request relay/nginx <= 2 ({scen})",
                               "value": round(c, 2), "met": c <= 2})
            if bare:
                b = ratio(relay["rps"], bare["rps"])
                checks.append({"target": f"throughput relay/bare Pingora >= 0.9 ({scen})",
                               "value": round(b, 3), "met": b >= 0.9})
        if scen.startswith("paced") and relay and "direct" in cells:
            d50 = relay["p50_us"] - cells["direct"]["p50_us"]
            d99 = relay["p99_us"] - cells["direct"]["p99_us"]
            checks.append({"target": f"added p50 <= 150 us ({scen})", "value": d50,
                           "met": d50 <= 150})
            checks.append({"target": f"added p99 <= 1000 us ({scen})", "value": d99,
                           "met": d99 <= 1000})
        if scen == "mem-sse" and relay:
            mb = relay["proxy_peak_rss_mb"]
            checks.append({"target": "relay peak RSS <= 64 MB (mem-sse)", "value": round(mb, 1),
                           "met": mb <= 64})
        if scen.startswith("soak") and relay:
            e = relay["errors"]
            checks.append({"target": f"zero errors ({scen})", "value": e, "met": e == 0})
    return checks


def markdown(meta, summary, checks):
    L = []
    L.append(f"# cc-relay load test {meta['timestamp']}\n")
    L.append(f"Command: `{meta['command']}` — DURATION={meta['duration_s']} REPS={meta['reps']}, "
             f"relay threads = nginx workers = {meta['threads']}, mock threads "
             f"{meta['mock_threads']}, wrk threads {meta['wrk_threads']}, mock latency "
             f"{meta['latency_ms']} ms, {meta['events']} SSE deltas; paced runs: "
             f"{meta['pace_conns']} connections x ~{meta['pace_ms']} ms (target {meta['rate']} "
             f"req/s). Machine: {meta['nproc']} cores, {meta['cpu_model']}, Linux "
             f"{meta['kernel']}; wrk {meta['wrk']}, nginx {meta['nginx']}; tree {meta['git']}.\n")
    L.append("Medians of the repetitions (errors: summed). CPU and RSS are the proxy's (relay "
             "process; bare Pingora process; nginx master + workers). `pingora` is "
             "examples/bare_pingora.rs, Pingora tuned like the relay with no relay logic: "
             "relay/pingora is the relay's own cost, pingora/nginx Pingora's. Latencies in µs.\n")
    L.append("| scenario | target | req/s | p50 | p99 | p99.9 | errors | proxy CPU s/1k req "
             "| proxy peak RSS MB | proxy page faults/req | req/s vs direct | req/s vs pingora | req/s vs nginx "
             "| +p50 vs direct | +p99 vs direct |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scen, cells in summary.items():
        for t in TARGETS:
            if t not in cells:
                continue
            c = cells[t]
            d = cells.get("direct")
            g = cells.get("pingora")
            n = cells.get("nginx")
            L.append(("|" + " {} |" * 15).format(
                scen, t, fmt(c["rps"], ",.0f"), c["p50_us"], c["p99_us"], c["p999_us"],
                c["errors"], fmt(c["proxy_cpu_s_per_1k"], ".3f"),
                fmt(c["proxy_peak_rss_mb"], ".1f"), fmt(c.get("proxy_minflt_per_req"), ".2f"),
                fmt(ratio(c["rps"], d["rps"]) if d and t != "direct" else None, ".2f"),
                fmt(ratio(c["rps"], g["rps"]) if g and t == "relay" else None, ".2f"),
                fmt(ratio(c["rps"], n["rps"]) if n and t in ("pingora", "relay") else None,
                    ".2f"),
                fmt(c["p50_us"] - d["p50_us"] if d and t != "direct" else None, "+.0f"),
                fmt(c["p99_us"] - d["p99_us"] if d and t != "direct" else None, "+.0f")))
    L.append("")
    log_cost = [(scen, cells["relay"], cells["relay-log"]) for scen, cells in summary.items()
                if "relay" in cells and "relay-log" in cells]
    if log_cost:
        L.append("The access log's cost: the relay with its access log on (JSON lines to a file) "
                 "against the same build with it off, alternated in this run.\n")
        L.append("| scenario | req/s off | req/s on | on/off | CPU s/1k off | CPU s/1k on | "
                 "on/off |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for scen, off, on in log_cost:
            L.append(("|" + " {} |" * 7).format(
                scen, fmt(off["rps"], ",.0f"), fmt(on["rps"], ",.0f"),
                fmt(ratio(on["rps"], off["rps"]), ".3f"),
                fmt(off["proxy_cpu_s_per_1k"], ".3f"), fmt(on["proxy_cpu_s_per_1k"], ".3f"),
                fmt(ratio(on["proxy_cpu_s_per_1k"], off["proxy_cpu_s_per_1k"]), ".3f")))
        L.append("")
    if checks:
        L.append("| target | value | met |")
        L.append("|---|---:|:---:|")
        for c in checks:
            L.append(f"| {c['target']} | {c['value']} | {'yes' if c['met'] else 'NO'} |")
        L.append("")
    return "\n".join(L)


def bar_offset(i, n, w):
    """x offset of bar i of n, each w wide, side by side and centred on their tick."""
    return (i - (n - 1) / 2) * w


def plot(summary, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    colors = {"direct": "#9e9e9e", "pingora": "#ff7f0e", "relay": "#1f77b4", "relay-log": "#9467bd",
              "nginx": "#2ca02c"}
    thr = [s for s in summary if s.startswith(("json", "sse"))]
    paced = [s for s in summary if s.startswith("paced")]
    if not thr and not paced:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

    ax = axes[0]
    w = 0.2
    for i, t in enumerate(TARGETS):
        xs = [j + bar_offset(i, len(TARGETS), w) for j in range(len(thr))]
        ys = [summary[s].get(t, {}).get("rps", 0) for s in thr]
        ax.bar(xs, ys, w, label=t, color=colors[t])
    ax.set_xticks(range(len(thr)), thr, rotation=20)
    ax.set_ylabel("requests / s (median)")
    ax.set_title("Throughput (closed loop, C connections)")
    ax.legend()

    ax = axes[1]
    labels, idx = [], 0
    for s in paced:
        for i, t in enumerate(TARGETS):
            c = summary[s].get(t)
            if not c:
                continue
            x = idx + bar_offset(i, len(TARGETS), w)
            ax.bar(x, c["p50_us"], w * 0.9, color=colors[t], label=t if idx == 0 else None)
            ax.plot([x, x], [c["p50_us"], c["p99_us"]], color="black", lw=1)
            ax.plot(x, c["p99_us"], marker="_", color="black", ms=10)
            ax.plot(x, c["p999_us"], marker="x", color="black", ms=5)
        labels.append(s)
        idx += 1
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("µs (bar p50, line to p99, x p99.9)")
    ax.set_yscale("log")
    ax.set_title(f"Latency at ~{meta['rate']} req/s")
    ax.legend()

    ax = axes[2]
    for i, t in enumerate(PROXIES):
        xs = [j + bar_offset(i, len(PROXIES), w) for j in range(len(thr))]
        ys = [summary[s].get(t, {}).get("proxy_cpu_s_per_1k") or 0 for s in thr]
        ax.bar(xs, ys, w, label=t, color=colors[t])
    ax.set_xticks(range(len(thr)), thr, rotation=20)
    ax.set_ylabel("proxy CPU seconds per 1,000 requests")
    ax.set_title("Proxy CPU cost")
    ax.legend()

    fig.suptitle(f"cc-relay vs direct vs bare Pingora vs nginx — {meta['nproc']} cores shared by "
                 f"wrk, mock and proxy; {meta['timestamp']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot-copy")
    a = ap.parse_args()
    meta = json.load(open(a.meta))
    runs = [json.loads(line) for line in open(a.runs) if line.strip()]
    summary = summarize(runs, meta["clk_tck"])
    checks = targets_check(summary)
    json.dump({"meta": meta, "summary": summary, "targets": checks, "runs": runs},
              open(a.out + ".json", "w"), indent=1)
    md = markdown(meta, summary, checks)
    open(a.out + ".md", "w").write(md)
    print(md)
    if plot(summary, meta, a.out + ".png"):
        if a.plot_copy:
            os.makedirs(os.path.dirname(a.plot_copy) or ".", exist_ok=True)
            shutil.copyfile(a.out + ".png", a.plot_copy)
        print(f"plot: {a.out}.png" + (f" (copied to {a.plot_copy})" if a.plot_copy else ""))
    print(f"results: {a.out}.json, {a.out}.md")


if __name__ == "__main__":
    main()
