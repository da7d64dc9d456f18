"""The ingest actor, driven through its channels: host PCM at any rate in, engine-rate
frames out, control events in order with the audio, backpressure, draining."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from babel_actors.actors.ingest import Resampler, run_ingest
from babel_actors.events import (
    AudioFrame,
    EndOfSpeech,
    HostAudio,
    IngestEvent,
    SourceLanguage,
    SttInput,
)
from babel_actors.glossary import Glossary

ENGINE_RATE = 16000
TIMEOUT_S = 10


def pcm(samples: int) -> bytes:
    """``samples`` of a ramp (not silence, so a resampler that drops samples shows)."""
    return b"".join((i % 1000).to_bytes(2, "little", signed=True) for i in range(samples))


def samples_in(events: list[SttInput]) -> int:
    return sum(len(e.pcm) // 2 for e in events if isinstance(e, AudioFrame))


async def run_through(events: list[IngestEvent], *, size: int = 64) -> list[SttInput]:
    """Everything ingest hands on for ``events``, up to its outbox closing."""
    inbox_send, inbox_receive = trio.open_memory_channel[IngestEvent](size)
    outbox_send, outbox_receive = trio.open_memory_channel[SttInput](size)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(run_ingest, inbox_receive, outbox_send, resampler=Resampler(ENGINE_RATE))
        )
        async with inbox_send:
            for event in events:
                await inbox_send.send(event)
        return [event async for event in outbox_receive]


async def test_audio_at_the_engine_rate_passes_through_unchanged() -> None:
    chunk = pcm(1600)
    with trio.fail_after(TIMEOUT_S):
        out = await run_through([HostAudio(chunk, ENGINE_RATE, 1.0), HostAudio(chunk, 16000, 2.0)])
    assert [(e.pcm, e.sample_rate, e.received_at) for e in out if isinstance(e, AudioFrame)] == [
        (chunk, ENGINE_RATE, 1.0),
        (chunk, ENGINE_RATE, 2.0),
    ]


async def test_audio_is_resampled_to_the_engine_rate_and_flushed_at_end_of_speech() -> None:
    # One second at 48 kHz, in ten chunks, then the end of speech: one second at 16 kHz.
    events: list[IngestEvent] = [HostAudio(pcm(4800), 48000, float(i)) for i in range(10)]
    events.append(EndOfSpeech(10.0))
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(events)
    frames = [e for e in out if isinstance(e, AudioFrame)]
    assert frames and all(f.sample_rate == ENGINE_RATE for f in frames)
    assert all(len(f.pcm) % 2 == 0 for f in frames)
    assert samples_in(out) == ENGINE_RATE
    assert isinstance(out[-1], EndOfSpeech)


async def test_a_second_host_rate_is_resampled_as_well() -> None:
    events: list[IngestEvent] = [HostAudio(pcm(2400), 24000, 0.0) for _ in range(10)]
    events += [EndOfSpeech(1.0), HostAudio(pcm(4410), 44100, 2.0), EndOfSpeech(3.0)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(events)
    cut = next(i for i, e in enumerate(out) if isinstance(e, EndOfSpeech))
    assert samples_in(out[:cut]) == 16000  # 1 s at 24 kHz
    assert samples_in(out[cut + 1 :]) == 1600  # 0.1 s at 44.1 kHz


async def test_control_events_pass_through_in_order_with_the_audio() -> None:
    glossary = Glossary(keep=("Trio",))
    events: list[IngestEvent] = [
        HostAudio(pcm(3200), ENGINE_RATE, 0.0),
        EndOfSpeech(1.0),
        HostAudio(pcm(1600), ENGINE_RATE, 2.0),
        SourceLanguage("fr"),
        HostAudio(pcm(800), ENGINE_RATE, 3.0),
        glossary,
        HostAudio(pcm(400), ENGINE_RATE, 4.0),
    ]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(events)
    kinds = [
        len(e.pcm) // 2 if isinstance(e, AudioFrame) else e  # samples, or the event itself
        for e in out
    ]
    assert kinds == [3200, EndOfSpeech(1.0), 1600, SourceLanguage("fr"), 800, glossary, 400]


async def test_a_control_event_comes_after_the_resampled_audio_before_it() -> None:
    """What the resampler still holds at a control event goes out before the event."""
    events: list[IngestEvent] = [HostAudio(pcm(2400), 24000, 0.0) for _ in range(10)]
    events += [SourceLanguage("de"), HostAudio(pcm(2400), 24000, 1.0)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(events)
    cut = out.index(SourceLanguage("de"))
    assert samples_in(out[:cut]) == 16000


async def test_closing_the_inbox_flushes_the_resampler_tail_and_closes_the_outbox() -> None:
    """Draining: the host's last audio reaches the engine in full, then the outbox ends.

    Fails today: ``run_ingest`` flushes the resampler only at a control event; when the
    inbox ends it returns without ``resampler.flush()``, so the ~20-35 ms soxr holds
    back is lost (the end of what the host said before ``Pipeline.finish``).
    """
    events: list[IngestEvent] = [HostAudio(pcm(4800), 48000, float(i)) for i in range(10)]
    with trio.fail_after(TIMEOUT_S):
        out = await run_through(events)  # returns only once the outbox is closed
    assert all(isinstance(e, AudioFrame) for e in out)
    assert samples_in(out) == ENGINE_RATE


async def test_closing_the_inbox_closes_the_outbox_and_the_inbox() -> None:
    inbox_send, inbox_receive = trio.open_memory_channel[IngestEvent](4)
    outbox_send, outbox_receive = trio.open_memory_channel[SttInput](4)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_ingest, inbox_receive, outbox_send, resampler=Resampler(ENGINE_RATE))
            )
            await inbox_send.send(HostAudio(pcm(160), ENGINE_RATE, 0.0))
            await inbox_send.aclose()
            got = [event async for event in outbox_receive]
    assert samples_in(got) == 160
    # The actor owns its ends: both are closed when it returns.
    assert inbox_receive.statistics().open_receive_channels == 0
    assert outbox_send.statistics().open_send_channels == 0


async def test_a_full_outbox_blocks_ingest_and_the_inbox_is_read_no_further() -> None:
    inbox_send, inbox_receive = trio.open_memory_channel[IngestEvent](16)
    outbox_send, outbox_receive = trio.open_memory_channel[SttInput](1)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_ingest, inbox_receive, outbox_send, resampler=Resampler(ENGINE_RATE))
            )
            for i in range(6):
                await inbox_send.send(HostAudio(pcm(160), ENGINE_RATE, float(i)))
            await trio.testing.wait_all_tasks_blocked()
            # One frame in the outbox, one held by ingest blocked on sending it: the
            # other four wait in the inbox.
            assert outbox_receive.statistics().current_buffer_used == 1
            assert outbox_receive.statistics().tasks_waiting_send == 1
            assert inbox_send.statistics().current_buffer_used == 4

            first = await outbox_receive.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(first, AudioFrame) and first.received_at == 0.0
            assert inbox_send.statistics().current_buffer_used == 3

            await inbox_send.aclose()
            rest = [event async for event in outbox_receive]
    assert [e.received_at for e in rest if isinstance(e, AudioFrame)] == [1.0, 2.0, 3.0, 4.0, 5.0]


async def test_frames_carry_when_ingest_handed_them_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox_send, inbox_receive = trio.open_memory_channel[IngestEvent](4)
    outbox_send, outbox_receive = trio.open_memory_channel[SttInput](4)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_ingest, inbox_receive, outbox_send, resampler=Resampler(ENGINE_RATE))
            )
            received_at = trio.current_time()
            await trio.sleep(1.5)
            await inbox_send.send(HostAudio(pcm(160), ENGINE_RATE, received_at))
            frame = await outbox_receive.receive()
            await inbox_send.aclose()
    assert isinstance(frame, AudioFrame)
    assert frame.received_at == received_at
    assert frame.ingested_at == received_at + 1.5
