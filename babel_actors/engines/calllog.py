"""A translator wrapper that appends one line per translation request to a file.

Tests of a cluster count requests at the engine boundary across server processes: each
process writes to its own file (``BABEL_MT_CALL_LOG``), the test reads them all. A line
is ``target<TAB>source text``, written with one ``O_APPEND`` write, so lines from
concurrent requests never interleave and a SIGKILLed process loses none it made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from babel_actors.engines.base import Translator, translation_route


class CallLogTranslator:
    """``engine``, with every ``translate`` call recorded in ``path`` before it runs."""

    def __init__(self, engine: Translator, path: str) -> None:
        self.engine = engine
        self.path = path
        self.name = engine.name

    def targets(self, source: str) -> frozenset[str]:
        return self.engine.targets(source)

    def sources(self) -> frozenset[str]:
        return self.engine.sources()

    def route(self, source: str, target: str) -> tuple[str, ...]:
        return translation_route(self.engine, source, target)

    async def translate(
        self, text: str, *, source: str, target: str, context: Sequence[str] = (), **extra: Any
    ) -> str:
        _append(self.path, f"{target}\t{' '.join(text.split())}\n")
        return await self.engine.translate(
            text, source=source, target=target, context=context, **extra
        )

    async def aclose(self) -> None:
        await self.engine.aclose()


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_call_log(path: str) -> list[tuple[str, str]]:
    """The ``(target, text)`` requests logged in ``path``, oldest first."""
    try:
        with open(path, encoding="utf-8") as log:
            return [tuple(line.rstrip("\n").split("\t", 1)) for line in log]  # type: ignore[misc]
    except FileNotFoundError:
        return []
