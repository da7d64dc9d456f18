"""Apertium machine translation through persistent, null-flushed pipelines.

One pipeline per language pair: the stages of the pair's ``.mode`` file, started the
way ``apertium-wblank-mode -z`` spells them, each stage a direct child of this process,
linked by OS pipes. A request is the text in Apertium's stream format, then a sentence
end and a superblank holding the request's number (``apertium-destxt`` ends its output
with ``.[]``), then one NUL; every stage flushes at the NUL, and the reply is what comes
out up to the next NUL. It must end with the same numbered superblank, so a reply can
never be taken for another request's, not even the flush a dying stage leaves behind.

Without that trailing blank the last token stays buffered until the next request
arrives; two NULs release it but lose the sentence's final punctuation and produce an
empty second reply. ``apertium -z`` itself cannot be kept open: its ``apertium-destxt``
reads to end of file and drops NULs.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from babel_actors.config import Config
from babel_actors.engines.graph import PairGraph, Route
from babel_actors.errors import (
    EngineUnavailable,
    TranslationFailed,
    UnsupportedLanguage,
)
from babel_actors.glossary import Glossary, phrase_pattern

_MODE_FILE = re.compile(r"([a-z]{2,3})-([a-z]{2,3})\.mode")
"""A plain pair's mode; variants (``eng-cat_valencia``, ``en-eo-bytecode``) never match."""

_ISO_639_1 = {
    "afr": "af", "amh": "am", "ara": "ar", "arg": "an", "aze": "az", "bak": "ba",
    "bel": "be", "ben": "bn", "bos": "bs", "bre": "br", "bul": "bg", "cat": "ca",
    "ces": "cs", "che": "ce", "chv": "cv", "cos": "co", "cym": "cy", "dan": "da",
    "deu": "de", "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu",
    "fao": "fo", "fas": "fa", "fin": "fi", "fra": "fr", "fry": "fy", "gla": "gd",
    "gle": "ga", "glg": "gl", "glv": "gv", "grn": "gn", "guj": "gu", "hat": "ht",
    "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ind": "id",
    "isl": "is", "ita": "it", "jpn": "ja", "kat": "ka", "kaz": "kk", "kir": "ky",
    "kor": "ko", "kur": "ku", "lat": "la", "lav": "lv", "lit": "lt", "ltz": "lb",
    "mal": "ml", "mar": "mr", "mkd": "mk", "mlt": "mt", "mon": "mn", "msa": "ms",
    "nld": "nl", "nno": "nn", "nob": "nb", "nor": "no", "oci": "oc", "pol": "pl",
    "por": "pt", "pus": "ps", "ron": "ro", "rus": "ru", "sme": "se", "slk": "sk",
    "slv": "sl", "spa": "es", "sqi": "sq", "srd": "sc", "srp": "sr", "swa": "sw",
    "swe": "sv", "tat": "tt", "tgk": "tg", "tgl": "tl", "tha": "th", "tuk": "tk",
    "tur": "tr", "ukr": "uk", "urd": "ur", "uzb": "uz", "vie": "vi", "xho": "xh",
    "yid": "yi", "zho": "zh", "zul": "zu",
}  # fmt: skip
"""Apertium's ISO 639-3 codes to ISO 639-1; a code without one stays as it is."""

_ESCAPED = re.compile(r"([\\\[\]^$/<>@{}])")
"""What ``apertium-destxt`` escapes; an unescaped ``@`` kills the pipeline."""
_ESCAPE_SEQUENCE = re.compile(r"\\(.)", re.DOTALL)
_MARK = "\ue000"
"""Stands for a glossary superblank while the rest of the text is deformatted (a
private-use character: ``deformat`` keeps it and escapes nothing in it)."""
_GENERATOR_FLAG = "-n"
"""``$1`` of a mode is the generator's mode: ``-n`` writes no ``*``/``#``/``@`` marks."""
_STDERR_TAIL_BYTES = 2048
"""How much of the stages' stderr is kept to explain a failure."""


def language_tag(code: str) -> str:
    """The primary BCP-47 tag for an Apertium or client code: ``eng``/``en-US`` -> ``en``."""
    primary = code.strip().lower().replace("_", "-").split("-")[0]
    return _ISO_639_1.get(primary, primary)


@attrs.frozen
class ModePair:
    """An installed Apertium translation direction."""

    source: str
    """Source language, as a primary BCP-47 tag."""
    target: str
    """Target language, as a primary BCP-47 tag."""
    mode: Path
    """The pair's ``.mode`` file."""


