"""Reports: percentiles, the machine, targets met or missed, JSON and a text summary."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def percentiles(values: Iterable[float], *, scale: float = 1.0) -> dict[str, Any]:
    """Nearest-rank p50/p95/p99/max (and mean) of ``values`` times ``scale``."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * scale, 3)

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1] * scale, 3),
        "mean": round(sum(ordered) / len(ordered) * scale, 3),
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return {
        "nproc": cores,
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "memory_bytes": memory,
    }


class Contention:
    """The whole machine's CPU over a run, so a report can say what else was running:
    the bench shares the cores with the server, and perhaps with other work."""

    def __init__(self) -> None:
        self.loadavg = os.getloadavg()
        self.start = _busy()

    def result(self, server_cpu_s: float | None, load_cpu_s: float) -> dict[str, Any]:
        end = _busy()
        wall = end[0] - self.start[0]
        busy = end[1] - self.start[1]
        others = busy - (server_cpu_s or 0.0) - load_cpu_s
        return {
            "loadavg_1m_at_start": round(self.loadavg[0], 2),
            "busy_percent_of_core": round(100 * busy / wall, 1) if wall else None,
            "others_percent_of_core": round(100 * max(0.0, others) / wall, 1) if wall else None,
        }


def _busy() -> tuple[float, float]:
    import time

    import psutil  # type: ignore[import-untyped]

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return time.time(), sum(times) - idle


def new_report(scenario: str, params: dict[str, Any], clock: str) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "scenario": scenario,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *sys.argv[1:]],
        "machine": machine(),
        "params": params,
        "clock": clock,
        "server": {},
        "runs": [],
        "targets": [],
    }


def target(
    name: str, goal: str, value: float | None, met: bool | None, note: str = ""
) -> dict[str, Any]:
    """One target of issue 5, with what this run measured."""
    return {"name": name, "goal": goal, "value": value, "met": met, "note": note}


def at_most(name: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
    met = None if value is None else value <= limit
    return target(name, f"<= {limit:g} {unit}", value, met)


def write(report: dict[str, Any], summary: str, out: Path | None) -> None:
    report["summary"] = summary
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(summary)
    if out is not None:
        print(f"report: {out}")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(header), *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_text(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"  [{mark}] {t['name']}: {fmt(t['value'], 2)} (target {t['goal']}){note}")
    return "\n".join(lines)


def header(report: dict[str, Any]) -> str:
    m = report["machine"]
    server = report.get("server", {})
    where = ", ".join(server.get("urls", [])) or "?"
    how = "started by the bench" if server.get("spawned") else "given by --url"
    return (
        f"bench {report['scenario']}  {report['started_at']}\n"
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}\n"
        f"server: {where} ({how}; stt={server.get('stt', '?')}, mt={server.get('mt', '?')})\n"
        f"clock: {report['clock']}"
    )
