"""How far an utterance's features lie from the training data, and when a prediction is uncertain.

A classifier answers something for every input; far from its training data the answer is an
extrapolation, often the same emotion for everything, stated with ordinary-looking confidence. The
``FeatureReference`` of a bundle says how far features are from the training features:

1. standardise each feature with the training mean and standard deviation (NaN: the training mean);
2. project onto the principal directions of the standardised training features (the strongest
   ``MAX_COMPONENTS``), each divided by its own standard deviation (whitening), and take the Euclidean
   norm: the Mahalanobis distance in that subspace. The weak directions matter: a channel change breaks
   the correlations between features before it moves any one of them far;
3. report it as a percentile of the training clips' own distances, measured out of fold (0-100; 100
   is farther than every training clip).

``Uncertainty`` turns that and the top probability into a verdict: a prediction is uncertain when its
percentile is above ``ood_percentile`` (out of distribution) or its top probability is below
``confidence_threshold`` (the classifier cannot tell the emotions apart). The thresholds are recorded in
the bundle; the defaults are below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FORMAT = 1
#: Most principal directions a reference keeps (the strongest ones).
MAX_COMPONENTS = 256
#: Folds of the out-of-fold training distances.
REFERENCE_FOLDS = 5
#: Quantiles of the training distances a reference keeps (0.1 percentile apart).
QUANTILES = 1001
#: Defaults of ``Uncertainty``.
DEFAULT_OOD_PERCENTILE = 99.0
DEFAULT_CONFIDENCE_THRESHOLD = 0.35

OUT_OF_DISTRIBUTION = "out_of_distribution"
LOW_CONFIDENCE = "low_confidence"
REASONS = (OUT_OF_DISTRIBUTION, LOW_CONFIDENCE)


@dataclass(frozen=True)
class FeatureReference:
    """Where a classifier's training features lie (float64 arrays).

    Attributes:
        fill: ``[d]`` the training mean, which replaces NaN; scale: ``[d]`` the training standard deviation.
        components: ``[k, d]`` principal directions of the standardised features; spread: ``[k]`` the
            standard deviation along each.
        quantiles: ``[QUANTILES]`` the training clips' distances at percentiles 0, 0.1, ... 100.
    """

    fill: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    spread: np.ndarray
    quantiles: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, folds: int = REFERENCE_FOLDS) -> FeatureReference:
        """The reference of training features ``[n, d]`` (NaN and ±Inf allowed).

        The directions come from all of ``features``; the distances its percentiles are read against are
        out of fold: each clip's distance from a reference fitted on the other folds, so a new clip like
        the training ones gets the percentiles they get, however many directions there are (a clip's
        distance from a reference fitted on itself is smaller). The folds are random, not grouped by
        speaker: a reference that expects every new voice to be as far as the farthest training speaker
        passes most recordings from other corpora (measured on RAVDESS: grouped folds flagged 8% of the
        CREMA-D clips, random ones 58%, while new RAVDESS actors are flagged 1% of the time either way).
        With fewer than ``4 * folds`` clips, each clip's distance is measured leaving it out alone.
        """
        x = _clean(features)
        fill, scale, components, spread = _fit_arrays(x)
        distances = _out_of_fold_distances(x, folds)
        return cls(
            fill=fill,
            scale=scale,
            components=components,
            spread=spread,
            quantiles=np.quantile(distances, np.linspace(0.0, 1.0, QUANTILES)),
        )

    @property
    def n_features(self) -> int:
        return int(self.fill.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Whitened distances ``[n]`` of features ``[n, d]`` from the training centre."""
        return _distance(features, self.fill, self.scale, self.components, self.spread)

    def percentile(self, features: np.ndarray) -> np.ndarray:
        """Each row's distance as a percentile of the training distances ``[n]``, in [0, 100]."""
        d = self.distance(features)
        grid = np.linspace(0.0, 100.0, len(self.quantiles))
        return np.interp(d, self.quantiles, grid, left=0.0, right=100.0)

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        arrays: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        with open(path, "wb") as fh:
            np.savez(fh, format_version=np.asarray(REFERENCE_FORMAT), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureReference:
        """Read a reference written by ``save`` (no pickle).

        Raises:
            ValueError: not such a file, a newer format, or arrays that do not fit together.
        """
        name = Path(path).name
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                found = {key: data[key] for key in data.files}
        except Exception as exc:
            raise ValueError(f"{name} is not a readable feature reference: {exc}") from exc
        names = [f.name for f in fields(cls)]
        missing = [key for key in (*names, "format_version") if key not in found]
        if missing:
            raise ValueError(f"{name} lacks the arrays {', '.join(missing)}")
        try:
            version = int(found["format_version"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: its format version is not a number") from exc
        if version > REFERENCE_FORMAT:
            raise ValueError(f"{name} has format {version}: upgrade the package")
        try:
            ref = cls(**{key: np.asarray(found[key], dtype=np.float64) for key in names})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: the reference's arrays are not numeric: {exc}") from exc
        shapes_fit = (
            ref.fill.ndim == 1
            and ref.components.ndim == 2
            and ref.scale.shape == ref.fill.shape
            and ref.components.shape[1] == ref.fill.shape[0]
            and ref.spread.shape == (ref.components.shape[0],)
            and ref.quantiles.ndim == 1
            and len(ref.quantiles) >= 2
        )
        if not shapes_fit:
            raise ValueError(f"{name}: the reference's arrays do not fit together")
        if not all(np.isfinite(getattr(ref, key)).all() for key in names):
            raise ValueError(f"{name}: the reference holds values that are not finite")
        if np.any(ref.scale <= 0) or np.any(ref.spread <= 0):
            raise ValueError(f"{name}: the reference's scales must be positive")
        if np.any(np.diff(ref.quantiles) < 0):
            raise ValueError(f"{name}: the reference's quantiles are not sorted")
        return ref


def _clean(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return np.where(np.isfinite(x), x, np.nan)


def _fit_arrays(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre, scale, whitened directions, their spread) of features ``[n, d]`` (NaN: missing)."""
    with np.errstate(invalid="ignore"):
        centre = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
    centre = np.where(np.isfinite(centre), centre, 0.0)
    x = np.where(np.isnan(x), centre, x)
    std = x.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    z = (x - centre) / scale
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    variance = singular**2 / max(1, len(z) - 1)
    keep = variance > 1e-9 * max(1.0, float(variance.max(initial=0.0)))
    variance, vt = variance[keep][:MAX_COMPONENTS], vt[keep][:MAX_COMPONENTS]
    if len(variance) == 0:  # every feature constant: distances are 0 at the centre and grow off it
        variance, vt = np.ones(1), np.eye(1, x.shape[1])
    return centre, scale, vt, np.sqrt(variance)


def _distance(
    features: np.ndarray, centre: np.ndarray, scale: np.ndarray, components: np.ndarray, spread: np.ndarray
) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    x = np.where(np.isfinite(x), x, centre)
    projected = ((x - centre) / scale) @ components.T / spread
    return np.sqrt((projected * projected).sum(axis=1))


def _out_of_fold_distances(x: np.ndarray, folds: int) -> np.ndarray:
    n = len(x)
    if n < 3:  # nothing to leave out: the clips' own distances
        return _distance(x, *_fit_arrays(x))
    if n < 4 * folds:
        folds = n
    fold = np.random.default_rng(0).permutation(n) % folds
    out = np.empty(n)
    for k in range(folds):
        held = fold == k
        out[held] = _distance(x[held], *_fit_arrays(x[~held]))
    return out


@dataclass(frozen=True)
class Uncertainty:
    """When a prediction is flagged uncertain.

    Attributes:
        ood_percentile: features farther from the training data than this percentile of the training
            clips' own distances are out of distribution.
        confidence_threshold: a top probability below this is too low to act on (chance is 1/6).
    """

    ood_percentile: float = DEFAULT_OOD_PERCENTILE
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 <= self.ood_percentile <= 100.0:  # also refuses NaN
            raise ValueError(f"ood_percentile must be within 0-100, got {self.ood_percentile!r}")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be within 0-1, got {self.confidence_threshold!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Uncertainty:
        """The thresholds of a manifest's ``uncertainty`` entry (defaults where absent).

        Raises:
            ValueError: a threshold that is not a number in its range.
        """
        data = data or {}
        return cls(
            ood_percentile=float(data.get("ood_percentile", DEFAULT_OOD_PERCENTILE)),
            confidence_threshold=float(data.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD)),
        )

    def to_dict(self) -> dict[str, float]:
        return {"ood_percentile": self.ood_percentile, "confidence_threshold": self.confidence_threshold}

    def reasons(self, confidence: float, percentile: float | None) -> tuple[str, ...]:
        """Why a prediction with this top probability and distance percentile is uncertain (empty: it is not)."""
        out = []
        if percentile is not None and percentile > self.ood_percentile:
            out.append(OUT_OF_DISTRIBUTION)
        if confidence < self.confidence_threshold:
            out.append(LOW_CONFIDENCE)
        return tuple(out)
