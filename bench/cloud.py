"""``fanout --engines cloud``: fan-out on the production engines' path (issue 14).

The server runs ``--stt google --mt openai`` against the project's own emulators, each
in a process of its own and answering at once: the Speech v2 gRPC server
(``python -m babel_actors.testing.google``) and the OpenAI-compatible server
(``python -m babel_actors.testing.openai``). One host streams the Speech emulator's
word-coded speech in real time (``--wpm``, 150 words a minute: the emulator gives an
interim result per word); N listeners read es, fr, de.

Both emulators log on ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every
process on a Linux machine): the Speech emulator when it yields each result, the
OpenAI one when each translation request arrives and when its answer is written. The
listeners' arrival times (kernel ``SO_TIMESTAMPNS``, CLOCK_REALTIME) are moved onto
that clock with the realtime - monotonic offset measured before and after the run. So
each final's time splits into:

- STT result yielded -> its translation request received (per final and language):
  the gRPC-to-trio bridge, the splitter, the translator's hand-off;
- request received -> answer sent: the emulator (it answers at once);
- answer sent -> the last listener of that language has it at its socket: fan-out.

The OpenAI requests carry nothing that says partial or final: a request is a final's
when its (language, text) is a final's and it is the first such to arrive after the
Speech emulator yielded that final; every other request is a partial's.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    audio_frame,
    delivery,
    listener_path,
    load_cpus,
    server_for,
    wait_for_listeners,
)
from bench.frames import json_frame
from bench.load import Collected, Run
from bench.loadgen import HostPlan, PeerSpec
from bench.profile import sampled, summary
from bench.report import (
    Contention,
    at_most,
    fmt,
    header,
    new_report,
    percentiles,
    table,
    target,
    targets_text,
    write,
)
from bench.server import BenchError, Server, Usage
from bench.timeline import Line, Timeline, sentence_text

DEFAULT_DURATION_S = 40.0
RATE = 16000
"""The host's PCM rate: Google's, so ingest passes the word-coded samples untouched
(a resampler would smear the runs of one value that encode each word)."""
DEFAULT_WPM = 150.0
"""Words per minute of the host's speech: a talk's pace. Each word is 3/4 sound and
1/4 silence; an 11-word sentence with its pause lasts ~4.7 s. The emulator gives an
interim result per word, so this sets how many partials there are to translate (at
150, a 40 s run makes about as many LLM requests as issue 14's, ~280)."""
PAUSE_S = 0.4
"""Silence after each sentence (the emulator ends an utterance after 0.3 s of it)."""
ENDPOINT_S = 0.3


def pace(wpm: float) -> tuple[float, float]:
    """``(word_s, gap_s)`` of speech at ``wpm`` words per minute."""
    if wpm <= 0:
        raise BenchError(f"--wpm {wpm}: give a positive pace")
    per_word = 60.0 / wpm
    return 0.75 * per_word, 0.25 * per_word


ORIGINAL: dict[int, dict[str, float | None]] = {
    100: {"finals_p99_ms": 11.2, "cpu_percent_of_core": 2.4, "rss_per_listener_kb": None},
    1000: {"finals_p99_ms": 43.3, "cpu_percent_of_core": 7.0, "rss_per_listener_kb": 30.4},
    2000: {"finals_p99_ms": 58.5, "cpu_percent_of_core": 10.8, "rss_per_listener_kb": 21.2},
}
"""The Node.js original on this path (issue 14's table: one host, es/fr/de, 40 s)."""
AT_ISSUE_14: dict[int, dict[str, float | None]] = {
    100: {"finals_p99_ms": 16.8, "cpu_percent_of_core": 3.9, "rss_per_listener_kb": None},
    1000: {"finals_p99_ms": 40.6, "cpu_percent_of_core": 6.5, "rss_per_listener_kb": 42.5},
    2000: {"finals_p99_ms": 65.5, "cpu_percent_of_core": 9.2, "rss_per_listener_kb": 31.3},
}
"""babel-actors as issue 14 measured it, before the work it asks for."""
AIMS = {1000: (22.0, 5.0), 2000: (30.0, 8.0)}
"""Issue 14's targets: finals p99 (ms, half the original's) and CPU (% of a core)."""
RSS_PER_LISTENER_KB = 20.0
"""Issue 14: under this many KB per listener while captions flow."""

CLOUD_CLOCK = (
    "CLOCK_MONOTONIC, shared by every process on the machine. T0 of a final = the "
    "Speech v2 emulator's time.monotonic() just before it yielded the result. The "
    "OpenAI emulator stamps each request's arrival (its last bytes read) and its answer "
    "(written to the socket). A listener's arrival = the kernel's SO_TIMESTAMPNS "
    "(CLOCK_REALTIME), moved onto CLOCK_MONOTONIC by the realtime-monotonic offset "
    "measured before and after the run (linear between; the drift is reported); 'read' "
    "= when the load process read it."
)


# --- the script: word-coded sentences and the captions they make ---------------------


@dataclass(frozen=True)
class Script:
    """The host's speech and every caption it should produce."""

    pcm: bytes
    timeline: Timeline
    """Its lines: each sentence's partials (one per word, as the emulator gives them)
    and its final; ``at_s`` is when the emulator can produce each."""
    words: tuple[str, ...]
    """The vocabulary, in the order of the codec's word numbers."""
    sentences: tuple[str, ...]


def build_script(duration_s: float, chunk_s: float, wpm: float = DEFAULT_WPM) -> Script:
    """Sentences spoken back to back at ``wpm`` while they fit in ``duration_s`` (at
    least one), then silence to the end of it (in whole chunks)."""
    from babel_actors.testing.google import WordCodec

    word_s, gap_s = pace(wpm)
    codec = WordCodec()
    parts: list[bytes] = []
    lines: list[Line] = []
    sentences: list[str] = []
    start_s = 0.0
    chunk_samples = round(chunk_s * RATE)
    while True:
        text = sentence_text(len(sentences) + 1)
        pcm = codec.speak(text, rate=RATE, word_s=word_s, gap_s=gap_s, pause_s=PAUSE_S)
        if start_s + len(pcm) / 2 / RATE > duration_s and sentences:
            break
        words = text.split()
        for count in range(1, len(words) + 1):
            end_s = start_s + count * word_s + (count - 1) * gap_s
            lines.append(Line(len(lines), end_s, " ".join(words[:count]), False, -1))
        final_s = end_s + ENDPOINT_S
        lines.append(Line(len(lines), final_s, text, True, -1))
        parts.append(pcm)
        sentences.append(text)
        start_s += len(pcm) / 2 / RATE
    speech = b"".join(parts)
    chunks = max(1, -(-max(round(duration_s * RATE), len(speech) // 2) // chunk_samples))
    speech += b"\0\0" * (chunks * chunk_samples - len(speech) // 2)
    timed = tuple(
        Line(line.index, line.at_s, line.text, line.final, int(line.at_s / chunk_s))
        for line in lines
    )
    return Script(speech, Timeline(timed, chunk_s, chunks), codec.words, tuple(sentences))


def host_plan(script: Script, chunk_s: float, audio_format: str) -> HostPlan:
    size = 2 * round(chunk_s * RATE)
    pcm = script.pcm
    return HostPlan(
        init=json_frame({"type": "init", "sourceLang": "en", "sampleRate": RATE}),
        frames=[audio_frame(pcm[i : i + size], audio_format) for i in range(0, len(pcm), size)],
        chunk_s=chunk_s,
    )


# --- the emulators ---------------------------------------------------------------------


@dataclass
class Emulators:
    """The Speech v2 and OpenAI-compatible emulators of one run, in processes of their
    own, and the logs they write."""

    speech: subprocess.Popen[str]
    openai: subprocess.Popen[str]
    speech_port: int
    openai_port: int
    results_path: Path
    requests_path: Path

    def server_env(self) -> dict[str, str]:
        """What points ``--stt google --mt openai`` at them, with no client-side rate
        limit (the emulators have none to protect)."""
        return {
            "BABEL_GOOGLE_ENDPOINT": f"127.0.0.1:{self.speech_port}",
            "BABEL_GOOGLE_INSECURE": "1",
            "GOOGLE_CLOUD_PROJECT": "local",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{self.openai_port}/v1",
            "OPENAI_API_KEY": "dummy",
            "BABEL_OPENAI_REQUESTS_PER_MINUTE": "0",
            "BABEL_OPENAI_TOKENS_PER_MINUTE": "0",
        }

    def usage(self) -> float:
        """Their CPU seconds so far."""
        import psutil  # type: ignore[import-untyped]

        total = 0.0
        for process in (self.speech, self.openai):
            try:
                times = psutil.Process(process.pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def results(self) -> list[dict[str, Any]]:
        return _json_lines(self.results_path)

    def requests(self) -> list[dict[str, Any]]:
        return _json_lines(self.requests_path)


@contextmanager
def emulators(folder: Path, words: Sequence[str], cpus: set[int] | None) -> Iterator[Emulators]:
    """Start both emulators (on ``cpus`` when given); stop them after the block."""
    words_path = folder / "words.txt"
    words_path.write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
    results_path, requests_path = folder / "stt-results.jsonl", folder / "llm-requests.jsonl"
    for path in (results_path, requests_path):
        path.unlink(missing_ok=True)
    started: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        speech = _start(
            "babel_actors.testing.google",
            ["--words", str(words_path), "--results", str(results_path)],
            folder / "speech-emulator.log",
            cpus,
            started,
        )
        openai = _start(
            "babel_actors.testing.openai",
            ["--log", str(requests_path)],
            folder / "openai-emulator.log",
            cpus,
            started,
        )
        yield Emulators(
            speech,
            openai,
            _port(speech, started[0][1]),
            _port(openai, started[1][1]),
            results_path,
            requests_path,
        )
    finally:
        for process, _ in started:
            _stop(process)


def _start(
    module: str,
    options: list[str],
    log: Path,
    cpus: set[int] | None,
    started: list[tuple[subprocess.Popen[str], Path]],
) -> subprocess.Popen[str]:
    with open(log, "w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    started.append((process, log))
    return process


def _port(process: subprocess.Popen[str], log: Path, timeout_s: float = 60.0) -> int:
    """The port the emulator prints once it serves."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    line = process.stdout.readline() if ready else ""
    try:
        return int(line)
    except ValueError:
        tail = log.read_text(errors="replace")[-500:]
        raise BenchError(f"{process.args!r} did not start: {tail}") from None


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the clocks ---------------------------------------------------------------------


def clock_offset() -> tuple[float, float]:
    """``(time.time(), time.time() - time.monotonic())``, from the closest of a few
    readings."""
    best: tuple[float, float, float] | None = None
    for _ in range(20):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, wall, wall - (before + after) / 2)
    assert best is not None
    return best[1], best[2]


def to_monotonic(start: tuple[float, float], end: tuple[float, float]) -> Callable[[float], float]:
    """Realtime -> monotonic, the offset linear between two ``clock_offset`` readings."""
    (wall0, offset0), (wall1, offset1) = start, end
    slope = (offset1 - offset0) / (wall1 - wall0) if wall1 > wall0 else 0.0

    def convert(wall: float) -> float:
        return wall - (offset0 + slope * (wall - wall0))

    return convert


# --- a run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        raise BenchError(
            "--engines cloud starts its own server and emulators (it reads their logs): drop --url"
        )
    duration = DEFAULT_DURATION_S if args.duration is None else args.duration
    counts = [int(n) for n in str(args.listeners).split(",") if n.strip()]
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    chunk_s = args.chunk_ms / 1000
    wpm = args.wpm
    word_s, gap_s = pace(wpm)
    script = build_script(duration, chunk_s, wpm)
    report = new_report(
        "fanout",
        {
            "engines": "cloud",
            "listeners": counts,
            "languages": languages,
            "duration_s": duration,
            "sentences": len(script.sentences),
            "finals": len(script.timeline.finals),
            "stt_partials": len(script.timeline.partials),
            "chunk_ms": args.chunk_ms,
            "sample_rate": RATE,
            "audio_format": args.audio_format,
            "listeners_per_process": args.listeners_per_proc,
            "speech": {
                "words_per_minute": wpm,
                "word_s": round(word_s, 4),
                "gap_s": round(gap_s, 4),
                "pause_s": PAUSE_S,
                "words_per_sentence": len(script.sentences[0].split()),
            },
        },
        CLOUD_CLOCK,
    )
    report["reference"] = {
        "source": "issue 14 (2 cores, 5 alternating runs each, load on the same machine)",
        "original": {str(n): figures for n, figures in ORIGINAL.items()},
        "babel_actors_at_issue_14": {str(n): figures for n, figures in AT_ISSUE_14.items()},
        "original_stt_to_request_p50_ms": "2.8-2.9",
        "original_llm_requests_per_run": 125,
        "aims": {
            str(n): {"finals_p99_ms": p99, "cpu_percent_of_core": cpu}
            for n, (p99, cpu) in AIMS.items()
        },
        "rss_per_listener_kb_below": RSS_PER_LISTENER_KB,
    }
    plan = host_plan(script, chunk_s, args.audio_format)
    emulator_cpus = load_cpus(args)
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="babel-bench-cloud-") as scratch:
            with emulators(Path(scratch), script.words, emulator_cpus) as cloud:
                with server_for(
                    args, report, stt="google", mt="openai", env=cloud.server_env()
                ) as server:
                    report["runs"].append(_one(args, server, cloud, count, languages, script, plan))
    report["server"]["emulators"] = "babel_actors.testing.google, babel_actors.testing.openai"
    report["targets"] = _targets(report["runs"])
    write(report, _summary(report), args.out)
    return report


def _one(
    args: argparse.Namespace,
    server: Server,
    cloud: Emulators,
    count: int,
    languages: list[str],
    script: Script,
    plan: HostPlan,
) -> dict[str, Any]:
    profile_out = (
        Path(args.out).with_name(f"{Path(args.out).stem}-profile-{count}.txt")
        if args.profile
        else None
    )
    session = server.start_session()
    time.sleep(0.2)
    base = server.usage()
    peers = [PeerSpec("host", 0, session["wsUrl"], "en")]
    for i in range(count):
        lang = languages[i % len(languages)]
        peers.append(PeerSpec("listener", 0, listener_path(session["sessionId"], lang), lang))
    load = Run(
        server.addresses,
        peers,
        line_of_text=script.timeline.line_of_text(),
        plan=plan,
        listeners_per_process=args.listeners_per_proc,
        connect_timeout_s=60 + count / 50,
        cpus=load_cpus(args),
    )
    try:
        connect = load.connected()
        wait_for_listeners(server, session["sessionCode"], count)
        time.sleep(args.settle_s)
        idle = server.usage()
        server.reset_stats()
        sampler = server.sample()
        contention = Contention()
        clock_start = clock_offset()
        t0 = load.go()
        time.sleep(max(0.0, t0 - time.time()))
        before, emulators_before = server.usage(), cloud.usage()
        with sampled(server.pid, profile_out):
            load.streamed(len(plan.frames) * plan.chunk_s + 60)
        after, emulators_after = server.usage(), cloud.usage()
        collected = load.finish({0: script.timeline.last_final.index}, 15.0)
        samples = sampler.stop()
        clock_end = clock_offset()
        stats = server.stats()
    finally:
        load.close()
    collected.connect = connect
    split = _split(collected, script, cloud, languages, to_monotonic(clock_start, clock_end))
    usage = _server_usage(base, idle, before, after, samples, count)
    result: dict[str, Any] = {
        "listeners": count,
        **split,
        **_delivery(collected, script),
        "closes": collected.closes,
        "errors": [*split.pop("problems"), *collected.errors[:20]],
        "clock": {
            "realtime_minus_monotonic_drift_ms": round(1000 * (clock_end[1] - clock_start[1]), 3),
        },
        "load": collected.load_cpu(),
        "server": usage,
        "emulators_cpu_percent_of_core": _percent(
            emulators_after - emulators_before, after, before
        ),
        "server_stages": [s["stages"] if s else None for s in stats],
    }
    if profile_out is not None:
        result["profile"] = summary(profile_out)
    result["machine_cpu"] = contention.result(
        usage.get("cpu_s"), result["load"]["run_cpu_s"] + (emulators_after - emulators_before)
    )
    return result


def _percent(cpu_s: float, after: Usage | None, before: Usage | None) -> float | None:
    if after is None or before is None or after.at <= before.at:
        return None
    return round(100 * cpu_s / (after.at - before.at), 2)


def _delivery(collected: Collected, script: Script) -> dict[str, Any]:
    found = delivery(collected, script.timeline)
    # Partials are throttled per language by design (at most one translation per
    # ``partial_interval_s``): most of the emulator's per-word interim results are never
    # translated, so "dropped" would say nothing. Say what listeners got instead.
    listeners = sum(1 for p in collected.peers if p["role"] == "listener")
    received = sum(
        1
        for r in collected.receipts
        if r.partial and r.line >= 0 and collected.peers[r.peer]["role"] == "listener"
    )
    found["partials"] = {
        "stt_partials": len(script.timeline.partials),
        "received": received,
        "per_listener": round(received / listeners, 1) if listeners else None,
    }
    found["unknown_captions"] = sum(1 for r in collected.receipts if r.line < 0)
    return found


def _server_usage(
    base: Usage | None,
    idle: Usage | None,
    before: Usage | None,
    after: Usage | None,
    samples: list[Usage],
    count: int,
) -> dict[str, Any]:
    """CPU while the host streams (captions flowing, not idle) and memory per listener
    while they flow: the highest RSS sampled then, less the RSS before anyone joined."""
    if base is None or idle is None or before is None or after is None:
        return {"available": False}
    cpu = (after.cpu_s + after.children_cpu_s) - (before.cpu_s + before.children_cpu_s)
    wall = after.at - before.at
    flowing = [s.rss for s in samples if before.at <= s.at <= after.at] or [after.rss]
    peak = max(flowing)
    mean = sum(flowing) / len(flowing)
    return {
        "available": True,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_percent_of_core": round(100 * cpu / wall, 2) if wall else None,
        "rss_before_listeners_bytes": base.rss,
        "rss_idle_bytes": idle.rss,
        "rss_flowing_peak_bytes": peak,
        "rss_flowing_mean_bytes": round(mean),
        "rss_samples_flowing": len(flowing),
        "memory_per_listener_bytes": round((peak - base.rss) / count) if count else None,
        "memory_per_listener_mean_bytes": round((mean - base.rss) / count) if count else None,
        "memory_per_idle_listener_bytes": round((idle.rss - base.rss) / count) if count else None,
        "memory_note": "per listener = (highest RSS while the host streams - RSS before "
        "anyone joined) / listeners: it carries the session's own cost too (the gRPC "
        "stream, the HTTP client, the history), which dominates at small N",
    }


# --- the split ------------------------------------------------------------------------


def _split(
    collected: Collected,
    script: Script,
    cloud: Emulators,
    languages: list[str],
    monotonic: Callable[[float], float],
) -> dict[str, Any]:
    """Latencies from the emulators' logs and the listeners' receipts (ms)."""
    from babel_actors.engines.openai import language_name

    problems: list[str] = []
    finals_at: dict[str, float] = {}
    partials_at: dict[str, list[float]] = {}
    """Every yield of each interim text, in order: sentences share their first words."""
    stt_finals = stt_partials = 0
    for result in cloud.results():
        if result["final"]:
            finals_at.setdefault(result["text"], result["mono"])
            stt_finals += 1
        else:
            partials_at.setdefault(result["text"], []).append(result["mono"])
            stt_partials += 1
    for times in partials_at.values():
        times.sort()
    requests = sorted(cloud.requests(), key=lambda r: r["received"])
    by_key: dict[tuple[str, str], list[int]] = {}
    for index, request in enumerate(requests):
        by_key.setdefault((request["target"], request["text"]), []).append(index)
    name_of = {lang: language_name(lang) for lang in languages}
    lines = script.timeline.lines

    receipts: dict[tuple[int, str], list[float]] = {}
    finals: dict[str, list[float]] = {"socket": [], "read": []}
    partials: dict[str, list[float]] = {"socket": [], "read": []}
    untranslated = 0
    for receipt in collected.receipts:
        if receipt.line < 0 or collected.peers[receipt.peer]["role"] != "listener":
            continue
        line = lines[receipt.line]
        socket, read = monotonic(receipt.kts), monotonic(receipt.rts)
        at = _partial_at(partials_at, line.text, socket) if receipt.partial else None
        if not receipt.partial:
            at = finals_at.get(line.text)
        if at is None:
            continue
        into = partials if receipt.partial else finals
        into["socket"].append(socket - at)
        into["read"].append(read - at)
        if not receipt.partial:
            receipts.setdefault((line.index, receipt.lang), []).append(socket)
            tag = name_of.get(receipt.lang, receipt.lang)
            if receipt.translated != f"[{tag}] {line.text}":
                untranslated += 1

    legs: dict[str, list[float]] = {
        "stt_to_request": [],
        "request_to_answer": [],
        "answer_to_listener": [],
        "answer_to_last_listener": [],
        "stt_to_last_listener": [],
    }
    by_language: dict[str, dict[str, list[float]]] = {
        lang: {"stt_to_request": [], "answer_to_last_listener": []} for lang in languages
    }
    per_final: list[dict[str, Any]] = []
    used: set[int] = set()
    unmatched = 0
    for line in script.timeline.finals:
        at = finals_at.get(line.text)
        if at is None:
            problems.append(f"the Speech emulator never yielded the final {line.text!r}")
            continue
        for lang in languages:
            number = next(
                (
                    n
                    for n in by_key.get((name_of[lang], line.text), [])
                    if n not in used and requests[n]["received"] >= at
                ),
                None,
            )
            if number is None:
                unmatched += 1
                continue
            used.add(number)
            request = requests[number]
            arrivals = receipts.get((line.index, lang), [])
            row: dict[str, Any] = {
                "line": line.index,
                "lang": lang,
                "stt_to_request_ms": round(1000 * (request["received"] - at), 3),
                "request_to_answer_ms": round(
                    1000 * (request["answered"] - request["received"]), 3
                ),
                "answer_to_last_listener_ms": None,
                "listeners": len(arrivals),
            }
            legs["stt_to_request"].append(request["received"] - at)
            by_language[lang]["stt_to_request"].append(request["received"] - at)
            legs["request_to_answer"].append(request["answered"] - request["received"])
            if arrivals:
                last = max(arrivals)
                row["answer_to_last_listener_ms"] = round(1000 * (last - request["answered"]), 3)
                legs["answer_to_last_listener"].append(last - request["answered"])
                by_language[lang]["answer_to_last_listener"].append(last - request["answered"])
                legs["stt_to_last_listener"].append(last - at)
                legs["answer_to_listener"].extend(a - request["answered"] for a in arrivals)
            per_final.append(row)
    if unmatched:
        problems.append(f"{unmatched} (final, language) pairs had no translation request")
    expected = len(script.timeline.finals) * len(languages)
    requests_by_language = {
        lang: sum(1 for r in requests if r["target"] == name_of[lang]) for lang in languages
    }
    return {
        "latency_ms": {
            "final": {clock: percentiles(v, scale=1000) for clock, v in finals.items()},
            "partial": {clock: percentiles(v, scale=1000) for clock, v in partials.items()},
        },
        "split_ms": {name: percentiles(v, scale=1000) for name, v in legs.items()},
        "split_by_language_ms": {
            lang: {name: percentiles(v, scale=1000) for name, v in found.items()}
            for lang, found in by_language.items()
        },
        "per_final": per_final,
        "stt_results": {"finals": stt_finals, "partials": stt_partials},
        "llm_requests": {
            "total": len(requests),
            "finals": len(used),
            "partials": len(requests) - len(used),
            "finals_expected": expected,
            "finals_without_request": unmatched,
            "by_language": requests_by_language,
            "how": "a request is a final's when its (language, text) is a final's and it "
            "is the first such to arrive after the final was yielded; the rest are "
            "partials'",
        },
        "finals_untranslated": untranslated,
        "problems": problems,
    }


def _partial_at(partials_at: dict[str, list[float]], text: str, arrived: float) -> float | None:
    """The last yield of interim ``text`` before ``arrived`` (the one delivered)."""
    times = partials_at.get(text, [])
    index = bisect.bisect_right(times, arrived)
    return times[index - 1] if index else None


# --- targets and summary ----------------------------------------------------------------


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for run in runs:
        n = run["listeners"]
        finals = run["finals"]
        found.append(target(f"finals lost at {n}", "0", finals["lost"], finals["lost"] == 0))
        found.append(
            target(
                f"finals duplicated at {n}",
                "0",
                finals["duplicates"],
                finals["duplicates"] == 0,
            )
        )
        p99 = run["latency_ms"]["final"]["socket"]["p99"]
        cpu = run["server"].get("cpu_percent_of_core")
        per = run["server"].get("memory_per_listener_bytes")
        kb = None if per is None else round(per / 1024, 1)
        original = ORIGINAL.get(n)
        if original is not None:
            found.append(_versus(f"finals p99 at {n} (ms)", p99, original["finals_p99_ms"], "ms"))
            found.append(
                _versus(
                    f"server CPU at {n} (% of a core)",
                    cpu,
                    original["cpu_percent_of_core"],
                    "%",
                )
            )
            if original["rss_per_listener_kb"] is not None:
                found.append(
                    _versus(
                        f"RSS per listener while captions flow at {n} (KB)",
                        kb,
                        original["rss_per_listener_kb"],
                        "KB",
                    )
                )
        if n in AIMS:
            aim_p99, aim_cpu = AIMS[n]
            item = at_most(f"finals p99 at {n}, aim (ms)", p99, aim_p99, "ms")
            item["note"] = "half the original's"
            found.append(item)
            found.append(at_most(f"server CPU at {n}, aim (% of a core)", cpu, aim_cpu, "%"))
            found.append(
                target(
                    f"RSS per listener while captions flow at {n}, aim (KB)",
                    f"< {RSS_PER_LISTENER_KB:g} KB",
                    kb,
                    None if kb is None else kb < RSS_PER_LISTENER_KB,
                )
            )
    return found


def _versus(name: str, value: float | None, original: float | None, unit: str) -> dict[str, Any]:
    """At most the original's figure; the note gives the ratio."""
    assert original is not None
    item = at_most(name, value, original, f"{unit} (original)")
    if value is not None:
        item["note"] = f"{value / original:.2f}x the original"
    return item


def _summary(report: dict[str, Any]) -> str:
    rows = []
    for run in report["runs"]:
        final = run["latency_ms"]["final"]["socket"]
        split = run["split_ms"]
        server = run["server"]
        per = server.get("memory_per_listener_bytes")
        rows.append(
            [
                run["listeners"],
                final["p50"],
                final["p95"],
                final["p99"],
                split["stt_to_request"]["p50"],
                split["stt_to_request"]["p99"],
                split["answer_to_last_listener"]["p50"],
                split["answer_to_last_listener"]["p99"],
                run["latency_ms"]["partial"]["socket"]["p50"],
                run["finals"]["lost"],
                run["finals"]["duplicates"],
                server.get("cpu_percent_of_core"),
                None if per is None else per / 1024,
                f"{run['llm_requests']['finals']}/{run['llm_requests']['partials']}",
            ]
        )
    head = [
        "listeners",
        "final p50",
        "p95",
        "p99",
        "stt->req p50",
        "p99",
        "ans->last p50",
        "p99",
        "partial p50",
        "lost",
        "dup",
        "server %core",
        "KB/listener",
        "LLM fin/part",
    ]
    reference = []
    for n, figures in ORIGINAL.items():
        kb = figures["rss_per_listener_kb"]
        reference.append(
            f"  {n}: finals p99 {fmt(figures['finals_p99_ms'])} ms, CPU "
            f"{fmt(figures['cpu_percent_of_core'])} %, "
            f"{'-' if kb is None else fmt(kb)} KB per listener"
        )
    lines = [
        header(report),
        "",
        "latency in ms; finals from the STT emulator's yield to each listener's socket; "
        "stt->req: to the OpenAI emulator receiving the request (per final and language); "
        "ans->last: its answer to the language's last listener; partials from the "
        "interim result's yield (with the per-language throttle); KB/listener while "
        "captions flow",
        "",
        table(head, rows),
        "",
        "the original (Node.js), issue 14:",
        *reference,
        "",
        "targets:",
        targets_text(report["targets"]),
    ]
    problems = [e for run in report["runs"] for e in run["errors"]][:5]
    if problems:
        lines += ["", "errors:", *("  " + e for e in problems)]
    return "\n".join(lines)
