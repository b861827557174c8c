"""Against a real uvicorn server on loopback: 16 concurrent clients, streamed bodies over the limit,
graceful shutdown with requests in flight, and ``python -m service`` itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_support import (
    ModelGate,
    ServerThread,
    assert_valid_prediction,
    encode_soundfile,
    free_port,
    serve,
    wait_until,
)
from support import synthetic_clip, wav_bytes

from service.app import create_app
from service.settings import ServiceSettings
from shared.audio import load_audio
from shared.constants import EMOTIONS
from shared.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def test_files() -> dict[str, bytes]:
    """Twelve different utterances (every emotion, 0.6 to 1.15 s) in four formats."""
    files = {}
    for i, label in enumerate(EMOTIONS * 2):
        wave = synthetic_clip(label, 0.6 + 0.05 * i, seed=500 + i)
        fmt, ext = [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")][i % 4]
        subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
        files[f"{i:02d}_{label}.{ext}"] = encode_soundfile(wave, fmt, subtype)
    return files


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def test_16_concurrent_clients_with_10_requests_each_all_get_their_own_correct_answer(
    egemaps_bundle: Path, test_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = Predictor.from_bundle(egemaps_bundle)
    expected = {name: predictor.predict(load_audio(data)) for name, data in test_files.items()}
    names = sorted(test_files)
    monkeypatch.setenv("SER_BUNDLE", str(egemaps_bundle))
    app = create_app(ServiceSettings())

    async def client(server_url: str, index: int) -> list[tuple[str, httpx.Response]]:
        out = []
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as http:
            for j in range(10):
                name = names[(index * 10 + j) % len(names)]
                response = await http.post("/v1/predict", files={"file": (name, test_files[name])})
                out.append((name, response))
        return out

    async def run_all(server_url: str) -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server_url) as http:
            while (await http.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)
        per_client = await asyncio.gather(*(client(server_url, i) for i in range(16)))
        return [pair for responses in per_client for pair in responses]

    with serve(app) as server:
        results = asyncio.run(run_all(server.url))
        metrics = httpx.get(server.url + "/metrics").text

    assert len(results) == 160
    request_ids = set()
    for name, response in results:
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert_valid_prediction(body)
        assert body["label"] == expected[name].label, name
        np.testing.assert_allclose(
            [body["probabilities"][e] for e in EMOTIONS],
            [expected[name].probabilities[e] for e in EMOTIONS],
            atol=1e-9,
        )
        request_ids.add(response.headers["x-request-id"])
    assert len(request_ids) == 160
    # Every utterance went through the model exactly once; concurrent ones shared batches.
    assert _metric(metrics, "ser_batch_size_sum") == 160
    assert _metric(metrics, "ser_batch_size_count") < 160
    assert app.state.engine.state == "stopped"


def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request by hand, never finishing its body, and return what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return reply


def test_bodies_over_the_limit_are_refused_before_they_are_read(egemaps_bundle: Path) -> None:
    limit = 64 * 1024
    app = create_app(ServiceSettings(bundle=egemaps_bundle, max_upload_bytes=limit))
    with serve(app) as server:
        wait_until(lambda: httpx.get(server.url + "/ready").status_code == 200)
        # A declared length over the limit: refused at once, without sending any of the body.
        declared = _raw_request(
            server.port,
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 104857600\r\n\r\n",
            [],
        )
        # A chunked body that never ends: refused as soon as the limit is passed.
        chunk = b"R" * 8192
        streamed = _raw_request(
            server.port,
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n",
            [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 2),
        )
        for reply in (declared, streamed):
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413"), reply[:200]
            assert json.loads(body) == {
                "error": f"the request body is larger than the limit of {limit} bytes (0.1 MiB); send a smaller file",
                "error_type": "payload_too_large",
            }
        good = httpx.post(
            server.url + "/v1/predict", files={"file": ("a.wav", wav_bytes(synthetic_clip("sad", 1.0)))}
        )
        assert good.status_code == 200


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_shutdown_finishes_requests_in_flight(egemaps_bundle: Path) -> None:
    gate = ModelGate()
    app = create_app(ServiceSettings(bundle=egemaps_bundle, max_batch_size=2), predictor_factory=gate.factory)
    clip = wav_bytes(synthetic_clip("angry", 2.0, seed=9))
    n = 10

    async def scenario(server: ServerThread) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            while (await http.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            gate.close()
            tasks = [
                asyncio.ensure_future(http.post("/v1/predict", files={"file": ("a.wav", clip)}))
                for _ in range(n)
            ]
            # Once the server holds all of them (plus this /metrics request), stop it as SIGTERM does,
            # and let the model go on only when the server no longer accepts connections.
            deadline = time.monotonic() + 30
            while _metric((await http.get("/metrics")).text, "ser_http_requests_in_flight") < n + 1:
                assert time.monotonic() < deadline, "the requests never all reached the server"
                await asyncio.sleep(0.01)
            server.server.should_exit = True
            await asyncio.to_thread(wait_until, lambda: not _accepts_connections(server.port), 30)
            gate.open()
            return await asyncio.gather(*tasks)

    with serve(app) as server:
        responses = asyncio.run(scenario(server))
        server.thread.join(60)
        assert not server.thread.is_alive()
    assert [r.status_code for r in responses] == [200] * n
    assert all(r.json()["label"] == responses[0].json()["label"] for r in responses)
    assert app.state.engine.state == "stopped"


def test_python_m_service_serves_and_stops_cleanly_on_sigterm(egemaps_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    env = {**os.environ, "SER_LOG_JSON": "true", "SER_PORT": "1"}  # the --port flag overrides SER_PORT
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port), "--bundle", str(egemaps_bundle)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return httpx.get(url + "/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=120, interval=0.2)
            response = httpx.post(
                url + "/v1/predict",
                files={"file": ("a.wav", wav_bytes(synthetic_clip("fear", 1.0)))},
                headers={"X-Request-ID": "from-the-test"},
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "from-the-test"
            process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
            assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "from-the-test"]
    assert any(line["logger"] == "service.access" and line["status"] == 200 for line in mine)
    assert any("ready: serving synthetic/1" in line["message"] for line in lines)
    messages = [line["message"] for line in lines]
    assert (
        messages.index("shutting down")
        < messages.index("stopped")
        < messages.index("Application shutdown complete.")
    )


def test_a_client_that_leaves_while_queued_is_skipped(egemaps_bundle: Path) -> None:
    import threading

    gate = ModelGate()
    app = create_app(ServiceSettings(bundle=egemaps_bundle, max_batch_size=1), predictor_factory=gate.factory)
    clip = wav_bytes(synthetic_clip("neutral", 1.0, seed=8))
    with serve(app) as server:
        wait_until(lambda: httpx.get(server.url + "/ready").status_code == 200)
        engine = app.state.engine
        gate.close()
        first: list[httpx.Response] = []
        runner = threading.Thread(
            target=lambda: first.append(
                httpx.post(server.url + "/v1/predict", files={"file": ("a.wav", clip)})
            )
        )
        runner.start()
        assert gate.entered.wait(10)
        head = (
            "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {len(clip)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + clip)
            wait_until(lambda: engine.batcher.queue_size == 1)
        # The socket is closed: the server notices, cancels the request, and the batcher drops it.
        wait_until(lambda: "client_disconnected" in httpx.get(server.url + "/metrics").text)
        gate.open()
        runner.join(10)
        wait_until(lambda: engine.batcher.stats.skipped_cancelled == 1)
        assert first[0].status_code == 200
        assert engine.batcher.stats.items == 1  # only the first request reached the model
