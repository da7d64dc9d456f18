"""``faults``: does a session whose engine misbehaves slow a healthy one down?

A healthy session (scripted STT, echo MT; a host streaming at real-time pace, one
listener per ``--languages``) is measured alone, then beside a healthy second session
(the control), then beside a second session whose engine misbehaves
(``babel_actors.testing.faults``): its speech stream (source ``fr``) or its
translations (its listener reads ``de``) hang, fail, are slow (awaiting) or block a
worker thread. Reported per run: the healthy session's final latency (p50/p95/p99/max
from the scripted chunk to the listener's socket), finals lost, and what the faulty
session's listener got.

The server runs in this process, on a trio thread of its own, so each run's fault
engines are handed to it as objects: test engines have no place among the engine names
``babel-actors serve --stt/--mt`` accepts in production. The load generators run in
their own processes as in the other scenarios, one set per session, so the faulty
session's host stalling (a speech engine that stops reading) cannot hold up the
healthy one's; this process only waits on pipes while they run.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    SCRIPTED_CLOCK,
    audio_frame,
    delivery,
    listener_path,
    scripted_latencies,
)
from bench.frames import json_frame
from bench.load import Collected, Run
from bench.loadgen import HostPlan, PeerSpec
from bench.report import fmt, header, new_report, percentiles, table, target, targets_text, write
from bench.server import BenchError, Server
from bench.timeline import Timeline, build

FAULTY_SOURCE = "fr"
"""The faulty session's source language: a faulty speech engine picks its streams."""
FAULTY_TARGET = "de"
"""The faulty session's listener language: a faulty translator picks those calls."""
FAULTS = ("hang", "error", "slow", "block")
ENGINES = ("mt", "stt")
SERVER_START_S = 30.0


@dataclass(frozen=True)
class Case:
    """One run: the healthy session alone, or beside a second session."""

    name: str
    beside: bool
    engine: str | None = None
    """``mt`` or ``stt``: whose engine misbehaves in the second session."""
    fault: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"faults to run beside the healthy session ({','.join(FAULTS)}): block is "
        "slow in a blocked worker thread",
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="whose engine misbehaves (mt,stt)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of speech (20)")
    parser.add_argument("--sentence-s", type=float, default=1.0, help="seconds per sentence (1)")
    parser.add_argument("--partials", type=int, default=3, help="partials per sentence (3)")
    parser.add_argument(
        "--languages", default="es,it", help="the healthy session's listeners (es,it)"
    )
    parser.add_argument(
        "--slow-s", type=float, default=1.0, help="delay of each slow call or result (1.0)"
    )
    parser.add_argument(
        "--translate-timeout-s",
        type=float,
        default=None,
        help="the server's translate_timeout_s: when a hung translation goes out as "
        "flagged source text (the Config default)",
    )
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait for the last finals")
    parser.add_argument("--chunk-ms", type=int, default=100, help="host audio chunk (100)")
    parser.add_argument("--sample-rate", type=int, default=24000, help="host PCM rate (24000)")
    parser.add_argument("--audio-format", choices=("binary", "base64"), default="binary")
    parser.add_argument("--out", type=Path, default=Path("bench-faults.json"), help="JSON report")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from babel_actors.config import Config

    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for name, given, known in (("fault", faults, FAULTS), ("engine", engines, ENGINES)):
        unknown = set(given) - set(known)
        if unknown:
            raise BenchError(f"unknown {name} {', '.join(sorted(unknown))}: use {known}")
    timeout_s = args.translate_timeout_s or Config().translate_timeout_s
    cases = [Case("alone", beside=False), Case("beside healthy", beside=True)]
    cases += [Case(f"{e} {f}", True, e, f) for e in engines for f in faults]
    timeline = build(
        args.duration,
        sentence_s=args.sentence_s,
        partials=args.partials,
        chunk_s=args.chunk_ms / 1000,
    )
    report = new_report(
        "faults",
        {
            "cases": [c.name for c in cases],
            "languages": languages,
            "faulty_session": {"source": FAULTY_SOURCE, "listener": FAULTY_TARGET},
            "duration_s": args.duration,
            "sentence_s": args.sentence_s,
            "partials_per_sentence": args.partials,
            "slow_s": args.slow_s,
            "translate_timeout_s": timeout_s,
            "chunk_ms": args.chunk_ms,
            "sample_rate": args.sample_rate,
            "audio_format": args.audio_format,
        },
        SCRIPTED_CLOCK + " Only the healthy session's listeners are measured.",
    )
    report["server"] = {
        "spawned": True,
        "in_process": True,
        "urls": ["in this process, a new server per run"],
        "stt": "scripted (faulty in some runs)",
        "mt": "echo (faulty in some runs)",
    }
    config = Config(port=0, stt="scripted", mt="echo", translate_timeout_s=timeout_s)
    for case in cases:
        print(f"faults: {case.name} ...", flush=True)
        report["runs"].append(_run_case(case, args, config, timeline, languages))
    report["targets"] = _targets(report["runs"])
    write(report, _summary(report), args.out)
    return report


