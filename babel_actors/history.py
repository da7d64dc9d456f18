"""A session's recent finals, each with its renderings by language, for catch-up."""

from __future__ import annotations

from babel_actors.events import Segment
from babel_actors.wire.server import Rendered


class History:
    """The last ``size`` finals in seqId order, each with a ``Rendered`` per language
    it was translated into so far.

    A final enters when the translator takes it up (``admit``, before any language is
    done) or when a rendering of it arrives (``add``: from the renderer, or from
    another node); renderings are added as they are made. Nothing here awaits, so a
    reader sees a consistent state between two checkpoints.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[int, tuple[Segment, dict[str, Rendered]]] = {}
        self.dropped = 0
        """The highest seqId of a final it let go of (aged out, or older than
        everything kept when it arrived); 0 when none. Everything kept is newer."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._entries

    def admit(self, segment: Segment) -> None:
        """Keep the final ``segment``, with no rendering yet."""
        self._entry(segment)

    def add(self, rendered: Rendered) -> None:
        """Keep ``rendered``, the final's rendering in its language."""
        caption = rendered.caption
        self._entry(caption.segment)[caption.target_lang] = rendered

    def rendering(self, seq_id: int, language: str) -> Rendered | None:
        entry = self._entries.get(seq_id)
        return None if entry is None else entry[1].get(language)

    def missing(self, language: str, after: int, limit: int) -> list[Segment]:
        """Finals after seqId ``after`` (the last ``limit``) not yet in ``language``."""
        return [seg for seg, done in self._tail(after, limit) if language not in done]

    def rendered(self, language: str, after: int, limit: int) -> list[Rendered]:
        """The renderings in ``language`` of the finals after seqId ``after`` (the
        last ``limit``), oldest first."""
        return [done[language] for _, done in self._tail(after, limit) if language in done]

    def last_seq(self) -> int:
        return next(reversed(self._entries), 0)

    def first_seq(self) -> int:
        """The oldest seqId kept; 0 when empty."""
        return next(iter(self._entries), 0)

    def resumed_from(self, last_seq: int) -> int:
        """Where a resume after ``last_seq`` really starts: ``last_seq`` when every
        final after it is still kept; when some of them were let go, the seqId just
        before the oldest final kept (just after the newest one let go, if nothing is
        kept), so that every final after the answer is kept (seqIds count partials
        too: a gap between ``last_seq`` and the oldest kept is not by itself a loss)."""
        if self.dropped <= last_seq:
            return last_seq
        return self.first_seq() - 1 if self._entries else self.dropped

    def texts_before(self, seq_id: int, limit: int) -> tuple[str, ...]:
        """Source text of the last ``limit`` finals before seqId ``seq_id``, oldest
        first: a translation's context."""
        texts: list[str] = []
        for seq in reversed(self._entries):
            if len(texts) >= limit:
                break
            if seq < seq_id:
                texts.append(self._entries[seq][0].text)
        return tuple(reversed(texts))

    def _entry(self, segment: Segment) -> dict[str, Rendered]:
        seq = segment.seq_id
        entry = self._entries.get(seq)
        if entry is not None:
            return entry[1]
        if self._entries and seq < self.first_seq() and len(self._entries) >= self.size:
            self.dropped = max(self.dropped, seq)
            return {}  # older than everything kept in a full history: not worth keeping
        out_of_order = bool(self._entries) and seq < self.last_seq()
        entry = self._entries[seq] = (segment, {})
        if out_of_order:
            self._entries = dict(sorted(self._entries.items()))
        while len(self._entries) > self.size:
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self.dropped = max(self.dropped, oldest)
        return entry[1]

    def _tail(self, after: int, limit: int) -> list[tuple[Segment, dict[str, Rendered]]]:
        if not limit:
            return []
        tail = [entry for seq, entry in self._entries.items() if seq > after]
        return tail[-limit:]
