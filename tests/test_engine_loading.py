"""A cloud engine's client library is imported when the engine is made, as the server
starts: not inside the event loop when the first session needs it (issue 14: the
Speech v2 client takes ~0.8 s and ~30 MB to import, and every session stalled while the
first host connected)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from babel_actors.engines import CLIENT_LIBRARIES

PROBE = """
import json, sys
from babel_actors.config import Config
from babel_actors.engines import make_mt, make_stt
config = Config(stt=sys.argv[1], mt=sys.argv[2], openai_api_key="sk-test")
before = set(sys.modules)
make_stt(config)
make_mt(config)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by_making(stt: str, mt: str) -> set[str]:
    """The modules that making the engines imported, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, stt, mt], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(("stt", "mt"), [("google", "echo"), ("scripted", "openai")])
def test_making_a_cloud_engine_imports_its_client_library(stt: str, mt: str) -> None:
    engine = stt if stt == "google" else mt
    loaded = loaded_by_making(stt, mt)
    assert set(CLIENT_LIBRARIES[engine]) <= loaded


def test_the_embedded_engines_import_no_cloud_library() -> None:
    loaded = loaded_by_making("scripted", "echo")
    assert not {m for m in loaded if m.startswith(("google.cloud", "openai"))}
