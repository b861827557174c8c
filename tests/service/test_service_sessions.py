"""Sessions over HTTP: session_id and batch sessions, the bounded store, and the uncertainty fields."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import assert_valid_prediction, ready_client
from support import synthetic_clip, wav_bytes

from service.app import create_app
from service.errors import InvalidSessionIdError
from service.sessions import SessionStore, check_session_id
from service.settings import ServiceSettings
from shared.constants import EMOTIONS
from shared.session import MIN_SESSION_UTTERANCES

CLIPS = [wav_bytes(synthetic_clip(EMOTIONS[i % 6], 1.3, seed=900 + i)) for i in range(MIN_SESSION_UTTERANCES)]


def predict(client: TestClient, data: bytes, **params: str):
    return client.post("/v1/predict", params=params, files={"file": ("clip.wav", data, "audio/wav")})


def test_a_session_switches_to_its_own_statistics_at_the_minimum(egemaps_client: TestClient) -> None:
    bodies = []
    for data in CLIPS:
        response = predict(egemaps_client, data, session_id="caller-1")
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    for n, body in enumerate(bodies, start=1):
        assert_valid_prediction(body)
        assert body["session"] == {
            "id": "caller-1",
            "utterances": n,
            "minimum_utterances": MIN_SESSION_UTTERANCES,
        }
        assert body["classifier"] == ("session" if n >= MIN_SESSION_UTTERANCES else "single")
    alone = predict(egemaps_client, CLIPS[0]).json()
    assert alone["classifier"] == "single" and alone["session"] is None
    assert alone["probabilities"] == bodies[0]["probabilities"]  # below the minimum: the same classifier
    assert isinstance(alone["uncertain"], bool) and 0 <= alone["ood_percentile"] <= 100
    assert alone["uncertain"] == bool(alone["uncertain_reasons"])
    assert egemaps_client.delete("/v1/sessions/caller-1").status_code == 204
    gone = egemaps_client.delete("/v1/sessions/caller-1")
    assert gone.status_code == 404 and gone.json()["error_type"] == "not_found"
    again = predict(egemaps_client, CLIPS[0], session_id="caller-1").json()
    assert again["session"]["utterances"] == 1  # a deleted session starts afresh


def test_a_batch_sent_as_one_session_is_normalised_with_its_own_statistics(
    egemaps_client: TestClient,
) -> None:
    files = [("files", (f"c{i}.wav", data, "audio/wav")) for i, data in enumerate(CLIPS)]
    files.append(("files", ("bad.wav", b"not audio", "audio/wav")))
    body = egemaps_client.post("/v1/predict/batch", params={"session": "true"}, files=files).json()
    results = body["results"]
    assert [r["ok"] for r in results] == [True] * len(CLIPS) + [False]
    for item in results[:-1]:
        assert item["result"]["classifier"] == "session"
        assert item["result"]["session"] == {"id": None, "utterances": len(CLIPS), "minimum_utterances": 10}
    plain = egemaps_client.post("/v1/predict/batch", files=files[:3]).json()["results"]
    assert {r["result"]["classifier"] for r in plain} == {"single"}
    short = egemaps_client.post("/v1/predict/batch", params={"session": "true"}, files=files[:3]).json()
    assert [r["result"]["probabilities"] for r in short["results"]] == [
        r["result"]["probabilities"] for r in plain
    ]
    assert {r["result"]["session"]["utterances"] for r in short["results"]} == {3}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x" * 65, "at most 64"),
        ("has space", "malformed"),
        ("-leading-dash", "malformed"),
        ("semi;colon", "malformed"),
        ("", "malformed"),
    ],
)
def test_a_bad_session_id_is_a_typed_422(egemaps_client: TestClient, value: str, message: str) -> None:
    for response in (
        predict(egemaps_client, CLIPS[0], session_id=value),
        egemaps_client.post(
            "/v1/predict/batch",
            params={"session_id": value},
            files=[("files", ("a.wav", CLIPS[0], "audio/wav"))],
        ),
    ):
        assert response.status_code == 422
        assert response.json()["error_type"] == "invalid_session_id"
        assert message in response.json()["error"]
    twice = egemaps_client.post(
        "/v1/predict?session_id=a&session_id=b", files={"file": ("a.wav", CLIPS[0], "audio/wav")}
    )
    assert twice.status_code == 422 and "more than once" in twice.json()["error"]


def test_a_full_store_evicts_the_oldest_session_and_says_so(egemaps_bundle: Path, caplog) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, device="cpu", session_max=2)
    with (
        TestClient(create_app(settings)) as client,
        caplog.at_level(logging.WARNING, logger="service.sessions"),
    ):
        ready_client(client)
        for name in ("a", "b", "c", "d"):
            assert predict(client, CLIPS[0], session_id=name).status_code == 200
        metrics = client.get("/metrics").text
        assert 'ser_session_evictions_total{reason="capacity"} 2.0' in metrics
        assert "ser_sessions 2.0" in metrics
        assert "evicted the least recently used session a" in caplog.text
        assert "evicted the least recently used session b" in caplog.text
        assert predict(client, CLIPS[1], session_id="c").json()["session"]["utterances"] == 2  # kept
        assert predict(client, CLIPS[1], session_id="a").json()["session"]["utterances"] == 1  # started anew
        info = client.get("/v1/info").json()
        assert info["settings"]["session_max"] == 2
        assert info["bundle"]["session_minimum"] == MIN_SESSION_UTTERANCES
        assert info["bundle"]["uncertainty"]["confidence_threshold"] == pytest.approx(0.35)


def test_the_store_is_bounded_by_count_memory_and_idle_time() -> None:
    now = [0.0]
    evicted: list[str] = []
    store = SessionStore(
        1024, max_sessions=1000, memory_mb=0.1, ttl_s=60, on_evict=evicted.append, clock=lambda: now[0]
    )
    assert store.session_bytes == 3 * 1024 * 8 and store.capacity == 4  # 0.1 MiB holds 4 such sessions
    x = np.ones((1, 1024))
    for i in range(50):
        store.add(f"s{i}", x)
        assert len(store) <= store.capacity and store.nbytes <= 0.1 * 1024 * 1024
    assert evicted == ["capacity"] * 46 and sorted(store._entries) == ["s46", "s47", "s48", "s49"]
    now[0] = 30.0
    store.add("s49", x)  # used again: it outlives the others
    now[0] = 61.0
    assert store.get("s46") is None and store.get("s49") is not None
    assert evicted.count("expired") == 3 and len(store) == 1
    stats = store.add("s49", 2 * x)
    assert stats.utterances == 3 and stats.total[0] == 4.0
    stats.add(x)  # a copy: the store's own statistics do not change
    assert store.get("s49").utterances == 3
    now[0] = 200.0
    assert store.delete("s49") is False  # expired: gone, whatever the sweep's timing
    assert evicted.count("expired") == 4


def test_session_ids_are_checked() -> None:
    assert check_session_id("call-42:caller_1.a") == "call-42:caller_1.a"
    for bad in ("", "a" * 65, "a/b", "ünïcode", "a b", "abc\n", "abc\r\nforged log line"):
        with pytest.raises(InvalidSessionIdError):
            check_session_id(bad)


def test_sessions_belong_to_their_api_key_and_batch_is_an_ordinary_id(egemaps_bundle: Path) -> None:
    settings = ServiceSettings(bundle=egemaps_bundle, device="cpu", api_keys="k1,k2")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        ready_client(client)

        def send(key: str, session_id: str) -> dict:
            response = client.post(
                "/v1/predict",
                params={"session_id": session_id},
                headers={"X-API-Key": key},
                files={"file": ("a.wav", CLIPS[0], "audio/wav")},
            )
            assert response.status_code == 200, response.text
            return response.json()["session"]

        assert send("k1", "shared-name")["utterances"] == 1
        assert send("k1", "shared-name")["utterances"] == 2
        assert send("k2", "shared-name")["utterances"] == 1  # another client's session of the same name
        assert client.delete("/v1/sessions/shared-name", headers={"X-API-Key": "k2"}).status_code == 204
        assert send("k1", "shared-name")["utterances"] == 3  # k2 deleted only its own
        assert send("k1", "batch") == {"id": "batch", "utterances": 1, "minimum_utterances": 10}
        assert send("k1", "batch")["utterances"] == 2
        assert client.delete("/v1/sessions/batch", headers={"X-API-Key": "k1"}).status_code == 204
        assert client.delete("/v1/sessions/batch").status_code == 401
