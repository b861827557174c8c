"""``python -m benchmarks --quick --model tiny-hub`` runs end to end (every section, a real server
subprocess; the model saved as a legacy hub download and read by hub id offline) and writes the JSON the
full run writes. Its figures mean nothing on a tiny model; what is
checked is that every measurement is there and that the facts that do not depend on speed hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("onnxruntime", reason="the benchmark's ONNX variants need the onnx extra")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "benchmark.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SER_CACHE_DIR": str(folder / "cache")}
    env.pop("SER_TEST_DATA", None)  # generated clips: the test must not depend on the shared data
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--model", "tiny-hub", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_every_section_is_written(quick_run):
    result, _ = quick_run
    for key in (
        "load_memory",
        "machine",
        "model",
        "spec",
        "peak",
        "load_s",
        "flops",
        "latency",
        "speedup_vs_naive",
        "accuracy",
        "truncation",
        "batched",
        "http",
        "targets",
        "default_variant",
    ):
        assert key in result, key
    assert result["model"]["kind"] == "tiny" and result["model"]["num_hidden_layers"] == 3
    assert result["spec"]["model"] == result["model"]["hub_standin"]["id"] == "facebook/hubert-large-ll60k"
    # the same weights from their folder, timed in the same rounds and served beside them
    assert {"folder:torch-fp32", "folder:torch-bf16"} <= set(result["latency"])
    assert result["accuracy"]["variants"]["folder:torch-fp32"]["relative_error_max"] < 1e-5
    assert "folder:" + result["default_variant"] in result["http"] and "load_memory_folder" in result
    assert result["peak"]["fp32_gflops"] > 0 and result["peak"]["bf16_gflops"] > 0
    variants = {"naive", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"}
    assert set(result["latency"]) == variants | {"folder:torch-fp32", "folder:torch-bf16"}
    for per_len in result["latency"].values():
        assert set(per_len) == {"1.0", "2.5"}
        for seconds, entry in per_len.items():
            assert entry["median_s"] > 0 and entry["n"] == 2 and entry["gflop"] > 0
            assert entry["real_time_factor"] == pytest.approx(entry["median_s"] / float(seconds))
    assert result["speedup_vs_naive"]["naive"]["2.5"] == pytest.approx(1.0)
    # FLOPs grow with the clip: 2.5 s costs more than 1 s.
    assert result["flops"]["2.5"]["naive_gflop"] > result["flops"]["1.0"]["naive_gflop"]


def test_accuracy_section_tells_exact_variants_from_lossy_ones(quick_run):
    accuracy = quick_run[0]["accuracy"]
    assert accuracy["reference"] == "torch-fp32" and accuracy["clips"].startswith("generated")
    errors = {name: v["relative_error_mean"] for name, v in accuracy["variants"].items()}
    assert errors["torch-fp32"] == 0.0
    assert errors["naive"] < 1e-3 and errors["onnx-fp32"] < 1e-3  # the same function, computed elsewhere
    assert 0 < errors["torch-bf16"] < 0.5 and 0 < errors["onnx-int8"] < 0.5
    assert accuracy["variants"]["onnx-fp32"]["centred_cosine_min"] > 0.9999


def test_truncation_load_memory_and_http_sections(quick_run):
    result, stdout = quick_run
    for entry in result["load_memory"].values():
        assert (
            entry["after_forward"]["VmHWM_mb"]
            >= entry["after_load"]["VmHWM_mb"]
            >= entry["before_load"]["VmHWM_mb"]
            > 0
        )
    assert {v["layers_run"] for v in result["truncation"].values()} == {1, 2, 3}
    default = result["default_variant"]
    http = result["http"][default]
    assert http["start_to_ready_s"] > 0 and http["memory"]["VmHWM_mb"] > 100
    assert http["single_client"]["ok"] == http["single_client"]["requests"] == 4
    for clients in ("1", "4", "16"):
        entry = http["concurrency"][clients]
        assert entry["failed"] == 0 and entry["ok"] == entry["requests"], entry["failures"]
        assert entry["latency"]["p99_s"] >= entry["latency"]["p50_s"] > 0
    assert http["concurrency"]["16"]["mean_batch_size"] > 1  # concurrent requests share batches
    assert result["batched"][default]["best"]["clips_per_s"] > 0
    names = [t["name"] for t in result["targets"]]
    assert any("onnx-int8 vs naive" in n for n in names) and any("HTTP p50" in n for n in names)
    assert "wrote" in stdout and "default variant" in stdout


@pytest.mark.realdata
def test_prediction_agreement_on_real_speech(real_data, tmp_path):
    out = tmp_path / "benchmark.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SER_CACHE_DIR": str(tmp_path / "cache")}
    env["SER_TEST_DATA"] = str(real_data)
    command = [sys.executable, "-m", "benchmarks", "--quick", "--model", "tiny", "--skip-http"]
    command += ["--variants", "torch-fp32,torch-bf16", "--seconds", "1", "--agreement-clips", "60"]
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    agreement = json.loads(out.read_text())["prediction_agreement"]
    assert agreement["reference"] == "torch-fp32" and agreement["clips"] == 60
    assert agreement["train_clips"] > 0 and agreement["test_clips"] > 0
    assert agreement["train_clips"] + agreement["test_clips"] == 60
    reference, bf16 = agreement["variants"]["torch-fp32"], agreement["variants"]["torch-bf16"]
    assert reference["same_prediction_as_reference"] == 1.0 and reference["max_probability_change"] == 0.0
    assert 0.0 <= bf16["same_prediction_as_reference"] <= 1.0 and 0.0 <= bf16["unweighted_accuracy"] <= 1.0
    assert "same prediction" in done.stdout
