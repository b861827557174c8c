"""Durable jobs for long recordings: a small SQLite table, bounded workers, results that survive restarts.

A job is created with its upload already on disk (``<jobs_dir>/uploads/<id>``) and answered at once
(202). Workers take queued jobs in order and run ``TimelineAnalyzer.analyse`` on a worker thread; the
model work itself runs on the inference thread, between batches of single predictions. States:

``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``; and ``interrupted`` for a job that
was queued or running when the service stopped (found so on the next start). Finished results are kept
until ``job_ttl_s`` after they ended, and a restart loses none of them.

The database is one file in WAL mode, written through one connection under a lock (writes are a few
small rows a second at most: progress is written at most every half second per job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import NotFoundError, NotReadyError, OverloadedError, render_error
from shared.timeline import Timeline, TimelineAnalyzer, TimelineCancelled

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
#: Progress is written to the database at most this often per job (seconds).
PROGRESS_INTERVAL_S = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    filename TEXT,
    upload_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    audio_seconds_done REAL NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. ``result`` is the timeline's JSON (done jobs); ``error`` is
    ``{"error", "error_type"}`` (failed, cancelled and interrupted ones)."""

    id: str
    owner: str
    state: str
    filename: str | None
    upload_bytes: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    audio_seconds_done: float
    result: dict[str, Any] | None
    error: dict[str, str] | None


