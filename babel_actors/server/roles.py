"""What a host, a listener and a solo user may do on ``/translate``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

import attrs
import trio

from babel_actors.audience import Role
from babel_actors.clock import now_ms
from babel_actors.errors import ProtocolError, UnsupportedLanguage
from babel_actors.live import LiveSession
from babel_actors.registry import Registry
from babel_actors.server.guard import Guard, Refusal
from babel_actors.server.websocket import WebSocketPeer
from babel_actors.store import StoreUnavailable
from babel_actors.wire.client import (
    Audio,
    AudioEnd,
    ChangeLanguage,
    ClientMessage,
    Init,
    Ping,
    is_language,
    parse_binary,
    parse_text,
)
from babel_actors.wire.closes import GOING_AWAY, NORMAL, POLICY, TRY_AGAIN_LATER
from babel_actors.wire.query import last_seq as parse_last_seq

log = logging.getLogger(__name__)

FORBIDDEN = 403
"""``error.code`` for a message the peer's role may not send."""


@attrs.frozen
class Caller:
    """Who opened the WebSocket."""

    client: str
    """The client's address (``Guard.client``)."""
    headers: Mapping[str, str]
    """The upgrade request's headers by lower-case name."""


def refuse(peer: WebSocketPeer, refusal: Refusal) -> None:
    """Tell the peer why it is refused (``error`` with the close code, ``closing``, and
    the HTTP-like ``status``), then close with ``refusal.close_code``."""
    if peer.close_code is None:
        peer.send(refusal.error_message())
    peer.close(refusal.close_code, refusal.message[:100])


async def serve_role(
    peer: WebSocketPeer,
    query: Mapping[str, str],
    registry: Registry,
    guard: Guard,
    caller: Caller,
) -> None:
    """Run the peer in the role its query names, until it or its session ends.

    Raises ``Refusal`` when an access rule or a limit refuses the peer (at once, or
    later: audio too fast); the caller answers it with ``refuse``.
    """
    role = query.get("role")
    if role == "host":
        await _serve_host(peer, query, registry, guard, caller)
    elif role == "listener":
        await _serve_listener(peer, query, registry, guard, caller)
    elif role in (None, "", "solo"):
        await _serve_solo(peer, query, registry, guard, caller)
    else:
        peer.fail(f"unknown role {role[:20]!r}; use host, listener or none (solo)", POLICY)


async def _serve_host(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry, guard: Guard, caller: Caller
) -> None:
    session = await _session_for(peer, query, registry, guard, caller)
    if session is None:
        return
    token = query.get("token", "")
    if not registry.config.allow_tokenless_hosts and not hmac.compare_digest(
        token.encode(), session.host_token.encode()
    ):
        peer.fail("a host needs the hostToken from /session/start", POLICY)
        return
    peer.role = Role.HOST
    peer.target_lang = session.source_lang
    peer.send(_ready(peer, session))
    session.attach_host(peer)
    session.send_stats()
    try:
        await _host_loop(peer, session, guard)
    finally:
        session.detach_host(peer)
        if peer.remote_close_code == NORMAL and session.host is None:
            # What the host said before closing still reaches every listener.
            session.finish("host_ended")


async def _serve_solo(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry, guard: Guard, caller: Caller
) -> None:
    # A browser cannot set headers on a WebSocket: it may send the key as ?apiKey=.
    owner = guard.session_owner(caller.headers, caller.client, query.get("apiKey"))
    with guard.session_place(owner) as started:
        session = await registry.start_session(solo=True)
        started(session)
    target = query.get("targetLang") or session.source_lang
    try:
        session.check_target(target)
    except UnsupportedLanguage as exc:
        peer.fail(str(exc), POLICY)
        session.cancel("closed", "The solo session was refused.")
        return
    peer.role = Role.SOLO
    peer.target_lang = target
    peer.send(_ready(peer, session))
    session.attach_host(peer)
    try:
        await _host_loop(peer, session, guard)
    finally:
        session.detach_host(peer)
        # The solo user is gone: nobody is left to read what is still in the pipeline.
        session.cancel("closed", "The solo session has ended.")


