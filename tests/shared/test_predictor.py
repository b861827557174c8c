"""The predictor: probabilities, ordering, batch == single, non-finite features."""

from __future__ import annotations

import numpy as np
import pytest
from support import synthetic_clip

from shared.backbones import EncoderOptions
from shared.constants import EMOTIONS
from shared.predictor import SESSION, SINGLE, Predictor, sanitize_features
from shared.session import MIN_SESSION_UTTERANCES, SessionStats
from shared.uncertainty import OUT_OF_DISTRIBUTION


def assert_same(a, b, tol: float = 1e-9) -> None:
    assert a.label == b.label
    assert a.probabilities == pytest.approx(b.probabilities, abs=tol)


@pytest.fixture(scope="module")
def predictor(egemaps_bundle) -> Predictor:
    return Predictor.from_bundle(egemaps_bundle)


def test_probabilities_are_complete_and_consistent(predictor):
    result = predictor.predict(synthetic_clip("angry", 1.5, seed=77))
    assert list(result.probabilities) == list(EMOTIONS)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.confidence == result.probabilities[result.label]


def test_generated_emotions_are_recognised(predictor):
    # The bundle was fitted on generated voices whose pitch and tremolo differ by emotion.
    results = predictor.predict_batch(
        [synthetic_clip(label, 1.5, seed=500 + i) for i, label in enumerate(EMOTIONS)]
    )
    assert sum(r.label == label for r, label in zip(results, EMOTIONS, strict=True)) >= 5


def test_single_path_is_the_batch_path(predictor):
    waves = [synthetic_clip(label, 1.2, seed=9) for label in EMOTIONS]
    batch = predictor.predict_batch(waves)
    for wave, expected in zip(waves, batch, strict=True):
        assert_same(predictor.predict(wave), expected)


def test_hubert_bundle_predicts(hubert_bundle):
    predictor = Predictor.from_bundle(hubert_bundle)
    waves = [synthetic_clip("sad", 1.0, seed=1), synthetic_clip("fear", 2.0, seed=2)]
    batch = predictor.predict_batch(waves)
    for wave, expected in zip(waves, batch, strict=True):
        assert_same(predictor.predict(wave), expected, tol=1e-5)
    assert predictor.describe().backbone["kind"] == "hubert"


def test_non_finite_features_never_reach_the_classifier(predictor):
    x = predictor.embed_batch([synthetic_clip("happy", 1.5, seed=3)])
    x[0, :5] = np.nan
    x[0, 5] = np.inf
    result = predictor.classify(x)[0]
    assert all(np.isfinite(p) for p in result.probabilities.values())
    assert np.isnan(sanitize_features(x)[0, 5])


def test_warmup_runs_the_whole_path(predictor, monkeypatch):
    classified: list[list] = []
    classify = predictor.classify
    monkeypatch.setattr(predictor, "classify", lambda x: classified.append(classify(x)) or classified[-1])
    predictor.warmup(seconds=1.0, batch_size=2)
    assert len(classified) == 1 and len(classified[0]) == 2  # both clips embedded, then classified


def test_serving_another_precision_than_the_training_one_warns(hubert_bundle, caplog):
    with caplog.at_level("WARNING", logger="shared.predictor"):
        same = Predictor.from_bundle(hubert_bundle, EncoderOptions(dtype="fp32"))  # trained in fp32
    assert same.backbone.dtype == "fp32" and "trained on" not in caplog.text
    with caplog.at_level("WARNING", logger="shared.predictor"):
        served = Predictor.from_bundle(hubert_bundle, EncoderOptions(dtype="bf16"))
    assert served.backbone.dtype == "bf16"
    assert "trained on fp32 embeddings" in caplog.text and "set the dtype to fp32" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="shared.predictor"):
        Predictor.from_bundle(hubert_bundle, EncoderOptions(dtype="auto"))
    # nobody chose a precision: whatever "auto" picked is a note, not a warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_onnx_backend_serves_the_same_predictions(hubert_bundle):
    pytest.importorskip("onnxruntime")
    waves = [synthetic_clip("sad", 1.0, seed=1), synthetic_clip("angry", 1.6, seed=2)]
    reference = Predictor.from_bundle(hubert_bundle).predict_batch(waves)
    onnx = Predictor.from_bundle(hubert_bundle, EncoderOptions(backend="onnx")).predict_batch(waves)
    for a, b in zip(onnx, reference, strict=True):
        assert_same(a, b, tol=1e-4)


def test_a_session_is_used_from_its_minimum_number_of_utterances(predictor):
    minimum = predictor.session_minimum
    assert minimum == MIN_SESSION_UTTERANCES
    waves = [synthetic_clip(EMOTIONS[i % 6], 1.3, seed=700 + i) for i in range(minimum)]
    x = predictor.embed_batch(waves)
    alone = predictor.classify(x)
    assert {p.classifier for p in alone} == {SINGLE} and alone[0].features is not None
    short = predictor.classify(x[:3], session=SessionStats.of(x[: minimum - 1]))
    assert {p.classifier for p in short} == {SINGLE}
    assert [p.probabilities for p in short] == [p.probabilities for p in alone[:3]]
    full = predictor.classify(x, session=SessionStats.of(x))
    assert {p.classifier for p in full} == {SESSION} and full[0].session_utterances == minimum
    assert [p.probabilities for p in full] != [p.probabilities for p in alone]
    assert sum(p.label == EMOTIONS[i % 6] for i, p in enumerate(full)) >= minimum - 3


def test_features_far_from_the_training_data_are_flagged_uncertain(predictor):
    x = predictor.embed_batch([synthetic_clip("happy", 1.5, seed=11)])
    ordinary = predictor.classify(x)[0]
    assert ordinary.ood_percentile is not None and ordinary.ood_percentile < 99
    far = predictor.classify(x * 5.0 + 10.0)[0]
    assert far.uncertain and OUT_OF_DISTRIBUTION in far.uncertain_reasons and far.ood_percentile == 100.0
    description = predictor.describe()
    assert description.uncertainty["distance_reference"] is True and description.session_minimum == 10
