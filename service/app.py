"""The app factory and its lifespan.

``create_app`` builds the FastAPI app and its engine; nothing heavy happens at import time or in the
factory. The lifespan finds the bundle folder, unless the caller already has (a ``SER_BUNDLE`` that names
no bundle fails the start-up at once), then loads, verifies and warms up the model in the background, so
``/health`` and ``/ready`` answer while it loads. On shutdown it stops admitting work, drains the batcher and releases the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service import __version__
from service.auth import AuthThrottle, warn_about_keys
from service.bundles import demo_notice, resolve_served_bundle
from service.docs import mount_docs
from service.engine import InferenceEngine, PredictorFactory
from service.errors import install_error_handlers
from service.jobs import STATES, JobManager
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.middleware import (
    REQUEST_ID_HEADER,
    BodyGuardMiddleware,
    ByteBudget,
    Drain,
    JsonCORSMiddleware,
    RequestContextMiddleware,
)
from service.routes import guarded, public
from service.schemas import Base64AudioRequest
from service.settings import ServiceSettings
from service.stream import StreamHub
from service.stream import router as stream_router
from service.timeline_routes import router as timeline_router

log = logging.getLogger(__name__)

DESCRIPTION = """
Speech emotion recognition: send an utterance (WAV, FLAC, MP3, OGG, Opus, WebM, M4A...; 0.5 to 30 s by
default), get one of six emotions (neutral, happy, sad, angry, fear, disgust) with all six probabilities.
Send a long recording to `/v1/timeline` (up to 10 minutes by default) or `/v1/jobs` (hours) for an emotion
timeline: speech regions, windows, merged segments and a summary. Live audio goes over the WebSocket
`/v1/stream` (not listed below: OpenAPI describes HTTP only): a JSON `start` message, binary PCM or
WebM/Opus frames, then `stop`; speech, window and summary events come back as they happen.

Errors are `{"error": "...", "error_type": "<stable code>"}`; 503 replies carry `Retry-After`.
Every response has an `X-Request-ID` header (the client's own, if it sent a sane one).
"""


def _web_mounter() -> Any:
    try:
        from service.web import mount_web
    except ModuleNotFoundError as exc:
        if exc.name != "service.web":
            raise
        return None
    return mount_web


def create_app(
    settings: ServiceSettings | None = None,
    *,
    predictor_factory: PredictorFactory | None = None,
    bundle_dir: Path | None = None,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the service's app.

    Args:
        settings: the settings; read from ``SER_*`` environment variables when omitted.
        predictor_factory: builds the predictor from (settings, bundle folder); defaults to
            ``service.engine.load_predictor``.
        bundle_dir: the bundle folder, where the caller has already resolved ``settings.bundle``; else
            the lifespan resolves it (and fails with ``BundleNotFoundError`` when there is none).
        on_load_failure: called with the reason when the model cannot be loaded, unless
            ``settings.stay_up_on_failure``; ``python -m service`` passes one that stops the process with
            status 3. Without it the app stays up and reports the failure.
    """
    settings = settings or ServiceSettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    metrics = ServiceMetrics()
    engine = InferenceEngine(settings, metrics, bundle_dir, predictor_factory)
    jobs = JobManager(
        settings.jobs_dir,
        lambda: engine.analyzer if engine.state == "ready" else None,
        max_active=settings.jobs_max,
        workers=settings.job_workers,
        max_seconds=settings.job_max_seconds,
        ttl_s=settings.job_ttl_s,
        on_audio=lambda seconds: metrics.audio_processed.labels("jobs").inc(seconds),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Found again on every start (the newest version under an artifacts root), unless given.
        engine.bundle_dir = bundle_dir or resolve_served_bundle(settings.bundle, settings.artifacts)
        log.info("starting; bundle %s", engine.bundle_dir)
        notice = demo_notice(engine.bundle_dir)
        if notice:
            log.warning("%s", notice)
        await jobs.start()
        metrics.track_jobs(lambda: jobs.store.counts() if jobs.store is not None else {}, STATES)
        loading = asyncio.create_task(engine.start(), name="ser-load-model")

        def after_loading(_: asyncio.Task[None]) -> None:
            if engine.state == "failed" and on_load_failure is not None and not settings.stay_up_on_failure:
                on_load_failure(str(engine.error))

        loading.add_done_callback(after_loading)
        try:
            yield
        finally:
            log.info("shutting down")
            if not loading.done():
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            await jobs.stop()
            await engine.stop()

    app = FastAPI(
        title="Speech emotion recognition",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by mount_docs with local assets instead of a CDN's
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.jobs = jobs
    app.state.drain = drain = Drain()
    app.state.streams = streams = StreamHub(settings.stream_max)
    drain.closers.append(streams.shutdown)
    app.state.auth_throttle = AuthThrottle(settings.auth_max_failures, settings.auth_lockout_s)
    warn_about_keys(settings.api_keys)

    install_error_handlers(app, retry_after_s=settings.retry_after_s)
    app.include_router(public)
    app.include_router(guarded)
    app.include_router(timeline_router)
    app.include_router(stream_router)

    # Added last = outermost: request ids and access logs cover CORS answers and 413 refusals too.
    # The long-recording routes stream their uploads to disk under their own limits.
    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=settings.max_upload_bytes,
        budget=ByteBudget(settings.body_budget_bytes),
        body_timeout_s=settings.body_timeout_s,
        min_rate=settings.min_upload_rate,
        retry_after_s=settings.retry_after_s,
        exempt=("/v1/timeline", "/v1/jobs"),
    )
    if settings.cors_origins:
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, drain=drain, retry_after_s=settings.retry_after_s
    )

    mount_docs(app)
    mount_web = _web_mounter()
    if mount_web is not None:
        mount_web(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            # The JSON body of /v1/predict is declared by hand (the route reads it itself): add its model.
            schema.setdefault("components", {}).setdefault("schemas", {})["Base64AudioRequest"] = (
                Base64AudioRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            )
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app
