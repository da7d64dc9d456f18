"""Access rules over real sockets: API keys, the operator key, join attempts (code
guessing shut out), client addresses behind a proxy, and allowed browser origins.

Time that must pass (a join window) is moved on with trio's ``MockClock``, running at
real speed otherwise: no sleeps.
"""

from __future__ import annotations

import hmac
import json
import secrets
import string
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket
from bystander import bystander, closed_with, config, reply, scripted
from helpers import (
    GatedStore,
    all_at_once,
    connect_with,
    get,
    listener_path,
    post,
    refusals,
    running_server_on,
    start_session,
)
from protocol_schemas import validate_http
from test_deploy import Cert, needs_nginx, running_nginx
from test_deploy import cert as cert  # the fixture
from trio.testing import MockClock

from babel_actors import registry
from babel_actors.config import Config
from babel_actors.errors import ConfigError
from babel_actors.registry import CODE_ALPHABET, CODE_LENGTH, new_code
from babel_actors.server import access
from babel_actors.server import guard as guard_module
from babel_actors.server.access import (
    KeyRing,
    OriginPolicy,
    TrustedProxies,
    client_address,
    limit_key,
    wide_limit_key,
)
from babel_actors.server.app import Server
from babel_actors.testing import connect, running_server

TIMEOUT_S = 20
KEYS = ("alpha-key-1", "beta-key-2")
OPERATOR_KEY = "operator-secret"
ALLOWED = "https://captions.example.org"
ELSEWHERE = "https://elsewhere.example"
GUESSER = {"X-Real-IP": "203.0.113.7"}
NEIGHBOUR = {"X-Forwarded-For": "10.9.8.7, 198.51.100.9"}
"""Another client behind the same proxy: the last hop is the one the proxy added."""


@pytest.fixture
def clock() -> MockClock:
    """Real time that a test can also move on at once (``clock.jump``)."""
    return MockClock(rate=1.0)


def wrong_codes(count: int) -> list[str]:
    """Well-formed codes no session has: codes never hold 0 or 1 (look-alikes)."""
    return [f"ZZZ0{n:02d}" for n in range(count)]


