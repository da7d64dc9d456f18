"""A session's recent finals, with their frames per language, for resume and catch-up."""

from __future__ import annotations

from collections import OrderedDict

from babel_actors.events import Caption, Segment

_Rendered = tuple[Caption, bytes]


class History:
    """The last ``size`` finals, oldest first, each with a frame per language it was
    rendered in. ``lastSeq`` resume and late joiners read it; only the broadcaster and
    catch-up write it, each without awaiting, so a reader sees a consistent state."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[Segment, dict[str, _Rendered]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._entries

    def add(self, caption: Caption, frame: bytes) -> None:
        segment = caption.segment
        entry = self._entries.get(segment.seq_id)
        if entry is None:
            entry = self._entries[segment.seq_id] = (segment, {})
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        entry[1][caption.target_lang] = (caption, frame)

    def missing(self, language: str, after: int, limit: int) -> list[Segment]:
        """Finals after seqId ``after`` (the last ``limit``) with no frame in ``language``."""
        return [seg for seg, frames in self._tail(after, limit) if language not in frames]

    def captions(self, language: str, after: int, limit: int) -> list[_Rendered]:
        """Captions in ``language``, with their frames, of the finals after seqId
        ``after`` (the last ``limit``)."""
        return [frames[language] for _, frames in self._tail(after, limit) if language in frames]

    def finals(self, after: int, limit: int) -> list[tuple[Segment, dict[str, _Rendered]]]:
        """The finals after seqId ``after`` (the last ``limit``), each with its
        renderings by language, oldest first."""
        return self._tail(after, limit)

    def last_seq(self) -> int:
        return next(reversed(self._entries), 0)

    def texts(self, limit: int) -> list[str]:
        """Source text of the last ``limit`` finals, oldest first."""
        return [seg.text for seg, _ in list(self._entries.values())[-limit:]] if limit else []

    def _tail(self, after: int, limit: int) -> list[tuple[Segment, dict[str, _Rendered]]]:
        tail = [entry for seq, entry in self._entries.items() if seq > after]
        return tail[-limit:] if limit else []
