from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import build_synthetic_bundle, make_tiny_hubert, real_data_dir

from shared.backbones import BackboneSpec
from shared.backbones import build_backbone as build_backbone_for

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session", autouse=True)
def _isolated_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Derived model files (bf16 weight copies, ONNX exports) go to a temporary folder, not ~/.cache: for
    the service and the tools (SER_CACHE_DIR) and for the library's default (under XDG_CACHE_HOME).
    Generated tones are classified (SER_REQUIRE_SPEECH=false)."""
    import os

    os.environ.setdefault("SER_CACHE_DIR", str(tmp_path_factory.mktemp("ser-cache")))
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    # Most tests send generated voiced tones, which the voice-activity detector rightly calls non-speech:
    # the service classifies them all the same here; the tests of the speech check turn it back on.
    os.environ.setdefault("SER_REQUIRE_SPEECH", "false")


@pytest.fixture(autouse=True)
def _isolated_job_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's service keeps its job database and uploads in its own folder, not ~/.local/share."""
    monkeypatch.setenv("SER_JOBS_DIR", str(tmp_path / "ser-jobs"))


@pytest.fixture(scope="session")
def tiny_hubert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny layer-norm HuBERT saved with save_pretrained (loads like a real checkpoint folder)."""
    return make_tiny_hubert(tmp_path_factory.mktemp("tiny-hubert"))


@pytest.fixture(scope="session")
def egemaps_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real eGeMAPS bundle fitted on generated clips; returns the bundle folder."""
    return build_synthetic_bundle(tmp_path_factory.mktemp("artifacts"), BackboneSpec(kind="egemaps"))


@pytest.fixture(scope="session")
def hubert_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_hubert_dir: Path) -> Path:
    """A real bundle over the tiny HuBERT, fitted on generated clips; returns the bundle folder."""
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    return build_synthetic_bundle(tmp_path_factory.mktemp("artifacts"), spec, name="tiny-hubert")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real speech folder from SER_TEST_DATA; skips the test where it is unset."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real speech data not available: set SER_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def timeline_bundle(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eGeMAPS bundle fitted on RAVDESS actors 1-4 with the demo's input normalisation (level -26 dBFS,
    silence trimmed), with its session classifier."""
    from benchmarks.timeline import EGEMAPS_SPEC, fit_on_actors

    backbone = build_backbone_for(EGEMAPS_SPEC)
    return fit_on_actors(
        real_data / "ravdess16k",
        backbone,
        range(1, 5),
        tmp_path_factory.mktemp("timeline-artifacts"),
        "timeline",
    )


@pytest.fixture(scope="session")
def ravdess_recording(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    """About 90 s of RAVDESS speech: 26 clips of actors 21-24 (none of them in ``timeline_bundle``), one
    after another with pauses of 0.5-2 s; returns (FLAC file, the truth spans, the clips)."""
    from benchmarks.recordings import build_recording, pick_clips, ravdess_clips
    from benchmarks.timeline import write_flac

    clips = pick_clips(ravdess_clips(real_data / "ravdess16k", range(21, 25)), 26, seed=5)
    wave, truth = build_recording(clips, seed=5)
    return write_flac(wave, tmp_path_factory.mktemp("recording") / "recording.flac"), truth, clips
