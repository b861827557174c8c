"""``ser predict``: emotion predictions for many files, here or on a Ray cluster.

Inputs are files, folders, glob patterns and CSV/JSONL manifests (``shared.batch.inputs``). Without
``--out`` each file is one line on stdout (a table, or JSON with ``--json``); with ``--out`` rows go to a
JSONL, CSV or Parquet file (``shared.batch.output``) that a re-run of the same command resumes: files
already there (same path, same contents) are skipped and the rest appended. ``--timeline`` writes one row
per window of each file's emotion timeline instead of one per file.

Exit codes: 0 every file answered, 1 some file failed (it has an error row), 2 a usage error (nothing was
done), 130 interrupted (the output holds every file finished before it; re-run to finish).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.batch.inputs import AUDIO_EXTENSIONS, InputError, collect_inputs, parse_extensions
from shared.batch.rows import FileRows
from shared.timeline import METHODS, TimelineOptions

ENGINES = ("local", "ray")
INTERRUPTED_EXIT = 130


def add_timeline_flags(parser: argparse.ArgumentParser) -> None:
    """How timelines are cut and classified (``ser timeline``, ``ser predict --timeline``)."""
    defaults = TimelineOptions()
    parser.add_argument("--window", type=float, default=defaults.window_seconds, help="window length (s)")
    parser.add_argument("--hop", type=float, default=defaults.hop_seconds, help="time between windows (s)")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=defaults.method,
        help="pooled: encode each speech region once; exact: encode every window on its own",
    )
    parser.add_argument(
        "--smoothing", type=int, default=defaults.smoothing, help="windows averaged (1: none)"
    )
    parser.add_argument(
        "--no-session",
        action="store_true",
        help="classify every window alone, instead of normalising a recording's windows together",
    )


def timeline_options(args: argparse.Namespace) -> TimelineOptions:
    """The ``TimelineOptions`` the flags give.

    Raises:
        ValueError: an option out of range (the message says which).
    """
    return TimelineOptions(
        window_seconds=args.window,
        hop_seconds=args.hop,
        method=args.method,
        smoothing=args.smoothing,
        session=not args.no_session,
    )


def add_predict_parser(sub: Any) -> None:
    """The ``predict`` subcommand's flags."""
    predict = sub.add_parser(
        "predict",
        help="predict many audio files here, or on a Ray cluster, without a server",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        help="audio files, folders, glob patterns ('calls/**/*.wav') or CSV/JSONL manifests with a path column",
    )
    predict.add_argument(
        "--bundle", type=Path, help="as for serve (default: SER_BUNDLE, ./artifacts, the demo)"
    )
    predict.add_argument(
        "--out",
        type=Path,
        help="write the rows to this .jsonl, .csv or .parquet file (re-running resumes it)",
    )
    predict.add_argument(
        "--format", choices=("jsonl", "csv", "parquet"), help="the --out format (default: by suffix)"
    )
    predict.add_argument(
        "--json", action="store_true", help="without --out: one JSON row per file instead of a table"
    )
    predict.add_argument("--recursive", "-r", action="store_true", help="take folders' sub-folders too")
    predict.add_argument(
        "--extensions",
        default=",".join(e.lstrip(".") for e in AUDIO_EXTENSIONS),
        help="file name endings taken from folders and glob patterns",
    )
    predict.add_argument(
        "--path-column", default="path", help="the manifests' column (or JSON field) of paths"
    )
    predict.add_argument(
        "--session",
        action="store_true",
        help="the files are one speaker or recording: normalise them together (10 files or more; local "
        "engine; rows are written at the end)",
    )
    predict.add_argument(
        "--timeline", action="store_true", help="one row per window of each file's emotion timeline"
    )
    predict.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="refuse files longer than this (default: SER_MAX_SECONDS; with --timeline, no limit)",
    )
    predict.add_argument("--engine", choices=ENGINES, default="local", help="where the work runs")
    predict.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: decoding processes (default: CPUs - 1, at most 4; 0 decodes on the model's thread); "
        "ray: the most model replicas (default: 1)",
    )
    predict.add_argument(
        "--batch-size", type=int, default=None, help="files per encoder pass (default: SER_MAX_BATCH_SIZE)"
    )
    predict.add_argument(
        "--ray-address",
        default=None,
        help="a running cluster (HOST:PORT, ray://HOST:PORT or auto); default: start Ray here",
    )
    predict.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="ray: CPUs each model replica holds"
    )
    predict.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="ray: GPUs each model replica holds"
    )
    predict.add_argument("--summary", type=Path, help="also write the closing summary here as JSON")
    predict.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )
    timeline = predict.add_argument_group("timeline (with --timeline)")
    add_timeline_flags(timeline)  # type: ignore[arg-type]


