"""Catch-up arithmetic for a joiner: which finals it missed, and in what order.

Pure functions over the store's log (``StoredFinal``: payloads) and a node's
``History`` (captions with their frames): no trio, no I/O.
"""

from __future__ import annotations

import json
import logging

from babel_actors.events import Caption, Segment
from babel_actors.history import History
from babel_actors.store.base import StoredFinal
from babel_actors.wire.server import text_frame

log = logging.getLogger(__name__)

Rendered = tuple[Caption, bytes]
"""A caption and its ready frame."""
Renderings = dict[str, Rendered | bytes]
"""One final's renderings by language: (caption, frame) from history, or the log's
payload."""


def window(
    stored: list[StoredFinal], history: History, after: int, limit: int
) -> dict[int, Renderings]:
    """The last ``limit`` finals after seqId ``after`` known in the log or the history,
    oldest first, each with its renderings."""
    finals: dict[int, Renderings] = {}
    for final in stored:
        finals.setdefault(final.seq, {})[final.lang] = final.payload
    for segment, frames in history.finals(after, history.size):
        finals.setdefault(segment.seq_id, {}).update(frames)
    keep = sorted(finals)[-limit:] if limit else []
    return {seq: finals[seq] for seq in keep}


def missing(
    finals: dict[int, Renderings], language: str, rendered: dict[int, Rendered]
) -> list[Segment]:
    """The segments of ``finals`` with no rendering in ``language`` yet."""
    found = []
    for seq, renderings in finals.items():
        if language in renderings or seq in rendered:
            continue
        caption = as_caption(next(iter(renderings.values())))
        if caption is not None:
            found.append(caption.segment)
    return found


def captions(
    finals: dict[int, Renderings], language: str, rendered: dict[int, Rendered]
) -> list[Rendered]:
    """``finals`` in ``language``, oldest first, with their frames."""
    result = []
    for seq, renderings in finals.items():
        found = renderings.get(language)
        if found is None:
            if seq in rendered:
                result.append(rendered[seq])
        elif isinstance(found, bytes):
            caption = caption_from(found)
            if caption is not None:
                result.append((caption, text_frame(found)))
        else:
            result.append(found)
    return result


def frame_payload(frame: bytes) -> bytes:
    """The payload of an unmasked frame built by ``wire.server.text_frame``."""
    size = frame[1] & 0x7F
    return frame[2:] if size < 126 else frame[4:] if size == 126 else frame[10:]


def as_caption(rendering: Rendered | bytes) -> Caption | None:
    return caption_from(rendering) if isinstance(rendering, bytes) else rendering[0]


def caption_from(payload: bytes) -> Caption | None:
    """A ``translation`` message back into the caption it was made from."""
    try:
        message = json.loads(payload)
        segment = Segment(
            seq_id=int(message["seqId"]),
            text=str(message["originalText"]),
            is_partial=bool(message["isPartial"]),
            source_lang=str(message["sourceLang"]),
            recognized_at=0.0,
            wall_ms=int(message["timestamp"]),
        )
        return Caption(
            segment,
            str(message["targetLang"]),
            str(message["translatedText"]),
            bool(message["hasTranslation"]),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("dropping a malformed caption from the bus")
        return None