async def _session_for(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry, guard: Guard, caller: Caller
) -> LiveSession | None:
    """The session the query names, served here (it may live on another node); None
    after telling the peer why not. Joining counts as a join attempt: a client locked
    out for failed joins is refused (``Guard.check_join``, before the lookup and after
    it), and an unknown ``sessionId`` is a failure."""
    guard.check_join(caller.client)
    session_id = query.get("sessionId", "")
    try:
        session = await registry.open(session_id)
    except StoreUnavailable:
        peer.fail("sessions are unreachable right now; try again", TRY_AGAIN_LATER)
        return None
    guard.check_join(caller.client)  # again: others may have failed meanwhile
    if session is None:
        if session_id:
            guard.join_failed(caller.client)
        peer.fail("session not found", POLICY)
    return session


def _ready(peer: WebSocketPeer, session: LiveSession) -> dict[str, object]:
    """``session_ready``: sent when a host or solo user connects, and again after each
    accepted ``init`` (as the original does), carrying the languages now in force."""
    ready: dict[str, object] = {
        "type": "session_ready",
        "sessionId": session.id,
        "sessionCode": session.code,
        "role": peer.role.value,
        "sourceLang": session.source_lang,
    }
    if peer.role is Role.SOLO:
        ready["targetLang"] = peer.target_lang
    return ready


async def _host_loop(peer: WebSocketPeer, session: LiveSession, guard: Guard) -> None:
    """Read a host's (or solo user's) messages: audio in, settings, pings. Raises
    ``Refusal`` for audio faster than the host may send it, or for messages that keep
    coming too fast. Once the session is ending (its host ended it, its lifetime is
    over, a shutdown), what the host still sends until it reads the close has nowhere
    to go: it is dropped, as an expected end, and only pings are answered."""
    config = session.config
    began = trio.current_time()  # the host's timeline for the audio meter
    async for message in _parsed(peer, config.max_sample_rate, guard):
        if isinstance(message, Ping):
            _pong(peer, message)
        elif session.ending:
            continue
        elif isinstance(message, Audio):
            guard.meter_audio(session, len(message.pcm), began=began)
            await session.feed(message.pcm)
        elif isinstance(message, Init):
            await _apply_init(peer, session, message)
        elif isinstance(message, AudioEnd):
            await session.end_of_speech()
        elif isinstance(message, ChangeLanguage) and peer.role is Role.SOLO:
            _change_language(peer, session, message.target_lang)
        else:
            peer.error("a host changes language with init.sourceLang", FORBIDDEN)


async def _apply_init(peer: WebSocketPeer, session: LiveSession, message: Init) -> None:
    """All or nothing: every field is checked before any is applied, so a refused
    ``init`` (``error`` 400) changes nothing; an accepted one gets ``session_ready``."""
    source = message.source_lang or session.source_lang
    target = None
    if peer.role is Role.SOLO:
        target = message.target_lang or peer.target_lang
    try:
        session.check_source(source)
        if target is not None:
            session.check_target(target, source)
    except UnsupportedLanguage as exc:
        peer.error(str(exc))
        return
    if message.sample_rate is not None:
        session.sample_rate = message.sample_rate
    if message.glossary is not None:
        await session.set_glossary(message.glossary)
    await session.set_source_language(source)
    if target is not None and target != peer.target_lang:
        session.change_language(peer, target)
    peer.send(_ready(peer, session))


async def _serve_listener(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry, guard: Guard, caller: Caller
) -> None:
    session = await _session_for(peer, query, registry, guard, caller)
    if session is None:
        return
    target = query.get("targetLang") or session.source_lang
    last_seq = query.get("lastSeq")
    try:
        if not is_language(target):
            raise ProtocolError("targetLang must be a language code such as 'es'")
        session.check_target(target)
        resume = parse_last_seq(last_seq)
    except (UnsupportedLanguage, ProtocolError) as exc:
        peer.fail(str(exc), POLICY)
        return
    except ValueError:
        peer.fail("lastSeq must be an integer of -1 or more", POLICY)
        return
    with guard.listener_slot(session):
        await _listen(peer, session, target, resume, guard)


