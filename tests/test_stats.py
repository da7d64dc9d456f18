"""``GET /stats``: stage latencies recorded per caption, and the process's usage."""

from __future__ import annotations

import trio
from helpers import get, listener_path, post, start_session

from babel_actors.config import Config
from babel_actors.events import Caption, Segment
from babel_actors.stages import STAGES, StageRecorder
from babel_actors.testing import (
    ScriptedSpeechToText,
    connect,
    running_server,
    sentence_script,
    silence,
)


def test_stages_add_up_to_the_total_and_unknown_marks_are_skipped() -> None:
    recorder = StageRecorder(100)
    segment = Segment(
        seq_id=1,
        text="hello",
        is_partial=False,
        source_lang="en",
        recognized_at=10.003,
        wall_ms=0,
        audio_received_at=10.000,
        audio_ingested_at=10.001,
        split_at=10.004,
    )
    recorder.record(Caption(segment, "es", "hola", True, translated_at=10.006), 10.010)
    untimed = Segment(2, "bye", False, "en", recognized_at=11.0, wall_ms=0, split_at=11.001)
    recorder.record(Caption(untimed, "es", "adiós", True, translated_at=11.002), 11.004)

    final = recorder.summary()["final"]
    assert final["count"] == 2
    stages = {name: final["stages"][name] for name in STAGES}
    assert [stages[name]["n"] for name in STAGES] == [1, 1, 2, 2, 2]
    assert final["total"]["n"] == 1 and abs(final["total"]["max"] - 10.0) < 1e-6
    assert final["resultToSocket"]["n"] == 2
    assert recorder.summary()["partial"]["count"] == 0
    recorder.reset()
    assert recorder.summary()["final"]["count"] == 0


async def test_stats_show_every_stage_of_a_live_session_and_reset() -> None:
    script = sentence_script(["one two three four", "five six seven eight"], seconds_each=1.0)
    with trio.fail_after(20):
        async with running_server(Config(port=0), stt=ScriptedSpeechToText(script)) as server:
            session = await start_session(server)
            path = listener_path(session["sessionId"], "es")
            async with connect(server, path) as es, connect(server, session["wsUrl"]) as host:
                await es.receive()
                await host.receive()
                await host.send({"type": "init", "sourceLang": "en", "sampleRate": 16000})
                for _ in range(4):
                    await host.send_audio(silence(0.5, 16000))
                await es.finals(2)
                await host.finals(2)
                status, stats = await get(server, "/stats")
                assert status == 200
                assert stats["activeSessions"] == 1 and stats["members"] == 2
                assert stats["process"]["rssBytes"] > 0
                final = stats["stages"]["final"]
                assert final["count"] == 4  # two finals, each in es and en
                for name in STAGES:
                    assert final["stages"][name]["n"] == 4, name
                assert final["total"]["p50"] >= final["stages"]["broadcaster"]["p50"]

                status, _ = await post(server, "/stats/reset")
                assert status == 200
                _, stats = await get(server, "/stats")
                assert stats["stages"]["final"]["count"] == 0
