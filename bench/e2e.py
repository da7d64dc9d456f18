"""``e2e``: the embedded engines (Whisper, Apertium) on synthetic real speech.

Festival (or espeak-ng) speaks a few sentences; one host streams them at real-time
pace with silence between them; a listener in the source language reads the
transcript and one per target language the translation. Measured per sentence, on the
load generator's clock: speech end -> final transcript, speech end -> translated final
(the same segment; the slowest language, and each language's path on its own, as
/health's mtRoutes names it), speech start -> first partial, and the WER.

``--source es`` speaks Spanish (espeak-ng's voice; Whisper base hears it);
``--english-model base`` makes the server hear English with Whisper base instead of
tiny.en, for the two on the same audio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import add_common, audio_frame, listener_path, load_cpus, server_for
from bench.frames import json_frame
from bench.load import Collected, Receipt, Run
from bench.loadgen import HostPlan, PeerSpec
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
from bench.server import BenchError

SENTENCES = (
    "Good morning everyone and welcome to the museum.",
    "The old bridge was built across the river two hundred years ago.",
    "Please keep your tickets with you during the whole visit.",
    "My brother bought a red car and a small house in the city.",
    "The library opens at nine in the morning and closes at six.",
    "We will have lunch together after the second part of the tour.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to bring your passport when you travel abroad next week.",
)
SENTENCES_ES = (
    "Buenos días a todos y bienvenidos al museo.",
    "El perro corre por el parque todos los días.",
    "Me gusta mucho la música clásica.",
    "Mañana vamos a la playa con nuestros amigos.",
    "Mi hermano tiene una casa grande en la ciudad.",
    "El libro está sobre la mesa de la cocina.",
)
LOUD = 500
"""A sample above this (of 32767) counts as speech."""
TRANSLATED_P50_S = 1.5
E2E_CLOCK = (
    "one clock, the load generator's time.time(). Speech end = the moment the host "
    "handed the kernel the 100 ms chunk holding the sentence's last loud sample (found "
    "in the synthesized audio); the host streams in real time, as a microphone would. "
    "Arrival = the caption at the listener's socket (kernel SO_TIMESTAMPNS)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sentences", type=int, default=len(SENTENCES), help=f"how many ({len(SENTENCES)})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="sentences spoken first and left out of the figures (1): the first decode "
        "loads the model",
    )
    parser.add_argument(
        "--languages", default=None, help="translation listeners (en: es,fr,pt; es: en,pt)"
    )
    parser.add_argument("--source", choices=("en", "es"), default="en", help="spoken (en)")
    parser.add_argument(
        "--english-model",
        choices=("tiny.en", "base"),
        default="tiny.en",
        help="the Whisper model that hears English (tiny.en)",
    )
    parser.add_argument("--voice", choices=("festival", "espeak"), default="festival")
    parser.add_argument("--gap-s", type=float, default=1.5, help="silence after each sentence")
    parser.add_argument("--stt", default="whisper", help="speech engine of the server (whisper)")
    parser.add_argument("--mt", default="apertium", help="translation engine (apertium)")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait for the last captions")
    add_common(parser, out="bench-e2e.json")


def run(args: argparse.Namespace) -> dict[str, Any]:
    default_languages = "en,pt" if args.source == "es" else "es,fr,pt"
    languages = [
        lang.strip() for lang in (args.languages or default_languages).split(",") if lang.strip()
    ]
    count = args.warmup + args.sentences
    pool = SENTENCES_ES if args.source == "es" else SENTENCES
    sentences = [pool[i % len(pool)] for i in range(count)]
    if args.source != "en":
        args.voice = "espeak"
    if args.english_model == "base":
        from babel_actors.config import Config
        from babel_actors.engines.whisper import bundled_base_dir

        args.server_env = [
            *args.server_env,
            f"BABEL_WHISPER_MODEL_DIR={bundled_base_dir(Config())}",
        ]
    report = new_report(
        "e2e",
        {
            "sentences": sentences,
            "warmup_sentences": args.warmup,
            "languages": languages,
            "voice": args.voice,
            "source": args.source,
            "english_model": args.english_model,
            "gap_s": args.gap_s,
            "chunk_ms": args.chunk_ms,
            "sample_rate": args.sample_rate,
            "audio_format": args.audio_format,
        },
        E2E_CLOCK,
    )
    speech = _speech(sentences, args)
    chunk = 2 * args.sample_rate * args.chunk_ms // 1000
    pcm = speech["pcm"]
    frames = [audio_frame(pcm[i : i + chunk], args.audio_format) for i in range(0, len(pcm), chunk)]
    plan = HostPlan(
        init=json_frame(
            {"type": "init", "sourceLang": args.source, "sampleRate": args.sample_rate}
        ),
        frames=frames,
        chunk_s=args.chunk_ms / 1000,
        tail=[json_frame({"type": "audio_end"})],
    )
    with server_for(args, report, stt=args.stt, mt=args.mt) as server:
        session = server.start_session(args.source)
        source = session.get("sourceLang", args.source)
        routes = server.health().get("mtRoutes", {}).get(source, {})
        peers = [PeerSpec("host", 0, session["wsUrl"], source)]
        for lang in [source, *languages]:
            peers.append(PeerSpec("listener", 0, listener_path(session["sessionId"], lang), lang))
        load = Run(server.addresses, peers, line_of_text={}, plan=plan, cpus=load_cpus(args))
        try:
            load.connected()
            before = server.usage()
            contention = Contention()
            load.go()
            load.streamed(len(frames) * plan.chunk_s + 120)
            collected = load.finish(None, args.settle_s)
            after = server.usage()
        finally:
            load.close()
    chunk_s = args.chunk_ms / 1000
    result = _analyse(collected, speech, sentences, source, languages, chunk_s, args.warmup)
    for lang, path in result["paths"].items():
        path["via"] = routes.get(lang, [source, lang])
    if before is not None and after is not None:
        cpu = (after.cpu_s + after.children_cpu_s) - (before.cpu_s + before.children_cpu_s)
        wall = after.at - before.at
        result["server"] = {
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "cpu_percent_of_core": round(100 * cpu / wall, 1),
            "rss_end_bytes": after.rss + after.children_rss,
        }
    result["load"] = collected.load_cpu()
    result["machine_cpu"] = contention.result(
        result.get("server", {}).get("cpu_s"), result["load"]["run_cpu_s"]
    )
    result["errors"] = collected.errors[:20]
    report["runs"].append(result)
    translated = result["latency_ms"]["translated_final"]["p50"]
    report["targets"] = [
        at_most(
            "speech end -> translated final at the listener, p50 (ms)",
            translated,
            TRANSLATED_P50_S * 1000,
            "ms",
        ),
        target(
            "sentences with a translated final",
            f"{args.sentences}",
            result["matched"],
            result["matched"] == args.sentences,
        ),
    ]
    write(report, _summary(report), args.out)
    return report


def _speech(sentences: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The host's microphone: lead silence, each sentence and a gap; where speech
    starts and ends in it (samples)."""
    import numpy as np

    from babel_actors.testing.speech import SpeechToolMissing, read_wav_pcm, synthesize

    rate = args.sample_rate
    pcm = bytearray(b"\0\0" * rate)
    bounds: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="babel-bench-speech-") as scratch:
        for i, sentence in enumerate(sentences):
            path = Path(scratch) / f"{i}.wav"
            try:
                synthesize(
                    sentence,
                    path,
                    voice=args.voice,
                    rate=rate,
                    language="en-us" if args.source == "en" else args.source,
                )
            except SpeechToolMissing as exc:
                raise BenchError(f"cannot make speech: {exc}") from None
            audio, got_rate = read_wav_pcm(path)
            if got_rate != rate:
                raise BenchError(f"synthesized audio at {got_rate} Hz, wanted {rate}")
            loud = np.flatnonzero(np.abs(np.frombuffer(audio, dtype="<i2").astype(np.int32)) > LOUD)
            if not len(loud):
                raise BenchError(f"no speech in the synthesized {sentence!r}")
            offset = len(pcm) // 2
            bounds.append((offset + int(loud[0]), offset + int(loud[-1])))
            pcm += audio
            pcm += b"\0\0" * int(args.gap_s * rate)
    pcm += b"\0\0" * rate
    return {"pcm": bytes(pcm), "bounds": bounds, "rate": rate}


