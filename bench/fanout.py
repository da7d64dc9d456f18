"""``fanout`` and ``overhead``: one host, N listeners over several languages.

Scripted STT and echo MT, so the engines cost nothing: what is measured is the server.
``fanout`` runs once per N (a fresh server each time when the bench starts it) and
reports delivery latency, losses, CPU and memory per listener; ``overhead`` is the same
run at 100 listeners, read through the server's own per-stage timings (``GET /stats``).
``fanout --engines cloud`` runs the production engines against local emulators
instead: see ``bench/cloud.py``.
"""

from __future__ import annotations

import argparse
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
    wait_for_listeners,
)
from bench.load import Run
from bench.loadgen import PeerSpec
from bench.report import (
    Contention,
    at_most,
    fmt,
    header,
    new_report,
    percentiles,
    table,
    target,
    targets_text,
    write,
)
from bench.server import Server
from bench.timeline import Timeline, build

ORIGINAL = {100: (8.0, 15.0, None), 1000: (15.0, 33.0, 5.0), 2000: (27.0, 64.0, 9.0)}
"""The Node.js original on this kind of machine: finals p50, p99 (ms), % of one core."""
PROTOTYPE_P99 = {1000: 29.0, 2000: 43.0}
"""The prototype's worst p99 (frame built once, non-blocking sends, no await)."""
MEMORY_PER_LISTENER = 30 * 1024
OVERHEAD_P99_MS = 5.0


def add_arguments(parser: argparse.ArgumentParser, *, scenario: str) -> None:
    default = "100" if scenario == "overhead" else "1000"
    parser.add_argument(
        "--listeners",
        default=default,
        help=f"listener counts, comma-separated: one run each ({default})",
    )
    parser.add_argument("--languages", default="es,fr,de", help="listeners' languages (es,fr,de)")
    if scenario == "fanout":
        parser.add_argument(
            "--engines",
            choices=("scripted", "cloud"),
            default="scripted",
            help="scripted: scripted STT and echo MT, the server alone (default); cloud: "
            "--stt google --mt openai against the project's Speech v2 and OpenAI-compatible "
            "emulators, each final timed from the STT emulator's result (bench/cloud.py)",
        )
    if scenario == "fanout":
        parser.add_argument(
            "--profile",
            action="store_true",
            help="cloud only: sample the server with py-spy while captions flow; the raw "
            "stacks go beside the report (OUT-profile-N.txt), a summary into it",
        )
        parser.add_argument(
            "--wpm",
            type=float,
            default=150.0,
            help="cloud only: the host's words per minute (150); the STT emulator gives "
            "an interim result per word",
        )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of speech (60; 40 with --engines cloud)"
        if scenario == "fanout"
        else "seconds of speech (60)",
    )
    parser.add_argument(
        "--sentence-s",
        type=float,
        default=2.0,
        help="seconds per sentence (2; scripted only: the cloud path's word-coded "
        "sentences last ~2.1 s)",
    )
    parser.add_argument(
        "--partials",
        type=int,
        default=3,
        help="partials per sentence (3; scripted only: the STT emulator gives one per word)",
    )
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="idle time after joining, before measuring"
    )
    add_common(parser, out=f"bench-{scenario}.json")


