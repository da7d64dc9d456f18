"""Acceptance (issue 13): a session finishes what it heard before it ends.

Measured bug: a host that sends ``audio_end`` and closes its WebSocket (1000) right
after speaking gets its last sentence(s) to no listener, because ending a session
cancelled the pipeline with the speech still in it. What a stranger would try: speak
and hang up at once; stop the server (SIGTERM) while a speaker is mid-sentence; let
the host's network die for good; embed the library and leave ``open_session`` right
after the last word. Each time every finished sentence must still reach every
listener, translated, in order and once, and only then ``session_ended``. And the
other side of it: a crashed session must not wait for a drain, it ends at once.

Real speech (Festival), the embedded engines (Whisper tiny.en, Apertium), real
sockets. Whisper's words vary, so a sentence is recognised by one plain word of it.
The drain deadline (``drain_s``) is set far above what the work needs: these tests
are about the order of things, not about how fast a slow machine drains.
"""

from __future__ import annotations

import signal
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events as ws_events
from bystander import raw_websocket
from helpers import checked, closing_engines, finals_of, listener_path
from test_cli import cli, start_session, ws_connect

from babel_actors import Caption, Config, Session, make_mt, make_stt, open_session
from babel_actors.engines.base import SpeechToText, Translator
from babel_actors.events import AudioEvent, AudioFrame, SttResult
from babel_actors.glossary import Glossary
from babel_actors.testing import EchoTranslator, ProtocolClient, running_server, silence
from babel_actors.testing.speech import read_wav_pcm, synthesize

SENTENCES = (
    "Good morning and welcome to the meeting.",
    "The weather is very cold today.",
    "Please open your books at page ten.",
)
KEYWORDS = ("morning", "weather", "books")
"""One plain word of each sentence, which Whisper gets right whatever else it slips on."""
LANGS = ("es", "ca")
"""Listener languages: installed Apertium pairs from English."""
RATE = 24000
"""The protocol's default rate: the host sends no ``init``."""
FRAME_BYTES = 2 * round(RATE * 0.1)
"""100 ms frames, as a browser sends them."""
LEAD_S = 0.5
GAP_S = 1.0
"""Silence between sentences: longer than the endpointer needs to close one."""
TAIL_S = 0.2
"""Silence after the last sentence before the host hangs up: too short to close it."""
DRAIN_S = 120.0
GRACE_S = 1.0
"""How long a dropped host may take to come back, when the test lets it drop."""
TIMEOUT_S = 180.0
"""Bound on each speech test: ~10 s of speech, model loading, two slow cores."""
CRASH_TIMEOUT_S = 30.0
NORMAL, GOING_AWAY, SERVER_ERROR = 1000, 1001, 1011


# --- speech ---------------------------------------------------------------------------


