"""Session statistics and per-speaker normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from shared.session import SessionStats, normalise_groups


def test_running_statistics_match_the_batch_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 5))
    stats = SessionStats.empty(5)
    for chunk in np.array_split(x, 7):
        stats.add(chunk)
    mean, std = stats.mean_std()
    assert stats.utterances == 40
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.normalise(x), (x - x.mean(0)) / x.std(0), rtol=1e-9)
    assert stats.nbytes == 3 * 5 * 8


def test_non_finite_values_are_left_out_feature_by_feature():
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.inf, 8.0]])
    stats = SessionStats.of(x)
    mean, std = stats.mean_std()
    assert stats.utterances == 3 and stats.count.tolist() == [2, 2]
    assert mean.tolist() == [2.0, 6.0] and std.tolist() == [1.0, 2.0]
    assert np.isnan(stats.normalise(x)[0, 1])


def test_a_flat_feature_is_only_centred():
    x = np.array([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0]])
    z = SessionStats.of(x).normalise(x)
    assert z[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert z[:, 1] == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)


def test_each_group_is_normalised_with_its_own_statistics_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    groups = ["a"] * 10 + ["b"] * 20
    z = normalise_groups(x, groups)
    changed = x.copy()
    changed[10:] += 100.0  # another speaker's voice changes: speaker a's features must not
    assert np.array_equal(normalise_groups(changed, groups)[:10], z[:10])
    np.testing.assert_allclose(z[:10].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[10:].std(axis=0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(normalise_groups(changed, groups)[10:], z[10:], atol=1e-9)
