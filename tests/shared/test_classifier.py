"""The numpy classifier gives the sklearn pipeline's probabilities, and serving never imports sklearn."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from shared.classifier import ClassifierArrays, UnsupportedPipelineError
from shared.constants import EMOTIONS
from training.pipeline import make_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]


def fit(n_per_class: int, dim: int, seed: int, **kwargs) -> tuple[Pipeline, np.ndarray]:
    """A fitted pipeline on separable-but-overlapping classes, and held-out points to score."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(EMOTIONS, n_per_class)
    centres = rng.standard_normal((len(EMOTIONS), dim)) * 1.5
    x = centres[np.repeat(np.arange(len(EMOTIONS)), n_per_class)] + rng.standard_normal((len(labels), dim))
    pipeline = make_pipeline(len(x), dim, min_class_count=n_per_class, **kwargs).fit(x, labels)
    held_out = centres[rng.integers(0, len(EMOTIONS), 40)] + 1.3 * rng.standard_normal((40, dim))
    return pipeline, held_out


@pytest.mark.parametrize(
    ("n_per_class", "dim", "kwargs"),
    [
        (20, 1024, {}),  # HuBERT-large width, fewer clips than dimensions (PCA keeps n - 1)
        (10, 88, {}),  # eGeMAPS width
        (60, 300, {"pca_components": 200, "C": 3.0}),
        (8, 16, {"class_weight": None, "gamma": 0.05}),
    ],
)
def test_probabilities_match_the_sklearn_pipeline(n_per_class, dim, kwargs):
    pipeline, x = fit(n_per_class, dim, seed=dim, **kwargs)
    arrays = ClassifierArrays.from_pipeline(pipeline)
    expected = pipeline.predict_proba(x)
    got = arrays.predict_proba(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert list(arrays.classes) == [str(c) for c in pipeline.classes_]
    # Not a degenerate case: the classes are told apart and the winners agree.
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert len(set(got.argmax(axis=1))) >= 3
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_missing_values_are_filled_like_the_imputer():
    pipeline, x = fit(10, 32, seed=1)
    x[0, :] = np.nan
    x[1, ::3] = np.nan
    np.testing.assert_allclose(
        ClassifierArrays.from_pipeline(pipeline).predict_proba(x), pipeline.predict_proba(x), atol=1e-12
    )


def test_a_feature_missing_in_all_training_clips_is_kept_as_zero():
    rng = np.random.default_rng(3)
    labels = np.repeat(EMOTIONS, 8)
    x = rng.standard_normal((len(labels), 12)) + np.repeat(np.arange(6), 8)[:, None]
    x[:, 4] = np.nan
    pipeline = make_pipeline(len(x), 12, min_class_count=8).fit(x, labels)
    probe = rng.standard_normal((10, 12)) + 2.5
    np.testing.assert_allclose(
        ClassifierArrays.from_pipeline(pipeline).predict_proba(probe),
        pipeline.predict_proba(probe),
        atol=1e-12,
    )


def test_save_and_load_round_trip(tmp_path):
    pipeline, x = fit(10, 40, seed=2)
    arrays = ClassifierArrays.from_pipeline(pipeline)
    arrays.save(tmp_path / "c.npz")
    loaded = ClassifierArrays.load(tmp_path / "c.npz")
    assert loaded.classes == arrays.classes
    np.testing.assert_array_equal(loaded.predict_proba(x), arrays.predict_proba(x))


def test_a_newer_array_format_is_refused(tmp_path):
    pipeline, _ = fit(10, 8, seed=4)
    ClassifierArrays.from_pipeline(pipeline).save(tmp_path / "c.npz")
    arrays = dict(np.load(tmp_path / "c.npz"))
    arrays["format_version"] = np.asarray(99)
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(ValueError, match="has format 99"):
        ClassifierArrays.load(tmp_path / "c.npz")


def test_other_pipeline_shapes_are_not_converted():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((36, 5)), np.repeat(EMOTIONS, 6)
    plain = Pipeline([("scale", StandardScaler()), ("svm", SVC(random_state=0))]).fit(x, y)
    with pytest.raises(UnsupportedPipelineError, match="steps"):
        ClassifierArrays.from_pipeline(plain)
    two = make_pipeline(12, 5, min_class_count=6).fit(x[:12], ["a"] * 6 + ["b"] * 6)
    with pytest.raises(UnsupportedPipelineError, match="two-class"):
        ClassifierArrays.from_pipeline(two)


def test_serving_a_hubert_bundle_never_imports_sklearn(hubert_bundle):
    """The service's path from bundle to probabilities stays free of scikit-learn, SciPy and pandas."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from shared.backbones import EncoderOptions
        from shared.predictor import Predictor
        from shared.signals import speech_like
        predictor = Predictor.from_bundle({str(hubert_bundle)!r}, EncoderOptions(offline=True))
        results = predictor.predict_batch([speech_like(1.0, seed=1), speech_like(2.0, seed=2)])
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"sklearn", "scipy", "pandas", "skops"}})
        print(json.dumps({{"heavy": heavy, "sums": [sum(r.probabilities.values()) for r in results]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    np.testing.assert_allclose(result["sums"], 1.0)
