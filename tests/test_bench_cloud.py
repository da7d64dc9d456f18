"""A smoke run of ``python -m bench fanout --engines cloud``: the server on the
production engines (``--stt google --mt openai``) against the project's Speech v2 and
OpenAI-compatible emulators, each in a process of its own, 50 listeners for a few
seconds, as a subprocess.

It checks the report's structure, the split of each final's time, and that no final
was lost or duplicated; never timings (README, "Performance").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
LISTENERS = 50
PERCENTILES = {"n", "p50", "p95", "p99", "max", "mean"}
LEGS = {
    "stt_to_request",
    "request_to_answer",
    "answer_to_listener",
    "answer_to_last_listener",
    "stt_to_last_listener",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-cloud") / "cloud.json"
    command = [
        sys.executable, "-m", "bench", "fanout", "--engines", "cloud",
        "--listeners", str(LISTENERS), "--duration", "6", "--wpm", "300", "--settle-s", "0.5",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, output
    assert out.exists(), output
    return dict(json.loads(out.read_text()))


def test_the_report_is_a_fanout_report_of_the_cloud_path(report: dict[str, Any]) -> None:
    assert report["scenario"] == "fanout" and report["version"] == 1
    assert report["params"]["engines"] == "cloud"
    assert report["params"]["sample_rate"] == 16000
    assert report["clock"] and report["summary"]
    server = report["server"]
    assert server["spawned"] is True and (server["stt"], server["mt"]) == ("google", "openai")
    assert server["env"]["BABEL_GOOGLE_INSECURE"] == "1"
    assert server["env"]["BABEL_OPENAI_REQUESTS_PER_MINUTE"] == "0"
    original = report["reference"]["original"]
    assert original["1000"]["finals_p99_ms"] == 43.3
    assert original["2000"]["rss_per_listener_kb"] == 21.2
    for item in report["targets"]:
        assert {"name", "goal", "value", "met"} <= set(item)


def test_every_final_reaches_every_listener_once(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    assert run["listeners"] == LISTENERS
    assert report["params"]["finals"] >= 2, "at 300 words a minute, 6 s hold two sentences"
    finals = run["finals"]
    assert finals["expected"] == report["params"]["finals"] * LISTENERS > 0
    assert finals["lost"] == 0 and finals["received"] == finals["expected"], finals
    assert finals["duplicates"] == 0 and finals["out_of_order"] == 0, finals
    assert run["unknown_captions"] == 0 and run["finals_untranslated"] == 0
    assert run["stt_results"]["finals"] == report["params"]["finals"]
    assert not run["errors"], run["errors"]
    lost = next(t for t in report["targets"] if t["name"] == f"finals lost at {LISTENERS}")
    duplicated = next(t for t in report["targets"] if t["name"].startswith("finals duplicated"))
    assert lost["met"] is True and duplicated["met"] is True


def test_each_final_is_split_into_its_legs(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    pairs = report["params"]["finals"] * len(report["params"]["languages"])
    assert set(run["split_ms"]) == LEGS
    for name, leg in run["split_ms"].items():
        assert PERCENTILES <= set(leg), name
        assert leg["n"] > 0, name
    assert run["split_ms"]["stt_to_request"]["n"] == pairs
    assert run["split_ms"]["answer_to_listener"]["n"] == run["finals"]["received"]
    assert len(run["per_final"]) == pairs
    for kind in ("final", "partial"):
        for clock in ("socket", "read"):
            assert PERCENTILES <= set(run["latency_ms"][kind][clock])
    assert run["latency_ms"]["final"]["socket"]["n"] == run["finals"]["received"]
    requests = run["llm_requests"]
    assert requests["finals"] == requests["finals_expected"] == pairs
    assert requests["total"] == requests["finals"] + requests["partials"]
    server = run["server"]
    assert server["available"] and server["cpu_percent_of_core"] is not None
    assert server["memory_per_listener_bytes"] is not None