async def request(
    server: Server, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.request(method, path, headers=headers, **kwargs)


# --- API keys --------------------------------------------------------------------------


async def test_starting_a_session_needs_an_api_key_when_keys_are_set() -> None:
    settings = attrs.evolve(config(), api_keys=" , ".join(KEYS))
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            refused = [
                {},
                {"Authorization": "Bearer wrong-key"},
                {"Authorization": f"Basic {KEYS[0]}"},
                {"Authorization": "Bearer"},
                {"X-API-Key": KEYS[0][:-1]},
                {"X-API-Key": f"{KEYS[0]},{KEYS[1]}"},
            ]
            for headers in refused:
                response = await request(server, "POST", "/session/start", headers)
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"].startswith("Bearer")
                validate_http("/session/start", "post", 401, response.json())
                assert "API key" in response.json()["error"]

            by_bearer = await start_session(server, {"Authorization": f"Bearer {KEYS[0]}"})
            by_header = await start_session(server, {"X-API-Key": KEYS[1]})
            assert by_bearer["sessionId"] != by_header["sessionId"]

            # Hosts and listeners need no key: the host token and the code are theirs.
            status, joined = await post(
                server, "/session/join", {"sessionCode": by_bearer["sessionCode"]}
            )
            assert status == 200
            async with (
                connect(server, joined["wsUrl"]) as listener,
                connect(server, by_bearer["wsUrl"]) as host,
            ):
                assert (await reply(listener))["type"] == "session_joined"
                assert (await reply(host))["type"] == "session_ready"
            assert (await refusals(server))["api_key"] == len(refused)


async def test_a_solo_socket_needs_an_api_key_when_keys_are_set() -> None:
    settings = attrs.evolve(config(), api_keys=",".join(KEYS))
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            for path in ("/translate", "/translate?role=solo&apiKey=wrong-key"):
                async with connect(server, path) as solo:
                    error = await closed_with(solo, 1008)
                    assert error["status"] == 401 and "API key" in error["message"]

            admitted = [
                ("/translate?targetLang=es", {"X-API-Key": KEYS[0]}),
                ("/translate", {"Authorization": f"Bearer {KEYS[1]}"}),
                # A browser cannot set headers on a WebSocket: the key rides in the query.
                (f"/translate?apiKey={KEYS[0]}", {}),
            ]
            for path, headers in admitted:
                async with connect_with(server, path, headers) as solo:
                    ready = await reply(solo)
                    assert ready["type"] == "session_ready" and ready["role"] == "solo"
            assert (await refusals(server))["api_key"] == 2


def test_a_key_is_compared_with_every_key_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    ring = KeyRing.from_setting("k-one, k-two ,k-three,")
    for presented, found in (("k-one", 0), ("k-three", 2), ("k-thre", None), ("", None)):
        compared.clear()
        assert ring.match(presented) == found
        # Every key, digests of one length: neither the time nor the count of
        # comparisons tells which key, or how much of one, was right.
        assert len(compared) == (3 if presented else 0)
        assert {len(a) for pair in compared for a in pair} <= {32}
    assert not KeyRing.from_setting(" , ")


async def test_operator_routes_need_the_operator_key_when_one_is_set() -> None:
    settings = attrs.evolve(config(), operator_key=OPERATOR_KEY, api_keys=KEYS[0])
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            routes = [("GET", "/sessions"), ("GET", "/stats"), ("POST", "/stats/reset")]
            routes.append(("GET", "/metrics"))
            for method, path in routes:
                for headers in ({}, {"X-API-Key": KEYS[0]}, {"Authorization": "Bearer nope"}):
                    response = await request(server, method, path, headers)
                    assert response.status_code == 401, (method, path, headers)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                    validate_http(path, method, 401, response.json())
                for headers in (
                    {"X-API-Key": OPERATOR_KEY},
                    {"Authorization": f"Bearer {OPERATOR_KEY}"},
                ):
                    response = await request(server, method, path, headers)
                    assert response.status_code == 200, (method, path, headers)
                    if path != "/metrics":
                        validate_http(path, method, 200, response.json())
            status, _ = await get(server, "/health")
            assert status == 200, "health stays open"
            counted = await refusals(server)
            assert counted["operator_key"] == 3 * len(routes)


# --- join attempts: code guessing ---------------------------------------------------------


def test_session_codes_come_from_the_csprng_without_look_alikes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws: list[str] = []

    def watched(alphabet: str) -> str:
        draws.append(alphabet)
        return secrets.SystemRandom().choice(alphabet)

    monkeypatch.setattr(registry.secrets, "choice", watched)
    refused = iter([True, True])  # the first two codes drawn are "taken"

    class Taken:
        def __contains__(self, code: object) -> bool:
            return next(refused, False)

    assert len(new_code(Taken())) == CODE_LENGTH
    assert len(draws) == 3 * CODE_LENGTH, "a taken code is drawn again, not adjusted"
    codes = {new_code(set()) for _ in range(300)}
    assert all(len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET) for code in codes)
    assert len(codes) == 300
    look_alikes = set("0O1IL")
    assert not look_alikes & set(CODE_ALPHABET)
    assert set(CODE_ALPHABET) == set(string.ascii_uppercase + string.digits) - look_alikes
    assert all(alphabet == CODE_ALPHABET for alphabet in draws)


async def test_code_guessing_is_shut_out_for_that_client_only(clock: MockClock) -> None:
    settings = attrs.evolve(config(), trust_proxy=True, join_attempts=5, join_window_s=600)
    with trio.fail_after(TIMEOUT_S + settings.join_window_s):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            code = session["sessionCode"]
            guesses = wrong_codes(4)
            assert code not in guesses

            # Failures by every way a client can look a session up: join, info, and
            # a listener naming a session that does not exist.
            for guess in guesses[:3]:
                status, body = await post(
                    server, "/session/join", {"sessionCode": guess}, headers=GUESSER
                )
                assert status == 404, body
            template = "/session/{code}/info"
            status, _ = await get(server, f"/session/{guesses[3]}/info", template, headers=GUESSER)
            assert status == 404
            unknown = listener_path(str(uuid.uuid4()), "es")
            async with connect_with(server, unknown, GUESSER) as ws:
                assert "not found" in (await closed_with(ws, 1008))["message"]
            await by.speak()

            # Locked out: even the right code is refused to that client.
            response = await request(
                server, "POST", "/session/join", GUESSER, json={"sessionCode": code}
            )
            assert response.status_code == 429
            validate_http("/session/join", "post", 429, response.json())
            retry_after = int(response.headers["retry-after"])
            assert 0 < retry_after <= settings.join_window_s
            assert response.json()["retryAfter"] == retry_after
            status, _ = await get(server, f"/session/{code}/info", template, headers=GUESSER)
            assert status == 429
            async with connect_with(
                server, listener_path(session["sessionId"], "es"), GUESSER
            ) as ws:
                error = await closed_with(ws, 1008)
                assert error["status"] == 429 and error["retryAfter"] > 0

            # Another client behind the same proxy joins with the code meanwhile.
            status, joined = await post(
                server, "/session/join", {"sessionCode": code}, headers=NEIGHBOUR
            )
            assert status == 200
            async with connect_with(server, joined["wsUrl"], NEIGHBOUR) as listener:
                assert (await reply(listener))["type"] == "session_joined"

            # The window passes: the guesser may try again.
            await by.caught_up()
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(settings.join_window_s)
            status, _ = await post(server, "/session/join", {"sessionCode": code}, headers=GUESSER)
            assert status == 200
            assert (await refusals(server))["join_attempts"] == 3


