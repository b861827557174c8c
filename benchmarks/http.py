"""The service over HTTP on loopback: a bundle fitted over the benchmarked model, a real uvicorn server in a
subprocess (``serve``), and an async load generator for one and several concurrent clients."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from benchmarks.measure import REPO_ROOT, batched_throughput, read_proc_status, stats, timed
from benchmarks.variants import Variant
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.signals import speech_like

if TYPE_CHECKING:
    from benchmarks.cli import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wav_bytes(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_bundle(backbone: Any, artifacts: Path, name: str) -> Path:
    """A real bundle: the sklearn pipeline fitted on a few dozen generated clips embedded by ``backbone``."""
    from training.recipe import fit_bundle

    per_class = 5
    waves, labels = [], []
    for c, label in enumerate(EMOTIONS):
        for i in range(per_class):
            waves.append(speech_like(1.0 + 0.1 * i, seed=300 + 10 * c + i))
            labels.append(label)
    x = backbone.embed_batch(waves)
    # Random weights give near-identical embeddings; a class-dependent shift keeps the fit well posed.
    x = x + np.repeat(np.eye(len(EMOTIONS), x.shape[1]), per_class, axis=0) * float(np.std(x) + 1e-3)
    return fit_bundle(
        x,
        labels,
        backbone,
        artifacts,
        name="benchmark",
        version=name,
        training={"corpus": "generated", "n_utterances": len(waves)},
    )


def percentiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {}
    return {
        "p50_s": float(np.percentile(arr, 50)),
        "p95_s": float(np.percentile(arr, 95)),
        "p99_s": float(np.percentile(arr, 99)),
        "mean_s": float(arr.mean()),
        "max_s": float(arr.max()),
    }


async def _load(url: str, body: bytes, clients: int, total: int) -> dict[str, Any]:
    """``clients`` concurrent clients POST ``body`` until ``total`` requests are done."""
    import httpx

    latencies: list[float] = []
    server_inference: list[float] = []
    batch_sizes: list[int] = []
    failures: list[str] = []
    issued = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/predict", files={"file": ("clip.wav", body, "audio/wav")})
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            data = response.json()
            latencies.append(elapsed)
            server_inference.append(data["timings_ms"]["inference"] / 1000)
            batch_sizes.append(int(data["batch_size"]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return _load_summary(
        clients, total, latencies, server_inference, batch_sizes, failures, len(failures), wall
    )


def _load_summary(
    clients: int,
    total: int,
    latencies: list[float],
    server_inference: list[float],
    batch_sizes: list[int],
    failures: list[str],
    failed: int,
    wall: float,
) -> dict[str, Any]:
    return {
        "clients": clients,
        "requests": total,
        "ok": len(latencies),
        "failed": failed,
        "failures": failures[:5],
        "wall_s": wall,
        "throughput_clips_per_s": len(latencies) / wall,
        "latency": percentiles(latencies),
        "server_inference_median_s": float(np.median(server_inference)) if server_inference else None,
        "mean_batch_size": float(np.mean(batch_sizes)) if batch_sizes else None,
        "latencies_s": latencies,
        "server_inference_s": server_inference,
        "batch_sizes": batch_sizes,
    }


def merge_loads(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several ``_load`` runs with the same number of clients."""
    return _load_summary(
        parts[0]["clients"],
        sum(p["requests"] for p in parts),
        [x for p in parts for x in p["latencies_s"]],
        [x for p in parts for x in p["server_inference_s"]],
        [x for p in parts for x in p["batch_sizes"]],
        [x for p in parts for x in p["failures"]],
        sum(p["failed"] for p in parts),
        sum(p["wall_s"] for p in parts),
    )


