"""The HTTP API served in-process from a real eGeMAPS bundle (``egemaps_bundle``): predictions through
every input path, bad inputs, readiness during a slow load, API keys, CORS, request ids, info, metrics
and the OpenAPI schema."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import TEST_UPLOAD_LIMIT, ModelGate, assert_valid_prediction, ready_client, wait_until
from support import synthetic_clip, wav_bytes

from service.app import create_app
from service.engine import load_predictor
from service.routes import HIDDEN_PATH, without_paths
from service.settings import ServiceSettings
from shared.audio import load_audio
from shared.errors import BundleNotFoundError
from shared.predictor import Predictor


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict_multipart(client: TestClient, name: str, data: bytes, path: str = "/v1/predict"):
    return client.post(path, files={"file": (name, data, "application/octet-stream")})


# --- predictions ---------------------------------------------------------------------------------


def test_every_format_gets_a_valid_prediction_and_all_input_paths_agree(
    egemaps_client: TestClient, clip_formats: dict[str, bytes]
) -> None:
    names = sorted(clip_formats)
    batch = egemaps_client.post(
        "/v1/predict/batch",
        files=[("files", (n, clip_formats[n], "application/octet-stream")) for n in names],
    )
    assert batch.status_code == 200, batch.text
    items = batch.json()["results"]
    assert [it["filename"] for it in items] == names
    assert [it["index"] for it in items] == list(range(len(names)))
    for name, item in zip(names, items, strict=True):
        multipart = predict_multipart(egemaps_client, name, clip_formats[name])
        as_json = egemaps_client.post(
            "/v1/predict", json={"audio_base64": b64(clip_formats[name]), "filename": name}
        )
        alias = predict_multipart(egemaps_client, name, clip_formats[name], path="/emotion_predict")
        for response in (multipart, as_json, alias):
            assert response.status_code == 200, (name, response.text)
            assert_valid_prediction(response.json())
        assert item["ok"] and item["status"] == 200 and item["error"] is None
        assert_valid_prediction(item["result"])
        reference = multipart.json()
        for other in (as_json.json(), alias.json(), item["result"]):
            assert other["label"] == reference["label"]
            assert other["duration_s"] == reference["duration_s"]
            np.testing.assert_allclose(
                list(other["probabilities"].values()), list(reference["probabilities"].values()), atol=1e-9
            )
        assert reference["model"] == {"name": "synthetic", "version": "1"}
        assert reference["duration_s"] == pytest.approx(2.0, abs=0.15)


def test_response_matches_the_predictor_and_reports_timings(
    egemaps_client: TestClient, egemaps_bundle: Path
) -> None:
    data = wav_bytes(synthetic_clip("sad", 1.8, seed=21))
    response = predict_multipart(egemaps_client, "sad.wav", data)
    assert response.status_code == 200
    body = response.json()
    expected = Predictor.from_bundle(egemaps_bundle).predict(load_audio(data))
    assert body["label"] == expected.label
    np.testing.assert_allclose(
        [body["probabilities"][k] for k in expected.probabilities],
        list(expected.probabilities.values()),
        atol=1e-9,
    )
    timings = body["timings_ms"]
    assert set(timings) == {"decode", "queue", "inference", "total"}
    assert all(v >= 0 for v in timings.values())
    assert timings["total"] >= timings["inference"]
    assert body["batch_size"] >= 1
    assert body["request_id"] == response.headers["x-request-id"]


def test_raw_audio_body_is_accepted(egemaps_client: TestClient, good_wav: bytes) -> None:
    response = egemaps_client.post("/v1/predict", content=good_wav, headers={"Content-Type": "audio/wav"})
    assert response.status_code == 200
    assert_valid_prediction(response.json())


def test_base64_variants_are_accepted(egemaps_client: TestClient, good_wav: bytes) -> None:
    wrapped = "\n".join(b64(good_wav)[i : i + 76] for i in range(0, len(b64(good_wav)), 76))
    data_url = "data:audio/wav;base64," + b64(good_wav)
    urlsafe = base64.urlsafe_b64encode(good_wav).decode()
    labels = set()
    for text in (wrapped, data_url, urlsafe):
        response = egemaps_client.post("/v1/predict", json={"audio_base64": text})
        assert response.status_code == 200, response.text
        labels.add(response.json()["label"])
    assert len(labels) == 1


def test_batch_keeps_order_and_reports_each_error(egemaps_client: TestClient, good_wav: bytes) -> None:
    files = [
        ("files", ("good1.wav", good_wav, "audio/wav")),
        ("files", ("short.wav", wav_bytes(synthetic_clip("sad", 0.2)), "audio/wav")),
        ("files", ("notes.wav", b"just some text, not audio at all\n" * 10, "audio/wav")),
        ("files", ("good2.wav", wav_bytes(synthetic_clip("fear", 1.2, seed=4)), "audio/wav")),
    ]
    response = egemaps_client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200
    items = response.json()["results"]
    assert [(it["filename"], it["ok"], it["status"]) for it in items] == [
        ("good1.wav", True, 200),
        ("short.wav", False, 422),
        ("notes.wav", False, 415),
        ("good2.wav", True, 200),
    ]
    assert items[1]["error"] == {
        "error": "audio is 0.20 s long; the minimum is 0.50 s",
        "error_type": "audio_too_short",
    }
    assert items[2]["error"]["error_type"] == "unsupported_format"
    for item in (items[0], items[3]):
        assert_valid_prediction(item["result"])


def test_batch_refuses_bad_requests(
    egemaps_client: TestClient, good_wav: bytes, egemaps_settings: ServiceSettings
) -> None:
    n = egemaps_settings.max_batch_files + 1
    too_many = egemaps_client.post(
        "/v1/predict/batch", files=[("files", (f"{i}.wav", good_wav, "audio/wav")) for i in range(n)]
    )
    assert too_many.status_code == 422
    assert too_many.json() == {
        "error": f"a batch may hold at most {n - 1} files, got {n}",
        "error_type": "too_many_files",
    }
    as_json = egemaps_client.post("/v1/predict/batch", json={"audio_base64": b64(good_wav)})
    assert as_json.status_code == 415
    assert as_json.json()["error_type"] == "unsupported_media_type"
    no_files = egemaps_client.post("/v1/predict/batch", files={"other": ("a.wav", good_wav, "audio/wav")})
    assert no_files.status_code == 422
    assert no_files.json()["error_type"] == "invalid_request"


# --- bad inputs ----------------------------------------------------------------------------------


def _multipart(name: str, data: bytes) -> dict:
    return {"files": {"file": (name, data, "application/octet-stream")}}


def _truncated_wav() -> bytes:
    return wav_bytes(synthetic_clip("happy", 1.0))[:30]


BAD_INPUTS = {
    "empty file": (_multipart("empty.wav", b""), 422, "audio_decode_error", "empty input (0 bytes)"),
    "empty body": ({"content": b""}, 422, "invalid_request", "the request body is empty"),
    "random bytes": (
        _multipart("noise.bin", np.random.default_rng(7).bytes(20000)),
        415,
        "unsupported_format",
        "not a recognised audio file",
    ),
    "text named .wav": (
        _multipart("speech.wav", b"this is a transcript, not a recording\n" * 40),
        415,
        "unsupported_format",
        "this is text, not audio",
    ),
    "truncated wav header": (_multipart("cut.wav", _truncated_wav()), 422, "audio_decode_error", "WAV"),
    "0.2 s clip": (
        _multipart("short.wav", wav_bytes(synthetic_clip("happy", 0.2))),
        422,
        "audio_too_short",
        "audio is 0.20 s long; the minimum is 0.50 s",
    ),
    "60 s clip": (
        _multipart("long.wav", wav_bytes(synthetic_clip("happy", 60.0))),
        422,
        "audio_too_long",
        "longer than the maximum of 30.00 s",
    ),
    "3 s of digital silence": (
        _multipart("silence.wav", wav_bytes(np.zeros(48000, dtype=np.float32))),
        422,
        "audio_silent",
        "audio is silent",
    ),
    "over the byte limit": (
        _multipart("huge.wav", b"RIFF" + bytes(TEST_UPLOAD_LIMIT + 10)),
        413,
        "payload_too_large",
        f"larger than the limit of {TEST_UPLOAD_LIMIT} bytes",
    ),
    "missing file field": (
        {"files": {"audio": ("a.wav", wav_bytes(synthetic_clip("happy", 1.0)), "audio/wav")}},
        422,
        "invalid_request",
        "the multipart body has no 'file' field",
    ),
    "file field as text": (
        {"data": {"file": "hello"}, "files": {"x": ("x", b"x")}},
        422,
        "invalid_request",
        "must be a file upload",
    ),
    "invalid base64": (
        {"json": {"audio_base64": "not base64 at all!"}},
        422,
        "invalid_base64",
        "not valid base64",
    ),
    "json without audio": (
        {"json": {"audio": "UklGRg=="}},
        422,
        "invalid_request",
        "audio_base64: Field required",
    ),
    "malformed json": (
        {"content": b'{"audio_base64": ', "headers": {"Content-Type": "application/json"}},
        422,
        "invalid_request",
        "invalid request",
    ),
    "unsupported content type": (
        {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
        "Content-Type 'text/plain' is not accepted",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_the_service_keeps_answering(
    egemaps_client: TestClient, good_wav: bytes, case: str
) -> None:
    kwargs, status, error_type, message = BAD_INPUTS[case]
    response = egemaps_client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert message in body["error"]
    assert response.headers["x-request-id"]
    assert egemaps_client.get("/health").json() == {"status": "ok", "model_state": "ready"}
    good = predict_multipart(egemaps_client, "good.wav", good_wav)
    assert good.status_code == 200
    assert_valid_prediction(good.json())


def test_unknown_route_and_method_use_the_error_shape(egemaps_client: TestClient) -> None:
    assert egemaps_client.get("/v1/nope").json() == {"error": "Not Found", "error_type": "not_found"}
    response = egemaps_client.get("/v1/predict")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed", "error_type": "method_not_allowed"}


# --- start-up, readiness, shutdown -------------------------------------------------------------------


def test_ready_is_503_while_loading_and_200_after_warmup(
    egemaps_settings: ServiceSettings, good_wav: bytes
) -> None:
    gate = threading.Event()
    loads: list[str] = []

    def slow_load(settings: ServiceSettings, bundle_dir: Path) -> Predictor:
        loads.append(str(bundle_dir))
        gate.wait(60)
        return load_predictor(settings, bundle_dir)

    app = create_app(egemaps_settings, predictor_factory=slow_load)
    with TestClient(app) as client:
        wait_until(lambda: bool(loads))
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "1"
        assert ready.json() == {
            "error": "the model is not ready yet (loading); retry shortly",
            "error_type": "not_ready",
        }
        assert client.get("/health").json() == {"status": "ok", "model_state": "loading"}
        early = predict_multipart(client, "a.wav", good_wav)
        assert early.status_code == 503 and early.json()["error_type"] == "not_ready"
        assert "retry-after" in early.headers
        info = client.get("/v1/info").json()
        assert info["model_state"] == "loading" and info["model"] is None
        gate.set()
        ready_client(client)
        assert client.get("/ready").json() == {
            "status": "ready",
            "model": {"name": "synthetic", "version": "1"},
        }
        assert client.get("/health").json()["model_state"] == "ready"
        assert predict_multipart(client, "a.wav", good_wav).status_code == 200
        engine = app.state.engine
    assert engine.state == "stopped"
    assert loads == [str(egemaps_settings.bundle)]


def test_a_bundle_that_fails_verification_leaves_the_service_up_but_not_ready(
    egemaps_bundle: Path, tmp_path: Path, good_wav: bytes
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(egemaps_bundle, damaged)
    with open(damaged / "classifier.skops", "ab") as fh:
        fh.write(b"\0")
    with TestClient(create_app(ServiceSettings(bundle=damaged))) as client:
        wait_until(lambda: client.get("/health").json()["model_state"] == "failed")
        health = client.get("/health").json()
        assert health["status"] == "failed" and "BundleIntegrityError" in health["error"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and "Retry-After" not in ready.headers  # retrying will not help
        assert ready.json()["error_type"] == "model_failed"
        assert "BundleIntegrityError" in ready.json()["error"]
        assert "does not match its recorded sha256" in ready.json()["error"]
        assert predict_multipart(client, "a.wav", good_wav).status_code == 503


def test_a_missing_bundle_fails_the_start_up(tmp_path: Path) -> None:
    with (
        pytest.raises(BundleNotFoundError, match="does not exist"),
        TestClient(create_app(ServiceSettings(bundle=tmp_path / "nothing"))),
    ):
        pass


def test_the_newest_bundle_under_an_artifacts_root_is_served(egemaps_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    for version, created in (("1", "2026-01-01T00:00:00+00:00"), ("2", "2026-02-01T00:00:00+00:00")):
        target = root / "emo" / version
        shutil.copytree(egemaps_bundle, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest.update(version=version, created_at=created)
        (target / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(ServiceSettings(bundle=root))) as client:
        ready_client(client)
        assert client.get("/ready").json()["model"] == {"name": "synthetic", "version": "2"}


# --- operations -----------------------------------------------------------------------------------


def test_api_keys_guard_the_v1_routes_and_cors_allows_the_configured_origin(
    egemaps_bundle: Path, good_wav: bytes
) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, api_keys="k1, k2", cors_origins="http://app.example")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        ready_client(client)
        missing = predict_multipart(client, "a.wav", good_wav)
        assert missing.status_code == 401
        assert missing.json() == {
            "error": "no API key was sent in the X-API-Key header",
            "error_type": "unauthorized",
        }
        assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
        wrong = client.post("/v1/predict", files={"file": ("a.wav", good_wav)}, headers={"X-API-Key": "k3"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "a valid API key is required in the X-API-Key header"
        for path in ("/emotion_predict", "/v1/predict/batch"):
            assert client.post(path, files={"file": ("a.wav", good_wav)}).status_code == 401
        assert client.get("/v1/info").status_code == 401
        ok = client.post("/v1/predict", files={"file": ("a.wav", good_wav)}, headers={"X-API-Key": "k2"})
        assert ok.status_code == 200
        info = client.get("/v1/info", headers={"X-API-Key": "k1"}).json()
        assert info["settings"]["api_keys_configured"] == 2
        assert "k1" not in json.dumps(info)
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/metrics").status_code == 401, "the metrics follow the keys"
        assert client.get("/metrics", headers={"X-API-Key": "k1"}).status_code == 200

        preflight = client.options(
            "/v1/predict",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = client.options(
            "/v1/predict", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
        simple = client.get("/health", headers={"Origin": "http://app.example"})
        assert simple.headers["access-control-allow-origin"] == "http://app.example"
        assert "X-Request-ID" in simple.headers["access-control-expose-headers"]


def test_request_ids_are_returned_and_on_every_log_line(egemaps_client: TestClient, good_wav: bytes) -> None:
    from service.logs import RequestIdFilter

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    logging.getLogger("service").addHandler(handler)
    try:
        response = egemaps_client.post(
            "/v1/predict", files={"file": ("a.wav", good_wav)}, headers={"X-Request-ID": "client-id-42"}
        )
        refused = egemaps_client.post(
            "/v1/predict", files={"file": ("a.wav", b"")}, headers={"X-Request-ID": "bad id!"}
        )
    finally:
        logging.getLogger("service").removeHandler(handler)
    assert response.headers["x-request-id"] == "client-id-42"
    assert response.json()["request_id"] == "client-id-42"
    generated = refused.headers["x-request-id"]
    assert generated != "bad id!" and len(generated) == 32
    mine = [r for r in records if r.request_id == "client-id-42"]
    assert {r.name for r in mine} >= {"service.access", "service.routes"}
    assert any("predicted" in r.getMessage() for r in mine)
    assert any(r.request_id == generated and "audio_decode_error" in r.getMessage() for r in records)
    assert all(r.request_id != "-" for r in records if r.name == "service.access")


def test_json_log_lines_carry_the_request_id() -> None:
    from service.logs import JsonFormatter, RequestIdFilter, request_id_var

    token = request_id_var.set("rid-7")
    try:
        record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
        record.status = 200
        RequestIdFilter().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "rid-7"
    assert line["message"] == "hello world"
    assert line["level"] == "INFO" and line["status"] == 200


def test_info_echoes_the_bundle_and_the_effective_settings(
    egemaps_client: TestClient, egemaps_settings: ServiceSettings
) -> None:
    info = egemaps_client.get("/v1/info").json()
    assert info["model_state"] == "ready"
    assert info["model"] == {"name": "synthetic", "version": "1"}
    assert info["labels"] == ["neutral", "happy", "sad", "angry", "fear", "disgust"]
    assert info["bundle"]["backbone"]["kind"] == "egemaps"
    assert info["bundle"]["training"]["corpus"] == "synthetic"
    assert info["bundle"]["classifier"] == "numpy arrays (classifier.npz)"
    assert isinstance(info["metrics"], dict)
    settings = info["settings"]
    assert settings["max_upload_bytes"] == TEST_UPLOAD_LIMIT
    for key in (
        "bundle",
        "host",
        "port",
        "device",
        "min_seconds",
        "max_seconds",
        "max_batch_size",
        "max_batch_wait_ms",
        "queue_depth",
        "worker_threads",
        "cors_origins",
        "log_json",
    ):
        assert key in settings, key
    assert settings["min_seconds"] == 0.5 and settings["max_seconds"] == 30.0
    assert "api_keys" not in settings and settings["api_keys_configured"] == 0
    assert "WebM" in info["accepted_formats"]
    assert info["load_seconds"] > 0
    # The encoder options the settings build, whole; without API keys, the cache folders are not shown.
    assert info["encoder"] == without_paths(egemaps_settings.encoder_options().to_dict())
    assert info["encoder"]["device"] == "cpu" and info["encoder"]["max_batch_size"] == 8
    assert info["encoder"]["cache_dir"] == info["encoder"]["onnx_cache_dir"] == HIDDEN_PATH


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " ") or line.startswith(line_start + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_outcomes_latencies_queue_and_batches(
    egemaps_client: TestClient, good_wav: bytes
) -> None:
    before = egemaps_client.get("/metrics").text
    ok_key = 'ser_predictions_total{endpoint="/v1/predict",outcome="ok"}'
    short_key = 'ser_predictions_total{endpoint="/v1/predict",outcome="audio_too_short"}'
    for _ in range(3):
        assert predict_multipart(egemaps_client, "a.wav", good_wav).status_code == 200
    predict_multipart(egemaps_client, "s.wav", wav_bytes(synthetic_clip("sad", 0.1)))
    response = egemaps_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert _metric(after, ok_key) - _metric(before, ok_key) == 3
    assert _metric(after, short_key) - _metric(before, short_key) == 1
    assert _metric(after, "ser_batch_size_count") - _metric(before, "ser_batch_size_count") >= 3
    assert _metric(after, 'ser_prediction_stage_seconds_count{stage="inference"}') >= 3
    route = 'ser_http_requests_total{method="POST",route="/v1/predict",status="200"}'
    assert _metric(after, route) - _metric(before, route) == 3
    assert 'ser_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/v1/predict"}' in after
    assert _metric(after, "ser_queue_depth") == 0
    assert _metric(after, "ser_queue_capacity") == 64
    assert _metric(after, "ser_model_ready") == 1
    assert "ser_model_info{" in after and 'name="synthetic"' in after


def test_openapi_lists_every_endpoint_with_its_models_and_errors(egemaps_client: TestClient) -> None:
    schema = egemaps_client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        "/v1/predict": "post",
        "/v1/predict/batch": "post",
        "/emotion_predict": "post",
        "/health": "get",
        "/ready": "get",
        "/v1/info": "get",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    components = schema["components"]["schemas"]
    for name in (
        "PredictionResponse",
        "BatchResponse",
        "BatchItem",
        "ErrorBody",
        "Base64AudioRequest",
        "InfoResponse",
    ):
        assert name in components, name

    def ref(op: dict, status: str) -> str:
        return op["responses"][status]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    for path in ("/v1/predict", "/emotion_predict"):
        op = paths[path]["post"]
        content = op["requestBody"]["content"]
        assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
        assert content["application/json"]["schema"]["$ref"].endswith("/Base64AudioRequest")
        assert ref(op, "200") == "PredictionResponse"
        for status in ("401", "413", "415", "422", "503"):
            assert ref(op, status) == "ErrorBody", (path, status)
    assert paths["/emotion_predict"]["post"]["deprecated"] is True
    batch = paths["/v1/predict/batch"]["post"]
    assert (
        batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["files"]["type"]
        == "array"
    )
    assert ref(batch, "200") == "BatchResponse"
    assert ref(paths["/ready"]["get"], "503") == "ErrorBody"
    assert ref(paths["/v1/info"]["get"], "200") == "InfoResponse"
    assert "X-API-Key" in json.dumps(schema["components"].get("securitySchemes", {}))
    docs = egemaps_client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_queue_admission_control_timeouts_and_limits_follow_the_settings(egemaps_bundle: Path) -> None:
    """queue_depth=1, max_batch_size=1, request_timeout_s=2, min/max 1-3 s, on the real predictor, whose
    predict_batch is held at a gate so that the queue state is known."""
    gate = ModelGate()
    settings = ServiceSettings(
        bundle=egemaps_bundle,
        queue_depth=1,
        max_batch_size=1,
        request_timeout_s=2.0,
        min_seconds=1.0,
        max_seconds=3.0,
        retry_after_s=3,
    )
    app = create_app(settings, predictor_factory=gate.factory)
    clip = wav_bytes(synthetic_clip("happy", 1.5, seed=1))
    with TestClient(app) as client:
        ready_client(client)
        short = predict_multipart(client, "a.wav", wav_bytes(synthetic_clip("happy", 0.8)))
        assert short.json() == {
            "error": "audio is 0.80 s long; the minimum is 1.00 s",
            "error_type": "audio_too_short",
        }
        long = predict_multipart(client, "a.wav", wav_bytes(synthetic_clip("happy", 4.0)))
        assert long.status_code == 422 and "maximum of 3.00 s" in long.json()["error"]

        engine = app.state.engine
        gate.close()
        outcomes: dict[str, object] = {}

        def post(key: str) -> None:
            outcomes[key] = predict_multipart(client, f"{key}.wav", clip)

        running = threading.Thread(target=post, args=("running",))
        running.start()
        assert gate.entered.wait(10)
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        wait_until(lambda: engine.batcher.queue_size == 1)
        refused = predict_multipart(client, "c.wav", clip)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "3"
        assert refused.json() == {
            "error": "the inference queue is full (1 utterances waiting); retry shortly",
            "error_type": "overloaded",
        }
        running.join(10)
        queued.join(10)
        for key in ("running", "queued"):
            response = outcomes[key]
            assert response.status_code == 503, key  # type: ignore[attr-defined]
            assert response.json() == {  # type: ignore[attr-defined]
                "error": "the prediction took longer than 2 s; retry shortly",
                "error_type": "timeout",
            }
        gate.open()
        # The queued utterance's client is gone: the batcher skips it instead of running the model.
        wait_until(lambda: engine.batcher.stats.skipped_cancelled == 1)
        after = predict_multipart(client, "d.wav", clip)
        assert after.status_code == 200
        metrics = client.get("/metrics").text
        assert 'ser_predictions_total{endpoint="/v1/predict",outcome="overloaded"} 1.0' in metrics
        assert 'ser_predictions_total{endpoint="/v1/predict",outcome="timeout"} 2.0' in metrics


def test_an_unexpected_model_failure_is_a_500_without_details_and_the_service_carries_on(
    egemaps_bundle: Path, good_wav: bytes
) -> None:
    def failing_load(settings: ServiceSettings, bundle_dir: Path) -> Predictor:
        predictor = load_predictor(settings, bundle_dir)
        real = predictor.predict_batch

        def predict_batch(waves):  # type: ignore[no-untyped-def]
            # Fails for clips of exactly 2.5 s (after warm-up, which uses 1 s): a bug on one input.
            if any(len(w) == 40000 for w in waves):
                raise RuntimeError("secret internal detail")
            return real(waves)

        predictor.predict_batch = predict_batch  # type: ignore[method-assign]
        return predictor

    bad_clip = wav_bytes(synthetic_clip("sad", 2.5, seed=2))
    with TestClient(
        create_app(ServiceSettings(bundle=egemaps_bundle), predictor_factory=failing_load)
    ) as client:
        ready_client(client)
        response = predict_multipart(client, "bug.wav", bad_clip)
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error", "error_type": "internal_error"}
        assert response.headers["x-request-id"]
        batch = client.post(
            "/v1/predict/batch", files=[("files", ("ok.wav", good_wav)), ("files", ("bug.wav", bad_clip))]
        ).json()["results"]
        assert [(item["ok"], item["status"]) for item in batch] == [(True, 200), (False, 500)]
        assert batch[1]["error"] == {"error": "internal server error", "error_type": "internal_error"}
        assert client.get("/health").status_code == 200
        assert predict_multipart(client, "ok.wav", good_wav).status_code == 200
        metrics = client.get("/metrics").text
        assert 'ser_predictions_total{endpoint="/v1/predict",outcome="internal_error"} 1.0' in metrics
        assert 'ser_predictions_total{endpoint="/v1/predict/batch",outcome="internal_error"} 1.0' in metrics
