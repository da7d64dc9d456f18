"""The ingest actor: host PCM at the client's rate in, engine-rate frames out."""

from __future__ import annotations

import numpy as np
import soxr
import trio

from babel_actors.events import AudioFrame, HostAudio, IngestEvent, SttInput


class Resampler:
    """A stateful streaming resampler for one stream of 16-bit mono PCM.

    Stateful so that chunk edges leave no clicks; recreated when the input rate
    changes. ``flush`` returns what the filter still holds, at the end of speech.
    """

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._in_rate = 0
        self._stream: soxr.ResampleStream | None = None

    def feed(self, pcm: bytes, in_rate: int) -> bytes:
        """Resample ``pcm`` (at ``in_rate``) to the output rate."""
        if in_rate == self.out_rate:
            return pcm
        if in_rate != self._in_rate or self._stream is None:
            self._in_rate = in_rate
            self._stream = soxr.ResampleStream(in_rate, self.out_rate, 1, dtype="int16")
        samples = np.frombuffer(pcm, dtype="<i2")
        return bytes(self._stream.resample_chunk(samples).astype("<i2").tobytes())

    def flush(self) -> bytes:
        """What the filter holds back; the stream starts afresh after it."""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        self._stream = None
        return bytes(tail.astype("<i2").tobytes())


async def run_ingest(
    inbox: trio.MemoryReceiveChannel[IngestEvent],
    outbox: trio.MemorySendChannel[SttInput],
    *,
    resampler: Resampler,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Convert host audio to the engine's rate; pass control events through in order.

    The host's bytes were decoded and validated at the connection (so a bad message is
    answered there, on the socket that sent it).
    Backpressure: blocks on a full outbox, which stops the host connection reading its
    socket, so TCP pushes back on a client sending faster than the engine listens.
    Draining: when ``inbox`` ends, the resampler's tail is sent, then the outbox closes.
    Cancellation: safe at any await; a partial resampler state is simply dropped.
    Error handling: none expected; input is validated upstream.
    """
    async with inbox, outbox:
        task_status.started()
        async for event in inbox:
            if isinstance(event, HostAudio):
                pcm = resampler.feed(event.pcm, event.sample_rate)
                if pcm:
                    await outbox.send(
                        AudioFrame(pcm, resampler.out_rate, event.received_at, trio.current_time())
                    )
                continue
            await _flush(resampler, outbox)
            await outbox.send(event)
        # Draining: what the filter still holds is the end of what the host said.
        await _flush(resampler, outbox)


async def _flush(resampler: Resampler, outbox: trio.MemorySendChannel[SttInput]) -> None:
    tail = resampler.flush()
    if tail:
        now = trio.current_time()
        await outbox.send(AudioFrame(tail, resampler.out_rate, now, now))
