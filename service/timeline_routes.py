"""Routes for long recordings: a synchronous timeline, and durable jobs for files of any length."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from service.engine import InferenceEngine
from service.errors import NotReadyError
from service.jobs import JobManager, JobRecord, new_job_id
from service.routes import (
    PREDICT_ERRORS,
    EngineDep,
    MetricsDep,
    _err,
    model_ref,
    owner_of,
    request_id_of,
    require_api_key,
    unless_disconnected,
)
from service.schemas import JobResponse, TimelineResponse
from service.uploads import stream_upload
from shared.audio import SUPPORTED_FORMATS
from shared.errors import SERError

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_api_key)])

_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


def _long_body(what: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": f"{what} Accepted formats: {SUPPORTED_FORMATS}. The upload is streamed to disk.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "title": "RecordingUpload",
                        "required": ["file"],
                        "properties": {"file": {**_FILE, "description": "The recording."}},
                    }
                },
                "audio/*": {"schema": _FILE},
                "application/octet-stream": {"schema": _FILE},
            },
        }
    }


TIMELINE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: PREDICT_ERRORS[401],
    429: PREDICT_ERRORS[429],
    413: _err("payload_too_large: the upload is over SER_TIMELINE_MAX_BYTES (the message names it)."),
    415: PREDICT_ERRORS[415],
    422: _err(
        "audio_too_long (over SER_TIMELINE_MAX_SECONDS: use POST /v1/jobs), audio_decode_error (nothing could be "
        "decoded), invalid_request (no 'file' field, empty or malformed body)."
    ),
    500: PREDICT_ERRORS[500],
    503: _err("not_ready, or overloaded: SER_JOBS_MAX analyses are queued or running; has Retry-After."),
}
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    401: PREDICT_ERRORS[401],
    429: PREDICT_ERRORS[429],
    413: _err("payload_too_large: the upload is over SER_JOB_MAX_BYTES (the message names it)."),
    415: PREDICT_ERRORS[415],
    422: _err("invalid_request: no 'file' field, an empty or malformed body."),
    503: _err(
        "overloaded: SER_JOBS_MAX analyses are queued or running; or not_ready (the model is loading); has Retry-After."
    ),
}


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs  # type: ignore[no-any-return]


def timeline_response(
    data: dict[str, Any],
    engine: InferenceEngine,
    *,
    filename: str | None,
    total_s: float | None,
    request_id: str | None,
) -> TimelineResponse:
    response = TimelineResponse.model_validate(data)
    response.model = model_ref(engine) if engine.description else None
    response.filename = filename
    response.request_id = request_id
    if total_s is not None:
        response.timings_ms = {"total": round(total_s * 1000, 1)}
    return response


def _job_response(record: JobRecord, engine: InferenceEngine, ttl_s: float) -> JobResponse:
    result = None
    if record.result is not None:
        result = timeline_response(
            record.result, engine, filename=record.filename, total_s=None, request_id=None
        )
    return JobResponse(
        id=record.id,
        state=record.state,  # type: ignore[arg-type]
        progress=record.progress,
        audio_seconds_done=record.audio_seconds_done,
        filename=record.filename,
        upload_bytes=record.upload_bytes,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        expires_at=None if record.finished_at is None else record.finished_at + ttl_s,
        result=result,
        error=record.error,  # type: ignore[arg-type]
    )


@router.post(
    "/v1/timeline",
    response_model=TimelineResponse,
    responses=TIMELINE_ERRORS,
    openapi_extra=_long_body("One recording, up to SER_TIMELINE_MAX_SECONDS long (10 minutes by default)."),
    summary="The emotion timeline of a recording, answered when it is done",
    tags=["long recordings"],
)
async def timeline(request: Request, engine: EngineDep, metrics: MetricsDep) -> TimelineResponse:
    """A recording as multipart (field `file`) or a raw `audio/*` body.

    Speech regions are found with Silero VAD; windows inside them are classified; consecutive windows
    with one label are merged into segments; the summary gives speech time, time per emotion,
    duration-weighted mean probabilities, the dominant emotion and the number of changes. A recording
    without speech gets an empty timeline with `reason: "no_speech"`. A file cut short or damaged gets
    the timeline of the part that decoded, with a `truncated: ...` warning. Longer recordings: `POST /v1/jobs`.
    """
    settings = engine.settings
    jobs: JobManager = get_jobs(request)
    started = time.perf_counter()
    engine.check_ready()
    jobs.check_capacity()
    handle, name = tempfile.mkstemp(prefix="ser-timeline-", suffix=".upload")
    os.close(handle)
    path = Path(name)
    try:
        filename = await stream_upload(
            request, path, max_bytes=settings.timeline_max_bytes, setting="SER_TIMELINE_MAX_BYTES"
        )
        result = await unless_disconnected(
            request, jobs.analyse_now(path, settings.timeline_max_seconds, filename)
        )
    except SERError as exc:
        if exc.error_type == "audio_too_long":
            exc.message += " (SER_TIMELINE_MAX_SECONDS; send longer recordings to POST /v1/jobs)"
        metrics.predictions.labels("/v1/timeline", exc.error_type).inc()
        raise
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    metrics.predictions.labels("/v1/timeline", "ok").inc()
    metrics.audio_processed.labels("timeline").inc(result.summary.duration_s)
    log.info(
        "timeline of %s: %.1f s of audio, %.1f s of speech, %d segments",
        filename or "upload",
        result.summary.duration_s,
        result.summary.speech_s,
        len(result.segments),
    )
    return timeline_response(
        result.to_dict(),
        engine,
        filename=filename,
        total_s=time.perf_counter() - started,
        request_id=request_id_of(request),
    )


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobResponse,
    responses=JOB_ERRORS,
    openapi_extra=_long_body("One recording of any length up to SER_JOB_MAX_SECONDS (4 hours by default)."),
    summary="Start the timeline of a long recording as a job",
    tags=["long recordings"],
)
async def create_job(request: Request, engine: EngineDep) -> Response:
    """Answers 202 at once with the job's id and a `Location` header; poll `GET /v1/jobs/{id}` for its
    state and progress, and the timeline (the same shape as `POST /v1/timeline`'s) once it is done.
    Jobs survive restarts: a finished result is kept for SER_JOB_TTL_S; a job that was running when the
    service stopped reads `interrupted`."""
    settings = engine.settings
    jobs = get_jobs(request)
    engine.check_ready()  # a job is analysed by the loaded model: refuse it while there is none
    jobs.check_capacity()
    if jobs.store is None:
        raise NotReadyError("the job store is not open yet; retry shortly")
    job_id = new_job_id()
    filename = await stream_upload(
        request, jobs.upload_path(job_id), max_bytes=settings.job_max_bytes, setting="SER_JOB_MAX_BYTES"
    )
    record = jobs.submit(job_id, owner_of(request), filename)
    log.info("job %s queued: %s, %d bytes", job_id, filename or "upload", record.upload_bytes)
    body = _job_response(record, engine, settings.job_ttl_s)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
    )


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobResponse,
    responses={
        401: PREDICT_ERRORS[401],
        429: PREDICT_ERRORS[429],
        404: _err("not_found: no such job (or it expired)."),
    },
    summary="A job's state, progress and result",
    tags=["long recordings"],
)
async def get_job(job_id: str, request: Request, engine: EngineDep) -> JobResponse:
    """`progress` is the fraction of the work done; `result` holds the timeline once `state` is `done`;
    `error` says why a job failed, was cancelled or was interrupted."""
    return _job_response(get_jobs(request).get(job_id, owner_of(request)), engine, engine.settings.job_ttl_s)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobResponse,
    responses={
        401: PREDICT_ERRORS[401],
        429: PREDICT_ERRORS[429],
        404: _err("not_found: no such job (or it expired)."),
    },
    summary="Cancel a job",
    tags=["long recordings"],
)
async def cancel_job(job_id: str, request: Request, engine: EngineDep) -> JobResponse:
    """A queued or running job is `cancelled` at once (a running analysis stops at its next speech
    region); an ended job is answered as it is, and expires on its own."""
    return _job_response(
        get_jobs(request).cancel(job_id, owner_of(request)), engine, engine.settings.job_ttl_s
    )
