"""The server: one listening socket for HTTP and WebSocket, sessions, shutdown."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from babel_actors.cluster import ClusterSession
from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.errors import ConfigError
from babel_actors.registry import Registry
from babel_actors.server.connection import Connection
from babel_actors.server.guard import Guard
from babel_actors.server.http import serve_connection
from babel_actors.server.routes import Api
from babel_actors.store import SessionRecord, SessionStore, open_store

log = logging.getLogger(__name__)


class Server:
    """A running server, as ``serve`` hands it to ``task_status.started``."""

    def __init__(self, config: Config, registry: Registry, guard: Guard, port: int) -> None:
        self.config = config
        self.registry = registry
        self.guard = guard
        """The access rules and per-client limits, with what they count."""
        self.port = port
        self._shutdown = trio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def shutdown(self) -> None:
        """Start a graceful shutdown: sessions end, connections close, ``serve`` returns."""
        self._shutdown.set()


def open_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket with SO_REUSEADDR (and SO_REUSEPORT, so
    sibling worker processes share the port, when ``reuse_port``); ``ConfigError`` when the
    address cannot be bound (in use, not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def serve(
    config: Config,
    stt: SpeechToText,
    mt: Translator,
    *,
    store: SessionStore | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``Server.shutdown()`` or cancellation.

    Sessions live in ``store`` when given (nodes of a cluster in one process, in
    tests), else in the store ``config`` names (``open_store``).

    ``task_status.started`` receives the ``Server`` once the port accepts connections.
    Shutdown: every session ends (members get ``session_ended`` and a close frame);
    connections get ``config.shutdown_grace_s`` to close, then are cancelled.
    The engines stay open: the caller owns them.
    """
    listener = open_listener(config.host, config.port, reuse_port=config.reuse_port)
    port = listener.getsockname()[1]
    try:
        async with trio.open_nursery() as outer, _store(config, store) as store:
            async with trio.open_nursery() as sessions_nursery:
                registry = Registry(
                    config, stt, mt, sessions_nursery, store, shared_session=_cluster_session
                )
                guard = Guard(config, registry.metrics)
                server = Server(config, registry, guard, port)
                api = Api(registry, guard)
                async with trio.open_nursery() as connections:
                    connections.start_soon(_accept, listener, connections, api)
                    task_status.started(server)
                    await server._shutdown.wait()
                    log.info("shutting down: ending %d sessions", len(registry.live()))
                    trio.lowlevel.notify_closing(listener)
                    listener.close()
                    # Sessions drain first, leaving time to close their connections.
                    drain_s = max(0.0, config.shutdown_grace_s - config.close_timeout_s)
                    registry.finish_all("shutdown", drain_s=min(config.drain_s, drain_s))
                    connections.cancel_scope.deadline = (
                        trio.current_time() + config.shutdown_grace_s
                    )
                    outer.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_s + 1
                sessions_nursery.cancel_scope.cancel()
    finally:
        if listener.fileno() != -1:
            trio.lowlevel.notify_closing(listener)
            listener.close()


def _cluster_session(registry: Registry, record: SessionRecord) -> ClusterSession:
    """The session this node serves for a record of a shared store."""
    return ClusterSession(
        registry.config,
        registry.stt,
        registry.mt,
        record=record,
        store=registry.store,
        stages=registry.stages,
        metrics=registry.metrics,
    )


@asynccontextmanager
async def _store(config: Config, given: SessionStore | None) -> AsyncIterator[SessionStore]:
    if given is not None:
        yield given
        return
    async with open_store(config) as store:
        yield store


async def _accept(listener: socket.socket, nursery: trio.Nursery, api: Api) -> None:
    """Accept connections and hand each to its own task; stops when the listener closes."""
    config = api.registry.config
    while True:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_readable(listener)
            except (trio.ClosedResourceError, OSError):
                return
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("accept failed (%s); pausing", exc)
                await trio.sleep(0.1)
                continue
            if listener.fileno() == -1:
                return
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if config.socket_send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_send_buffer)
        conn = Connection(sock, backlog_limit=config.listener_backlog_bytes)
        nursery.start_soon(_serve_contained, conn, api, address[0])


async def _serve_contained(conn: Connection, api: Api, peer: str) -> None:
    """One connection's failure is logged and ends that connection only; it never
    reaches the accept loop's nursery, where it would take the server down."""
    try:
        await serve_connection(conn, api, peer)
    except Exception:
        log.exception("connection from %s failed", conn.peer)
        conn.close()
