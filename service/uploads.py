"""Long uploads streamed to a file as they arrive, never held whole in memory.

``POST /v1/timeline`` and ``POST /v1/jobs`` take recordings of up to hours: the body (a raw ``audio/*``
body, or the ``file`` field of a multipart form, parsed as it streams) is written to disk chunk by chunk,
and the size limit is enforced while it arrives, so a body over the limit costs at most the limit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, cast

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

HOW_TO_SEND_LONG = (
    "send the recording as multipart/form-data with the file in the field 'file', or as the raw body "
    "with Content-Type audio/* (or application/octet-stream)"
)


def too_large(limit: int, setting: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the upload is larger than the limit of {limit} bytes ({limit / 1048576:.1f} MiB, {setting}); "
        "send a smaller file or raise the setting"
    )


class _FilePart:
    """Collects the multipart part named ``file`` into ``handle``; other parts are skipped."""

    def __init__(self, handle: object) -> None:
        self.handle = handle
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.in_file = False
        self.found = False
        self.filename: str | None = None
        self.written = 0

    def on_part_begin(self) -> None:
        self.headers, self.in_file = {}, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and not self.found:
            self.in_file = self.found = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.handle.write(data[start:end])  # type: ignore[attr-defined]
            self.written += end - start

    def on_part_end(self) -> None:
        self.in_file = False


async def stream_upload(request: Request, dest: Path, *, max_bytes: int, setting: str) -> str | None:
    """Write the request's recording to ``dest``; returns the file name the client gave, if any.

    Raises:
        PayloadTooLargeError: more than ``max_bytes`` arrived (``dest`` is removed).
        InvalidRequestError: an empty body, a malformed form, or one without a ``file`` field.
        UnsupportedMediaTypeError: neither multipart nor an audio body.
    """
    media = request.headers.get("content-type", "")
    kind = media.split(";", 1)[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes, setting)
    if kind not in ("multipart/form-data", "application/octet-stream") and not kind.startswith("audio/"):
        what = f"Content-Type {kind!r}" if kind else "a request without Content-Type"
        raise UnsupportedMediaTypeError(f"{what} is not accepted; {HOW_TO_SEND_LONG}")
    received = 0
    try:
        with dest.open("wb") as handle:
            if kind == "multipart/form-data":
                _, params = parse_options_header(media)
                boundary = params.get(b"boundary")
                if not boundary:
                    raise InvalidRequestError("the multipart body has no boundary in its Content-Type")
                part = _FilePart(handle)
                parser = MultipartParser(boundary, callbacks=cast(Any, vars_of(part)))
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_bytes:
                        raise too_large(max_bytes, setting)
                    try:
                        parser.write(chunk)
                    except MultipartParseError as exc:
                        raise InvalidRequestError(f"malformed multipart body: {exc}") from exc
                parser.finalize()
                if not part.found:
                    raise InvalidRequestError(f"the multipart body has no 'file' field; {HOW_TO_SEND_LONG}")
                filename, written = part.filename, part.written
            else:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_bytes:
                        raise too_large(max_bytes, setting)
                    handle.write(chunk)
                filename, written = None, received
        if written == 0:
            raise InvalidRequestError(f"the upload is empty; {HOW_TO_SEND_LONG}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
    return filename


def vars_of(part: _FilePart) -> dict[str, object]:
    """The parser's callbacks, bound to ``part``."""
    names = (
        "on_part_begin",
        "on_header_field",
        "on_header_value",
        "on_header_end",
        "on_headers_finished",
        "on_part_data",
        "on_part_end",
    )
    return {name: getattr(part, name) for name in names}
