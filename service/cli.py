"""``ser``: the service's console script.

Commands:
    serve     run the HTTP service (what ``python -m service`` does)
    predict   predict many audio files (files, folders, globs, manifests) here or on a Ray cluster, to
              the terminal or a resumable JSONL/CSV/Parquet file
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
from service.batch import add_predict_parser, add_timeline_flags, predict_files, timeline_options


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
    add_predict_parser(sub)
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
    add_timeline_flags(timeline)
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


def timeline_files(args: argparse.Namespace) -> int:
    """``ser timeline``: one timeline per file; a bad file is one error line on stderr, not the end."""
    from tqdm import tqdm

    from service.bundles import demo_notice
    from shared.errors import SERError
    from shared.timeline import TimelineAnalyzer

    try:
        options = timeline_options(args)
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