def find_pairs(modes_dir: Path) -> dict[tuple[str, str], ModePair]:
    """The plain pairs installed in ``modes_dir``, keyed by ``(source, target)`` tags.

    Variant modes are skipped. When two modes name one direction (``en-es`` and
    ``eng-spa``), the three-letter one wins: it is the newer package naming.
    """
    try:
        names = [entry.name for entry in os.scandir(modes_dir) if entry.is_file()]
    except OSError:
        return {}
    found: dict[tuple[str, str], ModePair] = {}
    for name in sorted(names, key=lambda name: (-len(name), name)):
        match = _MODE_FILE.fullmatch(name)
        if match is None:
            continue
        source, target = language_tag(match[1]), language_tag(match[2])
        if source != target and (source, target) not in found:
            found[source, target] = ModePair(source, target, modes_dir / name)
    return found


def deformat(text: str) -> str:
    """``text`` in Apertium's stream format, as ``apertium-destxt`` would write it.

    Whitespace runs become one space and control characters go, so nothing in the
    text can frame, escape or format; ``~`` (post-generation's trigger) is hidden in a
    superblank, as ``apertium-destxt`` does.
    """
    kept = "".join(
        ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs")
    )
    escaped = _ESCAPED.sub(r"\\\1", " ".join(kept.split()))
    return escaped.replace("~", "[~]")


def reformat(stream: str) -> str:
    """Plain text from Apertium's stream format: escapes and superblanks resolved."""
    out: list[str] = []
    i, end = 0, len(stream)
    while i < end:
        ch = stream[i]
        if ch == "\\" and i + 1 < end:
            out.append(stream[i + 1])
            i += 2
        elif ch == "[":
            close = _superblank_end(stream, i + 1)
            if close < 0:
                out.append(ch)
                i += 1
                continue
            out.append(_ESCAPE_SEQUENCE.sub(r"\1", stream[i + 1 : close]))
            i = close + 1
        else:
            out.append(ch)
            i += 1
    return " ".join("".join(out).split())


def _superblank_end(stream: str, start: int) -> int:
    i = start
    while i < len(stream):
        if stream[i] == "\\":
            i += 2
        elif stream[i] == "]":
            return i
        else:
            i += 1
    return -1


def _protect(text: str, glossary: Glossary | None, target: str) -> str:
    """``deformat(text)``, with the glossary's phrases replaced by superblanks that
    hold their forced rendering (or themselves, for kept words)."""
    if not glossary:
        return deformat(text)
    renderings = [*glossary.forced(target, text), *((w, w) for w in glossary.kept(text))]
    # Longest first, so "Holy Spirit Church" wins over "Holy Spirit".
    renderings.sort(key=lambda pair: -len(pair[0]))
    blanks: list[str] = []
    for phrase, rendering in renderings:

        def mark(_match: re.Match[str], rendering: str = rendering) -> str:
            blanks.append("[" + _ESCAPED.sub(r"\\\1", rendering) + "]")
            return f"{_MARK}{len(blanks) - 1}{_MARK}"

        text = phrase_pattern(phrase).sub(mark, text)
    request = deformat(text)
    return re.sub(f"{_MARK}(\\d+){_MARK}", lambda m: blanks[int(m[1])], request)


def _capitalised(text: str) -> str:
    if not text.islower():
        return text
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1 :]
    return text


