"""Helpers for the service tests: audio encoded in many formats, a uvicorn server on loopback, polling."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.engine import load_predictor
from service.server import build_server
from service.settings import ServiceSettings
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.predictor import Prediction, Predictor

#: The shared in-process app refuses bodies over this many bytes (small, so the 413 test stays cheap).
TEST_UPLOAD_LIMIT = 4 * 1024 * 1024


def encode_soundfile(
    wave: np.ndarray, fmt: str, subtype: str | None = None, rate: int = SAMPLE_RATE
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_pyav(
    wave: np.ndarray, container: str, codec: str, *, rate: int = SAMPLE_RATE, codec_rate: int
) -> bytes:
    """Encode mono float ``wave`` (at ``rate`` Hz) with FFmpeg's ``codec`` into ``container``."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=codec_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def resample_linear(wave: np.ndarray, rate: int) -> np.ndarray:
    n = int(round(len(wave) * rate / SAMPLE_RATE))
    return np.interp(np.linspace(0, len(wave) - 1, n), np.arange(len(wave)), wave).astype(np.float32)


def encode_formats(wave: np.ndarray) -> dict[str, bytes]:
    """One 16 kHz mono clip in nine containers/codecs, like $SER_TEST_DATA/formats (file name -> bytes)."""
    stereo48 = np.stack([resample_linear(wave, 48000)] * 2, axis=1)
    return {
        "clip_16k_mono.wav": encode_soundfile(wave, "WAV", "PCM_16"),
        "clip_float32.wav": encode_soundfile(wave, "WAV", "FLOAT"),
        "clip_8k_mulaw.wav": encode_soundfile(resample_linear(wave, 8000), "WAV", "ULAW", rate=8000),
        "clip_48k_stereo.wav": encode_soundfile(stereo48, "WAV", "PCM_16", rate=48000),
        "clip.flac": encode_soundfile(wave, "FLAC", "PCM_16"),
        "clip.ogg": encode_soundfile(wave, "OGG", "VORBIS"),
        "clip.mp3": encode_soundfile(wave, "MP3", "MPEG_LAYER_III"),
        "clip.m4a": encode_pyav(wave, "ipod", "aac", codec_rate=SAMPLE_RATE),
        "clip.webm": encode_pyav(wave, "webm", "libopus", codec_rate=48000),
    }


class ModelGate:
    """Loads the real predictor and wraps its ``predict_batch`` so that, while the gate is closed, model
    calls wait at it: tests can then hold requests in flight or in the queue, then let them through."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._opened = threading.Event()
        self.entered = threading.Event()

    def close(self) -> None:
        self._opened.clear()
        self._closed.set()

    def open(self) -> None:
        self._closed.clear()
        self._opened.set()

    def factory(self, settings: ServiceSettings, bundle_dir: Path) -> Predictor:
        predictor = load_predictor(settings, bundle_dir)
        real, real_embed = predictor.predict_batch, predictor.embed_batch

        def wait_at_gate() -> None:
            if self._closed.is_set():
                self.entered.set()
                self._opened.wait(30)

        def predict_batch(waves: Sequence[np.ndarray]) -> list[Prediction]:
            wait_at_gate()
            return real(waves)

        def embed_batch(waves: Sequence[np.ndarray]) -> np.ndarray:  # a timeline's windows come this way
            wait_at_gate()
            return real_embed(waves)

        predictor.predict_batch = predict_batch  # type: ignore[method-assign]
        predictor.embed_batch = embed_batch  # type: ignore[method-assign]
        return predictor


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def ready_client(client: TestClient, timeout: float = 120.0) -> TestClient:
    """Wait until ``/ready`` answers 200 (the lifespan loads the model in the background)."""
    wait_until(lambda: client.get("/ready").status_code == 200, timeout=timeout)
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """The service's real server (``service.server``) on 127.0.0.1 in a background thread (no signal handlers)."""

    def __init__(self, app: FastAPI, *, graceful_timeout: float = 30.0) -> None:
        self.port = free_port()
        settings = app.state.settings.model_copy(update={"shutdown_timeout_s": graceful_timeout})
        self.server = build_server(app, settings, host="127.0.0.1", port=self.port)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=60)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self, timeout: float = 60.0) -> None:
        # What uvicorn's SIGTERM handler does: stop accepting, finish in-flight requests, run the lifespan exit.
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def serve(app: FastAPI, **kwargs: float) -> Iterator[ServerThread]:
    server = ServerThread(app, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def assert_valid_prediction(body: dict) -> None:
    """Six probabilities summing to 1, label the arg-max, confidence its probability."""
    probs = body["probabilities"]
    assert list(probs) == list(EMOTIONS)
    assert abs(sum(probs.values()) - 1.0) < 1e-6
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert body["label"] == max(probs, key=probs.__getitem__)
    assert body["confidence"] == pytest.approx(probs[body["label"]])
    assert np.isfinite(body["duration_s"]) and body["duration_s"] > 0
