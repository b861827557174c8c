"""The training recipe: from a corpus to a verified, versioned bundle, and a bundle scored on a corpus.

``train_bundle`` runs the whole recipe (prepare the corpus, optionally sweep layers, embed with the
cache, cross-validate, fit on everything, report, save); ``fit_bundle`` is its last step on embeddings
already in hand, and is how every bundle is made (the benchmark and the tests build theirs with it), so the
manifest's backbone record is written in one place. ``evaluate_bundle`` scores an existing bundle on a
labelled corpus, through the same predictor the service uses, without training anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shared.backbones import Backbone, BackboneSpec, EncoderOptions, build_backbone
from shared.batch.ray_engine import RaySettings
from shared.bundle import save_bundle
from shared.constants import EMOTIONS
from shared.loudness import DEFAULT_LEVEL_DBFS
from shared.predictor import Predictor, sanitize_features
from shared.session import MIN_SESSION_UTTERANCES, SessionStats, normalise_groups
from shared.uncertainty import FeatureReference, Uncertainty
from training.corpora import Corpus, CorpusError, corpus_of, prepare_corpora, prepare_corpus
from training.embeddings import ExtractionResult, extract_embeddings
from training.evaluation import (
    EvaluationError,
    confusion_png,
    cross_validate,
    evaluation_markdown,
    leave_one_corpus_out,
    prediction_metrics,
    reliability_png,
    report_markdown,
)
from training.pipeline import DEFAULT_PCA_COMPONENTS, fit_pipeline

log = logging.getLogger(__name__)

DEFAULT_HUBERT = "facebook/hubert-large-ll60k"
#: The metrics of each protocol that go into a bundle's manifest (the report has them all).
MANIFEST_METRICS = (
    "folds",
    "accuracy",
    "unweighted_accuracy",
    "macro_f1",
    "ece",
    "nll",
    "brier",
    "uncertain_rate",
)


@dataclass(frozen=True)
class TrainingRecipe:
    """What to train: the corpus, the backbone, the evaluation, the classifier and where the bundle goes.

    Attributes:
        corpus: ``cremad``, ``ravdess`` or ``csv``; ``data_dir`` its folder (for ``csv``: the CSV file).
        extra_corpora: more ``(corpus, data_dir)`` pairs trained on together (``combine_corpora``); with
            two corpora or more (or a CSV with a ``corpus`` column) the report has a leave-one-corpus-out
            table.
        backbone: ``hubert`` (any Hugging Face speech encoder: ``model`` at ``revision``) or ``egemaps``.
        layer, layer_end, pooling: which hidden state(s) to pool, and how (see ``BackboneSpec``).
        level_dbfs, trim_silence: the input normalisation recorded in the spec (``shared.loudness``);
            ``level_dbfs=None`` turns the level normalisation off.
        layers: sweep these layers by speaker-grouped UA and keep the best (``hubert`` only).
        folds, random_cv, seed: the cross-validation (speaker-grouped always; random beside it).
        pca_components, svm_c, classifier: the classifier (``svm``, or ``ensemble``: soft voting of the
            SVM, a logistic regression and a random forest; see ``training.pipeline``).
        name, version: the bundle's (defaults ``<corpus>-<backbone>`` and a UTC timestamp).
        out: the artifacts root; ``embedding_cache`` the embedding cache (default ``<out>/.cache``).
        progress: show a progress bar while embedding.
        ray: compute the embeddings on this Ray cluster (``shared.batch.ray_engine``); None: here.
    """

    corpus: str
    data_dir: Path
    extra_corpora: tuple[tuple[str, Path], ...] = ()
    backbone: str = "hubert"
    model: str = DEFAULT_HUBERT
    revision: str | None = None
    layer: int | None = None
    layer_end: int | None = None
    layers: tuple[int, ...] = ()
    pooling: str = "mean"
    level_dbfs: float | None = DEFAULT_LEVEL_DBFS
    trim_silence: bool = False
    folds: int = 5
    random_cv: bool = True
    seed: int = 0
    pca_components: int = DEFAULT_PCA_COMPONENTS
    svm_c: float = 1.0
    classifier: str = "svm"
    name: str | None = None
    version: str | None = None
    out: Path = Path("artifacts")
    embedding_cache: Path | None = None
    progress: bool = True
    ray: RaySettings | None = None

    def spec(self, layer: int | None) -> BackboneSpec:
        """The backbone spec reading ``layer`` (``egemaps`` has no layers)."""
        if self.backbone == "egemaps":
            return BackboneSpec(kind="egemaps", level_dbfs=self.level_dbfs, trim_silence=self.trim_silence)
        return BackboneSpec(
            kind="hubert",
            model=str(self.model),
            revision=self.revision,
            layer=layer,
            layer_end=self.layer_end,
            pooling=self.pooling,
            level_dbfs=self.level_dbfs,
            trim_silence=self.trim_silence,
        )

    @property
    def pipeline_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"pca_components": self.pca_components, "C": self.svm_c}
        if self.classifier != "svm":
            options["classifier"] = self.classifier
        return options


@dataclass
class TrainingResult:
    """A trained bundle: its folder and the report written into it."""

    folder: Path
    report: dict[str, Any] = field(default_factory=dict)


def backbone_record(backbone: Backbone) -> dict[str, Any]:
    """The manifest's record of the backbone: its spec, embedding size, precision and fingerprint."""
    return {**backbone.spec.to_dict(), "dim": backbone.dim, "dtype": backbone.dtype, **backbone.fingerprint}


