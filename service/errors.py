"""The one table from error kind to HTTP status, the service's own errors, and the exception handlers.

Every error reply is ``{"error": "<what was wrong and what is accepted>", "error_type": "<stable code>"}``.
Domain errors (``shared.errors``) and the service errors below carry their ``error_type``; the status
comes from ``ERROR_STATUS`` only, looked up along the exception's class hierarchy, so a new subclass
of a known error gets its parent's status until it has its own row.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shared.errors import SERError

log = logging.getLogger(__name__)


class ServiceError(SERError):
    """An error raised at the HTTP edge (not by the model or the audio code)."""

    error_type = "service_error"


class InvalidRequestError(ServiceError):
    """The request is not shaped as the endpoint expects (a missing field, malformed JSON or multipart)."""

    error_type = "invalid_request"


class InvalidBase64Error(InvalidRequestError):
    """``audio_base64`` is not valid base64."""

    error_type = "invalid_base64"


class InvalidSessionIdError(InvalidRequestError):
    """A ``session_id`` that is too long or has characters outside the accepted set."""

    error_type = "invalid_session_id"


class NotFoundError(ServiceError):
    """The resource named in the path does not exist."""

    error_type = "not_found"


class TooManyFilesError(InvalidRequestError):
    """A batch request carries more files than ``max_batch_files``."""

    error_type = "too_many_files"


class UnsupportedMediaTypeError(ServiceError):
    """The request's Content-Type is none of those accepted."""

    error_type = "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    """The request body is larger than ``max_upload_bytes``."""

    error_type = "payload_too_large"


class BodyTimeoutError(ServiceError):
    """The request body stopped arriving, or arrived too slowly (``SER_BODY_TIMEOUT_S``,
    ``SER_MIN_UPLOAD_RATE``)."""

    error_type = "body_timeout"


class UnauthorizedError(ServiceError):
    """API keys are configured and the request has none of them."""

    error_type = "unauthorized"


class RetryableError(ServiceError):
    """A refusal the client should retry later; the reply carries ``Retry-After``.

    Attributes:
        retry_after_s: the seconds to send, where this refusal knows them (else the service's setting).
    """

    error_type = "retryable"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyAuthFailuresError(RetryableError):
    """This client address offered too many wrong API keys; it must wait before trying again."""

    error_type = "too_many_auth_failures"


class NotReadyError(RetryableError):
    """The model is not loaded (still loading, failed to load, or shutting down)."""

    error_type = "not_ready"


class OverloadedError(RetryableError):
    """The inference queue is full: admission control refuses instead of queueing without bound."""

    error_type = "overloaded"


class RequestTimeoutError(RetryableError):
    """The prediction did not finish within ``request_timeout_s``."""

    error_type = "timeout"


class ModelFailedError(ServiceError):
    """The model failed to load: a failure that will not pass by retrying (no Retry-After)."""

    error_type = "model_failed"


class ClientDisconnectedError(ServiceError):
    """The client went away before its result was ready; its work was dropped."""

    error_type = "client_disconnected"


#: error_type -> HTTP status. The only place where statuses are chosen.
ERROR_STATUS: dict[str, int] = {
    # audio (shared.errors)
    "unsupported_format": 415,
    "audio_decode_error": 422,
    "audio_too_short": 422,
    "audio_too_long": 422,
    "audio_silent": 422,
    "audio_no_speech": 422,
    "audio_error": 422,
    # request shape
    "invalid_request": 422,
    "invalid_base64": 422,
    "invalid_session_id": 422,
    "too_many_files": 422,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "body_timeout": 408,
    "unauthorized": 401,
    "too_many_auth_failures": 429,
    "not_found": 404,
    "method_not_allowed": 405,
    # capacity and state (sent with Retry-After)
    "not_ready": 503,
    "model_failed": 503,
    "overloaded": 503,
    "timeout": 503,
    "retryable": 503,
    "shutting_down": 503,
    # protocol level, answered by the server before the app (service.server)
    "invalid_http": 400,
    "cors_refused": 400,
    "header_timeout": 408,
    # nobody reads this reply; 499 is the de-facto code for "client closed request"
    "client_disconnected": 499,
    # server side: the bundle or the encoder failed, or a bug
    "bundle_error": 500,
    "backbone_error": 500,
    "service_error": 500,
    "ser_error": 500,
    "internal_error": 500,
}

_HTTP_STATUS_TYPES = {
    400: "invalid_request",
    408: "body_timeout",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


def status_for(exc: SERError) -> int:
    """The HTTP status of a domain or service error (500 for kinds the table does not know)."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "error_type", None)
        if code in ERROR_STATUS:
            return ERROR_STATUS[code]
    return 500


#: What a client is told of an error the server did not expect (the log has the detail).
INTERNAL_ERROR = "internal server error"


def error_body(error: str, error_type: str) -> dict[str, str]:
    return {"error": error, "error_type": error_type}


def render_error(exc: BaseException, where: str = "") -> tuple[int, dict[str, str]]:
    """The status and JSON body of any exception, for a whole reply or one item of a batch.

    Domain and service errors keep their message and ``error_type``; anything else is logged with its
    traceback (``where`` says what was being handled) and answered as a bare 500 ``internal_error``.
    """
    if isinstance(exc, SERError):
        status = status_for(exc)
        if status >= 500 and not isinstance(exc, RetryableError):
            log.error("%s: %s", exc.error_type, exc.message)
        return status, error_body(exc.message, exc.error_type)
    log.error(
        "unexpected %s%s", type(exc).__name__, f" while handling {where}" if where else "", exc_info=exc
    )
    return 500, error_body(INTERNAL_ERROR, "internal_error")


def error_response(exc: BaseException, *, retry_after_s: int = 1, where: str = "") -> JSONResponse:
    """The JSON reply for an exception (``render_error``); retryable ones carry ``Retry-After``."""
    headers = None
    if isinstance(exc, RetryableError):
        seconds = retry_after_s if exc.retry_after_s is None else max(1, math.ceil(exc.retry_after_s))
        headers = {"Retry-After": str(seconds)}
    elif isinstance(exc, BodyTimeoutError):
        headers = {"Connection": "close"}
    elif isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}
    status, body = render_error(exc, where)
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation_error(errors: list[Any]) -> str:
    """A readable one-line summary of pydantic/FastAPI validation errors."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI, *, retry_after_s: int = 1) -> None:
    """Register handlers so that every error reply has the ``{"error", "error_type"}`` shape."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        return error_response(exc, retry_after_s=retry_after_s, where=where)

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_STATUS_TYPES.get(
            exc.status_code, "internal_error" if exc.status_code >= 500 else "http_error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            error_body(describe_validation_error(list(exc.errors())), "invalid_request"), status_code=422
        )

    async def on_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
        # Nobody reads this reply; the status (499) is what the metrics and the access log record.
        gone = ClientDisconnectedError("the client closed the connection while sending its request")
        return error_response(gone, retry_after_s=retry_after_s)

    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(SERError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_error)
