"""Cross-validation, scores of probabilities, and reports.

The headline protocol is speaker-grouped stratified k-fold: no speaker is ever on both sides of a
split, so the figures say how the model does on voices it has never heard. The random stratified
k-fold of the design document is computed beside it to show how much speaker leakage inflates
accuracy; it is never the headline.

Besides the decisions, every evaluation scores the probabilities (``probability_scores``): expected
calibration error over 15 equal-width confidence bins, negative log-likelihood and the multi-class
Brier score, with the reliability diagram (``reliability_png``); and it reports ``prediction_share``,
the share of predictions going to each emotion, which shows a classifier that has collapsed onto one.
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
from shared.predictor import SESSION, Prediction, sanitize_features
from shared.session import normalise_groups
from shared.uncertainty import REASONS, FeatureReference, Uncertainty
from training.pipeline import fit_pipeline

log = logging.getLogger(__name__)

PROTOCOLS = ("speaker_grouped", "random")
#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
CALIBRATION_BINS = 15
#: Probabilities are clipped to this before the log in the negative log-likelihood.
NLL_FLOOR = 1e-12


class EvaluationError(ValueError):
    """Cross-validation cannot be run on this data (too few speakers or clips)."""


@dataclass
class CVResult:
    """Out-of-fold results of one cross-validation protocol."""

    protocol: str
    folds: int
    y_true: list[str]
    y_pred: list[str]
    #: out-of-fold probabilities ``[n, 6]`` in ``EMOTIONS`` order.
    proba: list[list[float]]
    fold_accuracy: list[float]
    fold_uar: list[float]
    #: why each out-of-fold prediction is uncertain (``shared.uncertainty``; empty: it is not).
    uncertain: list[tuple[str, ...]] = field(default_factory=list)
    session: bool = False
    notes: list[str] = field(default_factory=list)
    #: speakers of each fold's test side (grouped protocol only), for audit.
    test_speakers: list[list[str]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """``classification_metrics`` of the out-of-fold predictions, with the protocol and the folds."""
        return {
            "protocol": self.protocol,
            "folds": self.folds,
            "session_normalised": self.session,
            **classification_metrics(self.y_true, self.y_pred, np.asarray(self.proba)),
            **uncertainty_metrics(self.y_true, self.y_pred, self.uncertain),
            "fold_accuracy_mean": float(np.mean(self.fold_accuracy)),
            "fold_accuracy_std": float(np.std(self.fold_accuracy)),
            "fold_unweighted_accuracy_mean": float(np.mean(self.fold_uar)),
            "fold_unweighted_accuracy_std": float(np.std(self.fold_uar)),
            "notes": list(self.notes),
        }


def probability_scores(y_true: Sequence[str], proba: np.ndarray) -> dict[str, Any]:
    """How good probabilities ``[n, 6]`` (``EMOTIONS`` order) are for the true labels.

    - ``ece``: expected calibration error, the support-weighted mean gap between confidence (the top
      probability) and accuracy over ``CALIBRATION_BINS`` equal-width confidence bins;
    - ``nll``: the mean negative log-likelihood of the true emotion (probabilities floored at 1e-12);
    - ``brier``: the mean squared distance between the probabilities and the one-hot truth, summed over
      the six emotions (0 is perfect; always answering 1/6 each scores 5/6);
    - ``reliability``: each bin's range, count, mean confidence and accuracy (the diagram's data).
    """
    p = np.asarray(proba, dtype=np.float64).reshape(len(y_true), len(EMOTIONS))
    truth = np.array([EMOTIONS.index(label) for label in y_true])
    onehot = np.eye(len(EMOTIONS))[truth]
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    # Bin k holds confidences in (edge_k, edge_k+1]; a confidence of exactly 0 goes to the first.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, CALIBRATION_BINS - 1)
    bins, ece = [], 0.0
    for k in range(CALIBRATION_BINS):
        members = which == k
        count = int(members.sum())
        entry: dict[str, Any] = {"low": float(edges[k]), "high": float(edges[k + 1]), "count": count}
        if count:
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(correct[members].mean())
            ece += count / len(truth) * abs(entry["confidence"] - entry["accuracy"])
        bins.append(entry)
    return {
        "ece": float(ece),
        "nll": float(-np.mean(np.log(np.clip(p[np.arange(len(truth)), truth], NLL_FLOOR, 1.0)))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "mean_confidence": float(confidence.mean()),
        "reliability": bins,
    }


def uncertainty_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], reasons: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """How many predictions are flagged uncertain (and why), and how the others fare.

    - ``uncertain_rate``: the share flagged; ``uncertain_reasons``: the share flagged for each reason;
      ``uncertain_accuracy``: how often the flagged ones are right;
    - ``certain_n``, ``certain_accuracy``, ``certain_unweighted_accuracy`` and ``certain_largest_share``
      (the largest share of the unflagged predictions one emotion takes) over the predictions not flagged.
    """
    if len(reasons) != len(y_true):
        return {}
    flagged = np.array([bool(r) for r in reasons], dtype=bool)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    kept = ~flagged
    out: dict[str, Any] = {
        "uncertain_rate": float(flagged.mean()) if len(t) else 0.0,
        "uncertain_reasons": {
            reason: float(np.mean([reason in r for r in reasons])) if len(t) else 0.0 for reason in REASONS
        },
        "certain_n": int(kept.sum()),
    }
    if flagged.any():
        out["uncertain_accuracy"] = float(accuracy_score(t[flagged], p[flagged]))
    if kept.any():
        out["certain_accuracy"] = float(accuracy_score(t[kept], p[kept]))
        out["certain_unweighted_accuracy"] = float(balanced_accuracy_score(t[kept], p[kept]))
        out["certain_largest_share"] = max(float(np.mean(p[kept] == label)) for label in EMOTIONS)
    return out


def prediction_metrics(y_true: Sequence[str], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """``classification_metrics`` and ``uncertainty_metrics`` of the predictor's own outputs."""
    proba = np.array([[p.probabilities[label] for label in EMOTIONS] for p in predictions])
    labels = [p.label for p in predictions]
    return {
        **classification_metrics(y_true, labels, proba),
        **uncertainty_metrics(y_true, labels, [p.uncertain_reasons for p in predictions]),
        "session_share": float(np.mean([p.classifier == SESSION for p in predictions]))
        if predictions
        else 0.0,
    }


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], proba: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, unweighted accuracy (balanced), macro F1, per-class P/R/F1, the confusion matrix, the
    share of predictions per emotion, and (given probabilities ``[n, 6]``) ``probability_scores``."""
    t, pr = np.array(y_true), np.array(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        t, pr, labels=list(EMOTIONS), zero_division=0
    )
    out: dict[str, Any] = {
        "n": len(t),
        "accuracy": float(accuracy_score(t, pr)),
        "unweighted_accuracy": float(balanced_accuracy_score(t, pr)),
        "macro_f1": float(f1_score(t, pr, labels=list(EMOTIONS), average="macro", zero_division=0)),
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
            "matrix": confusion_matrix(t, pr, labels=list(EMOTIONS)).tolist(),
        },
        "prediction_share": {label: float(np.mean(pr == label)) if len(pr) else 0.0 for label in EMOTIONS},
    }
    if proba is not None:
        out.update(probability_scores(list(y_true), proba))
    return out


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
    session: bool = False,
    uncertainty: Uncertainty | None = None,
) -> CVResult:
    """Out-of-fold predictions of the classifier pipeline under ``protocol``.

    Each fold's predictions are also judged as the service judges them: a ``FeatureReference`` of the
    fold's training part and ``uncertainty`` (the defaults) flag the uncertain ones.

    Args:
        x: embeddings ``[n, d]``.
        labels, speakers: aligned with ``x``.
        protocol: ``"speaker_grouped"`` (no speaker in both train and test) or ``"random"``.
        folds: k; fewer speakers than k means one fold per speaker (noted in the result).
        session: z-score each speaker's features with that speaker's own statistics first
            (``shared.session.normalise_groups``). A speaker's statistics come from that speaker's clips
            alone, so no test speaker's statistics reach a training fold, and a test speaker is normalised
            as the service normalises a batch sent as one session: with all of its utterances. Every
            speaker is normalised, however few its clips (the bundle's session classifier is fitted on
            the speakers with ``MIN_SESSION_UTTERANCES`` clips or more).

    Raises:
        EvaluationError: the data cannot be split (one speaker, or a fold's training side lacks an emotion).
    """
    y = np.asarray(labels)
    groups = np.asarray(speakers)
    x = sanitize_features(normalise_groups(x, groups) if session else x)
    policy = uncertainty or Uncertainty()
    splits, folds, notes = _splits(protocol, y, groups, folds, seed)
    reasons: list[tuple[str, ...]] = [()] * len(y)
    y_pred = np.empty(len(y), dtype=object)
    proba = np.zeros((len(y), len(EMOTIONS)))
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
        fold_proba, fold_reasons = _fit_and_judge(
            x[train], y[train], x[test], seed=seed, pipeline_options=pipeline_options, policy=policy
        )
        pred = np.asarray(EMOTIONS)[fold_proba.argmax(axis=1)]
        y_pred[test] = pred
        proba[test] = fold_proba
        for i, why in zip(test, fold_reasons, strict=True):
            reasons[i] = why
        fold_acc.append(float(accuracy_score(y[test], pred)))
        fold_uar.append(float(balanced_accuracy_score(y[test], pred)))
    return CVResult(
        protocol=protocol,
        folds=folds,
        y_true=y.tolist(),
        y_pred=[str(p) for p in y_pred],
        proba=proba.tolist(),
        fold_accuracy=fold_acc,
        fold_uar=fold_uar,
        uncertain=reasons,
        session=session,
        notes=notes,
        test_speakers=test_speakers,
    )


def _fit_and_judge(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int,
    pipeline_options: dict[str, Any] | None,
    policy: Uncertainty,
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Probabilities ``[n_test, 6]`` (``EMOTIONS`` order) of a pipeline fitted on the training part, and why
    each is uncertain (a ``FeatureReference`` of the training part)."""
    model = fit_pipeline(x_train, y_train, seed=seed, **(pipeline_options or {}))
    columns = [list(model.classes_).index(label) for label in EMOTIONS]
    proba = model.predict_proba(x_test)[:, columns]
    percentiles = FeatureReference.fit(x_train).percentile(x_test)
    reasons = [policy.reasons(float(row.max()), float(p)) for row, p in zip(proba, percentiles, strict=True)]
    return proba, reasons


def leave_one_corpus_out(
    x: np.ndarray,
    labels: Sequence[str],
    speakers: Sequence[str],
    corpora: Sequence[str],
    *,
    seed: int = 0,
    pipeline_options: dict[str, Any] | None = None,
    sessions: bool = True,
) -> list[dict[str, Any]]:
    """Train on every corpus but one and test on that one, for each corpus: how the model does on a
    corpus it has never seen, with each clip alone (``single``) and, with ``sessions`` (the speakers are
    known), with each test speaker's clips normalised by that speaker's statistics (``session``; training
    speakers by their own). Speakers are told apart within their corpus only.

    Returns one row per corpus: ``corpus``, ``n_train``, ``n_test`` and, per mode, ``classification_metrics``
    and ``uncertainty_metrics``; a corpus whose training side lacks 2 clips of some emotion gets ``skipped``.
    """
    y, which = np.asarray(labels), np.asarray(corpora)
    groups = np.asarray([f"{c}\x00{s}" for c, s in zip(corpora, speakers, strict=True)])
    plain = sanitize_features(x)
    modes = [("single", plain)]
    if sessions:
        modes.append(("session", sanitize_features(normalise_groups(x, groups))))
    policy = Uncertainty()
    rows: list[dict[str, Any]] = []
    for corpus in sorted(set(which.tolist())):
        test = which == corpus
        row: dict[str, Any] = {"corpus": corpus, "n_train": int((~test).sum()), "n_test": int(test.sum())}
        counts = {label: int(np.sum(y[~test] == label)) for label in EMOTIONS}
        if min(counts.values()) < 2:
            row["skipped"] = f"the other corpora lack 2 clips of some emotion ({counts})"
            rows.append(row)
            continue
        for mode, features in modes:
            proba, reasons = _fit_and_judge(
                features[~test],
                y[~test],
                features[test],
                seed=seed,
                pipeline_options=pipeline_options,
                policy=policy,
            )
            pred = [EMOTIONS[i] for i in proba.argmax(axis=1)]
            row[mode] = {
                **classification_metrics(y[test].tolist(), pred, proba),
                **uncertainty_metrics(y[test].tolist(), pred, reasons),
            }
        rows.append(row)
    return rows


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


def reliability_png(metrics: dict[str, Any], title: str) -> bytes:
    """The reliability diagram of ``probability_scores``: accuracy against confidence per bin, the
    diagonal of perfect calibration, and how many predictions each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in metrics["reliability"] if b["count"]]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.6, 6.0), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / CALIBRATION_BINS
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(
        [b["low"] for b in bins],
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        edgecolor="navy",
        color="cornflowerblue",
        label="accuracy",
    )
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="navy", markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"{title}\nECE {metrics['ece']:.3f}, NLL {metrics['nll']:.3f}, Brier {metrics['brier']:.3f}",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=8)
    counts.bar([b["low"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="grey")
    counts.set_xlabel("confidence (top probability)")
    counts.set_ylabel("predictions")
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
    evaluation = report["evaluation"]
    grouped, rand = evaluation.get("speaker_grouped"), evaluation.get("random")
    lines += [
        "## Results",
        "",
        "| protocol | folds | accuracy | unweighted accuracy | macro F1 | ECE | NLL | Brier | uncertain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "speaker_grouped": "speaker-grouped, single clip (headline)",
        "speaker_grouped_session": "speaker-grouped, session-normalised by speaker",
        "random": "random split (leaks speakers)",
    }
    for key, name in names.items():
        m = evaluation.get(key)
        if m:
            lines.append(
                f"| {name} | {m['folds']} | {_pct(m['accuracy'])} | {_pct(m['unweighted_accuracy'])} | "
                f"{_pct(m['macro_f1'])} | {m['ece']:.3f} | {m['nll']:.3f} | {m['brier']:.3f} | "
                f"{_pct(m.get('uncertain_rate', 0.0))} |"
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
            "ECE is the expected calibration error over 15 confidence bins (see reliability.png); NLL the "
            "mean negative log-likelihood of the true emotion; Brier the mean squared error of the six "
            "probabilities; uncertain the share of predictions the service would flag (out of distribution "
            "or low confidence).",
            "",
            "## Per emotion (speaker-grouped)",
            "",
            "| emotion | precision | recall | F1 | clips | share of predictions |",
            "|---|---|---|---|---|---|",
        ]
        for label, m in grouped["per_class"].items():
            lines.append(
                f"| {label} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} "
                f"| {_pct(grouped['prediction_share'][label])} |"
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
    if report.get("leave_one_corpus_out"):
        lines += [
            "",
            "## Leave one corpus out (trained on the others, tested on it)",
            "",
            "| corpus | test clips | UA alone | UA session-normalised | uncertain alone | largest share alone |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["leave_one_corpus_out"]:
            if "single" not in row:
                lines.append(f"| {row['corpus']} | {row['n_test']} | skipped: {row['skipped']} | | | |")
                continue
            single, session = row["single"], row.get("session")
            lines.append(
                f"| {row['corpus']} | {row['n_test']} | {_pct(single['unweighted_accuracy'])} | "
                f"{_pct(session['unweighted_accuracy']) if session else '- (speakers unknown)'} | "
                f"{_pct(single['uncertain_rate'])} | "
                f"{_pct(max(single['prediction_share'].values()))} |"
            )
    if report.get("evaluation_skipped"):
        lines += ["", f"Cross-validation skipped: {report['evaluation_skipped']}"]
    return "\n".join(lines) + "\n"


def evaluation_markdown(report: dict[str, Any]) -> str:
    """A readable report of ``training.recipe.evaluate_bundle``: the data, the scores, per emotion."""
    data = report["data"]
    lines = [
        f"# {report['bundle']['name']} {report['bundle']['version']} on {data['name']}",
        "",
        f"- data: {data['n_utterances']} clips, {data['n_speakers']} speakers; failed to decode or embed: "
        f"{report['failed']}",
        f"- backbone: {json.dumps(report['backbone'], sort_keys=True)}, served in {report['serving_dtype']}",
        "",
        f"- sessions: {report.get('session_by') or 'none'} (share of predictions by the session classifier: "
        f"{_pct(report.get('session_share', 0.0))})",
        "",
        "| clips | accuracy | unweighted accuracy | macro F1 | ECE | NLL | Brier | uncertain |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report['n']} | {_pct(report['accuracy'])} | {_pct(report['unweighted_accuracy'])} | "
        f"{_pct(report['macro_f1'])} | {report['ece']:.3f} | {report['nll']:.3f} | {report['brier']:.3f} | "
        f"{_pct(report.get('uncertain_rate', 0.0))} |",
        "",
        "| emotion | recall | precision | clips | share of predictions |",
        "|---|---|---|---|---|",
    ]
    for label, m in report["per_class"].items():
        lines.append(
            f"| {label} | {_pct(m['recall'])} | {_pct(m['precision'])} | {m['support']} | "
            f"{_pct(report['prediction_share'][label])} |"
        )
    return "\n".join(lines) + "\n"
