"""The fitted classifier as plain arrays, applied with numpy: what the service runs.

Training fits the sklearn pipeline of ``training.pipeline`` (imputer -> scaler -> PCA -> RBF SVC with
sigmoid-calibrated probabilities, one SVM fitted on all the data). Its fitted state is a handful of
arrays; ``ClassifierArrays.from_pipeline`` takes them out and ``predict_proba`` applies them in the
order scikit-learn does, to within rounding (tests hold them to 1e-12):

1. impute: NaN becomes the training mean of its feature;
2. scale: ``(x - mean) / scale``;
3. PCA: ``(x - mean) @ components.T`` (no whitening);
4. SVM, one-vs-one: for the pair of classes (i, j), ``sum_k coef_k * exp(-gamma * |x - sv_k|^2) +
   intercept`` over the support vectors of i and j (libsvm's layout: the coefficients of class i's
   vectors for pair (i, j) sit in row j - 1, those of class j's in row i);
5. one-vs-rest scores: the votes each class wins plus its summed pair margins squashed into
   (-1/3, 1/3), which breaks ties without overturning a vote;
6. Platt sigmoid per class, ``1 / (1 + exp(a * score + b))``, then normalised to sum to 1 (uniform where
   every class gets 0).

Why: the service then needs neither scikit-learn nor SciPy (nor pandas, which scikit-learn imports
when it is installed), which saves memory in every process and time at start-up. The arrays
are stored with ``numpy.savez`` and read with ``allow_pickle=False``, so reading them cannot run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS_FORMAT = 1


class UnsupportedPipelineError(ValueError):
    """The pipeline is not the shape ``ClassifierArrays`` can apply (it is then served through sklearn)."""


def _expit_neg(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(z))`` without overflow."""
    out = np.empty_like(z)
    pos = z >= 0
    ez = np.exp(-z[pos])
    out[pos] = ez / (1.0 + ez)
    out[~pos] = 1.0 / (1.0 + np.exp(z[~pos]))
    return out


