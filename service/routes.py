"""The HTTP routes: prediction (single, batch, and the design document's alias), health, info, metrics."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.auth import authorize
from service.bundles import demo_notice
from service.engine import InferenceEngine, Served, SessionRequest
from service.errors import (
    ClientDisconnectedError,
    InvalidBase64Error,
    InvalidRequestError,
    InvalidSessionIdError,
    NotFoundError,
    TooManyFilesError,
    UnsupportedMediaTypeError,
    describe_validation_error,
    render_error,
)
from service.metrics import ServiceMetrics
from service.schemas import (
    Base64AudioRequest,
    BatchItem,
    BatchResponse,
    ErrorBody,
    HealthResponse,
    InfoResponse,
    LiveStreamInfo,
    ModelRef,
    PrecisionInfo,
    PredictionResponse,
    ReadyResponse,
    SessionInfo,
    TimingsMs,
)
from service.sessions import SESSION_ID_MAX_LENGTH, check_session_id
from service.settings import ServiceSettings
from shared.audio import SUPPORTED_FORMATS
from shared.backbones.base import precision_of
from shared.constants import EMOTIONS
from shared.demo import is_demo_bundle
from shared.errors import SERError

log = logging.getLogger(__name__)
T = TypeVar("T")

HOW_TO_SEND = (
    "send the audio as multipart/form-data with the file in the field 'file', as JSON "
    '{"audio_base64": "..."}, or as the raw body with Content-Type audio/*'
)

# --- dependencies ----------------------------------------------------------------------------------


def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed on /v1 routes and /emotion_predict when the service has SER_API_KEYS set.",
)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


async def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Pass when no keys are configured or the X-API-Key header holds one of them; else 401 (429 for an
    address that sent too many wrong keys)."""
    authorize(
        key, request.app.state.settings.api_keys, client_address(request), request.app.state.auth_throttle
    )


async def require_metrics_access(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> None:
    """``/metrics`` follows the API keys unless ``SER_METRICS_PUBLIC`` says otherwise."""
    if not request.app.state.settings.metrics_open:
        await require_api_key(request, key)


HIDDEN_PATH = "(hidden: filesystem paths are shown only to clients with an API key)"
_PATH_KEYS = frozenset(
    {
        "path",
        "bundle",
        "artifacts",
        "cache_dir",
        "onnx_cache",
        "onnx_cache_dir",
        "jobs_dir",
        "backbone_model",
        "model_override",
        "data_root",
        "root",
        "manifest",
        "metadata",
    }
)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../", "\\")) or bool(_DRIVE.match(value))


def without_paths(value: Any, key: str = "") -> Any:
    """``value`` (JSON-like) with every filesystem path replaced by ``HIDDEN_PATH``: strings under a
    path-valued key, and any string that looks like an absolute or relative path."""
    if isinstance(value, dict):
        return {k: without_paths(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v, key) for v in value]
    if isinstance(value, str) and (key in _PATH_KEYS or _looks_like_path(value)):
        return HIDDEN_PATH
    return value


def shows_paths(request: Request) -> bool:
    """Filesystem paths are shown only to a client that has passed an API key check."""
    return bool(request.app.state.settings.api_keys)


# --- OpenAPI documentation ------------------------------------------------------------------------

_FILE_SCHEMA = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"One audio file. Accepted formats: {SUPPORTED_FORMATS}.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "AudioUpload",
                    "required": ["file"],
                    "properties": {"file": {**_FILE_SCHEMA, "description": "The audio file."}},
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/Base64AudioRequest"}},
            "audio/*": {"schema": _FILE_SCHEMA},
        },
    }
}

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"Several audio files, each in a 'files' field. Accepted formats: {SUPPORTED_FORMATS}.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "BatchAudioUpload",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": _FILE_SCHEMA}},
                }
            }
        },
    }
}


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


