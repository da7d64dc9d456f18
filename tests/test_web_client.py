"""The web client (``babel_actors/web``) as people use it: Debian's Chromium, driven by
playwright, with a WAV of synthesised speech as its microphone, against a server each
test starts.

Playwright's sync API and trio do not share a thread: each browser scenario is one
plain function run in a worker thread (``trio.to_thread.run_sync``) while the server
runs in the test's trio loop; a scenario reaches into the server only through
``trio.from_thread``. Every wait is for something on a page (a selector, a text),
bounded by playwright's timeouts, and every test by ``trio.fail_after``.

Chromium's flags are those of ``shared/design.md``. ``--user-data-dir`` is not passed
by hand: playwright refuses it for ``launch`` and gives every launch a fresh profile
directory of its own, which is what the flag is for.
"""

from __future__ import annotations

import json
import re
import socket
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import trio

from babel_actors.audience import Role
from babel_actors.config import Config
from babel_actors.engines.apertium import ApertiumTranslator
from babel_actors.engines.whisper import WhisperSpeechToText
from babel_actors.server.app import Server
from babel_actors.testing import (
    EchoTranslator,
    ScriptedSpeechToText,
    running_server,
    sentence_script,
)
from babel_actors.testing.speech import read_wav_pcm, synthesize

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is missing (make test installs it)"
)

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

SENTENCE = "Good morning everyone, and welcome to our church."
ENGLISH = re.compile(r"welcome to our church", re.IGNORECASE)
SPANISH = re.compile(r"bienvenid\w* a nuestra iglesia", re.IGNORECASE)
"""What Apertium makes of Whisper's transcript of SENTENCE, give or take punctuation."""
WAV_RATE = 48000
"""Chromium's fake capture converts any 16-bit PCM WAV; 48 kHz is what it runs at."""

SPEECH_TIMEOUT_MS = 90_000
"""From the first audio to a translated final on the embedded engines (tiny.en on a
small CPU, Chromium competing for it): a few seconds when measured; generous here."""
UI_TIMEOUT_MS = 20_000
TEST_TIMEOUT_S = 240

SCRIPTED = [f"Sentence number {n} is read aloud." for n in range(1, 41)]
SCRIPT_SECONDS_EACH = 0.8

T = TypeVar("T")


# --- Fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by Festival, with quiet before and after, as a 48 kHz WAV."""
    folder = tmp_path_factory.mktemp("web-speech")
    pcm, rate = read_wav_pcm(synthesize(SENTENCE, folder / "raw.wav", rate=WAV_RATE))
    samples = np.frombuffer(pcm, dtype="<i2")
    quiet = np.zeros(int(0.5 * rate), dtype="<i2")
    path = folder / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.concatenate([quiet, samples, quiet, quiet, quiet]).tobytes())
    return path


@pytest.fixture
async def real_engines() -> AsyncIterator[tuple[WhisperSpeechToText, ApertiumTranslator]]:
    config = Config()
    stt = WhisperSpeechToText(config)
    mt = ApertiumTranslator(config)
    if "es" not in mt.targets("en"):
        pytest.skip("Apertium's English-Spanish pair is missing (apt: apertium-eng-spa)")
    with trio.fail_after(120):
        await stt.load()
    try:
        yield stt, mt
    finally:
        await mt.aclose()
        await stt.aclose()


# --- Running Chromium ---------------------------------------------------------------------


def chromium_flags(wav: Path, *, allow_microphone: bool = True) -> list[str]:
    """design.md's flags; without ``allow_microphone`` no one answers the permission
    prompt, as when a person refuses it."""
    allow = ["--use-fake-ui-for-media-stream"] if allow_microphone else []
    return [
        *allow,
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav.resolve()}%noloop",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
    ]


async def in_browser(
    wav: Path, scenario: Callable[[Any], T], *, allow_microphone: bool = True
) -> T:
    """Run ``scenario(browser)`` in a worker thread with a fresh Chromium."""
    flags = chromium_flags(wav, allow_microphone=allow_microphone)

    def run() -> T:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=flags, timeout=60_000
            )
            try:
                return scenario(browser)
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


