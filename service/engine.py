"""The inference engine: loads the predictor, owns the micro-batcher and the decode pool.

Start-up runs in order: load and verify the bundle and its backbone, warm up with a dummy batch, then
report ready. Loading happens on a background thread so that ``/health`` and ``/ready`` answer
meanwhile. Decoding runs on a small thread pool and inference on the batcher's thread: the event loop
only waits on futures.

The engine owns admission: a request's utterances are admitted (or refused) all at once, before any of
them is decoded, with one capacity check; the routes never see the batcher.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from service.batching import MicroBatcher, Reservation
from service.errors import ModelFailedError, NotReadyError, RequestTimeoutError
from service.metrics import ServiceMetrics
from service.sessions import SessionStore
from service.settings import ServiceSettings
from shared.audio import AudioLimits, load_audio
from shared.constants import SAMPLE_RATE
from shared.errors import AudioNoSpeechError
from shared.predictor import ModelDescription, Prediction, Predictor
from shared.session import SessionStats
from shared.timeline import TimelineAnalyzer
from shared.vad import SpeechDetector

log = logging.getLogger(__name__)

T = TypeVar("T")
State = Literal["starting", "loading", "warming_up", "ready", "failed", "stopping", "stopped"]
PredictorFactory = Callable[[ServiceSettings, Path], Predictor]


def load_predictor(settings: ServiceSettings, bundle_dir: Path) -> Predictor:
    """Load the bundle at ``bundle_dir`` and its backbone as ``settings`` ask (blocking).

    Raises:
        BundleError: the bundle is refused; BackboneError: the encoder cannot be loaded.
    """
    return Predictor.from_bundle(bundle_dir, settings.encoder_options())


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:~|\.{1,2})?(?:/[^\s:;,'\"()\[\]]+)+/?")


def scrub_paths(text: str) -> str:
    """``text`` with absolute (and ``~``, ``./``) filesystem paths replaced by ``<path>``."""
    return _ABSOLUTE_PATH.sub("<path>", text)


def public_model_name(model: object) -> str:
    """A hub id as it is; a local folder by its last part only (the metrics never show server paths)."""
    text = str(model)
    if text.startswith(("/", "~", ".")) or "\\" in text or Path(text).is_absolute():
        return Path(text).name
    return text


@dataclass(frozen=True)
class SessionRequest:
    """The session a request's utterances belong to.

    Attributes:
        session_id: the client's session, whose statistics the store keeps; None: the request's own
            uploads are the session (a batch sent with ``session=true``), and nothing is kept.
        owner: who the session belongs to (a digest of the API key; empty without API keys): the same
            ``session_id`` under two keys is two sessions.
    """

    session_id: str | None = None
    owner: str = ""

    @property
    def store_key(self) -> str:
        """The key in the store: the id, after ``<owner>/`` where there is an owner ('/' is not allowed
        in an id, so the two cannot be confused)."""
        return f"{self.owner}/{self.session_id}" if self.owner else str(self.session_id)


@dataclass(frozen=True)
class Served:
    """One utterance's prediction with its duration and stage timings (seconds).

    Attributes:
        session: the session it was classified in, or None.
    """

    prediction: Prediction
    duration_s: float
    decode_s: float
    queue_s: float
    inference_s: float
    total_s: float
    batch_size: int
    session: SessionRequest | None = None


def _run_in_daemon_thread(fn: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    # A daemon thread: a model still loading must not hold up the process's exit.
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(context.run(fn))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class InferenceEngine:
    """Everything between a request's bytes and its prediction.

    Args:
        settings: the service settings.
        metrics: where to record batch and queue metrics.
        bundle_dir: the bundle folder to serve (resolved from ``settings.bundle``); it must be set before
            ``start``.
        predictor_factory: builds the predictor from (settings, bundle folder); ``load_predictor`` by
            default. Tests pass a wrapper to make loading observable.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        bundle_dir: Path | None = None,
        predictor_factory: PredictorFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.bundle_dir = bundle_dir
        self._factory = predictor_factory or load_predictor
        self.limits = AudioLimits(
            min_seconds=settings.min_seconds,
            max_seconds=settings.max_seconds,
            silence_dbfs=settings.silence_dbfs,
        )
        self.state: State = "starting"
        self.error: str | None = None
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.description: ModelDescription | None = None
        self.load_seconds: float | None = None
        self.sessions: SessionStore | None = None
        self.analyzer: TimelineAnalyzer | None = None
        self.detector: SpeechDetector | None = None
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load, verify and warm up the model, then start the batcher and report ready.

        A failure is logged and leaves the engine in state ``failed`` (``/ready`` says why); it is not
        raised, so the process keeps answering ``/health``.
        """
        started = time.perf_counter()
        bundle_dir = self.bundle_dir
        assert bundle_dir is not None, "the bundle folder is resolved before the engine starts"
        self.state, self.error = "loading", None
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.worker_threads, thread_name_prefix="ser-decode"
        )
        log.info("loading the bundle at %s", bundle_dir)
        try:
            predictor = await asyncio.wrap_future(
                _run_in_daemon_thread(lambda: self._factory(self.settings, bundle_dir), "ser-load")
            )
            self.state = "warming_up"
            log.info("warming up %s/%s", predictor.bundle.name, predictor.bundle.version)
            # The warm-up runs on the batcher's own thread, which then serves.
            batcher = MicroBatcher(
                predictor.predict_batch,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
                queue_depth=self.settings.queue_depth,
                on_batch=self.metrics.observe_batch,
                warmup=lambda: predictor.warmup(seconds=1.0, batch_size=self.settings.max_batch_size),
            )
            try:
                await asyncio.wrap_future(batcher.warmed_up)
                # Silero VAD, for long recordings (about 2 MB, loaded in a fraction of a second)
                options = self.settings.timeline_options()
                detector = await asyncio.to_thread(SpeechDetector, options.vad)
            except BaseException:
                batcher.close(drain=False, timeout=0)  # the thread ends on its own once the warm-up does
                raise
        except asyncio.CancelledError:
            self.state = "stopped"
            raise
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("the model could not be loaded: %s", self.error, exc_info=exc)
            return
        if self.state != "warming_up":  # stop() ran while we were loading
            batcher.close(drain=False, timeout=0)
            return
        self.analyzer = TimelineAnalyzer(
            predictor, options, detector, run_model=lambda fn: batcher.run_task(fn).result()
        )
        self.predictor = predictor
        self.detector = detector
        description = self.description = predictor.describe()
        self.batcher = batcher
        sessions = self.sessions = SessionStore(
            predictor.backbone.dim,
            max_sessions=self.settings.session_max,
            memory_mb=self.settings.session_memory_mb,
            ttl_s=self.settings.session_ttl_s,
            on_evict=lambda reason: self.metrics.session_evictions.labels(reason).inc(),
        )
        self.metrics.sessions.set_function(lambda: float(len(sessions)))
        self.metrics.track_queue(
            lambda: float(self.batcher.admitted if self.batcher else 0), self.settings.queue_depth
        )
        self.metrics.model_info.info(
            {
                "name": description.name,
                "version": description.version,
                "backbone": str(description.backbone.get("kind")),
                "backbone_model": public_model_name(description.backbone.get("model")),
                "dtype": description.serving_dtype,
            }
        )
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info(
            "ready: serving %s/%s (%s) after %.1f s",
            description.name,
            description.version,
            description.backbone.get("kind"),
            self.load_seconds,
        )

    async def stop(self) -> None:
        """Stop admitting, finish what is queued, then release the model and the decode pool."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        self.metrics.ready.set(0)
        batcher = self.batcher
        if batcher is not None:
            log.info("draining %d queued utterances", batcher.queue_size)
            if not await asyncio.to_thread(batcher.close, drain=True):
                log.warning("the inference thread is still running after the drain")
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self.predictor = None
        self.analyzer = None
        self.batcher = None
        self.state = "stopped"
        log.info("stopped")

    @property
    def public_error(self) -> str | None:
        """What went wrong at loading, for clients: the error with the server's file paths taken out
        (the log has them)."""
        return None if self.error is None else scrub_paths(self.error)

    # -- serving ---------------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Return when the model serves; else raise ``NotReadyError`` saying why not."""
        if self.state == "ready" and self.batcher is not None:
            return
        if self.state == "failed":
            raise ModelFailedError(
                f"the model failed to load ({self.public_error}); this will not pass by retrying: fix the "
                "bundle or the encoder (the service log has the detail) and restart the service"
            )
        if self.state in ("stopping", "stopped"):
            raise NotReadyError("the service is shutting down; retry on another instance")
        raise NotReadyError(f"the model is not ready yet ({self.state.replace('_', ' ')}); retry shortly")

    def admit(self, n: int) -> Reservation:
        """Admit ``n`` utterances before decoding any, or refuse them all (one capacity check).

        Raises:
            NotReadyError, ModelFailedError, OverloadedError.
        """
        self.check_ready()
        assert self.batcher is not None
        return self.batcher.reserve(n)

    def check_capacity(self, n: int = 1) -> None:
        """Raise now if ``n`` more utterances would not be admitted (nothing is reserved).

        Raises:
            NotReadyError, ModelFailedError, OverloadedError.
        """
        self.check_ready()
        assert self.batcher is not None
        self.batcher.check_capacity(n)

    async def decode(self, data: bytes) -> np.ndarray:
        """Decode and check an upload on the decode pool: float32 ``[n_samples]`` at 16 kHz.

        Raises:
            AudioError (and subclasses): see ``shared.audio.load_audio``; AudioNoSpeechError where
                ``require_speech`` is set and Silero VAD finds no speech.
        """
        assert self._decode_pool is not None, "the engine has not been started"
        context = contextvars.copy_context()
        call = functools.partial(context.run, self._load_speech, data)
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, call)

    def _load_speech(self, data: bytes) -> np.ndarray:
        waveform = load_audio(data, self.limits)
        detector = self.detector
        if self.settings.require_speech and detector is not None and not detector.detect([waveform]):
            raise AudioNoSpeechError(
                "no speech found: the voice-activity detector hears none in this audio (a tone, noise or "
                "music is not classified); send a recording of someone speaking"
            )
        return waveform

    async def predict_bytes(self, data: bytes, session: SessionRequest | None = None) -> Served:
        """Decode one upload and predict it (a request of one: ``predict_many``'s path).

        With a ``session``, the utterance's features join that session's statistics, and once the
        session holds enough utterances it is classified with them (``Predictor.classify``).

        Raises:
            NotReadyError, OverloadedError, RequestTimeoutError; AudioError from decoding; whatever the
            model raised.
        """
        outcome = (await self.predict_many([data], session=session))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def predict_many(
        self, uploads: Sequence[bytes], session: SessionRequest | None = None
    ) -> list[Served | BaseException]:
        """Decode and predict several uploads that share model batches; one outcome each, in order.

        The request is admitted or refused as a whole; after that, each upload has its own outcome:
        its ``Served`` or the exception it alone would have raised.

        Args:
            session: None (each upload alone), or the session they belong to (``SessionRequest``): a
                client's session, whose statistics in the store they join, or, without a session id,
                the uploads themselves (their own statistics, not kept).

        Raises:
            NotReadyError, OverloadedError: the request as a whole is refused (also when the service
                stops while the session's statistics are applied).
        """
        with self.admit(len(uploads)) as slots:
            outcomes: list[Served | BaseException] = list(
                await asyncio.gather(*(self._serve(slots, data) for data in uploads), return_exceptions=True)
            )
        if session is None:
            return outcomes
        return await self._in_session(outcomes, session)

    async def _in_session(
        self, outcomes: list[Served | BaseException], session: SessionRequest
    ) -> list[Served | BaseException]:
        """Classify the served utterances again with their session's statistics (or say they were
        too few); errors stay as they are. ``Predictor.classify`` only reads the bundle, so it runs on
        the decode pool beside the inference thread."""
        served = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Served)]
        if not served:
            return outcomes
        predictor, store, pool = self.predictor, self.sessions, self._decode_pool
        if predictor is None or store is None or pool is None or self.state != "ready":
            raise NotReadyError("the service is shutting down; retry on another instance")
        features = np.stack([np.asarray(o.prediction.features) for _, o in served])
        if session.session_id is None:
            stats = SessionStats.of(features)
        else:
            stats = store.add(session.store_key, features)
        predictions = await self.classify(features, stats)
        out = list(outcomes)
        for (i, o), prediction in zip(served, predictions, strict=True):
            out[i] = dataclasses.replace(o, prediction=prediction, session=session)
        return out

    async def classify(self, features: np.ndarray, stats: SessionStats | None) -> list[Prediction]:
        """``Predictor.classify`` on the decode pool: it only reads the bundle, so it runs beside the
        inference thread.

        Raises:
            NotReadyError: the service is stopping.
        """
        predictor, pool = self.predictor, self._decode_pool
        if predictor is None or pool is None or self.state != "ready":
            raise NotReadyError("the service is shutting down; retry on another instance")
        context = contextvars.copy_context()
        call = functools.partial(context.run, predictor.classify, features, stats)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, call)
        except RuntimeError as exc:  # the pool was shut down by stop() meanwhile
            raise NotReadyError("the service is shutting down; retry on another instance") from exc

    async def on_pool(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the decode pool (speech detection and decoding of live streams).

        Raises:
            NotReadyError: the service is stopping.
        """
        pool = self._decode_pool
        if pool is None or self.state != "ready":
            raise NotReadyError("the service is shutting down; retry on another instance")
        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(context.run, fn))
        except RuntimeError as exc:
            raise NotReadyError("the service is shutting down; retry on another instance") from exc

    async def _serve(self, reservation: Reservation, data: bytes) -> Served:
        start = time.perf_counter()

        async def decode_then_predict() -> Served:
            try:
                waveform = await self.decode(data)
            except BaseException:
                reservation.release()  # a forming batch need not wait for it
                raise
            decoded = time.perf_counter()
            result = await reservation.submit(waveform)
            return Served(
                prediction=result.prediction,
                duration_s=waveform.shape[0] / SAMPLE_RATE,
                decode_s=decoded - start,
                queue_s=result.queue_s,
                inference_s=result.inference_s,
                total_s=time.perf_counter() - start,
                batch_size=result.batch_size,
            )

        try:
            served = await asyncio.wait_for(decode_then_predict(), self.settings.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise RequestTimeoutError(
                f"the prediction took longer than {self.settings.request_timeout_s:g} s; retry shortly"
            ) from exc
        for stage, seconds in (
            ("decode", served.decode_s),
            ("queue", served.queue_s),
            ("inference", served.inference_s),
            ("total", served.total_s),
        ):
            self.metrics.stage_latency.labels(stage).observe(seconds)
        return served
