"""The Apertium translator: real pipelines for en->es/eo, fake stages for failures."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from babel_actors.config import Config
from babel_actors.engines.apertium import (
    ApertiumTranslator,
    deformat,
    find_pairs,
    language_tag,
    reformat,
)
from babel_actors.engines.base import Translator
from babel_actors.errors import (
    EngineUnavailable,
    TranslationFailed,
    UnsupportedLanguage,
)

DEADLINE_S = 30.0
"""Bound on every async test: a cold pair loads in ~0.1-1 s on two busy cores."""

_MODES_DIR = Path(Config().apertium_modes_dir)
needs_apertium = pytest.mark.skipif(
    shutil.which("apertium-wblank-mode") is None, reason="apertium is not installed"
)
needs_pairs = pytest.mark.skipif(
    shutil.which("apertium-wblank-mode") is None
    or not {("en", "es"), ("en", "eo")} <= find_pairs(_MODES_DIR).keys(),
    reason="apertium-eng-spa and apertium-eo-en are not installed",
)

SENTENCES = [
    ("The cat is black.", "gato", "kato"),
    ("I like the house.", "casa", "domon"),
    ("The dog runs.", "perro", "hund"),
    ("The water is cold.", "agua", "akvo"),
    ("The book is red.", "libro", "libro"),
    ("My brother is tall.", "hermano", "frato"),
    ("The city is big.", "ciudad", "urbo"),
    ("I eat bread.", "pan", "panon"),
    ("The sun is hot.", "sol", "suno"),
    ("The tree is green.", "árbol", "arbo"),
    ("The window is open.", "ventana", "fenestro"),
    ("The cheese is good.", "queso", "fromaĝo"),
]
"""English sentences with a word their Spanish and Esperanto translations must hold."""

SPECIAL = "[]\\^$/<>@*#{}~"


def _children() -> set[int]:
    """Live or unreaped child processes of this test process."""
    me = str(os.getpid())
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            children.add(int(entry))
    return children


def _fake_pairs(tmp_path: Path, **stages: str) -> Config:
    """A modes directory whose pair ``en-<name>`` runs one shell-script stage."""
    modes = tmp_path / "modes"
    modes.mkdir()
    for target, body in stages.items():
        script = tmp_path / f"{target}-stage"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        (modes / f"en-{target}.mode").write_text(shlex.quote(str(script)) + "\n")
    return Config(apertium_modes_dir=str(modes), translate_timeout_s=1.0)


@pytest.fixture
async def translator() -> AsyncIterator[ApertiumTranslator]:
    engine = ApertiumTranslator(Config())
    try:
        yield engine
    finally:
        await engine.aclose()


# Discovery and the stream format (no processes).


def test_find_pairs_keeps_plain_modes_and_maps_codes(tmp_path: Path) -> None:
    names = [
        "eng-spa.mode", "en-es.mode", "eng-cat.mode", "eng-cat_valencia.mode",
        "en-eo.mode", "en-eo-bytecode.mode", "eo-en-j.mode", "en-gl.mode",
        "ast-spa.mode", "spa-spa.mode", "README", "eng-spa.mode.bak",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_text("cat\n")
    pairs = find_pairs(tmp_path)
    assert set(pairs) == {
        ("en", "es"),
        ("en", "ca"),
        ("en", "eo"),
        ("en", "gl"),
        ("ast", "es"),
    }
    assert pairs["en", "es"].mode.name == "eng-spa.mode"
    assert find_pairs(tmp_path / "missing") == {}


def test_language_tags() -> None:
    assert [language_tag(c) for c in ("eng", "EN", "en-US", "es_MX", "glg", "ast")] == [
        "en", "en", "en", "es", "gl", "ast",
    ]  # fmt: skip


def test_no_pairs_means_engine_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable):
        ApertiumTranslator(Config(apertium_modes_dir=str(tmp_path)))


def test_deformat_escapes_what_destxt_escapes() -> None:
    assert deformat("a [b] @c ~d\x00e\n f") == r"a \[b\] \@c [~]de f"
    assert "\0" not in deformat("\0\0x\0")


def test_reformat_unescapes_and_opens_superblanks() -> None:
    assert reformat(r" Hola \[mundo\] [\]x] \@y.  [~]z") == "Hola [mundo] ]x @y. ~z"
    assert reformat("[") == "["


@given(st.text())
def test_deformat_reformat_round_trip(text: str) -> None:
    kept = "".join(
        ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs")
    )
    assert reformat(deformat(text)) == " ".join(kept.split())


# Real pairs.


@needs_pairs
def test_discovers_installed_pairs() -> None:
    translator = ApertiumTranslator(Config())  # starts nothing until first used
    assert isinstance(translator, Translator)
    assert {"es", "eo"} <= translator.targets("en")
    assert "en" in translator.sources()
    assert translator.targets("eng") == translator.targets("en")


@needs_pairs
async def test_translates_english_to_spanish(translator: ApertiumTranslator) -> None:
    with trio.fail_after(DEADLINE_S):
        out = await translator.translate("Good morning, my friends.", source="en", target="es")
        assert out == "Buenos días, mis amigos."
        lower = await translator.translate("good morning, my friends.", source="en", target="es")
        assert lower.startswith("Buenos días")
        assert await translator.translate("  \n", source="en", target="es") == ""


@needs_pairs
async def test_unknown_words_come_back_unmarked(translator: ApertiumTranslator) -> None:
    with trio.fail_after(DEADLINE_S):
        out = await translator.translate(
            "The xyzzy frobnicator has a #hashtag.", source="en", target="es"
        )
    assert "xyzzy" in out and "*" not in out and "@" not in out
    assert "#hashtag" in out


@needs_pairs
async def test_many_sentences_in_a_row_each_get_their_own(
    translator: ApertiumTranslator,
) -> None:
    with trio.fail_after(DEADLINE_S):
        for _ in range(3):
            previous = None
            for english, spanish, _eo in SENTENCES:
                out = await translator.translate(english, source="en", target="es")
                assert spanish in out, (english, out)
                assert previous is None or previous not in out, (english, out)
                previous = spanish


@needs_pairs
async def test_concurrent_requests_match_their_inputs(
    translator: ApertiumTranslator,
) -> None:
    results: dict[tuple[str, str], str] = {}

    async def one(english: str, target: str) -> None:
        results[english, target] = await translator.translate(english, source="en", target=target)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for english, _es, _eo in SENTENCES * 2:
                nursery.start_soon(one, english, "es")
                nursery.start_soon(one, english, "eo")
    for english, spanish, esperanto in SENTENCES:
        assert spanish in results[english, "es"]
        assert esperanto in results[english, "eo"]


@needs_pairs
async def test_special_characters_survive(translator: ApertiumTranslator) -> None:
    text = "Use [brackets] and {braces}, a\\b, 5 > 3 < 4, $100 ^ 2 / x @home *star #tag ~tilde"
    with trio.fail_after(DEADLINE_S):
        out = await translator.translate(text, source="en", target="es")
        for hostile in ("@", "^word/x$", "[[double]] ]] [[", "\\", "<b>bold</b>", "~"):
            await translator.translate(hostile, source="en", target="es")
        after = await translator.translate("The cat is black.", source="en", target="es")
    special = Counter(ch for ch in text if ch in SPECIAL)
    assert Counter(ch for ch in out if ch in SPECIAL) == special
    assert after == "El gato es negro."


@needs_pairs
async def test_unsupported_pair_names_the_available_ones(
    translator: ApertiumTranslator,
) -> None:
    with trio.fail_after(DEADLINE_S):
        with pytest.raises(UnsupportedLanguage) as target_error:
            await translator.translate("Hello.", source="en", target="xx")
        with pytest.raises(UnsupportedLanguage) as source_error:
            await translator.translate("Hello.", source="xx", target="en")
    assert target_error.value.language == "xx"
    assert "es" in target_error.value.available
    assert "es" in str(target_error.value)
    assert source_error.value.available == translator.sources()


@needs_pairs
async def test_killed_pipeline_fails_once_then_recovers(
    translator: ApertiumTranslator,
) -> None:
    before = _children()
    with trio.fail_after(DEADLINE_S):
        await translator.translate("The cat is black.", source="en", target="es")
        stages = sorted(_children() - before)
        os.kill(stages[len(stages) // 2], signal.SIGKILL)
        with pytest.raises(TranslationFailed):
            await translator.translate("The dog runs.", source="en", target="es")
        assert _children() - before == set()
        out = await translator.translate("The book is red.", source="en", target="es")
    assert out == "El libro es rojo."
    assert not (_children() - before) & set(stages)


@needs_pairs
async def test_aclose_leaves_no_child_process() -> None:
    before = _children()
    engine = ApertiumTranslator(Config())
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for target in ("es", "eo"):
                nursery.start_soon(partial(engine.translate, "Hi.", source="en", target=target))
        assert _children() - before
        await engine.aclose()
        assert _children() - before == set()
        with pytest.raises(TranslationFailed, match="closed"):
            await engine.translate("Hello.", source="en", target="es")
    assert _children() - before == set()


# Fake stages: exact framing, hangs and broken installs.


@needs_apertium
async def test_identity_pipeline_round_trips_text(tmp_path: Path) -> None:
    engine = ApertiumTranslator(_fake_pairs(tmp_path, qi="exec cat"))
    texts = ["hello", f"a {SPECIAL} b", "x\\", "[", "ünïcödé 😀 “q”", "..."]
    try:
        with trio.fail_after(DEADLINE_S):
            for text in texts * 2:
                out = await engine.translate(text, source="en", target="qi")
                assert out == (text[0].upper() + text[1:] if text.islower() else text)
    finally:
        await engine.aclose()


@needs_apertium
async def test_timeout_kills_the_pipeline(tmp_path: Path) -> None:
    before = _children()
    config = _fake_pairs(tmp_path, qh="exec cat 3>&1 >/dev/null")
    engine = ApertiumTranslator(attrs.evolve(config, translate_timeout_s=0.3))
    try:
        with trio.fail_after(DEADLINE_S):
            for _ in range(2):
                with pytest.raises(TranslationFailed, match="no answer within"):
                    await engine.translate("Hello.", source="en", target="qh")
                assert _children() - before == set()
    finally:
        await engine.aclose()


@needs_apertium
async def test_cancelled_request_kills_the_pipeline(tmp_path: Path) -> None:
    before = _children()
    engine = ApertiumTranslator(_fake_pairs(tmp_path, qh="exec cat 3>&1 >/dev/null"))
    try:
        with trio.fail_after(DEADLINE_S):
            with trio.move_on_after(0.2) as scope:
                await engine.translate("Hello.", source="en", target="qh")
            assert scope.cancelled_caught
            assert _children() - before == set()
    finally:
        await engine.aclose()


@needs_apertium
async def test_stage_that_cannot_start_fails_the_request(tmp_path: Path) -> None:
    engine = ApertiumTranslator(_fake_pairs(tmp_path, qd="exit 3"))
    try:
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(TranslationFailed, match="pipeline ended"):
                await engine.translate("Hello.", source="en", target="qd")
            (tmp_path / "qd-stage").unlink()
            with pytest.raises(TranslationFailed, match="did not start"):
                await engine.translate("Hello.", source="en", target="qd")
    finally:
        await engine.aclose()


@needs_apertium
async def test_reply_to_another_request_is_refused(tmp_path: Path) -> None:
    before = _children()
    stale = r"exec sed -u -z 's/\[[0-9]*\]$/[999]/'"
    engine = ApertiumTranslator(_fake_pairs(tmp_path, qs=stale))
    try:
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(TranslationFailed, match="out of step"):
                await engine.translate("Hello.", source="en", target="qs")
            assert _children() - before == set()
    finally:
        await engine.aclose()
