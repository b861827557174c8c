"""Output files for batch runs: JSON lines, CSV or Parquet; valid after any interruption; resumable.

* JSON lines and CSV are appended to; each file's rows go out in one write, flushed at once, so a killed
  run leaves whole rows (a last line cut short by a crash is removed when the file is opened again).
* Parquet cannot be appended to: rows are kept in memory and the file is rewritten under a temporary name
  and renamed over the old one every ``flush_seconds`` (longer as the file grows) and at the end, so the
  file on disk is always a complete Parquet file; a killed run loses at most the rows since the last
  rewrite.

Opening an existing output reads which files it already answers (``done``: path -> content digests);
``add`` skips any file already there, so a re-run appends only the rest, and a file never appears twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.batch.inputs import InputError
from shared.batch.rows import FileRows, row_key

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}


def format_of(path: Path, given: str | None = None) -> str:
    """The output format: ``given``, else by ``path``'s suffix.

    Raises:
        InputError: neither names a known format.
    """
    if given:
        if given not in FORMATS:
            raise InputError(f"unknown output format {given!r}; accepted: {', '.join(FORMATS)}")
        return given
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {path} from its name; end it in .jsonl, .csv or .parquet, or give "
            "--format"
        )
    return fmt


class RowOutput:
    """Rows appended to a JSONL, CSV or Parquet file, skipping files it already holds.

    Args:
        path: the output file; its folder must exist.
        columns: column -> Python type (``shared.batch.rows``), in order.
        fmt: one of ``FORMATS`` (default: by the suffix).
        flush_seconds: Parquet only: the longest time rows wait in memory before the file is rewritten.

    Raises:
        InputError: the folder does not exist, or the existing file is not one this command wrote
            (other columns, unreadable).
    """

    def __init__(
        self, path: Path, columns: dict[str, type], fmt: str | None = None, *, flush_seconds: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.columns = columns
        self.fmt = format_of(self.path, fmt)
        self.flush_seconds = flush_seconds
        if not self.path.parent.is_dir():
            raise InputError(f"the output folder {self.path.parent} does not exist; create it first")
        if self.path.is_dir():
            raise InputError(f"the output {self.path} is a folder; give a file name")
        self.done: dict[str, set[str]] = {}
        self.rows_written = 0
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._rewrite_s = 0.0
        self._fh: io.TextIOWrapper | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._read_existing()

    def _open(self) -> io.TextIOWrapper:
        """The file, opened for appending on the first rows (a run refused before any is leaves none)."""
        if self._fh is None:
            fresh = not (self.path.is_file() and self.path.stat().st_size > 0)
            self._fh = self.path.open("a", newline="", encoding="utf-8")
            if self.fmt == "csv" and fresh:
                csv.DictWriter(self._fh, fieldnames=list(self.columns), lineterminator="\n").writeheader()
        return self._fh

    @property
    def files_present(self) -> int:
        """Distinct (path, digest) pairs in the file."""
        return sum(len(d) for d in self.done.values())

    def holds(self, path: str, sha256: str) -> bool:
        """True when the output already answers this file with these contents."""
        return sha256 in self.done.get(path, ())

    def add(self, results: Iterable[FileRows]) -> list[FileRows]:
        """Append each file's rows unless the output already holds that file (or an earlier file of
        ``results`` was the same); returns the files' rows that were added."""
        rows: list[dict[str, Any]] = []
        added: list[FileRows] = []
        for file_rows in results:
            if not file_rows:
                continue
            path, digest = row_key(file_rows[0])
            if self.holds(path, digest):
                continue
            self.done.setdefault(path, set()).add(digest)
            rows.extend({c: r.get(c) for c in self.columns} for r in file_rows)
            added.append(file_rows)
        if not rows:
            return added
        self.rows_written += len(rows)
        if self.fmt == "jsonl":
            fh = self._open()
            fh.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in map(_json_safe, rows)))
            fh.flush()
        elif self.fmt == "csv":
            fh = self._open()
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n")
            writer.writerows(rows)
            fh.write(buffer.getvalue())
            fh.flush()
        else:
            self._pending.extend(rows)
            # a rewrite copies the whole file: wait at least ten times as long as the last one took
            if time.monotonic() - self._last_flush >= max(self.flush_seconds, 10 * self._rewrite_s):
                self.flush()
        return added

    def flush(self) -> None:
        """Parquet: write the rows kept in memory (the file is replaced whole, atomically)."""
        if self.fmt != "parquet" or not self._pending:
            self._last_flush = time.monotonic()
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        started = time.monotonic()
        schema = _arrow_schema(self.columns)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                if self.path.is_file() and self.path.stat().st_size > 0:
                    old = pq.ParquetFile(self.path)
                    for i in range(old.num_row_groups):
                        writer.write_table(old.read_row_group(i).cast(schema))
                writer.write_table(pa.Table.from_pylist(self._pending, schema=schema))
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._pending = []
        self._last_flush = time.monotonic()
        self._rewrite_s = self._last_flush - started

    def close(self) -> None:
        """Write what is pending and close the file."""
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RowOutput:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- reading what is there -------------------------------------------------------------------

    def _read_existing(self) -> None:
        try:
            if self.fmt == "parquet":
                keys = self._parquet_keys()
            else:
                self._drop_partial_last_line()
                keys = self._jsonl_keys() if self.fmt == "jsonl" else self._csv_keys()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot resume into {self.path}: it is not a {self.fmt} file this command wrote ({exc}); "
                "give another --out"
            ) from exc
        for path, digest in keys:
            self.done.setdefault(path, set()).add(digest)

    def _drop_partial_last_line(self) -> None:
        """Cut a last line that a killed run left without its newline."""
        with self.path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            block = 1 << 16
            end = size
            while end > 0:
                start = max(0, end - block)
                fh.seek(start)
                chunk = fh.read(end - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    fh.truncate(start + cut + 1)
                    return
                end = start
            fh.truncate(0)

    def _jsonl_keys(self) -> list[tuple[str, str]]:
        keys = []
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    keys.append(row_key(record))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"line {number} is not one of its rows") from exc
        return keys

    def _csv_keys(self) -> list[tuple[str, str]]:
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return []
            if list(reader.fieldnames) != list(self.columns):
                raise ValueError("its columns differ (rows of another mode, e.g. --timeline?)")
            return [row_key(row) for row in reader]

    def _parquet_keys(self) -> list[tuple[str, str]]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path, columns=["path", "sha256"])
        schema_names = pq.read_schema(self.path).names
        if schema_names != list(self.columns):
            raise ValueError("its columns differ (rows of another mode, e.g. --timeline?)")
        return [
            (str(p), str(s or ""))
            for p, s in zip(table.column("path").to_pylist(), table.column("sha256").to_pylist(), strict=True)
        ]


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities (never expected) as null, so every line stays valid JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _arrow_schema(columns: dict[str, type]) -> Any:
    import pyarrow as pa

    types = {str: pa.string(), bool: pa.bool_(), float: pa.float64(), int: pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in columns.items()])