class Tab:
    """A page in its own browser context. ``errors`` collects uncaught script errors and
    requests that left the server (the pages must load nothing from elsewhere)."""

    def __init__(
        self, browser: Any, base_url: str, viewport: dict[str, int], **options: Any
    ) -> None:
        self.context = browser.new_context(viewport=viewport, accept_downloads=True, **options)
        self.context.set_default_timeout(UI_TIMEOUT_MS)
        self.page: Any = self.context.new_page()
        self.base_url = base_url
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", self._check_origin)

    def _check_origin(self, request: Any) -> None:
        url: str = request.url
        if not url.startswith((self.base_url + "/", "ws://127.0.0.1", "blob:", "data:")):
            self.errors.append(f"loaded from elsewhere: {url}")

    def open(self, path: str) -> Any:
        self.page.goto(self.base_url + path)
        return self.page

    def finals(self) -> list[str]:
        texts: list[str] = self.page.locator(".caption--final .caption__text").all_text_contents()
        return texts

    def wait_for_final(self, pattern: re.Pattern[str], timeout: int = UI_TIMEOUT_MS) -> str:
        line = self.page.locator(".caption--final .caption__text", has_text=pattern).first
        line.wait_for(timeout=timeout)
        text: str = line.text_content()
        return text

    def wait_for_state(self, state: str) -> None:
        self.page.locator(f'[data-status][data-state="{state}"]').wait_for()

    def count_visible_partials(self) -> None:
        """From now on, count every moment a partial caption is on screen."""
        self.page.evaluate(
            """() => {
                window.partialsSeen = 0;
                const partial = document.querySelector("[data-partial]");
                const seen = () => {
                    if (partial.checkVisibility() && partial.textContent) window.partialsSeen++;
                };
                new MutationObserver(seen).observe(partial, {
                    attributes: true, childList: true, characterData: true, subtree: true,
                });
            }"""
        )

    def partials_seen(self) -> int:
        seen: int = self.page.evaluate("() => window.partialsSeen")
        return seen

    def screenshot(self, name: str, viewport: dict[str, int], *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.set_viewport_size(viewport)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def download(self, open_menu: Callable[[], None] | None, selector: str) -> str:
        if open_menu is not None:
            open_menu()
        with self.page.expect_download() as event:
            self.page.click(selector)
        text = Path(event.value.path()).read_text(encoding="utf-8")
        return text


def start_hosting(host: Tab) -> str:
    """Open the host page, start a session in English; return its code."""
    page = host.open("/host.html")
    page.locator("[data-source-lang] option[value=en]").wait_for(state="attached")
    page.select_option("[data-source-lang]", "en")
    page.click("[data-start-session]")
    page.wait_for_function(
        "() => /^[A-Z0-9]{6}$/.test(document.querySelector('[data-code]').textContent)"
    )
    host.wait_for_state("live")
    code: str = page.locator("[data-code]").text_content()
    return code


def join_by_code(listener: Tab, code: str, language: str, screenshot: str = "") -> None:
    """Type the code on the listener page, pick the language, join."""
    page = listener.open("/listen.html")
    page.fill("#join-code", code.lower())
    page.locator("[data-join-lang]:not([disabled])").wait_for()
    page.select_option("[data-join-lang]", language)
    if screenshot:
        listener.screenshot(screenshot, PHONE)
    page.click("[data-join-button]")
    listener.wait_for_state("live")


def wait_for_audience(host: Tab, language: str, count: int) -> None:
    host.page.locator(
        f'[data-language-counts] li[data-lang="{language}"] b', has_text=re.compile(f"^{count}$")
    ).wait_for()


def open_more_options(listener: Tab) -> Callable[[], None]:
    def open_menu() -> None:
        if not listener.page.locator("[data-more-sheet]").is_visible():
            listener.page.click("[data-more]")

    return open_menu


# --- Static files -------------------------------------------------------------------------


async def raw_get(
    server: Server, target: str, headers: str = "", *, method: str = "GET"
) -> tuple[int, str, bytes]:
    """Request ``target`` exactly as written (no client-side path clean-up)."""
    request = f"{method} {target} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(request.encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, head.decode("latin-1").lower(), body


async def test_the_server_serves_the_web_client_with_types_and_cache_headers() -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0)) as server:
            status, head, body = await raw_get(server, "/")
            assert status == 200 and b'<script type="module" src="js/index.js">' in body
            assert "content-type: text/html; charset=utf-8" in head
            assert "cache-control: no-cache" in head
            assert "content-security-policy:" in head
            etag = re.search(r'etag: ("[^"]+")', head)
            assert etag is not None
            status, head, body = await raw_get(server, "/", f"If-None-Match: {etag.group(1)}\r\n")
            assert status == 304 and body == b""
            status, head, body = await raw_get(server, "/index.html", method="HEAD")
            assert status == 200 and body == b"" and "content-length: " in head
            for path, kind in [
                ("/listen.html", "text/html"),
                ("/host.html", "text/html"),
                ("/solo.html", "text/html"),
                ("/config.js", "text/javascript"),
                ("/js/protocol.js", "text/javascript"),
                ("/js/pcm-worklet.js", "text/javascript"),
                ("/css/app.css", "text/css"),
                ("/img/icons.svg", "image/svg+xml"),
            ]:
                status, head, body = await raw_get(server, path)
                assert status == 200, path
                assert f"content-type: {kind}" in head, path
                assert f"content-length: {len(body)}" in head, path
                assert "x-content-type-options: nosniff" in head
            status, _, body = await raw_get(server, "/health")
            assert status == 200 and b'"status":"ok"' in body


