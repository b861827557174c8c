"""Input normalisation: the active speech level, trimming, and what the spec records."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from support import synthetic_clip

from shared.backbones import BackboneSpec, build_backbone
from shared.errors import BackboneError
from shared.loudness import PEAK_LIMIT, active_level_dbfs, normalize_level, trim_silence


def with_pauses(clip: np.ndarray, before: float, after: float, noise: float = 1e-4) -> np.ndarray:
    rng = np.random.default_rng(0)
    quiet = lambda s: (noise * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    return np.concatenate([quiet(before), clip, quiet(after)])


def test_the_level_is_that_of_the_active_frames_whatever_the_gain():
    clip = synthetic_clip("angry", 1.5, seed=1)
    loud, soft = 0.9 * clip / np.abs(clip).max(), 0.01 * clip
    for wave in (loud, soft, with_pauses(soft, 2.0, 1.0)):  # long pauses do not pull the level down
        assert active_level_dbfs(normalize_level(wave, -26.0)) == pytest.approx(-26.0, abs=0.2)
    np.testing.assert_allclose(normalize_level(loud, -26.0), normalize_level(soft, -26.0), atol=1e-6)


def test_the_gain_never_pushes_the_peak_past_full_scale_and_silence_stays_silence():
    clicks = np.zeros(16000, dtype=np.float32)
    clicks[::4000] = 0.5  # a huge crest factor: -26 dBFS of active RMS would need a peak far above 1
    assert np.abs(normalize_level(clicks, -10.0)).max() == pytest.approx(PEAK_LIMIT)
    silence = np.zeros(8000, dtype=np.float32)
    np.testing.assert_array_equal(normalize_level(silence), silence)


def test_trimming_keeps_the_speech_and_a_little_of_each_edge():
    clip = synthetic_clip("sad", 1.0, seed=2)
    trimmed = trim_silence(with_pauses(clip, 1.0, 0.5))
    assert 1.0 <= len(trimmed) / 16000 <= 1.0 + 2 * 0.1 + 0.05
    assert len(trim_silence(np.zeros(4000, dtype=np.float32))) == 4000


def test_a_spec_with_a_level_makes_egemaps_independent_of_the_gain():
    clip = synthetic_clip("happy", 1.5, seed=3)
    plain = build_backbone(BackboneSpec(kind="egemaps"))
    levelled = build_backbone(BackboneSpec(kind="egemaps", level_dbfs=-26.0))
    assert not np.allclose(plain.embed_batch([clip])[0], plain.embed_batch([0.05 * clip])[0], atol=1e-2)
    np.testing.assert_allclose(
        levelled.embed_batch([clip])[0], levelled.embed_batch([0.05 * clip])[0], rtol=1e-3, atol=1e-3
    )


def test_the_spec_records_the_normalisation_and_old_manifests_and_caches_keep_working():
    spec = BackboneSpec(kind="egemaps", level_dbfs=-26.0, trim_silence=True)
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    old = {"kind": "egemaps", "model": None, "revision": None, "layer": None, "layer_end": None}
    old |= {"pooling": "mean", "sample_rate": 16000}
    assert BackboneSpec.from_dict(old) == BackboneSpec(kind="egemaps")  # written before the fields existed
    # The embedding cache key of a spec without normalisation is the one it had before: caches stay valid.
    payload = {**old, "dtype": "fp32"}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert BackboneSpec(kind="egemaps").cache_key() == expected
    assert spec.cache_key() != expected
    with pytest.raises(BackboneError, match="level_dbfs must be between -60 and -3 dBFS"):
        BackboneSpec(kind="egemaps", level_dbfs=0.0)
