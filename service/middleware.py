"""Pure ASGI middleware: request ids, access logs and HTTP metrics; the shutdown grace period; request
bodies' size limit, their share of the in-flight byte budget, and their deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    INTERNAL_ERROR,
    BodyTimeoutError,
    ClientDisconnectedError,
    OverloadedError,
    PayloadTooLargeError,
    error_body,
)
from service.logs import new_request_id, request_id_var
from service.metrics import ServiceMetrics

access_log = logging.getLogger("service.access")
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: The status recorded for a request whose client left before its answer (nginx's "client closed request").
CLIENT_CLOSED = 499


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


class Drain:
    """The requests in flight, and the end of the shutdown grace period.

    ``begin(grace_s)`` is called when the server starts shutting down; ``grace_s`` later, every request
    still running is cancelled (so its queued work is skipped) and answered ``503 shutting_down`` by
    ``RequestContextMiddleware``, as is any request that arrives after that.
    """

    def __init__(self) -> None:
        self.begun = False
        self.expired = False
        self._tasks: set[asyncio.Task[object]] = set()
        #: Called at the start of a shutdown with the grace period, before the server closes connections:
        #: what holds long-lived connections (live streams) ends them cleanly.
        self.closers: list[Callable[[float], Awaitable[None]]] = []

    async def close_long_lived(self, grace_s: float) -> None:
        """Run the closers, each within ``grace_s``."""
        for closer in self.closers:
            try:
                await asyncio.wait_for(closer(grace_s), max(0.0, grace_s))
            except asyncio.TimeoutError:
                log.warning("long-lived connections were still open at the end of the grace period")

    def begin(self, grace_s: float) -> None:
        """Start the grace period (call on the event loop)."""
        if self.begun:
            return
        self.begun = True
        asyncio.get_running_loop().call_later(max(0.0, grace_s), self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._tasks:
            log.warning("the shutdown grace period is over: answering %d requests 503", len(self._tasks))
        for task in list(self._tasks):
            task.cancel()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)


SHUTTING_DOWN = (
    "the service is shutting down and could not finish this request in time; retry on another instance"
)


class RequestContextMiddleware:
    """Gives every HTTP request an id (the client's ``X-Request-ID`` if sane), returns it as a header,
    logs one access line, records HTTP metrics, and turns an unexpected exception into a JSON 500.

    The id lives in a context variable, so every log line written while handling the request carries it.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, drain: Drain, retry_after_s: int = 1) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain
        self.retry_after = str(retry_after_s).encode()

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
        id_header = (b"x-request-id", request_id.encode())
        try:
            with self.drain.track():
                try:
                    if self.drain.expired:
                        raise asyncio.CancelledError
                    await self.app(scope, receive, send_with_id)
                except asyncio.CancelledError:
                    if not self.drain.expired:
                        raise
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    status = 503
                    if not started:
                        await _send_json(
                            send,
                            503,
                            error_body(SHUTTING_DOWN, "shutting_down"),
                            [(b"retry-after", self.retry_after), (b"connection", b"close"), id_header],
                        )
        except (ClientDisconnect, ClientDisconnectedError):
            status = CLIENT_CLOSED  # nobody is there to answer; the access line says so
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                status = 500
                await _send_json(send, 500, error_body(INTERNAL_ERROR, "internal_error"), [id_header])
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


