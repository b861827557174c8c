"""The feature reference (out-of-distribution percentiles) and the uncertainty verdict."""

from __future__ import annotations

import numpy as np
import pytest

from shared.uncertainty import (
    LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION,
    QUANTILES,
    FeatureReference,
    Uncertainty,
)


def correlated(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    mixing = np.random.default_rng(99).normal(size=(3, 8))
    return latent @ mixing + 0.1 * rng.normal(size=(n, 8)) + 50.0


def test_new_clips_like_the_training_ones_get_the_training_percentiles():
    reference = FeatureReference.fit(correlated(600, seed=0))
    fresh = reference.percentile(correlated(400, seed=1))
    # out-of-fold quantiles: a new clip from the same distribution is anywhere in 0-100, evenly
    assert 35 < np.median(fresh) < 65
    assert np.mean(fresh > 99) < 0.04
    assert len(reference.quantiles) == QUANTILES and np.all(np.diff(reference.quantiles) >= 0)


def test_a_broken_correlation_is_out_of_distribution_before_any_feature_is_extreme():
    train = correlated(600, seed=0)
    reference = FeatureReference.fit(train)
    odd = correlated(50, seed=2)
    odd[:, 0] = np.random.default_rng(3).permutation(
        odd[:, 0]
    )  # each value is ordinary, together they are not
    z = np.abs(odd - train.mean(axis=0)) / train.std(axis=0)
    assert z.max() < 4.5  # no feature is far out on its own
    assert np.mean(reference.percentile(odd) > 99) > 0.6
    assert np.all(reference.percentile(train + 100.0) == 100.0)


def test_missing_values_count_as_the_training_mean():
    reference = FeatureReference.fit(correlated(200, seed=0))
    x = correlated(3, seed=4)
    x[0, :] = np.nan
    x[1, 2] = np.inf
    pct = reference.percentile(x)
    assert np.all(np.isfinite(pct)) and pct[0] < 5


def test_a_reference_round_trips_and_refuses_damage(tmp_path):
    reference = FeatureReference.fit(correlated(100, seed=0))
    path = tmp_path / "reference.npz"
    reference.save(path)
    again = FeatureReference.load(path)
    x = correlated(10, seed=5)
    assert np.array_equal(again.percentile(x), reference.percentile(x))
    arrays = dict(np.load(path))
    arrays["quantiles"] = arrays["quantiles"][::-1]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="not sorted"):
        FeatureReference.load(path)
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable feature reference"):
        FeatureReference.load(path)


def test_the_verdict_names_each_reason():
    policy = Uncertainty(ood_percentile=99.0, confidence_threshold=0.35)
    assert policy.reasons(0.6, 50.0) == ()
    assert policy.reasons(0.6, 99.5) == (OUT_OF_DISTRIBUTION,)
    assert policy.reasons(0.2, 10.0) == (LOW_CONFIDENCE,)
    assert policy.reasons(0.2, None) == (LOW_CONFIDENCE,)
    assert Uncertainty.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fill": np.asarray(1.0)}, "do not fit together"),
        ({"components": np.ones(8)}, "do not fit together"),
        ({"quantiles": np.array([0.0, np.nan, 1.0])}, "not finite"),
        ({"spread": np.zeros(8)}, "must be positive"),
        ({"format_version": np.ones(2)}, "format version is not a number"),
    ],
)
def test_a_damaged_reference_is_refused_with_a_reason(tmp_path, change, message):
    reference = FeatureReference.fit(correlated(100, seed=0))
    path = tmp_path / "reference.npz"
    reference.save(path)
    arrays = {**dict(np.load(path)), **change}
    if "spread" in change:
        arrays["spread"] = np.zeros_like(arrays["spread"])
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        FeatureReference.load(path)


def test_thresholds_out_of_range_are_refused():
    for bad in ({"ood_percentile": float("nan")}, {"ood_percentile": 120}, {"confidence_threshold": -0.1}):
        with pytest.raises(ValueError, match="must be within"):
            Uncertainty.from_dict(bad)


def test_a_reference_of_a_dozen_clips_still_tells_near_from_far():
    train = correlated(12, seed=0)
    reference = FeatureReference.fit(train)
    assert len(set(np.round(reference.quantiles, 6))) > 5  # leave-one-out distances, not twelve equal ones
    assert np.median(reference.percentile(correlated(50, seed=1))) > 5
    assert np.all(reference.percentile(train + 100.0) == 100.0)
