"""The ``google`` engine's replay tape: a session's audio that no final covers yet,
kept so that a new stream can replay it when the old one is replaced.

Sans-IO: plain bytes and sample positions, no trio, no gRPC.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ReplayTape:
    """A session's audio from the end of the last final on.

    Positions are absolute sample numbers since the session's stream began; audio is
    16-bit mono PCM.

    Backpressure: none; ``append`` never blocks. The tape holds at most ``max_samples``
    and throws the oldest away beyond that, settling it unrecognised and counting it in
    ``dropped``.
    Cancellation: nothing to cancel; every method returns at once.
    Error handling: raises nothing of its own; callers keep the positions they pass
    within ``[base, end]``.
    """

    def __init__(self, max_samples: int) -> None:
        self._max_samples = max_samples
        self.base = 0
        """Position of ``_pcm[0]``."""
        self._pcm = bytearray()
        self.covered = 0
        """Audio before this is settled: covered by a final, or known to hold none."""
        self.cuts: deque[int] = deque()
        """Positions where the speaker asked for a final (``EndOfSpeech``)."""
        self.closed = False
        self.dropped = 0
        """Samples thrown away unrecognised because the tape was full."""

    @property
    def end(self) -> int:
        return self.base + len(self._pcm) // 2

    @property
    def pending(self) -> bool:
        return self.end > self.covered

    def append(self, pcm: bytes) -> None:
        self._pcm += pcm
        excess = self.end - self.base - self._max_samples
        if excess > 0:
            self.dropped += max(0, self.base + excess - self.covered)
            self.cover(self.base + excess)

    def cut(self) -> None:
        if self.pending and (not self.cuts or self.cuts[-1] != self.end):
            self.cuts.append(self.end)

    def next_stop(self, sent: int) -> int:
        """Where a stream that has sent up to ``sent`` must pause: the next cut or the end."""
        for cut in self.cuts:
            if cut > sent:
                return cut
        return self.end

    def cut_reached(self, sent: int) -> bool:
        return bool(self.cuts) and self.cuts[0] <= sent

    def cover(self, upto: int) -> None:
        upto = min(upto, self.end)
        if upto <= self.covered:
            return
        self.covered = upto
        del self._pcm[: 2 * (upto - self.base)]
        self.base = upto
        while self.cuts and self.cuts[0] <= upto:
            self.cuts.popleft()

    def quiet_point(self, start: int, stop: int, frame: int) -> int:
        """The middle of the longest quiet run of ``frame``-sample frames in
        ``[start, stop)``: where to end a stream with the least risk of cutting a word."""
        start = max(start, self.base)
        pcm = np.frombuffer(self.read(start, stop, 2 * (stop - start)), dtype="<i2")
        count = len(pcm) // frame
        if count < 2:
            return stop
        energy = np.square(pcm[: count * frame].astype(np.float32)).reshape(count, frame).mean(1)
        quiet = energy <= energy.min() * 4 + 1.0
        best_start, best_length, run_start = 0, 0, None
        for index, is_quiet in enumerate([*quiet.tolist(), False]):
            if is_quiet and run_start is None:
                run_start = index
            elif not is_quiet and run_start is not None:
                if index - run_start > best_length:
                    best_start, best_length = run_start, index - run_start
                run_start = None
        return start + (best_start + best_length // 2) * frame

    def read(self, start: int, stop: int, max_bytes: int) -> bytes:
        offset = 2 * (start - self.base)
        return bytes(self._pcm[offset : min(2 * (stop - self.base), offset + max_bytes)])
