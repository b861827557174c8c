"""API keys under attack, what unauthenticated clients may see, log lines from hostile names, inputs
that are no speech, and the JSON shape of answers given outside the app (protocol errors, CORS, the
connection cap): in-process and against the real server on loopback."""

from __future__ import annotations

import base64
import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import ready_client, serve
from support import wav_bytes

from service.app import create_app
from service.logs import JsonFormatter, TextFormatter
from service.routes import HIDDEN_PATH
from service.settings import ServiceSettings
from shared.constants import SAMPLE_RATE

GOOD_KEY = "k" * 24


@pytest.fixture()
def keyed_client(egemaps_bundle: Path) -> TestClient:
    settings = ServiceSettings(
        bundle=egemaps_bundle, api_keys=[GOOD_KEY], auth_max_failures=5, auth_lockout_s=30
    )
    with TestClient(create_app(settings)) as client:
        yield ready_client(client)


def test_wrong_keys_from_one_address_are_throttled_with_retry_after(keyed_client: TestClient) -> None:
    for attempt in range(5):
        r = keyed_client.get("/v1/info", headers={"X-API-Key": f"guess-{attempt}"})
        assert r.status_code == 401, r.text
    r = keyed_client.get("/v1/info", headers={"X-API-Key": GOOD_KEY})
    assert r.status_code == 429, "a locked-out address is refused even with the right key"
    assert r.json()["error_type"] == "too_many_auth_failures"
    assert 1 <= int(r.headers["Retry-After"]) <= 30


def test_a_short_key_is_warned_about_at_start(egemaps_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(ServiceSettings(bundle=egemaps_bundle, api_keys=["ab", GOOD_KEY]))
    warnings = [r.getMessage() for r in caplog.records if "shorter than 16" in r.getMessage()]
    assert warnings and "number 1 " in warnings[0] and "ab" not in warnings[0].replace("about", "")


def test_metrics_follow_the_keys_unless_made_public(egemaps_bundle: Path, keyed_client: TestClient) -> None:
    assert keyed_client.get("/metrics").status_code == 401
    assert keyed_client.get("/metrics", headers={"X-API-Key": GOOD_KEY}).status_code == 200
    settings = ServiceSettings(bundle=egemaps_bundle, api_keys=[GOOD_KEY], metrics_public=True)
    with TestClient(create_app(settings)) as client:
        body = ready_client(client).get("/metrics").text
    assert "ser_http_requests_total" in body
    assert str(egemaps_bundle) not in body


def test_no_filesystem_path_reaches_a_client_without_a_key(
    egemaps_client: TestClient, egemaps_bundle: Path
) -> None:
    info = egemaps_client.get("/v1/info").json()
    text = json.dumps(info)
    assert str(egemaps_bundle) not in text and str(Path.home()) not in text
    assert info["bundle"]["path"] == HIDDEN_PATH
    assert info["settings"]["jobs_dir"] == HIDDEN_PATH
    assert str(egemaps_bundle) not in egemaps_client.get("/metrics").text


def test_a_client_with_a_key_sees_the_paths(keyed_client: TestClient, egemaps_bundle: Path) -> None:
    info = keyed_client.get("/v1/info", headers={"X-API-Key": GOOD_KEY}).json()
    assert info["bundle"]["path"] == str(egemaps_bundle)


def test_a_failed_load_is_reported_without_its_paths(tmp_path: Path) -> None:
    broken = tmp_path / "secret-place" / "bundle"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    settings = ServiceSettings(bundle=broken, stay_up_on_failure=True)
    with TestClient(create_app(settings, bundle_dir=broken)) as client:
        for _ in range(200):
            if client.get("/health").json().get("status") == "failed":
                break
        ready, health = client.get("/ready"), client.get("/health")
    assert ready.status_code == 503 and ready.json()["error_type"] == "model_failed"
    for text in (ready.text, health.text):
        assert "secret-place" not in text and str(tmp_path) not in text


def test_newlines_in_client_strings_cannot_forge_log_lines() -> None:
    record = logging.LogRecord(
        "service", logging.INFO, "", 0, "predicted %s for %s", ("happy", "a.wav\n2026 INFO forged"), None
    )
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in text and "a.wav\\n2026 INFO forged" in text
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["message"].endswith("a.wav\n2026 INFO forged")


def test_the_openapi_example_is_a_request_the_service_accepts(egemaps_bundle: Path) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, require_speech=True)
    with TestClient(create_app(settings)) as client:
        client = ready_client(client)
        schema = client.get("/openapi.json").json()["components"]["schemas"]["Base64AudioRequest"]
        example = schema["properties"]["audio_base64"]["examples"][0]
        r = client.post("/v1/predict", json={"audio_base64": example})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("name", "wave", "error_type"),
    [
        ("dc offset", np.full(2 * SAMPLE_RATE, 0.5, np.float32), "audio_silent"),
        (
            "square wave",
            np.sign(np.sin(2 * np.pi * 220 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)),
            "audio_no_speech",
        ),
        ("white noise", np.random.default_rng(0).uniform(-0.5, 0.5, 2 * SAMPLE_RATE), "audio_no_speech"),
    ],
)
def test_signals_that_are_no_speech_are_refused(
    egemaps_bundle: Path, name: str, wave: np.ndarray, error_type: str
) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, require_speech=True)
    with TestClient(create_app(settings)) as client:
        r = ready_client(client).post(
            "/v1/predict",
            content=wav_bytes(np.asarray(wave, np.float32) * 0.99),
            headers={"content-type": "audio/wav"},
        )
    assert r.status_code == 422, (name, r.text)
    assert r.json()["error_type"] == error_type


