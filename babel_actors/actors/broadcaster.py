"""The broadcaster actor: one frame per caption, written to every member with no await."""

from __future__ import annotations

import trio

from babel_actors.audience import Audience
from babel_actors.events import Caption
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import caption_message, message_frame


def deliver(caption: Caption, audience: Audience, history: History) -> int:
    """Serialise ``caption`` once and hand the same frame to every member reading its
    language, in one synchronous loop. Finals are recorded in ``history`` first, in the
    same step, so a joiner sees each final either in history or live, never both.

    Returns how many people (members that are not relays) it was written to.
    """
    frame = message_frame(caption_message(caption))
    if not caption.segment.is_partial:
        history.add(caption, frame)
    elif caption.segment.seq_id < history.last_seq():
        return 0  # a final has overtaken this partial: it would only flicker back
    language = caption.target_lang
    for member in list(audience.by_language.get(language, {}).values()):
        member.send_caption(caption, frame)
    return audience.people(language)


async def run_broadcaster(
    inbox: trio.MemoryReceiveChannel[Caption],
    *,
    audience: Audience,
    history: History,
    stages: StageRecorder | None = None,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan captions out to the session's members.

    Backpressure: none upstream; delivery never waits on a member. Each member queues
    what its socket cannot take yet: partials coalesce (latest wins), finals are kept,
    and a member owing more than its limit is told and disconnected (it can resume with
    ``lastSeq``). So one slow phone never delays the others.
    Cancellation: safe at any await; a caption is delivered to all or none.
    Error handling: members never raise; their failures close only themselves.
    Counts: once each caption has been written to every member, ``stages`` records its
    stage latencies and ``metrics`` counts it (captions out, finals delivered by
    language) with the number of members it reached: once per caption, never per
    member.
    """
    async with inbox:
        task_status.started()
        async for caption in inbox:
            reached = deliver(caption, audience, history)
            if metrics is not None:
                metrics.delivered(caption, reached)
            if stages is not None:
                stages.record(caption, trio.current_time())