@pytest.mark.parametrize(
    "target",
    [
        "/../setup.cfg",
        "/../../../../etc/passwd",
        "/js/../../server/http.py",
        "/js/../../../setup.cfg",
        "/%2e%2e/setup.cfg",
        "/%2e%2e%2f%2e%2e%2fsetup.cfg",
        "/js%2f..%2f..%2fserver%2fhttp.py",
        "/..%5c..%5csetup.cfg",
        "//etc/passwd",
        "/js/",
        "/index.html%00.js",
        "/%ff.html",
        "/__init__.py",
        "/server/static.py",
        "/web/index.html",
        "/nothing-here.html",
    ],
)
async def test_paths_outside_the_web_client_are_not_found(target: str) -> None:
    with trio.fail_after(20):
        async with running_server(Config(port=0)) as server:
            status, head, body = await raw_get(server, target)
            assert status in (400, 404), (target, status)
            assert "application/json" in head
            assert b"[metadata]" not in body and b"import" not in body and b"root:" not in body


# --- The real path: speech in, Spanish out ------------------------------------------------


async def test_host_streams_speech_and_a_listener_reads_it_in_spanish(
    speech_wav: Path, real_engines: tuple[WhisperSpeechToText, ApertiumTranslator]
) -> None:
    stt, mt = real_engines

    def scenario(browser: Any) -> dict[str, Any]:
        host = Tab(browser, url, DESKTOP)
        sent: list[str | bytes] = []
        host.page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(f)))
        code = start_hosting(host)
        assert host.page.locator("[data-qr] svg path").count() == 1
        link = host.page.locator("[data-join-link]").get_attribute("href")
        assert link.endswith(f"/listen.html?code={code}")

        listener = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        join_by_code(listener, code, "es")
        assert listener.page.locator("[data-code]").text_content() == code
        wait_for_audience(host, "es", 1)
        assert host.page.locator("[data-listener-count]").text_content() == "1"

        host.page.click("[data-mic]")
        host.page.locator("[data-status-text]", has_text="On air").wait_for()
        host.page.wait_for_function(
            "() => Number(document.querySelector('[data-meter]').ariaValueNow) > 30"
        )
        spanish = listener.wait_for_final(SPANISH, timeout=SPEECH_TIMEOUT_MS)
        english = host.wait_for_final(ENGLISH, timeout=SPEECH_TIMEOUT_MS)

        shots = [
            host.screenshot("host-desktop", DESKTOP),
            host.screenshot("host-phone", PHONE),
            host.screenshot("host-phone-full", PHONE, full_page=True),
            listener.screenshot("listener-phone", PHONE),
            listener.screenshot("listener-desktop", DESKTOP),
        ]
        listener.page.set_viewport_size(PHONE)
        downloads = {
            fmt: listener.download(open_more_options(listener), f"[data-download={fmt}]")
            for fmt in ("txt", "srt", "vtt")
        }
        listener.page.click("[data-close-sheet]")

        host.page.click("[data-mic]")
        host.page.click("[data-end-session]")
        host.page.click("[data-confirm-end]")
        host.wait_for_state("ended")
        listener.wait_for_state("ended")
        banner = listener.page.locator("[data-banner-text]").text_content()
        shots.append(listener.screenshot("listener-phone-ended", PHONE))
        return {
            "sent": sent,
            "spanish": spanish,
            "english": english,
            "downloads": downloads,
            "banner": banner,
            "errors": host.errors + listener.errors,
            "shots": shots,
        }

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt, mt=mt) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario)

    assert got["errors"] == []
    assert SPANISH.search(got["spanish"]) and ENGLISH.search(got["english"])
    # The host sends init with its AudioContext's rate, then raw 16-bit PCM frames.
    texts = [json.loads(frame) for frame in got["sent"] if isinstance(frame, str)]
    audio = [frame for frame in got["sent"] if isinstance(frame, bytes)]
    inits = [m for m in texts if m["type"] == "init"]
    assert inits and inits[0]["sourceLang"] == "en" and 8000 <= inits[0]["sampleRate"] <= 96000
    kinds = [
        "audio" if isinstance(frame, bytes) else json.loads(frame)["type"] for frame in got["sent"]
    ]
    assert kinds.index("init") < kinds.index("audio")
    assert all(len(frame) % 2 == 0 for frame in audio)
    assert not any(m["type"] == "audio" for m in texts)
    seconds = sum(len(frame) for frame in audio) / 2 / inits[0]["sampleRate"]
    assert seconds > 3, "the whole sentence went to the server"
    text, srt, vtt = got["downloads"]["txt"], got["downloads"]["srt"], got["downloads"]["vtt"]
    for transcript in (text, srt, vtt):
        assert got["spanish"] in transcript
        assert ENGLISH.search(transcript), transcript
    assert re.search(r"^en: .*church", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^es: .*iglesia", text, re.MULTILINE | re.IGNORECASE)
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert "ended" in got["banner"]
    assert all(shot.stat().st_size > 10_000 for shot in got["shots"])


async def test_solo_page_shows_the_translation_of_what_was_said(
    speech_wav: Path, real_engines: tuple[WhisperSpeechToText, ApertiumTranslator]
) -> None:
    stt, mt = real_engines

    def scenario(browser: Any) -> dict[str, Any]:
        solo = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        page = solo.open("/solo.html")
        page.locator("[data-target] option[value=es]").wait_for(state="attached")
        page.select_option("[data-source]", "en")
        page.select_option("[data-target]", "es")
        page.click("[data-mic]")
        solo.wait_for_state("live")
        spanish = solo.wait_for_final(SPANISH, timeout=SPEECH_TIMEOUT_MS)
        original = page.locator(".caption--final .caption__original").first.text_content()
        shots = [solo.screenshot("solo-phone", PHONE), solo.screenshot("solo-desktop", DESKTOP)]
        page.click("[data-mic]")
        return {"spanish": spanish, "original": original, "errors": solo.errors, "shots": shots}

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt, mt=mt) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario)

    assert got["errors"] == []
    assert SPANISH.search(got["spanish"])
    assert ENGLISH.search(got["original"])


