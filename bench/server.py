"""The server under test: one the bench starts (``babel-actors serve --port 0``) or
running ones named by ``--url``; its HTTP API, CPU and memory."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BANNER = re.compile(r"babel-actors serving on (http://\S+?):(\d+)\s*$")


class BenchError(RuntimeError):
    """The bench cannot go on (no server, a session refused, peers that never joined)."""


@dataclass
class Usage:
    """A server's cumulative CPU seconds and memory at one moment."""

    at: float
    cpu_s: float
    rss: int
    children_cpu_s: float = 0.0
    children_rss: int = 0


class Server:
    """One or more server processes, addressed by URL."""

    def __init__(self, urls: list[str], process: subprocess.Popen[str] | None = None) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.process = process
        self.addresses = [_address(url) for url in self.urls]
        self._psutil: Any = None
        if process is not None:
            import psutil  # type: ignore[import-untyped]

            self._psutil = psutil.Process(process.pid)
        self.command: list[str] = []
        self.log_path: Path | None = None

    @property
    def spawned(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int | None:
        """The server's process id, when the bench started it."""
        return None if self.process is None else self.process.pid

    # --- HTTP ------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, url: int = 0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.urls[url] + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise BenchError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BenchError(f"{method} {self.urls[url]}{path}: {exc}") from None

    def start_session(self, source_lang: str = "en") -> dict[str, Any]:
        reply = self.request("POST", "/session/start", {"sourceLang": source_lang})
        if not reply.get("success"):
            raise BenchError(f"/session/start refused: {reply}")
        return dict(reply)

    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/health"))

    def stats(self) -> list[dict[str, Any] | None]:
        """``GET /stats`` of every URL (None where the server has no such route)."""
        found: list[dict[str, Any] | None] = []
        for index in range(len(self.urls)):
            try:
                found.append(self.request("GET", "/stats", url=index))
            except BenchError:
                found.append(None)
        return found

    def reset_stats(self) -> None:
        for index in range(len(self.urls)):
            try:
                self.request("POST", "/stats/reset", {}, url=index)
            except BenchError:
                pass

    def listener_count(self, code: str) -> int:
        info = self.request("GET", f"/session/{code}/info")
        return int(info["session"]["listenerCount"])

    # --- usage -------------------------------------------------------------------

    def usage(self) -> Usage | None:
        """CPU and memory: from the OS for a server the bench started (with its
        subprocesses, e.g. Apertium), else from ``GET /stats`` summed over URLs."""
        now = time.time()
        if self._psutil is not None:
            import psutil  # type: ignore[import-untyped]

            try:
                times = self._psutil.cpu_times()
                rss = self._psutil.memory_info().rss
                kids_cpu, kids_rss = 0.0, 0
                for child in self._psutil.children(recursive=True):
                    try:
                        child_times = child.cpu_times()
                        kids_cpu += child_times.user + child_times.system
                        kids_rss += child.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                return None
            return Usage(now, times.user + times.system, rss, kids_cpu, kids_rss)
        stats = [s for s in self.stats() if s is not None]
        if not stats:
            return None
        return Usage(
            now,
            sum(s["process"]["cpuUserSeconds"] + s["process"]["cpuSystemSeconds"] for s in stats),
            sum(int(s["process"]["rssBytes"]) for s in stats),
        )

    # --- lifecycle ----------------------------------------------------------------

    def sample(self, interval_s: float = 0.5) -> Sampler:
        """Start sampling ``usage`` in a thread (peak memory, CPU over time)."""
        return Sampler(self, interval_s)

    def close(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class Sampler:
    """Samples a server's usage every ``interval_s`` until ``stop``."""

    def __init__(self, server: Server, interval_s: float) -> None:
        self.samples: list[Usage] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, interval_s), daemon=True)
        self._thread.start()

    def _run(self, server: Server, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            usage = server.usage()
            if usage is not None:
                self.samples.append(usage)

    def stop(self) -> list[Usage]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples

    def peak_rss(self) -> int | None:
        return max((u.rss + u.children_rss for u in self.samples), default=None)


def spawn(
    *,
    stt: str,
    mt: str,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    cpus: set[int] | None = None,
) -> Server:
    """Start ``babel-actors serve --port 0`` and wait for its banner line."""
    exe = Path(sys.executable).with_name("babel-actors")
    base = [str(exe)] if exe.exists() else [shutil.which("babel-actors") or "babel-actors"]
    command = [*base, "serve", "--port", "0", "--stt", stt, "--mt", mt, "--log-level", "WARNING"]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if cpus:
        # Before the interpreter has started any thread: they all inherit it.
        os.sched_setaffinity(process.pid, cpus)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise BenchError(f"no banner from {' '.join(command)} in {timeout_s}s") from None
        if line is None:
            raise BenchError(
                f"{' '.join(command)} exited with {process.wait()} before serving"
                + (f"; see {log_path}" if log_path else "")
            )
        match = BANNER.search(line)
        if match:
            server = Server([f"{match.group(1)}:{match.group(2)}"], process)
            server.command = command
            server.log_path = log_path
            return server


def attach(urls: list[str]) -> Server:
    """Running servers; the first one answers ``/health`` or the bench stops."""
    server = Server(urls)
    server.health()
    return server


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BenchError(f"{url}: use http://HOST:PORT (TLS is not supported by the bench)")
    return parts.hostname, parts.port or 80
