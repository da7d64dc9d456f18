"""The broadcaster actor: one frame per caption, written to every member with no await."""

from __future__ import annotations

import trio

from babel_actors.audience import Audience
from babel_actors.events import Caption
from babel_actors.history import History
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import caption_message, message_frame


def deliver(caption: Caption, audience: Audience, history: History) -> bytes:
    """Serialise ``caption`` once and hand the same frame to every member reading its
    language, in one synchronous loop. Finals are recorded in ``history`` first, in the
    same step, so a joiner sees each final either in history or live, never both."""
    frame = message_frame(caption_message(caption))
    if not caption.segment.is_partial:
        history.add(caption, frame)
    elif caption.segment.seq_id < history.last_seq():
        return frame  # a final has overtaken this partial: it would only flicker back
    for member in list(audience.by_language.get(caption.target_lang, {}).values()):
        member.send_caption(caption, frame)
    return frame


async def run_broadcaster(
    inbox: trio.MemoryReceiveChannel[Caption],
    *,
    audience: Audience,
    history: History,
    stages: StageRecorder | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan captions out to the session's members.

    Backpressure: none upstream; delivery never waits on a member. Each member queues
    what its socket cannot take yet: partials coalesce (latest wins), finals are kept,
    and a member owing more than its limit is told and disconnected (it can resume with
    ``lastSeq``). So one slow phone never delays the others.
    Cancellation: safe at any await; a caption is delivered to all or none.
    Error handling: members never raise; their failures close only themselves.
    ``stages``, when given, records each caption's stage latencies once it has been
    written to every member (once per caption, never per member).
    """
    async with inbox:
        task_status.started()
        async for caption in inbox:
            deliver(caption, audience, history)
            if stages is not None:
                stages.record(caption, trio.current_time())