# --- UI behaviour on the scripted engine ---------------------------------------------------


def cut_listeners(server: Server, code: str, language: str) -> int:
    """Drop the TCP connection of every ``language`` listener of session ``code``, as a
    lost network would; returns how many were cut. Runs in the server's trio thread."""
    session = server.registry.find(code)
    assert session is not None
    cut = 0
    for member in session.audience.members():
        if member.role is Role.LISTENER and member.target_lang == language:
            member.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
            cut += 1
    return cut


def cut_host(server: Server, code: str) -> None:
    """Drop the host's TCP connection, as a lost network would."""
    session = server.registry.find(code)
    assert session is not None
    for member in session.audience.members():
        if member.role is Role.HOST:
            member.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]


def in_trio(function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` in the server's trio thread from a scenario's worker thread."""
    return trio.from_thread.run_sync(function, *args)


def sentence_number(text: str) -> int:
    found = re.search(r"Sentence number (\d+)", text)
    assert found is not None, text
    return int(found.group(1))


async def test_reading_mode_hides_partials_and_a_cut_listener_resumes_without_gaps(
    speech_wav: Path,
) -> None:
    stt = ScriptedSpeechToText(sentence_script(SCRIPTED, seconds_each=SCRIPT_SECONDS_EACH))

    def scenario(browser: Any) -> dict[str, Any]:
        host = Tab(browser, url, DESKTOP)
        code = start_hosting(host)

        ana = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        sockets: list[str] = []
        frames: list[dict[str, Any]] = []

        def watch(ws: Any) -> None:
            sockets.append(ws.url)

            def frame(payload: str | bytes) -> None:
                if isinstance(payload, str):
                    frames.append(json.loads(payload))

            ws.on("framereceived", frame)

        ana.page.on("websocket", watch)
        join_by_code(ana, code, "es", screenshot="listener-phone-join")
        ana.count_visible_partials()

        ben = Tab(browser, url, DESKTOP, color_scheme="dark")
        home = ben.open("/")
        home.locator("[data-server-note]", has_text="Server online").wait_for()
        shots = [ben.screenshot("home-desktop-dark", DESKTOP)]
        home.fill("#join-code", code)
        home.click("[data-join-form] button[type=submit]")
        home.wait_for_url(re.compile(rf"/listen\.html\?code={code}$"))
        home.locator("[data-join-lang]:not([disabled])").wait_for()
        home.select_option("[data-join-lang]", "fr")
        home.click("[data-join-button]")
        ben.wait_for_state("live")
        ben.page.click("[data-reading]")
        ben.page.click("[data-speak]")
        assert ben.page.get_attribute("[data-reading]", "aria-pressed") == "true"
        assert ben.page.get_attribute("[data-speak]", "aria-pressed") == "true"
        ben.count_visible_partials()
        wait_for_audience(host, "es", 1)
        wait_for_audience(host, "fr", 1)

        host.page.click("[data-mic]")
        ana.wait_for_final(re.compile(r"Sentence number 3 "))
        # Offline holds Ana's traffic, so she cannot come back before the host has
        # moved on; the cut itself is the server dropping her TCP connection.
        ana.context.set_offline(True)
        assert in_trio(cut_listeners, server, code, "es") == 1
        at_cut = len(host.finals())
        host.wait_for_final(re.compile(rf"Sentence number {at_cut + 3} "))
        joins_while_offline = sum(frame["type"] == "session_joined" for frame in frames)
        ana.context.set_offline(False)
        ana.wait_for_final(re.compile(rf"Sentence number {at_cut + 6} "))
        ben.wait_for_final(re.compile(rf"Sentence number {at_cut + 6} "))
        ben.page.select_option("[data-lang]", "de")
        ben.wait_for_final(re.compile(r"^\[de\] Sentence number"))

        shots += [
            ana.screenshot("listener-phone-many-lines", PHONE),
            ben.screenshot("listener-desktop-dark-reading-mode", DESKTOP),
        ]
        ana.page.click("[data-theme-button]")
        ana.page.click("[data-theme-button]")
        ana.page.click("[data-theme-button]")
        assert ana.page.get_attribute("html", "data-theme") == "contrast"
        size = ana.page.locator(".caption--final").last.evaluate(
            "(line) => parseFloat(getComputedStyle(line).fontSize)"
        )
        ana.page.click("[data-larger]")
        ana.page.wait_for_function(
            "(size) => parseFloat(getComputedStyle("
            "document.querySelector('.caption--final')).fontSize) > size",
            arg=size,
        )
        shots.append(ana.screenshot("listener-phone-high-contrast", PHONE))
        host.page.click("[data-mic]")
        return {
            "ana": ana.finals(),
            "ben": ben.finals(),
            "ana_partials": ana.partials_seen(),
            "ben_partials": ben.partials_seen(),
            "sockets": sockets,
            "joins_while_offline": joins_while_offline,
            "frames": frames,
            "at_cut": at_cut,
            "errors": host.errors + ana.errors + ben.errors,
            "shots": shots,
        }

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0), stt=stt, mt=EchoTranslator()) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario)

    assert got["errors"] == []
    numbers = [sentence_number(text) for text in got["ana"]]
    assert numbers == list(range(1, len(numbers) + 1)), "every final once, in order, no gap"
    assert all(text.startswith("[es] ") for text in got["ana"])
    assert "lastSeq=" not in got["sockets"][0]
    # Ana came back once, after the host had moved on, asking to resume from the last
    # final she held; what she missed arrived first, then live captions.
    frames = got["frames"]
    joins = [i for i, frame in enumerate(frames) if frame["type"] == "session_joined"]
    assert len(joins) == 2 and got["joins_while_offline"] == 1
    assert "resumedFrom" not in frames[joins[0]]
    held = [f for f in frames[: joins[1]] if f["type"] == "translation" and not f["isPartial"]]
    last_seq = held[-1]["seqId"]
    assert got["sockets"][-1].endswith(f"&lastSeq={last_seq}")
    assert frames[joins[1]]["resumedFrom"] == last_seq
    after = [f for f in frames[joins[1] :] if f["type"] == "translation" and not f["isPartial"]]
    missed = [f for f in after if sentence_number(f["originalText"]) <= got["at_cut"] + 3]
    assert missed and after[: len(missed)] == missed
    first_missed = sentence_number(missed[0]["originalText"])
    assert first_missed == sentence_number(held[-1]["originalText"]) + 1
    ben_numbers = [sentence_number(text) for text in got["ben"]]
    assert ben_numbers == list(range(1, len(ben_numbers) + 1))
    languages = [text[:5] for text in got["ben"]]
    switch = languages.index("[de] ")
    assert set(languages[:switch]) == {"[fr] "} and set(languages[switch:]) == {"[de] "}
    assert got["ana_partials"] > 0, "partials were shown outside reading mode"
    assert got["ben_partials"] == 0, "reading mode showed a partial"
    assert all(shot.stat().st_size > 10_000 for shot in got["shots"])


async def test_refused_microphone_lost_host_and_server_shutdown_are_shown(
    speech_wav: Path,
) -> None:
    def scenario(browser: Any) -> dict[str, Any]:
        host = Tab(browser, url, DESKTOP)
        code = start_hosting(host)
        listener = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        page = listener.open(f"/listen.html?code={code}&lang=es")
        listener.wait_for_state("live")
        assert page.locator("[data-code]").text_content() == code

        host.page.click("[data-mic]")
        refused = host.page.locator("[data-live-error]", has_text="blocked")
        refused.wait_for()
        assert host.page.get_attribute("[data-mic]", "aria-pressed") == "false"
        shots = [host.screenshot("host-desktop-microphone-refused", DESKTOP)]
        host.page.click("[data-present]")
        host.page.locator("[data-present-qr] svg").wait_for()
        shots.append(host.screenshot("host-desktop-present", DESKTOP))
        host.page.click("[data-close-present]")

        in_trio(cut_host, server, code)
        host.wait_for_state("reconnecting")
        host.wait_for_state("live")
        wait_for_audience(host, "es", 1)

        in_trio(server.shutdown)
        listener.wait_for_state("ended")
        host.wait_for_state("ended")
        host.page.locator("[data-live-error]", has_text="shut down").wait_for()
        shots.append(host.screenshot("host-phone-ended", PHONE))
        return {"errors": host.errors + listener.errors, "shots": shots}

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0)) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario, allow_microphone=False)

    assert got["errors"] == []
    assert all(shot.stat().st_size > 10_000 for shot in got["shots"])


# --- API keys ---------------------------------------------------------------------------

API_KEY = "web-client-key-7"
API_KEYS = f"other-key-1,{API_KEY}"
SAVED_KEY = "babel.apiKey"


def saved_key(page: Any) -> str | None:
    key: str | None = page.evaluate(f"() => localStorage.getItem('{SAVED_KEY}')")
    return key


def watch_console(page: Any, lines: list[str]) -> None:
    page.on("console", lambda message: lines.append(message.text))


def wait_for_console(page: Any) -> str:
    """Wait for a host ``page`` to reach its live console; return the session code."""
    page.wait_for_function(
        "() => /^[A-Z0-9]{6}$/.test(document.querySelector('[data-code]').textContent)"
    )
    page.locator('[data-status][data-state="live"]').wait_for()
    code: str = page.locator("[data-code]").text_content()
    return code


async def test_the_host_page_asks_for_an_api_key_and_remembers_it(speech_wav: Path) -> None:
    def scenario(browser: Any) -> dict[str, Any]:
        host = Tab(browser, url, DESKTOP)
        console: list[str] = []
        starts: list[str | None] = []

        def record_start(request: Any) -> None:
            if request.method == "POST" and request.url.endswith("/session/start"):
                starts.append(request.headers.get("x-api-key"))

        def watch(page: Any) -> None:
            watch_console(page, console)
            page.on("pageerror", lambda error: host.errors.append(str(error)))
            page.on("request", record_start)

        watch(host.page)
        page = host.open("/host.html")
        page.locator("[data-source-lang] option[value=en]").wait_for(state="attached")
        # No key field in the way until the server asks for one.
        assert page.locator("[data-key-field]").is_hidden()
        assert page.locator("[data-key-saved]").is_hidden()
        page.click("[data-start-session]")
        page.locator("[data-setup-error]", has_text="needs an API key").wait_for()
        host.wait_for_state("error")
        field = page.get_by_label("API key", exact=True)
        assert field.is_visible() and field.get_attribute("type") == "password"
        assert page.evaluate("() => document.activeElement.id") == "api-key"
        shots = [host.screenshot("host-phone-api-key", PHONE)]

        field.fill("wrong-key")
        field.press("Enter")
        page.locator("[data-setup-error]", has_text="not accepted").wait_for()
        assert field.get_attribute("aria-invalid") == "true"
        assert page.locator("[data-live-view]").is_hidden()
        assert saved_key(page) is None

        field.fill(API_KEY)
        page.click("[data-start-session]")
        first_code = wait_for_console(page)
        assert saved_key(page) == API_KEY
        first_url = page.url

        # Next time the saved key is sent at once; "Forget it" offers the field again.
        again = host.context.new_page()
        watch(again)
        again.goto(url + "/host.html")
        again.locator("[data-key-saved]").wait_for()
        assert again.locator("[data-key-field]").is_hidden()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shots.append(SCREENSHOTS / "host-desktop-api-key-saved.png")
        again.screenshot(path=str(shots[-1]))
        again.click("[data-forget-key]")
        assert saved_key(again) is None
        assert again.locator("[data-key-saved]").is_hidden()
        again.get_by_label("API key", exact=True).fill(API_KEY)
        again.get_by_label("API key", exact=True).press("Enter")
        wait_for_console(again)

        third = host.context.new_page()
        watch(third)
        third.goto(url + "/host.html")
        third.locator("[data-key-saved]").wait_for()
        third.click("[data-start-session]")
        wait_for_console(third)
        assert third.locator("[data-key-field]").is_hidden()

        # A saved key the server no longer takes is dropped, and the field asks anew.
        stale = host.context.new_page()
        watch(stale)
        stale.goto(url + "/host.html")
        stale.evaluate(f"() => localStorage.setItem('{SAVED_KEY}', 'revoked-key')")
        stale.reload()
        stale.locator("[data-key-saved]").wait_for()
        stale.click("[data-start-session]")
        stale.locator("[data-setup-error]", has_text="saved API key was not accepted").wait_for()
        assert saved_key(stale) is None
        assert stale.get_by_label("API key", exact=True).is_visible()
        return {
            "starts": starts,
            "code": first_code,
            "urls": [first_url, again.url, third.url, stale.url],
            "console": console,
            "errors": host.errors,
            "shots": shots,
        }

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0, api_keys=API_KEYS)) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario)
            assert server.registry.find(got["code"]) is not None

    assert got["errors"] == []
    assert got["starts"] == [None, "wrong-key", API_KEY, API_KEY, API_KEY, "revoked-key"]
    assert not any(API_KEY in text for text in got["urls"] + got["console"])
    assert all(shot.stat().st_size > 10_000 for shot in got["shots"])


async def test_the_solo_page_sends_its_api_key_in_the_socket_query(speech_wav: Path) -> None:
    def scenario(browser: Any) -> dict[str, Any]:
        solo = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        page = solo.page
        console: list[str] = []
        watch_console(page, console)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        solo.open("/solo.html")
        page.locator("[data-target] option[value=es]").wait_for(state="attached")
        page.select_option("[data-target]", "es")
        assert page.locator("[data-key-field]").is_hidden()
        page.click("[data-mic]")
        page.locator("[data-error]", has_text="needs an API key").wait_for()
        solo.wait_for_state("error")
        assert page.get_attribute("[data-mic]", "aria-pressed") == "false"
        field = page.get_by_label("API key", exact=True)
        assert field.get_attribute("type") == "password"
        assert page.evaluate("() => document.activeElement.id") == "api-key"
        shots = [solo.screenshot("solo-phone-api-key", PHONE)]

        field.fill("wrong-key")
        page.click("[data-key-form] button[type=submit]")
        page.locator("[data-error]", has_text="not accepted").wait_for()
        assert saved_key(page) is None

        field.fill(API_KEY)
        field.press("Enter")
        solo.wait_for_state("live")
        assert page.get_attribute("[data-mic]", "aria-pressed") == "true"
        assert page.locator("[data-key-field]").is_hidden()
        assert saved_key(page) == API_KEY
        page.click("[data-mic]")

        # Next time the saved key goes with the first connection.
        page.reload()
        page.locator("[data-key-saved]").wait_for()
        page.locator("[data-target] option[value=es]").wait_for(state="attached")
        page.click("[data-mic]")
        solo.wait_for_state("live")
        return {
            "sockets": sockets,
            "url": page.url,
            "console": console,
            "errors": solo.errors,
            "shots": shots,
        }

    with trio.fail_after(TEST_TIMEOUT_S):
        async with running_server(Config(port=0, api_keys=API_KEYS)) as server:
            url = server.url
            got = await in_browser(speech_wav, scenario)

    assert got["errors"] == []
    keys = [re.search(r"[?&]apiKey=([^&]*)", socket_url) for socket_url in got["sockets"]]
    assert [found and found.group(1) for found in keys] == [
        None,
        "wrong-key",
        API_KEY,
        API_KEY,
    ]
    assert all("targetLang=es" in socket_url for socket_url in got["sockets"])
    assert API_KEY not in got["url"] and not any(API_KEY in text for text in got["console"])
    assert all(shot.stat().st_size > 10_000 for shot in got["shots"])