class JobStore:
    """The jobs table in ``<jobs_dir>/jobs.sqlite3``; thread-safe.

    Args:
        path: the database file (its folder is created).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def create(self, job_id: str, owner: str, filename: str | None, upload_bytes: int) -> JobRecord:
        self._write(
            "INSERT INTO jobs (id, owner, state, filename, upload_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, owner, "queued", filename, upload_bytes, time.time()),
        )
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def count(self, states: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(states))
        with self._lock:
            return int(
                self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", states).fetchone()[0]
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        found = {str(state): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}

    def queued_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def start(self, job_id: str) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
        return (
            self._write(
                "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            )
            == 1
        )

    def progress(self, job_id: str, fraction: float, audio_seconds: float) -> None:
        self._write(
            "UPDATE jobs SET progress = ?, audio_seconds_done = ? WHERE id = ? AND state = 'running'",
            (round(fraction, 4), round(audio_seconds, 3), job_id),
        )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
        audio_seconds: float | None = None,
    ) -> bool:
        """An active job -> ``state``; False when it had already ended."""
        return (
            self._write(
                "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, "
                "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END, "
                "audio_seconds_done = COALESCE(?, audio_seconds_done) "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (
                    state,
                    time.time(),
                    None if result is None else json.dumps(result),
                    None if error is None else json.dumps(error),
                    state,
                    audio_seconds,
                    job_id,
                ),
            )
            == 1
        )

    def interrupt_active(self) -> list[str]:
        """Mark every queued or running job ``interrupted`` (the service stopped under it); their ids."""
        with self._lock:
            ids = [
                str(r[0])
                for r in self._db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")
            ]
        error = json.dumps(
            {
                "error": "the service restarted while this job was queued or running; submit the file again",
                "error_type": "interrupted",
            }
        )
        for job_id in ids:
            self._write(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ? WHERE id = ? "
                "AND state IN ('queued', 'running')",
                (time.time(), error, job_id),
            )
        return ids

    def purge(self, older_than: float) -> list[str]:
        """Delete ended jobs that finished before ``older_than`` (epoch seconds); their ids."""
        with self._lock:
            ids = [
                str(r[0])
                for r in self._db.execute(
                    "SELECT id FROM jobs WHERE state NOT IN ('queued', 'running') AND finished_at < ?",
                    (older_than,),
                )
            ]
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        return ids


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        owner=row["owner"],
        state=row["state"],
        filename=row["filename"],
        upload_bytes=int(row["upload_bytes"]),
        created_at=float(row["created_at"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=float(row["progress"]),
        audio_seconds_done=float(row["audio_seconds_done"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=None if row["error"] is None else json.loads(row["error"]),
    )


def new_job_id() -> str:
    """A random job id: 22 URL-safe characters (128 bits), unguessable."""
    return secrets.token_urlsafe(16)


class JobManager:
    """Admits, runs, cancels and expires long-recording analyses.

    Args:
        jobs_dir: where ``jobs.sqlite3`` and ``uploads/`` live.
        analyzer: called to get the engine's ``TimelineAnalyzer`` when a job runs (None: not ready).
        max_active: most analyses queued or running at once (jobs plus synchronous timelines).
        workers: jobs run at the same time.
        max_seconds: longest recording a job accepts.
        ttl_s: ended jobs are deleted this long after they ended.
        on_audio: called with the audio seconds of each finished job (metrics).
    """

    def __init__(
        self,
        jobs_dir: Path,
        analyzer: Callable[[], TimelineAnalyzer | None],
        *,
        max_active: int,
        workers: int,
        max_seconds: float,
        ttl_s: float,
        on_audio: Callable[[float], None] | None = None,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.uploads = jobs_dir / "uploads"
        self._analyzer = analyzer
        self.max_active = max_active
        self.workers = workers
        self.max_seconds = max_seconds
        self.ttl_s = ttl_s
        self._on_audio = on_audio
        self.store: JobStore | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stops: dict[str, threading.Event] = {}
        self._inline = 0  # synchronous timelines in progress

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, mark what a previous run left active as interrupted, start the workers."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.jobs_dir / "jobs.sqlite3")
        interrupted = self.store.interrupt_active()
        if interrupted:
            log.warning(
                "%d jobs were queued or running when the service stopped: marked interrupted",
                len(interrupted),
            )
        for leftover in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._purge()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"ser-job-worker-{i}") for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="ser-job-expiry"))

    async def stop(self) -> None:
        """Stop the workers; a running job stops at its next region and, like the queued ones, is
        marked interrupted."""
        for event in self._stops.values():
            event.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.store is not None:
            self.store.interrupt_active()
            self.store.close()
            self.store = None

    # -- admission -------------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Analyses queued or running now (jobs and synchronous timelines)."""
        store = self.store
        return self._inline + (store.count(ACTIVE) if store is not None else 0)

    def check_capacity(self) -> None:
        """Raise ``OverloadedError`` (503 with Retry-After) when ``max_active`` analyses are active."""
        if self.active >= self.max_active:
            raise OverloadedError(
                f"too many long-recording analyses: {self.max_active} are queued or running "
                "(SER_JOBS_MAX); retry later"
            )

    def upload_path(self, job_id: str) -> Path:
        return self.uploads / job_id

    def submit(self, job_id: str, owner: str, filename: str | None) -> JobRecord:
        """Queue the job whose upload is at ``upload_path(job_id)``.

        Raises:
            OverloadedError: ``max_active`` analyses are active.
        """
        store = self._require_store()
        path = self.upload_path(job_id)
        try:
            self.check_capacity()
            record = store.create(job_id, owner, filename, path.stat().st_size)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._queue.put_nowait(job_id)
        return record

    def get(self, job_id: str, owner: str) -> JobRecord:
        """The job, if it exists and belongs to ``owner``.

        Raises:
            NotFoundError: no such job for this owner (or it expired).
        """
        record = self._require_store().get(job_id)
        if record is None or record.owner != owner:
            raise NotFoundError(f"no job {job_id!r}: it never existed, or it expired")
        return record

    def cancel(self, job_id: str, owner: str) -> JobRecord:
        """Cancel a queued or running job: it is ``cancelled`` at once (a running analysis stops at its next
        region); an ended job is returned as it is.

        Raises:
            NotFoundError: no such job for this owner.
        """
        record = self.get(job_id, owner)
        if record.state in ACTIVE:
            event = self._stops.get(job_id)
            if event is not None:
                event.set()
            self._require_store().finish(job_id, "cancelled", error=_cancelled())
            if record.state == "queued":
                with contextlib.suppress(OSError):
                    self.upload_path(job_id).unlink()
        return self.get(job_id, owner)

    async def analyse_now(self, path: Path, max_seconds: float, name: str | None = None) -> Timeline:
        """A synchronous timeline (``POST /v1/timeline``): counted against ``max_active``, not stored;
        cancelled (at its next region) if the awaiting request goes away.

        Raises:
            OverloadedError, NotReadyError; whatever the analysis raises.
        """
        self.check_capacity()
        analyzer = self._require_analyzer()
        stop = threading.Event()
        self._inline += 1
        try:
            timeline = await asyncio.shield(
                asyncio.to_thread(
                    analyzer.analyse, path, max_seconds=max_seconds, should_stop=stop.is_set, name=name or ""
                )
            )
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._inline -= 1
        return timeline

    # -- workers -----------------------------------------------------------------------------------

    def _require_store(self) -> JobStore:
        if self.store is None:
            raise NotReadyError("the job store is not open (the service is starting or stopping)")
        return self.store

    def _require_analyzer(self) -> TimelineAnalyzer:
        analyzer = self._analyzer()
        if analyzer is None:
            raise NotReadyError("the model is not ready yet; retry shortly")
        return analyzer

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in the bookkeeping must not kill the worker
                log.exception("job %s: unexpected failure", job_id)

    async def _run(self, job_id: str) -> None:
        store = self._require_store()
        if not store.start(job_id):
            return  # cancelled while queued
        stop = self._stops[job_id] = threading.Event()
        path = self.upload_path(job_id)
        record = store.get(job_id)
        # errors name the client's file, never the upload's name on disk (the job id)
        name = (record.filename or "") if record is not None else ""
        last_write = 0.0
        done_seconds = 0.0

        def progress(fraction: float, audio_seconds: float) -> None:
            nonlocal last_write, done_seconds
            done_seconds = audio_seconds
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL_S:
                last_write = now
                store.progress(job_id, fraction, audio_seconds)

        started = time.monotonic()
        try:
            analyzer = self._require_analyzer()
            timeline = await asyncio.to_thread(
                analyzer.analyse,
                path,
                max_seconds=self.max_seconds,
                progress=progress,
                should_stop=stop.is_set,
                name=name,
            )
        except asyncio.CancelledError:
            stop.set()
            raise
        except TimelineCancelled:
            store.finish(job_id, "cancelled", error=_cancelled(), audio_seconds=done_seconds)
            log.info("job %s cancelled after %.1f s of audio", job_id, done_seconds)
        except Exception as exc:
            _, body = render_error(exc, f"job {job_id}")
            if body["error_type"] == "audio_too_long":
                body["error"] += " (SER_JOB_MAX_SECONDS)"
            store.finish(job_id, "failed", error=body, audio_seconds=done_seconds)
            log.info("job %s failed: %s (%s)", job_id, body["error_type"], body["error"])
        else:
            store.finish(job_id, "done", result=timeline.to_dict(), audio_seconds=timeline.summary.duration_s)
            if self._on_audio is not None:
                self._on_audio(timeline.summary.duration_s)
            log.info(
                "job %s done: %.1f s of audio in %.1f s",
                job_id,
                timeline.summary.duration_s,
                time.monotonic() - started,
            )
        finally:
            self._stops.pop(job_id, None)
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self.ttl_s / 10)))
            self._purge()

    def _purge(self) -> None:
        if self.store is not None:
            gone = self.store.purge(time.time() - self.ttl_s)
            if gone:
                log.info("deleted %d expired jobs", len(gone))


def _cancelled() -> dict[str, str]:
    return {"error": "the job was cancelled", "error_type": "cancelled"}