def request_clip(seconds: float) -> tuple[np.ndarray, str]:
    """The clip every request sends: RAVDESS speech from ``$SER_TEST_DATA`` cut or padded to ``seconds``
    (the service refuses audio in which its voice-activity detector hears no speech), else a generated
    voiced signal, which the served app then classifies without the speech check."""
    from benchmarks.variants import accuracy_clips

    clips, source = accuracy_clips(1)
    n = int(seconds * SAMPLE_RATE)
    if source.startswith("ravdess"):
        wave = clips[0][SAMPLE_RATE // 2 :][:n]  # RAVDESS clips open with about half a second of silence
        return np.pad(wave, (0, n - wave.shape[0])).astype(np.float32), "ravdess16k (1 file)"
    return speech_like(seconds, seed=7), "generated (speech check off)"


def start_server(
    bundle: Path, variant: Variant, cfg: Settings, log_file: Path, *, speech_check: bool = True
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    assert cfg.cache_dir is not None
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SER_CACHE_DIR": str(cfg.cache_dir),
        "SER_ONNX_CACHE": str(cfg.cache_dir / "onnx"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "benchmarks", "serve", "--bundle", str(bundle)]
    command += ["--variant", variant.name, "--port", str(port)]
    if cfg.threads:
        command += ["--threads", str(cfg.threads)]
    if not speech_check:
        command += ["--no-speech-check"]
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log_file: Path, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log_file.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return
            if "failed to load" in response.text:
                raise RuntimeError(f"the server could not load the model: {response.text}")
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_http(
    variant: Variant,
    backbone: Any,
    work: Path,
    cfg: Settings,
    batched: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    from service.settings import ServiceSettings
    from shared.audio import load_audio

    defaults = ServiceSettings(bundle=work)
    bundle = write_bundle(backbone, work / "artifacts", variant.name)
    clip, source = request_clip(2.5)
    body = wav_bytes(clip)
    decoded_clip = load_audio(body)  # what the server's decoder gives the model
    log_file = work / f"server-{variant.name}.log"
    started = time.perf_counter()
    speech_check = source.startswith("ravdess")
    process, url = start_server(bundle, variant, cfg, log_file, speech_check=speech_check)
    out: dict[str, Any] = {"bundle": str(bundle), "clip": source, "speech_check": speech_check}
    try:
        wait_ready(process, url, log_file)
        out["start_to_ready_s"] = time.perf_counter() - started
        out["memory_after_start"] = read_proc_status(process.pid)

        # The backbone's own time on this clip, in this process, timed in turns with the requests: this
        # machine's speed drifts by 10-20% over minutes, and the ratio must not measure that.
        say(f"  one client, {cfg.http_requests} requests, in turns with the backbone's own forward")
        backbone.embed_batch([decoded_clip])
        asyncio.run(_load(url, body, 1, 2))  # warm the connection path
        turns = 2 if cfg.quick else 6
        forward: list[float] = []
        parts = []
        for turn in range(turns):
            forward += [timed(lambda: backbone.embed_batch([decoded_clip])) for _ in range(2)]
            share = cfg.http_requests // turns + (1 if turn < cfg.http_requests % turns else 0)
            parts.append(asyncio.run(_load(url, body, 1, share)))
        out["forward_s"] = stats(forward)
        single = merge_loads(parts)
        out["single_client"] = single
        p50 = single["latency"].get("p50_s")
        out["single_client_p50_over_forward"] = p50 / out["forward_s"]["median_s"] if p50 else None
        server_inf = single["server_inference_median_s"]
        out["single_client_p50_over_server_inference"] = p50 / server_inf if p50 and server_inf else None

        out["concurrency"] = {}
        top = max(cfg.concurrency)
        batch = defaults.max_batch_size
        # The in-process references of the heaviest load (the best batch size found earlier, and the
        # batch size the server runs) are timed just before and just after it, with the server idle:
        # this machine's speed drifts by 10-20% over minutes, and a ratio must not measure that.
        sizes = sorted({int(batched["best"]["batch_size"]), batch})
        around: dict[int, list[float]] = {size: [] for size in sizes}

        def time_references() -> None:
            for size in sizes:
                around[size].append(batched_throughput(backbone, size, max(2, cfg.repeats // 2)))

        for clients in cfg.concurrency:
            total = max(cfg.http_requests, 3 * clients) if not cfg.quick else max(4, 2 * clients)
            if clients == top:
                time_references()
            say(f"  {clients} concurrent clients, {total} requests")
            out["concurrency"][str(clients)] = asyncio.run(_load(url, body, clients, total))
            if clients == top:
                time_references()
        out["memory"] = read_proc_status(process.pid)
    finally:
        stop_server(process)
        out["server_log_tail"] = log_file.read_text(errors="replace")[-2000:]

    heavy = out["concurrency"][str(top)]
    timed_around = {
        str(size): {"before": v[0], "after": v[1], "mean": float(np.mean(v))} for size, v in around.items()
    }
    best_size = max(around, key=lambda size: float(np.mean(around[size])))
    best_around = float(np.mean(around[best_size]))
    batch_time = batch / float(np.mean(around[batch]))
    # A request waits for the batch in progress, the batches ahead of it, then its own.
    bound = (math.ceil((top - 1) / batch) + 1) * batch_time + defaults.max_batch_wait_ms / 1000
    out["queue_settings"] = {
        "max_batch_size": batch,
        "max_batch_wait_ms": defaults.max_batch_wait_ms,
        "queue_depth": defaults.queue_depth,
        "request_timeout_s": defaults.request_timeout_s,
    }
    out["best_batched_clips_per_s"] = batched["best"]["clips_per_s"]
    out["batched_clips_per_s_around_load"] = timed_around
    out["best_batched_clips_per_s_around_load"] = {"batch_size": best_size, "clips_per_s": best_around}
    # Against the backbone's best batched throughput timed around the load (see above); the ratio
    # against the figure timed minutes earlier is kept for comparison.
    out["throughput_ratio_at_max_clients"] = heavy["throughput_clips_per_s"] / best_around
    out["throughput_ratio_vs_earlier_best"] = heavy["throughput_clips_per_s"] / batched["best"]["clips_per_s"]
    out["p99_bound_s"] = bound
    return out


def serve(argv: list[str]) -> int:
    """The HTTP server the benchmark measures: the service's own app, for one variant."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks serve")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-speech-check", action="store_true", help="classify audio the VAD hears no speech in"
    )
    args = parser.parse_args(argv)

    from service.app import create_app
    from service.memory import keep_freed_memory
    from service.server import build_server
    from service.settings import ServiceSettings

    variant = Variant.parse(args.variant)
    if variant.backend == "naive":
        raise SystemExit("the naive baseline is not served; choose a torch or onnx variant")
    # The service's own loader; SER_CACHE_DIR and SER_ONNX_CACHE (set by start_server) say where the
    # converted weights and ONNX exports are.
    settings = ServiceSettings(
        bundle=args.bundle,
        port=args.port,
        device="cpu",
        dtype=cast(Any, variant.dtype if variant.backend == "torch" else "fp32"),
        backend=cast(Any, variant.backend),
        torch_threads=args.threads or 0,
        hf_offline=True,
        log_level="WARNING",
        require_speech=not args.no_speech_check,
    )
    if settings.keep_freed_memory:
        keep_freed_memory()  # as python -m service does, before any thread starts
    app = create_app(settings)
    build_server(app, settings, host="127.0.0.1").run()  # the service's own server, as python -m service
    return 0
