"""Acceptance: real speech in, real captions out, over real sockets.

Festival speaks three English sentences; a host streams them at real-time pace, as
100 ms binary frames at the protocol's default 24 kHz, into a server running the
embedded engines (Whisper tiny.en and Apertium). Two listeners, Spanish and Catalan,
read the result. Nothing is scripted or faked between the microphone and the captions,
so this test takes about as long as the speech (~15 s) plus model loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import trio
import trio_websocket
from helpers import checked, finals_of, listener_path, start_session

from babel_actors.config import Config
from babel_actors.engines.apertium import ApertiumTranslator
from babel_actors.engines.whisper import WhisperSpeechToText
from babel_actors.testing import ProtocolClient, connect, running_server
from babel_actors.testing.speech import read_wav_pcm, synthesize, word_error_rate

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to bring your passport when you travel abroad next week.",
    "My brother bought a red car and a small house in the city.",
)
STABLE_WORDS = {
    "es": (("perro", "río"), ("pasaporte", "semana"), ("hermano", "casa")),
    "ca": (("gos", "riu"), ("passaport", "setmana"), ("germà", "casa")),
}
"""Words Apertium puts in each sentence's translation whatever small slip Whisper
makes elsewhere in it: they come from the sentence's plainest nouns."""
LISTENER_LANGS = ("es", "ca")
WER_TOLERANCE = 0.25
"""tiny.en scored 0.00 on each of these with Festival's voice when measured."""
RATE = 24000
"""The protocol's default rate: the host sends no ``init`` and the server assumes it."""
FRAME_S = 0.1
FRAME_BYTES = 2 * round(RATE * FRAME_S)
LEAD_S = 0.5
GAP_S = 1.0
"""Silence after each sentence: longer than the endpointer needs to close it."""
LOUD = 500
"""A sample above this (of 32767) counts as speech when marking where a sentence ends."""
TIMEOUT_S = 120.0
"""Bound on the whole test: ~15 s of speech, model loading, and two slow cores."""


@attrs.frozen
class Speech:
    """The host's microphone: the stream to send and where each sentence stops."""

    pcm: bytes
    """16-bit mono PCM at ``RATE``: lead silence, then each sentence and a gap."""
    speech_ends_s: tuple[float, ...]
    """Stream time of each sentence's last loud sample."""