def session_training_rows(labels: Sequence[str], speakers: Sequence[str]) -> np.ndarray | None:
    """Rows of the speakers with at least ``MIN_SESSION_UTTERANCES`` clips, when those speakers number
    2 or more and give every emotion 2 clips; None otherwise (no session classifier can be fitted)."""
    groups = np.asarray(speakers)
    names, counts = np.unique(groups, return_counts=True)
    enough = set(names[counts >= MIN_SESSION_UTTERANCES].tolist())
    rows = np.flatnonzero([g in enough for g in groups.tolist()])
    kept = [labels[int(i)] for i in rows]
    if len(enough) < 2 or min(kept.count(label) for label in EMOTIONS) < 2:
        return None
    return rows


def fit_bundle(
    embeddings: np.ndarray,
    labels: Sequence[str],
    backbone: Backbone,
    artifacts: Path,
    *,
    name: str,
    version: str,
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    pipeline_options: dict[str, Any] | None = None,
    seed: int = 0,
    extra_files: dict[str, bytes] | None = None,
    speakers: Sequence[str] | None = None,
) -> Path:
    """Fit the classifiers on all of ``embeddings`` ``[n, d]`` and write the bundle; returns its folder.

    The bundle holds the single-clip classifier and the reference of its features; given ``speakers``,
    also the session classifier, fitted on the features z-scored per speaker (the speakers with at least
    ``MIN_SESSION_UTTERANCES`` clips), and its reference.

    Raises:
        ValueError: an emotion has fewer than 2 clips. BundleError: the bundle cannot be written.
    """
    x = sanitize_features(embeddings)
    pipeline = fit_pipeline(x, labels, seed=seed, **(pipeline_options or {}))
    session: dict[str, Any] = {}
    rows = None if speakers is None else session_training_rows(labels, speakers)
    if rows is not None:
        assert speakers is not None
        groups = [speakers[i] for i in rows]
        normalised = sanitize_features(normalise_groups(x[rows], groups))
        session = {
            "session_pipeline": fit_pipeline(
                normalised, [labels[i] for i in rows], seed=seed, **(pipeline_options or {})
            ),
            "session_reference": FeatureReference.fit(normalised),
            "session": {
                "minimum_utterances": MIN_SESSION_UTTERANCES,
                "normalisation": "per-session z-score of each feature (shared.session)",
                "speakers": len(set(groups)),
                "clips": len(rows),
            },
        }
    elif speakers is not None:
        log.warning(
            "no session classifier: it needs 2 speakers with %d clips or more, covering every emotion",
            MIN_SESSION_UTTERANCES,
        )
    return save_bundle(
        artifacts,
        name=name,
        version=version,
        pipeline=pipeline,
        backbone=backbone_record(backbone),
        training=training,
        metrics=metrics or {},
        extra_files=extra_files,
        reference=FeatureReference.fit(x),
        uncertainty=Uncertainty(),
        **session,
    )


