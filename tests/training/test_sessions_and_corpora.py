"""Session normalisation in cross-validation, several corpora in one run, leave-one-corpus-out, the
ensemble, and evaluation by speaker sessions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import fake_ravdess, synthetic_clip

from shared.bundle import CLASSIFIER_ARRAYS, load_bundle
from shared.constants import EMOTIONS
from shared.predictor import Predictor
from training.cli import main
from training.corpora import combine_corpora, corpus_of, prepare_corpus
from training.evaluation import cross_validate, leave_one_corpus_out


def voices(n_speakers: int, per_class: int, seed: int, shift: float = 0.0, spread: float = 1.0):
    """Features whose emotion signal is small next to each speaker's own offset and scale."""
    rng = np.random.default_rng(seed)
    x, labels, speakers = [], [], []
    for s in range(n_speakers):
        offset, scale = rng.normal(0, 6.0, size=8), rng.uniform(0.5, 2.0, size=8)
        for c, label in enumerate(EMOTIONS):
            for _ in range(per_class):
                signal = np.zeros(8)
                signal[c] = 2.0
                x.append(shift + spread * (offset + scale * (signal + 0.5 * rng.normal(size=8))))
                labels.append(label)
                speakers.append(f"{seed}-{s}")
    return np.array(x), labels, speakers


def test_session_normalisation_removes_the_speakers_from_the_features():
    x, labels, speakers = voices(8, 4, seed=0)
    single = cross_validate(x, labels, speakers, folds=4).metrics()
    session = cross_validate(x, labels, speakers, folds=4, session=True).metrics()
    assert session["session_normalised"] and not single["session_normalised"]
    assert session["unweighted_accuracy"] > 0.9 > single["unweighted_accuracy"] + 0.2
    assert 0 <= single["uncertain_rate"] <= 1 and set(single["uncertain_reasons"]) == {
        "out_of_distribution",
        "low_confidence",
    }


def test_leave_one_corpus_out_shows_the_collapse_and_the_remedy():
    xa, la, sa = voices(6, 4, seed=1)
    xb, lb, sb = voices(6, 4, seed=2, shift=40.0, spread=3.0)  # another microphone, room and language
    rows = leave_one_corpus_out(np.vstack([xa, xb]), la + lb, sa + sb, ["a"] * len(la) + ["b"] * len(lb))
    assert [row["corpus"] for row in rows] == ["a", "b"]
    for row in rows:
        assert row["n_test"] == row["n_train"] == 144
        single, session = row["single"], row["session"]
        assert single["uncertain_rate"] > 0.9  # far from the training corpus, and it says so
        assert session["unweighted_accuracy"] > 0.85 > single["unweighted_accuracy"] + 0.3
        assert session["uncertain_rate"] < 0.3


def write_csv_corpus(root: Path, speakers: int = 2, per_class: int = 6) -> Path:
    root.mkdir(parents=True)
    rows = []
    for s in range(speakers):
        for c, label in enumerate(EMOTIONS):
            for i in range(per_class):
                path = root / f"s{s}_{label}_{i}.wav"
                sf.write(path, synthetic_clip(label, 1.2, seed=5000 + 100 * s + 10 * c + i), 16000)
                rows.append({"path": path.name, "label": label, "speaker": f"p{s}"})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return fake_ravdess(root / "ravdess", actors=3), write_csv_corpus(root / "csvcorpus")


def test_combined_corpora_keep_their_speakers_apart(two_corpora):
    ravdess, manifest = two_corpora
    combined = combine_corpora([prepare_corpus("ravdess", ravdess), prepare_corpus("csv", manifest)])
    assert combined.name == "ravdess+csv"
    summary = combined.summary()
    assert summary["corpora"] == {"csv": 72, "ravdess": 66}
    assert {u.speaker for u in combined.utterances} == {
        "ravdess:ravdess-01",
        "ravdess:ravdess-02",
        "ravdess:ravdess-03",
        "csv:p0",
        "csv:p1",
    }
    twice = combine_corpora([prepare_corpus("csv", manifest), prepare_corpus("csv", manifest)])
    assert twice.name == "csv1+csv2" and twice.summary()["n_speakers"] == 4