@dataclass(frozen=True)
class ClassifierArrays:
    """The fitted pipeline's arrays (float64) and the numpy code that applies them.

    Attributes:
        classes: class names, in the order of ``predict_proba``'s columns.
        impute_fill: ``[d]`` value of each feature where it is NaN.
        scale_mean, scale_scale: ``[d]`` the scaler's centre and scale.
        pca_mean: ``[d]``; pca_components: ``[k, d]``.
        support_vectors: ``[n_sv, k]``, grouped by class; n_support: ``[c]`` how many each class has.
        dual_coef: ``[c - 1, n_sv]``; intercept: ``[c (c - 1) / 2]``, pairs in (0,1), (0,2)... order.
        gamma: the RBF kernel's width, as a 0-d array.
        calibration_a, calibration_b: ``[c]`` the sigmoid of each of the SVM's classes.
        calibration_columns: ``[c]`` the output column of each of the SVM's classes.
    """

    classes: tuple[str, ...]
    impute_fill: np.ndarray
    scale_mean: np.ndarray
    scale_scale: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    support_vectors: np.ndarray
    n_support: np.ndarray
    dual_coef: np.ndarray
    intercept: np.ndarray
    gamma: np.ndarray
    calibration_a: np.ndarray
    calibration_b: np.ndarray
    calibration_columns: np.ndarray

    @property
    def classes_(self) -> np.ndarray:
        """sklearn's name for ``classes``."""
        return np.asarray(self.classes)

    @property
    def n_features(self) -> int:
        return int(self.scale_mean.shape[0])

    # -- from sklearn --------------------------------------------------------------------------

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> ClassifierArrays:
        """Take the arrays out of a fitted ``training.pipeline.make_pipeline`` pipeline.

        Raises:
            UnsupportedPipelineError: other steps, kernels or settings (fewer than 3 classes, whitening,
                ``ensemble=True`` calibration, a non-sigmoid calibration...).
        """
        steps = dict(getattr(pipeline, "steps", []))
        names = [type(step).__name__ for step in steps.values()]
        if names != ["SimpleImputer", "StandardScaler", "PCA", "CalibratedClassifierCV"]:
            raise UnsupportedPipelineError(
                f"steps {names} are not imputer -> scaler -> PCA -> calibrated SVC"
            )
        imputer, scaler, pca, calibrated = steps.values()
        if imputer.strategy != "mean" or getattr(imputer, "add_indicator", False):
            raise UnsupportedPipelineError("the imputer must fill with the mean and add no indicator")
        if not (scaler.with_mean and scaler.with_std) or pca.whiten:
            raise UnsupportedPipelineError("the scaler must centre and scale, and PCA must not whiten")
        if calibrated.method != "sigmoid" or len(calibrated.calibrated_classifiers_) != 1:
            raise UnsupportedPipelineError("calibration must be one sigmoid-calibrated SVM (ensemble=False)")
        fitted = calibrated.calibrated_classifiers_[0]
        svm = fitted.estimator
        if type(svm).__name__ != "SVC" or svm.kernel != "rbf" or svm.decision_function_shape != "ovr":
            raise UnsupportedPipelineError("the classifier must be an RBF SVC with one-vs-rest scores")
        if len(svm.classes_) < 3:
            raise UnsupportedPipelineError("two-class SVMs are not supported")
        classes = [str(c) for c in calibrated.classes_]
        columns = [classes.index(str(c)) for c in svm.classes_]
        fill = np.asarray(imputer.statistics_, dtype=np.float64)
        return cls(
            classes=tuple(classes),
            impute_fill=np.where(np.isnan(fill), 0.0, fill),
            scale_mean=np.asarray(scaler.mean_, dtype=np.float64),
            scale_scale=np.asarray(scaler.scale_, dtype=np.float64),
            pca_mean=np.asarray(pca.mean_, dtype=np.float64),
            pca_components=np.asarray(pca.components_, dtype=np.float64),
            support_vectors=np.asarray(svm.support_vectors_, dtype=np.float64),
            n_support=np.asarray(svm.n_support_, dtype=np.int64),
            dual_coef=np.asarray(svm.dual_coef_, dtype=np.float64),
            intercept=np.asarray(svm.intercept_, dtype=np.float64),
            gamma=np.asarray(float(svm._gamma), dtype=np.float64),
            calibration_a=np.asarray([float(c.a_) for c in fitted.calibrators], dtype=np.float64),
            calibration_b=np.asarray([float(c.b_) for c in fitted.calibrators], dtype=np.float64),
            calibration_columns=np.asarray(columns, dtype=np.int64),
        )

    # -- applying ------------------------------------------------------------------------------

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Features ``[n, d]`` (NaN allowed) to PCA coordinates ``[n, k]``."""
        x = np.asarray(x, dtype=np.float64)
        x = np.where(np.isnan(x), self.impute_fill, x)
        x = (x - self.scale_mean) / self.scale_scale
        return (x - self.pca_mean) @ self.pca_components.T

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """One-vs-rest SVM scores ``[n, c]`` of features ``[n, d]`` (the SVM's class order)."""
        z = self.transform(x)
        sv = self.support_vectors
        sq = (z * z).sum(axis=1)[:, None] + (sv * sv).sum(axis=1)[None, :] - 2.0 * (z @ sv.T)
        kernel = np.exp(-float(self.gamma) * np.maximum(sq, 0.0))
        n_classes = len(self.n_support)
        starts = np.concatenate([[0], np.cumsum(self.n_support)])
        votes = np.zeros((len(z), n_classes))
        margins = np.zeros((len(z), n_classes))
        pair = 0
        for i in range(n_classes):
            si = slice(starts[i], starts[i + 1])
            for j in range(i + 1, n_classes):
                sj = slice(starts[j], starts[j + 1])
                dec = (
                    kernel[:, si] @ self.dual_coef[j - 1, si]
                    + kernel[:, sj] @ self.dual_coef[i, sj]
                    + self.intercept[pair]
                )
                votes[:, i] += dec >= 0
                votes[:, j] += dec < 0
                margins[:, i] += dec
                margins[:, j] -= dec
                pair += 1
        return votes + margins / (3.0 * (np.abs(margins) + 1.0))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[n, c]`` (columns in ``classes`` order) of features ``[n, d]``."""
        scores = self.decision_function(x)
        proba = np.zeros_like(scores)
        proba[:, self.calibration_columns] = _expit_neg(self.calibration_a * scores + self.calibration_b)
        total = proba.sum(axis=1, keepdims=True)
        proba = np.divide(proba, total, out=np.full_like(proba, 1.0 / proba.shape[1]), where=total != 0)
        proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the arrays to ``path`` (an ``.npz`` file)."""
        arrays: dict[str, Any] = {name: np.asarray(getattr(self, name)) for name in _field_names()}
        arrays["classes"] = np.asarray(self.classes, dtype=np.str_)
        arrays["format_version"] = np.asarray(ARRAYS_FORMAT)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassifierArrays:
        """Read arrays written by ``save``; no pickled object is ever read.

        Raises:
            ValueError: not such a file, a newer format, or arrays whose shapes do not fit together.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                found = {name: data[name] for name in data.files}
        except Exception as exc:
            raise ValueError(f"{Path(path).name} is not a readable classifier array file: {exc}") from exc
        missing = [name for name in (*_field_names(), "format_version") if name not in found]
        if missing:
            raise ValueError(f"{Path(path).name} lacks the arrays {', '.join(missing)}")
        if int(found["format_version"]) > ARRAYS_FORMAT:
            raise ValueError(
                f"{Path(path).name} has format {int(found['format_version'])}; this code reads up to "
                f"{ARRAYS_FORMAT}: upgrade the package"
            )
        arrays = {name: found[name] for name in _field_names()}
        arrays["classes"] = tuple(str(c) for c in found["classes"])
        out = cls(**arrays)
        out._check_shapes()
        return out

    def _check_shapes(self) -> None:
        d, (k, d2) = self.scale_mean.shape[0], self.pca_components.shape
        c, n_sv = len(self.n_support), int(self.n_support.sum())
        ok = (
            self.impute_fill.shape == self.scale_scale.shape == self.pca_mean.shape == (d,)
            and d2 == d
            and self.support_vectors.shape == (n_sv, k)
            and self.dual_coef.shape == (c - 1, n_sv)
            and self.intercept.shape == (c * (c - 1) // 2,)
            and self.gamma.shape == ()
            and self.calibration_a.shape == self.calibration_b.shape == self.calibration_columns.shape == (c,)
            and len(self.classes) == c
            and sorted(self.calibration_columns.tolist()) == list(range(c))
        )
        if not ok:
            raise ValueError("the classifier's arrays do not fit together (a damaged or hand-edited file)")


def _field_names() -> list[str]:
    """The arrays a file holds: every field of ``ClassifierArrays``."""
    return [f.name for f in fields(ClassifierArrays)]
