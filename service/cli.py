"""``ser``: the service's console script.

Commands:
    serve     run the HTTP service (what ``python -m service`` does)
    predict   predict the emotion of audio files here, without a server (one line or JSON object each)
    info      describe the bundle that would be served

Training has its own script, ``ser-train`` (the same as ``python -m training``). Exit codes: 0 done,
1 some file could not be predicted (``predict``), 2 a usage error or a bundle that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.__main__ import add_serve_flags, settings_help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_flags(serve)
    predict = sub.add_parser("predict", help="predict audio files here, without a server")
    predict.add_argument("files", nargs="+", type=Path, help="audio files (any format the service accepts)")
    predict.add_argument(
        "--bundle", type=Path, help="as for serve (default: SER_BUNDLE, ./artifacts, the demo)"
    )
    predict.add_argument(
        "--session",
        action="store_true",
        help="the files are one speaker or recording: normalise them together (10 files or more)",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per file instead of a table")
    info = sub.add_parser("info", help="describe the bundle that would be served")
    info.add_argument("--bundle", type=Path, help="as for serve")
    return parser


def _predictor(bundle: Path | None) -> tuple[Any, Path]:
    from service.bundles import resolve_served_bundle
    from service.settings import ServiceSettings
    from shared.predictor import Predictor

    settings = ServiceSettings(bundle=bundle) if bundle else ServiceSettings()
    folder = resolve_served_bundle(settings.bundle, settings.artifacts)
    return Predictor.from_bundle(folder, settings.encoder_options()), folder


def predict_files(args: argparse.Namespace) -> int:
    """``ser predict``: decode, check and classify each file; a bad file is one error line, not the end."""
    import numpy as np

    from service.bundles import demo_notice
    from service.settings import ServiceSettings
    from shared.audio import AudioLimits, load_audio
    from shared.constants import SAMPLE_RATE
    from shared.errors import SERError
    from shared.session import SessionStats

    predictor, folder = _predictor(args.bundle)
    notice = demo_notice(folder)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    settings = ServiceSettings()
    limits = AudioLimits(settings.min_seconds, settings.max_seconds, settings.silence_dbfs)
    waves, errors = {}, {}
    for path in args.files:
        try:
            waves[path] = load_audio(path, limits)
        except (SERError, OSError) as exc:
            errors[path] = getattr(exc, "message", None) or str(exc)
    predictions = {}
    if waves:
        embeddings = predictor.embed_batch(list(waves.values()))
        stats = SessionStats.of(embeddings) if args.session else None
        predictions = dict(zip(waves, predictor.classify(embeddings, session=stats), strict=True))
    for path in args.files:
        if path in errors:
            if args.json:
                print(json.dumps({"file": str(path), "ok": False, "error": errors[path]}))
            else:
                print(f"{path}\terror: {errors[path]}")
            continue
        p = predictions[path]
        if args.json:
            print(
                json.dumps(
                    {
                        "file": str(path),
                        "ok": True,
                        "label": p.label,
                        "confidence": round(p.confidence, 4),
                        "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()},
                        "uncertain": p.uncertain,
                        "uncertain_reasons": list(p.uncertain_reasons),
                        "ood_percentile": p.ood_percentile,
                        "classifier": p.classifier,
                        "duration_s": round(float(np.asarray(waves[path]).shape[0]) / SAMPLE_RATE, 3),
                    }
                )
            )
        else:
            flag = f"\tuncertain ({', '.join(p.uncertain_reasons)})" if p.uncertain else ""
            print(f"{path}\t{p.label}\t{100 * p.confidence:.0f}%{flag}")
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from shared.errors import SERError

    try:
        if args.command == "serve":
            from service.__main__ import main as serve

            forwarded = []
            for flag in ("host", "port", "bundle"):
                value = getattr(args, flag)
                if value is not None:
                    forwarded += [f"--{flag}", str(value)]
            return serve(forwarded)
        if args.command == "predict":
            return predict_files(args)
        predictor, folder = _predictor(args.bundle)
        print(json.dumps({"bundle": str(folder), **predictor.describe().to_dict()}, indent=2))
        return 0
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except SERError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
