"""``python -m bench SCENARIO [options]``: see ``bench/__init__.py`` and the README."""

from __future__ import annotations

import argparse
import json
import sys

from bench.server import BenchError


def _parser() -> argparse.ArgumentParser:
    from bench import e2e, fanout, faults, ingest, sessions

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    fanout.add_arguments(
        scenarios.add_parser("fanout", help="one host, N listeners: latency, loss, CPU, memory"),
        scenario="fanout",
    )
    fanout.add_arguments(
        scenarios.add_parser("overhead", help="per-stage server latency at 100 listeners"),
        scenario="overhead",
    )
    sessions.add_arguments(
        scenarios.add_parser("sessions", help="M real-time hosts: does the lag stay flat?")
    )
    e2e.add_arguments(
        scenarios.add_parser("e2e", help="embedded engines on real speech: speech end to caption")
    )
    ingest.add_arguments(
        scenarios.add_parser("ingest", help="server CPU per second of audio: base64 vs binary")
    )
    faults.add_arguments(
        scenarios.add_parser(
            "faults", help="a healthy session's latency beside one whose engine misbehaves"
        )
    )
    plot = scenarios.add_parser("plot", help="PNG from reports (fanout, overhead, sessions)")
    plot.add_argument("reports", nargs="+", help="JSON reports")
    plot.add_argument("--out", default="bench.png", help="PNG file (bench.png)")
    script = scenarios.add_parser(
        "script",
        help="print the scripted engine's script a --url server needs "
        "(BABEL_STT=scripted BABEL_SCRIPT_PATH=FILE)",
    )
    script.add_argument("--duration", type=float, default=60.0)
    script.add_argument("--sentence-s", type=float, default=2.0)
    script.add_argument("--partials", type=int, default=3)
    script.add_argument("--chunk-ms", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.scenario in ("fanout", "overhead"):
            from bench import fanout

            fanout.run(args, args.scenario)
        elif args.scenario == "sessions":
            from bench import sessions

            sessions.run(args)
        elif args.scenario == "e2e":
            from bench import e2e

            e2e.run(args)
        elif args.scenario == "ingest":
            from bench import ingest

            ingest.run(args)
        elif args.scenario == "faults":
            from bench import faults

            faults.run(args)
        elif args.scenario == "plot":
            from bench import plot

            plot.plot(args.reports, args.out)
        elif args.scenario == "script":
            from bench.timeline import build

            timeline = build(
                args.duration,
                sentence_s=args.sentence_s,
                partials=args.partials,
                chunk_s=args.chunk_ms / 1000,
            )
            json.dump(timeline.server_script(), sys.stdout, indent=0)
            print()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
