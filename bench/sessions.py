"""``sessions``: M hosts streaming at real-time pace, each with its own listeners.

Scripted STT and echo MT. The question is whether the server keeps up: the lag of
each final (chunk sent -> caption at a reader's socket) over time should stay flat. A
server that falls behind shows it twice: lag that grows, and hosts that cannot send on
schedule because TCP pushes back.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from bench.common import (
    SCRIPTED_CLOCK,
    add_common,
    delivery,
    listener_path,
    load_cpus,
    schedule_slip,
    scripted_latencies,
    server_for,
    silence_plan,
)
from bench.load import Run
from bench.loadgen import PeerSpec
from bench.report import (
    Contention,
    fmt,
    header,
    new_report,
    percentiles,
    table,
    target,
    targets_text,
    write,
)
from bench.timeline import build

GROWTH_LIMIT_MS_PER_MIN = 5.0
"""Lag growing slower than this (least squares over the run) counts as flat."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=100, help="concurrent sessions (100)")
    parser.add_argument(
        "--languages",
        default="es,fr",
        help="one listener per language per session (es,fr; empty for none)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of speech (60)")
    parser.add_argument("--sentence-s", type=float, default=2.0, help="seconds per sentence (2)")
    parser.add_argument("--partials", type=int, default=3, help="partials per sentence (3)")
    parser.add_argument("--bucket-s", type=float, default=5.0, help="lag-over-time bucket (5)")
    add_common(parser, out="bench-sessions.json")


def run(args: argparse.Namespace) -> dict[str, Any]:
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    timeline = build(
        args.duration,
        sentence_s=args.sentence_s,
        partials=args.partials,
        chunk_s=args.chunk_ms / 1000,
    )
    report = new_report(
        "sessions",
        {
            "hosts": args.hosts,
            "languages": languages,
            "duration_s": args.duration,
            "sentence_s": args.sentence_s,
            "partials_per_sentence": args.partials,
            "chunk_ms": args.chunk_ms,
            "sample_rate": args.sample_rate,
            "audio_format": args.audio_format,
            "bucket_s": args.bucket_s,
        },
        SCRIPTED_CLOCK + " Readers are every session's host (its own language) and listeners.",
    )
    with server_for(args, report, stt="scripted", mt="echo", timeline=timeline) as server:
        time.sleep(0.2)
        base = server.usage()
        sessions = [server.start_session() for _ in range(args.hosts)]
        peers = []
        chunk_s = timeline.chunk_s
        for index, session in enumerate(sessions):
            offset = chunk_s * index / max(1, args.hosts)
            peers.append(PeerSpec("host", index, session["wsUrl"], "en", offset_s=offset))
            for lang in languages:
                path = listener_path(session["sessionId"], lang)
                address = len(peers) % len(server.addresses)
                peers.append(PeerSpec("listener", index, path, lang, address))
        load = Run(
            server.addresses,
            peers,
            line_of_text=timeline.line_of_text(),
            plan=silence_plan(args, timeline.chunks),
            listeners_per_process=args.listeners_per_proc,
            cpus=load_cpus(args),
        )
        try:
            load.connected()
            time.sleep(1.0)
            joined = server.usage()
            server.reset_stats()
            sampler = server.sample(1.0)
            before = server.usage()
            contention = Contention()
            t0 = load.go()
            load.streamed(timeline.chunks * chunk_s + 120)
            last = {index: timeline.last_final.index for index in range(args.hosts)}
            collected = load.finish(last, 20.0)
            after = server.usage()
            samples = sampler.stop()
            stats = server.stats()
        finally:
            load.close()
    roles = ("listener", "host")
    latencies = scripted_latencies(collected, timeline, roles=roles)
    finals = [(sent, lag) for sent, lag, final in latencies["timed"] if final]
    result: dict[str, Any] = {
        "hosts": args.hosts,
        "readers": sum(1 for p in collected.peers if p["role"] in roles),
        "latency_ms": {
            kind: {clock: percentiles(v, scale=1000) for clock, v in by_clock.items()}
            for kind, by_clock in latencies["samples"].items()
        },
        "lag_over_time": _buckets(finals, t0, args.bucket_s),
        "lag_growth_ms_per_min": _slope(finals, t0),
        **delivery(collected, timeline, roles=roles),
        "unknown_captions": latencies["unknown"],
        "host_schedule_slip_ms": percentiles(schedule_slip(collected, t0, chunk_s), scale=1000),
        "closes": collected.closes,
        "errors": collected.errors[:20],
        "load": collected.load_cpu(),
        "server": _server(base, joined, before, after, args.hosts),
        "server_cpu_over_time": _cpu_over_time(samples, t0),
        "server_stages": [s["stages"] if s else None for s in stats],
    }
    result["machine_cpu"] = contention.result(
        result["server"].get("cpu_s"), result["load"]["run_cpu_s"]
    )
    report["runs"].append(result)
    report["targets"] = _targets(result, timeline.chunk_s)
    write(report, _summary(report), args.out)
    return report


