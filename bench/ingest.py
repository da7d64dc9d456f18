"""``ingest``: server CPU per second of host audio, base64 JSON against binary frames.

Hosts send silence as fast as the server takes it (TCP pushes back when the pipeline
is full); the window ends when every host has its own caption of the script's last
final, which the engine produces only once it has heard all the audio. The server's
CPU over that window, less what it burns idle, divided by the seconds of audio, is the
cost of taking audio in: WebSocket framing, JSON and base64 (or none), resampling to
16 kHz and the scripted engine's bookkeeping (a few captions a second per host).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from bench.common import add_common, load_cpus, server_for, silence_plan
from bench.load import Run
from bench.loadgen import PeerSpec
from bench.report import fmt, header, new_report, table, write
from bench.timeline import build

INGEST_CLOCK = (
    "CPU seconds of the server process (psutil, or /stats with --url) per second of audio"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=4, help="concurrent hosts (4)")
    parser.add_argument("--audio-s", type=float, default=300.0, help="audio per host (300 s)")
    parser.add_argument(
        "--formats", default="base64,binary", help="formats to compare (base64,binary)"
    )
    parser.add_argument("--idle-s", type=float, default=1.0, help="idle CPU measurement (1 s)")
    add_common(parser, out="bench-ingest.json")


def run(args: argparse.Namespace) -> dict[str, Any]:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    chunk_s = args.chunk_ms / 1000
    timeline = build(args.audio_s, chunk_s=chunk_s)
    chunks = timeline.chunks
    report = new_report(
        "ingest",
        {
            "hosts": args.hosts,
            "audio_s_per_host": args.audio_s,
            "formats": formats,
            "chunk_ms": args.chunk_ms,
            "sample_rate": args.sample_rate,
        },
        INGEST_CLOCK,
    )
    with server_for(args, report, stt="scripted", mt="echo", timeline=timeline) as server:
        for audio_format in formats:
            options = copy.copy(args)
            options.audio_format = audio_format
            sessions = [server.start_session() for _ in range(args.hosts)]
            peers = [PeerSpec("host", i, s["wsUrl"], "en") for i, s in enumerate(sessions)]
            plan = silence_plan(options, chunks, paced=False)
            load = Run(
                server.addresses,
                peers,
                line_of_text=timeline.line_of_text(),
                plan=plan,
                cpus=load_cpus(args),
            )
            try:
                load.connected()
                idle_start = server.usage()
                time.sleep(args.idle_s)
                before = server.usage()
                load.go(delay_s=0.0)
                load.streamed(600)
                last = {i: timeline.last_final.index for i in range(args.hosts)}
                collected = load.finish(last, 120.0)
                after = server.usage()
            finally:
                load.close()
            audio_s = args.hosts * chunks * chunk_s
            frame_bytes = len(plan.frames[0])
            record: dict[str, Any] = {
                "format": audio_format,
                "audio_s": round(audio_s, 3),
                "frame_bytes": frame_bytes,
                "load": collected.load_cpu(),
                "errors": collected.errors[:10],
            }
            if None not in (idle_start, before, after):
                assert idle_start and before and after
                idle_rate = (before.cpu_s - idle_start.cpu_s) / max(1e-9, before.at - idle_start.at)
                wall = after.at - before.at
                cpu = after.cpu_s - before.cpu_s - idle_rate * wall
                record.update(
                    {
                        "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 4),
                        "idle_cpu_percent": round(100 * idle_rate, 2),
                        "cpu_ms_per_audio_s": round(1000 * cpu / audio_s, 3),
                        "realtime_streams_per_core": round(audio_s / cpu) if cpu > 0 else None,
                        "speed_x_realtime": round(audio_s / wall, 1) if wall else None,
                    }
                )
            report["runs"].append(record)
    by_format = {r["format"]: r for r in report["runs"]}
    if {"base64", "binary"} <= set(by_format):
        b64 = by_format["base64"].get("cpu_ms_per_audio_s")
        binary = by_format["binary"].get("cpu_ms_per_audio_s")
        if b64 and binary:
            report["base64_over_binary"] = round(b64 / binary, 2)
            report["base64_extra_ms_per_audio_s"] = round(b64 - binary, 3)
    write(report, _summary(report), args.out)
    return report


def _summary(report: dict[str, Any]) -> str:
    rows = [
        [
            r["format"],
            r["frame_bytes"],
            r["audio_s"],
            r.get("wall_s"),
            r.get("cpu_ms_per_audio_s"),
            r.get("realtime_streams_per_core"),
            r.get("speed_x_realtime"),
        ]
        for r in report["runs"]
    ]
    lines = [
        header(report),
        "",
        table(
            [
                "format",
                "frame bytes",
                "audio s",
                "wall s",
                "CPU ms per audio s",
                "streams per core",
                "x realtime",
            ],
            rows,
        ),
    ]
    if "base64_over_binary" in report:
        lines += [
            "",
            f"base64 JSON costs {fmt(report['base64_over_binary'], 2)}x binary "
            f"(+{fmt(report['base64_extra_ms_per_audio_s'], 3)} ms CPU per audio second)",
        ]
    return "\n".join(lines)