def _engines(case: Case, args: argparse.Namespace, timeline: Timeline) -> tuple[Any, Any]:
    from babel_actors.testing import EchoTranslator, ScriptedSpeechToText, ScriptLine
    from babel_actors.testing.faults import Fault, FaultySpeechToText, FaultyTranslator

    script = [ScriptLine(line.at_s, line.text, line.final) for line in timeline.lines]
    stt: Any = ScriptedSpeechToText(script, languages=frozenset({"en", FAULTY_SOURCE}))
    mt: Any = EchoTranslator()
    if case.fault is not None:
        fault = Fault(case.fault)
        if case.engine == "stt":
            stt = FaultySpeechToText(
                stt, fault, for_languages=frozenset({FAULTY_SOURCE}), delay_s=args.slow_s
            )
        else:
            mt = FaultyTranslator(
                mt, fault, for_targets=frozenset({FAULTY_TARGET}), delay_s=args.slow_s
            )
    return stt, mt


def _run_case(
    case: Case,
    args: argparse.Namespace,
    config: Any,
    timeline: Timeline,
    languages: list[str],
) -> dict[str, Any]:
    stt, mt = _engines(case, args, timeline)
    chunk = 2 * args.sample_rate * args.chunk_ms // 1000
    plan = HostPlan(
        # No sourceLang: each session keeps the one it was started with.
        init=json_frame({"type": "init", "sampleRate": args.sample_rate}),
        frames=[audio_frame(b"\0" * chunk, args.audio_format)] * timeline.chunks,
        chunk_s=timeline.chunk_s,
    )
    faulty_collected: Collected | None = None
    with _server_logs() as logs, in_process_server(config, stt, mt) as server:
        session = server.start_session("en")
        peers = [PeerSpec("host", 0, session["wsUrl"], "en")]
        peers += [
            PeerSpec("listener", 0, listener_path(session["sessionId"], lang), lang)
            for lang in languages
        ]
        runs = [Run(server.addresses, peers, line_of_text=timeline.line_of_text(), plan=plan)]
        if case.beside:
            other = server.start_session(FAULTY_SOURCE)
            other_peers = [
                PeerSpec("host", 0, other["wsUrl"], FAULTY_SOURCE, offset_s=timeline.chunk_s / 2),
                PeerSpec(
                    "faulty",
                    0,
                    listener_path(other["sessionId"], FAULTY_TARGET),
                    FAULTY_TARGET,
                ),
            ]
            runs.append(
                Run(server.addresses, other_peers, line_of_text=timeline.line_of_text(), plan=plan)
            )
        try:
            for load in runs:
                load.connected()
            before = server.usage()
            for load in runs:
                load.go()
            runs[0].streamed(timeline.chunks * timeline.chunk_s + 60)
            collected = runs[0].finish({0: timeline.last_final.index}, args.settle_s)
            if len(runs) > 1:
                faulty_collected = runs[1].finish(None, 0.5)
            after = server.usage()
        finally:
            for load in runs:
                load.close()
    latencies = scripted_latencies(collected, timeline)
    result: dict[str, Any] = {
        "case": case.name,
        "engine": case.engine,
        "fault": case.fault,
        "latency_ms": {
            kind: {clock: percentiles(v, scale=1000) for clock, v in by_clock.items()}
            for kind, by_clock in latencies["samples"].items()
        },
        **delivery(collected, timeline),
        "unknown_captions": latencies["unknown"],
        "errors": collected.errors[:20],
        "faulty_session": _faulty(faulty_collected, stt, mt),
        "server_log": logs.summary(),
    }
    if before is not None and after is not None and after.at > before.at:
        cpu = after.cpu_s - before.cpu_s
        result["process_cpu_percent_of_core"] = round(100 * cpu / (after.at - before.at), 1)
    return result


