"""The classifier: imputer -> StandardScaler -> PCA -> SVC (RBF kernel) with calibrated probabilities.

Probabilities come from Platt scaling (a sigmoid per class fitted on out-of-fold SVM decision values),
which is what ``SVC(probability=True)`` did internally; scikit-learn 1.9 deprecates that flag in favour of
``CalibratedClassifierCV(SVC(), ensemble=False)``, which keeps one SVM fitted on all the data.
"""

from __future__ import annotations

from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

DEFAULT_PCA_COMPONENTS = 200


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
) -> Pipeline:
    """The design document's classifier, sized to the data.

    PCA keeps ``min(pca_components, n_samples - 1, n_features)`` components, so small corpora and
    small embeddings (eGeMAPS has 88 features) still fit. The imputer replaces NaN (the predictor turns
    ±Inf into NaN first) with the training mean, so non-finite features never reach the SVM.
    Calibration uses ``min(5, min_class_count)`` folds, so every emotion needs 2 training clips or more.

    Raises:
        ValueError: an emotion has fewer than 2 training clips (probabilities cannot be calibrated).
    """
    if min_class_count < 2:
        raise ValueError("every emotion needs at least 2 training clips to calibrate its probabilities")
    components = max(1, min(pca_components, n_samples - 1, n_features))
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=components, random_state=seed)),
            (
                "svm",
                CalibratedClassifierCV(
                    SVC(kernel="rbf", C=C, gamma=gamma, class_weight=class_weight, random_state=seed),
                    method="sigmoid",
                    cv=min(5, min_class_count),
                    ensemble=False,
                ),
            ),
        ]
    )