class ByteBudget:
    """Bytes of request bodies admitted at once, across all requests (thread-safe).

    Args:
        limit: most bytes admitted at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Admit ``n`` more bytes if they fit; False (and nothing taken) if not."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


class _Body:
    """One request body as the app reads it: counted, timed, and charged against the budget."""

    def __init__(self, guard: BodyGuardMiddleware, receive: Receive, limited: bool, charged: int) -> None:
        self.guard = guard
        self._receive = receive
        self.limited = limited
        self.charged = charged
        self.received = 0
        self.done = False
        self.started_at: float | None = None

    async def _next(self) -> Message:
        guard = self.guard
        now = time.monotonic()
        if self.started_at is None:
            self.started_at = now
        deadline = self.started_at + guard.body_timeout_s + self.received / guard.min_rate
        wait = min(guard.body_timeout_s, deadline - now)
        try:
            if wait <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(self._receive(), wait)
        except TimeoutError:
            self.done = True
            raise BodyTimeoutError(
                f"the request body stalled: {self.received} bytes arrived in {now - self.started_at:.1f} s; a "
                f"body must keep arriving (a chunk at least every {guard.body_timeout_s:g} s, "
                f"SER_BODY_TIMEOUT_S) at {guard.min_rate:g} bytes/s or more (SER_MIN_UPLOAD_RATE)"
            ) from None
        if message["type"] == "http.disconnect":
            self.done = True
            raise ClientDisconnectedError("the client closed the connection while sending its request")
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
        return message

    async def receive(self) -> Message:
        """The app's ``receive``: the next body chunk, checked; after the body, the server's own."""
        if self.done:
            return await self._receive()
        message = await self._next()
        guard = self.guard
        if self.limited and message["type"] == "http.request":
            if self.received > guard.max_bytes:
                raise PayloadTooLargeError(guard.too_large())
            if self.received > self.charged:
                if not guard.budget.take(self.received - self.charged):
                    raise OverloadedError(guard.over_budget())
                self.charged = self.received
        return message

    async def discard_rest(self) -> None:
        """Read and drop what is left of the body (at most ``max_bytes`` more, within the deadlines), so
        that a client still sending can read the answer it is about to get instead of a reset."""
        limit = self.received + self.guard.max_bytes
        with contextlib.suppress(BodyTimeoutError, ClientDisconnectedError):
            while not self.done and self.received <= limit:
                await self._next()


class BodyGuardMiddleware:
    """Admits request bodies before they are read, and bounds their size and the time they take.

    * **Size**: a ``Content-Length`` over ``max_bytes`` gets 413 at once; a chunked body (or a lying
      header) is counted as the app reads it, and reading stops with 413 past the limit.
    * **Budget**: the bodies being read or held by all requests together stay within ``budget``: a
      ``Content-Length`` that does not fit gets ``503 overloaded`` with ``Retry-After`` before anything is
      kept; a chunked body takes its share as it arrives and gets the same 503 when the budget runs out.
      The share is given back when the request ends.
    * **Time**: once reading starts, each chunk must arrive within ``body_timeout_s`` of the previous
      one, and the body as a whole at ``min_rate`` bytes/s or faster after a first ``body_timeout_s``; a
      body that stalls gets ``408 body_timeout``.
    * **Early answers are readable**: an answer sent before the body was read (a refusal) waits until
      the rest of the body has been read and dropped (at most ``max_bytes`` more, within the deadlines),
      and closes the connection; a client still sending would otherwise get a reset instead of it.
    * A client that leaves while its body is being read raises ``ClientDisconnectedError`` to the app.

    Paths in ``exempt`` stream their bodies to disk under limits of their own: they are timed, but not
    counted against ``max_bytes`` or the budget.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        budget: ByteBudget,
        body_timeout_s: float,
        min_rate: float,
        retry_after_s: int = 1,
        exempt: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.body_timeout_s = body_timeout_s
        self.min_rate = min_rate
        self.retry_after = str(retry_after_s).encode()
        self.exempt = frozenset(exempt)

    def too_large(self) -> str:
        return (
            f"the request body is larger than the limit of {self.max_bytes} bytes "
            f"({self.max_bytes / 1048576:.1f} MiB); send a smaller file"
        )

    def over_budget(self) -> str:
        return (
            f"the server is holding as many request bodies as it may at once ({self.budget.limit} bytes, "
            "SER_BODY_BUDGET_BYTES); retry shortly"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limited = scope.get("path") not in self.exempt
        declared: int | None = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        has_body = (declared or 0) > 0 or chunked
        close = [(b"connection", b"close")]
        body = _Body(self, receive, limited, 0)

        async def refuse(status: int, error: dict[str, str], headers: list[tuple[bytes, bytes]]) -> None:
            if has_body:
                await body.discard_rest()
            await _send_json(send, status, error, [*headers, *close])

        if limited and declared is not None:
            if declared > self.max_bytes:
                await refuse(413, error_body(self.too_large(), "payload_too_large"), [])
                return
            if not self.budget.take(declared):
                log.info("refused a body of %d bytes: the body budget is spent", declared)
                await refuse(
                    503, error_body(self.over_budget(), "overloaded"), [(b"retry-after", self.retry_after)]
                )
                return
            body.charged = declared

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if has_body and not body.done:  # answered before the body was read: see the docstring
                    await body.discard_rest()
                    message = {**message, "headers": [*message.get("headers", ()), *close]}
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except PayloadTooLargeError as exc:
            if started:
                raise
            await refuse(413, error_body(exc.message, exc.error_type), [])
        finally:
            self.budget.release(body.charged)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight requests get the JSON error shape."""

    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode(errors="replace")
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")
        }
        return JSONResponse(
            error_body(
                f"CORS preflight refused: {reason.lower()}; allowed origins are set by SER_CORS_ORIGINS",
                "cors_refused",
            ),
            status_code=response.status_code,
            headers=headers,
        )
