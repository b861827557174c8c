"""Which files a batch command means: files, folders, glob patterns and manifests.

An input is, in this order of precedence:

* a CSV or JSON-lines manifest (``.csv``, ``.jsonl``, ``.ndjson``) with a path column: every row is
  one file, relative paths taken from the manifest's folder;
* a folder: the audio files in it (and below it with ``recursive``), chosen by extension;
* an existing file of any other kind: itself (a file named explicitly that is not audio gets an error
  row, not silence);
* a glob pattern (``*``, ``?``, ``[``; ``**`` crosses folders): the files it matches.

A path that does not exist is kept: it becomes a ``file_not_found`` row. A glob or a folder that holds no
audio file, and a manifest without its path column, are usage errors (``InputError``) raised before any
work starts. Repeated paths are kept once, in first-seen order.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from shared.errors import SERError

#: File name endings taken from folders and glob patterns (case-insensitive).
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav",
    ".wave",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".webm",
    ".m4a",
    ".mp4",
    ".aac",
    ".aif",
    ".aiff",
    ".w64",
)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_GLOB_CHARS = set("*?[")


class InputError(SERError):
    """The command's inputs or output cannot be used as given (a usage error: nothing was done)."""

    error_type = "input_error"


def parse_extensions(text: str) -> tuple[str, ...]:
    """``"wav,.flac"`` -> ``(".wav", ".flac")``."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError("--extensions is empty; give a list such as wav,flac,mp3")
    return tuple(p if p.startswith(".") else f".{p}" for p in parts)


def collect_inputs(
    specs: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    path_column: str = "path",
) -> list[str]:
    """The files ``specs`` name, as path strings (as given, or joined to a manifest's folder).

    Raises:
        InputError: no input at all, a glob or folder without audio files, an unreadable manifest or one
            without ``path_column``.
    """
    wanted = tuple(e.lower() for e in extensions)
    found: dict[str, None] = {}
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text)
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items = read_manifest(path, path_column)
        elif path.is_dir():
            items = _folder(path, recursive, wanted)
            if not items:
                how = "in or below" if recursive else "directly in"
                raise InputError(
                    f"no audio files {how} {text} (extensions {', '.join(wanted)}"
                    + ("" if recursive else "; --recursive looks in sub-folders")
                    + ")"
                )
        elif path.exists() or not _GLOB_CHARS & set(text):
            items = [text]  # a missing file becomes its own error row
        else:
            items = sorted(
                m for m in glob.glob(text, recursive=True) if Path(m).is_file() and m.lower().endswith(wanted)
            )
            if not items:
                raise InputError(f"no audio files match {text!r} (extensions {', '.join(wanted)})")
        found.update(dict.fromkeys(items))
    if not found:
        raise InputError("no input files given")
    return list(found)


def _folder(folder: Path, recursive: bool, extensions: tuple[str, ...]) -> list[str]:
    walk: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(str(p) for p in walk if p.suffix.lower() in extensions and p.is_file())


def read_manifest(path: Path, path_column: str = "path") -> list[str]:
    """The paths in a CSV (header row) or JSON-lines manifest; relative ones are taken from its folder.

    Raises:
        InputError: the manifest cannot be read, or has no ``path_column``.
    """
    base = path.parent
    paths: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(fh)
                if path_column not in (reader.fieldnames or []):
                    raise InputError(
                        f"the manifest {path} has no {path_column!r} column (its columns: "
                        f"{', '.join(reader.fieldnames or []) or 'none'}); name the column with --path-column"
                    )
                values = [row[path_column] for row in reader]
            else:
                values = []
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not isinstance(record, dict) or path_column not in record:
                        raise InputError(
                            f"line {number} of the manifest {path} has no {path_column!r} field; "
                            "name the field with --path-column"
                        )
                    values.append(record[path_column])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the manifest {path}: {exc}") from exc
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"the manifest {path} has an empty or non-text {path_column!r} value")
        item = Path(value)
        paths.append(value if item.is_absolute() else str(base / item))
    if not paths:
        raise InputError(f"the manifest {path} lists no files")
    return paths
