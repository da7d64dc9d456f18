"""A load-generator process: many WebSocket peers on raw non-blocking sockets.

One epoll loop holds thousands of listeners (and any hosts) with no task, coroutine or
thread per peer: a peer is a socket and a few attributes. Per message a listener pays
one ``recvmsg``, a frame header parse and a dict lookup: a caption's frame is the same
bytes for every listener of its language, so its JSON is decoded once per process.

Timestamps, both on this machine's wall clock (``time.time()``, CLOCK_REALTIME):
- ``kts``: when the data reached the listener's socket, from the kernel
  (``SO_TIMESTAMPNS``): what the server achieved, whatever this process was doing.
- ``rts``: when this process read it: what a client busy with others would see.

The parent drives a worker through a pipe: ``connected`` -> ("go", t0) -> ``streamed``
-> ("finish", ...) -> ``result``.
"""

from __future__ import annotations

import errno
import heapq
import json
import os
import resource
import select
import socket
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.frames import check_handshake, close_frame, handshake

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's value; Python's socket module does not name it."""
_ANCILLARY = socket.CMSG_SPACE(16)
_RECV_BYTES = 32768
"""Small enough that CPython allocates it from its heap, not by mmap, per read."""
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_TS = struct.Struct("qq")

CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)


@dataclass
class PeerSpec:
    """One WebSocket to open."""

    role: str
    """``host`` or ``listener``."""
    session: int
    """Index of its session in the run."""
    path: str
    """``/translate?...``."""
    lang: str
    address: int = 0
    """Index into ``WorkerSpec.addresses``."""
    offset_s: float = 0.0
    """A host's first chunk goes this long after ``go`` (spreads hosts over a chunk)."""


@dataclass
class HostPlan:
    """What every host of the worker sends once told to go."""

    init: bytes
    """A ready ``init`` frame, sent once the host's session is ready."""
    frames: list[bytes]
    """Ready frames, one per chunk (the same object may repeat)."""
    chunk_s: float
    paced: bool = True
    """Send chunk ``c`` at ``go + offset + c * chunk_s``; else as fast as the socket
    takes them."""
    tail: list[bytes] = field(default_factory=list)
    """Frames after the last chunk (``audio_end``, ``ping``)."""
    wait_pong: bool = False
    """A host is done when its ``pong`` arrives (the server has parsed everything)."""


@dataclass
class WorkerSpec:
    addresses: list[tuple[str, int]]
    peers: list[PeerSpec]
    line_of_text: dict[tuple[str, bool], int]
    """``(originalText, isPartial)`` -> scripted line; empty when not scripted."""
    plan: HostPlan | None = None
    connect_batch: int = 256
    connect_timeout_s: float = 120.0
    cpus: set[int] | None = None
    """Run on these CPUs only (``--pin``)."""


class Peer:
    __slots__ = (
        "accept",
        "buf",
        "chunk",
        "close_code",
        "done",
        "error",
        "index",
        "joined",
        "last_seen",
        "max_line",
        "pending",
        "pong_at",
        "request",
        "sent",
        "sock",
        "spec",
        "state",
        "tail",
        "want_line",
    )

    def __init__(self, index: int, spec: PeerSpec) -> None:
        self.index = index
        self.spec = spec
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.buf = b""
        self.request = b""
        self.accept = b""
        self.joined = False
        self.close_code: int | str | None = None
        self.error = ""
        self.want_line = -2
        self.last_seen = False
        self.max_line = -1
        self.chunk = 0
        self.pending: memoryview | None = None
        self.sent = array("d")
        self.tail: deque[bytes] = deque()
        self.done = False
        self.pong_at = 0.0


