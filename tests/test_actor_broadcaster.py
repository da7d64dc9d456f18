"""The broadcaster actor, driven through its inbox: every caption delivered in order,
counted once each, and the actor returns when its inbox ends."""

from __future__ import annotations

from functools import partial

import attrs
import trio
import trio.testing
from members import segment

from babel_actors.actors.broadcaster import finals_first, run_broadcaster
from babel_actors.events import Caption
from babel_actors.metrics import Metrics
from babel_actors.stages import StageRecorder
from babel_actors.wire.server import Rendered, render

TIMEOUT_S = 10


def rendered(seq_id: int, language: str, *, partial: bool = False) -> Rendered:
    return render(
        Caption(segment(seq_id, partial=partial), language, f"[{language}] s{seq_id}", True)
    )


class Deliveries:
    """A ``deliver`` that records what it is given and reaches ``reach[language]``."""

    def __init__(self, reach: dict[str, int]) -> None:
        self.reach = reach
        self.given: list[Rendered] = []

    def __call__(self, item: Rendered) -> int:
        self.given.append(item)
        return self.reach.get(item.caption.target_lang, 0)


async def test_every_caption_is_delivered_in_order_and_it_returns_when_the_inbox_ends() -> None:
    deliver = Deliveries({"fr": 2})
    captions = [rendered(1, "fr"), rendered(2, "de"), rendered(3, "fr", partial=True)]
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](8)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_broadcaster, inbox_receive, deliver=deliver))
            for item in captions:
                await inbox_send.send(item)
            await trio.testing.wait_all_tasks_blocked()
            assert deliver.given == captions
            assert len(nursery.child_tasks) == 1  # still running while the inbox is open
            await inbox_send.aclose()
        # The nursery exiting means the broadcaster returned.
    assert deliver.given == captions
    assert inbox_receive.statistics().open_receive_channels == 0


async def test_captions_queued_before_the_inbox_closes_are_all_delivered() -> None:
    deliver = Deliveries({"fr": 1})
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](16)
    captions = [rendered(n, "fr") for n in range(1, 11)]
    for item in captions:
        inbox_send.send_nowait(item)
    inbox_send.close()
    with trio.fail_after(TIMEOUT_S):
        await run_broadcaster(inbox_receive, deliver=deliver)
    assert [r.caption.segment.seq_id for r in deliver.given] == list(range(1, 11))


async def test_metrics_count_each_caption_once_with_the_people_it_reached() -> None:
    metrics = Metrics()
    deliver = Deliveries({"fr": 3, "de": 2})
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](8)
    for item in (
        rendered(2, "fr"),
        rendered(2, "de"),
        rendered(2, "it"),  # nobody reads Italian: not counted
        rendered(3, "fr", partial=True),
    ):
        inbox_send.send_nowait(item)
    inbox_send.close()
    with trio.fail_after(TIMEOUT_S):
        await run_broadcaster(inbox_receive, deliver=deliver, metrics=metrics)
    sample = metrics.registry.get_sample_value
    assert sample("babel_messages_out_total", {"kind": "caption"}) == 3 + 3 + 2
    assert sample("babel_finals_delivered_total", {"language": "fr"}) == 3
    assert sample("babel_finals_delivered_total", {"language": "de"}) == 2
    assert sample("babel_finals_delivered_total", {"language": "it"}) is None


async def test_stage_latencies_are_recorded_per_caption_at_delivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stages = StageRecorder(100)
    deliver = Deliveries({"fr": 1})
    await trio.sleep(1.0)  # the mock clock starts at 0.0, which reads as "unknown"
    start = trio.current_time()
    seg = attrs.evolve(
        segment(1),
        audio_received_at=start,
        audio_ingested_at=start + 0.1,
        recognized_at=start + 0.3,
        split_at=start + 0.4,
    )
    final = render(Caption(seg, "fr", "[fr] s1", True, translated_at=start + 0.6))
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](8)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_broadcaster, inbox_receive, deliver=deliver, stages=stages)
            )
            await trio.sleep(1.0)
            await inbox_send.send(final)
            await inbox_send.send(rendered(2, "fr", partial=True))
            await inbox_send.aclose()
    summary = stages.summary()
    assert summary["final"]["count"] == 1
    assert summary["partial"]["count"] == 1
    # Delivered at start + 1.0: the broadcaster's own stage is 400 ms, the total 1 s.
    assert summary["final"]["stages"]["broadcaster"]["p50"] == 400.0
    assert summary["final"]["total"]["p50"] == 1000.0


def test_captions_that_queued_up_go_out_finals_first_and_stale_partials_dropped() -> None:
    batch = [
        rendered(1, "fr", partial=True),
        rendered(2, "fr", partial=True),
        rendered(2, "de", partial=True),
        rendered(3, "fr"),
        rendered(4, "fr", partial=True),
        rendered(3, "de"),
        rendered(5, "de", partial=True),
        rendered(6, "de", partial=True),
    ]
    order = [(r.caption.segment.seq_id, r.caption.target_lang) for r in finals_first(batch)]
    assert order == [(3, "fr"), (3, "de"), (4, "fr"), (6, "de")]
    only_finals = [rendered(1, "fr"), rendered(1, "de"), rendered(2, "fr")]
    assert finals_first(only_finals) == only_finals
    only_partials = [rendered(1, "fr", partial=True), rendered(2, "fr", partial=True)]
    assert finals_first(only_partials) == only_partials[1:]


async def test_a_final_queued_behind_partials_is_delivered_before_them() -> None:
    deliver = Deliveries({"fr": 1})
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](8)
    queued = [rendered(1, "fr", partial=True), rendered(2, "fr", partial=True), rendered(2, "fr")]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            # Queued before the broadcaster runs: it finds them waiting together.
            for item in queued:
                inbox_send.send_nowait(item)
            await inbox_send.aclose()
            nursery.start_soon(partial(run_broadcaster, inbox_receive, deliver=deliver))
    assert deliver.given == [queued[2]]


async def test_a_final_that_comes_between_two_partials_goes_out_before_the_second() -> None:
    inbox_send, inbox_receive = trio.open_memory_channel[Rendered](8)
    final = rendered(2, "fr")
    partials = [rendered(3, "fr", partial=True), rendered(3, "de", partial=True)]

    class FinalArrives(Deliveries):
        def __call__(self, item: Rendered) -> int:
            if item is partials[0]:
                inbox_send.send_nowait(final)  # it comes while fr's partial fans out
            return super().__call__(item)

    deliver = FinalArrives({"fr": 1, "de": 1})
    for item in partials:
        inbox_send.send_nowait(item)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_broadcaster, inbox_receive, deliver=deliver))
            await trio.testing.wait_all_tasks_blocked()
            await inbox_send.aclose()
    assert deliver.given == [partials[0], final, partials[1]]
