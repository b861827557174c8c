"""From waveforms to emotions: a backbone, then the bundle's classifier."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.backbones import Backbone, EncoderOptions, build_backbone
from shared.bundle import Bundle, load_bundle
from shared.classifier import ClassifierArrays
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.errors import BundleFormatError
from shared.session import SessionStats

log = logging.getLogger(__name__)


#: The classifier that answered: the one for a single clip, or the one for session-normalised features.
SINGLE, SESSION = "single", "session"


@dataclass(frozen=True)
class Prediction:
    """One utterance's result.

    Attributes:
        label: the most probable emotion.
        confidence: its probability, in [0, 1].
        probabilities: every emotion of ``EMOTIONS`` (in that order) with its probability; they sum to 1.
        uncertain: True when ``uncertain_reasons`` is not empty: the client should not act on ``label``.
        uncertain_reasons: from ``shared.uncertainty.REASONS`` (out of distribution, low confidence).
        ood_percentile: how far the features lie from the training data, as a percentile of the training
            clips' own distances (None for a bundle without a feature reference).
        classifier: ``"single"`` (no session statistics) or ``"session"`` (normalised with them).
        session_utterances: how many utterances the session's statistics held (0 without a session).
        features: the embedding ``[d]`` the prediction was made from (for session statistics).
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool = False
    uncertain_reasons: tuple[str, ...] = ()
    ood_percentile: float | None = None
    classifier: str = SINGLE
    session_utterances: int = 0
    features: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ModelDescription:
    """What a predictor serves: the bundle's identity and record, and how its backbone runs here.

    Attributes:
        name, version: the bundle's.
        labels: the emotions, in probability order.
        backbone: the manifest's backbone record (spec, dimension, training precision, fingerprint).
        serving_dtype: the precision the backbone computes in here.
        classifier: how the classifier is applied (its arrays with numpy, or the scikit-learn pipeline).
        metrics, training: the manifest's evaluation figures and training record.
        created_at: when the bundle was written.
        path: the bundle folder.
        session_minimum: utterances a session needs before its statistics are used; None when the
            bundle has no session classifier.
        uncertainty: the thresholds that flag a prediction uncertain, and whether distances are measured.
    """

    name: str
    version: str
    labels: tuple[str, ...]
    backbone: dict[str, Any]
    serving_dtype: str
    classifier: str
    metrics: dict[str, Any]
    training: dict[str, Any]
    created_at: str | None
    path: str
    session_minimum: int | None = None
    uncertainty: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON values (labels as a list)."""
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data


def sanitize_features(features: np.ndarray) -> np.ndarray:
    """Turn ±Inf into NaN, so the pipeline's imputer replaces every non-finite value.

    Non-finite values never reach the scaler, PCA or SVM: the first pipeline step imputes NaN with the
    training mean. Returns float64 ``[n, d]``.
    """
    x = np.array(features, dtype=np.float64, copy=True).reshape(len(features), -1)
    x[~np.isfinite(x)] = np.nan
    return x


class Predictor:
    """Predicts emotions with a loaded bundle and its backbone.

    Not thread-safe: one thread owns a predictor (the service gives it a dedicated executor thread).
    """

    def __init__(self, bundle: Bundle, backbone: Backbone, *, dtype_chosen: bool = True) -> None:
        self.bundle = bundle
        self.backbone = backbone
        self.labels: tuple[str, ...] = EMOTIONS
        classes = [str(c) for c in bundle.classifier.classes_]
        # Column of each emotion in predict_proba's output, in EMOTIONS order.
        self._columns = [classes.index(label) for label in EMOTIONS]
        if backbone.dtype != bundle.embedding_dtype:
            # A warning when someone chose the precision; where "auto" picked it (the device's fast one
            # differs from the training machine's), a note.
            log.log(
                logging.WARNING if dtype_chosen else logging.INFO,
                "serving embeddings in %s, but the classifier was trained on %s embeddings: predictions "
                "may differ slightly from the bundle's reported metrics (set the dtype to %s to serve "
                "the training precision)",
                backbone.dtype,
                bundle.embedding_dtype,
                bundle.embedding_dtype,
            )

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], options: EncoderOptions | None = None) -> Predictor:
        """Load and verify the bundle, then build the backbone its manifest names, run as ``options`` say.

        Raises:
            BundleError: the bundle is missing or refused, or its classifier does not fit the backbone;
            BackboneError: the encoder cannot be loaded.
        """
        bundle = load_bundle(path)
        options = options or EncoderOptions()
        backbone = build_backbone(bundle.backbone_spec, options)
        expected = bundle.manifest["backbone"].get("dim")
        if expected is not None and int(expected) != backbone.dim:
            raise BundleFormatError(
                f"the backbone gives {backbone.dim}-d embeddings but the classifier was trained on "
                f"{expected}-d ones: the model does not match the bundle"
            )
        return cls(bundle, backbone, dtype_chosen=options.dtype != "auto")

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone embeddings, float32 ``[n, d]``."""
        return self.backbone.embed_batch(waveforms)

    @property
    def session_minimum(self) -> int | None:
        """Utterances a session needs before its statistics are used; None: the bundle has no session
        classifier."""
        return self.bundle.session.minimum_utterances if self.bundle.session else None

    def classify(self, embeddings: np.ndarray, session: SessionStats | None = None) -> list[Prediction]:
        """Classify embeddings ``[n, d]``.

        Without ``session``, or when it holds fewer utterances than ``session_minimum`` (or the bundle has
        no session classifier), the single-clip classifier answers; otherwise the embeddings are
        normalised with the session's statistics and the session classifier answers.
        """
        if len(embeddings) == 0:
            return []
        features = sanitize_features(embeddings)
        model = self.bundle.session
        if session is not None and model is not None and session.utterances >= model.minimum_utterances:
            inputs = sanitize_features(session.normalise(features))
            classifier, reference, path = model.classifier, model.reference, SESSION
        else:
            inputs, classifier, reference, path = (
                features,
                self.bundle.classifier,
                self.bundle.reference,
                SINGLE,
            )
        proba = classifier.predict_proba(inputs)[:, self._columns]
        proba = np.clip(proba, 0.0, None)
        proba = proba / proba.sum(axis=1, keepdims=True)
        percentiles = None if reference is None else reference.percentile(inputs)
        policy = self.bundle.uncertainty
        results = []
        for i, row in enumerate(proba):
            best = int(np.argmax(row))
            percentile = None if percentiles is None else round(float(percentiles[i]), 2)
            reasons = policy.reasons(float(row[best]), percentile)
            results.append(
                Prediction(
                    label=EMOTIONS[best],
                    confidence=float(row[best]),
                    probabilities={label: float(p) for label, p in zip(EMOTIONS, row, strict=True)},
                    uncertain=bool(reasons),
                    uncertain_reasons=reasons,
                    ood_percentile=percentile,
                    classifier=path,
                    session_utterances=0 if session is None else session.utterances,
                    features=np.asarray(embeddings[i]),
                )
            )
        return results

    def predict_batch(self, waveforms: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict each mono float32 16 kHz waveform (shape ``[n_samples]``), in input order."""
        return self.classify(self.embed_batch(waveforms))

    def predict(self, waveform: np.ndarray) -> Prediction:
        """Predict one waveform: a batch of one through ``predict_batch``."""
        return self.predict_batch([waveform])[0]

    def warmup(self, seconds: float = 1.0, batch_size: int = 1) -> None:
        """Run a dummy batch through the whole path, so the first real request pays no start-up cost."""
        rng = np.random.default_rng(0)
        n = int(seconds * SAMPLE_RATE)
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(max(1, batch_size))]
        self.predict_batch(waves)

    def describe(self) -> ModelDescription:
        """The bundle and the backbone as served."""
        m = self.bundle.manifest
        return ModelDescription(
            name=self.bundle.name,
            version=self.bundle.version,
            labels=self.labels,
            backbone=dict(m["backbone"]),
            serving_dtype=self.backbone.dtype,
            classifier=(
                "numpy arrays (classifier.npz)"
                if isinstance(self.bundle.classifier, ClassifierArrays)
                else "scikit-learn pipeline (classifier.skops)"
            ),
            metrics=m.get("metrics", {}),
            training=m.get("training", {}),
            created_at=m.get("created_at"),
            path=str(self.bundle.path),
            session_minimum=self.session_minimum,
            uncertainty={
                **self.bundle.uncertainty.to_dict(),
                "distance_reference": self.bundle.reference is not None,
            },
        )
