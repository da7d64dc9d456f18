"""Smoke runs of every bench scenario: small N, a few seconds each, run as
``python -m bench`` subprocesses (all at once, to keep ``make test`` short).

They check the reports' structure and that no final was lost; never timings, which
belong to real runs on a quiet machine (README, "Performance").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
SCENARIOS: dict[str, list[str]] = {
    "fanout": ["--listeners", "10,20", "--duration", "2", "--settle-s", "0.2",
               "--listeners-per-proc", "10"],
    "overhead": ["--listeners", "10", "--duration", "2", "--settle-s", "0.2"],
    "sessions": ["--hosts", "3", "--duration", "4", "--bucket-s", "1"],
    "ingest": ["--hosts", "2", "--audio-s", "10", "--idle-s", "0.2"],
    "e2e": ["--sentences", "1", "--warmup", "0", "--gap-s", "1.0", "--settle-s", "4"],
    "faults": ["--duration", "2", "--faults", "hang,error", "--engines", "mt,stt",
               "--settle-s", "0.5"],
}  # fmt: skip
PERCENTILES = {"n", "p50", "p95", "p99", "max", "mean"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every scenario's report (or its failure), run side by side."""
    folder = tmp_path_factory.mktemp("bench")
    running = {}
    for scenario, options in SCENARIOS.items():
        if scenario == "e2e" and shutil.which("text2wave") is None:
            continue
        out = folder / f"{scenario}.json"
        command = [sys.executable, "-m", "bench", scenario, *options, "--out", str(out)]
        running[scenario] = (
            subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
            out,
        )
    found: dict[str, Any] = {"folder": folder}
    try:
        for scenario, (process, out) in running.items():
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            found[scenario] = {
                "code": process.returncode,
                "output": (stdout + stderr)[-3000:],
                "report": json.loads(out.read_text()) if out.exists() else None,
                "path": out,
            }
        yield found
    finally:
        for process, _ in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _report(reports: dict[str, Any], scenario: str) -> dict[str, Any]:
    if scenario not in reports:
        pytest.skip(f"{scenario}: text-to-speech tools are not installed")
    run = reports[scenario]
    assert run["code"] == 0, run["output"]
    report = run["report"]
    assert report is not None, run["output"]
    assert report["scenario"] == scenario and report["version"] == 1
    assert {"nproc", "cpu_model", "python"} <= set(report["machine"])
    assert report["clock"] and report["summary"] and report["runs"]
    assert report["server"]["spawned"] is True and report["server"]["urls"]
    for item in report["targets"]:
        assert {"name", "goal", "value", "met"} <= set(item)
    return report


def _check_scripted_run(run: dict[str, Any]) -> None:
    for kind in ("final", "partial"):
        for clock in ("socket", "read"):
            assert PERCENTILES <= set(run["latency_ms"][kind][clock])
    assert run["latency_ms"]["final"]["socket"]["n"] > 0
    finals = run["finals"]
    assert finals["expected"] > 0
    assert finals["lost"] == 0 and finals["received"] == finals["expected"], finals
    assert finals["duplicates"] == 0 and finals["out_of_order"] == 0, finals
    assert run["unknown_captions"] == 0
    assert {"expected", "received", "dropped"} <= set(run["partials"])
    assert run["server"]["available"] and run["server"]["cpu_s"] >= 0
    assert run["load"]["processes"] >= 2 and "run_cpu_s" in run["load"]


def test_fanout_report(reports: dict[str, Any]) -> None:
    report = _report(reports, "fanout")
    assert [run["listeners"] for run in report["runs"]] == [10, 20]
    for run in report["runs"]:
        _check_scripted_run(run)
        assert run["server"]["memory_per_listener_bytes"] is not None
    assert report["runs"][1]["load"]["processes"] == 3  # a host and two listener processes


def test_overhead_report_has_every_stage(reports: dict[str, Any]) -> None:
    report = _report(reports, "overhead")
    (run,) = report["runs"]
    _check_scripted_run(run)
    stages = run["server_stages"][0]
    final = stages["final"]
    assert set(final["stages"]) == {"ingest", "stt", "splitter", "translator", "broadcaster"}
    for name in final["stages"]:
        assert final["stages"][name]["n"] > 0, name
    assert final["total"]["n"] > 0 and final["resultToSocket"]["n"] > 0


def test_sessions_report(reports: dict[str, Any]) -> None:
    report = _report(reports, "sessions")
    (run,) = report["runs"]
    _check_scripted_run(run)
    assert run["hosts"] == 3 and run["readers"] == 9
    assert run["lag_over_time"] and PERCENTILES <= set(run["lag_over_time"][0])
    assert "lag_growth_ms_per_min" in run and "rss_per_session_bytes" in run["server"]


def test_ingest_report(reports: dict[str, Any]) -> None:
    report = _report(reports, "ingest")
    assert [run["format"] for run in report["runs"]] == ["base64", "binary"]
    for run in report["runs"]:
        assert run["audio_s"] > 0 and "cpu_ms_per_audio_s" in run and not run["errors"]


def test_e2e_report(reports: dict[str, Any]) -> None:
    report = _report(reports, "e2e")
    (run,) = report["runs"]
    assert len(run["sentences"]) == 1
    assert {"final_transcript", "translated_final", "first_partial"} == set(run["latency_ms"])
    assert {"final_ms", "translated_ms", "first_partial_ms", "wer"} <= set(run["sentences"][0])


def test_faults_report_shows_the_healthy_session_whole(reports: dict[str, Any]) -> None:
    report = _report(reports, "faults")
    cases = [(run["engine"], run["fault"]) for run in report["runs"]]
    assert cases[0] == (None, None)  # alone, then each fault in each engine
    assert {("mt", "hang"), ("mt", "error"), ("stt", "hang"), ("stt", "error")} <= set(cases)
    for run in report["runs"]:
        finals = run["finals"]
        assert finals["expected"] > 0 and finals["lost"] == 0, (run["case"], finals)
        assert finals["duplicates"] == 0 and finals["out_of_order"] == 0, (run["case"], finals)
        assert PERCENTILES <= set(run["latency_ms"]["final"]["socket"])
    assert all(item["met"] for item in report["targets"]), report["targets"]


def test_plot_draws_fanout_and_sessions(reports: dict[str, Any]) -> None:
    paths = [reports[s]["path"] for s in ("fanout", "overhead", "sessions")]
    for scenario in ("fanout", "overhead", "sessions"):
        assert reports[scenario]["code"] == 0, reports[scenario]["output"]
    png = reports["folder"] / "bench.png"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "plot", *map(str, paths), "--out", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
