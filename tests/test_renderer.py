"""The Renderer: each (final, language) translated once, single-flight; context from
history; failures and timeouts flagged; joiners' renderings published."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from members import GatedTranslator, segment

from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.renderer import Publish, Renderer
from babel_actors.wire.server import Rendered

TIMEOUT_S = 30


def renderer_for(
    engine: GatedTranslator,
    *,
    timeout_s: float = 10.0,
    context_segments: int = 2,
    metrics: Metrics | None = None,
    publish: Publish | None = None,
) -> Renderer:
    return Renderer(
        engine,
        History(100),
        timeout_s=timeout_s,
        context_segments=context_segments,
        metrics=metrics,
        publish=publish,
    )


async def test_concurrent_asks_make_one_engine_call_and_share_the_rendering() -> None:
    engine = GatedTranslator(hold=lambda call: True)
    renderer = renderer_for(engine)
    final = segment(7, "the same final for everyone")
    results: list[Rendered] = []

    async def ask() -> None:
        results.append(await renderer.final(final, "fr"))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert len(engine.calls) == 1
            engine.open()
    assert len(results) == 30
    assert all(r is results[0] for r in results)
    assert results[0].caption.text == "[fr] the same final for everyone"
    assert renderer.history.rendering(7, "fr") is results[0]
    assert len(engine.calls) == 1


async def test_a_later_ask_finds_the_rendering_in_history() -> None:
    engine = GatedTranslator()
    renderer = renderer_for(engine)
    final = segment(1)
    with trio.fail_after(TIMEOUT_S):
        first = await renderer.final(final, "fr")
        again = await renderer.final(final, "fr", live=True)
        other = await renderer.final(final, "de")
    assert again is first
    assert other is not first and other.caption.text == "[de] s1"
    assert [(c.text, c.target) for c in engine.calls] == [("s1", "fr"), ("s1", "de")]


async def test_a_cancelled_leader_lets_a_waiter_translate_instead() -> None:
    engine = GatedTranslator(hold=lambda call: True)
    renderer = renderer_for(engine)
    final = segment(3)
    results: list[Rendered] = []
    leader = trio.CancelScope()

    async def lead() -> None:
        with leader:
            await renderer.final(final, "fr")

    async def wait() -> None:
        results.append(await renderer.final(final, "fr"))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lead)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(5):
                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert len(engine.calls) == 1
            leader.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # One waiter took over: a second call, and only one.
            assert len(engine.calls) == 2
            assert engine.finished == []
            engine.open()
    assert leader.cancelled_caught
    assert len(results) == 5 and all(r is results[0] for r in results)
    assert results[0].caption.has_translation
    assert len(engine.finished) == 1


async def test_context_is_the_previous_finals_texts_from_history() -> None:
    engine = GatedTranslator()
    renderer = renderer_for(engine, context_segments=2)
    finals = [segment(n, f"text {n}") for n in (1, 2, 4, 5)]
    for final in finals:
        renderer.admit(final)
    with trio.fail_after(TIMEOUT_S):
        await renderer.final(finals[0], "fr")
        await renderer.final(finals[3], "fr")
        await renderer.final(finals[2], "de")
        await renderer.partial(segment(6, "text 6 so", partial=True), "fr")
    assert [(c.text, c.context) for c in engine.calls] == [
        ("text 1", ()),
        ("text 5", ("text 2", "text 4")),
        ("text 4", ("text 1", "text 2")),
        ("text 6 so", ("text 4", "text 5")),
    ]
    assert engine.calls[-1].partial


async def test_a_failed_translation_is_the_source_text_flagged_and_kept() -> None:
    engine = GatedTranslator(fail=lambda call: call.target == "fr")
    metrics = Metrics()
    renderer = renderer_for(engine, metrics=metrics)
    final = segment(1, "cannot say this")
    with trio.fail_after(TIMEOUT_S):
        failed = await renderer.final(final, "fr")
        fine = await renderer.final(final, "de")
        again = await renderer.final(final, "fr")
    assert (failed.caption.text, failed.caption.has_translation) == ("cannot say this", False)
    assert (fine.caption.text, fine.caption.has_translation) == ("[de] cannot say this", True)
    # Kept like any rendering: every reader of the language gets the same caption.
    assert again is failed
    assert len(engine.calls) == 2
    assert b'"hasTranslation":false' in failed.payload
    failures = metrics.registry.get_sample_value(
        "babel_translation_failures_total",
        {"engine": "gated", "source": "en", "target": "fr", "reason": "error"},
    )
    assert failures == 1.0


async def test_a_timed_out_translation_is_the_source_text_flagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = GatedTranslator(hold=lambda call: True)  # never opened
    metrics = Metrics()
    renderer = renderer_for(engine, timeout_s=4.0, metrics=metrics)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT_S):
        rendered = await renderer.final(segment(1, "too slow"), "fr")
        partial = await renderer.partial(segment(2, "too", partial=True), "de")
    assert trio.current_time() - started == pytest.approx(8.0)
    assert (rendered.caption.text, rendered.caption.has_translation) == ("too slow", False)
    assert (partial.caption.text, partial.caption.has_translation) == ("too", False)
    timeouts = metrics.registry.get_sample_value(
        "babel_translation_failures_total",
        {"engine": "gated", "source": "en", "target": "fr", "reason": "timeout"},
    )
    assert timeouts == 1.0


async def test_the_source_language_is_rendered_as_is_without_an_engine_call() -> None:
    engine = GatedTranslator()
    renderer = renderer_for(engine)
    with trio.fail_after(TIMEOUT_S):
        rendered = await renderer.final(segment(1, "hello", lang="en"), "en")
    assert (rendered.caption.text, rendered.caption.has_translation) == ("hello", True)
    assert engine.calls == []


async def test_joiners_renderings_are_published_live_ones_are_not() -> None:
    engine = GatedTranslator()
    published: list[Rendered] = []

    async def publish(rendered: Rendered) -> None:
        published.append(rendered)

    renderer = renderer_for(engine, publish=publish)
    with trio.fail_after(TIMEOUT_S):
        live = await renderer.final(segment(1), "fr", live=True)
        joiner = await renderer.final(segment(2), "fr")
        source = await renderer.final(segment(3), "en")  # no translation: nothing to share
        await renderer.final(segment(2), "fr")  # found in history: not published again
    assert live.caption.segment.seq_id == 1
    assert published == [joiner]
    assert source not in published


async def test_partials_are_not_kept_nor_single_flighted() -> None:
    engine = GatedTranslator()
    renderer = renderer_for(engine)
    part = segment(1, "so", partial=True)
    with trio.fail_after(TIMEOUT_S):
        first = await renderer.partial(part, "fr")
        second = await renderer.partial(part, "fr")
    assert first.caption.text == second.caption.text == "[fr] so"
    assert len(engine.calls) == 2
    assert 1 not in renderer.history
