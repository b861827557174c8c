"""The web page: record or upload speech in a browser and see the emotion the service hears, over time
for long recordings and live from the microphone.

The page is static files in ``service/static`` (HTML, CSS, plain JavaScript: ``app.js``, the timeline's
drawing in ``timeline.js`` and the microphone's AudioWorklet in ``live-capture.js``): no build step, no
front-end server, nothing fetched from elsewhere at run time. The same page is served at ``/`` and at
``/emotion`` (the design document's path); its assets under ``/static/``. It calls ``GET /v1/info`` for
the limits and the model, ``POST /v1/predict`` (multipart field ``file``) for a clip, ``POST /v1/jobs``
and ``GET /v1/jobs/{id}`` for a recording longer than ``SER_MAX_SECONDS`` (its timeline, with progress),
and the WebSocket ``/v1/stream`` in live mode. Its URLs are relative, so it also works behind a path
prefix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

#: The page's files, inside the package (shipped as package data).
STATIC_DIR: Path = Path(__file__).parent / "static"

#: The page loads only its own files; blob: URLs are the preview player's source.
_PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Microphone for this origin only; the page works without it (upload).
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    # A new release of the service must not be shown with an old page from the cache.
    "Cache-Control": "no-cache",
}


def mount_web(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/emotion``, and its assets under ``/static/``.

    Raises:
        RuntimeError: ``service/static/index.html`` is missing (a broken install).
    """
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(f"the web page is missing: {index} not found (is the package installed whole?)")

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False, name="web_page")
    app.add_api_route("/emotion", page, methods=["GET"], include_in_schema=False, name="web_page_emotion")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
