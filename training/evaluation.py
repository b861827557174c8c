"""Cross-validation and reports.

The headline protocol is speaker-grouped stratified k-fold: no speaker is ever on both sides of a
split, so the figures say how the model does on voices it has never heard. The random stratified
k-fold of the design document is computed beside it to show how much speaker leakage inflates
accuracy; it is never the headline.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from shared.constants import EMOTIONS
from shared.predictor import sanitize_features
from training.pipeline import make_pipeline

log = logging.getLogger(__name__)

PROTOCOLS = ("speaker_grouped", "random")


class EvaluationError(ValueError):
    """Cross-validation cannot be run on this data (too few speakers or clips)."""


@dataclass
class CVResult:
    """Out-of-fold results of one cross-validation protocol."""

    protocol: str
    folds: int
    y_true: list[str]
    y_pred: list[str]
    fold_accuracy: list[float]
    fold_uar: list[float]
    notes: list[str] = field(default_factory=list)
    #: speakers of each fold's test side (grouped protocol only), for audit.
    test_speakers: list[list[str]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """Accuracy, unweighted accuracy (balanced), macro F1, per-class P/R/F1 and the confusion matrix."""
        y_true, y_pred = np.array(self.y_true), np.array(self.y_pred)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=list(EMOTIONS), zero_division=0
        )
        return {
            "protocol": self.protocol,
            "folds": self.folds,
            "n": len(y_true),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "unweighted_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(
                f1_score(y_true, y_pred, labels=list(EMOTIONS), average="macro", zero_division=0)
            ),
            "fold_accuracy_mean": float(np.mean(self.fold_accuracy)),
            "fold_accuracy_std": float(np.std(self.fold_accuracy)),
            "fold_unweighted_accuracy_mean": float(np.mean(self.fold_uar)),
            "fold_unweighted_accuracy_std": float(np.std(self.fold_uar)),
            "per_class": {
                label: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(support[i]),
                }
                for i, label in enumerate(EMOTIONS)
            },
            "confusion_matrix": {
                "labels": list(EMOTIONS),
                "matrix": confusion_matrix(y_true, y_pred, labels=list(EMOTIONS)).tolist(),
            },
            "notes": list(self.notes),
        }


def _splits(
    protocol: str, y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, list[str]]:
    notes: list[str] = []
    if protocol == "speaker_grouped":
        n_groups = len(set(groups.tolist()))
        if n_groups < 2:
            raise EvaluationError(
                f"speaker-grouped cross-validation needs at least 2 speakers; this data has {n_groups}"
            )
        if n_groups < folds:
            notes.append(
                f"only {n_groups} speakers for {folds} folds: using {n_groups} folds (one per speaker)"
            )
            log.warning(notes[-1])
            folds = n_groups
        splitter: Any = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(y)), y, groups))
    elif protocol == "random":
        smallest = min(np.unique(y, return_counts=True)[1])
        if smallest < folds:
            notes.append(f"the rarest emotion has {smallest} clips: using {smallest} folds")
            folds = int(smallest)
        if folds < 2:
            raise EvaluationError("random stratified cross-validation needs 2 clips of every emotion")
        splits = list(
            StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        )
    else:
        raise ValueError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    return splits, folds, notes


def cross_validate(
    x: np.ndarray,
    labels: Sequence[str],
    speakers: Sequence[str],
    *,
    protocol: str = "speaker_grouped",
    folds: int = 5,
    seed: int = 0,
    pipeline_options: dict[str, Any] | None = None,
) -> CVResult:
    """Out-of-fold predictions of the classifier pipeline under ``protocol``.

    Args:
        x: embeddings ``[n, d]``.
        labels, speakers: aligned with ``x``.
        protocol: ``"speaker_grouped"`` (no speaker in both train and test) or ``"random"``.
        folds: k; fewer speakers than k means one fold per speaker (noted in the result).

    Raises:
        EvaluationError: the data cannot be split (one speaker, or a fold's training side lacks an emotion).
    """
    y = np.asarray(labels)
    groups = np.asarray(speakers)
    x = sanitize_features(x)
    splits, folds, notes = _splits(protocol, y, groups, folds, seed)
    y_pred = np.empty(len(y), dtype=object)
    fold_acc, fold_uar, test_speakers = [], [], []
    for train, test in splits:
        if protocol == "speaker_grouped":
            overlap = set(groups[train]) & set(groups[test])
            if overlap:  # the splitter guarantees this; a regression here would silently leak
                raise AssertionError(f"speakers on both sides of a split: {sorted(overlap)}")
            test_speakers.append(sorted(set(groups[test].tolist())))
        counts = {label: int(np.sum(y[train] == label)) for label in EMOTIONS}
        if min(counts.values()) < 2:
            raise EvaluationError(
                f"a {protocol} training fold has too few clips of some emotion ({counts}); every emotion needs "
                "at least 2 clips in each fold's training part: use more data or fewer folds"
            )
        model = make_pipeline(
            len(train),
            x.shape[1],
            min_class_count=min(counts.values()),
            seed=seed,
            **(pipeline_options or {}),
        )
        model.fit(x[train], y[train])
        pred = model.predict(x[test])
        y_pred[test] = pred
        fold_acc.append(float(accuracy_score(y[test], pred)))
        fold_uar.append(float(balanced_accuracy_score(y[test], pred)))
    return CVResult(
        protocol=protocol,
        folds=folds,
        y_true=y.tolist(),
        y_pred=[str(p) for p in y_pred],
        fold_accuracy=fold_acc,
        fold_uar=fold_uar,
        notes=notes,
        test_speakers=test_speakers,
    )


def confusion_png(metrics: dict[str, Any], title: str) -> bytes:
    """The confusion matrix as a PNG (rows: true emotion, columns: predicted; cells: row-normalised %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(metrics["confusion_matrix"]["matrix"], dtype=float)
    labels = metrics["confusion_matrix"]["labels"]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{100 * share[i, j]:.0f}%\n({int(matrix[i, j])})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def report_markdown(report: dict[str, Any]) -> str:
    """A readable report: data, protocol, headline figures, the random-split gap, per-class table."""
    lines = [f"# {report['name']} {report['version']}", ""]
    data = report["data"]
    lines += [
        "## Data",
        f"- corpus: {data['name']} ({data['n_utterances']} clips, {data['n_speakers']} speakers)",
        f"- per emotion: {', '.join(f'{k} {v}' for k, v in data['labels'].items())}",
        f"- left out: {data.get('excluded', 0)} files; failed to decode or embed: {report.get('failed', 0)}",
        f"- backbone: {json.dumps(report['backbone'], sort_keys=True)}",
        "",
    ]
    grouped, rand = report["evaluation"].get("speaker_grouped"), report["evaluation"].get("random")
    lines += [
        "## Results",
        "",
        "| protocol | folds | accuracy | unweighted accuracy | macro F1 |",
        "|---|---|---|---|---|",
    ]
    for m in (grouped, rand):
        if m:
            name = (
                "speaker-grouped (headline)"
                if m["protocol"] == "speaker_grouped"
                else "random split (leaks speakers)"
            )
            lines.append(
                f"| {name} | {m['folds']} | {_pct(m['accuracy'])} | {_pct(m['unweighted_accuracy'])} | {_pct(m['macro_f1'])} |"
            )
    if grouped and rand:
        gap = rand["unweighted_accuracy"] - grouped["unweighted_accuracy"]
        lines += [
            "",
            f"The random split scores {100 * gap:+.1f} points of unweighted accuracy over the speaker-grouped one: "
            "with random folds the same speakers are in training and test, which inflates the figure.",
        ]
    if grouped:
        lines += [
            "",
            "## Per emotion (speaker-grouped)",
            "",
            "| emotion | precision | recall | F1 | clips |",
            "|---|---|---|---|---|",
        ]
        for label, m in grouped["per_class"].items():
            lines.append(
                f"| {label} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |"
            )
        for note in grouped.get("notes", []):
            lines.append(f"\nNote: {note}")
    if report.get("layer_sweep"):
        lines += [
            "",
            "## Layer sweep (speaker-grouped unweighted accuracy)",
            "",
            "| layer | UA |",
            "|---|---|",
        ]
        for row in report["layer_sweep"]:
            mark = " (chosen)" if row["layer"] == report["backbone"].get("layer") else ""
            lines.append(f"| {row['layer']}{mark} | {_pct(row['unweighted_accuracy'])} |")
    if report.get("evaluation_skipped"):
        lines += ["", f"Cross-validation skipped: {report['evaluation_skipped']}"]
    return "\n".join(lines) + "\n"