@dataclass
class RunSummary:
    """What a run did: the closing line, and ``--summary``'s JSON."""

    inputs: int
    skipped: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    audio_s: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    engine: str = "local"

    def add(self, results: list[FileRows]) -> None:
        for rows in results:
            first = rows[0]
            if first["ok"]:
                self.ok += 1
            else:
                self.failed[str(first["error_type"])] += 1
            self.audio_s += float(first.get("duration_s") or 0.0)
            self.rows += len(rows)

    @property
    def done(self) -> int:
        return self.ok + sum(self.failed.values())

    def to_dict(self) -> dict[str, Any]:
        hours = self.audio_s / 3600
        return {
            "inputs": self.inputs,
            "skipped": self.skipped,
            "predicted": self.done,
            "ok": self.ok,
            "failed": sum(self.failed.values()),
            "failed_by_type": dict(sorted(self.failed.items())),
            "rows": self.rows,
            "audio_hours": round(hours, 6),
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.done / self.seconds, 3) if self.seconds else None,
            "audio_hours_per_s": round(hours / self.seconds, 6) if self.seconds else None,
            "engine": self.engine,
            "interrupted": self.interrupted,
        }

    def line(self, out: Path | None) -> str:
        d = self.to_dict()
        failed = ", ".join(f"{k} {v}" for k, v in d["failed_by_type"].items())
        rate = (
            f"{d['files_per_s']:.2f} files/s, {d['audio_hours_per_s']:.4f} audio-h/s" if self.seconds else "-"
        )
        text = (
            f"{self.done} files in {self.seconds:.1f} s ({rate}): {self.ok} ok, {d['failed']} failed"
            + (f" ({failed})" if failed else "")
            + f"; {d['audio_hours']:.3f} h of audio"
        )
        if self.skipped:
            text += f"; {self.skipped} already in {out}"
        if self.interrupted:
            text += f"; interrupted: {self.inputs - self.skipped - self.done} left, re-run the same command to finish"
        return text


