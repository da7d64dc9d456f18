"""Test speech: synthesise sentences to WAV, read them back, and score transcripts.

Uses the system's text-to-speech tools (Debian ``festival festvox-us-slt-hts``,
``espeak-ng``, ``sox``); nothing is downloaded. Blocking helpers, meant for test setup
and benchmarks rather than for a running server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Literal

Voice = Literal["festival", "espeak"]

FESTIVAL_VOICE = "cmu_us_slt_arctic_hts"
"""Festival's HTS voice from Debian's ``festvox-us-slt-hts``."""
FESTIVAL_VOICES = {"en-us": FESTIVAL_VOICE, "it": "lp_diphone"}
"""Festival's voice per language: Italian is Debian's ``festvox-italp16k`` (a diphone
voice that reads Latin-1)."""

_INSTALL_HINT = {
    "text2wave": "festival festvox-us-slt-hts",
    "espeak-ng": "espeak-ng",
    "sox": "sox",
}


class SpeechToolMissing(RuntimeError):
    """A text-to-speech or audio tool is not installed, or cannot produce speech."""


def synthesize(
    text: str,
    path: Path,
    *,
    voice: Voice = "festival",
    rate: int = 16000,
    language: str = "en-us",
) -> Path:
    """Speak ``text`` into ``path``: a 16-bit mono WAV at ``rate`` Hz; returns ``path``.

    ``voice="festival"`` uses Festival's HTS voice (``text2wave``), ``"espeak"`` uses
    espeak-ng in ``language`` (an espeak-ng voice: ``en-us``, ``es``, ``fr``...; Festival
    speaks ``FESTIVAL_VOICES``' languages); either way sox converts the result to ``rate``. Raises
    ``SpeechToolMissing`` when a tool or the Festival voice is not installed.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="babel-tts-") as scratch:
        raw = Path(scratch) / "raw.wav"
        if voice == "festival":
            if language not in FESTIVAL_VOICES:
                raise ValueError(f"no Festival voice for {language!r}; use espeak")
            _run(
                ["text2wave", "-eval", f"(voice_{FESTIVAL_VOICES[language]})", "-o", str(raw)],
                stdin=text,
                encoding="utf-8" if language == "en-us" else "latin-1",
            )
        elif voice == "espeak":
            _run(["espeak-ng", "-v", language, "--stdin", "-w", str(raw)], stdin=text)
        else:
            raise ValueError(f"unknown voice {voice!r}; use 'festival' or 'espeak'")
        if not raw.exists() or raw.stat().st_size <= 44:
            tool = "text2wave" if voice == "festival" else "espeak-ng"
            raise SpeechToolMissing(
                f"{voice} produced no audio; is the voice installed? "
                f"(Debian: {_INSTALL_HINT[tool]})"
            )
        _run(
            [
                "sox",
                str(raw),
                "-r",
                str(rate),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                str(path),
            ]
        )
    return path


def read_wav_pcm(path: Path) -> tuple[bytes, int]:
    """Return the samples of a 16-bit mono WAV as little-endian bytes, and its rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(
                f"{path}: want 16-bit mono, got {wav.getnchannels()} channel(s) of "
                f"{8 * wav.getsampwidth()} bits"
            )
        return wav.readframes(wav.getnframes()), wav.getframerate()


def word_error_rate(ref: str, hyp: str) -> float:
    """Word-level Levenshtein distance from ``ref`` to ``hyp``, over ``ref``'s length.

    Case and punctuation are ignored (apostrophes inside words are kept, hyphens split
    words). An empty reference scores 0.0 against an empty hypothesis, else 1.0.
    """
    ref_words, hyp_words = _words(ref), _words(hyp)
    if not ref_words:
        return 0.0 if not hyp_words else 1.0
    previous = list(range(len(hyp_words) + 1))
    for i, ref_word in enumerate(ref_words, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp_words, start=1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ref_word != hyp_word),
                )
            )
        previous = current
    return previous[-1] / len(ref_words)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower().replace("\u2019", "'"))


def _run(argv: list[str], stdin: str | None = None, encoding: str = "utf-8") -> None:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise SpeechToolMissing(
            f"{tool} is not installed (Debian: apt-get install {_INSTALL_HINT[tool]})"
        )
    done = subprocess.run(
        argv, input=stdin, capture_output=True, encoding=encoding, errors="replace", check=False
    )
    if done.returncode != 0 or "SIOD ERROR" in done.stdout + done.stderr:
        raise SpeechToolMissing(
            f"{' '.join(argv)} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[:500]}"
        )
