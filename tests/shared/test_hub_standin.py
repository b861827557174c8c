"""The real checkpoint rehearsed offline: a stand-in for a hub download (legacy ``pytorch_model.bin``, old
weight-norm names, the hub cache's layout) resolved by hub id with ``HF_HUB_OFFLINE=1``, exactly as on a
user's machine, and run on the project's own modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from support import STANDIN_COMMIT, make_hub_standin

from shared.backbones.checkpoint import convert_legacy_weights
from shared.errors import BackboneError

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "example-org/hubert-standin"

#: Runs in a fresh process: the hub libraries read HF_HUB_CACHE and HF_HUB_OFFLINE when imported.
PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    repo, revision, cache = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 24000)]
    spec = BackboneSpec(kind="hubert", model=repo, revision=revision)
    backbone = build_backbone(spec, EncoderOptions(offline=True, cache_dir=cache))
    ours = backbone.embed_batch(waves)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(repo, revision=revision, local_files_only=True)
    model = HubertModel.from_pretrained(repo, revision=revision, local_files_only=True).eval()
    expected = []
    for wave in waves:
        inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            expected.append(model(inputs.input_values).last_hidden_state[0].mean(0).numpy())
    print(json.dumps({
        "native": backbone.native,
        "gap": float(np.abs(ours - np.stack(expected)).max()),
        "modules": sorted(m for m in sys.modules if m.startswith("transformers.models.hubert.modeling")),
        "fingerprint": backbone.fingerprint,
    }))
    """
)


def run_offline(cache: Path, *args: str, script: str = PROBE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    make_hub_standin(cache, REPO_ID)
    return cache


@pytest.mark.parametrize("revision", [STANDIN_COMMIT, ""])
def test_the_standin_resolves_by_hub_id_offline_and_runs_on_the_projects_modules(
    hub_cache: Path, tmp_path: Path, revision: str
) -> None:
    snapshot = hub_cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / STANDIN_COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]
    names = torch.load(snapshot / "pytorch_model.bin", weights_only=True).keys()
    assert any(n.endswith("pos_conv_embed.conv.weight_g") for n in names)  # the old weight-norm names
    done = run_offline(hub_cache, REPO_ID, revision, str(tmp_path / "ser"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["native"] is True  # the project's modules, not transformers' fallback
    assert result["gap"] < 1e-5
    assert (tmp_path / "ser" / "converted").is_dir()  # converted once into the project's cache
    assert result["fingerprint"]["commit"] == STANDIN_COMMIT  # recorded in a bundle's manifest


def test_training_and_serving_take_the_standin_by_hub_id(hub_cache: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from support import fake_ravdess
        from training.cli import main
        corpus = fake_ravdess(__import__("pathlib").Path(sys.argv[1]) / "corpus", actors=2)
        argv = ["run", "--corpus", "ravdess", "--data-dir", str(corpus), "--backbone", "hubert",
                "--model", "{REPO_ID}", "--revision", "{STANDIN_COMMIT}", "--folds", "2", "--no-random-cv",
                "--out", sys.argv[1] + "/artifacts", "--version", "1", "--no-progress", "--device", "cpu"]
        assert main(argv) == 0
        from shared.predictor import Predictor
        from shared.backbones import EncoderOptions
        import numpy as np
        predictor = Predictor.from_bundle(sys.argv[1] + "/artifacts", EncoderOptions(offline=True))
        print("LABEL", predictor.predict(np.zeros(16000, dtype=np.float32) + 0.01).label)
        print("REVISION", predictor.bundle.manifest["backbone"]["revision"])
        print("COMMIT", predictor.bundle.manifest["backbone"]["commit"])
        """
    )
    env_path = f"{REPO / 'tests'}{os.pathsep}{REPO}"
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": env_path}
    env["SER_CACHE_DIR"] = str(tmp_path / "ser")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LABEL " in done.stdout and f"REVISION {STANDIN_COMMIT}" in done.stdout
    assert f"COMMIT {STANDIN_COMMIT}" in done.stdout


def test_a_cache_without_the_snapshot_says_what_it_looked_for_without_the_network(
    hub_cache: Path, tmp_path: Path
) -> None:
    missing = "0" * 40
    done = run_offline(hub_cache, REPO_ID, missing, str(tmp_path / "ser"))
    assert done.returncode != 0
    assert "offline mode: the speech encoder 'example-org/hubert-standin'" in done.stderr
    assert str(hub_cache) in done.stderr and "the hub was not contacted" in done.stderr
    assert "thrown while requesting" not in done.stderr  # the hub's warning for each request it tries


class NotATensor:
    def __reduce__(self):  # pickling this would run code when loaded without weights_only
        return (print, ("code ran",))


def test_a_bin_file_with_anything_but_tensors_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "pytorch_model.bin"
    torch.save({"encoder.weight": torch.zeros(2), "payload": NotATensor()}, evil)
    with pytest.raises(BackboneError, match="cannot be loaded as weights only.*is refused"):
        convert_legacy_weights(evil, tmp_path / "cache")
    odd = tmp_path / "odd.bin"
    torch.save({"encoder.weight": torch.zeros(2), "step": 3}, odd)
    with pytest.raises(BackboneError, match="entries that are not tensors \\(step\\)"):
        convert_legacy_weights(odd, tmp_path / "cache")
    assert not (tmp_path / "cache" / "converted").exists() or not any(
        (tmp_path / "cache" / "converted").iterdir()
    )


def test_the_onnx_export_takes_the_standin_by_hub_id(hub_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from shared.backbones import BackboneSpec, EncoderOptions, build_backbone

        spec = BackboneSpec(kind="hubert", model=sys.argv[1], revision=sys.argv[2])
        waves = [(0.1 * np.random.default_rng(1).standard_normal(20000)).astype(np.float32)]
        torch_backbone = build_backbone(spec, EncoderOptions(offline=True, cache_dir=sys.argv[3]))
        onnx_backbone = build_backbone(spec, EncoderOptions(offline=True, cache_dir=sys.argv[3], backend="onnx"))
        gap = float(np.abs(torch_backbone.embed_batch(waves) - onnx_backbone.embed_batch(waves)).max())
        print("GAP", gap)
        """
    )
    done = run_offline(hub_cache, REPO_ID, STANDIN_COMMIT, str(tmp_path / "ser"), script=script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split("GAP")[-1]) < 1e-4
    assert any((tmp_path / "ser" / "onnx").iterdir())