@attrs.frozen
class Speech:
    """Each sentence as 16-bit mono PCM at ``RATE``."""

    sentences: tuple[bytes, ...]

    def said(self, complete: int, *, then: bytes) -> bytes:
        """A lead silence, the first ``complete`` sentences with a gap between them,
        then ``then``."""
        pcm = bytearray(silence(LEAD_S, RATE))
        for index in range(complete):
            if index:
                pcm += silence(GAP_S, RATE)
            pcm += self.sentences[index]
        return bytes(pcm + then)

    def half_of(self, index: int) -> bytes:
        pcm = self.sentences[index]
        return pcm[: len(pcm) // 4 * 2]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    folder: Path = tmp_path_factory.mktemp("session-end-speech")
    sentences = []
    for index, sentence in enumerate(SENTENCES):
        pcm, rate = read_wav_pcm(synthesize(sentence, folder / f"{index}.wav", rate=RATE))
        assert rate == RATE
        sentences.append(pcm)
    return Speech(tuple(sentences))


async def stream(host: ProtocolClient | RawHost, pcm: bytes, *, real_time: bool) -> None:
    """Send ``pcm`` in 100 ms binary frames: each once it has been "recorded", as a
    microphone would, or all as fast as the socket takes them."""
    start = trio.current_time()
    for offset in range(0, len(pcm), FRAME_BYTES):
        frame = pcm[offset : offset + FRAME_BYTES]
        if real_time:
            await trio.sleep_until(start + (offset + len(frame)) / (2 * RATE))
        await host.send_audio(frame)


class RawHost:
    """A host on a bare socket, so the test can drop it as a dead network does: no
    close frame, a TCP reset. It never reads what the server sends it."""

    def __init__(self, sock: trio.socket.SocketType, ws: wsproto.WSConnection) -> None:
        self.sock = sock
        self.ws = ws

    @classmethod
    async def connect(cls, port: int, path: str) -> RawHost:
        return cls(*await raw_websocket(port, path))

    async def send_audio(self, pcm: bytes) -> None:
        data = self.ws.send(ws_events.BytesMessage(data=pcm))
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    def abort(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# --- who reads the session ------------------------------------------------------------


@attrs.define
class Room:
    """A session's listeners, one per language of ``LANGS``, and whoever else the
    test ``watch``es: each read in the background until the server closes it."""

    nursery: trio.Nursery
    listeners: dict[str, ProtocolClient]
    closes: dict[str, int | None] = attrs.field(factory=dict)
    """Close code of each connection the server closed, by name."""

    def watch(self, client: ProtocolClient, name: str) -> None:
        self.nursery.start_soon(self.read_until_closed, client, name)

    async def read_until_closed(self, client: ProtocolClient, name: str) -> None:
        """Record what ``client`` receives until the server closes it. (A client
        context left before that would close it itself, with 1000.)"""
        try:
            while True:
                await client.receive()
        except trio_websocket.ConnectionClosed as closed:
            self.closes[name] = None if closed.reason is None else closed.reason.code


@asynccontextmanager
async def room(port: int, session_id: str) -> AsyncIterator[Room]:
    """Greeted listeners of ``session_id``; the block ends once the server has closed
    every connection the room reads."""
    async with AsyncExitStack() as stack:
        listeners = {}
        for lang in LANGS:
            path = listener_path(session_id, lang)
            listener = await stack.enter_async_context(ws_connect(port, path))
            joined = await listener.receive()
            assert joined["type"] == "session_joined", joined
            listeners[lang] = listener
        async with trio.open_nursery() as nursery:
            readers = Room(nursery, listeners)
            for lang, listener in listeners.items():
                readers.watch(listener, lang)
            yield readers


@asynccontextmanager
async def embedded_engines(config: Config) -> AsyncIterator[tuple[SpeechToText, Translator]]:
    """Whisper and Apertium, as ``config`` names them (its defaults), closed after."""
    stt, mt = make_stt(config), make_mt(config)
    assert (stt.name, mt.name) == ("whisper", "apertium")
    async with closing_engines(stt, mt):
        yield stt, mt


# --- what listeners must have read ----------------------------------------------------


@attrs.frozen
class Final:
    """A final as a listener read it, off the wire or from a ``CaptionStream``."""

    seq_id: int
    original: str
    translated: str
    has_translation: bool
    target: str

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Final:
        return cls(
            message["seqId"],
            message["originalText"],
            message["translatedText"],
            message["hasTranslation"],
            message["targetLang"],
        )

    @classmethod
    def from_caption(cls, caption: Caption) -> Final:
        segment = caption.segment
        return cls(
            segment.seq_id, segment.text, caption.text, caption.has_translation, caption.target_lang
        )


def assert_heard(finals: Sequence[Final], lang: str, keywords: Sequence[str]) -> None:
    """Each sentence (by its keyword) is in exactly one final, in the order spoken,
    translated into ``lang``; seqIds only grow. More finals (a sentence cut in two, a
    half sentence at the end) are allowed."""
    texts = [final.original.lower() for final in finals]
    where = []
    for word in keywords:
        hits = [index for index, text in enumerate(texts) if word in text]
        assert len(hits) == 1, f"{lang}: {word!r} should be in exactly one final: {texts}"
        where.append(hits[0])
    assert where == sorted(where), f"{lang}: sentences out of order: {texts}"
    seqs = [final.seq_id for final in finals]
    assert seqs == sorted(set(seqs)), f"{lang}: seqIds {seqs}"
    for final in finals:
        assert final.has_translation and final.target == lang, final
    for index in where:
        assert finals[index].translated != finals[index].original, finals[index]


def assert_heard_then_ended(
    listeners: dict[str, ProtocolClient],
    closes: dict[str, int | None],
    keywords: Sequence[str],
    reason: str,
    code: int,
) -> None:
    """Every listener read each sentence of ``keywords`` (``assert_heard``), then
    ``session_ended`` for ``reason`` as its last message, then a close with ``code``."""
    for lang, listener in listeners.items():
        messages = checked(listener.received)
        assert_heard([Final.from_wire(m) for m in finals_of(messages)], lang, keywords)
        ended = [m for m in messages if m["type"] == "session_ended"]
        assert len(ended) == 1 and messages[-1] is ended[0], messages[-3:]
        assert ended[0]["reason"] == reason, ended[0]
        assert closes[lang] == code


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("audio_end", [True, False], ids=["audio_end", "no_audio_end"])
async def test_host_hanging_up_right_after_speaking_loses_no_sentence(
    speech: Speech, audio_end: bool
) -> None:
    """The host speaks three sentences at real-time pace, 0.2 s of silence, then
    (``audio_end`` or not) closes with 1000: both listeners get all three, then
    ``session_ended`` (``host_ended``)."""
    config = Config(port=0, drain_s=DRAIN_S)
    with trio.fail_after(TIMEOUT_S):
        async with (
            embedded_engines(config) as (stt, mt),
            running_server(config, stt=stt, mt=mt) as server,
        ):
            session = await start_session(server.url)
            async with room(server.port, session["sessionId"]) as readers:
                async with ws_connect(server.port, session["wsUrl"]) as host:
                    assert (await host.receive())["type"] == "session_ready"
                    readers.watch(host, "host")
                    await stream(host, speech.said(3, then=silence(TAIL_S, RATE)), real_time=True)
                    if audio_end:
                        await host.send({"type": "audio_end"})
                    await host.ws.aclose(code=NORMAL)
    assert_heard_then_ended(readers.listeners, readers.closes, KEYWORDS, "host_ended", NORMAL)


async def test_sigterm_mid_sentence_delivers_the_finished_sentences_first(
    speech: Speech, tmp_path: Path
) -> None:
    """``babel-actors serve`` (Whisper, Apertium) takes two sentences and half of a
    third, all at once (its audio meter's burst raised to hold them), so its pipeline
    is still busy with them; once it has them all (a ping answered after them), it
    gets SIGTERM. Both listeners get the two finished sentences, then
    ``session_ended`` (``shutdown``); the process exits 0."""
    env = {
        "BABEL_DRAIN_S": str(DRAIN_S),
        "BABEL_SHUTDOWN_GRACE_S": str(DRAIN_S),
        "BABEL_AUDIO_BURST_S": "60",
    }
    pcm = speech.said(2, then=silence(GAP_S, RATE) + speech.half_of(2))
    async with cli(tmp_path, "--port", "0", env=env) as server:
        with trio.fail_after(TIMEOUT_S):
            banner = await server.read_banner()
            assert "speech: whisper" in banner[1] and "translation: apertium" in banner[2]
            session = await start_session(server.url)
            async with room(server.port, session["sessionId"]) as readers:
                async with ws_connect(server.port, session["wsUrl"]) as host:
                    await host.receive_until(lambda m: m["type"] == "session_ready")
                    await stream(host, pcm, real_time=False)
                    # The server handles a host's messages in order: the pong says it
                    # has taken every frame sent before the ping.
                    await host.send({"type": "ping", "timestamp": 13})
                    await host.receive_until(lambda m: m["type"] == "pong")
                    server.process.send_signal(signal.SIGTERM)
                    await readers.read_until_closed(host, "host")
            await server.process.wait()
    assert_heard_then_ended(readers.listeners, readers.closes, KEYWORDS[:2], "shutdown", GOING_AWAY)
    assert readers.closes["host"] == GOING_AWAY
    assert server.process.returncode == 0, server.stderr()
    assert "Traceback" not in server.stderr(), server.stderr()


async def test_host_that_never_comes_back_still_gets_every_sentence_out(speech: Speech) -> None:
    """The host speaks three sentences at real-time pace and 0.2 s of silence, then
    its connection dies (a TCP reset, no close frame) and it never returns: after the
    grace period both listeners get all three, then ``session_ended``
    (``host_timeout``)."""
    config = Config(port=0, drain_s=DRAIN_S, host_grace_s=GRACE_S)
    with trio.fail_after(TIMEOUT_S):
        async with (
            embedded_engines(config) as (stt, mt),
            running_server(config, stt=stt, mt=mt) as server,
        ):
            session = await start_session(server.url)
            async with room(server.port, session["sessionId"]) as readers:
                host = await RawHost.connect(server.port, session["wsUrl"])
                try:
                    pcm = speech.said(3, then=silence(TAIL_S, RATE))
                    await stream(host, pcm, real_time=True)
                finally:
                    host.abort()
    assert_heard_then_ended(readers.listeners, readers.closes, KEYWORDS, "host_timeout", NORMAL)


async def read_finals(
    session: Session,
    language: str,
    finals: list[Caption],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe to ``language``, then keep its finals until the stream ends."""
    async with session.listen(language) as captions:
        task_status.started()
        async for caption in captions:
            if not caption.segment.is_partial:
                finals.append(caption)


async def test_embedder_leaving_the_session_block_at_once_still_gets_every_sentence(
    speech: Speech,
) -> None:
    """An embedder subscribes with ``session.listen`` in tasks that outlive the
    session, feeds three sentences as fast as the pipeline takes them, calls
    ``end_of_speech()`` and leaves ``open_session`` at once: each reader gets all
    three finals, translated, and its stream then ends by itself."""
    config = Config(drain_s=DRAIN_S)
    finals: dict[str, list[Caption]] = {lang: [] for lang in LANGS}
    with trio.fail_after(TIMEOUT_S):
        async with embedded_engines(config) as (stt, mt), trio.open_nursery() as readers:
            async with open_session(stt=stt, mt=mt, config=config, source_lang="en") as session:
                for lang in LANGS:
                    await readers.start(read_finals, session, lang, finals[lang])
                pcm = speech.said(3, then=silence(TAIL_S, RATE))
                for offset in range(0, len(pcm), FRAME_BYTES):
                    await session.feed(pcm[offset : offset + FRAME_BYTES], RATE)
                await session.end_of_speech()
            # The readers' nursery exits only once each stream has ended by itself.
    for lang in LANGS:
        assert_heard([Final.from_caption(c) for c in finals[lang]], lang, KEYWORDS)


class CrashingSpeechToText:
    """Speaks one final after ``FINAL_AFTER_S`` of audio, then hits a bug at
    ``CRASH_AFTER_S``: a plain ``RuntimeError``, not an ``EngineError``, which no
    actor handles."""

    name = "crashing"
    sample_rate = 16000
    FINAL_AFTER_S = 1.0
    CRASH_AFTER_S = 1.5

    def languages(self) -> frozenset[str]:
        return frozenset({"en"})

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        heard_s = 0.0
        said = False
        async for event in audio:
            if isinstance(event, AudioFrame):
                heard_s += len(event.pcm) / 2 / event.sample_rate
            if heard_s >= self.FINAL_AFTER_S and not said:
                said = True
                await results.send(SttResult("the last words before the crash", True))
            if heard_s >= self.CRASH_AFTER_S:
                raise RuntimeError("a bug in the speech engine")

    async def aclose(self) -> None:
        return None


async def test_a_crashed_session_ends_at_once_whatever_the_drain_deadline() -> None:
    """A session whose speech engine crashes mid-stream, with an hour to drain
    (``drain_s``): its listeners get ``session_ended`` (``error``) and a 1011 close
    at once, not an hour later."""
    config = Config(port=0, drain_s=3600.0)
    engine = CrashingSpeechToText()
    with trio.fail_after(CRASH_TIMEOUT_S):
        async with running_server(config, stt=engine, mt=EchoTranslator()) as server:
            session = await start_session(server.url)
            async with room(server.port, session["sessionId"]) as readers:
                async with ws_connect(server.port, session["wsUrl"]) as host:
                    assert (await host.receive())["type"] == "session_ready"
                    await host.send_audio(silence(engine.FINAL_AFTER_S + 0.05, RATE))
                    (final,) = await host.finals(1)
                    assert final["originalText"] == "the last words before the crash"
                    await host.send_audio(silence(engine.CRASH_AFTER_S, RATE))
                    await readers.read_until_closed(host, "host")
    for name, client in (*readers.listeners.items(), ("host", host)):
        messages = checked(client.received)
        assert messages[-1]["type"] == "session_ended", messages[-3:]
        assert messages[-1]["reason"] == "error"
        assert readers.closes[name] == SERVER_ERROR
