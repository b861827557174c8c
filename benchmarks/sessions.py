"""``python -m benchmarks.sessions``: how many utterances a session needs before its statistics help.

A served session is normalised with the running statistics of the utterances it has sent so far
(``shared.session``); below ``--minimum`` utterances the single-clip classifier answers instead. This
replays that on RAVDESS, speaker-grouped: in each of 5 folds both classifiers are fitted on the training
speakers (the session one on features z-scored by each training speaker's own statistics), and each test
speaker's clips arrive one by one in a random order, as one session. Utterance ``n`` of a session is
classified by the single-clip classifier while ``n < minimum``, else normalised with the statistics of
utterances ``1..n``. It prints UA per minimum (and with each test speaker's statistics from all of its
clips, the offline case), and, by position in the session, the UA of each classifier on the same
utterances (where the session classifier starts to win is the minimum to choose), and writes JSON. Needs ``SER_TEST_DATA``; eGeMAPS features, cached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.cli import comma_names
from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.loudness import DEFAULT_LEVEL_DBFS
from shared.predictor import sanitize_features
from shared.session import SessionStats, normalise_groups
from training.corpora import prepare_corpus
from training.embeddings import extract_embeddings
from training.pipeline import fit_pipeline

DEFAULT_OUT = Path("bench-results/sessions.json")
DEFAULT_MINIMA = ("1", "3", "5", "10", "20", "all")
#: Positions in a session (from 1) over which the two classifiers are compared utterance by utterance.
POSITIONS = ((1, 2), (3, 4), (5, 9), (10, 19), (20, 10_000))


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x))


def replay(
    x: np.ndarray, y: np.ndarray, speakers: np.ndarray, minima: list[str], seed: int
) -> dict[str, Any]:
    """Speaker-grouped 5-fold replay of sessions; UA of every clip per minimum."""
    x = sanitize_features(x)
    predictions: dict[str, np.ndarray] = {m: np.empty(len(y), dtype=object) for m in minima}
    position = np.zeros(len(y), dtype=int)
    running_pred = np.empty(len(y), dtype=object)
    alone_pred = np.empty(len(y), dtype=object)
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    for train, test in splitter.split(x, y, speakers):
        single = fit_pipeline(x[train], y[train], seed=seed)
        session = fit_pipeline(
            sanitize_features(normalise_groups(x[train], speakers[train])), y[train], seed=seed
        )
        alone = _predict(single, x[test])
        for speaker in np.unique(speakers[test]):
            rows = test[speakers[test] == speaker]
            order = rng.permutation(rows)
            running = np.stack(
                [
                    SessionStats.of(x[order[: n + 1]]).normalise(x[order[n : n + 1]])[0]
                    for n in range(len(order))
                ]
            )
            offline = SessionStats.of(x[order]).normalise(x[order])
            by_running = _predict(session, sanitize_features(running))
            by_offline = _predict(session, sanitize_features(offline))
            by_alone = alone[np.searchsorted(test, order)]
            position[order] = np.arange(1, len(order) + 1)
            running_pred[order], alone_pred[order] = by_running, by_alone
            for minimum in minima:
                if minimum == "all":
                    predictions[minimum][order] = by_offline
                    continue
                n = np.arange(1, len(order) + 1)
                predictions[minimum][order] = np.where(n >= int(minimum), by_running, by_alone)
    by_position = {}
    for low, high in POSITIONS:
        rows = (position >= low) & (position <= high)
        by_position[f"{low}-{high}" if high < 10_000 else f"{low}+"] = {
            "n": int(rows.sum()),
            "single_ua": float(balanced_accuracy_score(y[rows], alone_pred[rows].astype(str))),
            "session_ua": float(balanced_accuracy_score(y[rows], running_pred[rows].astype(str))),
        }
    return {
        "ua_by_minimum": {
            m: {"ua": float(balanced_accuracy_score(y, predictions[m].astype(str))), "n": int(len(y))}
            for m in minima
        },
        "ua_by_position": by_position,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sessions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--minima",
        type=comma_names,
        default=list(DEFAULT_MINIMA),
        help=f"session sizes from which its statistics are used, 'all' for the offline case "
        f"(default {','.join(DEFAULT_MINIMA)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("bench-results/.cache"), help="embedding cache"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    bad = [m for m in args.minima if m != "all" and not (m.isdigit() and int(m) >= 1)]
    if bad:
        parser.error(f"--minima takes positive integers or 'all', got {', '.join(bad)}")
    data = os.environ.get("SER_TEST_DATA")
    if not data or not (Path(data) / "ravdess16k").is_dir():
        parser.error("needs the RAVDESS folder: set SER_TEST_DATA to the shared data folder")
    corpus = prepare_corpus("ravdess", Path(data) / "ravdess16k")
    backbone = build_backbone(
        BackboneSpec(kind="egemaps", level_dbfs=DEFAULT_LEVEL_DBFS), EncoderOptions(device="cpu")
    )
    embedded = extract_embeddings(
        [u.path for u in corpus.utterances], backbone, cache_dir=args.cache_dir, progress=False
    )
    used = [corpus.utterances[i] for i in embedded.ok]
    y = np.array([u.label for u in used])
    speakers = np.array([u.speaker for u in used])
    started = time.time()
    scores = replay(embedded.embeddings, y, speakers, list(args.minima), args.seed)
    result = {
        "command": " ".join(["python -m benchmarks.sessions", *(argv if argv is not None else sys.argv[1:])]),
        "corpus": corpus.summary()["n_utterances"],
        "backbone": backbone.spec.to_dict(),
        "protocol": "speaker-grouped 5-fold; each test speaker's clips one session, in a random order",
        "seconds": round(time.time() - started, 1),
        **scores,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| minimum utterances | UA |")
    print("|---|---|")
    for minimum, entry in scores["ua_by_minimum"].items():
        label = "all of the speaker's clips (offline)" if minimum == "all" else minimum
        print(f"| {label} | {entry['ua']:.3f} |")
    print()
    print(
        "| utterance's position in its session | clips | UA, single-clip classifier | UA, running session statistics |"
    )
    print("|---|---|---|---|")
    for span, entry in scores["ua_by_position"].items():
        print(f"| {span} | {entry['n']} | {entry['single_ua']:.3f} | {entry['session_ua']:.3f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