def _embed(
    recipe: TrainingRecipe, spec: BackboneSpec, corpus: Corpus, encoder: EncoderOptions
) -> tuple[Backbone, ExtractionResult]:
    backbone = build_backbone(spec, encoder)
    result = extract_embeddings(
        [u.path for u in corpus.utterances],
        backbone,
        cache_dir=recipe.embedding_cache or recipe.out / ".cache",
        batch_size=encoder.max_batch_size,
        progress=recipe.progress,
        ray=recipe.ray,
        encoder=encoder,
    )
    return backbone, result


def _sweep_layers(
    recipe: TrainingRecipe, corpus: Corpus, encoder: EncoderOptions
) -> tuple[int | None, list[dict[str, Any]]]:
    """The layer with the best speaker-grouped UA among ``recipe.layers``, and each layer's figures."""
    if not recipe.layers or recipe.backbone != "hubert":
        return recipe.layer, []
    sweep: list[dict[str, Any]] = []
    best: tuple[int, float] | None = None
    for layer in recipe.layers:
        _, res = _embed(recipe, recipe.spec(layer), corpus, encoder)
        cv = cross_validate(
            res.embeddings,
            [corpus.utterances[i].label for i in res.ok],
            [corpus.utterances[i].speaker for i in res.ok],
            folds=recipe.folds,
            seed=recipe.seed,
            pipeline_options=recipe.pipeline_options,
        )
        m = cv.metrics()
        sweep.append(
            {"layer": layer, "unweighted_accuracy": m["unweighted_accuracy"], "accuracy": m["accuracy"]}
        )
        log.info("layer %d: speaker-grouped UA %.3f", layer, m["unweighted_accuracy"])
        if best is None or m["unweighted_accuracy"] > best[1]:
            best = (layer, m["unweighted_accuracy"])
    assert best is not None
    log.info("chose layer %d", best[0])
    return best[0], sweep


def _evaluate(
    recipe: TrainingRecipe, corpus: Corpus, x: np.ndarray, labels: list[str], speakers: list[str]
) -> tuple[dict[str, Any], str | None]:
    """Each protocol's cross-validated metrics, and why any was skipped."""
    evaluation: dict[str, Any] = {}
    skipped = None
    runs = [
        ("speaker_grouped", "speaker_grouped", False),
        ("speaker_grouped_session", "speaker_grouped", True),
    ]
    runs += [("random", "random", False)] if recipe.random_cv else []
    if not corpus.speaker_known:
        runs = [run for run in runs if run[1] != "speaker_grouped"]
        skipped = "speakers unknown (no 'speaker' column): speaker-grouped cross-validation is impossible"
    try:
        for key, protocol, session in runs:
            cv = cross_validate(
                x,
                labels,
                speakers,
                protocol=protocol,
                folds=recipe.folds,
                seed=recipe.seed,
                pipeline_options=recipe.pipeline_options,
                session=session,
            )
            m = evaluation[key] = cv.metrics()
            log.info(
                "%s %d-fold CV: accuracy %.3f, unweighted accuracy %.3f, macro F1 %.3f",
                key,
                m["folds"],
                m["accuracy"],
                m["unweighted_accuracy"],
                m["macro_f1"],
            )
    except EvaluationError as exc:
        skipped = str(exc)
        log.warning("cross-validation skipped: %s", exc)
    return evaluation, skipped


