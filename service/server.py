"""The HTTP server: uvicorn with a bounded number of connections, a deadline for request headers, JSON
answers for protocol errors, and a grace period that ends in JSON 503s instead of cancelled requests.

uvicorn bounds idle keep-alive connections (``SER_KEEP_ALIVE_TIMEOUT_S``) but neither the number of open
connections nor the time a client may take to send its headers; ``guarded_protocol`` adds both to
uvicorn's h11 protocol:

* beyond ``SER_MAX_CONNECTIONS`` open connections, a new one is answered ``503 overloaded`` (JSON, with
  ``Retry-After``) and closed at once;
* a connection has ``SER_HEADER_TIMEOUT_S`` from its opening (or from the end of its previous response) to
  send a whole request head; past it, ``408 header_timeout`` and the connection closes;
* a request that is not valid HTTP/1.1 is answered with the JSON error shape, not uvicorn's plain text.

Request bodies have their own deadlines, enforced where they are read (``service.middleware``).

``GuardedServer`` tells the app when a shutdown starts (``Drain.begin``), so that requests still running
when ``SER_SHUTDOWN_TIMEOUT_S`` ends are answered ``503 shutting_down`` by the app itself, and their queued
work is dropped, before uvicorn would cancel them with plain-text 500s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body
from service.middleware import Drain
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: Seconds uvicorn waits beyond the app's own grace period before cancelling what is left: the app
#: answers its 503s in that time.
CANCEL_MARGIN_S = 2.0


def raw_json_response(
    status: int, reason: str, body: dict[str, str], extra: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers given outside the app."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(payload)),
        "connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + payload


def guarded_protocol(settings: ServiceSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the connection cap, the header deadline and JSON protocol errors."""
    max_connections = settings.max_connections
    header_timeout = settings.header_timeout_s
    retry_after = str(settings.retry_after_s)

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("refused a connection: %d are open (SER_MAX_CONNECTIONS)", max_connections)
                self._answer_and_close(
                    503,
                    "Service Unavailable",
                    error_body(
                        f"the server has {max_connections} connections open, its limit; retry shortly",
                        "overloaded",
                    ),
                    {"retry-after": retry_after},
                )
                return
            self._arm_header_timer()

        def _answer_and_close(
            self, status: int, reason: str, body: dict[str, str], extra: dict[str, str] | None = None
        ) -> None:
            self._disarm_header_timer()
            if not self.transport.is_closing():
                self.transport.write(raw_json_response(status, reason, body, extra))
                self.transport.close()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being handled: its body has deadlines of its own
            if (
                self.cycle is not None
                and self.conn.their_state is h11.IDLE
                and not self.conn.trailing_data[0]
            ):
                self.transport.close()  # idle between two requests: close as the keep-alive timeout would
                return
            self._answer_and_close(
                408,
                "Request Timeout",
                error_body(
                    f"the request's headers did not arrive within {header_timeout:g} s (SER_HEADER_TIMEOUT_S)",
                    "header_timeout",
                ),
            )

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm_header_timer()  # the WebSocket has deadlines of its own
            super().handle_websocket_upgrade(event)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:
                self._disarm_header_timer()  # a whole request head has arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._answer_and_close(
                400,
                "Bad Request",
                error_body(
                    "the request is not valid HTTP/1.1 (a malformed request line or header, or headers "
                    "over the size limit)",
                    "invalid_http",
                ),
            )

    return GuardedH11Protocol


class GuardedServer(uvicorn.Server):
    """uvicorn's server, which first tells the app's ``Drain`` that a shutdown has begun."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s

    async def shutdown(self, sockets: Any = None) -> None:
        self.drain.begin(self.grace_s)
        await self.drain.close_long_lived(self.grace_s)
        await super().shutdown(sockets)


def build_server(app: FastAPI, settings: ServiceSettings, **overrides: Any) -> GuardedServer:
    """The server for ``app`` as ``settings`` say; ``overrides`` go to ``uvicorn.Config`` (host, port...)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep the handler create_app installed (request ids, JSON lines)
        "log_level": settings.log_level.lower(),
        "access_log": False,  # the request middleware writes one access line per request, with its id
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": int(math.ceil(settings.shutdown_timeout_s + CANCEL_MARGIN_S)),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "proxy_headers": True,
        "server_header": False,
        "http": guarded_protocol(settings),
        # live streams: the sans-I/O protocol stops reading until the app has taken each message
        "ws": "websockets-sansio",
        "ws_max_size": settings.stream_max_frame_bytes,
        "ws_per_message_deflate": False,
        "lifespan": "on",
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    return GuardedServer(config, app.state.drain, settings.shutdown_timeout_s)