class ApertiumTranslator:
    """The ``Translator`` for locally installed Apertium pairs (``--mt apertium``).

    Languages without a pair of their own are reached through others (a ``PairGraph``
    of the installed pairs): English -> Portuguese is English -> Spanish -> Portuguese,
    at most ``apertium_max_hops`` pairs long, a direct pair always preferred.
    ``route`` says which way a translation goes (the captions' ``via``).

    Backpressure: one request is in flight per pair; later ones queue, in order, on the
    pair's ``trio.Lock``. Different pairs run in parallel, each in its own processes.
    A routed request holds one pair at a time. ``translate_timeout_s`` bounds each
    call, queueing and every hop included.

    Cancellation: a call cancelled while queued leaves no trace. A call cancelled or
    timed out while its request is in the pipeline kills that pipeline (its state is
    unknown); the next request for the pair starts a fresh one.

    Error handling: an unreachable pair raises ``UnsupportedLanguage`` listing what is
    reachable; a timeout, a
    pipeline that dies or cannot start raises ``TranslationFailed`` and the pipeline is
    restarted lazily. No other exception type leaves this class.
    """

    name = "apertium"

    def __init__(self, config: Config) -> None:
        """Find the installed pairs; no process starts until a pair is first used.

        Raises ``EngineUnavailable`` when Apertium or any plain pair is missing.
        """
        self._timeout = config.translate_timeout_s
        wblank_mode = shutil.which("apertium-wblank-mode")
        pairs = find_pairs(Path(config.apertium_modes_dir))
        if wblank_mode is None or not pairs:
            raise EngineUnavailable(
                f"apertium: no usable pair in {config.apertium_modes_dir!r}"
                " (packages apertium and apertium-<pair> install them)"
            )
        self._routes = {key: _Route(pair, wblank_mode) for key, pair in pairs.items()}
        self._graph = PairGraph(pairs, max_hops=max(1, config.apertium_max_hops))

    def sources(self) -> frozenset[str]:
        """Languages some installed pair translates from."""
        return self._graph.sources()

    def targets(self, source: str) -> frozenset[str]:
        """Languages ``source`` reaches, directly or through ``apertium_max_hops`` pairs."""
        return self._graph.targets(language_tag(source))

    def route(self, source: str, target: str) -> Route | None:
        """The languages a ``source`` -> ``target`` translation passes through, both
        ends included (``("en", "es", "pt")``); None when ``target`` is unreachable."""
        return self._graph.route(language_tag(source), language_tag(target))

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        """Translate one segment. ``context`` is ignored (Apertium works per sentence),
        and so is ``partial``.

        Text that is all lower case gets a capital first letter (Apertium's tagger
        reads case); unknown words come back as they are, unmarked. A glossary's
        forced translations and kept words travel through the pipeline in
        superblanks, which every stage passes on untouched (the words around them are
        translated without them, so agreement with them is not guaranteed).
        """
        route = self.route(source, target)
        if route is None:
            if language_tag(source) not in self.sources():
                raise UnsupportedLanguage(self.name, source, self.sources())
            raise UnsupportedLanguage(self.name, target, self.targets(source))
        hops = [self._routes[pair] for pair in itertools.pairwise(route)]
        stream = _protect(_capitalised(text), glossary, route[-1])
        if not stream:
            return ""
        with trio.move_on_after(self._timeout):
            # Each hop reads the previous one's stream output as it is: superblanks
            # (a glossary's forced renderings) pass through every pair untouched.
            for hop in hops:
                stream = await hop.translate(stream)
            return reformat(stream)
        raise TranslationFailed(f"apertium {'->'.join(route)}: no answer within {self._timeout} s")

    async def aclose(self) -> None:
        """Kill every pipeline; later calls raise ``TranslationFailed``."""
        for route in self._routes.values():
            await route.aclose()


class _Route:
    """One pair: its lock, its stage commands, and its pipeline while one runs."""

    def __init__(self, pair: ModePair, wblank_mode: str) -> None:
        self.pair = pair
        self._wblank_mode = wblank_mode
        self._lock = trio.Lock()
        self._stages: list[list[str]] | None = None
        self._pipeline: _Pipeline | None = None
        self._closed = False

    async def translate(self, request: str) -> str:
        async with self._lock:
            pipeline = await self._running()
            reply = None
            try:
                reply = await pipeline.exchange(request)
            finally:
                if reply is None:
                    # Broken, timed out or cancelled midway: its state is unknown.
                    self._pipeline = None
                    await pipeline.kill()
            if reply is None:
                raise TranslationFailed(
                    f"apertium {self.pair.source}->{self.pair.target}:"
                    f" {pipeline.problem}{pipeline.stderr_note()}"
                )
            return reply

    async def _running(self) -> _Pipeline:
        if self._closed:
            raise TranslationFailed("apertium translator is closed")
        if self._pipeline is None:
            try:
                if self._stages is None:
                    self._stages = await self._load_stages()
                pipeline = await _Pipeline.start(self._stages)
            except (OSError, subprocess.CalledProcessError, ValueError) as exc:
                raise TranslationFailed(
                    f"apertium {self.pair.mode.name} did not start: {exc}"
                ) from exc
            if self._closed:
                await pipeline.kill()
                raise TranslationFailed("apertium translator is closed")
            self._pipeline = pipeline
        return self._pipeline

    async def _load_stages(self) -> list[list[str]]:
        done = await trio.run_process(
            [self._wblank_mode, "-z", os.fspath(self.pair.mode)],
            capture_stdout=True,
            capture_stderr=True,
        )
        return _parse_stages(done.stdout.decode())

    async def aclose(self) -> None:
        self._closed = True
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            await pipeline.kill()