def _analyse(
    collected: Collected,
    speech: dict[str, Any],
    sentences: list[str],
    source: str,
    languages: list[str],
    chunk_s: float,
    warmup: int,
) -> dict[str, Any]:
    from babel_actors.testing.speech import word_error_rate

    host = collected.host_of()[0]
    sent = collected.sent[host]
    chunk_samples = round(speech["rate"] * chunk_s)
    by_lang: dict[str, list[Receipt]] = {}
    for receipt in sorted(collected.receipts, key=lambda r: r.kts):
        if collected.peers[receipt.peer]["role"] == "listener":
            by_lang.setdefault(receipt.lang, []).append(receipt)
    transcript = by_lang.get(source, [])
    rows = []
    to_final: list[float] = []
    to_translated: list[float] = []
    to_partial: list[float] = []
    wers: list[float] = []
    by_path: dict[str, list[float]] = {lang: [] for lang in languages}
    finals = [r for r in transcript if not r.partial]
    taken = 0
    """Finals before this index belong to earlier sentences."""
    previous_at = 0.0
    for i, (start, end) in enumerate(speech["bounds"]):
        start_at = sent[min(start // chunk_samples, len(sent) - 1)]
        end_at = sent[min(end // chunk_samples, len(sent) - 1)]
        # The sentence's final is the first one after its speech ended; finals since the
        # previous sentence's hold its words (an utterance may be cut in two).
        index = next((j for j in range(taken, len(finals)) if finals[j].kts > end_at), None)
        final = finals[index] if index is not None else None
        heard = " ".join(r.original for r in finals[taken : None if index is None else index + 1])
        if index is not None:
            taken = index + 1
        since = max(start_at, previous_at)
        partial = next(
            (r for r in transcript if r.partial and since < r.kts < (final or r).kts), None
        )
        previous_at = final.kts if final is not None else previous_at
        translated = None
        per_path: dict[str, float | None] = {}
        if final is not None:
            for lang in languages:
                found = next(
                    (r for r in by_lang.get(lang, []) if not r.partial and r.seq == final.seq),
                    None,
                )
                per_path[lang] = _ms(found, end_at)
                if found is not None and (translated is None or found.kts > translated.kts):
                    translated = found
        wer = word_error_rate(sentences[i], heard) if heard else 1.0
        row = {
            "sentence": sentences[i],
            "warmup": i < warmup,
            "speech_s": round((end - start) / speech["rate"], 2),
            "final_ms": _ms(final, end_at),
            "translated_ms": _ms(translated, end_at),
            "first_partial_ms": _ms(partial, start_at),
            "transcript": heard,
            "translation": translated.translated if translated else None,
            "wer": round(wer, 3),
            "translated_ms_by_lang": per_path,
        }
        rows.append(row)
        if i < warmup:
            continue
        wers.append(wer)
        for lang, ms in per_path.items():
            if ms is not None:
                by_path[lang].append(ms)
        for values, key in (
            (to_final, "final_ms"),
            (to_translated, "translated_ms"),
            (to_partial, "first_partial_ms"),
        ):
            if row[key] is not None:
                values.append(row[key])
    return {
        "sentences": rows,
        "matched": sum(1 for r in rows if r["translated_ms"] is not None and not r["warmup"]),
        "latency_ms": {
            "final_transcript": percentiles(to_final),
            "translated_final": percentiles(to_translated),
            "first_partial": percentiles(to_partial),
        },
        "wer_mean": round(sum(wers) / len(wers), 3) if wers else None,
        "paths": {
            lang: {"translated_final_ms": percentiles(values)} for lang, values in by_path.items()
        },
    }


def _ms(receipt: Receipt | None, since: float) -> float | None:
    return None if receipt is None else round((receipt.kts - since) * 1000, 1)


def _summary(report: dict[str, Any]) -> str:
    result = report["runs"][0]
    rows = [
        [
            ("(warm-up) " if r["warmup"] else "") + r["sentence"][:38],
            r["speech_s"],
            r["first_partial_ms"],
            r["final_ms"],
            r["translated_ms"],
            r["wer"],
        ]
        for r in result["sentences"]
    ]
    latency = result["latency_ms"]
    server = result.get("server", {})
    lines = [
        header(report),
        "",
        table(["sentence", "speech s", "1st partial ms", "final ms", "translated ms", "WER"], rows),
        "",
        "p50/p95/max (ms): "
        + "; ".join(
            f"{name} {fmt(v['p50'], 0)}/{fmt(v['p95'], 0)}/{fmt(v['max'], 0)}"
            for name, v in latency.items()
        ),
        "speech end -> translated final per path, p50/p95/max (ms): "
        + "; ".join(
            f"{'>'.join(path['via'])} {fmt(path['translated_final_ms']['p50'], 0)}/"
            f"{fmt(path['translated_final_ms']['p95'], 0)}/"
            f"{fmt(path['translated_final_ms']['max'], 0)}"
            for path in result["paths"].values()
        ),
        f"source {report['params']['source']}, heard by "
        f"{report['params']['english_model'] if report['params']['source'] == 'en' else 'base'}"
        f"; mean WER {fmt(result['wer_mean'], 3)}; server CPU "
        f"{fmt(server.get('cpu_percent_of_core'))}% of a core (with Apertium)",
        "",
        "targets:",
        targets_text(report["targets"]),
    ]
    return "\n".join(lines)
