"""``python -m benchmarks.robustness``: how a bundle holds up when the recording changes, and on another corpus.

RAVDESS is split by actor: a bundle is trained with the project's recipe on actors 1-16 (clean audio) and
scored on actors 17-24 under each channel change of ``benchmarks.channels`` (gain, telephone, codecs,
noise, a room), through the serving predictor. Each variant (``--variants``) is a way of training: which
input normalisation the spec records, so a remedy's effect is its row against the ``raw`` row. The 12 real
CREMA-D clips of ``$SER_TEST_DATA/cremad_sample`` are scored too, as a small check on another corpus.

Per variant and condition it reports UA, accuracy, ECE, NLL, Brier, the share of predictions flagged
uncertain (out of distribution or low confidence) and the largest share one emotion takes of all the
predictions and of those not flagged (a collapsed classifier puts most of them in one), twice: with
each clip alone (``single``, no session information) and with each test speaker's clips as one session
(``session``). It writes JSON (``--out``) and prints a table. Needs ``SER_TEST_DATA`` (the shared data
folder); eGeMAPS by default, any speech encoder with ``--backbone hubert --model ID_OR_FOLDER``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.channels import CONDITIONS, apply_condition
from benchmarks.cli import comma_names
from shared.audio import decode_audio
from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.loudness import DEFAULT_LEVEL_DBFS
from shared.predictor import Prediction, Predictor
from training.corpora import Utterance, prepare_corpus
from training.embeddings import extract_embeddings
from training.evaluation import prediction_metrics
from training.recipe import classify_by_session, fit_bundle

DEFAULT_OUT = Path("bench-results/robustness.json")
#: Training variants: the input normalisation each records in its spec.
VARIANTS: dict[str, dict[str, Any]] = {
    "raw": {"level_dbfs": None},
    "level": {"level_dbfs": DEFAULT_LEVEL_DBFS},
    "level+trim": {"level_dbfs": DEFAULT_LEVEL_DBFS, "trim_silence": True},
}
TRAIN_ACTORS = range(1, 17)
QUICK_TEST_ACTORS = (17, 18)


#: How test clips are classified: each alone, or each speaker's clips as one session.
MODES = ("single", "session")


def score(predictions: Sequence[Prediction], labels: Sequence[str]) -> dict[str, Any]:
    """UA, accuracy, ECE, NLL, Brier, the prediction shares and the uncertainty figures of predictions."""
    m = prediction_metrics(labels, predictions)
    return {
        "n": m["n"],
        "ua": m["unweighted_accuracy"],
        "accuracy": m["accuracy"],
        "ece": m["ece"],
        "nll": m["nll"],
        "brier": m["brier"],
        "prediction_share": m["prediction_share"],
        "largest_share": max(m["prediction_share"].values()),
        "uncertain_rate": m["uncertain_rate"],
        "uncertain_reasons": m["uncertain_reasons"],
        "certain_n": m["certain_n"],
        "certain_ua": m.get("certain_unweighted_accuracy"),
        "certain_largest_share": m.get("certain_largest_share"),
        "session_share": m["session_share"],
    }


def score_modes(
    predictor: Predictor, waves: Sequence[np.ndarray], labels: Sequence[str], speakers: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``score`` of each mode of ``MODES`` (the embeddings are computed once)."""
    x = predictor.embed_batch(waves)
    return {
        "single": score(predictor.classify(x), labels),
        "session": score(classify_by_session(predictor, x, speakers), labels),
    }


