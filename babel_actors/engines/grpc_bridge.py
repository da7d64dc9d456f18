"""grpc.aio under trio: one asyncio event loop in a thread of its own, shared by every
gRPC call of the process, and a bounded hand-off each way per streaming call.

grpc's async API is asyncio-only, and a worker thread per stream collapses at a few
hundred streams. Here trio reaches the loop with ``loop.call_soon_threadsafe`` and the
loop reaches trio with ``TrioToken.run_sync_soon``, and only to wake a side that waits:
a request put while the loop's writer is idle costs one wake-up, a response read
while the trio side waits costs one, and nothing crosses while both sides are busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
import trio
from google.api_core.exceptions import GoogleAPICallError
from grpc._cython import cygrpc

from babel_actors.errors import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class BridgeClosed(EngineError):
    """The bridge thread was shut down under a call."""


class _Signal:
    """Markers that travel in a hand-off between the items."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_EMPTY = _Signal("EMPTY")
_END = _Signal("END")
_HALF_CLOSE = _Signal("HALF_CLOSE")


class _Handoff(Generic[T]):
    """A bounded FIFO between the trio thread and the loop thread, either way round.

    A side that must wait (full or empty) leaves a wake-up; the other side calls it
    once, outside the lock. ``close`` ends it: the taker drains what is left, then
    gets ``_END``; a later ``offer`` returns True and drops the item.
    """

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self._items: deque[T | _Signal] = deque()
        self._capacity = capacity
        self._closed = False
        self._wake_taker: Callable[[], object] | None = None
        self._wake_offerer: Callable[[], object] | None = None

    def offer(self, item: T | _Signal, wake_when_room: Callable[[], object]) -> bool:
        """Append ``item`` and return True, or return False (full) and leave a wake-up."""
        with self._lock:
            if self._closed:
                return True
            if len(self._items) >= self._capacity:
                self._wake_offerer = wake_when_room
                return False
            self._items.append(item)
            wake, self._wake_taker = self._wake_taker, None
        if wake is not None:
            wake()
        return True

    def take(self, wake_when_ready: Callable[[], object]) -> T | _Signal:
        """The next item, ``_END`` once closed and drained, or ``_EMPTY`` (and a wake-up
        left) when there is nothing yet."""
        with self._lock:
            if self._items:
                item = self._items.popleft()
                wake, self._wake_offerer = self._wake_offerer, None
            elif self._closed:
                return _END
            else:
                self._wake_taker = wake_when_ready
                return _EMPTY
        if wake is not None:
            wake()
        return item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            wakes = (self._wake_taker, self._wake_offerer)
            self._wake_taker = self._wake_offerer = None
        for wake in wakes:
            if wake is not None:
                wake()


