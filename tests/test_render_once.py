"""Acceptance (issue 13): every (final, language) is translated once, however many
listeners ask for it at the same moment.

Measured bug: 20 listeners joining ``fr`` at once to catch up on 5 finals made 100
engine calls instead of 5, because each joiner translated the finals it was missing
by itself. What a stranger would try: let a crowd join (or resume into) a language
nobody read yet, all at once, or join while the live translations are still running,
then count the engine's calls.

The engines cost nothing: scripted speech, and the echo translator behind a recorder
that notes every request at the engine boundary. To make "at once" exact rather than
likely, translations into the crowd's language wait at a gate (a held
``FaultyTranslator``) until every joiner has reached the server and the server has
gone as far as it can (``wait_all_tasks_blocked``); then the gate opens. Each listener
then reads the finals it is owed, and one more final spoken afterwards (the fence): a
final owed twice would arrive before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers import checked, finals_of, listener_path, start_session

from babel_actors.config import Config
from babel_actors.engines.base import Translator, optional_keywords
from babel_actors.glossary import Glossary
from babel_actors.server.app import Server
from babel_actors.testing import (
    EchoTranslator,
    ProtocolClient,
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)
from babel_actors.testing.faults import Fault, FaultyTranslator

SENTENCES = [f"final number {n} is read by the crowd" for n in range(1, 7)]
SPOKEN = 5
"""Finals the host speaks before anyone asks for the crowd's language."""
FENCE = SENTENCES[SPOKEN]
"""Spoken once every listener has what it is owed."""
SECONDS = 1.0
CROWD = 30
TIMEOUT_S = 30


# --- the engines ----------------------------------------------------------------------


@attrs.frozen
class Call:
    """One ``translate`` request as the engine saw it."""

    text: str
    source: str
    target: str
    partial: bool


class RecordingTranslator:
    """``engine``, with every ``translate`` request recorded as it starts."""

    def __init__(self, engine: Translator) -> None:
        self.engine = engine
        self.name = engine.name
        self.calls: list[Call] = []
        self._changed = trio.Event()

    def sources(self) -> frozenset[str]:
        return self.engine.sources()

    def targets(self, source: str) -> frozenset[str]:
        return self.engine.targets(source)

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        self.calls.append(Call(" ".join(text.split()), source, target, partial))
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        extra = optional_keywords(glossary, partial=partial)
        return await self.engine.translate(
            text, source=source, target=target, context=context, **extra
        )

    async def aclose(self) -> None:
        await self.engine.aclose()

    def finals_into(self, target: str) -> Counter[str]:
        """How often each scripted final was translated into ``target`` (partials,
        whose text is a shorter prefix and which come flagged ``partial``, are not)."""
        return Counter(
            call.text
            for call in self.calls
            if call.target == target and not call.partial and call.text in SENTENCES
        )

    async def wait_for(self, predicate: Callable[[Call], bool]) -> None:
        """Until some request matching ``predicate`` has reached the engine."""
        while not any(predicate(call) for call in self.calls):
            await self._changed.wait()


def gated_engines(language: str) -> tuple[RecordingTranslator, FaultyTranslator]:
    """The recorder (outermost, so it counts every request) and the gate that holds
    every translation into ``language`` until ``release()``."""
    gate = FaultyTranslator(
        EchoTranslator(), Fault.SLOW, for_targets=frozenset({language}), delay_s=None
    )
    return RecordingTranslator(gate), gate


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES, seconds_each=SECONDS))


def once_each(sentences: Sequence[str]) -> Counter[str]:
    return Counter({sentence: 1 for sentence in sentences})


# --- the session ----------------------------------------------------------------------


