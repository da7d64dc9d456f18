"""The web client lists what the server reaches, and says which way a language goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import start_session
from test_web_client import PHONE, Tab, in_browser, pytestmark  # noqa: F401

from babel_actors.config import Config
from babel_actors.engines.apertium import ApertiumTranslator
from babel_actors.testing import ScriptedSpeechToText, running_server
from babel_actors.testing.speech import synthesize

TIMEOUT_S = 120.0


async def test_listener_menu_shows_two_hop_languages_with_their_pivot(tmp_path: Path) -> None:
    mt = ApertiumTranslator(Config())
    if "pt" not in mt.targets("en"):
        pytest.skip("needs apertium-es-pt (make run)")
    wav = synthesize("Hello.", tmp_path / "mic.wav", rate=48000)

    def scenario(browser: Any) -> dict[str, Any]:
        tab = Tab(browser, url, PHONE, is_mobile=True, has_touch=True)
        page = tab.open(f"/listen.html?code={code}")
        page.locator("[data-join-lang]:not([disabled])").wait_for()
        options = page.locator("[data-join-lang] option")
        found = {
            options.nth(i).get_attribute("value"): (
                options.nth(i).text_content(),
                options.nth(i).get_attribute("data-hops"),
            )
            for i in range(options.count())
        }
        return {"options": found, "errors": tab.errors}

    try:
        with trio.fail_after(TIMEOUT_S):
            async with running_server(Config(port=0), stt=ScriptedSpeechToText(), mt=mt) as server:
                url = server.url
                code = (await start_session(server))["sessionCode"]
                got = await in_browser(wav, scenario)
    finally:
        await mt.aclose()

    assert got["errors"] == []
    options = got["options"]
    assert set(options) == {"en", *mt.targets("en")}, "exactly what the server reaches"
    text, hops = options["pt"]
    assert hops == "2" and "via" in text and "Español" in text, text
    text, hops = options["es"]
    assert hops == "1" and "via" not in text, text
    assert "de" not in options
