"""Translation as a graph: routes over pairs (pure), and real Apertium along them."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from bystander import closed_with
from helpers import checked, get, listener_path, post, start_session
from hypothesis import given
from hypothesis import strategies as st
from protocol_schemas import validate_server_message

from babel_actors.config import Config
from babel_actors.engines.apertium import ApertiumTranslator, find_pairs
from babel_actors.engines.base import translation_route
from babel_actors.engines.echo import EchoTranslator
from babel_actors.engines.graph import PairGraph
from babel_actors.errors import UnsupportedLanguage
from babel_actors.events import Caption, Segment
from babel_actors.glossary import Glossary, Term
from babel_actors.renderer import translate_segment
from babel_actors.testing import (
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)
from babel_actors.wire.server import caption_message, render, rendered_from_payload

DEADLINE_S = 30.0

_PIVOT_PAIRS = {("en", "es"), ("es", "pt"), ("es", "fr"), ("es", "it")}
needs_pivot_pairs = pytest.mark.skipif(
    shutil.which("apertium-wblank-mode") is None
    or not _PIVOT_PAIRS <= find_pairs(Path(Config().apertium_modes_dir)).keys(),
    reason="needs apertium-eng-spa, apertium-es-pt, apertium-fr-es, apertium-spa-ita",
)

PAIRS = [("en", "es"), ("es", "en"), ("es", "pt"), ("pt", "es"), ("en", "ca"), ("ca", "it")]


def test_direct_pair_beats_a_shorter_looking_pivot() -> None:
    graph = PairGraph([*PAIRS, ("en", "pt")])
    assert graph.route("en", "pt") == ("en", "pt")
    assert graph.route("en", "es") == ("en", "es")


def test_two_hops_through_a_pivot() -> None:
    graph = PairGraph(PAIRS)
    assert graph.route("en", "pt") == ("en", "es", "pt")
    assert graph.route("pt", "en") == ("pt", "es", "en")
    assert graph.targets("en") == {"es", "pt", "ca", "it"}


def test_the_cap_on_hops_holds() -> None:
    chain = [("a", "b"), ("b", "c"), ("c", "d")]
    assert PairGraph(chain).route("a", "d") is None
    assert PairGraph(chain, max_hops=3).route("a", "d") == ("a", "b", "c", "d")
    assert PairGraph(chain, max_hops=1).targets("a") == {"b"}
    with pytest.raises(ValueError, match="max_hops"):
        PairGraph(chain, max_hops=0)


def test_ties_go_to_the_first_pivot_whatever_the_order() -> None:
    pairs = [("en", "es"), ("es", "pt"), ("en", "ca"), ("ca", "pt")]
    assert PairGraph(pairs).route("en", "pt") == ("en", "ca", "pt")
    assert PairGraph(reversed(pairs)).route("en", "pt") == ("en", "ca", "pt")


def test_no_route_to_oneself_or_the_unknown() -> None:
    graph = PairGraph(PAIRS)
    assert graph.route("en", "en") is None
    assert "en" not in graph.targets("en")
    assert graph.route("xx", "en") is None
    assert graph.targets("xx") == frozenset()


_langs = st.sampled_from("abcdef")


@given(st.lists(st.tuples(_langs, _langs), max_size=20), st.integers(1, 4))
def test_every_route_is_a_chain_of_pairs_and_shortest(
    pairs: list[tuple[str, str]], max_hops: int
) -> None:
    graph = PairGraph(pairs, max_hops=max_hops)
    for source in graph.sources():
        for target, route in graph.routes(source).items():
            assert route[0] == source and route[-1] == target
            assert len(route) - 1 <= max_hops
            assert all(hop in pairs for hop in itertools.pairwise(route))
            assert len(set(route)) == len(route)
            # Shortest: no pair skips a language of the route.
            for i in range(len(route)):
                for j in range(i + 2, len(route)):
                    assert (route[i], route[j]) not in pairs


def test_route_of_an_engine_without_routing_is_direct() -> None:
    echo = EchoTranslator()
    assert translation_route(echo, "en", "es") == ("en", "es")
    assert translation_route(echo, "en", "en") == ("en",)


def _segment(text: str, source: str = "en") -> Segment:
    return Segment(
        seq_id=7, text=text, is_partial=False, source_lang=source, recognized_at=0.0, wall_ms=1
    )


def test_caption_carries_via_on_the_wire_and_back() -> None:
    caption = Caption(_segment("The cat."), "pt", "O gato.", True, via=("en", "es", "pt"))
    message = caption_message(caption)
    assert message["via"] == ["en", "es", "pt"]
    validate_server_message(message)
    back = rendered_from_payload(render(caption).payload)
    assert back is not None and back.caption.via == ("en", "es", "pt")
    untranslated = caption_message(Caption(_segment("The cat."), "pt", "The cat.", False))
    assert "via" not in untranslated
    validate_server_message(untranslated)


@pytest.fixture
async def apertium() -> AsyncIterator[ApertiumTranslator]:
    engine = ApertiumTranslator(Config())
    try:
        yield engine
    finally:
        await engine.aclose()


@needs_pivot_pairs
@pytest.mark.parametrize(
    ("target", "word"), [("pt", "gato"), ("fr", "chat"), ("it", "gatto"), ("es", "gato")]
)
async def test_english_reaches_romance_languages_through_spanish(
    apertium: ApertiumTranslator, target: str, word: str
) -> None:
    with trio.fail_after(DEADLINE_S):
        text = await apertium.translate("The cat is black.", source="en", target=target)
    assert word in text.lower()
    assert apertium.route("en", target) == (
        ("en", "es") if target == "es" else ("en", "es", target)
    )
    assert target in apertium.targets("en")


@needs_pivot_pairs
async def test_caption_names_the_path_it_took(apertium: ApertiumTranslator) -> None:
    with trio.fail_after(DEADLINE_S):
        caption = await translate_segment(
            apertium, _segment("The house is big."), "pt", context=(), timeout_s=DEADLINE_S
        )
    assert caption.has_translation and "casa" in caption.text
    assert caption.via == ("en", "es", "pt")
    validate_server_message(json.loads(render(caption).payload))


@needs_pivot_pairs
async def test_glossary_survives_two_hops(apertium: ApertiumTranslator) -> None:
    glossary = Glossary(terms=(Term("black", None, (("pt", "PRETO-G"),)),), keep=("Rex",))
    with trio.fail_after(DEADLINE_S):
        text = await apertium.translate(
            "Rex is black.", source="en", target="pt", glossary=glossary
        )
    assert "PRETO-G" in text and "Rex" in text


@needs_pivot_pairs
async def test_unreachable_language_is_refused_listing_the_reachable(
    apertium: ApertiumTranslator,
) -> None:
    with pytest.raises(UnsupportedLanguage) as caught:
        await apertium.translate("The cat.", source="en", target="de")
    message = str(caught.value)
    assert "'de'" in message
    for reachable in ("es", "pt", "fr", "it"):
        assert reachable in caught.value.available and reachable in message


@needs_pivot_pairs
async def test_max_hops_one_keeps_to_direct_pairs() -> None:
    engine = ApertiumTranslator(Config(apertium_max_hops=1))
    try:
        assert "pt" not in engine.targets("en")
        with pytest.raises(UnsupportedLanguage):
            await engine.translate("The cat.", source="en", target="pt")
    finally:
        await engine.aclose()


@needs_pivot_pairs
async def test_health_lists_routes_and_listeners_read_along_them(
    apertium: ApertiumTranslator,
) -> None:
    stt = ScriptedSpeechToText(sentence_script(["The cat is black."], partials=1))
    with trio.fail_after(DEADLINE_S):
        async with running_server(Config(port=0), stt=stt, mt=apertium) as server:
            status, health = await get(server, "/health")
            assert status == 200
            assert {"pt", "fr", "it", "es"} <= set(health["mtPairs"]["en"])
            assert health["mtRoutes"]["en"]["pt"] == ["en", "es", "pt"]
            assert health["mtRoutes"]["en"]["es"] == ["en", "es"]

            session = await start_session(server)
            sid = session["sessionId"]
            async with connect(server, listener_path(sid, "de")) as refused:
                error = await closed_with(refused, 1008)
            assert "'de'" in error["message"]
            assert all(lang in error["message"] for lang in ("pt", "fr", "it"))

            async with (
                connect(server, listener_path(sid, "pt")) as pt,
                connect(server, session["wsUrl"]) as host,
            ):
                assert (await pt.receive())["type"] == "session_joined"
                await host.send_audio(silence(2.5))
                final = (await pt.finals(1))[0]
    checked([final])
    assert "gato" in final["translatedText"].lower()
    assert final["via"] == ["en", "es", "pt"]


async def test_auto_is_refused_by_an_engine_that_cannot_identify_languages() -> None:
    with trio.fail_after(DEADLINE_S):
        async with running_server(Config(port=0)) as server:
            status, body = await post(server, "/session/start", {"sourceLang": "auto"})
            assert status == 400 and "'auto'" in body["error"] and "en" in body["error"], body
            status, body = await post(server, "/session/start", {"sourceLang": "automatic"})
            assert status == 400 and "language code" in body["error"], body
            session = await start_session(server)
            async with connect(server, session["wsUrl"]) as host:
                await host.send({"type": "init", "sourceLang": "auto"})
                error = await host.receive_until(lambda m: m["type"] == "error")
            assert "'auto'" in error[-1]["message"], error
