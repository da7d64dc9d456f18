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

    Order: captions that queued up while one was being delivered go out finals first,
    then only the newest partial per language (``finals_first``), and between two
    partials the actor yields and takes any final that came meanwhile first: under load
    a final waits behind one partial's fan-out at most.
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
            queued = finals_first([rendered, *_waiting(inbox)])
            while queued:
                caption = queued.pop(0)
                reached = deliver(caption)
                if metrics is not None:
                    metrics.delivered(caption.caption, reached)
                if stages is not None:
                    stages.record(caption.caption, trio.current_time())
                if queued and caption.caption.segment.is_partial:
                    # Let a final on its way (its translation, its hand-off) move on,
                    # and take it ahead of the partials left.
                    await trio.lowlevel.checkpoint()
                    queued = finals_first([*queued, *_waiting(inbox)])


def _waiting(inbox: trio.MemoryReceiveChannel[Rendered]) -> list[Rendered]:
    """Every caption already in ``inbox``, without waiting."""
    waiting = []
    while True:
        try:
            waiting.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return waiting


def finals_first(batch: list[Rendered]) -> list[Rendered]:
    """The order to deliver captions that queued up together: every final first, in
    order; then, per language, the newest partial, unless a final of this batch
    overtook it. Older partials would only be replaced on screen at once."""
    finals = [r for r in batch if not r.caption.segment.is_partial]
    if len(finals) == len(batch):
        return batch
    newest_final = max((r.caption.segment.seq_id for r in finals), default=0)
    partials: dict[str, Rendered] = {}
    for r in batch:
        if r.caption.segment.is_partial and r.caption.segment.seq_id > newest_final:
            partials[r.caption.target_lang] = r
    return [*finals, *partials.values()]
