"""The splitter actor beyond tests/test_splitter.py: language changes in-band, draining."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from babel_actors.actors.splitter import Splitter, run_splitter
from babel_actors.events import Segment, SourceLanguage, SttOutput, SttResult

TIMEOUT_S = 10


async def test_a_source_language_labels_the_segments_after_it() -> None:
    results_send, results_receive = trio.open_memory_channel[SttOutput](8)
    segments_send, segments_receive = trio.open_memory_channel[Segment](8)
    outputs: list[SttOutput] = [
        SttResult("hello", False),
        SttResult("hello there", True),
        SourceLanguage("fr"),
        SttResult("bonjour", False),
        SttResult("bonjour à tous", True),
        SourceLanguage("de"),
        SttResult("guten Tag", True),
    ]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_splitter, results_receive, segments_send, splitter=Splitter("en"))
            )
            async with results_send:
                for output in outputs:
                    await results_send.send(output)
            got = [segment async for segment in segments_receive]
    assert [(s.seq_id, s.text, s.is_partial, s.source_lang) for s in got] == [
        (1, "hello", True, "en"),
        (2, "hello there", False, "en"),
        (3, "bonjour", True, "fr"),
        (4, "bonjour à tous", False, "fr"),
        (5, "guten Tag", False, "de"),
    ]


async def test_numbering_continues_from_first_seq_across_a_language_change() -> None:
    results_send, results_receive = trio.open_memory_channel[SttOutput](8)
    segments_send, segments_receive = trio.open_memory_channel[Segment](8)
    splitter = Splitter("en", first_seq=41)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_splitter, results_receive, segments_send, splitter=splitter)
            )
            async with results_send:
                await results_send.send(SttResult("one", True))
                await results_send.send(SourceLanguage("es"))
                await results_send.send(SttResult("dos", True))
            got = [segment async for segment in segments_receive]
    assert [(s.seq_id, s.source_lang) for s in got] == [(41, "en"), (42, "es")]
    assert splitter.source_lang == "es"


async def test_closing_the_inbox_closes_the_outbox_after_the_last_segment() -> None:
    results_send, results_receive = trio.open_memory_channel[SttOutput](8)
    segments_send, segments_receive = trio.open_memory_channel[Segment](8)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_splitter, results_receive, segments_send, splitter=Splitter("en"))
            )
            await results_send.send(SttResult("first", True))
            assert (await segments_receive.receive()).text == "first"
            await trio.testing.wait_all_tasks_blocked()
            # Still open while the inbox is.
            with pytest.raises(trio.WouldBlock):
                segments_receive.receive_nowait()
            await results_send.send(SttResult("last", True))
            await results_send.aclose()
            rest = [segment async for segment in segments_receive]
    assert [s.text for s in rest] == ["last"]
    assert results_receive.statistics().open_receive_channels == 0
