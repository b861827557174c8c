"""Bundle round trip and the loader's refusals."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.backbones import BackboneSpec
from shared.bundle import (
    CLASSIFIER,
    CLASSIFIER_ARRAYS,
    FORMAT_VERSION,
    MANIFEST,
    SESSION_REFERENCE,
    load_bundle,
    resolve_bundle_dir,
    save_bundle,
    sha256_file,
)
from shared.classifier import ClassifierArrays
from shared.constants import EMOTIONS
from shared.errors import (
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleLabelError,
    BundleNotFoundError,
)
from shared.session import normalise_groups
from shared.uncertainty import FeatureReference, Uncertainty
from training.pipeline import make_pipeline


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    labels = np.repeat(EMOTIONS, 6)
    x = rng.standard_normal((len(labels), 10)) + np.repeat(np.arange(6), 6)[:, None]
    return make_pipeline(len(x), 10, min_class_count=6).fit(x, labels), x


def write(root: Path, pipeline, version: str = "1", name: str = "demo") -> Path:
    return save_bundle(
        root,
        name=name,
        version=version,
        pipeline=pipeline,
        backbone={**BackboneSpec(kind="egemaps").to_dict(), "dim": 10, "dtype": "fp32"},
        training={"corpus": "generated"},
        metrics={"speaker_grouped": {"unweighted_accuracy": 0.5}},
        extra_files={"report.md": b"# report\n"},
    )


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / bundle.parent.name / bundle.name
    shutil.copytree(bundle, target)
    return target


def rewrite_manifest(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest.update(changes)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def rehash(bundle: Path, fname: str = CLASSIFIER) -> None:
    """Record a file's current sha256 and size, as someone rewriting a bundle would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][fname] = {
        "sha256": sha256_file(bundle / fname),
        "size": (bundle / fname).stat().st_size,
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def drop_arrays(bundle: Path) -> None:
    """Make the bundle one written before classifier arrays existed."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    del manifest["classifier"]["arrays"], manifest["files"][CLASSIFIER_ARRAYS]
    (bundle / CLASSIFIER_ARRAYS).unlink()
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_round_trip(tmp_path, fitted):
    pipeline, x = fitted
    folder = write(tmp_path, pipeline)
    assert folder == tmp_path / "demo" / "1"
    bundle = load_bundle(folder)
    assert (bundle.name, bundle.version, bundle.labels) == ("demo", "1", EMOTIONS)
    assert bundle.backbone_spec == BackboneSpec(kind="egemaps")
    manifest = bundle.manifest
    assert manifest["format_version"] == 1 < FORMAT_VERSION  # the lowest version that holds it
    assert set(manifest["files"]) == {CLASSIFIER, CLASSIFIER_ARRAYS, "report.md"}
    assert manifest["classifier"]["arrays"] == CLASSIFIER_ARRAYS
    assert manifest["files"][CLASSIFIER]["sha256"] == sha256_file(folder / CLASSIFIER)
    assert {"python", "numpy", "scikit-learn", "skops"} <= set(manifest["libraries"])
    assert manifest["created_at"]
    assert isinstance(bundle.classifier, ClassifierArrays)
    expected = pipeline.predict_proba(x)
    np.testing.assert_allclose(bundle.classifier.predict_proba(x), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bundle.pipeline.predict_proba(x), expected)


def test_a_bundle_without_classifier_arrays_is_served_through_sklearn(tmp_path, fitted):
    pipeline, x = fitted
    bundle_dir = copy_of(write(tmp_path, pipeline), tmp_path)
    drop_arrays(bundle_dir)
    bundle = load_bundle(bundle_dir)
    assert not isinstance(bundle.classifier, ClassifierArrays)
    assert bundle.pipeline is bundle.classifier
    np.testing.assert_allclose(bundle.classifier.predict_proba(x), pipeline.predict_proba(x))


def rewrite_arrays(bundle: Path, **changes) -> None:
    """Rewrite the classifier arrays with ``changes`` and record their new sha256, as an attacker could."""
    arrays = {**dict(np.load(bundle / CLASSIFIER_ARRAYS)), **changes}
    with open(bundle / CLASSIFIER_ARRAYS, "wb") as fh:
        np.savez(fh, **arrays)
    rehash(bundle, CLASSIFIER_ARRAYS)


def test_damaged_classifier_arrays_are_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    (bundle / CLASSIFIER_ARRAYS).write_bytes(b"PK\x03\x04 not really a zip")
    rehash(bundle, CLASSIFIER_ARRAYS)
    with pytest.raises(BundleFormatError, match="not a readable classifier array file"):
        load_bundle(bundle)


def test_classifier_arrays_holding_a_pickle_are_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    rewrite_arrays(bundle, classes=np.array([os.system] * 6, dtype=object))  # would need pickle to read back
    with pytest.raises(BundleFormatError, match="not a readable classifier array file"):
        load_bundle(bundle)


def test_classifier_arrays_that_do_not_fit_together_are_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    rewrite_arrays(bundle, intercept=np.load(bundle / CLASSIFIER_ARRAYS)["intercept"][:-1])
    with pytest.raises(BundleFormatError, match="do not fit together"):
        load_bundle(bundle)


def test_versions_are_never_overwritten(tmp_path, fitted):
    write(tmp_path, fitted[0])
    with pytest.raises(BundleExistsError, match="already exists"):
        write(tmp_path, fitted[0])


def test_newest_version_is_resolved_from_a_root(tmp_path, fitted):
    write(tmp_path, fitted[0], version="2")
    write(tmp_path, fitted[0], version="10")
    assert resolve_bundle_dir(tmp_path / "demo") == tmp_path / "demo" / "10"
    assert resolve_bundle_dir(tmp_path) == tmp_path / "demo" / "10"
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleNotFoundError, match="no bundle found"):
        resolve_bundle_dir(tmp_path / "empty")
    with pytest.raises(BundleNotFoundError, match="does not exist"):
        resolve_bundle_dir(tmp_path / "nowhere")


def test_a_changed_classifier_byte_is_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    data = bytearray((bundle / CLASSIFIER).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / CLASSIFIER).write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="does not match its recorded sha256"):
        load_bundle(bundle)


def test_a_missing_file_is_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    (bundle / "report.md").unlink()
    with pytest.raises(BundleIntegrityError, match="report.md is missing"):
        load_bundle(bundle)


def test_a_different_label_set_is_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    rewrite_manifest(bundle, labels=["neutral", "happy", "sad", "angry", "fear", "surprise"])
    with pytest.raises(BundleLabelError, match="not the six emotions"):
        load_bundle(bundle)


def test_a_bundle_that_asks_for_input_normalisation_is_written_as_format_2(tmp_path, fitted):
    pipeline, _ = fitted
    spec = BackboneSpec(kind="egemaps", level_dbfs=-26.0)
    folder = save_bundle(
        tmp_path, name="levelled", version="1", pipeline=pipeline, backbone={**spec.to_dict(), "dim": 10}
    )
    bundle = load_bundle(folder)
    assert bundle.manifest["format_version"] == 2 == FORMAT_VERSION
    assert bundle.backbone_spec.level_dbfs == -26.0  # an older loader (up to 1) refuses it: "upgrade"


def test_a_newer_format_version_is_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    rewrite_manifest(bundle, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleFormatError, match="newer than this software understands"):
        load_bundle(bundle)


def test_a_pickle_where_skops_is_expected_is_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    (bundle / CLASSIFIER).write_bytes(pickle.dumps(fitted[0]))
    # Even with matching hashes (an attacker can rewrite the manifest), a pickle is never loaded:
    # not when the sklearn pipeline is asked for, nor when a bundle without arrays is loaded.
    rehash(bundle)
    with pytest.raises(BundleFormatError, match="not a skops archive"):
        _ = load_bundle(bundle).pipeline
    drop_arrays(bundle)
    with pytest.raises(BundleFormatError, match="not a skops archive"):
        load_bundle(bundle)


def test_untrusted_types_inside_skops_are_refused(tmp_path, fitted):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    evil = Pipeline([("f", FunctionTransformer(os.system)), *fitted[0].steps])
    sio.dump(evil, bundle / CLASSIFIER)
    rehash(bundle)
    with pytest.raises(BundleFormatError, match="not trusted"):
        _ = load_bundle(bundle).pipeline
    drop_arrays(bundle)
    with pytest.raises(BundleFormatError, match="not trusted"):
        load_bundle(bundle)


def test_malformed_manifests_are_refused(tmp_path, fitted):
    bundle = copy_of(write(tmp_path, fitted[0]), tmp_path)
    (bundle / MANIFEST).write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_bundle(bundle)
    (bundle / MANIFEST).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(BundleFormatError, match="lacks required fields"):
        load_bundle(bundle)


def test_a_classifier_for_other_labels_cannot_be_saved(tmp_path):
    pipeline = make_pipeline(12, 3, min_class_count=6).fit(
        np.random.default_rng(0).standard_normal((12, 3)), ["a"] * 6 + ["b"] * 6
    )
    with pytest.raises(BundleLabelError):
        write(tmp_path, pipeline)
    with pytest.raises(BundleFormatError, match="not allowed"):
        save_bundle(tmp_path, name="../x", version="1", pipeline=pipeline, backbone={})


def test_session_classifier_and_references_round_trip_and_are_verified(tmp_path, fitted):
    pipeline, x = fitted
    speakers = [f"s{i % 3}" for i in range(len(x))]
    session_x = normalise_groups(x, speakers)
    session_pipeline = make_pipeline(len(x), 10, min_class_count=6).fit(session_x, np.repeat(EMOTIONS, 6))
    folder = save_bundle(
        tmp_path,
        name="demo",
        version="s",
        pipeline=pipeline,
        backbone={**BackboneSpec(kind="egemaps").to_dict(), "dim": 10, "dtype": "fp32"},
        reference=FeatureReference.fit(x),
        session_pipeline=session_pipeline,
        session_reference=FeatureReference.fit(session_x),
        session={"minimum_utterances": 10},
        uncertainty=Uncertainty(ood_percentile=98.0, confidence_threshold=0.3),
    )
    bundle = load_bundle(folder)
    assert bundle.session is not None and bundle.session.minimum_utterances == 10
    assert isinstance(bundle.session.classifier, ClassifierArrays)
    assert bundle.reference is not None and bundle.session.reference is not None
    assert bundle.uncertainty == Uncertainty(ood_percentile=98.0, confidence_threshold=0.3)
    assert bundle.manifest["format_version"] == 1  # older services load it, and serve its single path
    np.testing.assert_allclose(
        bundle.session.classifier.predict_proba(session_x),
        session_pipeline.predict_proba(session_x),
        atol=1e-12,
    )
    damaged = copy_of(folder, tmp_path)
    (damaged / SESSION_REFERENCE).write_bytes(b"damaged")
    with pytest.raises(BundleIntegrityError, match="session_reference.npz"):
        load_bundle(damaged)
    rehash(damaged, SESSION_REFERENCE)
    with pytest.raises(BundleFormatError, match="not a readable feature reference"):
        load_bundle(damaged)
    renamed = copy_of(folder, tmp_path / "b")
    manifest = json.loads((renamed / MANIFEST).read_text())
    manifest["uncertainty"]["reference"] = "../elsewhere.npz"
    (renamed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="expected reference.npz"):
        load_bundle(renamed)
    with pytest.raises(BundleFormatError, match="extra file name"):
        save_bundle(
            tmp_path,
            name="demo",
            version="t",
            pipeline=pipeline,
            backbone={**BackboneSpec(kind="egemaps").to_dict(), "dim": 10, "dtype": "fp32"},
            extra_files={SESSION_REFERENCE: b"x"},
        )


def test_a_bundle_folder_is_readable_by_other_users(tmp_path, fitted):
    folder = write(tmp_path, fitted[0], version="perm")
    assert folder.stat().st_mode & 0o755 == 0o755
