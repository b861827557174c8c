"""A fresh install's first run: the built-in demo model, the ``ser`` console script, and a model that
cannot be loaded ending the process instead of answering "not ready" forever."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import free_port, ready_client
from support import synthetic_clip, wav_bytes

from service.app import create_app
from service.bundles import resolve_served_bundle
from service.cli import main as ser
from service.settings import ServiceSettings
from shared.bundle import load_bundle
from shared.demo import DEMO_ROOT, demo_bundle_root, is_demo_bundle
from shared.errors import BundleNotFoundError

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_bundle_is_small_verified_licensed_and_measured() -> None:
    root = demo_bundle_root()
    assert root == DEMO_ROOT
    bundle = load_bundle(root)  # verifies every file's sha256
    assert is_demo_bundle(bundle.path)
    assert sum(p.stat().st_size for p in bundle.path.iterdir()) < 5 * 1024 * 1024
    assert "NOTICE.md" in bundle.manifest["files"]
    notice = (bundle.path / "NOTICE.md").read_text()
    assert "CC BY-NC-SA 4.0" in notice and "Livingstone" in notice and "non-commercial" in notice
    assert bundle.backbone_spec.kind == "egemaps" and bundle.session is not None
    grouped = bundle.manifest["metrics"]["speaker_grouped"]
    assert 0.45 < grouped["unweighted_accuracy"] < 0.55  # "about 0.50", as the notices say
    assert bundle.manifest["training"]["corpus"]["n_utterances"] == 1056


def test_the_served_bundle_is_the_configured_one_then_artifacts_then_the_demo(
    tmp_path: Path, egemaps_bundle: Path
) -> None:
    assert is_demo_bundle(resolve_served_bundle(None, tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    assert is_demo_bundle(resolve_served_bundle(None, tmp_path / "empty"))
    artifacts = tmp_path / "artifacts"
    shutil.copytree(egemaps_bundle, artifacts / "mine" / "1")
    assert resolve_served_bundle(None, artifacts) == artifacts / "mine" / "1"
    with pytest.raises(BundleNotFoundError, match="does not exist"):
        resolve_served_bundle(tmp_path / "typo", artifacts)  # a configured path must hold a bundle


def test_with_nothing_configured_the_demo_is_served_and_says_so(tmp_path: Path, caplog) -> None:
    settings = ServiceSettings(artifacts=tmp_path / "none", device="cpu")
    with caplog.at_level("WARNING", logger="service.app"), TestClient(create_app(settings)) as client:
        ready_client(client)
        info = client.get("/v1/info").json()
        assert info["demo"] is True and "not for commercial use" in info["notice"]
        assert "python -m training run" in info["notice"]
        assert "the built-in demo model is in use" in caplog.text
        body = client.post(
            "/v1/predict",
            files={"file": ("a.wav", wav_bytes(synthetic_clip("angry", 2.0, seed=1)), "audio/wav")},
        ).json()
        assert body["model"]["name"] == "demo-ravdess-egemaps" and isinstance(body["uncertain"], bool)


def test_a_model_that_cannot_be_loaded_is_final(egemaps_bundle: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(egemaps_bundle, damaged)
    with open(damaged / "classifier.npz", "ab") as fh:
        fh.write(b"\0")
    reasons: list[str] = []
    with TestClient(create_app(ServiceSettings(bundle=damaged), on_load_failure=reasons.append)) as client:
        deadline = time.monotonic() + 60
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reasons and "BundleIntegrityError" in reasons[0]
    stay = ServiceSettings(bundle=damaged, stay_up_on_failure=True)
    called: list[str] = []
    with TestClient(create_app(stay, on_load_failure=called.append)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json()["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").json()["error_type"] == "model_failed"
    assert called == []


def test_python_m_service_exits_3_with_the_reason_when_the_model_cannot_be_loaded(
    egemaps_bundle: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(egemaps_bundle, damaged)
    (damaged / "classifier.npz").write_bytes(b"not the arrays")
    env = {**os.environ, "SER_BUNDLE": str(damaged), "SER_PORT": str(free_port()), "SER_DEVICE": "cpu"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "cannot serve: the model could not be loaded (BundleIntegrityError" in done.stderr
    assert "SER_STAY_UP_ON_FAILURE" in done.stderr
    assert time.monotonic() - started < 60


def test_ser_predict_prints_one_line_per_file_and_a_bad_file_does_not_stop_it(
    tmp_path: Path, egemaps_bundle: Path, capsys
) -> None:
    clips = []
    for i, label in enumerate(("happy", "sad")):
        path = tmp_path / f"{label}.wav"
        path.write_bytes(wav_bytes(synthetic_clip(label, 1.5, seed=40 + i)))
        clips.append(path)
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    assert ser(["predict", "--bundle", str(egemaps_bundle), *map(str, clips), str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(clips[0])) and "%" in lines[0]
    assert "error: " in lines[2] and "not audio" in lines[2]
    assert ser(["predict", "--json", "--bundle", str(egemaps_bundle), str(clips[1])]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ok"] and record["path"] == str(clips[1]) and record["classifier"] == "single"
    assert abs(sum(v for k, v in record.items() if k.startswith("p_")) - 1) < 1e-6
    assert ser(["predict", "--bundle", str(tmp_path / "nowhere"), str(clips[0])]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ser_help_lists_every_setting_and_ser_info_describes_the_bundle(egemaps_bundle: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ser(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ServiceSettings.model_fields:
        assert f"SER_{name.upper()}" in text
    assert ser(["info", "--bundle", str(egemaps_bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "synthetic"
    with pytest.raises(SystemExit) as exit_info:
        ser(["predict"])
    assert exit_info.value.code == 2
