"""The classifier: imputer -> StandardScaler -> PCA -> SVC (RBF kernel) with calibrated probabilities.

Probabilities come from Platt scaling (a sigmoid per class fitted on out-of-fold SVM decision values),
which is what ``SVC(probability=True)`` did internally; scikit-learn 1.9 deprecates that flag in favour of
``CalibratedClassifierCV(SVC(), ensemble=False)``, which keeps one SVM fitted on all the data.

``classifier="ensemble"`` replaces the SVM with soft voting over three calibrated classifiers on the
same PCA features: that SVM, a multinomial logistic regression (calibrated by its loss) and a random
forest (Platt-scaled like the SVM), the mean of their probabilities. The service applies it through the
skops pipeline, as it does any pipeline ``shared.classifier`` cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

DEFAULT_PCA_COMPONENTS = 200
CLASSIFIERS = ("svm", "ensemble")
#: Trees of the ensemble's random forest, and the fewest clips a leaf holds (which bounds its size).
FOREST_TREES = 100
FOREST_MIN_LEAF = 3


def make_pipeline(
    n_samples: int,
    n_features: int,
    *,
    min_class_count: int = 5,
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    C: float = 1.0,
    gamma: str | float = "scale",
    class_weight: str | None = "balanced",
    seed: int = 0,
    classifier: str = "svm",
) -> Pipeline:
    """The design document's classifier, sized to the data.

    PCA keeps ``min(pca_components, n_samples - 1, n_features)`` components, so small corpora and
    small embeddings (eGeMAPS has 88 features) still fit. The imputer replaces NaN (the predictor turns
    ±Inf into NaN first) with the training mean, so non-finite features never reach the SVM.
    Calibration uses ``min(5, min_class_count)`` folds, so every emotion needs 2 training clips or more.

    Raises:
        ValueError: an emotion has fewer than 2 training clips (probabilities cannot be calibrated), or
            ``classifier`` is not one of ``CLASSIFIERS``.
    """
    if min_class_count < 2:
        raise ValueError("every emotion needs at least 2 training clips to calibrate its probabilities")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; accepted: {', '.join(CLASSIFIERS)}")
    components = max(1, min(pca_components, n_samples - 1, n_features))
    folds = min(5, min_class_count)
    svm = CalibratedClassifierCV(
        SVC(kernel="rbf", C=C, gamma=gamma, class_weight=class_weight, random_state=seed),
        method="sigmoid",
        cv=folds,
        ensemble=False,
    )
    final: tuple[str, Any] = ("svm", svm)
    if classifier == "ensemble":
        forest = RandomForestClassifier(
            n_estimators=FOREST_TREES,
            min_samples_leaf=FOREST_MIN_LEAF,
            class_weight=class_weight,
            random_state=seed,
            n_jobs=1,
        )
        final = (
            "ensemble",
            VotingClassifier(
                [
                    ("svm", svm),
                    ("lr", LogisticRegression(max_iter=2000, class_weight=class_weight)),
                    ("rf", CalibratedClassifierCV(forest, method="sigmoid", cv=folds, ensemble=False)),
                ],
                voting="soft",
            ),
        )
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=components, random_state=seed)),
            final,
        ]
    )


def fit_pipeline(
    x: np.ndarray, labels: Sequence[str] | np.ndarray, *, seed: int = 0, **options: Any
) -> Pipeline:
    """``make_pipeline`` sized to features ``[n, d]`` and their labels, fitted on them.

    Raises:
        ValueError: an emotion present has fewer than 2 clips.
    """
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    model = make_pipeline(
        len(x), x.shape[1], min_class_count=int(counts.min()) if len(counts) else 0, seed=seed, **options
    )
    return model.fit(x, y)
