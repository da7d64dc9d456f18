"""The embedded Whisper engine, on speech synthesised at test time by Festival.

The model runs for real (tiny.en on the CPU), so these tests take some seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from babel_actors.config import Config
from babel_actors.engines.base import SpeechToText
from babel_actors.engines.whisper import WhisperSpeechToText, _Utterances
from babel_actors.errors import EngineError, EngineUnavailable, UnsupportedLanguage
from babel_actors.events import AudioEvent, AudioFrame, EndOfSpeech, SttResult
from babel_actors.testing.speech import read_wav_pcm, synthesize, word_error_rate

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to bring your passport when you travel abroad next week.",
    "Music helps many people relax after a long day at work.",
)
WER_TOLERANCE = 0.25
"""tiny.en scored 0.00 on each of these with Festival's voice when measured."""
RATE = 16000
FRAME_BYTES = 2 * RATE // 10
"""100 ms frames: what ingest hands on from a browser, give or take."""
PACE = 2.0
"""Audio is fed at twice real time: a decode takes ~0.4 s on two cores, so the engine
still has idle moments for partials (unpaced, it rightly skips them)."""
TIMEOUT_S = 60.0

Item = bytes | EndOfSpeech


def silence(seconds: float) -> bytes:
    return b"\0\0" * round(seconds * RATE)


def trim_trailing_silence(pcm: bytes) -> bytes:
    """Cut the synthesiser's trailing quiet, so only a flush can end the utterance."""
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 500)
    return pcm[: 2 * (int(loud[-1]) + 1)]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder: Path = tmp_path_factory.mktemp("speech")
    pcms = []
    for i, sentence in enumerate(SENTENCES):
        pcm, rate = read_wav_pcm(synthesize(sentence, folder / f"{i}.wav", rate=RATE))
        assert rate == RATE
        pcms.append(pcm)
    return pcms


@pytest.fixture
def engine() -> WhisperSpeechToText:
    return WhisperSpeechToText(Config())


async def feed(
    audio: trio.MemorySendChannel[AudioEvent],
    items: Sequence[Item],
    *,
    pace: float | None = None,
    close: bool = True,
) -> None:
    """Send ``items`` as 100 ms frames; with ``pace``, at that multiple of real time."""
    start = trio.current_time()
    fed_s = 0.0
    for item in items:
        if isinstance(item, EndOfSpeech):
            await audio.send(item)
            continue
        for offset in range(0, len(item), FRAME_BYTES):
            chunk = item[offset : offset + FRAME_BYTES]
            await audio.send(AudioFrame(chunk, RATE, trio.current_time()))
            fed_s += len(chunk) / (2 * RATE)
            if pace is not None:
                await trio.sleep_until(start + fed_s / pace)
    if close:
        await audio.aclose()


async def transcribe_all(
    engine: WhisperSpeechToText, items: Sequence[Item], *, pace: float | None = None
) -> list[SttResult]:
    """Feed ``items``, close the audio, and collect results until transcribe returns."""
    audio_in, audio_out = trio.open_memory_channel[AudioEvent](64)
    results_in, results_out = trio.open_memory_channel[SttResult](64)

    async def transcribe() -> None:
        async with results_in:
            await engine.transcribe(audio_out, results_in, language="en")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(transcribe)
        nursery.start_soon(partial(feed, audio_in, items, pace=pace))
        return [result async for result in results_out]


def utterances(results: list[SttResult]) -> list[tuple[list[SttResult], SttResult]]:
    """Group results as (partials, final); fail on partials after the last final."""
    grouped: list[tuple[list[SttResult], SttResult]] = []
    partials: list[SttResult] = []
    for result in results:
        if result.is_final:
            grouped.append((partials, result))
            partials = []
        else:
            partials.append(result)
    assert partials == [], "partials after the last final"
    return grouped


def test_engine_describes_itself(engine: WhisperSpeechToText) -> None:
    assert isinstance(engine, SpeechToText)
    assert engine.name == "whisper"
    assert engine.sample_rate == RATE
    # tiny.en for English, the bundled multilingual base for the rest.
    assert {"en", "es", "fr", "pt", "eu", "ro", "de"} <= engine.languages()
    assert "auto" not in engine.languages()
    assert engine.model_for("en") == "english"
    assert engine.model_for("es") == engine.model_for("auto") == "multilingual"


async def test_sentences_give_partials_then_one_final_each(
    engine: WhisperSpeechToText, speech: list[bytes]
) -> None:
    with trio.fail_after(TIMEOUT_S):
        await engine.load()
        stream = [silence(0.5)]
        for pcm in speech:
            stream += [pcm, silence(1.0)]
        results = await transcribe_all(engine, stream, pace=PACE)

    grouped = utterances(results)
    assert len(grouped) == len(SENTENCES), [r.text for r in results]
    ends = [final.audio_end_s for _, final in grouped]
    assert ends == sorted(ends)
    for (partials, final), sentence in zip(grouped, SENTENCES, strict=True):
        assert partials, f"no partial before {final.text!r}"
        assert all(p.text and p.audio_end_s <= final.audio_end_s for p in partials)
        assert final.text == final.text.strip()
        assert word_error_rate(sentence, final.text) <= WER_TOLERANCE, final.text


