"""The translator actor, driven through its channels with a real ``Renderer``: once per
(final, language), source readers served as-is, per-language lanes, partials coalesced
and overtaken, draining (issue 13)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio
import trio.testing
from members import GatedTranslator, segment

from babel_actors.actors.translator import run_translator
from babel_actors.engines.base import Translator
from babel_actors.events import Segment
from babel_actors.history import History
from babel_actors.renderer import Renderer
from babel_actors.testing import EchoTranslator
from babel_actors.wire.server import Rendered

TIMEOUT_S = 30


@attrs.define
class Lanes:
    """A running translator: its inbox, its outbox, and the renderer behind it."""

    inbox: trio.MemorySendChannel[Segment]
    outbox: trio.MemoryReceiveChannel[Rendered]
    renderer: Renderer

    async def send(self, *segments: Segment) -> None:
        for seg in segments:
            await self.inbox.send(seg)

    async def receive(self, count: int) -> list[Rendered]:
        return [await self.outbox.receive() for _ in range(count)]

    async def drain(self) -> list[Rendered]:
        """Close the inbox; everything up to the outbox closing."""
        await self.inbox.aclose()
        return [rendered async for rendered in self.outbox]

    def nothing_waiting(self) -> bool:
        try:
            self.outbox.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


@asynccontextmanager
async def translator(
    engine: Translator,
    languages: Callable[[], frozenset[str]],
    *,
    queue_size: int = 16,
    partial_interval_s: float = 0.3,
) -> AsyncIterator[Lanes]:
    inbox_send, inbox_receive = trio.open_memory_channel[Segment](16)
    outbox_send, outbox_receive = trio.open_memory_channel[Rendered](64)
    renderer = Renderer(engine, History(100), timeout_s=10.0, context_segments=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                run_translator,
                inbox_receive,
                outbox_send,
                renderer=renderer,
                languages=languages,
                queue_size=queue_size,
                partial_interval_s=partial_interval_s,
            )
        )
        yield Lanes(inbox_send, outbox_receive, renderer)


def reading(*languages: str) -> Callable[[], frozenset[str]]:
    return lambda: frozenset(languages)


def by_language(captions: list[Rendered]) -> dict[str, list[tuple[int, str, bool]]]:
    out: dict[str, list[tuple[int, str, bool]]] = {}
    for rendered in captions:
        c = rendered.caption
        out.setdefault(c.target_lang, []).append((c.segment.seq_id, c.text, c.segment.is_partial))
    return out


async def test_each_final_is_translated_once_per_language_and_source_readers_get_it_as_is() -> None:
    engine = EchoTranslator()
    finals = [segment(n, f"sentence {n}") for n in (1, 2, 3)]
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("en", "fr", "de")) as lanes:
            await lanes.send(*finals)
            got = await lanes.drain()
    assert by_language(got) == {
        "en": [(n, f"sentence {n}", False) for n in (1, 2, 3)],
        "fr": [(n, f"[fr] sentence {n}", False) for n in (1, 2, 3)],
        "de": [(n, f"[de] sentence {n}", False) for n in (1, 2, 3)],
    }
    assert all(r.caption.has_translation for r in got)
    # One engine call per (final, foreign language); none for English readers.
    assert engine.calls == Counter(
        {(f"sentence {n}", target): 1 for n in (1, 2, 3) for target in ("fr", "de")}
    )
    # Every rendering of a final is kept for catch-up.
    for n in (1, 2, 3):
        for language in ("en", "fr", "de"):
            assert lanes.renderer.history.rendering(n, language) is not None


async def test_only_the_languages_read_at_the_moment_are_translated() -> None:
    engine = EchoTranslator()
    wanted = {"fr"}
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, lambda: frozenset(wanted)) as lanes:
            await lanes.send(segment(1))
            assert by_language(await lanes.receive(1)) == {"fr": [(1, "[fr] s1", False)]}
            wanted.add("de")
            await lanes.send(segment(2))
            two = await lanes.receive(2)
            wanted.discard("fr")
            await lanes.send(segment(3))
            got = two + await lanes.drain()
    assert sorted((r.caption.segment.seq_id, r.caption.target_lang) for r in got) == [
        (2, "de"),
        (2, "fr"),
        (3, "de"),
    ]
    assert sum(engine.calls.values()) == 4


async def test_finals_keep_their_order_within_each_language(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Early finals are the slowest to translate: concurrent calls would reorder them.
    engine = GatedTranslator(delay_s=lambda call: 10.0 - int(call.text[1:]))
    with trio.fail_after(TIMEOUT_S * 10):
        async with translator(engine, reading("fr", "de", "it")) as lanes:
            await lanes.send(*(segment(n) for n in range(1, 9)))
            got = await lanes.drain()
    lanes_seen = by_language(got)
    assert set(lanes_seen) == {"fr", "de", "it"}
    for language, captions in lanes_seen.items():
        assert [seq for seq, _, _ in captions] == list(range(1, 9)), language


async def test_a_slow_language_does_not_hold_up_another() -> None:
    engine = GatedTranslator(hold=lambda call: call.target == "de")
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("de", "en", "fr")) as lanes:
            await lanes.send(segment(1), segment(2), segment(3))
            got = await lanes.receive(6)
            assert by_language(got) == {
                "en": [(1, "s1", False), (2, "s2", False), (3, "s3", False)],
                "fr": [(1, "[fr] s1", False), (2, "[fr] s2", False), (3, "[fr] s3", False)],
            }
            await trio.testing.wait_all_tasks_blocked()
            assert engine.texts("de") == ["s1"]  # the German lane waits on its first final
            assert lanes.nothing_waiting()
            engine.open()
            rest = await lanes.drain()
    assert by_language(rest) == {
        "de": [(1, "[de] s1", False), (2, "[de] s2", False), (3, "[de] s3", False)]
    }


async def test_partials_are_coalesced_between_translations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = GatedTranslator()
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("fr"), partial_interval_s=1.0) as lanes:
            await lanes.send(segment(1, "a", partial=True))
            [first] = await lanes.receive(1)
            started = trio.current_time()
            await lanes.send(
                segment(2, "a b", partial=True),
                segment(3, "a b c", partial=True),
                segment(4, "a b c d", partial=True),
            )
            [latest] = await lanes.receive(1)
            assert trio.current_time() - started >= 1.0
            await trio.sleep(5)
            assert lanes.nothing_waiting()
            await lanes.drain()
    assert (first.caption.text, latest.caption.text) == ("[fr] a", "[fr] a b c d")
    assert engine.texts("fr", partial=True) == ["a", "a b c d"]


async def test_a_waiting_partial_is_dropped_once_a_later_final_is_dispatched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = GatedTranslator()
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("fr"), partial_interval_s=1.0) as lanes:
            await lanes.send(segment(1, "so", partial=True))
            await lanes.receive(1)
            await lanes.send(segment(2, "so we", partial=True), segment(3, "so we go"))
            [final] = await lanes.receive(1)
            await trio.sleep(5)  # past the interval: the waiting partial had its chance
            assert lanes.nothing_waiting()
            await lanes.drain()
    assert (final.caption.segment.seq_id, final.caption.segment.is_partial) == (3, False)
    assert "so we" not in engine.texts("fr")


async def test_a_partial_in_flight_is_not_sent_once_a_later_final_is_dispatched() -> None:
    engine = GatedTranslator(hold=lambda call: call.partial)
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("fr")) as lanes:
            await lanes.send(segment(1, "so", partial=True))
            await trio.testing.wait_all_tasks_blocked()
            assert engine.texts("fr", partial=True) == ["so"]  # in flight, held
            await lanes.send(segment(2, "so we go"))
            [final] = await lanes.receive(1)
            engine.open()
            await trio.testing.wait_all_tasks_blocked()
            # The partial's translation did return, after the final's.
            assert [call.text for call in engine.finished] == ["so we go", "so"]
            assert lanes.nothing_waiting()
            await lanes.drain()
    assert final.caption.segment.seq_id == 2


async def test_no_partial_is_asked_of_the_engine_while_a_final_is_being_translated() -> None:
    """Issue 14: finals never wait behind partials' translation requests."""
    engine = GatedTranslator(hold=lambda call: not call.partial)
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("fr", "de")) as lanes:
            await lanes.send(segment(1, "so we go"), segment(2, "and", partial=True))
            await trio.testing.wait_all_tasks_blocked()
            # Both finals are under way, held; the partial waits for them to land.
            assert engine.texts(partial=False) == ["so we go", "so we go"]
            assert engine.texts(partial=True) == []
            engine.open()
            finals = await lanes.receive(2)
            partials = await lanes.receive(2)
            await lanes.drain()
    assert {r.caption.target_lang for r in finals} == {"fr", "de"}
    assert not any(r.caption.segment.is_partial for r in finals)
    assert sorted(r.caption.text for r in partials) == ["[de] and", "[fr] and"]
    assert engine.texts(partial=True) == ["and", "and"]