RETRY_LATER = "Not ready (loading or shutting down), overloaded (queue full) or timed out; has Retry-After."
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("unauthorized: API keys are configured and X-API-Key holds none of them."),
    429: _err("too_many_auth_failures: this address sent too many wrong API keys; has Retry-After."),
    413: _err("payload_too_large: the request body is over max_upload_bytes."),
    415: _err("unsupported_format (not audio, or an unsupported format) or unsupported_media_type."),
    422: _err(
        "audio_too_short, audio_too_long, audio_silent, audio_no_speech (the voice-activity detector hears "
        "none), audio_decode_error (corrupt or empty), "
        "invalid_request (missing 'file', malformed body), invalid_base64 or invalid_session_id."
    ),
    500: _err("internal_error."),
    503: _err(RETRY_LATER),
}
BATCH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: PREDICT_ERRORS[401],
    429: PREDICT_ERRORS[429],
    413: PREDICT_ERRORS[413],
    415: _err("unsupported_media_type: the request is not multipart/form-data."),
    422: _err("invalid_request (no files, malformed multipart), too_many_files or invalid_session_id."),
    500: PREDICT_ERRORS[500],
    503: PREDICT_ERRORS[503],
}


# --- reading uploads --------------------------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_form(request: Request, *, max_files: int) -> Any:
    try:
        return await request.form(max_files=max_files, max_fields=16)
    except StarletteHTTPException as exc:  # starlette reports malformed multipart and too many files so
        raise InvalidRequestError(f"malformed multipart body: {exc.detail}") from exc


def decode_base64_audio(text: str) -> bytes:
    """The bytes of ``audio_base64`` (standard or URL-safe alphabet, whitespace and a data: URL prefix allowed).

    Raises:
        InvalidBase64Error: not valid base64.
    """
    text = text.strip()
    if text.startswith("data:"):
        header, sep, rest = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidBase64Error(
                "audio_base64 is a data: URL without ';base64,'; send the file's bytes in base64"
            )
        text = rest
    # A large upload is one long string: copies of it are made only where the text needs them.
    compact = "".join(text.split()) if _WHITESPACE.search(text) else text
    try:
        if "-" in compact or "_" in compact:
            return base64.b64decode(compact, altchars=b"-_", validate=True)
        return binascii.a2b_base64(compact, strict_mode=True)  # reads the ASCII text in place
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64Error(
            f"audio_base64 is not valid base64 ({exc}); send the file's bytes in base64"
        ) from exc


_WHITESPACE = re.compile(r"\s")


async def read_body(request: Request) -> bytearray:
    """The whole request body, in one buffer sized by ``Content-Length`` where it is given (reading
    chunk by chunk, without the list of chunks and the joined copy ``Request.body`` makes)."""
    declared = request.headers.get("content-length", "")
    buffer = bytearray()
    if declared.isdigit():
        buffer = bytearray(int(declared))
        view, filled = memoryview(buffer), 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > len(buffer):  # more than declared: h11 refuses that, but keep it correct
                view.release()
                del buffer[filled:]
                buffer += chunk
                view, filled = memoryview(buffer), len(buffer)
                continue
            view[filled:end] = chunk
            filled = end
        view.release()
        del buffer[filled:]
        return buffer
    async for chunk in request.stream():
        buffer += chunk
    return buffer


async def read_single_audio(request: Request) -> tuple[bytes, str | None]:
    """The one audio file of a prediction request, and its name where one was given.

    Raises:
        InvalidRequestError, InvalidBase64Error, UnsupportedMediaTypeError.
    """
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await _read_form(request, max_files=1)
        try:
            upload = form.get("file")
            if upload is None:
                raise InvalidRequestError(f"the multipart body has no 'file' field; {HOW_TO_SEND}")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("the 'file' field must be a file upload, not a text value")
            return await upload.read(), upload.filename
        finally:
            await form.close()
    if media == "application/json" or media.endswith("+json"):
        body = await read_body(request)
        try:
            payload = Base64AudioRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error(list(exc.errors()))) from exc
        del body
        return decode_base64_audio(payload.audio_base64), payload.filename
    if media.startswith("audio/") or media == "application/octet-stream":
        return bytes(await read_body(request)), None
    body = await read_body(request)
    if not body:
        raise InvalidRequestError(f"the request body is empty; {HOW_TO_SEND}")
    what = f"Content-Type {media!r}" if media else "a request without Content-Type"
    raise UnsupportedMediaTypeError(f"{what} is not accepted; {HOW_TO_SEND}")