def _buckets(finals: list[tuple[float, float]], t0: float, bucket_s: float) -> list[dict[str, Any]]:
    grouped: dict[int, list[float]] = {}
    for sent, lag in finals:
        grouped.setdefault(int((sent - t0) // bucket_s), []).append(lag)
    return [
        {"t_s": round(index * bucket_s, 3), **percentiles(grouped[index], scale=1000)}
        for index in sorted(grouped)
    ]


def _slope(finals: list[tuple[float, float]], t0: float) -> float | None:
    """Least-squares growth of the lag, in ms per minute of run."""
    if len(finals) < 3:
        return None
    xs = [sent - t0 for sent, _ in finals]
    ys = [lag * 1000 for _, lag in finals]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if not var:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return round(cov / var * 60, 3)


def _server(base: Any, joined: Any, before: Any, after: Any, hosts: int) -> dict[str, Any]:
    if None in (base, joined, before, after):
        return {"available": False}
    cpu = after.cpu_s - before.cpu_s
    wall = after.at - before.at
    return {
        "available": True,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_percent_of_core": round(100 * cpu / wall, 2) if wall else None,
        "cpu_percent_of_core_per_session": round(100 * cpu / wall / hosts, 3) if wall else None,
        "rss_before_sessions_bytes": base.rss,
        "rss_joined_bytes": joined.rss,
        "rss_end_bytes": after.rss,
        "rss_per_session_bytes": round((after.rss - base.rss) / hosts),
        "rss_per_idle_session_bytes": round((joined.rss - base.rss) / hosts),
    }


def _cpu_over_time(samples: list[Any], t0: float) -> list[dict[str, Any]]:
    found = []
    for previous, current in itertools.pairwise(samples):
        wall = current.at - previous.at
        if wall > 0:
            found.append(
                {
                    "t_s": round(current.at - t0, 2),
                    "cpu_percent_of_core": round(100 * (current.cpu_s - previous.cpu_s) / wall, 1),
                    "rss_bytes": current.rss,
                }
            )
    return found


def _targets(result: dict[str, Any], chunk_s: float) -> list[dict[str, Any]]:
    growth = result["lag_growth_ms_per_min"]
    slip = result["host_schedule_slip_ms"]["p99"]
    return [
        target(
            f"lag growth with {result['hosts']} real-time hosts (ms/min)",
            f"<= {GROWTH_LIMIT_MS_PER_MIN:g} (flat)",
            growth,
            None if growth is None else growth <= GROWTH_LIMIT_MS_PER_MIN,
        ),
        target(
            "hosts keep real-time pace: chunk slip p99 (ms)",
            f"< {chunk_s * 1000:g} (one chunk)",
            slip,
            None if slip is None else slip < chunk_s * 1000,
        ),
        target("finals lost", "0", result["finals"]["lost"], result["finals"]["lost"] == 0),
    ]


def _summary(report: dict[str, Any]) -> str:
    result = report["runs"][0]
    server = result["server"]
    final = result["latency_ms"]["final"]["socket"]
    rows = [[b["t_s"], b["n"], b["p50"], b["p99"], b["max"]] for b in result["lag_over_time"]]
    per = server.get("rss_per_session_bytes")
    lines = [
        header(report),
        "",
        f"{result['hosts']} hosts, {result['readers']} readers; finals lag p50/p95/p99 "
        f"{fmt(final['p50'])}/{fmt(final['p95'])}/{fmt(final['p99'])} ms, growth "
        f"{fmt(result['lag_growth_ms_per_min'], 2)} ms/min",
        f"server CPU {fmt(server.get('cpu_percent_of_core'))}% of a core "
        f"({fmt(server.get('cpu_percent_of_core_per_session'), 3)}% per session), "
        f"RSS {fmt(None if per is None else per / 1024)} KB per session; "
        f"load CPU {fmt(result['load']['run_percent_of_core'])}%, other processes "
        f"{fmt(result['machine_cpu']['others_percent_of_core'])}%",
        f"finals lost {result['finals']['lost']}, partials dropped "
        f"{result['partials']['dropped']} ({fmt(result['partials']['dropped_percent'])}%); "
        f"host chunk slip p99 {fmt(result['host_schedule_slip_ms']['p99'])} ms",
        "",
        "lag over time (finals, ms, by when the completing chunk was sent):",
        table(["t (s)", "n", "p50", "p99", "max"], rows),
        "",
        "targets:",
        targets_text(report["targets"]),
    ]
    return "\n".join(lines)