def run(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    if getattr(args, "engines", "scripted") == "cloud":
        from bench import cloud

        return cloud.run(args)
    if args.duration is None:
        args.duration = 60.0
    counts = [int(n) for n in str(args.listeners).split(",") if n.strip()]
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    timeline = build(
        args.duration,
        sentence_s=args.sentence_s,
        partials=args.partials,
        chunk_s=args.chunk_ms / 1000,
    )
    report = new_report(
        scenario,
        {
            "listeners": counts,
            "languages": languages,
            "duration_s": args.duration,
            "sentence_s": args.sentence_s,
            "partials_per_sentence": args.partials,
            "finals": len(timeline.finals),
            "chunk_ms": args.chunk_ms,
            "sample_rate": args.sample_rate,
            "audio_format": args.audio_format,
            "listeners_per_process": args.listeners_per_proc,
        },
        SCRIPTED_CLOCK,
    )
    for count in counts:
        with server_for(args, report, stt="scripted", mt="echo", timeline=timeline) as server:
            report["runs"].append(_one(args, server, count, languages, timeline))
    report["targets"] = (
        _overhead_targets(report["runs"]) if scenario == "overhead" else _targets(report["runs"])
    )
    summary = _overhead_summary(report) if scenario == "overhead" else _fanout_summary(report)
    write(report, summary, args.out)
    return report


def _one(
    args: argparse.Namespace,
    server: Server,
    count: int,
    languages: list[str],
    timeline: Timeline,
) -> dict[str, Any]:
    session = server.start_session()
    time.sleep(0.2)
    base = server.usage()
    peers = [PeerSpec("host", 0, session["wsUrl"], "en")]
    for i in range(count):
        lang = languages[i % len(languages)]
        address = i % len(server.addresses)
        peers.append(
            PeerSpec("listener", 0, listener_path(session["sessionId"], lang), lang, address)
        )
    load = Run(
        server.addresses,
        peers,
        line_of_text=timeline.line_of_text(),
        plan=silence_plan(args, timeline.chunks),
        listeners_per_process=args.listeners_per_proc,
        connect_timeout_s=60 + count / 50,
        cpus=load_cpus(args),
    )
    try:
        connect = load.connected()
        if len(server.urls) == 1:
            wait_for_listeners(server, session["sessionCode"], count)
        time.sleep(args.settle_s)
        idle = server.usage()
        server.reset_stats()
        sampler = server.sample()
        before = server.usage()
        contention = Contention()
        t0 = load.go()
        load.streamed(timeline.chunks * timeline.chunk_s + 60)
        collected = load.finish({0: timeline.last_final.index}, 15.0)
        after = server.usage()
        sampler.stop()
        stats = server.stats()
    finally:
        load.close()
    collected.connect = connect
    latencies = scripted_latencies(collected, timeline)
    samples = latencies["samples"]
    result: dict[str, Any] = {
        "listeners": count,
        "latency_ms": {
            kind: {clock: percentiles(values, scale=1000) for clock, values in by_clock.items()}
            for kind, by_clock in samples.items()
        },
        **delivery(collected, timeline),
        "unknown_captions": latencies["unknown"],
        "unsent_chunks": latencies["unsent"],
        "closes": collected.closes,
        "errors": collected.errors[:20],
        "host_schedule_slip_ms": percentiles(
            schedule_slip(collected, t0, timeline.chunk_s), scale=1000
        ),
        "load": collected.load_cpu(),
        "server": _server_usage(base, idle, before, after, sampler.peak_rss(), count),
        "server_stages": [s["stages"] if s else None for s in stats],
    }
    result["machine_cpu"] = contention.result(
        result["server"].get("cpu_s"), result["load"]["run_cpu_s"]
    )
    if latencies["unknown"]:
        result["errors"].append(
            f"{latencies['unknown']} captions match no scripted line: does the server run "
            "the bench's script (python -m bench script)?"
        )
    return result


def _server_usage(
    base: Any, idle: Any, before: Any, after: Any, peak: int | None, count: int
) -> dict[str, Any]:
    if None in (base, idle, before, after):
        return {"available": False}
    cpu = (after.cpu_s + after.children_cpu_s) - (before.cpu_s + before.children_cpu_s)
    wall = after.at - before.at
    return {
        "available": True,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_percent_of_core": round(100 * cpu / wall, 2) if wall else None,
        "rss_before_listeners_bytes": base.rss,
        "rss_idle_bytes": idle.rss,
        "rss_end_bytes": after.rss,
        "rss_peak_bytes": peak,
        "memory_per_listener_bytes": round((idle.rss - base.rss) / count) if count else None,
    }


# --- targets and summaries --------------------------------------------------------


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for run in runs:
        n = run["listeners"]
        final = run["latency_ms"]["final"]["socket"]
        found.append(
            target(f"finals lost at {n}", "0", run["finals"]["lost"], run["finals"]["lost"] == 0)
        )
        per = run["server"].get("memory_per_listener_bytes")
        found.append(
            at_most(
                f"memory per idle listener at {n} (KB)",
                None if per is None else round(per / 1024, 1),
                MEMORY_PER_LISTENER / 1024,
                "KB",
            )
        )
        if n in ORIGINAL:
            p50, p99, cpu = ORIGINAL[n]
            found.append(at_most(f"finals p50 at {n} (ms)", final["p50"], p50, "ms (original)"))
            found.append(at_most(f"finals p99 at {n} (ms)", final["p99"], p99, "ms (original)"))
            aim = at_most(f"finals p99 at {n}, aim (ms)", final["p99"], p99 / 2, "ms")
            aim["note"] = "half the original's tail"
            found.append(aim)
            if cpu is not None:
                found.append(
                    at_most(
                        f"server CPU at {n} (% of a core)",
                        run["server"].get("cpu_percent_of_core"),
                        cpu,
                        "% (original)",
                    )
                )
    return found


def _overhead_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for run in runs:
        n = run["listeners"]
        stages = run["server_stages"][0] if run["server_stages"] else None
        if stages:
            found.append(
                at_most(
                    f"engine result -> socket p99 at {n}, server-side (ms)",
                    stages["final"]["resultToSocket"]["p99"],
                    OVERHEAD_P99_MS,
                    "ms",
                )
            )
            found.append(
                at_most(
                    f"audio in -> socket p99 at {n}, server-side (ms)",
                    stages["final"]["total"]["p99"],
                    OVERHEAD_P99_MS,
                    "ms",
                )
            )
        found.append(
            at_most(
                f"chunk sent -> listener socket p99 at {n}, client-side (ms)",
                run["latency_ms"]["final"]["socket"]["p99"],
                OVERHEAD_P99_MS,
                "ms",
            )
        )
        found.append(
            target(f"finals lost at {n}", "0", run["finals"]["lost"], run["finals"]["lost"] == 0)
        )
    return found


def _fanout_summary(report: dict[str, Any]) -> str:
    rows = []
    for run in report["runs"]:
        final = run["latency_ms"]["final"]
        partial = run["latency_ms"]["partial"]
        server = run["server"]
        per = server.get("memory_per_listener_bytes")
        rows.append(
            [
                run["listeners"],
                final["socket"]["p50"],
                final["socket"]["p95"],
                final["socket"]["p99"],
                final["read"]["p99"],
                partial["socket"]["p50"],
                partial["socket"]["p99"],
                run["finals"]["lost"],
                run["partials"]["dropped"],
                server.get("cpu_percent_of_core"),
                run["load"]["run_percent_of_core"],
                run["machine_cpu"]["others_percent_of_core"],
                None if per is None else per / 1024,
            ]
        )
    head = [
        "listeners",
        "final p50",
        "p95",
        "p99",
        "read p99",
        "partial p50",
        "p99",
        "lost",
        "partials dropped",
        "server %core",
        "load %core",
        "others %core",
        "KB/listener",
    ]
    lines = [header(report), "", "latency in ms (finals at the socket unless 'read')", ""]
    lines += [table(head, rows), "", "targets:", targets_text(report["targets"])]
    problems = [e for run in report["runs"] for e in run["errors"]][:5]
    if problems:
        lines += ["", "errors:", *("  " + e for e in problems)]
    return "\n".join(lines)


def _overhead_summary(report: dict[str, Any]) -> str:
    lines = [header(report), ""]
    for run in report["runs"]:
        stages = run["server_stages"][0] if run["server_stages"] else None
        lines.append(f"{run['listeners']} listeners, server-side stage latency (ms, /stats):")
        if not stages:
            lines.append("  (the server has no /stats)")
            continue
        rows = []
        for kind in ("final", "partial"):
            series = stages[kind]
            names = [*series["stages"], "total", "resultToSocket"]
            for name in names:
                values = series["stages"].get(name) or series[name]
                rows.append([kind, name, values["n"], values["p50"], values["p95"], values["p99"]])
        lines.append(table(["kind", "stage", "n", "p50", "p95", "p99"], rows))
        final = run["latency_ms"]["final"]["socket"]
        lines.append(
            f"client-side, chunk sent -> listener socket: finals p50/p95/p99 "
            f"{fmt(final['p50'])}/{fmt(final['p95'])}/{fmt(final['p99'])} ms"
        )
        lines.append(
            f"server CPU {fmt(run['server'].get('cpu_percent_of_core'))}% of a core; "
            f"finals lost {run['finals']['lost']}"
        )
        lines.append("")
    lines += ["targets:", targets_text(report["targets"])]
    return "\n".join(lines)