def train_bundle(
    recipe: TrainingRecipe,
    encoder: EncoderOptions | None = None,
    *,
    extra_files: dict[str, bytes] | None = None,
) -> TrainingResult:
    """The whole recipe; returns the new bundle's folder and its report. ``extra_files`` are stored in
    the bundle beside the report (a licence notice, say).

    Raises:
        SERError: the corpus is refused, the encoder cannot be loaded, or the bundle cannot be written.
    """
    encoder = encoder or EncoderOptions()
    recipe.spec(recipe.layer)  # a spec the flags cannot make fails now, before the corpus is read
    corpus = prepare_corpora([(recipe.corpus, recipe.data_dir), *recipe.extra_corpora])
    summary = corpus.summary()
    log.info("corpus %s: %d clips, %d speakers", corpus.name, summary["n_utterances"], summary["n_speakers"])

    chosen_layer, sweep = _sweep_layers(recipe, corpus, encoder)
    backbone, res = _embed(recipe, recipe.spec(chosen_layer), corpus, encoder)
    used = [corpus.utterances[i] for i in res.ok]
    labels = [u.label for u in used]
    speakers = [u.speaker for u in used]
    evaluation, skipped = _evaluate(recipe, corpus, res.embeddings, labels, speakers)

    corpora = [corpus_of(u, corpus.name) for u in used]
    cross_corpus: list[dict[str, Any]] = []
    if len(set(corpora)) > 1:
        cross_corpus = leave_one_corpus_out(
            res.embeddings,
            labels,
            speakers,
            corpora,
            seed=recipe.seed,
            pipeline_options=recipe.pipeline_options,
        )
        for row in cross_corpus:
            if "single" in row:
                log.info(
                    "trained without %s, tested on it: UA %.3f alone, %.3f session-normalised",
                    row["corpus"],
                    row["single"]["unweighted_accuracy"],
                    row["session"]["unweighted_accuracy"],
                )
    name = recipe.name or f"{corpus.name.replace('+', '-')}-{recipe.backbone}"
    version = recipe.version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    headline = evaluation.get("speaker_grouped") or evaluation.get("random")
    metrics = {key: {k: v for k, v in m.items() if k in MANIFEST_METRICS} for key, m in evaluation.items()}
    if headline:
        metrics["headline"] = headline["protocol"]
    paths = [u.path for u in corpus.utterances]
    report = {
        "name": name,
        "version": version,
        "data": summary,
        "failed": len(res.failed),
        "failed_files": [{"path": str(paths[i]), "reason": reason} for i, reason in res.failed],
        "backbone": backbone_record(backbone),
        "evaluation": evaluation,
        "layer_sweep": sweep,
        "leave_one_corpus_out": cross_corpus,
        "evaluation_skipped": skipped,
        "seed": recipe.seed,
        "pipeline": recipe.pipeline_options,
    }
    extra = {
        **(extra_files or {}),
        "report.json": (json.dumps(report, indent=2) + "\n").encode(),
        "report.md": report_markdown(report).encode(),
    }
    if headline:
        title = (
            f"{name}: {headline['protocol'].replace('_', '-')} {headline['folds']}-fold CV, "
            f"UA {headline['unweighted_accuracy']:.3f}"
        )
        extra["confusion_matrix.png"] = confusion_png(headline, title)
        extra["reliability.png"] = reliability_png(headline, title)
    folder = fit_bundle(
        res.embeddings,
        labels,
        backbone,
        recipe.out,
        name=name,
        version=version,
        training={
            "corpus": summary,
            "n_used": len(used),
            "failed": len(res.failed),
            "protocol": "speaker-grouped stratified k-fold CV (headline), also with each speaker z-scored by "
            "its own statistics (the session classifier); random stratified k-fold beside them",
            "seed": recipe.seed,
        },
        metrics=metrics,
        pipeline_options=recipe.pipeline_options,
        seed=recipe.seed,
        extra_files=extra,
        speakers=speakers if corpus.speaker_known else None,
    )
    return TrainingResult(folder=folder, report=report)


def classify_by_session(predictor: Predictor, embeddings: np.ndarray, sessions: Sequence[str]) -> list[Any]:
    """Predictions of embeddings ``[n, d]``, each session's with that session's statistics, in order."""
    keys = np.asarray(sessions)
    out: list[Any] = [None] * len(keys)
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        stats = SessionStats.of(embeddings[rows])
        for i, prediction in zip(rows, predictor.classify(embeddings[rows], session=stats), strict=True):
            out[i] = prediction
    return out


