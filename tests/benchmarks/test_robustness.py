"""The robustness benchmark: each channel change does what it says, and the command runs end to end on
real speech (a quick run; its figures are in the README, not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal
from support import synthetic_clip

from benchmarks.channels import CONDITIONS, apply_condition, room_impulse_response
from shared.loudness import active_level_dbfs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip("angry", 2.0, seed=4)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_gives_16_khz_audio_of_the_same_length(clip, condition):
    out = apply_condition(condition, clip, seed=1)
    assert out.dtype == np.float32 and abs(len(out) - len(clip)) <= 160
    assert np.abs(out).max() <= 1.0 and np.isfinite(out).all()
    if condition != "clean":
        assert not np.array_equal(out[: len(clip)], clip[: len(out)])


def test_the_changes_are_the_ones_named(clip):
    level = active_level_dbfs(clip)
    assert active_level_dbfs(apply_condition("gain-20db", clip)) == pytest.approx(level - 20, abs=0.1)
    assert np.abs(apply_condition("gain+12db", clip)).max() == 1.0  # louder than full scale: clipped
    freqs, power = signal.welch(apply_condition("telephone", clip), fs=16000, nperseg=1024)
    _, clean_power = signal.welch(clip, fs=16000, nperseg=1024)
    band = lambda f, p, lo, hi: p[(f >= lo) & (f < hi)].sum()  # noqa: E731
    assert band(freqs, power, 4500, 8000) < 1e-3 * band(freqs, clean_power, 4500, 8000)
    noise = apply_condition("noise-10db", clip, seed=2) - clip
    assert 10 * np.log10(np.mean(noise**2)) == pytest.approx(level - 10, abs=1.0)
    rir = room_impulse_response(0.5, np.random.default_rng(0))
    late = np.sum(rir[int(0.45 * 16000) :] ** 2) / np.sum(rir[int(0.005 * 16000) : int(0.05 * 16000)] ** 2)
    assert late < 1e-3  # most of the tail is gone by 0.45 s (60 dB down at 0.5 s)
    with pytest.raises(ValueError, match="unknown condition 'radio'"):
        apply_condition("radio", clip)


@pytest.mark.realdata
def test_a_quick_run_writes_every_variant_and_condition(real_data, tmp_path):
    out = tmp_path / "robustness.json"
    command = [sys.executable, "-m", "benchmarks.robustness", "--quick", "--variants", "raw,level+trim"]
    command += ["--conditions", "clean,gain-20db,telephone", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "SER_TEST_DATA": str(real_data)}
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"raw", "level+trim"} and result["test"]["actors"] == "17,18"
    assert result["variants"]["level+trim"]["spec"]["level_dbfs"] == -26.0
    assert result["variants"]["level+trim"]["spec"]["trim_silence"] is True
    assert result["variants"]["raw"]["spec"]["level_dbfs"] is None
    for entry in result["variants"].values():
        assert set(entry["scores"]) == {"single", "session"}
        for mode, rows in entry["scores"].items():
            assert set(rows) == {"clean", "gain-20db", "telephone", "cremad_sample"}
            for scores in rows.values():
                assert 0 <= scores["ua"] <= 1 and 0 <= scores["ece"] <= 1 and 0 < scores["largest_share"] <= 1
                assert 0 <= scores["uncertain_rate"] <= 1
            assert rows["cremad_sample"]["n"] == 12
            assert rows["cremad_sample"]["session_share"] == 0.0  # 6 clips a speaker: under the minimum
            assert rows["clean"]["session_share"] == (1.0 if mode == "session" else 0.0)
    assert "| raw | single |" in done.stdout and "| raw | session |" in done.stdout and "wrote" in done.stdout


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.robustness", "--conditions", "clean,radio"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown variant or condition: radio" in done.stderr