async def _listen(
    peer: WebSocketPeer, session: LiveSession, target: str, resume: int | None, guard: Guard
) -> None:
    """A listener's life: joined, caught up, then its messages until it leaves. Raises
    ``Refusal`` for messages that keep coming too fast."""
    peer.role = Role.LISTENER
    peer.target_lang = target
    joined: dict[str, object] = {
        "type": "session_joined",
        "sessionId": session.id,
        "sessionCode": session.code,
        "role": "listener",
        "targetLang": target,
        "sourceLang": session.source_lang,
        "message": f"Joined session {session.code}",
    }
    if resume is None:
        peer.send(joined)
        await session.add_member(peer)
    else:
        # resumedFrom is known only once the catch-up has read the history, in the
        # same step as the replay that follows it (finals may age out meanwhile), so
        # a resume is greeted then: nothing comes between the two.
        def greet(resumed_from: int | None) -> None:
            joined["resumedFrom"] = resume if resumed_from is None else resumed_from
            peer.send(joined)

        await session.add_member(peer, last_seq=resume, greet=greet)
    try:
        async for message in _parsed(peer, session.config.max_sample_rate, guard):
            if isinstance(message, ChangeLanguage):
                _change_language(peer, session, message.target_lang)
            elif isinstance(message, Ping):
                _pong(peer, message)
            elif isinstance(message, Audio):
                peer.error("listeners cannot send audio", FORBIDDEN)
            elif isinstance(message, Init):
                peer.error("listeners change language with change_language", FORBIDDEN)
            else:
                peer.error("listeners cannot send audio_end", FORBIDDEN)
    finally:
        session.remove_member(peer)


def _pong(peer: WebSocketPeer, ping: Ping) -> None:
    """Echo the ping's timestamp; a ping without one gets the server's time (the
    contract's pong always carries a number)."""
    stamp = now_ms() if ping.timestamp is None else ping.timestamp
    peer.send({"type": "pong", "timestamp": stamp})


def _change_language(peer: WebSocketPeer, session: LiveSession, language: str) -> None:
    try:
        session.change_language(peer, language)
    except UnsupportedLanguage as exc:
        peer.error(str(exc))
        return
    peer.send({"type": "language_changed", "targetLang": language})


async def _parsed(peer: WebSocketPeer, max_sample_rate: int, guard: Guard):  # type: ignore[no-untyped-def]
    """The peer's messages, parsed; a malformed one is answered with ``error`` (400)
    and skipped. Framing errors and oversize messages close the connection. Each is
    counted once parsed: binary frames and ``audio`` as audio, the rest (malformed
    ones included) as control.

    Every message but the audio of a host or solo user (metered as audio, see
    ``Guard.meter_audio``) is metered per connection (``Guard.meter_message``): past
    ``control_rate`` it is answered with ``error`` (429) instead and skipped, and a
    client that goes on regardless is refused (``Refusal``, close 1008). So a flood
    of ``change_language``, ``ping`` or garbage costs the server a bounded amount of
    work, and the session's other members (the host's ``session_stats``) nothing.
    """
    meter = guard.message_meter()
    sends_audio = peer.role in (Role.HOST, Role.SOLO)
    async for raw in peer.messages():
        try:
            message: ClientMessage
            if isinstance(raw, bytes):
                message = parse_binary(raw)
            else:
                message = parse_text(raw, max_sample_rate=max_sample_rate)
        except ProtocolError as exc:
            peer.count_in(audio=isinstance(raw, bytes))
            refused = guard.meter_message(meter)
            if refused is None:
                peer.error(exc.message)
            else:
                peer.send(refused)
            continue
        audio = isinstance(message, Audio)
        peer.count_in(audio=audio)
        if not (audio and sends_audio):
            refused = guard.meter_message(meter)
            if refused is not None:
                peer.send(refused)
                continue
        yield message


__all__ = ["GOING_AWAY", "serve_role"]