def _faulty(collected: Collected | None, stt: Any, mt: Any) -> dict[str, Any] | None:
    """What the faulty session's listener got, and what the faulty engine did."""
    if collected is None:
        return None
    finals = [
        r
        for r in collected.receipts
        if not r.partial and collected.peers[r.peer]["role"] == "faulty" and r.line >= 0
    ]
    engine = stt if hasattr(stt, "faulted") else mt
    return {
        "finals": len(finals),
        "flagged": sum(1 for r in finals if r.translated == r.original),
        "error_notices": sum(1 for e in collected.errors if e.startswith("faulty: error ")),
        "engine_faulted": getattr(engine, "faulted", None),
        "engine_held": getattr(engine, "held", None),
    }


@contextmanager
def in_process_server(config: Any, stt: Any, mt: Any) -> Iterator[Server]:
    """``serve`` on a trio thread of this process, with these engine objects."""
    import trio

    from babel_actors.testing import running_server

    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event] | BaseException] = (
        queue.Queue()
    )

    async def main() -> None:
        stop = trio.Event()
        async with running_server(config, stt=stt, mt=mt) as server:
            started.put((server.url, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the bench's thread, which raises it
            started.put(exc)

    thread = threading.Thread(target=thread_main, name="babel-bench-server", daemon=True)
    thread.start()
    try:
        item = started.get(timeout=SERVER_START_S)
    except queue.Empty:
        raise BenchError(f"the in-process server did not start in {SERVER_START_S} s") from None
    if isinstance(item, BaseException):
        raise BenchError(f"the in-process server failed: {item!r}") from item
    url, token, stop = item
    try:
        yield Server([url])
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=SERVER_START_S)


class _LogTally(logging.Handler):
    """The server's log lines, counted by level; the last few kept."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.levels: dict[str, int] = {}
        self.tail: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] = self.levels.get(record.levelname, 0) + 1
        self.tail = [*self.tail[-9:], f"{record.levelname} {record.getMessage()[:160]}"]

    def summary(self) -> dict[str, Any]:
        return {"by_level": dict(self.levels), "tail": list(self.tail)}


@contextmanager
def _server_logs() -> Iterator[_LogTally]:
    """Keep the in-process server's logs (a warning per failed call) off the console."""
    logger = logging.getLogger("babel_actors")
    tally = _LogTally()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(tally)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield tally
    finally:
        logger.removeHandler(tally)
        logger.setLevel(level)
        logger.propagate = propagate


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lost = sum(r["finals"]["lost"] for r in runs)
    disorder = sum(r["finals"]["duplicates"] + r["finals"]["out_of_order"] for r in runs)
    return [
        target("healthy session: finals lost, over every run", "0", lost, lost == 0),
        target("healthy session: finals duplicated or out of order", "0", disorder, disorder == 0),
    ]


def _summary(report: dict[str, Any]) -> str:
    rows = []
    for r in report["runs"]:
        final = r["latency_ms"]["final"]["socket"]
        faulty = r["faulty_session"] or {}
        rows.append(
            [
                r["case"],
                final["n"],
                final["p50"],
                final["p95"],
                final["p99"],
                final["max"],
                r["finals"]["lost"],
                faulty.get("finals", "-"),
                faulty.get("flagged", "-"),
                faulty.get("error_notices", "-"),
                r.get("process_cpu_percent_of_core"),
            ]
        )
    params = report["params"]
    lines = [
        header(report),
        "",
        f"healthy session: 1 host, listeners {','.join(params['languages'])}; faulty "
        f"session: source {FAULTY_SOURCE}, listener {FAULTY_TARGET}; slow = "
        f"{fmt(params['slow_s'])} s a call or result; translate timeout "
        f"{fmt(params['translate_timeout_s'])} s",
        "",
        table(
            [
                "run",
                "finals",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
                "lost",
                "faulty finals",
                "flagged",
                "errors",
                "CPU %",
            ],
            rows,
        ),
        "",
        "healthy session's finals: chunk sent -> listener socket. faulty: finals its "
        "listener got, of them flagged (source text), error notices it got. CPU: the "
        "whole bench process (server and orchestrator).",
        "",
        "targets:",
        targets_text(report["targets"]),
    ]
    return "\n".join(lines)
