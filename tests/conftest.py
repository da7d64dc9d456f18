"""Shared fixtures: every async test runs under trio (setup.cfg: trio_mode)."""

from __future__ import annotations

import sys
from pathlib import Path

import hypothesis.core
from hypothesis.vendor import pretty
from schemathesis.generation.hypothesis import setup as schemathesis_setup

sys.path.insert(0, str(Path(__file__).parent))


# schemathesis (its pytest plugin, and any ``as_strategy`` call) swaps hypothesis's
# printer, once per process, for one that prints nothing, to save time in its own runs;
# every falsifying example in this suite would then read ``drawn=,``. Let it make its
# swap now, then put the real printer back.
schemathesis_setup()
hypothesis.core.RepresentationPrinter = pretty.RepresentationPrinter  # type: ignore[attr-defined]
