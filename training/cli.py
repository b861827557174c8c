"""``python -m training``: from a speech corpus to a verified, versioned model bundle.

Commands:
    run              prepare a corpus, embed it (cached), cross-validate, fit on everything, write a bundle
    prepare          check a corpus and print its summary
    download-cremad  fetch the 7,442 CREMA-D WAV files, verified against the shipped checksums
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shared.backbones import BACKBONE_KINDS, BackboneSpec, build_backbone
from shared.bundle import save_bundle
from shared.errors import SERError

log = logging.getLogger("training")

DEFAULT_HUBERT = "facebook/hubert-large-ll60k"


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train, evaluate and export a bundle")
    run.add_argument("--corpus", required=True, choices=("cremad", "ravdess", "csv"))
    run.add_argument(
        "--data-dir", required=True, type=Path, help="the corpus folder (for --corpus csv: the CSV file)"
    )
    run.add_argument("--backbone", default="hubert", choices=BACKBONE_KINDS)
    run.add_argument("--model", default=DEFAULT_HUBERT, help="hub id or local folder of the speech encoder")
    run.add_argument("--revision", default=None, help="hub revision (commit, tag or branch) to pin")
    run.add_argument("--layer", type=int, default=None, help="hidden state to pool (default: last)")
    run.add_argument("--layer-end", type=int, default=None, help="pool the mean of layers LAYER..LAYER_END")
    run.add_argument(
        "--layers", type=_layers, default=None, help="sweep these layers (comma-separated) and keep the best"
    )
    run.add_argument("--pooling", default="mean", choices=("mean", "mean+std"))
    run.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    run.add_argument("--no-random-cv", action="store_true", help="skip the random-split comparison")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--pca-components", type=int, default=200)
    run.add_argument("--svm-c", type=float, default=1.0, help="the SVM's C (default 1, scikit-learn's)")
    run.add_argument("--name", default=None, help="bundle name (default: <corpus>-<backbone>)")
    run.add_argument(
        "--version", default=None, help="bundle version (default: UTC timestamp); never overwritten"
    )
    run.add_argument(
        "--out", type=Path, default=Path("artifacts"), help="artifacts root (default ./artifacts)"
    )
    run.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default <out>/.cache)")
    run.add_argument("--device", default="auto", help="cpu, cuda or auto")
    run.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--no-progress", action="store_true")

    prep = sub.add_parser("prepare", help="check a corpus and print its summary as JSON")
    prep.add_argument("--corpus", required=True, choices=("cremad", "ravdess", "csv"))
    prep.add_argument("--data-dir", required=True, type=Path)

    dl = sub.add_parser("download-cremad", help="download CREMA-D's AudioWAV with resume and sha256 checks")
    dl.add_argument("--dest", required=True, type=Path, help="where AudioWAV/ goes")
    dl.add_argument("--workers", type=int, default=4)
    dl.add_argument(
        "--base-url", default=None, help="mirror of the AudioWAV folder (default: the official LFS media)"
    )
    dl.add_argument("--limit", type=int, default=None, help="fetch only the first N files (for a trial)")
    return parser


def _spec(args: argparse.Namespace, layer: int | None) -> BackboneSpec:
    if args.backbone == "egemaps":
        return BackboneSpec(kind="egemaps")
    return BackboneSpec(
        kind="hubert",
        model=str(args.model),
        revision=args.revision,
        layer=layer,
        layer_end=args.layer_end,
        pooling=args.pooling,
    )


def _embed(args: argparse.Namespace, spec: BackboneSpec, paths: list[Path]) -> tuple[Any, Any]:
    from training.embeddings import extract_embeddings

    backbone = build_backbone(spec, device=args.device, dtype=args.dtype, max_batch_size=args.batch_size)
    result = extract_embeddings(
        paths,
        backbone,
        cache_dir=args.cache_dir or args.out / ".cache",
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return backbone, result


def run(args: argparse.Namespace) -> Path:
    """The whole recipe; returns the new bundle folder."""
    from training.corpora import prepare_corpus
    from training.evaluation import EvaluationError, confusion_png, cross_validate, report_markdown
    from training.pipeline import make_pipeline

    corpus = prepare_corpus(args.corpus, args.data_dir)
    summary = corpus.summary()
    log.info("corpus %s: %d clips, %d speakers", corpus.name, summary["n_utterances"], summary["n_speakers"])
    paths = [u.path for u in corpus.utterances]
    pipeline_options = {"pca_components": args.pca_components, "C": args.svm_c}

    sweep: list[dict[str, Any]] = []
    chosen_layer = args.layer
    if args.layers and args.backbone == "hubert":
        best = None
        for layer in args.layers:
            spec = _spec(args, layer)
            _, res = _embed(args, spec, paths)
            labels = [corpus.utterances[i].label for i in res.ok]
            speakers = [corpus.utterances[i].speaker for i in res.ok]
            cv = cross_validate(
                res.embeddings,
                labels,
                speakers,
                folds=args.folds,
                seed=args.seed,
                pipeline_options=pipeline_options,
            )
            m = cv.metrics()
            sweep.append(
                {"layer": layer, "unweighted_accuracy": m["unweighted_accuracy"], "accuracy": m["accuracy"]}
            )
            log.info("layer %d: speaker-grouped UA %.3f", layer, m["unweighted_accuracy"])
            if best is None or m["unweighted_accuracy"] > best[1]:
                best = (layer, m["unweighted_accuracy"])
        assert best is not None
        chosen_layer = best[0]
        log.info("chose layer %d", chosen_layer)

    spec = _spec(args, chosen_layer)
    backbone, res = _embed(args, spec, paths)
    used = [corpus.utterances[i] for i in res.ok]
    labels = [u.label for u in used]
    speakers = [u.speaker for u in used]
    x = res.embeddings

    evaluation: dict[str, Any] = {}
    skipped = None
    protocols = ["speaker_grouped"] + ([] if args.no_random_cv else ["random"])
    if not corpus.speaker_known:
        protocols = [p for p in protocols if p != "speaker_grouped"]
        skipped = "speakers unknown (no 'speaker' column): speaker-grouped cross-validation is impossible"
    try:
        for protocol in protocols:
            cv = cross_validate(
                x,
                labels,
                speakers,
                protocol=protocol,
                folds=args.folds,
                seed=args.seed,
                pipeline_options=pipeline_options,
            )
            evaluation[protocol] = cv.metrics()
            m = evaluation[protocol]
            log.info(
                "%s %d-fold CV: accuracy %.3f, unweighted accuracy %.3f, macro F1 %.3f",
                protocol,
                m["folds"],
                m["accuracy"],
                m["unweighted_accuracy"],
                m["macro_f1"],
            )
    except EvaluationError as exc:
        skipped = str(exc)
        log.warning("cross-validation skipped: %s", exc)

    counts = {label: labels.count(label) for label in set(labels)}
    final = make_pipeline(
        len(x),
        x.shape[1],
        min_class_count=min(counts.values()) if counts else 0,
        seed=args.seed,
        **pipeline_options,
    )
    final.fit(x, np.asarray(labels))

    name = args.name or f"{args.corpus}-{args.backbone}"
    version = args.version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    backbone_info = {**spec.to_dict(), "dim": backbone.dim, "dtype": backbone.dtype, **backbone.fingerprint}
    headline = evaluation.get("speaker_grouped") or evaluation.get("random")
    metrics = {
        key: {k: v for k, v in m.items() if k in ("folds", "accuracy", "unweighted_accuracy", "macro_f1")}
        for key, m in evaluation.items()
    }
    if headline:
        metrics["headline"] = headline["protocol"]
    report = {
        "name": name,
        "version": version,
        "data": summary,
        "failed": len(res.failed),
        "failed_files": [{"path": str(paths[i]), "reason": reason} for i, reason in res.failed],
        "backbone": backbone_info,
        "evaluation": evaluation,
        "layer_sweep": sweep,
        "evaluation_skipped": skipped,
        "seed": args.seed,
        "pipeline": pipeline_options,
    }
    extra = {
        "report.json": (json.dumps(report, indent=2) + "\n").encode(),
        "report.md": report_markdown(report).encode(),
    }
    if headline:
        title = f"{name}: {headline['protocol'].replace('_', '-')} {headline['folds']}-fold CV, UA {headline['unweighted_accuracy']:.3f}"
        extra["confusion_matrix.png"] = confusion_png(headline, title)
    training_info = {
        "corpus": summary,
        "n_used": len(used),
        "failed": len(res.failed),
        "protocol": "speaker-grouped stratified k-fold CV (headline); random stratified k-fold beside it",
        "seed": args.seed,
    }
    folder = save_bundle(
        args.out,
        name=name,
        version=version,
        pipeline=final,
        backbone=backbone_info,
        training=training_info,
        metrics=metrics,
        extra_files=extra,
    )
    print(report_markdown(report))
    print(f"bundle written to {folder}")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            run(args)
        elif args.command == "prepare":
            from training.corpora import prepare_corpus

            print(json.dumps(prepare_corpus(args.corpus, args.data_dir).summary(), indent=2))
        elif args.command == "download-cremad":
            from training.corpora.cremad import download_cremad

            kwargs: dict[str, Any] = {"workers": args.workers, "limit": args.limit}
            if args.base_url:
                kwargs["base_url"] = args.base_url
            report = download_cremad(args.dest, **kwargs)
            print(json.dumps(report.summary(), indent=2))
    except SERError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
