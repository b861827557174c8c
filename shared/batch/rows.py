"""The rows batch commands write: one per file, or one per timeline window, flat and typed.

Every format (JSONL, CSV, Parquet) holds the same columns in the same order. A file that failed has
``ok`` false, its ``error_type`` and ``error`` message, and no prediction; ``sha256`` is the digest of the
file's bytes (empty when the file could not be read), which with ``path`` identifies what a row answers.
"""

from __future__ import annotations

from typing import Any

from shared.constants import EMOTIONS

#: ``p_<emotion>`` for each emotion, in ``EMOTIONS`` order.
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{e}" for e in EMOTIONS)

_PREDICTION: dict[str, type] = {
    "path": str,
    "sha256": str,
    "ok": bool,
    "label": str,
    "confidence": float,
    **{c: float for c in PROBABILITY_COLUMNS},
    "uncertain": bool,
    "uncertain_reasons": str,
    "classifier": str,
    "duration_s": float,
    "bundle": str,
    "bundle_version": str,
    "error_type": str,
    "error": str,
}

#: Column -> type of the rows ``ser predict`` writes (one per file).
PREDICTION_COLUMNS: dict[str, type] = _PREDICTION

#: Column -> type of the rows ``ser predict --timeline`` writes (one per window; a file without
#: speech or that failed has one row without a window). ``duration_s`` is the file's, ``note`` says why a
#: file has no windows (``no_speech``) and what was wrong with one that still gave some (``truncated: ...``).
TIMELINE_COLUMNS: dict[str, type] = {
    **{k: v for k, v in _PREDICTION.items() if k not in ("error_type", "error")},
    "window": int,
    "start_s": float,
    "end_s": float,
    "note": str,
    "error_type": str,
    "error": str,
}

#: A file's rows: one for a prediction, one per window for a timeline, one for a failure.
FileRows = list[dict[str, Any]]


def empty_row(columns: dict[str, type], **values: Any) -> dict[str, Any]:
    """A row with every column None except ``values``."""
    unknown = set(values) - set(columns)
    if unknown:
        raise KeyError(f"not columns: {', '.join(sorted(unknown))}")
    return {name: values.get(name) for name in columns}


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """What identifies the file a row answers: (path, sha256)."""
    return str(row["path"]), str(row.get("sha256") or "")
