"""One client socket: reads through trio, writes without awaiting.

``write`` is synchronous: it tries a non-blocking ``send`` at once and queues what the
kernel would not take, in order, for a drain task. So the broadcaster can hand one
frame to thousands of connections in one loop with no await, and a slow reader only
grows its own backlog.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Callable

import trio

from babel_actors.counters import Tally

log = logging.getLogger(__name__)

_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class Connection:
    """A connected, non-blocking socket with an ordered, bounded send backlog.

    Backpressure: a frame that the socket cannot take waits in the backlog. Frames
    written as ``droppable`` (partials) coalesce: a newer one replaces any older one
    not yet started, and is counted in ``coalesced`` (the connection's own tally until
    its owner hands it the server's, when the peer joins a session). When the backlog
    would pass ``backlog_limit`` bytes and the owner has set ``on_overflow``, the
    connection is marked ``overflowed`` and ``on_overflow`` is called once: the owner
    decides what to tell the peer (``write_urgent``); every later ``write`` is dropped,
    so the backlog stays bounded however long the peer takes to go. (HTTP sets none:
    it writes one answer at a time and waits for it to be taken.)
    Cancellation: ``drain`` and ``receive`` are plain trio waits on the socket.
    Error handling: a peer that vanished marks the connection ``broken``; writes to it
    are dropped silently and ``receive`` returns ``b""``.
    Closing: ``shut`` closes without losing what the peer has yet to read (see there).
    """

    def __init__(self, sock: socket.socket, *, backlog_limit: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = _peer(sock)
        self.backlog_limit = backlog_limit
        self.backlog: deque[tuple[memoryview, bool]] = deque()
        self.backlog_bytes = 0
        self.broken = False
        self.eof = False
        """The peer has closed its side: ``receive`` returned ``b""``."""
        self.overflowed = False
        self.closed = False
        self.coalesced = Tally()
        self._head_started = False
        self._has_backlog = trio.Event()
        self._emptied = trio.Event()
        self._emptied.set()
        self.on_overflow: Callable[[], None] | None = None

    def write(self, data: bytes, *, droppable: bool = False) -> None:
        """Send ``data`` now, or queue it; never blocks, never raises. Once the
        connection has overflowed, drops ``data``: the peer is being closed, and what
        it goes on asking for (pongs, answers) must not grow the backlog past the
        limit."""
        if self.overflowed:
            return
        self._write(data, droppable)

    def _write(self, data: bytes, droppable: bool = False) -> None:
        if self.broken or self.closed:
            return
        if not self.backlog:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except _GONE:
                self._break()
                return
            except OSError as exc:
                log.debug("send to %s failed: %s", self.peer, exc)
                self._break()
                return
            if sent == len(data):
                return
            self._head_started = sent > 0
            self._enqueue(memoryview(data)[sent:], droppable and sent == 0)
            return
        if droppable:
            self._drop_queued_partials()
        self._enqueue(memoryview(data), droppable)

    def write_urgent(self, data: bytes) -> None:
        """Queue ``data`` past the byte limit (a last error or close frame), dropping
        every queued frame that has not started yet."""
        if self.backlog:
            head = self.backlog[0] if self._head_started else None
            self.backlog.clear()
            self.backlog_bytes = 0
            if head is not None:
                self.backlog.append(head)
                self.backlog_bytes = len(head[0])
            else:
                self._emptied.set()
        limit, self.backlog_limit = self.backlog_limit, 1 << 62
        self._write(data)
        self.backlog_limit = limit

    async def drain(self) -> None:
        """Run for the connection's life: send the backlog whenever there is one."""
        while not (self.broken or self.closed):
            await self._has_backlog.wait()
            while self.backlog and not (self.broken or self.closed):
                await trio.lowlevel.wait_writable(self.sock)
                self._send_backlog()
            self._has_backlog = trio.Event()

    async def sent(self) -> None:
        """Wait until the kernel has taken the whole backlog (or the peer is gone)."""
        await self._emptied.wait()

    async def flushed(self, timeout_s: float) -> None:
        """Wait until ``drain`` has sent the backlog (or the peer is gone), at most
        ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            await self._emptied.wait()

    async def shut(self, timeout_s: float) -> None:
        """Close cleanly within ``timeout_s``: send the backlog, end our side (FIN),
        then read and drop what the peer still sends until it closes its side too;
        then close, however that went.

        Closing a socket that holds unread data resets the connection, and a reset
        destroys what the peer has not read yet: the answer to a bad request, an
        ``error`` and a close frame to a host still streaming. Reading on costs
        nothing kept: each read is dropped.
        """
        try:
            with trio.move_on_after(timeout_s):
                await self._emptied.wait()
                if self.broken or self.closed or self.eof:
                    return
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    return
                while await self.receive():
                    pass
        finally:
            self.close()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes from the peer; ``b""`` at end of stream or on error."""
        while not self.broken:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                self._break()
                return b""
            if not data:
                self.eof = True
            await trio.lowlevel.checkpoint()
            return data
        return b""

    def close(self) -> None:
        """Close the socket now (after ``flushed`` for a clean close)."""
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        self._has_backlog.set()
        self._emptied.set()

    def _enqueue(self, view: memoryview, droppable: bool) -> None:
        self.backlog.append((view, droppable))
        self.backlog_bytes += len(view)
        self._has_backlog.set()
        if self._emptied.is_set():
            self._emptied = trio.Event()
        if (
            self.backlog_bytes > self.backlog_limit
            and not self.overflowed
            and self.on_overflow is not None
        ):
            self.overflowed = True
            self.on_overflow()

    def _drop_queued_partials(self) -> None:
        start = 1 if self._head_started else 0
        kept: deque[tuple[memoryview, bool]] = deque()
        for index, item in enumerate(self.backlog):
            if index >= start and item[1]:
                self.backlog_bytes -= len(item[0])
                self.coalesced.count += 1
            else:
                kept.append(item)
        self.backlog = kept

    def _send_backlog(self) -> None:
        while self.backlog:
            view = self.backlog[0][0]
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                self._break()
                return
            self.backlog_bytes -= sent
            if sent < len(view):
                self.backlog[0] = (view[sent:], False)
                self._head_started = True
                return
            self.backlog.popleft()
            self._head_started = False
        self._emptied.set()

    def _break(self) -> None:
        self.broken = True
        self.backlog.clear()
        self.backlog_bytes = 0
        self._has_backlog.set()
        self._emptied.set()


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError as exc:
        return f"?({errno.errorcode.get(exc.errno or 0, exc)})"
