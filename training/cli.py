"""``python -m training``: from a speech corpus to a verified, versioned model bundle.

Commands:
    run              prepare a corpus, embed it (cached), cross-validate, fit on everything, write a bundle
    evaluate         score an existing bundle on a labelled corpus, without training: report and PNGs
    build-demo       rebuild the demo model shipped in the package, from RAVDESS
    prepare          check a corpus and print its summary
    download-cremad  fetch the 7,442 CREMA-D WAV files, verified against the shipped checksums
    download-ravdess fetch RAVDESS's speech archive from Zenodo, verified by its MD5, and unpack it
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.backbones import BACKBONE_KINDS, EncoderOptions
from shared.batch.inputs import InputError
from shared.batch.ray_engine import RaySettings, check_address, require_ray
from shared.errors import SERError
from shared.loudness import DEFAULT_LEVEL_DBFS
from training.pipeline import CLASSIFIERS
from training.recipe import DEFAULT_HUBERT, TrainingRecipe


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, got {text!r}") from exc


def _add_encoder_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``encoder_from_args`` reads."""
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("SER_CACHE_DIR") or None,
        help="derived model files: half-precision weight copies (default $SER_CACHE_DIR, else ~/.cache/ser)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="encoder precision; auto (default) is the device's fast one, as the service's default, so a "
        "bundle is served in the precision it was trained in",
    )
    parser.add_argument("--batch-size", type=int, default=8)


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``ray_from_args`` reads: where the embeddings are computed."""
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: here, in this process; ray: on a Ray cluster (decoding in tasks, the encoder in an "
        "actor pool), filling the same cache",
    )
    parser.add_argument(
        "--ray-address", default=None, help="a running cluster (HOST:PORT or auto); default: start Ray here"
    )
    parser.add_argument("--workers", type=int, default=1, help="ray: the most encoder replicas")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs each replica holds")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs each replica holds")


def ray_from_args(args: argparse.Namespace) -> RaySettings | None:
    """The engine flags as ``RaySettings`` (None for the local engine).

    Raises:
        InputError: Ray is not installed, or the cluster's address cannot be reached.
    """
    if args.engine != "ray":
        return None
    if args.workers < 1:
        raise InputError("--workers must be 1 or more")
    require_ray()
    check_address(args.ray_address)
    return RaySettings(args.ray_address, args.workers, args.cpus_per_worker, args.gpus_per_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train, evaluate and export a bundle")
    run.add_argument(
        "--corpus",
        required=True,
        action="append",
        choices=("cremad", "ravdess", "csv"),
        help="the corpus; give --corpus and --data-dir several times to train on several corpora together",
    )
    run.add_argument(
        "--data-dir",
        required=True,
        action="append",
        type=Path,
        help="the corpus folder (for --corpus csv: the CSV file), one per --corpus, in the same order",
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
    level = run.add_mutually_exclusive_group()
    level.add_argument(
        "--level-dbfs",
        type=float,
        default=DEFAULT_LEVEL_DBFS,
        help=f"scale each clip so its active speech sits at this level before the backbone, in training and "
        f"serving alike (default {DEFAULT_LEVEL_DBFS:g})",
    )
    level.add_argument("--no-level", action="store_true", help="leave the clips' level as recorded")
    run.add_argument(
        "--trim-silence", action="store_true", help="drop each clip's leading and trailing silence first"
    )
    run.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    run.add_argument("--no-random-cv", action="store_true", help="skip the random-split comparison")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--pca-components", type=int, default=200)
    run.add_argument("--svm-c", type=float, default=1.0, help="the SVM's C (default 1, scikit-learn's)")
    run.add_argument(
        "--classifier",
        choices=CLASSIFIERS,
        default="svm",
        help="svm (default), or ensemble: soft voting of the SVM, a logistic regression and a random forest "
        "(served through scikit-learn)",
    )
    run.add_argument("--name", default=None, help="bundle name (default: <corpus>-<backbone>)")
    run.add_argument(
        "--version", default=None, help="bundle version (default: UTC timestamp); never overwritten"
    )
    run.add_argument(
        "--out", type=Path, default=Path("artifacts"), help="artifacts root (default ./artifacts)"
    )
    run.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default <out>/.cache)")
    _add_encoder_flags(run)
    _add_engine_flags(run)
    run.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="score an existing bundle on a labelled corpus, without training")
    ev.add_argument(
        "--bundle", required=True, type=Path, help="a bundle folder, <name> folder or artifacts root"
    )
    ev.add_argument("--corpus", required=True, choices=("cremad", "ravdess", "csv"))
    ev.add_argument(
        "--data-dir", required=True, type=Path, help="the corpus folder (for --corpus csv: the CSV file)"
    )
    ev.add_argument("--out", required=True, type=Path, help="folder for report.json, report.md and the PNGs")
    ev.add_argument(
        "--session-by",
        choices=("speaker",),
        default=None,
        help="treat each speaker's clips as one session, normalised with its own statistics "
        "(default: every clip alone, as a request without a session)",
    )
    ev.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default <out>/.cache)")
    _add_encoder_flags(ev)
    ev.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser(
        "build-demo", help="rebuild the demo model shipped in the package (eGeMAPS on all of RAVDESS)"
    )
    demo.add_argument("--data-dir", required=True, type=Path, help="the RAVDESS folder (Actor_NN/...)")
    demo.add_argument(
        "--cache-dir", type=Path, default=None, help="embedding cache (default: a temporary one)"
    )
    demo.add_argument("--no-progress", action="store_true")

    prep = sub.add_parser("prepare", help="check a corpus and print its summary as JSON")
    prep.add_argument("--corpus", required=True, choices=("cremad", "ravdess", "csv"))
    prep.add_argument("--data-dir", required=True, type=Path)

    rv = sub.add_parser(
        "download-ravdess", help="download RAVDESS's speech archive from Zenodo (MD5-checked) and unpack it"
    )
    rv.add_argument("--dest", required=True, type=Path, help="where the Actor_NN/ folders go")
    rv.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip beside them")

    dl = sub.add_parser("download-cremad", help="download CREMA-D's AudioWAV with resume and sha256 checks")
    dl.add_argument("--dest", required=True, type=Path, help="where AudioWAV/ goes")
    dl.add_argument("--workers", type=int, default=4)
    dl.add_argument(
        "--base-url", default=None, help="mirror of the AudioWAV folder (default: the official LFS media)"
    )
    dl.add_argument("--limit", type=int, default=None, help="fetch only the first N files (for a trial)")
    return parser


def recipe_from_args(args: argparse.Namespace) -> TrainingRecipe:
    """The ``run`` command's flags as a recipe."""
    return TrainingRecipe(
        corpus=args.corpus[0],
        data_dir=args.data_dir[0],
        extra_corpora=tuple(zip(args.corpus[1:], args.data_dir[1:], strict=True)),
        backbone=args.backbone,
        model=str(args.model),
        revision=args.revision,
        layer=args.layer,
        layer_end=args.layer_end,
        layers=tuple(args.layers or ()),
        pooling=args.pooling,
        level_dbfs=None if args.no_level else args.level_dbfs,
        trim_silence=args.trim_silence,
        folds=args.folds,
        random_cv=not args.no_random_cv,
        seed=args.seed,
        pca_components=args.pca_components,
        svm_c=args.svm_c,
        classifier=args.classifier,
        name=args.name,
        version=args.version,
        out=args.out,
        embedding_cache=args.cache_dir,
        progress=not args.no_progress,
        ray=ray_from_args(args),
    )


