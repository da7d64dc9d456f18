"""Shared fixtures: every async test runs under trio (setup.cfg: trio_mode)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
