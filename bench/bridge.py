"""What the trio <-> grpc.aio bridge costs: latency and CPU at N concurrent streams.

    python -m bench.bridge [--streams 50 200] [--seconds 10]

The local Speech v2 emulator runs in a process of its own, answering every audio
request at once with an interim result. Each stream sends 100 ms of 16 kHz audio
every 100 ms (real time, phases spread) through the real google-cloud-speech client;
latency is from handing a request to the client until its answer is back in the
caller's event loop. Two clients, each in a process of its own so CPU is its own:

- ``bridge``: trio, every stream on the one asyncio thread of ``grpc_bridge``;
- ``direct``: a plain asyncio program using grpc.aio directly (no bridge): the floor.

The bridge adds the difference. CPU is the client process's user+system time over
the measured seconds, as a share of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

_CHUNK_S = 0.1
_RATE = 16000
_WARMUP_S = 2.0


def _config_request() -> Any:
    from google.cloud.speech_v2.types import cloud_speech as speech

    return speech.StreamingRecognizeRequest(
        recognizer="projects/bench/locations/us/recognizers/_",
        streaming_config=speech.StreamingRecognitionConfig(
            config=speech.RecognitionConfig(
                explicit_decoding_config=speech.ExplicitDecodingConfig(
                    encoding=speech.ExplicitDecodingConfig.AudioEncoding.LINEAR16,
                    sample_rate_hertz=_RATE,
                    audio_channel_count=1,
                ),
                language_codes=["en-US"],
                model="chirp_3",
            ),
            streaming_features=speech.StreamingRecognitionFeatures(interim_results=True),
        ),
    )


def _audio_request() -> Any:
    from google.cloud.speech_v2.types import cloud_speech as speech

    return speech.StreamingRecognizeRequest(audio=b"\0\0" * int(_RATE * _CHUNK_S))


def _client(address: str) -> Any:
    """The async client on the running asyncio loop, as the engine makes it."""
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.speech_v2 import SpeechAsyncClient
    from google.cloud.speech_v2.services.speech.transports import SpeechGrpcAsyncIOTransport

    channel = grpc.aio.insecure_channel(address)
    transport = SpeechGrpcAsyncIOTransport(channel=channel, credentials=AnonymousCredentials())
    return SpeechAsyncClient(transport=transport)


def _summary(latencies: list[float], cpu_s: float, wall_s: float, streams: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "streams": streams,
        "answers": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 2) if ordered else None,
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2) if ordered else None,
        "cpu_core_pct": round(100 * cpu_s / wall_s, 1),
    }


def run_bridge(address: str, streams: int, seconds: float) -> dict[str, Any]:
    import trio

    from babel_actors.engines.grpc_bridge import AsyncioThread

    latencies: list[float] = []

    async def one_stream(bridge: AsyncioThread, client: Any, start: float) -> None:
        sent: dict[int, float] = {}
        async with bridge.open_stream(client.streaming_recognize) as call:
            await call.send(_config_request())
            audio = _audio_request()

            async def receive() -> None:
                while True:
                    try:
                        response = await call.receive()
                    except trio.EndOfChannel:
                        return
                    number = int(response.results[0].alternatives[0].transcript)
                    at = sent.pop(number)
                    if at >= start + _WARMUP_S:
                        latencies.append(trio.current_time() - at)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                phase = random.uniform(0, _CHUNK_S)
                count = int((seconds + _WARMUP_S) / _CHUNK_S)
                for number in range(1, count + 1):
                    await trio.sleep_until(start + phase + number * _CHUNK_S)
                    sent[number] = trio.current_time()
                    await call.send(audio)
                await call.done_writing()

    async def main() -> tuple[float, float]:
        bridge = AsyncioThread(name="bench-bridge")

        async def make() -> Any:
            return _client(address)

        client = await bridge.run(make)
        start = trio.current_time()
        cpu_at_warm = wall_at_warm = 0.0

        async def mark_warm() -> None:
            nonlocal cpu_at_warm, wall_at_warm
            await trio.sleep_until(start + _WARMUP_S)
            cpu_at_warm, wall_at_warm = time.process_time(), time.perf_counter()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mark_warm)
            for _ in range(streams):
                nursery.start_soon(one_stream, bridge, client, start)
        cpu, wall = time.process_time() - cpu_at_warm, time.perf_counter() - wall_at_warm
        await bridge.run(client.transport.close)
        left = await bridge.tasks_left(1.0)
        await bridge.aclose()
        assert left == 0, f"{left} tasks left on the bridge loop"
        return cpu, wall

    cpu, wall = trio.run(main)
    return _summary(latencies, cpu, wall, streams)


def run_direct(address: str, streams: int, seconds: float) -> dict[str, Any]:
    import grpc

    latencies: list[float] = []

    async def one_stream(client: Any, start: float) -> None:
        sent: dict[int, float] = {}
        call = await client.streaming_recognize()
        await call.write(_config_request())
        audio = _audio_request()

        async def receive() -> None:
            while (response := await call.read()) is not grpc.aio.EOF:
                number = int(response.results[0].alternatives[0].transcript)
                at = sent.pop(number)
                if at >= start + _WARMUP_S:
                    latencies.append(time.perf_counter() - at)

        reader = asyncio.create_task(receive())
        phase = random.uniform(0, _CHUNK_S)
        count = int((seconds + _WARMUP_S) / _CHUNK_S)
        loop = asyncio.get_running_loop()
        origin = loop.time()
        for number in range(1, count + 1):
            await asyncio.sleep(max(0.0, origin + phase + number * _CHUNK_S - loop.time()))
            sent[number] = time.perf_counter()
            await call.write(audio)
        await call.done_writing()
        await reader

    async def main() -> tuple[float, float]:
        client = _client(address)
        start = time.perf_counter()
        warm: list[float] = []

        async def mark_warm() -> None:
            await asyncio.sleep(_WARMUP_S)
            warm.extend([time.process_time(), time.perf_counter()])

        marker = asyncio.create_task(mark_warm())
        await asyncio.gather(*(one_stream(client, start) for _ in range(streams)))
        await marker
        cpu, wall = time.process_time() - warm[0], time.perf_counter() - warm[1]
        await client.transport.close()
        return cpu, wall

    cpu, wall = asyncio.run(main())
    return _summary(latencies, cpu, wall, streams)


def _measure(mode: str, address: str, streams: int, seconds: float) -> dict[str, Any]:
    """Run one client in a fresh process, so its CPU time is its own."""
    argv = [sys.executable, "-m", "bench.bridge", "--client", mode, "--address", address]
    argv += ["--streams", str(streams), "--seconds", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), client=mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", choices=["bridge", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run = run_bridge if args.client == "bridge" else run_direct
        print(json.dumps(run(args.address, args.streams[0], args.seconds)), flush=True)
        return
    emulator = subprocess.Popen(
        [sys.executable, "-m", "babel_actors.testing.google", "--echo"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, GRPC_VERBOSITY="ERROR"),
    )
    try:
        assert emulator.stdout is not None
        address = f"127.0.0.1:{int(emulator.stdout.readline())}"
        header = ("client", "streams", "answers", "p50 ms", "p99 ms", "CPU %")
        print("{:8} {:>7} {:>8} {:>8} {:>8} {:>6}".format(*header))
        for streams in args.streams:
            rows = [_measure(mode, address, streams, args.seconds) for mode in ("direct", "bridge")]
            for row in rows:
                print(
                    f"{row['client']:8} {row['streams']:7} {row['answers']:8}"
                    f" {row['p50_ms']:8} {row['p99_ms']:8} {row['cpu_core_pct']:6}"
                )
            direct, bridge = rows
            print(
                f"{'added':8} {streams:7} {'':8}"
                f" {bridge['p50_ms'] - direct['p50_ms']:8.2f}"
                f" {bridge['p99_ms'] - direct['p99_ms']:8.2f}"
                f" {bridge['cpu_core_pct'] - direct['cpu_core_pct']:6.1f}",
                flush=True,
            )
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


if __name__ == "__main__":
    main()
