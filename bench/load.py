"""Driving the load-generator processes through a run, and gathering what they saw."""

from __future__ import annotations

import math
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from bench import loadgen
from bench.loadgen import HostPlan, PeerSpec, WorkerSpec
from bench.server import BenchError


@dataclass(slots=True)
class Receipt:
    """A caption as one peer received it."""

    peer: int
    line: int
    """Scripted line, or -1 (not scripted, or an unknown text)."""
    partial: bool
    lang: str
    seq: int
    kts: float
    """Arrival at the socket (kernel timestamp)."""
    rts: float
    """Read by the load generator."""
    original: str
    translated: str


@dataclass
class Collected:
    """Everything the workers saw, with peers numbered across workers."""

    peers: list[dict[str, Any]]
    receipts: list[Receipt]
    sent: dict[int, array[float]]
    """Host peer -> time each chunk was handed to the kernel."""
    pongs: dict[int, float]
    errors: list[str]
    closes: dict[str, int]
    cpu: list[dict[str, Any]]
    """Per worker: its role and CPU seconds while connecting and while running."""
    connect: list[dict[str, Any]] = field(default_factory=list)

    def by_peer(self) -> dict[int, list[Receipt]]:
        found: dict[int, list[Receipt]] = {i: [] for i in range(len(self.peers))}
        for receipt in self.receipts:
            found[receipt.peer].append(receipt)
        return found

    def host_of(self) -> dict[int, int]:
        """Session -> its host's peer index."""
        return {p["session"]: i for i, p in enumerate(self.peers) if p["role"] == "host"}

    def load_cpu(self) -> dict[str, Any]:
        run = sum(c["run_s"] for c in self.cpu)
        wall = max((c["run_wall_s"] for c in self.cpu), default=0.0)
        return {
            "processes": len(self.cpu),
            "connect_cpu_s": round(sum(c["connect_s"] for c in self.cpu), 3),
            "run_cpu_s": round(run, 3),
            "run_wall_s": round(wall, 3),
            "run_percent_of_core": round(100 * run / wall, 1) if wall else None,
            "per_process": self.cpu,
        }


class Run:
    """The load processes of one measured run: hosts in their own processes, listeners
    spread over others, started with ``spawn`` (nothing inherited from the parent)."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        peers: Sequence[PeerSpec],
        *,
        line_of_text: dict[tuple[str, bool], int],
        plan: HostPlan | None,
        listeners_per_process: int = 2000,
        hosts_per_process: int = 500,
        connect_timeout_s: float = 120.0,
        cpus: set[int] | None = None,
    ) -> None:
        hosts = [p for p in peers if p.role == "host"]
        listeners = [p for p in peers if p.role != "host"]
        groups: list[tuple[str, list[PeerSpec]]] = []
        for count, members, role in (
            (math.ceil(len(hosts) / hosts_per_process), hosts, "hosts"),
            (math.ceil(len(listeners) / listeners_per_process), listeners, "listeners"),
        ):
            for index in range(count):
                groups.append((role, list(members[index::count])))
        context = multiprocessing.get_context("spawn")
        self.roles = [role for role, _ in groups]
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        self.inboxes: list[list[tuple[str, Any]]] = []
        for _role, members in groups:
            spec = WorkerSpec(
                addresses=addresses,
                peers=members,
                line_of_text=line_of_text,
                plan=plan,
                connect_timeout_s=connect_timeout_s,
                cpus=cpus,
            )
            parent, child = context.Pipe()
            process = context.Process(target=loadgen.main, args=(child, spec), daemon=True)
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)
            self.inboxes.append([])
        self.connect_timeout_s = connect_timeout_s

    def _expect(self, kind: str, indexes: list[int], timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        got: dict[int, Any] = {}
        for i in indexes:
            for message in self.inboxes[i]:
                if message[0] == kind:
                    got[i] = message[1]
        while len(got) < len(indexes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [self.roles[i] for i in indexes if i not in got]
                raise BenchError(f"load processes ({', '.join(missing)}) sent no {kind!r}")
            waiting = {id(self.conns[i]): i for i in indexes if i not in got}
            for ready in wait([self.conns[i] for i in waiting.values()], remaining):
                i = waiting[id(ready)]
                try:
                    message = self.conns[i].recv()
                except EOFError:
                    raise BenchError(f"a load process ({self.roles[i]}) died") from None
                if message[0] == kind:
                    got[i] = message[1]
                else:
                    self.inboxes[i].append(message)
        return [got[i] for i in indexes]

    def connected(self) -> list[dict[str, Any]]:
        """Wait until every peer has joined (or failed); raise if any failed."""
        reports = self._expect(
            "connected", list(range(len(self.conns))), self.connect_timeout_s + 30
        )
        failed = sum(r["failed"] for r in reports)
        if failed:
            errors = [e for r in reports for e in r["errors"]][:5]
            raise BenchError(f"{failed} peers could not join: {errors}")
        return reports

    def go(self, delay_s: float = 0.3) -> float:
        t0 = time.time() + delay_s
        for conn in self.conns:
            conn.send(("go", t0))
        return t0

    def streamed(self, timeout_s: float) -> None:
        hosts = [i for i, role in enumerate(self.roles) if role == "hosts"]
        self._expect("streamed", hosts, timeout_s)

    def finish(self, last_lines: dict[int, int] | None, timeout_s: float) -> Collected:
        """Let the peers read until each has its session's last line (or ``timeout_s``);
        gather what they saw."""
        for conn in self.conns:
            conn.send(("finish", last_lines, timeout_s))
        results = self._expect("result", list(range(len(self.conns))), timeout_s + 60)
        return _merge(results, self.roles)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self.conns:
            conn.close()


def _merge(results: list[dict[str, Any]], roles: list[str]) -> Collected:
    peers: list[dict[str, Any]] = []
    receipts: list[Receipt] = []
    sent: dict[int, array[float]] = {}
    pongs: dict[int, float] = {}
    errors: list[str] = []
    closes: dict[str, int] = {}
    cpu: list[dict[str, Any]] = []
    for result, role in zip(results, roles, strict=True):
        base = len(peers)
        peers.extend(result["peers"])
        keys = result["keys"]
        raw = result["receipts"]
        columns = [array(code) for code in ("i", "i", "d", "d")]
        for column, name in zip(columns, ("peer", "key", "kts", "rts"), strict=True):
            column.frombytes(raw[name])
        for peer, key, kts, rts in zip(*columns, strict=True):
            line, partial, lang, seq, original, translated = keys[key]
            receipts.append(
                Receipt(base + peer, line, partial, lang, seq, kts, rts, original, translated)
            )
        for index, blob in result["sent"].items():
            times = array("d")
            times.frombytes(blob)
            sent[base + index] = times
        for index, at in result["pongs"].items():
            pongs[base + index] = at
        errors.extend(result["errors"])
        for why, count in result["closes"].items():
            closes[why] = closes.get(why, 0) + count
        cpu.append({"role": role, **{k: round(v, 3) for k, v in result["cpu"].items()}})
    return Collected(peers, receipts, sent, pongs, errors, closes, cpu)
