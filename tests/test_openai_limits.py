"""The ``openai`` translator and OpenAI's limits, against the local OpenAI-compatible
server sending 429s as OpenAI does: reservations of prompt plus
``max_completion_tokens``, short-period buckets on a mock clock, waits read from the
reset headers and the message, no retry on a spent quota, the token field, and
unusable replies that the breaker does not count."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from test_openai_engine import DEADLINE_S, translator

from babel_actors.config import Config
from babel_actors.engines.breaker import BreakerState, BreakerTranslator
from babel_actors.engines.openai import OpenAITranslator, UnusableReply, build_messages
from babel_actors.engines.openai_limits import parse_duration, retry_after_s
from babel_actors.engines.ratelimit import RateLimiter
from babel_actors.errors import ConfigError, TranslationFailed
from babel_actors.testing.openai import (
    FakeOpenAI,
    Reply,
    quota_exceeded,
    rate_limited,
    running_openai,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("1.2s", 1.2), ("20ms", 0.02), ("6m0s", 360.0), ("1h2m3s", 3723.0)],
)
def test_reset_durations_are_read_as_openai_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "1s later"])
def test_what_is_not_a_duration_is_none(text: str) -> None:
    assert parse_duration(text) is None


def test_a_429_names_its_wait_in_headers_or_message() -> None:
    spent_tokens = dict(rate_limited(limit="tokens", reset_s=1.2).headers)
    assert retry_after_s(spent_tokens, "") == pytest.approx(1.2), "the spent limit's reset"
    assert retry_after_s({"retry-after": "3"}, "try again in 9s") == 3.0
    hint = "Limit 30000, Used 29688, Requested 573. Please try again in 522ms. Visit ..."
    assert retry_after_s({}, hint) == pytest.approx(0.522)
    assert retry_after_s({}, "no hint") is None


async def test_a_request_reserves_its_prompt_and_max_completion_tokens() -> None:
    with trio.fail_after(DEADLINE_S):
        async with running_openai() as fake, translator(fake) as engine:
            await engine.translate("Good morning, everyone.", source="en", target="es")
    [request] = fake.requests
    assert request.body["max_completion_tokens"] == 400
    assert "max_tokens" not in request.body
    messages = build_messages("Good morning, everyone.", source="en", target="es")
    prompt = sum(len(m["content"]) for m in messages) // 4  # what the emulator counts
    assert engine.reservation(messages) >= prompt + 400


async def test_the_limiter_admits_no_more_tokens_than_the_reservations_allow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 6,000 tokens a minute is 100 a second; a bucket holds one second of them.
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=6000, burst_s=1.0)
    reservation = 573
    start = trio.current_time()
    admitted: list[float] = []

    async def request() -> None:
        await limiter.acquire(reservation, urgent=True)
        admitted.append(trio.current_time() - start)

    with trio.fail_after(3600):  # virtual seconds
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(request)
    assert len(admitted) == 20
    for count, at in enumerate(admitted, 1):
        # What went by then: the bucket, its refill, and the one request overdrawing it.
        assert count * reservation <= 100 + 100 * at + reservation
    # And no slower than the limit: one reservation's refill (5.73 s) apart.
    assert admitted == pytest.approx([k * reservation / 100 for k in range(20)])


@pytest.mark.parametrize(
    "reply",
    [
        rate_limited(limit="tokens", reset_s=0.4),
        rate_limited(limit="requests", reset_s=0.4),
        Reply(429, (), {"error": {"message": "Please try again in 400ms.", "code": "x"}}),
    ],
    ids=["reset-tokens", "reset-requests", "message"],
)
async def test_a_429_without_retry_after_waits_as_long_as_openai_says(reply: Reply) -> None:
    fake = FakeOpenAI()
    fake.replies.append(reply)
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            text = await engine.translate("Hello.", source="en", target="fr")
    assert text == "[French] Hello."
    first, second = fake.requests
    # A lower bound only: the backoff alone would have retried after 0.01 s.
    assert second.at - first.at >= 0.4


async def test_a_spent_quota_is_not_retried() -> None:
    fake = FakeOpenAI()
    fake.replies.extend([quota_exceeded(), Reply()])
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            with pytest.raises(TranslationFailed, match="insufficient_quota"):
                await engine.translate("Hello.", source="en", target="es")
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [408, 409])
async def test_408_and_409_are_retried_like_the_sdk_would(status: int) -> None:
    fake = FakeOpenAI()
    fake.replies.append(Reply(status))
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as engine:
            assert await engine.translate("Hi.", source="en", target="es") == "[Spanish] Hi."
    assert len(fake.requests) == 2


async def test_the_token_field_is_configurable_and_reasoning_models_refuse_max_tokens() -> None:
    with trio.fail_after(DEADLINE_S):
        async with running_openai() as fake:
            async with translator(fake, openai_token_field="max_tokens") as compatible:
                await compatible.translate("One.", source="en", target="es")
            async with translator(fake, openai_model="o3-mini") as reasoning:
                await reasoning.translate("Two.", source="en", target="es")
            settings: dict[str, Any] = {
                "openai_model": "o3-mini",
                "openai_token_field": "max_tokens",
            }
            async with translator(fake, **settings) as refused:
                with pytest.raises(UnusableReply, match="max_completion_tokens"):
                    await refused.translate("Three.", source="en", target="es")
    first, second, third = (r.body for r in fake.requests)
    assert first["max_tokens"] == 400 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 400 and "max_tokens" not in second
    assert third["max_tokens"] == 400
    with pytest.raises(ConfigError, match="TOKEN_FIELD"):
        OpenAITranslator(Config(openai_api_key="k", openai_token_field="max_output_tokens"))


def completion(content: str, finish_reason: str) -> Reply:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 400, "total_tokens": 500},
    }
    return Reply(200, (), body)


async def test_unusable_replies_fail_the_translation_but_not_the_circuit() -> None:
    fake = FakeOpenAI()
    fake.replies.extend(
        [
            completion("Buenos días a to", "length"),
            completion("", "stop"),
            completion("", "content_filter"),
            Reply(400),
        ]
    )
    with trio.fail_after(DEADLINE_S):
        async with running_openai(fake), translator(fake) as openai:
            engine = BreakerTranslator(openai, failures=1, reset_s=3600)
            for expected in ("cut the translation short", "empty", "content_filter", "400"):
                with pytest.raises(UnusableReply, match=expected):
                    await engine.translate("Good morning to all.", source="en", target="es")
            assert engine.breaker.state is BreakerState.CLOSED
            assert await engine.translate("Hi.", source="en", target="es") == "[Spanish] Hi."
    assert len(fake.requests) == 5
