"""``--profile``: where the server's time goes while captions flow, sampled by py-spy.

py-spy samples the server process from outside (``--nonblocking``: it never pauses
it), so the profile costs the server nothing but the CPU py-spy itself takes, which
the report's machine figures show. The raw collapsed stacks are kept beside the report;
the report carries a summary: the functions with the largest share of the samples,
inclusive (the function and what it calls) and self (the function's own lines).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RATE = 200
"""Samples a second."""
SHOWN = 25
"""Functions in each list of the summary."""


def py_spy() -> str | None:
    """The py-spy executable: beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def sampled(pid: int | None, out: Path | None) -> Iterator[None]:
    """Sample process ``pid`` into ``out`` (py-spy's raw format) for the block's
    length; nothing when either is None."""
    executable = py_spy()
    if pid is None or out is None or executable is None:
        yield
        return
    command = [executable, "record", "--pid", str(pid), "--rate", str(RATE)]
    command += ["--nonblocking", "--threads", "--format", "raw", "--output", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def summary(raw: Path) -> dict[str, Any]:
    """The shares of samples (percent) of the top functions, inclusive and self."""
    if not raw.exists():
        return {"available": False}
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            _function(frame)
            for frame in stack.split(";")
            if "(" in frame and not frame.startswith(("thread (", "process "))
        ]
        if not frames or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        for name in set(frames):
            inclusive[name] += samples
        own[frames[-1]] += samples
    if not total:
        return {"available": False}

    def shares(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(SHOWN)]

    return {
        "available": True,
        "samples": total,
        "rate_hz": RATE,
        "raw": raw.name,
        "inclusive_percent": shares(inclusive),
        "self_percent": shares(own),
    }


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``: lines folded together."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"
