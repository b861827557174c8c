"""From waveforms to emotions: a backbone, then the bundle's classifier."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.backbones import Backbone, build_backbone
from shared.bundle import Bundle, load_bundle
from shared.classifier import ClassifierArrays
from shared.constants import EMOTIONS, SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One utterance's result.

    Attributes:
        label: the most probable emotion.
        confidence: its probability, in [0, 1].
        probabilities: every emotion of ``EMOTIONS`` (in that order) with its probability; they sum to 1.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class BatchTimings:
    """Seconds spent in each stage of the last ``predict_batch`` call."""

    embed_s: float = 0.0
    classify_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


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

    def __init__(self, bundle: Bundle, backbone: Backbone) -> None:
        self.bundle = bundle
        self.backbone = backbone
        self.labels: tuple[str, ...] = EMOTIONS
        classes = [str(c) for c in bundle.classifier.classes_]
        # Column of each emotion in predict_proba's output, in EMOTIONS order.
        self._columns = [classes.index(label) for label in EMOTIONS]
        self.last_timings = BatchTimings()
        if backbone.dtype != bundle.embedding_dtype:
            log.warning(
                "serving embeddings in %s, but the classifier was trained on %s embeddings: predictions "
                "may differ slightly from the bundle's reported metrics (set the dtype to %s to serve "
                "the training precision)",
                backbone.dtype,
                bundle.embedding_dtype,
                bundle.embedding_dtype,
            )

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        max_batch_size: int = 8,
        model_override: str | None = None,
        local_files_only: bool = False,
        backend: str = "torch",
        threads: int | None = None,
    ) -> Predictor:
        """Load and verify the bundle, then build the backbone its manifest names.

        ``dtype="auto"`` serves in the device's fast precision (see ``resolve_dtype``); ``backend`` is
        ``torch``, ``onnx`` or ``onnx-int8``; ``threads`` is the encoder's compute threads (``None``: the
        CPUs this process may use).

        Raises:
            BundleError: the bundle is missing or refused; BackboneError: the encoder cannot be loaded.
        """
        bundle = load_bundle(path)
        backbone = build_backbone(
            bundle.backbone_spec,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            model_override=model_override,
            local_files_only=local_files_only,
            backend=backend,
            threads=threads,
        )
        expected = bundle.manifest["backbone"].get("dim")
        if expected is not None and int(expected) != backbone.dim:
            from shared.errors import BundleFormatError

            raise BundleFormatError(
                f"the backbone gives {backbone.dim}-d embeddings but the classifier was trained on "
                f"{expected}-d ones: the model does not match the bundle"
            )
        return cls(bundle, backbone)

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone embeddings, float32 ``[n, d]``."""
        return self.backbone.embed_batch(waveforms)

    def classify(self, embeddings: np.ndarray) -> list[Prediction]:
        """Classify embeddings ``[n, d]`` with the bundle's pipeline."""
        if len(embeddings) == 0:
            return []
        proba = self.bundle.classifier.predict_proba(sanitize_features(embeddings))[:, self._columns]
        proba = np.clip(proba, 0.0, None)
        proba = proba / proba.sum(axis=1, keepdims=True)
        results = []
        for row in proba:
            best = int(np.argmax(row))
            results.append(
                Prediction(
                    label=EMOTIONS[best],
                    confidence=float(row[best]),
                    probabilities={label: float(p) for label, p in zip(EMOTIONS, row, strict=True)},
                )
            )
        return results

    def predict_batch(self, waveforms: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict each mono float32 16 kHz waveform (shape ``[n_samples]``), in input order."""
        t0 = time.perf_counter()
        embeddings = self.embed_batch(waveforms)
        t1 = time.perf_counter()
        results = self.classify(embeddings)
        self.last_timings = BatchTimings(embed_s=t1 - t0, classify_s=time.perf_counter() - t1)
        return results

    def predict(self, waveform: np.ndarray) -> Prediction:
        """Predict one waveform: a batch of one through ``predict_batch``."""
        return self.predict_batch([waveform])[0]

    def warmup(self, seconds: float = 1.0, batch_size: int = 1) -> None:
        """Run a dummy batch through the whole path, so the first real request pays no start-up cost."""
        rng = np.random.default_rng(0)
        n = int(seconds * SAMPLE_RATE)
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(max(1, batch_size))]
        self.predict_batch(waves)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the bundle and the backbone as served."""
        m = self.bundle.manifest
        return {
            "name": self.bundle.name,
            "version": self.bundle.version,
            "labels": list(self.labels),
            "backbone": m["backbone"],
            "serving_dtype": self.backbone.dtype,
            "classifier": (
                "numpy arrays (classifier.npz)"
                if isinstance(self.bundle.classifier, ClassifierArrays)
                else "scikit-learn pipeline (classifier.skops)"
            ),
            "metrics": m.get("metrics", {}),
            "training": m.get("training", {}),
            "created_at": m.get("created_at"),
            "path": str(self.bundle.path),
        }
