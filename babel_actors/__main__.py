"""``babel-actors serve``: flags and environment -> Config -> trio.run."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from babel_actors import logs
from babel_actors.config import Config
from babel_actors.engines import MT_ENGINES, STT_ENGINES, make_mt, make_stt
from babel_actors.engines.calllog import CallLogTranslator
from babel_actors.errors import BabelError
from babel_actors.server.app import Server, serve
from babel_actors.workers import check_workers, supervise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babel-actors", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the HTTP + WebSocket server")
    run.add_argument("--host", help="address to listen on (BABEL_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (BABEL_PORT, default 8080)")
    run.add_argument(
        "--stt", choices=STT_ENGINES, help="speech engine (BABEL_STT, default whisper)"
    )
    run.add_argument(
        "--mt", choices=MT_ENGINES, help="translation engine (BABEL_MT, default apertium)"
    )
    run.add_argument(
        "--allow-tokenless-hosts",
        action="store_true",
        default=None,
        help="let hosts connect without the hostToken, as old clients do",
    )
    run.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port (BABEL_WORKERS, default 1; more needs Redis)",
    )
    run.add_argument(
        "--redis-url",
        help="share sessions with other processes through Redis (BABEL_REDIS_URL)",
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    run.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        help="json (one object a line), text, or auto: text on a terminal, JSON "
        "otherwise (BABEL_LOG_FORMAT, default auto)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status = 0
    try:
        config = Config.from_env(
            host=args.host,
            port=args.port,
            stt=args.stt,
            mt=args.mt,
            allow_tokenless_hosts=args.allow_tokenless_hosts,
            workers=args.workers,
            redis_url=args.redis_url,
            log_format=args.log_format,
        )
        logs.configure(config.log_format, args.log_level.upper())
        check_workers(config)
        if config.workers > 1:
            status = trio.run(supervise, config, sys.argv[1:] if argv is None else argv)
        else:
            trio.run(_serve_until_signal, config)
    except* BabelError as group:
        for exc in _leaves(group):
            print(f"babel-actors: {exc}", file=sys.stderr)
        status = 2
    return status


def _leaves(group: BaseExceptionGroup[BabelError]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _serve_until_signal(config: Config) -> None:
    stt = make_stt(config)
    mt = make_mt(config, stt)
    if config.mt_call_log:
        mt = CallLogTranslator(mt, config.mt_call_log)
    try:
        # Load a model before accepting anyone, so the first session does not wait.
        load = getattr(stt, "load", None)
        if load is not None:
            await load()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, config, stt, mt)
                pairs = ", ".join(
                    f"{src}->{'/'.join(sorted(mt.targets(src)))}" for src in sorted(mt.sources())
                )
                print(
                    f"babel-actors serving on {server.url}\n"
                    f"  speech: {stt.name} ({', '.join(sorted(stt.languages()))})\n"
                    f"  translation: {mt.name} ({pairs})",
                    flush=True,
                )
                async for signum in signals:
                    print(f"{signal.Signals(signum).name}: shutting down", flush=True)
                    server.shutdown()
                    break
    finally:
        with trio.CancelScope(shield=True):
            await stt.aclose()
            await mt.aclose()


if __name__ == "__main__":
    sys.exit(main())
