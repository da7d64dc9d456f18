"""The splitter's invariants: numbering, every final once and in order, no repeats."""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise

import trio
from hypothesis import example, given
from hypothesis import strategies as st

from babel_actors.actors.splitter import Splitter, run_splitter
from babel_actors.engines.scripted import sentence_script
from babel_actors.events import Segment, SttResult

# Few distinct words and lots of whitespace, so repeats and blank results are common.
_WORDS = st.sampled_from(["hello", "world", "hola", "ça va", "über"])
_GAPS = st.sampled_from(["", " ", "  ", "\t", "\n", " \r\n "])
_TEXT = st.one_of(
    st.lists(st.tuples(_GAPS, _WORDS), max_size=4).map(
        lambda parts: "".join(gap + word for gap, word in parts)
    ),
    _GAPS,
    st.text(max_size=12),
)
_RESULTS = st.lists(st.builds(SttResult, text=_TEXT, is_final=st.booleans()), max_size=40)


def normalised(text: str) -> str:
    return " ".join(text.split())


def split_all(results: list[SttResult], *, first_seq: int = 1) -> list[Segment]:
    splitter = Splitter("en", first_seq=first_seq)
    segments = []
    for index, result in enumerate(results):
        segment = splitter.feed(result, now=float(index), wall_ms=index)
        if segment is not None:
            segments.append(segment)
    return segments


@given(_RESULTS, st.integers(min_value=0, max_value=10**9))
def test_seq_ids_strictly_increase_from_first_seq(results: list[SttResult], first: int) -> None:
    seqs = [s.seq_id for s in split_all(results, first_seq=first)]
    assert seqs == list(range(first, first + len(seqs)))


@given(_RESULTS)
@example([SttResult(" a  b ", True), SttResult("", True), SttResult("\t", True)])
def test_every_nonempty_final_once_in_order_normalised(results: list[SttResult]) -> None:
    finals = [s.text for s in split_all(results) if not s.is_partial]
    expected = [normalised(r.text) for r in results if r.is_final and normalised(r.text)]
    assert finals == expected


@given(_RESULTS)
@example([SttResult("hi", False), SttResult(" hi ", False), SttResult("hi\n", False)])
def test_no_partial_repeats_the_previous_one_of_its_utterance(results: list[SttResult]) -> None:
    splitter = Splitter("en")
    last_partial: str | None = None
    for result in results:
        segment = splitter.feed(result, now=0.0, wall_ms=0)
        if result.is_final:
            last_partial = None
        elif segment is not None:
            assert segment.text and segment.text == normalised(segment.text)
            assert segment.text != last_partial
            last_partial = segment.text


_SPOKEN_FINALS = st.lists(
    st.one_of(
        st.builds(SttResult, text=_TEXT, is_final=st.just(False)),
        st.builds(SttResult, text=_WORDS, is_final=st.just(True)),
    ),
    max_size=40,
)


@given(_SPOKEN_FINALS)
def test_no_partial_on_the_wire_repeats_the_one_before(results: list[SttResult]) -> None:
    """What a client sees: a partial never repeats the partial it replaces."""
    segments = split_all(results)
    for before, after in pairwise(segments):
        if before.is_partial and after.is_partial:
            assert before.text != after.text


def test_a_blank_final_does_not_make_the_client_see_a_repeated_partial() -> None:
    segments = split_all([SttResult("so", False), SttResult(" ", True), SttResult("so", False)])
    assert [(s.text, s.is_partial) for s in segments] == [("so", True)]


@given(_RESULTS)
def test_a_partial_that_changes_the_utterance_is_never_lost(results: list[SttResult]) -> None:
    """Every non-blank partial differing from the utterance's last one is emitted."""
    expected: list[str] = []
    last: str | None = None
    for result in results:
        text = normalised(result.text)
        if result.is_final:
            if text:  # a blank final settles nothing: the last partial stays shown
                last = None
        elif text and text != last:
            expected.append(text)
            last = text
    assert [s.text for s in split_all(results) if s.is_partial] == expected


def test_a_scripted_talk_becomes_numbered_partials_and_finals() -> None:
    script = sentence_script(["one two three", "four five six"], partials=2)
    segments = split_all([SttResult(line.text, line.is_final) for line in script])
    assert [(s.seq_id, s.text, s.is_partial) for s in segments] == [
        (1, "one", True),
        (2, "one two", True),
        (3, "one two three", False),
        (4, "four", True),
        (5, "four five", True),
        (6, "four five six", False),
    ]
    assert all(s.source_lang == "en" for s in segments)


def test_whitespace_collapses_and_blank_results_add_nothing() -> None:
    splitter = Splitter("en")
    assert splitter.feed(SttResult("  \n\t ", False), now=0.0, wall_ms=0) is None
    assert splitter.feed(SttResult("", True), now=0.0, wall_ms=0) is None
    segment = splitter.feed(SttResult("  good\n morning\t ", True), now=0.0, wall_ms=0)
    assert segment is not None and segment.text == "good morning" and segment.seq_id == 1


def test_a_final_resets_the_repeat_check() -> None:
    """The same partial in the next utterance is news, even though its text is not."""
    partial_so, final_so = SttResult("so", False), SttResult("so", True)
    segments = split_all([partial_so, partial_so, final_so, partial_so])
    assert [(s.text, s.is_partial) for s in segments] == [
        ("so", True),
        ("so", False),
        ("so", True),
    ]


def test_engine_time_wins_over_now_and_wall_clock_is_kept() -> None:
    splitter = Splitter("fr")
    timed = splitter.feed(SttResult("oui", True, produced_at=7.5), now=9.0, wall_ms=1234)
    untimed = splitter.feed(SttResult("non", True), now=9.0, wall_ms=1235)
    assert timed is not None and timed.recognized_at == 7.5 and timed.wall_ms == 1234
    assert untimed is not None and untimed.recognized_at == 9.0


async def test_the_actor_forwards_segments_and_closes_its_outbox() -> None:
    results_send, results_receive = trio.open_memory_channel[SttResult](4)
    segments_send, segments_receive = trio.open_memory_channel[Segment](4)
    script = [SttResult("a", False), SttResult("a", False), SttResult("a b", True)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_splitter, results_receive, segments_send, splitter=Splitter("en"))
            )
            async with results_send:
                for result in script:
                    await results_send.send(result)
            got = [segment async for segment in segments_receive]
    assert [(s.seq_id, s.text, s.is_partial) for s in got] == [(1, "a", True), (2, "a b", False)]
    assert all(math.isfinite(s.recognized_at) for s in got)
