"""Whisper's speech-to-English task where Apertium has no route to English.

Italian speech (Festival's Italian voice) with Apertium capped at one hop: Italian
reaches Spanish directly but English only through Spanish, so with the cap a listener
reading English gets Whisper's translation of the audio, and one reading Spanish gets
Apertium's. Both over real sockets, at real-time pace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from helpers import checked, closing_engines, finals_of, listener_path, post
from test_real_speech import Received, captions, read_all, stream_in_real_time
from test_real_speech_languages import record

from babel_actors.config import Config
from babel_actors.engines import make_mt
from babel_actors.engines.speech_mt import SpeechMemory, SpeechTranslator
from babel_actors.engines.whisper import WhisperSpeechToText
from babel_actors.errors import TranslationFailed, UnsupportedLanguage
from babel_actors.testing import EchoTranslator, connect, running_server
from babel_actors.testing.speech import SpeechToolMissing, synthesize

ITALIAN = ("Ogni mattina bevo una tazza di caffè.", "Mia sorella abita in una grande città.")
ENGLISH_WORDS = (("cup", "coffee"), ("city",))
"""What Whisper base's translation held when measured ("... drink a cup of coffee",
"My ... in a great city"). The first sentence is marginal for the model (Festival's
Italian, heard as "Ommi matina vedo una tata di caffè"): on a loaded machine the same
audio has also come back as "I'll take you to a coffee table" and as Whisper's "Remember
to subscribe to the channel" hallucination, so the test asks for one of the two."""
TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def italian_voice(tmp_path_factory: pytest.TempPathFactory) -> None:
    try:
        synthesize("Ciao.", tmp_path_factory.mktemp("it") / "probe.wav", language="it")
    except SpeechToolMissing as exc:
        pytest.skip(f"Festival's Italian voice is missing (apt: festvox-italp16k): {exc}")


def test_memory_is_bounded_and_keyed_by_language_and_words() -> None:
    memory = SpeechMemory(2)
    memory.remember("it", "Ciao  a tutti", b"1")
    memory.remember("de", "Hallo", b"2")
    assert memory.audio("it", "Ciao a tutti") == b"1"
    assert memory.audio("de", "Ciao a tutti") is None
    memory.remember("it", "Buongiorno", b"3")
    assert memory.audio("it", "Ciao a tutti") is None, "the oldest goes first"
    assert memory.audio("de", "Hallo") == b"2"


class _Speech:
    """A speech engine that hears Italian and German and counts speech translations."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []

    def languages(self) -> frozenset[str]:
        return frozenset({"en", "it", "de"})

    async def translate_speech(self, pcm: bytes, *, language: str) -> str:
        self.calls.append((pcm, language))
        return "from speech"


async def test_routes_between_text_and_speech() -> None:
    speech, memory = _Speech(), SpeechMemory(4)
    # Echo between English and German only: nothing reaches English from Italian.
    translator = SpeechTranslator(EchoTranslator(frozenset({"en", "de"})), speech, memory)
    assert "en" in translator.targets("it") and "it" in translator.sources()
    assert translator.route("it", "en") == ("it", "en")
    memory.remember("it", "Ciao", b"pcm")
    with trio.fail_after(5):
        assert await translator.translate("Ciao", source="it", target="en") == "from speech"
        assert speech.calls == [(b"pcm", "it")]
        # German reaches English by text (echo has de->en): no decode.
        assert "Hallo" in await translator.translate("Hallo", source="de", target="en")
        assert len(speech.calls) == 1
        with pytest.raises(TranslationFailed, match="partials"):
            await translator.translate("Ciao", source="it", target="en", partial=True)
        with pytest.raises(TranslationFailed, match="no audio"):
            await translator.translate("Arrivederci", source="it", target="en")
        with pytest.raises(UnsupportedLanguage):
            await translator.translate("Ciao", source="it", target="ja")


def test_make_mt_wraps_apertium_only_for_a_multilingual_whisper() -> None:
    config = Config(apertium_max_hops=1)
    stt = WhisperSpeechToText(config)
    assert isinstance(make_mt(config, stt), SpeechTranslator)
    assert not isinstance(make_mt(config), SpeechTranslator)
    off = Config(apertium_max_hops=1, whisper_translate_to_english=False)
    assert not isinstance(make_mt(off, stt), SpeechTranslator)


@pytest.fixture
async def engines() -> AsyncIterator[tuple[WhisperSpeechToText, SpeechTranslator]]:
    config = Config(apertium_max_hops=1)
    stt = WhisperSpeechToText(config)
    mt = make_mt(config, stt)
    assert isinstance(mt, SpeechTranslator)
    if "es" not in mt.inner.targets("it"):
        pytest.skip("needs apertium-spa-ita (make run)")
    async with closing_engines(stt, mt):
        yield stt, mt


@pytest.mark.usefixtures("italian_voice")
async def test_italian_speech_reaches_english_through_whisper(
    engines: tuple[WhisperSpeechToText, SpeechTranslator], tmp_path: Path
) -> None:
    stt, mt = engines
    speech = record(ITALIAN, tmp_path, language="it")
    logs: dict[str, list[Received]] = {"host": [], "en": [], "es": []}
    got = {who: trio.Event() for who in logs}
    with trio.fail_after(TIMEOUT_S):
        await stt.load("it")
        async with running_server(Config(port=0), stt=stt, mt=mt) as server:
            status, session = await post(server, "/session/start", {"sourceLang": "it"})
            assert status == 200, session
            sid = session["sessionId"]
            async with AsyncExitStack() as stack:
                clients = {
                    lang: await stack.enter_async_context(connect(server, listener_path(sid, lang)))
                    for lang in ("en", "es")
                }
                clients["host"] = await stack.enter_async_context(connect(server, session["wsUrl"]))
                async with trio.open_nursery() as nursery:
                    for who, client in clients.items():
                        nursery.start_soon(read_all, client, logs[who], len(ITALIAN), got[who])
                    await stream_in_real_time(clients["host"], speech.pcm)
                    for event in got.values():
                        await event.wait()
                    await clients["host"].ws.aclose(code=1000)
    for log in logs.values():
        checked([r.message for r in log])
    heard = finals_of(captions(logs["host"]))
    assert len(heard) == len(ITALIAN), [m["originalText"] for m in heard]
    english = finals_of(captions(logs["en"]))
    understood = 0
    for final, words in zip(english, ENGLISH_WORDS, strict=True):
        assert final["hasTranslation"] and final["via"] == ["it", "en"], final
        assert final["translatedText"] != final["originalText"], final
        text = final["translatedText"].lower()
        understood += all(word in text for word in words)
    assert understood >= 1, [final["translatedText"] for final in english]
    for final in finals_of(captions(logs["es"])):
        assert final["hasTranslation"] and final["via"] == ["it", "es"], final
