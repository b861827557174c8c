"""``ser``: the service's console script.

Commands:
    serve     run the HTTP service (what ``python -m service`` does)
    predict   predict the emotion of audio files here, without a server (one line or JSON object each)
    timeline  the emotion timeline of long recordings: windows, segments and a summary (JSON, CSV, RTTM;
              a PNG plot on request)
    info      describe the bundle that would be served

Training has its own script, ``ser-train`` (the same as ``python -m training``). Exit codes: 0 done,
1 some file could not be analysed (``predict``, ``timeline``), 2 a usage error or a bundle that cannot be
loaded.
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
from shared.timeline import METHODS, TimelineOptions


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
    timeline = sub.add_parser(
        "timeline",
        help="the emotion timeline of long recordings, here, without a server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    timeline.add_argument("files", nargs="+", type=Path, help="recordings (any format the service accepts)")
    timeline.add_argument(
        "--bundle", type=Path, help="as for serve (default: SER_BUNDLE, ./artifacts, the demo)"
    )
    timeline.add_argument(
        "--format",
        choices=("json", "csv", "rttm"),
        default="json",
        help="json: the whole timeline (one object per line with several files); csv: one row per window; "
        "rttm: the segments",
    )
    timeline.add_argument(
        "--output-dir",
        type=Path,
        help="write <name>.timeline.<format> (and the plot) for each file here instead of printing",
    )
    timeline.add_argument(
        "--plot",
        action="store_true",
        help="also write <name>.timeline.png: stacked probabilities over time with the segments "
        "(to --output-dir, else the current folder)",
    )
    defaults = TimelineOptions()
    timeline.add_argument("--window", type=float, default=defaults.window_seconds, help="window length (s)")
    timeline.add_argument("--hop", type=float, default=defaults.hop_seconds, help="time between windows (s)")
    timeline.add_argument(
        "--method",
        choices=METHODS,
        default=defaults.method,
        help="pooled: encode each speech region once; exact: encode every window on its own",
    )
    timeline.add_argument(
        "--smoothing", type=int, default=defaults.smoothing, help="windows averaged (1: none)"
    )
    timeline.add_argument(
        "--no-session",
        action="store_true",
        help="classify every window alone, instead of normalising a recording's windows together",
    )
    timeline.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="refuse recordings longer than this (default: no limit)",
    )
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


def timeline_files(args: argparse.Namespace) -> int:
    """``ser timeline``: one timeline per file; a bad file is one error line on stderr, not the end."""
    from tqdm import tqdm

    from service.bundles import demo_notice
    from shared.errors import SERError
    from shared.timeline import TimelineAnalyzer

    try:
        options = TimelineOptions(
            window_seconds=args.window,
            hop_seconds=args.hop,
            method=args.method,
            smoothing=args.smoothing,
            session=not args.no_session,
        )
    except ValueError as exc:
        print(f"ser timeline: error: {exc}", file=sys.stderr)
        return 2
    predictor, folder = _predictor(args.bundle)
    notice = demo_notice(folder)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    analyzer = TimelineAnalyzer(predictor, options)
    failed = 0
    printed = False
    show_progress = sys.stderr.isatty()
    for path in args.files:
        bar = tqdm(
            total=100, desc=path.name, unit="%", disable=not show_progress, leave=False, file=sys.stderr
        )

        def progress(fraction: float, _seconds: float, bar: Any = bar) -> None:
            bar.update(round(100 * fraction) - bar.n)

        try:
            result = analyzer.analyse(path, max_seconds=args.max_seconds, progress=progress)
        except (SERError, OSError) as exc:
            failed += 1
            print(f"{path}\terror: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
            continue
        finally:
            bar.close()
        for warning in result.warnings:
            print(f"{path}\twarning: {warning}", file=sys.stderr)
        if args.output_dir is not None:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            text = _render_timeline(result, path, args.format)
            (args.output_dir / f"{path.stem}.timeline.{args.format}").write_text(text)
        else:
            # one CSV table on the terminal: the header once, before the first file's rows
            sys.stdout.write(_render_timeline(result, path, args.format, header=not printed))
            printed = True
        if args.plot:
            from service.plot import plot_timeline

            plot_timeline(
                result, (args.output_dir or Path.cwd()) / f"{path.stem}.timeline.png", title=path.name
            )
    return 1 if failed else 0


def _render_timeline(result: Any, path: Path, fmt: str, header: bool = True) -> str:
    if fmt == "csv":
        rows = result.windows_csv().splitlines()
        lines = [f"{'file' if i == 0 else path},{row}\n" for i, row in enumerate(rows)]
        return "".join(lines if header else lines[1:])
    if fmt == "rttm":
        return str(result.segments_rttm(path.stem))
    return json.dumps({"file": str(path), **result.to_dict()}) + "\n"


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
        if args.command == "timeline":
            return timeline_files(args)
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