class AsyncioThread:
    """An asyncio event loop running in a thread of its own, driven from trio.

    Started on first use from within a trio run (the run whose token it keeps), shut
    down by ``aclose``. Every gRPC channel and call of its users lives on this loop.
    """

    def __init__(self, *, name: str = "babel-grpc", cancel_grace_s: float = 2.0) -> None:
        self._name = name
        self._cancel_grace_s = cancel_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _started(self) -> tuple[asyncio.AbstractEventLoop, trio.lowlevel.TrioToken]:
        if self._loop is None or self._token is None:
            # Callbacks queued before run_forever starts simply run first: no handshake.
            self._token = trio.lowlevel.current_trio_token()
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name=self._name, daemon=True
            )
            self._thread.start()
        return self._loop, self._token

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` as a task on the loop and return its result.

        Cancellation: cancels the asyncio task and waits (shielded, at most
        ``cancel_grace_s``) for it to finish, so nothing is left running.
        Error handling: re-raises whatever the task raised.
        """
        task = _LoopTask(self, fn, *args)
        try:
            await task.finished.wait()
        finally:
            if not task.finished.is_set():
                await task.cancel_and_wait()
        result: T = task.outcome()
        return result

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        start_call: Callable[[], Awaitable[Any]],
        *,
        window: int = 16,
    ) -> AsyncIterator[BridgedStream[Any, Any]]:
        """A bidirectional streaming call, started by ``start_call()`` on the loop.

        ``start_call`` returns a grpc.aio (or google.api_core wrapped) stream-stream
        call with ``write``/``read``/``done_writing``. At most ``window`` requests and
        ``window`` responses wait in each direction.
        Cancellation: leaving the block cancels the call and waits (shielded, at most
        ``cancel_grace_s``) until its task on the loop has ended.
        """
        loop, token = self._started()
        stream: BridgedStream[Any, Any] = BridgedStream(loop, token, window)
        task = _LoopTask(self, _pump, start_call, stream)
        stream._task = task
        try:
            yield stream
        finally:
            await task.cancel_and_wait()

    async def tasks_left(self, grace_s: float) -> int:
        """How many tasks still run on the loop after waiting up to ``grace_s`` for
        them to end (0 when all is quiet); for tests and the bench."""
        if not self.running:
            return 0
        return await self.run(_tasks_left, grace_s)

    async def aclose(self) -> None:
        """Cancel what still runs on the loop, stop it and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            with trio.CancelScope(shield=True):
                with contextlib.suppress(BridgeClosed):
                    await self.run(_cancel_all_tasks)
                loop.call_soon_threadsafe(loop.stop)
                await trio.to_thread.run_sync(thread.join)
        loop.close()
        self._loop = self._thread = self._token = None


class _LoopTask:
    """A trio handle on one asyncio task of the bridge's loop."""

    def __init__(self, bridge: AsyncioThread, fn: Callable[..., Awaitable[Any]], *args: Any):
        self._grace = bridge._cancel_grace_s
        self._loop, self._token = bridge._started()
        self.finished = trio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._loop.call_soon_threadsafe(self._start, fn, args)

    def _start(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        async def main() -> Any:
            return await fn(*args)

        self._task = self._loop.create_task(main())
        self._task.add_done_callback(self._done)

    def _done(self, _task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.finished.set)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def cancel_and_wait(self) -> None:
        """Cancel the task (queued after its start, so it always exists by then)."""
        if self.finished.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._cancel)
        with trio.CancelScope(shield=True), trio.move_on_after(self._grace) as waited:
            await self.finished.wait()
        if waited.cancelled_caught:
            log.warning("a cancelled gRPC task still runs %s s later", self._grace)

    def outcome(self) -> Any:
        """The finished task's result, or its exception raised here."""
        assert self._task is not None and self._task.done()
        if self._task.cancelled():
            raise BridgeClosed("the gRPC bridge was shut down")
        error = self._task.exception()
        if error is not None:
            raise error
        return self._task.result()


class BridgedStream(Generic[Req, Resp]):
    """The trio side of one streaming call: ``send``, ``done_writing``, ``receive``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken, window: int
    ) -> None:
        self._loop = loop
        self._token = token
        self.requests: _Handoff[Req] = _Handoff(window)
        self.responses: _Handoff[Resp] = _Handoff(window)
        self._task: _LoopTask | None = None

    async def send(self, request: Req | _Signal) -> None:
        """Queue ``request``; blocks while ``window`` requests wait to be written.
        After the call ended, requests are dropped: ``receive`` tells why it ended."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            room = trio.Event()
            if self.requests.offer(request, self._trio_wake(room)):
                return
            await room.wait()

    async def done_writing(self) -> None:
        """Half-close once the queued requests are written: the server then finishes."""
        await self.send(_HALF_CLOSE)

    async def receive(self) -> Resp:
        """The next response. Raises ``trio.EndOfChannel`` when the call ended well,
        and the call's own error (e.g. a ``GoogleAPICallError``) when it did not."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            ready = trio.Event()
            item = self.responses.take(self._trio_wake(ready))
            if item is _END:
                assert self._task is not None
                await self._task.finished.wait()
                self._task.outcome()
                raise trio.EndOfChannel
            if item is not _EMPTY:
                return item  # type: ignore[return-value]
            await ready.wait()

    def _trio_wake(self, event: trio.Event) -> Callable[[], object]:
        token = self._token

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        return wake


def _loop_wake(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
) -> Callable[[], object]:
    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(resolve)

    return wake


async def _pump(start_call: Callable[[], Awaitable[Any]], stream: BridgedStream[Any, Any]) -> None:
    """On the loop: start the call, write requests as they come, hand responses over."""
    loop = asyncio.get_running_loop()
    try:
        call = await start_call()
    except BaseException:
        stream.responses.close()
        stream.requests.close()
        raise
    writer = loop.create_task(_write_requests(call, stream.requests))
    try:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            while True:
                room = loop.create_future()
                if stream.responses.offer(response, _loop_wake(loop, room)):
                    break
                await room
    finally:
        stream.responses.close()
        stream.requests.close()
        call.cancel()
        writer.cancel()
        await asyncio.wait([writer])


async def _write_requests(call: Any, requests: _Handoff[Any]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        ready = loop.create_future()
        item = requests.take(_loop_wake(loop, ready))
        if item is _EMPTY:
            await ready
            continue
        try:
            if item is _END:
                return
            if item is _HALF_CLOSE:
                await call.done_writing()
                return
            if not await _write(call, item):
                return
        except (GoogleAPICallError, grpc.RpcError, asyncio.InvalidStateError):
            # The call is over; the reader gets its status from read().
            return


async def _write(call: Any, request: Any) -> bool:
    """Write one request; False once the call is over.

    grpc.aio's own ``write`` replaces the call's status with INTERNAL "Internal error
    from Core" when the server ends the call while a write is in flight (measured: 22
    of 30 calls ended INVALID_ARGUMENT right after the first request lost their
    status), so a refused config or a denied permission looked like a transient error.
    Sending through the call's Core object keeps the server's status for ``read``.
    """
    raw = getattr(call, "_call", call)  # google.api_core wraps the grpc.aio call
    core = getattr(raw, "_cython_call", None)
    serializer = getattr(raw, "_request_serializer", None)
    sent = getattr(raw, "_metadata_sent", None)
    if core is None or serializer is None or sent is None:
        await call.write(request)
        return True
    if raw.done():
        return False
    await sent.wait()
    try:
        await core.send_serialized_message(serializer(request))
    except cygrpc.InternalError:
        return False
    return True


async def _tasks_left(grace_s: float) -> int:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    if not others:
        return 0
    _done, pending = await asyncio.wait(others, timeout=grace_s)
    return len(pending)


async def _cancel_all_tasks() -> None:
    me = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    await asyncio.get_running_loop().shutdown_asyncgens()