def encoder_from_args(args: argparse.Namespace) -> EncoderOptions:
    """The encoder flags (``_add_encoder_flags``) as ``EncoderOptions``."""
    return EncoderOptions(
        device=args.device, dtype=args.dtype, max_batch_size=args.batch_size, cache_dir=args.model_cache
    )


def run(args: argparse.Namespace) -> Path:
    """Train, evaluate and export a bundle (``training.recipe.train_bundle``); returns its folder."""
    from training.evaluation import report_markdown
    from training.recipe import train_bundle

    result = train_bundle(recipe_from_args(args), encoder_from_args(args))
    print(report_markdown(result.report))
    print(f"bundle written to {result.folder}")
    return result.folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and len(args.corpus) != len(args.data_dir):
        parser.error(
            f"{len(args.corpus)} --corpus but {len(args.data_dir)} --data-dir: give one --data-dir per --corpus"
        )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            run(args)
        elif args.command == "evaluate":
            from training.evaluation import evaluation_markdown
            from training.recipe import evaluate_bundle

            scores = evaluate_bundle(
                args.bundle,
                args.corpus,
                args.data_dir,
                args.out,
                encoder_from_args(args),
                embedding_cache=args.cache_dir,
                progress=not args.no_progress,
                session_by=args.session_by,
            )
            print(evaluation_markdown(scores))
            print(f"report written to {args.out}")
        elif args.command == "build-demo":
            from training.recipe import build_demo

            built = build_demo(args.data_dir, cache_dir=args.cache_dir, progress=not args.no_progress)
            print(f"demo bundle written to {built.folder}")
        elif args.command == "prepare":
            from training.corpora import prepare_corpus

            print(json.dumps(prepare_corpus(args.corpus, args.data_dir).summary(), indent=2))
        elif args.command == "download-ravdess":
            from training.corpora import download_ravdess

            corpus = download_ravdess(args.dest, keep_archive=args.keep_archive)
            print(json.dumps(corpus.summary(), indent=2))
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