async def test_failed_socket_joins_lock_out_hosts_and_listeners_too() -> None:
    settings = attrs.evolve(config(), trust_proxy=True, join_attempts=2)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            session = await start_session(server)
            stranger = f"/translate?role=host&sessionId={uuid.uuid4()}&token=x"
            # A missing sessionId names nothing, so it is no failed join: were it one,
            # the last of these would meet the limit (429) instead of "not found".
            missing = "/translate?role=listener"
            for path in (missing, stranger, listener_path(str(uuid.uuid4()), "es")):
                async with connect_with(server, path, GUESSER) as ws:
                    assert "not found" in (await closed_with(ws, 1008))["message"]
            await by.speak()
            for path in (session["wsUrl"], listener_path(session["sessionId"], "es")):
                async with connect_with(server, path, GUESSER) as ws:
                    assert (await closed_with(ws, 1008))["status"] == 429
            async with connect_with(server, session["wsUrl"], NEIGHBOUR) as host:
                assert (await reply(host))["type"] == "session_ready"
                status, _ = await post(
                    server,
                    "/session/join",
                    {"sessionCode": session["sessionCode"]},
                    headers=NEIGHBOUR,
                )
                assert status == 200


async def test_concurrent_guesses_are_counted_before_their_lookups_answer() -> None:
    attempts = 3
    settings = attrs.evolve(config(), trust_proxy=True, join_attempts=attempts)
    store = GatedStore()
    with trio.fail_after(TIMEOUT_S):
        async with running_server_on(store, settings, scripted()) as server:
            session = await start_session(server)
            # A join that finds its session is no failure: any number succeed.
            for _ in range(2 * attempts):
                status, _ = await post(
                    server,
                    "/session/join",
                    {"sessionCode": session["sessionCode"]},
                    headers=GUESSER,
                )
                assert status == 200
            guesses = [
                partial(request, server, "POST", "/session/join", GUESSER, json={"sessionCode": c})
                for c in wrong_codes(4 * attempts)
            ]
            # Every guess passes the first check, in flight before the store answers.
            responses = await all_at_once(store, guesses)
            for response in responses:
                validate_http("/session/join", "post", response.status_code, response.json())
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [404] * attempts + [429] * (3 * attempts)
            assert (await refusals(server))["join_attempts"] == 3 * attempts