def test_a_run_over_two_corpora_reports_leave_one_corpus_out_and_evaluates_by_session(
    tmp_path, two_corpora, capsys
):
    ravdess, manifest = two_corpora
    out = tmp_path / "artifacts"
    argv = [
        "run",
        "--corpus",
        "ravdess",
        "--data-dir",
        str(ravdess),
        "--corpus",
        "csv",
        "--data-dir",
        str(manifest),
    ]
    argv += ["--backbone", "egemaps", "--out", str(out), "--version", "1", "--no-progress", "--no-random-cv"]
    assert main(argv) == 0
    bundle = load_bundle(out / "ravdess-csv-egemaps" / "1")
    report = json.loads((bundle.path / "report.json").read_text())
    assert report["data"]["corpora"] == {"csv": 72, "ravdess": 66}
    assert [row["corpus"] for row in report["leave_one_corpus_out"]] == ["csv", "ravdess"]
    for row in report["leave_one_corpus_out"]:
        assert {"single", "session"} <= set(row) and 0 <= row["single"]["unweighted_accuracy"] <= 1
    assert "## Leave one corpus out" in (bundle.path / "report.md").read_text()
    assert bundle.manifest["session"]["speakers"] == 5

    report_dir = tmp_path / "evaluation"
    evaluate = ["evaluate", "--bundle", str(bundle.path), "--corpus", "ravdess", "--data-dir", str(ravdess)]
    assert main([*evaluate, "--out", str(report_dir), "--session-by", "speaker", "--no-progress"]) == 0
    scores = json.loads((report_dir / "report.json").read_text())
    assert scores["session_by"] == "speaker" and scores["session_share"] == 1.0  # 22 clips a speaker
    assert 0 <= scores["uncertain_rate"] <= 1 and "uncertain_reasons" in scores
    assert "sessions: speaker" in (report_dir / "report.md").read_text()

    mismatched = [
        "run",
        "--corpus",
        "ravdess",
        "--corpus",
        "csv",
        "--data-dir",
        str(ravdess),
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(mismatched)
    assert exit_info.value.code == 2
    assert "give one --data-dir per --corpus" in capsys.readouterr().err


def test_the_ensemble_is_trained_scored_and_served_through_scikit_learn(tmp_path, two_corpora):
    ravdess, _ = two_corpora
    out = tmp_path / "artifacts"
    argv = ["run", "--corpus", "ravdess", "--data-dir", str(ravdess), "--backbone", "egemaps", "--classifier"]
    argv += [
        "ensemble",
        "--out",
        str(out),
        "--version",
        "e",
        "--no-progress",
        "--no-random-cv",
        "--folds",
        "3",
    ]
    assert main(argv) == 0
    bundle = load_bundle(out / "ravdess-egemaps" / "e")
    assert CLASSIFIER_ARRAYS not in bundle.manifest["files"]
    assert bundle.manifest["classifier"]["steps"][-1] == "ensemble:VotingClassifier"
    report = json.loads((bundle.path / "report.json").read_text())
    assert report["pipeline"]["classifier"] == "ensemble"
    predictor = Predictor.from_bundle(bundle.path)
    assert predictor.describe().classifier == "scikit-learn pipeline (classifier.skops)"
    results = predictor.predict_batch([synthetic_clip(label, 1.4, seed=321) for label in EMOTIONS])
    assert sum(r.label == label for r, label in zip(results, EMOTIONS, strict=True)) >= 4
    assert all(r.ood_percentile is not None for r in results)


def test_a_csv_with_a_corpus_column_names_the_corpus_of_each_clip(tmp_path):
    manifest = write_csv_corpus(tmp_path / "mixed", speakers=2, per_class=1)
    rows = list(csv.DictReader(manifest.open()))
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "speaker", "corpus"])
        writer.writeheader()
        writer.writerows({**row, "corpus": "studio" if row["speaker"] == "p0" else "phone"} for row in rows)
    corpus = prepare_corpus("csv", manifest)
    assert corpus.summary()["corpora"] == {"phone": 6, "studio": 6}
    assert {corpus_of(u, corpus.name) for u in corpus.utterances} == {"phone", "studio"}
    assert {u.speaker for u in corpus.utterances} == {"studio:p0", "phone:p1"}
    assert (
        corpus_of(prepare_corpus("csv", write_csv_corpus(tmp_path / "plain", 1, 1)).utterances[0], "csv")
        == "csv"
    )
