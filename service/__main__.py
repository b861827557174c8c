"""``python -m service [--host H] [--port P] [--bundle PATH]``: run the service with uvicorn.

Settings come from ``SER_*`` environment variables (see ``service.settings``); the flags override them.
SIGTERM or Ctrl-C stop accepting connections, let in-flight requests finish (up to
``SER_SHUTDOWN_TIMEOUT_S``), drain the batcher, then exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

#: The exit status when the model cannot be loaded (2 is a usage error: bad settings, no bundle).
LOAD_FAILURE_EXIT = 3


def settings_help() -> str:
    """Every setting with its environment variable and default (the epilog of ``--help``)."""
    from service.settings import ServiceSettings

    lines = ["settings (environment variables; the flags above override them):"]
    for name, field in ServiceSettings.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        shown = "unset" if default is None or default == [] else default
        lines.append(f"  SER_{name.upper()} (default {shown}): {field.description or ''}")
    return "\n".join(lines)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m service`` and ``ser serve``, which override their settings."""
    parser.add_argument("--host", help="interface to listen on (default: SER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: SER_PORT or 8000)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle folder or artifacts root (default: SER_BUNDLE, else the newest bundle under "
        "SER_ARTIFACTS, else the built-in demo model)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the emotion recognition API.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pydantic import ValidationError

    from service.app import create_app
    from service.bundles import resolve_served_bundle
    from service.memory import keep_freed_memory
    from service.server import build_server
    from service.settings import ServiceSettings
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
        bundle_dir = resolve_served_bundle(
            settings.bundle, settings.artifacts
        )  # a wrong path is one line, not a traceback
    except BundleError as exc:
        print(f"cannot serve: {exc} (set SER_BUNDLE or --bundle)", file=sys.stderr)
        return 2
    if settings.keep_freed_memory:
        keep_freed_memory()  # before any thread starts
    if settings.offline:
        # Every library that reads these (huggingface_hub, transformers) stays off the network, not only
        # the calls the project makes; they are read when those libraries are imported, which is later.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    exit_code = [0]

    def stop_for_good(reason: str) -> None:
        # A bundle or encoder that cannot be loaded will not load on a retry: exit, so that an
        # orchestrator sees it (status 3), instead of answering "not ready" forever.
        print(
            f"cannot serve: the model could not be loaded ({reason}); exiting with status {LOAD_FAILURE_EXIT} "
            "(set SER_STAY_UP_ON_FAILURE=true to stay up and report it on /health and /ready)",
            file=sys.stderr,
        )
        exit_code[0] = LOAD_FAILURE_EXIT
        os.kill(os.getpid(), signal.SIGTERM)

    app = create_app(settings, bundle_dir=bundle_dir, on_load_failure=stop_for_good)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal through the handler that was
    # installed before it started: this one makes a clean stop exit 0 (or 3 after a load failure)
    # instead of dying with 143.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(exit_code[0]))
    build_server(app, settings).run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