async def test_a_source_readers_partial_goes_out_as_is_without_an_engine_call() -> None:
    engine = GatedTranslator()
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("en")) as lanes:
            await lanes.send(segment(1, "hel", partial=True), segment(2, "hello"))
            got = await lanes.drain()
    assert by_language(got) == {"en": [(1, "hel", True), (2, "hello", False)]}
    assert engine.calls == []


async def test_draining_translates_and_sends_every_final_before_the_outbox_closes() -> None:
    """Issue 13: finals still being translated when the inbox closes were cancelled."""
    engine = GatedTranslator(hold=lambda call: True)
    with trio.fail_after(TIMEOUT_S):
        async with translator(engine, reading("fr", "de")) as lanes:
            await lanes.send(
                segment(1), segment(2), segment(3), segment(4, "s4 half", partial=True)
            )
            await lanes.inbox.aclose()
            await trio.testing.wait_all_tasks_blocked()
            # The inbox is closed and both lanes are stuck on their first final: the
            # outbox must stay open until they are done.
            assert sorted(engine.texts(partial=False)) == ["s1", "s1"]
            assert lanes.nothing_waiting()
            engine.open()
            got = [rendered async for rendered in lanes.outbox]
    assert by_language(got) == {
        language: [(n, f"[{language}] s{n}", False) for n in (1, 2, 3)] for language in ("fr", "de")
    }
    assert all(r.caption.has_translation for r in got)


async def test_cancelling_the_translator_abandons_translations_in_flight() -> None:
    engine = GatedTranslator(hold=lambda call: True)
    inbox_send, inbox_receive = trio.open_memory_channel[Segment](4)
    outbox_send, outbox_receive = trio.open_memory_channel[Rendered](4)
    renderer = Renderer(engine, History(10), timeout_s=10.0, context_segments=2)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_translator,
                    inbox_receive,
                    outbox_send,
                    renderer=renderer,
                    languages=reading("fr"),
                    queue_size=4,
                    partial_interval_s=0.3,
                )
            )
            await inbox_send.send(segment(1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert engine.texts() == ["s1"] and engine.finished == []
    with pytest.raises(trio.EndOfChannel):
        outbox_receive.receive_nowait()