def evaluate_bundle(
    bundle: Path,
    corpus_kind: str,
    data_dir: Path,
    out: Path,
    encoder: EncoderOptions | None = None,
    *,
    embedding_cache: Path | None = None,
    progress: bool = True,
    session_by: str | None = None,
) -> dict[str, Any]:
    """Score the bundle at ``bundle`` on a labelled corpus; writes ``report.json``, ``report.md``,
    ``confusion_matrix.png`` and ``reliability.png`` to ``out`` and returns the report.

    The predictions are the service's: the bundle's backbone run as ``encoder`` says, then its classifier
    as served. With ``session_by="speaker"`` each speaker's clips form one session, as a client's
    ``session_id`` would: they are classified with that speaker's statistics (``Predictor.classify``).
    The report holds ``classification_metrics`` (accuracy, UA, macro F1, ECE, NLL, Brier, per-class
    recall, the confusion matrix, ``prediction_share``), ``uncertainty_metrics`` (``uncertain_rate``...)
    and which files failed.

    Raises:
        SERError: the bundle or the corpus is refused, or the encoder cannot be loaded.
    """
    predictor = Predictor.from_bundle(bundle, encoder)
    corpus = prepare_corpus(corpus_kind, data_dir)
    result = extract_embeddings(
        [u.path for u in corpus.utterances],
        predictor.backbone,
        cache_dir=embedding_cache or out / ".cache",
        batch_size=(encoder or EncoderOptions()).max_batch_size,
        progress=progress,
    )
    if not result.ok:
        raise CorpusError(
            f"none of the {len(corpus.utterances)} clips of {corpus.name} could be decoded and embedded "
            f"(first failure: {result.failed[0][1] if result.failed else 'none'})"
        )
    used = [corpus.utterances[i] for i in result.ok]
    if session_by is None:
        predictions = predictor.classify(result.embeddings)
    elif session_by == "speaker":
        predictions = classify_by_session(predictor, result.embeddings, [u.speaker for u in used])
    else:
        raise ValueError(f"unknown session grouping {session_by!r}; accepted: speaker")
    description = predictor.describe()
    report: dict[str, Any] = {
        "bundle": {"name": description.name, "version": description.version, "path": description.path},
        "backbone": description.backbone,
        "serving_dtype": description.serving_dtype,
        "data": corpus.summary(),
        "failed": len(result.failed),
        "failed_files": [{"path": str(corpus.utterances[i].path), "reason": why} for i, why in result.failed],
        "session_by": session_by,
        **prediction_metrics([u.label for u in used], predictions),
    }
    report["ua"] = report["unweighted_accuracy"]  # the field's usual name in emotion-recognition papers
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{description.name} {description.version} on {corpus.name}: UA {report['unweighted_accuracy']:.3f}"
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(evaluation_markdown(report))
    (out / "confusion_matrix.png").write_bytes(confusion_png(report, title))
    (out / "reliability.png").write_bytes(reliability_png(report, title))
    log.info(
        "%s on %s: UA %.3f, ECE %.3f, %.0f%% uncertain, largest prediction share %.0f%% (%s)",
        description.name,
        corpus.name,
        report["unweighted_accuracy"],
        report["ece"],
        100 * report["uncertain_rate"],
        100 * max(report["prediction_share"].values()),
        max(report["prediction_share"], key=report["prediction_share"].get),
    )
    return report


def build_demo(data_dir: Path, *, cache_dir: Path | None = None, progress: bool = True) -> TrainingResult:
    """Rebuild the demo bundle of ``shared.demo`` from RAVDESS at ``data_dir``: eGeMAPS, the recipe's
    defaults with leading and trailing silence trimmed (so a clip's prediction does not depend on how
    much silence surrounds it, and a timeline's window over an utterance answers as the utterance's own
    file does), every clip; the new version replaces the old one, with the licence notice beside it.

    Raises:
        SERError: the corpus is refused or the bundle cannot be written.
    """
    import shutil
    import tempfile

    from shared.demo import DEMO_NAME, DEMO_ROOT, NOTICE

    with tempfile.TemporaryDirectory(prefix="ser-demo-") as work:
        recipe = TrainingRecipe(
            corpus="ravdess",
            data_dir=data_dir,
            backbone="egemaps",
            trim_silence=True,
            name=DEMO_NAME,
            out=Path(work),
            embedding_cache=cache_dir or Path(work) / ".cache",
            progress=progress,
        )
        result = train_bundle(
            recipe, EncoderOptions(device="cpu"), extra_files={"NOTICE.md": NOTICE.encode()}
        )
        target = DEMO_ROOT / DEMO_NAME
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        final = target / result.folder.name
        shutil.copytree(result.folder, final)
    log.info("demo bundle written to %s", final)
    return TrainingResult(folder=final, report=result.report)