@attrs.frozen
class Received:
    """A server message and the trio time it arrived."""

    message: dict[str, Any]
    at: float


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    folder: Path = tmp_path_factory.mktemp("real-speech")
    pcm = bytearray(b"\0\0" * round(LEAD_S * RATE))
    ends = []
    for i, sentence in enumerate(SENTENCES):
        sentence_pcm, rate = read_wav_pcm(synthesize(sentence, folder / f"{i}.wav", rate=RATE))
        assert rate == RATE
        samples = np.frombuffer(sentence_pcm, dtype="<i2").astype(np.int32)
        last_loud = int(np.flatnonzero(np.abs(samples) > LOUD)[-1])
        ends.append((len(pcm) // 2 + last_loud + 1) / RATE)
        pcm += sentence_pcm
        pcm += b"\0\0" * round(GAP_S * RATE)
    return Speech(bytes(pcm), tuple(ends))


async def stream_in_real_time(host: ProtocolClient, pcm: bytes) -> float:
    """Send ``pcm`` as ``FRAME_S`` binary frames, each once its audio has been
    "recorded", as a microphone would; then ``audio_end``. Returns the trio time at
    which stream time 0 was recorded."""
    start = trio.current_time()
    for offset in range(0, len(pcm), FRAME_BYTES):
        frame = pcm[offset : offset + FRAME_BYTES]
        await trio.sleep_until(start + (offset + len(frame)) / (2 * RATE))
        await host.send_audio(frame)
    await host.send({"type": "audio_end"})
    return start


async def read_all(
    client: ProtocolClient, log: list[Received], finals: int, got_finals: trio.Event
) -> None:
    """Record every message until the connection closes; set ``got_finals`` once
    ``finals`` finals are in, or at the close (the assertions then say what is missing)."""
    seen = 0
    while True:
        try:
            message = await client.receive()
        except trio_websocket.ConnectionClosed:
            got_finals.set()
            return
        log.append(Received(message, trio.current_time()))
        if message.get("type") == "translation" and not message["isPartial"]:
            seen += 1
            if seen >= finals:
                got_finals.set()


def captions(log: Sequence[Received]) -> list[dict[str, Any]]:
    return [r.message for r in log if r.message["type"] == "translation"]


def assert_partial_before_each_final(messages: list[dict[str, Any]], who: str) -> None:
    """Every final follows at least one partial of its own utterance.

    Robust for listeners too: each sentence lasts ~4 s and Whisper decodes a partial
    every second of speech (3-4 per sentence when measured), while the translator lets
    one through per 0.3 s per language; only a partial still in flight when its final is
    dispatched is dropped, so at most the last of each sentence's partials can be lost.
    """
    partials = 0
    for message in messages:
        if message["isPartial"]:
            partials += 1
        else:
            assert partials, f"{who}: no partial before final {message['originalText']!r}"
            partials = 0


def arrival_latencies(log: Sequence[Received], ends_at: Sequence[float]) -> list[float]:
    arrivals = [r.at for r in log if finals_of([r.message])]
    return [arrived - ended for arrived, ended in zip(arrivals, ends_at, strict=True)]


async def test_spoken_english_reaches_listeners_translated(speech: Speech) -> None:
    config = Config(port=0)
    stt = WhisperSpeechToText(config)
    mt = ApertiumTranslator(config)
    logs: dict[str, list[Received]] = {"host": [], **{lang: [] for lang in LISTENER_LANGS}}
    got_finals = {who: trio.Event() for who in logs}
    try:
        with trio.fail_after(TIMEOUT_S):
            await stt.load()
            async with running_server(config, stt=stt, mt=mt) as server:
                session = await start_session(server)
                sid = session["sessionId"]
                async with (
                    connect(server, listener_path(sid, "es")) as es,
                    connect(server, listener_path(sid, "ca")) as ca,
                    connect(server, session["wsUrl"]) as host,
                    trio.open_nursery() as nursery,
                ):
                    for who, client in (("host", host), ("es", es), ("ca", ca)):
                        nursery.start_soon(
                            read_all, client, logs[who], len(SENTENCES), got_finals[who]
                        )
                    start = await stream_in_real_time(host, speech.pcm)
                    for event in got_finals.values():
                        await event.wait()
                    # A normal close ends the session: listeners get session_ended and
                    # a close frame, so their logs are complete.
                    await host.ws.aclose(code=1000)
            expected = {
                lang: [
                    await mt.translate(final["originalText"], source="en", target=lang)
                    for final in finals_of(captions(logs[lang]))
                ]
                for lang in LISTENER_LANGS
            }
    finally:
        with trio.CancelScope(shield=True):
            await mt.aclose()
            await stt.aclose()

    for who, log in logs.items():
        checked([r.message for r in log])
        seqs = [m["seqId"] for m in captions(log)]
        assert seqs == sorted(set(seqs)), f"{who}: seqIds strictly increase"
    for lang in LISTENER_LANGS:
        kinds = [r.message["type"] for r in logs[lang]]
        assert kinds[0] == "session_joined" and kinds[-1] == "session_ended", kinds
        assert logs[lang][-1].message["reason"] == "host_ended"

    host_finals = finals_of(captions(logs["host"]))
    assert len(host_finals) == len(SENTENCES), [m["originalText"] for m in host_finals]
    final_seqs = [m["seqId"] for m in host_finals]
    wers = []
    for final, sentence in zip(host_finals, SENTENCES, strict=True):
        wer = word_error_rate(sentence, final["originalText"])
        wers.append(wer)
        assert wer <= WER_TOLERANCE, (sentence, final["originalText"])
        assert final["translatedText"] == final["originalText"] and final["hasTranslation"]
    assert_partial_before_each_final(captions(logs["host"]), "host")

    for lang in LISTENER_LANGS:
        listener_captions = captions(logs[lang])
        finals = finals_of(listener_captions)
        assert [m["seqId"] for m in finals] == final_seqs, f"{lang}: every final exactly once"
        assert [m["originalText"] for m in finals] == [m["originalText"] for m in host_finals]
        assert [m["translatedText"] for m in finals] == expected[lang]
        for final, words in zip(finals, STABLE_WORDS[lang], strict=True):
            assert final["hasTranslation"] and final["targetLang"] == lang
            text = final["translatedText"].lower()
            assert all(word in text for word in words), (words, final["translatedText"])
        assert_partial_before_each_final(listener_captions, lang)

    print(f"\nWER per sentence: {', '.join(f'{w:.2f}' for w in wers)}")
    for final in host_finals:
        print(f"  {final['originalText']}")
    ends_at = [start + end_s for end_s in speech.speech_ends_s]
    for who, log in logs.items():
        latencies = arrival_latencies(log, ends_at)
        print(f"speech end -> final at {who}: {', '.join(f'{s:.3f} s' for s in latencies)}")
