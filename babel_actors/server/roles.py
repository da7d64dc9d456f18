"""What a host, a listener and a solo user may do on ``/translate``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from babel_actors.audience import Role
from babel_actors.errors import ProtocolError, UnsupportedLanguage
from babel_actors.registry import Registry
from babel_actors.server.websocket import (
    GOING_AWAY,
    NORMAL,
    POLICY,
    TRY_AGAIN_LATER,
    WebSocketPeer,
)
from babel_actors.session import Session
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
from babel_actors.wire.server import now_ms

log = logging.getLogger(__name__)

FORBIDDEN = 403
"""``error.code`` for a message the peer's role may not send."""


async def serve_role(peer: WebSocketPeer, query: Mapping[str, str], registry: Registry) -> None:
    """Run the peer in the role its query names, until it or its session ends."""
    role = query.get("role")
    if role == "host":
        await _serve_host(peer, query, registry)
    elif role == "listener":
        await _serve_listener(peer, query, registry)
    elif role in (None, "", "solo"):
        await _serve_solo(peer, query, registry)
    else:
        peer.fail(f"unknown role {role[:20]!r}; use host, listener or none (solo)", POLICY)


async def _serve_host(peer: WebSocketPeer, query: Mapping[str, str], registry: Registry) -> None:
    session = await _session_for(peer, query, registry)
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
        await _host_loop(peer, session)
    finally:
        session.detach_host(peer)
        if peer.remote_close_code == NORMAL and session.host is None:
            session.end("host_ended", "The host ended the session.")


async def _serve_solo(peer: WebSocketPeer, query: Mapping[str, str], registry: Registry) -> None:
    session = await registry.start_session(solo=True)
    target = query.get("targetLang") or session.source_lang
    try:
        session.check_target(target)
    except UnsupportedLanguage as exc:
        peer.fail(str(exc), POLICY)
        session.end("closed", "The solo session was refused.")
        return
    peer.role = Role.SOLO
    peer.target_lang = target
    peer.send(_ready(peer, session))
    session.attach_host(peer)
    try:
        await _host_loop(peer, session)
    finally:
        session.detach_host(peer)
        session.end("closed", "The solo session has ended.")


async def _session_for(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry
) -> Session | None:
    """The session the query names, served here (it may live on another node); None
    after telling the peer why not."""
    try:
        session = await registry.open(query.get("sessionId", ""))
    except StoreUnavailable:
        peer.fail("sessions are unreachable right now; try again", TRY_AGAIN_LATER)
        return None
    if session is None:
        peer.fail("session not found", POLICY)
    return session


def _ready(peer: WebSocketPeer, session: Session) -> dict[str, object]:
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


async def _host_loop(peer: WebSocketPeer, session: Session) -> None:
    """Read a host's (or solo user's) messages: audio in, settings, pings."""
    config = session.config
    async for message in _parsed(peer, config.max_sample_rate):
        if isinstance(message, Audio):
            await session.feed(message.pcm)
        elif isinstance(message, Init):
            _apply_init(peer, session, message)
            if message.glossary is not None:
                await session.set_glossary(message.glossary)
            if message.source_lang is not None:
                try:
                    await session.set_source_language(message.source_lang)
                except UnsupportedLanguage as exc:
                    peer.error(str(exc))
                    continue
            peer.send(_ready(peer, session))
        elif isinstance(message, AudioEnd):
            await session.end_of_speech()
        elif isinstance(message, Ping):
            _pong(peer, message)
        elif isinstance(message, ChangeLanguage) and peer.role is Role.SOLO:
            _change_language(peer, session, message.target_lang)
        else:
            peer.error("a host changes language with init.sourceLang", FORBIDDEN)


def _apply_init(peer: WebSocketPeer, session: Session, message: Init) -> None:
    if message.sample_rate is not None:
        session.sample_rate = message.sample_rate
    if message.target_lang is not None and peer.role is Role.SOLO:
        _change_language(peer, session, message.target_lang)


async def _serve_listener(
    peer: WebSocketPeer, query: Mapping[str, str], registry: Registry
) -> None:
    session = await _session_for(peer, query, registry)
    if session is None:
        return
    target = query.get("targetLang") or session.source_lang
    last_seq = query.get("lastSeq")
    try:
        if not is_language(target):
            raise ProtocolError("targetLang must be a language code such as 'es'")
        session.check_target(target)
        resume = int(last_seq) if last_seq not in (None, "") else None
        if resume is not None and resume < -1:
            raise ValueError(last_seq)
    except (UnsupportedLanguage, ProtocolError) as exc:
        peer.fail(str(exc), POLICY)
        return
    except ValueError:
        peer.fail("lastSeq must be an integer of -1 or more", POLICY)
        return
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
    if resume is not None:
        joined["resumedFrom"] = resume
    peer.send(joined)
    await session.add_member(peer, last_seq=resume)
    try:
        async for message in _parsed(peer, session.config.max_sample_rate):
            if isinstance(message, ChangeLanguage):
                _change_language(peer, session, message.target_lang)
            elif isinstance(message, Ping):
                _pong(peer, message)
            elif isinstance(message, Audio):
                peer.error("listeners cannot send audio", FORBIDDEN)
            elif isinstance(message, Init):
                if message.target_lang is not None:
                    _change_language(peer, session, message.target_lang)
            else:
                peer.error("listeners cannot send audio_end", FORBIDDEN)
    finally:
        session.remove_member(peer)


def _pong(peer: WebSocketPeer, ping: Ping) -> None:
    """Echo the ping's timestamp; a ping without one gets the server's time (the
    contract's pong always carries a number)."""
    stamp = now_ms() if ping.timestamp is None else ping.timestamp
    peer.send({"type": "pong", "timestamp": stamp})


def _change_language(peer: WebSocketPeer, session: Session, language: str) -> None:
    try:
        session.change_language(peer, language)
    except UnsupportedLanguage as exc:
        peer.error(str(exc))
        return
    peer.send({"type": "language_changed", "targetLang": language})


async def _parsed(peer: WebSocketPeer, max_sample_rate: int):  # type: ignore[no-untyped-def]
    """The peer's messages, parsed; a malformed one is answered with ``error`` (400)
    and skipped. Framing errors and oversize messages close the connection."""
    async for raw in peer.messages():
        try:
            message: ClientMessage
            if isinstance(raw, bytes):
                message = parse_binary(raw)
            else:
                message = parse_text(raw, max_sample_rate=max_sample_rate)
        except ProtocolError as exc:
            peer.error(exc.message)
            continue
        yield message


__all__ = ["GOING_AWAY", "serve_role"]
