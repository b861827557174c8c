"""Live streams against a real server: a client that sends audio at a chosen pace over ``/v1/stream``,
and the latency benchmark of several real-time streams at once.

``stream_audio`` sends a waveform in frames (16-bit PCM by default) at ``speed`` times real time and
records every event with the moment it arrived. A window's *delay* is the time from sending the frame
that holds the window's last sample to receiving the window's result: what a user watching a live
view waits for.

The benchmark (``python -m benchmarks.streaming``) builds a bundle on the full-size HuBERT-large
architecture with random weights (the compute cost is the real one), serves it with a real uvicorn
server, plays ``--streams`` copies of a multi-emotion recording built from RAVDESS clips at real time,
all at once, and prints and writes (``--out``) the delays' median, p95 and maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.constants import SAMPLE_RATE


@dataclass
class StreamRun:
    """What one stream got back.

    Attributes:
        events: every event, with ``received`` (s since the first frame was sent) added.
        sent: (audio seconds sent so far, s since the first frame) after each frame.
        close_code, close_reason: how the server closed the connection.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[tuple[float, float]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    send_seconds: float = 0.0

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def window_delays(self) -> list[float]:
        """For each window: seconds from sending the frame that completed its audio to its result."""
        sent_audio = np.array([a for a, _ in self.sent])
        sent_at = np.array([t for _, t in self.sent])
        delays = []
        for event in self.of_type("window"):
            i = int(np.searchsorted(sent_audio, event["end"] - 1e-6))
            i = min(i, len(sent_at) - 1)
            delays.append(event["received"] - float(sent_at[i]))
        return delays


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


async def stream_audio(
    url: str,
    wave: np.ndarray | None = None,
    *,
    frames: Sequence[bytes] | None = None,
    start: dict[str, Any] | None = None,
    frame_seconds: float = 0.1,
    speed: float = 1.0,
    stop: bool = True,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> StreamRun:
    """Send ``wave`` (16 kHz float32, sent as s16le) or raw ``frames`` at ``speed`` times real time to the
    WebSocket ``url`` and collect the events until the server closes.

    Args:
        start: the start message (default: s16le at 16 kHz, mono).
        frame_seconds: audio per frame when ``wave`` is given (and the pace of ``frames``).
        stop: send ``{"type": "stop"}`` after the last frame.
    """
    import websockets

    if frames is None:
        assert wave is not None
        step = int(frame_seconds * SAMPLE_RATE)
        frames = [pcm16(wave[i : i + step]) for i in range(0, wave.shape[0], step)]
        seconds = [min(wave.shape[0], i + step) / SAMPLE_RATE for i in range(0, wave.shape[0], step)]
    else:
        seconds = [(i + 1) * frame_seconds for i in range(len(frames))]
    run = StreamRun()
    message = start or {"type": "start", "format": "s16le", "sample_rate": SAMPLE_RATE, "channels": 1}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        t0 = time.perf_counter()

        async def receive() -> None:
            try:
                async for raw in ws:
                    event = json.loads(raw)
                    event["received"] = time.perf_counter() - t0
                    run.events.append(event)
            except websockets.ConnectionClosed:
                pass

        receiver = asyncio.ensure_future(receive())
        try:
            await ws.send(json.dumps(message))
            for i, frame in enumerate(frames):
                due = i * frame_seconds / speed
                wait = due - (time.perf_counter() - t0)
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(frame)
                run.sent.append((seconds[i], time.perf_counter() - t0))
            run.send_seconds = time.perf_counter() - t0
            if stop:
                await ws.send(json.dumps({"type": "stop"}))
        except websockets.ConnectionClosed:
            run.send_seconds = time.perf_counter() - t0
        await asyncio.wait_for(receiver, timeout)
        run.close_code = ws.close_code
        run.close_reason = ws.close_reason or ""
    return run


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/stream"


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    arr = np.asarray(values)
    return {
        "n": len(values),
        "median": round(float(np.median(arr)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "max": round(float(arr.max()), 3),
    }


# --- the benchmark ---------------------------------------------------------------------------------


def _bundle(work: Path, kind: str, data: Path) -> Path:
    """A HuBERT bundle on ``kind``'s architecture (random weights), fitted on a few RAVDESS clips."""
    from benchmarks.timeline import fit_on_actors
    from benchmarks.variants import make_model
    from shared.backbones.options import EncoderOptions
    from shared.backbones.runtime import build_backbone

    model = make_model(kind, work / f"hubert-{kind}")
    backbone = build_backbone(
        {"kind": "hubert", "model": str(model), "layer": "last"}, EncoderOptions(dtype="auto")
    )
    return fit_on_actors(data / "ravdess16k", backbone, range(1, 2), work / "artifacts", f"stream-{kind}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--model", default="large", help="architecture: large (HuBERT-large) or tiny")
    parser.add_argument("--streams", type=int, default=4, help="concurrent real-time streams")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream (s)")
    parser.add_argument("--work", type=Path, default=Path(".bench-streaming"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=Path("benchmark-streaming.json"))
    args = parser.parse_args(argv)

    from benchmarks.recordings import build_recording, pick_clips, ravdess_clips
    from service.app import create_app
    from service.server import build_server
    from service.settings import ServiceSettings

    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bundle = _bundle(args.work, args.model, args.data)
    prepared = time.perf_counter() - started
    clips = ravdess_clips(args.data / "ravdess16k", range(21, 25))
    waves = []
    for i in range(args.streams):  # a different recording for each stream
        wave, _ = build_recording(pick_clips(clips, 40, seed=10 + i), seed=10 + i)
        waves.append(wave[: int(args.seconds * SAMPLE_RATE)])
    settings = ServiceSettings(bundle=str(bundle), dtype="auto", stream_max=max(8, args.streams))
    app = create_app(settings)
    port = 8765
    server = build_server(app, settings, host="127.0.0.1", port=port)

    async def run() -> list[StreamRun]:
        serving = asyncio.ensure_future(server.serve())
        import httpx

        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        url = f"ws://127.0.0.1:{port}/v1/stream"
        runs = await asyncio.gather(*(stream_audio(url, w, timeout=600) for w in waves))
        server.should_exit = True
        await serving
        return list(runs)

    runs = asyncio.run(run())
    delays = [d for r in runs for d in r.window_delays()]
    dtype = "unknown"
    report = {
        "benchmark": "streaming",
        "model": args.model,
        "weights": "random (full-size architecture)" if args.model == "large" else "random",
        "streams": args.streams,
        "seconds_per_stream": args.seconds,
        "serving_dtype": dtype,
        "windows": len(delays),
        "dropped": sum(len(r.of_type("warning")) for r in runs),
        "delay_s": percentiles(delays),
        "per_stream": [
            {
                "windows": len(r.of_type("window")),
                "delay_s": percentiles(r.window_delays()),
                "close_code": r.close_code,
                "summary": bool(r.of_type("summary")),
            }
            for r in runs
        ],
        "prepare_s": round(prepared, 1),
    }
    print(
        f"{args.streams} real-time streams on {args.model}: {len(delays)} windows, delay median "
        f"{report['delay_s']['median']} s, p95 {report['delay_s']['p95']} s, max {report['delay_s']['max']} s, "
        f"{report['dropped']} dropped"
    )
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