def test_real_speech_passes_the_speech_check(egemaps_bundle: Path, real_data: Path) -> None:
    clip = next(iter(sorted((real_data / "formats").glob("*.wav"))))
    settings = ServiceSettings(bundle=egemaps_bundle, require_speech=True)
    with TestClient(create_app(settings)) as client:
        r = ready_client(client).post(
            "/v1/predict", content=clip.read_bytes(), headers={"content-type": "audio/wav"}
        )
    assert r.status_code == 200, r.text


def test_a_refused_cors_preflight_has_the_json_shape(egemaps_bundle: Path) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, cors_origins=["https://good.example"])
    with TestClient(create_app(settings)) as client:
        r = client.options(
            "/v1/predict",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert r.status_code == 400
    assert r.json()["error_type"] == "cors_refused"


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _json_of(response: bytes) -> tuple[str, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), json.loads(body)


def test_protocol_errors_and_the_connection_cap_answer_json(egemaps_bundle: Path) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, max_connections=3)
    app = create_app(settings)
    with serve(app) as server:
        status, body = _json_of(_raw(server.port, b"GARBAGE / NOT-HTTP\r\n\r\n"))
        assert status.startswith("HTTP/1.1 400") and body["error_type"] == "invalid_http"

        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            status, body = _json_of(_raw(server.port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"))
            assert status.startswith("HTTP/1.1 503") and body["error_type"] == "overloaded"
        finally:
            for sock in held:
                sock.close()
        import time

        time.sleep(0.3)
        status_line = _raw(
            server.port, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        ).split(b"\r\n")[0]
        assert status_line.startswith(b"HTTP/1.1 200")


def test_a_wav_header_with_zero_channels_is_named(egemaps_client: TestClient) -> None:
    import struct

    data = np.zeros(8000, "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 0, 16000, 32000, 2, 16)
    wav = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + struct.pack("<I", len(data)) + data
    r = egemaps_client.post("/v1/predict", json={"audio_base64": base64.b64encode(wav).decode()})
    assert r.status_code == 422
    assert "0 channels" in r.json()["error"]
