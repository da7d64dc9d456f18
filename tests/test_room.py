"""The Room: one fan-out per caption, the Seat guard (no final twice or out of order),
late joiners' catch-up rendered once, language changes, closing."""

from __future__ import annotations

import json

import trio
import trio.testing
from members import GatedTranslator, RecordingMember, segment

from babel_actors.audience import Role
from babel_actors.config import Config
from babel_actors.events import Caption
from babel_actors.history import History
from babel_actors.metrics import Metrics
from babel_actors.renderer import Renderer
from babel_actors.room import Room
from babel_actors.wire.server import Rendered, render

TIMEOUT_S = 30


def make_room(
    engine: GatedTranslator | None = None, *, catchup_finals: int = 3
) -> tuple[Room, GatedTranslator]:
    engine = engine or GatedTranslator()
    renderer = Renderer(engine, History(100), timeout_s=10.0, context_segments=2)
    config = Config(catchup_finals=catchup_finals, history_size=100)
    return Room(config, renderer, metrics=Metrics()), engine


def caption(seq_id: int, language: str, *, partial: bool = False) -> Rendered:
    text = f"s{seq_id}" if language == "en" else f"[{language}] s{seq_id}"
    return render(Caption(segment(seq_id, partial=partial), language, text, True))


def seated(room: Room, *members: RecordingMember) -> None:
    for member in members:
        room.seat(member)


def spoken(room: Room, count: int) -> None:
    """Finals 1..``count`` on their way to the translator (in history, no rendering)."""
    for n in range(1, count + 1):
        room.renderer.admit(segment(n))


def finals_delivered(room: Room, language: str) -> float | None:
    return room.metrics.registry.get_sample_value(
        "babel_finals_delivered_total", {"language": language}
    )


async def test_deliver_writes_the_frame_to_every_member_of_the_language() -> None:
    room, _ = make_room()
    fr_one, fr_two, de = RecordingMember("fr"), RecordingMember("fr"), RecordingMember("de")
    seated(room, fr_one, fr_two, de)
    item = caption(1, "fr")
    with trio.fail_after(TIMEOUT_S):
        reached = room.deliver(item)
    assert reached == 2
    assert fr_one.frames == [item.frame] and fr_two.frames == [item.frame]
    assert fr_one.frames[0] is fr_two.frames[0]  # one frame, shared
    assert de.captions == []
    assert room.deliver(caption(2, "it")) == 0


async def test_a_member_never_gets_a_final_twice_or_out_of_order() -> None:
    room, _ = make_room()
    member = RecordingMember("fr")
    seated(room, member)
    with trio.fail_after(TIMEOUT_S):
        for seq_id in (2, 2, 1, 3, 3, 2, 5, 4):
            room.deliver(caption(seq_id, "fr"))
    assert member.finals == [2, 3, 5]


async def test_a_member_never_gets_a_partial_older_than_its_last_final() -> None:
    room, _ = make_room()
    member = RecordingMember("fr")
    seated(room, member)
    with trio.fail_after(TIMEOUT_S):
        room.deliver(caption(3, "fr"))
        room.deliver(caption(2, "fr", partial=True))  # overtaken by final 3
        room.deliver(caption(3, "fr", partial=True))  # not newer than final 3 either
        room.deliver(caption(4, "fr", partial=True))
        room.deliver(caption(5, "fr", partial=True))
        room.deliver(caption(6, "fr"))
        room.deliver(caption(5, "fr", partial=True))
    got = [(c.segment.seq_id, c.segment.is_partial) for c in member.captions]
    assert got == [(3, False), (4, True), (5, True), (6, False)]


async def test_a_partial_overtaken_by_a_final_in_history_is_not_delivered_at_all() -> None:
    room, _ = make_room()
    member = RecordingMember("fr")
    seated(room, member)
    spoken(room, 4)  # final 4 is being translated: partial 3 is stale
    with trio.fail_after(TIMEOUT_S):
        assert room.deliver(caption(3, "fr", partial=True)) == 0
        assert room.deliver(caption(5, "fr", partial=True)) == 1
    assert [c.segment.seq_id for c in member.captions] == [5]


async def test_deliver_counts_only_the_members_it_wrote_to() -> None:
    """``deliver`` "returns how many it was written to", and the broadcaster counts
    that in ``babel_finals_delivered``. Fails today: it returns the size of the
    language's group even when every seat's guard dropped the caption (a final a joiner
    already got by catch-up, delivered live afterwards), so the metric counts it twice.
    """
    room, _ = make_room()
    one, two = RecordingMember("fr"), RecordingMember("fr")
    seated(room, one, two)
    with trio.fail_after(TIMEOUT_S):
        assert room.deliver(caption(2, "fr")) == 2
        repeat = room.deliver(caption(2, "fr"))
        older = room.deliver(caption(1, "fr"))
    assert one.finals == two.finals == [2]
    assert (repeat, older) == (0, 0)