def _spec(backbone: str, model: str | None, variant: str) -> BackboneSpec:
    if backbone == "egemaps":
        return BackboneSpec(kind="egemaps", **VARIANTS[variant])
    return BackboneSpec(kind="hubert", model=model, **VARIANTS[variant])


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """The whole benchmark; the JSON so far is written to ``args.out`` after each variant."""
    data = os.environ.get("SER_TEST_DATA")
    if not data or not (Path(data) / "ravdess16k").is_dir():
        raise SystemExit("needs the RAVDESS folder: set SER_TEST_DATA to the shared data folder")
    corpus = prepare_corpus("ravdess", Path(data) / "ravdess16k")
    train: list[Utterance] = [u for u in corpus.utterances if int(u.meta["actor"]) in TRAIN_ACTORS]
    test = [u for u in corpus.utterances if int(u.meta["actor"]) not in TRAIN_ACTORS]
    if args.quick:  # still 22 clips a test speaker, so sessions reach their minimum
        train = train[::4]
        test = [u for u in test if int(u.meta["actor"]) in QUICK_TEST_ACTORS][::2]
    say(f"decoding {len(test)} test clips and passing them through {len(args.conditions)} conditions")
    clean = [decode_audio(u.path) for u in test]
    changed = {c: [apply_condition(c, w, seed=i) for i, w in enumerate(clean)] for c in args.conditions}
    test_labels = [u.label for u in test]
    test_speakers = [u.speaker for u in test]
    cremad = Path(data) / "cremad_sample"
    other = prepare_corpus("cremad", cremad) if cremad.is_dir() else None
    encoder = EncoderOptions(device="cpu", dtype=args.dtype, cache_dir=args.model_cache)
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.robustness", *args.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backbone": args.backbone,
        "model": args.model,
        "train": {"actors": f"{TRAIN_ACTORS.start}-{TRAIN_ACTORS.stop - 1}", "clips": len(train)},
        "test": {
            "actors": ",".join(map(str, QUICK_TEST_ACTORS)) if args.quick else "17-24",
            "clips": len(test),
        },
        "conditions": list(args.conditions),
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="ser-robustness-") as work:
        for variant in args.variants:
            spec = _spec(args.backbone, args.model, variant)
            say(f"{variant}: embedding {len(train)} training clips")
            backbone = build_backbone(spec, encoder)
            embedded = extract_embeddings(
                [u.path for u in train], backbone, cache_dir=args.cache_dir, progress=False
            )
            labels = [train[i].label for i in embedded.ok]
            folder = fit_bundle(
                embedded.embeddings,
                labels,
                backbone,
                Path(work),
                name=f"robustness-{variant.replace('+', '-')}",
                version="1",
                training={"corpus": "ravdess", "actors": result["train"]["actors"]},
                speakers=[train[i].speaker for i in embedded.ok],
            )
            predictor = Predictor.from_bundle(folder, encoder)
            rows: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
            for condition in args.conditions:
                say(f"{variant}: scoring {condition}")
                for mode, row in score_modes(
                    predictor, changed[condition], test_labels, test_speakers
                ).items():
                    rows[mode][condition] = row
            if other is not None:
                say(f"{variant}: scoring the CREMA-D sample")
                scored = score_modes(
                    predictor,
                    [decode_audio(u.path) for u in other.utterances],
                    [u.label for u in other.utterances],
                    [u.speaker for u in other.utterances],
                )
                for mode, row in scored.items():
                    rows[mode]["cremad_sample"] = row
            result["variants"][variant] = {"spec": spec.to_dict(), "scores": rows}
            write(result, args.out)
    return result


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def summary_lines(result: dict[str, Any]) -> list[str]:
    conditions = [*result["conditions"], "cremad_sample"]
    lines = [
        f"robustness of {result['backbone']} trained on RAVDESS actors {result['train']['actors']}, "
        f"scored on actors {result['test']['actors']} (UA / ECE / share flagged uncertain / largest share "
        "one emotion takes of the predictions not flagged); session: each test speaker's clips are one "
        "session",
        "| variant | mode | " + " | ".join(conditions) + " |",
        "|---" * (len(conditions) + 2) + "|",
    ]
    for variant, entry in result["variants"].items():
        for mode, scores in entry["scores"].items():
            cells = []
            for c in conditions:
                s = scores.get(c)
                if s is None:
                    cells.append("-")
                    continue
                share = "-" if s["certain_largest_share"] is None else f"{s['certain_largest_share']:.0%}"
                cells.append(f"{s['ua']:.3f} / {s['ece']:.3f} / {s['uncertain_rate']:.0%} / {share}")
            lines.append(f"| {variant} | {mode} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.robustness",
        description="Score bundles trained on RAVDESS actors 1-16 on actors 17-24 under channel changes.",
    )
    parser.add_argument("--backbone", default="egemaps", choices=("egemaps", "hubert"))
    parser.add_argument(
        "--model", default=None, help="the speech encoder (hub id or folder) for --backbone hubert"
    )
    parser.add_argument(
        "--variants",
        type=comma_names,
        default=list(VARIANTS),
        help=f"from {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument(
        "--conditions",
        type=comma_names,
        default=list(CONDITIONS),
        help=f"from {', '.join(CONDITIONS)} (default: all)",
    )
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("SER_CACHE_DIR") or None,
        help="derived model files of a speech encoder (default $SER_CACHE_DIR, else ~/.cache/ser)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("bench-results/.cache"),
        help="embedding cache of the training clips",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a quarter of the training clips; half the clips of two test actors",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS] + [
        c for c in args.conditions if c not in CONDITIONS
    ]
    if unknown:
        parser.error(f"unknown variant or condition: {', '.join(unknown)}")
    if args.backbone == "hubert" and not args.model:
        parser.error("--backbone hubert needs --model")
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result = run(args, say)
    write(result, args.out)
    for line in summary_lines(result):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