def _parse_stages(script: str) -> list[list[str]]:
    """The argv of each stage of a mode's pipeline (``a | b | c``), ``$1``/``$2`` set."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    stages: list[list[str]] = [[]]
    for token in lexer:
        if token == "|":
            stages.append([])
        elif token == "$1":
            stages[-1].append(_GENERATOR_FLAG)
        elif token == "$2":
            continue
        elif "$" in token or token[:1] in tuple(lexer.punctuation_chars):
            raise ValueError(f"unsupported shell syntax {token!r} in mode")
        else:
            stages[-1].append(token)
    if not all(stages):
        raise ValueError(f"malformed mode pipeline {script!r}")
    return stages


class _Pipeline:
    """A running chain of stage processes, all direct children of this process."""

    def __init__(self, processes: list[trio.Process], stderr_fd: int) -> None:
        self._processes = processes
        stdin, stdout = processes[0].stdin, processes[-1].stdout
        assert stdin is not None and stdout is not None
        self._stdin = stdin
        self._stdout = stdout
        self._stderr_fd = stderr_fd
        self._stderr_tail = b""
        self._received = bytearray()
        self._requests = 0
        self._killed = False
        self.problem = ""
        """Why the last exchange got no reply."""

    @classmethod
    async def start(cls, stages: list[list[str]]) -> _Pipeline:
        env = dict(os.environ, LC_ALL="C.UTF-8")
        links: list[tuple[int, int]] = []
        processes: list[trio.Process] = []
        stderr_r, stderr_w = os.pipe()
        try:
            os.set_blocking(stderr_r, False)
            links.extend(os.pipe() for _ in stages[1:])
            for i, argv in enumerate(stages):
                processes.append(
                    await trio.lowlevel.open_process(
                        argv,
                        stdin=links[i - 1][0] if i else subprocess.PIPE,
                        stdout=links[i][1] if i < len(links) else subprocess.PIPE,
                        stderr=stderr_w,
                        env=env,
                    )
                )
        except BaseException:
            await _kill(processes)
            os.close(stderr_r)
            raise
        finally:
            for read_end, write_end in links:
                os.close(read_end)
                os.close(write_end)
            os.close(stderr_w)
        return cls(processes, stderr_r)

    async def exchange(self, stream: str) -> str | None:
        """Translate one deformatted text; None (see ``problem``) if the pipe broke.

        The caller holds the pair's lock, so exactly one reply is owed.
        """
        self._requests += 1
        marker = f"[{self._requests}]"
        # Written and read at once: a long text must not fill the pipes both ways.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send, f"{stream}.{marker}\0".encode())
            raw = await self._reply()
            nursery.cancel_scope.cancel()
        self._drain_stderr()
        if raw is None:
            return None
        reply = raw.decode("utf-8", "replace")
        if not reply.endswith(marker):
            self.problem = f"reply out of step with request {self._requests}"
            return None
        return reply.removesuffix(marker).removesuffix(".")

    async def _send(self, data: bytes) -> None:
        try:
            await self._stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader meets the end of output and reports it

    async def _reply(self) -> bytes | None:
        while (end := self._received.find(b"\0")) < 0:
            try:
                chunk = await self._stdout.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self.problem = "the pipeline ended"
                return None
            self._received += chunk
        reply = bytes(self._received[:end])
        del self._received[: end + 1]
        if self._received:
            self.problem = "the pipeline answered more than it was asked"
            return None
        return reply

    def _drain_stderr(self) -> None:
        # Stages rarely write to stderr, but a full pipe would stall them.
        while True:
            try:
                chunk = os.read(self._stderr_fd, _STDERR_TAIL_BYTES)
            except OSError:  # BlockingIOError: nothing more for now
                return
            if not chunk:
                return
            self._stderr_tail = (self._stderr_tail + chunk)[-_STDERR_TAIL_BYTES:]

    def stderr_note(self) -> str:
        """The stages' last words, for an error message."""
        text = self._stderr_tail.decode("utf-8", "replace").strip()
        return f" ({text})" if text else ""

    async def kill(self) -> None:
        """Kill and reap every stage; safe to call twice, immune to cancellation."""
        if self._killed:
            return
        self._killed = True
        await _kill(self._processes)
        self._drain_stderr()
        os.close(self._stderr_fd)


async def _kill(processes: Sequence[trio.Process]) -> None:
    with trio.CancelScope(shield=True):
        for process in processes:
            process.kill()
        for process in processes:
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()
