"""The optional extras (``pip install 'babel-actors[NAME]'``) and the check, made when
an engine or store is chosen, that the one it needs is installed.

The core installs only what the server and the test engines use; each other engine
brings its SDK in an extra of its own, so an embedder on Apertium and the scripted
engine never installs Whisper, gRPC or an HTTP client for OpenAI. Nothing imports an
extra's modules when ``babel_actors`` is imported: the adapters are imported only once
chosen, after ``require_extra`` has found what they need (``tests/test_extras.py``).
"""

from __future__ import annotations

import importlib.util

from babel_actors.errors import ConfigError

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "whisper": ("faster_whisper", "pocketsphinx"),
    "google": ("grpc", "google.api_core", "google.auth", "google.cloud.speech_v2"),
    "openai": ("openai",),
    "redis": ("coredis",),
}
"""The modules each extra installs that its engine or store imports."""


def require_extra(extra: str, user: str, *also: str) -> None:
    """``ConfigError`` naming the extra to install unless the modules of ``extra`` (and
    ``also``) can be imported; ``user`` says what needs them (``the whisper engine``).

    Nothing is imported but the parents of dotted names (``google.cloud`` for
    ``google.cloud.speech_v2``): the check costs no SDK start-up.
    """
    missing = [module for module in (*EXTRA_MODULES[extra], *also) if not _importable(module)]
    if missing:
        raise ConfigError(
            f"{user} needs `pip install 'babel-actors[{extra}]'` (missing: {', '.join(missing)})"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
    except ValueError:
        # In sys.modules without a spec: imported already, by hand.
        return True