async def test_end_of_speech_flushes_the_pending_utterance(
    engine: WhisperSpeechToText, speech: list[bytes]
) -> None:
    audio_in, audio_out = trio.open_memory_channel[AudioEvent](64)
    results_in, results_out = trio.open_memory_channel[SttResult](64)

    async def transcribe() -> None:
        async with results_in:
            await engine.transcribe(audio_out, results_in, language="en")

    async def next_final() -> SttResult:
        async for result in results_out:
            if result.is_final:
                return result
        raise AssertionError("results closed before a final")

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transcribe)
            first: list[Item] = [
                silence(0.5),
                trim_trailing_silence(speech[0]),
                EndOfSpeech(0.0),
            ]
            await feed(audio_in, first, close=False)
            flushed = await next_final()
            await feed(audio_in, [speech[1], silence(1.0)], close=False)
            after = await next_final()
            await audio_in.aclose()
            assert [r async for r in results_out] == []

    assert word_error_rate(SENTENCES[0], flushed.text) <= WER_TOLERANCE, flushed.text
    assert word_error_rate(SENTENCES[1], after.text) <= WER_TOLERANCE, after.text
    assert flushed.audio_end_s < after.audio_end_s


async def test_closing_the_audio_finalises_pending_speech_and_returns(
    engine: WhisperSpeechToText, speech: list[bytes]
) -> None:
    with trio.fail_after(TIMEOUT_S):
        results = await transcribe_all(engine, [trim_trailing_silence(speech[2])])
    finals = [result for result in results if result.is_final]
    assert len(finals) == 1
    assert results[-1] is finals[0]
    assert word_error_rate(SENTENCES[2], finals[0].text) <= WER_TOLERANCE


async def test_silence_gives_no_results(engine: WhisperSpeechToText) -> None:
    with trio.fail_after(TIMEOUT_S):
        results = await transcribe_all(engine, [silence(3.0), EndOfSpeech(0.0)])
    assert results == []


async def test_cancellation_abandons_a_running_decode(
    engine: WhisperSpeechToText, speech: list[bytes]
) -> None:
    audio_in, audio_out = trio.open_memory_channel[AudioEvent](64)
    results_in, results_out = trio.open_memory_channel[SttResult](64)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.transcribe(audio_out, results_in, language="en"))
            await feed(audio_in, [speech[0]], close=False)
            await results_out.receive()
            nursery.cancel_scope.cancel()


async def test_unknown_language_is_refused(engine: WhisperSpeechToText) -> None:
    _audio_in, audio_out = trio.open_memory_channel[AudioEvent](1)
    results_in, _results_out = trio.open_memory_channel[SttResult](1)
    with trio.fail_after(TIMEOUT_S), pytest.raises(UnsupportedLanguage):
        await engine.transcribe(audio_out, results_in, language="tlh")


async def test_audio_at_another_rate_is_an_engine_error(
    engine: WhisperSpeechToText,
) -> None:
    audio_in, audio_out = trio.open_memory_channel[AudioEvent](1)
    results_in, _results_out = trio.open_memory_channel[SttResult](1)
    await audio_in.send(AudioFrame(silence(0.1), 8000, 0.0))
    with trio.fail_after(TIMEOUT_S), pytest.raises(EngineError, match="16000 Hz"):
        await engine.transcribe(audio_out, results_in, language="en")


def test_a_missing_model_directory_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="no CTranslate2 Whisper model"):
        WhisperSpeechToText(Config(whisper_model_dir=str(tmp_path)))


async def test_a_corrupt_model_is_engine_unavailable(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a model")
    engine = WhisperSpeechToText(Config(whisper_model_dir=str(tmp_path)))
    assert "en" in engine.languages()
    with trio.fail_after(TIMEOUT_S), pytest.raises(EngineUnavailable):
        await engine.load()


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 20000).map(lambda n: 2 * n), min_size=1))
def test_utterance_cuts_do_not_depend_on_frame_sizes(speech: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(pcm + silence(1.0) for pcm in speech)

    def finals(chunk_sizes: list[int]) -> list[tuple[float, bytes]]:
        cutter = _Utterances(partial_every_s=1.0)
        cuts, offset, turn = [], 0, 0
        while offset < len(stream):
            size = chunk_sizes[turn % len(chunk_sizes)]
            cuts += cutter.feed(stream[offset : offset + size], partial_wanted=False)
            offset, turn = offset + size, turn + 1
        cuts += cutter.flush()
        return [(cut.end_s, cut.pcm) for cut in cuts]

    reference = finals([FRAME_BYTES])
    assert len(reference) == len(SENTENCES)
    assert finals(sizes) == reference


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("The quick brown fox.", "the quick brown fox", 0.0),
        ("Don't stop, well-known dog!", "don't stop well known dog", 0.0),
        ("one two three four", "one too three four", 0.25),
        ("one two three four", "one three four", 0.25),
        ("one two three four", "one two three four five six", 0.5),
        ("one two", "", 1.0),
        ("", "", 0.0),
        ("", "noise", 1.0),
    ],
)
def test_word_error_rate(ref: str, hyp: str, expected: float) -> None:
    assert word_error_rate(ref, hyp) == pytest.approx(expected)