async def test_an_ipv6_client_hopping_between_its_slash_64s_is_shut_out_by_its_slash_48() -> None:
    settings = attrs.evolve(config(), trust_proxy=True, join_attempts=2)
    per_48 = guard_module.WIDE_JOIN_FACTOR * settings.join_attempts

    async def guess(address: str) -> int:
        headers = {"X-Real-IP": address}
        status, _ = await post(server, "/session/join", {"sessionCode": "ZZZ000"}, headers=headers)
        return status

    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            for n in range(per_48 // settings.join_attempts):
                for _ in range(settings.join_attempts):
                    assert await guess(f"2001:db8:aa:{n:x}::1") == 404
            assert await guess("2001:db8:aa:ffff::1") == 429, "a fresh /64 of that /48"
            assert await guess("2001:db8:bb::1") == 404, "another /48"
            assert await guess("203.0.113.7") == 404
            await by.speak()
    assert wide_limit_key("2001:db8:aa:ffff::1") == "2001:db8:aa::/48"
    assert wide_limit_key("203.0.113.7") is None
    assert wide_limit_key("::ffff:203.0.113.7") is None


async def test_a_full_join_table_shuts_out_new_clients_rather_than_forget_old_ones(
    clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard_module, "JOIN_CLIENTS", 3)
    settings = attrs.evolve(config(), trust_proxy=True, join_attempts=2, join_window_s=600)

    async def join(n: int, code: str) -> int:
        headers = {"X-Real-IP": f"203.0.113.{n}"}
        status, _ = await post(server, "/session/join", {"sessionCode": code}, headers=headers)
        return status

    with trio.fail_after(TIMEOUT_S + settings.join_window_s):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            code = (await start_session(server))["sessionCode"]
            wrong = wrong_codes(1)[0]
            for n in (1, 2, 3):
                assert await join(n, wrong) == 404  # the table is full now
            for n in (4, 5):
                assert await join(n, wrong) == 404  # counted together
            assert await join(6, code) == 429, "new clients share the full overflow window"
            assert await join(1, wrong) == 404, "a client in the table keeps its own budget"
            assert await join(1, code) == 429
            await by.speak()

            # The window passes: the table empties, and new clients may join again.
            await by.caught_up()
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(settings.join_window_s)
            assert await join(6, code) == 200
            assert await join(1, code) == 200


# --- the client's address -----------------------------------------------------------------


def test_the_client_address_comes_from_the_proxy_only_when_trusted() -> None:
    real_ip = {"x-real-ip": "203.0.113.7", "x-forwarded-for": "1.1.1.1, 198.51.100.9"}
    assert client_address("127.0.0.1", real_ip, trust_proxy=True) == "203.0.113.7"
    assert client_address("127.0.0.1", real_ip, trust_proxy=False) == "127.0.0.1"
    forwarded = {"x-forwarded-for": "6.6.6.6, 198.51.100.9"}
    assert client_address("127.0.0.1", forwarded, trust_proxy=True) == "198.51.100.9"
    garbage = {"x-real-ip": "not an address", "x-forwarded-for": "evil"}
    assert client_address("127.0.0.1", garbage, trust_proxy=True) == "127.0.0.1"
    v6 = {"x-real-ip": " 2001:DB8::7 "}
    assert client_address("127.0.0.1", v6, trust_proxy=True) == "2001:db8::7"


def test_proxies_are_trusted_by_the_peers_address() -> None:
    local = TrustedProxies.from_setting("1")
    assert local.trusts("127.0.0.1") and local.trusts("::1") and local.trusts("::ffff:127.0.0.1")
    assert not local.trusts("10.0.0.1") and not local.trusts("2001:db8::1")
    listed = TrustedProxies.from_setting("10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert listed.trusts("10.200.0.1") and listed.trusts("192.0.2.7")
    assert listed.trusts("2001:db8:5::1")
    assert not listed.trusts("192.0.2.8") and not listed.trusts("127.0.0.1")
    assert not listed.trusts("not an address")
    for off in ("", " ", "0", "off"):
        assert not TrustedProxies.from_setting(off)
    with pytest.raises(ValueError):
        TrustedProxies.from_setting("10.0.0.0/33")

    assert Config.from_env({"BABEL_TRUST_PROXY": "1"}).trust_proxy == "1"
    listing = Config.from_env({"BABEL_TRUST_PROXY": "10.0.0.0/8,::1"}).trust_proxy
    assert listing == "10.0.0.0/8,::1"
    assert Config(trust_proxy=True).trust_proxy == "1" and Config().trust_proxy == ""
    with pytest.raises(ConfigError, match="BABEL_TRUST_PROXY"):
        Config.from_env({"BABEL_TRUST_PROXY": "proxy.example.org"})


async def test_proxy_headers_from_a_peer_that_is_not_a_trusted_proxy_are_ignored() -> None:
    # The test's client is 127.0.0.1, which this list does not name.
    settings = attrs.evolve(config(), trust_proxy="10.0.0.0/8, 192.0.2.1", join_attempts=2)
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server:
            for headers in (GUESSER, NEIGHBOUR):
                status, _ = await post(
                    server, "/session/join", {"sessionCode": "ZZZ000"}, headers=headers
                )
                assert status == 404
            # Whatever address the headers name, the client is 127.0.0.1: locked out.
            status, _ = await post(
                server,
                "/session/join",
                {"sessionCode": "ZZZ000"},
                headers={"X-Real-IP": "198.51.100.77"},
            )
            assert status == 429


def test_limits_count_an_ipv6_client_by_its_slash_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::9")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert limit_key("203.0.113.7") == "203.0.113.7"


# --- browser origins ----------------------------------------------------------------------


async def test_a_list_of_origins_is_echoed_to_allowed_browsers_and_refuses_others() -> None:
    settings = attrs.evolve(config(), allowed_origins=f"{ALLOWED}/, https://other.example.org")
    with trio.fail_after(TIMEOUT_S):
        async with running_server(settings, stt=scripted()) as server, bystander(server) as by:
            allowed = await request(server, "GET", "/health", {"Origin": ALLOWED})
            assert allowed.headers["access-control-allow-origin"] == ALLOWED
            assert allowed.headers["vary"] == "Origin"
            for headers in ({"Origin": ELSEWHERE}, {}):
                response = await request(server, "GET", "/health", headers)
                assert response.status_code == 200
                assert "access-control-allow-origin" not in response.headers
                assert response.headers["vary"] == "Origin"

            preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
            response = await request(server, "OPTIONS", "/session/start", preflight)
            assert response.status_code == 204
            assert response.headers["access-control-allow-origin"] == ALLOWED
            assert "x-api-key" in response.headers["access-control-allow-headers"]
            response = await request(
                server, "OPTIONS", "/session/start", {**preflight, "Origin": ELSEWHERE}
            )
            assert response.status_code == 204
            assert "access-control-allow-origin" not in response.headers

            for path, body in (("/session/start", None), ("/session/join", {"sessionCode": "X"})):
                response = await request(server, "POST", path, {"Origin": ELSEWHERE}, json=body)
                assert response.status_code == 403, path
                validate_http(path, "post", 403, response.json())
            started = await request(server, "POST", "/session/start", {"Origin": ALLOWED})
            assert started.status_code == 200
            assert started.headers["access-control-allow-origin"] == ALLOWED
            # The server's own pages are always allowed.
            own = await request(server, "POST", "/session/start", {"Origin": server.url})
            assert own.status_code == 200
            assert own.headers["access-control-allow-origin"] == server.url

            session = started.json()
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with connect_with(server, session["wsUrl"], {"Origin": ELSEWHERE}):
                    pass
            assert rejected.value.status_code == 403
            assert rejected.value.body is not None
            validate_http("/translate", "get", 403, json.loads(rejected.value.body))
            path = listener_path(session["sessionId"], "es")
            async with (
                connect_with(server, session["wsUrl"], {"Origin": ALLOWED}) as host,
                connect_with(server, path, {"Origin": server.url.upper()}) as listener,
            ):
                assert (await reply(host))["type"] == "session_ready"
                assert (await reply(listener))["type"] == "session_joined"
            await by.speak()  # the bystander sends no Origin, like any non-browser
            assert (await refusals(server))["origin"] == 3


async def test_any_origin_is_allowed_by_default() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_server(config(), stt=scripted()) as server:
            response = await request(server, "POST", "/session/start", {"Origin": ELSEWHERE})
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "*"
            assert "vary" not in response.headers
            async with connect_with(
                server, response.json()["wsUrl"], {"Origin": ELSEWHERE}
            ) as host:
                assert (await reply(host))["type"] == "session_ready"
    policy = OriginPolicy("")
    assert policy.any and policy.allows("null", None)


@needs_nginx
async def test_the_servers_own_pages_are_allowed_through_nginx_on_another_port(
    tmp_path: Path, cert: Cert
) -> None:
    settings = Config(port=0, allowed_origins=ALLOWED, trust_proxy=True)
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_server(settings, stt=scripted()) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
            proxy.client() as http,
        ):
            own = await http.post("/session/start", headers={"Origin": proxy.origin})
            # The same host on another port is another origin.
            elsewhere = f"https://127.0.0.1:{proxy.http_port}"
            other = await http.post("/session/start", headers={"Origin": elsewhere})
    assert own.status_code == 200, own.text
    assert own.headers["access-control-allow-origin"] == proxy.origin
    assert other.status_code == 403