class _Progress:
    """tqdm on a terminal: files/s, audio hours/s and the ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="file", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.started = time.monotonic()
        self.audio_s = 0.0

    def update(self, results: list[FileRows]) -> None:
        self.audio_s += sum(float(r[0].get("duration_s") or 0.0) for r in results)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.audio_s / 3600 / elapsed:.4f} audio-h/s", refresh=False)
        self.bar.update(len(results))

    def close(self) -> None:
        self.bar.close()


def predict_files(args: argparse.Namespace) -> int:
    """Run ``ser predict``; see the module docstring for the exit codes."""
    from service.bundles import demo_notice, resolve_served_bundle
    from service.settings import ServiceSettings
    from shared.audio import AudioLimits
    from shared.batch.output import RowOutput
    from shared.batch.pipeline import Decoder, PredictionModel, TimelineModel
    from shared.batch.rows import PREDICTION_COLUMNS, TIMELINE_COLUMNS

    try:
        _check_usage(args)
        options = timeline_options(args) if args.timeline else None
        paths = collect_inputs(
            args.inputs,
            recursive=args.recursive,
            extensions=parse_extensions(args.extensions),
            path_column=args.path_column,
        )
        columns = TIMELINE_COLUMNS if args.timeline else PREDICTION_COLUMNS
        output = RowOutput(args.out, columns, args.format) if args.out is not None else None
        ray_started = False
        if args.engine == "ray":  # join the cluster now: a wrong address is a usage error, before any work
            from shared.batch.ray_engine import connect

            ray_started = connect(args.ray_address)
    except (InputError, ValueError) as exc:
        print(f"ser predict: error: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 2
    settings = ServiceSettings(bundle=args.bundle) if args.bundle else ServiceSettings()
    folder = resolve_served_bundle(settings.bundle, settings.artifacts)
    notice = demo_notice(folder)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    encoder = settings.encoder_options()
    batch_size = args.batch_size or encoder.max_batch_size
    max_seconds = (
        args.max_seconds
        if args.max_seconds is not None
        else (None if args.timeline else settings.max_seconds)
    )
    if args.timeline:
        decoder = Decoder(decode=False)
        model: Any = TimelineModel(folder, encoder, options, max_seconds)
    else:
        limits = AudioLimits(settings.min_seconds, max_seconds or settings.max_seconds, settings.silence_dbfs)
        decoder = Decoder(limits)
        model = PredictionModel(folder, encoder, embed_only=args.session)
    if args.engine == "ray":
        from shared.bundle import load_bundle

        load_bundle(folder)  # a bundle that cannot load fails here, not in every actor
    else:
        model.rows([])  # load once, before the first file: a bad bundle is a usage error
    todo, summary = _resume(paths, output)
    summary.engine = args.engine
    progress = _Progress(len(todo), enabled=sys.stderr.isatty() and not args.no_progress)
    sink = _Sink(output, summary, progress, args)
    stop = threading.Event()
    previous = _stop_on_signals(stop)
    started = time.monotonic()
    try:
        if args.engine == "ray":
            from shared.batch.ray_engine import RaySettings, run_ray

            ray = RaySettings(args.ray_address, args.workers or 1, args.cpus_per_worker, args.gpus_per_worker)
            run_ray(todo, decoder, model, sink, ray, batch_size=batch_size, stop=stop)
        else:
            from shared.batch.pipeline import run_local

            run_local(todo, decoder, model, sink, batch_size=batch_size, workers=args.workers, stop=stop)
        if not stop.is_set():
            sink.finish(model)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if ray_started:
            import ray as ray_module

            ray_module.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        summary.interrupted = stop.is_set() and summary.done + summary.skipped < summary.inputs
        summary.seconds = time.monotonic() - started
        progress.close()
        if output is not None:
            output.close()
    print(f"ser predict: {summary.line(args.out)}", file=sys.stderr)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if summary.interrupted:
        return INTERRUPTED_EXIT
    return 1 if summary.failed else 0


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """Ctrl-C and SIGTERM end the run after the batch in progress (its rows are written); a second one
    stops at once. A signal the caller ignores (a shell's background job ignores SIGINT) stays ignored.
    Returns the handlers to put back."""

    def handle(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("ser predict: stopping after the files in progress (again to stop now)", file=sys.stderr)

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handle)
    return previous


def _check_usage(args: argparse.Namespace) -> None:
    if args.session and (args.engine == "ray" or args.timeline):
        raise InputError("--session works with the local engine and one row per file (not --timeline)")
    if args.out is None and args.format:
        raise InputError("--format applies to --out")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError("--batch-size must be 1 or more")
    if args.workers is not None and args.workers < (0 if args.engine == "local" else 1):
        raise InputError("--workers must be 0 or more (local) or 1 or more (ray)")


def _resume(paths: list[str], output: Any) -> tuple[list[str], RunSummary]:
    """The paths still to do: those the output does not already hold with the same contents."""
    from shared.hashing import sha256_file

    summary = RunSummary(inputs=len(paths))
    if output is None or not output.done:
        return paths, summary
    todo = []
    for path in paths:
        if path in output.done:
            try:
                if output.holds(path, sha256_file(path)):
                    summary.skipped += 1
                    continue
            except OSError:
                if output.holds(path, ""):
                    summary.skipped += 1
                    continue
        todo.append(path)
    return todo, summary


class _Sink:
    """Where results go: the output file, or stdout; and the summary and the progress bar."""

    def __init__(self, output: Any, summary: RunSummary, progress: _Progress, args: argparse.Namespace):
        self.output, self.summary, self.progress, self.args = output, summary, progress, args
        self.held: list[FileRows] = []

    def __call__(self, results: list[FileRows]) -> None:
        if self.args.session:  # classified together at the end
            self.held.extend(results)
            self.progress.update(results)
            return
        self._emit(results)

    def _emit(self, results: list[FileRows]) -> None:
        if self.output is not None:
            fresh = self.output.add(results)
        else:
            fresh = results
            for rows in results:
                for row in rows:
                    sys.stdout.write(_render(row, self.args) + "\n")
            sys.stdout.flush()
        self.summary.add(fresh)
        if not self.args.session:
            self.progress.update(results)

    def finish(self, model: Any) -> None:
        if self.held:
            from shared.batch.pipeline import classify_session

            self._emit(classify_session(model, self.held))


def _render(row: dict[str, Any], args: argparse.Namespace) -> str:
    if args.json:
        return json.dumps({k: v for k, v in row.items() if k != "embedding"})
    if not row["ok"]:
        return f"{row['path']}\terror: {row['error']}"
    if row.get("label") is None:  # a timeline without windows
        return f"{row['path']}\t{row.get('note') or 'no windows'}"
    span = f"\t{row['start_s']:.2f}-{row['end_s']:.2f}" if "window" in row else ""
    flag = f"\tuncertain ({row['uncertain_reasons'].replace(',', ', ')})" if row["uncertain"] else ""
    return f"{row['path']}{span}\t{row['label']}\t{100 * row['confidence']:.0f}%{flag}"
