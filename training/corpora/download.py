"""A resumable, verified file downloader (HTTP Range, sha256 + size), safe to re-run.

``download_file`` fetches one URL into ``dest`` through ``<dest>.part``: a part file left by an
interrupted run is resumed with an HTTP Range request, the finished part is checked against the
expected byte size and sha256 and only then renamed to ``dest``. ``download_many`` runs it over
a thread pool with one shared ``httpx.Client`` and collects a ``DownloadReport``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.hashing import file_digest
from training.corpora.base import CorpusError

#: The first bytes of a Git LFS pointer file: what a server hands out when it serves the
#: repository's blob instead of the LFS object it points to.
LFS_POINTER_PREFIX = b"version https://git-lfs"

#: HTTP statuses worth retrying besides 5xx; any other 4xx is permanent.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: Seconds to wait for a connection (a dead network should not cost a minute a file).
CONNECT_TIMEOUT_S = 10.0
#: Transport failures in a row, across the files, after which a run stops (at least one per worker).
CONSECUTIVE_FAILURES = 4


class DownloadError(CorpusError):
    """One or more files could not be downloaded and verified.

    Attributes:
        report: the ``DownloadReport`` of the whole run, when raised by a batch download.
    """

    error_type = "download_error"

    def __init__(self, message: str, report: DownloadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class _PermanentError(Exception):
    """A failure that retrying cannot fix (404, an LFS pointer instead of the file)."""


class _RetryableError(Exception):
    """A failure worth another attempt (network error, short body, hash mismatch, 5xx)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its URL, where it goes, and what it must hash to (``digest``, in hex, by
    ``algorithm``: any of ``hashlib``'s)."""

    url: str
    dest: Path
    digest: str
    size: int
    algorithm: str = "sha256"


@dataclass(frozen=True)
class DownloadReport:
    """What a batch download did, by file name.

    Attributes:
        downloaded: files fetched (wholly or by resuming) and verified in this run.
        skipped: files already present with the right size and sha256.
        failed: ``(name, reason)`` for files that could not be fetched and verified.
    """

    downloaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> dict[str, Any]:
        """Counts and failure reasons; JSON-serialisable."""
        return {
            "downloaded": len(self.downloaded),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "failures": {name: reason for name, reason in self.failed},
        }


def is_verified(path: Path, digest: str, size: int, algorithm: str = "sha256") -> bool:
    """True when ``path`` exists with exactly ``size`` bytes and the given digest (size checked first)."""
    try:
        if path.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    return file_digest(path, algorithm) == digest.lower()


def looks_like_lfs_pointer(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) is the start of a Git LFS pointer file."""
    return head.startswith(LFS_POINTER_PREFIX)


def _lfs_pointer_message(url: str) -> str:
    return (
        f"{url} served a Git LFS pointer file, not the audio: the URL points at the repository's "
        "raw files instead of its LFS media (use https://media.githubusercontent.com/media/<owner>/<repo>/...)"
    )


class RetryBudget:
    """What a whole run may spend on failures, shared by every file and worker, so a dead network ends
    the run in seconds instead of after ``files x retries`` attempts.

    The run stops when ``consecutive`` attempts in a row failed at the transport level (no connection,
    DNS failure, timeout) with no success between them, or when ``retries`` retries were spent in all.
    """

    def __init__(self, retries: int = 50, consecutive: int = 4) -> None:
        self.retries = retries
        self.consecutive = consecutive
        self._lock = threading.Lock()
        self._failed_in_a_row = 0
        self._spent = 0
        self.stopped: str | None = None

    def success(self) -> None:
        with self._lock:
            self._failed_in_a_row = 0

    def transport_failure(self, reason: str) -> None:
        with self._lock:
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= self.consecutive and self.stopped is None:
                self.stopped = f"the server cannot be reached ({reason})"

    def spend_retry(self, reason: str) -> None:
        with self._lock:
            self._spent += 1
            if self._spent > self.retries and self.stopped is None:
                self.stopped = f"{self.retries} retries spent across the files (last: {reason})"

    def check(self) -> None:
        """Raise ``DownloadError`` once the run has been stopped."""
        if self.stopped is not None:
            raise DownloadError(f"download stopped: {self.stopped}")


def download_file(
    client: httpx.Client,
    url: str,
    dest: Path,
    sha256: str,
    size: int,
    *,
    retries: int = 3,
    backoff_s: float = 1.0,
    on_bytes: Callable[[int], None] | None = None,
    budget: RetryBudget | None = None,
    algorithm: str = "sha256",
) -> str:
    """Fetch ``url`` into ``dest`` and verify it; safe to re-run.

    ``dest`` already present with the right size and sha256 is left alone. Otherwise the bytes go
    to ``<dest>.part``, which a later attempt or run resumes with ``Range: bytes=<part size>-``;
    a server that ignores Range (200 instead of 206) restarts the part from zero. A finished part
    whose size or sha256 is wrong is deleted and fetched again. Attempts are ``1 + retries``,
    ``backoff_s * 2**k`` seconds apart.

    Args:
        client: a shared ``httpx.Client``, with redirects followed.
        url: where to fetch the file.
        dest: the final path; its folder is created.
        sha256: expected hex sha256 (any case).
        size: expected size in bytes.
        retries: attempts after the first, for retryable failures only.
        backoff_s: the first pause between attempts, in seconds; doubles after each.
        on_bytes: called with each change in the part file's size, for a progress bar: positive
            for a leftover part found at the start and for bytes received, negative when a part
            is discarded. The calls add up to ``size`` when the file is downloaded.

    Returns:
        ``"skipped"`` when ``dest`` was already right, else ``"downloaded"``.

    Raises:
        DownloadError: after the last attempt, or at once for a permanent failure (HTTP 404 or
            another non-retryable 4xx, or an LFS pointer file served instead of the content).
    """
    if is_verified(dest, sha256, size, algorithm):
        return "skipped"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    report = on_bytes or (lambda n: None)
    if part.exists():
        report(part.stat().st_size)
    budget = budget or RetryBudget(retries=retries, consecutive=retries + 2)
    last_reason = "no attempt made"
    for attempt in range(retries + 1):
        budget.check()
        if attempt:
            budget.spend_retry(last_reason)
            budget.check()
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _fetch_into_part(client, url, part, size, report)
            _finish_part(url, part, dest, sha256, size, report, algorithm)
            budget.success()
            return "downloaded"
        except _PermanentError as exc:
            raise DownloadError(str(exc)) from None
        except _RetryableError as exc:
            budget.success()  # the server answered
            last_reason = str(exc)
        except httpx.TransportError as exc:
            # No connection, DNS failure, timeout, a body cut short: the part file is kept for the next
            # attempt, and the run's budget hears of it.
            last_reason = f"{type(exc).__name__}: {exc}"
            budget.transport_failure(last_reason)
        except httpx.HTTPError as exc:
            last_reason = f"{type(exc).__name__}: {exc}"
    raise DownloadError(f"{url}: {last_reason} (gave up after {retries + 1} attempts)")


def _discard(part: Path, report: Callable[[int], None]) -> None:
    if part.exists():
        report(-part.stat().st_size)
        part.unlink()


def _fetch_into_part(
    client: httpx.Client, url: str, part: Path, size: int, report: Callable[[int], None]
) -> None:
    """Bring ``part`` towards ``size`` bytes: resume it, or restart it when the server forces that."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        _discard(part, report)
        offset = 0
    if offset == size:
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 416:
            # The part cannot be continued (the server's file is not the one we started on).
            _discard(part, report)
            raise _RetryableError(f"{url}: HTTP 416 for a resumed range; restarting the file")
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise _RetryableError(f"{url}: HTTP {status}")
        if status not in (200, 206):
            raise _PermanentError(f"{url}: HTTP {status}")
        if status == 206:
            content_range = response.headers.get("content-range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                _discard(part, report)
                raise _RetryableError(f"{url}: unexpected Content-Range {content_range!r}; restarting")
            total = content_range.rpartition("/")[2]
            if total.isdigit() and int(total) != size:
                # Not the file the part was started on (an LFS pointer, another version): start over.
                _discard(part, report)
                raise _RetryableError(
                    f"{url}: the server's file has {total} bytes, expected {size}; restarting"
                )
            mode = "ab"
        else:
            if offset:
                # The server ignored Range and sends the whole file: start the part again.
                _discard(part, report)
                offset = 0
            mode = "wb"
        written = offset
        # A fresh body's first bytes are held back until they show it is not an LFS pointer.
        sniffing = mode == "wb"
        head = b""
        pointer = False
        with part.open(mode) as f:
            # No chunk size: bytes are written as they arrive, so a cut connection keeps them.
            for chunk in response.iter_bytes():
                if sniffing:
                    head += chunk
                    if len(head) < len(LFS_POINTER_PREFIX):
                        continue
                    if looks_like_lfs_pointer(head):
                        pointer = True
                        break
                    chunk, sniffing = head, False
                f.write(chunk)
                written += len(chunk)
                report(len(chunk))
                if written > size:
                    break
            if sniffing and head:
                f.write(head)
                written += len(head)
                report(len(head))
    if pointer:
        _discard(part, report)
        raise _PermanentError(_lfs_pointer_message(url))
    if written > size:
        _discard(part, report)
        raise _RetryableError(f"{url}: the server sent more than the expected {size} bytes")
    if written < size:
        raise _RetryableError(f"{url}: the response ended after {written} of {size} bytes")


def _finish_part(
    url: str,
    part: Path,
    dest: Path,
    sha256: str,
    size: int,
    report: Callable[[int], None],
    algorithm: str = "sha256",
) -> None:
    """Verify a complete part and move it into place; a wrong part is deleted."""
    actual = file_digest(part, algorithm)
    if actual != sha256.lower():
        with part.open("rb") as f:
            head = f.read(len(LFS_POINTER_PREFIX))
        _discard(part, report)
        if looks_like_lfs_pointer(head):
            raise _PermanentError(_lfs_pointer_message(url))
        raise _RetryableError(f"{url}: {algorithm} mismatch (expected {sha256.lower()}, got {actual})")
    os.replace(part, dest)


def download_many(
    files: Iterable[RemoteFile],
    *,
    workers: int = 4,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    progress_desc: str = "download",
    client: httpx.Client | None = None,
    budget: RetryBudget | None = None,
) -> DownloadReport:
    """``download_file`` over a thread pool of ``workers``; never raises for a single file, but stops the
    whole run when ``budget`` (one ``RetryBudget`` for the run by default) says the network is gone.

    Files already present and verified are found first (hashed in the pool) so that the progress
    bar (tqdm, in bytes) covers only what is left to fetch.

    Args:
        files: what to fetch; names in the report are ``dest.name``.
        client: an ``httpx.Client`` to use; by default one with ``timeout_s`` (10 s to connect) and
            redirects followed.

    Returns:
        A ``DownloadReport``; check ``report.ok``.

    Raises:
        DownloadError: the run was stopped (the server cannot be reached, or the retry budget is spent);
            ``.report`` holds what was done.
    """
    from tqdm.auto import tqdm

    files = list(files)
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        present = list(pool.map(lambda rf: is_verified(rf.dest, rf.digest, rf.size, rf.algorithm), files))
    skipped = [rf.dest.name for rf, ok in zip(files, present, strict=True) if ok]
    todo = [rf for rf, ok in zip(files, present, strict=True) if not ok]

    own_client = client is None
    http = client or httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)), follow_redirects=True
    )
    budget = budget or RetryBudget(consecutive=max(CONSECUTIVE_FAILURES, workers))
    downloaded: list[str] = []
    failed: list[tuple[str, str]] = []
    try:
        with tqdm(
            total=sum(rf.size for rf in todo),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=progress_desc,
            disable=not progress or not todo,
        ) as bar:
            lock = threading.Lock()

            def advance(n: int) -> None:
                with lock:
                    bar.update(n)

            def fetch(rf: RemoteFile) -> tuple[RemoteFile, str]:
                try:
                    return rf, download_file(
                        http,
                        rf.url,
                        rf.dest,
                        rf.digest,
                        rf.size,
                        retries=retries,
                        backoff_s=backoff_s,
                        on_bytes=advance,
                        budget=budget,
                        algorithm=rf.algorithm,
                    )
                except DownloadError as exc:
                    return rf, "failed: " + exc.message

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for rf, outcome in pool.map(fetch, todo):
                    if outcome == "skipped":
                        skipped.append(rf.dest.name)
                    elif outcome == "downloaded":
                        downloaded.append(rf.dest.name)
                    else:
                        failed.append((rf.dest.name, outcome.removeprefix("failed: ")))
    finally:
        if own_client:
            http.close()
    report = DownloadReport(
        downloaded=tuple(sorted(downloaded)),
        skipped=tuple(sorted(skipped)),
        failed=tuple(sorted(failed)),
    )
    if budget.stopped is not None:
        raise DownloadError(
            f"download stopped after {len(downloaded)} of {len(todo)} files: {budget.stopped}; check the "
            "network (or give a reachable mirror) and run the same command again: it resumes",
            report,
        )
    return report
