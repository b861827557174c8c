"""Live streams against a real server: a client that sends audio at a chosen pace over ``/v1/stream``,
and the latency benchmark of several real-time streams at once.

``stream_audio`` sends a waveform in frames (16-bit PCM by default) at ``speed`` times real time and
records every event with the moment it arrived. A window's *delay* is the time from sending the frame
that holds the window's last sample to receiving the window's result: what a user watching a live
view waits for.

The benchmark (``python -m benchmarks.streaming``) builds a bundle on the full-size HuBERT-large
architecture with random weights (the compute cost is the real one), serves it with the service's own
server in a process of its own (``python -m service``, bf16), plays ``--streams`` multi-emotion
recordings built from RAVDESS clips at real time, all at once, and prints and writes (``--out``) the
delays' median, p95 and maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.constants import SAMPLE_RATE

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    """16-bit little-endian PCM: int16 samples as they are; floats scaled by 32768 and rounded, the
    inverse of how the server (and libsndfile) read them."""
    if wave.dtype == np.int16:
        return wave.astype("<i2").tobytes()
    return np.clip(np.rint(wave * 32768.0), -32768, 32767).astype("<i2").tobytes()


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
    """Send ``wave`` (16 kHz, float32 or int16, sent as s16le) or raw ``frames`` at ``speed`` times real time to the
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


# --- the benchmark ---------------------------------------------------------------------------------


def _bundle(work: Path, kind: str) -> Path:
    """A bundle on HuBERT's ``kind`` architecture (random weights), fitted on generated clips."""
    from benchmarks.http import write_bundle
    from benchmarks.variants import make_model
    from shared.backbones import EncoderOptions, build_backbone
    from shared.backbones.base import BackboneSpec

    folder = work / f"hubert-{kind}"
    if not folder.is_dir():
        make_model(kind, folder)
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)), EncoderOptions(dtype="bf16"))
    return write_bundle(backbone, work / "artifacts", f"streaming-{kind}")


def _batch_counts(metrics: str) -> dict[str, float]:
    """The encoder batches the server ran, and the utterances in them, from its /metrics text."""
    values = {}
    for line in metrics.splitlines():
        for name in ("ser_batch_size_count", "ser_batch_size_sum"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    batches = values.get("ser_batch_size_count", 0.0)
    return {
        "batches": batches,
        "mean_size": round(values.get("ser_batch_size_sum", 0.0) / max(batches, 1), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming",
        description="Concurrent real-time streams against a real server: window delays.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("../shared/data/ravdess16k"), help="RAVDESS folder"
    )
    parser.add_argument(
        "--model", default="large", help="HuBERT architecture (random weights): large or tiny"
    )
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--streams", type=int, default=4, help="concurrent real-time streams")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream (s)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-streaming.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ser-streaming-") as work:
        report = _measure(args, Path(work))
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Serve a bundle on ``args.model`` from ``work`` and stream to it; the report."""
    from benchmarks.http import free_port, percentiles, stop_server, wait_ready
    from benchmarks.recordings import build_recording, pick_clips, ravdess_clips

    bundle = _bundle(work, args.model)
    clips = ravdess_clips(args.data_dir, range(21, 25))
    waves = []
    for i in range(args.streams):  # a different multi-emotion recording for each stream
        wave, _ = build_recording(pick_clips(clips, 40, seed=10 + i), seed=10 + i)
        waves.append(wave[: int(args.seconds * SAMPLE_RATE)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SER_BUNDLE": str(bundle),
        "SER_DTYPE": args.dtype,
        "SER_PORT": str(port),
        "SER_HOST": "127.0.0.1",
        "SER_STREAM_MAX": str(max(8, args.streams)),
        "SER_JOBS_DIR": str(work / "jobs"),
        "SER_CACHE_DIR": str(work / "cache"),
        "SER_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_file = work / "server.log"
    with log_file.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(server, url, log_file)
            info = httpx.get(f"{url}/v1/info", timeout=30).json()

            async def together() -> list[StreamRun]:
                return list(await asyncio.gather(*(stream_audio(ws_url(url), w, timeout=600) for w in waves)))

            runs = asyncio.run(together())
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
        finally:
            stop_server(server)
    delays = [d for r in runs for d in r.window_delays()]
    summary = percentiles(delays)
    report = {
        "benchmark": "streaming",
        "model": f"hubert-{args.model} architecture, random weights",
        "serving_dtype": info.get("bundle", {}).get("serving_dtype"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "streams": args.streams,
        "seconds_per_stream": args.seconds,
        "frame_seconds": 0.1,
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SER_")},
        "windows": len(delays),
        "dropped": sum(len(r.of_type("warning")) for r in runs),
        "errors": [e["error"] for r in runs for e in r.of_type("error")],
        "delay": summary,
        "server_latency": percentiles([e["latency_s"] for r in runs for e in r.of_type("window")]),
        "queue": percentiles([e["timings_ms"]["queue"] / 1000 for r in runs for e in r.of_type("window")]),
        "inference": percentiles(
            [e["timings_ms"]["inference"] / 1000 for r in runs for e in r.of_type("window")]
        ),
        "batches": _batch_counts(metrics),
        "per_stream": [
            {
                "windows": len(r.of_type("window")),
                "delay": percentiles(r.window_delays()),
                "close": r.close_code,
            }
            for r in runs
        ],
    }
    print(
        f"{args.streams} real-time streams, {report['model']} ({report['serving_dtype']}): {len(delays)} windows, "
        f"delay median {summary.get('p50_s', float('nan')):.3f} s, p95 {summary.get('p95_s', float('nan')):.3f} s, "
        f"max {summary.get('max_s', float('nan')):.3f} s; {report['dropped']} dropped"
    )
    return report


if __name__ == "__main__":
    raise SystemExit(main())
