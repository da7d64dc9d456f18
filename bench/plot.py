"""``python -m bench plot REPORT.json ... --out bench.png``: charts from reports.

- fanout (and overhead) reports: finals and partials latency (p50, p99) against
  listeners, over every run in every report given, with the Node.js original's finals
  for reference;
- sessions reports: lag of finals over time (p50, p99, max per bucket) and server CPU;
- overhead reports: server-side latency per stage (p50, p99).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.server import BenchError

ORIGINAL_FINALS = {100: (8, 15), 1000: (15, 33), 2000: (27, 64)}


def plot(paths: list[str], out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [json.loads(Path(p).read_text()) for p in paths]
    fanout = [r for r in reports if r["scenario"] in ("fanout", "overhead")]
    sessions = [r for r in reports if r["scenario"] == "sessions"]
    overhead = [r for r in reports if r["scenario"] == "overhead"]
    panels = (1 if fanout else 0) + len(sessions) + (1 if overhead else 0)
    if not panels:
        raise BenchError("nothing to plot: give fanout, overhead or sessions reports")
    figure, axes = plt.subplots(panels, 1, figsize=(8, 4 * panels), squeeze=False)
    index = 0
    if fanout:
        _fanout(axes[index][0], fanout)
        index += 1
    for report in sessions:
        _sessions(axes[index][0], report)
        index += 1
    if overhead:
        _stages(axes[index][0], overhead[-1])
    figure.tight_layout()
    target = Path(out)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    print(f"plot: {target}")
    return target


def _fanout(ax: Any, reports: list[dict[str, Any]]) -> None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        label = "pinned" if report["params"].get("pin") else "shared cores"
        groups.setdefault(label, []).extend(report["runs"])
    for label, runs in sorted(groups.items(), reverse=True):
        runs.sort(key=lambda r: r["listeners"])
        xs = [run["listeners"] for run in runs]
        for kind, style in (("final", "-"), ("partial", ":")):
            for q, marker in (("p50", "o"), ("p99", "s")):
                ys = [run["latency_ms"][kind]["socket"][q] for run in runs]
                ax.plot(xs, ys, style, marker=marker, label=f"{kind}s {q} ({label})")
    known = sorted(ORIGINAL_FINALS)
    ax.plot(known, [ORIGINAL_FINALS[n][0] for n in known], "x", color="gray", label="original p50")
    ax.plot(known, [ORIGINAL_FINALS[n][1] for n in known], "+", color="gray", label="original p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("listeners (one host, es/fr/de)")
    ax.set_ylabel("chunk sent -> listener socket (ms)")
    ax.set_title("fanout: caption latency against listeners")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _sessions(ax: Any, report: dict[str, Any]) -> None:
    run = report["runs"][0]
    buckets = run["lag_over_time"]
    ts = [b["t_s"] for b in buckets]
    for q in ("p50", "p99", "max"):
        ax.plot(ts, [b[q] for b in buckets], marker=".", label=f"lag {q}")
    ax.set_xlabel("time into the run (s)")
    ax.set_ylabel("finals lag (ms)")
    ax.set_title(
        f"sessions: {run['hosts']} real-time hosts, lag over time "
        f"(growth {run['lag_growth_ms_per_min']} ms/min)"
    )
    ax.grid(True, alpha=0.3)
    cpu = run.get("server_cpu_over_time") or []
    if cpu:
        twin = ax.twinx()
        twin.plot(
            [c["t_s"] for c in cpu],
            [c["cpu_percent_of_core"] for c in cpu],
            color="gray",
            alpha=0.5,
            label="server CPU %",
        )
        twin.set_ylabel("server CPU (% of a core)")
        twin.set_ylim(bottom=0)
        twin.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)


def _stages(ax: Any, report: dict[str, Any]) -> None:
    run = report["runs"][0]
    stages = (run.get("server_stages") or [None])[0]
    if not stages:
        ax.set_title("overhead: the server has no /stats")
        return
    final = stages["final"]
    names = [*final["stages"], "resultToSocket", "total"]
    values = [final["stages"].get(n) or final[n] for n in names]
    positions = range(len(names))
    ax.barh([p + 0.2 for p in positions], [v["p50"] or 0 for v in values], 0.4, label="p50")
    ax.barh([p - 0.2 for p in positions], [v["p99"] or 0 for v in values], 0.4, label="p99")
    ax.set_yticks(list(positions), names)
    ax.invert_yaxis()
    ax.set_xlabel("ms (server-side, GET /stats)")
    ax.set_title(f"overhead: stage latency of finals at {run['listeners']} listeners")
    ax.legend(fontsize=8)