async def test_a_late_joiner_gets_the_last_finals_rendering_only_the_missing_once() -> None:
    room, engine = make_room(catchup_finals=3)
    spoken(room, 5)
    member = RecordingMember("fr")
    with trio.fail_after(TIMEOUT_S):
        await room.renderer.final(segment(4), "fr", live=True)  # already translated
        await room.add_member(member)
    assert member.finals == [3, 4, 5]
    assert member.final_texts == ["[fr] s3", "[fr] s4", "[fr] s5"]
    assert engine.texts("fr") == ["s4", "s3", "s5"]
    assert finals_delivered(room, "fr") == 3
    # A second joiner finds everything rendered.
    with trio.fail_after(TIMEOUT_S):
        await room.add_member(RecordingMember("fr"))
    assert len(engine.calls) == 3


async def test_joiners_arriving_together_share_one_rendering_per_missing_final() -> None:
    room, engine = make_room(GatedTranslator(hold=lambda call: True), catchup_finals=3)
    spoken(room, 6)
    joiners = [RecordingMember("de") for _ in range(10)]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for joiner in joiners:
                nursery.start_soon(room.add_member, joiner)
            await trio.testing.wait_all_tasks_blocked()
            assert "de" in room.languages()  # wanted while they catch up
            assert room.audience.people("de") == 0  # not seated before their catch-up
            engine.open()
    assert all(joiner.finals == [4, 5, 6] for joiner in joiners)
    assert sorted(engine.texts("de")) == ["s4", "s5", "s6"]
    assert room.audience.people("de") == 10


async def test_a_joiner_with_last_seq_gets_every_final_after_it() -> None:
    room, engine = make_room(catchup_finals=2)
    spoken(room, 8)
    resumed, current, fresh = RecordingMember("fr"), RecordingMember("fr"), RecordingMember("fr")
    with trio.fail_after(TIMEOUT_S):
        await room.add_member(resumed, last_seq=3)
        await room.add_member(current, last_seq=8)
        await room.add_member(fresh)
    assert resumed.finals == [4, 5, 6, 7, 8]  # more than catchup_finals
    assert current.finals == []
    assert fresh.finals == [7, 8]
    assert sorted(engine.texts("fr")) == ["s4", "s5", "s6", "s7", "s8"]


async def test_a_final_delivered_live_during_catch_up_reaches_the_joiner_once() -> None:
    room, engine = make_room(GatedTranslator(hold=lambda call: call.text == "s3"))
    spoken(room, 3)
    joiner = RecordingMember("fr")
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(room.add_member, joiner)
            await trio.testing.wait_all_tasks_blocked()
            # Meanwhile final 4 is spoken and its live lane renders and delivers it.
            room.renderer.admit(segment(4))
            live = await room.renderer.final(segment(4), "fr", live=True)
            assert room.deliver(live) == 0  # the joiner is not seated yet
            engine.open()
        # Live again after the joiner took its seat: its guard drops the repeat.
        room.deliver(live)
    assert joiner.finals == [2, 3, 4]


async def test_change_language_moves_the_member_and_keeps_its_guard() -> None:
    room, _ = make_room()
    member = RecordingMember("fr")
    seated(room, member)
    with trio.fail_after(TIMEOUT_S):
        room.deliver(caption(3, "fr"))
        room.change_language(member, "de")
        room.deliver(caption(3, "de"))  # the same final in its new language: not again
        room.deliver(caption(4, "fr"))  # its old language: no longer
        room.deliver(caption(4, "de"))
    assert [(c.segment.seq_id, c.target_lang) for c in member.captions] == [(3, "fr"), (4, "de")]
    assert member.target_lang == "de"
    assert room.languages() == frozenset({"de"})


async def test_close_ends_every_member_and_the_unseated_host_once() -> None:
    room, _ = make_room()
    host = RecordingMember("en", Role.HOST)
    room.host = host  # connected, not seated
    listeners = [RecordingMember("fr"), RecordingMember("de")]
    seated(room, *listeners)
    with trio.fail_after(TIMEOUT_S):
        room.close("host_ended", "The host ended the session", 1000)
        room.close("again", "ignored", 1011)
    for member in (host, *listeners):
        assert member.notices == [
            {
                "type": "session_ended",
                "message": "The host ended the session",
                "reason": "host_ended",
            }
        ]
        assert member.closed == (1000, "session ended")
    assert room.closed


async def test_the_host_is_told_who_listens_as_members_come_and_go() -> None:
    room, _ = make_room()
    host = RecordingMember("en", Role.HOST)
    room.host = host
    room.seat(host)
    listener = RecordingMember("fr")
    with trio.fail_after(TIMEOUT_S):
        await room.add_member(listener)
        room.change_language(listener, "de")
        room.remove_member(listener)
    stats = [n["stats"] for n in host.notices if n["type"] == "session_stats"]
    assert [s["languageCounts"] for s in stats] == [{"fr": 1}, {"de": 1}, {}]
    assert json.dumps(stats)  # plain JSON for the wire
