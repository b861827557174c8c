"""The model bundle: a versioned folder holding a manifest and the fitted classifier.

Layout::

    <artifacts>/<name>/<version>/
        manifest.json          what the bundle is, how it was made, and a sha256 for every other file
        classifier.skops       the fitted sklearn pipeline (imputer -> scaler -> PCA -> calibrated SVC), skops format
        classifier.npz         the same classifier's fitted arrays, which the service applies with numpy
                               (``shared.classifier``), so it never imports scikit-learn
        report.json, report.md, confusion_matrix.png    evaluation results (optional)

The classifier is stored with skops, not pickle, and loaded with an explicit list of trusted types,
so loading a bundle cannot run arbitrary code; ``classifier.npz`` holds only numeric and string arrays,
read without pickle. A bundle without ``classifier.npz`` (older ones, or a pipeline of another shape)
is served through the skops pipeline. The loader refuses a bundle whose files do not match
their recorded sha256 and size, whose format version is newer than this code understands, whose
labels are not the six emotions, whose classifier arrays do not fit together, or whose classifier file,
when it is read, is not a skops archive of trusted types.

Format versions: ``FORMAT_VERSION`` is bumped when a manifest field is added that a loader must
understand, or when a field changes meaning. A loader accepts every version from 1 up to its own
and refuses newer ones. Optional, purely informative fields may be added without a bump. A bundle is
written with the lowest version that holds it, so older services keep loading what they can serve:

- 1: the first format;
- 2: the backbone record may ask for input normalisation (``level_dbfs``, ``trim_silence``), which a
  loader must apply; a bundle without it is still written as version 1.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from shared.backbones.base import BackboneSpec
from shared.classifier import ClassifierArrays, UnsupportedPipelineError
from shared.constants import EMOTIONS
from shared.errors import (
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleLabelError,
    BundleNotFoundError,
)
from shared.hashing import sha256_file
from shared.uncertainty import FeatureReference, Uncertainty

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
CLASSIFIER = "classifier.skops"
CLASSIFIER_ARRAYS = "classifier.npz"
#: The classifier fitted on session-normalised features (``shared.session``), and its arrays.
SESSION_CLASSIFIER = "session_classifier.skops"
SESSION_CLASSIFIER_ARRAYS = "session_classifier.npz"
#: Where each classifier's training features lie (``shared.uncertainty.FeatureReference``).
REFERENCE = "reference.npz"
SESSION_REFERENCE = "session_reference.npz"
RESERVED_FILES = (
    MANIFEST,
    CLASSIFIER,
    CLASSIFIER_ARRAYS,
    SESSION_CLASSIFIER,
    SESSION_CLASSIFIER_ARRAYS,
    REFERENCE,
    SESSION_REFERENCE,
)

#: The only types a classifier file may contain. Anything else is refused before loading.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.decomposition._pca.PCA",
    "sklearn.svm._classes.SVC",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    # the ensemble (training.pipeline, classifier="ensemble")
    "sklearn.ensemble._voting.VotingClassifier",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.utils._bunch.Bunch",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.float32",
    "numpy.int64",
    "numpy.int32",
    "numpy.str_",
    "builtins.tuple",
    "builtins.list",
    "builtins.dict",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.NoneType",
)

_REQUIRED_KEYS = ("format_version", "name", "version", "labels", "backbone", "classifier", "files")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class SessionModel:
    """The classifier for session-normalised features (``shared.session``) and what it needs.

    Attributes:
        classifier: like ``Bundle.classifier``, fitted on features z-scored per speaker.
        reference: where those normalised training features lie (None in bundles without one).
        minimum_utterances: a session is used from this many utterances on.
    """

    classifier: Any
    reference: FeatureReference | None
    minimum_utterances: int


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        classifier: what predicts, with ``classes_`` and ``predict_proba(x [n, d]) -> [n, classes]``: the
            ``ClassifierArrays`` where the bundle has them, else the sklearn pipeline.
        reference: where the classifier's training features lie (None in bundles without one).
        session: the session-normalised classifier (None in bundles without one).
        uncertainty: when a prediction is flagged uncertain.
    """

    path: Path
    manifest: dict[str, Any]
    classifier: Any
    reference: FeatureReference | None = None
    session: SessionModel | None = None
    uncertainty: Uncertainty = Uncertainty()

    @cached_property
    def pipeline(self) -> Any:
        """The fitted sklearn pipeline, read from the skops file on first use (imports scikit-learn)."""
        if not isinstance(self.classifier, ClassifierArrays):
            return self.classifier
        return load_classifier(self.path / CLASSIFIER)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def backbone_spec(self) -> BackboneSpec:
        return BackboneSpec.from_dict(self.manifest["backbone"])

    @property
    def embedding_dtype(self) -> str:
        """The precision that produced the training embeddings."""
        return str(self.manifest["backbone"].get("dtype", "fp32"))


