"""Served from an eGeMAPS bundle fitted on real RAVDESS speech; every file of ``$SER_TEST_DATA/formats``
through multipart, JSON base64 and the batch endpoint."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import assert_valid_prediction, ready_client

from service.app import create_app
from service.settings import ServiceSettings
from shared.audio import decode_audio
from shared.backbones import BackboneSpec, build_backbone

pytestmark = pytest.mark.realdata

#: RAVDESS emotion codes kept in ravdess16k (the six target emotions).
RAVDESS_EMOTIONS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fear", "07": "disgust"}
ACTORS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04")


@pytest.fixture(scope="session")
def ravdess_bundle(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eGeMAPS bundle fitted on four RAVDESS actors (two female, two male; 176 clips)."""
    from training.recipe import fit_bundle

    files = sorted(f for actor in ACTORS for f in (real_data / "ravdess16k" / actor).glob("*.flac"))
    assert len(files) == 44 * len(ACTORS)
    labels = [RAVDESS_EMOTIONS[f.name.split("-")[2]] for f in files]
    backbone = build_backbone(BackboneSpec(kind="egemaps"))
    return fit_bundle(
        backbone.embed_batch([decode_audio(f) for f in files]),
        labels,
        backbone,
        tmp_path_factory.mktemp("ravdess-artifacts"),
        name="ravdess-egemaps",
        version="test",
        training={"corpus": "ravdess", "actors": list(ACTORS), "n_utterances": len(files)},
    )


@pytest.fixture(scope="session")
def ravdess_client(ravdess_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServiceSettings(bundle=ravdess_bundle))) as client:
        yield ready_client(client)


def test_every_real_format_is_predicted_the_same_way_through_every_input_path(
    ravdess_client: TestClient, real_data: Path
) -> None:
    paths = sorted((real_data / "formats").iterdir())
    assert len(paths) == 9
    batch = ravdess_client.post(
        "/v1/predict/batch",
        files=[("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths],
    )
    assert batch.status_code == 200
    items = batch.json()["results"]
    assert [item["filename"] for item in items] == [p.name for p in paths]
    for path, item in zip(paths, items, strict=True):
        data = path.read_bytes()
        multipart = ravdess_client.post("/v1/predict", files={"file": (path.name, data)})
        as_json = ravdess_client.post("/v1/predict", json={"audio_base64": base64.b64encode(data).decode()})
        assert multipart.status_code == 200, (path.name, multipart.text)
        assert as_json.status_code == 200, (path.name, as_json.text)
        assert item["ok"], (path.name, item)
        bodies = [multipart.json(), as_json.json(), item["result"]]
        for body in bodies:
            assert_valid_prediction(body)
            assert body["model"] == {"name": "ravdess-egemaps", "version": "test"}
            assert 1.0 < body["duration_s"] < 6.0
        for other in bodies[1:]:
            assert other["label"] == bodies[0]["label"]
            np.testing.assert_allclose(
                list(other["probabilities"].values()), list(bodies[0]["probabilities"].values()), atol=1e-9
            )


def test_held_out_actors_are_recognised_better_than_chance(
    ravdess_client: TestClient, real_data: Path
) -> None:
    clips = sorted(
        f for actor in ("Actor_10", "Actor_11") for f in (real_data / "ravdess16k" / actor).glob("*.flac")
    )
    correct = 0
    for start in range(0, len(clips), 16):
        chunk = clips[start : start + 16]
        response = ravdess_client.post(
            "/v1/predict/batch", files=[("files", (p.name, p.read_bytes(), "audio/flac")) for p in chunk]
        )
        assert response.status_code == 200
        for path, item in zip(chunk, response.json()["results"], strict=True):
            assert item["ok"], item
            assert_valid_prediction(item["result"])
            correct += item["result"]["label"] == RAVDESS_EMOTIONS[path.name.split("-")[2]]
    # Six classes: chance is 1/6. Four training actors give about a third right on unseen speakers.
    assert len(clips) == 88
    assert correct / len(clips) >= 0.25
