"""Live audio over a WebSocket: ``/v1/stream`` answers speech and emotion events as the audio arrives.

The protocol (JSON text messages, binary audio frames):

1. The client opens ``/v1/stream`` (an ``X-API-Key`` header where keys are configured, or the key in the
   ``start`` message, as browsers cannot set headers on a WebSocket) and sends
   ``{"type": "start", "format": "s16le" | "f32le" | "webm", "sample_rate": 16000, "channels": 1}``.
   The server answers ``ready`` with the stream's id and its window settings.
2. The client sends binary frames: raw little-endian PCM (whole samples; about 100 ms each), or the
   chunks of a MediaRecorder WebM/Opus stream from its first one on.
3. The server sends, as they happen: ``speech_start`` and ``speech_end`` (Silero VAD), a ``window`` for
   each window of speech once its audio has arrived and the model has classified it (``start``, ``end``,
   ``label``, ``confidence``, ``probabilities``, ``uncertain``; ``audio_seconds``: the audio received
   when it was sent), and ``warning`` where a window had to be skipped.
4. ``{"type": "stop"}`` (or the client closing) ends the stream: the server finishes the last region,
   sends a ``summary`` holding the whole stream's timeline (the shape of ``POST /v1/timeline``'s answer,
   every window classified again with the whole stream's statistics) and closes with code 1000.

Errors are an ``{"type": "error", "error": {"type", "message"}}`` event followed by a close whose code
says what kind (``CLOSE_CODES``) and whose reason repeats the message, shortened. Each stream's windows
go through the engine's batcher with every HTTP request's utterances, so streams and requests share the
one inference thread fairly; a stream has at most ``SER_STREAM_MAX_PENDING`` windows waiting, and a
window beyond them, or one still waiting ``SER_STREAM_MAX_DELAY_S`` after its audio arrived, is skipped
with a ``window_dropped`` warning instead of served late. When the bundle has a
session classifier, a stream is one session: once it holds enough windows, each new one is normalised
with the statistics of all of them so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketState

from service.audio_stream import FORMATS, MAX_CHANNELS, PCM_RATES, Decoder, WebmDecoder, make_decoder
from service.auth import authorize
from service.engine import InferenceEngine
from service.errors import RetryableError
from service.metrics import ServiceMetrics
from service.timeline_routes import timeline_response
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.errors import SERError
from shared.live import LiveEvent, LiveSegmenter, SpeechEnded, SpeechStarted, WindowReady
from shared.predictor import Prediction
from shared.session import SessionStats
from shared.timeline import assemble_timeline, empty_timeline

log = logging.getLogger(__name__)

router = APIRouter()

#: error type -> WebSocket close code (RFC 6455 section 7.4.1).
CLOSE_CODES: dict[str, int] = {
    "unauthorized": 1008,
    "too_many_auth_failures": 1008,
    "origin_refused": 1008,
    "invalid_message": 1008,
    "invalid_start": 1008,
    "unsupported_format": 1008,
    "stream_idle": 1008,
    "stream_too_fast": 1008,
    "stream_too_long": 1008,
    "audio_decode_error": 1007,
    "too_many_streams": 1013,
    "not_ready": 1013,
    "overloaded": 1013,
    "model_failed": 1011,
    "shutting_down": 1001,
    "internal_error": 1011,
}
#: A close reason is at most 123 bytes (the frame's payload limit less the code).
_REASON_BYTES = 123


class WindowLate(RetryableError):
    """A live window waited too long for the model and was skipped."""

    error_type = "window_late"


class StreamError(SERError):
    """A stream is ended for a reason the client should hear (``error_type`` picks the close code)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class StartMessage(BaseModel):
    """The first message of a stream."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    format: Literal["s16le", "f32le", "webm"] = "s16le"
    sample_rate: int = Field(default=SAMPLE_RATE, description="Hz; raw PCM only (WebM says its own)")
    channels: int = Field(default=1, ge=1, le=MAX_CHANNELS, description="raw PCM only")
    api_key: str | None = None
    session: bool | None = Field(
        default=None, description="normalise with the stream's statistics (default: SER_TIMELINE_SESSION)"
    )


@dataclass
class _Window:
    start: float
    end: float
    region: int
    features: np.ndarray | None = None


@dataclass
class StreamHub:
    """The open streams: the limit on their number, and their end when the service shuts down."""

    max_streams: int
    streams: dict[str, asyncio.Event] = field(default_factory=dict)
    closing: bool = False

    def open(self) -> tuple[str, asyncio.Event]:
        if self.closing:
            raise StreamError("shutting_down", "the service is shutting down; reconnect to another instance")
        if len(self.streams) >= self.max_streams:
            raise StreamError(
                "too_many_streams",
                f"the service has {self.max_streams} live streams open, its limit (SER_STREAM_MAX); "
                "retry shortly",
            )
        stream_id = uuid.uuid4().hex[:16]
        stop = self.streams[stream_id] = asyncio.Event()
        return stream_id, stop

    def close(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    async def shutdown(self, grace_s: float) -> None:
        """Tell every open stream to finish (its summary, then close 1001), and wait until they have
        (at most ``grace_s``)."""
        self.closing = True
        for stop in self.streams.values():
            stop.set()
        deadline = time.monotonic() + grace_s
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _event(kind: str, **values: Any) -> dict[str, Any]:
    return {"type": kind, **values}


def _error_event(exc: SERError) -> dict[str, Any]:
    return _event("error", error={"type": exc.error_type, "message": exc.message})


def _close_reason(message: str) -> str:
    data = message.encode()
    if len(data) <= _REASON_BYTES:
        return message
    return data[: _REASON_BYTES - 3].decode(errors="ignore") + "..."


def _origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    """A browser's cross-site WebSocket is refused unless SER_CORS_ORIGINS lists its origin; clients
    that send no Origin (not browsers) pass."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    host = websocket.headers.get("host", "")
    return urlsplit(origin).netloc == host


