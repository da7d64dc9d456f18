"""The broadcaster actor: hands each rendered caption to the room, which writes its one
frame to every reader of the language with no await."""

from __future__ import annotations

from collections.abc import Callable

import trio

from babel_actors.metrics import Metrics
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import Rendered


async def run_broadcaster(
    inbox: trio.MemoryReceiveChannel[Rendered],
    *,
    deliver: Callable[[Rendered], int],
    stages: StageRecorder | None = None,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan captions out: ``deliver`` (``Room.deliver``, or a cluster owner's relay)
    writes one caption to every member reading its language and returns how many
    people it reached.

    Backpressure: none upstream; delivery never waits on a member. Each member queues
    what its socket cannot take yet: partials coalesce (latest wins), finals are kept,
    and a member owing more than its limit is told and disconnected (it can resume with
    ``lastSeq``). So one slow phone never delays the others.
    Draining: returns once ``inbox`` ends and everything in it was delivered.
    Cancellation: safe at any await; a caption is delivered to all or none.
    Error handling: members never raise; their failures close only themselves.
    Counts: once each caption has been written to every member, ``stages`` records its
    stage latencies and ``metrics`` counts it (captions out, finals delivered by
    language) with the number of people it reached: once per caption, never per member.
    """
    async with inbox:
        task_status.started()
        async for rendered in inbox:
            reached = deliver(rendered)
            if metrics is not None:
                metrics.delivered(rendered.caption, reached)
            if stages is not None:
                stages.record(rendered.caption, trio.current_time())