def main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    Worker(conn, spec).run()


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.plan = spec.plan
        self.peers = [Peer(i, s) for i, s in enumerate(spec.peers)]
        self.hosts = [p for p in self.peers if p.spec.role == "host"]
        self.by_fd: dict[int, Peer] = {}
        self.poll = select.epoll()
        self.poll.register(conn.fileno(), _EPOLLIN)
        self.line_of_text = spec.line_of_text
        self.key_of: dict[bytes, int] = {}
        self.keys: list[tuple[int, bool, str, int, str, str]] = []
        self.key_line = array("i")
        self.r_peer = array("i")
        self.r_key = array("i")
        self.r_kts = array("d")
        self.r_rts = array("d")
        self.errors: list[str] = []
        self.closes: dict[str, int] = {}
        self.t0 = 0.0
        self.schedule: list[tuple[float, int]] = []
        self.streaming = False
        self.streamed_sent = False
        self.finish_at = 0.0
        self.finishing = False
        self.awaiting = -1
        """Peers still waiting for their session's last line; -1: wait for the deadline."""
        self.hosts_left = len(self.hosts)
        self.stop = False
        self.cpu_marks: dict[str, float] = {}

    # --- driving -----------------------------------------------------------

    def run(self) -> None:
        self._mark("start")
        self._connect_all()
        self._mark("connected")
        self.conn.send(("connected", self._connect_report()))
        while not self.stop:
            self._step(self._timeout())
            if self.streaming and not self.streamed_sent and self.hosts_left <= 0:
                self.streamed_sent = True
                self._mark("streamed")
                self.conn.send(("streamed", {"hosts": len(self.hosts)}))
            if self.finishing and (self.awaiting == 0 or time.time() >= self.finish_at):
                break
        self._mark("finished")
        self.conn.send(("result", self._result()))
        # Hold every connection until all workers have reported: a host closing now
        # would end its session under listeners still being read elsewhere.
        while not self.stop:
            try:
                if self.conn.recv()[0] == "stop":
                    break
            except EOFError:
                break
        for peer in self.peers:
            self._close(peer, None, polite=True)

    def _mark(self, name: str) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_marks[name] = usage.ru_utime + usage.ru_stime
        self.cpu_marks[name + "_wall"] = time.time()

    def _timeout(self) -> float:
        timeout = 0.2
        if self.schedule:
            timeout = min(timeout, max(0.0, self.schedule[0][0] - time.time()))
        if self.finishing:
            timeout = min(timeout, max(0.0, self.finish_at - time.time()))
        return timeout

    def _step(self, timeout: float) -> None:
        for fd, events in self.poll.poll(timeout):
            peer = self.by_fd.get(fd)
            if peer is None:
                self._command()
                continue
            if events & _EPOLLOUT:
                self._writable(peer)
            if events & ~_EPOLLOUT and peer.state != CLOSED:
                self._readable(peer)
        if self.schedule:
            now = time.time()
            while self.schedule and self.schedule[0][0] <= now:
                _, index = heapq.heappop(self.schedule)
                self._pump(self.peers[index])

    def _command(self) -> None:
        if not self.conn.poll():
            return
        message = self.conn.recv()
        if message[0] == "go":
            self.t0 = message[1]
            self._go()
        elif message[0] == "finish":
            last_lines: dict[int, int] | None = message[1]
            self.finish_at = time.time() + message[2]
            self.finishing = True
            if last_lines is not None:
                self.awaiting = 0
                for peer in self.peers:
                    peer.want_line = last_lines.get(peer.spec.session, -2)
                    if peer.want_line == -2 or peer.state == CLOSED:
                        continue
                    if peer.max_line >= peer.want_line:
                        peer.last_seen = True
                    else:
                        self.awaiting += 1
        elif message[0] == "stop":
            self.stop = True

    # --- connecting ----------------------------------------------------------

    def _connect_all(self) -> None:
        waiting = deque(self.peers)
        active = 0
        deadline = time.time() + self.spec.connect_timeout_s
        while (waiting or active) and time.time() < deadline:
            while waiting and active < self.spec.connect_batch:
                self._start_connect(waiting.popleft())
                active += 1
            self._step(0.05)
            active = sum(1 for p in self.peers if p.sock is not None and _connecting(p))
            while self.conn.poll():
                self._command()
        for peer in self.peers:
            if not peer.joined and peer.state != CLOSED:
                self._fail(peer, "timed out joining")

    def _start_connect(self, peer: Peer) -> None:
        host, port = self.spec.addresses[peer.spec.address]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass
        peer.sock = sock
        peer.request, peer.accept = handshake(host, port, peer.spec.path)
        self.by_fd[sock.fileno()] = peer
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(peer, f"connect: {os.strerror(err)}")
            return
        self.poll.register(sock, _EPOLLOUT)

    def _connect_report(self) -> dict[str, Any]:
        joined = sum(p.joined for p in self.peers)
        return {
            "joined": joined,
            "failed": len(self.peers) - joined,
            "errors": self.errors[:10],
            "cpu_s": self.cpu_marks["connected"] - self.cpu_marks["start"],
        }

    # --- reading ---------------------------------------------------------------

    def _readable(self, peer: Peer) -> None:
        sock = peer.sock
        assert sock is not None
        try:
            data, ancillary, _, _ = sock.recvmsg(_RECV_BYTES, _ANCILLARY)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(peer, f"error: {exc.strerror}")
            return
        rts = time.time()
        if not data:
            self._close(peer, "eof")
            return
        if ancillary:
            seconds, nanos = _TS.unpack_from(ancillary[0][2])
            kts = seconds + nanos * 1e-9
        else:
            kts = rts
        if peer.state == HANDSHAKE:
            data = self._handshake(peer, data)
            if not data:
                return
        buf = peer.buf + data if peer.buf else data
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[start:end]
            pos = end
            if opcode == 0x1:
                key = self.key_of.get(payload)
                if key is None:
                    key = self._decode(peer, payload)
                    if key < 0:
                        continue
                self.r_peer.append(peer.index)
                self.r_key.append(key)
                self.r_kts.append(kts)
                self.r_rts.append(rts)
                line = self.key_line[key]
                if line > peer.max_line:
                    peer.max_line = line
                    if line == peer.want_line:
                        peer.last_seen = True
                        self.awaiting -= 1
            elif opcode == 0x8:
                code = (payload[0] << 8 | payload[1]) if len(payload) >= 2 else 1005
                self._close(peer, code)
                return
        peer.buf = buf[pos:] if pos < size else b""

    def _handshake(self, peer: Peer, data: bytes) -> bytes:
        buf = peer.buf + data
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            peer.buf = buf
            return b""
        peer.buf = b""
        problem = check_handshake(head, peer.accept)
        if problem:
            self._fail(peer, problem)
            return b""
        peer.state = OPEN
        return rest

    def _decode(self, peer: Peer, payload: bytes) -> int:
        """Decode a message not seen before; cache captions (the same bytes reach every
        listener of a language). Control messages are handled here, per peer."""
        try:
            message = json.loads(payload)
        except ValueError:
            self._note(f"bad JSON: {payload[:60]!r}")
            return -1
        kind = message.get("type")
        if kind == "translation":
            original = message.get("originalText", "")
            partial = bool(message.get("isPartial"))
            line = self.line_of_text.get((original, partial), -1)
            key = len(self.keys)
            self.keys.append(
                (
                    line,
                    partial,
                    message.get("targetLang", ""),
                    int(message.get("seqId", -1)),
                    original,
                    message.get("translatedText", ""),
                )
            )
            self.key_line.append(line)
            self.key_of[payload] = key
            return key
        if kind in ("session_joined", "session_ready"):
            # A server may answer ``init`` with another ``session_ready``: init once.
            if not peer.joined and peer.spec.role == "host" and self.plan is not None:
                self._write(peer, self.plan.init)
            peer.joined = True
        elif kind == "pong":
            peer.pong_at = time.time()
            plan = self.plan
            if plan is not None and plan.wait_pong and peer.chunk >= len(plan.frames):
                self._done(peer)
        elif kind == "error":
            self._note(f"{peer.spec.role}: error {message.get('code')}: {message.get('message')}")
        elif kind == "session_ended":
            self._note(f"{peer.spec.role}: session_ended ({message.get('reason')})")
        return -1

    # --- hosts -----------------------------------------------------------------

    def _go(self) -> None:
        self._mark("go")
        self.streaming = True
        for host in self.hosts:
            if host.state != OPEN:
                self._done(host)
                continue
            heapq.heappush(self.schedule, (self.t0 + host.spec.offset_s, host.index))

    def _pump(self, host: Peer) -> None:
        """Send what is due to ``host``; reschedule it for its next chunk."""
        plan = self.plan
        if plan is None or host.state != OPEN:
            self._done(host)
            return
        frames = plan.frames
        now = time.time()
        while host.pending is None and host.chunk < len(frames):
            due = self.t0 + host.spec.offset_s + host.chunk * plan.chunk_s
            if plan.paced and due > now:
                heapq.heappush(self.schedule, (due, host.index))
                return
            host.chunk += 1
            if not self._write(host, frames[host.chunk - 1]):
                return
            host.sent.append(time.time())
            if host.chunk == len(frames):
                host.tail.extend(plan.tail)
        while host.pending is None and host.tail:
            if not self._write(host, host.tail.popleft()):
                return
        if host.pending is None and host.chunk == len(frames) and not host.tail:
            if not plan.wait_pong or host.pong_at:
                self._done(host)

    def _done(self, peer: Peer) -> None:
        if not peer.done and peer.spec.role == "host":
            self.hosts_left -= 1
        peer.done = True

    def _write(self, peer: Peer, frame: bytes) -> bool:
        """Write ``frame`` now, or keep the rest for when the socket is writable.
        True when all of it went."""
        sock = peer.sock
        assert sock is not None
        try:
            sent = sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(peer, f"error: {exc.strerror}")
            return False
        if sent == len(frame):
            return True
        peer.pending = memoryview(frame)[sent:]
        self.poll.modify(sock, _EPOLLIN | _EPOLLOUT)
        return False

    def _writable(self, peer: Peer) -> None:
        sock = peer.sock
        assert sock is not None
        if peer.state == CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(peer, f"connect: {os.strerror(err)}")
                return
            peer.state = HANDSHAKE
            self.poll.modify(sock, _EPOLLIN)
            self._write(peer, peer.request)
            return
        pending = peer.pending
        if pending is None:
            self.poll.modify(sock, _EPOLLIN)
            return
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(peer, f"error: {exc.strerror}")
            return
        if sent < len(pending):
            peer.pending = pending[sent:]
            return
        peer.pending = None
        self.poll.modify(sock, _EPOLLIN)
        if peer.spec.role == "host" and self.streaming:
            if peer.chunk and len(peer.sent) < peer.chunk:
                peer.sent.append(time.time())
                if self.plan is not None and peer.chunk == len(self.plan.frames):
                    peer.tail.extend(self.plan.tail)
            self._pump(peer)

    # --- closing -----------------------------------------------------------------

    def _fail(self, peer: Peer, why: str) -> None:
        peer.error = why
        self._note(f"{peer.spec.role}: {why}")
        self._close(peer, "failed")

    def _close(self, peer: Peer, why: int | str | None, *, polite: bool = False) -> None:
        if peer.state == CLOSED:
            return
        if why is not None:
            peer.close_code = why
            self.closes[str(why)] = self.closes.get(str(why), 0) + 1
        peer.state = CLOSED
        self._done(peer)
        if self.awaiting > 0 and peer.want_line != -2 and not peer.last_seen:
            self.awaiting -= 1
        sock = peer.sock
        if sock is None:
            return
        if polite:
            try:
                sock.send(close_frame())
            except OSError:
                pass
        self.by_fd.pop(sock.fileno(), None)
        try:
            self.poll.unregister(sock)
        except (OSError, ValueError):
            pass
        sock.close()

    def _note(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)

    # --- reporting -----------------------------------------------------------------

    def _result(self) -> dict[str, Any]:
        marks = self.cpu_marks
        go = marks.get("go", marks["connected"])
        go_wall = marks.get("go_wall", marks["connected_wall"])
        return {
            "peers": [
                {
                    "role": p.spec.role,
                    "session": p.spec.session,
                    "lang": p.spec.lang,
                    "offset_s": p.spec.offset_s,
                    "joined": p.joined,
                    "closed": p.close_code,
                    "error": p.error,
                    "last_seen": p.last_seen,
                }
                for p in self.peers
            ],
            "receipts": {
                "peer": self.r_peer.tobytes(),
                "key": self.r_key.tobytes(),
                "kts": self.r_kts.tobytes(),
                "rts": self.r_rts.tobytes(),
            },
            "keys": self.keys,
            "sent": {h.index: h.sent.tobytes() for h in self.hosts},
            "pongs": {h.index: h.pong_at for h in self.hosts},
            "errors": self.errors,
            "closes": self.closes,
            "cpu": {
                "connect_s": marks["connected"] - marks["start"],
                "run_s": marks["finished"] - go,
                "run_wall_s": marks["finished_wall"] - go_wall,
            },
        }


def _connecting(peer: Peer) -> bool:
    return peer.state in (CONNECTING, HANDSHAKE) or (peer.state == OPEN and not peer.joined)
