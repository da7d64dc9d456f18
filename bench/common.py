"""What the scenarios share: options, the server, the host's audio, latencies."""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.frames import BINARY, client_frame, json_frame
from bench.load import Collected
from bench.loadgen import HostPlan
from bench.server import BenchError, Server, attach, spawn
from bench.timeline import Timeline

SCRIPTED_CLOCK = (
    "one clock, the load generator's time.time() (loopback when the bench starts the "
    "server). Latency = a caption's arrival at the listener's socket (kernel "
    "SO_TIMESTAMPNS; 'read' = when the load process read it) minus the moment the host "
    "handed the kernel the audio chunk that completes the scripted result (the scripted "
    "engine's timeline). It includes the host-to-server hop and everything the server "
    "does, so it bounds 'engine result to listener socket' from above."
)


UNLIMITED = {
    "BABEL_MAX_CONNECTIONS_PER_IP": "0",
    "BABEL_MAX_SESSIONS_PER_KEY": "0",
    "BABEL_MAX_LISTENERS_PER_SESSION": "0",
    "BABEL_JOIN_ATTEMPTS": "0",
    "BABEL_AUDIO_RATE_SLACK": "0",
}
"""The per-client limits, off in the server the bench starts (``--server-env`` may set
them again). Every load process connects from 127.0.0.1: up to 10,000 listeners of one
session and 100 sessions are one client to the server, far past the defaults meant for
strangers on the internet (1,000 connections, 20 sessions, 5,000 listeners per
session). ``ingest`` streams audio as fast as it can, past the audio rate a host may
send. A server aimed at with ``--url`` keeps its own settings."""


