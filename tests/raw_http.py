"""HTTP/1.1 below any client library: requests written by hand (pipelined, malformed,
smuggled) and a strict reader of the server's answers, for the hardening tests and
the fuzzer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio

REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class Answer:
    """One response as it came on the wire."""

    status: int
    headers: dict[str, str]
    """By lower-case name; a repeated header's values joined with ``", "``."""
    body: bytes = field(repr=False)

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


class AnswerReader:
    """Parses responses out of the bytes fed to it, in order. ``head`` tells, for the
    n-th response, whether it answers a HEAD (no body, whatever Content-Length says)."""

    def __init__(self, head: list[bool] | None = None) -> None:
        self.buffer = bytearray()
        self.answers: list[Answer] = []
        self.head = head or []

    def feed(self, data: bytes) -> int:
        """Add ``data``; how many responses it completed."""
        self.buffer += data
        before = len(self.answers)
        while (answer := self._next()) is not None:
            self.answers.append(answer)
        return len(self.answers) - before

    def _next(self) -> Answer | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        code = int(status)
        index = len(self.answers)
        bodiless = (index < len(self.head) and self.head[index]) or code in (101, 204, 304)
        length = 0 if bodiless else int(headers.get("content-length", "0"))
        start = end + 4
        if len(self.buffer) < start + length:
            return None
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        return Answer(code, headers, body)


async def connect_raw(port: int, *, receive_buffer: int | None = None) -> trio.socket.SocketType:
    """A TCP connection to the server; ``receive_buffer`` (SO_RCVBUF) set before it
    connects, so the window it offers stays small."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    return sock


async def send_all(sock: trio.socket.SocketType, data: bytes) -> int:
    """Send ``data``; how much went before the server hung up."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        try:
            sent += await sock.send(view[sent:])
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


async def read_to_end(sock: trio.socket.SocketType, reader: AnswerReader) -> bool:
    """Read answers until the server closes; whether it closed cleanly (FIN) rather
    than with a reset."""
    while True:
        try:
            data = await sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        if not data:
            return True
        reader.feed(data)


async def exchange(
    port: int, data: bytes, head: list[bool] | None = None, *, cuts: tuple[int, ...] = ()
) -> tuple[list[Answer], bool]:
    """Write ``data`` in one go (or in pieces, cut at the offsets ``cuts``), say no
    more (half-close), and read every answer until the server closes. The answers, and
    whether the close was clean."""
    with trio.fail_after(REQUEST_TIMEOUT_S):
        sock = await connect_raw(port)
        with sock:
            reader = AnswerReader(head)
            async with trio.open_nursery() as nursery:
                clean = [False]

                async def read() -> None:
                    clean[0] = await read_to_end(sock, reader)

                nursery.start_soon(read)
                for start, end in zip((0, *cuts), (*cuts, len(data)), strict=True):
                    if start < end and await send_all(sock, data[start:end]) < end - start:
                        break
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server already hung up
            assert not reader.buffer, f"a partial answer: {bytes(reader.buffer[:200])!r}"
            return reader.answers, clean[0]


def unread_by_server(server_port: int, client: trio.socket.SocketType) -> int:
    """Bytes of ``client``'s connection that the server has not read yet: the receive
    queue of the server's end, as the kernel reports it (/proc/net/tcp)."""
    client_port = client.getsockname()[1]
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
                client_port
            ):
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no connection from port {client_port} to {server_port}")


def rss_bytes(pid: str = "self") -> int:
    """Resident memory of a process (this one by default), from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
