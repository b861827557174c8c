"""Pure ASGI middleware: request ids, access logs and HTTP metrics; the request body size limit."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import INTERNAL_ERROR, PayloadTooLargeError, error_body
from service.logs import new_request_id, request_id_var
from service.metrics import ServiceMetrics

access_log = logging.getLogger("service.access")
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


async def _send_json(
    send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Gives every HTTP request an id (the client's ``X-Request-ID`` if sane), returns it as a header,
    logs one access line, records HTTP metrics, and turns an unexpected exception into a JSON 500.

    The id lives in a context variable, so every log line written while handling the request carries it.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                client_id = value.decode("latin-1")
                break
        request_id = new_request_id(client_id)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                status = 500
                await _send_json(
                    send,
                    500,
                    error_body(INTERNAL_ERROR, "internal_error"),
                    [(b"x-request-id", request_id.encode())],
                )
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method, route_path, str(status)).inc()
            self.metrics.http_latency.labels(method, route_path).observe(elapsed)
            access_log.info(
                "%s %s %d %.1fms",
                method,
                scope.get("path", ""),
                status,
                elapsed * 1000,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before reading them in full.

    A ``Content-Length`` over the limit is refused at once, without reading the body. Otherwise (a
    chunked body, or a lying header) the bytes are counted as the app reads them, and reading stops
    with ``PayloadTooLargeError`` once the limit is passed; the app's error handler turns that into 413,
    and this middleware does so itself if the error reaches it before a response has started. Paths in
    ``exempt`` enforce limits of their own.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    def _message(self) -> str:
        return (
            f"the request body is larger than the limit of {self.max_bytes} bytes "
            f"({self.max_bytes / 1048576:.1f} MiB); send a smaller file"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await _send_json(
                        send,
                        413,
                        error_body(self._message(), "payload_too_large"),
                        [(b"connection", b"close")],
                    )
                    return
                break

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(self._message())
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLargeError as exc:
            if started:
                raise
            await _send_json(send, 413, error_body(exc.message, exc.error_type), [(b"connection", b"close")])
