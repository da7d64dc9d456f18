"""The ``openai`` translator: the real openai client against a local OpenAI-compatible
HTTP server (``babel_actors.testing.openai``), and the rate limiter on a virtual clock
(finals before partials included)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from babel_actors.config import Config
from babel_actors.engines.breaker import BreakerTranslator
from babel_actors.engines.openai import OpenAITranslator, _read_completion, build_messages
from babel_actors.engines.ratelimit import RateLimiter
from babel_actors.errors import EngineUnavailable, TranslationFailed, UnsupportedLanguage
from babel_actors.events import Segment
from babel_actors.glossary import Glossary, Term
from babel_actors.renderer import translate_segment
from babel_actors.testing.openai import FakeOpenAI, Reply, running_openai

DEADLINE_S = 15.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return trio.testing.MockClock(rate=1.0)


@asynccontextmanager
async def translator(fake: FakeOpenAI, **overrides: Any) -> AsyncIterator[OpenAITranslator]:
    settings: dict[str, Any] = {
        "openai_api_key": "test-key",
        "openai_base_url": fake.base_url,
        "openai_retry_initial_s": 0.01,
        **overrides,
    }
    engine = OpenAITranslator(Config(**settings))
    try:
        yield engine
    finally:
        await engine.aclose()


async def test_a_translation_asks_the_model_with_rules_context_and_glossary() -> None:
    glossary = Glossary(
        terms=(
            Term("Holy Spirit", None, (("es", "Espíritu Santo"), ("fr", "Saint-Esprit"))),
            Term("unused term", "nunca"),
        ),
        keep=("Exbabel", "Okafor"),
    )
    with trio.fail_after(DEADLINE_S):
        async with running_openai() as fake, translator(fake) as engine:
            text = await engine.translate(
                "The Holy Spirit and Exbabel, 42 times.",
                source="en",
                target="es",
                context=("Good morning.", "Welcome, everyone."),
                glossary=glossary,
            )
    assert text == "[Spanish] The Holy Spirit and Exbabel, 42 times."
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.body["model"] == "gpt-4o"
    assert request.body["temperature"] == 0
    system = request.system
    assert "from English into Spanish" in system
    assert "translation of the user's message and nothing else" in system
    assert "number" in system and "names" in system
    assert '"Holy Spirit" -> "Espíritu Santo"' in system
    assert "Saint-Esprit" not in system and "unused term" not in system
    assert '"Exbabel"' in system and "Okafor" not in system
    assert "- Good morning.\n- Welcome, everyone." in system
    assert request.text == "The Holy Spirit and Exbabel, 42 times."


def test_the_prompt_without_glossary_or_context_is_just_the_rules() -> None:
    messages = build_messages("Hola.", source="es", target="pt-BR")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "from Spanish into Portuguese (pt-BR)" in messages[0]["content"]
    assert "Glossary" not in messages[0]["content"]
    assert "Earlier sentences" not in messages[0]["content"]


async def test_429_waits_as_long_as_retry_after_says_then_succeeds() -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(429, (("retry-after", "0.3"),)))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            text = await engine.translate("Hello.", source="en", target="fr")
    assert text == "[French] Hello."
    first, second = fake.requests
    # A lower bound only: the retry came no sooner than the server allowed.
    assert second.at - first.at >= 0.3


async def test_429_with_retry_after_ms_is_honoured_too() -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(429, (("retry-after-ms", "250"),)))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            assert await engine.translate("Hi.", source="en", target="de") == "[German] Hi."
    first, second = fake.requests
    assert second.at - first.at >= 0.25


async def test_a_retry_after_longer_than_the_budget_fails_at_once() -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(429, (("retry-after", "3600"),)))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            with pytest.raises(TranslationFailed, match="429"):
                await engine.translate("Hello.", source="en", target="es")
    assert len(fake.requests) == 1


async def test_server_errors_are_retried_then_reported() -> None:
    fake = FakeOpenAI()
    fake.replies.extend([Reply(500), Reply(503)])
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake, openai_max_retries=2) as engine:
            assert await engine.translate("One.", source="en", target="es") == "[Spanish] One."
            fake.replies.extend([Reply(500)] * 3)
            with pytest.raises(TranslationFailed, match="server error"):
                await engine.translate("Two.", source="en", target="es")
    assert len(fake.requests) == 6


async def test_a_hung_server_times_out_and_is_retried() -> None:
    fake = FakeOpenAI()
    fake.replies.extend([Reply(hang=True), Reply(hang=True)])
    with trio.fail_after(DEADLINE_S):
        async with (
            running_openai(fake),
            translator(fake, openai_timeout_s=0.3, openai_max_retries=1) as engine,
        ):
            with pytest.raises(TranslationFailed, match=r"no answer within 0\.3 s"):
                await engine.translate("Anyone there?", source="en", target="es")
            assert len(fake.requests) == 2
            assert await engine.translate("Now?", source="en", target="es") == "[Spanish] Now?"


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_fail_without_retry(status: int) -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(status))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            with pytest.raises(TranslationFailed, match=str(status)):
                await engine.translate("Hello.", source="en", target="es")
    assert len(fake.requests) == 1


async def test_cancelling_a_translation_abandons_the_request_promptly() -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(hang=True))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake, openai_timeout_s=60) as engine:
            with trio.move_on_after(0.2) as scope:
                await engine.translate("Wait.", source="en", target="es")
            assert scope.cancelled_caught
            assert await engine.translate("Next.", source="en", target="es") == "[Spanish] Next."


async def test_languages_and_settings_are_checked() -> None:
    with pytest.raises(EngineUnavailable):
        OpenAITranslator(Config())
    with trio.fail_after(DEADLINE_S):
        async with running_openai() as fake, translator(fake) as engine:
            assert "es" in engine.targets("en") and "en" not in engine.targets("en")
            with pytest.raises(UnsupportedLanguage):
                await engine.translate("Hello.", source="en", target="xx")
            assert await engine.translate("  ", source="en", target="es") == ""
    assert fake.requests == []


async def test_the_rate_limiter_spaces_requests_and_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=0)
    start = trio.current_time()
    await limiter.acquire(10)
    await limiter.acquire(10)
    assert trio.current_time() == start
    await limiter.acquire(10)
    assert trio.current_time() - start == pytest.approx(30.0)

    tokens = RateLimiter(requests_per_minute=0, tokens_per_minute=600)
    start = trio.current_time()
    await tokens.acquire(550)
    await tokens.acquire(100)  # 50 left, 10 a second come back: 5 s
    assert trio.current_time() - start == pytest.approx(5.0)
    tokens.settle(estimated=100, used=40)  # the reply used fewer than estimated
    await tokens.acquire(60)
    assert trio.current_time() - start == pytest.approx(5.0)

    tokens.pause_until(trio.current_time() + 100)
    before = trio.current_time()
    await tokens.acquire(1)
    assert trio.current_time() - before == pytest.approx(100.0)


async def test_the_rate_limiter_lets_waiting_finals_go_before_waiting_partials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=0)
    await limiter.acquire(1)
    start = trio.current_time()
    admitted: list[tuple[str, float]] = []

    async def request(name: str) -> None:
        await limiter.acquire(1, urgent=name.startswith("final"))
        admitted.append((name, trio.current_time() - start))

    with trio.fail_after(600):  # virtual seconds
        async with trio.open_nursery() as nursery:
            # The first partial waits on the clock before any final comes.
            for name in ("partial 1", "partial 2", "final 1", "final 2"):
                nursery.start_soon(request, name)
                await trio.testing.wait_all_tasks_blocked()
    assert [name for name, _ in admitted] == ["final 1", "final 2", "partial 1", "partial 2"]
    assert [at for _, at in admitted] == pytest.approx([60, 120, 180, 240])


async def test_a_final_cancelled_while_waiting_takes_nothing_and_lets_partials_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=60)  # a token a second
    await limiter.acquire(60)
    start = trio.current_time()
    admitted: list[tuple[str, float]] = []

    async def partial() -> None:
        await limiter.acquire(1)
        admitted.append(("partial", trio.current_time() - start))

    async def final() -> None:
        with trio.move_on_at(start + 10):
            await limiter.acquire(30, urgent=True)
            admitted.append(("final", trio.current_time() - start))

    with trio.fail_after(600):  # virtual seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial)
            await trio.testing.wait_all_tasks_blocked()
            # Ahead of the partial (due at 1 s), the final would go at 30 s; it gives
            # up at 10.
            nursery.start_soon(final)
        assert admitted == [("partial", pytest.approx(10))]
        await limiter.acquire(9)
    assert trio.current_time() - start == pytest.approx(10)


async def test_a_final_queued_behind_partials_reaches_the_server_first(
    clock: trio.testing.MockClock,
) -> None:
    """Through the translator actor's call and the circuit breaker, as deployed: with
    the minute's one request spent, two partials wait, then a final comes; each minute
    (moved on at once) lets one request go, the final first."""
    minute = 61.0
    with trio.fail_after(DEADLINE_S + 3 * minute):
        async with (
            running_openai() as fake,
            translator(fake, openai_requests_per_minute=1, openai_timeout_s=3600) as openai,
        ):
            engine = BreakerTranslator(openai, failures=5, reset_s=3600)
            await engine.translate("Spent.", source="en", target="es")
            async with trio.open_nursery() as nursery:
                for seq, (text, is_partial) in enumerate(
                    [("Partial one", True), ("Partial one two", True), ("Final.", False)]
                ):
                    segment = Segment(seq, text, is_partial, "en", recognized_at=0, wall_ms=0)
                    nursery.start_soon(
                        functools.partial(
                            translate_segment, engine, segment, "es", context=(), timeout_s=3600
                        )
                    )
                    await trio.testing.wait_all_tasks_blocked()
                for seen in (2, 3, 4):
                    clock.jump(minute)
                    await fake.wait_for_requests(seen)
    assert [request.text for request in fake.requests] == [
        "Spent.",
        "Final.",
        "Partial one",
        "Partial one two",
    ]


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        (
            {
                "choices": [{"message": {"content": " hola "}, "finish_reason": "stop"}],
                "usage": {"total_tokens": 12},
            },
            ("hola", 12, "stop"),
        ),
        (
            {"choices": [{"message": {"refusal": "no"}}], "usage": {"total_tokens": 3}},
            ("", 3, "refusal"),
        ),
        ({"choices": []}, ("", 0, "")),
        ({"choices": [{"message": None, "finish_reason": None}]}, ("", 0, "")),
        ({"choices": "x", "usage": "y"}, ("", 0, "")),
        (["not", "an", "object"], ("", 0, "")),
    ],
)
def test_a_completion_is_read_from_its_json_whatever_its_shape(
    reply: object, read: tuple[str, int, str]
) -> None:
    assert _read_completion(reply) == read