class LiveStream:
    """One open stream: reads its frames, feeds the segmenter, and sends its events in time order."""

    def __init__(
        self,
        websocket: WebSocket,
        engine: InferenceEngine,
        metrics: ServiceMetrics,
        stream_id: str,
        stop: asyncio.Event,
    ) -> None:
        self.ws = websocket
        self.engine = engine
        self.metrics = metrics
        self.settings = engine.settings
        self.id = stream_id
        self.stop = stop
        self.options = self.settings.timeline_options()
        self.decoder: Decoder | None = None
        self.segmenter: LiveSegmenter | None = None
        self.session = self.options.session
        self.stats: SessionStats | None = None
        self.windows: list[_Window] = []
        self.dropped = 0
        self.started_at = 0.0
        self._outbox: asyncio.Queue[dict[str, Any] | asyncio.Future[dict[str, Any] | None] | None] = (
            asyncio.Queue()
        )
        self.sender_task: asyncio.Task[None] | None = None
        self._pending = 0
        self._received_at: dict[int, float] = {}

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(message, separators=(",", ":")))

    async def _sender(self) -> None:
        """Sends the outbox in order: events as they are, windows once their prediction is done."""
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            message = item if isinstance(item, dict) else await item
            if message is not None:
                await self.send(message)

    # -- the stream ------------------------------------------------------------------------------

    async def begin(self, start: StartMessage) -> None:
        fmt = start.format
        if fmt != "webm" and start.sample_rate not in PCM_RATES:
            raise StreamError(
                "unsupported_format",
                f"sample_rate {start.sample_rate} Hz is not accepted for raw PCM; accepted: "
                f"{', '.join(map(str, PCM_RATES))} Hz",
            )
        if start.session is not None:
            self.session = start.session
        self.decoder = make_decoder(fmt, start.sample_rate, start.channels)
        detector = self.engine.detector
        if detector is None:
            raise StreamError("not_ready", "the model is not ready yet; retry shortly")
        vad = await self.engine.on_pool(detector.stream)
        self.segmenter = LiveSegmenter(self.options, vad)
        predictor = self.engine.predictor
        if self.session and predictor is not None and predictor.session_minimum is not None:
            self.stats = SessionStats.empty(predictor.backbone.dim)
        self.started_at = time.monotonic()
        self.sender_task = asyncio.ensure_future(self._sender())
        self._outbox.put_nowait(
            _event(
                "ready",
                stream_id=self.id,
                format=fmt,
                sample_rate=start.sample_rate,
                channels=start.channels,
                window_seconds=self.options.window_seconds,
                hop_seconds=self.options.hop_seconds,
                max_seconds=self.settings.stream_max_seconds,
                max_lead_seconds=self.settings.stream_max_lead_s,
                session=self.stats is not None,
                labels=list(EMOTIONS),
            )
        )

    async def audio(self, data: bytes) -> None:
        """One binary frame: decode, segment, queue what it completes; then check the pace and length."""
        assert self.decoder is not None and self.segmenter is not None
        decoder, segmenter = self.decoder, self.segmenter
        self._queue_events(await self.engine.on_pool(lambda: segmenter.feed(decoder.feed(data))))
        lead = segmenter.seconds - (time.monotonic() - self.started_at)
        if lead > self.settings.stream_max_lead_s:
            raise StreamError(
                "stream_too_fast",
                f"the audio runs {lead:.1f} s ahead of real time (SER_STREAM_MAX_LEAD_S is "
                f"{self.settings.stream_max_lead_s:g} s): live streams are paced as they are recorded; "
                "send recordings to POST /v1/timeline or POST /v1/jobs",
            )
        if segmenter.seconds >= self.settings.stream_max_seconds:
            raise StreamError(
                "stream_too_long",
                f"the stream reached its limit of {self.settings.stream_max_seconds:g} s of audio "
                "(SER_STREAM_MAX_SECONDS); start a new stream to go on",
            )

    def _queue_events(self, events: list[LiveEvent]) -> None:
        arrived = time.monotonic()
        for event in events:
            if isinstance(event, SpeechStarted):
                self._outbox.put_nowait(_event("speech_start", time=event.time))
            elif isinstance(event, SpeechEnded):
                self._outbox.put_nowait(
                    _event("speech_end", start=round(event.region.start, 3), end=round(event.region.end, 3))
                )
            else:
                self._window(event, arrived)

    def _window(self, event: WindowReady, arrived: float) -> None:
        window = _Window(event.start, event.end, event.region)
        self.windows.append(window)
        if self._pending >= self.settings.stream_max_pending:
            self.dropped += 1
            self.metrics.predictions.labels("/v1/stream", "dropped").inc()
            self._outbox.put_nowait(
                _event(
                    "warning",
                    warning={
                        "type": "window_dropped",
                        "message": f"the window {event.start:.2f}-{event.end:.2f} s was skipped: the model "
                        f"is behind ({self._pending} windows of this stream wait)",
                    },
                    start=round(event.start, 3),
                    end=round(event.end, 3),
                )
            )
            return
        self._pending += 1
        task = asyncio.ensure_future(self._classify(window, event.waveform, arrived))
        self._outbox.put_nowait(task)

    async def _classify(self, window: _Window, waveform: np.ndarray, arrived: float) -> dict[str, Any] | None:
        try:
            with self.engine.admit(1) as slots:
                future = slots.submit_nowait(waveform)
            waiting = asyncio.wrap_future(future)
            budget = self.settings.stream_max_delay_s - (time.monotonic() - arrived)
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, budget))
            if not done and future.cancel():  # still queued: too late to be live
                raise WindowLate(
                    f"its turn with the model had not come {self.settings.stream_max_delay_s:g} s after its "
                    "audio arrived (SER_STREAM_MAX_DELAY_S): the model is behind"
                )
            result = await waiting
            timings = {
                "queue": round(result.queue_s * 1000, 1),
                "inference": round(result.inference_s * 1000, 1),
            }
            prediction: Prediction = result.prediction
            window.features = np.asarray(prediction.features, dtype=np.float32)
            if self.stats is not None:
                self.stats.add(window.features)
                prediction = (await self.engine.classify(window.features[None], self.stats))[0]
        except RetryableError as exc:
            self.dropped += 1
            self.metrics.predictions.labels("/v1/stream", exc.error_type).inc()
            return _event(
                "warning",
                warning={
                    "type": "window_dropped",
                    "message": f"the window {window.start:.2f}-{window.end:.2f} s was skipped: {exc.message}",
                },
                start=round(window.start, 3),
                end=round(window.end, 3),
            )
        finally:
            self._pending -= 1
        self.metrics.predictions.labels("/v1/stream", "ok").inc()
        segmenter = self.segmenter
        return _event(
            "window",
            start=round(window.start, 3),
            end=round(window.end, 3),
            label=prediction.label,
            confidence=round(prediction.confidence, 4),
            probabilities={k: round(v, 4) for k, v in prediction.probabilities.items()},
            uncertain=prediction.uncertain,
            uncertain_reasons=list(prediction.uncertain_reasons),
            classifier=prediction.classifier,
            audio_seconds=round(segmenter.seconds if segmenter else 0.0, 3),
            latency_s=round(time.monotonic() - arrived, 3),
            timings_ms={**timings, "batch_size": result.batch_size},
        )

    async def finish(self) -> dict[str, Any]:
        """Finish the last region, send every window still due, and build the summary event."""
        assert self.decoder is not None and self.segmenter is not None
        decoder, segmenter = self.decoder, self.segmenter

        def last_events() -> list[LiveEvent]:
            with contextlib.suppress(SERError):  # a WebM stream cut mid-frame: what decoded counts
                return segmenter.feed(decoder.finish()) + segmenter.finish()
            return segmenter.finish()

        self._queue_events(await self.engine.on_pool(last_events))
        self._outbox.put_nowait(None)
        if self.sender_task is not None:
            await self.sender_task
        return await self._summary()

    def abandon(self) -> None:
        """The client has gone: stop sending, skip the windows not yet classified."""
        if self.sender_task is not None:
            self.sender_task.cancel()
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()

    async def _summary(self) -> dict[str, Any]:
        segmenter = self.segmenter
        assert segmenter is not None
        done = [w for w in self.windows if w.features is not None]
        spans: list[list[tuple[float, float]]] = [[] for _ in segmenter.regions]
        for w in done:
            if w.region < len(spans):
                spans[w.region].append((w.start, w.end))
        kept = [w for w in done if w.region < len(spans)]
        warnings = []
        if self.dropped:
            warnings.append(f"window_dropped: {self.dropped} windows were skipped while the model was behind")
        duration = segmenter.seconds
        if not kept:
            timeline = empty_timeline(self.options, "exact", segmenter.regions, duration, warnings)
        else:
            features = np.stack([w.features for w in kept if w.features is not None])
            stats = SessionStats.of(features) if self.stats is not None else None
            predictions = await self.engine.classify(features, stats)
            timeline = assemble_timeline(
                self.options, "exact", segmenter.regions, spans, predictions, duration, warnings
            )
        self.metrics.audio_processed.labels("stream").inc(duration)
        body = timeline_response(
            timeline.to_dict(), self.engine, filename=None, total_s=None, request_id=None
        )
        return _event("summary", audio_seconds=round(duration, 3), timeline=body.model_dump(mode="json"))


