"""Decoding, the models that turn decoded files into rows, and the local engine.

A run is a list of paths, a ``Decoder`` (picklable: it runs in worker processes or Ray tasks) and a
model (also picklable, loaded on first use where it runs: this process, or each Ray actor). The model
answers a batch of ``Decoded`` files with one list of rows per file (``shared.batch.rows``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shared.audio import AudioLimits, decode_audio, load_audio
from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.batch.rows import PREDICTION_COLUMNS, TIMELINE_COLUMNS, FileRows, empty_row
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.errors import SERError
from shared.hashing import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One input file after decoding.

    Attributes:
        path: as the inputs named it.
        sha256: hex digest of its bytes ("" when it could not be read).
        wave: float32 ``[n]`` at 16 kHz, or None (failed, or not decoded: see ``Decoder.decode``).
        duration_s: the decoded audio's length, or None.
        error_type, error: why it failed (``shared.errors`` codes, or ``file_not_found``,
            ``permission_denied``, ``file_error``), else None.
    """

    path: str
    sha256: str
    wave: np.ndarray | None = field(default=None, repr=False)
    duration_s: float | None = None
    error_type: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


def file_error_type(exc: OSError) -> str:
    """The ``error_type`` of a file that cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return "file_not_found"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, IsADirectoryError):
        return "is_a_directory"
    return "file_error"


@dataclass(frozen=True)
class Decoder:
    """Reads, hashes and decodes one file; never raises for a bad file.

    Attributes:
        limits: checked as the service checks an upload (``shared.audio.load_audio``); None decodes the
            whole file without checks (training's embeddings).
        decode: False hashes the file only, for models that read the file themselves (timelines).
    """

    limits: AudioLimits | None = None
    decode: bool = True

    def __call__(self, path: str) -> Decoded:
        digest = ""
        try:
            digest = sha256_file(path)
            if not self.decode:
                return Decoded(path, digest)
            wave = decode_audio(path) if self.limits is None else load_audio(path, self.limits)
        except SERError as exc:
            return Decoded(path, digest, error_type=exc.error_type, error=_message(exc))
        except OSError as exc:
            return Decoded(path, "", error_type=file_error_type(exc), error=f"{exc.strerror or exc}: {path}")
        return Decoded(path, digest, wave, wave.shape[0] / SAMPLE_RATE)


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


class BatchModel(Protocol):
    """Turns a batch of decoded files into rows, one list per file, in order."""

    columns: dict[str, type]

    def rows(self, batch: Sequence[Decoded]) -> list[FileRows]: ...


class _Lazy:
    """Loads its heavy state on first use, where it runs; pickles without it."""

    _state_names: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k in self._state_names else v) for k, v in self.__dict__.items()}


class PredictionModel(_Lazy):
    """The service's predictor on each file: label, probabilities, confidence (``PREDICTION_COLUMNS``).

    Args:
        bundle: the bundle folder.
        options: how the encoder runs (the service's settings give them).
        embed_only: leave the classification to the caller (``classify_session``): rows carry the
            embedding under ``"embedding"``.
    """

    columns = PREDICTION_COLUMNS
    _state_names = ("_predictor",)

    def __init__(self, bundle: str | os.PathLike[str], options: EncoderOptions, *, embed_only: bool = False):
        self.bundle = str(bundle)
        self.options = options
        self.embed_only = embed_only
        self._predictor: Any = None
        self.predicted = 0

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            from shared.predictor import Predictor

            self._predictor = Predictor.from_bundle(self.bundle, self.options)
        return self._predictor

    def identity(self) -> dict[str, str]:
        """The bundle's name and version, as every row carries them."""
        described = self.predictor.describe()
        return {"bundle": described.name, "bundle_version": described.version}

    def rows(self, batch: Sequence[Decoded]) -> list[FileRows]:
        identity = self.identity()
        good = [d for d in batch if d.ok and d.wave is not None]
        embedded = embed_each(self.predictor.embed_batch, good)
        answers: dict[int, FileRows] = {}
        ready = [(d, e) for d, e in zip(good, embedded, strict=True) if not isinstance(e, SERError)]
        for d, e in zip(good, embedded, strict=True):
            if isinstance(e, SERError):
                answers[id(d)] = [failure_row(self.columns, d, e.error_type, _message(e), identity)]
        if ready and not self.embed_only:
            predictions = self.predictor.classify(np.stack([e for _, e in ready]))
            for (d, _), p in zip(ready, predictions, strict=True):
                answers[id(d)] = [prediction_row(d, p, identity)]
        elif ready:
            for d, e in ready:
                answers[id(d)] = [
                    {**empty_row(self.columns, path=d.path, sha256=d.sha256, ok=True), "embedding": e}
                ]
        self.predicted += len(ready)
        return [
            answers.get(id(d)) or [failure_row(self.columns, d, d.error_type, d.error, identity)]
            for d in batch
        ]


def embed_each(embed: Callable[[list[np.ndarray]], np.ndarray], items: Sequence[Decoded]) -> list[Any]:
    """Each item's embedding ``[d]``, or the ``SERError`` that stopped it: the batch in one call, and one
    at a time when the batch fails, so that one bad file does not fail the others."""
    if not items:
        return []
    waves = [d.wave for d in items]
    try:
        return list(embed(waves))  # type: ignore[arg-type]
    except SERError:
        pass
    out: list[Any] = []
    for wave in waves:
        try:
            out.append(embed([wave])[0])  # type: ignore[list-item]
        except SERError as exc:
            out.append(exc)
    return out


def prediction_row(item: Decoded, p: Any, identity: dict[str, str]) -> dict[str, Any]:
    """A ``PREDICTION_COLUMNS`` row for one ``shared.predictor.Prediction``."""
    return empty_row(
        PREDICTION_COLUMNS,
        path=item.path,
        sha256=item.sha256,
        ok=True,
        label=p.label,
        confidence=float(p.confidence),
        **{f"p_{e}": float(p.probabilities[e]) for e in EMOTIONS},
        uncertain=bool(p.uncertain),
        uncertain_reasons=",".join(p.uncertain_reasons),
        classifier=p.classifier,
        duration_s=item.duration_s,
        **identity,
    )


def failure_row(
    columns: dict[str, type],
    item: Decoded,
    error_type: str | None,
    error: str | None,
    identity: dict[str, str],
) -> dict[str, Any]:
    """The one row of a file that gave no result."""
    return empty_row(
        columns,
        path=item.path,
        sha256=item.sha256,
        ok=False,
        duration_s=item.duration_s,
        error_type=error_type or "error",
        error=error or "failed",
        **identity,
    )


def classify_session(model: PredictionModel, results: list[FileRows]) -> list[FileRows]:
    """Classify the embedded rows of ``embed_only`` results as one session (the bundle's session
    classifier, with their statistics); failure rows pass through."""
    from shared.session import SessionStats

    embedded = [r for r in results if r[0]["ok"]]
    if not embedded:
        return results
    matrix = np.stack([np.asarray(r[0]["embedding"], dtype=np.float32) for r in embedded])
    predictions = model.predictor.classify(matrix, session=SessionStats.of(matrix))
    identity = model.identity()
    answered = {
        id(r): [
            prediction_row(Decoded(r[0]["path"], r[0]["sha256"], duration_s=r[0]["duration_s"]), p, identity)
        ]
        for r, p in zip(embedded, predictions, strict=True)
    }
    return [answered.get(id(r), r) for r in results]


class TimelineModel(_Lazy):
    """The emotion timeline of each file: one row per window (``TIMELINE_COLUMNS``).

    The model reads the file itself (``Decoder(decode=False)`` only hashes it): a recording is decoded
    block by block, never held whole.
    """

    columns = TIMELINE_COLUMNS
    _state_names = ("_analyzer", "_prediction")

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        options: EncoderOptions,
        timeline: Any,
        max_seconds: float | None = None,
    ) -> None:
        self._prediction = PredictionModel(bundle, options)
        self.bundle, self.options = str(bundle), options
        self.timeline_options = timeline
        self.max_seconds = max_seconds
        self._analyzer: Any = None
        self.predicted = 0

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:
            from shared.timeline import TimelineAnalyzer

            if self._prediction is None:
                self._prediction = PredictionModel(self.bundle, self.options)
            self._analyzer = TimelineAnalyzer(self._prediction.predictor, self.timeline_options)
        return self._analyzer

    def rows(self, batch: Sequence[Decoded]) -> list[FileRows]:
        analyzer = self.analyzer
        identity = self._prediction.identity()
        out: list[FileRows] = []
        for item in batch:
            if not item.ok:
                out.append([failure_row(self.columns, item, item.error_type, item.error, identity)])
                continue
            try:
                result = analyzer.analyse(item.path, max_seconds=self.max_seconds, name="")
            except SERError as exc:
                out.append([failure_row(self.columns, item, exc.error_type, _message(exc), identity)])
                continue
            except OSError as exc:
                out.append([failure_row(self.columns, item, file_error_type(exc), str(exc), identity)])
                continue
            self.predicted += 1
            out.append(timeline_rows(item, result, identity))
        return out


def timeline_rows(item: Decoded, result: Any, identity: dict[str, str]) -> FileRows:
    """The ``TIMELINE_COLUMNS`` rows of one ``shared.timeline.Timeline``."""
    base = {
        "path": item.path,
        "sha256": item.sha256,
        "ok": True,
        "classifier": result.classifier,
        "duration_s": float(result.summary.duration_s),
        "note": "; ".join(([result.reason] if result.reason else []) + list(result.warnings)) or None,
        **identity,
    }
    if not result.windows:
        return [empty_row(TIMELINE_COLUMNS, **base)]
    return [
        empty_row(
            TIMELINE_COLUMNS,
            **base,
            window=i,
            start_s=float(w.start),
            end_s=float(w.end),
            label=w.label,
            confidence=float(w.confidence),
            **{f"p_{e}": float(w.probabilities[e]) for e in EMOTIONS},
            uncertain=bool(w.uncertain),
            uncertain_reasons=",".join(w.uncertain_reasons),
        )
        for i, w in enumerate(result.windows)
    ]


#: The columns of the rows ``EmbeddingModel`` gives (plus ``embedding``, a float32 ``[d]``).
EMBEDDING_COLUMNS: dict[str, type] = {
    "path": str,
    "sha256": str,
    "ok": bool,
    "duration_s": float,
    "error_type": str,
    "error": str,
}


class EmbeddingModel(_Lazy):
    """A backbone's embedding of each file (training's feature extraction)."""

    columns = EMBEDDING_COLUMNS
    _state_names = ("_backbone",)

    def __init__(self, spec: BackboneSpec, options: EncoderOptions) -> None:
        self.spec, self.options = spec, options
        self._backbone: Any = None
        self.predicted = 0

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            self._backbone = build_backbone(self.spec, self.options)
        return self._backbone

    def rows(self, batch: Sequence[Decoded]) -> list[FileRows]:
        good = [d for d in batch if d.ok and d.wave is not None]
        embedded = dict(zip(map(id, good), embed_each(self.backbone.embed_batch, good), strict=True))
        out: list[FileRows] = []
        for d in batch:
            e = embedded.get(id(d))
            if e is None or isinstance(e, SERError):
                kind, message = (e.error_type, _message(e)) if e is not None else (d.error_type, d.error)
                out.append([failure_row(self.columns, d, kind, message, {})])
            else:
                self.predicted += 1
                row = empty_row(self.columns, path=d.path, sha256=d.sha256, ok=True, duration_s=d.duration_s)
                out.append([{**row, "embedding": np.asarray(e, dtype=np.float32)}])
        return out


# --- the local engine ---------------------------------------------------------------------------


def default_decode_workers() -> int:
    """Decoding processes beside the model's thread: one less than the CPUs (at least 1, at most 4)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _start_decoding_process() -> None:
    """Decoding processes leave Ctrl-C to the parent, which stops the run in order, and end when the
    parent ends, even killed outright (a ProcessPoolExecutor's workers would wait for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_local(
    paths: Sequence[str],
    decoder: Decoder,
    model: BatchModel,
    on_results: Callable[[list[FileRows]], None],
    *,
    batch_size: int = 8,
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Decode ``paths`` in ``workers`` processes (0: on this thread) and run ``model`` on this thread in
    batches of ``batch_size``, in input order; ``on_results`` gets each batch's rows.

    At most a few batches are decoded ahead of the model, so memory stays bounded whatever the number of
    files. ``stop`` (or KeyboardInterrupt) ends the run after the batch in progress; the caller's
    ``on_results`` has then seen every finished file.
    """
    workers = default_decode_workers() if workers is None else workers
    batch: list[Decoded] = []

    def flush() -> None:
        if batch:
            on_results(model.rows(batch))
            batch.clear()

    if workers == 0:
        for path in paths:
            if stop is not None and stop.is_set():
                return
            batch.append(decoder(path))
            if len(batch) >= batch_size:
                flush()
        flush()
        return
    ahead = batch_size * (workers + 2)
    # spawned, not forked: this process may hold the encoder's compute threads
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_decoding_process
    )
    pending: collections.deque[concurrent.futures.Future[Decoded]] = collections.deque()
    todo = iter(paths)
    try:
        while True:
            while len(pending) < ahead and not (stop is not None and stop.is_set()):
                following = next(todo, None)
                if following is None:
                    break
                pending.append(pool.submit(decoder, following))
            if not pending or (stop is not None and stop.is_set()):
                break
            batch.append(pending.popleft().result())
            if len(batch) >= batch_size or not pending:
                flush()
        if not (stop is not None and stop.is_set()):
            flush()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
