"""The cache of derived model files (half-precision weight copies, ONNX exports): names and atomic builds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """Where derived model files go when no folder is given: ``$XDG_CACHE_HOME/ser``, else ``~/.cache/ser``.

    The service and the command-line tools take the folder from their own settings (``SER_CACHE_DIR``,
    ``--model-cache``) and pass it in ``EncoderOptions.cache_dir``.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ser"


def cache_digest(payload: dict[str, Any]) -> str:
    """A short hex digest of a JSON-able payload: the name of a cache entry."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


@contextlib.contextmanager
def building_cache_entry(final: Path) -> Iterator[Path | None]:
    """Build a cache folder atomically: yields a scratch folder, renamed to ``final`` on success.

    Yields None when ``final`` already exists (nothing to build). Two processes building the same entry
    at once both succeed; the first rename wins and the other's copy is discarded.
    """
    if final.is_dir():
        yield None
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield scratch
        try:
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
