"""The bench's py-spy summary (``bench.profile``): shares of samples, inclusive and
self, with thread and process frames and line numbers folded away."""

from __future__ import annotations

from pathlib import Path

from bench.profile import summary

SERVER = 'process 7:"babel-actors serve";thread (0x1);main (babel_actors/__main__.py:10)'
RAW = "\n".join(
    [
        f"{SERVER};deliver (babel_actors/room.py:88);_write (server/connection.py:70) 6",
        f"{SERVER};deliver (babel_actors/room.py:90) 2",
        'process 7:"babel-actors serve";thread (0x2);run (asyncio/base_events.py:600) 2',
    ]
)


def test_the_summary_gives_inclusive_and_self_shares(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(RAW)
    got = summary(raw)
    assert got["available"] is True and got["samples"] == 10 and got["raw"] == "profile.txt"
    inclusive = dict(got["inclusive_percent"])
    assert inclusive == {
        "main (babel_actors/__main__.py)": 80.0,
        "deliver (babel_actors/room.py)": 80.0,
        "_write (server/connection.py)": 60.0,
        "run (asyncio/base_events.py)": 20.0,
    }
    assert got["self_percent"][0] == ["_write (server/connection.py)", 60.0]
    assert dict(got["self_percent"])["deliver (babel_actors/room.py)"] == 20.0


def test_no_samples_is_no_profile(tmp_path: Path) -> None:
    assert summary(tmp_path / "missing.txt") == {"available": False}
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert summary(empty) == {"available": False}