class Tally:
    """A count that can be awaited."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def add(self) -> None:
        self.count += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def reach(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()


@attrs.define
class Talk:
    """A session whose host speaks the script, watched by a Spanish listener who
    shows when each final is out."""

    server: Server
    session: dict[str, Any]
    host: ProtocolClient
    watcher: ProtocolClient
    spoken: int = 0

    def path(self, language: str, **extra: Any) -> str:
        return listener_path(self.session["sessionId"], language, **extra)

    async def speak(self, sentences: int) -> list[dict[str, Any]]:
        """Speak ``sentences`` more scripted sentences; their finals as the watcher
        read them."""
        await self.host.send_audio(silence(SECONDS * sentences))
        self.spoken += sentences
        return await self.watcher.finals(sentences)


@asynccontextmanager
async def talk(server: Server) -> AsyncIterator[Talk]:
    session = await start_session(server)
    async with (
        connect(server, listener_path(session["sessionId"], "es")) as watcher,
        connect(server, session["wsUrl"]) as host,
    ):
        assert (await watcher.receive())["type"] == "session_joined"
        assert (await host.receive())["type"] == "session_ready"
        # The resampler holds back a few milliseconds: a short lead makes each
        # sentence's audio enough for its final.
        await host.send_audio(silence(0.05))
        yield Talk(server, session, host, watcher)


@attrs.define
class Crowd:
    """Listeners reading in the background: each reads the finals it is owed, then
    the fence."""

    server: Server
    nursery: trio.Nursery
    clients: list[ProtocolClient] = attrs.field(factory=list)
    opened: Tally = attrs.field(factory=Tally)
    caught_up: Tally = attrs.field(factory=Tally)

    def join(self, path: str, owed: int) -> None:
        self.nursery.start_soon(self._listen, path, owed)

    async def _listen(self, path: str, owed: int) -> None:
        async with connect(self.server, path) as client:
            self.clients.append(client)
            self.opened.add()
            await client.finals(owed)
            self.caught_up.add()
            await client.finals(1)


async def all_at_once(
    crowd: Crowd, gate: FaultyTranslator, paths: Sequence[str], owed: int
) -> None:
    """``paths`` join at once while ``gate`` holds their language; once every one is
    connected and the server can go no further, the gate opens."""
    opened = crowd.opened.count + len(paths)
    for path in paths:
        crowd.join(path, owed)
    await crowd.opened.reach(opened)
    await trio.testing.wait_all_tasks_blocked()
    gate.release()


def assert_read_once_in_order(
    client: ProtocolClient, language: str, sentences: Sequence[str]
) -> None:
    """``client`` read ``sentences`` as finals in ``language``, in order, each once,
    and seqIds only ever grew."""
    messages = checked(client.received)
    finals = finals_of(messages)
    assert [m["originalText"] for m in finals] == list(sentences)
    assert [m["translatedText"] for m in finals] == [f"[{language}] {s}" for s in sentences]
    seqs = [m["seqId"] for m in messages if m["type"] == "translation"]
    assert seqs == sorted(set(seqs)), "no seqId twice, none going back"


# --- the tests ------------------------------------------------------------------------


async def test_a_crowd_joining_a_new_language_at_once_costs_one_call_per_final() -> None:
    """5 finals are out (in Spanish only); 30 listeners join ``fr`` at the same moment
    to catch up on them: the engine translates each into French once."""
    recorder, gate = gated_engines("fr")
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted(), mt=recorder) as server:
            async with talk(server) as room, trio.open_nursery() as nursery:
                await room.speak(SPOKEN)
                crowd = Crowd(server, nursery)
                await all_at_once(crowd, gate, [room.path("fr")] * CROWD, SPOKEN)
                await crowd.caught_up.reach(CROWD)
                await room.speak(1)
    assert recorder.finals_into("fr") == once_each(SENTENCES)
    assert len(crowd.clients) == CROWD
    for client in crowd.clients:
        assert_read_once_in_order(client, "fr", SENTENCES)


@pytest.mark.parametrize("resume", ["from_start", "from_middle"])
async def test_a_crowd_resuming_into_a_new_language_costs_one_call_per_final(
    resume: str,
) -> None:
    """30 listeners reconnect at the same moment with ``lastSeq`` (0, or the second
    final's seqId) in ``de``, which nobody read: each final they are owed is
    translated into German once, and none they are not owed is translated at all."""
    recorder, gate = gated_engines("de")
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted(), mt=recorder) as server:
            async with talk(server) as room, trio.open_nursery() as nursery:
                finals = await room.speak(SPOKEN)
                skipped = 0 if resume == "from_start" else 2
                last_seq = 0 if skipped == 0 else finals[skipped - 1]["seqId"]
                owed = SPOKEN - skipped
                crowd = Crowd(server, nursery)
                paths = [room.path("de", lastSeq=last_seq)] * CROWD
                await all_at_once(crowd, gate, paths, owed)
                await crowd.caught_up.reach(CROWD)
                await room.speak(1)
    assert recorder.finals_into("de") == once_each(SENTENCES[skipped:])
    assert len(crowd.clients) == CROWD
    for client in crowd.clients:
        assert_read_once_in_order(client, "de", SENTENCES[skipped:])
        assert client.received[0]["type"] == "session_joined"
        assert client.received[0]["resumedFrom"] == last_seq


async def test_a_joiner_racing_the_live_translations_gets_each_final_once() -> None:
    """A French listener reads live; the host speaks 5 sentences, and while the
    French translations of those finals are still running (the first in the engine,
    the rest queued behind it), a second listener joins ``fr``. Each final is still
    translated into French once, and both listeners read each one once, in order."""
    recorder, gate = gated_engines("fr")
    with trio.fail_after(TIMEOUT_S):
        async with running_server(Config(port=0), stt=scripted(), mt=recorder) as server:
            async with talk(server) as room, trio.open_nursery() as nursery:
                crowd = Crowd(server, nursery)
                crowd.join(room.path("fr"), SPOKEN)
                await crowd.opened.reach(1)
                # The live listener is in the audience once its greeting is out.
                await trio.testing.wait_all_tasks_blocked()
                await room.speak(SPOKEN)
                await recorder.wait_for(lambda c: c.target == "fr" and c.text == SENTENCES[0])
                await all_at_once(crowd, gate, [room.path("fr")], SPOKEN)
                await crowd.caught_up.reach(2)
                await room.speak(1)
    assert recorder.finals_into("fr") == once_each(SENTENCES)
    assert len(crowd.clients) == 2
    for client in crowd.clients:
        assert_read_once_in_order(client, "fr", SENTENCES)
