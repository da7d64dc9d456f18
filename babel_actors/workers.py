"""``babel-actors serve --workers N``: N server processes sharing one port.

Each worker is a whole ``babel-actors serve`` (its own trio loop, engines and
sessions) listening with SO_REUSEPORT, so the kernel spreads new connections over
them. They share sessions through Redis, which is why more than one worker needs
``BABEL_REDIS_URL``: without it a listener who lands on another worker than the host's
would not find the session. This process only supervises: it starts the workers,
prints one banner once all serve, passes SIGINT/SIGTERM on (each worker shuts down
gracefully), and restarts a worker that dies (its listeners reconnect to a sibling
and resume with ``lastSeq``; its hosts' sessions move with their host).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

import trio

from babel_actors.config import Config
from babel_actors.errors import ConfigError
from babel_actors.store import node_name

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
"""Wait before restarting a worker that died, so a crash loop does not spin."""
MAX_EARLY_DEATHS = 3
"""A worker that dies this many times in a row before serving stops the whole server."""


def check_workers(config: Config) -> None:
    """``ConfigError`` unless ``config`` can run ``config.workers`` processes."""
    if config.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, not {config.workers}")
    if config.workers > 1 and not config.redis_url:
        raise ConfigError(
            f"--workers {config.workers} needs BABEL_REDIS_URL (or --redis-url): worker "
            "processes share sessions through Redis, e.g. redis://127.0.0.1:6379/0"
        )


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket holding ``port`` (a free one for 0)
    while the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


async def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run ``config.workers`` workers until SIGINT/SIGTERM; the exit status."""
    check_workers(config)
    reserved = reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    base = node_name(config)
    workers = [_Worker(i, [*argv, "--workers", "1", "--port", str(port)], base)
               for i in range(config.workers)]
    status = 0
    with reserved, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            banners = [await nursery.start(worker.keep_running) for worker in workers]
            print(
                f"{banners[0][0]}\n{banners[0][1]}\n{banners[0][2]}\n"
                f"  workers: {config.workers} processes sharing port {port}",
                flush=True,
            )
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", flush=True)
                for worker in workers:
                    worker.stop(signum)
                break
    for worker in workers:
        if worker.failed or worker.returncode not in (0, None):
            status = 1
    return status


class _Worker:
    """One worker process, restarted when it dies unless told to stop."""

    def __init__(self, index: int, argv: list[str], base: str) -> None:
        self.index = index
        self.argv = [sys.executable, "-m", "babel_actors", *argv]
        self.env = {**os.environ, "BABEL_REUSE_PORT": "1", "BABEL_NODE_ID": f"{base}-w{index}"}
        self.process: trio.Process | None = None
        self.stopping = False
        self.failed = False
        self.returncode: int | None = None

    def stop(self, signum: int) -> None:
        self.stopping = True
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def keep_running(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        early_deaths = 0
        started = False
        while not self.stopping:
            process = self.process = await trio.lowlevel.open_process(
                self.argv, stdout=subprocess.PIPE, env=self.env
            )
            assert process.stdout is not None
            try:
                async with process.stdout:
                    lines = _Lines(process.stdout)
                    banner = [await lines.next() for _ in range(3)]
                    serving = banner[0].startswith("babel-actors serving on")
                    if serving and not started:
                        started = True
                        task_status.started(banner)
                    while line := await lines.next():
                        print(f"[worker {self.index}] {line}", flush=True)
                    self.returncode = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            if self.stopping:
                return
            early_deaths = 0 if serving else early_deaths + 1
            print(
                f"babel-actors: worker {self.index} exited with {self.returncode}; restarting",
                file=sys.stderr,
                flush=True,
            )
            if early_deaths >= MAX_EARLY_DEATHS:
                self.failed = True
                raise ConfigError(f"worker {self.index} keeps failing before it serves")
            await trio.sleep(RESTART_DELAY_S)


class _Lines:
    """Lines of a worker's stdout; ``""`` at its end."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> str:
        while (end := self.buffer.find(b"\n")) < 0:
            chunk = await self.stream.receive_some()
            if not chunk:
                line = self.buffer.decode(errors="replace")
                self.buffer.clear()
                return line
            self.buffer += chunk
        line = self.buffer[:end].decode(errors="replace")
        del self.buffer[: end + 1]
        return line