async def read_batch_audio(request: Request, max_files: int) -> list[tuple[bytes, str | None]]:
    """The files of a batch request (fields 'files' or 'file'), in order.

    Raises:
        InvalidRequestError, TooManyFilesError, UnsupportedMediaTypeError.
    """
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            "a batch must be multipart/form-data with each audio file in a field named 'files'"
        )
    form = await _read_form(request, max_files=max_files + 1)
    try:
        uploads = [value for key, value in form.multi_items() if key in ("files", "file")]
        if not uploads:
            raise InvalidRequestError("the multipart body has no 'files' field: put each audio file in one")
        if len(uploads) > max_files:
            raise TooManyFilesError(f"a batch may hold at most {max_files} files, got {len(uploads)}")
        files = []
        for value in uploads:
            if not isinstance(value, UploadFile):
                raise InvalidRequestError("every 'files' field must be a file upload, not a text value")
            files.append((await value.read(), value.filename))
        return files
    finally:
        await form.close()


# --- helpers ------------------------------------------------------------------------------------


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _observe(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but cancel it (so queued utterances are skipped) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            task.add_done_callback(_observe)  # its outcome is nobody's now: retrieve it, so nothing is left
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientDisconnectedError("the client closed the connection before its result was ready")


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def to_response(served: Served, engine: InferenceEngine, request_id: str) -> PredictionResponse:
    p = served.prediction
    for reason in p.uncertain_reasons:
        engine.metrics.uncertain.labels(reason).inc()
    session = None
    if served.session is not None:
        session = SessionInfo(
            id=served.session.session_id,
            utterances=p.session_utterances,
            minimum_utterances=engine.description.session_minimum if engine.description else None,
        )
    return PredictionResponse(
        label=p.label,  # type: ignore[arg-type]
        confidence=p.confidence,
        probabilities={label: p.probabilities[label] for label in EMOTIONS},
        uncertain=p.uncertain,
        uncertain_reasons=list(p.uncertain_reasons),  # type: ignore[arg-type]
        ood_percentile=p.ood_percentile,
        classifier=p.classifier,  # type: ignore[arg-type]
        session=session,
        duration_s=round(served.duration_s, 4),
        model=model_ref(engine),
        batch_size=served.batch_size,
        timings_ms=TimingsMs(
            decode=round(served.decode_s * 1000, 3),
            queue=round(served.queue_s * 1000, 3),
            inference=round(served.inference_s * 1000, 3),
            total=round(served.total_s * 1000, 3),
        ),
        request_id=request_id,
    )


def model_ref(engine: InferenceEngine) -> ModelRef:
    description = engine.description
    assert description is not None, "the engine serves no model yet"
    return ModelRef(name=description.name, version=description.version)


# --- routes -------------------------------------------------------------------------------------

public = APIRouter()
guarded = APIRouter(dependencies=[Depends(require_api_key)])


SessionIdQuery = Annotated[
    str | None,
    Query(
        description="Classify within this session: the utterance's features join the session's running "
        "statistics, and from the bundle's minimum number of utterances on, the session's statistics "
        f"normalise them. 1-{SESSION_ID_MAX_LENGTH} letters, digits, '.', '_', ':' or '-'. The service "
        "keeps only the statistics, in a bounded store (SER_SESSION_MAX, SER_SESSION_MEMORY_MB, "
        "SER_SESSION_TTL_S).",
        examples=["call-42:caller"],
    ),
]


def owner_of(request: Request) -> str:
    """Who a session belongs to: a digest of the request's API key where keys are configured (one
    client cannot read, extend or delete another's sessions), else empty (ids are shared)."""
    if not request.app.state.settings.api_keys:
        return ""
    return hashlib.sha256(request.headers.get("x-api-key", "").encode()).hexdigest()[:16]


def session_of(request: Request, *, whole_request: bool = False) -> SessionRequest | None:
    """The request's session: its checked ``session_id`` query parameter, or, with ``whole_request``
    (a batch sent with ``session=true``), the request itself; None otherwise.

    Raises:
        InvalidSessionIdError: the id is too long, malformed or given twice.
    """
    values = request.query_params.getlist("session_id")
    if len(values) > 1:
        raise InvalidSessionIdError("session_id is given more than once; give it once")
    if values:
        return SessionRequest(check_session_id(values[0]), owner_of(request))
    return SessionRequest() if whole_request else None


async def _predict_one(
    request: Request, engine: InferenceEngine, metrics: ServiceMetrics, endpoint: str
) -> PredictionResponse:
    try:
        session = session_of(request)
        # A full queue refuses before the body is read; the utterance is admitted before it is decoded
        # (a slot is not held while a slow client sends its body).
        engine.check_capacity(1)
        data, filename = await read_single_audio(request)
        served = await unless_disconnected(request, engine.predict_bytes(data, session))
    except SERError as exc:
        metrics.predictions.labels(endpoint, exc.error_type).inc()
        if not isinstance(exc, ClientDisconnectedError):
            log.info("refused %s: %s (%s)", endpoint, exc.error_type, exc.message)
        raise
    except Exception:
        metrics.predictions.labels(endpoint, "internal_error").inc()
        raise
    metrics.predictions.labels(endpoint, "ok").inc()
    log.info(
        "predicted %s (%.2f) for %s, %.2f s of audio",
        served.prediction.label,
        served.prediction.confidence,
        filename or "upload",
        served.duration_s,
    )
    return to_response(served, engine, request_id_of(request))


@guarded.post(
    "/v1/predict",
    response_model=PredictionResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=PREDICT_BODY,
    summary="Predict the emotion of one audio file",
    tags=["prediction"],
)
async def predict(
    request: Request, engine: EngineDep, metrics: MetricsDep, session_id: SessionIdQuery = None
) -> PredictionResponse:
    """One audio file as multipart (field `file`), JSON `{"audio_base64": "..."}`, or a raw `audio/*` body.

    Returns the most probable emotion, all six probabilities (they sum to 1), whether the prediction is
    uncertain (and why), which classifier answered, the audio's duration, the bundle's name and version,
    and where the time went. With `?session_id=...`, the utterances of one speaker or recording are
    normalised together once the session holds enough of them.
    """
    return await _predict_one(request, engine, metrics, "/v1/predict")


@guarded.post(
    "/emotion_predict",
    response_model=PredictionResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=PREDICT_BODY,
    summary="Alias of POST /v1/predict (the design document's endpoint)",
    tags=["prediction"],
    deprecated=True,
)
async def emotion_predict(request: Request, engine: EngineDep, metrics: MetricsDep) -> PredictionResponse:
    """Kept for existing clients; identical to `POST /v1/predict`."""
    return await _predict_one(request, engine, metrics, "/emotion_predict")


@guarded.post(
    "/v1/predict/batch",
    response_model=BatchResponse,
    responses=BATCH_ERRORS,
    openapi_extra=BATCH_BODY,
    summary="Predict the emotion of several audio files",
    tags=["prediction"],
)
async def predict_batch(
    request: Request,
    engine: EngineDep,
    metrics: MetricsDep,
    session_id: SessionIdQuery = None,
    session: Annotated[
        bool,
        Query(
            description="The files are one session (one speaker or recording): they are normalised with "
            "their own statistics when there are enough of them, and nothing is kept."
        ),
    ] = False,
) -> BatchResponse:
    """Several audio files in one multipart request (each in a field named `files`).

    Returns one item per file, in upload order: a result, or the error that file alone would have had.
    The files are decoded in parallel and share model batches. With `?session=true` they are one
    session; with `?session_id=...` they join that session.
    """
    endpoint = "/v1/predict/batch"
    request_id = request_id_of(request)
    try:
        grouping = session_of(request, whole_request=session)
        engine.check_capacity(1)  # as for one file; the whole batch is admitted (or refused) before decoding
        files = await read_batch_audio(request, engine.settings.max_batch_files)
        outcomes = await unless_disconnected(
            request, engine.predict_many([data for data, _ in files], session=grouping)
        )
    except SERError as exc:
        metrics.predictions.labels(endpoint, exc.error_type).inc()
        raise
    items = []
    for index, ((_, filename), outcome) in enumerate(zip(files, outcomes, strict=True)):
        if isinstance(outcome, Served):
            metrics.predictions.labels(endpoint, "ok").inc()
            items.append(
                BatchItem(
                    index=index,
                    filename=filename,
                    ok=True,
                    status=200,
                    result=to_response(outcome, engine, request_id),
                )
            )
            continue
        status, body = render_error(outcome, f"{endpoint} item {index}")
        error = ErrorBody(**body)
        metrics.predictions.labels(endpoint, error.error_type).inc()
        items.append(BatchItem(index=index, filename=filename, ok=False, status=status, error=error))
    log.info("batch of %d files: %d ok", len(items), sum(item.ok for item in items))
    return BatchResponse(results=items, request_id=request_id)


@guarded.delete(
    "/v1/sessions/{session_id}",
    status_code=204,
    responses={
        401: PREDICT_ERRORS[401],
        429: PREDICT_ERRORS[429],
        404: _err("not_found: no such session (or it expired)."),
        422: _err("invalid_session_id."),
    },
    summary="Forget a session's statistics",
    tags=["prediction"],
)
async def delete_session(session_id: str, request: Request, engine: EngineDep) -> Response:
    """Drop the running statistics of `session_id` now (they also expire on their own when unused)."""
    session = SessionRequest(check_session_id(session_id), owner_of(request))
    engine.check_ready()
    if engine.sessions is None or not engine.sessions.delete(session.store_key):
        raise NotFoundError(f"no session {session_id!r}: it was never used, was deleted, or expired")
    return Response(status_code=204)


@public.get(
    "/health",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    summary="Liveness: the process answers",
    tags=["operations"],
)
async def health(engine: EngineDep) -> HealthResponse:
    """Always 200 while the process runs; `model_state` says where loading stands, and `status` is
    `failed` (with the `error`) when the model could not be loaded."""
    if engine.state == "failed":
        return HealthResponse(status="failed", model_state=engine.state, error=engine.public_error)
    return HealthResponse(model_state=engine.state)


@public.get(
    "/ready",
    response_model=ReadyResponse,
    responses={
        503: _err(
            "not_ready (with Retry-After): the model is loading or the service is stopping; model_failed "
            "(no Retry-After): the model could not be loaded."
        )
    },
    summary="Readiness: the model is loaded and warmed up",
    tags=["operations"],
)
async def ready(engine: EngineDep) -> ReadyResponse:
    """200 once the model is loaded and warmed up; 503 with Retry-After before that and while stopping;
    503 `model_failed` without Retry-After when the model could not be loaded."""
    engine.check_ready()
    return ReadyResponse(model=model_ref(engine))


def live_stream_info(settings: ServiceSettings) -> LiveStreamInfo:
    from service.audio_stream import FORMATS, MAX_CHANNELS, PCM_RATES

    options = settings.timeline_options()
    return LiveStreamInfo(
        formats=list(FORMATS),
        pcm_sample_rates=list(PCM_RATES),
        max_channels=MAX_CHANNELS,
        window_seconds=options.window_seconds,
        hop_seconds=options.hop_seconds,
    )


@guarded.get(
    "/v1/info",
    response_model=InfoResponse,
    responses={401: PREDICT_ERRORS[401], 429: PREDICT_ERRORS[429]},
    summary="What is served: bundle, labels, metrics and effective settings",
    tags=["operations"],
)
async def info(request: Request, engine: EngineDep) -> InfoResponse:
    """Filesystem paths (the bundle's folder, the training data's root, path settings) are shown only
    where API keys are configured, to clients that passed them."""
    from service import __version__

    description = engine.description.to_dict() if engine.description else {}
    settings = engine.settings.public_dict()
    encoder = engine.settings.encoder_options().to_dict()
    if not shows_paths(request):
        description, settings, encoder = (without_paths(part) for part in (description, settings, encoder))
    return InfoResponse(
        service_version=__version__,
        model_state=engine.state,
        model=model_ref(engine) if description else None,
        labels=list(EMOTIONS),
        bundle={k: v for k, v in description.items() if k not in ("labels", "metrics")},
        metrics=description.get("metrics", {}),
        load_seconds=engine.load_seconds,
        settings=settings,
        encoder=encoder,
        precision=PrecisionInfo(**precision_of(engine.predictor.backbone)) if engine.predictor else None,
        accepted_formats=SUPPORTED_FORMATS,
        live_stream=live_stream_info(engine.settings),
        demo=is_demo_bundle(engine.bundle_dir),
        notice=demo_notice(engine.bundle_dir),
    )


@public.get(
    "/metrics",
    dependencies=[Depends(require_metrics_access)],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text format."},
        401: _err("unauthorized: API keys are set (and SER_METRICS_PUBLIC is not) and X-API-Key holds none."),
        429: _err("too_many_auth_failures: this address sent too many wrong API keys; has Retry-After."),
    },
    summary="Prometheus metrics (needs an API key where keys are set, unless SER_METRICS_PUBLIC)",
    tags=["operations"],
)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Request counts by route and status, predictions by outcome, latency histograms per stage, queue
    depth, batch sizes, model readiness."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
