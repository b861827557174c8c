"""``python -m service [--host H] [--port P] [--bundle PATH]``: run the service with uvicorn.

Settings come from ``SER_*`` environment variables (see ``service.settings``); the flags override them.
SIGTERM or Ctrl-C stop accepting connections, let in-flight requests finish (up to
``SER_SHUTDOWN_TIMEOUT_S``), drain the batcher, then exit.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service", description="Serve the emotion recognition API."
    )
    parser.add_argument("--host", help="interface to listen on (default: SER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: SER_PORT or 8000)")
    parser.add_argument(
        "--bundle", type=Path, help="bundle folder or artifacts root (default: SER_BUNDLE or ./artifacts)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.memory import keep_freed_memory
    from service.settings import ServiceSettings
    from shared.bundle import resolve_bundle_dir
    from shared.errors import BundleError

    overrides = {
        k: v for k, v in (("host", args.host), ("port", args.port), ("bundle", args.bundle)) if v is not None
    }
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        bundle_dir = resolve_bundle_dir(settings.bundle)  # a wrong path is one line, not a traceback
    except BundleError as exc:
        print(f"cannot serve: {exc} (set SER_BUNDLE or --bundle)", file=sys.stderr)
        return 2
    if settings.keep_freed_memory:
        keep_freed_memory()  # before any thread starts
    app = create_app(settings, bundle_dir=bundle_dir)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal through the handler that was
    # installed before it started: this one makes a clean stop exit 0 instead of dying with 143.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the handler create_app installed (request ids, JSON lines)
        log_level=settings.log_level.lower(),
        access_log=False,  # the request middleware writes one access line per request, with its id
        timeout_graceful_shutdown=int(math.ceil(settings.shutdown_timeout_s)),
        proxy_headers=True,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