def add_common(parser: argparse.ArgumentParser, *, out: str) -> None:
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="aim at a running server instead of starting one (repeatable: listeners are "
        "spread over the URLs; the host uses the first). It must run the scripted engine "
        "with the bench's script: see `python -m bench script`.",
    )
    parser.add_argument("--out", type=Path, default=Path(out), help=f"JSON report ({out})")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the server the bench starts, e.g. BABEL_SOCKET_SEND_BUFFER=65536",
    )
    parser.add_argument("--chunk-ms", type=int, default=100, help="host audio chunk (100)")
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=24000,
        help="host PCM rate (24000, the original client's; the server resamples to 16000)",
    )
    parser.add_argument(
        "--audio-format",
        choices=("binary", "base64"),
        default="binary",
        help="binary frames or the original's base64 JSON `audio` messages",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to CPU 0 and the load processes to the others (default: "
        "the scheduler shares every core between them)",
    )
    parser.add_argument(
        "--listeners-per-proc",
        type=int,
        default=2000,
        help="listeners per load process (2000): on few cores, fewer processes preempt "
        "the server less",
    )


@contextmanager
def server_for(
    args: argparse.Namespace,
    report: dict[str, Any],
    *,
    stt: str,
    mt: str,
    timeline: Timeline | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """The server of one run: started here (with the timeline's script and ``env``,
    which ``--server-env`` overrides) or ``--url``."""
    report["params"]["pin"] = bool(args.pin)
    if args.url:
        server = attach(args.url)
        report["server"] = {"spawned": False, "urls": server.urls, **_engines(server)}
        yield server
        return
    with tempfile.TemporaryDirectory(prefix="babel-bench-") as scratch:
        env = {
            **UNLIMITED,
            **(env or {}),
            **dict(item.split("=", 1) for item in args.server_env),
        }
        if timeline is not None:
            env["BABEL_SCRIPT_PATH"] = str(timeline.write(Path(scratch) / "script.json"))
        log = Path(scratch) / "server.log"
        server = spawn(stt=stt, mt=mt, env=env, log_path=log, cpus=server_cpus(args))
        try:
            report["server"] = {
                "spawned": True,
                "urls": server.urls,
                "command": server.command,
                "env": {k: v for k, v in env.items() if k != "BABEL_SCRIPT_PATH"},
                "stt": stt,
                "mt": mt,
                "cpus": sorted(server_cpus(args) or []) or "any",
            }
            yield server
        finally:
            server.close()
            tail = log.read_text(errors="replace").strip().splitlines()[-20:]
            if tail:
                report["server"]["log_tail"] = tail


def server_cpus(args: argparse.Namespace) -> set[int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]} if args.pin and len(cpus) > 1 else None


def load_cpus(args: argparse.Namespace) -> set[int] | None:
    """The load processes' CPUs under ``--pin``: all but the server's."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[1:]) if args.pin and len(cpus) > 1 else None


def _engines(server: Server) -> dict[str, Any]:
    health = server.health()
    return {"stt": health.get("transcriptionProvider"), "mt": health.get("translationProvider")}


def wait_for_listeners(server: Server, code: str, count: int, timeout_s: float = 30) -> None:
    """Return once the server counts ``count`` listeners in session ``code``."""
    deadline = time.monotonic() + timeout_s
    while server.listener_count(code) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"the server counts {server.listener_count(code)} of {count}")
        time.sleep(0.2)


def audio_frame(pcm: bytes, audio_format: str) -> bytes:
    if audio_format == "binary":
        return client_frame(pcm, BINARY)
    return json_frame(
        {"type": "audio", "audioData": base64.b64encode(pcm).decode(), "streaming": True}
    )


def silence_plan(
    args: argparse.Namespace, chunks: int, *, paced: bool = True, wait_pong: bool = False
) -> HostPlan:
    """Hosts that send ``chunks`` chunks of silence (what drives the scripted engine)."""
    samples = args.sample_rate * args.chunk_ms // 1000
    frame = audio_frame(b"\0\0" * samples, args.audio_format)
    return HostPlan(
        init=json_frame({"type": "init", "sourceLang": "en", "sampleRate": args.sample_rate}),
        frames=[frame] * chunks,
        chunk_s=args.chunk_ms / 1000,
        paced=paced,
        tail=[json_frame({"type": "ping", "timestamp": 0})] if wait_pong else [],
        wait_pong=wait_pong,
    )


def listener_path(session_id: str, lang: str) -> str:
    return f"/translate?role=listener&sessionId={session_id}&targetLang={lang}"


def scripted_latencies(
    collected: Collected, timeline: Timeline, *, roles: tuple[str, ...] = ("listener",)
) -> dict[str, Any]:
    """Per receipt of a scripted caption: its latency from the chunk that completed it.

    Returns the samples (seconds) by kind and clock, what each peer got, and counts of
    captions that match no scripted line or no sent chunk.
    """
    hosts = collected.host_of()
    lines = timeline.lines
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"socket": [], "read": []} for kind in ("final", "partial")
    }
    timed: list[tuple[float, float, bool]] = []
    """(chunk sent, latency at the socket, final) of every receipt, for lag over time."""
    unknown = unsent = 0
    for receipt in collected.receipts:
        peer = collected.peers[receipt.peer]
        if peer["role"] not in roles:
            continue
        if receipt.line < 0:
            unknown += 1
            continue
        sent = collected.sent.get(hosts.get(peer["session"], -1))
        chunk = lines[receipt.line].chunk
        if sent is None or chunk >= len(sent):
            unsent += 1
            continue
        kind = "partial" if receipt.partial else "final"
        samples[kind]["socket"].append(receipt.kts - sent[chunk])
        samples[kind]["read"].append(receipt.rts - sent[chunk])
        timed.append((sent[chunk], receipt.kts - sent[chunk], not receipt.partial))
    return {"samples": samples, "timed": timed, "unknown": unknown, "unsent": unsent}


def delivery(
    collected: Collected, timeline: Timeline, *, roles: tuple[str, ...] = ("listener",)
) -> dict[str, Any]:
    """Finals lost, duplicated or out of order, and partials dropped, per reader."""
    finals = {line.index for line in timeline.finals}
    partials = {line.index for line in timeline.partials}
    by_peer = collected.by_peer()
    readers = [i for i, p in enumerate(collected.peers) if p["role"] in roles]
    lost = duplicates = out_of_order = received = partial_received = 0
    missing_any = 0
    for index in readers:
        seen: set[int] = set()
        seen_partials: set[int] = set()
        last = -1
        for receipt in by_peer[index]:
            if receipt.line < 0:
                continue
            if receipt.partial:
                seen_partials.add(receipt.line)
                continue
            if receipt.line in seen:
                duplicates += 1
            elif receipt.line < last:
                out_of_order += 1
            seen.add(receipt.line)
            last = max(last, receipt.line)
        missed = len(finals - seen)
        lost += missed
        missing_any += bool(missed)
        received += len(seen & finals)
        partial_received += len(seen_partials & partials)
    expected_partials = len(partials) * len(readers)
    dropped = expected_partials - partial_received
    return {
        "finals": {
            "expected": len(finals) * len(readers),
            "received": received,
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "readers_missing_any": missing_any,
        },
        "partials": {
            "expected": expected_partials,
            "received": partial_received,
            "dropped": dropped,
            "dropped_percent": round(100 * dropped / expected_partials, 2)
            if expected_partials
            else None,
        },
        "disconnected": sum(
            1 for i in readers if collected.peers[i]["closed"] not in (None, "failed")
        ),
    }


def schedule_slip(collected: Collected, t0: float, chunk_s: float) -> list[float]:
    """How late each host chunk reached the kernel against its real-time schedule (s)."""
    slips: list[float] = []
    for index, times in collected.sent.items():
        start = t0 + collected.peers[index]["offset_s"]
        slips.extend(at - (start + c * chunk_s) for c, at in enumerate(times))
    return slips
