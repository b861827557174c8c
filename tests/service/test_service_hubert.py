"""Serving a bundle built on a tiny HuBERT in a local folder, with the Hugging Face libraries offline and
every network connection refused."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import assert_valid_prediction, ready_client, wait_until

from service.app import create_app
from service.settings import ServiceSettings


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, and any attempt to open an internet socket fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_connect = socket.socket.connect

    def refuse(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_tiny_hubert_bundle_is_served_offline(
    hubert_bundle: Path, clip_formats: dict[str, bytes], no_network: None
) -> None:
    with TestClient(create_app(ServiceSettings(bundle=hubert_bundle, device="cpu"))) as client:
        ready_client(client)
        info = client.get("/v1/info").json()
        assert info["bundle"]["backbone"]["kind"] == "hubert"
        assert info["settings"]["hf_offline_effective"] is True
        # SER_BACKEND=auto chose by this machine, and says which and why.
        precision = info["precision"]
        assert precision["backend"] in ("torch", "onnx-int8") and precision["reason"]
        assert precision["dtype"] == client.app.state.engine.predictor.backbone.dtype
        names = sorted(clip_formats)
        batch = client.post(
            "/v1/predict/batch",
            files=[("files", (n, clip_formats[n], "application/octet-stream")) for n in names],
        ).json()["results"]
        for name, item in zip(names, batch, strict=True):
            multipart = client.post("/v1/predict", files={"file": (name, clip_formats[name])})
            as_json = client.post(
                "/v1/predict", json={"audio_base64": base64.b64encode(clip_formats[name]).decode()}
            )
            assert multipart.status_code == as_json.status_code == 200, name
            assert item["ok"], item
            results = [multipart.json(), as_json.json(), item["result"]]
            for body in results:
                assert_valid_prediction(body)
                assert body["model"] == {"name": "tiny-hubert", "version": "1"}
            # The layer-norm encoder pads batches with an attention mask: batched equals one at a time.
            for other in results[1:]:
                np.testing.assert_allclose(
                    list(other["probabilities"].values()),
                    list(results[0]["probabilities"].values()),
                    atol=1e-5,
                )


def test_backbone_model_override_loads_a_local_copy_of_a_hub_checkpoint(
    hubert_bundle: Path, tiny_hubert_dir: Path, tmp_path: Path, good_wav: bytes, no_network: None
) -> None:
    import shutil

    bundle = tmp_path / "hub-named"
    shutil.copytree(hubert_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["backbone"]["model"] = "example-org/hubert-tiny-not-on-this-machine"
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    # Offline and without the override the hub id cannot be resolved: not ready, and it says why.
    with TestClient(create_app(ServiceSettings(bundle=bundle, device="cpu"))) as client:
        wait_until(lambda: client.get("/health").json()["model_state"] == "failed")
        error = client.get("/ready").json()["error"]
        assert "BackboneError" in error and "example-org/hubert-tiny-not-on-this-machine" in error
        assert "network access attempted" not in error

    settings = ServiceSettings(
        bundle=bundle, device="cpu", backbone_model=str(tiny_hubert_dir), hf_offline=True
    )
    with TestClient(create_app(settings)) as client:
        ready_client(client)
        response = client.post("/v1/predict", files={"file": ("a.wav", good_wav)})
        assert response.status_code == 200
        assert_valid_prediction(response.json())