def format_version_for(backbone: dict[str, Any]) -> int:
    """The lowest format version that holds a bundle with this backbone record (see the module doc)."""
    normalises = backbone.get("level_dbfs") is not None or bool(backbone.get("trim_silence"))
    return 2 if normalises else 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a bundle's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "skops", "torch", "transformers", "opensmile"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def save_bundle(
    artifacts: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    pipeline: Any,
    backbone: dict[str, Any],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    labels: tuple[str, ...] = EMOTIONS,
    reference: FeatureReference | None = None,
    session_pipeline: Any | None = None,
    session_reference: FeatureReference | None = None,
    session: dict[str, Any] | None = None,
    uncertainty: Uncertainty | None = None,
) -> Path:
    """Write a new bundle to ``<artifacts>/<name>/<version>/`` and return that folder.

    Args:
        pipeline: the fitted sklearn pipeline; its ``classes_`` must be the six emotions.
        backbone: the backbone spec as a dict plus ``dim`` and ``dtype`` (the embeddings' precision).
        training: a JSON-serialisable summary of the training data and protocol.
        metrics: the headline evaluation figures.
        extra_files: more files to store (``report.md``, ``confusion_matrix.png``...), hashed like the rest.
        reference: where ``pipeline``'s training features lie (out-of-distribution percentiles).
        session_pipeline, session_reference: the classifier fitted on session-normalised features, and
            its reference; ``session`` what the manifest records about it (``minimum_utterances``...).
        uncertainty: the thresholds that flag a prediction uncertain.

    Raises:
        BundleExistsError: that version already exists (versions are never overwritten).
        BundleLabelError: the pipeline's classes are not the six emotions.
    """
    for what, value in (("name", name), ("version", version)):
        if not _NAME_RE.fullmatch(value):
            raise BundleFormatError(
                f"bundle {what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 128)"
            )
    _check_labels(labels, [str(c) for c in getattr(pipeline, "classes_", [])])
    if session_pipeline is not None:
        _check_labels(labels, [str(c) for c in getattr(session_pipeline, "classes_", [])])
    final = Path(artifacts) / name / version
    if final.exists():
        raise BundleExistsError(
            f"bundle {name}/{version} already exists at {final}; choose another --version"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
    try:
        classifier = _write_classifier(staging, pipeline, CLASSIFIER, CLASSIFIER_ARRAYS)
        if reference is not None:
            reference.save(staging / REFERENCE)
        session_entry = None
        if session_pipeline is not None:
            session_entry = {
                **(session or {}),
                "classifier": _write_classifier(
                    staging, session_pipeline, SESSION_CLASSIFIER, SESSION_CLASSIFIER_ARRAYS
                ),
            }
            if session_reference is not None:
                session_reference.save(staging / SESSION_REFERENCE)
                session_entry["reference"] = SESSION_REFERENCE
        for fname, data in (extra_files or {}).items():
            if "/" in fname or fname in RESERVED_FILES:
                raise BundleFormatError(f"extra file name {fname!r} is not allowed")
            (staging / fname).write_bytes(data)
        files = {
            p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(staging.iterdir())
            if p.is_file()
        }
        manifest = {
            "format_version": format_version_for(backbone),
            "name": name,
            "version": version,
            "labels": list(labels),
            "backbone": backbone,
            "classifier": classifier,
            **({"session": session_entry} if session_entry else {}),
            "uncertainty": {
                **(uncertainty or Uncertainty()).to_dict(),
                **({"reference": REFERENCE} if reference is not None else {}),
            },
            "training": training or {},
            "metrics": metrics or {},
            "libraries": library_versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (a service account)
        staging.rename(final)  # atomic: a half-written bundle is never visible under its version
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _write_classifier(staging: Path, pipeline: Any, skops_name: str, arrays_name: str) -> dict[str, Any]:
    """Store a pipeline with skops (and its arrays where it has the supported shape); its manifest entry."""
    import skops.io as sio

    sio.dump(pipeline, staging / skops_name)
    arrays = _classifier_arrays(pipeline)
    if arrays is not None:
        arrays.save(staging / arrays_name)
    return {
        "file": skops_name,
        "format": "skops",
        "steps": [f"{step}:{type(est).__name__}" for step, est in getattr(pipeline, "steps", [])],
        **({"arrays": arrays_name} if arrays is not None else {}),
    }


def _classifier_arrays(pipeline: Any) -> ClassifierArrays | None:
    """The pipeline's arrays, checked to give its probabilities; None for a pipeline of another shape."""
    try:
        arrays = ClassifierArrays.from_pipeline(pipeline)
    except UnsupportedPipelineError:
        return None
    # Probe points spread like the training features, some with missing values.
    rng = np.random.default_rng(0)
    probe = arrays.scale_mean + arrays.scale_scale * rng.normal(size=(32, arrays.n_features)) * 1.5
    probe[0, :] = np.nan
    probe[1, :: max(1, arrays.n_features // 7)] = np.nan
    gap = float(np.abs(arrays.predict_proba(probe) - pipeline.predict_proba(probe)).max())
    if not gap <= 1e-6:
        raise RuntimeError(
            f"the classifier's arrays give probabilities {gap:.3g} away from the sklearn pipeline's: "
            "this scikit-learn version computes them differently; please report it"
        )
    return arrays


def _version_key(version: str) -> tuple:
    # Natural order: "2" < "10", "20260101.120000" < "20260102.090000".
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[._-]", version)
    )


def list_bundles(root: str | os.PathLike[str]) -> list[Path]:
    """Every bundle folder (one holding a manifest) at or below ``root`` (at most two levels down)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    found = [p.parent for p in root.glob(f"*/{MANIFEST}")]
    found += [p.parent for p in root.glob(f"*/*/{MANIFEST}")]
    return sorted(set(found))


def resolve_bundle_dir(path: str | os.PathLike[str]) -> Path:
    """Turn a bundle folder, a ``<name>`` folder of versions, or an artifacts root into one bundle folder.

    Where several bundles are found, the newest version wins: within one name by version order, across
    names by the manifest's ``created_at``.

    Raises:
        BundleNotFoundError: nothing that looks like a bundle is there.
    """
    root = Path(path)
    if not root.exists():
        raise BundleNotFoundError(f"no bundle at {root}: the folder does not exist")
    bundles = list_bundles(root)
    if not bundles:
        raise BundleNotFoundError(
            f"no bundle found in {root}: expected {MANIFEST} in it, or in <name>/<version>/ below it"
        )

    def created(p: Path) -> str:
        try:
            return str(json.loads((p / MANIFEST).read_text()).get("created_at", ""))
        except (OSError, ValueError):
            return ""

    return max(bundles, key=lambda p: (created(p), _version_key(p.name)))


def _check_labels(labels: Any, classes: list[str]) -> None:
    if not isinstance(labels, (list, tuple)) or sorted(map(str, labels)) != sorted(EMOTIONS):
        raise BundleLabelError(
            f"bundle labels {labels!r} are not the six emotions this service predicts: {', '.join(EMOTIONS)}"
        )
    if sorted(classes) != sorted(EMOTIONS):
        raise BundleLabelError(
            f"the classifier predicts {classes!r}, not the six emotions: {', '.join(EMOTIONS)}"
        )


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Read and validate ``manifest.json`` (structure and format version only; no file hashes)."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleNotFoundError(f"{path} does not exist: not a bundle folder")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{path} must hold a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleFormatError(f"{path} lacks required fields: {', '.join(missing)}")
    fmt = manifest["format_version"]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise BundleFormatError(f"{path}: format_version must be a positive integer, got {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise BundleFormatError(
            f"bundle format version {fmt} is newer than this software understands (up to {FORMAT_VERSION}); "
            "upgrade the service to load it"
        )
    if not isinstance(manifest["files"], dict) or CLASSIFIER not in manifest["files"]:
        raise BundleFormatError(f"{path}: 'files' must list {CLASSIFIER} with its sha256 and size")
    if not isinstance(manifest["backbone"], dict):
        raise BundleFormatError(f"{path}: 'backbone' must be an object")
    return manifest


def verify_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Check every file listed in the manifest against its sha256 and size.

    Raises:
        BundleIntegrityError: a file is missing, or its size or hash differ.
    """
    for fname, meta in manifest["files"].items():
        if not isinstance(meta, dict) or "/" in fname or fname.startswith(".."):
            raise BundleFormatError(f"manifest entry for {fname!r} is malformed")
        path = bundle_dir / fname
        if not path.is_file():
            raise BundleIntegrityError(f"bundle file {fname} is missing from {bundle_dir}")
        if path.stat().st_size != meta.get("size") or sha256_file(path) != meta.get("sha256"):
            raise BundleIntegrityError(
                f"bundle file {fname} does not match its recorded sha256/size: the bundle was altered "
                "or damaged; rebuild or re-download it"
            )


def load_classifier(path: Path) -> Any:
    """Load a skops classifier file, trusting only ``TRUSTED_TYPES``.

    Raises:
        BundleFormatError: not a skops archive (a pickle, say), or it holds an untrusted type.
    """
    import skops.io as sio

    if not zipfile.is_zipfile(path):
        raise BundleFormatError(
            f"{path.name} is not a skops archive (pickle and joblib files are refused: they can run code)"
        )
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise BundleFormatError(f"{path.name} is not a readable skops archive: {exc}") from exc
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise BundleFormatError(f"{path.name} contains types that are not trusted: {', '.join(unexpected)}")
    try:
        return sio.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise BundleFormatError(f"{path.name} could not be loaded: {exc}") from exc


def _load_classifier_entry(
    bundle_dir: Path, manifest: dict[str, Any], meta: Any, skops_name: str, arrays_name: str
) -> Any:
    """The classifier an entry of the manifest names: its arrays where it has them, else its skops file."""
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("file", skops_name) != skops_name or skops_name not in manifest["files"]:
        raise BundleIntegrityError(
            f"the manifest names a classifier {meta.get('file')!r}; expected {skops_name}"
        )
    arrays_file = meta.get("arrays")
    if not arrays_file:
        return load_classifier(bundle_dir / skops_name)
    if arrays_file != arrays_name or arrays_file not in manifest["files"]:
        raise BundleIntegrityError(
            f"the manifest names classifier arrays {arrays_file!r}; expected {arrays_name}, "
            "recorded with its sha256"
        )
    try:
        return ClassifierArrays.load(bundle_dir / arrays_file)
    except ValueError as exc:
        raise BundleFormatError(str(exc)) from exc


def _load_reference(
    bundle_dir: Path, manifest: dict[str, Any], fname: Any, expected: str, dim: int | None
) -> FeatureReference | None:
    if fname is None:
        return None
    if fname != expected or fname not in manifest["files"]:
        raise BundleIntegrityError(f"the manifest names a feature reference {fname!r}; expected {expected}")
    try:
        reference = FeatureReference.load(bundle_dir / fname)
    except ValueError as exc:
        raise BundleFormatError(str(exc)) from exc
    if dim is not None and reference.n_features != dim:
        raise BundleFormatError(
            f"{fname} describes {reference.n_features}-d features; the classifier takes {dim}"
        )
    return reference


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Resolve, verify and load a bundle (see ``resolve_bundle_dir`` for what ``path`` may be).

    Raises:
        BundleNotFoundError, BundleFormatError, BundleIntegrityError, BundleLabelError.
    """
    bundle_dir = resolve_bundle_dir(path)
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    classifier = _load_classifier_entry(
        bundle_dir, manifest, manifest["classifier"], CLASSIFIER, CLASSIFIER_ARRAYS
    )
    _check_labels(manifest["labels"], [str(c) for c in getattr(classifier, "classes_", [])])
    try:
        BackboneSpec.from_dict(manifest["backbone"])
    except Exception as exc:
        raise BundleFormatError(f"the manifest's backbone spec is invalid: {exc}") from exc
    dim = manifest["backbone"].get("dim")
    found = manifest.get("uncertainty")
    uncertainty: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        policy = Uncertainty.from_dict(uncertainty)
    except (TypeError, ValueError) as exc:
        raise BundleFormatError(f"the manifest's uncertainty thresholds are invalid: {exc}") from exc
    reference = _load_reference(bundle_dir, manifest, uncertainty.get("reference"), REFERENCE, dim)
    session = None
    entry = manifest.get("session")
    if entry is not None:
        if not isinstance(entry, dict) or not isinstance(entry.get("minimum_utterances"), int):
            raise BundleFormatError(
                "the manifest's 'session' entry must be an object with minimum_utterances"
            )
        session_classifier = _load_classifier_entry(
            bundle_dir, manifest, entry.get("classifier"), SESSION_CLASSIFIER, SESSION_CLASSIFIER_ARRAYS
        )
        _check_labels(manifest["labels"], [str(c) for c in getattr(session_classifier, "classes_", [])])
        session = SessionModel(
            classifier=session_classifier,
            reference=_load_reference(bundle_dir, manifest, entry.get("reference"), SESSION_REFERENCE, dim),
            minimum_utterances=max(1, int(entry["minimum_utterances"])),
        )
    return Bundle(
        path=bundle_dir,
        manifest=manifest,
        classifier=classifier,
        reference=reference,
        session=session,
        uncertainty=policy,
    )