async def _receive(websocket: WebSocket, timeout: float, stop: asyncio.Event) -> dict[str, Any]:
    """The next message from the client.

    Raises:
        _ClientGone: the client closed the connection.
        StreamError: nothing arrived for ``timeout`` seconds (``stream_idle``), or the service is shutting
            down (``shutting_down``).
    """
    receive = asyncio.ensure_future(websocket.receive())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({receive, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if receive in done:
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            raise _ClientGone()
        return dict(message)
    receive.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await receive
    if stopped in done:
        raise StreamError(
            "shutting_down", "the service is shutting down; reconnect to another instance to go on"
        )
    raise StreamError(
        "stream_idle",
        f"nothing arrived for {timeout:g} s (SER_STREAM_IDLE_S); send audio frames continuously, "
        'and {"type": "stop"} to end the stream',
    )


def _text_message(message: dict[str, Any]) -> dict[str, Any]:
    text = message.get("text")
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise StreamError(
            "invalid_message",
            'a text message must be a JSON object with a "type": "start" first, then "stop"',
        )
    return data


def _start_message(message: dict[str, Any]) -> StartMessage:
    if message.get("bytes") is not None:
        raise StreamError(
            "invalid_message",
            'an audio frame arrived before the start message; send {"type": "start", "format": ..., '
            '"sample_rate": ..., "channels": ...} first',
        )
    data = _text_message(message)
    try:
        return StartMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise StreamError(
            "invalid_start",
            f"the start message is not valid ({problems}); accepted: type 'start', format one of "
            f"{', '.join(FORMATS)}, sample_rate (raw PCM: {', '.join(map(str, PCM_RATES))}), channels "
            f"1-{MAX_CHANNELS}, api_key, session",
        ) from None


async def _end(websocket: WebSocket, exc: SERError | None, summary: dict[str, Any] | None) -> None:
    """Send the summary and the error (where there are), then close with the error's code."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        if exc is not None:
            await websocket.send_text(json.dumps(_error_event(exc), separators=(",", ":")))
        if summary is not None:
            await websocket.send_text(json.dumps(summary, separators=(",", ":")))
        code = 1000 if exc is None else CLOSE_CODES.get(exc.error_type, 1011)
        await websocket.close(code, _close_reason("" if exc is None else exc.message))


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """Live audio in, speech and emotion events out (see the module's docstring for the protocol)."""
    app = websocket.app
    engine: InferenceEngine = app.state.engine
    settings = engine.settings
    hub: StreamHub = app.state.streams
    metrics: ServiceMetrics = app.state.metrics
    await websocket.accept()
    stream_id: str | None = None
    live: LiveStream | None = None
    failure: SERError | None = None
    gone = False
    client = websocket.client.host if websocket.client else "-"
    try:
        if not _origin_allowed(websocket, settings.cors_origins):
            raise StreamError(
                "origin_refused",
                f"a page at {websocket.headers.get('origin')} may not open streams here; allowed origins "
                "are set by SER_CORS_ORIGINS",
            )
        stream_id, stop = hub.open()
        metrics.streams.set(len(hub.streams))
        engine.check_ready()
        start = _start_message(await _receive(websocket, settings.stream_idle_s, stop))
        authorize(
            websocket.headers.get("x-api-key") or start.api_key,
            settings.api_keys,
            client,
            app.state.auth_throttle,
            where="the X-API-Key header or the start message's api_key",
        )
        live = LiveStream(websocket, engine, metrics, stream_id, stop)
        await live.begin(start)
        log.info(
            "stream %s started: %s, %d Hz, %d channel(s)",
            stream_id,
            start.format,
            start.sample_rate,
            start.channels,
        )
        while True:
            message = await _receive(websocket, settings.stream_idle_s, stop)
            if message.get("bytes") is not None:
                await live.audio(message["bytes"])
            elif _text_message(message)["type"] == "stop":
                break
            else:
                raise StreamError(
                    "invalid_message", 'after the start message, send audio frames, then {"type": "stop"}'
                )
            if live.sender_task is not None and live.sender_task.done():
                live.sender_task.result()  # raises where sending failed
    except (WebSocketDisconnect, _ClientGone):
        gone = True
    except SERError as exc:  # a stream error, or refused by the engine or the key check
        failure = exc
        decoder = live.decoder if live is not None else None
        if exc.error_type == "stream_idle" and isinstance(decoder, WebmDecoder) and decoder.received:
            try:
                decoder.check_progress(min_bytes=1)
            except SERError as stalled:
                failure = stalled
    except Exception as exc:  # a bug: the client hears a generic reason, the log has the detail
        log.exception("stream %s failed", stream_id)
        failure = StreamError("internal_error", f"the stream failed on the server ({type(exc).__name__})")
    summary = None
    try:
        if live is not None and live.segmenter is not None:
            if gone or (failure is not None and failure.error_type not in _SUMMARISED):
                live.abandon()
            else:
                try:
                    summary = await live.finish()
                except (WebSocketDisconnect, _ClientGone, RuntimeError, OSError):
                    gone = True
                except SERError as exc:
                    failure = failure or exc
        if stream_id is not None:  # free the slot before the client hears the close
            hub.close(stream_id)
            metrics.streams.set(len(hub.streams))
        if not gone:
            await _end(websocket, failure, summary)
    finally:
        if live is not None:
            live.abandon()
            if live.decoder is not None:
                live.decoder.close()
        if stream_id is not None:
            hub.close(stream_id)
            metrics.streams.set(len(hub.streams))
        if live is not None and live.segmenter is not None:
            log.info(
                "stream %s ended: %.1f s of audio, %d windows (%d skipped)%s",
                stream_id,
                live.segmenter.seconds,
                len(live.windows),
                live.dropped,
                " (the client left)" if gone else "" if failure is None else f": {failure.error_type}",
            )


class _ClientGone(Exception):
    """The client closed the connection."""


#: Errors after which what was heard is still summarised (the stream itself was fine).
_SUMMARISED = frozenset({"stream_too_long", "stream_too_fast", "stream_idle", "shutting_down"})
